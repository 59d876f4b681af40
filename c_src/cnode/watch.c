/* Recursive inotify watches, debounced into {changed, Paths} events.
 *
 * A tree is walked iteratively (an explicit stack on the heap, one
 * directory open at a time), down to the watch's max_depth levels below its
 * root: a deeper directory makes `watch` fail with {too_deep, Path}; one
 * created later is left unwatched and reported as {not_watched, Path,
 * too_deep}. Each watch keeps its directories in a hash table by watch
 * descriptor; a directory renamed within the tree keeps its descriptor, and
 * its entries (and those below it) take the new path. */
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
#include "cn_time.h"
#include "cn_wdtab.h"
#include "reply.h"
#include "watch.h"

#define DIR_MASK                                                                                   \
    (IN_CLOSE_WRITE | IN_MODIFY | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |            \
     IN_DELETE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK)

typedef struct watch {
    struct watch *next;
    int64_t id;
    cn_watch_req req;
    cn_dest sub;
    cn_coalesce pending;
    cn_wdtab dirs;
} watch;

static watch *g_watches;
static int g_ifd = -1;

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

static int wd_in_use(int wd) {
    for (watch *w = g_watches; w; w = w->next) {
        if (cn_wdtab_get(&w->dirs, wd)) {
            return 1;
        }
    }
    return 0;
}

static void forget_under(watch *w, const char *path) {
    int *wds;
    long n = cn_wdtab_remove_under(&w->dirs, path, &wds);
    for (long i = 0; i < n; i++) {
        if (!wd_in_use(wds[i])) {
            inotify_rm_watch(g_ifd, wds[i]);
        }
    }
    free(wds);
}

static void send_event(watch *w, const char *tag, const char *path, const char *reason) {
    ei_x_buff x;
    cn_event_begin(&x, w->id);
    ei_x_encode_tuple_header(&x, 3);
    ei_x_encode_atom(&x, tag);
    ei_x_encode_binary(&x, path, (long)strlen(path));
    ei_x_encode_atom(&x, reason);
    cn_send_raw(w->sub.raw, w->sub.len, w->sub.via_port, &x);
    ei_x_free(&x);
}

/* What went wrong in a walk, for `watch` to report. */
typedef struct {
    int err;            /* an errno value, or 0 */
    const char *reason; /* "too_deep", or NULL (then err) */
    char *path;         /* malloc'd: where */
} walk_error;

typedef struct {
    char *path;
    int depth;
} frame;

static char *join(const char *dir, const char *name) {
    size_t dl = strlen(dir), nl = strlen(name);
    char *p = malloc(dl + nl + 2);
    if (p) {
        memcpy(p, dir, dl);
        p[dl] = '/';
        memcpy(p + dl + 1, name, nl + 1);
    }
    return p;
}

/* Watches dir (at depth) and every directory below it, iteratively; with
 * `report`, every matching file found is reported as changed (a new
 * directory's files may have been written before its watch existed). With
 * `strict` (a new watch), the first problem stops the walk and is returned
 * in *we; otherwise problems below the top are reported as not_watched
 * events and the walk goes on. Returns 0, or -1 when the top itself could
 * not be watched (*we says why). */
