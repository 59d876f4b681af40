/* Criterion tests of the capability guards: dynamic call rewriting
 * (rewrite.h, through beam_relocate's guard), MFA redirects, and call
 * sites (sites.h), on hand-made modules whose one function f/Arity has a
 * body given by each test, and on real modules of the installed OTP. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "beam.h"
#include "bytes.h"
#include "code.h"
#include "relocate.h"
#include "rewrite.h"
#include "sites.h"
#include "test_helpers.h"

#define BYTES(...) ((const uint8_t[]){__VA_ARGS__}), sizeof((const uint8_t[]){__VA_ARGS__})

/* Atoms: 1 m, 2 f, 3 erlang, 4 element, 5 lists, 6 reverse, 7 self.
 * Imports: 0 erlang:element/2, 1 lists:reverse/1, 2 erlang:self/0. */
static const uint8_t atoms[] = {0,   0, 0,   7,   1,   'm', 1,   'f', 6,   'e', 'r', 'l', 'a', 'n',
                                'g', 7, 'e', 'l', 'e', 'm', 'e', 'n', 't', 5,   'l', 'i', 's', 't',
                                's', 7, 'r', 'e', 'v', 'e', 'r', 's', 'e', 4,   's', 'e', 'l', 'f'};
static const uint8_t imports[] = {0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 5,
                                  0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0, 0};
#define NIMPORTS 3
#define NATOMS 7

typedef struct {
    uint8_t arity;      /* of f */
    uint32_t max_op;    /* the header's highest opcode */
    const uint8_t *lit; /* LitT's data, or NULL */
    size_t litn;
    const test_chunk *extra;
    size_t nextra;
} shape;

/* label 1, func_info m f Arity, label 2, the body, int_code_end. */
static uint8_t *module(const uint8_t *body, size_t n, const shape *s, size_t *size) {
    uint8_t arity = s ? s->arity : 0;
    uint8_t exports[16] = {0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2};
    exports[11] = arity;
    test_bytes code = {0};
    test_put_u32(&code, 16);
    test_put_u32(&code, 0);
    test_put_u32(&code, s && s->max_op ? s->max_op : CODE_OTP25_MAX_OPCODE);
    test_put_u32(&code, 3);
    test_put_u32(&code, 1);
    const uint8_t prefix[] = {0x01, 0x10, 0x02, 0x12, 0x22, (uint8_t)(arity << 4), 0x01, 0x20};
    test_put(&code, prefix, sizeof prefix);
    test_put(&code, body, n);
    test_put_u8(&code, CODE_OP_INT_CODE_END);
    test_chunk cs[8] = {{"AtU8", atoms, sizeof atoms},
                        {"Code", code.data, code.len},
                        {"StrT", NULL, 0},
                        {"ImpT", imports, sizeof imports},
                        {"ExpT", exports, sizeof exports}};
    size_t k = 5;
    if (s && s->lit) {
        cs[k++] = (test_chunk){"LitT", s->lit, s->litn};
    }
    for (size_t i = 0; s && i < s->nextra; i++) {
        cs[k++] = s->extra[i];
    }
    uint8_t *b = test_build_beam(cs, k, size);
    free(code.data);
    return b;
}

static reloc_spec guard_spec(unsigned kinds) {
    reloc_spec s = {0};
    s.guard = (const uint8_t *)"g";
    s.guard_len = 1;
    s.guard_kinds = kinds;
    return s;
}

/* The instructions of a module's code, flattened: opcode then every
 * operand's tag and value (lists: their elements follow). */
typedef struct {
    uint32_t words[512];
    size_t n;
    uint32_t max_op_header;
} listing;

static int list_instr(void *ctx, const code_instr *ins) {
    listing *l = ctx;
    if (ins->op == CODE_OP_LABEL || ins->op == CODE_OP_FUNC_INFO ||
        ins->op == CODE_OP_INT_CODE_END) {
        return 0;
    }
    l->words[l->n++] = 1000 + ins->op;
    for (uint32_t i = 0; i < ins->nargs && l->n + 2 < 512; i++) {
        l->words[l->n++] = ins->args[i].tag;
        l->words[l->n++] = (uint32_t)ins->args[i].val;
    }
    return 0;
}

