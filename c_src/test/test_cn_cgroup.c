/* Criterion tests of the cgroup text parsers. */
#include <criterion/criterion.h>
#include <string.h>

#include "cn_cgroup.h"

#define S(s) s, strlen(s)

Test(cn_cgroup, finds_the_cgroup2_mount_in_a_hybrid_layout) {
    const char *mi =
        "30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "38 30 0:35 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n"
        "40 30 0:37 / /sys/fs/cgroup/unified rw,relatime shared:9 master:2 - cgroup2 cgroup2 rw\n";
    char mnt[128], root[128];
    cr_assert_eq(cn_cgroup2_mount(S(mi), mnt, sizeof mnt, root, sizeof root), 0);
    cr_assert_str_eq(mnt, "/sys/fs/cgroup/unified");
    cr_assert_str_eq(root, "/");
    /* no cgroup2 at all; a mount point with an escaped space; too small */
    cr_assert_eq(cn_cgroup2_mount(S("30 22 0:27 / /x rw - tmpfs tmpfs rw\n"), mnt, sizeof mnt, root,
                                  sizeof root),
                 -1);
    cr_assert_eq(cn_cgroup2_mount(S("1 2 0:3 /a\\040b /c\\040d rw - cgroup2 none rw"), mnt,
                                  sizeof mnt, root, sizeof root),
                 0);
    cr_assert_str_eq(mnt, "/c d");
    cr_assert_str_eq(root, "/a b");
    cr_assert_eq(cn_cgroup2_mount(S(mi), mnt, 4, root, sizeof root), -1);
    /* a type that only starts like cgroup2 */
    cr_assert_eq(cn_cgroup2_mount(S("1 2 0:3 / /m rw - cgroup2x none rw\n"), mnt, sizeof mnt, root,
                                  sizeof root),
                 -1);
}

Test(cn_cgroup, own_cgroup_and_its_directory) {
    char p[256], d[256];
    cr_assert_eq(cn_cgroup2_own(S("4:memory:/x\n0::/user.slice/a.scope\n"), p, sizeof p), 0);
    cr_assert_str_eq(p, "/user.slice/a.scope");
    cr_assert_eq(cn_cgroup2_own(S("4:memory:/x\n"), p, sizeof p), -1);
    cr_assert_eq(cn_cgroup2_dir("/sys/fs/cgroup", "/", "/user.slice/a.scope", d, sizeof d), 0);
    cr_assert_str_eq(d, "/sys/fs/cgroup/user.slice/a.scope");
    cr_assert_eq(cn_cgroup2_dir("/sys/fs/cgroup/unified", "/", "/", d, sizeof d), 0);
    cr_assert_str_eq(d, "/sys/fs/cgroup/unified");
    /* a mount showing only part of the hierarchy */
    cr_assert_eq(cn_cgroup2_dir("/cg", "/docker/x", "/docker/x/sub", d, sizeof d), 0);
    cr_assert_str_eq(d, "/cg/sub");
    cr_assert_eq(cn_cgroup2_dir("/cg", "/docker/x", "/docker/xy", d, sizeof d), -1);
    cr_assert_eq(cn_cgroup2_dir("/cg", "/docker/x", "/other", d, sizeof d), -1);
}

Test(cn_cgroup, run_names_round_trip) {
    char n[80];
    cn_cgroup_run run = {4026531836ull, 4242, 123456789ull}, back;
    cr_assert_eq(cn_cgroup_run_name(n, sizeof n, &run), 0);
    cr_assert_str_eq(n, "sandbox_cnode.4026531836.4242.123456789");
    cr_assert_eq(cn_cgroup_parse_run_name(n, &back), 0);
    cr_assert_eq(back.pidns, run.pidns);
    cr_assert_eq(back.pid, 4242);
    cr_assert_eq(back.starttime, 123456789ull);
    const char *bad[] = {"sandbox_cnode.",
                         "sandbox_cnode.1.2",
                         "sandbox_cnode.1.2.",
                         "sandbox_cnode.1.0.5",
                         "sandbox_cnode.1.99999999999.5",
                         "sandbox_cnode.1.2.3x",
                         "other.1.2.3",
                         "sandbox_cnode.1.2.99999999999999999999",
                         "sandbox_cnode..2.3"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        cr_assert_eq(cn_cgroup_parse_run_name(bad[i], &back), -1, "%s", bad[i]);
    }
    cr_assert_eq(cn_cgroup_run_name(n, 10, &run), -1);
}

Test(cn_cgroup, events_and_procs) {
    cr_assert_eq(cn_cgroup_populated(S("populated 1\nfrozen 0\n")), 1);
    cr_assert_eq(cn_cgroup_populated(S("frozen 0\npopulated 0")), 0);
    cr_assert_eq(cn_cgroup_populated(S("frozen 0\n")), -1);
    int pids[4];
    cr_assert_eq(cn_cgroup_parse_procs(S("12\n345\n\n6\n"), pids, 4), 3);
    cr_assert_eq(pids[1], 345);
    cr_assert_eq(cn_cgroup_parse_procs(S(""), pids, 4), 0);
    cr_assert_eq(cn_cgroup_parse_procs(S("1\n2\n3\n4\n5\n"), pids, 4), -1);
    cr_assert_eq(cn_cgroup_parse_procs(S("12x\n"), pids, 4), -1);
    cr_assert_eq(cn_cgroup_parse_procs(S("99999999999\n"), pids, 4), -1);
}
