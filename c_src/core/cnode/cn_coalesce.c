#include "cn_coalesce.h"

#include <stdlib.h>
#include <string.h>

#include "cn_time.h"

#define DELETED SIZE_MAX

void cn_coalesce_init(cn_coalesce *c, int64_t debounce_ms) {
    memset(c, 0, sizeof *c);
    c->debounce = debounce_ms < 0 ? 0 : debounce_ms;
    c->deadline = -1;
}

static void clear_index(cn_coalesce *c) {
    free(c->slots);
    c->slots = NULL;
    c->nslots = c->used = 0;
}

void cn_coalesce_free(cn_coalesce *c) {
    for (size_t i = 0; i < c->n; i++) {
        free(c->paths[i]);
    }
    free(c->paths);
    free(c->created);
    clear_index(c);
    int64_t debounce = c->debounce;
    memset(c, 0, sizeof *c);
    c->debounce = debounce;
    c->deadline = -1;
}

/* FNV-1a: paths share long prefixes, every byte counts. */
static size_t hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    }
    return (size_t)(h ^ (h >> 29));
}

/* The slot holding path, or (insert) the slot where it would go. */
static size_t *probe(cn_coalesce *c, const char *path, int insert) {
    size_t mask = c->nslots - 1;
    size_t *tomb = NULL;
    for (size_t i = hash(path) & mask;; i = (i + 1) & mask) {
        size_t v = c->slots[i];
        if (v == 0) {
            return insert ? (tomb ? tomb : &c->slots[i]) : NULL;
        }
        if (v == DELETED) {
            if (!tomb) {
                tomb = &c->slots[i];
            }
            continue;
        }
        c->cmps++;
        if (strcmp(c->paths[v - 1], path) == 0) {
            return &c->slots[i];
        }
    }
}

static int rebuild(cn_coalesce *c, size_t want) {
    size_t n = 16;
    while (n < 2 * want) {
        n *= 2;
    }
    size_t *s = calloc(n, sizeof *s);
    if (!s) {
        return -1;
    }
    free(c->slots);
    c->slots = s;
    c->nslots = n;
    c->used = c->n;
    for (size_t k = 0; k < c->n; k++) {
        *probe(c, c->paths[k], 1) = k + 1;
    }
    return 0;
}

static long find(cn_coalesce *c, const char *path) {
    if (c->nslots == 0) {
        return -1;
    }
    size_t *s = probe(c, path, 0);
    return s ? (long)(*s - 1) : -1;
}

static void touch(cn_coalesce *c, int64_t now) {
    if (c->deadline < 0) {
        c->first = now;
    }
    int64_t d = cn_deadline_add(now, c->debounce);
    int64_t cap = cn_deadline_add(c->first, cn_sat_mul(c->debounce, CN_COALESCE_MAX_WINDOWS));
    c->deadline = d < cap ? d : cap;
}

static int add(cn_coalesce *c, const char *path, int created) {
    if (c->n == c->cap) {
        size_t cap = c->cap ? 2 * c->cap : 16;
        char **p = realloc(c->paths, cap * sizeof *p);
        if (!p) {
            return -1;
        }
        c->paths = p;
        unsigned char *cr = realloc(c->created, cap);
        if (!cr) {
            return -1;
        }
        c->created = cr;
        c->cap = cap;
    }
    if (2 * (c->used + 1) > c->nslots && rebuild(c, c->n + 1) != 0) {
        return -1;
    }
    char *s = strdup(path);
    if (!s) {
        return -1;
    }
    size_t *slot = probe(c, s, 1);
    if (*slot == 0) {
        c->used++;
    }
    c->paths[c->n] = s;
    c->created[c->n] = (unsigned char)(created != 0);
    c->n++;
    *slot = c->n;
    return 0;
}

/* Removes entry i: its slot becomes a tombstone, the last entry moves in. */
static void remove_at(cn_coalesce *c, size_t i) {
    *probe(c, c->paths[i], 0) = DELETED;
    free(c->paths[i]);
    size_t last = c->n - 1;
    if (i != last) {
        *probe(c, c->paths[last], 0) = i + 1;
        c->paths[i] = c->paths[last];
        c->created[i] = c->created[last];
    }
    c->n--;
}

int cn_coalesce_changed(cn_coalesce *c, const char *path, int created, int64_t now) {
    touch(c, now);
    long i = find(c, path);
    if (i >= 0) {
        return 0; /* keeps its "created" mark: still new in this window */
    }
    return add(c, path, created);
}

int cn_coalesce_gone(cn_coalesce *c, const char *path, int64_t now) {
    touch(c, now);
    long i = find(c, path);
    if (i >= 0 && c->created[i]) {
        /* born and gone within the window: a temporary file, no change */
        remove_at(c, (size_t)i);
        if (c->n == 0) {
            c->deadline = -1;
        }
        return 0;
    }
    if (i >= 0) {
        return 0;
    }
    return add(c, path, 0);
}

int64_t cn_coalesce_deadline(const cn_coalesce *c) {
    return c->deadline;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **cn_coalesce_take(cn_coalesce *c, size_t *n) {
    char **out = NULL;
    *n = 0;
    if (c->n > 0) {
        out = c->paths;
        *n = c->n;
        qsort(out, *n, sizeof *out, cmp_str);
        free(c->created);
        c->paths = NULL;
        c->created = NULL;
        c->n = c->cap = 0;
    }
    clear_index(c);
    c->deadline = -1;
    return out;
}
