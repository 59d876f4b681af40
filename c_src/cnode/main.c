/* The supervising C-node: one poll() loop serving requests in the external
 * term format from the port (stdin/stdout, {packet, 4}) and, once the host VM
 * is distributed, from Erlang nodes over the distribution protocol.
 *
 * Usage: sandbox_cnode [--max-frame BYTES] [--audit-log PATH] [--audit-private-dir]
 *                      [--audit-max-bytes BYTES] [--audit-keep N]
 *                      [--containment auto|subreaper] [--landlock auto|off|ABI]
 * The cookie for distribution only ever arrives in a request on the port.
 * SANDBOX_CNODE_CONTAINMENT=subreaper in the environment forces the
 * fallback as --containment subreaper does; SANDBOX_CNODE_LANDLOCK=off (or
 * an ABI number) does what --landlock does: Landlock reported unavailable,
 * or used as if the kernel's ABI were at most that number. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "audit.h"
#include "child.h"
#include "cn_frame.h"
#include "cn_time.h"
#include "contain.h"
#include "dist.h"
#include "landlock.h"
#include "reply.h"
#include "watch.h"

/* Whether the port side is gone or SIGTERM came: the loop ends. */
static int g_stopping = 0;
static pid_t g_self;

static cn_framebuf g_in;
static int g_sigfd = -1;

/* Writes all of iov to stdout; a broken pipe means the VM is gone. */
static void port_write(struct iovec *iov, int n) {
    while (n > 0 && !g_stopping) {
        ssize_t w = writev(STDOUT_FILENO, iov, n);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }
            g_stopping = 1;
            return;
        }
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
}

/* A frame {Dest, Msg} to the port owner, which forwards Msg to Dest. */
static void port_send(const uint8_t *raw, size_t len, const ei_x_buff *msg) {
    uint8_t hdr[4 + 3];
    size_t total = 3 + len + (size_t)msg->index;
    if (total > UINT32_MAX) {
        return;
    }
    cn_frame_header(hdr, (uint32_t)total);
    hdr[4] = 131;
    hdr[5] = 104;
    hdr[6] = 2;
    struct iovec iov[3] = {{hdr, sizeof hdr}, {(void *)raw, len}, {msg->buff, (size_t)msg->index}};
    port_write(iov, 3);
}

/* A frame with no destination: {cnode, Info}, for the port owner itself. */
static void port_notice(const ei_x_buff *info) {
    uint8_t hdr[4 + 3 + 7];
    size_t total = 3 + 7 + (size_t)info->index;
    cn_frame_header(hdr, (uint32_t)total);
    memcpy(hdr + 4, (const uint8_t[]){131, 104, 2, 119, 5, 'c', 'n', 'o', 'd', 'e'}, 10);
    struct iovec iov[2] = {{hdr, sizeof hdr}, {info->buff, (size_t)info->index}};
    port_write(iov, 2);
}

/* A step that held the loop for long (a blocking call where none should
 * block) is told to the port owner, which logs it: a stall shows where it
 * was. */
#define SLOW_STEP_MS 2000

static void note_slow(const char *step, int64_t t0) {
    int64_t ms = cn_now_ms() - t0;
    if (ms < SLOW_STEP_MS) {
        return;
    }
    ei_x_buff x;
    ei_x_new(&x);
    ei_x_encode_tuple_header(&x, 3);
    ei_x_encode_atom(&x, "slow_step");
    ei_x_encode_atom(&x, step);
    ei_x_encode_longlong(&x, ms);
    port_notice(&x);
    ei_x_free(&x);
}

static void reply_info(const cn_request *r) {
    ei_x_buff x;
    cn_reply_begin(r, &x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "ok");
    ei_x_encode_map_header(&x, 9);
    ei_x_encode_atom(&x, "os_pid");
    ei_x_encode_long(&x, (long)g_self);
    ei_x_encode_atom(&x, "containment");
    ei_x_encode_atom(&x, cn_contain_name());
    ei_x_encode_atom(&x, "containment_reason");
    ei_x_encode_atom(&x, cn_contain_reason());
    ei_x_encode_atom(&x, "cgroup");
    if (cn_contain_base()) {
        ei_x_encode_binary(&x, cn_contain_base(), (long)strlen(cn_contain_base()));
    } else {
        ei_x_encode_atom(&x, "nil");
    }
    ei_x_encode_atom(&x, "jobs");
    ei_x_encode_long(&x, cn_child_count());
    ei_x_encode_atom(&x, "watches");
    ei_x_encode_long(&x, cn_watch_count());
    ei_x_encode_atom(&x, "dist");
    cn_dist_info(&x);
    ei_x_encode_atom(&x, "audit");
    cn_audit_info(&x);
    ei_x_encode_atom(&x, "landlock");
    cn_landlock_info(&x);
    cn_reply_end(r, &x);
}

static void reply_ping(const cn_request *r) {
    ei_x_buff x;
    cn_reply_begin(r, &x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "pong");
    ei_x_encode_long(&x, (long)g_self);
    cn_reply_end(r, &x);
}

typedef void (*cn_handler)(const cn_request *r);

