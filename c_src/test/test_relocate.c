/* Criterion tests of relocation on a real module (stdlib's lists.beam). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "beam.h"
#include "relocate.h"
#include "test_helpers.h"

#define PAIR(a, b)                                                                                 \
    { (const uint8_t *)(a), strlen(a), (const uint8_t *)(b), strlen(b) }

static int atom_is(const beam_module *m, size_t index, const char *name) {
    const beam_atom *a = &m->atoms[index - 1];
    return a->len == strlen(name) && memcmp(a->name, name, a->len) == 0;
}

static int chunk_equal(const beam_module *a, const beam_module *b, const char *id) {
    const beam_chunk *x = beam_find_chunk(a, id), *y = beam_find_chunk(b, id);
    return x && y && x->size == y->size &&
           memcmp(a->data + x->offset, b->data + y->offset, x->size) == 0;
}

Test(relocate, renames_the_module_and_keeps_code) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    reloc_pair renames[] = {PAIR("lists", "sandbox@t@lists")};
    reloc_spec spec = {.renames = renames, .nrenames = 1};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    cr_assert_eq(beam_validate(out, out_n, BEAM_DEFAULT_MAX_OPCODE, &err.beam), BEAM_OK);

    beam_module a, b;
    beam_error e;
    cr_assert_eq(beam_parse(in, n, &a, &e), BEAM_OK);
    cr_assert_eq(beam_parse(out, out_n, &b, &e), BEAM_OK);
    cr_assert(atom_is(&b, 1, "sandbox@t@lists"));
    cr_assert_eq(a.natoms, b.natoms);
    for (size_t i = 2; i <= a.natoms; i++) {
        cr_assert(a.atoms[i - 1].len == b.atoms[i - 1].len &&
                  memcmp(a.atoms[i - 1].name, b.atoms[i - 1].name, a.atoms[i - 1].len) == 0);
    }
    static const char *same[] = {"Code", "StrT", "ImpT", "ExpT", "LocT", "Line"};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        cr_assert(chunk_equal(&a, &b, same[i]), "%s changed", same[i]);
    }
    beam_module_free(&a);
    beam_module_free(&b);
    free(out);
    free(in);
}

Test(relocate, nothing_to_do_is_identity) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    reloc_spec spec = {0};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    cr_assert_eq(out_n, n);
    cr_assert(memcmp(in, out, n) == 0);
    free(out);
    free(in);
}

Test(relocate, redirect_appends_the_shim_and_repoints_imports) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    reloc_pair redirects[] = {PAIR("erlang", "my_shim")};
    reloc_spec spec = {.redirects = redirects, .nredirects = 1};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    beam_module a, b;
    beam_error e;
    cr_assert_eq(beam_parse(in, n, &a, &e), BEAM_OK);
    cr_assert_eq(beam_parse(out, out_n, &b, &e), BEAM_OK);
    cr_assert_eq(b.natoms, a.natoms + 1);
    cr_assert(atom_is(&b, b.natoms, "my_shim"));
    cr_assert_eq(a.nimports, b.nimports);
    size_t repointed = 0;
    for (uint32_t i = 0; i < a.nimports; i++) {
        uint32_t ea[3], eb[3];
        beam_table_entry(a.imports, i, ea);
        beam_table_entry(b.imports, i, eb);
        cr_assert_eq(ea[1], eb[1]);
        cr_assert_eq(ea[2], eb[2]);
        if (atom_is(&a, ea[0], "erlang")) {
            cr_assert_eq(eb[0], b.natoms);
            repointed++;
        } else {
            cr_assert_eq(ea[0], eb[0]);
        }
    }
    cr_assert_gt(repointed, 0);
    /* The atom 'erlang' itself stays in the table. */
    int still_there = 0;
    for (size_t i = 1; i <= b.natoms; i++) {
        still_there |= atom_is(&b, i, "erlang");
    }
    cr_assert(still_there);
    cr_assert(chunk_equal(&a, &b, "Code"));
    beam_module_free(&a);
    beam_module_free(&b);
    free(out);
    free(in);
}

