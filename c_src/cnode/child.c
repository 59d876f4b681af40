/* Spawning and supervising OS processes: pipes, process groups, limits,
 * timeouts, sampling from /proc, and the exit event. */
#define _GNU_SOURCE
#include <bsd/unistd.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cn_proc.h"
#include "cnode.h"

extern char **environ;

#define PROC_ROOT "/proc"
#define READ_CHUNK 65536

typedef struct child {
    struct child *next;
    int64_t id;
    pid_t pid;
    int in_fd, out_fd, err_fd;
    cn_dest sub;
    cn_limits limits;
    int64_t timeout_at;  /* -1: none */
    int64_t sample_ms;   /* interval */
    int64_t next_sample; /* -1: not sampling */
    int64_t grace_ms;
    int64_t kill_at; /* SIGKILL due; -1: none */
    const char *kill_reason;
    int *known; /* descendants seen at the last sample */
    size_t nknown;
    uint8_t *inq; /* stdin bytes not yet written */
    size_t inq_len;
    int close_in_after;
    int exited; /* reaped; the exit event waits for the leftovers to die */
    int status;
    struct rusage ru;
    int64_t exit_deadline; /* give up waiting for leftovers */
    int64_t recheck_at;    /* -1: none */
} child;

static child *g_children;
static int64_t g_next_id = (int64_t)1 << 40;
static long g_page_size;
static long g_clk_tck;

int cn_child_count(void) {
    int n = 0;
    for (child *c = g_children; c; c = c->next) {
        n++;
    }
    return n;
}

static child *find_id(int64_t id) {
    for (child *c = g_children; c; c = c->next) {
        if (c->id == id) {
            return c;
        }
    }
    return NULL;
}

static void close_fd(int *fd) {
    if (*fd >= 0) {
        close(*fd);
        *fd = -1;
    }
}

static int set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* The environment of the child: ours with the request's changes applied. */
static char **build_env(char **changes) {
    size_t n = 0, m = 0;
    for (char **e = environ; e && *e; e++) {
        n++;
    }
    for (char **e = changes; e && *e; e++) {
        m++;
    }
    char **env = calloc(n + m + 1, sizeof *env);
    if (!env) {
        return NULL;
    }
    size_t k = 0;
    for (char **e = environ; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        size_t kl = eq ? (size_t)(eq - *e) : strlen(*e);
        int replaced = 0;
        for (char **c = changes; c && *c; c++) {
            const char *ceq = strchr(*c, '=');
            size_t cl = ceq ? (size_t)(ceq - *c) : strlen(*c);
            if (cl == kl && strncmp(*c, *e, kl) == 0) {
                replaced = 1;
            }
        }
        if (!replaced) {
            env[k++] = *e;
        }
    }
    for (char **c = changes; c && *c; c++) {
        if (strchr(*c, '=')) {
            env[k++] = *c;
        }
    }
    env[k] = NULL;
    return env;
}

static rlim_t as_backstop(int64_t memory) {
    /* A BEAM reserves about 1 GB of address space at start: the address-space
     * limit only catches runaways well beyond the sampled resident limit. */
    uint64_t m = (uint64_t)memory;
    uint64_t a = 2 * m, b = m + (4ull << 30);
    return (rlim_t)(a > b ? a : b);
}

