/* The C-node side of Erlang distribution: once the host VM is distributed,
 * the program listens, registers with epmd as a hidden node, connects to the
 * host, and serves requests arriving as distribution messages. The cookie
 * comes only in the `distribute` request on the port.
 *
 * The listener binds to the loopback address unless the request names
 * another. Connections are accepted by the poll loop without blocking; each
 * handshake then runs in a thread of its own under an absolute deadline
 * (`handshake_timeout`), so a client that connects and stays silent (or
 * trickles bytes) delays nobody and is dropped when its deadline passes. At
 * most MAX_HANDSHAKES run at once; further connections are closed at once.
 *
 * All sockets go through our own callbacks (ei's "user supplied socket
 * implementation"), which wait with poll(): libei's built-in ones wait with
 * select(), which cannot take descriptors from FD_SETSIZE (1024) on. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "cn_frame.h"
#include "cn_time.h"
#include "dist.h"
#include "reply.h"

#define MAX_CONNS 64
#define MAX_HANDSHAKES 8
#define DIST_TMO_MS 5000
#define DEFAULT_HANDSHAKE_MS 5000

typedef struct {
    int fd;
    char node[MAXNODELEN + 1];
} conn;

static int g_dist = 0;
static ei_cnode g_ec;
static int g_listen = -1;
static int g_port = 0;
static int g_epmd = -1;
static char g_host[MAXNODELEN + 1];
static char g_bind[INET_ADDRSTRLEN] = "127.0.0.1";
static int64_t g_handshake_ms = DEFAULT_HANDSHAKE_MS;
static conn g_conns[MAX_CONNS];
static int g_nconns = 0;
/* handshake threads report to the loop through this pipe */
static int g_hs_pipe[2] = {-1, -1};
static int g_hs_inflight = 0;
static unsigned g_gen = 0; /* bumped when distribution stops */
static uint64_t g_hs_dropped = 0;
static cn_dist_handler g_handler;

void cn_dist_set_handler(cn_dist_handler h) {
    g_handler = h;
}

/* ---- socket callbacks ---- */

typedef struct {
    int fd;
    int64_t deadline; /* the handshake's; -1: none */
} sock;

/* The connection a handshake thread hands to ei_accept_tmo. */
static __thread int tl_accepted = -1;
static __thread int64_t tl_deadline = -1;

static int errno_or_eio(void) {
    return errno ? errno : EIO;
}

static int cb_socket(void **ctx, void *setup) {
    (void)setup;
    sock *s = malloc(sizeof *s);
    if (!s) {
        return ENOMEM;
    }
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s->fd < 0) {
        int e = errno_or_eio();
        free(s);
        return e;
    }
    s->deadline = -1;
    *ctx = s;
    return 0;
}

static int cb_close(void *ctx) {
    sock *s = ctx;
    int e = close(s->fd) == 0 ? 0 : errno_or_eio();
    free(s);
    return e;
}

static int cb_listen(void *ctx, void *addr, int *len, int backlog) {
    sock *s = ctx;
    int on = 1;
    socklen_t sz = (socklen_t)*len;
    if (setsockopt(s->fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0 ||
        bind(s->fd, addr, sz) != 0 || getsockname(s->fd, addr, &sz) != 0 ||
        listen(s->fd, backlog) != 0) {
        return errno_or_eio();
    }
    *len = (int)sz;
    return 0;
}

static int cb_accept(void **ctx, void *addr, int *len, unsigned tmo) {
    (void)tmo;
    /* never accept() here: the loop accepted, the thread hands it over */
    if (tl_accepted < 0) {
        return EAGAIN;
    }
    sock *s = malloc(sizeof *s);
    if (!s) {
        return ENOMEM;
    }
    s->fd = tl_accepted;
    s->deadline = tl_deadline;
    tl_accepted = -1;
    socklen_t sz = (socklen_t)*len;
    if (getpeername(s->fd, addr, &sz) != 0) {
        sz = 0;
    }
    *len = (int)sz;
    *ctx = s;
    return 0;
}

/* Waits for events on s within tmo and the handshake's deadline. */
static int wait_sock(const sock *s, short events, unsigned tmo) {
    for (;;) {
        int t = tmo == EI_SCLBK_INF_TMO ? -1 : (int)(tmo > 0x7fffffffu ? 0x7fffffff : tmo);
        if (s->deadline >= 0) {
            int left = cn_poll_timeout(s->deadline, cn_now_ms(), 0x7fffffff);
            if (left == 0) {
                return ETIMEDOUT;
            }
            if (t < 0 || left < t) {
                t = left;
            }
        }
        struct pollfd p = {s->fd, events, 0};
        int rc = poll(&p, 1, t);
        if (rc > 0) {
            return 0;
        }
        if (rc == 0) {
            return ETIMEDOUT;
        }
        if (errno != EINTR) {
            return errno_or_eio();
        }
    }
}

static int cb_connect(void *ctx, void *addr, int len, unsigned tmo) {
    sock *s = ctx;
    if (connect(s->fd, addr, (socklen_t)len) == 0) {
        return 0;
    }
    if (errno != EINPROGRESS) {
        return errno_or_eio();
    }
    int e = wait_sock(s, POLLOUT, tmo);
    if (e) {
        return e;
    }
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) {
        return errno_or_eio();
    }
    return soerr;
}

