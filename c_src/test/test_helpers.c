#include "test_helpers.h"

#include <criterion/criterion.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "beam.h"
#include "bytes.h"
#include "code.h"

uint8_t *test_read_otp_file(const char *pattern, size_t *size) {
    const char *root = getenv("ERL_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", root ? root : "/usr/lib/erlang", pattern);
    glob_t g;
    cr_assert_eq(glob(path, 0, NULL, &g), 0, "no file matches %s (set ERL_ROOT)", path);
    FILE *f = fopen(g.gl_pathv[0], "rb");
    globfree(&g);
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return buf;
}

uint8_t *test_lists_beam(size_t *size) {
    return test_read_otp_file("lib/stdlib-*/ebin/lists.beam", size);
}

uint8_t *test_build_beam(const test_chunk *cs, size_t n, size_t *size) {
    size_t total = 12;
    for (size_t i = 0; i < n; i++) {
        total += 8 + align4(cs[i].len);
    }
    uint8_t *b = calloc(total, 1);
    cr_assert_not_null(b);
    memcpy(b, "FOR1", 4);
    wr_u32(b + 4, (uint32_t)(total - 8));
    memcpy(b + 8, "BEAM", 4);
    size_t pos = 12;
    for (size_t i = 0; i < n; i++) {
        memcpy(b + pos, cs[i].id, 4);
        wr_u32(b + pos + 4, (uint32_t)cs[i].len);
        if (cs[i].len) {
            memcpy(b + pos + 8, cs[i].data, cs[i].len);
        }
        pos += 8 + align4(cs[i].len);
    }
    *size = total;
    return b;
}

uint8_t *test_minimal_module(const test_chunk *extra, size_t n, size_t *size) {
    static const uint8_t atoms[] = {0, 0, 0, 2, 1, 'm', 1, 'f'};
    /* Header (16 bytes: instruction set 0, highest opcode 64, 3 labels, 1
     * function), then f() -> []: label 1, func_info m f 0, label 2,
     * move [] x0, return, int_code_end. */
    static const uint8_t code[] = {
        0, 0, 0, 16,   0,    0,    0,    0,    0,    0,    0,    64,   0,    0,    0,    3,   0,
        0, 0, 1, 0x01, 0x10, 0x02, 0x12, 0x22, 0x00, 0x01, 0x20, 0x40, 0x02, 0x03, 0x13, 0x03};
    static const uint8_t imports[] = {0, 0, 0, 0};
    static const uint8_t exports[] = {0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2};
    test_chunk *cs = calloc(5 + n, sizeof *cs);
    cr_assert_not_null(cs);
    cs[0] = (test_chunk){"AtU8", atoms, sizeof atoms};
    cs[1] = (test_chunk){"Code", code, sizeof code};
    cs[2] = (test_chunk){"StrT", NULL, 0};
    cs[3] = (test_chunk){"ImpT", imports, sizeof imports};
    cs[4] = (test_chunk){"ExpT", exports, sizeof exports};
    for (size_t i = 0; i < n; i++) {
        cs[5 + i] = extra[i];
    }
    uint8_t *b = test_build_beam(cs, 5 + n, size);
    free(cs);
    return b;
}

uint8_t *test_compress(const uint8_t *data, size_t len, size_t *zlen) {
    uLongf n = compressBound((uLong)len);
    uint8_t *z = malloc(n);
    cr_assert_not_null(z);
    cr_assert_eq(compress(z, &n, data, (uLong)len), Z_OK);
    *zlen = n;
    return z;
}

uint8_t *test_literal_table(const uint8_t *const *terms, const size_t *lens, size_t n,
                            size_t *size) {
    test_bytes t = {0};
    test_put_u32(&t, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        test_put_u32(&t, (uint32_t)lens[i]);
        test_put(&t, terms[i], lens[i]);
    }
    size_t zlen;
    uint8_t *z = test_compress(t.data, t.len, &zlen);
    uint8_t *chunk = malloc(4 + zlen);
    cr_assert_not_null(chunk);
    wr_u32(chunk, (uint32_t)t.len);
    memcpy(chunk + 4, z, zlen);
    *size = 4 + zlen;
    free(z);
    free(t.data);
    return chunk;
}

void test_put(test_bytes *b, const void *data, size_t len) {
    if (b->cap - b->len < len) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->len < len) {
            cap *= 2;
        }
        b->data = realloc(b->data, cap);
        cr_assert_not_null(b->data);
        b->cap = cap;
    }
    if (len) {
        memcpy(b->data + b->len, data, len);
    }
    b->len += len;
}

void test_put_u8(test_bytes *b, uint8_t v) {
    test_put(b, &v, 1);
}

void test_put_u16(test_bytes *b, uint16_t v) {
    uint8_t x[2];
    wr_u16(x, v);
    test_put(b, x, 2);
}

void test_put_u32(test_bytes *b, uint32_t v) {
    uint8_t x[4];
    wr_u32(x, v);
    test_put(b, x, 4);
}

void test_put_atom(test_bytes *b, const char *name) {
    size_t n = strlen(name);
    test_put_u8(b, 119);
    test_put_u8(b, (uint8_t)n);
    test_put(b, name, n);
}

int test_relocate_valid(const uint8_t *in, size_t n, const reloc_spec *spec, uint8_t **out,
                        size_t *out_len, reloc_error *err) {
    int rc = beam_relocate(in, n, spec, out, out_len, err);
    if (rc == 0) {
        beam_error e;
        cr_assert_eq(beam_validate(*out, *out_len, CODE_OTP25_MAX_OPCODE, &e), BEAM_OK,
                     "the result does not validate: %s a=%lu", beam_errcode_name(e.code),
                     (unsigned long)e.a);
    }
    return rc;
}
