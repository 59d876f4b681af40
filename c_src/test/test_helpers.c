#include "test_helpers.h"

#include <criterion/criterion.h>
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>

uint8_t *test_read_otp_file(const char *pattern, size_t *size) {
    const char *root = getenv("ERL_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", root ? root : "/usr/lib/erlang", pattern);
    glob_t g;
    cr_assert_eq(glob(path, 0, NULL, &g), 0, "no file matches %s (set ERL_ROOT)", path);
    FILE *f = fopen(g.gl_pathv[0], "rb");
    globfree(&g);
    cr_assert_not_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)n);
    cr_assert_eq(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return buf;
}

uint8_t *test_lists_beam(size_t *size) {
    return test_read_otp_file("lib/stdlib-*/ebin/lists.beam", size);
}
