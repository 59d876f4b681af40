/* Replies to requests and events to subscribers: their encoding, and their
 * way to a pid, through the port or over a distribution connection. The
 * bottom of the C-node's modules: it depends on none of the others; the
 * ways out are given to it once at start (cn_reply_set_routes). */
#ifndef SANDBOX_CNODE_REPLY_H
#define SANDBOX_CNODE_REPLY_H

#include <ei.h>
#include <stddef.h>
#include <stdint.h>

#include "cn_request.h"
#include "cn_term.h"

/* A copy of a pid's encoding, to send events to later, and whether it was
 * given over the port (then events go back through the port). */
typedef struct {
    uint8_t *raw;
    size_t len;
    int via_port;
} cn_dest;

int cn_dest_copy(cn_dest *d, const cn_term *pid, int via_port);
void cn_dest_free(cn_dest *d);

typedef struct {
    /* {Dest, Msg} to the port owner, which forwards Msg to the pid Dest */
    void (*port_send)(const uint8_t *raw, size_t len, const ei_x_buff *msg);
    /* {cnode, Info} for the port owner itself */
    void (*port_notice)(const ei_x_buff *info);
    /* to a pid of another node: 1 sent, 0 the pid is the host's (the port
     * takes it), -1 no way (dropped) */
    int (*remote_send)(const uint8_t *node, size_t nlen, const uint8_t *raw, size_t len,
                       const ei_x_buff *msg);
} cn_routes;

void cn_reply_set_routes(const cn_routes *routes);

/* Sends msg (an ei_x_buff without a version byte) to the pid whose encoding
 * is raw: through the port when via_port or when the pid is the host node's,
 * otherwise over the distribution connection to its node; dropped when there
 * is none. */
void cn_send_raw(const uint8_t *raw, size_t len, int via_port, const ei_x_buff *msg);

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

/* {error, Reason} or {error, {Reason, Detail}} to the port owner. */
void cn_notice_error(const char *reason, const char *detail);

/* The largest request accepted, in bytes. */
extern size_t cn_max_frame;
/* Replies {error, {frame_too_large, Size, Max}} to the request whose first
 * bytes are prefix (when they name a sender and a reference). */
void cn_refuse_too_big(const uint8_t *prefix, size_t len, uint64_t declared, int via_port);

#endif
