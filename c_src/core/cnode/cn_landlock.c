#include "cn_landlock.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int fail(cn_error *err) {
    if (err) {
        err->reason = "bad_option";
        err->detail = "landlock";
    }
    return -1;
}

void cn_ll_spec_free(cn_ll_spec *s) {
    if (!s) {
        return;
    }
    for (size_t i = 0; i < s->n; i++) {
        free(s->rules[i].path);
    }
    free(s->rules);
    s->rules = NULL;
    s->n = 0;
}

/* Appends the paths of list t (absolute, no NUL) as rules of class c. */
static int add_paths(cn_ll_spec *s, const cn_term *t, cn_ll_class c) {
    if (!t) {
        return 0;
    }
    if (t->type != CN_T_LIST) {
        return -1;
    }
    size_t n = t->u.c.n;
    if (n == 0) {
        return 0;
    }
    if (n > SIZE_MAX / sizeof *s->rules - s->n) {
        return -1;
    }
    cn_ll_rule *r = realloc(s->rules, (s->n + n) * sizeof *r);
    if (!r) {
        return -1;
    }
    s->rules = r;
    for (size_t i = 0; i < n; i++) {
        char *p = cn_term_strdup(&t->u.c.items[i]);
        if (!p || p[0] != '/') {
            free(p);
            return -1;
        }
        s->rules[s->n].path = p;
        s->rules[s->n].cls = c;
        s->n++;
    }
    return 0;
}

static int bool_opt(const cn_term *t, int dflt, int *out) {
    if (!t) {
        *out = dflt;
        return 0;
    }
    if (cn_term_is_atom(t, "true")) {
        *out = 1;
        return 0;
    }
    if (cn_term_is_atom(t, "false")) {
        *out = 0;
        return 0;
    }
    return -1;
}

static int known_key(const cn_term *k) {
    static const char *const keys[] = {"read", "exec", "write", "tcp", "scope", "proc_self"};
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        if (cn_term_is_atom(k, keys[i])) {
            return 1;
        }
    }
    return 0;
}

int cn_ll_parse(const cn_term *t, cn_ll_spec *s, cn_error *err) {
    memset(s, 0, sizeof *s);
    if (!t || (t->type != CN_T_MAP && t->type != CN_T_LIST)) {
        return fail(err);
    }
    /* every key known: a misspelt one would silently grant or deny less */
    for (size_t i = 0; i < t->u.c.n; i++) {
        const cn_term *k;
        if (t->type == CN_T_MAP) {
            k = &t->u.c.items[2 * i];
        } else {
            k = cn_term_tuple_elem(&t->u.c.items[i], 2, 0);
        }
        if (!k || !known_key(k)) {
            return fail(err);
        }
    }
    if (add_paths(s, cn_term_get(t, "read"), CN_LL_READ) != 0 ||
        add_paths(s, cn_term_get(t, "exec"), CN_LL_EXEC) != 0 ||
        add_paths(s, cn_term_get(t, "write"), CN_LL_WRITE) != 0) {
        goto error;
    }
    const cn_term *tcp = cn_term_get(t, "tcp");
    if (!tcp || cn_term_is_atom(tcp, "deny")) {
        s->deny_tcp = 1;
    } else if (cn_term_is_atom(tcp, "connect")) {
        s->deny_tcp = 0;
        s->deny_bind = 1;
    } else if (cn_term_is_atom(tcp, "allow")) {
        s->deny_tcp = 0;
    } else {
        goto error;
    }
    if (bool_opt(cn_term_get(t, "scope"), 1, &s->scope) != 0 ||
        bool_opt(cn_term_get(t, "proc_self"), 0, &s->proc_self) != 0) {
        goto error;
    }
    if (s->n == 0) {
        goto error; /* nothing readable: not even the program could start */
    }
    return 0;
error:
    cn_ll_spec_free(s);
    return fail(err);
}

uint64_t cn_ll_fs_handled(int abi) {
    if (abi < 1) {
        return 0;
    }
    uint64_t fs = (CN_LL_FS_MAKE_SYM << 1) - 1; /* EXECUTE .. MAKE_SYM */
    if (abi >= 2) {
        fs |= CN_LL_FS_REFER;
    }
    if (abi >= 3) {
        fs |= CN_LL_FS_TRUNCATE;
    }
    if (abi >= 5) {
        fs |= CN_LL_FS_IOCTL_DEV;
    }
    return fs;
}

