/* Parsers of the kernel's cgroup text files, for the C-node's per-job
 * cgroups: where the cgroup2 hierarchy is mounted (/proc/self/mountinfo),
 * which cgroup a process is in (/proc/<pid>/cgroup), whether a cgroup is
 * populated (cgroup.events), its members (cgroup.procs), and the names of
 * the C-node's own cgroup directories. Pure C: no allocation. */
#ifndef SANDBOX_CN_CGROUP_H
#define SANDBOX_CN_CGROUP_H

#include <stddef.h>
#include <stdint.h>

/* The mount point and the mount's root (field 4 of mountinfo: which part of
 * the hierarchy the mount shows) of the first cgroup2 file system in the
 * text of /proc/self/mountinfo, octal escapes decoded. 0, or -1 when there
 * is none or a buffer is too small. */
int cn_cgroup2_mount(const char *text, size_t len, char *mnt, size_t mcap, char *root, size_t rcap);

/* The cgroup v2 path ("0::<path>") in the text of /proc/<pid>/cgroup. 0 or
 * -1. */
int cn_cgroup2_own(const char *text, size_t len, char *out, size_t cap);

/* The directory of a cgroup path as seen through a mount: mnt + (path minus
 * the mount's root). -1 when path is not below root or out is too small. */
int cn_cgroup2_dir(const char *mnt, const char *root, const char *path, char *out, size_t cap);

/* "sandbox_cnode.<pidns>.<pid>.<starttime>": the directory of one C-node
 * run. The pid namespace (the inode of /proc/self/ns/pid) tells whether a
 * pid can be checked at all from here; the start time (clock ticks after
 * boot) tells a reused pid apart. */
typedef struct {
    uint64_t pidns;
    int pid;
    uint64_t starttime;
} cn_cgroup_run;

int cn_cgroup_run_name(char *out, size_t cap, const cn_cgroup_run *run);
/* 0 and the parts if name is such a directory name, else -1. */
int cn_cgroup_parse_run_name(const char *name, cn_cgroup_run *run);

/* The "populated" value of cgroup.events: 1, 0, or -1 when absent. */
int cn_cgroup_populated(const char *text, size_t len);

/* The pids of cgroup.procs (one per line) into out: their number, or -1 on
 * malformed text or more than cap. */
long cn_cgroup_parse_procs(const char *text, size_t len, int *out, size_t cap);

#endif
