/* Landlock rulesets for confined jobs: the pure part. Pure C: no system
 * calls, no ei.h, so Criterion and libFuzzer reach it.
 *
 * A spawn may carry a `landlock` option: which directories (or files) the
 * job may read, read and execute, or write, and whether TCP and the scopes
 * (signals, abstract unix sockets) are closed. This module parses that
 * option into a spec, and turns a spec and the kernel's Landlock ABI into a
 * plan: the access rights the ruleset handles (everything the ABI knows, so
 * whatever is not granted by a rule is denied), the rights of each rule,
 * and what the ABI cannot enforce (reported, never silently dropped).
 *
 * The constants are our own copy of the kernel's UAPI: the system's
 * <linux/landlock.h> may be older than the running kernel. */
#ifndef SANDBOX_CN_LANDLOCK_H
#define SANDBOX_CN_LANDLOCK_H

#include <stddef.h>
#include <stdint.h>

#include "cn_request.h"
#include "cn_term.h"

/* Filesystem rights (ABI 1 unless noted). */
#define CN_LL_FS_EXECUTE (1ULL << 0)
#define CN_LL_FS_WRITE_FILE (1ULL << 1)
#define CN_LL_FS_READ_FILE (1ULL << 2)
#define CN_LL_FS_READ_DIR (1ULL << 3)
#define CN_LL_FS_REMOVE_DIR (1ULL << 4)
#define CN_LL_FS_REMOVE_FILE (1ULL << 5)
#define CN_LL_FS_MAKE_CHAR (1ULL << 6)
#define CN_LL_FS_MAKE_DIR (1ULL << 7)
#define CN_LL_FS_MAKE_REG (1ULL << 8)
#define CN_LL_FS_MAKE_SOCK (1ULL << 9)
#define CN_LL_FS_MAKE_FIFO (1ULL << 10)
#define CN_LL_FS_MAKE_BLOCK (1ULL << 11)
#define CN_LL_FS_MAKE_SYM (1ULL << 12)
#define CN_LL_FS_REFER (1ULL << 13)     /* ABI 2 */
#define CN_LL_FS_TRUNCATE (1ULL << 14)  /* ABI 3 */
#define CN_LL_FS_IOCTL_DEV (1ULL << 15) /* ABI 5 */
/* Network rights (ABI 4). */
#define CN_LL_NET_BIND_TCP (1ULL << 0)
#define CN_LL_NET_CONNECT_TCP (1ULL << 1)
/* Scopes (ABI 6). */
#define CN_LL_SCOPE_ABSTRACT_UNIX_SOCKET (1ULL << 0)
#define CN_LL_SCOPE_SIGNAL (1ULL << 1)

/* The rights that apply to a file (not a directory) in a rule. */
#define CN_LL_FS_FILE_RIGHTS                                                                       \
    (CN_LL_FS_EXECUTE | CN_LL_FS_WRITE_FILE | CN_LL_FS_READ_FILE | CN_LL_FS_TRUNCATE |             \
     CN_LL_FS_IOCTL_DEV)

/* The newest ABI whose rights we know; a newer kernel is used as this one. */
#define CN_LL_ABI_KNOWN 7

/* The kernel's struct landlock_ruleset_attr, with every field up to ABI 6
 * (the kernel takes a larger struct than it knows if the rest is zero). */
typedef struct {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
} cn_ll_ruleset_attr;

typedef enum {
    CN_LL_READ = 0, /* read files, list directories */
    CN_LL_EXEC,     /* read and execute */
    CN_LL_WRITE     /* everything but execute: create, write, remove, rename */
} cn_ll_class;

typedef struct {
    char *path;
    cn_ll_class cls;
} cn_ll_rule;

typedef struct cn_ll_spec {
    cn_ll_rule *rules;
    size_t n;
    int deny_tcp;  /* no TCP bind or connect */
    int scope;     /* no signals to, no abstract unix sockets of, processes outside */
    int proc_self; /* the job may read its own /proc/<pid> (added by the job itself) */
    int deny_bind; /* no TCP bind (connect allowed): tcp = connect */
} cn_ll_spec;

/* What an ABI cannot enforce of a spec: bits of cn_ll_plan.missing. */
enum {
    CN_LL_MISSING_TCP = 1 << 0,      /* ABI < 4: TCP stays open */
    CN_LL_MISSING_TRUNCATE = 1 << 1, /* ABI < 3: truncate(2) outside the rules */
    CN_LL_MISSING_REFER = 1 << 2,    /* ABI < 2: no renames or links across directories */
    CN_LL_MISSING_IOCTL = 1 << 3,    /* ABI < 5: ioctl on device files */
    CN_LL_MISSING_SCOPE = 1 << 4     /* ABI < 6: signals, abstract unix sockets */
};

typedef struct {
    int abi;
    cn_ll_ruleset_attr attr;
    unsigned missing;
} cn_ll_plan;

/* Parses the `landlock` option of a spawn: a map (or key list) with
 * `read`, `exec` and `write` (lists of absolute paths, each optional),
 * `tcp` (`deny` | `connect` | `allow`, default deny; `connect`: no bind), `scope` (boolean, default
 * true) and `proc_self` (boolean, default false: read access to the job's own /proc/<pid>, which
 * only the job's process can name before it execs). Reasons: bad_option with detail landlock. At
 * least one path. */
int cn_ll_parse(const cn_term *t, cn_ll_spec *out, cn_error *err);
void cn_ll_spec_free(cn_ll_spec *s);

/* The rights every ruleset of an ABI handles (0 for ABI < 1). */
uint64_t cn_ll_fs_handled(int abi);
uint64_t cn_ll_net_handled(int abi);
uint64_t cn_ll_scoped(int abi);

/* The rights a rule of class c grants at an ABI, on a directory or a file. */
uint64_t cn_ll_access(cn_ll_class c, int abi, int is_dir);

/* The plan of a spec at an ABI: -1 if the ABI has no Landlock (< 1). */
int cn_ll_plan_make(const cn_ll_spec *s, int abi, cn_ll_plan *p);

/* The name of one missing bit ("tcp", "truncate", ...), or NULL. */
const char *cn_ll_missing_name(unsigned bit);

/* The `landlock` setting of the C-node from its command line or environment:
 * "auto" (or NULL, ""): the kernel's ABI; "off": unavailable; a number N:
 * at most ABI N (to exercise older ABIs). Returns 0 and sets *max_abi (-1
 * for auto, 0 for off), or -1 if the text is none of these. */
int cn_ll_setting_parse(const char *s, int *max_abi);

/* The reason Landlock is unavailable, from the errno of the ABI query
 * (ENOSYS: the kernel lacks it; EOPNOTSUPP: built but not enabled at
 * boot), as an atom name. */
const char *cn_ll_errno_reason(int err);

#endif
