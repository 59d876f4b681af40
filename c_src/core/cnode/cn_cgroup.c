#include "cn_cgroup.h"

#include <string.h>

/* The next line of text[*pos..len): its start and length; 0 at the end. */
static int next_line(const char *text, size_t len, size_t *pos, const char **line, size_t *ll) {
    if (*pos >= len) {
        return 0;
    }
    const char *s = text + *pos;
    const char *nl = memchr(s, '\n', len - *pos);
    size_t n = nl ? (size_t)(nl - s) : len - *pos;
    *line = s;
    *ll = n;
    *pos += n + (nl ? 1 : 0);
    return 1;
}

/* Field k (0-based, space separated) of a line. */
static int field(const char *line, size_t ll, int k, const char **f, size_t *fl) {
    size_t i = 0;
    for (int n = 0;; n++) {
        while (i < ll && line[i] == ' ') {
            i++;
        }
        if (i >= ll) {
            return -1;
        }
        size_t start = i;
        while (i < ll && line[i] != ' ') {
            i++;
        }
        if (n == k) {
            *f = line + start;
            *fl = i - start;
            return 0;
        }
    }
}

/* Copies a mountinfo field, decoding \ooo escapes. */
static int unescape(const char *f, size_t fl, char *out, size_t cap) {
    size_t o = 0;
    for (size_t i = 0; i < fl; i++) {
        char c = f[i];
        if (c == '\\' && i + 3 < fl && f[i + 1] >= '0' && f[i + 1] <= '3' && f[i + 2] >= '0' &&
            f[i + 2] <= '7' && f[i + 3] >= '0' && f[i + 3] <= '7') {
            c = (char)((f[i + 1] - '0') * 64 + (f[i + 2] - '0') * 8 + (f[i + 3] - '0'));
            i += 3;
        }
        if (o + 1 >= cap) {
            return -1;
        }
        out[o++] = c;
    }
    if (cap == 0) {
        return -1;
    }
    out[o] = 0;
    return 0;
}

int cn_cgroup2_mount(const char *text, size_t len, char *mnt, size_t mcap, char *root,
                     size_t rcap) {
    size_t pos = 0;
    const char *line;
    size_t ll;
    while (next_line(text, len, &pos, &line, &ll)) {
        /* the optional fields end at " - "; the file system type follows */
        const char *sep = NULL;
        for (size_t i = 0; i + 3 <= ll; i++) {
            if (line[i] == ' ' && line[i + 1] == '-' && line[i + 2] == ' ') {
                sep = line + i;
                break;
            }
        }
        if (!sep) {
            continue;
        }
        const char *fs;
        size_t fsl;
        size_t rest = ll - (size_t)(sep + 3 - line);
        if (field(sep + 3, rest, 0, &fs, &fsl) != 0 || fsl != 7 || memcmp(fs, "cgroup2", 7) != 0) {
            continue;
        }
        const char *r, *m;
        size_t rl, ml;
        size_t head = (size_t)(sep - line);
        if (field(line, head, 3, &r, &rl) != 0 || field(line, head, 4, &m, &ml) != 0) {
            continue;
        }
        if (unescape(m, ml, mnt, mcap) != 0 || unescape(r, rl, root, rcap) != 0) {
            return -1;
        }
        return 0;
    }
    return -1;
}

int cn_cgroup2_own(const char *text, size_t len, char *out, size_t cap) {
    size_t pos = 0;
    const char *line;
    size_t ll;
    while (next_line(text, len, &pos, &line, &ll)) {
        if (ll >= 3 && memcmp(line, "0::", 3) == 0) {
            size_t n = ll - 3;
            if (n == 0 || line[3] != '/' || n + 1 > cap) {
                return -1;
            }
            memcpy(out, line + 3, n);
            out[n] = 0;
            return 0;
        }
    }
    return -1;
}

