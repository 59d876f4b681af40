#define _GNU_SOURCE
#include "cn_proc.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* A decimal number at *p (an optional '-', then digits; anything else is 0,
 * as strtol would give), advancing *p past the token. */
static int64_t field_num(const char **p, const char *end) {
    const char *s = *p;
    int neg = 0;
    uint64_t v = 0;
    if (s < end && *s == '-') {
        neg = 1;
        s++;
    }
    for (; s < end && *s >= '0' && *s <= '9'; s++) {
        v = v * 10 + (uint64_t)(*s - '0');
    }
    while (s < end && *s != ' ' && *s != '\n') {
        s++;
    }
    *p = s;
    return neg ? -(int64_t)v : (int64_t)v;
}

static uint64_t field_unum(const char **p, const char *end) {
    const char *s = *p;
    uint64_t v = 0;
    for (; s < end && *s >= '0' && *s <= '9'; s++) {
        v = v * 10 + (uint64_t)(*s - '0');
    }
    while (s < end && *s != ' ' && *s != '\n') {
        s++;
    }
    *p = s;
    return v;
}

int cn_proc_parse_stat(const char *buf, size_t len, cn_procstat *out) {
    memset(out, 0, sizeof *out);
    if (len == 0) {
        return -1;
    }
    const char *open = memchr(buf, '(', len);
    const char *close = NULL;
    for (size_t i = len; i > 0; i--) {
        if (buf[i - 1] == ')') {
            close = buf + i - 1;
            break;
        }
    }
    if (!open || !close || close < open) {
        return -1;
    }
    /* the pid before the name: digits, then one space */
    size_t nl = (size_t)(open - buf);
    if (nl < 2 || nl > 12 || buf[nl - 1] != ' ') {
        return -1;
    }
    int64_t pid = 0;
    for (size_t i = 0; i + 1 < nl; i++) {
        if (buf[i] < '0' || buf[i] > '9') {
            return -1;
        }
        pid = pid * 10 + (buf[i] - '0');
    }
    if (pid <= 0 || pid > INT32_MAX) {
        return -1;
    }
    out->pid = (int)pid;
    /* the fields after the name, numbered from 3 (state) as in proc(5) */
    const char *p = close + 1, *end = buf + len;
    for (int field = 3; field <= 24; field++) {
        while (p < end && (*p == ' ' || *p == '\n')) {
            p++;
        }
        if (p >= end) {
            return -1;
        }
        switch (field) {
        case 3:
            if (p + 1 < end && p[1] != ' ' && p[1] != '\n') {
                return -1; /* a state is one letter */
            }
            out->state = *p++;
            break;
        case 4:
            out->ppid = (int)field_num(&p, end);
            break;
        case 5:
            out->pgrp = (int)field_num(&p, end);
            break;
        case 6:
            out->session = (int)field_num(&p, end);
            break;
        case 14:
            out->utime = field_unum(&p, end);
            break;
        case 15:
            out->stime = field_unum(&p, end);
            break;
        case 20:
            out->num_threads = field_num(&p, end);
            break;
        case 22:
            out->starttime = field_unum(&p, end);
            break;
        case 23:
            out->vsize = field_unum(&p, end);
            break;
        case 24:
            out->rss_pages = field_num(&p, end);
            return 0;
        default:
            (void)field_num(&p, end);
            break;
        }
    }
    return -1;
}

int cn_proc_parse_io(const char *buf, size_t len, cn_procio *out) {
    out->rchar = out->wchar = out->read_bytes = out->write_bytes = -1;
    static const char *const keys[] = {"rchar", "wchar", "read_bytes", "write_bytes"};
    int64_t *slots[] = {&out->rchar, &out->wchar, &out->read_bytes, &out->write_bytes};
    int found = 0;
    size_t i = 0;
    while (i < len) {
        size_t j = i;
        while (j < len && buf[j] != '\n') {
            j++;
        }
        const char *line = buf + i;
        size_t ll = j - i;
        const char *colon = memchr(line, ':', ll);
        if (colon) {
            size_t kl = (size_t)(colon - line);
            for (size_t k = 0; k < 4; k++) {
                if (strlen(keys[k]) == kl && memcmp(line, keys[k], kl) == 0) {
                    char num[32];
                    size_t vl = ll - kl - 1;
                    if (vl >= sizeof num) {
                        vl = sizeof num - 1;
                    }
                    memcpy(num, colon + 1, vl);
                    num[vl] = 0;
                    char *end;
                    long long v = strtoll(num, &end, 10);
                    if (end != num) {
                        *slots[k] = v;
                        found++;
                    }
                }
            }
        }
        i = j + 1;
    }
    return found ? 0 : -1;
}

