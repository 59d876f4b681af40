/* Deadline arithmetic for the C-node's timers that cannot overflow.
 *
 * Times are milliseconds of a monotonic clock; a deadline of -1 means "none".
 * Every request may carry an interval up to INT64_MAX (a timeout, a grace
 * period, a debounce window): adding one to the clock saturates at INT64_MAX,
 * a deadline that is never reached, instead of wrapping into a negative
 * number that would read as "no deadline" (or trap under UBSan). Pure C. */
#ifndef SANDBOX_CN_TIME_H
#define SANDBOX_CN_TIME_H

#include <stdint.h>

#define CN_NEVER INT64_MAX

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t cn_now_ms(void);

/* now + ms, saturating; -1 when ms < 0 (no deadline). now must be >= 0. */
int64_t cn_deadline_add(int64_t now, int64_t ms);

/* a * k for a, k >= 0, saturating at INT64_MAX. */
int64_t cn_sat_mul(int64_t a, int64_t k);

/* The first multiple of step strictly after now (step > 0), saturating: the
 * sampling grid, so that children with one interval share one /proc scan. */
int64_t cn_grid_next(int64_t now, int64_t step);

/* The earlier of two deadlines, -1 standing for "none". */
int64_t cn_deadline_min(int64_t a, int64_t b);

/* The poll() timeout until deadline: -1 (wait forever) for no deadline, else
 * 0..cap ms. */
int cn_poll_timeout(int64_t deadline, int64_t now, int cap);

#endif
