/* Criterion tests of the debouncing and coalescing of file changes. */
#include <criterion/criterion.h>
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
