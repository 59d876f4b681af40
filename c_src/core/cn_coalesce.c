#include "cn_coalesce.h"

#include <stdlib.h>
#include <string.h>

void cn_coalesce_init(cn_coalesce *c, int64_t debounce_ms) {
    memset(c, 0, sizeof *c);
    c->debounce = debounce_ms;
    c->deadline = -1;
}

void cn_coalesce_free(cn_coalesce *c) {
    for (size_t i = 0; i < c->n; i++) {
        free(c->paths[i]);
    }
    free(c->paths);
    free(c->created);
    memset(c, 0, sizeof *c);
    c->deadline = -1;
}

static long find(const cn_coalesce *c, const char *path) {
    for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->paths[i], path) == 0) {
            return (long)i;
        }
    }
    return -1;
}

static void touch(cn_coalesce *c, int64_t now) {
    if (c->deadline < 0) {
        c->first = now;
    }
    int64_t d = now + c->debounce;
    int64_t cap = c->first + c->debounce * CN_COALESCE_MAX_WINDOWS;
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
    char *s = strdup(path);
    if (!s) {
        return -1;
    }
    c->paths[c->n] = s;
    c->created[c->n] = (unsigned char)(created != 0);
    c->n++;
    return 0;
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
        free(c->paths[i]);
        c->paths[i] = c->paths[c->n - 1];
        c->created[i] = c->created[c->n - 1];
        c->n--;
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
    c->deadline = -1;
    return out;
}