static int add_tree(watch *w, const char *dir, int depth, int report, int strict, int64_t now,
                    walk_error *we) {
    we->err = 0;
    we->reason = NULL;
    we->path = NULL;
    size_t cap = 64, n = 0;
    frame *stack = malloc(cap * sizeof *stack);
    char *top = strdup(dir);
    if (!stack || !top) {
        free(stack);
        free(top);
        we->err = ENOMEM;
        return -1;
    }
    stack[n++] = (frame){top, depth};
    int rc = 0, first = 1;
    while (n > 0) {
        frame f = stack[--n];
        const char *problem = NULL;
        int err = 0;
        int wd = -1;
        if (f.depth > w->req.max_depth) {
            problem = "too_deep";
        } else if (strlen(f.path) >= PATH_MAX) {
            err = ENAMETOOLONG;
        } else if ((wd = inotify_add_watch(g_ifd, f.path, DIR_MASK)) < 0) {
            err = errno;
        } else {
            const cn_wdent *e = cn_wdtab_get(&w->dirs, wd);
            if (e && strcmp(e->path, f.path) != 0) {
                /* renamed while we were not looking: the subtree follows */
                cn_wdtab_rename(&w->dirs, e->path, f.path, f.depth);
            }
            if (cn_wdtab_put(&w->dirs, wd, f.path, f.depth, NULL) != 0) {
                err = ENOMEM;
            }
        }
        if (problem || err) {
            int fatal = strict || first;
            if (fatal) {
                we->err = err;
                we->reason = problem;
                we->path = f.path;
                f.path = NULL;
                rc = -1;
            } else if (err != ENOENT && err != ENOTDIR) {
                send_event(w, "not_watched", f.path,
                           problem ? problem : cn_errno_atom(err, (char[32]){0}));
            }
            free(f.path);
            if (fatal) {
                break;
            }
            first = 0;
            continue;
        }
        first = 0;
        DIR *d = opendir(f.path);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) {
                continue;
            }
            unsigned char type = e->d_type;
            char *path = join(f.path, e->d_name);
            if (!path) {
                continue;
            }
            if (type == DT_UNKNOWN) {
                struct stat st;
                type = lstat(path, &st) != 0 ? DT_UNKNOWN
                       : S_ISDIR(st.st_mode) ? DT_DIR
                       : S_ISREG(st.st_mode) ? DT_REG
                                             : DT_UNKNOWN;
            }
            if (type == DT_DIR && !ignored_dir(w, e->d_name)) {
                if (n == cap) {
                    frame *s = realloc(stack, 2 * cap * sizeof *s);
                    if (!s) {
                        free(path);
                        continue;
                    }
                    stack = s;
                    cap *= 2;
                }
                stack[n++] = (frame){path, f.depth + 1};
                continue;
            }
            if (type != DT_DIR && report && included(w, e->d_name)) {
                cn_coalesce_changed(&w->pending, path, 1, now);
            }
            free(path);
        }
        if (d) {
            closedir(d);
        }
        free(f.path);
    }
    while (n > 0) {
        free(stack[--n].path);
    }
    free(stack);
    return rc;
}

static void free_watch(watch *w) {
    /* every wd of ours goes, the kernel's where no other watch uses it */
    cn_wdtab dirs = w->dirs;
    cn_wdtab_init(&w->dirs);
    for (size_t i = 0; i < dirs.cap; i++) {
        if (dirs.slots[i].wd >= 0 && !wd_in_use(dirs.slots[i].wd)) {
            inotify_rm_watch(g_ifd, dirs.slots[i].wd);
        }
    }
    cn_wdtab_free(&dirs);
    cn_coalesce_free(&w->pending);
    cn_watch_req_free(&w->req);
    cn_dest_free(&w->sub);
    free(w);
}

static int64_t g_next_watch_id = (int64_t)1 << 41;

static void reply_walk_error(const cn_request *r, const walk_error *we) {
    ei_x_buff x;
    cn_reply_begin(r, &x);
    ei_x_encode_tuple_header(&x, 2);
    ei_x_encode_atom(&x, "error");
    ei_x_encode_tuple_header(&x, 2);
    if (we->reason) {
        ei_x_encode_atom(&x, we->reason);
        ei_x_encode_binary(&x, we->path, (long)strlen(we->path));
    } else {
        char buf[32];
        ei_x_encode_atom(&x, "watch_failed");
        ei_x_encode_atom(&x, cn_errno_atom(we->err ? we->err : EIO, buf));
    }
    cn_reply_end(r, &x);
}

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
    cn_wdtab_init(&w->dirs);
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
    if (cn_dest_copy(&w->sub, w->req.subscriber ? w->req.subscriber : r->from, r->via_port) != 0) {
        free_watch(w);
        cn_reply_error_atom(r, "enomem");
        return;
    }
    if (g_ifd < 0) {
        g_ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    }
    walk_error we = {g_ifd < 0 ? errno : 0, NULL, NULL};
    /* linked first: wd_in_use must see this watch's descriptors */
    w->next = g_watches;
    g_watches = w;
    if (g_ifd < 0 || add_tree(w, w->req.dir, 0, 0, 1, cn_now_ms(), &we) != 0) {
        g_watches = w->next;
        reply_walk_error(r, &we);
        free(we.path);
        free_watch(w);
        return;
    }
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

int cn_watch_count(void) {
    int n = 0;
    for (watch *w = g_watches; w; w = w->next) {
        n++;
    }
    return n;
}

int cn_watch_pollfds(struct pollfd *fds, int max) {
    if (g_ifd < 0 || max < 1) {
        return 0;
    }
    fds[0] = (struct pollfd){g_ifd, POLLIN, 0};
    return 1;
}

/* The directories moved to (IN_MOVED_TO) in one buffer of events, by
 * cookie: the kernel queues a rename's IN_MOVED_FROM and IN_MOVED_TO
 * together, so when a directory is moved away the buffer tells at once
 * whether it stayed in a watched tree (renamed: its entries take the new
 * path before any later event is read) or left it (forgotten at once). */
typedef struct {
    uint32_t cookie;
    int wd;
    const char *name;
} moved_to;

typedef struct {
    moved_to *v;
    size_t n, cap;
} moves;

