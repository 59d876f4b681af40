#include "cn_request.h"

#include "cn_landlock.h"
#include "cn_limits.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

static int fail(cn_error *err, const char *reason, const char *detail) {
    if (err) {
        err->reason = reason;
        err->detail = detail;
    }
    return -1;
}

int cn_request_parse(const cn_term *t, cn_request *r) {
    if (!t || t->type != CN_T_TUPLE || t->u.c.n != 4) {
        return -1;
    }
    const cn_term *it = t->u.c.items;
    if (it[0].type != CN_T_PID || it[2].type != CN_T_ATOM) {
        return -1;
    }
    r->from = &it[0];
    r->ref = &it[1];
    r->cmd = &it[2];
    r->args = &it[3];
    r->via_port = 0;
    return 0;
}

int cn_request_peek(const uint8_t *buf, size_t len, cn_arena *a, cn_term *from, cn_term *ref) {
    if (len < 3 || buf[0] != 131 || buf[1] != 104 || buf[2] != 4) {
        return -1;
    }
    size_t pos = 3;
    if (cn_term_decode_one(buf, len, &pos, a, from) != CN_TERM_OK || from->type != CN_T_PID) {
        return -1;
    }
    if (cn_term_decode_one(buf, len, &pos, a, ref) != CN_TERM_OK) {
        return -1;
    }
    return 0;
}

void cn_limits_init(cn_limits *l) {
    l->memory = l->processes = l->cpu_seconds = l->file_size = CN_LIMIT_NONE;
}

int cn_int_opt(const cn_term *t, int64_t min, int allow_inf, int64_t *out) {
    if (!t) {
        return -1;
    }
    if (allow_inf && (cn_term_is_atom(t, "infinity") || cn_term_is_atom(t, "nil"))) {
        *out = -1;
        return 0;
    }
    if (t->type != CN_T_INT || t->u.i < min) {
        return -1;
    }
    *out = t->u.i;
    return 0;
}

static const char *const limit_keys[] = {"memory", "processes", "cpu_seconds", "file_size"};

int cn_limits_parse(const cn_term *t, cn_limits *l, cn_error *err) {
    if (!t || (t->type != CN_T_MAP && t->type != CN_T_LIST)) {
        return fail(err, "bad_option", "limits");
    }
    size_t n = t->u.c.n;
    for (size_t i = 0; i < n; i++) {
        const cn_term *k, *v;
        if (t->type == CN_T_MAP) {
            k = &t->u.c.items[2 * i];
            v = &t->u.c.items[2 * i + 1];
        } else {
            const cn_term *kv = &t->u.c.items[i];
            if (kv->type != CN_T_TUPLE || kv->u.c.n != 2) {
                return fail(err, "bad_option", "limits");
            }
            k = &kv->u.c.items[0];
            v = &kv->u.c.items[1];
        }
        int64_t *slot = NULL;
        const char *name = NULL;
        int64_t *slots[] = {&l->memory, &l->processes, &l->cpu_seconds, &l->file_size};
        for (size_t j = 0; j < sizeof limit_keys / sizeof *limit_keys; j++) {
            if (cn_term_is_atom(k, limit_keys[j])) {
                slot = slots[j];
                name = limit_keys[j];
            }
        }
        if (!slot) {
            return fail(err, "unknown_limit", NULL);
        }
        int64_t val;
        /* A process limit of 0 could never be met: at least the child itself. */
        if (cn_int_opt(v, slot == &l->processes ? 1 : 0, 1, &val) != 0) {
            return fail(err, "bad_limit", name);
        }
        *slot = val;
    }
    return 0;
}

static void free_strv(char **v) {
    if (!v) {
        return;
    }
    for (char **p = v; *p; p++) {
        free(*p);
    }
    free(v);
}

/* A list of strings into a NULL-terminated vector. */
static int strv_parse(const cn_term *t, char ***out, size_t *count, int nonempty) {
    *out = NULL;
    *count = 0;
    if (!t || t->type != CN_T_LIST || (nonempty && t->u.c.n == 0)) {
        return -1;
    }
    size_t n = t->u.c.n;
    char **v = calloc(n + 1, sizeof *v);
    if (!v) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        v[i] = cn_term_strdup(&t->u.c.items[i]);
        if (!v[i]) {
            free_strv(v);
            return -1;
        }
    }
    *out = v;
    *count = n;
    return 0;
}

