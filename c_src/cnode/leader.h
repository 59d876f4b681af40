/* A job's leader: the process between the C-node and a job's command (see
 * leader.c), and the records it and the command send the C-node. */
#ifndef SANDBOX_CNODE_LEADER_H
#define SANDBOX_CNODE_LEADER_H

#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

#include "cn_limits.h"

/* Records on the exec pipe (command -> C-node) and the report pipe
 * (leader -> C-node). */
enum {
    CN_EXREC_PID = 1,
    CN_EXREC_ERRNO = 2,
    CN_EXREC_CGROUP_ERRNO = 3,
    CN_EXREC_LANDLOCK_ERRNO = 4
};
typedef struct {
    int32_t kind, value;
} cn_exrec;
typedef struct {
    int32_t status, pad;
    int64_t utime_us, stime_us;
} cn_exitrec;

typedef struct {
    int in_r, out_w, err_w; /* the command's stdin, stdout, stderr */
    int ex_w;               /* the exec pipe's write end */
    int rep_w;              /* the report pipe's write end */
    int cg_dir, cg_kill;    /* the job cgroup's directory and cgroup.kill, or -1 */
    int cg_base;            /* the run's cgroup directory, or -1 */
    int ll_fd;              /* a Landlock ruleset the command enforces before exec, or -1 */
    uint64_t ll_proc_self;  /* rights on its own /proc/<pid> it adds first (0: none) */
    const char *cg_name;    /* the job's directory in it */
    pid_t cnode;
    char **argv, **env;
    const char *cd;
    cn_limits_plan rl;    /* the rlimits of the command */
    struct rlimit nofile; /* the descriptor limit the C-node was started with */
} cn_leader_args;

/* In the child of fork(): never returns. */
__attribute__((noreturn)) void cn_leader_run(const cn_leader_args *a);

#endif