/* In the forked child: never returns. Only async-signal-safe calls. */
static void child_exec(const cn_spawn_req *req, char **env, int in_r, int out_w, int err_w,
                       int errpipe, pid_t parent) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) {
        _exit(127); /* the C-node died before the flag was set */
    }
    int err;
    if (dup2(in_r, 0) < 0 || dup2(out_w, 1) < 0 || dup2(err_w, 2) < 0) {
        goto fail;
    }
    /* The error pipe becomes fd 3, closed by exec; everything above goes. */
    if (errpipe != 3 && dup3(errpipe, 3, O_CLOEXEC) < 0) {
        goto fail;
    }
    closefrom(4);
    if (req->cd && chdir(req->cd) != 0) {
        goto fail;
    }
    struct rlimit rl = {0, 0};
    setrlimit(RLIMIT_CORE, &rl);
    if (req->limits.cpu_seconds >= 0) {
        rl.rlim_cur = (rlim_t)req->limits.cpu_seconds;
        rl.rlim_max = (rlim_t)req->limits.cpu_seconds + 1;
        if (setrlimit(RLIMIT_CPU, &rl) != 0) {
            goto fail;
        }
    }
    if (req->limits.file_size >= 0) {
        rl.rlim_cur = rl.rlim_max = (rlim_t)req->limits.file_size;
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0) {
            goto fail;
        }
    }
    if (req->limits.memory >= 0) {
        rl.rlim_cur = rl.rlim_max = as_backstop(req->limits.memory);
        setrlimit(RLIMIT_AS, &rl);
    }
    execvpe(req->argv[0], req->argv, env);
fail:
    err = errno;
    while (write(3, &err, sizeof err) < 0 && errno == EINTR) {
    }
    _exit(127);
}

static int pipe_cloexec(int p[2]) {
    return pipe2(p, O_CLOEXEC);
}

static int needs_sampling(const child *c) {
    return c->limits.memory >= 0 || c->limits.processes >= 0 || c->timeout_at >= 0;
}

void cn_child_spawn(const cn_request *r) {
    cn_spawn_req req;
    cn_error err;
    if (cn_spawn_parse(r->args, &req, &err) != 0) {
        cn_reply_error(r, &err);
        return;
    }
    if (req.id && find_id(req.id)) {
        cn_reply_error_atom(r, "id_in_use");
        cn_spawn_req_free(&req);
        return;
    }
    int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1}, ex[2] = {-1, -1};
    char **env = NULL;
    child *c = calloc(1, sizeof *c);
    if (!c || pipe_cloexec(in) || pipe_cloexec(out) || pipe_cloexec(errp) || pipe_cloexec(ex) ||
        !(env = build_env(req.env)) ||
        cn_dest_copy(&c->sub, req.subscriber ? req.subscriber : r->from) != 0) {
        int e = errno ? errno : ENOMEM;
        cn_reply_errno(r, "spawn_failed", e);
        goto cleanup;
    }
    pid_t pid = fork();
    if (pid < 0) {
        cn_reply_errno(r, "spawn_failed", errno);
        goto cleanup;
    }
    if (pid == 0) {
        close(in[1]);
        close(out[0]);
        close(errp[0]);
        close(ex[0]);
        child_exec(&req, env, in[0], out[1], errp[1], ex[1], cn_self);
    }
    setpgid(pid, pid); /* also done by the child: whichever runs first */
    close_fd(&in[0]);
    close_fd(&out[1]);
    close_fd(&errp[1]);
    close_fd(&ex[1]);
    int child_errno = 0;
    ssize_t got;
    do {
        got = read(ex[0], &child_errno, sizeof child_errno);
    } while (got < 0 && errno == EINTR);
    close_fd(&ex[0]);
    if (got == (ssize_t)sizeof child_errno) {
        /* exec failed: the child has exited with 127; reap it here */
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
        }
        cn_reply_errno(r, "spawn_failed", child_errno);
        goto cleanup;
    }
    set_nonblock(in[1]);
    set_nonblock(out[0]);
    set_nonblock(errp[0]);
    c->id = req.id ? req.id : g_next_id++;
    c->pid = pid;
    c->in_fd = in[1];
    c->out_fd = out[0];
    c->err_fd = errp[0];
    c->limits = req.limits;
    int64_t now = cn_now_ms();
    c->timeout_at = req.timeout_ms >= 0 ? now + req.timeout_ms : -1;
    c->sample_ms = req.sample_ms;
    c->grace_ms = req.grace_ms;
    c->kill_at = -1;
    c->recheck_at = -1;
    c->next_sample = needs_sampling(c) ? now : -1;
    c->next = g_children;
    g_children = c;

    ei_x_buff x;
    cn_reply_begin(r, &x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "ok");
    ei_x_encode_map_header(&x, 2);
    ei_x_encode_atom(&x, "id");
    ei_x_encode_longlong(&x, c->id);
    ei_x_encode_atom(&x, "os_pid");
    ei_x_encode_long(&x, pid);
    cn_reply_end(r, &x);
    free(env);
    cn_spawn_req_free(&req);
    return;