static int env_parse(const cn_term *t, char ***out, size_t *count) {
    *out = NULL;
    *count = 0;
    if (!t || t->type != CN_T_LIST) {
        return -1;
    }
    size_t n = t->u.c.n;
    char **v = calloc(n + 1, sizeof *v);
    if (!v) {
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        const cn_term *k = cn_term_tuple_elem(&t->u.c.items[i], 2, 0);
        const cn_term *val = cn_term_tuple_elem(&t->u.c.items[i], 2, 1);
        char *ks = cn_term_strdup(k);
        if (!ks || !*ks || strchr(ks, '=')) {
            free(ks);
            free_strv(v);
            return -1;
        }
        if (cn_term_is_atom(val, "nil") || cn_term_is_atom(val, "false")) {
            v[i] = ks;
            continue;
        }
        char *vs = cn_term_strdup(val);
        if (!vs) {
            free(ks);
            free_strv(v);
            return -1;
        }
        size_t kl = strlen(ks), vl = strlen(vs);
        v[i] = malloc(kl + vl + 2);
        if (v[i]) {
            memcpy(v[i], ks, kl);
            v[i][kl] = '=';
            memcpy(v[i] + kl + 1, vs, vl + 1);
        }
        free(ks);
        free(vs);
        if (!v[i]) {
            free_strv(v);
            return -1;
        }
    }
    *out = v;
    *count = n;
    return 0;
}

static int args_ok(const cn_term *args) {
    return args && (args->type == CN_T_MAP || args->type == CN_T_LIST);
}

/* The options of every request that creates something long-lived (a spawn,
 * a watch): its id (0 or absent: allocate one) and the pid its events go to. */
static int owner_opts(const cn_term *args, int64_t *id, const cn_term **subscriber, cn_error *err) {
    const cn_term *t;
    if ((t = cn_term_get(args, "id")) && cn_int_opt(t, 1, 0, id) != 0) {
        return fail(err, "bad_option", "id");
    }
    if ((t = cn_term_get(args, "subscriber"))) {
        if (t->type != CN_T_PID) {
            return fail(err, "bad_option", "subscriber");
        }
        *subscriber = t;
    }
    return 0;
}

int cn_spawn_parse(const cn_term *args, cn_spawn_req *r, cn_error *err) {
    memset(r, 0, sizeof *r);
    cn_limits_init(&r->limits);
    cn_limits_init(&r->ceiling);
    r->timeout_ms = -1;
    r->sample_ms = CN_DEFAULT_SAMPLE_MS;
    r->grace_ms = CN_DEFAULT_GRACE_MS;
    if (!args_ok(args)) {
        return fail(err, "bad_args", NULL);
    }
    const cn_term *t;
    if (strv_parse(cn_term_get(args, "argv"), &r->argv, &r->argc, 1) != 0) {
        goto bad_argv;
    }
    if ((t = cn_term_get(args, "env")) && env_parse(t, &r->env, &r->nenv) != 0) {
        fail(err, "bad_option", "env");
        goto error;
    }
    if ((t = cn_term_get(args, "cd")) && !cn_term_is_atom(t, "nil")) {
        r->cd = cn_term_strdup(t);
        if (!r->cd || !*r->cd) {
            fail(err, "bad_option", "cd");
            goto error;
        }
    }
    if ((t = cn_term_get(args, "limits")) && cn_limits_parse(t, &r->limits, err) != 0) {
        goto error;
    }
    if ((t = cn_term_get(args, "ceiling")) && cn_ceiling_parse(t, &r->ceiling, err) != 0) {
        goto error;
    }
    {
        cn_limits_plan plan;
        if (cn_limits_at_spawn(&r->limits, &r->ceiling, &plan, err) != 0) {
            goto error;
        }
    }
    if ((t = cn_term_get(args, "timeout")) && cn_int_opt(t, 0, 1, &r->timeout_ms) != 0) {
        fail(err, "bad_option", "timeout");
        goto error;
    }
    if ((t = cn_term_get(args, "sample_interval")) && cn_int_opt(t, 1, 0, &r->sample_ms) != 0) {
        fail(err, "bad_option", "sample_interval");
        goto error;
    }
    if ((t = cn_term_get(args, "grace")) && cn_int_opt(t, 0, 0, &r->grace_ms) != 0) {
        fail(err, "bad_option", "grace");
        goto error;
    }
    if ((t = cn_term_get(args, "landlock")) && !cn_term_is_atom(t, "nil")) {
        r->landlock = calloc(1, sizeof *r->landlock);
        if (!r->landlock) {
            fail(err, "enomem", NULL);
            goto error;
        }
        if (cn_ll_parse(t, r->landlock, err) != 0) {
            goto error;
        }
    }
    if (owner_opts(args, &r->id, &r->subscriber, err) != 0) {
        goto error;
    }
    return 0;
bad_argv:
    fail(err, "bad_option", "argv");
error:
    cn_spawn_req_free(r);
    return -1;
}

