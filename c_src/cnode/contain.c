/* How a job's processes are held together: a cgroup v2 per job where the
 * C-node may create one, otherwise nothing beyond the job leader (see
 * leader.c), which is a child subreaper of its tree in either case.
 *
 * With cgroups, the C-node's run has a directory
 * <its own cgroup>/sandbox_cnode.<pidns>.<pid>.<starttime> and each job a
 * subdirectory job-<id> holding the job's command and everything it starts.
 * cgroup.kill then kills the whole job at once, even while it forks, and
 * cgroup.procs lists it without a scan of /proc. Directories of earlier runs
 * whose C-node is gone (killed with SIGKILL while its leaders were killed
 * too) are emptied and removed when a C-node starts. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cn_cgroup.h"
#include "cn_proc.h"
#include "cn_time.h"
#include "contain.h"
#include "reply.h"

static int g_mode = CN_CONTAIN_SUBREAPER;
static char g_reason[64] = "not_started";
static char *g_base;       /* the run's directory */
static int g_base_fd = -1; /* O_PATH of g_base */

static ssize_t read_file(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    size_t n = 0;
    while (n + 1 < cap) {
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        n += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    return (ssize_t)n;
}

static int write_at(int dirfd, const char *name, const char *text) {
    int fd = openat(dirfd, name, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        return errno;
    }
    ssize_t w = write(fd, text, strlen(text));
    int e = w < 0 ? errno : 0;
    close(fd);
    return e;
}

static int populated_at(int dirfd) {
    int fd = openat(dirfd, "cgroup.events", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    char buf[256];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? cn_cgroup_populated(buf, (size_t)n) : -1;
}

/* Kills what a cgroup directory holds and removes it, waiting up to
 * wait_ms for it to empty: its killed members may still be exiting, or be
 * zombies that their parents (not always us) have yet to reap. 0 or an
 * errno value. */
static int kill_and_remove(int parent_fd, const char *name, int wait_ms) {
    int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return errno;
    }
    int64_t until = cn_deadline_add(cn_now_ms(), wait_ms);
    int err;
    for (;;) {
        (void)write_at(fd, "cgroup.kill", "1");
        if (unlinkat(parent_fd, name, AT_REMOVEDIR) == 0) {
            err = 0;
            break;
        }
        err = errno;
        if (err != EBUSY || cn_now_ms() >= until) {
            break;
        }
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    close(fd);
    return err;
}

/* Kills and removes every cgroup below the directory dirfd (job-<id>, and a
 * probe left by a run killed while it started). */
static void remove_children(int dirfd, int wait_ms) {
    DIR *d = fdopendir(dup(dirfd));
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_type == DT_DIR && e->d_name[0] != '.') {
            kill_and_remove(dirfd, e->d_name, wait_ms);
        }
    }
    if (d) {
        closedir(d);
    }
}

static uint64_t pidns_inode(void) {
    struct stat st;
    return stat("/proc/self/ns/pid", &st) == 0 ? (uint64_t)st.st_ino : 0;
}

static uint64_t starttime_of(int pid) {
    cn_procstat st;
    return cn_proc_read_stat("/proc", pid, &st) == 0 ? st.starttime : 0;
}

/* Removes the directories of earlier runs in our pid namespace whose C-node
 * is gone, killing whatever they still hold. */
