/* NIF glue for the native BEAM toolkit: decode arguments, call the C core,
 * encode results. No parsing logic lives here. Loaded by src/sandbox_nif.erl,
 * which sends large inputs to the dirty-CPU variants of each function. */
#include <erl_nif.h>
#include <string.h>

#include "beam.h"
#include "bytes.h"
#include "checksum.h"
#include "etf.h"

typedef struct {
    uint32_t max_opcode;
} nif_priv;

static ERL_NIF_TERM am_ok, am_error, am_true, am_false, am_truncated, am_form, am_header,
    am_not_iff, am_not_beam, am_trailing_bytes, am_bad_padding, am_duplicate_chunk,
    am_missing_chunk, am_bad_chunk, am_bad_atom, am_bad_atom_index, am_imports, am_exports,
    am_locals, am_zlib_error, am_bad_literal, am_bad_term, am_unsupported_instruction_set,
    am_unsupported_opcode, am_out_of_memory, am_module, am_atoms, am_atom_encoding, am_utf8,
    am_latin1, am_chunks, am_attributes, am_compile_info, am_has_literals, am_has_debug_info,
    am_has_docs, am_has_exck, am_external_funs;

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
    case BEAM_E_NOMEM:
    case BEAM_OK:
        break;
    }
    return am_out_of_memory;
}

static ERL_NIF_TERM error_tuple(ErlNifEnv *env, const beam_error *e) {
    return enif_make_tuple2(env, am_error, error_reason(env, e));
}

/* An atom from its name in the module's atom table. Latin-1 names and ASCII
 * UTF-8 names go straight to the atom table; other UTF-8 names are decoded as
 * an ATOM_UTF8_EXT term (OTP 25 has no UTF-8 enif_make_atom). Its 2-byte
 * length carries names of up to 255 characters, which can take 1020 bytes. */
static int make_name_atom(ErlNifEnv *env, const beam_atom *a, int utf8, ERL_NIF_TERM *out) {
    /* A UTF-8 name is ASCII when it has as many characters as bytes. */
    if (!utf8 || utf8_count(a->name, a->len) == (long)a->len) {
        *out = enif_make_atom_len(env, (const char *)a->name, a->len);
        return 1;
    }
    unsigned char buf[4 + 4 * BEAM_MAX_ATOM_CHARS];
    if (a->len > sizeof buf - 4) {
        return 0;
    }
    buf[0] = 131;
    buf[1] = 118;
    buf[2] = (unsigned char)(a->len >> 8);
    buf[3] = (unsigned char)a->len;
    memcpy(buf + 4, a->name, a->len);
    return enif_binary_to_term(env, buf, 4 + (size_t)a->len, out, 0) == 4 + (size_t)a->len;
}

static int get_binary(ErlNifEnv *env, ERL_NIF_TERM t, ErlNifBinary *bin) {
    return enif_is_binary(env, t) && enif_inspect_binary(env, t, bin);
}

/* Decodes one whole external term. The core checks that it is exactly one
 * term first (binary_to_term ignores trailing bytes, and an empty buffer
 * decodes to nothing). A compressed term is inflated here: OTP 25's
 * enif_binary_to_term does not report a compressed term's size. */
static int decode_term(ErlNifEnv *env, const uint8_t *data, size_t size, ERL_NIF_TERM *t) {
    if (etf_validate(data, size, 1) != ETF_OK) {
        return 0;
    }
    if (data[1] != 80) {
        return enif_binary_to_term(env, data, size, t, 0) == size;
    }
    size_t usize = rd_u32(data + 2);
    ErlNifBinary plain;
    if (!enif_alloc_binary(usize + 1, &plain)) {
        return 0;
    }
    plain.data[0] = ETF_VERSION;
    int ok = etf_inflate_exact(data + 6, size - 6, plain.data + 1, usize) == 0 &&
             enif_binary_to_term(env, plain.data, plain.size, t, 0) == plain.size;
    enif_release_binary(&plain);
    return ok;
}