cleanup:
    close_fd(&in[0]);
    close_fd(&in[1]);
    close_fd(&out[0]);
    close_fd(&out[1]);
    close_fd(&errp[0]);
    close_fd(&errp[1]);
    close_fd(&ex[0]);
    close_fd(&ex[1]);
    if (c) {
        cn_dest_free(&c->sub);
        free(c);
    }
    free(env);
    cn_spawn_req_free(&req);
}

/* ---- process tree ---- */

/* A snapshot of the processes below the C-node itself: only those can be
 * ours to signal or count, whatever pids were remembered. */
typedef struct {
    cn_procstat *tab;
    size_t n;
} snapshot;

static int snapshot_take(snapshot *s) {
    cn_procstat *all;
    size_t n;
    s->tab = NULL;
    s->n = 0;
    if (cn_proc_scan(PROC_ROOT, &all, &n) != 0) {
        return -1;
    }
    int *sub = malloc((n ? n : 1) * sizeof *sub);
    cn_procstat *mine = malloc((n ? n : 1) * sizeof *mine);
    if (!sub || !mine) {
        free(all);
        free(sub);
        free(mine);
        return -1;
    }
    int root = cn_self;
    size_t k = cn_proc_descendants(all, n, &root, 1, sub);
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < k; j++) {
            if (all[i].pid == sub[j] && sub[j] != cn_self) {
                mine[m++] = all[i];
                break;
            }
        }
    }
    free(all);
    free(sub);
    s->tab = mine;
    s->n = m;
    return 0;
}

/* The child's tree in the snapshot: its own descendants, plus remembered
 * ones that were reparented to the C-node after their parent died. */
static size_t tree_of(const child *c, const snapshot *s, int *out) {
    size_t nroots = 1 + c->nknown;
    int *roots = malloc(nroots * sizeof *roots);
    if (!roots) {
        return 0;
    }
    roots[0] = c->pid;
    for (size_t i = 0; i < c->nknown; i++) {
        roots[1 + i] = c->known[i];
    }
    size_t n = cn_proc_descendants(s->tab, s->n, roots, nroots, out);
    free(roots);
    return n;
}

static void remember(child *c, const int *pids, size_t n) {
    int *k = realloc(c->known, (n ? n : 1) * sizeof *k);
    if (!k) {
        return;
    }
    memcpy(k, pids, n * sizeof *k);
    c->known = k;
    c->nknown = n;
}

/* Signals the child's process group and every process of its tree. */
static void signal_tree(child *c, int sig) {
    kill(-c->pid, sig);
    snapshot s;
    if (snapshot_take(&s) != 0) {
        return;
    }
    int *pids = malloc((s.n ? s.n : 1) * sizeof *pids);
    if (pids) {
        size_t n = tree_of(c, &s, pids);
        for (size_t i = 0; i < n; i++) {
            kill(pids[i], sig);
        }
        remember(c, pids, n);
        free(pids);
    }
    free(s.tab);
}

static void begin_kill(child *c, const char *reason) {
    if (c->kill_reason) {
        return;
    }
    c->kill_reason = reason;
    signal_tree(c, SIGTERM);
    c->kill_at = cn_now_ms() + c->grace_ms;
}

/* ---- events ---- */

static void send_output(child *c, const char *stream, const uint8_t *buf, size_t n) {
    ei_x_buff x;
    cn_event_begin(&x, c->id);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, stream);
    ei_x_encode_binary(&x, buf, (long)n);
    cn_send_raw(c->sub.raw, c->sub.len, &x);
    ei_x_free(&x);
}

