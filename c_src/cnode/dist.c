/* The C-node side of Erlang distribution: once the host VM is distributed,
 * the program listens, registers with epmd as a hidden node, connects to the
 * host, and serves requests arriving as distribution messages. The cookie
 * comes only in the `distribute` request on the port. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cn_frame.h"
#include "cnode.h"

#define MAX_CONNS 64
#define DIST_TMO_MS 5000

typedef struct {
    int fd;
    char node[MAXNODELEN + 1];
} conn;

static int g_dist = 0;
static ei_cnode g_ec;
static int g_listen = -1;
static int g_epmd = -1;
static char g_host[MAXNODELEN + 1];
static conn g_conns[MAX_CONNS];
static int g_nconns = 0;

static void add_conn(int fd, const char *node) {
    if (g_nconns == MAX_CONNS) {
        ei_close_connection(fd);
        return;
    }
    g_conns[g_nconns].fd = fd;
    snprintf(g_conns[g_nconns].node, sizeof g_conns[g_nconns].node, "%s", node);
    g_nconns++;
}

static void drop_conn(int i) {
    ei_close_connection(g_conns[i].fd);
    g_conns[i] = g_conns[--g_nconns];
}

static int valid_alive(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n > 200) {
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-')) {
            return 0;
        }
    }
    return 1;
}

static void reply_node(const cn_request *r) {
    ei_x_buff x;
    cn_reply_begin(r, &x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "ok");
    ei_x_encode_atom(&x, ei_thisnodename(&g_ec));
    cn_reply_end(r, &x);
}

void cn_dist_start(const cn_request *r) {
    char *node = cn_term_strdup(cn_term_get(r->args, "node"));
    char *cookie = cn_term_strdup(cn_term_get(r->args, "cookie"));
    char *name = cn_term_strdup(cn_term_get(r->args, "name"));
    if (g_dist && node && strcmp(node, g_host) == 0) {
        reply_node(r);
        goto out;
    }
    if (g_dist) {
        /* the host's distribution restarted under another name: start over */
        cn_dist_stop();
    }
    const char *at = node ? strchr(node, '@') : NULL;
    cn_error err = {"bad_option", NULL};
    if (!node || !at || at[1] == 0 || strlen(node) > MAXNODELEN) {
        err.detail = "node";
    } else if (!cookie || !*cookie || strlen(cookie) > 255) {
        err.detail = "cookie";
    } else if (!name || !valid_alive(name) || strlen(name) + strlen(at) > MAXNODELEN) {
        err.detail = "name";
    }
    if (err.detail) {
        cn_reply_error(r, &err);
        goto out;
    }
    const char *host = at + 1;
    char thisnode[MAXNODELEN + 1];
    snprintf(thisnode, sizeof thisnode, "%s@%s", name, host);
    struct in_addr addr;
    memset(&addr, 0, sizeof addr);
    short creation = (short)((time(NULL) % 0x7ffe) + 1);
    if (ei_connect_xinit(&g_ec, host, name, thisnode, &addr, cookie, creation) < 0) {
        cn_reply_errno(r, "dist_failed", errno ? errno : EINVAL);
        goto out;
    }
    int port = 0;
    g_listen = ei_listen(&g_ec, &port, 16);
    if (g_listen < 0) {
        cn_reply_errno(r, "dist_failed", errno ? errno : EIO);
        goto out;
    }
    g_epmd = ei_publish_tmo(&g_ec, port, DIST_TMO_MS);
    if (g_epmd < 0) {
        close(g_listen);
        g_listen = -1;
        cn_error e = {"dist_failed", "epmd"};
        cn_reply_error(r, &e);
        goto out;
    }
    snprintf(g_host, sizeof g_host, "%s", node);
    g_dist = 1;
    int fd = ei_connect_tmo(&g_ec, g_host, DIST_TMO_MS);
    if (fd >= 0) {
        add_conn(fd, g_host);
    }
    reply_node(r);
