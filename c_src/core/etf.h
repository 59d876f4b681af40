/* A walker and validator for the Erlang external term format (ETF).
 *
 * The walk is iterative: it keeps a count of terms still to read instead of a
 * recursion stack, so arbitrarily deep terms cost no C stack. It never reads
 * outside the given buffer. */
#ifndef SANDBOX_ETF_H
#define SANDBOX_ETF_H

#include <stddef.h>
#include <stdint.h>

#define ETF_VERSION 131

/* External term format tags (erts/doc/src/erl_ext_dist.xml). */
enum etf_tag {
    TAG_NEW_FLOAT = 70,
    TAG_BIT_BINARY = 77,
    TAG_COMPRESSED = 80,
    TAG_NEW_PID = 88,
    TAG_NEW_PORT = 89,
    TAG_NEWER_REFERENCE = 90,
    TAG_SMALL_INTEGER = 97,
    TAG_INTEGER = 98,
    TAG_FLOAT = 99,
    TAG_ATOM = 100,
    TAG_REFERENCE = 101,
    TAG_PORT = 102,
    TAG_PID = 103,
    TAG_SMALL_TUPLE = 104,
    TAG_LARGE_TUPLE = 105,
    TAG_NIL = 106,
    TAG_STRING = 107,
    TAG_LIST = 108,
    TAG_BINARY = 109,
    TAG_SMALL_BIG = 110,
    TAG_LARGE_BIG = 111,
    TAG_NEW_FUN = 112,
    TAG_EXPORT = 113,
    TAG_NEW_REFERENCE = 114,
    TAG_SMALL_ATOM = 115,
    TAG_MAP = 116,
    TAG_ATOM_UTF8 = 118,
    TAG_SMALL_ATOM_UTF8 = 119,
    TAG_V4_PORT = 120
};

#define ETF_MAX_ATOM_CHARS 255

typedef enum {
    ETF_OK = 0,
    ETF_E_TRUNCATED, /* the buffer ends inside a term */
    ETF_E_BAD_TAG,   /* an unknown or unsupported tag */
    ETF_E_BAD_ATOM,  /* an atom too long or not valid UTF-8 */
    ETF_E_BAD_VALUE, /* a field out of its allowed range */
    ETF_E_TRAILING,  /* bytes after the term */
    ETF_E_VERSION,   /* the version byte is not 131 */
    ETF_E_ZLIB,      /* a compressed term does not inflate to its declared size */
    ETF_E_NOMEM,
    ETF_E_CALLBACK /* the visitor asked to stop */
} etf_status;

/* Where an atom occurs, for visitors that care (relocation, dependency graphs). */
typedef enum {
    ETF_ATOM_DATA = 0,   /* any other atom */
    ETF_ATOM_FUN_MODULE, /* the module of an external fun `fun M:F/A` */
    ETF_ATOM_FUN_NAME,   /* the function name of an external fun */
    ETF_ATOM_NODE        /* the node of a pid, port or reference */
} etf_atom_role;

/* An atom's name as it occurs in the walked buffer. */
typedef struct {
    const uint8_t *name;
    size_t len;
    int utf8;
} etf_atom;

typedef struct etf_visitor {
    /* Called for every atom. `off` is the offset of the atom's tag byte in the
     * walked buffer and `enc_len` the length of its whole encoding (tag, length
     * field and name). Returning non-zero stops the walk with ETF_E_CALLBACK. */
    int (*atom)(void *ctx, size_t off, size_t enc_len, const uint8_t *name, size_t len, int utf8,
                etf_atom_role role);
    /* Called for every external fun `fun M:F/A`, after the atom callbacks
     * for M and F. May be NULL. Non-zero stops the walk. */
    int (*export_fun)(void *ctx, const etf_atom *mod, const etf_atom *fun, unsigned arity);
    void *ctx;
    /* Called after every ETF_TICK_TERMS terms with the offset reached, so a
     * caller can pace a long walk. May be NULL. Non-zero stops the walk. */
    int (*tick)(void *ctx, size_t pos);
} etf_visitor;

#define ETF_TICK_TERMS 4096

/* Walks one term (no version byte) starting at buf[0]. On ETF_OK, *end is the
 * number of bytes the term occupies. `v` may be NULL. */
etf_status etf_walk_term(const uint8_t *buf, size_t len, size_t *end, const etf_visitor *v);

/* Validates a whole external-format binary: the version byte, exactly one term
 * and nothing after it. A compressed term (tag 80) is inflated and validated
 * when allow_compressed is non-zero. */
etf_status etf_validate(const uint8_t *buf, size_t len, int allow_compressed);

/* Opens a whole external-format binary (version byte, one term, perhaps
 * compressed when allow_compressed is non-zero): *term and *term_len are
 * the term without its version byte, and term[-1] is always a version byte,
 * so that (term - 1, term_len + 1) is a binary_to_term input. A compressed
 * term is inflated into *owned (to free), NULL otherwise. The term itself
 * is not walked. */
etf_status etf_open(const uint8_t *buf, size_t len, int allow_compressed, const uint8_t **term,
                    size_t *term_len, uint8_t **owned);

/* Inflates a zlib stream that must decompress to exactly dst_len bytes and end
 * exactly at the end of src. Returns 0 on success, -1 otherwise. */
int etf_inflate_exact(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len);

/* The largest output a zlib stream of src_len bytes can inflate to (deflate's
 * best ratio is about 1032:1); a larger declared size is malformed. */
static inline uint64_t etf_inflate_bound(size_t src_len) {
    return (uint64_t)src_len * 1032u + 1024u;
}

const char *etf_status_name(etf_status s);

#endif