static const struct {
    const char *name;
    cn_handler fn;
    int port_only; /* configuration only the port owner may send */
} handlers[] = {
    {"spawn", cn_child_spawn, 0},
    {"write_stdin", cn_child_write_stdin, 0},
    {"close_stdin", cn_child_close_stdin, 0},
    {"set_limits", cn_child_set_limits, 0},
    {"kill", cn_child_kill, 0},
    {"sample", cn_child_sample, 0},
    {"watch", cn_watch_add, 0},
    {"unwatch", cn_watch_remove, 0},
    {"audit", cn_audit_request, 0},
    {"ping", reply_ping, 0},
    {"info", reply_info, 0},
    {"distribute", cn_dist_start, 1},
};

static void cn_dispatch(const uint8_t *frame, size_t len, int from_dist_fd) {
    cn_arena a;
    cn_arena_init(&a);
    cn_term *t = NULL;
    cn_request r;
    cn_term_status s = cn_term_decode(frame, len, &a, &t);
    if (s != CN_TERM_OK || cn_request_parse(t, &r) != 0) {
        /* Without a sender and a reference there is no one to reply to but
         * the port owner; a malformed message from another node is dropped. */
        cn_term from, ref;
        cn_arena b;
        cn_arena_init(&b);
        if (cn_request_peek(frame, len, &b, &from, &ref) == 0) {
            cn_request pr = {&from, &ref, NULL, NULL, from_dist_fd < 0};
            cn_error e = {"malformed_request", s != CN_TERM_OK ? cn_term_status_name(s) : NULL};
            cn_reply_error(&pr, &e);
        } else if (from_dist_fd < 0) {
            cn_notice_error("malformed_request", s != CN_TERM_OK ? cn_term_status_name(s) : NULL);
        }
        cn_arena_free(&b);
        cn_arena_free(&a);
        return;
    }
    r.via_port = from_dist_fd < 0;
    for (size_t i = 0; i < sizeof handlers / sizeof *handlers; i++) {
        if (cn_term_is_atom(r.cmd, handlers[i].name)) {
            if (handlers[i].port_only && from_dist_fd >= 0) {
                break;
            }
            int64_t t0 = cn_now_ms();
            handlers[i].fn(&r);
            note_slow(handlers[i].name, t0);
            cn_arena_free(&a);
            return;
        }
    }
    ei_x_buff x;
    cn_reply_begin(&r, &x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "error");
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "unknown_command");
    ei_x_append_buf(&x, (const char *)r.cmd->raw, (int)r.cmd->raw_len);
    cn_reply_end(&r, &x);
    cn_arena_free(&a);
}

static void read_port(void) {
    static uint8_t buf[65536];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf);
    if (n < 0) {
        if (errno != EINTR && errno != EAGAIN) {
            g_stopping = 1;
        }
        return;
    }
    if (n == 0) {
        g_stopping = 1; /* the VM went away */
        return;
    }
    if (cn_frame_append(&g_in, buf, (size_t)n) != 0) {
        cn_notice_error("enomem", NULL);
        g_stopping = 1;
        return;
    }
    const uint8_t *frame;
    size_t len;
    uint64_t declared;
    cn_frame_status st;
    while (!g_stopping && (st = cn_frame_next(&g_in, &frame, &len, &declared)) != CN_FRAME_NONE) {
        if (st == CN_FRAME_TOO_BIG) {
            cn_refuse_too_big(frame, len, declared, 1);
        } else {
            cn_dispatch(frame, len, -1);
        }
    }
}

static void read_signals(void) {
    struct signalfd_siginfo si;
    for (;;) {
        ssize_t n = read(g_sigfd, &si, sizeof si);
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            break; /* EAGAIN: drained */
        }
        if (n != sizeof si) {
            break;
        }
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT || si.ssi_signo == SIGHUP) {
            g_stopping = 1;
        }
    }
    cn_child_reap();
}

static void usage(void) {
    fprintf(stderr, "usage: sandbox_cnode [--max-frame BYTES] [--audit-log PATH] "
                    "[--audit-private-dir] [--audit-max-bytes BYTES] [--audit-keep N] "
                    "[--containment auto|subreaper] [--landlock auto|off|ABI]\n");
    exit(2);
}

/* A poll array that grows with what there is to poll. */
static struct pollfd *g_fds;
static int g_fdcap;

static int reserve_fds(int n) {
    if (n <= g_fdcap) {
        return 0;
    }
    int cap = g_fdcap ? g_fdcap : 64;
    while (cap < n) {
        cap *= 2;
    }
    struct pollfd *f = realloc(g_fds, (size_t)cap * sizeof *f);
    if (!f) {
        return -1;
    }
    g_fds = f;
    g_fdcap = cap;
    return 0;
}

/* More descriptors for many jobs (four each); the children get the limit we
 * were started with back. */
static struct rlimit raise_nofile(void) {
    struct rlimit rl, orig = {RLIM_INFINITY, RLIM_INFINITY};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return orig;
    }
    orig = rl;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    return orig;
}