static int cb_writev(void *ctx, const void *iov, int iovcnt, ssize_t *len, unsigned tmo) {
    sock *s = ctx;
    for (;;) {
        ssize_t w = writev(s->fd, iov, iovcnt);
        if (w >= 0) {
            *len = w;
            return 0;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN) {
            return errno_or_eio();
        }
        int e = wait_sock(s, POLLOUT, tmo);
        if (e) {
            return e;
        }
    }
}

static int cb_write(void *ctx, const char *buf, ssize_t *len, unsigned tmo) {
    sock *s = ctx;
    for (;;) {
        ssize_t w = send(s->fd, buf, (size_t)*len, MSG_NOSIGNAL);
        if (w >= 0) {
            *len = w;
            return 0;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN) {
            return errno_or_eio();
        }
        int e = wait_sock(s, POLLOUT, tmo);
        if (e) {
            return e;
        }
    }
}

static int cb_read(void *ctx, char *buf, ssize_t *len, unsigned tmo) {
    sock *s = ctx;
    for (;;) {
        ssize_t r = read(s->fd, buf, (size_t)*len);
        if (r >= 0) {
            *len = r;
            return 0;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno != EAGAIN) {
            return errno_or_eio();
        }
        int e = wait_sock(s, POLLIN, tmo);
        if (e) {
            return e;
        }
    }
}

static int cb_hs_header_size(void *ctx, int *sz) {
    (void)ctx;
    *sz = 2;
    return 0;
}

