/* NIF glue for the native BEAM toolkit: decode arguments, call the C core,
 * encode results. No parsing logic lives here. Loaded by src/sandbox_nif.erl,
 * which sends large inputs to the dirty-CPU variants of each function. */
#include <erl_nif.h>
#include <string.h>
#include <time.h>

#include "beam.h"
#include "bytes.h"
#include "checksum.h"
#include "etf.h"
#include "relocate.h"
#include "rewrite.h"
#include "sites.h"

typedef struct {
    uint32_t max_opcode;
} nif_priv;

static ERL_NIF_TERM am_ok, am_error, am_true, am_false, am_truncated, am_form, am_header,
    am_not_iff, am_not_beam, am_trailing_bytes, am_bad_padding, am_duplicate_chunk,
    am_missing_chunk, am_bad_chunk, am_bad_atom, am_bad_atom_index, am_imports, am_exports,
    am_locals, am_zlib_error, am_bad_literal, am_bad_term, am_unsupported_instruction_set,
    am_unsupported_opcode, am_out_of_memory, am_module, am_atoms, am_atom_encoding, am_utf8,
    am_latin1, am_chunks, am_attributes, am_compile_info, am_has_literals, am_has_debug_info,
    am_has_docs, am_has_exck, am_external_funs, am_atom_too_long, am_duplicate_map_key,
    am_too_large, am_too_many_atoms, am_bad_code, am_caller, am_line, am_kind, am_target, am_call,
    am_bif, am_fun, am_apply, am_call_fun, am_send, am_nil, am_undefined, am_bif_redirect,
    am_arity_too_large;

static ERL_NIF_TERM mk_atom(ErlNifEnv *env, const char *name) {
    ERL_NIF_TERM a;
    return enif_make_existing_atom(env, name, &a, ERL_NIF_LATIN1) ? a : enif_make_atom(env, name);
}

static void make_atoms(ErlNifEnv *env) {
#define A(name) am_##name = mk_atom(env, #name)
    A(ok);
    A(error);
    A(true);
    A(false);
    A(truncated);
    A(form);
    A(header);
    A(not_iff);
    A(not_beam);
    A(trailing_bytes);
    A(bad_padding);
    A(duplicate_chunk);
    A(missing_chunk);
    A(bad_chunk);
    A(bad_atom);
    A(bad_atom_index);
    A(imports);
    A(exports);
    A(locals);
    A(zlib_error);
    A(bad_literal);
    A(bad_term);
    A(unsupported_instruction_set);
    A(unsupported_opcode);
    A(out_of_memory);
    A(module);
    A(atoms);
    A(atom_encoding);
    A(utf8);
    A(latin1);
    A(chunks);
    A(attributes);
    A(compile_info);
    A(has_literals);
    A(has_debug_info);
    A(has_docs);
    A(has_exck);
    A(external_funs);
    A(atom_too_long);
    A(duplicate_map_key);
    A(too_large);
    A(too_many_atoms);
    A(bad_code);
    A(caller);
    A(line);
    A(kind);
    A(target);
    A(call);
    A(bif);
    A(fun);
    A(apply);
    A(call_fun);
    A(send);
    A(nil);
    A(undefined);
    A(bif_redirect);
    A(arity_too_large);
#undef A
}

static int load(ErlNifEnv *env, void **priv_data, ERL_NIF_TERM load_info) {
    nif_priv *p = enif_alloc(sizeof *p);
    if (!p) {
        return 1;
    }
    unsigned int max_opcode;
    /* load_info is the running system's highest opcode (0 when unknown). */
    p->max_opcode = enif_get_uint(env, load_info, &max_opcode) && max_opcode > 0
                        ? max_opcode
                        : BEAM_DEFAULT_MAX_OPCODE;
    make_atoms(env);
    *priv_data = p;
    return 0;
}

static int upgrade(ErlNifEnv *env, void **priv_data, void **old_priv_data, ERL_NIF_TERM load_info) {
    (void)old_priv_data;
    return load(env, priv_data, load_info);
}

static void unload(ErlNifEnv *env, void *priv_data) {
    (void)env;
    enif_free(priv_data);
}

/* A chunk id: always 4 bytes, which may include NUL bytes. */
static ERL_NIF_TERM chunk_id(ErlNifEnv *env, const char *id) {
    ERL_NIF_TERM bin;
    memcpy(enif_make_new_binary(env, 4, &bin), id, 4);
    return bin;
}

static ERL_NIF_TERM error_reason(ErlNifEnv *env, const beam_error *e) {
    switch (e->code) {
    case BEAM_E_TRUNCATED:
        if (!e->has_chunk) {
            return enif_make_tuple2(env, am_truncated, am_form);
        }
        if (memcmp(e->chunk, "FOR1", 4) == 0) {
            return enif_make_tuple2(env, am_truncated, am_header);
        }
        return enif_make_tuple2(env, am_truncated, chunk_id(env, e->chunk));
    case BEAM_E_NOT_IFF:
        return am_not_iff;
    case BEAM_E_NOT_BEAM:
        return am_not_beam;
    case BEAM_E_TRAILING:
        return enif_make_tuple2(env, am_trailing_bytes, enif_make_uint64(env, e->a));
    case BEAM_E_BAD_PADDING:
        return enif_make_tuple2(env, am_bad_padding, chunk_id(env, e->chunk));
    case BEAM_E_DUPLICATE_CHUNK:
        return enif_make_tuple2(env, am_duplicate_chunk, chunk_id(env, e->chunk));
    case BEAM_E_MISSING_CHUNK:
        return enif_make_tuple2(env, am_missing_chunk, chunk_id(env, e->chunk));
    case BEAM_E_BAD_CHUNK:
        return enif_make_tuple2(env, am_bad_chunk, chunk_id(env, e->chunk));
    case BEAM_E_BAD_ATOM:
        return enif_make_tuple2(env, am_bad_atom, enif_make_uint64(env, e->a));
    case BEAM_E_BAD_ATOM_INDEX: {
        ERL_NIF_TERM t = e->table == BEAM_TABLE_IMPORTS   ? am_imports
                         : e->table == BEAM_TABLE_EXPORTS ? am_exports
                                                          : am_locals;
        return enif_make_tuple3(env, am_bad_atom_index, t, enif_make_uint64(env, e->a));
    }
    case BEAM_E_ZLIB:
        return enif_make_tuple2(env, am_zlib_error, chunk_id(env, e->chunk));
    case BEAM_E_BAD_LITERAL:
        return enif_make_tuple2(env, am_bad_literal, enif_make_uint64(env, e->a));
    case BEAM_E_BAD_TERM:
        return enif_make_tuple2(env, am_bad_term, chunk_id(env, e->chunk));
    case BEAM_E_INSTRUCTION_SET:
        return enif_make_tuple2(env, am_unsupported_instruction_set, enif_make_uint64(env, e->a));
    case BEAM_E_MAX_OPCODE:
        return enif_make_tuple2(env, am_unsupported_opcode, enif_make_uint64(env, e->a));
    case BEAM_E_TOO_LARGE:
        return enif_make_tuple4(env, am_too_large, chunk_id(env, e->chunk),
                                enif_make_uint64(env, e->a), enif_make_uint64(env, e->b));
    case BEAM_E_BAD_CODE:
        return enif_make_tuple2(env, am_bad_code, enif_make_uint64(env, e->a));
    case BEAM_E_NOMEM:
    case BEAM_E_STOPPED:
    case BEAM_OK:
        break;
    }
    return am_out_of_memory;
}

static ERL_NIF_TERM error_tuple(ErlNifEnv *env, const beam_error *e) {
    return enif_make_tuple2(env, am_error, error_reason(env, e));
}

/* ---- Atoms from untrusted input ------------------------------------------
 * Every atom a call makes comes from a BEAM that may be hostile, and atoms
 * are never freed: a call checks everything first, then counts the names
 * that are not atoms yet against its budget, and only then makes them. */

/* An atom by name: 1 and *out when it exists (create == 0) or was made
 * (create != 0), 0 otherwise. Latin-1 names and ASCII UTF-8 names go
 * straight to the atom table; other UTF-8 names are decoded as an
 * ATOM_UTF8_EXT term (OTP 25 has no UTF-8 enif_make_atom), which with
 * ERL_NIF_BIN2TERM_SAFE succeeds only for an existing atom. Its 2-byte
 * length carries names of up to 255 characters, which can take 1020 bytes. */
