/* NIF glue for the native BEAM toolkit: decode arguments, call the C core,
 * encode results. No parsing logic lives here. Loaded by src/sandbox_nif.erl,
 * which sends large inputs to the dirty-CPU variants of each function. */
#include <erl_nif.h>
#include <string.h>

#include "beam.h"
#include "bytes.h"
#include "checksum.h"
#include "etf.h"
#include "relocate.h"

typedef struct {
    uint32_t max_opcode;
} nif_priv;

static ERL_NIF_TERM am_ok, am_error, am_true, am_false, am_truncated, am_form, am_header,
    am_not_iff, am_not_beam, am_trailing_bytes, am_bad_padding, am_duplicate_chunk,
    am_missing_chunk, am_bad_chunk, am_bad_atom, am_bad_atom_index, am_imports, am_exports,
    am_locals, am_zlib_error, am_bad_literal, am_bad_term, am_unsupported_instruction_set,
    am_unsupported_opcode, am_out_of_memory, am_module, am_atoms, am_atom_encoding, am_utf8,
    am_latin1, am_chunks, am_attributes, am_compile_info, am_has_literals, am_has_debug_info,
    am_has_docs, am_has_exck, am_external_funs, am_atom_too_long, am_duplicate_map_key, am_too_large, am_too_many_atoms;

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

static ERL_NIF_TERM relocate_nif(ErlNifEnv *env, int argc, const ERL_NIF_TERM argv[]) {
    (void)argc;
    ErlNifBinary bin;
    reloc_spec spec = {0};
    reloc_pair *renames = NULL, *redirects = NULL;
    ERL_NIF_TERM ret;
    int from_binary = 0;
    if (!get_binary(env, argv[0], &bin) ||
        !get_pairs(env, argv[1], &renames, &spec.nrenames, &from_binary) ||
        !get_pairs(env, argv[2], &redirects, &spec.nredirects, &from_binary) ||
        (argv[3] != am_true && argv[3] != am_false)) {
        ret = enif_make_badarg(env);
        goto out;
    }
    spec.renames = renames;
    spec.redirects = redirects;
    spec.strip_debug = argv[3] == am_true;
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
    case RELOC_E_BEAM:
        ret = error_tuple(env, &err.beam);
        break;
    case RELOC_E_ATOM_TOO_LONG: {
        ERL_NIF_TERM name;
        memcpy(enif_make_new_binary(env, err.name_len, &name), err.name, err.name_len);
        ret = enif_make_tuple2(env, am_error, enif_make_tuple2(env, am_atom_too_long, name));
        break;
    }
    case RELOC_E_DUPLICATE_MAP_KEY: {
        ERL_NIF_TERM key = am_error;
        unsigned char *ext = enif_alloc(err.key_len + 1);
        if (ext && err.key) {
            ext[0] = ETF_VERSION;
            memcpy(ext + 1, err.key, err.key_len);
            if (enif_binary_to_term(env, ext, err.key_len + 1, &key, 0) == 0) {
                key = am_error;
            }
        }
        enif_free(ext);
        ret = enif_make_tuple2(env, am_error, enif_make_tuple2(env, am_duplicate_map_key, key));
        break;
    }
    case RELOC_E_BAD_SPEC:
        ret = enif_make_badarg(env);
        break;
    default:
        ret = enif_make_tuple2(env, am_error, am_out_of_memory);
        break;
    }
    reloc_error_free(&err);
out:
    enif_free(renames);
    enif_free(redirects);
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
    {"parse_nif", 1, parse_nif, 0},
    {"parse_dirty", 1, parse_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"validate_nif", 1, validate_nif, 0},
    {"validate_dirty", 1, validate_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"checksum_nif", 1, checksum_nif, 0},
    {"checksum_dirty", 1, checksum_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"relocate_nif", 4, relocate_nif, 0},
    {"relocate_dirty", 4, relocate_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"reload_order_nif", 2, reload_order_nif, 0},
    {"reload_order_dirty", 2, reload_order_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
    {"dependency_graph_nif", 2, dependency_graph_nif, 0},
    {"dependency_graph_dirty", 2, dependency_graph_nif, ERL_NIF_DIRTY_JOB_CPU_BOUND},
};

ERL_NIF_INIT(sandbox_nif, nif_funcs, load, NULL, upgrade, unload)