void cn_spawn_req_free(cn_spawn_req *r) {
    free_strv(r->argv);
    free_strv(r->env);
    free(r->cd);
    if (r->landlock) {
        cn_ll_spec_free(r->landlock);
        free(r->landlock);
    }
    r->argv = r->env = NULL;
    r->cd = NULL;
    r->landlock = NULL;
}

int cn_watch_parse(const cn_term *args, cn_watch_req *r, cn_error *err) {
    memset(r, 0, sizeof *r);
    r->debounce_ms = CN_DEFAULT_DEBOUNCE_MS;
    r->max_depth = CN_DEFAULT_MAX_DEPTH;
    if (!args_ok(args)) {
        return fail(err, "bad_args", NULL);
    }
    const cn_term *t;
    r->dir = cn_term_strdup(cn_term_get(args, "dir"));
    if (!r->dir || !*r->dir) {
        fail(err, "bad_option", "dir");
        goto error;
    }
    if ((t = cn_term_get(args, "include")) && strv_parse(t, &r->include, &r->ninclude, 0) != 0) {
        fail(err, "bad_option", "include");
        goto error;
    }
    if ((t = cn_term_get(args, "ignore")) && strv_parse(t, &r->ignore, &r->nignore, 0) != 0) {
        fail(err, "bad_option", "ignore");
        goto error;
    }
    if ((t = cn_term_get(args, "debounce")) && cn_int_opt(t, 0, 0, &r->debounce_ms) != 0) {
        fail(err, "bad_option", "debounce");
        goto error;
    }
    if ((t = cn_term_get(args, "max_depth")) &&
        (cn_int_opt(t, 0, 0, &r->max_depth) != 0 || r->max_depth > CN_MAX_MAX_DEPTH)) {
        fail(err, "bad_option", "max_depth");
        goto error;
    }
    if (owner_opts(args, &r->id, &r->subscriber, err) != 0) {
        goto error;
    }
    return 0;
error:
    cn_watch_req_free(r);
    return -1;
}

void cn_watch_req_free(cn_watch_req *r) {
    free(r->dir);
    free_strv(r->include);
    free_strv(r->ignore);
    r->dir = NULL;
    r->include = r->ignore = NULL;
}

static const struct {
    const char *name;
    int sig;
} signals[] = {
    {"sighup", SIGHUP},   {"sigint", SIGINT},   {"sigquit", SIGQUIT},   {"sigill", SIGILL},
    {"sigabrt", SIGABRT}, {"sigbus", SIGBUS},   {"sigfpe", SIGFPE},     {"sigkill", SIGKILL},
    {"sigusr1", SIGUSR1}, {"sigsegv", SIGSEGV}, {"sigusr2", SIGUSR2},   {"sigpipe", SIGPIPE},
    {"sigalrm", SIGALRM}, {"sigterm", SIGTERM}, {"sigchld", SIGCHLD},   {"sigcont", SIGCONT},
    {"sigstop", SIGSTOP}, {"sigtstp", SIGTSTP}, {"sigttin", SIGTTIN},   {"sigttou", SIGTTOU},
    {"sigxcpu", SIGXCPU}, {"sigxfsz", SIGXFSZ}, {"sigwinch", SIGWINCH},
};

int cn_signal_parse(const cn_term *t) {
    if (!t) {
        return -1;
    }
    if (t->type == CN_T_INT) {
        return t->u.i >= 1 && t->u.i <= 64 ? (int)t->u.i : -1;
    }
    for (size_t i = 0; i < sizeof signals / sizeof *signals; i++) {
        if (cn_term_is_atom(t, signals[i].name)) {
            return signals[i].sig;
        }
    }
    return -1;
}

const char *cn_signal_name(int sig) {
    for (size_t i = 0; i < sizeof signals / sizeof *signals; i++) {
        if (signals[i].sig == sig) {
            return signals[i].name;
        }
    }
    return NULL;
}
