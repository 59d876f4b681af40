/* The audit log: not yet built. */
#include "cnode.h"

int cn_audit_setup(const char *path, int64_t max_bytes, int keep) {
    (void)path;
    (void)max_bytes;
    (void)keep;
    return 0;
}
void cn_audit_request(const cn_request *r) {
    cn_reply_error_atom(r, "not_yet_supported");
}
void cn_audit_commit(void) {}
void cn_audit_stop(void) {}
