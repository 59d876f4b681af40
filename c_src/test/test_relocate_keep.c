/* Criterion tests of kept atoms (reloc_spec.keeps): renamed atoms that keep
 * their original name where they are data. A hand-made module `m` shows
 * each rule on its own; real modules of the installed OTP show that every
 * data use of the module's own name, and nothing else, is repointed. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "beam.h"
#include "bytes.h"
#include "code.h"
#include "etf.h"
#include "relocate.h"
#include "rewrite.h"
#include "test_helpers.h"

#define PAIR(a, b)                                                                                 \
    { (const uint8_t *)(a), strlen(a), (const uint8_t *)(b), strlen(b) }
#define NAME(a)                                                                                    \
    { (const uint8_t *)(a), strlen(a) }

/* Atoms: 1 m, 2 f, 3 module_info, 4 erlang, 5 get_module_info, 6 other.
 * Import 0: erlang:get_module_info/1. */
static const char *const atom_names[] = {"m",    "f", "module_info", "erlang", "get_module_info",
                                         "other"};
#define NATOMS 6

/* m with two functions:
 *   f/0 (label 2):           move {atom, A} x1 ... the body given ... return
 *   module_info/0 (label 4): move {atom, m} x0, call_ext_only 1 import 0
 * `body` comes after the move of atom `data_atom` into x1 (0: no move). */
static uint8_t *module(uint32_t data_atom, const uint8_t *body, size_t body_n, const uint8_t *lit,
                       size_t litn, size_t *size) {
    test_bytes atoms = {0}, code = {0}, imports = {0}, exports = {0};
    test_put_u32(&atoms, NATOMS);
    for (size_t i = 0; i < NATOMS; i++) {
        test_put_u8(&atoms, (uint8_t)strlen(atom_names[i]));
        test_put(&atoms, atom_names[i], strlen(atom_names[i]));
    }
    test_put_u32(&imports, 1);
    test_put_u32(&imports, 4);
    test_put_u32(&imports, 5);
    test_put_u32(&imports, 1);
    test_put_u32(&exports, 2);
    test_put_u32(&exports, 2);
    test_put_u32(&exports, 0);
    test_put_u32(&exports, 2);
    test_put_u32(&exports, 3);
    test_put_u32(&exports, 0);
    test_put_u32(&exports, 4);

    test_put_u32(&code, 16);
    test_put_u32(&code, 0);
    test_put_u32(&code, CODE_OTP25_MAX_OPCODE);
    test_put_u32(&code, 5); /* labels 1..4 */
    test_put_u32(&code, 2); /* functions */
    uint8_t e[9];
#define ARG(tag, v) test_put(&code, e, code_encode((tag), (v), e))
    test_put_u8(&code, CODE_OP_LABEL);
    ARG(CODE_U, 1);
    test_put_u8(&code, CODE_OP_FUNC_INFO);
    ARG(CODE_A, 1);
    ARG(CODE_A, 2);
    ARG(CODE_U, 0);
    test_put_u8(&code, CODE_OP_LABEL);
    ARG(CODE_U, 2);
    if (data_atom) {
        test_put_u8(&code, CODE_OP_MOVE);
        ARG(CODE_A, data_atom);
        ARG(CODE_X, 1);
    }
    test_put(&code, body, body_n);
    test_put_u8(&code, CODE_OP_RETURN);
    test_put_u8(&code, CODE_OP_LABEL);
    ARG(CODE_U, 3);
    test_put_u8(&code, CODE_OP_FUNC_INFO);
    ARG(CODE_A, 1);
    ARG(CODE_A, 3);
    ARG(CODE_U, 0);
    test_put_u8(&code, CODE_OP_LABEL);
    ARG(CODE_U, 4);
    test_put_u8(&code, CODE_OP_MOVE);
    ARG(CODE_A, 1);
    ARG(CODE_X, 0);
    test_put_u8(&code, CODE_OP_CALL_EXT_ONLY);
    ARG(CODE_U, 1);
    ARG(CODE_U, 0);
    test_put_u8(&code, CODE_OP_INT_CODE_END);
#undef ARG
    test_chunk cs[6] = {{"AtU8", atoms.data, atoms.len},
                        {"Code", code.data, code.len},
                        {"StrT", NULL, 0},
                        {"ImpT", imports.data, imports.len},
                        {"ExpT", exports.data, exports.len},
                        {"LitT", lit, litn}};
    uint8_t *b = test_build_beam(cs, lit ? 6 : 5, size);
    free(atoms.data);
    free(code.data);
    free(imports.data);
    free(exports.data);
    return b;
}

