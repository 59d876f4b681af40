#include "cn_audit.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int posix_open(void *ctx, const char *path, int *created) {
    (void)ctx;
    /* O_RDWR: the last byte is read back after a crash (see `torn`) */
    const int flags = O_RDWR | O_APPEND | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY;
    int fd = open(path, flags | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
        *created = 1;
        return fd;
    }
    if (errno != EEXIST) {
        return -1;
    }
    *created = 0;
    fd = open(path, flags | O_NONBLOCK);
    if (fd < 0) {
        return -1; /* ELOOP: a symbolic link */
    }
    struct stat st;
    int err = 0;
    if (fstat(fd, &st) != 0) {
        err = errno;
    } else if (!S_ISREG(st.st_mode)) {
        err = EINVAL;
    } else if (st.st_uid != geteuid()) {
        err = EPERM;
    } else if (st.st_nlink != 1) {
        err = EMLINK; /* a hard link to someone else's file */
    } else if (fcntl(fd, F_SETFL, O_APPEND) != 0) {
        err = errno;
    }
    if (err) {
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}
static ssize_t posix_write(void *ctx, int fd, const void *buf, size_t n) {
    (void)ctx;
    return write(fd, buf, n);
}
static int posix_fsync(void *ctx, int fd) {
    (void)ctx;
    return fsync(fd);
}
static int posix_close(void *ctx, int fd) {
    (void)ctx;
    return close(fd);
}
static int posix_rename(void *ctx, const char *from, const char *to) {
    (void)ctx;
    return rename(from, to);
}
static int posix_unlink(void *ctx, const char *path) {
    (void)ctx;
    return unlink(path);
}

/* The directory part of path ("." when there is none), in a new string. */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        return strdup(".");
    }
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, path, n);
        d[n] = 0;
    }
    return d;
}

static int fsync_dir_path(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

static int posix_fsync_dir(void *ctx, const char *path) {
    (void)ctx;
    char *d = dir_of(path);
    if (!d) {
        errno = ENOMEM;
        return -1;
    }
    int rc = fsync_dir_path(d);
    free(d);
    return rc;
}

static int64_t posix_size(void *ctx, int fd) {
    (void)ctx;
    struct stat st;
    return fstat(fd, &st) == 0 ? (int64_t)st.st_size : -1;
}

static int posix_ends_with_newline(void *ctx, int fd) {
    (void)ctx;
    struct stat st;
    char c;
    if (fstat(fd, &st) != 0 || st.st_size == 0) {
        return -1;
    }
    return pread(fd, &c, 1, st.st_size - 1) == 1 ? c == '\n' : -1;
}

const cn_audit_io cn_audit_posix_io = {posix_open,
                                       posix_write,
                                       posix_fsync,
                                       posix_close,
                                       posix_rename,
                                       posix_unlink,
                                       posix_fsync_dir,
                                       posix_size,
                                       posix_ends_with_newline,
                                       NULL};

int cn_audit_private_dir(const char *dir) {
    if (mkdir(dir, 0700) == 0) {
        char *parent = dir_of(dir);
        if (parent) {
            (void)fsync_dir_path(parent);
            free(parent);
        }
        return 0;
    }
    if (errno != EEXIST) {
        return errno;
    }
    struct stat st;
    if (lstat(dir, &st) != 0) {
        return errno;
    }
    if (!S_ISDIR(st.st_mode)) {
        return ENOTDIR; /* a symbolic link, too */
    }
    if (st.st_uid != geteuid()) {
        return EPERM;
    }
    if (st.st_mode & 077) {
        return EACCES;
    }
    return 0;
}

/* (Re)opens the file: 0 or an errno value. A file this creates is made
 * durable in its directory at once. */
static int reopen(cn_audit *a) {
    int created = 0;
    int fd = a->io.open(a->io.ctx, a->path, &created);
    if (fd < 0) {
        return errno ? errno : EIO;
    }
    a->fd = fd;
    if (created && a->io.fsync_dir) {
        (void)a->io.fsync_dir(a->io.ctx, a->path);
    }
    a->size = a->io.size(a->io.ctx, a->fd);
    if (a->size < 0) {
        a->size = 0;
    }
    /* a line cut short by a crash must not swallow the next one */
    a->torn = !created;
    return 0;
}

int cn_audit_open(cn_audit *a, const cn_audit_io *io, const char *path, int64_t max_bytes, int keep,
                  cn_audit_ack ack, void *ack_ctx) {
    memset(a, 0, sizeof *a);
    a->io = *io;
    a->ack = ack;
    a->ack_ctx = ack_ctx;
    a->max_bytes = max_bytes;
    a->keep = keep;
    a->fd = -1;
    a->path = strdup(path);
    if (!a->path) {
        return ENOMEM;
    }
    return reopen(a);
}

static int write_all(cn_audit *a, const char *buf, size_t n) {
    while (n > 0) {
        ssize_t w = a->io.write(a->io.ctx, a->fd, buf, n);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return errno ? errno : EIO;
        }
        if (w == 0) {
            return EIO;
        }
        buf += w;
        n -= (size_t)w;
        a->size += w;
    }
    return 0;
}

