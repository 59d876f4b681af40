/* A fixed-size open-addressing hash map from byte strings to integers, for
 * looking atom names up in rename tables. Keys are not copied: they must
 * outlive the map. */
#ifndef SANDBOX_STRMAP_H
#define SANDBOX_STRMAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const uint8_t *key;
    size_t len;
    size_t value;
} strmap_slot;

typedef struct {
    strmap_slot *slots;
    size_t mask;
    size_t count;
} strmap;

/* A map with room for `n` keys. Returns 0, or -1 when out of memory. */
int strmap_init(strmap *m, size_t n);
void strmap_free(strmap *m);

/* Inserts key -> value. Returns 0, 1 if the key was already present (its
 * value is kept), or -1 if the map is full. */
int strmap_put(strmap *m, const uint8_t *key, size_t len, size_t value);

/* Looks a key up: 1 and *value when found, 0 otherwise. */
int strmap_get(const strmap *m, const uint8_t *key, size_t len, size_t *value);

#endif