Test(relocate, strip_drops_debug_info) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    reloc_spec spec = {.strip_debug = 1};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    beam_module b;
    beam_error e;
    cr_assert_eq(beam_parse(out, out_n, &b, &e), BEAM_OK);
    cr_assert_null(beam_find_chunk(&b, "Dbgi"));
    cr_assert_lt(out_n, n);
    beam_module_free(&b);
    free(out);
    free(in);
}

Test(relocate, errors) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    char long_name[300];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    reloc_pair too_long[] = {PAIR("lists", long_name)};
    reloc_spec spec = {.renames = too_long, .nrenames = 1};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_ATOM_TOO_LONG);

    reloc_pair bad_utf8[] = {PAIR("lists", "\xff")};
    spec.renames = bad_utf8;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BAD_SPEC);

    reloc_pair dup[] = {PAIR("a", "b"), PAIR("a", "c")};
    spec.renames = dup;
    spec.nrenames = 2;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BAD_SPEC);

    spec.nrenames = 0;
    cr_assert_eq(beam_relocate(in, n / 2, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BEAM);
    cr_assert_eq(err.beam.code, BEAM_E_TRUNCATED);
    free(in);
}

/* Every single-byte flip is either relocated or refused (ASan checks the rest). */
Test(relocate, byte_flips) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    reloc_pair renames[] = {PAIR("lists", "sandbox@t@lists"), PAIR("erlang", "sandbox@t@erlang")};
    reloc_spec spec = {.renames = renames, .nrenames = 2};
    reloc_error err;
    for (size_t i = 0; i < n; i += 13) {
        in[i] ^= 0xA5;
        if (beam_relocate(in, n, &spec, &out, &out_n, &err) == 0) {
            free(out);
        } else {
            reloc_error_free(&err);
        }
        in[i] ^= 0xA5;
    }
    free(in);
}

/* ---- Hardening (issue 10) -------------------------------------------------- */

#include <pthread.h>
#include <time.h>
#include <zlib.h>

#include "bytes.h"
#include "etf.h"

static const reloc_pair rename_m[] = {PAIR("m", "renamed_m")};

/* {m, A}, A a latin-1 ATOM_EXT of `n` bytes 0xE9 ('é'), without the version byte. */
static test_bytes m_and_long_latin1_atom(size_t n) {
    test_bytes t = {0};
    test_put_u8(&t, 104);
    test_put_u8(&t, 2);
    test_put_atom(&t, "m");
    test_put_u8(&t, 100);
    test_put_u16(&t, (uint16_t)n);
    for (size_t i = 0; i < n; i++) {
        test_put_u8(&t, 0xE9);
    }
    return t;
}

/* A term chunk's data: the version byte and the term, or a compressed term. */
static uint8_t *term_chunk(const test_bytes *term, int compressed, size_t *len) {
    test_bytes c = {0};
    test_put_u8(&c, ETF_VERSION);
    if (compressed) {
        size_t zlen;
        uint8_t *z = test_compress(term->data, term->len, &zlen);
        test_put_u8(&c, TAG_COMPRESSED);
        test_put_u32(&c, (uint32_t)term->len);
        test_put(&c, z, zlen);
        free(z);
    } else {
        test_put(&c, term->data, term->len);
    }
    *len = c.len;
    return c.data;
}

/* Regression: a latin-1 atom of up to 65,535 bytes in a term chunk used to
 * be converted to UTF-8 into a 510-byte stack buffer once an earlier atom
 * of the term was renamed (the change check stopped at that atom, so the
 * rest of the term was never checked): a stack overflow under ASan, and a
 * dead VM in the NIF. Every term chunk, compressed or not, and the literal
 * table are now walked whole, and refused. */