static ssize_t read_small(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return -1;
    }
    size_t len = 0;
    while (len < cap) {
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            close(fd);
            return -1;
        }
        if (r == 0) {
            break;
        }
        len += (size_t)r;
    }
    close(fd);
    return (ssize_t)len;
}

/* root/pid/leaf into buf (no snprintf: the leader uses it). 0 or -1. */
static int proc_path(char *buf, size_t cap, const char *root, int pid, const char *leaf) {
    char num[16];
    int k = 0;
    unsigned v = (unsigned)pid;
    do {
        num[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v && k < 15);
    size_t rl = strlen(root), ll = strlen(leaf);
    if (rl + 1 + (size_t)k + 1 + ll + 1 > cap) {
        return -1;
    }
    memcpy(buf, root, rl);
    size_t o = rl;
    buf[o++] = '/';
    while (k > 0) {
        buf[o++] = num[--k];
    }
    buf[o++] = '/';
    memcpy(buf + o, leaf, ll + 1);
    return 0;
}

int cn_proc_read_stat(const char *root, int pid, cn_procstat *out) {
    char path[512], buf[1024];
    if (proc_path(path, sizeof path, root, pid, "stat") != 0) {
        return -1;
    }
    ssize_t n = read_small(path, buf, sizeof buf);
    if (n <= 0) {
        return -1;
    }
    return cn_proc_parse_stat(buf, (size_t)n, out);
}

int cn_proc_read_io(const char *root, int pid, cn_procio *out) {
    char path[512], buf[1024];
    if (proc_path(path, sizeof path, root, pid, "io") != 0) {
        out->rchar = out->wchar = out->read_bytes = out->write_bytes = -1;
        return -1;
    }
    ssize_t n = read_small(path, buf, sizeof buf);
    if (n <= 0) {
        out->rchar = out->wchar = out->read_bytes = out->write_bytes = -1;
        return -1;
    }
    return cn_proc_parse_io(buf, (size_t)n, out);
}

int cn_proc_scan(const char *root, cn_procstat **out, size_t *n) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(root);
    if (!d) {
        return -1;
    }
    size_t cap = 256, len = 0;
    cn_procstat *tab = malloc(cap * sizeof *tab);
    if (!tab) {
        closedir(d);
        return -1;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *s = e->d_name;
        if (!isdigit((unsigned char)s[0])) {
            continue;
        }
        char *end;
        long pid = strtol(s, &end, 10);
        if (*end || pid <= 0) {
            continue;
        }
        if (len == cap) {
            cn_procstat *nt = realloc(tab, 2 * cap * sizeof *tab);
            if (!nt) {
                free(tab);
                closedir(d);
                return -1;
            }
            tab = nt;
            cap *= 2;
        }
        /* a process that exits between readdir and read is simply skipped */
        if (cn_proc_read_stat(root, (int)pid, &tab[len]) == 0) {
            len++;
        }
    }
    closedir(d);
    *out = tab;
    *n = len;
    return 0;
}

long cn_proc_scan_raw(const char *root, int *pids, int *ppids, size_t cap) {
    int dfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        return -1;
    }
    /* struct linux_dirent64 */
    char dents[8192] __attribute__((aligned(8)));
    size_t n = 0;
    for (;;) {
        long got = syscall(SYS_getdents64, dfd, dents, sizeof dents);
        if (got < 0 && errno == EINTR) {
            continue;
        }
        if (got <= 0) {
            break;
        }
        for (long off = 0; off < got;) {
            unsigned short reclen;
            memcpy(&reclen, dents + off + 16, sizeof reclen);
            const char *name = dents + off + 19;
            off += reclen;
            int64_t pid = 0;
            const char *s = name;
            for (; *s >= '0' && *s <= '9' && pid <= INT32_MAX; s++) {
                pid = pid * 10 + (*s - '0');
            }
            if (s == name || *s || pid <= 0 || pid > INT32_MAX) {
                continue;
            }
            cn_procstat st;
            /* a process that exits between getdents and read is skipped */
            if (cn_proc_read_stat(root, (int)pid, &st) != 0) {
                continue;
            }
            if (n == cap) {
                close(dfd);
                errno = ERANGE;
                return -1;
            }
            pids[n] = st.pid;
            ppids[n] = st.ppid;
            n++;
        }
    }
    close(dfd);
    return (long)n;
}

