/* Landlock for confined jobs: the ABI of the running kernel, and rulesets
 * built from a spawn's `landlock` option (see cn_landlock.h for the pure
 * part). The ruleset is built here, in the C-node, where a missing path is
 * an error for the spawn's caller; the job's command applies it to itself
 * just before exec (leader.c), so the program and everything it ever starts
 * (every thread, every child) run inside it. */
#ifndef SANDBOX_CNODE_LANDLOCK_H
#define SANDBOX_CNODE_LANDLOCK_H

#include <ei.h>

#include "cn_landlock.h"
#include "cn_request.h"

/* Queries the kernel's ABI once. setting: as cn_ll_setting_parse ("auto",
 * "off" or a maximum ABI). */
void cn_landlock_init(int max_abi);
/* The ABI in use (>= 1), or 0 when unavailable. */
int cn_landlock_abi(void);
/* Why it is unavailable (an atom name), or NULL. */
const char *cn_landlock_reason(void);
/* `landlock` of the info reply: #{abi => N, kernel_abi => K} or
 * {unavailable, Reason}. */
void cn_landlock_info(ei_x_buff *x);

/* A ruleset for spec: its descriptor (close-on-exec) in *fd and its plan in
 * *plan. Errors: landlock_unavailable; {landlock, Errno} when a rule's path
 * cannot be opened or added. */
int cn_landlock_build(const cn_ll_spec *spec, int *fd, cn_ll_plan *plan, cn_error *err,
                      int *errno_out);

/* Encodes the plan's missing bits as a list of atoms. */
void cn_landlock_encode_missing(ei_x_buff *x, unsigned missing);

#endif
