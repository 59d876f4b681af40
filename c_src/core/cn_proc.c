#define _GNU_SOURCE
#include "cn_proc.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    /* the pid before the name */
    char num[24];
    size_t nl = (size_t)(open - buf);
    if (nl == 0 || nl >= sizeof num) {
        return -1;
    }
    memcpy(num, buf, nl);
    num[nl] = 0;
    char *end;
    long pid = strtol(num, &end, 10);
    if (end == num || (*end != ' ' && *end != 0) || pid <= 0) {
        return -1;
    }
    out->pid = (int)pid;
    /* the fields after the name, numbered from 3 (state) as in proc(5) */
    size_t rest_len = len - (size_t)(close + 1 - buf);
    char *rest = malloc(rest_len + 1);
    if (!rest) {
        return -1;
    }
    memcpy(rest, close + 1, rest_len);
    rest[rest_len] = 0;
    int field = 2, ok = 0;
    char *save = NULL;
    for (char *tok = strtok_r(rest, " \n", &save); tok; tok = strtok_r(NULL, " \n", &save)) {
        field++;
        errno = 0;
        switch (field) {
        case 3:
            if (strlen(tok) != 1) {
                goto done;
            }
            out->state = tok[0];
            break;
        case 4:
            out->ppid = (int)strtol(tok, NULL, 10);
            break;
        case 5:
            out->pgrp = (int)strtol(tok, NULL, 10);
            break;
        case 6:
            out->session = (int)strtol(tok, NULL, 10);
            break;
        case 14:
            out->utime = strtoull(tok, NULL, 10);
            break;
        case 15:
            out->stime = strtoull(tok, NULL, 10);
            break;
        case 20:
            out->num_threads = strtoll(tok, NULL, 10);
            break;
        case 22:
            out->starttime = strtoull(tok, NULL, 10);
            break;
        case 23:
            out->vsize = strtoull(tok, NULL, 10);
            break;
        case 24:
            out->rss_pages = strtoll(tok, NULL, 10);
            ok = 1;
            break;
        default:
            break;
        }
        if (ok) {
            break;
        }
    }
done:
    free(rest);
    return ok ? 0 : -1;
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

int cn_proc_read_stat(const char *root, int pid, cn_procstat *out) {
    char path[512], buf[1024];
    snprintf(path, sizeof path, "%s/%d/stat", root, pid);
    ssize_t n = read_small(path, buf, sizeof buf);
    if (n <= 0) {
        return -1;
    }
    return cn_proc_parse_stat(buf, (size_t)n, out);
}

int cn_proc_read_io(const char *root, int pid, cn_procio *out) {
    char path[512], buf[1024];
    snprintf(path, sizeof path, "%s/%d/io", root, pid);
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

static int cmp_by_ppid(const void *a, const void *b, void *ctx) {
    const cn_procstat *tab = ctx;
    int pa = tab[*(const size_t *)a].ppid, pb = tab[*(const size_t *)b].ppid;
    return (pa > pb) - (pa < pb);
}

size_t cn_proc_descendants(const cn_procstat *tab, size_t n, const int *roots, size_t nroots,
                           int *out) {
    if (n == 0) {
        return 0;
    }
    size_t *idx = malloc(n * sizeof *idx);
    unsigned char *seen = calloc(n, 1);
    if (!idx || !seen) {
        free(idx);
        free(seen);
        return 0;
    }
    for (size_t i = 0; i < n; i++) {
        idx[i] = i;
    }
    qsort_r(idx, n, sizeof *idx, cmp_by_ppid, (void *)tab);
    size_t count = 0;
    /* the roots that exist */
    for (size_t r = 0; r < nroots; r++) {
        for (size_t i = 0; i < n; i++) {
            if (tab[i].pid == roots[r] && !seen[i]) {
                seen[i] = 1;
                out[count++] = tab[i].pid;
            }
        }
    }
    /* breadth first: the children of out[q] are the entries with that ppid */
    for (size_t q = 0; q < count; q++) {
        int parent = out[q];
        size_t lo = 0, hi = n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (tab[idx[mid]].ppid < parent) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        for (size_t k = lo; k < n && tab[idx[k]].ppid == parent; k++) {
            size_t i = idx[k];
            if (!seen[i]) {
                seen[i] = 1;
                out[count++] = tab[i].pid;
            }
        }
    }
    free(idx);
    free(seen);
    return count;
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
