/* Shared helpers of the Criterion tests. */
#ifndef SANDBOX_TEST_HELPERS_H
#define SANDBOX_TEST_HELPERS_H

#include <stddef.h>
#include <stdint.h>

#include "relocate.h"

/* Reads the first file matching `pattern` under the installed OTP ($ERL_ROOT,
 * default /usr/lib/erlang) into a malloc'd buffer; fails the test if none. */
uint8_t *test_read_otp_file(const char *pattern, size_t *size);

/* stdlib's lists.beam. */
uint8_t *test_lists_beam(size_t *size);

/* One chunk of a file to build: a 4-byte id (NUL bytes allowed) and its data. */
typedef struct {
    const char *id;
    const uint8_t *data;
    size_t len;
} test_chunk;

/* An IFF BEAM file of the given chunks, zero-padded, in a malloc'd buffer of
 * exactly its size (so ASan sees any read past it). */
uint8_t *test_build_beam(const test_chunk *cs, size_t n, size_t *size);

/* The smallest loadable module `m` (atoms m and f, export f/0, a code header,
 * empty StrT and ImpT) followed by the `n` extra chunks given. */
uint8_t *test_minimal_module(const test_chunk *extra, size_t n, size_t *size);

/* zlib-compresses `len` bytes into a malloc'd buffer of *zlen bytes. */
uint8_t *test_compress(const uint8_t *data, size_t len, size_t *zlen);

/* A literal table chunk's data (LitT): the declared size, then the
 * compressed table of the `n` given external terms (each with its version
 * byte). Malloc'd, *size bytes. */
uint8_t *test_literal_table(const uint8_t *const *terms, const size_t *lens, size_t n,
                            size_t *size);

/* A growable byte string for building terms. */
typedef struct {
    uint8_t *data;
    size_t len, cap;
} test_bytes;

void test_put(test_bytes *b, const void *data, size_t len);
void test_put_u8(test_bytes *b, uint8_t v);
void test_put_u16(test_bytes *b, uint16_t v);
void test_put_u32(test_bytes *b, uint32_t v);
/* SMALL_ATOM_UTF8_EXT of a NUL-terminated name. */
void test_put_atom(test_bytes *b, const char *name);

/* beam_relocate(); when it succeeds, fails the test unless the result
 * validates (beam_validate with OTP 25's opcodes). */
int test_relocate_valid(const uint8_t *in, size_t n, const reloc_spec *spec, uint8_t **out,
                        size_t *out_len, reloc_error *err);

#endif
