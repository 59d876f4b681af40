#include "cn_wdtab.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EMPTY (-1)
#define DELETED (-2)

void cn_wdtab_init(cn_wdtab *t) {
    memset(t, 0, sizeof *t);
}

void cn_wdtab_free(cn_wdtab *t) {
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i].wd >= 0) {
            free(t->slots[i].path);
        }
    }
    free(t->slots);
    memset(t, 0, sizeof *t);
}

size_t cn_wdtab_count(const cn_wdtab *t) {
    return t->n;
}

static size_t hash_wd(int wd, size_t mask) {
    uint32_t x = (uint32_t)wd * 2654435761u;
    return (size_t)(x ^ (x >> 16)) & mask;
}

/* The slot of wd, or (insert) where it goes; NULL when absent/full. */
static cn_wdent *find(const cn_wdtab *t, int wd, int insert) {
    if (t->cap == 0) {
        return NULL;
    }
    size_t mask = t->cap - 1;
    cn_wdent *tomb = NULL;
    for (size_t i = hash_wd(wd, mask), k = 0; k < t->cap; i = (i + 1) & mask, k++) {
        cn_wdent *e = &t->slots[i];
        if (e->wd == wd) {
            return e;
        }
        if (e->wd == EMPTY) {
            return insert ? (tomb ? tomb : e) : NULL;
        }
        if (e->wd == DELETED && !tomb) {
            tomb = e;
        }
    }
    return insert ? tomb : NULL;
}

static int grow(cn_wdtab *t) {
    size_t cap = t->cap ? t->cap : 16;
    while (cap < 4 * (t->n + 1)) {
        cap *= 2;
    }
    cn_wdent *s = malloc(cap * sizeof *s);
    if (!s) {
        return -1;
    }
    for (size_t i = 0; i < cap; i++) {
        s[i].wd = EMPTY;
        s[i].path = NULL;
        s[i].depth = 0;
    }
    cn_wdtab old = *t;
    t->slots = s;
    t->cap = cap;
    t->used = t->n;
    for (size_t i = 0; i < old.cap; i++) {
        if (old.slots[i].wd >= 0) {
            *find(t, old.slots[i].wd, 1) = old.slots[i];
        }
    }
    free(old.slots);
    return 0;
}

int cn_wdtab_put(cn_wdtab *t, int wd, const char *path, int depth, int *added) {
    if (added) {
        *added = 0;
    }
    if (wd < 0) {
        return -1;
    }
    cn_wdent *e = find(t, wd, 0);
    char *p = strdup(path);
    if (!p) {
        return -1;
    }
    if (e) {
        free(e->path);
        e->path = p;
        e->depth = depth;
        return 0;
    }
    if (2 * (t->used + 1) > t->cap && grow(t) != 0) {
        free(p);
        return -1;
    }
    e = find(t, wd, 1);
    if (e->wd == EMPTY) {
        t->used++;
    }
    e->wd = wd;
    e->path = p;
    e->depth = depth;
    t->n++;
    if (added) {
        *added = 1;
    }
    return 0;
}

const cn_wdent *cn_wdtab_get(const cn_wdtab *t, int wd) {
    return wd >= 0 ? find(t, wd, 0) : NULL;
}

int cn_wdtab_del(cn_wdtab *t, int wd) {
    cn_wdent *e = wd >= 0 ? find(t, wd, 0) : NULL;
    if (!e) {
        return 0;
    }
    free(e->path);
    e->path = NULL;
    e->wd = DELETED;
    t->n--;
    return 1;
}

int cn_path_under(const char *p, const char *dir) {
    size_t dl = strlen(dir);
    while (dl > 1 && dir[dl - 1] == '/') {
        dl--;
    }
    if (strncmp(p, dir, dl) != 0) {
        return 0;
    }
    return p[dl] == 0 || p[dl] == '/' || (dl == 1 && dir[0] == '/');
}

static long rename_copy(cn_wdtab *t, const char *old, const char *new_path, int new_depth);

long cn_wdtab_rename(cn_wdtab *t, const char *old, const char *new_path, int new_depth) {
    /* old and new_path may point into the table's own entries, which are
     * freed on the way: work on copies */
    char *o = strdup(old), *n = strdup(new_path);
    long k = o && n ? rename_copy(t, o, n, new_depth) : -1;
    free(o);
    free(n);
    return k;
}

static long rename_copy(cn_wdtab *t, const char *old, const char *new_path, int new_depth) {
    size_t ol = strlen(old), nl = strlen(new_path);
    const cn_wdent *top = NULL;
    for (size_t i = 0; i < t->cap; i++) {
        if (t->slots[i].wd >= 0 && strcmp(t->slots[i].path, old) == 0) {
            top = &t->slots[i];
        }
    }
    int shift = top ? new_depth - top->depth : 0;
    /* new strings first, so that running out of memory changes nothing */
    size_t k = 0;
    for (size_t i = 0; i < t->cap; i++) {
        k += t->slots[i].wd >= 0 && cn_path_under(t->slots[i].path, old);
    }
    if (k == 0) {
        return 0;
    }
    char **fresh = malloc(k * sizeof *fresh);
    if (!fresh) {
        return -1;
    }
    size_t m = 0;
    for (size_t i = 0; i < t->cap; i++) {
        cn_wdent *e = &t->slots[i];
        if (e->wd < 0 || !cn_path_under(e->path, old)) {
            continue;
        }
        size_t rest = strlen(e->path) - ol;
        char *s = malloc(nl + rest + 1);
        if (!s) {
            while (m > 0) {
                free(fresh[--m]);
            }
            free(fresh);
            return -1;
        }
        memcpy(s, new_path, nl);
        memcpy(s + nl, e->path + ol, rest + 1);
        fresh[m++] = s;
    }
    m = 0;
    for (size_t i = 0; i < t->cap; i++) {
        cn_wdent *e = &t->slots[i];
        if (e->wd < 0 || !cn_path_under(e->path, old)) {
            continue;
        }
        free(e->path);
        e->path = fresh[m++];
        e->depth += shift;
    }
    free(fresh);
    return (long)k;
}

long cn_wdtab_remove_under(cn_wdtab *t, const char *path, int **out) {
    *out = NULL;
    size_t k = 0;
    for (size_t i = 0; i < t->cap; i++) {
        k += t->slots[i].wd >= 0 && cn_path_under(t->slots[i].path, path);
    }
    if (k == 0) {
        return 0;
    }
    int *wds = malloc(k * sizeof *wds);
    if (!wds) {
        return -1;
    }
    size_t m = 0;
    for (size_t i = 0; i < t->cap; i++) {
        cn_wdent *e = &t->slots[i];
        if (e->wd >= 0 && cn_path_under(e->path, path)) {
            wds[m++] = e->wd;
            free(e->path);
            e->path = NULL;
            e->wd = DELETED;
            t->n--;
        }
    }
    *out = wds;
    return (long)m;
}