static listing disassemble(const uint8_t *b, size_t n) {
    beam_module m;
    beam_error e;
    listing l = {0};
    cr_assert_eq(beam_parse(b, n, &m, &e), BEAM_OK);
    uint32_t nlits;
    cr_assert_eq(beam_literal_count(&m, &nlits, &e), BEAM_OK);
    code_module c;
    cr_assert_eq(code_open(&m, nlits, CODE_OTP25_MAX_OPCODE, &c, &e), BEAM_OK);
    cr_assert_eq(code_walk(&c, CODE_OTP25_MAX_OPCODE, &m, list_instr, &l, &e), BEAM_OK);
    l.max_op_header = c.max_opcode;
    beam_module_free(&m);
    return l;
}

#define OP(o) (1000 + (o))
#define U(v) CODE_U, (v)
#define X(v) CODE_X, (v)
#define Y(v) CODE_Y, (v)

static void assert_listing(const listing *l, const uint32_t *want, size_t n) {
    cr_assert_eq(l->n, n, "%zu words, not %zu", l->n, n);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(l->words[i], want[i], "word %zu: %u, not %u", i, l->words[i], want[i]);
    }
}

#define WANT(l, ...)                                                                               \
    do {                                                                                           \
        const uint32_t w_[] = {__VA_ARGS__};                                                       \
        assert_listing(&(l), w_, sizeof w_ / sizeof *w_);                                          \
    } while (0)

/* Import i of a module: its module and function names and arity. */
static void assert_import(const uint8_t *b, size_t n, uint32_t i, const char *mod, const char *fun,
                          uint32_t arity) {
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(b, n, &m, &e), BEAM_OK);
    cr_assert_lt(i, m.nimports);
    uint32_t ent[3];
    beam_table_entry(m.imports, i, ent);
    const beam_atom *ma = &m.atoms[ent[0] - 1], *fa = &m.atoms[ent[1] - 1];
    cr_assert(ma->len == strlen(mod) && memcmp(ma->name, mod, ma->len) == 0, "module of %u", i);
    cr_assert(fa->len == strlen(fun) && memcmp(fa->name, fun, fa->len) == 0, "function of %u", i);
    cr_assert_eq(ent[2], arity);
    beam_module_free(&m);
}

static size_t import_count(const uint8_t *b, size_t n) {
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(b, n, &m, &e), BEAM_OK);
    size_t k = m.nimports;
    beam_module_free(&m);
    return k;
}

Test(rewrite, apply_and_apply_last) {
    /* allocate 0 2; apply 0; deallocate 0; return -- then apply_last 1, 0. */
    shape s = {2, 0, NULL, 0, NULL, 0};
    size_t n, on;
    uint8_t *b = module(BYTES(0x0c, 0x00, 0x20, 0x70, 0x00, 0x12, 0x00, 0x13), &s, &n), *o;
    reloc_spec spec = guard_spec(GUARD_APPLY);
    reloc_error err;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0, "%d", err.code);
    cr_assert_eq(err.rewritten, 1);
    listing l = disassemble(o, on);
    WANT(l, OP(12), U(0), U(2), OP(7), U(2), U(NIMPORTS), OP(18), U(0), OP(19));
    assert_import(o, on, NIMPORTS, "g", "$apply", 2);
    cr_assert_eq(import_count(o, on), NIMPORTS + 1);
    free(o);
    free(b);

    s.arity = 3;
    b = module(BYTES(0x0c, 0x00, 0x30, 0x71, 0x10, 0x00), &s, &n);
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0);
    l = disassemble(o, on);
    WANT(l, OP(12), U(0), U(3), OP(8), U(3), U(NIMPORTS), U(0));
    assert_import(o, on, NIMPORTS, "g", "$apply", 3);
    free(o);
    free(b);
}