static int name_atom(ErlNifEnv *env, const uint8_t *name, size_t len, int utf8, int create,
                     ERL_NIF_TERM *out) {
    /* A UTF-8 name is ASCII when it has as many characters as bytes. */
    if (!utf8 || utf8_count(name, len) == (long)len) {
        if (create) {
            *out = enif_make_atom_len(env, (const char *)name, len);
            return 1;
        }
        return enif_make_existing_atom_len(env, (const char *)name, len, out, ERL_NIF_LATIN1);
    }
    unsigned char buf[4 + 4 * BEAM_MAX_ATOM_CHARS];
    if (len > sizeof buf - 4) {
        return 0;
    }
    buf[0] = ETF_VERSION;
    buf[1] = TAG_ATOM_UTF8;
    buf[2] = (unsigned char)(len >> 8);
    buf[3] = (unsigned char)len;
    memcpy(buf + 4, name, len);
    return enif_binary_to_term(env, buf, 4 + len, out, create ? 0 : ERL_NIF_BIN2TERM_SAFE) ==
           4 + len;
}

/* The atoms of a term, collected by a walk. */
typedef struct {
    etf_atom *atoms;
    size_t n, cap;
    int nomem;
} atom_list;

static int collect_atom(void *ctx, size_t off, size_t enc_len, const uint8_t *name, size_t len,
                        int utf8, etf_atom_role role) {
    (void)off;
    (void)enc_len;
    (void)role;
    atom_list *l = ctx;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        etf_atom *a = enif_realloc(l->atoms, cap * sizeof *a);
        if (!a) {
            l->nomem = 1;
            return 1;
        }
        l->atoms = a;
        l->cap = cap;
    }
    l->atoms[l->n++] = (etf_atom){name, len, utf8};
    return 0;
}

/* Names of `l` that are not atoms yet. */
static size_t count_missing(ErlNifEnv *env, const atom_list *l) {
    size_t missing = 0;
    ERL_NIF_TERM t;
    for (size_t i = 0; i < l->n; i++) {
        missing += !name_atom(env, l->atoms[i].name, l->atoms[i].len, l->atoms[i].utf8, 0, &t);
    }
    return missing;
}

static int make_all(ErlNifEnv *env, const atom_list *l) {
    ERL_NIF_TERM t;
    for (size_t i = 0; i < l->n; i++) {
        if (!name_atom(env, l->atoms[i].name, l->atoms[i].len, l->atoms[i].utf8, 1, &t)) {
            return 0;
        }
    }
    return 1;
}

/* An external term whose atoms are known to exist, decoded without making
 * any (term[-1] is its version byte, see etf_open). */
static int decode_safe(ErlNifEnv *env, const uint8_t *term, size_t len, ERL_NIF_TERM *out) {
    return enif_binary_to_term(env, term - 1, len + 1, out, ERL_NIF_BIN2TERM_SAFE) == len + 1;
}

static ERL_NIF_TERM too_many_atoms(ErlNifEnv *env, uint64_t count, uint64_t max) {
    return enif_make_tuple2(env, am_error,
                            enif_make_tuple3(env, am_too_many_atoms, enif_make_uint64(env, count),
                                             enif_make_uint64(env, max)));
}

static int get_binary(ErlNifEnv *env, ERL_NIF_TERM t, ErlNifBinary *bin) {
    return enif_is_binary(env, t) && enif_inspect_binary(env, t, bin);
}

static ERL_NIF_TERM fa_list(ErlNifEnv *env, const uint8_t *table, uint32_t n,
                            const ERL_NIF_TERM *atoms) {
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (uint32_t i = n; i-- > 0;) {
        uint32_t e[3];
        beam_table_entry(table, i, e);
        ERL_NIF_TERM fa = enif_make_tuple2(env, atoms[e[0] - 1], enif_make_uint(env, e[1]));
        list = enif_make_list_cell(env, fa, list);
    }
    return list;
}

/* ---- Cost ------------------------------------------------------------------
 * No call holds a normal scheduler for more than about 1 ms: each estimates
 * its cost from what the module declares (its size, chunks, atoms, table
 * entries, and the sizes its compressed chunks inflate to) and reschedules
 * itself as dirty when that is over the budget; parse counts exactly what it
 * will make after checking and before making it, and relocation runs
 * against a deadline, taking no step whose worst case would pass it (it is
 * then redone dirty).
 * Per-item costs in ns, measured on the project's 2-core machine with the
 * crafted worst cases of bench/beam_bench.exs (the *_hold_us_* lines).
 * Inputs above src/sandbox_nif.erl's size thresholds go dirty directly. */
#define NORMAL_SCHEDULER_BUDGET_NS 1000000u
#define COST_BYTE 2    /* per byte of the file, parsed */
#define COST_INFLATE 3 /* per byte inflated */
#define COST_WALK 5    /* per byte of a term walked and checked */
#define COST_ATOM 150  /* per atom looked up or made */
#define COST_DECODE 8  /* per byte of a term decoded by binary_to_term */
#define COST_CHUNK 150 /* per chunk listed */
#define COST_ENTRY 60  /* per import, export or local listed */
#define COST_FUN 150   /* per external fun listed, besides its atoms */
#define COST_NAME 300  /* per name of a relocation's renames and redirects */
#define COST_CODE 20   /* per byte of the Code chunk decoded and checked */

static int on_normal_scheduler(void) {
    return enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER;
}

/* Inflating and walking the chunks with these ids (NULL: every term chunk
 * and the literal table). */
static uint64_t walk_cost(const beam_module *m, const char *const *ids) {
    uint64_t ns = COST_BYTE * (uint64_t)m->size + COST_CHUNK * (uint64_t)m->nchunks;
    for (size_t i = 0; i < m->nchunks; i++) {
        const beam_chunk *c = &m->chunks[i];
        int wanted = 0;
        if (!ids) {
            wanted = beam_is_term_chunk(c->id) || memcmp(c->id, "LitT", 4) == 0;
        }
        for (size_t k = 0; ids && ids[k]; k++) {
            wanted |= memcmp(c->id, ids[k], 4) == 0;
        }
        if (wanted) {
            uint64_t plain = beam_plain_size(m, c);
            ns += plain * (COST_WALK + (plain != c->size ? COST_INFLATE : 0));
        }
    }
    return ns;
}

static int get_limit(ErlNifEnv *env, ERL_NIF_TERM t, uint64_t *out) {
    ErlNifUInt64 v;
    if (!enif_get_uint64(env, t, &v) || v == 0) {
        return 0;
    }
    *out = v;
    return 1;
}

/* ---- parse ----------------------------------------------------------------- */

/* One term chunk (Attr or CInf), opened, checked, its atoms collected. */
typedef struct {
    const beam_chunk *chunk;
    const uint8_t *term;
    size_t len;
    uint8_t *owned;
    atom_list atoms;
} term_part;

static void term_part_free(term_part *p) {
    free(p->owned);
    enif_free(p->atoms.atoms);
    memset(p, 0, sizeof *p);
}

static beam_errcode open_term_chunk(const beam_module *m, const char *id, term_part *p,
                                    beam_error *err) {
    memset(p, 0, sizeof *p);
    p->chunk = beam_find_chunk(m, id);
    if (!p->chunk) {
        return BEAM_OK;
    }
    etf_status st =
        etf_open(m->data + p->chunk->offset, p->chunk->size, 1, &p->term, &p->len, &p->owned);
    etf_visitor v = {collect_atom, NULL, &p->atoms, NULL};
    size_t end = 0;
    if (st == ETF_OK) {
        st = etf_walk_term(p->term, p->len, &end, &v);
    }
    if (st == ETF_E_NOMEM || p->atoms.nomem) {
        err->code = BEAM_E_NOMEM;
        return BEAM_E_NOMEM;
    }
    if (st != ETF_OK || end != p->len) {
        err->code = BEAM_E_BAD_TERM;
        memcpy(err->chunk, id, 4);
        err->has_chunk = 1;
        return BEAM_E_BAD_TERM;
    }
    return BEAM_OK;
}

/* The external funs `fun M:F/A` among the literals: their atoms in pairs
 * (module, function), and their arities. */
typedef struct {
    atom_list atoms;
    unsigned *arity;
    size_t n, cap;
    int nomem;
} fun_list;

