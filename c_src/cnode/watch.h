/* Recursive inotify watches, debounced into change events. */
#ifndef SANDBOX_CNODE_WATCH_H
#define SANDBOX_CNODE_WATCH_H

#include <poll.h>
#include <stdint.h>

#include "cn_request.h"

void cn_watch_add(const cn_request *r);
void cn_watch_remove(const cn_request *r);
int cn_watch_count(void);
int cn_watch_pollfds(struct pollfd *fds, int max);
void cn_watch_handle_poll(struct pollfd *fds, int n);
int64_t cn_watch_next_deadline(void);
void cn_watch_timers(void);
void cn_watch_stop(void);

#endif