Test(rewrite, call_fun_and_call_fun2) {
    shape s = {2, 0, NULL, 0, NULL, 0};
    size_t n, on;
    uint8_t *o;
    reloc_error err;
    reloc_spec spec = guard_spec(GUARD_CALL_FUN);
    /* allocate 1 2; move x0 y0; move x1 x0; call_fun2 unsafe(atom 2) 1 y0;
     * deallocate 1; return. */
    uint8_t *b = module(BYTES(0x0c, 0x10, 0x20, 0x40, 0x03, 0x04, 0x40, 0x13, 0x03, 0xb2, 0x22,
                              0x10, 0x04, 0x12, 0x10, 0x13),
                        &s, &n);
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0, "%d", err.code);
    listing l = disassemble(o, on);
    WANT(l, OP(12), U(1), U(2), OP(64), X(0), Y(0), OP(64), X(1), X(0), OP(64), Y(0), X(1), OP(7),
         U(2), U(NIMPORTS), OP(18), U(1), OP(19));
    assert_import(o, on, NIMPORTS, "g", "$call_fun", 2);
    free(o);
    free(b);

    /* The fun already in x1 (the argument count): no move. call_fun 1 too. */
    b = module(BYTES(0x0c, 0x00, 0x20, 0xb2, 0x22, 0x10, 0x13, 0x4b, 0x10, 0x12, 0x00, 0x13), &s,
               &n);
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0, "%d", err.code);
    cr_assert_eq(err.rewritten, 2);
    l = disassemble(o, on);
    WANT(l, OP(12), U(0), U(2), OP(7), U(2), U(NIMPORTS), OP(7), U(2), U(NIMPORTS), OP(18), U(0),
         OP(19));
    cr_assert_eq(import_count(o, on), NIMPORTS + 1); /* one import for both */
    free(o);
    free(b);
}

Test(rewrite, send_with_and_without_a_frame) {
    shape s = {2, 20, NULL, 0, NULL, 0};
    size_t n, on;
    uint8_t *o;
    reloc_error err;
    reloc_spec spec = guard_spec(GUARD_SEND);
    /* With a frame: allocate 0 2; send; deallocate 0; return. */
    uint8_t *b = module(BYTES(0x0c, 0x00, 0x20, 0x14, 0x12, 0x00, 0x13), &s, &n);
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0);
    listing l = disassemble(o, on);
    WANT(l, OP(12), U(0), U(2), OP(7), U(2), U(NIMPORTS), OP(18), U(0), OP(19));
    cr_assert_eq(l.max_op_header, 20);
    assert_import(o, on, NIMPORTS, "g", "$send", 2);
    free(o);
    free(b);

    /* None, then return: a tail call (the header's highest opcode rises). */
    b = module(BYTES(0x14, 0x13), &s, &n);
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0);
    l = disassemble(o, on);
    WANT(l, OP(78), U(2), U(NIMPORTS));
    cr_assert_eq(l.max_op_header, 78);
    free(o);
    free(b);

    /* None, then more code: a frame just for the call. */
    b = module(BYTES(0x14, 0x40, 0x12, 0x03, 0x13), &s, &n);
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0);
    l = disassemble(o, on);
    WANT(l, OP(12), U(0), U(2), OP(7), U(2), U(NIMPORTS), OP(18), U(0), OP(64), CODE_A, 1, X(0),
         OP(19));
    free(o);
    free(b);

    /* A frame that a deallocate ended: none again. */
    b = module(BYTES(0x0c, 0x00, 0x20, 0x12, 0x00, 0x14, 0x13), &s, &n);
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0);
    l = disassemble(o, on);
    WANT(l, OP(12), U(0), U(2), OP(18), U(0), OP(78), U(2), U(NIMPORTS));
    free(o);
    free(b);
}

