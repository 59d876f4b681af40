/* Recursive inotify watches, debounced into {changed, Paths} events. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cn_coalesce.h"
#include "cnode.h"

#define DIR_MASK                                                                                   \
    (IN_CLOSE_WRITE | IN_MODIFY | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |            \
     IN_DELETE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK)

typedef struct {
    int wd;
    char *path;
} wdir;

typedef struct watch {
    struct watch *next;
    int64_t id;
    int fd;
    cn_watch_req req;
    cn_dest sub;
    wdir *dirs;
    size_t ndirs, cap;
    cn_coalesce pending;
} watch;

static watch *g_watches;

static int ignored_dir(const watch *w, const char *name) {
    for (size_t i = 0; i < w->req.nignore; i++) {
        if (strcmp(w->req.ignore[i], name) == 0) {
            return 1;
        }
    }
    return 0;
}

static int included(const watch *w, const char *name) {
    if (w->req.ninclude == 0) {
        return 1;
    }
    for (size_t i = 0; i < w->req.ninclude; i++) {
        if (fnmatch(w->req.include[i], name, 0) == 0) {
            return 1;
        }
    }
    return 0;
}

static const char *dir_of(const watch *w, int wd) {
    for (size_t i = 0; i < w->ndirs; i++) {
        if (w->dirs[i].wd == wd) {
            return w->dirs[i].path;
        }
    }
    return NULL;
}

static void forget_wd(watch *w, int wd) {
    for (size_t i = 0; i < w->ndirs; i++) {
        if (w->dirs[i].wd == wd) {
            free(w->dirs[i].path);
            w->dirs[i] = w->dirs[--w->ndirs];
            return;
        }
    }
}

/* Watches dir and every directory below it; with `report`, every matching
 * file found is reported as changed (a new directory's files may have been
 * written before its watch existed). Returns 0, or an errno value for the
 * root. */
static int add_tree(watch *w, const char *dir, int report, int64_t now) {
    int wd = inotify_add_watch(w->fd, dir, DIR_MASK);
    if (wd < 0) {
        return errno;
    }
    if (!dir_of(w, wd)) {
        if (w->ndirs == w->cap) {
            size_t cap = w->cap ? 2 * w->cap : 64;
            wdir *d = realloc(w->dirs, cap * sizeof *d);
            if (!d) {
                return ENOMEM;
            }
            w->dirs = d;
            w->cap = cap;
        }
        char *p = strdup(dir);
        if (!p) {
            return ENOMEM;
        }
        w->dirs[w->ndirs++] = (wdir){wd, p};
    }
    DIR *d = opendir(dir);
    if (!d) {
        return 0;
    }
    struct dirent *e;
    char path[PATH_MAX];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
            continue;
        }
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path) {
            continue;
        }
        unsigned char type = e->d_type;
        if (type == DT_UNKNOWN) {
            struct stat st;
            if (lstat(path, &st) != 0) {
                continue;
            }
            type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : DT_UNKNOWN;
        }
        if (type == DT_DIR) {
            if (!ignored_dir(w, e->d_name)) {
                add_tree(w, path, report, now);
            }
        } else if (report && included(w, e->d_name)) {
            cn_coalesce_changed(&w->pending, path, 1, now);
        }
    }
    closedir(d);
    return 0;
}

static void free_watch(watch *w) {
    if (w->fd >= 0) {
        close(w->fd);
    }
    for (size_t i = 0; i < w->ndirs; i++) {
        free(w->dirs[i].path);
    }
    free(w->dirs);
    cn_coalesce_free(&w->pending);
    cn_watch_req_free(&w->req);
    cn_dest_free(&w->sub);
    free(w);
}

static int64_t g_next_watch_id = (int64_t)1 << 41;

void cn_watch_add(const cn_request *r) {
    watch *w = calloc(1, sizeof *w);
    cn_error err;
    if (!w) {
        cn_reply_error_atom(r, "enomem");
        return;
    }
    w->fd = -1;
    if (cn_watch_parse(r->args, &w->req, &err) != 0) {
        free(w);
        cn_reply_error(r, &err);
        return;
    }
    w->id = w->req.id ? w->req.id : g_next_watch_id++;
    for (watch *o = g_watches; o; o = o->next) {
        if (o->id == w->id) {
            /* ids are unique per program run */
            cn_watch_req_free(&w->req);
            free(w);
            cn_reply_error_atom(r, "id_in_use");
            return;
        }
    }
    cn_coalesce_init(&w->pending, w->req.debounce_ms);
    size_t dl = strlen(w->req.dir);
    while (dl > 1 && w->req.dir[dl - 1] == '/') {
        w->req.dir[--dl] = 0;
    }
    if (cn_dest_copy(&w->sub, w->req.subscriber ? w->req.subscriber : r->from) != 0) {
        free_watch(w);
        cn_reply_error_atom(r, "enomem");
        return;
    }
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    int e = w->fd < 0 ? errno : add_tree(w, w->req.dir, 0, cn_now_ms());
    if (e) {
        free_watch(w);
        cn_reply_errno(r, "watch_failed", e);
        return;
    }
    w->next = g_watches;
    g_watches = w;
    ei_x_buff x;
    cn_reply_begin(r, &x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "ok");
    ei_x_encode_longlong(&x, w->id);
    cn_reply_end(r, &x);
}