Test(relocate_hardening, long_latin1_atom_after_a_renamed_one) {
    static const char *ids[] = {"Attr", "CInf", "Dbgi", "Docs", "ExCk", "Meta"};
    test_bytes term = m_and_long_latin1_atom(5000);
    reloc_spec spec = {.renames = rename_m, .nrenames = 1};
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++) {
        for (int compressed = 0; compressed < 2; compressed++) {
            size_t clen, n, out_n;
            uint8_t *cdata = term_chunk(&term, compressed, &clen), *out;
            test_chunk extra = {ids[i], cdata, clen};
            uint8_t *in = test_minimal_module(&extra, 1, &n);
            reloc_error err;
            cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1, "%s", ids[i]);
            cr_assert_eq(err.code, RELOC_E_BEAM);
            cr_assert_eq(err.beam.code, BEAM_E_BAD_TERM, "%s: %s", ids[i],
                         beam_errcode_name(err.beam.code));
            cr_assert_eq(memcmp(err.beam.chunk, ids[i], 4), 0);
            beam_error e;
            cr_assert_eq(beam_validate(in, n, BEAM_DEFAULT_MAX_OPCODE, &e), BEAM_E_BAD_TERM, "%s",
                         ids[i]);
            cr_assert_eq(memcmp(e.chunk, ids[i], 4), 0);
            free(in);
            free(cdata);
        }
    }
    /* The same term as a literal. */
    test_bytes lit = {0};
    test_put_u8(&lit, ETF_VERSION);
    test_put(&lit, term.data, term.len);
    const uint8_t *terms[] = {lit.data};
    size_t lens[] = {lit.len}, tlen, n, out_n;
    uint8_t *table = test_literal_table(terms, lens, 1, &tlen), *out;
    test_chunk extra = {"LitT", table, tlen};
    uint8_t *in = test_minimal_module(&extra, 1, &n);
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.beam.code, BEAM_E_BAD_LITERAL);
    cr_assert_eq(err.beam.a, 0);
    free(in);
    free(table);
    free(lit.data);
    free(term.data);
}

/* The longest latin-1 atom (255 bytes) is fine, and comes out in UTF-8. */
Test(relocate_hardening, longest_latin1_atom_is_converted) {
    test_bytes term = m_and_long_latin1_atom(255);
    size_t clen, n, out_n;
    uint8_t *cdata = term_chunk(&term, 1, &clen), *out;
    test_chunk extra = {"Meta", cdata, clen};
    uint8_t *in = test_minimal_module(&extra, 1, &n);
    reloc_spec spec = {.renames = rename_m, .nrenames = 1};
    reloc_error err;
    beam_error e;
    cr_assert_eq(beam_validate(in, n, BEAM_DEFAULT_MAX_OPCODE, &e), BEAM_OK);
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    beam_module m;
    cr_assert_eq(beam_parse(out, out_n, &m, &e), BEAM_OK);
    const beam_chunk *meta = beam_find_chunk(&m, "Meta");
    cr_assert_not_null(meta);
    const uint8_t *t;
    size_t tl;
    uint8_t *owned;
    cr_assert_eq(etf_open(out + meta->offset, meta->size, 1, &t, &tl, &owned), ETF_OK);
    /* {renamed_m, 'é' x 255}: 2 + 11 + 3 + 510 bytes. */
    cr_assert_eq(tl, 2 + 11 + 3 + 510);
    cr_assert_eq(memcmp(t + 2, "\x77\x09renamed_m", 11), 0);
    cr_assert_eq(t[13], TAG_ATOM_UTF8);
    cr_assert_eq(rd_u16(t + 14), 510);
    cr_assert_eq(t[16], 0xC3);
    cr_assert_eq(t[17], 0xA9);
    free(owned);
    beam_module_free(&m);
    free(out);
    free(in);
    free(cdata);
    free(term.data);
}

/* A literal table of `nlits` maps of `nkeys` atom keys each (`prefix`0,
 * `prefix`1, ..., and the atom m) so that relocation with m renamed rewrites
 * every map and checks its keys for duplicates. */