static int atom_is(const beam_module *m, size_t index, const char *name) {
    if (index < 1 || index > m->natoms) {
        return 0;
    }
    const beam_atom *a = &m->atoms[index - 1];
    return a->len == strlen(name) && memcmp(a->name, name, a->len) == 0;
}

static int chunk_equal(const uint8_t *a, size_t an, const uint8_t *b, size_t bn, const char *id) {
    beam_module x, y;
    beam_error e;
    cr_assert_eq(beam_parse(a, an, &x, &e), BEAM_OK);
    cr_assert_eq(beam_parse(b, bn, &y, &e), BEAM_OK);
    const beam_chunk *p = beam_find_chunk(&x, id), *q = beam_find_chunk(&y, id);
    int eq = p && q && p->size == q->size &&
             memcmp(x.data + p->offset, y.data + q->offset, p->size) == 0;
    beam_module_free(&x);
    beam_module_free(&y);
    return eq;
}

/* Atom operands of a module's code, by where they are: func_info's, those
 * in module_info/0,1 and __info__/1, and all others ("data"). */
typedef struct {
    const beam_module *m;
    uint32_t atom; /* counted */
    int identity;  /* in an identity function */
    size_t data, func_info, in_identity, total_atom_ops;
} atom_uses;

static int count_uses(void *ctx, const code_instr *ins) {
    atom_uses *u = ctx;
    if (ins->op == CODE_OP_FUNC_INFO) {
        const code_arg *a = ins->args;
        u->identity = (atom_is(u->m, a[1].val, "module_info") && a[2].val <= 1) ||
                      (atom_is(u->m, a[1].val, "__info__") && a[2].val == 1);
    }
    for (uint32_t i = 0; i < ins->nargs; i++) {
        const code_arg *a = &ins->args[i];
        if (a->tag != CODE_A || a->val == 0) {
            continue;
        }
        u->total_atom_ops++;
        if (a->val != u->atom) {
            continue;
        }
        if (ins->op == CODE_OP_FUNC_INFO) {
            u->func_info++;
        } else if (u->identity) {
            u->in_identity++;
        } else {
            u->data++;
        }
    }
    return 0;
}

static atom_uses uses_of(const uint8_t *b, size_t n, uint32_t atom) {
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(b, n, &m, &e), BEAM_OK);
    uint32_t nlits;
    code_module c;
    cr_assert_eq(beam_literal_count(&m, &nlits, &e), BEAM_OK);
    cr_assert_eq(code_open(&m, nlits, CODE_OTP25_MAX_OPCODE, &c, &e), BEAM_OK);
    atom_uses u = {&m, atom, 0, 0, 0, 0, 0};
    cr_assert_eq(code_walk(&c, CODE_OTP25_MAX_OPCODE, &m, count_uses, &u, &e), BEAM_OK);
    beam_module_free(&m);
    u.m = NULL;
    return u;
}

static size_t atom_count(const uint8_t *b, size_t n) {
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(b, n, &m, &e), BEAM_OK);
    size_t k = m.natoms;
    beam_module_free(&m);
    return k;
}

static int has_atom(const uint8_t *b, size_t n, size_t index, const char *name) {
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(b, n, &m, &e), BEAM_OK);
    int r = atom_is(&m, index, name);
    beam_module_free(&m);
    return r;
}

static const reloc_pair renames[] = {PAIR("m", "sandbox@t@m")};

