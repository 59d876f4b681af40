/* How a job's processes are held together: a cgroup v2 per job where
 * available, else only the job leaders (see leader.h). */
#ifndef SANDBOX_CNODE_CONTAIN_H
#define SANDBOX_CNODE_CONTAIN_H

#include <stdint.h>

enum { CN_CONTAIN_SUBREAPER = 0, CN_CONTAIN_CGROUP = 1 };
/* Chooses the mechanism: a cgroup per job when allow_cgroup and the C-node
 * can create and use cgroups, otherwise only the job leaders. */
void cn_contain_init(int allow_cgroup);
int cn_contain_mode(void);
const char *cn_contain_name(void);   /* "cgroup" or "subreaper" */
const char *cn_contain_reason(void); /* why: "cgroup2", "forced", "mkdir:eacces", ... */
const char *cn_contain_base(void);   /* the run's cgroup directory, or NULL */
int cn_contain_base_fd(void);
void cn_contain_stop(void);

typedef struct {
    int dir_fd, kill_fd; /* -1: no cgroup */
    char name[32];       /* job-<id> below the run's directory */
} cn_cgjob;
void cn_cgjob_init(cn_cgjob *j);
/* A cgroup for job id (nothing in subreaper mode): 0 or an errno value. */
int cn_cgjob_create(cn_cgjob *j, int64_t id);
int cn_cgjob_active(const cn_cgjob *j);
void cn_cgjob_kill(const cn_cgjob *j);
int cn_cgjob_populated(const cn_cgjob *j); /* 1, 0, -1 unknown */
/* The member pids (malloc'd in *out): their number, or -1. */
long cn_cgjob_procs(const cn_cgjob *j, int **out);
/* Closes the job's descriptors and removes its directory: 0 or an errno. */
int cn_cgjob_remove(cn_cgjob *j);

#endif