static int collect_fun(void *ctx, const etf_atom *mod, const etf_atom *fun, unsigned arity) {
    fun_list *l = ctx;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        unsigned *a = enif_realloc(l->arity, cap * sizeof *a);
        if (!a) {
            l->nomem = 1;
            return 1;
        }
        l->arity = a;
        l->cap = cap;
    }
    l->arity[l->n++] = arity;
    return collect_atom(&l->atoms, 0, 0, mod->name, mod->len, mod->utf8, ETF_ATOM_FUN_MODULE) ||
           collect_atom(&l->atoms, 0, 0, fun->name, fun->len, fun->utf8, ETF_ATOM_FUN_NAME);
}

static beam_errcode collect_funs(const beam_module *m, beam_literals *lits, fun_list *funs,
                                 beam_error *err) {
    beam_errcode rc = beam_literals_load(m, lits, err);
    if (rc != BEAM_OK) {
        return rc;
    }
    etf_visitor v = {NULL, collect_fun, funs, NULL};
    size_t pos = 0, end;
    const uint8_t *term;
    uint32_t len;
    for (uint32_t i = 0; beam_literals_next(lits, &pos, &term, &len); i++) {
        etf_status st = len < 1 || term[0] != ETF_VERSION
                            ? ETF_E_VERSION
                            : etf_walk_term(term + 1, len - 1, &end, &v);
        if (funs->nomem || funs->atoms.nomem) {
            err->code = BEAM_E_NOMEM;
            return BEAM_E_NOMEM;
        }
        if (st != ETF_OK || end != len - 1) {
            err->code = BEAM_E_BAD_LITERAL;
            err->a = i;
            return BEAM_E_BAD_LITERAL;
        }
    }
    return BEAM_OK;
}

/* parse_nif(Bin, MaxInflated, MaxNewAtoms). Three steps: check everything
 * parse reads (the container and tables, every literal, Attr and CInf) and
 * collect the names it will make atoms of; count those that are not atoms
 * yet against MaxNewAtoms; make them and the result. */
static ERL_NIF_TERM parse_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifBinary bin;
    uint64_t max_inflated, max_atoms;
    if (!get_binary(env, argv[0], &bin) || !get_limit(env, argv[1], &max_inflated) ||
        !get_limit(env, argv[2], &max_atoms)) {
        return enif_make_badarg(env);
    }
    beam_module m;
    beam_error err;
    if (beam_parse_limited(bin.data, bin.size, max_inflated, &m, &err) != BEAM_OK) {
        return error_tuple(env, &err);
    }
    static const char *const parsed[] = {"LitT", "Attr", "CInf", NULL};
    uint64_t cost = walk_cost(&m, parsed);
    int normal = on_normal_scheduler();
    if (normal && cost > NORMAL_SCHEDULER_BUDGET_NS) {
        beam_module_free(&m);
        return enif_schedule_nif(env, "parse_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND, parse_nif, argc,
                                 argv);
    }
    ERL_NIF_TERM ret;
    ERL_NIF_TERM *atoms = NULL;
    unsigned char *exists = NULL;
    beam_literals lits = {0};
    fun_list funs = {0};
    term_part attr = {0}, cinf = {0};
    /* 1. Check, and collect names. */
    if (open_term_chunk(&m, "Attr", &attr, &err) != BEAM_OK ||
        open_term_chunk(&m, "CInf", &cinf, &err) != BEAM_OK ||
        collect_funs(&m, &lits, &funs, &err) != BEAM_OK) {
        ret = error_tuple(env, &err);
        goto out;
    }
    cost += COST_ATOM * ((uint64_t)m.natoms + attr.atoms.n + cinf.atoms.n + funs.atoms.n) +
            COST_DECODE * ((uint64_t)attr.len + cinf.len) + COST_FUN * (uint64_t)funs.n +
            COST_ENTRY * ((uint64_t)m.nimports + m.nexports + m.nlocals);
    if (normal && cost > NORMAL_SCHEDULER_BUDGET_NS) {
        ret = enif_schedule_nif(env, "parse_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND, parse_nif, argc,
                                argv);
        goto out;
    }
    /* 2. Count the atoms it would make. */
    atoms = enif_alloc((m.natoms + 1) * sizeof *atoms);
    exists = enif_alloc(m.natoms + 1);
    if (!atoms || !exists) {
        err.code = BEAM_E_NOMEM;
        ret = error_tuple(env, &err);
        goto out;
    }
    uint64_t missing = 0;
    for (size_t i = 0; i < m.natoms; i++) {
        exists[i] = (unsigned char)name_atom(env, m.atoms[i].name, m.atoms[i].len, m.atoms_utf8, 0,
                                             &atoms[i]);
        missing += !exists[i];
    }
    missing += count_missing(env, &attr.atoms) + count_missing(env, &cinf.atoms) +
               count_missing(env, &funs.atoms);
    if (missing > max_atoms) {
        ret = too_many_atoms(env, missing, max_atoms);
        goto out;
    }
    /* 3. Make them: the terms' first, so that a term binary_to_term refuses
     * after all (our checks let it through) leaves the fewest behind. */
    ERL_NIF_TERM terms[2];
    term_part *parts[2] = {&attr, &cinf};
    for (int k = 0; k < 2; k++) {
        terms[k] = enif_make_list(env, 0);
        if (parts[k]->chunk && (!make_all(env, &parts[k]->atoms) ||
                                !decode_safe(env, parts[k]->term, parts[k]->len, &terms[k]))) {
            err.code = BEAM_E_BAD_TERM;
            memcpy(err.chunk, parts[k]->chunk->id, 4);
            err.has_chunk = 1;
            ret = error_tuple(env, &err);
            goto out;
        }
    }
    for (size_t i = 0; i < m.natoms; i++) {
        if (!exists[i] &&
            !name_atom(env, m.atoms[i].name, m.atoms[i].len, m.atoms_utf8, 1, &atoms[i])) {
            err.code = BEAM_E_BAD_ATOM;
            err.a = i + 1;
            ret = error_tuple(env, &err);
            goto out;
        }
    }
    ERL_NIF_TERM fun_terms = enif_make_list(env, 0);
    for (size_t i = 0; i < funs.n; i++) {
        const etf_atom *mf = &funs.atoms.atoms[2 * i];
        ERL_NIF_TERM ma, fa;
        if (!name_atom(env, mf[0].name, mf[0].len, mf[0].utf8, 1, &ma) ||
            !name_atom(env, mf[1].name, mf[1].len, mf[1].utf8, 1, &fa)) {
            err.code = BEAM_E_BAD_LITERAL;
            err.a = 0;
            ret = error_tuple(env, &err);
            goto out;
        }
        ERL_NIF_TERM mfa = enif_make_tuple3(env, ma, fa, enif_make_uint(env, funs.arity[i]));
        fun_terms = enif_make_list_cell(env, mfa, fun_terms);
    }

    ERL_NIF_TERM atom_list = enif_make_list_from_array(env, atoms, (unsigned)m.natoms);
    ERL_NIF_TERM chunks = enif_make_list(env, 0);
    for (size_t i = m.nchunks; i-- > 0;) {
        ERL_NIF_TERM c = enif_make_tuple3(env, chunk_id(env, m.chunks[i].id),
                                          enif_make_uint(env, m.chunks[i].offset),
                                          enif_make_uint(env, m.chunks[i].size));
        chunks = enif_make_list_cell(env, c, chunks);
    }
    ERL_NIF_TERM imports = enif_make_list(env, 0);
    for (uint32_t i = m.nimports; i-- > 0;) {
        uint32_t e[3];
        beam_table_entry(m.imports, i, e);
        ERL_NIF_TERM mfa =
            enif_make_tuple3(env, atoms[e[0] - 1], atoms[e[1] - 1], enif_make_uint(env, e[2]));
        imports = enif_make_list_cell(env, mfa, imports);
    }
    ERL_NIF_TERM keys[] = {am_external_funs, am_module,       am_atoms,        am_atom_encoding,
                           am_chunks,        am_imports,      am_exports,      am_locals,
                           am_attributes,    am_compile_info, am_has_literals, am_has_debug_info,
                           am_has_docs,      am_has_exck};
    ERL_NIF_TERM vals[] = {
        fun_terms,
        atoms[0],
        atom_list,
        m.atoms_utf8 ? am_utf8 : am_latin1,
        chunks,
        imports,
        fa_list(env, m.exports, m.nexports, atoms),
        fa_list(env, m.locals, m.nlocals, atoms),
        terms[0],
        terms[1],
        beam_find_chunk(&m, "LitT") ? am_true : am_false,
        beam_find_chunk(&m, "Dbgi") ? am_true : am_false,
        beam_find_chunk(&m, "Docs") ? am_true : am_false,
        beam_find_chunk(&m, "ExCk") ? am_true : am_false,
    };
    ERL_NIF_TERM map;
    enif_make_map_from_arrays(env, keys, vals, sizeof keys / sizeof *keys, &map);
    ret = enif_make_tuple2(env, am_ok, map);
