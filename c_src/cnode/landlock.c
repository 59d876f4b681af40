/* Landlock: the kernel's ABI and rulesets for confined jobs (see landlock.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "landlock.h"
#include "reply.h"

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef SYS_landlock_add_rule
#define SYS_landlock_add_rule 445
#endif

#define LL_CREATE_RULESET_VERSION (1U << 0)
#define LL_RULE_PATH_BENEATH 1

/* The kernel's struct landlock_path_beneath_attr (packed). */
struct ll_path_beneath {
    uint64_t allowed_access;
    int32_t parent_fd;
} __attribute__((packed));

static int g_abi;         /* in use: 0 unavailable */
static int g_kernel_abi;  /* what the kernel said: 0 none */
static const char *g_why; /* why unavailable */

void cn_landlock_init(int max_abi) {
    long v = syscall(SYS_landlock_create_ruleset, NULL, 0, LL_CREATE_RULESET_VERSION);
    if (v < 0) {
        g_kernel_abi = 0;
        g_why = cn_ll_errno_reason(errno);
    } else {
        g_kernel_abi = (int)v;
    }
    if (max_abi == 0) {
        g_abi = 0;
        g_why = "forced_off";
        return;
    }
    g_abi = g_kernel_abi;
    if (g_abi > 0 && max_abi > 0 && g_abi > max_abi) {
        g_abi = max_abi;
    }
    if (g_abi > 0) {
        g_why = NULL;
    }
}

int cn_landlock_abi(void) {
    return g_abi;
}

const char *cn_landlock_reason(void) {
    return g_abi > 0 ? NULL : (g_why ? g_why : "not_supported");
}

void cn_landlock_info(ei_x_buff *x) {
    if (g_abi <= 0) {
        ei_x_encode_tuple_header(x, 2);
        ei_x_encode_atom(x, "unavailable");
        ei_x_encode_atom(x, cn_landlock_reason());
        return;
    }
    ei_x_encode_map_header(x, 2);
    ei_x_encode_atom(x, "abi");
    ei_x_encode_long(x, g_abi > CN_LL_ABI_KNOWN ? CN_LL_ABI_KNOWN : g_abi);
    ei_x_encode_atom(x, "kernel_abi");
    ei_x_encode_long(x, g_kernel_abi);
}

void cn_landlock_encode_missing(ei_x_buff *x, unsigned missing) {
    int n = 0;
    for (unsigned bit = 1; bit && bit <= CN_LL_MISSING_SCOPE; bit <<= 1) {
        n += (missing & bit) != 0;
    }
    if (n) {
        ei_x_encode_list_header(x, n);
        for (unsigned bit = 1; bit && bit <= CN_LL_MISSING_SCOPE; bit <<= 1) {
            if (missing & bit) {
                ei_x_encode_atom(x, cn_ll_missing_name(bit));
            }
        }
    }
    ei_x_encode_empty_list(x);
}

int cn_landlock_build(const cn_ll_spec *spec, int *fd, cn_ll_plan *plan, cn_error *err,
                      int *errno_out) {
    *fd = -1;
    *errno_out = 0;
    if (g_abi <= 0 || cn_ll_plan_make(spec, g_abi, plan) != 0) {
        err->reason = "landlock_unavailable";
        err->detail = cn_landlock_reason();
        return -1;
    }
    /* the kernel takes the part of the attribute its ABI knows */
    size_t size = plan->abi >= 6   ? sizeof plan->attr
                  : plan->abi >= 4 ? 2 * sizeof(uint64_t)
                                   : sizeof(uint64_t);
    int rs = (int)syscall(SYS_landlock_create_ruleset, &plan->attr, size, 0);
    if (rs < 0) {
        *errno_out = errno;
        err->reason = "landlock";
        err->detail = NULL;
        return -1;
    }
    for (size_t i = 0; i < spec->n; i++) {
        int p = open(spec->rules[i].path, O_PATH | O_CLOEXEC);
        struct stat st;
        if (p < 0 || fstat(p, &st) != 0) {
            *errno_out = errno;
            if (p >= 0) {
                close(p);
            }
            close(rs);
            err->reason = "landlock";
            err->detail = NULL;
            return -1;
        }
        struct ll_path_beneath pb;
        pb.allowed_access = cn_ll_access(spec->rules[i].cls, plan->abi, S_ISDIR(st.st_mode));
        pb.parent_fd = p;
        long rc = pb.allowed_access
                      ? syscall(SYS_landlock_add_rule, rs, LL_RULE_PATH_BENEATH, &pb, 0)
                      : 0;
        int e = errno;
        close(p);
        if (rc != 0) {
            *errno_out = e;
            close(rs);
            err->reason = "landlock";
            err->detail = NULL;
            return -1;
        }
    }
    *fd = rs;
    return 0;
}
