#include "cn_term.h"

#include <stdlib.h>
#include <string.h>

#include "bytes.h"

struct cn_arena_block {
    cn_arena_block *next;
    size_t used, cap;
    cn_term items[];
};

void cn_arena_init(cn_arena *a) {
    a->head = NULL;
}

void cn_arena_free(cn_arena *a) {
    cn_arena_block *b = a->head;
    while (b) {
        cn_arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
}

static cn_term *arena_alloc(cn_arena *a, size_t n) {
    if (n == 0) {
        return NULL;
    }
    cn_arena_block *b = a->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 256 ? n : 256;
        if (cap > (SIZE_MAX - sizeof *b) / sizeof(cn_term)) {
            return NULL;
        }
        b = malloc(sizeof *b + cap * sizeof(cn_term));
        if (!b) {
            return NULL;
        }
        b->used = 0;
        b->cap = cap;
        b->next = a->head;
        a->head = b;
    }
    cn_term *t = b->items + b->used;
    b->used += n;
    return t;
}

static cn_term_status decode(const uint8_t *buf, size_t len, size_t *pos, cn_arena *a, cn_term *t,
                             int depth);

#define NEED(n)                                                                                    \
    do {                                                                                           \
        if (len - *pos < (size_t)(n))                                                              \
            return CN_TERM_E_TRUNCATED;                                                            \
    } while (0)

/* An atom's encoding at *pos, for the node names inside pids and references. */
static cn_term_status atom_at(const uint8_t *buf, size_t len, size_t *pos, const uint8_t **name,
                              size_t *n) {
    NEED(1);
    uint8_t tag = buf[*pos];
    size_t alen;
    if (tag == 119 || tag == 115) { /* SMALL_ATOM_UTF8_EXT, SMALL_ATOM_EXT */
        NEED(2);
        alen = buf[*pos + 1];
        *pos += 2;
    } else if (tag == 118 || tag == 100) { /* ATOM_UTF8_EXT, ATOM_EXT */
        NEED(3);
        alen = rd_u16(buf + *pos + 1);
        *pos += 3;
    } else {
        return CN_TERM_E_BAD_TAG;
    }
    if (alen > 255 * 4) {
        return CN_TERM_E_BAD_VALUE;
    }
    NEED(alen);
    *name = buf + *pos;
    *n = alen;
    *pos += alen;
    return CN_TERM_OK;
}

static cn_term_status container(const uint8_t *buf, size_t len, size_t *pos, cn_arena *a,
                                cn_term *t, size_t count, int depth) {
    /* Every term takes at least one byte: a count beyond the buffer is a lie. */
    if (count > len - *pos) {
        return CN_TERM_E_TRUNCATED;
    }
    t->u.c.items = NULL;
    if (count == 0) {
        return CN_TERM_OK;
    }
    cn_term *items = arena_alloc(a, count);
    if (!items) {
        return CN_TERM_E_NOMEM;
    }
    t->u.c.items = items;
    for (size_t i = 0; i < count; i++) {
        cn_term_status s = decode(buf, len, pos, a, &items[i], depth + 1);
        if (s != CN_TERM_OK) {
            return s;
        }
    }
    return CN_TERM_OK;
}

