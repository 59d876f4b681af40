/* Criterion tests of the BEAM parser on small modules built here, chunk by
 * chunk, for the formats no installed file uses: the latin-1 `Atom` chunk,
 * the compact (negative count) atom table, an uncompressed literal table,
 * and for container edge cases. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "beam.h"
#include "bytes.h"
#include "etf.h"
#include "relocate.h"
#include "test_helpers.h"

typedef test_chunk spec;

#define BYTES(...) ((const uint8_t[]){__VA_ARGS__})
#define CHUNK(id_, ...)                                                                            \
    { id_, BYTES(__VA_ARGS__), sizeof(BYTES(__VA_ARGS__)) }
#define build test_build_beam

/* The chunks every module needs besides its atoms: no imports, export 2/0
 * (atom 2, arity 0, label 2), and the code of f() -> [] (a header of
 * instruction set 0, highest opcode 64, three labels, one function; then
 * label 1, func_info 1 2 0, label 2, move [] x0, return, int_code_end). */
#define MODULE_REST                                                                                \
    CHUNK("Code", 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 3, 0, 0, 0, 1, 0x01, 0x10, 0x02,  \
          0x12, 0x22, 0x00, 0x01, 0x20, 0x40, 0x02, 0x03, 0x13, 0x03),                             \
        {"StrT", NULL, 0}, CHUNK("ImpT", 0, 0, 0, 0),                                              \
        CHUNK("ExpT", 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2)

/* The file of the chunks most recently checked: a parsed module points into it. */
static uint8_t *file;

/* Validates and parses the chunks; when both succeed *m is the parsed module,
 * to be released with done(). */
static beam_errcode check(const spec *cs, size_t n, beam_module *m, beam_error *e) {
    size_t size;
    free(file);
    file = build(cs, n, &size);
    beam_errcode rc = beam_validate(file, size, BEAM_DEFAULT_MAX_OPCODE, e);
    beam_error pe;
    beam_errcode prc = beam_parse(file, size, m, &pe);
    /* validate runs parse first: they agree on parse's errors. */
    if (prc != BEAM_OK) {
        cr_assert_eq(rc, prc, "validate %s, parse %s", beam_errcode_name(rc),
                     beam_errcode_name(prc));
    }
    if (rc != BEAM_OK && prc == BEAM_OK) {
        beam_module_free(m); /* only a valid module goes back to the caller */
    }
    return rc != BEAM_OK ? rc : prc;
}

static void release_file(void) {
    free(file);
    file = NULL;
}

static void done(beam_module *m) {
    beam_module_free(m);
    release_file();
}

TestSuite(fixtures, .fini = release_file);

static int atom_is(const beam_module *m, size_t index, const char *name) {
    const beam_atom *a = &m->atoms[index - 1];
    return a->len == strlen(name) && memcmp(a->name, name, a->len) == 0;
}

