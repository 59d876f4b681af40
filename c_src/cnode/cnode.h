/* Shared declarations of the supervising C-node's modules (main loop and
 * transport, children, distribution, watches, audit log). */
#ifndef SANDBOX_CNODE_H
#define SANDBOX_CNODE_H

#include <ei.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

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

/* ---- child.c ---- */
void cn_child_spawn(const cn_request *r);
void cn_child_write_stdin(const cn_request *r);
void cn_child_close_stdin(const cn_request *r);
void cn_child_set_limits(const cn_request *r);
void cn_child_kill(const cn_request *r);
void cn_child_sample(const cn_request *r);
/* poll integration */
int cn_child_pollfds(struct pollfd *fds, int max);
void cn_child_handle_poll(struct pollfd *fds, int n);
int64_t cn_child_next_deadline(void);
void cn_child_timers(void);
void cn_child_reap(void);
void cn_child_kill_all(void);
int cn_child_count(void);

/* ---- dist.c ---- */
void cn_dist_start(const cn_request *r);
int cn_dist_pollfds(struct pollfd *fds, int max);
void cn_dist_handle_poll(struct pollfd *fds, int n);
/* The connection to a node, or -1. */
int cn_dist_conn_for(const uint8_t *node, size_t len);
int cn_dist_is_host(const uint8_t *node, size_t len);
int cn_dist_send(int fd, const uint8_t *pid_raw, size_t pid_len, const ei_x_buff *msg);
void cn_dist_stop(void);

/* ---- watch.c ---- */
void cn_watch_add(const cn_request *r);
void cn_watch_remove(const cn_request *r);
int cn_watch_pollfds(struct pollfd *fds, int max);
void cn_watch_handle_poll(struct pollfd *fds, int n);
int64_t cn_watch_next_deadline(void);
void cn_watch_timers(void);
void cn_watch_stop(void);

/* ---- audit.c ---- */
int cn_audit_setup(const char *path, int64_t max_bytes, int keep);
void cn_audit_request(const cn_request *r);
/* Called once per loop iteration after the frames read were handled: one
 * fsync covers every line appended since the last, then the replies go. */
void cn_audit_round(void);
void cn_audit_stop(void);

/* ---- dispatch (main.c) ---- */
void cn_dispatch(const uint8_t *frame, size_t len, int from_dist_fd);

#endif