static cn_term_status decode(const uint8_t *buf, size_t len, size_t *pos, cn_arena *a, cn_term *t,
                             int depth) {
    if (depth > CN_TERM_MAX_DEPTH) {
        return CN_TERM_E_DEPTH;
    }
    NEED(1);
    size_t start = *pos;
    uint8_t tag = buf[*pos];
    cn_term_status s = CN_TERM_OK;
    memset(t, 0, sizeof *t);
    switch (tag) {
    case 97: /* SMALL_INTEGER_EXT */
        NEED(2);
        t->type = CN_T_INT;
        t->u.i = buf[*pos + 1];
        *pos += 2;
        break;
    case 98: /* INTEGER_EXT */
        NEED(5);
        t->type = CN_T_INT;
        t->u.i = (int32_t)rd_u32(buf + *pos + 1);
        *pos += 5;
        break;
    case 110: /* SMALL_BIG_EXT */
    case 111: /* LARGE_BIG_EXT */
    {
        size_t n, hdr = tag == 110 ? 3 : 6;
        NEED(hdr);
        n = tag == 110 ? buf[*pos + 1] : rd_u32(buf + *pos + 1);
        uint8_t sign = buf[*pos + hdr - 1];
        if (sign > 1) {
            return CN_TERM_E_BAD_VALUE;
        }
        *pos += hdr;
        NEED(n);
        uint64_t mag = 0;
        for (size_t i = 0; i < n; i++) {
            uint8_t d = buf[*pos + i];
            if (d != 0 && i >= 8) {
                return CN_TERM_E_BAD_VALUE; /* beyond 64 bits */
            }
            if (i < 8) {
                mag |= (uint64_t)d << (8 * i);
            }
        }
        *pos += n;
        if (sign == 0 && mag > (uint64_t)INT64_MAX) {
            return CN_TERM_E_BAD_VALUE;
        }
        if (sign == 1 && mag > (uint64_t)INT64_MAX + 1) {
            return CN_TERM_E_BAD_VALUE;
        }
        t->type = CN_T_INT;
        t->u.i = sign ? (int64_t)(0 - mag) : (int64_t)mag;
        break;
    }
    case 70: /* NEW_FLOAT_EXT */
    {
        NEED(9);
        uint64_t bits = rd_u64(buf + *pos + 1);
        t->type = CN_T_FLOAT;
        memcpy(&t->u.f, &bits, sizeof bits);
        *pos += 9;
        break;
    }
    case 100:
    case 115:
    case 118:
    case 119:
        t->type = CN_T_ATOM;
        s = atom_at(buf, len, pos, &t->u.s.p, &t->u.s.n);
        if (s != CN_TERM_OK) {
            return s;
        }
        break;
    case 109: /* BINARY_EXT */
    {
        NEED(5);
        size_t n = rd_u32(buf + *pos + 1);
        *pos += 5;
        NEED(n);
        t->type = CN_T_BINARY;
        t->u.s.p = buf + *pos;
        t->u.s.n = n;
        *pos += n;
        break;
    }
    case 107: /* STRING_EXT */
    {
        NEED(3);
        size_t n = rd_u16(buf + *pos + 1);
        *pos += 3;
        NEED(n);
        t->type = CN_T_STRING;
        t->u.s.p = buf + *pos;
        t->u.s.n = n;
        *pos += n;
        break;
    }
    case 106: /* NIL_EXT */
        t->type = CN_T_LIST;
        *pos += 1;
        break;
    case 108: /* LIST_EXT */
    {
        NEED(5);
        size_t n = rd_u32(buf + *pos + 1);
        *pos += 5;
        t->type = CN_T_LIST;
        t->u.c.n = n;
        s = container(buf, len, pos, a, t, n, depth);
        if (s != CN_TERM_OK) {
            return s;
        }
        NEED(1);
        if (buf[*pos] != 106) {
            return CN_TERM_E_IMPROPER;
        }
        *pos += 1;
        break;
    }
    case 104: /* SMALL_TUPLE_EXT */
    case 105: /* LARGE_TUPLE_EXT */
    {
        size_t hdr = tag == 104 ? 2 : 5;
        NEED(hdr);
        size_t n = tag == 104 ? buf[*pos + 1] : rd_u32(buf + *pos + 1);
        *pos += hdr;
        t->type = CN_T_TUPLE;
        t->u.c.n = n;
        s = container(buf, len, pos, a, t, n, depth);
        if (s != CN_TERM_OK) {
            return s;
        }
        break;
    }
    case 116: /* MAP_EXT */
    {
        NEED(5);
        size_t n = rd_u32(buf + *pos + 1);
        *pos += 5;
        if (n > (len - *pos) / 2) {
            return CN_TERM_E_TRUNCATED;
        }
        t->type = CN_T_MAP;
        t->u.c.n = n;
        s = container(buf, len, pos, a, t, 2 * n, depth);
        if (s != CN_TERM_OK) {
            return s;
        }
        break;
    }
    case 88:  /* NEW_PID_EXT */
    case 103: /* PID_EXT */
        *pos += 1;
        s = atom_at(buf, len, pos, &t->u.s.p, &t->u.s.n);
        if (s != CN_TERM_OK) {
            return s;
        }
        NEED(tag == 88 ? 12 : 9);
        *pos += tag == 88 ? 12 : 9;
        t->type = CN_T_PID;
        break;
    case 89:  /* NEW_PORT_EXT */
    case 120: /* V4_PORT_EXT */
    case 102: /* PORT_EXT */
        *pos += 1;
        s = atom_at(buf, len, pos, &t->u.s.p, &t->u.s.n);
        if (s != CN_TERM_OK) {
            return s;
        }
        {
            size_t rest = tag == 89 ? 8 : tag == 120 ? 12 : 5;
            NEED(rest);
            *pos += rest;
        }
        t->type = CN_T_PORT;
        break;
    case 90:  /* NEWER_REFERENCE_EXT */
    case 114: /* NEW_REFERENCE_EXT */
    {
        NEED(3);
        size_t n = rd_u16(buf + *pos + 1);
        if (n == 0 || n > 5) {
            return CN_TERM_E_BAD_VALUE;
        }
        *pos += 3;
        s = atom_at(buf, len, pos, &t->u.s.p, &t->u.s.n);
        if (s != CN_TERM_OK) {
            return s;
        }
        size_t rest = (tag == 90 ? 4 : 1) + 4 * n;
        NEED(rest);
        *pos += rest;
        t->type = CN_T_REF;
        break;
    }
    default:
        return CN_TERM_E_BAD_TAG;
    }
    t->raw = buf + start;
    t->raw_len = *pos - start;
    return CN_TERM_OK;
}