void cn_watch_remove(const cn_request *r) {
    int64_t id;
    if (cn_int_opt(cn_term_get(r->args, "id"), 1, 0, &id) != 0) {
        cn_error e = {"bad_option", "id"};
        cn_reply_error(r, &e);
        return;
    }
    for (watch **p = &g_watches; *p; p = &(*p)->next) {
        if ((*p)->id == id) {
            watch *w = *p;
            *p = w->next;
            free_watch(w);
            cn_reply_ok(r);
            return;
        }
    }
    cn_reply_error_atom(r, "not_found");
}

int cn_watch_pollfds(struct pollfd *fds, int max) {
    int n = 0;
    for (watch *w = g_watches; w && n < max; w = w->next) {
        fds[n++] = (struct pollfd){w->fd, POLLIN, 0};
    }
    return n;
}

static void handle_event(watch *w, const struct inotify_event *ev, int64_t now) {
    if (ev->mask & IN_Q_OVERFLOW) {
        /* events were lost: rescan everything, reporting every file */
        add_tree(w, w->req.dir, 1, now);
        return;
    }
    if (ev->mask & IN_IGNORED) {
        forget_wd(w, ev->wd);
        return;
    }
    const char *dir = dir_of(w, ev->wd);
    if (!dir || ev->len == 0) {
        return;
    }
    char path[PATH_MAX];
    if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, ev->name) >= sizeof path) {
        return;
    }
    if (ev->mask & IN_ISDIR) {
        if ((ev->mask & (IN_CREATE | IN_MOVED_TO)) && !ignored_dir(w, ev->name)) {
            add_tree(w, path, 1, now);
        }
        return;
    }
    if (!included(w, ev->name)) {
        return;
    }
    if (ev->mask & (IN_MOVED_FROM | IN_DELETE)) {
        cn_coalesce_gone(&w->pending, path, now);
    } else if (ev->mask & (IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO)) {
        cn_coalesce_changed(&w->pending, path, (ev->mask & IN_CREATE) != 0, now);
    }
}

static void read_events(watch *w) {
    char buf[65536] __attribute__((aligned(__alignof__(struct inotify_event))));
    int64_t now = cn_now_ms();
    for (;;) {
        ssize_t n = read(w->fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;
        }
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            handle_event(w, ev, now);
            p += sizeof *ev + ev->len;
        }
    }
}

void cn_watch_handle_poll(struct pollfd *fds, int n) {
    for (int i = 0; i < n; i++) {
        if (!fds[i].revents) {
            continue;
        }
        for (watch *w = g_watches; w; w = w->next) {
            if (w->fd == fds[i].fd) {
                read_events(w);
                break;
            }
        }
    }
}

int64_t cn_watch_next_deadline(void) {
    int64_t d = -1;
    for (watch *w = g_watches; w; w = w->next) {
        int64_t t = cn_coalesce_deadline(&w->pending);
        if (t >= 0 && (d < 0 || t < d)) {
            d = t;
        }
    }
    return d;
}

void cn_watch_timers(void) {
    int64_t now = cn_now_ms();
    for (watch *w = g_watches; w; w = w->next) {
        int64_t t = cn_coalesce_deadline(&w->pending);
        if (t < 0 || t > now) {
            continue;
        }
        size_t n;
        char **paths = cn_coalesce_take(&w->pending, &n);
        if (!paths) {
            continue;
        }
        ei_x_buff x;
        cn_event_begin(&x, w->id);
        ei_x_encode_tuple_header(&x, 2);
        ei_x_encode_atom(&x, "changed");
        ei_x_encode_list_header(&x, (long)n);
        for (size_t i = 0; i < n; i++) {
            ei_x_encode_binary(&x, paths[i], (long)strlen(paths[i]));
            free(paths[i]);
        }
        ei_x_encode_empty_list(&x);
        free(paths);
        cn_send_raw(w->sub.raw, w->sub.len, &x);
        ei_x_free(&x);
    }
}

void cn_watch_stop(void) {
    while (g_watches) {
        watch *w = g_watches;
        g_watches = w->next;
        free_watch(w);
    }
}
