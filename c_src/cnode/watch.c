/* Watches: not yet built. */
#include "cnode.h"

void cn_watch_add(const cn_request *r) {
    cn_reply_error_atom(r, "not_yet_supported");
}
void cn_watch_remove(const cn_request *r) {
    cn_reply_error_atom(r, "not_found");
}
int cn_watch_pollfds(struct pollfd *fds, int max) {
    (void)fds;
    (void)max;
    return 0;
}
void cn_watch_handle_poll(struct pollfd *fds, int n) {
    (void)fds;
    (void)n;
}
int64_t cn_watch_next_deadline(void) {
    return -1;
}
void cn_watch_timers(void) {}
void cn_watch_stop(void) {}
