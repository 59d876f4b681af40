/* The audit command: one JSON line per event, acknowledged after fsync. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit.h"
#include "cn_audit.h"
#include "reply.h"

static cn_audit g_audit;
static int g_configured = 0;
static int g_private = 0;
static char *g_dir;   /* the private directory, when g_private */
static int g_dir_err; /* why the private directory is not usable, or 0 */
static int g_last_err;

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
    cn_send_raw(p->from.raw, p->from.len, p->from.via_port, &x);
    ei_x_free(&x);
    cn_dest_free(&p->from);
    free(p->ref);
    free(p);
}

static int check_dir(void) {
    if (g_private) {
        g_dir_err = cn_audit_private_dir(g_dir);
    }
    return g_dir_err;
}

int cn_audit_setup(const char *path, int64_t max_bytes, int keep, int private_dir) {
    g_private = private_dir;
    if (private_dir) {
        const char *slash = strrchr(path, '/');
        g_dir = slash && slash != path ? strndup(path, (size_t)(slash - path)) : strdup(".");
        if (!g_dir) {
            return -1;
        }
    }
    int e = check_dir();
    if (e) {
        /* never open a file in a directory that is not ours alone */
        fprintf(stderr, "sandbox_cnode: audit log directory %s: %s\n", g_dir, strerror(e));
        memset(&g_audit, 0, sizeof g_audit);
        g_audit.fd = -1;
        g_audit.path = strdup(path);
        g_audit.io = cn_audit_posix_io;
        g_audit.ack = ack;
        g_audit.max_bytes = max_bytes;
        g_audit.keep = keep;
        g_configured = g_audit.path != NULL;
        g_last_err = e;
        return g_configured ? 0 : -1;
    }
    e = cn_audit_open(&g_audit, &cn_audit_posix_io, path, max_bytes, keep, ack, NULL);
    if (e == ENOMEM && !g_audit.path) {
        return -1;
    }
    if (e) {
        fprintf(stderr, "sandbox_cnode: audit log %s: %s (tried again on each event)\n", path,
                strerror(e));
    }
    g_last_err = e;
    g_configured = 1;
    return 0;
}

void cn_audit_request(const cn_request *r) {
    if (!g_configured) {
        cn_reply_error_atom(r, "no_audit_log");
        return;
    }
    const cn_term *ev = cn_term_get(r->args, "event");
    if (!ev || ev->type != CN_T_MAP) {
        cn_error e = {"bad_option", "event"};
        cn_reply_error(r, &e);
        return;
    }
    if (g_dir_err && check_dir() != 0) {
        g_last_err = g_dir_err;
        cn_reply_errno(r, "audit_failed", g_dir_err);
        return;
    }
    const char *why = NULL;
    char *line = cn_json_encode(ev, &why);
    if (!line) {
        cn_reply_error_atom(r, why);
        return;
    }
    pending_ack *p = calloc(1, sizeof *p);
    if (!p || cn_dest_copy(&p->from, r->from, r->via_port) != 0 ||
        !(p->ref = malloc(r->ref->raw_len))) {
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
    g_last_err = err;
    if (err) {
        cn_dest_free(&p->from);
        free(p->ref);
        free(p);
        cn_reply_errno(r, "audit_failed", err);
    }
}

void cn_audit_round(void) {
    if (g_configured) {
        cn_audit_commit(&g_audit);
    }
}

void cn_audit_info(ei_x_buff *x) {
    ei_x_encode_map_header(x, 2);
    ei_x_encode_atom(x, "path");
    if (g_configured && g_audit.path) {
        ei_x_encode_binary(x, g_audit.path, (long)strlen(g_audit.path));
    } else {
        ei_x_encode_atom(x, "nil");
    }
    ei_x_encode_atom(x, "status");
    if (!g_configured) {
        ei_x_encode_atom(x, "none");
    } else if (g_last_err || g_audit.fd < 0) {
        char buf[32];
        ei_x_encode_tuple_header(x, 2);
        ei_x_encode_atom(x, "error");
        ei_x_encode_atom(x, cn_errno_atom(g_last_err ? g_last_err : EBADF, buf));
    } else {
        ei_x_encode_atom(x, "ok");
    }
}

void cn_audit_stop(void) {
    if (g_configured) {
        cn_audit_close(&g_audit);
        g_configured = 0;
    }
    free(g_dir);
    g_dir = NULL;
}
