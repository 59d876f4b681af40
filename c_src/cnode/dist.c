/* Distribution: not yet built; every pid is the host's and goes by the port. */
#include "cnode.h"

void cn_dist_start(const cn_request *r) {
    cn_reply_error_atom(r, "not_yet_supported");
}
int cn_dist_pollfds(struct pollfd *fds, int max) {
    (void)fds;
    (void)max;
    return 0;
}
void cn_dist_handle_poll(struct pollfd *fds, int n) {
    (void)fds;
    (void)n;
}
int cn_dist_conn_for(const uint8_t *node, size_t len) {
    (void)node;
    (void)len;
    return -1;
}
int cn_dist_is_host(const uint8_t *node, size_t len) {
    (void)node;
    (void)len;
    return 1;
}
int cn_dist_send(int fd, const uint8_t *pid_raw, size_t pid_len, const ei_x_buff *msg) {
    (void)fd;
    (void)pid_raw;
    (void)pid_len;
    (void)msg;
    return -1;
}
void cn_dist_stop(void) {}