static void moves_scan(moves *m, const char *buf, ssize_t len) {
    m->n = 0;
    for (const char *p = buf; p < buf + len;) {
        const struct inotify_event *ev = (const struct inotify_event *)p;
        p += sizeof *ev + ev->len;
        if ((ev->mask & (IN_MOVED_TO | IN_ISDIR)) != (IN_MOVED_TO | IN_ISDIR) || ev->len == 0) {
            continue;
        }
        if (m->n == m->cap) {
            size_t cap = m->cap ? 2 * m->cap : 8;
            moved_to *v = realloc(m->v, cap * sizeof *v);
            if (!v) {
                continue;
            }
            m->v = v;
            m->cap = cap;
        }
        m->v[m->n++] = (moved_to){ev->cookie, ev->wd, ev->name};
    }
}

static const moved_to *moves_find(const moves *m, uint32_t cookie) {
    for (size_t i = 0; i < m->n; i++) {
        if (m->v[i].cookie == cookie) {
            return &m->v[i];
        }
    }
    return NULL;
}

static void handle_for(watch *w, const cn_wdent *dir, const struct inotify_event *ev, int64_t now,
                       const moves *mv) {
    char *path = join(dir->path, ev->name);
    int depth = dir->depth + 1;
    if (!path) {
        return;
    }
    if (ev->mask & IN_ISDIR) {
        if (ev->mask & IN_MOVED_FROM) {
            const moved_to *to = moves_find(mv, ev->cookie);
            const cn_wdent *dest = to ? cn_wdtab_get(&w->dirs, to->wd) : NULL;
            char *new_path = dest ? join(dest->path, to->name) : NULL;
            if (new_path) {
                cn_wdtab_rename(&w->dirs, path, new_path, dest->depth + 1);
                free(new_path);
            } else {
                forget_under(w, path); /* left this watch's tree */
            }
        } else if ((ev->mask & (IN_CREATE | IN_MOVED_TO)) && !ignored_dir(w, ev->name)) {
            walk_error we;
            if (add_tree(w, path, depth, 1, 0, now, &we) != 0) {
                if (we.reason || (we.err != ENOENT && we.err != ENOTDIR)) {
                    char buf[32];
                    send_event(w, "not_watched", we.path,
                               we.reason ? we.reason : cn_errno_atom(we.err, buf));
                }
                free(we.path);
            }
        }
        free(path);
        return;
    }
    if (included(w, ev->name)) {
        if (ev->mask & (IN_MOVED_FROM | IN_DELETE)) {
            cn_coalesce_gone(&w->pending, path, now);
        } else if (ev->mask & (IN_CREATE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO)) {
            cn_coalesce_changed(&w->pending, path, (ev->mask & IN_CREATE) != 0, now);
        }
    }
    free(path);
}

static void handle_event(const struct inotify_event *ev, int64_t now, const moves *mv) {
    if (ev->mask & IN_Q_OVERFLOW) {
        /* events were lost: rescan every watch, reporting every file */
        for (watch *w = g_watches; w; w = w->next) {
            walk_error we;
            add_tree(w, w->req.dir, 0, 1, 0, now, &we);
            free(we.path);
        }
        return;
    }
    if (ev->mask & IN_IGNORED) {
        for (watch *w = g_watches; w; w = w->next) {
            cn_wdtab_del(&w->dirs, ev->wd);
        }
        return;
    }
    if (ev->len == 0) {
        return;
    }
    for (watch *w = g_watches; w; w = w->next) {
        const cn_wdent *e = cn_wdtab_get(&w->dirs, ev->wd);
        if (e) {
            /* handle_for may change the table: work on a copy of the entry */
            cn_wdent copy = {e->wd, e->depth, strdup(e->path)};
            if (copy.path) {
                handle_for(w, &copy, ev, now, mv);
                free(copy.path);
            }
        }
    }
}

static void read_events(void) {
    static char buf[65536] __attribute__((aligned(__alignof__(struct inotify_event))));
    int64_t now = cn_now_ms();
    moves mv = {NULL, 0, 0};
    for (;;) {
        ssize_t n = read(g_ifd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        moves_scan(&mv, buf, n);
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            handle_event(ev, now, &mv);
            p += sizeof *ev + ev->len;
        }
    }
    free(mv.v);
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
        cn_send_raw(w->sub.raw, w->sub.len, w->sub.via_port, &x);
        ei_x_free(&x);
    }
}

void cn_watch_stop(void) {
    while (g_watches) {
        watch *w = g_watches;
        g_watches = w->next;
        free_watch(w);
    }
    if (g_ifd >= 0) {
        close(g_ifd);
        g_ifd = -1;
    }
}
