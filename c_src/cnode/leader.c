/* A job's leader: the process between the C-node and a job's command.
 *
 * The C-node forks it for each spawn; it never execs. It is a child
 * subreaper (PR_SET_CHILD_SUBREAPER), so every process of the job's tree
 * stays below it whatever the processes do (setsid, double fork): an orphan
 * of the tree is reparented to the leader, never past it. It forks the
 * command, then waits. When the command has exited, or the C-node has died
 * (its parent-death signal, SIGTERM), or anyone asks it to stop (SIGTERM,
 * SIGINT, SIGHUP), it kills every process left in its tree (cgroup.kill when
 * the job has a cgroup, and SIGKILL to each descendant it finds in /proc),
 * reaps them all, reports the command's status and resource usage to the
 * C-node on its report pipe, and exits. The command itself has
 * PR_SET_PDEATHSIG SIGKILL on the leader: the chain of parent-death signals
 * C-node -> leader -> command holds even if the leader is SIGKILLed.
 *
 * The leader is a fork() of a process that may have threads (distribution
 * handshakes), so it uses system calls and allocation-free functions of the
 * core only: no malloc, no stdio. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <linux/sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cn_proc.h"
#include "leader.h"

#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif
#ifndef SYS_landlock_restrict_self
#define SYS_landlock_restrict_self 446
#endif

/* The leader's descriptors. */
enum {
    FD_EX = 3,
    FD_REP = 4,
    FD_CGDIR = 5,
    FD_CGKILL = 6,
    FD_CGBASE = 7,
    FD_LL = 8,
    FD_FIRST_FREE = 9
};

static void write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void report(int kind, int value) {
    cn_exrec r = {kind, value};
    write_all(FD_EX, &r, sizeof r);
}

static void close_from(unsigned first) {
    if (syscall(SYS_close_range, first, ~0U, 0) == 0) {
        return;
    }
    struct rlimit rl;
    unsigned max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 ? rl.rlim_cur : 65536;
    for (unsigned fd = first; fd < max; fd++) {
        close((int)fd);
    }
}

/* Moves the descriptors want[i] to i (want[i] < 0: i is closed), then closes
 * everything from n on. */
static int place_fds(int *want, int n) {
    int tmp[FD_FIRST_FREE];
    for (int i = 0; i < n; i++) {
        tmp[i] = want[i] >= 0 ? fcntl(want[i], F_DUPFD, 64) : -1;
        if (want[i] >= 0 && tmp[i] < 0) {
            return -1;
        }
    }
    for (int i = 0; i < n; i++) {
        if (tmp[i] >= 0) {
            if (dup2(tmp[i], i) < 0) {
                return -1;
            }
        } else {
            close(i);
        }
    }
    close_from((unsigned)n);
    return 0;
}

static int set_rlim(int resource, int64_t soft, int64_t hard) {
    struct rlimit rl;
    if (getrlimit(resource, &rl) != 0) {
        return -1;
    }
    if (hard != CN_RLIM_KEEP) {
        rl.rlim_max = hard < 0 ? RLIM_INFINITY : (rlim_t)hard;
    }
    rl.rlim_cur = soft < 0 ? RLIM_INFINITY : (rlim_t)soft;
    if (rl.rlim_max != RLIM_INFINITY &&
        (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > rl.rlim_max)) {
        rl.rlim_cur = rl.rlim_max;
    }
    return setrlimit(resource, &rl);
}

