/* Replies and events: their encoding, and their way to a pid. */
#define _GNU_SOURCE
#include "reply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cn_frame.h"

size_t cn_max_frame = CN_FRAME_DEFAULT_MAX;
static cn_routes g_routes;

void cn_reply_set_routes(const cn_routes *routes) {
    g_routes = *routes;
}

int cn_dest_copy(cn_dest *d, const cn_term *pid, int via_port) {
    d->via_port = via_port;
    d->raw = malloc(pid->raw_len);
    if (!d->raw) {
        d->len = 0;
        return -1;
    }
    memcpy(d->raw, pid->raw, pid->raw_len);
    d->len = pid->raw_len;
    return 0;
}

void cn_dest_free(cn_dest *d) {
    free(d->raw);
    d->raw = NULL;
    d->len = 0;
}

void cn_send_raw(const uint8_t *raw, size_t len, int via_port, const ei_x_buff *msg) {
    if (via_port) {
        if (g_routes.port_send) {
            g_routes.port_send(raw, len, msg);
        }
        return;
    }
    cn_arena a;
    cn_arena_init(&a);
    cn_term pid;
    size_t pos = 0;
    if (cn_term_decode_one(raw, len, &pos, &a, &pid) != CN_TERM_OK || pid.type != CN_T_PID) {
        cn_arena_free(&a);
        return;
    }
    int rc = g_routes.remote_send ? g_routes.remote_send(pid.u.s.p, pid.u.s.n, raw, len, msg) : 0;
    cn_arena_free(&a);
    if (rc == 0 && g_routes.port_send) {
        g_routes.port_send(raw, len, msg);
    }
}

void cn_reply_begin(const cn_request *r, ei_x_buff *x) {
    ei_x_new(x);
    ei_x_encode_tuple_header(x, 2);
    ei_x_append_buf(x, (const char *)r->ref->raw, (int)r->ref->raw_len);
}

void cn_reply_end(const cn_request *r, ei_x_buff *x) {
    cn_send_raw(r->from->raw, r->from->raw_len, r->via_port, x);
    ei_x_free(x);
}

void cn_reply_ok(const cn_request *r) {
    ei_x_buff x;
    cn_reply_begin(r, &x);
    ei_x_encode_atom(&x, "ok");
    cn_reply_end(r, &x);
}

void cn_encode_error(ei_x_buff *x, const cn_error *e) {
    ei_x_encode_tuple_header(x, 2);
    ei_x_encode_atom(x, "error");
    if (e->detail) {
        ei_x_encode_tuple_header(x, 2);
        ei_x_encode_atom(x, e->reason);
        ei_x_encode_atom(x, e->detail);
    } else {
        ei_x_encode_atom(x, e->reason);
    }
}

void cn_reply_error(const cn_request *r, const cn_error *e) {
    ei_x_buff x;
    cn_reply_begin(r, &x);
    cn_encode_error(&x, e);
    cn_reply_end(r, &x);
}

void cn_reply_error_atom(const cn_request *r, const char *reason) {
    cn_error e = {reason, NULL};
    cn_reply_error(r, &e);
}

const char *cn_errno_atom(int err, char buf[32]) {
    const char *name = strerrorname_np(err);
    if (!name) {
        snprintf(buf, 32, "errno_%d", err);
        return buf;
    }
    size_t i = 0;
    for (; name[i] && i < 31; i++) {
        buf[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] - 'A' + 'a' : name[i]);
    }
    buf[i] = 0;
    return buf;
}

void cn_reply_errno(const cn_request *r, const char *reason, int err) {
    char buf[32];
    cn_error e = {reason, cn_errno_atom(err, buf)};
    cn_reply_error(r, &e);
}

void cn_event_begin(ei_x_buff *x, int64_t id) {
    ei_x_new(x);
    ei_x_encode_tuple_header(x, 3);
    ei_x_encode_atom(x, "sandbox_cnode");
    ei_x_encode_longlong(x, id);
}

/* What the C-node is running with: how jobs are contained, distribution,
 * the audit log, and how much it holds. */
void cn_notice_error(const char *reason, const char *detail) {
    if (!g_routes.port_notice) {
        return;
    }
    ei_x_buff x;
    ei_x_new(&x);
    cn_error e = {reason, detail};
    cn_encode_error(&x, &e);
    g_routes.port_notice(&x);
    ei_x_free(&x);
}

void cn_refuse_too_big(const uint8_t *prefix, size_t len, uint64_t declared, int via_port) {
    cn_arena a;
    cn_arena_init(&a);
    cn_term from, ref;
    if (cn_request_peek(prefix, len, &a, &from, &ref) == 0) {
        cn_request r = {&from, &ref, NULL, NULL, via_port};
        ei_x_buff x;
        cn_reply_begin(&r, &x);
        ei_x_encode_tuple_header(&x, 2);
        ei_x_encode_atom(&x, "error");
        ei_x_encode_tuple_header(&x, 3);
        ei_x_encode_atom(&x, "frame_too_large");
        ei_x_encode_ulonglong(&x, declared);
        ei_x_encode_ulonglong(&x, cn_max_frame);
        cn_reply_end(&r, &x);
    } else {
        cn_notice_error("frame_too_large", NULL);
    }
    cn_arena_free(&a);
}
