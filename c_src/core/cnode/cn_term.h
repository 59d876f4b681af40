/* A small decoder of the external term format into a tree, for the requests
 * the C-node receives. Pure C: no ei.h, so Criterion and libFuzzer reach it.
 *
 * Terms live in an arena owned by the caller; strings, binaries and atom names
 * point into the decoded buffer, and every term remembers its own encoding
 * (`raw`), so pids and references can be copied verbatim into replies. Only the
 * types requests use are accepted; anything else is an error, never a crash. */
#ifndef SANDBOX_CN_TERM_H
#define SANDBOX_CN_TERM_H

#include <stddef.h>
#include <stdint.h>

#define CN_TERM_MAX_DEPTH 64

typedef enum {
    CN_T_INT = 0,
    CN_T_FLOAT,
    CN_T_ATOM,
    CN_T_BINARY,
    CN_T_STRING, /* STRING_EXT: a list of bytes; u.s holds the bytes */
    CN_T_LIST,   /* proper lists only; [] is a list of 0 items */
    CN_T_TUPLE,
    CN_T_MAP, /* u.c.items holds key, value, key, value, ... */
    CN_T_PID, /* u.s holds the node name */
    CN_T_REF, /* u.s holds the node name */
    CN_T_PORT /* u.s holds the node name */
} cn_term_type;

typedef enum {
    CN_TERM_OK = 0,
    CN_TERM_E_TRUNCATED,
    CN_TERM_E_VERSION,
    CN_TERM_E_BAD_TAG,
    CN_TERM_E_BAD_VALUE,
    CN_TERM_E_IMPROPER, /* a list whose tail is not [] */
    CN_TERM_E_DEPTH,
    CN_TERM_E_TRAILING,
    CN_TERM_E_NOMEM
} cn_term_status;

typedef struct cn_term {
    cn_term_type type;
    const uint8_t *raw; /* the term's encoding, from its tag */
    size_t raw_len;
    union {
        int64_t i;
        double f;
        struct {
            const uint8_t *p;
            size_t n;
        } s;
        struct {
            struct cn_term *items;
            size_t n; /* items; for a map, pairs (items holds 2n) */
        } c;
    } u;
} cn_term;

typedef struct cn_arena_block cn_arena_block;
typedef struct {
    cn_arena_block *head;
} cn_arena;

void cn_arena_init(cn_arena *a);
void cn_arena_free(cn_arena *a);

/* Decodes a whole buffer: the version byte 131, one term, nothing after. */
cn_term_status cn_term_decode(const uint8_t *buf, size_t len, cn_arena *a, cn_term **out);

/* Decodes one term (no version byte) at buf[*pos]; advances *pos past it. */
cn_term_status cn_term_decode_one(const uint8_t *buf, size_t len, size_t *pos, cn_arena *a,
                                  cn_term *out);

const char *cn_term_status_name(cn_term_status s);

/* Helpers for reading decoded terms. */
int cn_term_is_atom(const cn_term *t, const char *name);
/* The value under an atom key of a map, or of a list of {key, value} tuples. */
const cn_term *cn_term_get(const cn_term *t, const char *key);
/* A binary or a byte string as text: copies it NUL-terminated into a new
 * malloc'd string. NULL if t is neither, contains a NUL byte or malloc fails. */
char *cn_term_strdup(const cn_term *t);
/* Element i of a tuple of exactly `arity` elements, else NULL. */
const cn_term *cn_term_tuple_elem(const cn_term *t, size_t arity, size_t i);

#endif
