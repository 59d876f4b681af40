/* Criterion tests of the /proc parsers and the process-tree walk, on the
 * fixture tree in c_src/test/fixtures/proc. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include "cn_proc.h"

#define FIXTURES "c_src/test/fixtures/proc"

Test(cn_proc, parse_stat_with_a_hostile_name) {
    const char *line = "202 ((evil) name) x) S 201 200 100 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 "
                       "4 0 1000 1000000 100 18446744073709551615 1 1 0\n";
    cn_procstat st;
    cr_assert_eq(cn_proc_parse_stat(line, strlen(line), &st), 0);
    cr_assert_eq(st.pid, 202);
    cr_assert_eq(st.state, 'S');
    cr_assert_eq(st.ppid, 201);
    cr_assert_eq(st.pgrp, 200);
    cr_assert_eq(st.session, 100);
    cr_assert_eq(st.utime, 7);
    cr_assert_eq(st.stime, 3);
    cr_assert_eq(st.num_threads, 4);
    cr_assert_eq(st.starttime, 1000);
    cr_assert_eq(st.vsize, 1000000);
    cr_assert_eq(st.rss_pages, 100);
}

Test(cn_proc, parse_stat_rejects_garbage) {
    cn_procstat st;
    const char *bad[] = {"", "202 (x", "x (y) S 1", "202 (x) S 1 2 3", "(x) S 1 2 3 4 5 6 7 8 9 0"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_neq(cn_proc_parse_stat(bad[i], strlen(bad[i]), &st), 0, "%s", bad[i]);
    }
}

Test(cn_proc, parse_io) {
    const char *io = "rchar: 10\nwchar: 20\nsyscr: 1\nread_bytes: 4096\nwrite_bytes: 0\n";
    cn_procio st;
    cr_assert_eq(cn_proc_parse_io(io, strlen(io), &st), 0);
    cr_assert_eq(st.rchar, 10);
    cr_assert_eq(st.wchar, 20);
    cr_assert_eq(st.read_bytes, 4096);
    cr_assert_eq(st.write_bytes, 0);
    cr_assert_neq(cn_proc_parse_io("nothing\n", 8, &st), 0);
    cr_assert_eq(st.read_bytes, -1);
}

Test(cn_proc, read_fixture_files) {
    cn_procstat st;
    cr_assert_eq(cn_proc_read_stat(FIXTURES, 201, &st), 0);
    cr_assert_eq(st.state, 'R');
    cr_assert_eq(st.num_threads, 12);
    cr_assert_eq(st.vsize, 2200000000ull);
    cr_assert_eq(st.rss_pages, 25000);
    cn_procio io;
    cr_assert_eq(cn_proc_read_io(FIXTURES, 201, &io), 0);
    cr_assert_eq(io.write_bytes, 8192);
    cr_assert_neq(cn_proc_read_io(FIXTURES, 200, &io), 0);   /* no io file */
    cr_assert_neq(cn_proc_read_stat(FIXTURES, 500, &st), 0); /* truncated */
    cr_assert_neq(cn_proc_read_stat(FIXTURES, 999, &st), 0); /* gone */
}

static int has(const int *v, size_t n, int x) {
    for (size_t i = 0; i < n; i++) {
        if (v[i] == x) {
            return 1;
        }
    }
    return 0;
}

Test(cn_proc, scan_and_descendants) {
    cn_procstat *tab;
    size_t n;
    cr_assert_eq(cn_proc_scan(FIXTURES, &tab, &n), 0);
    cr_assert_eq(n, 7); /* 500 is malformed, cpuinfo is not a pid */
    int out[16];
    int root = 200;
    size_t k = cn_proc_descendants(tab, n, &root, 1, out);
    cr_assert_eq(k, 3);
    cr_assert_eq(out[0], 200); /* breadth first, the root first */
    cr_assert(has(out, k, 201) && has(out, k, 202));
    /* an orphan reparented to the C-node joins the tree through a remembered pid */
    int roots[] = {200, 300, 12345};
    k = cn_proc_descendants(tab, n, roots, 3, out);
    cr_assert_eq(k, 4);
    cr_assert(has(out, k, 300));
    cr_assert(!has(out, k, 400) && !has(out, k, 100));
    /* everything below the C-node */
    root = 100;
    k = cn_proc_descendants(tab, n, &root, 1, out);
    cr_assert_eq(k, 5);
    root = 1;
    cr_assert_eq(cn_proc_descendants(tab, n, &root, 1, out), 7);
    free(tab);
}

