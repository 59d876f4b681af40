/* The audit command: one JSON line per event, acknowledged after fsync. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cn_audit.h"
#include "cnode.h"

static cn_audit g_audit;
static int g_open = 0;

/* What an acknowledgement needs: the sender and reference of the request. */
typedef struct {
    cn_dest from;
    uint8_t *ref;
    size_t ref_len;
} pending_ack;

static void ack(void *ctx, void *token, int err) {
    (void)ctx;
    pending_ack *p = token;
    ei_x_buff x;
    ei_x_new(&x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_append_buf(&x, (const char *)p->ref, (int)p->ref_len);
    if (err == 0) {
        ei_x_encode_atom(&x, "ok");
    } else {
        char buf[32];
        cn_error e = {"audit_failed", cn_errno_atom(err, buf)};
        cn_encode_error(&x, &e);
    }
    cn_send_raw(p->from.raw, p->from.len, &x);
    ei_x_free(&x);
    cn_dest_free(&p->from);
    free(p->ref);
    free(p);
}

int cn_audit_setup(const char *path, int64_t max_bytes, int keep) {
    if (cn_audit_open(&g_audit, &cn_audit_posix_io, path, max_bytes, keep, ack, NULL) != 0) {
        return -1;
    }
    g_open = 1;
    return 0;
}

void cn_audit_request(const cn_request *r) {
    if (!g_open) {
        cn_reply_error_atom(r, "no_audit_log");
        return;
    }
    const cn_term *ev = cn_term_get(r->args, "event");
    if (!ev || ev->type != CN_T_MAP) {
        cn_error e = {"bad_option", "event"};
        cn_reply_error(r, &e);
        return;
    }
    const char *why = NULL;
    char *line = cn_json_encode(ev, &why);
    if (!line) {
        cn_reply_error_atom(r, why);
        return;
    }
    pending_ack *p = calloc(1, sizeof *p);
    if (!p || cn_dest_copy(&p->from, r->from) != 0 || !(p->ref = malloc(r->ref->raw_len))) {
        if (p) {
            cn_dest_free(&p->from);
            free(p);
        }
        free(line);
        cn_reply_error_atom(r, "enomem");
        return;
    }
    memcpy(p->ref, r->ref->raw, r->ref->raw_len);
    p->ref_len = r->ref->raw_len;
    int err = cn_audit_append(&g_audit, line, strlen(line), p);
    free(line);
    if (err) {
        cn_dest_free(&p->from);
        free(p->ref);
        free(p);
        cn_reply_errno(r, "audit_failed", err);
    }
}

void cn_audit_round(void) {
    if (g_open) {
        cn_audit_commit(&g_audit);
    }
}

void cn_audit_stop(void) {
    if (g_open) {
        cn_audit_close(&g_audit);
        g_open = 0;
    }
}
