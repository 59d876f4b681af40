/* /proc parsing and process-tree walking for the C-node's sampling.
 * Pure C (plain file I/O only): the proc root is a parameter, so tests run the
 * same code on fixture directories.
 *
 * The parsers, cn_proc_walk() and cn_proc_scan_raw() allocate nothing and
 * use only system calls: a job's leader, a fork() of the C-node that never
 * execs (and whose parent may have threads), runs them. */
#ifndef SANDBOX_CN_PROC_H
#define SANDBOX_CN_PROC_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int pid, ppid, pgrp, session;
    char state;          /* R, S, D, Z, T, t, X, I, ... */
    uint64_t utime;      /* clock ticks */
    uint64_t stime;      /* clock ticks */
    int64_t num_threads; /* threads */
    uint64_t starttime;  /* clock ticks after boot */
    uint64_t vsize;      /* bytes */
    int64_t rss_pages;   /* pages */
} cn_procstat;

typedef struct {
    int64_t rchar, wchar, read_bytes, write_bytes; /* -1 where absent */
} cn_procio;

/* Parses the contents of /proc/<pid>/stat. The command name may contain
 * spaces and parentheses: the fields start after the last ')'. 0 or -1. */
int cn_proc_parse_stat(const char *buf, size_t len, cn_procstat *out);

/* Parses the contents of /proc/<pid>/io. 0 or -1 (no field found). */
int cn_proc_parse_io(const char *buf, size_t len, cn_procio *out);

/* Read and parse <root>/<pid>/stat or /io. 0, or -1 (gone or unreadable). */
int cn_proc_read_stat(const char *root, int pid, cn_procstat *out);
int cn_proc_read_io(const char *root, int pid, cn_procio *out);

/* Every process under root: a malloc'd array in *out, *n entries. 0 or -1. */
int cn_proc_scan(const char *root, cn_procstat **out, size_t *n);

/* The pid and parent pid of every process under root, into caller-provided
 * arrays of cap entries, with system calls only (no allocation). Returns the
 * number found, or -1 (errno ERANGE: more than cap processes; others: root
 * unreadable). */
long cn_proc_scan_raw(const char *root, int *pids, int *ppids, size_t cap);

/* size_t words of scratch that cn_proc_walk() needs for n processes. */
size_t cn_proc_walk_scratch(size_t n);

/* The processes of a table given as parallel pid/ppid arrays that are roots
 * or descend from one through ppid links: their indices, written to out
 * (room for n), in breadth-first order, roots first. Roots absent from the
 * table are skipped; a ppid cycle (a moving /proc) terminates. O(n), no
 * allocation: scratch holds cn_proc_walk_scratch(n) words. */
size_t cn_proc_walk(const int *pids, const int *ppids, size_t n, const int *roots, size_t nroots,
                    size_t *scratch, size_t *out);

/* The pids of tab that are roots or descend from one through ppid links,
 * written to out (room for n entries), in breadth-first order. Returns their
 * number. Roots absent from tab are skipped. */
size_t cn_proc_descendants(const cn_procstat *tab, size_t n, const int *roots, size_t nroots,
                           int *out);
/* The same as indices into tab (room for n entries). */
size_t cn_proc_descendants_idx(const cn_procstat *tab, size_t n, const int *roots, size_t nroots,
                               size_t *out);

/* The atom name of a process state letter (running, sleeping, ...). */
const char *cn_proc_state_name(char state);

#endif