/* The kernel's struct landlock_path_beneath_attr (packed). */
struct ll_path_beneath {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

static int add_proc_self(uint64_t access) {
    int p = open("/proc/self", O_PATH | O_CLOEXEC);
    if (p < 0) {
        return -1;
    }
    struct ll_path_beneath pb = {access, p};
    long rc = syscall(SYS_landlock_add_rule, FD_LL, 1 /* LANDLOCK_RULE_PATH_BENEATH */, &pb, 0);
    int e = errno;
    close(p);
    errno = e;
    return rc == 0 ? 0 : -1;
}

/* The command, in the leader's child: never returns. in_cgroup: it was
 * created in the job's cgroup already. */
static void command(const cn_leader_args *a, pid_t leader, int in_cgroup) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != leader) {
        _exit(127); /* the leader died before the flag was set */
    }
    report(CN_EXREC_PID, (int)getpid());
    if (a->cg_dir >= 0 && !in_cgroup) {
        /* no clone3: move in by hand (slower: a cgroup migration) */
        int procs = openat(FD_CGDIR, "cgroup.procs", O_WRONLY | O_CLOEXEC);
        ssize_t w = -1;
        if (procs >= 0) {
            do {
                w = write(procs, "0\n", 2); /* "0": the writing process */
            } while (w < 0 && errno == EINTR);
        }
        if (w != 2) {
            report(CN_EXREC_CGROUP_ERRNO, errno);
            _exit(127);
        }
        close(procs);
    }
    close(FD_REP);
    close(FD_CGDIR);
    close(FD_CGKILL);
    close(FD_CGBASE);
    int err;
    if (a->cd && chdir(a->cd) != 0) {
        goto fail;
    }
    struct rlimit core = {0, 0};
    setrlimit(RLIMIT_CORE, &core);
    if (set_rlim(RLIMIT_CPU, a->rl.cpu.soft, a->rl.cpu.hard) != 0 ||
        set_rlim(RLIMIT_FSIZE, a->rl.fsize.soft, a->rl.fsize.hard) != 0) {
        goto fail;
    }
    /* the address-space backstop is best effort */
    (void)set_rlim(RLIMIT_AS, a->rl.as.soft, CN_RLIM_KEEP);
    /* the C-node raised its descriptor limit; the command gets the original */
    setrlimit(RLIMIT_NOFILE, &a->nofile);
    if (a->ll_fd >= 0) {
        /* Its own /proc/<pid> (which stays its pid across exec): only this
         * process can name it. */
        if (a->ll_proc_self && add_proc_self(a->ll_proc_self) != 0) {
            report(CN_EXREC_LANDLOCK_ERRNO, errno);
            _exit(127);
        }
        /* Last, so that nothing above needs a right the ruleset withholds:
         * from here on this process, and everything it starts, is confined. */
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
            syscall(SYS_landlock_restrict_self, FD_LL, 0) != 0) {
            report(CN_EXREC_LANDLOCK_ERRNO, errno);
            _exit(127);
        }
        close(FD_LL);
    }
    execvpe(a->argv[0], a->argv, a->env);
fail:
    err = errno;
    report(CN_EXREC_ERRNO, err);
    _exit(127);
}

/* Process table for the scans, in memory of our own (no malloc). */
typedef struct {
    int *pids, *ppids;
    size_t *scratch, *idx;
    size_t cap;
    void *mem;
    size_t memlen;
} table;

static int table_grow(table *t, size_t cap) {
    if (t->mem) {
        munmap(t->mem, t->memlen);
        t->mem = NULL;
    }
    size_t words = cn_proc_walk_scratch(cap);
    size_t len = 2 * cap * sizeof(int) + (words + cap) * sizeof(size_t);
    void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        return -1;
    }
    t->mem = m;
    t->memlen = len;
    t->cap = cap;
    t->scratch = m;
    t->idx = t->scratch + words;
    t->pids = (int *)(t->idx + cap);
    t->ppids = t->pids + cap;
    return 0;
}

/* SIGKILL to every descendant of ours found in /proc. Returns how many. */
static size_t kill_descendants(table *t) {
    long n;
    while ((n = cn_proc_scan_raw("/proc", t->pids, t->ppids, t->cap)) < 0) {
        if (errno != ERANGE || table_grow(t, 2 * t->cap) != 0) {
            return 0;
        }
    }
    int self = (int)getpid();
    size_t k = cn_proc_walk(t->pids, t->ppids, (size_t)n, &self, 1, t->scratch, t->idx);
    size_t killed = 0;
    for (size_t i = 0; i < k; i++) {
        int pid = t->pids[t->idx[i]];
        if (pid != self && kill(pid, SIGKILL) == 0) {
            killed++;
        }
    }
    return killed;
}

