/* The kernel resource limits of a job, and how `set_limits` changes them.
 *
 * RLIMIT_CPU and RLIMIT_FSIZE have a soft limit (what the kernel enforces
 * with SIGXCPU / SIGXFSZ) and a hard limit (the ceiling the soft one may be
 * raised to; only a privileged process may raise a hard limit). A job's
 * hard limits are fixed when it is spawned: its `ceiling` when given, else
 * its spawn-time limits, else unlimited. `set_limits` then moves the soft
 * limits anywhere up to that ceiling: a value above it is refused
 * (above_ceiling) and `infinity` puts the soft limit back at the ceiling,
 * which removes the limit when the ceiling is unlimited. (The hard CPU limit
 * is the ceiling + 1 s, so SIGXCPU comes before the kernel's SIGKILL.)
 *
 * RLIMIT_AS is only a backstop for the sampled memory limit: its soft value
 * follows the memory limit, its hard value is never touched. A change is
 * planned completely before anything is applied, so a refused request
 * changes nothing. Pure C. */
#ifndef SANDBOX_CN_LIMITS_H
#define SANDBOX_CN_LIMITS_H

#include <stdint.h>

#include "cn_request.h"
#include "cn_term.h"

#define CN_RLIM_INF (-1)  /* unlimited */
#define CN_RLIM_KEEP (-2) /* hard: leave it as it is */

typedef struct {
    int64_t soft, hard; /* CN_RLIM_INF, CN_RLIM_KEEP (hard only), or a value */
} cn_rlim;

typedef struct {
    /* In force: memory and processes (sampled by the C-node), cpu_seconds
     * (the soft RLIMIT_CPU, absolute CPU seconds since the job started) and
     * file_size (the soft RLIMIT_FSIZE); -1 none. */
    cn_limits limits;
    /* The ceilings of cpu_seconds and file_size (absolute); -1 none. */
    cn_limits ceiling;
} cn_joblimits;

typedef struct {
    int cpu_set, fsize_set, as_set;
    cn_rlim cpu, fsize, as;
    cn_joblimits result; /* what is in force once every rlimit applied */
} cn_limits_plan;

/* The RLIMIT_AS backstop of a resident memory limit: a BEAM reserves about
 * 1 GB of address space at start, so only runaways far beyond are caught. */
int64_t cn_as_backstop(int64_t memory);

/* The limits of a new job from its spawn request: `limits` and `ceiling`
 * (NULL: none; only cpu_seconds and file_size). Reasons: above_ceiling
 * (detail: the key). Every rlimit is set in the plan. */
int cn_limits_at_spawn(const cn_limits *limits, const cn_limits *ceiling, cn_limits_plan *out,
                       cn_error *err);

/* A `set_limits` request t (map or key list) against the job's limits in
 * force; cpu_used: the CPU seconds the job already used, rounded up
 * (cpu_seconds in t counts from there). The plan's hard limits are all
 * CN_RLIM_KEEP. Reasons as cn_limits_parse, and above_ceiling (detail: the
 * key). */
int cn_limits_plan_change(const cn_joblimits *cur, const cn_term *t, int64_t cpu_used,
                          cn_limits_plan *out, cn_error *err);

/* The parse of a ceiling map: only cpu_seconds and file_size; reasons as
 * cn_limits_parse, and bad_option (detail: ceiling) for other keys. */
int cn_ceiling_parse(const cn_term *t, cn_limits *out, cn_error *err);

#endif