static void remove_stale_runs(const char *parent, uint64_t pidns) {
    int pfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (pfd < 0) {
        return;
    }
    DIR *d = fdopendir(dup(pfd));
    if (!d) {
        close(pfd);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        cn_cgroup_run run;
        if (cn_cgroup_parse_run_name(e->d_name, &run) != 0 || run.pidns != pidns) {
            continue;
        }
        uint64_t st = starttime_of(run.pid);
        if (st != 0 && st == run.starttime) {
            continue; /* that C-node is alive */
        }
        int rfd = openat(pfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (rfd < 0) {
            continue;
        }
        remove_children(rfd, 2000);
        close(rfd);
        kill_and_remove(pfd, e->d_name, 2000);
    }
    closedir(d);
    close(pfd);
}

/* Whether a process can be moved into a new job cgroup: a child tries. */
static int probe(void) {
    if (mkdirat(g_base_fd, "probe", 0700) != 0) {
        return errno;
    }
    int procs = openat(g_base_fd, "probe/cgroup.procs", O_WRONLY | O_CLOEXEC);
    int kill_ok = faccessat(g_base_fd, "probe/cgroup.kill", W_OK, 0) == 0;
    int err = procs < 0 ? errno : kill_ok ? 0 : ENOSYS;
    if (!err) {
        pid_t pid = fork();
        if (pid == 0) {
            _exit(write(procs, "0\n", 2) == 2 ? 0 : 1);
        }
        int status = 0;
        while (pid > 0 && waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        err = pid < 0 ? errno : (WIFEXITED(status) && WEXITSTATUS(status) == 0) ? 0 : EACCES;
    }
    if (procs >= 0) {
        close(procs);
    }
    /* the probe child is reaped, but its cgroup may stay busy for a moment */
    kill_and_remove(g_base_fd, "probe", 1000);
    return err;
}

static void fallback(const char *why, int err) {
    if (err) {
        char buf[32];
        snprintf(g_reason, sizeof g_reason, "%s:%s", why, cn_errno_atom(err, buf));
    } else {
        snprintf(g_reason, sizeof g_reason, "%s", why);
    }
    g_mode = CN_CONTAIN_SUBREAPER;
    if (g_base_fd >= 0) {
        remove_children(g_base_fd, 1000);
        close(g_base_fd);
        g_base_fd = -1;
    }
    if (g_base) {
        rmdir(g_base);
        free(g_base);
        g_base = NULL;
    }
}

void cn_contain_init(int allow_cgroup) {
    if (!allow_cgroup) {
        fallback("forced", 0);
        return;
    }
    static char text[65536];
    char mnt[1024], root[1024], own[2048], parent[4096];
    if (read_file("/proc/self/mountinfo", text, sizeof text) < 0 ||
        cn_cgroup2_mount(text, strlen(text), mnt, sizeof mnt, root, sizeof root) != 0) {
        fallback("no_cgroup2", 0);
        return;
    }
    if (read_file("/proc/self/cgroup", text, sizeof text) < 0 ||
        cn_cgroup2_own(text, strlen(text), own, sizeof own) != 0 ||
        cn_cgroup2_dir(mnt, root, own, parent, sizeof parent) != 0) {
        fallback("no_cgroup2_path", 0);
        return;
    }
    cn_cgroup_run run = {pidns_inode(), (int)getpid(), starttime_of(getpid())};
    remove_stale_runs(parent, run.pidns);
    char name[96];
    cn_cgroup_run_name(name, sizeof name, &run);
    size_t n = strlen(parent) + 1 + strlen(name) + 1;
    g_base = malloc(n);
    if (!g_base) {
        fallback("enomem", 0);
        return;
    }
    snprintf(g_base, n, "%s/%s", parent, name);
    if (mkdir(g_base, 0700) != 0) {
        int e = errno;
        free(g_base);
        g_base = NULL;
        fallback("mkdir", e);
        return;
    }
    g_base_fd = open(g_base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (g_base_fd < 0) {
        fallback("open", errno);
        return;
    }
    int e = probe();
    if (e) {
        fallback("probe", e);
        return;
    }
    g_mode = CN_CONTAIN_CGROUP;
    snprintf(g_reason, sizeof g_reason, "cgroup2");
}

int cn_contain_mode(void) {
    return g_mode;
}

const char *cn_contain_name(void) {
    return g_mode == CN_CONTAIN_CGROUP ? "cgroup" : "subreaper";
}

const char *cn_contain_reason(void) {
    return g_reason;
}

const char *cn_contain_base(void) {
    return g_base;
}

int cn_contain_base_fd(void) {
    return g_base_fd;
}

void cn_cgjob_init(cn_cgjob *j) {
    j->dir_fd = j->kill_fd = -1;
    j->name[0] = 0;
}

int cn_cgjob_create(cn_cgjob *j, int64_t id) {
    cn_cgjob_init(j);
    if (g_mode != CN_CONTAIN_CGROUP) {
        return 0;
    }
    snprintf(j->name, sizeof j->name, "job-%lld", (long long)id);
    if (mkdirat(g_base_fd, j->name, 0700) != 0) {
        int e = errno;
        j->name[0] = 0;
        return e;
    }
    j->dir_fd = openat(g_base_fd, j->name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->dir_fd >= 0) {
        j->kill_fd = openat(j->dir_fd, "cgroup.kill", O_WRONLY | O_CLOEXEC);
    }
    if (j->dir_fd < 0 || j->kill_fd < 0) {
        int e = errno;
        cn_cgjob_remove(j);
        return e ? e : EIO;
    }
    return 0;
}

int cn_cgjob_active(const cn_cgjob *j) {
    return j->dir_fd >= 0;
}

void cn_cgjob_kill(const cn_cgjob *j) {
    if (j->kill_fd >= 0) {
        ssize_t w;
        do {
            w = write(j->kill_fd, "1", 1);
        } while (w < 0 && errno == EINTR);
    }
}

int cn_cgjob_populated(const cn_cgjob *j) {
    return j->dir_fd >= 0 ? populated_at(j->dir_fd) : 0;
}

long cn_cgjob_procs(const cn_cgjob *j, int **out) {
    *out = NULL;
    if (j->dir_fd < 0) {
        return -1;
    }
    int fd = openat(j->dir_fd, "cgroup.procs", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            close(fd);
            return -1;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            break;
        }
        len += (size_t)r;
        if (len == cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
            }
            buf = nb;
        }
    }
    close(fd);
    /* every line holds at least two bytes: a digit and a newline */
    size_t max = len / 2 + 1;
    int *pids = malloc(max * sizeof *pids);
    long n = pids ? cn_cgroup_parse_procs(buf, len, pids, max) : -1;
    free(buf);
    if (n < 0) {
        free(pids);
        return -1;
    }
    *out = pids;
    return n;
}

int cn_cgjob_remove(cn_cgjob *j) {
    int e = 0;
    if (j->kill_fd >= 0) {
        close(j->kill_fd);
    }
    if (j->dir_fd >= 0) {
        close(j->dir_fd);
    }
    if (j->name[0] && g_base_fd >= 0 && unlinkat(g_base_fd, j->name, AT_REMOVEDIR) != 0) {
        e = errno;
    }
    cn_cgjob_init(j);
    return e;
}

void cn_contain_stop(void) {
    if (g_base_fd >= 0) {
        remove_children(g_base_fd, 1000);
        close(g_base_fd);
        g_base_fd = -1;
    }
    if (g_base) {
        rmdir(g_base);
        free(g_base);
        g_base = NULL;
    }
}
