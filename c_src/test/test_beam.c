/* Criterion tests of the BEAM parser and validator, on a real module of the
 * installed OTP (stdlib's lists.beam, found through $ERL_ROOT) and on
 * corruptions of it. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "beam.h"
#include "bytes.h"
#include "test_helpers.h"

/* Validates a copy of exactly n bytes, so that ASan sees any read past the end. */
static beam_errcode validate(const uint8_t *d, size_t n, beam_error *e) {
    uint8_t *copy = calloc(n ? n : 1, 1);
    memcpy(copy, d, n);
    beam_errcode rc = beam_validate(copy, n, BEAM_DEFAULT_MAX_OPCODE, e);
    free(copy);
    return rc;
}

Test(beam, parses_a_real_module) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(d, n, &m, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    cr_assert_eq(m.atoms[0].len, 5);
    cr_assert(memcmp(m.atoms[0].name, "lists", 5) == 0);
    cr_assert(m.atoms_utf8);
    cr_assert_gt(m.nexports, 50);
    cr_assert_not_null(beam_find_chunk(&m, "Code"));
    cr_assert_not_null(beam_find_chunk(&m, "LitT"));
    cr_assert_null(beam_find_chunk(&m, "Nope"));
    /* Every export names an atom, and reverse/1 is among them. */
    int found = 0;
    for (uint32_t i = 0; i < m.nexports; i++) {
        uint32_t ent[3];
        beam_table_entry(m.exports, i, ent);
        const beam_atom *a = &m.atoms[ent[0] - 1];
        if (a->len == 7 && memcmp(a->name, "reverse", 7) == 0 && ent[1] == 1) {
            found = 1;
        }
    }
    cr_assert(found);
    beam_module_free(&m);
    cr_assert_eq(validate(d, n, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    free(d);
}

Test(beam, header_errors) {
    beam_error e;
    cr_assert_eq(validate((const uint8_t *)"", 0, &e), BEAM_E_TRUNCATED);
    cr_assert_str_eq(e.chunk, "FOR1");
    cr_assert_eq(validate((const uint8_t *)"FOR1\0\0\0\4BEA", 11, &e), BEAM_E_TRUNCATED);
    cr_assert_eq(validate((const uint8_t *)"RIFF\0\0\0\4BEAM", 12, &e), BEAM_E_NOT_IFF);
    cr_assert_eq(validate((const uint8_t *)"FOR1\0\0\0\4WAVE", 12, &e), BEAM_E_NOT_BEAM);
    /* A well-formed but empty form has no atom table. */
    cr_assert_eq(validate((const uint8_t *)"FOR1\0\0\0\4BEAM", 12, &e), BEAM_E_MISSING_CHUNK);
    cr_assert_str_eq(e.chunk, "AtU8");
}

/* Cutting the file anywhere is an error: at a chunk boundary the form is
 * truncated, inside a chunk that chunk is. */
Test(beam, truncation_everywhere) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(d, n, &m, &e), BEAM_OK);
    for (size_t i = 0; i < m.nchunks; i++) {
        size_t hdr = m.chunks[i].offset - 8;
        cr_assert_eq(validate(d, hdr, &e), BEAM_E_TRUNCATED);
        cr_assert_str_eq(e.chunk, "", "cut before chunk %zu", i);
        if (m.chunks[i].size == 0) {
            continue; /* nothing inside to cut */
        }
        size_t inside = m.chunks[i].offset + m.chunks[i].size / 2;
        cr_assert_eq(validate(d, inside, &e), BEAM_E_TRUNCATED);
        cr_assert(memcmp(e.chunk, m.chunks[i].id, 4) == 0);
    }
    beam_module_free(&m);
    for (size_t cut = 0; cut < n; cut += 7) {
        cr_assert_neq(validate(d, cut, &e), BEAM_OK, "cut at %zu accepted", cut);
    }
    free(d);
}

static beam_chunk find(const uint8_t *d, size_t n, const char *id) {
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(d, n, &m, &e), BEAM_OK);
    const beam_chunk *c = beam_find_chunk(&m, id);
    cr_assert_not_null(c, "no chunk %s", id);
    beam_chunk copy = *c;
    beam_module_free(&m);
    return copy;
}

Test(beam, bad_import_index) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_chunk c = find(d, n, "ImpT");
    wr_u32(d + c.offset + 4 + 4, 0x7fffffff); /* function atom of import 0 */
    beam_error e;
    cr_assert_eq(validate(d, n, &e), BEAM_E_BAD_ATOM_INDEX);
    cr_assert_eq(e.table, BEAM_TABLE_IMPORTS);
    cr_assert_eq(e.a, 0x7fffffff);
    free(d);
}

Test(beam, bad_export_and_local_index) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_chunk c = find(d, n, "ExpT");
    wr_u32(d + c.offset + 4, 0);
    beam_error e;
    cr_assert_eq(validate(d, n, &e), BEAM_E_BAD_ATOM_INDEX);
    cr_assert_eq(e.table, BEAM_TABLE_EXPORTS);
    free(d);
    d = test_lists_beam(&n);
    c = find(d, n, "LocT");
    wr_u32(d + c.offset + 4, 99999);
    cr_assert_eq(validate(d, n, &e), BEAM_E_BAD_ATOM_INDEX);
    cr_assert_eq(e.table, BEAM_TABLE_LOCALS);
    cr_assert_eq(e.a, 99999);
    free(d);
}