/* Reads what is available; closes the fd at end of file. */
static void pump(child *c, int *fd, const char *stream) {
    static uint8_t buf[READ_CHUNK];
    for (int rounds = 0; *fd >= 0 && rounds < 16; rounds++) {
        ssize_t n = read(*fd, buf, sizeof buf);
        if (n > 0) {
            send_output(c, stream, buf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            return;
        }
        close_fd(fd);
    }
}

static void send_exit(child *c, int status, const struct rusage *ru) {
    ei_x_buff x;
    cn_event_begin(&x, c->id);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "exit");
    const char *limit = NULL;
    if (c->kill_reason && strcmp(c->kill_reason, "timeout") == 0) {
        ei_x_encode_atom(&x, "timeout");
    } else if (c->kill_reason) {
        limit = c->kill_reason;
    } else if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        double cpu = (double)ru->ru_utime.tv_sec + (double)ru->ru_stime.tv_sec +
                     (ru->ru_utime.tv_usec + ru->ru_stime.tv_usec) / 1e6;
        if (sig == SIGXCPU || (sig == SIGKILL && c->limits.cpu_seconds >= 0 &&
                               cpu >= (double)c->limits.cpu_seconds)) {
            limit = "cpu";
        } else if (sig == SIGXFSZ) {
            limit = "file_size";
        } else {
            ei_x_encode_tuple_header(&x, 2);
            ei_x_encode_atom(&x, "signal");
            ei_x_encode_long(&x, sig);
        }
    } else {
        ei_x_encode_tuple_header(&x, 2);
        ei_x_encode_atom(&x, "status");
        ei_x_encode_long(&x, WEXITSTATUS(status));
    }
    if (limit) {
        ei_x_encode_tuple_header(&x, 2);
        ei_x_encode_atom(&x, "limit");
        ei_x_encode_atom(&x, limit);
    }
    cn_send_raw(c->sub.raw, c->sub.len, &x);
    ei_x_free(&x);
}

static void unlink_child(child *c) {
    for (child **p = &g_children; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            return;
        }
    }
}

static void free_child(child *c) {
    close_fd(&c->in_fd);
    close_fd(&c->out_fd);
    close_fd(&c->err_fd);
    cn_dest_free(&c->sub);
    free(c->known);
    free(c->inq);
    free(c);
}

/* Whether anything the child left behind still exists (zombies included:
 * they are ours to reap). Cheap when the child was never sampled. */
static int leftovers(const child *c) {
    if (kill(-c->pid, 0) == 0) {
        return 1;
    }
    for (size_t i = 0; i < c->nknown; i++) {
        if (c->known[i] != c->pid && kill(c->known[i], 0) == 0) {
            return 1;
        }
    }
    return 0;
}

static void finish_exit(child *c) {
    pump(c, &c->out_fd, "stdout");
    pump(c, &c->err_fd, "stderr");
    send_exit(c, c->status, &c->ru);
    unlink_child(c);
    free_child(c);
}

/* The direct child is gone: whatever it left behind is killed; once that is
 * gone too, its output is delivered, then the exit event. */
static void child_exited(child *c, int status, const struct rusage *ru) {
    c->exited = 1;
    c->status = status;
    c->ru = *ru;
    c->timeout_at = c->kill_at = c->next_sample = -1;
    if (!leftovers(c)) {
        finish_exit(c);
        return;
    }
    signal_tree(c, SIGKILL);
    c->exit_deadline = cn_now_ms() + 5000;
    c->recheck_at = cn_now_ms() + 2;
}

void cn_child_reap(void) {
    for (;;) {
        int status;
        struct rusage ru;
        pid_t pid = wait4(-1, &status, WNOHANG, &ru);
        if (pid < 0 && errno == EINTR) {
            continue;
        }
        if (pid <= 0) {
            return;
        }
        for (child *c = g_children; c; c = c->next) {
            if (c->pid == pid && !c->exited) {
                child_exited(c, status, &ru);
                break;
            }
        }
        /* anything else is an orphaned descendant that came to us */
    }
}

/* ---- poll ---- */

