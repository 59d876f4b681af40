/* The C-node's request envelope and the parsing of command arguments into
 * plain C structures. Pure C: no ei.h.
 *
 * A request is {FromPid, Ref, Command, Args}. Arguments are maps with atom
 * keys (lists of {Key, Value} are accepted too). Errors name a documented
 * reason atom and, where useful, the offending key. */
#ifndef SANDBOX_CN_REQUEST_H
#define SANDBOX_CN_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "cn_term.h"

#define CN_LIMIT_NONE (-1)
#define CN_DEFAULT_SAMPLE_MS 50
#define CN_DEFAULT_GRACE_MS 500
#define CN_DEFAULT_DEBOUNCE_MS 50
#define CN_DEFAULT_MAX_DEPTH 64
#define CN_MAX_MAX_DEPTH 4096

typedef struct {
    const char *reason; /* an atom name */
    const char *detail; /* NULL, or an atom name: {reason, detail} */
} cn_error;

typedef struct {
    const cn_term *from; /* a pid */
    const cn_term *ref;  /* any term */
    const cn_term *cmd;  /* an atom */
    const cn_term *args;
    /* 1 when the request came over the port: its replies go back the same
     * way, whatever node the sender's pid names (the host's name changes
     * when its distribution starts, stops or restarts). */
    int via_port;
} cn_request;

/* 0 if t is {Pid, Ref, Atom, Args}; -1 otherwise. */
int cn_request_parse(const cn_term *t, cn_request *r);

/* Reads the sender and reference from the first bytes of a request (of an
 * oversized frame). 0 on success. */
int cn_request_peek(const uint8_t *buf, size_t len, cn_arena *a, cn_term *from, cn_term *ref);

typedef struct {
    int64_t memory;      /* resident bytes of the whole process tree */
    int64_t processes;   /* processes in the tree */
    int64_t cpu_seconds; /* RLIMIT_CPU, relative to CPU already used when set later */
    int64_t file_size;   /* RLIMIT_FSIZE, bytes */
} cn_limits;

void cn_limits_init(cn_limits *l);
/* Merges the limits given in t (a map or key list; values non-negative
 * integers, or `infinity` / `nil` to remove) into *l. Reasons: bad_limit
 * (detail: the key), unknown_limit. */
int cn_limits_parse(const cn_term *t, cn_limits *l, cn_error *err);

struct cn_ll_spec; /* cn_landlock.h */

typedef struct {
    char **argv; /* NULL-terminated */
    size_t argc;
    char **env; /* "K=V" sets, "K" unsets; NULL-terminated */
    size_t nenv;
    char *cd; /* NULL: inherit */
    cn_limits limits;
    cn_limits ceiling;  /* the hard rlimits (cpu_seconds, file_size); -1: from limits */
    int64_t timeout_ms; /* -1: infinity */
    int64_t sample_ms;
    int64_t grace_ms;
    int64_t id; /* 0: allocate one */
    const cn_term *subscriber;
    struct cn_ll_spec *landlock; /* NULL: not confined */
} cn_spawn_req;

/* Reasons: bad_option (detail: the key), bad_limit, unknown_limit,
 * above_ceiling, enomem. Option `landlock`: see cn_landlock.h. */
int cn_spawn_parse(const cn_term *args, cn_spawn_req *out, cn_error *err);
void cn_spawn_req_free(cn_spawn_req *r);

typedef struct {
    char *dir;
    char **include; /* fnmatch patterns on the file name; empty: every file */
    size_t ninclude;
    char **ignore; /* directory names never entered */
    size_t nignore;
    int64_t debounce_ms;
    int64_t max_depth; /* directory levels below dir that are watched */
    int64_t id;
    const cn_term *subscriber;
} cn_watch_req;

int cn_watch_parse(const cn_term *args, cn_watch_req *out, cn_error *err);
void cn_watch_req_free(cn_watch_req *r);

/* A signal given as an atom (sigterm, sigkill, ...) or a number; -1 if not. */
int cn_signal_parse(const cn_term *t);
/* The atom name of a signal number (sigterm), or NULL. */
const char *cn_signal_name(int sig);

/* An integer >= min, or `infinity` (-> -1 when allow_inf). 0 on success. */
int cn_int_opt(const cn_term *t, int64_t min, int allow_inf, int64_t *out);

#endif
