/* The durable audit log: JSON lines (jansson), group commit, size rotation.
 *
 * Lines are written as they come; cn_audit_commit() then runs one fsync for
 * all of them and only after it returned acknowledges each line (the ack
 * callback), so an acknowledged line is on disk. A file the log creates
 * (at open, or by rotation) and the renames of a rotation are made durable
 * by an fsync of the directory. The file is opened without following a
 * symbolic link; an absent file is created exclusively (0600); an existing
 * one must be a regular file of ours with a single link. When an open fails
 * (at start, or after a rotation), every later append tries again first, so
 * the log recovers once the cause is gone. All I/O goes through an injected
 * table, so tests can check that ordering. Pure C: no ei.h. */
#ifndef SANDBOX_CN_AUDIT_H
#define SANDBOX_CN_AUDIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "cn_term.h"

typedef struct {
    /* Opens path for appending (see above); *created tells whether this
     * open created it. fd, or -1 with errno. */
    int (*open)(void *ctx, const char *path, int *created);
    ssize_t (*write)(void *ctx, int fd, const void *buf, size_t n);
    int (*fsync)(void *ctx, int fd);
    int (*close)(void *ctx, int fd);
    int (*rename)(void *ctx, const char *from, const char *to);
    int (*unlink)(void *ctx, const char *path);
    /* fsync of the directory that holds path */
    int (*fsync_dir)(void *ctx, const char *path);
    int64_t (*size)(void *ctx, int fd); /* current size, or -1 */
    /* 1 if the file's last byte is a newline, 0 if not, -1 unknown (NULL: unknown) */
    int (*ends_with_newline)(void *ctx, int fd);
    void *ctx;
} cn_audit_io;

/* err is 0 or an errno value. */
typedef void (*cn_audit_ack)(void *ctx, void *token, int err);

typedef struct {
    cn_audit_io io;
    cn_audit_ack ack;
    void *ack_ctx;
    char *path;
    int64_t max_bytes;
    int keep;
    int fd;
    int64_t size;
    int torn; /* a failed write may have left part of a line */
    void **tokens;
    size_t ntokens, cap;
} cn_audit;

/* The real I/O: open(2), write(2), fsync(2), ... */
extern const cn_audit_io cn_audit_posix_io;

/* Sets the log up and opens it: 0, or an errno value (ENOMEM: nothing was
 * set up; otherwise the log is set up and later appends retry the open). */
int cn_audit_open(cn_audit *a, const cn_audit_io *io, const char *path, int64_t max_bytes, int keep,
                  cn_audit_ack ack, void *ack_ctx);
/* Appends one line (the newline is added), reopening the file first if it
 * is not open. 0, or an errno value: the line was not written and its token
 * is not kept. */
int cn_audit_append(cn_audit *a, const char *line, size_t len, void *token);
/* fsync, then rotation when the file reached max_bytes, then the acks. */
void cn_audit_commit(cn_audit *a);
/* Lines appended but not yet acknowledged. */
size_t cn_audit_pending(const cn_audit *a);
void cn_audit_close(cn_audit *a);

/* Makes dir a private directory of ours: creates it 0700 (and fsyncs its
 * parent) when absent; an existing one must be a real directory (not a
 * symbolic link) owned by us with no access for group or others. 0, or an
 * errno value (ENOTDIR, EPERM for another owner, EACCES for loose modes). */
int cn_audit_private_dir(const char *dir);

/* The JSON text of a term (no newline), malloc'd, or NULL with *err set to an
 * atom name (bad_event). Maps become objects (keys: binaries or atoms),
 * lists and tuples arrays, atoms strings (true, false, nil -> true, false,
 * null), binaries strings (must be UTF-8). */
char *cn_json_encode(const cn_term *t, const char **err);

#endif
