#include "etf.h"

#include <stdlib.h>
#include <zlib.h>

#include "bytes.h"

#define NEED(n)                                                                                    \
    do {                                                                                           \
        if ((size_t)(n) > len - pos) {                                                             \
            return ETF_E_TRUNCATED;                                                                \
        }                                                                                          \
    } while (0)

/* Reads one atom term at *ppos and reports it to the visitor. */
static etf_status walk_atom(const uint8_t *buf, size_t len, size_t *ppos, const etf_visitor *v,
                            etf_atom_role role, etf_atom *out) {
    size_t pos = *ppos;
    size_t start = pos;
    NEED(1);
    uint8_t tag = buf[pos++];
    size_t n;
    int utf8;
    switch (tag) {
    case TAG_ATOM:
    case TAG_ATOM_UTF8:
        NEED(2);
        n = rd_u16(buf + pos);
        pos += 2;
        utf8 = tag == TAG_ATOM_UTF8;
        break;
    case TAG_SMALL_ATOM:
    case TAG_SMALL_ATOM_UTF8:
        NEED(1);
        n = buf[pos++];
        utf8 = tag == TAG_SMALL_ATOM_UTF8;
        break;
    default:
        return ETF_E_BAD_TAG;
    }
    NEED(n);
    if (utf8) {
        long chars = utf8_count(buf + pos, n);
        if (chars < 0 || chars > ETF_MAX_ATOM_CHARS) {
            return ETF_E_BAD_ATOM;
        }
    } else if (n > ETF_MAX_ATOM_CHARS) {
        return ETF_E_BAD_ATOM;
    }
    if (v && v->atom && v->atom(v->ctx, start, pos + n - start, buf + pos, n, utf8, role)) {
        return ETF_E_CALLBACK;
    }
    if (out) {
        out->name = buf + pos;
        out->len = n;
        out->utf8 = utf8;
    }
    *ppos = pos + n;
    return ETF_OK;
}

etf_status etf_walk_term(const uint8_t *buf, size_t len, size_t *end, const etf_visitor *v) {
    size_t pos = 0;
    uint64_t pending = 1; /* terms still to read */
    etf_status st;
    unsigned ticks = 0;

    while (pending > 0) {
        pending--;
        if (v && v->tick && ++ticks == ETF_TICK_TERMS) {
            ticks = 0;
            if (v->tick(v->ctx, pos)) {
                return ETF_E_CALLBACK;
            }
        }
        NEED(1);
        uint8_t tag = buf[pos];
        uint32_t n;
        switch (tag) {
        case TAG_SMALL_INTEGER:
            NEED(2);
            pos += 2;
            break;
        case TAG_INTEGER:
            NEED(5);
            pos += 5;
            break;
        case TAG_NEW_FLOAT:
            NEED(9);
            /* Erlang floats are finite: all exponent bits set is NaN or an
             * infinity, which binary_to_term and the loader refuse. */
            if ((rd_u16(buf + pos + 1) & 0x7FF0) == 0x7FF0) {
                return ETF_E_BAD_VALUE;
            }
            pos += 9;
            break;
        case TAG_FLOAT:
            NEED(32);
            pos += 32;
            break;
        case TAG_ATOM:
        case TAG_ATOM_UTF8:
        case TAG_SMALL_ATOM:
        case TAG_SMALL_ATOM_UTF8:
            if ((st = walk_atom(buf, len, &pos, v, ETF_ATOM_DATA, NULL)) != ETF_OK) {
                return st;
            }
            break;
        case TAG_SMALL_TUPLE:
            NEED(2);
            pending += buf[pos + 1];
            pos += 2;
            break;
        case TAG_LARGE_TUPLE:
            NEED(5);
            pending += rd_u32(buf + pos + 1);
            pos += 5;
            break;
        case TAG_MAP:
            NEED(5);
            pending += 2 * (uint64_t)rd_u32(buf + pos + 1);
            pos += 5;
            break;
        case TAG_NIL:
            pos += 1;
            break;
        case TAG_STRING:
            NEED(3);
            n = rd_u16(buf + pos + 1);
            pos += 3;
            NEED(n);
            pos += n;
            break;
        case TAG_LIST:
            NEED(5);
            pending += (uint64_t)rd_u32(buf + pos + 1) + 1; /* elements and the tail */
            pos += 5;
            break;
        case TAG_BINARY:
            NEED(5);
            n = rd_u32(buf + pos + 1);
            pos += 5;
            NEED(n);
            pos += n;
            break;
        case TAG_BIT_BINARY: {
            NEED(6);
            n = rd_u32(buf + pos + 1);
            uint8_t bits = buf[pos + 5];
            if (n == 0 || bits == 0 || bits > 8) {
                return ETF_E_BAD_VALUE;
            }
            pos += 6;
            NEED(n);
            pos += n;
            break;
        }
        case TAG_SMALL_BIG:
            NEED(3);
            n = buf[pos + 1];
            if (buf[pos + 2] > 1) {
                return ETF_E_BAD_VALUE;
            }
            pos += 3;
            NEED(n);
            pos += n;
            break;
        case TAG_LARGE_BIG:
            NEED(6);
            n = rd_u32(buf + pos + 1);
            if (buf[pos + 5] > 1) {
                return ETF_E_BAD_VALUE;
            }
            pos += 6;
            NEED(n);
            pos += n;
            break;
        case TAG_EXPORT: {
            etf_atom mod, fun;
            pos += 1;
            if ((st = walk_atom(buf, len, &pos, v, ETF_ATOM_FUN_MODULE, &mod)) != ETF_OK ||
                (st = walk_atom(buf, len, &pos, v, ETF_ATOM_FUN_NAME, &fun)) != ETF_OK) {
                return st;
            }
            NEED(2);
            if (buf[pos] != TAG_SMALL_INTEGER) {
                return ETF_E_BAD_VALUE;
            }
            if (v && v->export_fun && v->export_fun(v->ctx, &mod, &fun, buf[pos + 1])) {
                return ETF_E_CALLBACK;
            }
            pos += 2;
            break;
        }
        case TAG_NEW_FUN: {
            /* Size(4) Arity(1) Uniq(16) Index(4) NumFree(4), then Module,
             * OldIndex, OldUniq, Pid and NumFree free variables. */
            NEED(30);
            uint32_t size = rd_u32(buf + pos + 1);
            if (size < 29 || size > len - pos - 1) {
                return ETF_E_BAD_VALUE;
            }
            pending += 4 + (uint64_t)rd_u32(buf + pos + 26);
            pos += 30;
            break;
        }
        case TAG_PID:
        case TAG_NEW_PID:
        case TAG_PORT:
        case TAG_NEW_PORT:
        case TAG_V4_PORT:
        case TAG_REFERENCE: {
            pos += 1;
            if ((st = walk_atom(buf, len, &pos, v, ETF_ATOM_NODE, NULL)) != ETF_OK) {
                return st;
            }
            size_t rest = tag == TAG_PID        ? 9
                          : tag == TAG_NEW_PID  ? 12
                          : tag == TAG_PORT     ? 5
                          : tag == TAG_NEW_PORT ? 8
                          : tag == TAG_V4_PORT  ? 12
                                                : 5;
            NEED(rest);
            pos += rest;
            break;
        }
        case TAG_NEW_REFERENCE:
        case TAG_NEWER_REFERENCE: {
            NEED(3);
            uint16_t words = rd_u16(buf + pos + 1);
            if (words == 0 || words > 5) {
                return ETF_E_BAD_VALUE;
            }
            pos += 3;
            if ((st = walk_atom(buf, len, &pos, v, ETF_ATOM_NODE, NULL)) != ETF_OK) {
                return st;
            }
            size_t rest = (tag == TAG_NEW_REFERENCE ? 1 : 4) + 4 * (size_t)words;
            NEED(rest);
            pos += rest;
            break;
        }
        default:
            return ETF_E_BAD_TAG;
        }
        /* Every pending term needs at least one byte: refuse impossible counts early. */
        if (pending > len - pos) {
            return ETF_E_TRUNCATED;
        }
    }
    *end = pos;
    return ETF_OK;
}