Test(rewrite, only_the_kinds_asked_for) {
    shape s = {2, 0, NULL, 0, NULL, 0};
    size_t n, on;
    uint8_t *o;
    reloc_error err;
    /* allocate 0 2; apply 0; send; deallocate 0; return */
    uint8_t *b = module(BYTES(0x0c, 0x00, 0x20, 0x70, 0x00, 0x14, 0x12, 0x00, 0x13), &s, &n);
    reloc_spec spec = guard_spec(GUARD_SEND);
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0);
    listing l = disassemble(o, on);
    WANT(l, OP(12), U(0), U(2), OP(112), U(0), OP(7), U(2), U(NIMPORTS), OP(18), U(0), OP(19));
    free(o);
    /* No kinds, or no guard: the code is not touched. */
    spec = guard_spec(0);
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0);
    cr_assert_eq(on, n);
    cr_assert_eq(memcmp(o, b, n), 0);
    free(o);
    free(b);
}

Test(rewrite, arity_over_255) {
    shape s = {0, 0, NULL, 0, NULL, 0};
    size_t n;
    uint8_t *o;
    size_t on;
    reloc_error err;
    /* apply 254: the guard would take 256 arguments. */
    uint8_t *b = module(BYTES(0x0c, 0x00, 0x00, 0x70, 0x08, 0xfe, 0x12, 0x00, 0x13), &s, &n);
    reloc_spec spec = guard_spec(GUARD_APPLY);
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), -1);
    cr_assert_eq(err.code, RELOC_E_ARITY);
    cr_assert_eq(err.fn, GUARD_FN_APPLY);
    cr_assert_eq(err.arity, 254);
    free(b);
}

Test(rewrite, mfa_redirects) {
    shape s = {1, 0, NULL, 0, NULL, 0};
    size_t n, on;
    uint8_t *o;
    reloc_error err;
    /* allocate 0 1; call_ext 1 lists:reverse/1; bif2 0 element/2 x0 x0 x0;
     * deallocate 0; return */
    uint8_t *b = module(BYTES(0x0c, 0x00, 0x10, 0x07, 0x10, 0x10, 0x0b, 0x05, 0x00, 0x03, 0x03,
                              0x03, 0x12, 0x00, 0x13),
                        &s, &n);
    reloc_mfa mfa = {(const uint8_t *)"lists", (const uint8_t *)"reverse", 5, 7, 1,
                     (const uint8_t *)"t",     (const uint8_t *)"rev",     1, 3};
    reloc_spec spec = {0};
    spec.mfas = &mfa;
    spec.nmfas = 1;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0, "%d", err.code);
    assert_import(o, on, 1, "t", "rev", 1);
    assert_import(o, on, 0, "erlang", "element", 2);
    cr_assert_eq(import_count(o, on), NIMPORTS);
    /* The code is the same, byte for byte. */
    beam_module a, z;
    beam_error e;
    cr_assert_eq(beam_parse(b, n, &a, &e), BEAM_OK);
    cr_assert_eq(beam_parse(o, on, &z, &e), BEAM_OK);
    const beam_chunk *ca = beam_find_chunk(&a, "Code"), *cz = beam_find_chunk(&z, "Code");
    cr_assert_eq(ca->size, cz->size);
    cr_assert_eq(memcmp(b + ca->offset, o + cz->offset, ca->size), 0);
    cr_assert_eq(z.natoms, NATOMS + 2);
    beam_module_free(&a);
    beam_module_free(&z);
    free(o);

    /* element/2 is used by a bif instruction: refused. */
    reloc_mfa bif = {(const uint8_t *)"erlang", (const uint8_t *)"element", 6, 7, 2,
                     (const uint8_t *)"t",      (const uint8_t *)"el",      1, 2};
    reloc_mfa both[] = {mfa, bif};
    spec.mfas = both;
    spec.nmfas = 2;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BIF_REDIRECT);
    cr_assert_eq(err.index, 1);
    free(b);
}