static int cb_hs_complete(void *ctx) {
    sock *s = ctx;
    int one = 1;
    s->deadline = -1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(s->fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    return 0;
}

static int cb_get_fd(void *ctx, int *fd) {
    *fd = ((sock *)ctx)->fd;
    return 0;
}

static ei_socket_callbacks g_cbs = {EI_SCLBK_FLG_FULL_IMPL,
                                    cb_socket,
                                    cb_close,
                                    cb_listen,
                                    cb_accept,
                                    cb_connect,
                                    cb_writev,
                                    cb_write,
                                    cb_read,
                                    cb_hs_header_size,
                                    cb_hs_complete,
                                    cb_hs_complete,
                                    cb_get_fd};

/* ---- handshakes ---- */

typedef struct {
    int fd; /* the established connection, or -1 */
    unsigned gen;
    char node[MAXNODELEN + 1];
} hs_result;

typedef struct {
    ei_cnode ec;
    int lfd, fd;
    int64_t deadline;
    unsigned gen;
} hs_job;

static void *handshake(void *arg) {
    hs_job *h = arg;
    tl_accepted = h->fd;
    tl_deadline = h->deadline;
    ErlConnect con;
    memset(&con, 0, sizeof con);
    hs_result res = {-1, h->gen, {0}};
    res.fd = ei_accept_tmo(&h->ec, h->lfd, &con, (unsigned)g_handshake_ms);
    if (tl_accepted >= 0) {
        close(tl_accepted); /* ei never got to it */
    }
    if (res.fd >= 0) {
        memcpy(res.node, con.nodename, sizeof res.node);
        res.node[sizeof res.node - 1] = 0;
    }
    ssize_t w;
    do {
        w = write(g_hs_pipe[1], &res, sizeof res); /* < PIPE_BUF: atomic */
    } while (w < 0 && errno == EINTR);
    if (w != (ssize_t)sizeof res && res.fd >= 0) {
        ei_close_connection(res.fd);
    }
    free(h);
    return NULL;
}

static void start_handshake(int fd) {
    hs_job *h = malloc(sizeof *h);
    pthread_attr_t attr;
    pthread_t t;
    if (!h || g_hs_inflight >= MAX_HANDSHAKES) {
        free(h);
        close(fd);
        g_hs_dropped++;
        return;
    }
    h->ec = g_ec;
    h->lfd = g_listen;
    h->fd = fd;
    h->deadline = cn_deadline_add(cn_now_ms(), g_handshake_ms);
    h->gen = g_gen;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    if (pthread_create(&t, &attr, handshake, h) != 0) {
        free(h);
        close(fd);
        g_hs_dropped++;
    } else {
        g_hs_inflight++;
    }
    pthread_attr_destroy(&attr);
}

/* ---- connections ---- */

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
    const cn_term *bt = cn_term_get(r->args, "bind");
    char *bind_s = bt ? cn_term_strdup(bt) : NULL;
    const cn_term *ht = cn_term_get(r->args, "handshake_timeout");
    int64_t hs_ms = DEFAULT_HANDSHAKE_MS;
    struct in_addr addr;
    const char *at = node ? strchr(node, '@') : NULL;
    cn_error err = {"bad_option", NULL};
    if (!node || !at || at[1] == 0 || strlen(node) > MAXNODELEN) {
        err.detail = "node";
    } else if (!cookie || !*cookie || strlen(cookie) > 255) {
        err.detail = "cookie";
    } else if (!name || !valid_alive(name) || strlen(name) + strlen(at) > MAXNODELEN) {
        err.detail = "name";
    } else if (bt && (!bind_s || inet_pton(AF_INET, bind_s, &addr) != 1)) {
        err.detail = "bind";
    } else if (ht && (cn_int_opt(ht, 1, 0, &hs_ms) != 0 || hs_ms > 3600000)) {
        err.detail = "handshake_timeout";
    }
    if (err.detail) {
        cn_reply_error(r, &err);
        goto out;
    }
    if (!bt) {
        inet_pton(AF_INET, "127.0.0.1", &addr);
    }
    if (g_dist && strcmp(node, g_host) == 0) {
        reply_node(r);
        goto out;
    }
    if (g_dist) {
        /* the host's distribution restarted under another name: start over */
        cn_dist_stop();
    }
    if (g_hs_pipe[0] < 0 && pipe2(g_hs_pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        cn_reply_errno(r, "dist_failed", errno);
        goto out;
    }
    inet_ntop(AF_INET, &addr, g_bind, sizeof g_bind);
    g_handshake_ms = hs_ms;
    const char *host = at + 1;
    char thisnode[MAXNODELEN + 1];
    snprintf(thisnode, sizeof thisnode, "%s@%s", name, host);
    unsigned creation = (unsigned)(time(NULL) % 0x7ffe) + 1;
    if (ei_connect_xinit_ussi(&g_ec, host, name, thisnode, NULL, cookie, creation, &g_cbs,
                              sizeof g_cbs, NULL) < 0) {
        cn_reply_errno(r, "dist_failed", errno ? errno : EINVAL);
        goto out;
    }
    int port = 0;
    g_listen = ei_xlisten(&g_ec, &addr, &port, 16);
    if (g_listen < 0) {
        cn_reply_errno(r, "dist_failed", errno ? errno : EIO);
        goto out;
    }
    g_port = port;
    g_epmd = ei_publish_tmo(&g_ec, port, DIST_TMO_MS);
    if (g_epmd < 0) {
        ei_close_connection(g_listen);
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
    free(bind_s);
}

int cn_dist_pollfds_needed(void) {
    return 2 + g_nconns;
}

int cn_dist_pollfds(struct pollfd *fds, int max) {
    int n = 0;
    if (g_hs_pipe[0] >= 0 && n < max) {
        fds[n++] = (struct pollfd){g_hs_pipe[0], POLLIN, 0};
    }
    if (g_dist && n < max) {
        fds[n++] = (struct pollfd){g_listen, POLLIN, 0};
    }
    for (int i = 0; g_dist && i < g_nconns && n < max; i++) {
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
        cn_refuse_too_big((const uint8_t *)x.buff, peek, (uint64_t)x.index, 0);
    } else if (msg.msgtype == ERL_SEND || msg.msgtype == ERL_REG_SEND) {
        if (g_handler) {
            g_handler((const uint8_t *)x.buff, (size_t)x.index, fd);
        }
    }
    ei_x_free(&x);
}

static void read_handshakes(void) {
    hs_result res;
    for (;;) {
        ssize_t n = read(g_hs_pipe[0], &res, sizeof res);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n != (ssize_t)sizeof res) {
            return;
        }
        g_hs_inflight--;
        if (res.fd < 0) {
            g_hs_dropped++;
        } else if (res.gen == g_gen && g_dist) {
            add_conn(res.fd, res.node);
        } else {
            ei_close_connection(res.fd); /* distribution restarted meanwhile */
        }
    }
}

static void accept_new(void) {
    for (;;) {
        int fd = accept4(g_listen, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) {
                continue;
            }
            return; /* EAGAIN: none left */
        }
        start_handshake(fd);
    }
}