static uint8_t *module_with_maps(const char *prefix, size_t nlits, size_t nkeys, size_t *size) {
    uint8_t **terms = calloc(nlits, sizeof *terms);
    size_t *lens = calloc(nlits, sizeof *lens);
    for (size_t l = 0; l < nlits; l++) {
        test_bytes t = {0};
        test_put_u8(&t, ETF_VERSION);
        test_put_u8(&t, TAG_MAP);
        test_put_u32(&t, (uint32_t)(nkeys + 1));
        test_put_atom(&t, "m");
        test_put_u8(&t, TAG_SMALL_INTEGER);
        test_put_u8(&t, (uint8_t)l);
        for (size_t k = 0; k < nkeys; k++) {
            char name[64];
            snprintf(name, sizeof name, "%s%zu_%zu", prefix, (k * 7919) % nkeys, l % 3);
            test_put_atom(&t, name);
            test_put_atom(&t, k % 2 ? "m" : "v");
        }
        terms[l] = t.data;
        lens[l] = t.len;
    }
    size_t tlen;
    uint8_t *table = test_literal_table((const uint8_t *const *)terms, lens, nlits, &tlen);
    test_chunk extra = {"LitT", table, tlen};
    uint8_t *in = test_minimal_module(&extra, 1, size);
    for (size_t l = 0; l < nlits; l++) {
        free(terms[l]);
    }
    free(terms);
    free(lens);
    free(table);
    return in;
}

typedef struct {
    const uint8_t *in;
    size_t n;
    const uint8_t *expect;
    size_t expect_n;
    int rounds;
    int failures;
} reloc_job;

static void *relocate_rounds(void *arg) {
    reloc_job *j = arg;
    reloc_spec spec = {.renames = rename_m, .nrenames = 1};
    for (int r = 0; r < j->rounds; r++) {
        uint8_t *out;
        size_t out_n;
        reloc_error err;
        if (beam_relocate(j->in, j->n, &spec, &out, &out_n, &err) != 0) {
            reloc_error_free(&err);
            j->failures++;
            continue;
        }
        j->failures += out_n != j->expect_n || memcmp(out, j->expect, out_n) != 0;
        free(out);
    }
    return NULL;
}

/* Regression: the duplicate-map-key check sorted through a static base
 * pointer, so two relocations at once (two sandboxes created together)
 * compared keys in each other's buffers: false duplicate_map_key errors, a
 * use after free under ASan, a data race under TSan (make sanitize runs
 * this suite under TSan). Two threads relocate different modules with maps
 * many times; every result is byte-identical to a single-thread result. */
Test(relocate_threads, concurrent_relocations_match_a_single_thread) {
    reloc_job jobs[2] = {{0}, {0}};
    const char *prefixes[2] = {"key", "another_longer_key_name"};
    reloc_spec spec = {.renames = rename_m, .nrenames = 1};
    for (int t = 0; t < 2; t++) {
        uint8_t *in = module_with_maps(prefixes[t], 24 + 8 * (size_t)t, 96, &jobs[t].n);
        uint8_t *out;
        size_t out_n;
        reloc_error err;
        cr_assert_eq(beam_relocate(in, jobs[t].n, &spec, &out, &out_n, &err), 0, "code %d",
                     err.code);
        jobs[t].in = in;
        jobs[t].expect = out;
        jobs[t].expect_n = out_n;
        jobs[t].rounds = 150;
    }
    pthread_t th[2];
    for (int t = 0; t < 2; t++) {
        cr_assert_eq(pthread_create(&th[t], NULL, relocate_rounds, &jobs[t]), 0);
    }
    for (int t = 0; t < 2; t++) {
        pthread_join(th[t], NULL);
    }
    for (int t = 0; t < 2; t++) {
        cr_expect_eq(jobs[t].failures, 0, "thread %d: %d of %d results differ", t, jobs[t].failures,
                     jobs[t].rounds);
        free((void *)jobs[t].in);
        free((void *)jobs[t].expect);
    }
}