out:
    enif_free(atoms);
    enif_free(exists);
    term_part_free(&attr);
    term_part_free(&cinf);
    enif_free(funs.atoms.atoms);
    enif_free(funs.arity);
    beam_literals_free(&lits);
    beam_module_free(&m);
    return ret;
}

/* validate_nif(Bin, MaxInflated). */
static ERL_NIF_TERM validate_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifBinary bin;
    uint64_t max_inflated;
    if (!get_binary(env, argv[0], &bin) || !get_limit(env, argv[1], &max_inflated)) {
        return enif_make_badarg(env);
    }
    const nif_priv *p = enif_priv_data(env);
    beam_error err;
    if (on_normal_scheduler()) {
        /* A first, cheap parse tells the cost; its errors are validate's. */
        beam_module m;
        if (beam_parse_limited(bin.data, bin.size, max_inflated, &m, &err) != BEAM_OK) {
            return error_tuple(env, &err);
        }
        const beam_chunk *code = beam_find_chunk(&m, "Code");
        uint64_t cost = walk_cost(&m, NULL) + (code ? COST_CODE * (uint64_t)code->size : 0);
        int dirty = cost > NORMAL_SCHEDULER_BUDGET_NS;
        beam_module_free(&m);
        if (dirty) {
            return enif_schedule_nif(env, "validate_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                     validate_nif, argc, argv);
        }
    }
    if (beam_validate_limited(bin.data, bin.size, p->max_opcode, max_inflated, &err) != BEAM_OK) {
        return error_tuple(env, &err);
    }
    return am_ok;
}

/* call_sites_nif(Bin, MaxInflated, MaxNewAtoms) -> {ok, [Site]} | {error, Reason}.
 * Site = #{caller => {F, A} | nil, line => N | nil, kind => Kind, target => T}.
 * As parse: check everything, count the atoms it would make (every atom of
 * the table, and the funs' names), then make them. */
static ERL_NIF_TERM call_sites_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifBinary bin;
    uint64_t max_inflated, max_atoms;
    if (!get_binary(env, argv[0], &bin) || !get_limit(env, argv[1], &max_inflated) ||
        !get_limit(env, argv[2], &max_atoms)) {
        return enif_make_badarg(env);
    }
    const nif_priv *p = enif_priv_data(env);
    beam_module m;
    beam_error err;
    if (beam_parse_limited(bin.data, bin.size, max_inflated, &m, &err) != BEAM_OK) {
        return error_tuple(env, &err);
    }
    static const char *const walked[] = {"LitT", NULL};
    const beam_chunk *code = beam_find_chunk(&m, "Code");
    uint64_t cost = walk_cost(&m, walked) + (code ? COST_CODE * (uint64_t)code->size : 0) +
                    COST_ATOM * (uint64_t)m.natoms;
    if (on_normal_scheduler() && cost > NORMAL_SCHEDULER_BUDGET_NS) {
        beam_module_free(&m);
        return enif_schedule_nif(env, "call_sites_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 call_sites_nif, argc, argv);
    }
    ERL_NIF_TERM ret;
    ERL_NIF_TERM *atoms = NULL;
    unsigned char *exists = NULL;
    beam_literals lits = {0};
    code_sites sites = {0};
    atom_list names = {0};
    if (!code) {
        err.code = BEAM_E_MISSING_CHUNK;
        memcpy(err.chunk, "Code", 4);
        err.has_chunk = 1;
        ret = error_tuple(env, &err);
        goto out;
    }
    if (beam_literals_load(&m, &lits, &err) != BEAM_OK ||
        code_call_sites(&m, p->max_opcode, &lits, &sites, &err) != BEAM_OK) {
        ret = error_tuple(env, &err);
        goto out;
    }
    for (size_t i = 0; i < sites.nfuns; i++) {
        const code_fun *f = &sites.funs[i];
        if (collect_atom(&names, 0, 0, f->mod.name, f->mod.len, f->mod.utf8, ETF_ATOM_DATA) ||
            collect_atom(&names, 0, 0, f->fun.name, f->fun.len, f->fun.utf8, ETF_ATOM_DATA)) {
            break;
        }
    }
    atoms = enif_alloc((m.natoms + 1) * sizeof *atoms);
    exists = enif_alloc(m.natoms + 1);
    if (names.nomem || !atoms || !exists) {
        err.code = BEAM_E_NOMEM;
        ret = error_tuple(env, &err);
        goto out;
    }
    uint64_t missing = count_missing(env, &names);
    for (size_t i = 0; i < m.natoms; i++) {
        exists[i] = (unsigned char)name_atom(env, m.atoms[i].name, m.atoms[i].len, m.atoms_utf8, 0,
                                             &atoms[i]);
        missing += !exists[i];
    }
    if (missing > max_atoms) {
        ret = too_many_atoms(env, missing, max_atoms);
        goto out;
    }
    for (size_t i = 0; i < m.natoms; i++) {
        if (!exists[i] &&
            !name_atom(env, m.atoms[i].name, m.atoms[i].len, m.atoms_utf8, 1, &atoms[i])) {
            err.code = BEAM_E_BAD_ATOM;
            err.a = i + 1;
            ret = error_tuple(env, &err);
            goto out;
        }
    }
    ERL_NIF_TERM list = enif_make_list(env, 0);
    for (size_t i = sites.nsites; i-- > 0;) {
        const code_site *st = &sites.sites[i];
        ERL_NIF_TERM kind, target;
        switch (st->kind) {
        case SITE_CALL:
        case SITE_BIF: {
            uint32_t e[3];
            beam_table_entry(m.imports, st->import, e);
            kind = st->kind == SITE_CALL ? am_call : am_bif;
            target =
                enif_make_tuple3(env, atoms[e[0] - 1], atoms[e[1] - 1], enif_make_uint(env, e[2]));
            break;
        }
        case SITE_FUN: {
            const code_fun *f = &sites.funs[st->fun];
            ERL_NIF_TERM mod, fun;
            if (!name_atom(env, f->mod.name, f->mod.len, f->mod.utf8, 1, &mod) ||
                !name_atom(env, f->fun.name, f->fun.len, f->fun.utf8, 1, &fun)) {
                err.code = BEAM_E_BAD_LITERAL;
                err.a = f->literal;
                ret = error_tuple(env, &err);
                goto out;
            }
            kind = am_fun;
            target = enif_make_tuple3(env, mod, fun, enif_make_uint(env, f->arity));
            break;
        }
        case SITE_APPLY:
            kind = am_apply;
            target = enif_make_tuple2(env, am_apply, enif_make_uint(env, st->arity));
            break;
        case SITE_CALL_FUN:
            kind = am_call_fun;
            target = enif_make_tuple2(env, am_call_fun, enif_make_uint(env, st->arity));
            break;
        default:
            kind = am_send;
            target = am_send;
            break;
        }
        ERL_NIF_TERM caller = st->fn_atom ? enif_make_tuple2(env, atoms[st->fn_atom - 1],
                                                             enif_make_uint(env, st->fn_arity))
                                          : am_nil;
        ERL_NIF_TERM keys[] = {am_caller, am_line, am_kind, am_target};
        ERL_NIF_TERM vals[] = {caller, st->line ? enif_make_uint(env, st->line) : am_nil, kind,
                               target};
        ERL_NIF_TERM map;
        enif_make_map_from_arrays(env, keys, vals, 4, &map);
        list = enif_make_list_cell(env, map, list);
    }
    ret = enif_make_tuple2(env, am_ok, list);
out:
    enif_free(atoms);
    enif_free(exists);
    enif_free(names.atoms);
    code_sites_free(&sites);
    beam_literals_free(&lits);
    beam_module_free(&m);
    return ret;
}