static ERL_NIF_TERM decode_term_chunk(ErlNifEnv *env, const beam_module *m, const char *id,
                                      ERL_NIF_TERM dflt, int *ok) {
    const beam_chunk *c = beam_find_chunk(m, id);
    ERL_NIF_TERM t;
    if (!c) {
        return dflt;
    }
    if (!decode_term(env, m->data + c->offset, c->size, &t)) {
        *ok = 0;
        return dflt;
    }
    return t;
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

typedef struct {
    ErlNifEnv *env;
    ERL_NIF_TERM list;
} funs_acc;

static int collect_export_fun(void *ctx, const etf_atom *mod, const etf_atom *fun, unsigned arity) {
    funs_acc *acc = ctx;
    beam_atom m = {mod->name, (uint16_t)mod->len}, f = {fun->name, (uint16_t)fun->len};
    ERL_NIF_TERM ma, fa;
    if (!make_name_atom(acc->env, &m, mod->utf8, &ma) ||
        !make_name_atom(acc->env, &f, fun->utf8, &fa)) {
        return 1;
    }
    ERL_NIF_TERM mfa = enif_make_tuple3(acc->env, ma, fa, enif_make_uint(acc->env, arity));
    acc->list = enif_make_list_cell(acc->env, mfa, acc->list);
    return 0;
}

/* The external funs `fun M:F/A` among the module's literals, in reverse
 * order of appearance (the Erlang side sorts them). */
static beam_errcode external_funs(ErlNifEnv *env, const beam_module *m, ERL_NIF_TERM *out,
                                  beam_error *err) {
    beam_literals lits;
    beam_errcode rc = beam_literals_load(m, &lits, err);
    if (rc != BEAM_OK) {
        return rc;
    }
    funs_acc acc = {env, enif_make_list(env, 0)};
    etf_visitor v = {NULL, collect_export_fun, &acc};
    size_t pos = 0, end;
    const uint8_t *term;
    uint32_t len;
    for (uint32_t i = 0; beam_literals_next(&lits, &pos, &term, &len); i++) {
        if (len < 1 || term[0] != ETF_VERSION ||
            etf_walk_term(term + 1, len - 1, &end, &v) != ETF_OK || end != len - 1) {
            err->code = BEAM_E_BAD_LITERAL;
            err->a = i;
            rc = BEAM_E_BAD_LITERAL;
            break;
        }
    }
    beam_literals_free(&lits);
    *out = acc.list;
    return rc;
}

/* The cost of a call, estimated from what the module contains, so that a
 * small input that is expensive (many atoms, a literal table that inflates
 * a thousandfold) does not hold a normal scheduler for more than about 1 ms:
 * such a call reschedules itself as dirty. Per-item costs, measured on the
 * project's 2-core machine with crafted worst cases (see bench/beam_bench.exs):
 * about 2 ns per byte of the file and per byte of inflated literals or terms
 * walked, 150 ns per atom made, 6 ns per byte of Attr/CInf decoded to terms.
 * Inputs above src/sandbox_nif.erl's size thresholds go dirty directly. */
#define NORMAL_SCHEDULER_BUDGET_NS 1000000u

/* The bytes a term chunk or the literal table inflates to (its size when it
 * is not compressed), as declared. */
static uint64_t declared_plain_bytes(const beam_module *m, const char *id) {
    const beam_chunk *c = beam_find_chunk(m, id);
    if (!c) {
        return 0;
    }
    const uint8_t *p = m->data + c->offset;
    if (memcmp(id, "LitT", 4) == 0) {
        return c->size >= 4 && rd_u32(p) != 0 ? rd_u32(p) : c->size;
    }
    return c->size >= 6 && p[1] == 80 ? rd_u32(p + 2) : c->size;
}

static int too_long_for_normal_scheduler(const beam_module *m, int makes_terms) {
    if (enif_thread_type() != ERL_NIF_THR_NORMAL_SCHEDULER) {
        return 0;
    }
    uint64_t terms = declared_plain_bytes(m, "Attr") + declared_plain_bytes(m, "CInf");
    uint64_t ns = 2 * ((uint64_t)m->size + declared_plain_bytes(m, "LitT") + terms);
    if (makes_terms) {
        ns += 150 * (uint64_t)m->natoms + 6 * terms;
    }
    return ns > NORMAL_SCHEDULER_BUDGET_NS;
}

static ERL_NIF_TERM parse_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifBinary bin;
    if (!get_binary(env, argv[0], &bin)) {
        return enif_make_badarg(env);
    }
    beam_module m;
    beam_error err;
    if (beam_parse(bin.data, bin.size, &m, &err) != BEAM_OK) {
        return error_tuple(env, &err);
    }
    if (too_long_for_normal_scheduler(&m, 1)) {
        beam_module_free(&m);
        return enif_schedule_nif(env, "parse_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND, parse_nif, argc,
                                 argv);
    }
    ERL_NIF_TERM ret;
    ERL_NIF_TERM *atoms = enif_alloc(m.natoms * sizeof *atoms);
    if (!atoms) {
        err.code = BEAM_E_NOMEM;
        ret = error_tuple(env, &err);
        goto out;
    }
    for (size_t i = 0; i < m.natoms; i++) {
        if (!make_name_atom(env, &m.atoms[i], m.atoms_utf8, &atoms[i])) {
            err.code = BEAM_E_BAD_ATOM;
            err.a = i + 1;
            ret = error_tuple(env, &err);
            goto out;
        }
    }

    ERL_NIF_TERM atom_list = enif_make_list_from_array(env, atoms, (unsigned)m.natoms);

    ERL_NIF_TERM chunks = enif_make_list(env, 0);
    for (size_t i = m.nchunks; i-- > 0;) {
        char id[5] = {0};
        memcpy(id, m.chunks[i].id, 4);
        ERL_NIF_TERM c =
            enif_make_tuple3(env, chunk_id(env, id), enif_make_uint(env, m.chunks[i].offset),
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

    int ok = 1;
    ERL_NIF_TERM attrs = decode_term_chunk(env, &m, "Attr", enif_make_list(env, 0), &ok);
    if (!ok) {
        err.code = BEAM_E_BAD_TERM;
        memcpy(err.chunk, "Attr", 5);
        err.has_chunk = 1;
        ret = error_tuple(env, &err);
        goto out;
    }
    ERL_NIF_TERM cinf = decode_term_chunk(env, &m, "CInf", enif_make_list(env, 0), &ok);
    if (!ok) {
        err.code = BEAM_E_BAD_TERM;
        memcpy(err.chunk, "CInf", 5);
        err.has_chunk = 1;
        ret = error_tuple(env, &err);
        goto out;
    }

    ERL_NIF_TERM funs;
    if (external_funs(env, &m, &funs, &err) != BEAM_OK) {
        ret = error_tuple(env, &err);
        goto out;
    }

    ERL_NIF_TERM keys[] = {am_external_funs, am_module,       am_atoms,        am_atom_encoding,
                           am_chunks,        am_imports,      am_exports,      am_locals,
                           am_attributes,    am_compile_info, am_has_literals, am_has_debug_info,
                           am_has_docs,      am_has_exck};
    ERL_NIF_TERM vals[] = {
        funs,
        atoms[0],
        atom_list,
        m.atoms_utf8 ? am_utf8 : am_latin1,
        chunks,
        imports,
        fa_list(env, m.exports, m.nexports, atoms),
        fa_list(env, m.locals, m.nlocals, atoms),
        attrs,
        cinf,
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
    beam_module_free(&m);
    return ret;
}

static ERL_NIF_TERM validate_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    ErlNifBinary bin;
    if (!get_binary(env, argv[0], &bin)) {
        return enif_make_badarg(env);
    }
    const nif_priv *p = enif_priv_data(env);
    beam_error err;
    if (enif_thread_type() == ERL_NIF_THR_NORMAL_SCHEDULER) {
        /* A first, cheap parse tells the cost; its errors are validate's. */
        beam_module m;
        if (beam_parse(bin.data, bin.size, &m, &err) != BEAM_OK) {
            return error_tuple(env, &err);
        }
        int dirty = too_long_for_normal_scheduler(&m, 0);
        beam_module_free(&m);
        if (dirty) {
            return enif_schedule_nif(env, "validate_dirty", ERL_NIF_DIRTY_JOB_CPU_BOUND,
                                     validate_nif, argc, argv);
        }
    }
    if (beam_validate(bin.data, bin.size, p->max_opcode, &err) != BEAM_OK) {
        return error_tuple(env, &err);
    }
    return am_ok;
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

static ErlNifFunc nif_funcs[] = {
    {"parse_nif", 1, parse_nif, 0},
    {"parse_dirty", 1, parse_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"validate_nif", 1, validate_nif, 0},
    {"validate_dirty", 1, validate_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"checksum_nif", 1, checksum_nif, 0},
    {"checksum_dirty", 1, checksum_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
};

ERL_NIF_INIT(sandbox_nif, nif_funcs, load, NULL, upgrade, unload)
