/* Shared helpers of the Criterion tests. */
#ifndef SANDBOX_TEST_HELPERS_H
#define SANDBOX_TEST_HELPERS_H

#include <stddef.h>
#include <stdint.h>

/* Reads the first file matching `pattern` under the installed OTP ($ERL_ROOT,
 * default /usr/lib/erlang) into a malloc'd buffer; fails the test if none. */
uint8_t *test_read_otp_file(const char *pattern, size_t *size);

/* stdlib's lists.beam. */
uint8_t *test_lists_beam(size_t *size);

#endif
