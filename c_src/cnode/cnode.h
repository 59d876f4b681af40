/* Shared declarations of the supervising C-node's modules (main loop and
 * transport, children, distribution, watches, audit log). */
#ifndef SANDBOX_CNODE_H
#define SANDBOX_CNODE_H

#include <ei.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <sys/resource.h>

#include "cn_limits.h"
#include "cn_request.h"
#include "cn_term.h"

/* ---- main.c: time, transport, replies ---- */

int64_t cn_now_ms(void);

/* A copy of a pid's encoding, to send events to later. */
typedef struct {
    uint8_t *raw;
    size_t len;
} cn_dest;

int cn_dest_copy(cn_dest *d, const cn_term *pid);
void cn_dest_free(cn_dest *d);

/* Sends msg (an ei_x_buff without a version byte) to the pid whose encoding
 * is raw: through the port when the pid is the host node's, otherwise over the
 * distribution connection to its node; dropped when there is none. */
void cn_send_raw(const uint8_t *raw, size_t len, const ei_x_buff *msg);

/* Starts {Ref, _}: the caller encodes the result into x, then cn_reply_end. */
void cn_reply_begin(const cn_request *r, ei_x_buff *x);
void cn_reply_end(const cn_request *r, ei_x_buff *x);
void cn_reply_ok(const cn_request *r);
void cn_reply_error(const cn_request *r, const cn_error *e);
void cn_reply_error_atom(const cn_request *r, const char *reason);
void cn_encode_error(ei_x_buff *x, const cn_error *e);
/* {error, {Reason, ErrnoAtom}} */
void cn_reply_errno(const cn_request *r, const char *reason, int err);
const char *cn_errno_atom(int err, char buf[32]);

/* Event {sandbox_cnode, Id, Payload}: begins the encoding up to Payload. */
void cn_event_begin(ei_x_buff *x, int64_t id);

/* Whether the stdin/port side is gone or SIGTERM came: the loop ends. */
extern int cn_stopping;
extern size_t cn_max_frame;
/* Replies {error, {frame_too_large, Size, Max}} to the request whose first
 * bytes are prefix (when they name a sender and a reference). */
void cn_refuse_too_big(const uint8_t *prefix, size_t len, uint64_t declared);
extern pid_t cn_self;

/* ---- contain.c: per-job cgroups where available ---- */
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
    int dir_fd, procs_fd, kill_fd; /* -1: no cgroup */
    char name[32];                 /* job-<id> below the run's directory */
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

/* ---- leader.c: the process between the C-node and a job's command ---- */
/* Records on the exec pipe (command -> C-node) and the report pipe
 * (leader -> C-node). */
enum { CN_EXREC_PID = 1, CN_EXREC_ERRNO = 2, CN_EXREC_CGROUP_ERRNO = 3 };
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
    int cg_procs, cg_kill;  /* the job cgroup's files, or -1 */
    int cg_base;            /* the run's cgroup directory, or -1 */
    const char *cg_name;    /* the job's directory in it */
    pid_t cnode;
    char **argv, **env;
    const char *cd;
    cn_limits_plan rl;    /* the rlimits of the command */
    struct rlimit nofile; /* the descriptor limit the C-node was started with */
} cn_leader_args;
__attribute__((noreturn)) void cn_leader_run(const cn_leader_args *a);

/* ---- child.c ---- */
void cn_child_spawn(const cn_request *r);
void cn_child_write_stdin(const cn_request *r);
void cn_child_close_stdin(const cn_request *r);
void cn_child_set_limits(const cn_request *r);
void cn_child_kill(const cn_request *r);
void cn_child_sample(const cn_request *r);
/* poll integration */
int cn_child_pollfds_needed(void);
int cn_child_pollfds(struct pollfd *fds, int max);
void cn_child_handle_poll(struct pollfd *fds, int n);
int64_t cn_child_next_deadline(void);
void cn_child_timers(void);
void cn_child_reap(void);
void cn_child_kill_all(void);
int cn_child_count(void);
/* Frees the jobs that finished in this round (after the poll handlers). */
void cn_child_gc(void);
/* The descriptor limit the C-node was started with (its children get it). */
extern struct rlimit cn_nofile_orig;

/* ---- dist.c ---- */
void cn_dist_start(const cn_request *r);
int cn_dist_pollfds_needed(void);
int cn_dist_pollfds(struct pollfd *fds, int max);
/* #{node, bind, port, connections, handshakes_dropped} */
void cn_dist_info(ei_x_buff *x);
void cn_dist_handle_poll(struct pollfd *fds, int n);
/* The connection to a node, or -1. */
int cn_dist_conn_for(const uint8_t *node, size_t len);
int cn_dist_is_host(const uint8_t *node, size_t len);
int cn_dist_send(int fd, const uint8_t *pid_raw, size_t pid_len, const ei_x_buff *msg);
void cn_dist_stop(void);

/* ---- watch.c ---- */
void cn_watch_add(const cn_request *r);
void cn_watch_remove(const cn_request *r);
int cn_watch_count(void);
int cn_watch_pollfds(struct pollfd *fds, int max);
void cn_watch_handle_poll(struct pollfd *fds, int n);
int64_t cn_watch_next_deadline(void);
void cn_watch_timers(void);
void cn_watch_stop(void);

/* ---- audit.c ---- */
/* private_dir: the log's directory must be ours alone (created 0700 when
 * absent). A log that cannot be opened now is retried on each event. */
int cn_audit_setup(const char *path, int64_t max_bytes, int keep, int private_dir);
/* #{path, status} */
void cn_audit_info(ei_x_buff *x);
void cn_audit_request(const cn_request *r);
/* Called once per loop iteration after the frames read were handled: one
 * fsync covers every line appended since the last, then the replies go. */
void cn_audit_round(void);
void cn_audit_stop(void);

/* ---- dispatch (main.c) ---- */
void cn_dispatch(const uint8_t *frame, size_t len, int from_dist_fd);

#endif