uint64_t cn_ll_net_handled(int abi) {
    return abi >= 4 ? (CN_LL_NET_BIND_TCP | CN_LL_NET_CONNECT_TCP) : 0;
}

uint64_t cn_ll_scoped(int abi) {
    return abi >= 6 ? (CN_LL_SCOPE_ABSTRACT_UNIX_SOCKET | CN_LL_SCOPE_SIGNAL) : 0;
}

uint64_t cn_ll_access(cn_ll_class c, int abi, int is_dir) {
    uint64_t handled = cn_ll_fs_handled(abi);
    uint64_t a;
    switch (c) {
    case CN_LL_READ:
        a = CN_LL_FS_READ_FILE | CN_LL_FS_READ_DIR;
        break;
    case CN_LL_EXEC:
        a = CN_LL_FS_READ_FILE | CN_LL_FS_READ_DIR | CN_LL_FS_EXECUTE;
        break;
    case CN_LL_WRITE:
        /* device ioctls stay closed even where writing is allowed */
        a = handled &
            ~(CN_LL_FS_EXECUTE | CN_LL_FS_IOCTL_DEV | CN_LL_FS_MAKE_CHAR | CN_LL_FS_MAKE_BLOCK);
        break;
    default:
        return 0;
    }
    a &= handled;
    if (!is_dir) {
        a &= CN_LL_FS_FILE_RIGHTS;
    }
    return a;
}

int cn_ll_plan_make(const cn_ll_spec *s, int abi, cn_ll_plan *p) {
    memset(p, 0, sizeof *p);
    if (abi < 1) {
        return -1;
    }
    if (abi > CN_LL_ABI_KNOWN) {
        abi = CN_LL_ABI_KNOWN;
    }
    p->abi = abi;
    p->attr.handled_access_fs = cn_ll_fs_handled(abi);
    if (s->deny_tcp || s->deny_bind) {
        p->attr.handled_access_net = cn_ll_net_handled(abi);
        if (!s->deny_tcp) {
            /* connect is not handled, so allowed; bind is refused */
            p->attr.handled_access_net &= ~CN_LL_NET_CONNECT_TCP;
        }
        if (!p->attr.handled_access_net) {
            p->missing |= CN_LL_MISSING_TCP;
        }
    }
    if (s->scope) {
        p->attr.scoped = cn_ll_scoped(abi);
        if (!p->attr.scoped) {
            p->missing |= CN_LL_MISSING_SCOPE;
        }
    }
    int writes = 0;
    for (size_t i = 0; i < s->n; i++) {
        writes |= s->rules[i].cls == CN_LL_WRITE;
    }
    if (abi < 3) {
        p->missing |= CN_LL_MISSING_TRUNCATE;
    }
    if (abi < 2 && writes) {
        p->missing |= CN_LL_MISSING_REFER;
    }
    if (abi < 5) {
        p->missing |= CN_LL_MISSING_IOCTL;
    }
    return 0;
}

const char *cn_ll_missing_name(unsigned bit) {
    switch (bit) {
    case CN_LL_MISSING_TCP:
        return "tcp";
    case CN_LL_MISSING_TRUNCATE:
        return "truncate";
    case CN_LL_MISSING_REFER:
        return "refer";
    case CN_LL_MISSING_IOCTL:
        return "ioctl_dev";
    case CN_LL_MISSING_SCOPE:
        return "scope";
    default:
        return NULL;
    }
}

int cn_ll_setting_parse(const char *s, int *max_abi) {
    if (!s || !*s || strcmp(s, "auto") == 0) {
        *max_abi = -1;
        return 0;
    }
    if (strcmp(s, "off") == 0) {
        *max_abi = 0;
        return 0;
    }
    int v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9' || v > 1000) {
            return -1;
        }
        v = v * 10 + (*p - '0');
    }
    if (v < 1) {
        return -1;
    }
    *max_abi = v;
    return 0;
}

const char *cn_ll_errno_reason(int err) {
    switch (err) {
    case ENOSYS:
        return "not_supported";
    case EOPNOTSUPP:
        return "disabled";
    default:
        return "error";
    }
}
