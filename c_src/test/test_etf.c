/* Criterion tests of the external term format walker. Inputs are written by
 * hand from the ETF specification (erts/doc/src/erl_ext_dist.xml). */
#include <criterion/criterion.h>
#include <string.h>

#include "bytes.h"
#include "etf.h"

#define ETF(...) ((const uint8_t[]){__VA_ARGS__})
#define VALID(...) etf_validate(ETF(__VA_ARGS__), sizeof(ETF(__VA_ARGS__)), 0)

Test(etf, scalars) {
    cr_assert_eq(VALID(131, 97, 5), ETF_OK);
    cr_assert_eq(VALID(131, 98, 0, 0, 1, 0), ETF_OK);
    cr_assert_eq(VALID(131, 70, 0, 0, 0, 0, 0, 0, 0, 0), ETF_OK);
    cr_assert_eq(VALID(131, 106), ETF_OK);
    cr_assert_eq(VALID(131, 110, 2, 0, 1, 1), ETF_OK);
    cr_assert_eq(VALID(131, 110, 2, 2, 1, 1), ETF_E_BAD_VALUE); /* sign must be 0 or 1 */
    cr_assert_eq(VALID(131, 109, 0, 0, 0, 2, 'h', 'i'), ETF_OK);
    cr_assert_eq(VALID(131, 77, 0, 0, 0, 1, 3, 0xE0), ETF_OK);
    cr_assert_eq(VALID(131, 77, 0, 0, 0, 1, 9, 0xE0), ETF_E_BAD_VALUE);
    cr_assert_eq(VALID(131, 107, 0, 2, 'h', 'i'), ETF_OK);
}

Test(etf, framing) {
    cr_assert_eq(VALID(130, 97, 5), ETF_E_VERSION);
    cr_assert_eq(VALID(131, 97), ETF_E_TRUNCATED);
    cr_assert_eq(VALID(131, 97, 1, 2), ETF_E_TRAILING);
    cr_assert_eq(VALID(131, 1), ETF_E_BAD_TAG);
    cr_assert_eq(VALID(131, 109, 0, 0, 0, 9, 'h'), ETF_E_TRUNCATED);
}

Test(etf, atoms) {
    cr_assert_eq(VALID(131, 119, 2, 'o', 'k'), ETF_OK);
    cr_assert_eq(VALID(131, 118, 0, 2, 0xC3, 0xA9), ETF_OK);      /* é */
    cr_assert_eq(VALID(131, 119, 2, 0xC3, 0x28), ETF_E_BAD_ATOM); /* bad continuation */
    cr_assert_eq(VALID(131, 119, 2, 0xC0, 0x80), ETF_E_BAD_ATOM); /* overlong NUL */
    cr_assert_eq(VALID(131, 100, 0, 2, 'o', 'k'), ETF_OK);
    /* 256 latin-1 characters is one too many */
    uint8_t buf[4 + 256];
    buf[0] = 131;
    buf[1] = 100;
    wr_u16(buf + 2, 256);
    memset(buf + 4, 'a', 256);
    cr_assert_eq(etf_validate(buf, sizeof buf, 0), ETF_E_BAD_ATOM);
    wr_u16(buf + 2, 255);
    cr_assert_eq(etf_validate(buf, sizeof buf - 1, 0), ETF_OK);
}

Test(etf, containers) {
    /* {ok, [1, 2 | 3], #{a => b}} */
    cr_assert_eq(VALID(131, 104, 3, 119, 2, 'o', 'k', 108, 0, 0, 0, 2, 97, 1, 97, 2, 97, 3, 116, 0,
                       0, 0, 1, 119, 1, 'a', 119, 1, 'b'),
                 ETF_OK);
    /* a list that claims a billion elements */
    cr_assert_eq(VALID(131, 108, 0x40, 0, 0, 0, 106), ETF_E_TRUNCATED);
    /* a map that claims 2^32-1 pairs */
    cr_assert_eq(VALID(131, 116, 0xFF, 0xFF, 0xFF, 0xFF), ETF_E_TRUNCATED);
}

Test(etf, export_fun) {
    cr_assert_eq(VALID(131, 113, 119, 1, 'm', 119, 1, 'f', 97, 2), ETF_OK);
    cr_assert_eq(VALID(131, 113, 119, 1, 'm', 119, 1, 'f', 98, 0, 0, 0, 2), ETF_E_BAD_VALUE);
    cr_assert_eq(VALID(131, 113, 97, 1, 119, 1, 'f', 97, 2), ETF_E_BAD_TAG);
}

/* Nesting a million levels deep costs no C stack: the walker is iterative. */
Test(etf, deep_nesting) {
    size_t depth = 1000000;
    size_t len = 1 + 2 * depth + 1;
    uint8_t *buf = malloc(len);
    buf[0] = 131;
    for (size_t i = 0; i < depth; i++) {
        buf[1 + 2 * i] = 104;
        buf[2 + 2 * i] = 1;
    }
    buf[len - 1] = 106;
    cr_assert_eq(etf_validate(buf, len, 0), ETF_OK);
    cr_assert_eq(etf_validate(buf, len - 1, 0), ETF_E_TRUNCATED);
    free(buf);
}

struct seen {
    int atoms, fun_modules;
};

static int count_atoms(void *ctx, size_t off, size_t enc_len, const uint8_t *name, size_t len,
                       int utf8, etf_atom_role role) {
    (void)off;
    (void)enc_len;
    (void)name;
    (void)len;
    (void)utf8;
    struct seen *s = ctx;
    s->atoms++;
    s->fun_modules += role == ETF_ATOM_FUN_MODULE;
    return 0;
}

Test(etf, visitor_sees_every_atom) {
    /* [fun m:f/1, a, {b}] */
    const uint8_t t[] = {108, 0, 0,   0, 3,   113, 119, 1,   'm', 119, 1,  'f',
                         97,  1, 119, 1, 'a', 104, 1,   119, 1,   'b', 106};
    struct seen s = {0};
    etf_visitor v = {count_atoms, NULL, &s, NULL};
    size_t end;
    cr_assert_eq(etf_walk_term(t, sizeof t, &end, &v), ETF_OK);
    cr_assert_eq(end, sizeof t);
    cr_assert_eq(s.atoms, 4);
    cr_assert_eq(s.fun_modules, 1);
}

Test(etf, compressed) {
    /* term_to_binary(lists:duplicate(100, 0), [compressed]) as OTP 25 writes it */
    const uint8_t t[] = {131, 80, 0,   0, 0, 103, 120, 156, 203, 102,
                         72,  97, 160, 3, 0, 0,   82,  232, 0,   208};
    cr_assert_eq(etf_validate(t, sizeof t, 1), ETF_OK);
    cr_assert_eq(etf_validate(t, sizeof t, 0), ETF_E_BAD_TAG);
    uint8_t wrong_size[sizeof t];
    memcpy(wrong_size, t, sizeof t);
    wrong_size[5] = 104; /* declares one byte more than the stream holds */
    cr_assert_eq(etf_validate(wrong_size, sizeof t, 1), ETF_E_ZLIB);
    const uint8_t bad[] = {131, 80, 0, 0, 0, 10, 1, 2, 3};
    cr_assert_eq(etf_validate(bad, sizeof bad, 1), ETF_E_ZLIB);
}
