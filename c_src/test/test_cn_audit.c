/* Criterion tests of the audit log: JSON encoding of events, and, with the
 * I/O layer injected, that every acknowledgement comes after the fsync that
 * covers its line, and rotation. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cn_audit.h"
#include "cn_term.h"

#define T(...) ((const uint8_t[]){__VA_ARGS__})

static char *json_of(const uint8_t *buf, size_t len) {
    cn_arena a;
    cn_arena_init(&a);
    cn_term *t;
    cr_assert_eq(cn_term_decode(buf, len, &a, &t), CN_TERM_OK);
    const char *err = NULL;
    char *s = cn_json_encode(t, &err);
    cn_arena_free(&a);
    return s;
}
#define JSON(...) json_of(T(__VA_ARGS__), sizeof(T(__VA_ARGS__)))

Test(cn_json, encodes_event_terms) {
    /* #{<<"event">> => created, ok => true, n => -2, l => [nil, {1, <<"q\"">>}]} */
    char *s = JSON(131, 116, 0, 0, 0, 4, 109, 0, 0, 0, 5, 'e', 'v', 'e', 'n', 't', 119, 7, 'c', 'r',
                   'e', 'a', 't', 'e', 'd', 119, 2, 'o', 'k', 119, 4, 't', 'r', 'u', 'e', 119, 1,
                   'n', 98, 0xff, 0xff, 0xff, 0xfe, 119, 1, 'l', 108, 0, 0, 0, 2, 119, 3, 'n', 'i',
                   'l', 104, 2, 97, 1, 109, 0, 0, 0, 2, 'q', '"', 106);
    cr_assert_str_eq(s, "{\"event\":\"created\",\"ok\":true,\"n\":-2,\"l\":[null,[1,\"q\\\"\"]]}");
    free(s);
    /* a float */
    s = JSON(131, 70, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0);
    cr_assert_str_eq(s, "1.5");
    free(s);
}

Test(cn_json, refuses_what_json_cannot_hold) {
    /* a binary that is not UTF-8 */
    cr_assert_null(JSON(131, 109, 0, 0, 0, 1, 0xff));
    /* an integer key */
    cr_assert_null(JSON(131, 116, 0, 0, 0, 1, 97, 1, 97, 2));
    /* a pid */
    cr_assert_null(JSON(131, 88, 119, 1, 'a', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0));
}

/* ---- the audit writer with recorded I/O ---- */

enum { OP_OPEN, OP_WRITE, OP_FSYNC, OP_CLOSE, OP_RENAME, OP_ACK, OP_FSYNC_DIR, OP_UNLINK };

typedef struct {
    int ops[4096];
    long arg[4096];
    int nops;
    int64_t size;
    int fail_fsync;
    int fail_write_after; /* fail writes once this many bytes were written; -1 never */
    int64_t written;
    int fail_opens; /* the next this many opens fail with EMFILE */
    int opens;
} rec;

static void log_op(rec *r, int op, long arg) {
    cr_assert_lt(r->nops, 4096);
    r->ops[r->nops] = op;
    r->arg[r->nops++] = arg;
}
static int r_open(void *ctx, const char *path, int *created) {
    (void)path;
    rec *r = ctx;
    log_op(r, OP_OPEN, 0);
    r->opens++;
    if (r->fail_opens > 0) {
        r->fail_opens--;
        errno = EMFILE;
        return -1;
    }
    *created = 1;
    r->size = 0;
    return 7;
}
static ssize_t r_write(void *ctx, int fd, const void *buf, size_t n) {
    (void)fd;
    (void)buf;
    rec *r = ctx;
    if (r->fail_write_after >= 0 && r->written + (int64_t)n > r->fail_write_after) {
        errno = ENOSPC;
        return -1;
    }
    /* short writes: at most 5 bytes at a time */
    size_t w = n > 5 ? 5 : n;
    log_op(r, OP_WRITE, (long)w);
    r->size += (int64_t)w;
    r->written += (int64_t)w;
    return (ssize_t)w;
}
static int r_fsync(void *ctx, int fd) {
    (void)fd;
    rec *r = ctx;
    log_op(r, OP_FSYNC, 0);
    if (r->fail_fsync) {
        errno = EIO;
        return -1;
    }
    return 0;
}
static int r_close(void *ctx, int fd) {
    (void)fd;
    log_op(ctx, OP_CLOSE, 0);
    return 0;
}
static int r_rename(void *ctx, const char *from, const char *to) {
    (void)from;
    (void)to;
    log_op(ctx, OP_RENAME, 0);
    return 0;
}
static int r_unlink(void *ctx, const char *path) {
    (void)path;
    log_op(ctx, OP_UNLINK, 0);
    return 0;
}
static int r_fsync_dir(void *ctx, const char *path) {
    (void)path;
    log_op(ctx, OP_FSYNC_DIR, 0);
    return 0;
}
static int64_t r_size(void *ctx, int fd) {
    (void)fd;
    return ((rec *)ctx)->size;
}
static void r_ack(void *ctx, void *token, int err) {
    log_op(ctx, OP_ACK, (long)(intptr_t)token * 1000 + err);
}

