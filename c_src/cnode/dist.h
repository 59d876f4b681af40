/* The C-node side of Erlang distribution. */
#ifndef SANDBOX_CNODE_DIST_H
#define SANDBOX_CNODE_DIST_H

#include <ei.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>

#include "cn_request.h"

/* What to do with a request that came over distribution (from_fd: its
 * connection). */
typedef void (*cn_dist_handler)(const uint8_t *frame, size_t len, int from_fd);
void cn_dist_set_handler(cn_dist_handler h);

void cn_dist_start(const cn_request *r);
int cn_dist_pollfds_needed(void);
int cn_dist_pollfds(struct pollfd *fds, int max);
void cn_dist_handle_poll(struct pollfd *fds, int n);
/* A route for replies (see cn_routes in reply.h): 1 sent over a connection,
 * 0 the pid is the host's, -1 no connection to its node. */
int cn_dist_route(const uint8_t *node, size_t nlen, const uint8_t *raw, size_t len,
                  const ei_x_buff *msg);
/* #{node, bind, port, connections, handshakes_dropped} */
void cn_dist_info(ei_x_buff *x);
void cn_dist_stop(void);

#endif