int cn_child_pollfds(struct pollfd *fds, int max) {
    int n = 0;
    for (child *c = g_children; c && n + 3 <= max; c = c->next) {
        if (c->out_fd >= 0) {
            fds[n++] = (struct pollfd){c->out_fd, POLLIN, 0};
        }
        if (c->err_fd >= 0) {
            fds[n++] = (struct pollfd){c->err_fd, POLLIN, 0};
        }
        if (c->in_fd >= 0 && c->inq_len > 0) {
            fds[n++] = (struct pollfd){c->in_fd, POLLOUT, 0};
        }
    }
    return n;
}

static void flush_stdin(child *c) {
    while (c->in_fd >= 0 && c->inq_len > 0) {
        ssize_t w = write(c->in_fd, c->inq, c->inq_len);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                return;
            }
            /* EPIPE: the child closed its stdin; the rest is dropped */
            c->inq_len = 0;
            close_fd(&c->in_fd);
            return;
        }
        memmove(c->inq, c->inq + w, c->inq_len - (size_t)w);
        c->inq_len -= (size_t)w;
    }
    if (c->inq_len == 0 && c->close_in_after) {
        close_fd(&c->in_fd);
    }
}

void cn_child_handle_poll(struct pollfd *fds, int n) {
    /* A pollfd may be stale (its child gone, the fd number reused): only
     * what read/write actually return is acted on. */
    for (int i = 0; i < n; i++) {
        if (!fds[i].revents) {
            continue;
        }
        for (child *c = g_children; c; c = c->next) {
            if (fds[i].fd == c->out_fd) {
                pump(c, &c->out_fd, "stdout");
                break;
            }
            if (fds[i].fd == c->err_fd) {
                pump(c, &c->err_fd, "stderr");
                break;
            }
            if (fds[i].fd == c->in_fd) {
                flush_stdin(c);
                break;
            }
        }
    }
}

/* ---- timers and sampling ---- */

int64_t cn_child_next_deadline(void) {
    int64_t d = -1;
    for (child *c = g_children; c; c = c->next) {
        int64_t t[4] = {c->timeout_at, c->kill_at, c->next_sample, c->recheck_at};
        for (int i = 0; i < 4; i++) {
            if (t[i] >= 0 && (d < 0 || t[i] < d)) {
                d = t[i];
            }
        }
    }
    return d;
}

static void sample_child(child *c, const snapshot *s) {
    int *pids = malloc((s->n ? s->n : 1) * sizeof *pids);
    if (!pids) {
        return;
    }
    size_t n = tree_of(c, s, pids);
    int64_t rss = 0, procs = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < s->n; j++) {
            if (s->tab[j].pid == pids[i]) {
                if (s->tab[j].state != 'Z') {
                    rss += s->tab[j].rss_pages * g_page_size;
                    procs++;
                }
                break;
            }
        }
    }
    remember(c, pids, n);
    free(pids);
    if (c->limits.memory >= 0 && rss > c->limits.memory) {
        begin_kill(c, "memory");
    } else if (c->limits.processes >= 0 && procs > c->limits.processes) {
        begin_kill(c, "processes");
    }
}

void cn_child_timers(void) {
    int64_t now = cn_now_ms();
    snapshot s = {NULL, 0};
    int have = 0;
    for (child *c = g_children, *next; c; c = next) {
        next = c->next;
        if (c->exited) {
            if (c->recheck_at >= 0 && c->recheck_at <= now) {
                if (!leftovers(c) || now >= c->exit_deadline) {
                    finish_exit(c);
                } else {
                    kill(-c->pid, SIGKILL);
                    c->recheck_at = now + 2;
                }
            }
            continue;
        }
        if (c->next_sample >= 0 && c->next_sample <= now && !c->kill_reason) {
            if (!have) {
                have = snapshot_take(&s) == 0;
            }
            if (have) {
                sample_child(c, &s);
            }
            /* on a grid, so that children with the same interval share one scan */
            c->next_sample = (now / c->sample_ms + 1) * c->sample_ms;
        } else if (c->kill_reason) {
            c->next_sample = -1;
        }
        if (c->timeout_at >= 0 && c->timeout_at <= now) {
            c->timeout_at = -1;
            begin_kill(c, "timeout");
        }
        if (c->kill_at >= 0 && c->kill_at <= now) {
            c->kill_at = -1;
            signal_tree(c, SIGKILL);
        }
    }
    free(s.tab);
}