/* Duplicate keys are still found, wherever they are in a large map. */
Test(relocate_hardening, duplicate_map_keys_among_many) {
    for (size_t at = 0; at < 300; at += 37) {
        test_bytes t = {0};
        test_put_u8(&t, ETF_VERSION);
        test_put_u8(&t, TAG_MAP);
        test_put_u32(&t, 300);
        for (size_t k = 0; k < 300; k++) {
            char name[32];
            snprintf(name, sizeof name, "k%zu", k);
            test_put_atom(&t, k == at ? "m" : k == 299 - at / 2 ? "renamed_m" : name);
            test_put_u8(&t, TAG_NIL);
        }
        const uint8_t *terms[] = {t.data};
        size_t lens[] = {t.len}, tlen, n, out_n;
        uint8_t *table = test_literal_table(terms, lens, 1, &tlen), *out;
        test_chunk extra = {"LitT", table, tlen};
        uint8_t *in = test_minimal_module(&extra, 1, &n);
        reloc_spec spec = {.renames = rename_m, .nrenames = 1};
        reloc_error err;
        cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1, "at %zu", at);
        cr_assert_eq(err.code, RELOC_E_DUPLICATE_MAP_KEY);
        cr_assert_eq(err.key_len, 11);
        cr_assert_eq(memcmp(err.key, "\x77\x09renamed_m", 11), 0);
        reloc_error_free(&err);
        free(in);
        free(table);
        free(t.data);
    }
}

/* Streams a zlib-compressed literal table of one binary of `bin_len` zero
 * bytes, without holding it: a LitT that declares 4 + 4 + 6 + bin_len. */
static uint8_t *zero_binary_literal_table(size_t bin_len, size_t *size) {
    uint8_t head[14];
    wr_u32(head, 1);
    wr_u32(head + 4, (uint32_t)(6 + bin_len));
    head[8] = ETF_VERSION;
    head[9] = TAG_BINARY;
    wr_u32(head + 10, (uint32_t)bin_len);
    z_stream zs = {0};
    cr_assert_eq(deflateInit2(&zs, Z_BEST_SPEED, Z_DEFLATED, 15, 8, Z_RLE), Z_OK);
    test_bytes out = {0};
    test_put_u32(&out, (uint32_t)(sizeof head + bin_len));
    static const uint8_t zeros[65536];
    uint8_t buf[65536];
    size_t left = bin_len;
    int first = 1;
    for (;;) {
        int flush = left == 0 ? Z_FINISH : Z_NO_FLUSH;
        if (first) {
            zs.next_in = head;
            zs.avail_in = sizeof head;
            first = 0;
        } else {
            size_t k = left < sizeof zeros ? left : sizeof zeros;
            zs.next_in = (Bytef *)zeros;
            zs.avail_in = (uInt)k;
            left -= k;
            flush = left == 0 ? Z_FINISH : Z_NO_FLUSH;
        }
        int zr;
        do {
            zs.next_out = buf;
            zs.avail_out = sizeof buf;
            zr = deflate(&zs, flush);
            test_put(&out, buf, sizeof buf - zs.avail_out);
        } while (zs.avail_out == 0);
        if (zr == Z_STREAM_END) {
            break;
        }
    }
    deflateEnd(&zs);
    *size = out.len;
    return out.data;
}

/* Regression: inflated sizes were bounded only by zlib's best ratio
 * (1,032:1), so a 4 MiB chunk could ask for 4 GiB. A real stream that
 * inflates to just over the default cap (256 MiB) used to validate; it is
 * now refused before anything is inflated, with the sizes in the error. */
