/* Criterion tests of the debouncing and coalescing of file changes. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cn_coalesce.h"

static void free_paths(char **p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        free(p[i]);
    }
    free(p);
}

Test(cn_coalesce, a_burst_is_one_sorted_set) {
    cn_coalesce c;
    cn_coalesce_init(&c, 50);
    cr_assert_eq(cn_coalesce_deadline(&c), -1);
    cn_coalesce_changed(&c, "/w/b.ex", 0, 1000);
    cn_coalesce_changed(&c, "/w/a.ex", 1, 1010);
    cn_coalesce_changed(&c, "/w/b.ex", 0, 1020);
    /* trailing window: due 50 ms after the last event */
    cr_assert_eq(cn_coalesce_deadline(&c), 1070);
    size_t n;
    char **p = cn_coalesce_take(&c, &n);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(p[0], "/w/a.ex");
    cr_assert_str_eq(p[1], "/w/b.ex");
    free_paths(p, n);
    cr_assert_eq(cn_coalesce_deadline(&c), -1);
    cr_assert_null(cn_coalesce_take(&c, &n));
    cn_coalesce_free(&c);
}

Test(cn_coalesce, a_steady_stream_is_still_reported) {
    cn_coalesce c;
    cn_coalesce_init(&c, 50);
    for (int64_t t = 0; t < 10000; t += 10) {
        cn_coalesce_changed(&c, "/w/x.ex", 0, t);
    }
    cr_assert_eq(cn_coalesce_deadline(&c), 50 * CN_COALESCE_MAX_WINDOWS);
    cn_coalesce_free(&c);
}

Test(cn_coalesce, temporary_file_renamed_over_the_target_is_one_change) {
    cn_coalesce c;
    cn_coalesce_init(&c, 50);
    cn_coalesce_changed(&c, "/w/.#a.ex.123", 1, 0); /* IN_CREATE */
    cn_coalesce_changed(&c, "/w/.#a.ex.123", 0, 1); /* IN_CLOSE_WRITE */
    cn_coalesce_gone(&c, "/w/.#a.ex.123", 2);       /* IN_MOVED_FROM */
    cn_coalesce_changed(&c, "/w/a.ex", 0, 2);       /* IN_MOVED_TO */
    size_t n;
    char **p = cn_coalesce_take(&c, &n);
    cr_assert_eq(n, 1);
    cr_assert_str_eq(p[0], "/w/a.ex");
    free_paths(p, n);
    cn_coalesce_free(&c);
}

Test(cn_coalesce, deletions_and_renames_away_are_changes) {
    cn_coalesce c;
    cn_coalesce_init(&c, 50);
    cn_coalesce_gone(&c, "/w/old.ex", 0);
    cn_coalesce_changed(&c, "/w/kept.ex", 0, 0);
    cn_coalesce_gone(&c, "/w/kept.ex", 1); /* existed before: still a change */
    size_t n;
    char **p = cn_coalesce_take(&c, &n);
    cr_assert_eq(n, 2);
    cr_assert_str_eq(p[0], "/w/kept.ex");
    cr_assert_str_eq(p[1], "/w/old.ex");
    free_paths(p, n);
    /* created and deleted within one window: nothing, and nothing due */
    cn_coalesce_changed(&c, "/w/t.ex", 1, 10);
    cn_coalesce_gone(&c, "/w/t.ex", 11);
    cr_assert_eq(cn_coalesce_deadline(&c), -1);
    cr_assert_null(cn_coalesce_take(&c, &n));
    cn_coalesce_free(&c);
}

Test(cn_coalesce, a_huge_debounce_never_wraps_the_deadline) {
    /* A debounce near INT64_MAX used to overflow now + debounce and first +
     * 10 * debounce into negative numbers: the pending set read as "nothing
     * due" and was never reported (and UBSan trapped). */
    int64_t huge[] = {INT64_MAX, INT64_MAX / 2, INT64_MAX / 10 + 1, (int64_t)1 << 61};
    for (size_t k = 0; k < sizeof huge / sizeof *huge; k++) {
        cn_coalesce c;
        cn_coalesce_init(&c, huge[k]);
        cn_coalesce_changed(&c, "/w/a.ex", 0, 123456789);
        int64_t d = cn_coalesce_deadline(&c);
        cr_assert_geq(d, 123456789, "debounce %lld: deadline %lld", (long long)huge[k],
                      (long long)d);
        cn_coalesce_free(&c);
    }
}

Test(cn_coalesce, a_rescan_of_many_files_costs_linear_comparisons) {
    /* An inotify overflow reports every file of the tree again: with a
     * linear search per path that was O(files^2) string comparisons (20,000
     * files: 2e8), stalling the C-node. */
    enum { N = 20000 };
    cn_coalesce c;
    cn_coalesce_init(&c, 50);
    char path[64];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            snprintf(path, sizeof path, "/w/lib/deep/prefix/module_%06d.ex", i);
            cr_assert_eq(cn_coalesce_changed(&c, path, 0, 10), 0);
        }
    }
    cr_assert_lt(c.cmps, (uint64_t)8 * N, "%llu comparisons", (unsigned long long)c.cmps);
    size_t n;
    char **p = cn_coalesce_take(&c, &n);
    cr_assert_eq(n, N);
    free_paths(p, n);
    cn_coalesce_free(&c);
}

Test(cn_coalesce, index_agrees_with_a_plain_model) {
    /* random changes and removals against a brute-force model */
    enum { K = 300 };
    unsigned char present[K] = {0}, created[K] = {0};
    cn_coalesce c;
    cn_coalesce_init(&c, 50);
    unsigned seed = 12345;
    char path[32];
    for (int step = 0; step < 20000; step++) {
        seed = seed * 1103515245u + 12345u;
        int k = (int)((seed >> 8) % K);
        int op = (int)((seed >> 20) % 3);
        snprintf(path, sizeof path, "/p/%d", k);
        if (op < 2) {
            cn_coalesce_changed(&c, path, op, step);
            if (!present[k]) {
                present[k] = 1;
                created[k] = (unsigned char)op;
            }
        } else {
            cn_coalesce_gone(&c, path, step);
            if (present[k] && created[k]) {
                present[k] = 0;
            } else if (!present[k]) {
                present[k] = 1;
                created[k] = 0;
            }
        }
    }
    size_t n, want = 0;
    for (int k = 0; k < K; k++) {
        want += present[k];
    }
    char **p = cn_coalesce_take(&c, &n);
    cr_assert_eq(n, want);
    for (size_t i = 0; i < n; i++) {
        int k = atoi(p[i] + 3);
        cr_assert(present[k], "%s reported but not pending", p[i]);
        present[k] = 0;
    }
    free_paths(p, n);
    cn_coalesce_free(&c);
}
