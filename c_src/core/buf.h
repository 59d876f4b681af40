/* A growable byte buffer. Functions return 0 on success, -1 when out of memory
 * (the buffer is then left as it was). */
#ifndef SANDBOX_BUF_H
#define SANDBOX_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
} buf_t;

static inline int buf_reserve(buf_t *b, size_t extra) {
    if (extra <= b->cap - b->len) {
        return 0;
    }
    if (extra > SIZE_MAX / 2 - b->len) {
        return -1;
    }
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        cap *= 2;
    }
    uint8_t *d = realloc(b->data, cap);
    if (!d) {
        return -1;
    }
    b->data = d;
    b->cap = cap;
    return 0;
}

static inline int buf_put(buf_t *b, const void *src, size_t n) {
    if (buf_reserve(b, n)) {
        return -1;
    }
    if (n) {
        memcpy(b->data + b->len, src, n);
    }
    b->len += n;
    return 0;
}

static inline int buf_put_u8(buf_t *b, uint8_t v) {
    return buf_put(b, &v, 1);
}

static inline int buf_put_u32(buf_t *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    return buf_put(b, x, 4);
}

static inline void buf_free(buf_t *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

#endif