/* ---- commands on a running child ---- */

static child *child_arg(const cn_request *r) {
    int64_t id;
    if (cn_int_opt(cn_term_get(r->args, "id"), 1, 0, &id) != 0) {
        cn_error e = {"bad_option", "id"};
        cn_reply_error(r, &e);
        return NULL;
    }
    child *c = find_id(id);
    if (!c || c->exited) {
        c = NULL;
        cn_reply_error_atom(r, "not_found");
    }
    return c;
}

void cn_child_write_stdin(const cn_request *r) {
    child *c = child_arg(r);
    if (!c) {
        return;
    }
    const cn_term *d = cn_term_get(r->args, "data");
    if (!d || (d->type != CN_T_BINARY && d->type != CN_T_STRING &&
               !(d->type == CN_T_LIST && d->u.c.n == 0))) {
        cn_error e = {"bad_option", "data"};
        cn_reply_error(r, &e);
        return;
    }
    if (c->in_fd < 0 || c->close_in_after) {
        cn_reply_error_atom(r, "closed");
        return;
    }
    size_t n = d->type == CN_T_LIST ? 0 : d->u.s.n;
    if (n) {
        uint8_t *q = realloc(c->inq, c->inq_len + n);
        if (!q) {
            cn_reply_error_atom(r, "enomem");
            return;
        }
        memcpy(q + c->inq_len, d->u.s.p, n);
        c->inq = q;
        c->inq_len += n;
        flush_stdin(c);
    }
    cn_reply_ok(r);
}

void cn_child_close_stdin(const cn_request *r) {
    child *c = child_arg(r);
    if (!c) {
        return;
    }
    c->close_in_after = 1;
    flush_stdin(c);
    if (c->inq_len == 0) {
        close_fd(&c->in_fd);
    }
    cn_reply_ok(r);
}

static int set_rlimit(pid_t pid, int resource, int64_t soft, int64_t hard) {
    struct rlimit rl;
    rl.rlim_cur = soft < 0 ? RLIM_INFINITY : (rlim_t)soft;
    rl.rlim_max = hard < 0 ? RLIM_INFINITY : (rlim_t)hard;
    return prlimit(pid, resource, &rl, NULL);
}

void cn_child_set_limits(const cn_request *r) {
    child *c = child_arg(r);
    if (!c) {
        return;
    }
    cn_limits l = c->limits;
    cn_error err;
    const cn_term *lt = cn_term_get(r->args, "limits");
    if (cn_limits_parse(lt, &l, &err) != 0) {
        cn_reply_error(r, &err);
        return;
    }
    if (cn_term_get(lt, "cpu_seconds")) {
        int64_t soft = -1, hard = -1;
        if (l.cpu_seconds >= 0) {
            cn_procstat st;
            if (cn_proc_read_stat(PROC_ROOT, c->pid, &st) != 0) {
                cn_reply_errno(r, "prlimit", ESRCH);
                return;
            }
            /* relative to the CPU time already used, rounded up */
            int64_t used =
                (int64_t)((st.utime + st.stime + (uint64_t)g_clk_tck - 1) / (uint64_t)g_clk_tck);
            soft = used + l.cpu_seconds;
            hard = soft + 1;
        }
        if (set_rlimit(c->pid, RLIMIT_CPU, soft, hard) != 0) {
            cn_reply_errno(r, "prlimit", errno);
            return;
        }
    }
    if (cn_term_get(lt, "file_size") &&
        set_rlimit(c->pid, RLIMIT_FSIZE, l.file_size, l.file_size) != 0) {
        cn_reply_errno(r, "prlimit", errno);
        return;
    }
    if (cn_term_get(lt, "memory") && l.memory >= 0) {
        rlim_t b = as_backstop(l.memory);
        /* best effort: the sampled limit is what counts */
        set_rlimit(c->pid, RLIMIT_AS, (int64_t)b, (int64_t)b);
    }
    c->limits = l;
    if (needs_sampling(c) && c->next_sample < 0 && !c->kill_reason) {
        c->next_sample = cn_now_ms();
    }
    cn_reply_ok(r);
}