Test(fixtures, minimal_module_is_valid) {
    spec cs[] = {CHUNK("AtU8", 0, 0, 0, 2, 1, 'm', 1, 'f'), MODULE_REST};
    beam_module m;
    beam_error e;
    cr_assert_eq(check(cs, 5, &m, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    cr_assert_eq(m.natoms, 2);
    cr_assert(m.atoms_utf8);
    cr_assert(atom_is(&m, 1, "m") && atom_is(&m, 2, "f"));
    cr_assert_eq(m.nexports, 1);
    done(&m);
}

Test(fixtures, latin1_atom_chunk) {
    /* "café" in latin-1: 0xE9 is not valid UTF-8 on its own. */
    spec cs[] = {CHUNK("Atom", 0, 0, 0, 2, 1, 'm', 4, 'c', 'a', 'f', 0xE9), MODULE_REST};
    beam_module m;
    beam_error e;
    cr_assert_eq(check(cs, 5, &m, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    cr_assert_not(m.atoms_utf8);
    cr_assert_eq(m.atoms[1].len, 4);
    cr_assert_eq(m.atoms[1].name[3], 0xE9);
    cr_assert_eq(memcmp(m.chunks[m.atom_chunk].id, "Atom", 4), 0);
    done(&m);

    /* The same bytes in an AtU8 chunk are not UTF-8. */
    spec bad[] = {CHUNK("AtU8", 0, 0, 0, 2, 1, 'm', 4, 'c', 'a', 'f', 0xE9), MODULE_REST};
    cr_assert_eq(check(bad, 5, &m, &e), BEAM_E_BAD_ATOM);
    cr_assert_eq(e.a, 2);
}

Test(fixtures, atu8_is_preferred_over_atom) {
    spec cs[] = {CHUNK("Atom", 0, 0, 0, 1, 1, 'x'), CHUNK("AtU8", 0, 0, 0, 2, 1, 'm', 1, 'f'),
                 MODULE_REST};
    beam_module m;
    beam_error e;
    cr_assert_eq(check(cs, 6, &m, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    cr_assert(m.atoms_utf8);
    cr_assert(atom_is(&m, 1, "m"));
    done(&m);
}

/* Compact lengths: value << 4 when below 16; otherwise two bytes,
 * (value >> 3 & 0xE0) | 0x08 and value & 0xFF. */
Test(fixtures, compact_atom_lengths) {
    enum { LONG = 300 };
    uint8_t chunk[4 + 2 + 2 + LONG];
    wr_u32(chunk, (uint32_t)-2);
    chunk[4] = 1 << 4;
    chunk[5] = 'm';
    chunk[6] = (LONG >> 3 & 0xE0) | 0x08;
    chunk[7] = LONG & 0xFF;
    for (size_t i = 0; i < LONG / 2; i++) { /* 150 x "é": 300 bytes */
        chunk[8 + 2 * i] = 0xC3;
        chunk[9 + 2 * i] = 0xA9;
    }
    spec cs[] = {{"AtU8", chunk, sizeof chunk}, MODULE_REST};
    beam_module m;
    beam_error e;
    cr_assert_eq(check(cs, 5, &m, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    cr_assert_eq(m.natoms, 2);
    cr_assert(atom_is(&m, 1, "m"));
    cr_assert_eq(m.atoms[1].len, LONG);
    cr_assert_eq(m.atoms[1].name[LONG - 1], 0xA9);
    done(&m);
}

Test(fixtures, compact_atom_errors) {
    beam_module m;
    beam_error e;
    /* A two-byte length with its second byte missing: the chunk ends early. */
    spec cut[] = {CHUNK("AtU8", 0xFF, 0xFF, 0xFF, 0xFF, 0x08), MODULE_REST};
    cr_assert_eq(check(cut, 5, &m, &e), BEAM_E_TRUNCATED);
    cr_assert_str_eq(e.chunk, "AtU8");
    /* A length with another tag than u (0): not an atom length. */
    spec tag[] = {CHUNK("AtU8", 0xFF, 0xFF, 0xFF, 0xFF, 0x11, 'm'), MODULE_REST};
    cr_assert_eq(check(tag, 5, &m, &e), BEAM_E_BAD_ATOM);
    cr_assert_eq(e.a, 1);
    /* The three-byte and longer forms (values of 2048 and up). */
    spec big[] = {CHUNK("AtU8", 0xFF, 0xFF, 0xFF, 0xFF, 0x18, 0, 0, 'm'), MODULE_REST};
    cr_assert_eq(check(big, 5, &m, &e), BEAM_E_BAD_ATOM);
    /* A name of 256 characters is too long, whatever its encoding. */
    uint8_t chunk[4 + 2 + 512];
    wr_u32(chunk, (uint32_t)-1);
    chunk[4] = (512 >> 3 & 0xE0) | 0x08;
    chunk[5] = 512 & 0xFF;
    for (size_t i = 0; i < 256; i++) {
        chunk[6 + 2 * i] = 0xC3;
        chunk[7 + 2 * i] = 0xA9;
    }
    spec toolong[] = {{"AtU8", chunk, sizeof chunk}, MODULE_REST};
    cr_assert_eq(check(toolong, 5, &m, &e), BEAM_E_BAD_ATOM);
    cr_assert_eq(e.a, 1);
}

/* Reads a literal table through parse (validate refuses an uncompressed
 * table, which OTP 25's loader cannot load, but parse reads it). */
static beam_errcode literals_of(const spec *litt, beam_literals *lits, beam_error *e) {
    spec cs[] = {CHUNK("AtU8", 0, 0, 0, 2, 1, 'm', 1, 'f'), MODULE_REST, *litt};
    beam_module m;
    size_t size;
    free(file);
    file = build(cs, 6, &size);
    beam_errcode rc = beam_parse(file, size, &m, e);
    if (rc != BEAM_OK) {
        return rc;
    }
    rc = beam_literals_load(&m, lits, e);
    beam_module_free(&m); /* lits may point into the file: freed by the next check or fini */
    return rc;
}

Test(fixtures, uncompressed_literal_table) {
    /* Uncompressed size 0 means the table follows as is: two literals. */
    spec litt = CHUNK("LitT", 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 2, 131, 106, 0, 0, 0, 3, 131, 97, 7);
    beam_literals lits;
    beam_error e;
    cr_assert_eq(literals_of(&litt, &lits, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    cr_assert_eq(lits.count, 2);
    cr_assert_null(lits.owned);
    size_t pos = 0;
    const uint8_t *term;
    uint32_t len;
    cr_assert(beam_literals_next(&lits, &pos, &term, &len));
    cr_assert_eq(len, 2);
    cr_assert_eq(term[1], 106);
    cr_assert(beam_literals_next(&lits, &pos, &term, &len));
    cr_assert_eq(len, 3);
    cr_assert_eq(term[2], 7);
    cr_assert_not(beam_literals_next(&lits, &pos, &term, &len));
    beam_literals_free(&lits);
    spec cs[] = {CHUNK("AtU8", 0, 0, 0, 2, 1, 'm', 1, 'f'), MODULE_REST, litt};
    beam_module m;
    cr_assert_eq(check(cs, 6, &m, &e), BEAM_E_ZLIB, "OTP 25 cannot load an uncompressed LitT");

    /* An empty table: a count of 0 and nothing else. */
    spec empty = CHUNK("LitT", 0, 0, 0, 0, 0, 0, 0, 0);
    cr_assert_eq(literals_of(&empty, &lits, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    cr_assert_eq(lits.count, 0);
    pos = 0;
    cr_assert_not(beam_literals_next(&lits, &pos, &term, &len));
    beam_literals_free(&lits);

    /* No table at all after the size field, or a count with nothing behind it. */
    spec none = CHUNK("LitT", 0, 0, 0, 0);
    cr_assert_eq(literals_of(&none, &lits, &e), BEAM_E_BAD_CHUNK);
    cr_assert_str_eq(e.chunk, "LitT");
    spec missing = CHUNK("LitT", 0, 0, 0, 0, 0, 0, 0, 1);
    cr_assert_eq(literals_of(&missing, &lits, &e), BEAM_E_BAD_LITERAL);
    cr_assert_eq(e.a, 0);
    /* A literal that is not one valid term (validation, on a compressed table). */
    const uint8_t bad_table[] = {0, 0, 0, 1, 0, 0, 0, 2, 131, 1};
    uLongf zlen = compressBound(sizeof bad_table);
    uint8_t chunk[4 + 64];
    cr_assert_eq(compress(chunk + 4, &zlen, bad_table, sizeof bad_table), Z_OK);
    wr_u32(chunk, sizeof bad_table);
    spec bad[] = {
        CHUNK("AtU8", 0, 0, 0, 2, 1, 'm', 1, 'f'), MODULE_REST, {"LitT", chunk, 4 + zlen}};
    cr_assert_eq(check(bad, 6, &m, &e), BEAM_E_BAD_LITERAL);
    cr_assert_eq(e.a, 0);
}

Test(fixtures, compressed_literal_table) {
    const uint8_t table[] = {0, 0, 0, 1, 0, 0, 0, 3, 131, 97, 42};
    uLongf zlen = compressBound(sizeof table);
    uint8_t chunk[4 + 64];
    cr_assert_eq(compress(chunk + 4, &zlen, table, sizeof table), Z_OK);
    wr_u32(chunk, sizeof table);
    spec litt = {"LitT", chunk, 4 + zlen};
    beam_literals lits;
    beam_error e;
    cr_assert_eq(literals_of(&litt, &lits, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    cr_assert_eq(lits.count, 1);
    cr_assert_not_null(lits.owned);
    beam_literals_free(&lits);
    /* One byte too many or too few declared. */
    wr_u32(chunk, sizeof table + 1);
    cr_assert_eq(literals_of(&litt, &lits, &e), BEAM_E_ZLIB);
    wr_u32(chunk, sizeof table - 1);
    cr_assert_eq(literals_of(&litt, &lits, &e), BEAM_E_ZLIB);
    /* A declared size no zlib stream of this length can reach. */
    wr_u32(chunk, 1000000);
    cr_assert_eq(literals_of(&litt, &lits, &e), BEAM_E_ZLIB);
    /* One beyond the cap on inflated bytes: refused before inflating. */
    wr_u32(chunk, 0xFFFFFFF0u);
    cr_assert_eq(literals_of(&litt, &lits, &e), BEAM_E_TOO_LARGE);
    cr_assert_eq(e.a, 0xFFFFFFF0u);
    cr_assert_eq(e.b, BEAM_DEFAULT_MAX_INFLATED);
    cr_assert_str_eq(e.chunk, "LitT");
}

/* Regression: a form that claims 4 more bytes than the file holds is
 * truncated (it used to be reported as 4 trailing bytes). */
Test(fixtures, form_longer_than_file) {
    spec cs[] = {CHUNK("AtU8", 0, 0, 0, 2, 1, 'm', 1, 'f'), MODULE_REST};
    size_t size;
    uint8_t *d = build(cs, 5, &size);
    beam_error e;
    for (uint32_t more = 1; more <= 12; more++) {
        wr_u32(d + 4, (uint32_t)(size - 8 + more));
        cr_assert_eq(beam_validate(d, size, BEAM_DEFAULT_MAX_OPCODE, &e), BEAM_E_TRUNCATED,
                     "%u more: %s", more, beam_errcode_name(e.code));
        cr_assert_not(e.has_chunk);
    }
    /* Bytes inside the form that are too few for a chunk header trail. */
    uint8_t *longer = calloc(size + 4, 1);
    memcpy(longer, d, size);
    wr_u32(longer + 4, (uint32_t)(size + 4 - 8));
    cr_assert_eq(beam_validate(longer, size + 4, BEAM_DEFAULT_MAX_OPCODE, &e), BEAM_E_TRAILING);
    cr_assert_eq(e.a, 4);
    free(longer);
    free(d);
}

/* Chunk ids are 4 bytes of anything, NUL included, and errors carry all 4. */
Test(fixtures, chunk_ids_with_nul_bytes) {
    spec cs[] = {
        CHUNK("AtU8", 0, 0, 0, 2, 1, 'm', 1, 'f'), MODULE_REST, {"\0a\0\0", BYTES('x'), 1}};
    size_t size;
    uint8_t *d = build(cs, 6, &size);
    beam_error e;
    cr_assert_eq(beam_validate(d, size, BEAM_DEFAULT_MAX_OPCODE, &e), BEAM_OK);
    d[size - 1] = 1; /* its padding */
    cr_assert_eq(beam_validate(d, size, BEAM_DEFAULT_MAX_OPCODE, &e), BEAM_E_BAD_PADDING);
    cr_assert(e.has_chunk);
    cr_assert_eq(memcmp(e.chunk, "\0a\0\0", 4), 0);
    cr_assert_eq(beam_validate(d, size - 2, BEAM_DEFAULT_MAX_OPCODE, &e), BEAM_E_TRUNCATED);
    cr_assert(e.has_chunk);
    cr_assert_eq(memcmp(e.chunk, "\0a\0\0", 4), 0);
    free(d);
}

Test(fixtures, utf8_count) {
    /* The 8-byte ASCII fast path, then multi-byte characters and errors. */
    const uint8_t ok[] = "abcdefghij\xC3\xA9klmnopqrstuvwxyz\xF0\x9F\x98\x80";
    cr_assert_eq(utf8_count(ok, sizeof ok - 1), 28);
    const uint8_t ascii[] = "0123456789abcdef";
    cr_assert_eq(utf8_count(ascii, 16), 16);
    cr_assert_eq(utf8_count(ascii, 0), 0);
    const uint8_t bad_after_fast[] = "abcdefgh\xC3";
    cr_assert_eq(utf8_count(bad_after_fast, sizeof bad_after_fast - 1), -1);
    const uint8_t high_in_word[] = "abcdefg\xFFhijklmnop";
    cr_assert_eq(utf8_count(high_in_word, sizeof high_in_word - 1), -1);
    const uint8_t overlong[] = "abcdefghijklmnop\xC0\xAF";
    cr_assert_eq(utf8_count(overlong, sizeof overlong - 1), -1);
    const uint8_t surrogate[] = "\xED\xA0\x80";
    cr_assert_eq(utf8_count(surrogate, 3), -1);
}

/* A rewritten literal holding an empty map: {m, #{}} with m renamed. The key
 * list of an empty map is never allocated (UBSan once caught arithmetic on
 * that NULL pointer, under make sanitize it would abort). */
Test(fixtures, relocate_literal_with_empty_map) {
    const uint8_t table[] = {0, 0, 0, 1, 0, 0, 0, 11, 131, 104, 2, 119, 1, 'm', 116, 0, 0, 0, 0};
    uLongf zlen = compressBound(sizeof table);
    uint8_t chunk[4 + 64];
    cr_assert_eq(compress(chunk + 4, &zlen, table, sizeof table), Z_OK);
    wr_u32(chunk, sizeof table);
    spec cs[] = {CHUNK("AtU8", 0, 0, 0, 2, 1, 'm', 1, 'f'), MODULE_REST, {"LitT", chunk, 4 + zlen}};
    size_t size;
    uint8_t *in = build(cs, 6, &size), *out;
    reloc_pair renames[] = {{(const uint8_t *)"m", 1, (const uint8_t *)"renamed_m", 9}};
    reloc_spec rs = {.renames = renames, .nrenames = 1};
    reloc_error err;
    size_t out_len;
    cr_assert_eq(beam_relocate(in, size, &rs, &out, &out_len, &err), 0);

    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(out, out_len, &m, &e), BEAM_OK);
    cr_assert(atom_is(&m, 1, "renamed_m"));
    beam_literals lits;
    cr_assert_eq(beam_literals_load(&m, &lits, &e), BEAM_OK);
    size_t pos = 0;
    const uint8_t *term;
    uint32_t len;
    cr_assert(beam_literals_next(&lits, &pos, &term, &len));
    /* {renamed_m, #{}} in canonical form. */
    const uint8_t expect[] = {131, 104, 2,   119, 9,   'r', 'e', 'n', 'a', 'm',
                              'e', 'd', '_', 'm', 116, 0,   0,   0,   0};
    cr_assert_eq(len, sizeof expect);
    cr_assert(memcmp(term, expect, len) == 0);
    beam_literals_free(&lits);
    beam_module_free(&m);
    free(out);
    free(in);
}

/* Regression: every chunk's id was compared with every earlier one, so
 * 64 KiB of empty chunks held a scheduler for 30 ms and 64 MiB for hours.
 * 600,000 chunks (4.8 MB) would take minutes that way; the timeout only
 * guards against such a hang. */
Test(fixtures, many_chunks_in_linear_time, .timeout = 60) {
    enum { N = 600000 };
    test_chunk *cs = calloc(N, sizeof *cs);
    char(*ids)[4] = calloc(N, 4);
    for (size_t i = 0; i < N; i++) {
        ids[i][0] = 'z';
        ids[i][1] = (char)(i >> 16);
        ids[i][2] = (char)(i >> 8);
        ids[i][3] = (char)i;
        cs[i] = (test_chunk){ids[i], NULL, 0};
    }
    size_t size;
    uint8_t *d = test_minimal_module(cs, N, &size);
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(d, size, &m, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    cr_assert_eq(m.nchunks, N + 5);
    beam_module_free(&m);
    cr_assert_eq(beam_validate(d, size, BEAM_DEFAULT_MAX_OPCODE, &e), BEAM_OK);
    free(d);

    /* The first repeat in file order is reported, even when a later id
     * repeats an earlier one too and the file is cut after both. */
    memcpy(ids[N - 1], ids[10], 4);
    memcpy(ids[N / 2], ids[N / 3], 4);
    d = test_minimal_module(cs, N, &size);
    cr_assert_eq(beam_parse(d, size, &m, &e), BEAM_E_DUPLICATE_CHUNK);
    cr_assert_eq(memcmp(e.chunk, ids[N / 3], 4), 0);
    wr_u32(d + 4, (uint32_t)(size - 8 + 8)); /* the form claims one more chunk */
    cr_assert_eq(beam_parse(d, size, &m, &e), BEAM_E_DUPLICATE_CHUNK);
    cr_assert_eq(memcmp(e.chunk, ids[N / 3], 4), 0);
    free(d);
    /* Without repeats, the cut is what is reported. */
    memcpy(ids[N / 2], "zzzz", 4);
    memcpy(ids[N - 1], "zzzy", 4);
    d = test_minimal_module(cs, N, &size);
    wr_u32(d + 4, (uint32_t)(size - 8 + 8));
    cr_assert_eq(beam_parse(d, size, &m, &e), BEAM_E_TRUNCATED);
    free(d);
    free(ids);
    free(cs);
}

/* A NaN or an infinity is no Erlang float: refused in a literal. */
Test(fixtures, non_finite_floats) {
    const uint8_t nan[] = {131, 70, 0x7F, 0xF8, 0, 0, 0, 0, 0, 0};
    const uint8_t inf[] = {131, 70, 0xFF, 0xF0, 0, 0, 0, 0, 0, 0};
    const uint8_t big[] = {131, 70, 0x7F, 0xEF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
    cr_assert_eq(etf_validate(nan, sizeof nan, 0), ETF_E_BAD_VALUE);
    cr_assert_eq(etf_validate(inf, sizeof inf, 0), ETF_E_BAD_VALUE);
    cr_assert_eq(etf_validate(big, sizeof big, 0), ETF_OK);
}