static cn_audit_io rec_io(rec *r) {
    cn_audit_io io = {r_open,   r_write,     r_fsync, r_close, r_rename,
                      r_unlink, r_fsync_dir, r_size,  NULL,    r};
    return io;
}

Test(cn_audit, each_ack_follows_the_fsync_covering_its_line) {
    rec r = {.fail_write_after = -1};
    cn_audit_io io = rec_io(&r);
    cn_audit a;
    cr_assert_eq(cn_audit_open(&a, &io, "/log", 0, 0, r_ack, &r), 0);
    /* three rounds of group commit: 3, 1 and 2 lines */
    int rounds[] = {3, 1, 2};
    long token = 1;
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < rounds[k]; i++) {
            cr_assert_eq(cn_audit_append(&a, "{\"event\":\"x\"}", 13, (void *)(intptr_t)token++),
                         0);
        }
        cr_assert_eq(cn_audit_pending(&a), (size_t)rounds[k]);
        cn_audit_commit(&a);
        cr_assert_eq(cn_audit_pending(&a), 0);
    }
    /* replay: an ack is allowed only when no write happened since the last fsync */
    int dirty = 0, acks = 0, fsyncs = 0;
    long next = 1;
    for (int i = 0; i < r.nops; i++) {
        switch (r.ops[i]) {
        case OP_WRITE:
            dirty = 1;
            break;
        case OP_FSYNC:
            dirty = 0;
            fsyncs++;
            break;
        case OP_ACK:
            cr_assert(!dirty, "ack %d before the fsync of its line", i);
            cr_assert_eq(r.arg[i], next * 1000); /* in order, no error */
            next++;
            acks++;
            break;
        default:
            break;
        }
    }
    cr_assert_eq(acks, 6);
    cr_assert_eq(fsyncs, 3); /* one per round: group commit */
    cn_audit_close(&a);
}

Test(cn_audit, a_failed_fsync_acks_the_error) {
    rec r = {.fail_write_after = -1, .fail_fsync = 1};
    cn_audit_io io = rec_io(&r);
    cn_audit a;
    cr_assert_eq(cn_audit_open(&a, &io, "/log", 0, 0, r_ack, &r), 0);
    cn_audit_append(&a, "{}", 2, (void *)(intptr_t)1);
    cn_audit_commit(&a);
    cr_assert_eq(r.ops[r.nops - 1], OP_ACK);
    cr_assert_eq(r.arg[r.nops - 1], 1000 + EIO);
    r.fail_fsync = 0;
    cn_audit_close(&a);
}

Test(cn_audit, a_failed_write_is_reported_and_never_acknowledged) {
    rec r = {.fail_write_after = 8};
    cn_audit_io io = rec_io(&r);
    cn_audit a;
    cr_assert_eq(cn_audit_open(&a, &io, "/log", 0, 0, r_ack, &r), 0);
    cr_assert_eq(cn_audit_append(&a, "{\"a\":1}", 7, (void *)(intptr_t)1), 0);
    cr_assert_eq(cn_audit_append(&a, "{\"b\":2}", 7, (void *)(intptr_t)2), ENOSPC);
    cn_audit_commit(&a);
    int acks = 0;
    for (int i = 0; i < r.nops; i++) {
        if (r.ops[i] == OP_ACK) {
            acks++;
            cr_assert_eq(r.arg[i], 1000);
        }
    }
    cr_assert_eq(acks, 1);
    cn_audit_close(&a);
}

