/* The audit command: one JSON line per event, acknowledged after fsync. */
#ifndef SANDBOX_CNODE_AUDIT_H
#define SANDBOX_CNODE_AUDIT_H

#include <ei.h>
#include <stdint.h>

#include "cn_request.h"

/* private_dir: the log's directory must be ours alone (created 0700 when
 * absent). A log that cannot be opened now is retried on each event. */
int cn_audit_setup(const char *path, int64_t max_bytes, int keep, int private_dir);
void cn_audit_request(const cn_request *r);
/* Called once per loop iteration after the frames read were handled: one
 * fsync covers every line appended since the last, then the replies go. */
void cn_audit_round(void);
/* #{path, status} */
void cn_audit_info(ei_x_buff *x);
void cn_audit_stop(void);

#endif