static ERL_NIF_TERM checksum_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary bin;
    if (!enif_inspect_iolist_as_binary(env, argv[0], &bin)) {
        return enif_make_badarg(env);
    }
    ERL_NIF_TERM out;
    checksum128(bin.data, bin.size, enif_make_new_binary(env, CHECKSUM_BYTES, &out));
    return out;
}

/* Names for relocation: atoms are read straight from the atom table (as
 * latin-1, converted to UTF-8 into `arena`), binaries are taken as UTF-8.
 * Atoms outside latin-1 cannot be read by OTP 25's enif_get_atom; for those
 * the caller passes binaries (see sandbox_nif:relocate/4). */
static int term_name(ErlNifEnv *env, ERL_NIF_TERM t, uint8_t **arena, const uint8_t **name,
                     size_t *len, int *from_binary) {
    ErlNifBinary bin;
    if (enif_is_atom(env, t)) {
        char latin1[256];
        int n = enif_get_atom(env, t, latin1, sizeof latin1, ERL_NIF_LATIN1);
        if (n <= 0) {
            return 0;
        }
        uint8_t *out = *arena;
        size_t k = 0;
        for (int i = 0; i < n - 1; i++) {
            uint8_t c = (uint8_t)latin1[i];
            if (c < 0x80) {
                out[k++] = c;
            } else {
                out[k++] = (uint8_t)(0xC0 | c >> 6);
                out[k++] = (uint8_t)(0x80 | (c & 0x3F));
            }
        }
        *name = out;
        *len = k;
        *arena += k;
        return 1;
    }
    if (get_binary(env, t, &bin)) {
        *name = bin.data;
        *len = bin.size;
        *from_binary = 1;
        return 1;
    }
    return 0;
}

/* Decodes a map of names to names into pairs. Pairs and the arena holding
 * converted atom names are one allocation, released with enif_free. */
static int get_pairs(ErlNifEnv *env, ERL_NIF_TERM map, reloc_pair **out, size_t *n,
                     int *from_binary) {
    size_t size;
    *out = NULL;
    *n = 0;
    if (!enif_get_map_size(env, map, &size)) {
        return 0;
    }
    /* Each pair's names take at most 2 * 2 * 255 bytes as UTF-8. */
    reloc_pair *pairs = enif_alloc((size + 1) * (sizeof *pairs + 4 * 255));
    if (!pairs) {
        return 0;
    }
    uint8_t *arena = (uint8_t *)(pairs + size + 1);
    ErlNifMapIterator it;
    if (!enif_map_iterator_create(env, map, &it, ERL_NIF_MAP_ITERATOR_FIRST)) {
        enif_free(pairs);
        return 0;
    }
    size_t i = 0;
    ERL_NIF_TERM k, v;
    int ok = 1;
    while (ok && enif_map_iterator_get_pair(env, &it, &k, &v)) {
        reloc_pair *p = &pairs[i++];
        ok = term_name(env, k, &arena, &p->from, &p->from_len, from_binary) &&
             term_name(env, v, &arena, &p->to, &p->to_len, from_binary);
        enif_map_iterator_next(env, &it);
    }
    enif_map_iterator_destroy(env, &it);
    if (!ok) {
        enif_free(pairs);
        return 0;
    }
    *out = pairs;
    *n = size;
    return 1;
}

/* {error, {duplicate_map_key, Key}}. The key's atoms come from the BEAM,
 * so they count against the call's budget like parse's: over it, the
 * reason is {too_many_atoms, Count, Max} instead. */
static ERL_NIF_TERM duplicate_key(ErlNifEnv *env, const uint8_t *key, size_t len,
                                  uint64_t max_atoms) {
    ERL_NIF_TERM t = am_out_of_memory, ret;
    uint8_t *ext = enif_alloc(len + 1);
    atom_list l = {0};
    etf_visitor v = {collect_atom, NULL, &l, NULL};
    size_t end, missing;
    if (!ext || !key) {
        ret = enif_make_tuple2(env, am_error, am_out_of_memory);
        goto out;
    }
    ext[0] = ETF_VERSION;
    memcpy(ext + 1, key, len);
    if (etf_walk_term(ext + 1, len, &end, &v) != ETF_OK || end != len || l.nomem) {
        ret = enif_make_tuple2(env, am_error, am_out_of_memory);
        goto out;
    }
    if ((missing = count_missing(env, &l)) > max_atoms) {
        ret = too_many_atoms(env, missing, max_atoms);
        goto out;
    }
    if (!make_all(env, &l) || !decode_safe(env, ext + 1, len, &t)) {
        t = am_error;
    }
    ret = enif_make_tuple2(env, am_error, enif_make_tuple2(env, am_duplicate_map_key, t));
out:
    enif_free(l.atoms);
    enif_free(ext);
    return ret;
}

/* Kept atoms: a list of names as binaries, into an enif_alloc'd array
 * (NULL for none) whose names point into the binaries. */
static int get_keeps(ErlNifEnv *env, ERL_NIF_TERM list, reloc_spec *spec, reloc_name **keeps) {
    unsigned len;
    *keeps = NULL;
    if (!enif_get_list_length(env, list, &len)) {
        return 0;
    }
    if (len == 0) {
        return 1;
    }
    reloc_name *k = enif_alloc((size_t)len * sizeof *k);
    if (!k) {
        return 0;
    }
    ERL_NIF_TERM head;
    for (unsigned i = 0; enif_get_list_cell(env, list, &head, &list); i++) {
        ErlNifBinary b;
        if (!get_binary(env, head, &b)) {
            enif_free(k);
            return 0;
        }
        k[i].name = b.data;
        k[i].len = b.size;
    }
    spec->keeps = k;
    spec->nkeeps = len;
    *keeps = k;
    return 1;
}

/* The guard options: {[{Mod, Fun, Arity, ToMod, ToFun}], Guard | undefined,
 * Kinds} or {..., Kinds, [Keep]}, names as binaries, Kinds a GUARD_* mask,
 * Keep a kept atom's name (reloc_spec.keeps). The MFA and keep arrays are
 * enif_alloc'd (*keeps is NULL without keeps); names point into the terms'
 * binaries. */
static int get_guards(ErlNifEnv *env, ERL_NIF_TERM t, reloc_spec *spec, reloc_mfa **mfas,
                      reloc_name **keeps) {
    const ERL_NIF_TERM *el;
    int arity;
    unsigned len, kinds;
    ErlNifBinary guard;
    *mfas = NULL;
    *keeps = NULL;
    if (!enif_get_tuple(env, t, &arity, &el) || (arity != 3 && arity != 4) ||
        !enif_get_list_length(env, el[0], &len) || !enif_get_uint(env, el[2], &kinds)) {
        return 0;
    }
    if (arity == 4 && !get_keeps(env, el[3], spec, keeps)) {
        return 0;
    }
    if (el[1] == am_undefined) {
        spec->guard = NULL;
    } else if (get_binary(env, el[1], &guard)) {
        spec->guard = guard.data;
        spec->guard_len = guard.size;
    } else {
        enif_free(*keeps);
        *keeps = NULL;
        return 0;
    }
    spec->guard_kinds = kinds;
    reloc_mfa *a = enif_alloc(((size_t)len + 1) * sizeof *a);
    if (!a) {
        enif_free(*keeps);
        *keeps = NULL;
        return 0;
    }
    ERL_NIF_TERM list = el[0], head;
    for (unsigned i = 0; enif_get_list_cell(env, list, &head, &list); i++) {
        const ERL_NIF_TERM *e;
        ErlNifBinary b[4];
        if (!enif_get_tuple(env, head, &arity, &e) || arity != 5 || !get_binary(env, e[0], &b[0]) ||
            !get_binary(env, e[1], &b[1]) || !enif_get_uint(env, e[2], &a[i].arity) ||
            !get_binary(env, e[3], &b[2]) || !get_binary(env, e[4], &b[3])) {
            enif_free(a);
            enif_free(*keeps);
            *keeps = NULL;
            return 0;
        }
        a[i].mod = b[0].data;
        a[i].mod_len = b[0].size;
        a[i].fun = b[1].data;
        a[i].fun_len = b[1].size;
        a[i].to_mod = b[2].data;
        a[i].to_mod_len = b[2].size;
        a[i].to_fun = b[3].data;
        a[i].to_fun_len = b[3].size;
    }
    spec->mfas = a;
    spec->nmfas = len;
    *mfas = a;
    return 1;
}