Test(relocate_hardening, inflated_size_over_the_default_cap) {
    size_t tlen, n;
    uint8_t *table = zero_binary_literal_table(BEAM_DEFAULT_MAX_INFLATED, &tlen);
    test_chunk extra = {"LitT", table, tlen};
    uint8_t *in = test_minimal_module(&extra, 1, &n);
    cr_assert_lt(n, 1 << 20);
    beam_error e;
    cr_assert_eq(beam_validate(in, n, BEAM_DEFAULT_MAX_OPCODE, &e), BEAM_E_TOO_LARGE, "%s",
                 beam_errcode_name(e.code));
    cr_assert_str_eq(e.chunk, "LitT");
    cr_assert_eq(e.a, BEAM_DEFAULT_MAX_INFLATED + 14);
    cr_assert_eq(e.b, BEAM_DEFAULT_MAX_INFLATED);
    beam_module m;
    cr_assert_eq(beam_parse(in, n, &m, &e), BEAM_E_TOO_LARGE);
    reloc_spec spec = {.renames = rename_m, .nrenames = 1};
    reloc_error err;
    uint8_t *out;
    size_t out_n;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BEAM);
    cr_assert_eq(err.beam.code, BEAM_E_TOO_LARGE);
    free(in);
    free(table);
}

/* The cap is the callers' to choose, and counts every compressed chunk. */
Test(relocate_hardening, inflated_sizes_are_summed_against_the_cap) {
    size_t tlen, n;
    uint8_t *table = zero_binary_literal_table(600 * 1024, &tlen);
    uint64_t lit_size = 14 + 600 * 1024;
    test_bytes big = {0};
    test_put_u8(&big, TAG_BINARY);
    test_put_u32(&big, 500 * 1024);
    for (size_t i = 0; i < 500 * 1024; i++) {
        test_put_u8(&big, 0);
    }
    size_t mlen;
    uint8_t *meta = term_chunk(&big, 1, &mlen);
    test_chunk extra[] = {{"LitT", table, tlen}, {"Meta", meta, mlen}};
    uint8_t *in = test_minimal_module(extra, 2, &n);
    beam_error e;
    cr_assert_eq(beam_validate_limited(in, n, BEAM_DEFAULT_MAX_OPCODE, lit_size + big.len, &e),
                 BEAM_OK, "%s", beam_errcode_name(e.code));
    cr_assert_eq(beam_validate_limited(in, n, BEAM_DEFAULT_MAX_OPCODE, lit_size, &e),
                 BEAM_E_TOO_LARGE);
    cr_assert_str_eq(e.chunk, "Meta");
    cr_assert_eq(e.a, lit_size + big.len);
    cr_assert_eq(e.b, lit_size);
    cr_assert_eq(beam_validate_limited(in, n, BEAM_DEFAULT_MAX_OPCODE, lit_size - 1, &e),
                 BEAM_E_TOO_LARGE);
    cr_assert_str_eq(e.chunk, "LitT");
    reloc_spec spec = {.renames = rename_m, .nrenames = 1, .max_inflated = lit_size};
    reloc_error err;
    uint8_t *out;
    size_t out_n;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.beam.code, BEAM_E_TOO_LARGE);
    cr_assert_str_eq(err.beam.chunk, "Meta");
    spec.max_inflated = lit_size + big.len;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    free(out);
    free(in);
    free(meta);
    free(big.data);
    free(table);
}

/* Renaming a one-letter atom to a 250-letter one makes a term of such atoms
 * grow 84-fold: the rewritten bytes count against the same cap. */