Test(cn_proc, descendants_survive_a_ppid_cycle) {
    /* /proc is a moving target: a table with a cycle must still terminate */
    cn_procstat tab[3] = {{.pid = 1, .ppid = 3}, {.pid = 2, .ppid = 1}, {.pid = 3, .ppid = 2}};
    int out[3], root = 2;
    cr_assert_eq(cn_proc_descendants(tab, 3, &root, 1, out), 3);
}

Test(cn_proc, state_names) {
    cr_assert_str_eq(cn_proc_state_name('Z'), "zombie");
    cr_assert_str_eq(cn_proc_state_name('?'), "unknown");
}

Test(cn_proc, walk_gives_indices_breadth_first) {
    /* 1 <- 10 <- 11 <- 12, 10 <- 13, 2 unrelated, 14's parent unknown */
    int pids[] = {12, 1, 11, 10, 2, 13, 14};
    int ppids[] = {11, 0, 10, 1, 0, 10, 999};
    size_t scratch[64], out[7];
    cr_assert_geq(64, cn_proc_walk_scratch(7));
    int root = 10;
    size_t k = cn_proc_walk(pids, ppids, 7, &root, 1, scratch, out);
    cr_assert_eq(k, 4);
    cr_assert_eq(pids[out[0]], 10);
    /* the children of 10 before the grandchild */
    cr_assert_eq(pids[out[3]], 12);
    int roots[] = {10, 14, 77};
    cr_assert_eq(cn_proc_walk(pids, ppids, 7, roots, 3, scratch, out), 5);
}

Test(cn_proc, walk_handles_a_deep_chain_and_a_wide_fan) {
    /* a fork bomb's shapes: a chain of 50,000 and a fan of 50,000 */
    enum { N = 50000 };
    int *pids = malloc(2 * N * sizeof *pids), *ppids = malloc(2 * N * sizeof *ppids);
    size_t *scratch = malloc(cn_proc_walk_scratch(2 * N) * sizeof *scratch);
    size_t *out = malloc(2 * N * sizeof *out);
    for (int i = 0; i < N; i++) {
        pids[i] = 100 + i; /* chain: 100 <- 101 <- ... */
        ppids[i] = i == 0 ? 1 : 99 + i;
        pids[N + i] = 200000 + i; /* fan under 100 */
        ppids[N + i] = 100;
    }
    int root = 100;
    cr_assert_eq(cn_proc_walk(pids, ppids, 2 * N, &root, 1, scratch, out), 2 * N);
    root = 100 + N / 2;
    cr_assert_eq(cn_proc_walk(pids, ppids, 2 * N, &root, 1, scratch, out), N / 2);
    free(pids);
    free(ppids);
    free(scratch);
    free(out);
}

Test(cn_proc, raw_scan_without_allocation) {
    int pids[16], ppids[16];
    cr_assert_eq(cn_proc_scan_raw(FIXTURES, pids, ppids, 16), 7);
    int found = 0;
    for (int i = 0; i < 7; i++) {
        if (pids[i] == 202) {
            cr_assert_eq(ppids[i], 201);
            found = 1;
        }
    }
    cr_assert(found);
    errno = 0;
    cr_assert_eq(cn_proc_scan_raw(FIXTURES, pids, ppids, 3), -1);
    cr_assert_eq(errno, ERANGE);
    cr_assert_eq(cn_proc_scan_raw("/nonexistent", pids, ppids, 16), -1);
}

Test(cn_proc, raw_scan_of_the_real_proc_finds_us) {
    size_t cap = 1 << 16;
    int *pids = malloc(cap * sizeof *pids), *ppids = malloc(cap * sizeof *ppids);
    long n = cn_proc_scan_raw("/proc", pids, ppids, cap);
    cr_assert_gt(n, 0);
    int found = 0;
    for (long i = 0; i < n; i++) {
        if (pids[i] == getpid()) {
            cr_assert_eq(ppids[i], getppid());
            found = 1;
        }
    }
    cr_assert(found);
    free(pids);
    free(ppids);
}