int etf_inflate_exact(const uint8_t *src, size_t src_len, uint8_t *dst, size_t dst_len) {
    if (src_len > UINT32_MAX || dst_len > UINT32_MAX) {
        return -1;
    }
    z_stream zs = {0};
    if (inflateInit(&zs) != Z_OK) {
        return -1;
    }
    zs.next_in = (Bytef *)(uintptr_t)src;
    zs.avail_in = (uInt)src_len;
    zs.next_out = dst;
    zs.avail_out = (uInt)dst_len;
    /* One call with the whole output: the stream must end exactly where both
     * the input and the declared output end. */
    int zr = inflate(&zs, Z_FINISH);
    int ok = zr == Z_STREAM_END && zs.avail_in == 0 && zs.avail_out == 0;
    inflateEnd(&zs);
    return ok ? 0 : -1;
}

etf_status etf_open(const uint8_t *buf, size_t len, int allow_compressed, const uint8_t **term,
                    size_t *term_len, uint8_t **owned) {
    *owned = NULL;
    if (len < 1) {
        return ETF_E_TRUNCATED;
    }
    if (buf[0] != ETF_VERSION) {
        return ETF_E_VERSION;
    }
    if (len < 2 || buf[1] != TAG_COMPRESSED) {
        *term = buf + 1;
        *term_len = len - 1;
        return ETF_OK;
    }
    if (!allow_compressed) {
        return ETF_E_BAD_TAG;
    }
    if (len < 6) {
        return ETF_E_TRUNCATED;
    }
    uint32_t usize = rd_u32(buf + 2);
    if (usize == 0 || usize > etf_inflate_bound(len - 6)) {
        return ETF_E_ZLIB;
    }
    uint8_t *out = malloc((size_t)usize + 1);
    if (!out) {
        return ETF_E_NOMEM;
    }
    out[0] = ETF_VERSION;
    if (etf_inflate_exact(buf + 6, len - 6, out + 1, usize) != 0) {
        free(out);
        return ETF_E_ZLIB;
    }
    *owned = out;
    *term = out + 1;
    *term_len = usize;
    return ETF_OK;
}

etf_status etf_validate(const uint8_t *buf, size_t len, int allow_compressed) {
    const uint8_t *term;
    size_t tlen, end = 0;
    uint8_t *owned;
    etf_status st = etf_open(buf, len, allow_compressed, &term, &tlen, &owned);
    if (st != ETF_OK) {
        return st;
    }
    st = etf_walk_term(term, tlen, &end, NULL);
    if (st == ETF_OK && end != tlen) {
        st = ETF_E_TRAILING;
    }
    free(owned);
    return st;
}

const char *etf_status_name(etf_status s) {
    switch (s) {
    case ETF_OK:
        return "ok";
    case ETF_E_TRUNCATED:
        return "truncated";
    case ETF_E_BAD_TAG:
        return "bad_tag";
    case ETF_E_BAD_ATOM:
        return "bad_atom";
    case ETF_E_BAD_VALUE:
        return "bad_value";
    case ETF_E_TRAILING:
        return "trailing_bytes";
    case ETF_E_VERSION:
        return "bad_version";
    case ETF_E_ZLIB:
        return "zlib_error";
    case ETF_E_NOMEM:
        return "out_of_memory";
    case ETF_E_CALLBACK:
        return "stopped";
    }
    return "unknown";
}