/* relocate_nif(Bin, Renames, Redirects, StripDebug, Guards, MaxInflated,
 * MaxNewAtoms). Guards: see get_guards (kept atoms among them).
 * On a normal scheduler the core runs against a deadline 0.6 ms after
 * the call started, taking no step whose worst case would pass it; a
 * relocation that reaches it is done again on a dirty scheduler. One whose
 * estimate is many times the budget goes dirty at once, and so does one
 * whose rename maps alone would take more than the budget to read. */
#define RELOCATE_BUDGET_NS 600000u
#define RELOCATE_TRY_NORMAL_UNITS (8 * (uint64_t)RELOCATE_BUDGET_NS)

static uint64_t monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static ERL_NIF_TERM relocate_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    uint64_t started = monotonic_ns();
    ErlNifBinary bin;
    reloc_spec spec = {0};
    reloc_pair *renames = NULL, *redirects = NULL;
    reloc_mfa *mfas = NULL;
    reloc_name *keeps = NULL;
    ERL_NIF_TERM ret;
    int from_binary = 0;
    size_t nrenames, nredirects;
    uint64_t max_atoms;
    if (!get_binary(env, argv[0], &bin) || !enif_get_map_size(env, argv[1], &nrenames) ||
        !enif_get_map_size(env, argv[2], &nredirects) ||
        (argv[3] != am_true && argv[3] != am_false) ||
        !get_limit(env, argv[5], &spec.max_inflated) || !get_limit(env, argv[6], &max_atoms)) {
        return enif_make_badarg(env);
    }
    if (!get_guards(env, argv[4], &spec, &mfas, &keeps)) {
        return enif_make_badarg(env);
    }
    spec.strip_debug = argv[3] == am_true;
    spec.nrenames = nrenames;
    spec.nredirects = nredirects;
    spec.max_opcode = ((const nif_priv *)enif_priv_data(env))->max_opcode;
    if (on_normal_scheduler()) {
        /* The module's own declarations tell what the work is likely to be. */
        beam_module m;
        beam_error err;
        if (beam_parse_limited(bin.data, bin.size, spec.max_inflated, &m, &err) != BEAM_OK) {
            enif_free(mfas);
            enif_free(keeps);
            return error_tuple(env, &err);
        }
        uint64_t names =
            COST_NAME * (uint64_t)(nrenames + nredirects + 2 * spec.nmfas + spec.nkeeps);
        uint64_t work = reloc_work_estimate(&m, &spec) + names;
        beam_module_free(&m);
        if (names > RELOCATE_BUDGET_NS / 2 || work > RELOCATE_TRY_NORMAL_UNITS) {
            enif_free(mfas);
            enif_free(keeps);
            return enif_schedule_nif(env, "relocate_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                     relocate_nif, argc, argv);
        }
        spec.deadline_ns = started + RELOCATE_BUDGET_NS;
    }
    if (!get_pairs(env, argv[1], &renames, &spec.nrenames, &from_binary) ||
        !get_pairs(env, argv[2], &redirects, &spec.nredirects, &from_binary)) {
        ret = enif_make_badarg(env);
        goto out;
    }
    spec.renames = renames;
    spec.redirects = redirects;
    /* Names read from atoms are valid UTF-8; binaries are checked by the core. */
    spec.names_valid = !from_binary;
    uint8_t *data;
    size_t len;
    reloc_error err;
    if (beam_relocate(bin.data, bin.size, &spec, &data, &len, &err) == 0) {
        ERL_NIF_TERM out_bin;
        uint8_t *dst = enif_make_new_binary(env, len, &out_bin);
        if (dst) {
            memcpy(dst, data, len);
            ret = enif_make_tuple2(env, am_ok, out_bin);
        } else {
            ret = enif_make_tuple2(env, am_error, am_out_of_memory);
        }
        free(data);
        goto out;
    }
    switch (err.code) {
    case RELOC_E_WORK:
        /* Out of time on this scheduler: all of it again, dirty (with no
         * deadline there, this cannot happen twice). */
        ret = enif_schedule_nif(env, "relocate_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND, relocate_nif,
                                argc, argv);
        break;
    case RELOC_E_BEAM:
        ret = error_tuple(env, &err.beam);
        break;
    case RELOC_E_ATOM_TOO_LONG: {
        ERL_NIF_TERM name;
        memcpy(enif_make_new_binary(env, err.name_len, &name), err.name, err.name_len);
        ret = enif_make_tuple2(env, am_error, enif_make_tuple2(env, am_atom_too_long, name));
        break;
    }
    case RELOC_E_DUPLICATE_MAP_KEY:
        ret = duplicate_key(env, err.key, err.key_len, max_atoms);
        break;
    case RELOC_E_BAD_SPEC:
        ret = enif_make_badarg(env);
        break;
    case RELOC_E_BIF_REDIRECT: {
        const reloc_mfa *x = &spec.mfas[err.index];
        ERL_NIF_TERM mod, fun;
        if (!name_atom(env, x->mod, x->mod_len, 1, 1, &mod) ||
            !name_atom(env, x->fun, x->fun_len, 1, 1, &fun)) {
            ret = enif_make_badarg(env);
            break;
        }
        ret = enif_make_tuple2(
            env, am_error,
            enif_make_tuple2(env, am_bif_redirect,
                             enif_make_tuple3(env, mod, fun, enif_make_uint(env, x->arity))));
        break;
    }
    case RELOC_E_ARITY:
        ret = enif_make_tuple2(
            env, am_error,
            enif_make_tuple2(env, am_arity_too_large,
                             enif_make_tuple2(env,
                                              err.fn == GUARD_FN_APPLY ? am_apply : am_call_fun,
                                              enif_make_uint(env, err.arity))));
        break;
    default:
        ret = enif_make_tuple2(env, am_error, am_out_of_memory);
        break;
    }
    reloc_error_free(&err);
out:
    enif_free(renames);
    enif_free(redirects);
    enif_free(mfas);
    enif_free(keeps);
    return ret;
}

/* ---- Dependency graphs (graph.h) ----------------------------------------
 * Atoms are immediate terms, so the term itself is the id map's key. Nodes
 * get dense ids in term order (alphabetical for atoms), which makes the core's
 * canonical order "smallest name first" among independent groups. Both NIFs
 * take a work threshold (nodes + edges): when the input is larger and the
 * call runs on a normal scheduler, the NIF reschedules itself on a dirty CPU
 * scheduler after at most `threshold` steps of counting. */

#include "graph.h"

static ERL_NIF_TERM graph_error(ErlNifEnv *env, graph_errcode rc) {
    const char *name = rc == GRAPH_E_TOO_LARGE ? "too_large" : "out_of_memory";
    return enif_make_tuple2(env, am_error, enif_make_atom(env, name));
}

static ERL_NIF_TERM graph_error2(ErlNifEnv *env, const char *tag, ERL_NIF_TERM term) {
    return enif_make_tuple2(env, am_error, enif_make_tuple2(env, enif_make_atom(env, tag), term));
}

static int compare_terms(const void *a, const void *b) {
    return enif_compare(*(const ERL_NIF_TERM *)a, *(const ERL_NIF_TERM *)b);
}

typedef struct {
    uint64_t key; /* 8 bytes after the common prefix, big-endian, 0-padded */
    const char *text;
    uint32_t len;
    uint32_t id;
} named_atom;

static int compare_named(const void *pa, const void *pb) {
    const named_atom *a = pa, *b = pb;
    if (a->key != b->key) {
        return a->key < b->key ? -1 : 1;
    }
    int c = memcmp(a->text, b->text, a->len < b->len ? a->len : b->len);
    return c != 0 ? c : (a->len > b->len) - (a->len < b->len);
}

/* Sorts atoms into term order by their Latin-1 text (for Latin-1 atoms,
 * byte order is term order): a contiguous copy compares several times
 * faster than enif_compare on atoms with long common prefixes. Returns 0,
 * having written nothing, when an atom is not Latin-1 or memory is short;
 * the caller then sorts with enif_compare. */