Test(cn_audit, rotates_by_size_before_acknowledging) {
    rec r = {.fail_write_after = -1};
    cn_audit_io io = rec_io(&r);
    cn_audit a;
    cr_assert_eq(cn_audit_open(&a, &io, "/log", 20, 3, r_ack, &r), 0);
    cn_audit_append(&a, "{\"pad\":\"xxxxxxxxxxxx\"}", 22, (void *)(intptr_t)1);
    cn_audit_commit(&a);
    /* fsync, close, renames (.2->.3, .1->.2, log->.1), open, the directory's
     * fsync (the renames and the new file), then the ack */
    int i = 0;
    while (r.ops[i] != OP_FSYNC) {
        i++;
    }
    int want[] = {OP_FSYNC,  OP_CLOSE, OP_RENAME,    OP_RENAME,
                  OP_RENAME, OP_OPEN,  OP_FSYNC_DIR, OP_ACK};
    for (size_t k = 0; k < sizeof want / sizeof *want; k++) {
        cr_assert_eq(r.ops[i + (int)k], want[k], "op %zu", k);
    }
    cn_audit_close(&a);
}

static void noop_ack(void *ctx, void *token, int err) {
    (void)token;
    *(int *)ctx += err == 0;
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f);
    static char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

Test(cn_audit, a_line_cut_short_by_a_crash_does_not_swallow_the_next) {
    char path[] = "/tmp/cn_audit_test_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char *before = "{\"a\":1}\n{\"part";
    cr_assert_eq(write(fd, before, strlen(before)), (ssize_t)strlen(before));
    close(fd);
    int acks = 0;
    cn_audit a;
    cr_assert_eq(cn_audit_open(&a, &cn_audit_posix_io, path, 0, 0, noop_ack, &acks), 0);
    cr_assert_eq(cn_audit_append(&a, "{\"b\":2}", 7, NULL), 0);
    cn_audit_commit(&a);
    cn_audit_close(&a);
    cr_assert_eq(acks, 1);
    cr_assert_str_eq(slurp(path), "{\"a\":1}\n{\"part\n{\"b\":2}\n");
    /* a file that ends with a newline gets no blank line */
    cr_assert_eq(cn_audit_open(&a, &cn_audit_posix_io, path, 0, 0, noop_ack, &acks), 0);
    cr_assert_eq(cn_audit_append(&a, "{}", 2, NULL), 0);
    cn_audit_close(&a);
    cr_assert_eq(acks, 2);
    cr_assert_str_eq(slurp(path), "{\"a\":1}\n{\"part\n{\"b\":2}\n{}\n");
    unlink(path);
}

Test(cn_audit, a_new_file_is_made_durable_in_its_directory) {
    rec r = {.fail_write_after = -1};
    cn_audit_io io = rec_io(&r);
    cn_audit a;
    cr_assert_eq(cn_audit_open(&a, &io, "/log", 0, 0, r_ack, &r), 0);
    cr_assert_eq(r.nops, 2);
    cr_assert_eq(r.ops[0], OP_OPEN);
    cr_assert_eq(r.ops[1], OP_FSYNC_DIR);
    cn_audit_close(&a);
}

Test(cn_audit, a_failed_reopen_after_rotation_recovers) {
    /* The reopen after a rotation fails (EMFILE); it used to leave fd -1 and
     * every later append failing with EBADF for good. */
    rec r = {.fail_write_after = -1};
    cn_audit_io io = rec_io(&r);
    cn_audit a;
    cr_assert_eq(cn_audit_open(&a, &io, "/log", 10, 1, r_ack, &r), 0);
    cr_assert_eq(cn_audit_append(&a, "{\"pad\":\"xxxxxxxx\"}", 18, (void *)(intptr_t)1), 0);
    r.fail_opens = 1;
    cn_audit_commit(&a); /* rotates; the reopen fails */
    cr_assert_eq(r.ops[r.nops - 1], OP_ACK);
    cr_assert_eq(r.arg[r.nops - 1], 1000); /* the line itself was on disk */
    /* the next append opens the file again and is acknowledged */
    cr_assert_eq(cn_audit_append(&a, "{}", 2, (void *)(intptr_t)2), 0);
    cn_audit_commit(&a);
    cr_assert_eq(r.ops[r.nops - 1], OP_ACK);
    cr_assert_eq(r.arg[r.nops - 1], 2000);
    /* an open failing at start is retried the same way */
    cn_audit_close(&a);
    r.fail_opens = 2;
    cr_assert_eq(cn_audit_open(&a, &io, "/log", 0, 0, r_ack, &r), EMFILE);
    cr_assert_eq(cn_audit_append(&a, "{}", 2, (void *)(intptr_t)3), EMFILE);
    cr_assert_eq(cn_audit_append(&a, "{}", 2, (void *)(intptr_t)4), 0);
    cn_audit_commit(&a);
    cr_assert_eq(r.arg[r.nops - 1], 4000);
    cn_audit_close(&a);
}

static void tmpdir(char *buf) {
    strcpy(buf, "/tmp/cn_audit_dir_XXXXXX");
    cr_assert_not_null(mkdtemp(buf));
}

Test(cn_audit, posix_open_refuses_links_and_foreign_files) {
    char dir[64], path[128], victim[128], other[160];
    tmpdir(dir);
    snprintf(path, sizeof path, "%s/audit.log", dir);
    snprintf(victim, sizeof victim, "%s/victim", dir);
    snprintf(other, sizeof other, "%s/other", dir);
    int fd = open(victim, O_CREAT | O_WRONLY, 0644);
    cr_assert_geq(fd, 0);
    close(fd);
    int acks = 0;
    cn_audit a;
    /* a symbolic link planted where the log goes is never followed */
    cr_assert_eq(symlink(victim, path), 0);
    cr_assert_eq(cn_audit_open(&a, &cn_audit_posix_io, path, 0, 0, noop_ack, &acks), ELOOP);
    cr_assert_eq(cn_audit_append(&a, "{}", 2, NULL), ELOOP);
    cn_audit_close(&a);
    struct stat st;
    cr_assert_eq(stat(victim, &st), 0);
    cr_assert_eq(st.st_size, 0);
    unlink(path);
    /* nor a hard link to another file */
    cr_assert_eq(link(victim, path), 0);
    cr_assert_eq(cn_audit_open(&a, &cn_audit_posix_io, path, 0, 0, noop_ack, &acks), EMLINK);
    cn_audit_close(&a);
    unlink(path);
    /* nor a file of another user (checkable as root only) */
    if (geteuid() == 0) {
        fd = open(path, O_CREAT | O_WRONLY, 0644);
        cr_assert_eq(fchown(fd, 65534, 65534), 0);
        close(fd);
        cr_assert_eq(cn_audit_open(&a, &cn_audit_posix_io, path, 0, 0, noop_ack, &acks), EPERM);
        cn_audit_close(&a);
        unlink(path);
    }
    /* a fresh file is ours alone */
    cr_assert_eq(cn_audit_open(&a, &cn_audit_posix_io, path, 0, 0, noop_ack, &acks), 0);
    cr_assert_eq(cn_audit_append(&a, "{}", 2, NULL), 0);
    cn_audit_close(&a);
    cr_assert_eq(acks, 1);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    /* and a rotation through the real file system keeps going */
    cr_assert_eq(cn_audit_open(&a, &cn_audit_posix_io, path, 4, 2, noop_ack, &acks), 0);
    cr_assert_eq(cn_audit_append(&a, "{\"a\":1}", 7, NULL), 0);
    cn_audit_commit(&a); /* rotates: .1 */
    cr_assert_eq(cn_audit_append(&a, "{\"b\":2}", 7, NULL), 0);
    cn_audit_close(&a); /* rotates again: .2 and .1 */
    cr_assert_eq(acks, 3);
    snprintf(other, sizeof other, "%s.2", path);
    cr_assert_str_eq(slurp(other), "{}\n{\"a\":1}\n");
    unlink(other);
    snprintf(other, sizeof other, "%s.1", path);
    cr_assert_str_eq(slurp(other), "{\"b\":2}\n");
    unlink(other);
    cr_assert_str_eq(slurp(path), "");
    unlink(path);
    unlink(victim);
    rmdir(dir);
}

Test(cn_audit, private_directories) {
    char base[64], dir[128], link_path[128];
    tmpdir(base);
    snprintf(dir, sizeof dir, "%s/vm", base);
    cr_assert_eq(cn_audit_private_dir(dir), 0);
    struct stat st;
    cr_assert_eq(lstat(dir, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0700);
    cr_assert_eq(cn_audit_private_dir(dir), 0); /* a second run finds it */
    chmod(dir, 0755);
    cr_assert_eq(cn_audit_private_dir(dir), EACCES);
    rmdir(dir);
    /* a symbolic link to a directory (of ours, even) is refused */
    snprintf(link_path, sizeof link_path, "%s/ln", base);
    cr_assert_eq(symlink(base, link_path), 0);
    cr_assert_eq(cn_audit_private_dir(link_path), ENOTDIR);
    unlink(link_path);
    if (geteuid() == 0) {
        cr_assert_eq(mkdir(dir, 0700), 0);
        cr_assert_eq(chown(dir, 65534, 65534), 0);
        cr_assert_eq(cn_audit_private_dir(dir), EPERM);
        rmdir(dir);
    }
    rmdir(base);
}