Test(relocate_keep, data_operands_keep_the_name_identity_is_renamed) {
    size_t n, on;
    uint8_t *b = module(1, NULL, 0, NULL, 0, &n), *o;
    reloc_name keeps[] = {NAME("m")};
    reloc_spec spec = {.renames = renames, .nrenames = 1, .keeps = keeps, .nkeeps = 1};
    reloc_error err;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0, "%d", err.code);
    cr_assert_eq(err.repointed, 1);
    /* The table: m renamed in place, m appended once. */
    cr_assert_eq(atom_count(o, on), NATOMS + 1);
    cr_assert(has_atom(o, on, 1, "sandbox@t@m"));
    cr_assert(has_atom(o, on, NATOMS + 1, "m"));
    /* f's move names the appended m; func_info and module_info/0 still the
     * module's own (renamed) atom. */
    atom_uses kept = uses_of(o, on, NATOMS + 1), own = uses_of(o, on, 1);
    cr_assert_eq(kept.data, 1);
    cr_assert_eq(kept.func_info + kept.in_identity, 0);
    cr_assert_eq(own.data, 0);
    cr_assert_eq(own.func_info, 2);
    cr_assert_eq(own.in_identity, 1);
    /* Nothing else that names atoms by index changes. */
    cr_assert(chunk_equal(b, n, o, on, "ImpT"));
    cr_assert(chunk_equal(b, n, o, on, "ExpT"));
    free(o);

    /* Without keeps, the code is kept byte for byte and nothing appended. */
    spec.nkeeps = 0;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0);
    cr_assert_eq(err.repointed, 0);
    cr_assert_eq(atom_count(o, on), NATOMS);
    cr_assert(chunk_equal(b, n, o, on, "Code"));
    cr_assert_eq(uses_of(o, on, 1).data, 1);
    free(o);
    free(b);
}

Test(relocate_keep, identity_uses_only_append_nothing) {
    /* No data use of m: the code is not changed, no atom is appended. */
    size_t n, on;
    uint8_t *b = module(6, NULL, 0, NULL, 0, &n), *o;
    reloc_name keeps[] = {NAME("m")};
    reloc_spec spec = {.renames = renames, .nrenames = 1, .keeps = keeps, .nkeeps = 1};
    reloc_error err;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0);
    cr_assert_eq(err.repointed, 0);
    cr_assert_eq(atom_count(o, on), NATOMS);
    cr_assert(chunk_equal(b, n, o, on, "Code"));
    free(o);
    free(b);
}

Test(relocate_keep, a_name_not_renamed_changes_nothing) {
    size_t n, on, pn;
    uint8_t *b = module(6, NULL, 0, NULL, 0, &n), *o, *plain;
    reloc_name keeps[] = {NAME("other"), NAME("absent")};
    reloc_spec spec = {.renames = renames, .nrenames = 1};
    reloc_error err;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &plain, &pn, &err), 0);
    spec.keeps = keeps;
    spec.nkeeps = 2;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0);
    cr_assert_eq(on, pn);
    cr_assert_eq(memcmp(o, plain, on), 0);
    free(o);
    free(plain);
    free(b);
}

/* {m, fun m:f/0, [m | other], LocalFun} with the names given, LocalFun a
 * fun of module `fun_mod` (no free variables). */
static void put_literal(test_bytes *t, const char *data, const char *ext_mod, const char *fun_mod) {
    test_put_u8(t, ETF_VERSION);
    test_put_u8(t, TAG_SMALL_TUPLE);
    test_put_u8(t, 4);
    test_put_atom(t, data);
    test_put_u8(t, TAG_EXPORT);
    test_put_atom(t, ext_mod);
    test_put_atom(t, "f");
    test_put_u8(t, TAG_SMALL_INTEGER);
    test_put_u8(t, 0);
    test_put_u8(t, TAG_LIST);
    test_put_u32(t, 1);
    test_put_atom(t, data);
    test_put_atom(t, "other");
    /* NEW_FUN: Size, Arity 0, Uniq, Index 0, NumFree 0, Module, OldIndex,
     * OldUniq, Pid. */
    test_put_u8(t, TAG_NEW_FUN);
    size_t size_at = t->len;
    test_put_u32(t, 0);
    test_put_u8(t, 0);
    for (int i = 0; i < 16; i++) {
        test_put_u8(t, (uint8_t)i);
    }
    test_put_u32(t, 0);
    test_put_u32(t, 0);
    test_put_atom(t, fun_mod);
    test_put_u8(t, TAG_SMALL_INTEGER);
    test_put_u8(t, 0);
    test_put_u8(t, TAG_SMALL_INTEGER);
    test_put_u8(t, 0);
    test_put_u8(t, TAG_NEW_PID);
    test_put_atom(t, "nonode@nohost");
    test_put_u32(t, 0);
    test_put_u32(t, 0);
    test_put_u32(t, 0);
    wr_u32(t->data + size_at, (uint32_t)(t->len - size_at));
}