static void kill_tree(const cn_leader_args *a, table *t) {
    if (a->cg_kill >= 0) {
        ssize_t w;
        do {
            w = write(FD_CGKILL, "1", 1);
        } while (w < 0 && errno == EINTR);
    }
    /* also below the cgroup: a privileged process can leave its cgroup,
     * never our tree */
    if (!t->mem && table_grow(t, 4096) != 0) {
        return;
    }
    kill_descendants(t);
}

void cn_leader_run(const cn_leader_args *a) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigprocmask(SIG_SETMASK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != a->cnode) {
        _exit(1); /* the C-node died before the flag was set */
    }
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    prctl(PR_SET_NAME, "sandbox_leader");
    int want[FD_FIRST_FREE] = {a->in_r,   a->out_w,   a->err_w,   a->ex_w, a->rep_w,
                               a->cg_dir, a->cg_kill, a->cg_base, a->ll_fd};
    if (place_fds(want, FD_FIRST_FREE) != 0) {
        _exit(1);
    }
    fcntl(FD_EX, F_SETFD, FD_CLOEXEC);
    pid_t self = getpid();
    int in_cgroup = 0;
    pid_t cmd = -1;
    if (a->cg_dir >= 0) {
        /* born in the job's cgroup: no migration afterwards */
        struct clone_args ca;
        memset(&ca, 0, sizeof ca);
        ca.flags = CLONE_INTO_CGROUP;
        ca.exit_signal = SIGCHLD;
        ca.cgroup = FD_CGDIR;
        cmd = (pid_t)syscall(SYS_clone3, &ca, sizeof ca);
        in_cgroup = cmd >= 0;
    }
    if (cmd < 0) {
        cmd = fork();
    }
    if (cmd == 0) {
        command(a, self, in_cgroup);
    }
    if (cmd < 0) {
        report(CN_EXREC_ERRNO, errno);
        _exit(127);
    }
    /* the command holds the job's pipes; the leader none of them */
    close(FD_EX);
    close(FD_CGDIR);
    close(FD_LL);
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int fd = 0; fd < 3; fd++) {
        if (null >= 0) {
            dup2(null, fd);
        } else {
            close(fd);
        }
    }
    if (null > 2) {
        close(null);
    }

    table t = {0};
    int cleanup = 0, cmd_done = 0;
    cn_exitrec rec = {0};
    for (;;) {
        for (;;) {
            int status;
            struct rusage ru;
            pid_t p = wait4(-1, &status, WNOHANG, &ru);
            if (p < 0 && errno == EINTR) {
                continue;
            }
            if (p <= 0) {
                if (p < 0 && errno == ECHILD && cmd_done) {
                    goto done; /* the tree is empty */
                }
                break;
            }
            if (p == cmd) {
                cmd_done = cleanup = 1;
                rec.status = status;
                rec.utime_us = (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec;
                rec.stime_us = (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
            }
        }
        if (cleanup) {
            kill_tree(a, &t);
        }
        siginfo_t si;
        int sig;
        if (cleanup) {
            /* processes reparented to us send nothing until they die: look
             * again soon */
            struct timespec ts = {0, 5 * 1000 * 1000};
            sig = sigtimedwait(&set, &si, &ts);
        } else {
            sig = sigwaitinfo(&set, &si);
        }
        if (sig == SIGTERM || sig == SIGINT || sig == SIGHUP) {
            cleanup = 1;
        }
    }
done:
    if (getppid() != a->cnode && a->cg_base >= 0 && a->cg_name) {
        /* nobody else will: the C-node is gone */
        unlinkat(FD_CGBASE, a->cg_name, AT_REMOVEDIR);
    }
    write_all(FD_REP, &rec, sizeof rec);
    _exit(0);
}