static int sort_atoms(ErlNifEnv *env, const ERL_NIF_TERM *names, uint32_t n, ERL_NIF_TERM *sorted,
                      uint32_t *rank) {
    size_t total = 0;
    unsigned len;
    for (uint32_t i = 0; i < n; i++) {
        if (!enif_get_atom_length(env, names[i], &len, ERL_NIF_LATIN1)) {
            return 0;
        }
        total += (size_t)len + 1;
    }
    char *text = enif_alloc(total + 1);
    named_atom *items = enif_alloc(((size_t)n + 1) * sizeof *items);
    uint64_t *keys = enif_alloc(((size_t)n + 1) * sizeof *keys);
    uint32_t *order = enif_alloc(((size_t)n + 1) * sizeof *order);
    int ok = text && items && keys && order;
    for (size_t i = 0, at = 0; ok && i < n; i++) {
        int got = enif_get_atom(env, names[i], text + at, (unsigned)(total - at), ERL_NIF_LATIN1);
        if (got <= 0) {
            ok = 0;
            break;
        }
        items[i] = (named_atom){0, text + at, (uint32_t)got - 1, (uint32_t)i};
        at += (size_t)got;
    }
    if (ok) {
        /* Module names share long prefixes ("Elixir.MyApp."): key each name
         * by the 8 bytes after the prefix common to all, radix-sort the
         * keys, then sort each run of equal keys by the whole text. */
        size_t common = n > 0 ? items[0].len : 0;
        for (uint32_t i = 1; i < n && common > 0; i++) {
            size_t k = 0, lim = items[i].len < common ? items[i].len : common;
            while (k < lim && items[i].text[k] == items[0].text[k]) {
                k++;
            }
            common = k;
        }
        for (uint32_t i = 0; i < n; i++) {
            uint64_t key = 0;
            for (size_t k = common; k < common + 8; k++) {
                key = key << 8 | (k < items[i].len ? (unsigned char)items[i].text[k] : 0);
            }
            items[i].key = keys[i] = key;
            order[i] = i;
        }
        ok = graph_sort_keys(keys, order, n) == GRAPH_OK;
    }
    if (ok) {
        named_atom *run = enif_alloc(((size_t)n + 1) * sizeof *run);
        ok = run != NULL;
        for (uint32_t i = 0, j; ok && i < n; i = j) {
            for (j = i + 1; j < n && keys[j] == keys[i]; j++) {
            }
            if (j - i > 1) {
                for (uint32_t r = i; r < j; r++) {
                    run[r - i] = items[order[r]];
                }
                qsort(run, j - i, sizeof *run, compare_named);
                for (uint32_t r = i; r < j; r++) {
                    order[r] = run[r - i].id;
                }
            }
        }
        enif_free(run);
    }
    if (ok) {
        for (uint32_t i = 0; i < n; i++) {
            sorted[i] = names[order[i]];
            rank[order[i]] = i;
        }
    }
    enif_free(text);
    enif_free(items);
    enif_free(keys);
    enif_free(order);
    return ok;
}

/* Cells of a list, at most `limit` + 1 counted; 0 when it is not a proper
 * list (within the cells counted). */
static int count_cells(ErlNifEnv *env, ERL_NIF_TERM list, size_t limit, size_t *n) {
    ERL_NIF_TERM head;
    size_t k = 0;
    while (k <= limit && enif_get_list_cell(env, list, &head, &list)) {
        k++;
    }
    *n = k;
    return k > limit || enif_is_empty_list(env, list);
}

static int must_go_dirty(size_t work, unsigned long threshold) {
    return work > threshold && enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER;
}

typedef struct {
    graph_idmap ids;
    ERL_NIF_TERM *names; /* by provisional id */
    uint32_t *rank;      /* provisional id -> id in term order */
    uint32_t *src, *dst;
    ERL_NIF_TERM *sorted;
} graph_nif_state;

static void graph_state_free(graph_nif_state *st) {
    graph_idmap_free(&st->ids);
    enif_free(st->names);
    enif_free(st->rank);
    enif_free(st->src);
    enif_free(st->dst);
    enif_free(st->sorted);
}

static graph_errcode add_node(graph_nif_state *st, ERL_NIF_TERM atom, uint32_t *id) {
    int inserted;
    graph_errcode rc = graph_idmap_put(&st->ids, (uint64_t)atom, id, &inserted);
    if (rc == GRAPH_OK && inserted) {
        st->names[*id] = atom;
    }
    return rc;
}

/* reload_order_nif(Graph :: #{atom() => [atom()]}, DirtyWork) ->
 *     {ok, [[atom()]]} | {error, Reason}. */
