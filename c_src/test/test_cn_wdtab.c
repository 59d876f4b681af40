/* Criterion tests of a watch's directory table. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "cn_wdtab.h"

Test(cn_wdtab, put_get_delete) {
    cn_wdtab t;
    cn_wdtab_init(&t);
    cr_assert_null(cn_wdtab_get(&t, 1));
    int added;
    for (int wd = 1; wd <= 1000; wd++) {
        char p[32];
        snprintf(p, sizeof p, "/r/d%d", wd);
        cr_assert_eq(cn_wdtab_put(&t, wd, p, 1, &added), 0);
        cr_assert(added);
    }
    cr_assert_eq(cn_wdtab_count(&t), 1000);
    cr_assert_str_eq(cn_wdtab_get(&t, 777)->path, "/r/d777");
    cr_assert_eq(cn_wdtab_put(&t, 777, "/r/x", 2, &added), 0);
    cr_assert(!added);
    cr_assert_str_eq(cn_wdtab_get(&t, 777)->path, "/r/x");
    cr_assert_eq(cn_wdtab_get(&t, 777)->depth, 2);
    for (int wd = 1; wd <= 1000; wd += 2) {
        cr_assert_eq(cn_wdtab_del(&t, wd), 1);
    }
    cr_assert_eq(cn_wdtab_del(&t, 1), 0);
    cr_assert_eq(cn_wdtab_count(&t), 500);
    cr_assert_null(cn_wdtab_get(&t, 999));
    cr_assert_not_null(cn_wdtab_get(&t, 1000));
    /* deleted slots are reused without losing anyone */
    for (int wd = 1; wd <= 1000; wd += 2) {
        cr_assert_eq(cn_wdtab_put(&t, wd, "/again", 1, NULL), 0);
    }
    for (int wd = 1; wd <= 1000; wd++) {
        cr_assert_not_null(cn_wdtab_get(&t, wd), "%d", wd);
    }
    cn_wdtab_free(&t);
}

Test(cn_wdtab, a_renamed_directory_takes_its_subtree_along) {
    cn_wdtab t;
    cn_wdtab_init(&t);
    cn_wdtab_put(&t, 1, "/w", 0, NULL);
    cn_wdtab_put(&t, 2, "/w/lib", 1, NULL);
    cn_wdtab_put(&t, 3, "/w/lib/a", 2, NULL);
    cn_wdtab_put(&t, 4, "/w/lib/a/b", 3, NULL);
    cn_wdtab_put(&t, 5, "/w/lib/ab", 2, NULL); /* a sibling sharing the prefix */
    /* mv /w/lib/a /w/c */
    cr_assert_eq(cn_wdtab_rename(&t, "/w/lib/a", "/w/c", 1), 2);
    cr_assert_str_eq(cn_wdtab_get(&t, 3)->path, "/w/c");
    cr_assert_eq(cn_wdtab_get(&t, 3)->depth, 1);
    cr_assert_str_eq(cn_wdtab_get(&t, 4)->path, "/w/c/b");
    cr_assert_eq(cn_wdtab_get(&t, 4)->depth, 2);
    cr_assert_str_eq(cn_wdtab_get(&t, 5)->path, "/w/lib/ab");
    /* moved out of the tree */
    int *wds;
    cr_assert_eq(cn_wdtab_remove_under(&t, "/w/c", &wds), 2);
    cr_assert((wds[0] == 3 && wds[1] == 4) || (wds[0] == 4 && wds[1] == 3));
    free(wds);
    cr_assert_eq(cn_wdtab_count(&t), 3);
    cr_assert_eq(cn_wdtab_remove_under(&t, "/nowhere", &wds), 0);
    cr_assert_null(wds);
    cn_wdtab_free(&t);
}

Test(cn_wdtab, path_prefixes) {
    cr_assert(cn_path_under("/a/b", "/a"));
    cr_assert(cn_path_under("/a", "/a"));
    cr_assert(cn_path_under("/a/b", "/a/"));
    cr_assert(!cn_path_under("/ab", "/a"));
    cr_assert(cn_path_under("/x", "/"));
}

Test(cn_wdtab, renaming_by_a_path_the_table_itself_holds) {
    /* the watcher passes an entry's own path as the old prefix: the entry is
     * rewritten (and its old string freed) while the prefix is still in use */
    cn_wdtab t;
    cn_wdtab_init(&t);
    cn_wdtab_put(&t, 1, "/w/old", 1, NULL);
    cn_wdtab_put(&t, 2, "/w/old/a", 2, NULL);
    cn_wdtab_put(&t, 3, "/w/old/a/b", 3, NULL);
    cn_wdtab_put(&t, 4, "/w/new-sibling", 1, NULL);
    cr_assert_eq(cn_wdtab_rename(&t, cn_wdtab_get(&t, 1)->path, "/w/new", 1), 3);
    cr_assert_str_eq(cn_wdtab_get(&t, 1)->path, "/w/new");
    cr_assert_str_eq(cn_wdtab_get(&t, 2)->path, "/w/new/a");
    cr_assert_str_eq(cn_wdtab_get(&t, 3)->path, "/w/new/a/b");
    /* and a new path that is an entry's too */
    cr_assert_eq(cn_wdtab_rename(&t, "/w/new/a", cn_wdtab_get(&t, 4)->path, 1), 2);
    cr_assert_str_eq(cn_wdtab_get(&t, 3)->path, "/w/new-sibling/b");
    cn_wdtab_free(&t);
}