/* The one literal of a module, with its version byte. */
static void literal_of(const uint8_t *b, size_t n, test_bytes *out) {
    beam_module m;
    beam_error e;
    beam_literals lits;
    cr_assert_eq(beam_parse(b, n, &m, &e), BEAM_OK);
    cr_assert_eq(beam_literals_load(&m, &lits, &e), BEAM_OK);
    size_t pos = 0;
    const uint8_t *t;
    uint32_t len;
    cr_assert(beam_literals_next(&lits, &pos, &t, &len));
    test_put(out, t, len);
    beam_literals_free(&lits);
    beam_module_free(&m);
}

Test(relocate_keep, literals_keep_data_but_not_funs) {
    test_bytes lit = {0}, want = {0}, got = {0};
    put_literal(&lit, "m", "m", "m");
    const uint8_t *terms[] = {lit.data};
    size_t lens[] = {lit.len}, litn, n, on;
    uint8_t *table = test_literal_table(terms, lens, 1, &litn);
    /* f: move {literal 0} x0 after the move of m. */
    uint8_t body[] = {CODE_OP_MOVE, 0x47, 0x00, 0x03};
    uint8_t *b = module(1, body, sizeof body, table, litn, &n), *o;
    reloc_name keeps[] = {NAME("m")};
    reloc_spec spec = {.renames = renames, .nrenames = 1, .keeps = keeps, .nkeeps = 1};
    reloc_error err;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0, "%d", err.code);
    literal_of(o, on, &got);
    put_literal(&want, "m", "sandbox@t@m", "sandbox@t@m");
    cr_assert_eq(got.len, want.len);
    cr_assert_eq(memcmp(got.data, want.data, got.len), 0);
    free(o);

    /* Without keeps: every m renamed. */
    spec.nkeeps = 0;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0);
    got.len = want.len = 0;
    literal_of(o, on, &got);
    put_literal(&want, "sandbox@t@m", "sandbox@t@m", "sandbox@t@m");
    cr_assert_eq(got.len, want.len);
    cr_assert_eq(memcmp(got.data, want.data, got.len), 0);
    free(o);
    free(b);
    free(table);
    free(lit.data);
    free(want.data);
    free(got.data);
}

Test(relocate_keep, with_a_dynamic_guard_in_one_pass) {
    /* f: move {atom m} x1, then move {atom other} x0, send (frameless, then
     * return: a tail call of the guard). */
    size_t n, on;
    uint8_t body[] = {CODE_OP_MOVE, 0x62, 0x03, CODE_OP_SEND};
    uint8_t *b = module(1, body, sizeof body, NULL, 0, &n), *o;
    reloc_name keeps[] = {NAME("m")};
    reloc_spec spec = {.renames = renames, .nrenames = 1, .keeps = keeps, .nkeeps = 1};
    spec.guard = (const uint8_t *)"g";
    spec.guard_len = 1;
    spec.guard_kinds = GUARD_SEND;
    reloc_error err;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0, "%d", err.code);
    cr_assert_eq(err.rewritten, 1);
    cr_assert_eq(err.repointed, 1);
    /* m appended first (the code is walked before the imports), then the
     * guard's names. */
    cr_assert(has_atom(o, on, NATOMS + 1, "m"));
    cr_assert(has_atom(o, on, NATOMS + 2, "g"));
    cr_assert(has_atom(o, on, NATOMS + 3, "$send"));
    cr_assert_eq(uses_of(o, on, NATOMS + 1).data, 1);
    cr_assert_eq(uses_of(o, on, 1).data, 0);
    free(o);
    free(b);
}

