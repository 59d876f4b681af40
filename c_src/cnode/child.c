/* Jobs: spawning and supervising OS processes through their leaders (see
 * leader.c), pipes, limits, timeouts, sampling, and the exit event.
 *
 * The C-node forks a leader per job, which forks the command. The leader is
 * a subreaper, so the job's tree is exactly the leader's descendants in
 * /proc (and, with containment by cgroup, the members of the job's
 * cgroup): no pid is remembered across samples, none is probed after it
 * was reaped. The job ends when its leader exits: the leader has then
 * killed and reaped everything the command left behind. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "child.h"
#include "cn_limits.h"
#include "cn_proc.h"
#include "cn_time.h"
#include "contain.h"
#include "landlock.h"
#include "leader.h"
#include "reply.h"

extern char **environ;

#define PROC_ROOT "/proc"
#define READ_CHUNK 65536
/* After a leader died without its report: how long to wait for what it left. */
#define ORPHAN_WAIT_MS 5000
#define RECHECK_MS 5

typedef struct job {
    struct job *next;
    int64_t id;
    pid_t leader; /* our child */
    pid_t pid;    /* the command, the leader's child */
    int in_fd, out_fd, err_fd, rep_fd;
    cn_dest sub;
    cn_joblimits lim;
    cn_cgjob cg;
    int64_t timeout_at;  /* -1: none */
    int64_t sample_ms;   /* interval */
    int64_t next_sample; /* -1: not sampling */
    int64_t grace_ms;
    int64_t kill_at; /* SIGKILL due; -1: none */
    const char *kill_reason;
    uint8_t *inq; /* stdin bytes not yet written */
    size_t inq_len;
    int close_in_after;
    int leader_done; /* the leader was reaped */
    int have_status; /* the command's status is known */
    int status;      /* the command's wait status */
    int64_t cpu_us;  /* the command's CPU time */
    int leader_status;
    int64_t orphan_deadline; /* after an abnormal leader exit */
    int64_t recheck_at;      /* -1: none */
    int finished;            /* the exit event went out; freed by cn_child_gc */
} job;

static job *g_jobs;
static job *g_dead; /* finished in this round */
static int64_t g_next_id = (int64_t)1 << 40;
static long g_page_size;
static long g_clk_tck;
static pid_t g_self;
static struct rlimit g_nofile = {RLIM_INFINITY, RLIM_INFINITY};

void cn_child_init(pid_t self, const struct rlimit *nofile) {
    g_self = self;
    g_nofile = *nofile;
}

int cn_child_count(void) {
    int n = 0;
    for (job *j = g_jobs; j; j = j->next) {
        n++;
    }
    return n;
}

