/* Jobs: spawning and supervising OS processes through their leaders. */
#ifndef SANDBOX_CNODE_CHILD_H
#define SANDBOX_CNODE_CHILD_H

#include <poll.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/types.h>

#include "cn_request.h"

/* self: the C-node's pid; nofile: the descriptor limit it was started with
 * (its jobs get it back). */
void cn_child_init(pid_t self, const struct rlimit *nofile);

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
/* Frees the jobs that finished in this round (after the poll handlers). */
void cn_child_gc(void);
void cn_child_kill_all(void);
int cn_child_count(void);

#endif
