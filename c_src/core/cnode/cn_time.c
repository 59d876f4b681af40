#include "cn_time.h"

#include <time.h>

int64_t cn_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cn_deadline_add(int64_t now, int64_t ms) {
    if (ms < 0) {
        return -1;
    }
    if (now < 0) {
        now = 0;
    }
    return ms > INT64_MAX - now ? CN_NEVER : now + ms;
}

int64_t cn_sat_mul(int64_t a, int64_t k) {
    if (a <= 0 || k <= 0) {
        return 0;
    }
    return a > INT64_MAX / k ? INT64_MAX : a * k;
}

int64_t cn_grid_next(int64_t now, int64_t step) {
    if (step <= 0) {
        return now;
    }
    int64_t base = now - now % step; /* <= now: no overflow */
    return cn_deadline_add(base, step);
}

int64_t cn_deadline_min(int64_t a, int64_t b) {
    if (a < 0) {
        return b;
    }
    if (b < 0) {
        return a;
    }
    return a < b ? a : b;
}

int cn_poll_timeout(int64_t deadline, int64_t now, int cap) {
    if (deadline < 0) {
        return -1;
    }
    if (deadline <= now) {
        return 0;
    }
    /* deadline > now >= 0: the difference cannot overflow */
    int64_t d = deadline - now;
    return d > cap ? cap : (int)d;
}