void cn_child_kill(const cn_request *r) {
    child *c = child_arg(r);
    if (!c) {
        return;
    }
    const cn_term *st = cn_term_get(r->args, "signal");
    int sig = st ? cn_signal_parse(st) : SIGKILL;
    if (sig < 0) {
        cn_error e = {"bad_option", "signal"};
        cn_reply_error(r, &e);
        return;
    }
    if (kill(-c->pid, sig) != 0 && errno != ESRCH) {
        cn_reply_errno(r, "kill", errno);
        return;
    }
    cn_reply_ok(r);
}

/* ---- sample ---- */

static void encode_stats(ei_x_buff *x, const cn_procstat *st, int with_io) {
    cn_procio io;
    int have_io = with_io && cn_proc_read_io(PROC_ROOT, st->pid, &io) == 0;
    int n = 8 + (have_io ? 2 : 0);
    ei_x_encode_map_header(x, n);
    ei_x_encode_atom(x, "cpu_user");
    ei_x_encode_double(x, (double)st->utime / (double)g_clk_tck);
    ei_x_encode_atom(x, "cpu_system");
    ei_x_encode_double(x, (double)st->stime / (double)g_clk_tck);
    ei_x_encode_atom(x, "rss");
    ei_x_encode_longlong(x, st->rss_pages * g_page_size);
    ei_x_encode_atom(x, "vsize");
    ei_x_encode_ulonglong(x, st->vsize);
    ei_x_encode_atom(x, "threads");
    ei_x_encode_longlong(x, st->num_threads);
    ei_x_encode_atom(x, "state");
    ei_x_encode_atom(x, cn_proc_state_name(st->state));
    ei_x_encode_atom(x, "ppid");
    ei_x_encode_long(x, st->ppid);
    ei_x_encode_atom(x, "pgrp");
    ei_x_encode_long(x, st->pgrp);
    if (have_io) {
        ei_x_encode_atom(x, "read_bytes");
        ei_x_encode_longlong(x, io.read_bytes >= 0 ? io.read_bytes : io.rchar);
        ei_x_encode_atom(x, "write_bytes");
        ei_x_encode_longlong(x, io.write_bytes >= 0 ? io.write_bytes : io.wchar);
    }
}