#define NONE SIZE_MAX

static size_t table_bits(size_t n) {
    size_t t = 16;
    while (t < 2 * n) {
        t *= 2;
    }
    return t;
}

size_t cn_proc_walk_scratch(size_t n) {
    return table_bits(n) + 3 * n;
}

static size_t hash_pid(int pid, size_t mask) {
    uint32_t x = (uint32_t)pid * 2654435761u;
    return (size_t)(x ^ (x >> 15)) & mask;
}

/* The index of pid, or NONE. */
static size_t lookup(const size_t *slots, size_t mask, const int *pids, int pid) {
    for (size_t i = hash_pid(pid, mask);; i = (i + 1) & mask) {
        if (slots[i] == 0) {
            return NONE;
        }
        if (pids[slots[i] - 1] == pid) {
            return slots[i] - 1;
        }
    }
}

size_t cn_proc_walk(const int *pids, const int *ppids, size_t n, const int *roots, size_t nroots,
                    size_t *scratch, size_t *out) {
    if (n == 0) {
        return 0;
    }
    size_t nslots = table_bits(n), mask = nslots - 1;
    size_t *slots = scratch, *first = scratch + nslots, *next = first + n, *seen = next + n;
    for (size_t i = 0; i < nslots; i++) {
        slots[i] = 0;
    }
    for (size_t i = 0; i < n; i++) {
        first[i] = next[i] = NONE;
        seen[i] = 0;
        size_t j = hash_pid(pids[i], mask);
        while (slots[j] != 0 && pids[slots[j] - 1] != pids[i]) {
            j = (j + 1) & mask;
        }
        if (slots[j] == 0) {
            slots[j] = i + 1; /* a duplicate pid keeps its first entry */
        }
    }
    /* child lists: each process hangs under its parent's entry */
    for (size_t i = n; i-- > 0;) {
        size_t p = lookup(slots, mask, pids, ppids[i]);
        if (p != NONE && p != i) {
            next[i] = first[p];
            first[p] = i;
        }
    }
    size_t count = 0;
    for (size_t r = 0; r < nroots; r++) {
        size_t i = lookup(slots, mask, pids, roots[r]);
        if (i != NONE && !seen[i]) {
            seen[i] = 1;
            out[count++] = i;
        }
    }
    for (size_t q = 0; q < count; q++) {
        for (size_t c = first[out[q]]; c != NONE; c = next[c]) {
            if (!seen[c]) {
                seen[c] = 1;
                out[count++] = c;
            }
        }
    }
    return count;
}

size_t cn_proc_descendants_idx(const cn_procstat *tab, size_t n, const int *roots, size_t nroots,
                               size_t *out) {
    if (n == 0) {
        return 0;
    }
    int *pids = malloc(2 * n * sizeof *pids);
    size_t *scratch = malloc(cn_proc_walk_scratch(n) * sizeof *scratch);
    if (!pids || !scratch) {
        free(pids);
        free(scratch);
        return 0;
    }
    int *ppids = pids + n;
    for (size_t i = 0; i < n; i++) {
        pids[i] = tab[i].pid;
        ppids[i] = tab[i].ppid;
    }
    size_t k = cn_proc_walk(pids, ppids, n, roots, nroots, scratch, out);
    free(pids);
    free(scratch);
    return k;
}

size_t cn_proc_descendants(const cn_procstat *tab, size_t n, const int *roots, size_t nroots,
                           int *out) {
    if (n == 0) {
        return 0;
    }
    size_t *idx = malloc(n * sizeof *idx);
    if (!idx) {
        return 0;
    }
    size_t k = cn_proc_descendants_idx(tab, n, roots, nroots, idx);
    for (size_t i = 0; i < k; i++) {
        out[i] = tab[idx[i]].pid;
    }
    free(idx);
    return k;
}

const char *cn_proc_state_name(char state) {
    switch (state) {
    case 'R':
        return "running";
    case 'S':
        return "sleeping";
    case 'D':
        return "disk_sleep";
    case 'Z':
        return "zombie";
    case 'T':
        return "stopped";
    case 't':
        return "tracing_stop";
    case 'X':
    case 'x':
        return "dead";
    case 'I':
        return "idle";
    case 'P':
        return "parked";
    case 'W':
        return "waking";
    case 'K':
        return "wakekill";
    default:
        return "unknown";
    }
}