int main(int argc, char **argv) {
    size_t max_frame = CN_FRAME_DEFAULT_MAX;
    const char *audit_log = NULL;
    int audit_private = 0;
    int64_t audit_max = 64ll * 1024 * 1024;
    int audit_keep = 5;
    const char *env_contain = getenv("SANDBOX_CNODE_CONTAINMENT");
    int allow_cgroup = !(env_contain && strcmp(env_contain, "subreaper") == 0);
    int landlock_max = -1;
    if (cn_ll_setting_parse(getenv("SANDBOX_CNODE_LANDLOCK"), &landlock_max) != 0) {
        usage();
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--audit-private-dir") == 0) {
            audit_private = 1;
            continue;
        }
        if (i + 1 >= argc) {
            usage();
        }
        char *end;
        if (strcmp(argv[i], "--max-frame") == 0) {
            max_frame = strtoull(argv[++i], &end, 10);
            if (*end || max_frame < 64) {
                usage();
            }
        } else if (strcmp(argv[i], "--audit-log") == 0) {
            audit_log = argv[++i];
        } else if (strcmp(argv[i], "--audit-max-bytes") == 0) {
            audit_max = strtoll(argv[++i], &end, 10);
            if (*end || audit_max < 1) {
                usage();
            }
        } else if (strcmp(argv[i], "--audit-keep") == 0) {
            audit_keep = (int)strtol(argv[++i], &end, 10);
            if (*end || audit_keep < 0) {
                usage();
            }
        } else if (strcmp(argv[i], "--containment") == 0) {
            const char *m = argv[++i];
            if (strcmp(m, "subreaper") == 0) {
                allow_cgroup = 0;
            } else if (strcmp(m, "auto") != 0) {
                usage();
            }
        } else if (strcmp(argv[i], "--landlock") == 0) {
            if (cn_ll_setting_parse(argv[++i], &landlock_max) != 0) {
                usage();
            }
        } else {
            usage();
        }
    }

    g_self = getpid();
    /* Descendants that lose their parent (even after setsid) become ours;
     * with job leaders, that happens only when a leader itself was killed. */
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit nofile = raise_nofile();
    cn_child_init(g_self, &nofile);
    cn_routes routes = {port_send, port_notice, cn_dist_route};
    cn_reply_set_routes(&routes);
    cn_dist_set_handler(cn_dispatch);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    g_sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (g_sigfd < 0) {
        perror("signalfd");
        return 1;
    }
    fcntl(STDIN_FILENO, F_SETFD, FD_CLOEXEC);
    fcntl(STDOUT_FILENO, F_SETFD, FD_CLOEXEC);
    if (ei_init() != 0) {
        fprintf(stderr, "sandbox_cnode: ei_init failed\n");
        return 1;
    }
    cn_frame_init(&g_in, max_frame);
    cn_max_frame = max_frame;
    cn_contain_init(allow_cgroup);
    cn_landlock_init(landlock_max);
    if (audit_log && cn_audit_setup(audit_log, audit_max, audit_keep, audit_private) != 0) {
        fprintf(stderr, "sandbox_cnode: cannot set up the audit log %s\n", audit_log);
        return 1;
    }

    while (!g_stopping) {
        int need = 2 + cn_dist_pollfds_needed() + 1 + cn_child_pollfds_needed();
        if (reserve_fds(need) != 0) {
            perror("sandbox_cnode: poll array");
            break;
        }
        struct pollfd *fds = g_fds;
        int n = 0;
        fds[n++] = (struct pollfd){STDIN_FILENO, POLLIN, 0};
        fds[n++] = (struct pollfd){g_sigfd, POLLIN, 0};
        int d0 = n;
        n += cn_dist_pollfds(fds + n, need - n);
        int w0 = n;
        n += cn_watch_pollfds(fds + n, need - n);
        int c0 = n;
        n += cn_child_pollfds(fds + n, need - n);

        int64_t deadline = cn_deadline_min(cn_child_next_deadline(), cn_watch_next_deadline());
        int timeout = cn_poll_timeout(deadline, cn_now_ms(), 60000);
        int rc = poll(fds, (nfds_t)n, timeout);
        if (rc < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("poll");
            break;
        }
        if (fds[1].revents) {
            read_signals();
        }
        if (fds[0].revents) {
            read_port();
        }
        if (!g_stopping) {
            int64_t t0 = cn_now_ms();
            cn_dist_handle_poll(fds + d0, w0 - d0);
            note_slow("dist", t0);
            t0 = cn_now_ms();
            cn_watch_handle_poll(fds + w0, c0 - w0);
            cn_child_handle_poll(fds + c0, n - c0);
            cn_child_timers();
            cn_watch_timers();
            note_slow("jobs", t0);
        }
        cn_child_gc();
        /* One fsync for every audit line appended in this round. */
        int64_t t0 = cn_now_ms();
        cn_audit_round();
        note_slow("audit", t0);
    }
    cn_audit_round();
    cn_child_kill_all();
    cn_contain_stop();
    cn_watch_stop();
    cn_dist_stop();
    cn_audit_stop();
    cn_frame_free(&g_in);
    free(g_fds);
    close(g_sigfd);
    return 0;
}