Test(beam, table_count_too_large) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_chunk c = find(d, n, "ImpT");
    wr_u32(d + c.offset, rd_u32(d + c.offset) + 1);
    beam_error e;
    cr_assert_eq(validate(d, n, &e), BEAM_E_TRUNCATED);
    cr_assert_str_eq(e.chunk, "ImpT");
    free(d);
}

Test(beam, bad_zlib_in_literals) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_chunk c = find(d, n, "LitT");
    memset(d + c.offset + 4, 0xAB, c.size - 4 > 16 ? 16 : c.size - 4);
    beam_error e;
    cr_assert_eq(validate(d, n, &e), BEAM_E_ZLIB);
    cr_assert_str_eq(e.chunk, "LitT");
    /* parse does not look inside LitT */
    beam_module m;
    cr_assert_eq(beam_parse(d, n, &m, &e), BEAM_OK);
    beam_module_free(&m);
    free(d);
}

Test(beam, wrong_literal_size_declared) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_chunk c = find(d, n, "LitT");
    wr_u32(d + c.offset, rd_u32(d + c.offset) + 1);
    beam_error e;
    cr_assert_eq(validate(d, n, &e), BEAM_E_ZLIB);
    free(d);
}

Test(beam, bad_code_header) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_chunk c = find(d, n, "Code");
    uint32_t opmax = rd_u32(d + c.offset + 8);
    beam_error e;
    cr_assert_eq(beam_validate(d, n, opmax - 1, &e), BEAM_E_MAX_OPCODE);
    cr_assert_eq(e.a, opmax);
    wr_u32(d + c.offset + 4, 7);
    cr_assert_eq(validate(d, n, &e), BEAM_E_INSTRUCTION_SET);
    cr_assert_eq(e.a, 7);
    free(d);
}

Test(beam, bad_attr_term) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_chunk c = find(d, n, "Attr");
    d[c.offset] = 130; /* not the ETF version byte */
    beam_error e;
    cr_assert_eq(validate(d, n, &e), BEAM_E_BAD_TERM);
    cr_assert_str_eq(e.chunk, "Attr");
    free(d);
}

Test(beam, bad_atom_utf8) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_chunk c = find(d, n, "AtU8");
    d[c.offset + 5] = 0xFF; /* first byte of the module name */
    beam_error e;
    cr_assert_eq(validate(d, n, &e), BEAM_E_BAD_ATOM);
    cr_assert_eq(e.a, 1);
    free(d);
}

Test(beam, duplicate_chunk_and_padding) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(d, n, &m, &e), BEAM_OK);
    /* Rename the second chunk to the id of the first. */
    memcpy(d + m.chunks[1].offset - 8, m.chunks[0].id, 4);
    cr_assert_eq(validate(d, n, &e), BEAM_E_DUPLICATE_CHUNK);
    memcpy(d + m.chunks[1].offset - 8, m.chunks[1].id, 4);
    /* Find a chunk with padding and dirty it. */
    for (size_t i = 0; i < m.nchunks; i++) {
        if (m.chunks[i].size % 4) {
            d[m.chunks[i].offset + m.chunks[i].size] = 1;
            cr_assert_eq(validate(d, n, &e), BEAM_E_BAD_PADDING);
            cr_assert(memcmp(e.chunk, m.chunks[i].id, 4) == 0);
            break;
        }
    }
    beam_module_free(&m);
    free(d);
}

Test(beam, trailing_bytes) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    uint8_t *big = calloc(n + 8, 1);
    memcpy(big, d, n);
    beam_error e;
    cr_assert_eq(validate(big, n + 8, &e), BEAM_E_TRAILING);
    cr_assert_eq(e.a, 8);
    /* Bytes inside the form after the last chunk, too short for a chunk header. */
    wr_u32(big + 4, (uint32_t)(n - 8 + 4));
    cr_assert_eq(validate(big, n + 4, &e), BEAM_E_TRAILING);
    cr_assert_eq(e.a, 4);
    free(big);
    free(d);
}

/* Flipping any single byte of the file never makes the parser misbehave
 * (run under ASan by `make sanitize`). */
Test(beam, single_byte_flips) {
    size_t n;
    uint8_t *d = test_lists_beam(&n);
    beam_error e;
    for (size_t i = 0; i < n; i += 3) {
        uint8_t old = d[i];
        d[i] ^= 0x5A;
        (void)validate(d, n, &e);
        d[i] = old;
    }
    cr_assert_eq(validate(d, n, &e), BEAM_OK);
    free(d);
}

/* Regression (found by fuzz_parse): the form claims more bytes than the file
 * holds and the first chunk's size jumps past the end of the file. Counting
 * the chunk headers read beyond the buffer (caught by ASan under
 * `make sanitize`); the chunk must be reported truncated. */
Test(beam, chunk_size_past_end_of_short_file) {
    static const uint8_t bytes[] = {'F', 'O', 'R', '1', 0, 0, 0x10, 0,   'B', 'E', 'A', 'M',
                                    'A', 't', 'U', '8', 0, 0, 0,    100, 0,   0,   0,   1};
    uint8_t *d = malloc(sizeof bytes); /* exactly sized, so ASan sees any overread */
    memcpy(d, bytes, sizeof bytes);
    beam_module m;
    beam_error e;
    cr_assert_eq(beam_parse(d, sizeof bytes, &m, &e), BEAM_E_TRUNCATED);
    cr_assert_str_eq(e.chunk, "AtU8");
    free(d);
}