Test(rewrite, mfa_redirect_of_a_fun_literal) {
    /* Literal 0: fun lists:reverse/1; literal 1: {lists, reverse}. */
    const uint8_t fun[] = {131, 113, 119, 5,   'l', 'i', 's', 't', 's', 119,
                           7,   'r', 'e', 'v', 'e', 'r', 's', 'e', 97,  1};
    const uint8_t data[] = {131, 104, 2,   119, 5,   'l', 'i', 's', 't', 's',
                            119, 7,   'r', 'e', 'v', 'e', 'r', 's', 'e'};
    const uint8_t *terms[] = {fun, data};
    size_t lens[] = {sizeof fun, sizeof data}, litn;
    uint8_t *lit = test_literal_table(terms, lens, 2, &litn);
    shape s = {0, 0, lit, litn, NULL, 0};
    size_t n, on;
    uint8_t *o;
    reloc_error err;
    /* move literal 0 x0; return */
    uint8_t *b = module(BYTES(0x40, 0x47, 0x00, 0x03, 0x13), &s, &n);
    reloc_mfa mfa = {(const uint8_t *)"lists", (const uint8_t *)"reverse", 5, 7, 1,
                     (const uint8_t *)"t",     (const uint8_t *)"rev",     1, 3};
    reloc_spec spec = {0};
    spec.mfas = &mfa;
    spec.nmfas = 1;
    cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0, "%d", err.code);
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(o, on, &m, &e), BEAM_OK);
    beam_literals lits;
    cr_assert_eq(beam_literals_load(&m, &lits, &e), BEAM_OK);
    size_t pos = 0;
    const uint8_t *t;
    uint32_t tl;
    const uint8_t want_fun[] = {131, 113, 119, 1, 't', 119, 3, 'r', 'e', 'v', 97, 1};
    cr_assert(beam_literals_next(&lits, &pos, &t, &tl));
    cr_assert_eq(tl, sizeof want_fun);
    cr_assert_eq(memcmp(t, want_fun, tl), 0);
    /* The data atoms do not change. */
    cr_assert(beam_literals_next(&lits, &pos, &t, &tl));
    cr_assert_eq(tl, sizeof data);
    cr_assert_eq(memcmp(t, data, tl), 0);
    beam_literals_free(&lits);
    beam_module_free(&m);
    free(o);
    free(b);
    free(lit);
}

Test(sites, of_a_handmade_function) {
    /* Line: 1 instruction... items: lines 7 and 9. */
    static const uint8_t line[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    0,
                                   2, 0, 0, 0, 2, 0, 0, 0, 0, 0x71, 0x91};
    test_chunk lc = {"Line", line, sizeof line};
    const uint8_t fun[] = {131, 113, 119, 5,   'l', 'i', 's', 't', 's', 119,
                           7,   'r', 'e', 'v', 'e', 'r', 's', 'e', 97,  1};
    const uint8_t *terms[] = {fun, fun};
    size_t lens[] = {sizeof fun, sizeof fun}, litn;
    uint8_t *lit = test_literal_table(terms, lens, 2, &litn);
    shape s = {2, 0, lit, litn, &lc, 1};
    size_t n;
    /* allocate 0 2; line 1; call_ext 0 erlang:self/0; line 2; apply 0;
     * call_fun 0; send; bif2 0 element/2 x0 x0 x0; move literal 0 x0;
     * deallocate 0; return */
    uint8_t *b = module(BYTES(0x0c, 0x00, 0x20, 0x99, 0x10, 0x07, 0x00, 0x20, 0x99, 0x20, 0x70,
                              0x00, 0x4b, 0x00, 0x14, 0x0b, 0x05, 0x00, 0x03, 0x03, 0x03, 0x40,
                              0x47, 0x00, 0x03, 0x12, 0x00, 0x13),
                        &s, &n);
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(b, n, &m, &e), BEAM_OK);
    beam_literals lits;
    cr_assert_eq(beam_literals_load(&m, &lits, &e), BEAM_OK);
    code_sites cs;
    cr_assert_eq(code_call_sites(&m, CODE_OTP25_MAX_OPCODE, &lits, &cs, &e), BEAM_OK, "%s",
                 beam_errcode_name(e.code));
    /* call self (line 7), apply, call_fun, send, bif element (line 9), the
     * fun in literal 0 (line 9), the fun in literal 1 (no caller). */
    cr_assert_eq(cs.nsites, 7);
    const uint8_t kinds[] = {SITE_CALL, SITE_APPLY, SITE_CALL_FUN, SITE_SEND,
                             SITE_BIF,  SITE_FUN,   SITE_FUN};
    const uint32_t lines[] = {7, 9, 9, 9, 9, 9, 0};
    for (size_t i = 0; i < 7; i++) {
        cr_assert_eq(cs.sites[i].kind, kinds[i], "site %zu", i);
        cr_assert_eq(cs.sites[i].line, lines[i], "site %zu", i);
        cr_assert_eq(cs.sites[i].fn_atom, i < 6 ? 2 : 0, "site %zu", i);
    }
    cr_assert_eq(cs.sites[0].import, 2);
    cr_assert_eq(cs.sites[4].import, 0);
    cr_assert_eq(cs.nfuns, 2);
    cr_assert_eq(cs.funs[cs.sites[5].fun].literal, 0);
    cr_assert_eq(cs.funs[cs.sites[6].fun].literal, 1);
    cr_assert_eq(cs.funs[0].arity, 1);
    cr_assert_eq(cs.funs[0].mod.len, 5);
    code_sites_free(&cs);
    beam_literals_free(&lits);
    beam_module_free(&m);
    free(b);
    free(lit);
}