Test(relocate_hardening, rewritten_terms_are_capped) {
    char longer[251];
    memset(longer, 'z', 250);
    longer[250] = 0;
    reloc_pair renames[] = {PAIR("m", longer)};
    test_bytes list = {0};
    test_put_u8(&list, TAG_LIST);
    test_put_u32(&list, 4000);
    for (int i = 0; i < 4000; i++) {
        test_put_atom(&list, "m");
    }
    test_put_u8(&list, TAG_NIL);
    size_t mlen, n, out_n;
    uint8_t *meta = term_chunk(&list, 1, &mlen), *out;
    test_chunk extra = {"Meta", meta, mlen};
    uint8_t *in = test_minimal_module(&extra, 1, &n);
    reloc_spec spec = {.renames = renames, .nrenames = 1, .max_inflated = 512 * 1024};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BEAM);
    cr_assert_eq(err.beam.code, BEAM_E_TOO_LARGE);
    cr_assert_str_eq(err.beam.chunk, "Meta");
    cr_assert_gt(err.beam.a, 512 * 1024);
    cr_assert_eq(err.beam.b, 512 * 1024);
    spec.max_inflated = 2 << 20;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(out, out_n, &m, &e), BEAM_OK);
    const beam_chunk *c = beam_find_chunk(&m, "Meta");
    cr_assert_eq(beam_plain_size(&m, c), 5 + 4000 * (2 + 250) + 1);
    beam_module_free(&m);
    free(out);
    free(in);
    free(meta);
    free(list.data);
}

/* With a work budget, relocation gives up (and produces nothing) instead of
 * running on; without one, or with enough, the result is the same. */
Test(relocate_hardening, work_budget) {
    size_t n, out_n, ref_n;
    uint8_t *in = test_lists_beam(&n), *out, *ref;
    reloc_pair renames[] = {PAIR("lists", "sandbox@t@lists")};
    reloc_spec spec = {.renames = renames, .nrenames = 1};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &ref, &ref_n, &err), 0);
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(in, n, &m, &e), BEAM_OK);
    uint64_t estimate = reloc_work_estimate(&m, &spec);
    beam_module_free(&m);
    cr_assert_gt(estimate, n);
    spec.max_work = estimate / 2;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_WORK);
    cr_assert_null(out);
    spec.max_work = 1000 * estimate;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    cr_assert_eq(out_n, ref_n);
    cr_assert(memcmp(out, ref, ref_n) == 0);
    free(out);
    free(ref);
    free(in);
}

/* A small file whose compressed chunk declares a thousandfold its size is
 * estimated at that size, before anything is inflated. */
Test(relocate_hardening, estimate_counts_declared_sizes) {
    test_bytes big = {0};
    test_put_u8(&big, TAG_BINARY);
    test_put_u32(&big, 8 << 20);
    for (size_t i = 0; i < (8 << 20); i++) {
        test_put_u8(&big, 0);
    }
    size_t mlen, n;
    uint8_t *meta = term_chunk(&big, 1, &mlen);
    test_chunk extra = {"Meta", meta, mlen};
    uint8_t *in = test_minimal_module(&extra, 1, &n);
    cr_assert_lt(n, 16 * 1024);
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(in, n, &m, &e), BEAM_OK);
    reloc_spec spec = {.renames = rename_m, .nrenames = 1};
    cr_assert_geq(reloc_work_estimate(&m, &spec), (uint64_t)(8 << 20));
    cr_assert_eq(m.inflated, big.len);
    beam_module_free(&m);
    free(in);
    free(meta);
    free(big.data);
}

/* The change check stops at the first renamed atom, so the rewriter checks
 * the rest of the term itself, as strictly as the validator: {m, X} with X
 * each kind of malformed term is refused by both. */