int cn_audit_append(cn_audit *a, const char *line, size_t len, void *token) {
    if (!a->path) {
        return EBADF;
    }
    if (a->fd < 0) {
        int e = reopen(a);
        if (e) {
            return e;
        }
    }
    if (a->ntokens == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 64;
        void **t = realloc(a->tokens, cap * sizeof *t);
        if (!t) {
            return ENOMEM;
        }
        a->tokens = t;
        a->cap = cap;
    }
    if (a->torn) {
        /* end whatever partial line may precede ours (an empty line if none) */
        int64_t size = a->io.size(a->io.ctx, a->fd);
        int nl = a->io.ends_with_newline ? a->io.ends_with_newline(a->io.ctx, a->fd) : -1;
        if (size != 0 && nl != 1) {
            int e = write_all(a, "\n", 1);
            if (e) {
                return e;
            }
        }
        a->torn = 0;
    }
    char *buf = malloc(len + 1);
    if (!buf) {
        return ENOMEM;
    }
    memcpy(buf, line, len);
    buf[len] = '\n';
    int e = write_all(a, buf, len + 1);
    free(buf);
    if (e) {
        a->torn = 1;
        return e;
    }
    a->tokens[a->ntokens++] = token;
    return 0;
}

size_t cn_audit_pending(const cn_audit *a) {
    return a->ntokens;
}

/* Renames path to path.1 (path.1 to path.2, ...) and opens a new file. The
 * renames and the new file are made durable by one fsync of the directory.
 * When the new file cannot be opened, fd stays -1 and the next append tries
 * again. */
static void rotate(cn_audit *a) {
    size_t pl = strlen(a->path);
    char *from = malloc(pl + 16), *to = malloc(pl + 16);
    if (!from || !to) {
        free(from);
        free(to);
        return;
    }
    a->io.close(a->io.ctx, a->fd);
    a->fd = -1;
    for (int i = a->keep - 1; i >= 1; i--) {
        snprintf(from, pl + 16, "%s.%d", a->path, i);
        snprintf(to, pl + 16, "%s.%d", a->path, i + 1);
        a->io.rename(a->io.ctx, from, to); /* a missing one is fine */
    }
    if (a->keep >= 1) {
        snprintf(to, pl + 16, "%s.1", a->path);
        a->io.rename(a->io.ctx, a->path, to);
    } else {
        a->io.unlink(a->io.ctx, a->path);
    }
    free(from);
    free(to);
    a->size = 0;
    a->torn = 0;
    if (reopen(a) != 0 && a->io.fsync_dir) {
        /* no new file: the renames still have to be durable */
        (void)a->io.fsync_dir(a->io.ctx, a->path);
    }
}

void cn_audit_commit(cn_audit *a) {
    if (a->ntokens == 0) {
        return;
    }
    int err = 0;
    while (a->fd >= 0 && a->io.fsync(a->io.ctx, a->fd) != 0) {
        if (errno != EINTR) {
            err = errno ? errno : EIO;
            break;
        }
    }
    /* rotation first, so that a caller that got its ack sees the files settled */
    if (err == 0 && a->max_bytes > 0 && a->size >= a->max_bytes) {
        rotate(a);
    }
    size_t n = a->ntokens;
    a->ntokens = 0;
    for (size_t i = 0; i < n; i++) {
        a->ack(a->ack_ctx, a->tokens[i], err);
    }
}

void cn_audit_close(cn_audit *a) {
    cn_audit_commit(a);
    if (a->fd >= 0) {
        a->io.close(a->io.ctx, a->fd);
    }
    a->fd = -1;
    free(a->path);
    free(a->tokens);
    a->path = NULL;
    a->tokens = NULL;
    a->ntokens = a->cap = 0;
}

/* ---- JSON ---- */

static json_t *to_json(const cn_term *t, int depth) {
    if (depth > CN_TERM_MAX_DEPTH) {
        return NULL;
    }
    switch (t->type) {
    case CN_T_INT:
        return json_integer((json_int_t)t->u.i);
    case CN_T_FLOAT:
        return json_real(t->u.f);
    case CN_T_ATOM:
        if (cn_term_is_atom(t, "true")) {
            return json_true();
        }
        if (cn_term_is_atom(t, "false")) {
            return json_false();
        }
        if (cn_term_is_atom(t, "nil") || cn_term_is_atom(t, "null")) {
            return json_null();
        }
        return json_stringn((const char *)t->u.s.p, t->u.s.n);
    case CN_T_BINARY:
        return json_stringn((const char *)t->u.s.p, t->u.s.n);
    case CN_T_STRING: {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < t->u.s.n; i++) {
            json_array_append_new(arr, json_integer(t->u.s.p[i]));
        }
        return arr;
    }
    case CN_T_LIST:
    case CN_T_TUPLE: {
        json_t *arr = json_array();
        for (size_t i = 0; arr && i < t->u.c.n; i++) {
            json_t *v = to_json(&t->u.c.items[i], depth + 1);
            if (!v || json_array_append_new(arr, v) != 0) {
                json_decref(arr);
                return NULL;
            }
        }
        return arr;
    }
    case CN_T_MAP: {
        json_t *obj = json_object();
        for (size_t i = 0; obj && i < t->u.c.n; i++) {
            const cn_term *k = &t->u.c.items[2 * i];
            if (k->type != CN_T_BINARY && k->type != CN_T_ATOM) {
                json_decref(obj);
                return NULL;
            }
            json_t *v = to_json(&t->u.c.items[2 * i + 1], depth + 1);
            if (!v || json_object_setn_new(obj, (const char *)k->u.s.p, k->u.s.n, v) != 0) {
                json_decref(obj);
                return NULL;
            }
        }
        return obj;
    }
    default:
        return NULL;
    }
}

char *cn_json_encode(const cn_term *t, const char **err) {
    json_t *j = to_json(t, 0);
    if (!j) {
        *err = "bad_event";
        return NULL;
    }
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(j);
    if (!s) {
        *err = "bad_event";
    }
    return s;
}
