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

typedef struct watch {
    struct watch *next;
    int64_t id;
    cn_watch_req req;
    cn_dest sub;
    cn_coalesce pending;
} watch;

/* One inotify instance serves every watch (instances are few per user): a
 * directory watched by two watches has one wd and two entries here. */
typedef struct {
    int wd;
    char *path;
    watch *w;
} wdir;

static watch *g_watches;
static int g_ifd = -1;
static wdir *g_dirs;
static size_t g_ndirs, g_capdirs;

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

static int has_entry(const watch *w, int wd) {
    for (size_t i = 0; i < g_ndirs; i++) {
        if (g_dirs[i].wd == wd && g_dirs[i].w == w) {
            return 1;
        }
    }
    return 0;
}

static int wd_in_use(int wd) {
    for (size_t i = 0; i < g_ndirs; i++) {
        if (g_dirs[i].wd == wd) {
            return 1;
        }
    }
    return 0;
}

/* Drops the entries of watch w (every watch when w is NULL) for wd (every wd
 * when wd < 0); removes kernel watches no entry uses any more. */
static void drop_entries(const watch *w, int wd, int rm_kernel_watch) {
    for (size_t i = 0; i < g_ndirs;) {
        if ((!w || g_dirs[i].w == w) && (wd < 0 || g_dirs[i].wd == wd)) {
            int gone = g_dirs[i].wd;
            free(g_dirs[i].path);
            g_dirs[i] = g_dirs[--g_ndirs];
            if (rm_kernel_watch && !wd_in_use(gone)) {
                inotify_rm_watch(g_ifd, gone);
            }
        } else {
            i++;
        }
    }
}

/* Watches dir and every directory below it; with `report`, every matching
 * file found is reported as changed (a new directory's files may have been
 * written before its watch existed). Returns 0, or an errno value for the
 * root. */
static int add_tree(watch *w, const char *dir, int report, int64_t now) {
    int wd = inotify_add_watch(g_ifd, dir, DIR_MASK);
    if (wd < 0) {
        return errno;
    }
    if (!has_entry(w, wd)) {
        if (g_ndirs == g_capdirs) {
            size_t cap = g_capdirs ? 2 * g_capdirs : 64;
            wdir *d = realloc(g_dirs, cap * sizeof *d);
            if (!d) {
                return ENOMEM;
            }
            g_dirs = d;
            g_capdirs = cap;
        }
        char *p = strdup(dir);
        if (!p) {
            return ENOMEM;
        }
        g_dirs[g_ndirs++] = (wdir){wd, p, w};
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
    drop_entries(w, -1, 1);
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
    if (g_ifd < 0) {
        g_ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    }
    int e = g_ifd < 0 ? errno : add_tree(w, w->req.dir, 0, cn_now_ms());
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
    if (g_ifd < 0 || max < 1) {
        return 0;
    }
    fds[0] = (struct pollfd){g_ifd, POLLIN, 0};
    return 1;
}

static void handle_for(watch *w, const char *dir, const struct inotify_event *ev, int64_t now) {
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

static void handle_event(const struct inotify_event *ev, int64_t now) {
    if (ev->mask & IN_Q_OVERFLOW) {
        /* events were lost: rescan every watch, reporting every file */
        for (watch *w = g_watches; w; w = w->next) {
            add_tree(w, w->req.dir, 1, now);
        }
        return;
    }
    if (ev->mask & IN_IGNORED) {
        drop_entries(NULL, ev->wd, 0);
        return;
    }
    if (ev->len == 0) {
        return;
    }
    /* add_tree may append entries while we go: walk by index, only the
     * entries that were there when the event came */
    size_t n = g_ndirs;
    for (size_t i = 0; i < n && i < g_ndirs; i++) {
        if (g_dirs[i].wd == ev->wd) {
            char dir[PATH_MAX];
            snprintf(dir, sizeof dir, "%s", g_dirs[i].path);
            handle_for(g_dirs[i].w, dir, ev, now);
        }
    }
}

static void read_events(void) {
    char buf[65536] __attribute__((aligned(__alignof__(struct inotify_event))));
    int64_t now = cn_now_ms();
    for (;;) {
        ssize_t n = read(g_ifd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            return;
        }
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            handle_event(ev, now);
            p += sizeof *ev + ev->len;
        }
    }
}

void cn_watch_handle_poll(struct pollfd *fds, int n) {
    if (n > 0 && fds[0].revents && g_ifd >= 0) {
        read_events();
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
    free(g_dirs);
    g_dirs = NULL;
    g_ndirs = g_capdirs = 0;
    if (g_ifd >= 0) {
        close(g_ifd);
        g_ifd = -1;
    }
}