void cn_child_sample(const cn_request *r) {
    const cn_term *pids = cn_term_get(r->args, "pids");
    const cn_term *desc = cn_term_get(r->args, "descendants");
    int with_desc = cn_term_is_atom(desc, "true");
    if (!pids || (pids->type != CN_T_LIST && pids->type != CN_T_STRING)) {
        cn_error e = {"bad_option", "pids"};
        cn_reply_error(r, &e);
        return;
    }
    size_t np = pids->type == CN_T_STRING ? pids->u.s.n : pids->u.c.n;
    int *want = malloc((np ? np : 1) * sizeof *want);
    if (!want) {
        cn_reply_error_atom(r, "enomem");
        return;
    }
    for (size_t i = 0; i < np; i++) {
        int64_t v;
        if (pids->type == CN_T_STRING) {
            v = pids->u.s.p[i];
        } else if (cn_int_opt(&pids->u.c.items[i], 1, 0, &v) != 0 || v > INT32_MAX) {
            free(want);
            cn_error e = {"bad_option", "pids"};
            cn_reply_error(r, &e);
            return;
        }
        want[i] = (int)v;
    }
    cn_procstat *all = NULL;
    size_t nall = 0;
    if (with_desc && cn_proc_scan(PROC_ROOT, &all, &nall) != 0) {
        nall = 0;
    }
    ei_x_buff x;
    cn_reply_begin(r, &x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "ok");
    /* count the pids that exist first: a map header comes before its pairs */
    cn_procstat *sts = malloc((np ? np : 1) * sizeof *sts);
    int *present = calloc(np ? np : 1, sizeof *present);
    size_t count = 0;
    for (size_t i = 0; sts && present && i < np; i++) {
        int dup = 0;
        for (size_t j = 0; j < i; j++) {
            dup |= want[j] == want[i];
        }
        if (!dup && cn_proc_read_stat(PROC_ROOT, want[i], &sts[i]) == 0) {
            present[i] = 1;
            count++;
        }
    }
    ei_x_encode_map_header(&x, (long)count);
    int *tree = malloc((nall ? nall : 1) * sizeof *tree);
    for (size_t i = 0; sts && present && i < np; i++) {
        if (!present[i]) {
            continue;
        }
        ei_x_encode_long(&x, want[i]);
        if (!with_desc || !tree) {
            encode_stats(&x, &sts[i], 1);
            continue;
        }
        size_t nt = cn_proc_descendants(all, nall, &want[i], 1, tree);
        ei_x_encode_map_header(&x, 3);
        ei_x_encode_atom(&x, "self");
        encode_stats(&x, &sts[i], 1);
        ei_x_encode_atom(&x, "descendants");
        ei_x_encode_map_header(&x, nt > 0 ? (long)nt - 1 : 0);
        double user = 0, sys = 0;
        int64_t rss = 0, threads = 0, procs = 0;
        for (size_t k = 0; k < nt; k++) {
            for (size_t j = 0; j < nall; j++) {
                if (all[j].pid != tree[k]) {
                    continue;
                }
                if (tree[k] != want[i]) {
                    ei_x_encode_long(&x, tree[k]);
                    encode_stats(&x, &all[j], 0);
                }
                user += (double)all[j].utime / (double)g_clk_tck;
                sys += (double)all[j].stime / (double)g_clk_tck;
                rss += all[j].rss_pages * g_page_size;
                threads += all[j].num_threads;
                procs++;
                break;
            }
        }
        ei_x_encode_atom(&x, "total");
        ei_x_encode_map_header(&x, 5);
        ei_x_encode_atom(&x, "cpu_user");
        ei_x_encode_double(&x, user);
        ei_x_encode_atom(&x, "cpu_system");
        ei_x_encode_double(&x, sys);
        ei_x_encode_atom(&x, "rss");
        ei_x_encode_longlong(&x, rss);
        ei_x_encode_atom(&x, "threads");
        ei_x_encode_longlong(&x, threads);
        ei_x_encode_atom(&x, "processes");
        ei_x_encode_longlong(&x, procs);
    }
    cn_reply_end(r, &x);
    free(tree);
    free(sts);
    free(present);
    free(all);
    free(want);
}

/* ---- shutdown ---- */

/* Kills every descendant (by SIGKILL, repeatedly, since a process may fork
 * while it is being killed) and reaps them all. */
void cn_child_kill_all(void) {
    for (child *c = g_children; c; c = c->next) {
        kill(-c->pid, SIGKILL);
    }
    for (int round = 0; round < 1000; round++) {
        snapshot s;
        if (snapshot_take(&s) != 0) {
            break;
        }
        size_t live = 0;
        for (size_t i = 0; i < s.n; i++) {
            kill(s.tab[i].pid, SIGKILL);
            live += s.tab[i].state != 'Z';
        }
        size_t total = s.n;
        free(s.tab);
        for (;;) {
            pid_t p = waitpid(-1, NULL, WNOHANG);
            if (p > 0 || (p < 0 && errno == EINTR)) {
                continue;
            }
            break;
        }
        if (total == 0) {
            break;
        }
        if (live == 0 || round > 0) {
            /* wait for the next death rather than spin */
            struct timespec ts = {0, 2 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    while (g_children) {
        child *c = g_children;
        g_children = c->next;
        free_child(c);
    }
}

__attribute__((constructor)) static void child_init(void) {
    g_page_size = sysconf(_SC_PAGESIZE);
    g_clk_tck = sysconf(_SC_CLK_TCK);
}