void cn_dist_handle_poll(struct pollfd *fds, int n) {
    /* receive first: accepting changes the connection table */
    for (int k = 0; k < n; k++) {
        if (!fds[k].revents) {
            continue;
        }
        if (fds[k].fd == g_hs_pipe[0] || fds[k].fd == g_listen) {
            continue;
        }
        for (int i = 0; i < g_nconns; i++) {
            if (g_conns[i].fd == fds[k].fd) {
                receive_from(i);
                break;
            }
        }
    }
    for (int k = 0; k < n; k++) {
        if (fds[k].revents && fds[k].fd == g_hs_pipe[0]) {
            read_handshakes();
        } else if (fds[k].revents && g_dist && fds[k].fd == g_listen) {
            accept_new();
        }
    }
}

static int conn_for(const uint8_t *node, size_t len) {
    for (int i = 0; i < g_nconns; i++) {
        if (strlen(g_conns[i].node) == len && memcmp(g_conns[i].node, node, len) == 0) {
            return g_conns[i].fd;
        }
    }
    return -1;
}

static int is_host(const uint8_t *node, size_t len) {
    static const char nonode[] = "nonode@nohost";
    if (!g_dist) {
        return 1;
    }
    if (len == sizeof nonode - 1 && memcmp(node, nonode, len) == 0) {
        return 1;
    }
    return strlen(g_host) == len && memcmp(g_host, node, len) == 0;
}

static int send_to(int fd, const uint8_t *pid_raw, size_t pid_len, const ei_x_buff *msg) {
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

int cn_dist_route(const uint8_t *node, size_t nlen, const uint8_t *raw, size_t len,
                  const ei_x_buff *msg) {
    if (is_host(node, nlen)) {
        return 0;
    }
    int fd = conn_for(node, nlen);
    if (fd < 0) {
        return -1;
    }
    send_to(fd, raw, len, msg);
    return 1;
}

void cn_dist_info(ei_x_buff *x) {
    ei_x_encode_map_header(x, 5);
    ei_x_encode_atom(x, "node");
    if (g_dist) {
        ei_x_encode_atom(x, ei_thisnodename(&g_ec));
    } else {
        ei_x_encode_atom(x, "nil");
    }
    ei_x_encode_atom(x, "bind");
    ei_x_encode_binary(x, g_bind, (long)strlen(g_bind));
    ei_x_encode_atom(x, "port");
    ei_x_encode_long(x, g_dist ? g_port : 0);
    ei_x_encode_atom(x, "connections");
    ei_x_encode_long(x, g_nconns);
    ei_x_encode_atom(x, "handshakes_dropped");
    ei_x_encode_ulonglong(x, g_hs_dropped);
}

void cn_dist_stop(void) {
    while (g_nconns > 0) {
        drop_conn(g_nconns - 1);
    }
    if (g_listen >= 0) {
        ei_close_connection(g_listen);
        g_listen = -1;
    }
    if (g_epmd >= 0) {
        close(g_epmd);
        g_epmd = -1;
    }
    g_dist = 0;
    g_port = 0;
    g_gen++;
}