Test(relocate_keep, bad_spec) {
    size_t n, on;
    uint8_t *b = module(1, NULL, 0, NULL, 0, &n), *o;
    reloc_name bad_utf8[] = {{(const uint8_t *)"\xff", 1}};
    reloc_name twice[] = {NAME("m"), NAME("m")};
    reloc_spec spec = {.renames = renames, .nrenames = 1, .keeps = bad_utf8, .nkeeps = 1};
    reloc_error err;
    cr_assert_eq(beam_relocate(b, n, &spec, &o, &on, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BAD_SPEC);
    spec.keeps = twice;
    spec.nkeeps = 2;
    cr_assert_eq(beam_relocate(b, n, &spec, &o, &on, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BAD_SPEC);
    free(b);
}

Test(relocate_keep, code_is_validated_only_when_a_kept_atom_is_renamed) {
    /* A code chunk of a header only (refused by code_open): relocation keeps it
     * byte for byte unless a kept atom makes it walk the code. */
    size_t n, on;
    static const uint8_t atoms[] = {0, 0, 0, 2, 1, 'm', 1, 'f'};
    static const uint8_t code[] = {0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 3, 0, 0, 0, 1};
    static const uint8_t exports[] = {0, 0, 0, 0};
    test_chunk cs[] = {{"AtU8", atoms, sizeof atoms},
                       {"Code", code, sizeof code},
                       {"ImpT", exports, sizeof exports},
                       {"ExpT", exports, sizeof exports}};
    uint8_t *b = test_build_beam(cs, 4, &n), *o;
    reloc_name keeps[] = {NAME("m")};
    reloc_spec spec = {.renames = renames, .nrenames = 1, .keeps = keeps, .nkeeps = 1};
    reloc_error err;
    cr_assert_eq(beam_relocate(b, n, &spec, &o, &on, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BEAM);
    cr_assert_neq(err.beam.code, BEAM_OK);
    spec.nrenames = 0;
    cr_assert_eq(beam_relocate(b, n, &spec, &o, &on, &err), 0);
    free(o);
    free(b);
}

Test(relocate_keep, out_of_work_produces_nothing) {
    size_t n, on;
    uint8_t *b = module(1, NULL, 0, NULL, 0, &n), *o = NULL;
    reloc_name keeps[] = {NAME("m")};
    reloc_spec spec = {.renames = renames, .nrenames = 1, .keeps = keeps, .nkeeps = 1};
    reloc_error err;
    cr_assert_eq(beam_relocate(b, n, &spec, &o, &on, &err), 0);
    uint64_t need = err.work;
    free(o);
    for (uint64_t budget = 1; budget < need; budget += need / 64 + 1) {
        spec.max_work = budget;
        cr_assert_eq(beam_relocate(b, n, &spec, &o, &on, &err), -1);
        cr_assert_eq(err.code, RELOC_E_WORK);
        cr_assert_null(o);
    }
    free(b);
}

/* Real modules, keeping their own name: every data use of it (outside
 * func_info and the identity functions) now names the appended atom, and
 * the identity uses still name the renamed one. */
static size_t check_real(const char *pattern, const char *name) {
    size_t n, on;
    uint8_t *b = test_read_otp_file(pattern, &n), *o;
    char to[300];
    snprintf(to, sizeof to, "sandbox@t@%s", name);
    reloc_pair ren[] = {PAIR(name, to)};
    reloc_name keeps[] = {NAME(name)};
    reloc_spec spec = {.renames = ren, .nrenames = 1, .keeps = keeps, .nkeeps = 1};
    reloc_error err;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0, "%s: %d", name, err.code);
    size_t natoms = atom_count(b, n);
    atom_uses before = uses_of(b, n, 1), own = uses_of(o, on, 1);
    cr_assert(has_atom(o, on, 1, to));
    cr_assert_eq(own.data, 0, "%s: %zu data uses of the renamed atom", name, own.data);
    cr_assert_eq(own.func_info, before.func_info);
    cr_assert_eq(own.in_identity, before.in_identity);
    cr_assert_eq(err.repointed, before.data);
    if (before.data > 0) {
        cr_assert_eq(atom_count(o, on), natoms + 1);
        cr_assert(has_atom(o, on, natoms + 1, name));
        cr_assert_eq(uses_of(o, on, (uint32_t)natoms + 1).data, before.data);
    } else {
        cr_assert_eq(atom_count(o, on), natoms);
    }
    cr_assert_eq(own.total_atom_ops, before.total_atom_ops);
    static const char *same[] = {"ImpT", "ExpT", "LocT", "FunT", "Line", "StrT"};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        beam_module m;
        beam_error e;
        cr_assert_eq(beam_parse(b, n, &m, &e), BEAM_OK);
        int present = beam_find_chunk(&m, same[i]) != NULL;
        beam_module_free(&m);
        cr_assert(!present || chunk_equal(b, n, o, on, same[i]), "%s: %s changed", name, same[i]);
    }
    free(o);
    free(b);
    return before.data;
}

Test(relocate_keep, real_modules) {
    /* application_controller is its own registered name and callback
     * module: it has data uses of its name. */
    cr_assert_gt(
        check_real("lib/kernel-*/ebin/application_controller.beam", "application_controller"), 0);
    check_real("lib/kernel-*/ebin/logger.beam", "logger");
    check_real("lib/stdlib-*/ebin/gen_server.beam", "gen_server");
    check_real("lib/stdlib-*/ebin/lists.beam", "lists");
}