/* Real modules: every dynamic call site is rewritten, and what is left has
 * none but calls of the guard, one for each. */
Test(rewrite, real_modules) {
    const char *files[] = {"lib/stdlib-*/ebin/gen_server.beam", "lib/stdlib-*/ebin/lists.beam",
                           "lib/kernel-*/ebin/rpc.beam"};
    for (size_t k = 0; k < sizeof files / sizeof *files; k++) {
        size_t n, on;
        uint8_t *b = test_read_otp_file(files[k], &n), *o;
        beam_module m;
        beam_error e;
        cr_assert_eq(beam_parse(b, n, &m, &e), BEAM_OK);
        beam_literals lits;
        cr_assert_eq(beam_literals_load(&m, &lits, &e), BEAM_OK);
        code_sites before;
        cr_assert_eq(code_call_sites(&m, CODE_OTP25_MAX_OPCODE, &lits, &before, &e), BEAM_OK);
        uint32_t dynamic = 0;
        for (size_t i = 0; i < before.nsites; i++) {
            dynamic += before.sites[i].kind >= SITE_APPLY;
        }
        cr_assert_gt(dynamic, 0, "%s", files[k]);
        reloc_spec spec = guard_spec(GUARD_APPLY | GUARD_CALL_FUN | GUARD_SEND);
        reloc_error err;
        cr_assert_eq(test_relocate_valid(b, n, &spec, &o, &on, &err), 0, "%s: %d", files[k],
                     err.code);
        cr_assert_eq(err.rewritten, dynamic, "%s", files[k]);

        beam_module m2;
        cr_assert_eq(beam_parse(o, on, &m2, &e), BEAM_OK);
        beam_literals lits2;
        cr_assert_eq(beam_literals_load(&m2, &lits2, &e), BEAM_OK);
        code_sites after;
        cr_assert_eq(code_call_sites(&m2, CODE_OTP25_MAX_OPCODE, &lits2, &after, &e), BEAM_OK);
        uint32_t guard_calls = 0;
        for (size_t i = 0; i < after.nsites; i++) {
            cr_assert_lt(after.sites[i].kind, SITE_APPLY);
            if (after.sites[i].kind == SITE_CALL && after.sites[i].import >= m.nimports) {
                uint32_t ent[3];
                beam_table_entry(m2.imports, after.sites[i].import, ent);
                cr_assert_eq(m2.atoms[ent[0] - 1].len, 1);
                cr_assert_eq(m2.atoms[ent[0] - 1].name[0], 'g');
                guard_calls++;
            }
        }
        cr_assert_eq(guard_calls, dynamic);
        code_sites_free(&before);
        code_sites_free(&after);
        beam_literals_free(&lits);
        beam_literals_free(&lits2);
        beam_module_free(&m);
        beam_module_free(&m2);
        free(o);
        free(b);
    }
}
