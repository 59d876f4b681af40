/* Debouncing file-change events into one set of paths per window.
 *
 * The window is trailing: it closes `debounce` ms after the last event, but
 * never later than CN_COALESCE_MAX_WINDOWS windows after the first, so a
 * steady stream of changes still gets reported. A path created and then
 * renamed away within the window (an editor's temporary file) is no change;
 * the rename's target is. The pending paths are indexed by a hash table, so
 * a rescan reporting every file of a large tree costs O(files), not
 * O(files^2). Pure C. */
#ifndef SANDBOX_CN_COALESCE_H
#define SANDBOX_CN_COALESCE_H

#include <stddef.h>
#include <stdint.h>

#define CN_COALESCE_MAX_WINDOWS 10

typedef struct {
    char **paths;
    unsigned char *created; /* created within this window */
    size_t n, cap;
    size_t *slots;       /* open addressing: index + 1, 0 empty, SIZE_MAX deleted */
    size_t nslots, used; /* used: live and deleted slots */
    uint64_t cmps;       /* string comparisons made, for tests and benchmarks */
    int64_t debounce;
    int64_t first, deadline; /* deadline -1: nothing pending */
} cn_coalesce;

void cn_coalesce_init(cn_coalesce *c, int64_t debounce_ms);
void cn_coalesce_free(cn_coalesce *c);

/* A file changed (created: it did not exist before). 0, or -1 on no memory. */
int cn_coalesce_changed(cn_coalesce *c, const char *path, int created, int64_t now);
/* A file was renamed away (IN_MOVED_FROM) or deleted. */
int cn_coalesce_gone(cn_coalesce *c, const char *path, int64_t now);

/* When the pending set is due (-1: nothing pending). Never negative while
 * something is pending, whatever the debounce (arithmetic saturates). */
int64_t cn_coalesce_deadline(const cn_coalesce *c);

/* Takes the pending paths, sorted, each once (a malloc'd vector of *n
 * malloc'd strings, or NULL when empty), and starts a new window. */
char **cn_coalesce_take(cn_coalesce *c, size_t *n);

#endif
