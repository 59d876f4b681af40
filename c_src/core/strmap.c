#include "strmap.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

int strmap_init(strmap *m, size_t n) {
    size_t cap = 8;
    while (cap < 2 * n + 1) {
        cap *= 2;
    }
    m->slots = calloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    m->count = 0;
    return m->slots ? 0 : -1;
}

void strmap_free(strmap *m) {
    free(m->slots);
    m->slots = NULL;
    m->mask = 0;
    m->count = 0;
}

static size_t probe(const strmap *m, const uint8_t *key, size_t len) {
    size_t i = (size_t)XXH3_64bits(key, len) & m->mask;
    while (m->slots[i].key && !(m->slots[i].len == len && memcmp(m->slots[i].key, key, len) == 0)) {
        i = (i + 1) & m->mask;
    }
    return i;
}

int strmap_put(strmap *m, const uint8_t *key, size_t len, size_t value) {
    if (!m->slots || m->count + 1 > m->mask / 2 + 1) {
        return -1;
    }
    /* Keys of length 0 are stored with a non-NULL pointer so the slot reads as used. */
    static const uint8_t empty = 0;
    size_t i = probe(m, len ? key : &empty, len);
    if (m->slots[i].key) {
        return 1;
    }
    m->slots[i].key = len ? key : &empty;
    m->slots[i].len = len;
    m->slots[i].value = value;
    m->count++;
    return 0;
}

int strmap_get(const strmap *m, const uint8_t *key, size_t len, size_t *value) {
    if (!m->slots || m->count == 0) {
        return 0;
    }
    static const uint8_t empty = 0;
    size_t i = probe(m, len ? key : &empty, len);
    if (!m->slots[i].key) {
        return 0;
    }
    *value = m->slots[i].value;
    return 1;
}
