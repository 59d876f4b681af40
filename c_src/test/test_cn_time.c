/* Criterion tests of the C-node's deadline arithmetic. */
#include <criterion/criterion.h>
#include <stdint.h>

#include "cn_time.h"

Test(cn_time, deadlines_saturate_instead_of_wrapping) {
    cr_assert_eq(cn_deadline_add(1000, 500), 1500);
    cr_assert_eq(cn_deadline_add(1000, -1), -1);
    cr_assert_eq(cn_deadline_add(1000, INT64_MAX), CN_NEVER);
    cr_assert_eq(cn_deadline_add(INT64_MAX - 5, 10), CN_NEVER);
    cr_assert_eq(cn_deadline_add(INT64_MAX - 5, 5), INT64_MAX);
    cr_assert_eq(cn_sat_mul(INT64_MAX / 3, 10), INT64_MAX);
    cr_assert_eq(cn_sat_mul(7, 10), 70);
}

Test(cn_time, the_sampling_grid) {
    cr_assert_eq(cn_grid_next(1234, 50), 1250);
    cr_assert_eq(cn_grid_next(1250, 50), 1300);
    cr_assert_eq(cn_grid_next(5, INT64_MAX), INT64_MAX);
    cr_assert_eq(cn_grid_next(INT64_MAX - 1, 2), CN_NEVER);
}

Test(cn_time, poll_timeouts) {
    cr_assert_eq(cn_poll_timeout(-1, 100, 60000), -1);
    cr_assert_eq(cn_poll_timeout(90, 100, 60000), 0);
    cr_assert_eq(cn_poll_timeout(150, 100, 60000), 50);
    cr_assert_eq(cn_poll_timeout(CN_NEVER, 100, 60000), 60000);
    cr_assert_eq(cn_deadline_min(-1, 5), 5);
    cr_assert_eq(cn_deadline_min(7, -1), 7);
    cr_assert_eq(cn_deadline_min(7, 5), 5);
}
