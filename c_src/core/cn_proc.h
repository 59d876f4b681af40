/* /proc parsing and process-tree walking for the C-node's sampling.
 * Pure C (plain file I/O only): the proc root is a parameter, so tests run the
 * same code on fixture directories. */
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

/* The pids of tab that are roots or descend from one through ppid links,
 * written to out (room for n entries), in breadth-first order. Returns their
 * number. Roots absent from tab are skipped. */
size_t cn_proc_descendants(const cn_procstat *tab, size_t n, const int *roots, size_t nroots,
                           int *out);

/* The atom name of a process state letter (running, sleeping, ...). */
const char *cn_proc_state_name(char state);

#endif
