/* The directories of one recursive watch: inotify watch descriptor ->
 * path and depth below the watch's root, in a hash table.
 *
 * A directory renamed within the tree keeps its watch descriptor (inotify
 * watches inodes), so its entry and every entry below it take the new path
 * (cn_wdtab_rename); one moved out of the tree goes with everything below
 * it (cn_wdtab_remove_under). Pure C. */
#ifndef SANDBOX_CN_WDTAB_H
#define SANDBOX_CN_WDTAB_H

#include <stddef.h>

typedef struct {
    int wd; /* -1 empty, -2 deleted */
    int depth;
    char *path;
} cn_wdent;

typedef struct {
    cn_wdent *slots;
    size_t cap, n, used; /* used: live and deleted slots */
} cn_wdtab;

void cn_wdtab_init(cn_wdtab *t);
void cn_wdtab_free(cn_wdtab *t);
size_t cn_wdtab_count(const cn_wdtab *t);

/* Sets wd's path and depth, replacing what it had. 0, or -1 when out of
 * memory. *added (may be NULL): whether wd is new. */
int cn_wdtab_put(cn_wdtab *t, int wd, const char *path, int depth, int *added);
const cn_wdent *cn_wdtab_get(const cn_wdtab *t, int wd);
/* 1 if wd was there. */
int cn_wdtab_del(cn_wdtab *t, int wd);

/* The directory old is now at new, at depth new_depth: the entries at old
 * or below it take the new prefix and their depths shift alike. old and
 * new_path may be paths of the table's own entries. The number of entries
 * changed, or -1 when out of memory (nothing changed then). */
long cn_wdtab_rename(cn_wdtab *t, const char *old, const char *new_path, int new_depth);

/* Removes the entries at path or below it; their wds go to *out (malloc'd,
 * may be NULL when none). Their number, or -1 when out of memory. */
long cn_wdtab_remove_under(cn_wdtab *t, const char *path, int **out);

/* Whether p is dir or below it ("/a/b" is below "/a", "/ab" is not). */
int cn_path_under(const char *p, const char *dir);

#endif