static ERL_NIF_TERM reload_order_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    size_t nkeys;
    unsigned long threshold;
    if (!enif_get_map_size(env, argv[0], &nkeys) || !enif_get_ulong(env, argv[1], &threshold)) {
        return enif_make_badarg(env);
    }
    if (must_go_dirty(nkeys, threshold)) {
        return enif_schedule_nif(env, "reload_order_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 reload_order_nif, argc, argv);
    }
    ERL_NIF_TERM key, value, ret = am_ok;
    ErlNifMapIterator it;
    int failed = 0;
    /* Pass 1: keys are atoms, values proper lists; count the edges. */
    size_t nedges = 0, limit = enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER
                                   ? (size_t)threshold
                                   : SIZE_MAX - 1;
    if (!enif_map_iterator_create(env, argv[0], &it, ERL_NIF_MAP_ITERATOR_FIRST)) {
        return enif_make_badarg(env);
    }
    for (; enif_map_iterator_get_pair(env, &it, &key, &value); enif_map_iterator_next(env, &it)) {
        size_t n, budget = limit > nkeys + nedges ? limit - nkeys - nedges : 0;
        if (!enif_is_atom(env, key)) {
            ret = graph_error2(env, "bad_node", key);
            failed = 1;
            break;
        }
        int proper = count_cells(env, value, budget, &n);
        nedges += n;
        if (n > budget) {
            /* Over the threshold on a normal scheduler. */
            enif_map_iterator_destroy(env, &it);
            return enif_schedule_nif(env, "reload_order_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                     reload_order_nif, argc, argv);
        }
        if (!proper) {
            ret = graph_error2(env, "bad_edges", key);
            failed = 1;
            break;
        }
    }
    enif_map_iterator_destroy(env, &it);
    if (failed) {
        return ret;
    }
    if (nkeys + nedges > GRAPH_MAX_COUNT) {
        return graph_error(env, GRAPH_E_TOO_LARGE);
    }

    /* Pass 2: provisional ids in order of appearance, and the edge pairs. */
    graph_nif_state st = {0};
    graph_csr g = {0};
    graph_order o = {0};
    size_t cap = nkeys + nedges;
    graph_errcode rc = graph_idmap_init(&st.ids, cap);
    st.names = enif_alloc((cap + 1) * sizeof *st.names);
    st.src = enif_alloc((nedges + 1) * sizeof *st.src);
    st.dst = enif_alloc((nedges + 1) * sizeof *st.dst);
    if (rc != GRAPH_OK || !st.names || !st.src || !st.dst) {
        ret = graph_error(env, rc == GRAPH_OK ? GRAPH_E_NOMEM : rc);
        goto out;
    }
    enif_map_iterator_create(env, argv[0], &it, ERL_NIF_MAP_ITERATOR_FIRST);
    for (; enif_map_iterator_get_pair(env, &it, &key, &value); enif_map_iterator_next(env, &it)) {
        uint32_t id;
        if ((rc = add_node(&st, key, &id)) != GRAPH_OK) {
            break;
        }
    }
    enif_map_iterator_destroy(env, &it);
    size_t e = 0;
    enif_map_iterator_create(env, argv[0], &it, ERL_NIF_MAP_ITERATOR_FIRST);
    for (; rc == GRAPH_OK && enif_map_iterator_get_pair(env, &it, &key, &value);
         enif_map_iterator_next(env, &it)) {
        uint32_t from = graph_idmap_get(&st.ids, (uint64_t)key), to;
        ERL_NIF_TERM target;
        while (enif_get_list_cell(env, value, &target, &value)) {
            if (!enif_is_atom(env, target)) {
                ret = graph_error2(env, "bad_node", target);
                failed = 1;
                break;
            }
            if ((rc = add_node(&st, target, &to)) != GRAPH_OK) {
                break;
            }
            st.src[e] = from;
            st.dst[e] = to;
            e++;
        }
        if (failed) {
            break;
        }
    }
    enif_map_iterator_destroy(env, &it);
    if (failed) {
        goto out;
    }
    if (rc != GRAPH_OK) {
        ret = graph_error(env, rc);
        goto out;
    }

    /* Ids in term order: sort the names, rank the provisional ids. */
    uint32_t n = st.ids.count;
    st.sorted = enif_alloc(((size_t)n + 1) * sizeof *st.sorted);
    st.rank = enif_alloc(((size_t)n + 1) * sizeof *st.rank);
    if (!st.sorted || !st.rank) {
        ret = graph_error(env, GRAPH_E_NOMEM);
        goto out;
    }
    if (!sort_atoms(env, st.names, n, st.sorted, st.rank)) {
        memcpy(st.sorted, st.names, (size_t)n * sizeof *st.sorted);
        qsort(st.sorted, n, sizeof *st.sorted, compare_terms);
        for (uint32_t i = 0; i < n; i++) {
            st.rank[graph_idmap_get(&st.ids, (uint64_t)st.sorted[i])] = i;
        }
    }
    for (size_t i = 0; i < e; i++) {
        st.src[i] = st.rank[st.src[i]];
        st.dst[i] = st.rank[st.dst[i]];
    }
    if ((rc = graph_csr_build(n, e, st.src, st.dst, &g)) != GRAPH_OK ||
        (rc = graph_reload_order(&g, &o)) != GRAPH_OK) {
        ret = graph_error(env, rc);
        goto out;
    }
    ERL_NIF_TERM groups = enif_make_list(env, 0);
    for (uint32_t k = o.ngroups; k-- > 0;) {
        ERL_NIF_TERM members = enif_make_list(env, 0);
        for (uint32_t i = o.group_start[k + 1]; i-- > o.group_start[k];) {
            members = enif_make_list_cell(env, st.sorted[o.order[i]], members);
        }
        groups = enif_make_list_cell(env, members, groups);
    }
    ret = enif_make_tuple2(env, am_ok, groups);
out:
    graph_order_free(&o);
    graph_csr_free(&g);
    graph_state_free(&st);
    return ret;
}

/* The module atom a reference names: `M` itself, or the first element of an
 * `{M, F, A}` tuple. */
static int ref_module(ErlNifEnv *env, ERL_NIF_TERM ref, ERL_NIF_TERM *mod) {
    const ERL_NIF_TERM *elems;
    int arity;
    if (enif_is_atom(env, ref)) {
        *mod = ref;
        return 1;
    }
    if (enif_get_tuple(env, ref, &arity, &elems) && arity == 3 && enif_is_atom(env, elems[0])) {
        *mod = elems[0];
        return 1;
    }
    return 0;
}

/* dependency_graph_nif([{Module, [Ref], [Ref], [Ref]}], DirtyWork) ->
 *     {ok, #{Module => [Module]}} | {error, {duplicate_module, M}}.
 * A Ref is {M, F, A} or M. Each module's dependencies: the modules its refs
 * name that are in the set, not itself, without duplicates, in term order.
 * Anything not of that shape is badarg. */
static ERL_NIF_TERM dependency_graph_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    unsigned nmods;
    unsigned long threshold;
    if (!enif_get_list_length(env, argv[0], &nmods) || !enif_get_ulong(env, argv[1], &threshold)) {
        return enif_make_badarg(env);
    }
    if (must_go_dirty(nmods, threshold)) {
        return enif_schedule_nif(env, "dependency_graph_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                 dependency_graph_nif, argc, argv);
    }
    ERL_NIF_TERM ret, list = argv[0], entry;
    const ERL_NIF_TERM *el;
    int arity;
    /* Pass 1: shapes, the module set, the reference count. */
    graph_nif_state st = {0};
    ERL_NIF_TERM *keys = NULL, *vals = NULL, *deps = NULL;
    uint32_t *seen = NULL;
    size_t nrefs = 0, maxrefs = 0,
           limit = enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER ? (size_t)threshold
                                                                      : SIZE_MAX - 1;
    graph_errcode rc = graph_idmap_init(&st.ids, nmods);
    st.names = enif_alloc(((size_t)nmods + 1) * sizeof *st.names);
    if (rc != GRAPH_OK || !st.names) {
        ret = graph_error(env, rc == GRAPH_OK ? GRAPH_E_NOMEM : rc);
        goto out;
    }
    while (enif_get_list_cell(env, list, &entry, &list)) {
        uint32_t id;
        size_t here = 0;
        if (!enif_get_tuple(env, entry, &arity, &el) || arity != 4 || !enif_is_atom(env, el[0])) {
            ret = enif_make_badarg(env);
            goto out;
        }
        for (int j = 1; j < 4; j++) {
            size_t n, budget = limit > nmods + nrefs ? limit - nmods - nrefs : 0;
            int proper = count_cells(env, el[j], budget, &n);
            if (n > budget) {
                /* Over the threshold on a normal scheduler. */
                graph_state_free(&st);
                return enif_schedule_nif(env, "dependency_graph_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                         dependency_graph_nif, argc, argv);
            }
            if (!proper) {
                ret = enif_make_badarg(env);
                goto out;
            }
            nrefs += n;
            here += n;
        }
        if (here > maxrefs) {
            maxrefs = here;
        }
        uint32_t before = st.ids.count;
        if ((rc = add_node(&st, el[0], &id)) != GRAPH_OK) {
            ret = graph_error(env, rc);
            goto out;
        }
        if (st.ids.count == before) {
            ret = graph_error2(env, "duplicate_module", el[0]);
            goto out;
        }
    }

    /* Pass 2: each module's dependencies. seen[v] == i + 1 marks v as
     * already listed for module i. */
    keys = enif_alloc(((size_t)nmods + 1) * sizeof *keys);
    vals = enif_alloc(((size_t)nmods + 1) * sizeof *vals);
    deps = enif_alloc((maxrefs + 1) * sizeof *deps);
    seen = enif_alloc(((size_t)nmods + 1) * sizeof *seen);
    if (!keys || !vals || !deps || !seen) {
        ret = graph_error(env, GRAPH_E_NOMEM);
        goto out;
    }
    memset(seen, 0, (size_t)nmods * sizeof *seen);
    list = argv[0];
    for (uint32_t i = 0; enif_get_list_cell(env, list, &entry, &list); i++) {
        enif_get_tuple(env, entry, &arity, &el);
        size_t nd = 0;
        seen[i] = i + 1;
        for (int j = 1; j < 4; j++) {
            ERL_NIF_TERM refs = el[j], ref, mod;
            while (enif_get_list_cell(env, refs, &ref, &refs)) {
                if (!ref_module(env, ref, &mod)) {
                    ret = enif_make_badarg(env);
                    goto out;
                }
                uint32_t v = graph_idmap_get(&st.ids, (uint64_t)mod);
                if (v != UINT32_MAX && seen[v] != i + 1) {
                    seen[v] = i + 1;
                    deps[nd++] = mod;
                }
            }
        }
        qsort(deps, nd, sizeof *deps, compare_terms);
        keys[i] = el[0];
        vals[i] = enif_make_list_from_array(env, deps, (unsigned)nd);
    }
    ERL_NIF_TERM map;
    if (!enif_make_map_from_arrays(env, keys, vals, nmods, &map)) {
        ret = enif_make_badarg(env);
        goto out;
    }
    ret = enif_make_tuple2(env, am_ok, map);
out:
    enif_free(keys);
    enif_free(vals);
    enif_free(deps);
    enif_free(seen);
    graph_state_free(&st);
    return ret;
}

static ErlNifFunc nif_funcs[] = {
    {"parse_nif", 3, parse_nif, 0},
    {"parse_dirty", 3, parse_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"validate_nif", 2, validate_nif, 0},
    {"validate_dirty", 2, validate_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"call_sites_nif", 3, call_sites_nif, 0},
    {"call_sites_dirty", 3, call_sites_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"checksum_nif", 1, checksum_nif, 0},
    {"checksum_dirty", 1, checksum_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"relocate_nif", 7, relocate_nif, 0},
    {"relocate_dirty", 7, relocate_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"reload_order_nif", 2, reload_order_nif, 0},
    {"reload_order_dirty", 2, reload_order_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"dependency_graph_nif", 2, dependency_graph_nif, 0},
    {"dependency_graph_dirty", 2, dependency_graph_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
};

ERL_NIF_INIT(sandbox_nif, nif_funcs, load, NULL, upgrade, unload)
