#include "cn_limits.h"

#include "cn_time.h"

#define ABSENT (-2)

static int fail(cn_error *err, const char *reason, const char *detail) {
    if (err) {
        err->reason = reason;
        err->detail = detail;
    }
    return -1;
}

int64_t cn_as_backstop(int64_t memory) {
    if (memory < 0) {
        return CN_RLIM_INF;
    }
    int64_t a = cn_sat_mul(memory, 2), b = cn_deadline_add(memory, (int64_t)4 << 30);
    return a > b ? a : b;
}

/* The rlimits of the job state j. */
static void rlimits_of(const cn_joblimits *j, cn_limits_plan *p) {
    int64_t cc = j->ceiling.cpu_seconds, fc = j->ceiling.file_size;
    p->cpu.soft = j->limits.cpu_seconds >= 0 ? j->limits.cpu_seconds : cc;
    p->cpu.hard = cc >= 0 ? cn_deadline_add(cc, 1) : CN_RLIM_INF;
    p->fsize.soft = j->limits.file_size >= 0 ? j->limits.file_size : fc;
    p->fsize.hard = fc;
    p->as.soft = cn_as_backstop(j->limits.memory);
    p->as.hard = CN_RLIM_KEEP;
}

int cn_ceiling_parse(const cn_term *t, cn_limits *out, cn_error *err) {
    cn_limits_init(out);
    if (cn_limits_parse(t, out, err) != 0) {
        if (err && err->reason && err->detail == NULL) {
            return fail(err, "bad_option", "ceiling");
        }
        return -1;
    }
    if (out->memory != CN_LIMIT_NONE || out->processes != CN_LIMIT_NONE) {
        return fail(err, "bad_option", "ceiling");
    }
    return 0;
}

int cn_limits_at_spawn(const cn_limits *limits, const cn_limits *ceiling, cn_limits_plan *out,
                       cn_error *err) {
    cn_joblimits *j = &out->result;
    j->limits = *limits;
    cn_limits_init(&j->ceiling);
    j->ceiling.cpu_seconds = limits->cpu_seconds;
    j->ceiling.file_size = limits->file_size;
    if (ceiling) {
        if (ceiling->cpu_seconds >= 0) {
            if (limits->cpu_seconds > ceiling->cpu_seconds) {
                return fail(err, "above_ceiling", "cpu_seconds");
            }
            j->ceiling.cpu_seconds = ceiling->cpu_seconds;
        }
        if (ceiling->file_size >= 0) {
            if (limits->file_size > ceiling->file_size) {
                return fail(err, "above_ceiling", "file_size");
            }
            j->ceiling.file_size = ceiling->file_size;
        }
    }
    rlimits_of(j, out);
    out->cpu_set = out->fsize_set = out->as_set = 1;
    return 0;
}

int cn_limits_plan_change(const cn_joblimits *cur, const cn_term *t, int64_t cpu_used,
                          cn_limits_plan *out, cn_error *err) {
    cn_limits given = {ABSENT, ABSENT, ABSENT, ABSENT};
    if (cn_limits_parse(t, &given, err) != 0) {
        return -1;
    }
    cn_joblimits next = *cur;
    if (given.memory != ABSENT) {
        next.limits.memory = given.memory;
    }
    if (given.processes != ABSENT) {
        next.limits.processes = given.processes;
    }
    if (given.cpu_seconds != ABSENT) {
        int64_t soft = -1;
        if (given.cpu_seconds >= 0) {
            soft = cn_deadline_add(cpu_used < 0 ? 0 : cpu_used, given.cpu_seconds);
            if (cur->ceiling.cpu_seconds >= 0 && soft > cur->ceiling.cpu_seconds) {
                return fail(err, "above_ceiling", "cpu_seconds");
            }
        }
        next.limits.cpu_seconds = soft;
    }
    if (given.file_size != ABSENT) {
        if (given.file_size >= 0 && cur->ceiling.file_size >= 0 &&
            given.file_size > cur->ceiling.file_size) {
            return fail(err, "above_ceiling", "file_size");
        }
        next.limits.file_size = given.file_size;
    }
    out->result = next;
    rlimits_of(&next, out);
    /* the hard limits were fixed at spawn */
    out->cpu.hard = out->fsize.hard = CN_RLIM_KEEP;
    out->cpu_set = given.cpu_seconds != ABSENT;
    out->fsize_set = given.file_size != ABSENT;
    out->as_set = given.memory != ABSENT;
    return 0;
}
