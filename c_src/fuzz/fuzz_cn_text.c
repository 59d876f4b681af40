/* libFuzzer target: the C-node's parsers of kernel text files, fed
 * arbitrary bytes: /proc/<pid>/stat and /io, /proc/self/mountinfo,
 * /proc/<pid>/cgroup, cgroup.events, cgroup.procs, the names of the
 * C-node's cgroup directories, and its Landlock setting. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cn_cgroup.h"
#include "cn_landlock.h"
#include "cn_proc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *text = (const char *)data;
    cn_procstat st;
    (void)cn_proc_parse_stat(text, size, &st);
    cn_procio io;
    (void)cn_proc_parse_io(text, size, &io);

    char mnt[256], root[256], own[256], dir[512];
    if (cn_cgroup2_mount(text, size, mnt, sizeof mnt, root, sizeof root) == 0 &&
        cn_cgroup2_own(text, size, own, sizeof own) == 0) {
        (void)cn_cgroup2_dir(mnt, root, own, dir, sizeof dir);
    }
    /* the smallest buffers too */
    (void)cn_cgroup2_mount(text, size, mnt, 1, root, 1);
    (void)cn_cgroup2_own(text, size, own, 1);
    (void)cn_cgroup_populated(text, size);
    int pids[64];
    (void)cn_cgroup_parse_procs(text, size, pids, 64);

    /* a NUL-terminated copy for the name parser */
    char *name = malloc(size + 1);
    if (name) {
        memcpy(name, data, size);
        name[size] = 0;
        int max_abi;
        (void)cn_ll_setting_parse(name, &max_abi);
        cn_cgroup_run run;
        if (cn_cgroup_parse_run_name(name, &run) == 0) {
            char back[96];
            (void)cn_cgroup_run_name(back, sizeof back, &run);
        }
        free(name);
    }
    return 0;
}