int cn_cgroup2_dir(const char *mnt, const char *root, const char *path, char *out, size_t cap) {
    size_t rl = strlen(root);
    while (rl > 0 && root[rl - 1] == '/') {
        rl--; /* "/" -> "" */
    }
    if (strncmp(path, root, rl) != 0 || (path[rl] != '/' && path[rl] != 0)) {
        return -1;
    }
    const char *rest = path + rl;
    size_t ml = strlen(mnt);
    while (ml > 1 && mnt[ml - 1] == '/') {
        ml--;
    }
    while (rest[0] == '/' && rest[1] == '/') {
        rest++;
    }
    size_t sl = strlen(rest);
    if (sl == 1 && rest[0] == '/') {
        sl = 0;
    }
    if (ml + sl + 1 > cap) {
        return -1;
    }
    memcpy(out, mnt, ml);
    memcpy(out + ml, rest, sl);
    out[ml + sl] = 0;
    return 0;
}

static size_t put_u64(char *out, uint64_t v) {
    char tmp[24];
    size_t k = 0;
    do {
        tmp[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < k; i++) {
        out[i] = tmp[k - 1 - i];
    }
    return k;
}

#define RUN_PREFIX "sandbox_cnode."

int cn_cgroup_run_name(char *out, size_t cap, const cn_cgroup_run *run) {
    char buf[80];
    size_t n = sizeof RUN_PREFIX - 1;
    memcpy(buf, RUN_PREFIX, n);
    n += put_u64(buf + n, run->pidns);
    buf[n++] = '.';
    n += put_u64(buf + n, (uint64_t)(run->pid < 0 ? 0 : run->pid));
    buf[n++] = '.';
    n += put_u64(buf + n, run->starttime);
    if (n + 1 > cap) {
        return -1;
    }
    memcpy(out, buf, n);
    out[n] = 0;
    return 0;
}

/* Decimal digits at *s (at least one, at most 20, value <= max). */
static int parse_u64(const char **s, uint64_t max, uint64_t *out) {
    const char *p = *s;
    uint64_t v = 0;
    int n = 0;
    for (; *p >= '0' && *p <= '9'; p++, n++) {
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (max - d) / 10) {
            return -1;
        }
        v = v * 10 + d;
    }
    if (n == 0) {
        return -1;
    }
    *s = p;
    *out = v;
    return 0;
}

int cn_cgroup_parse_run_name(const char *name, cn_cgroup_run *run) {
    size_t pl = sizeof RUN_PREFIX - 1;
    if (strncmp(name, RUN_PREFIX, pl) != 0) {
        return -1;
    }
    const char *s = name + pl;
    uint64_t ns, p, t;
    if (parse_u64(&s, UINT64_MAX, &ns) != 0 || *s++ != '.' || parse_u64(&s, INT32_MAX, &p) != 0 ||
        p == 0 || *s++ != '.' || parse_u64(&s, UINT64_MAX, &t) != 0 || *s) {
        return -1;
    }
    run->pidns = ns;
    run->pid = (int)p;
    run->starttime = t;
    return 0;
}

int cn_cgroup_populated(const char *text, size_t len) {
    size_t pos = 0;
    const char *line;
    size_t ll;
    while (next_line(text, len, &pos, &line, &ll)) {
        if (ll == 11 && memcmp(line, "populated ", 10) == 0 &&
            (line[10] == '0' || line[10] == '1')) {
            return line[10] - '0';
        }
    }
    return -1;
}

long cn_cgroup_parse_procs(const char *text, size_t len, int *out, size_t cap) {
    size_t pos = 0, n = 0;
    const char *line;
    size_t ll;
    while (next_line(text, len, &pos, &line, &ll)) {
        if (ll == 0) {
            continue;
        }
        uint64_t v = 0;
        for (size_t i = 0; i < ll; i++) {
            if (line[i] < '0' || line[i] > '9' || i >= 10) {
                return -1;
            }
            v = v * 10 + (uint64_t)(line[i] - '0');
        }
        if (v == 0 || v > INT32_MAX || n == cap) {
            return -1;
        }
        out[n++] = (int)v;
    }
    return (long)n;
}