cn_term_status cn_term_decode_one(const uint8_t *buf, size_t len, size_t *pos, cn_arena *a,
                                  cn_term *out) {
    if (*pos > len) {
        return CN_TERM_E_TRUNCATED;
    }
    return decode(buf, len, pos, a, out, 0);
}

cn_term_status cn_term_decode(const uint8_t *buf, size_t len, cn_arena *a, cn_term **out) {
    if (len < 1) {
        return CN_TERM_E_TRUNCATED;
    }
    if (buf[0] != 131) {
        return CN_TERM_E_VERSION;
    }
    cn_term *t = arena_alloc(a, 1);
    if (!t) {
        return CN_TERM_E_NOMEM;
    }
    size_t pos = 1;
    cn_term_status s = decode(buf, len, &pos, a, t, 0);
    if (s != CN_TERM_OK) {
        return s;
    }
    if (pos != len) {
        return CN_TERM_E_TRAILING;
    }
    *out = t;
    return CN_TERM_OK;
}

const char *cn_term_status_name(cn_term_status s) {
    switch (s) {
    case CN_TERM_OK:
        return "ok";
    case CN_TERM_E_TRUNCATED:
        return "truncated";
    case CN_TERM_E_VERSION:
        return "bad_version";
    case CN_TERM_E_BAD_TAG:
        return "unsupported_term";
    case CN_TERM_E_BAD_VALUE:
        return "bad_value";
    case CN_TERM_E_IMPROPER:
        return "improper_list";
    case CN_TERM_E_DEPTH:
        return "too_deep";
    case CN_TERM_E_TRAILING:
        return "trailing_bytes";
    case CN_TERM_E_NOMEM:
        return "enomem";
    }
    return "unknown";
}

int cn_term_is_atom(const cn_term *t, const char *name) {
    size_t n = strlen(name);
    return t && t->type == CN_T_ATOM && t->u.s.n == n && memcmp(t->u.s.p, name, n) == 0;
}

const cn_term *cn_term_get(const cn_term *t, const char *key) {
    if (!t) {
        return NULL;
    }
    if (t->type == CN_T_MAP) {
        for (size_t i = 0; i < t->u.c.n; i++) {
            if (cn_term_is_atom(&t->u.c.items[2 * i], key)) {
                return &t->u.c.items[2 * i + 1];
            }
        }
    } else if (t->type == CN_T_LIST) {
        for (size_t i = 0; i < t->u.c.n; i++) {
            const cn_term *kv = &t->u.c.items[i];
            if (kv->type == CN_T_TUPLE && kv->u.c.n == 2 &&
                cn_term_is_atom(&kv->u.c.items[0], key)) {
                return &kv->u.c.items[1];
            }
        }
    }
    return NULL;
}

char *cn_term_strdup(const cn_term *t) {
    if (!t || (t->type != CN_T_BINARY && t->type != CN_T_STRING && t->type != CN_T_LIST)) {
        return NULL;
    }
    if (t->type == CN_T_LIST && t->u.c.n != 0) {
        return NULL;
    }
    size_t n = t->type == CN_T_LIST ? 0 : t->u.s.n;
    if (n && memchr(t->u.s.p, 0, n)) {
        return NULL;
    }
    char *s = malloc(n + 1);
    if (!s) {
        return NULL;
    }
    if (n) {
        memcpy(s, t->u.s.p, n);
    }
    s[n] = 0;
    return s;
}

const cn_term *cn_term_tuple_elem(const cn_term *t, size_t arity, size_t i) {
    if (!t || t->type != CN_T_TUPLE || t->u.c.n != arity || i >= arity) {
        return NULL;
    }
    return &t->u.c.items[i];
}