Test(relocate_hardening, rewriter_checks_what_follows_a_renamed_atom) {
    static const struct {
        const char *what;
        uint8_t bytes[16];
        size_t len;
    } bad[] = {
        {"atom not UTF-8", {119, 2, 0xC3, 0x28}, 4},
        {"NaN float", {70, 0x7F, 0xF8, 0, 0, 0, 0, 0, 0}, 9},
        {"bitstring of 0 bits", {77, 0, 0, 0, 1, 0, 0xFF}, 7},
        {"bitstring of no bytes", {77, 0, 0, 0, 0, 3}, 6},
        {"big with sign 2", {110, 1, 2, 7}, 4},
        {"large big with sign 2", {111, 0, 0, 0, 1, 2, 7}, 7},
        {"reference of 0 words", {90, 0, 0, 119, 1, 'n', 0, 0, 0, 0}, 10},
        {"reference of 6 words", {114, 0, 6, 119, 1, 'n', 0}, 7},
        {"fun size under 29", {112, 0, 0, 0, 5}, 5},
        {"unknown tag", {1}, 1},
    };
    test_bytes utf8_256 = {0}; /* 256 characters */
    test_put_u8(&utf8_256, 118);
    test_put_u16(&utf8_256, 512);
    for (int i = 0; i < 256; i++) {
        test_put_u8(&utf8_256, 0xC3);
        test_put_u8(&utf8_256, 0xA9);
    }
    reloc_spec spec = {.renames = rename_m, .nrenames = 1};
    for (size_t k = 0; k <= sizeof bad / sizeof *bad; k++) {
        test_bytes term = {0};
        test_put_u8(&term, 104);
        test_put_u8(&term, 2);
        test_put_atom(&term, "m");
        const char *what = k < sizeof bad / sizeof *bad ? bad[k].what : "atom of 256 characters";
        if (k < sizeof bad / sizeof *bad) {
            test_put(&term, bad[k].bytes, bad[k].len);
            if (bad[k].bytes[0] == 112) { /* the rest of a fun: 25 more fixed bytes */
                for (int i = 0; i < 25; i++) {
                    test_put_u8(&term, 0);
                }
            }
        } else {
            test_put(&term, utf8_256.data, utf8_256.len);
        }
        size_t clen, n, out_n;
        uint8_t *cdata = term_chunk(&term, 0, &clen), *out;
        test_chunk extra = {"Meta", cdata, clen};
        uint8_t *in = test_minimal_module(&extra, 1, &n);
        beam_error e;
        cr_expect_eq(beam_validate(in, n, BEAM_DEFAULT_MAX_OPCODE, &e), BEAM_E_BAD_TERM, "%s",
                     what);
        reloc_error err;
        cr_expect_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1, "%s", what);
        cr_expect_eq(err.beam.code, BEAM_E_BAD_TERM, "%s: %s", what,
                     beam_errcode_name(err.beam.code));
        free(in);
        free(cdata);
        free(term.data);
    }
    free(utf8_256.data);
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Against a deadline, no step starts whose worst case would pass it: the
 * 12 MiB Meta of a small file inflates in slices of a third of a
 * millisecond at worst, so with 0.2 ms left nothing is inflated; with time
 * enough, the result is the same as without a deadline. */
Test(relocate_hardening, deadline) {
    test_bytes big = {0};
    test_put_u8(&big, 104);
    test_put_u8(&big, 2);
    test_put_atom(&big, "m");
    test_put_u8(&big, TAG_BINARY);
    test_put_u32(&big, 12 << 20);
    for (size_t i = 0; i < (12 << 20); i++) {
        test_put_u8(&big, 0);
    }
    size_t mlen, n, out_n, ref_n;
    uint8_t *meta = term_chunk(&big, 1, &mlen), *out, *ref;
    test_chunk extra = {"Meta", meta, mlen};
    uint8_t *in = test_minimal_module(&extra, 1, &n);
    reloc_spec spec = {.renames = rename_m, .nrenames = 1};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &ref, &ref_n, &err), 0);
    uint64_t whole = err.work;

    spec.deadline_ns = now_ns() + 200000;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_WORK);
    cr_assert_lt(err.work, 400000, "it stopped at the first slice (%lu units)",
                 (unsigned long)err.work);

    spec.deadline_ns = now_ns() - 1; /* already passed */
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_WORK);

    spec.deadline_ns = now_ns() + 600000000000u; /* ten minutes */
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    cr_assert_eq(err.work, whole);
    cr_assert_eq(out_n, ref_n);
    cr_assert(memcmp(out, ref, ref_n) == 0);
    free(out);
    free(ref);
    free(in);
    free(meta);
    free(big.data);
}