out:
    if (cookie) {
        memset(cookie, 0, strlen(cookie));
    }
    free(node);
    free(cookie);
    free(name);
}

int cn_dist_pollfds(struct pollfd *fds, int max) {
    int n = 0;
    if (!g_dist || max < 1) {
        return 0;
    }
    fds[n++] = (struct pollfd){g_listen, POLLIN, 0};
    for (int i = 0; i < g_nconns && n < max; i++) {
        fds[n++] = (struct pollfd){g_conns[i].fd, POLLIN, 0};
    }
    return n;
}

static void receive_from(int i) {
    int fd = g_conns[i].fd;
    ei_x_buff x;
    ei_x_new(&x);
    erlang_msg msg;
    int rc = ei_xreceive_msg_tmo(fd, &msg, &x, DIST_TMO_MS);
    if (rc == ERL_TICK) {
        ei_x_free(&x);
        return;
    }
    if (rc == ERL_ERROR) {
        ei_x_free(&x);
        drop_conn(i);
        return;
    }
    if ((msg.msgtype == ERL_SEND || msg.msgtype == ERL_REG_SEND) &&
        (size_t)x.index > cn_max_frame) {
        size_t peek = (size_t)x.index < CN_FRAME_PEEK ? (size_t)x.index : CN_FRAME_PEEK;
        cn_refuse_too_big((const uint8_t *)x.buff, peek, (uint64_t)x.index);
    } else if (msg.msgtype == ERL_SEND || msg.msgtype == ERL_REG_SEND) {
        cn_dispatch((const uint8_t *)x.buff, (size_t)x.index, fd);
    }
    ei_x_free(&x);
}

void cn_dist_handle_poll(struct pollfd *fds, int n) {
    if (!g_dist || n == 0) {
        return;
    }
    /* receive first: accepting changes the connection table */
    for (int k = 1; k < n; k++) {
        if (!fds[k].revents) {
            continue;
        }
        for (int i = 0; i < g_nconns; i++) {
            if (g_conns[i].fd == fds[k].fd) {
                receive_from(i);
                break;
            }
        }
    }
    if (fds[0].revents & POLLIN) {
        ErlConnect con;
        int fd = ei_accept_tmo(&g_ec, g_listen, &con, DIST_TMO_MS);
        if (fd >= 0) {
            add_conn(fd, con.nodename);
        }
    }
}

int cn_dist_conn_for(const uint8_t *node, size_t len) {
    for (int i = 0; i < g_nconns; i++) {
        if (strlen(g_conns[i].node) == len && memcmp(g_conns[i].node, node, len) == 0) {
            return g_conns[i].fd;
        }
    }
    return -1;
}

int cn_dist_is_host(const uint8_t *node, size_t len) {
    static const char nonode[] = "nonode@nohost";
    if (!g_dist) {
        return 1;
    }
    if (len == sizeof nonode - 1 && memcmp(node, nonode, len) == 0) {
        return 1;
    }
    return strlen(g_host) == len && memcmp(g_host, node, len) == 0;
}

int cn_dist_send(int fd, const uint8_t *pid_raw, size_t pid_len, const ei_x_buff *msg) {
    erlang_pid pid;
    int idx = 0;
    if (ei_decode_pid((const char *)pid_raw, &idx, &pid) < 0 || (size_t)idx != pid_len) {
        return -1;
    }
    size_t len = 1 + (size_t)msg->index;
    char *buf = malloc(len);
    if (!buf) {
        return -1;
    }
    buf[0] = (char)131;
    memcpy(buf + 1, msg->buff, (size_t)msg->index);
    int rc = ei_send_tmo(fd, &pid, buf, (int)len, DIST_TMO_MS);
    free(buf);
    return rc;
}

void cn_dist_stop(void) {
    while (g_nconns > 0) {
        drop_conn(g_nconns - 1);
    }
    if (g_listen >= 0) {
        close(g_listen);
        g_listen = -1;
    }
    if (g_epmd >= 0) {
        close(g_epmd);
        g_epmd = -1;
    }
    g_dist = 0;
}