static job *find_id(int64_t id) {
    for (job *j = g_jobs; j; j = j->next) {
        if (j->id == id) {
            return j;
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

/* Moves a descriptor of ours to 1024 or above: libei waits on its epmd
 * sockets with select(), which cannot take descriptors from FD_SETSIZE on,
 * so the low numbers are kept for it however many jobs run. */
static int high_fd(int fd) {
    int h = fcntl(fd, F_DUPFD_CLOEXEC, 1024);
    if (h < 0) {
        return fd;
    }
    close(fd);
    return h;
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

static int needs_sampling(const job *j) {
    return j->lim.limits.memory >= 0 || j->lim.limits.processes >= 0 || j->timeout_at >= 0;
}

/* Reads the exec pipe to its end: the command's pid, or why it did not run. */
static void read_exec_records(int fd, pid_t *pid, int *err, int *cgroup_err, int *ll_err) {
    cn_exrec buf[4];
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, (char *)buf + have, sizeof buf - have);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        have += (size_t)n;
        size_t whole = have / sizeof *buf;
        for (size_t i = 0; i < whole; i++) {
            if (buf[i].kind == CN_EXREC_PID) {
                *pid = buf[i].value;
            } else if (buf[i].kind == CN_EXREC_ERRNO) {
                *err = buf[i].value ? buf[i].value : EIO;
            } else if (buf[i].kind == CN_EXREC_CGROUP_ERRNO) {
                *cgroup_err = buf[i].value ? buf[i].value : EIO;
            } else if (buf[i].kind == CN_EXREC_LANDLOCK_ERRNO) {
                *ll_err = buf[i].value ? buf[i].value : EIO;
            }
        }
        memmove(buf, buf + whole, have - whole * sizeof *buf);
        have -= whole * sizeof *buf;
    }
}

static void reap_blocking(pid_t pid) {
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
}

void cn_child_spawn(const cn_request *r) {
    cn_spawn_req req;
    cn_error err;
    if (cn_spawn_parse(r->args, &req, &err) != 0) {
        cn_reply_error(r, &err);
        return;
    }
    cn_limits_plan plan;
    if (cn_limits_at_spawn(&req.limits, &req.ceiling, &plan, &err) != 0) {
        cn_reply_error(r, &err);
        cn_spawn_req_free(&req);
        return;
    }
    if (req.id && find_id(req.id)) {
        cn_reply_error_atom(r, "id_in_use");
        cn_spawn_req_free(&req);
        return;
    }
    int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1}, ex[2] = {-1, -1},
        rep[2] = {-1, -1};
    int ll_fd = -1;
    cn_ll_plan ll_plan;
    memset(&ll_plan, 0, sizeof ll_plan);
    if (req.landlock) {
        int ll_errno;
        if (cn_landlock_build(req.landlock, &ll_fd, &ll_plan, &err, &ll_errno) != 0) {
            if (ll_errno) {
                cn_reply_errno(r, err.reason, ll_errno);
            } else {
                cn_reply_error(r, &err);
            }
            cn_spawn_req_free(&req);
            return;
        }
    }
    char **env = NULL;
    int64_t id = req.id ? req.id : g_next_id++;
    job *j = calloc(1, sizeof *j);
    if (j) {
        cn_cgjob_init(&j->cg);
    }
    errno = 0;
    if (!j || pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(errp, O_CLOEXEC) ||
        pipe2(ex, O_CLOEXEC) || pipe2(rep, O_CLOEXEC) || !(env = build_env(req.env)) ||
        cn_dest_copy(&j->sub, req.subscriber ? req.subscriber : r->from, r->via_port) != 0) {
        int e = errno ? errno : ENOMEM;
        cn_reply_errno(r, "spawn_failed", e);
        goto cleanup;
    }
    int cge = cn_cgjob_create(&j->cg, id);
    if (cge) {
        cn_error ce = {"spawn_failed", "cgroup"};
        (void)cge;
        cn_reply_error(r, &ce);
        goto cleanup;
    }
    cn_leader_args la = {
        .in_r = in[0],
        .out_w = out[1],
        .err_w = errp[1],
        .ex_w = ex[1],
        .rep_w = rep[1],
        .cg_dir = j->cg.dir_fd,
        .cg_kill = j->cg.kill_fd,
        .cg_base = cn_cgjob_active(&j->cg) ? cn_contain_base_fd() : -1,
        .ll_fd = ll_fd,
        .ll_proc_self =
            req.landlock && req.landlock->proc_self ? cn_ll_access(CN_LL_READ, ll_plan.abi, 1) : 0,
        .cg_name = j->cg.name,
        .cnode = g_self,
        .argv = req.argv,
        .env = env,
        .cd = req.cd,
        .rl = plan,
        .nofile = g_nofile,
    };
    pid_t leader = fork();
    if (leader < 0) {
        cn_reply_errno(r, "spawn_failed", errno);
        goto cleanup;
    }
    if (leader == 0) {
        cn_leader_run(&la);
    }
    close_fd(&in[0]);
    close_fd(&out[1]);
    close_fd(&errp[1]);
    close_fd(&ex[1]);
    close_fd(&rep[1]);
    close_fd(&ll_fd);
    pid_t pid = 0;
    int exec_err = 0, cg_err = 0, ll_err = 0;
    read_exec_records(ex[0], &pid, &exec_err, &cg_err, &ll_err);
    close_fd(&ex[0]);
    if (pid <= 0 || exec_err || cg_err || ll_err) {
        /* the command did not start: its leader exits at once */
        reap_blocking(leader);
        if (cg_err) {
            cn_error ce = {"spawn_failed", "cgroup"};
            cn_reply_error(r, &ce);
        } else if (ll_err) {
            cn_reply_errno(r, "landlock", ll_err);
        } else {
            cn_reply_errno(r, "spawn_failed", exec_err ? exec_err : EIO);
        }
        goto cleanup;
    }
    j->id = id;
    j->leader = leader;
    j->pid = pid;
    j->in_fd = high_fd(in[1]);
    j->out_fd = high_fd(out[0]);
    j->err_fd = high_fd(errp[0]);
    j->rep_fd = high_fd(rep[0]);
    set_nonblock(j->in_fd);
    set_nonblock(j->out_fd);
    set_nonblock(j->err_fd);
    set_nonblock(j->rep_fd);
    j->lim = plan.result;
    int64_t now = cn_now_ms();
    j->timeout_at = cn_deadline_add(now, req.timeout_ms);
    j->sample_ms = req.sample_ms;
    j->grace_ms = req.grace_ms;
    j->kill_at = -1;
    j->recheck_at = -1;
    j->next_sample = needs_sampling(j) ? now : -1;
    j->next = g_jobs;
    g_jobs = j;

    ei_x_buff x;
    cn_reply_begin(r, &x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "ok");
    ei_x_encode_map_header(&x, req.landlock ? 3 : 2);
    ei_x_encode_atom(&x, "id");
    ei_x_encode_longlong(&x, j->id);
    ei_x_encode_atom(&x, "os_pid");
    ei_x_encode_long(&x, pid);
    if (req.landlock) {
        /* what the ruleset enforces, and what this ABI could not */
        ei_x_encode_atom(&x, "landlock");
        ei_x_encode_map_header(&x, 2);
        ei_x_encode_atom(&x, "abi");
        ei_x_encode_long(&x, ll_plan.abi);
        ei_x_encode_atom(&x, "missing");
        cn_landlock_encode_missing(&x, ll_plan.missing);
    }
    cn_reply_end(r, &x);
    free(env);
    cn_spawn_req_free(&req);
    return;

cleanup:
    close_fd(&ll_fd);
    close_fd(&in[0]);
    close_fd(&in[1]);
    close_fd(&out[0]);
    close_fd(&out[1]);
    close_fd(&errp[0]);
    close_fd(&errp[1]);
    close_fd(&ex[0]);
    close_fd(&ex[1]);
    close_fd(&rep[0]);
    close_fd(&rep[1]);
    if (j) {
        cn_cgjob_remove(&j->cg);
        cn_dest_free(&j->sub);
        free(j);
    }
    free(env);
    cn_spawn_req_free(&req);
}

/* ---- process trees ---- */

typedef struct {
    cn_procstat *tab;
    size_t n;
} snapshot;

static int snapshot_take(snapshot *s) {
    s->tab = NULL;
    s->n = 0;
    return cn_proc_scan(PROC_ROOT, &s->tab, &s->n);
}

/* The indices of the job's tree in the snapshot, its leader left out
 * (room for s->n). */
static size_t job_tree(const job *j, const snapshot *s, size_t *idx) {
    int root = j->leader;
    size_t k = cn_proc_descendants_idx(s->tab, s->n, &root, 1, idx);
    size_t m = 0;
    for (size_t i = 0; i < k; i++) {
        if (s->tab[idx[i]].pid != j->leader) {
            idx[m++] = idx[i];
        }
    }
    return m;
}

/* Signals every process of the job's tree (not its leader): the pids that
 * got it in *out (malloc'd, may hold duplicates of none), their number
 * returned. The tree is the leader's descendants in /proc, and with a
 * cgroup also the cgroup's members; SIGKILL then goes through cgroup.kill
 * as well, which catches processes forked while the signal is being sent. */
static size_t signal_job(job *j, int sig, int **out) {
    if (out) {
        *out = NULL;
    }
    if (j->leader_done) {
        return 0;
    }
    snapshot s;
    if (snapshot_take(&s) != 0) {
        s.tab = NULL;
        s.n = 0;
    }
    int *members = NULL;
    long nm = cn_cgjob_active(&j->cg) ? cn_cgjob_procs(&j->cg, &members) : 0;
    if (nm < 0) {
        nm = 0;
    }
    size_t room = s.n + (size_t)nm + 1;
    size_t *idx = malloc(room * sizeof *idx);
    int *pids = malloc(room * sizeof *pids);
    size_t n = 0, done = 0;
    if (idx && pids) {
        size_t k = job_tree(j, &s, idx);
        for (size_t i = 0; i < k; i++) {
            pids[n++] = s.tab[idx[i]].pid;
        }
        for (long i = 0; i < nm; i++) {
            int dup = 0;
            for (size_t t = 0; t < k && !dup; t++) {
                dup = pids[t] == members[i];
            }
            if (!dup && members[i] != j->leader) {
                pids[n++] = members[i];
            }
        }
        if (sig == SIGKILL && cn_cgjob_active(&j->cg)) {
            cn_cgjob_kill(&j->cg);
        }
        /* deepest first: the command last, so that its leader does not start
         * killing (and reaping) the rest while we are still signalling it */
        for (size_t i = n; i-- > 0;) {
            /* a member already taken by cgroup.kill got the signal too */
            int ok = kill(pids[i], sig) == 0 || (sig == SIGKILL && cn_cgjob_active(&j->cg));
            if (!ok) {
                pids[i] = 0;
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (pids[i] != 0) {
                pids[done++] = pids[i];
            }
        }
    } else if (sig == SIGKILL) {
        cn_cgjob_kill(&j->cg);
    }
    free(idx);
    free(members);
    free(s.tab);
    if (out) {
        *out = pids;
    } else {
        free(pids);
    }
    return done;
}

static void begin_kill(job *j, const char *reason) {
    if (j->kill_reason) {
        return;
    }
    j->kill_reason = reason;
    signal_job(j, SIGTERM, NULL);
    j->kill_at = cn_deadline_add(cn_now_ms(), j->grace_ms);
}

/* ---- events ---- */

static void send_output(job *j, const char *stream, const uint8_t *buf, size_t n) {
    ei_x_buff x;
    cn_event_begin(&x, j->id);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, stream);
    ei_x_encode_binary(&x, buf, (long)n);
    cn_send_raw(j->sub.raw, j->sub.len, j->sub.via_port, &x);
    ei_x_free(&x);
}

/* Reads what is available; closes the fd at end of file. */
static void pump(job *j, int *fd, const char *stream) {
    static uint8_t buf[READ_CHUNK];
    for (int rounds = 0; *fd >= 0 && rounds < 16; rounds++) {
        ssize_t n = read(*fd, buf, sizeof buf);
        if (n > 0) {
            send_output(j, stream, buf, (size_t)n);
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

static void send_exit(job *j) {
    int status = j->have_status ? j->status : j->leader_status;
    ei_x_buff x;
    cn_event_begin(&x, j->id);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "exit");
    const char *limit = NULL;
    if (j->kill_reason && strcmp(j->kill_reason, "timeout") == 0) {
        ei_x_encode_atom(&x, "timeout");
    } else if (j->kill_reason) {
        limit = j->kill_reason;
    } else if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        int64_t cpu_limit = j->lim.limits.cpu_seconds;
        if (sig == SIGXCPU || (sig == SIGKILL && cpu_limit >= 0 && j->have_status &&
                               j->cpu_us >= cn_sat_mul(cpu_limit, 1000000))) {
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
    cn_send_raw(j->sub.raw, j->sub.len, j->sub.via_port, &x);
    ei_x_free(&x);
}

static void unlink_job(job *j) {
    for (job **p = &g_jobs; *p; p = &(*p)->next) {
        if (*p == j) {
            *p = j->next;
            return;
        }
    }
}

static void free_job(job *j) {
    close_fd(&j->in_fd);
    close_fd(&j->out_fd);
    close_fd(&j->err_fd);
    close_fd(&j->rep_fd);
    cn_cgjob_remove(&j->cg);
    cn_dest_free(&j->sub);
    free(j->inq);
    free(j);
}

/* The job is over: its output, then the exit event. The job is freed at
 * the end of the round (a poll entry may still point at it). */
static void finish(job *j) {
    pump(j, &j->out_fd, "stdout");
    pump(j, &j->err_fd, "stderr");
    /* the tree is gone: so goes its cgroup, before anyone hears of the end */
    cn_cgjob_remove(&j->cg);
    send_exit(j);
    j->finished = 1;
    j->timeout_at = j->kill_at = j->next_sample = j->recheck_at = -1;
    unlink_job(j);
    j->next = g_dead;
    g_dead = j;
}

void cn_child_gc(void) {
    while (g_dead) {
        job *j = g_dead;
        g_dead = j->next;
        free_job(j);
    }
}

static int is_live_leader(int pid) {
    for (job *j = g_jobs; j; j = j->next) {
        if (j->leader == pid && !j->leader_done) {
            return 1;
        }
    }
    return 0;
}

/* SIGKILL to every process below the C-node that no live leader holds: what
 * a leader that died without cleaning up (SIGKILLed by its own job) left.
 * Returns how many of them are still running (zombies are ours to reap). */
static size_t kill_orphans(void) {
    snapshot s;
    if (snapshot_take(&s) != 0) {
        return 0;
    }
    int *roots = malloc((s.n ? s.n : 1) * sizeof *roots);
    size_t *idx = malloc((s.n ? s.n : 1) * sizeof *idx);
    size_t nroots = 0, live = 0;
    if (roots && idx) {
        for (size_t i = 0; i < s.n; i++) {
            if (s.tab[i].ppid == g_self && !is_live_leader(s.tab[i].pid)) {
                roots[nroots++] = s.tab[i].pid;
            }
        }
        size_t k = cn_proc_descendants_idx(s.tab, s.n, roots, nroots, idx);
        for (size_t i = 0; i < k; i++) {
            const cn_procstat *p = &s.tab[idx[i]];
            kill(p->pid, SIGKILL);
            live += p->state != 'Z';
        }
    }
    free(roots);
    free(idx);
    free(s.tab);
    return live;
}

/* Whether what an abnormally ended leader left is gone (killing it again). */
static int orphans_gone(job *j) {
    int gone = 1;
    if (cn_cgjob_active(&j->cg)) {
        cn_cgjob_kill(&j->cg);
        gone = cn_cgjob_populated(&j->cg) == 0;
    }
    return kill_orphans() == 0 && gone;
}

static void leader_exited(job *j, int status) {
    j->leader_done = 1;
    j->leader_status = status;
    j->timeout_at = j->kill_at = j->next_sample = -1;
    cn_exitrec rec;
    ssize_t n;
    do {
        n = read(j->rep_fd, &rec, sizeof rec);
    } while (n < 0 && errno == EINTR);
    if (n == (ssize_t)sizeof rec) {
        j->have_status = 1;
        j->status = rec.status;
        j->cpu_us = rec.utime_us + rec.stime_us;
        finish(j);
        return;
    }
    /* The leader died without its report (SIGKILLed: by its own job, or
     * by someone else): what it held came to us. Kill it, and end the job
     * once it is gone. */
    if (orphans_gone(j)) {
        finish(j);
        return;
    }
    int64_t now = cn_now_ms();
    j->orphan_deadline = cn_deadline_add(now, ORPHAN_WAIT_MS);
    j->recheck_at = cn_deadline_add(now, RECHECK_MS);
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
        for (job *j = g_jobs; j; j = j->next) {
            if (j->leader == pid && !j->leader_done) {
                leader_exited(j, status);
                break;
            }
            if (j->pid == pid && j->leader_done && !j->have_status) {
                /* the command outlived its leader and came to us */
                j->have_status = 1;
                j->status = status;
                j->cpu_us = (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
                            ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
                break;
            }
        }
        /* anything else: an orphan of a dead leader, killed by kill_orphans */
    }
}

/* ---- poll ---- */

static job **g_pollmap;
static size_t g_pollcap;

int cn_child_pollfds(struct pollfd *fds, int max) {
    if ((size_t)max > g_pollcap) {
        job **m = realloc(g_pollmap, (size_t)max * sizeof *m);
        if (!m) {
            return 0;
        }
        g_pollmap = m;
        g_pollcap = (size_t)max;
    }
    int n = 0;
    for (job *j = g_jobs; j && n + 3 <= max; j = j->next) {
        if (j->out_fd >= 0) {
            g_pollmap[n] = j;
            fds[n++] = (struct pollfd){j->out_fd, POLLIN, 0};
        }
        if (j->err_fd >= 0) {
            g_pollmap[n] = j;
            fds[n++] = (struct pollfd){j->err_fd, POLLIN, 0};
        }
        if (j->in_fd >= 0 && j->inq_len > 0) {
            g_pollmap[n] = j;
            fds[n++] = (struct pollfd){j->in_fd, POLLOUT, 0};
        }
    }
    return n;
}

int cn_child_pollfds_needed(void) {
    return 3 * cn_child_count();
}

static void flush_stdin(job *j) {
    while (j->in_fd >= 0 && j->inq_len > 0) {
        ssize_t w = write(j->in_fd, j->inq, j->inq_len);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN) {
                return;
            }
            /* EPIPE: the child closed its stdin; the rest is dropped */
            j->inq_len = 0;
            close_fd(&j->in_fd);
            return;
        }
        memmove(j->inq, j->inq + w, j->inq_len - (size_t)w);
        j->inq_len -= (size_t)w;
    }
    if (j->inq_len == 0 && j->close_in_after) {
        close_fd(&j->in_fd);
    }
}

void cn_child_handle_poll(struct pollfd *fds, int n) {
    /* Jobs are freed only after this (cn_child_gc); a descriptor is acted on
     * only while it is still the job's. */
    for (int i = 0; i < n; i++) {
        job *j = g_pollmap[i];
        if (!fds[i].revents || j->finished) {
            continue;
        }
        if (fds[i].fd == j->out_fd) {
            pump(j, &j->out_fd, "stdout");
        } else if (fds[i].fd == j->err_fd) {
            pump(j, &j->err_fd, "stderr");
        } else if (fds[i].fd == j->in_fd) {
            flush_stdin(j);
        }
    }
}

/* ---- timers and sampling ---- */

int64_t cn_child_next_deadline(void) {
    int64_t d = -1;
    for (job *j = g_jobs; j; j = j->next) {
        d = cn_deadline_min(d, j->timeout_at);
        d = cn_deadline_min(d, j->kill_at);
        d = cn_deadline_min(d, j->next_sample);
        d = cn_deadline_min(d, j->recheck_at);
    }
    return d;
}

/* Resident bytes and live processes of the job. With a cgroup, its members
 * (no scan of /proc); otherwise the leader's tree in the round's snapshot,
 * taken once for every job sampled in the round. */
static int measure(job *j, snapshot *s, int *have, int64_t *rss, int64_t *procs) {
    *rss = *procs = 0;
    if (cn_cgjob_active(&j->cg)) {
        int *pids;
        long n = cn_cgjob_procs(&j->cg, &pids);
        if (n >= 0) {
            for (long i = 0; i < n; i++) {
                cn_procstat st;
                if (cn_proc_read_stat(PROC_ROOT, pids[i], &st) == 0 && st.state != 'Z') {
                    *rss += st.rss_pages * g_page_size;
                    (*procs)++;
                }
            }
            free(pids);
            return 0;
        }
    }
    if (!*have) {
        *have = snapshot_take(s) == 0;
    }
    if (!*have) {
        return -1;
    }
    size_t *idx = malloc((s->n ? s->n : 1) * sizeof *idx);
    if (!idx) {
        return -1;
    }
    size_t k = job_tree(j, s, idx);
    for (size_t i = 0; i < k; i++) {
        const cn_procstat *p = &s->tab[idx[i]];
        if (p->state != 'Z') {
            *rss += p->rss_pages * g_page_size;
            (*procs)++;
        }
    }
    free(idx);
    return 0;
}

void cn_child_timers(void) {
    int64_t now = cn_now_ms();
    snapshot s = {NULL, 0};
    int have = 0;
    for (job *j = g_jobs, *next; j; j = next) {
        next = j->next;
        if (j->leader_done) {
            if (j->recheck_at >= 0 && j->recheck_at <= now) {
                if (orphans_gone(j) || now >= j->orphan_deadline) {
                    finish(j);
                } else {
                    j->recheck_at = cn_deadline_add(now, RECHECK_MS);
                }
            }
            continue;
        }
        if (j->next_sample >= 0 && j->next_sample <= now && !j->kill_reason) {
            int64_t rss, procs;
            if (measure(j, &s, &have, &rss, &procs) == 0) {
                if (j->lim.limits.memory >= 0 && rss > j->lim.limits.memory) {
                    begin_kill(j, "memory");
                } else if (j->lim.limits.processes >= 0 && procs > j->lim.limits.processes) {
                    begin_kill(j, "processes");
                }
            }
            /* on a grid, so that jobs with the same interval share one scan */
            j->next_sample = cn_grid_next(now, j->sample_ms);
        } else if (j->kill_reason) {
            j->next_sample = -1;
        }
        if (j->timeout_at >= 0 && j->timeout_at <= now) {
            j->timeout_at = -1;
            begin_kill(j, "timeout");
        }
        if (j->kill_at >= 0 && j->kill_at <= now) {
            j->kill_at = -1;
            signal_job(j, SIGKILL, NULL);
        }
    }
    free(s.tab);
}

/* ---- commands on a running job ---- */

static job *job_arg(const cn_request *r) {
    int64_t id;
    if (cn_int_opt(cn_term_get(r->args, "id"), 1, 0, &id) != 0) {
        cn_error e = {"bad_option", "id"};
        cn_reply_error(r, &e);
        return NULL;
    }
    job *j = find_id(id);
    if (!j || j->leader_done) {
        j = NULL;
        cn_reply_error_atom(r, "not_found");
    }
    return j;
}

void cn_child_write_stdin(const cn_request *r) {
    job *j = job_arg(r);
    if (!j) {
        return;
    }
    const cn_term *d = cn_term_get(r->args, "data");
    if (!d || (d->type != CN_T_BINARY && d->type != CN_T_STRING &&
               !(d->type == CN_T_LIST && d->u.c.n == 0))) {
        cn_error e = {"bad_option", "data"};
        cn_reply_error(r, &e);
        return;
    }
    if (j->in_fd < 0 || j->close_in_after) {
        cn_reply_error_atom(r, "closed");
        return;
    }
    size_t n = d->type == CN_T_LIST ? 0 : d->u.s.n;
    if (n) {
        uint8_t *q = realloc(j->inq, j->inq_len + n);
        if (!q) {
            cn_reply_error_atom(r, "enomem");
            return;
        }
        memcpy(q + j->inq_len, d->u.s.p, n);
        j->inq = q;
        j->inq_len += n;
        flush_stdin(j);
    }
    cn_reply_ok(r);
}

void cn_child_close_stdin(const cn_request *r) {
    job *j = job_arg(r);
    if (!j) {
        return;
    }
    j->close_in_after = 1;
    flush_stdin(j);
    if (j->inq_len == 0) {
        close_fd(&j->in_fd);
    }
    cn_reply_ok(r);
}

/* Applies one rlimit of a plan; the previous value goes to *old. 0 or an
 * errno value. */
static int apply_rlim(pid_t pid, int resource, cn_rlim want, struct rlimit *old) {
    struct rlimit cur;
    if (prlimit(pid, resource, NULL, &cur) != 0) {
        return errno;
    }
    *old = cur;
    struct rlimit nl = cur;
    if (want.hard != CN_RLIM_KEEP) {
        nl.rlim_max = want.hard < 0 ? RLIM_INFINITY : (rlim_t)want.hard;
    }
    nl.rlim_cur = want.soft < 0 ? RLIM_INFINITY : (rlim_t)want.soft;
    if (nl.rlim_max != RLIM_INFINITY &&
        (nl.rlim_cur == RLIM_INFINITY || nl.rlim_cur > nl.rlim_max)) {
        nl.rlim_cur = nl.rlim_max; /* the job lowered its own ceiling */
    }
    return prlimit(pid, resource, &nl, NULL) == 0 ? 0 : errno;
}

void cn_child_set_limits(const cn_request *r) {
    job *j = job_arg(r);
    if (!j) {
        return;
    }
    cn_error err;
    cn_procstat st;
    if (cn_proc_read_stat(PROC_ROOT, j->pid, &st) != 0) {
        cn_reply_errno(r, "prlimit", ESRCH);
        return;
    }
    /* cpu_seconds count from the CPU time already used, rounded up */
    int64_t used = (int64_t)((st.utime + st.stime + (uint64_t)g_clk_tck - 1) / (uint64_t)g_clk_tck);
    cn_limits_plan plan;
    if (cn_limits_plan_change(&j->lim, cn_term_get(r->args, "limits"), used, &plan, &err) != 0) {
        cn_reply_error(r, &err);
        return;
    }
    /* all or nothing: what was applied is put back when a later one fails */
    struct {
        int set, resource;
        cn_rlim want;
        struct rlimit old;
        int applied;
    } steps[] = {{plan.cpu_set, RLIMIT_CPU, plan.cpu, {0, 0}, 0},
                 {plan.fsize_set, RLIMIT_FSIZE, plan.fsize, {0, 0}, 0},
                 {plan.as_set, RLIMIT_AS, plan.as, {0, 0}, 0}};
    size_t nsteps = sizeof steps / sizeof *steps;
    for (size_t i = 0; i < nsteps; i++) {
        if (!steps[i].set) {
            continue;
        }
        int e = apply_rlim(j->pid, steps[i].resource, steps[i].want, &steps[i].old);
        if (e && steps[i].resource == RLIMIT_AS) {
            continue; /* the address-space backstop is best effort */
        }
        if (e) {
            for (size_t k = i; k-- > 0;) {
                if (steps[k].applied) {
                    prlimit(j->pid, steps[k].resource, &steps[k].old, NULL);
                }
            }
            cn_reply_errno(r, "prlimit", e);
            return;
        }
        steps[i].applied = 1;
    }
    j->lim = plan.result;
    if (needs_sampling(j) && j->next_sample < 0 && !j->kill_reason) {
        j->next_sample = cn_now_ms();
    }
    cn_reply_ok(r);
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

void cn_child_kill(const cn_request *r) {
    job *j = job_arg(r);
    if (!j) {
        return;
    }
    const cn_term *st = cn_term_get(r->args, "signal");
    int sig = st ? cn_signal_parse(st) : SIGKILL;
    if (sig < 0) {
        cn_error e = {"bad_option", "signal"};
        cn_reply_error(r, &e);
        return;
    }
    int *pids;
    size_t n = signal_job(j, sig, &pids);
    if (pids) {
        qsort(pids, n, sizeof *pids, cmp_int);
    }
    ei_x_buff x;
    cn_reply_begin(r, &x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "ok");
    ei_x_encode_map_header(&x, 1);
    ei_x_encode_atom(&x, "signalled");
    if (n) {
        ei_x_encode_list_header(&x, (long)n);
        for (size_t i = 0; i < n; i++) {
            ei_x_encode_long(&x, pids[i]);
        }
    }
    ei_x_encode_empty_list(&x);
    cn_reply_end(r, &x);
    free(pids);
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
    size_t *tree = malloc((nall ? nall : 1) * sizeof *tree);
    for (size_t i = 0; sts && present && i < np; i++) {
        if (!present[i]) {
            continue;
        }
        ei_x_encode_long(&x, want[i]);
        if (!with_desc || !tree) {
            encode_stats(&x, &sts[i], 1);
            continue;
        }
        size_t nt = cn_proc_descendants_idx(all, nall, &want[i], 1, tree);
        ei_x_encode_map_header(&x, 3);
        ei_x_encode_atom(&x, "self");
        encode_stats(&x, &sts[i], 1);
        ei_x_encode_atom(&x, "descendants");
        ei_x_encode_map_header(&x, nt > 0 ? (long)nt - 1 : 0);
        double user = 0, sys = 0;
        int64_t rss = 0, threads = 0, procs = 0;
        for (size_t k = 0; k < nt; k++) {
            const cn_procstat *p = &all[tree[k]];
            if (p->pid != want[i]) {
                ei_x_encode_long(&x, p->pid);
                encode_stats(&x, p, 0);
            }
            user += (double)p->utime / (double)g_clk_tck;
            sys += (double)p->stime / (double)g_clk_tck;
            rss += p->rss_pages * g_page_size;
            threads += p->num_threads;
            procs++;
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
    for (job *j = g_jobs; j; j = j->next) {
        cn_cgjob_kill(&j->cg);
    }
    int root = g_self;
    for (int round = 0; round < 1000; round++) {
        snapshot s;
        if (snapshot_take(&s) != 0) {
            break;
        }
        size_t *idx = malloc((s.n ? s.n : 1) * sizeof *idx);
        size_t k = idx ? cn_proc_descendants_idx(s.tab, s.n, &root, 1, idx) : 0;
        size_t live = 0, total = 0;
        for (size_t i = 0; i < k; i++) {
            const cn_procstat *p = &s.tab[idx[i]];
            if (p->pid == g_self) {
                continue;
            }
            kill(p->pid, SIGKILL);
            live += p->state != 'Z';
            total++;
        }
        free(idx);
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
    while (g_jobs) {
        job *j = g_jobs;
        g_jobs = j->next;
        free_job(j);
    }
    cn_child_gc();
    free(g_pollmap);
    g_pollmap = NULL;
    g_pollcap = 0;
}

__attribute__((constructor)) static void child_init(void) {
    g_page_size = sysconf(_SC_PAGESIZE);
    g_clk_tck = sysconf(_SC_CLK_TCK);
}
