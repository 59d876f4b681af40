/* Criterion tests of the job limits: spawn-time ceilings, and set_limits
 * plans that lower, raise and remove soft limits under a fixed ceiling. */
#include <criterion/criterion.h>
#include <stdint.h>

#include "cn_limits.h"
#include "cn_term.h"

#define T(...) ((const uint8_t[]){__VA_ARGS__})

static cn_arena g_arena;

static const cn_term *term(const uint8_t *buf, size_t len) {
    cn_term *t;
    cr_assert_eq(cn_term_decode(buf, len, &g_arena, &t), CN_TERM_OK);
    return t;
}
#define TERM(...) term(T(__VA_ARGS__), sizeof(T(__VA_ARGS__)))

static void setup(void) {
    cn_arena_init(&g_arena);
}
static void teardown(void) {
    cn_arena_free(&g_arena);
}

/* #{cpu_seconds => V} with V a small integer, or infinity when v < 0 */
#define CPU(v)                                                                                     \
    ((v) < 0 ? TERM(131, 116, 0, 0, 0, 1, 119, 11, 'c', 'p', 'u', '_', 's', 'e', 'c', 'o', 'n',    \
                    'd', 's', 119, 8, 'i', 'n', 'f', 'i', 'n', 'i', 't', 'y')                      \
             : TERM(131, 116, 0, 0, 0, 1, 119, 11, 'c', 'p', 'u', '_', 's', 'e', 'c', 'o', 'n',    \
                    'd', 's', 97, (uint8_t)(v)))
#define FSIZE(v)                                                                                   \
    ((v) < 0 ? TERM(131, 116, 0, 0, 0, 1, 119, 9, 'f', 'i', 'l', 'e', '_', 's', 'i', 'z', 'e',     \
                    119, 8, 'i', 'n', 'f', 'i', 'n', 'i', 't', 'y')                                \
             : TERM(131, 116, 0, 0, 0, 1, 119, 9, 'f', 'i', 'l', 'e', '_', 's', 'i', 'z', 'e', 97, \
                    (uint8_t)(v)))

TestSuite(cn_limits, .init = setup, .fini = teardown);

Test(cn_limits, spawn_limits_are_the_ceiling_by_default) {
    cn_limits l, c;
    cn_limits_init(&l);
    l.cpu_seconds = 5;
    l.file_size = 4096;
    l.memory = 1000;
    cn_limits_plan p;
    cn_error e;
    cr_assert_eq(cn_limits_at_spawn(&l, NULL, &p, &e), 0);
    cr_assert_eq(p.cpu.soft, 5);
    cr_assert_eq(p.cpu.hard, 6);
    cr_assert_eq(p.fsize.soft, 4096);
    cr_assert_eq(p.fsize.hard, 4096);
    cr_assert_eq(p.as.soft, ((int64_t)4 << 30) + 1000);
    cr_assert_eq(p.as.hard, CN_RLIM_KEEP);
    /* nothing given: unlimited, soft and hard */
    cn_limits_init(&l);
    cr_assert_eq(cn_limits_at_spawn(&l, NULL, &p, &e), 0);
    cr_assert_eq(p.cpu.soft, CN_RLIM_INF);
    cr_assert_eq(p.cpu.hard, CN_RLIM_INF);
    cr_assert_eq(p.fsize.hard, CN_RLIM_INF);
    /* a ceiling above the limit */
    cn_limits_init(&c);
    c.cpu_seconds = 60;
    l.cpu_seconds = 5;
    cr_assert_eq(cn_limits_at_spawn(&l, &c, &p, &e), 0);
    cr_assert_eq(p.cpu.soft, 5);
    cr_assert_eq(p.cpu.hard, 61);
    /* a ceiling alone is the limit in force */
    cn_limits_init(&l);
    cr_assert_eq(cn_limits_at_spawn(&l, &c, &p, &e), 0);
    cr_assert_eq(p.cpu.soft, 60);
    /* a limit above its ceiling */
    l.cpu_seconds = 61;
    cr_assert_eq(cn_limits_at_spawn(&l, &c, &p, &e), -1);
    cr_assert_str_eq(e.reason, "above_ceiling");
    cr_assert_str_eq(e.detail, "cpu_seconds");
}

Test(cn_limits, set_limits_lowers_then_removes_under_an_unlimited_ceiling) {
    cn_limits l;
    cn_limits_init(&l);
    cn_limits_plan p;
    cn_error e;
    cr_assert_eq(cn_limits_at_spawn(&l, NULL, &p, &e), 0);
    cn_joblimits j = p.result;
    /* 10 s from the 3 s already used */
    cr_assert_eq(cn_limits_plan_change(&j, CPU(10), 3, &p, &e), 0);
    cr_assert(p.cpu_set && !p.fsize_set && !p.as_set);
    cr_assert_eq(p.cpu.soft, 13);
    cr_assert_eq(p.cpu.hard, CN_RLIM_KEEP); /* the hard limit stays where it was */
    j = p.result;
    cr_assert_eq(j.limits.cpu_seconds, 13);
    /* raised again, then removed */
    cr_assert_eq(cn_limits_plan_change(&j, CPU(100), 3, &p, &e), 0);
    cr_assert_eq(p.cpu.soft, 103);
    j = p.result;
    cr_assert_eq(cn_limits_plan_change(&j, CPU(-1), 3, &p, &e), 0);
    cr_assert_eq(p.cpu.soft, CN_RLIM_INF);
    cr_assert_eq(p.result.limits.cpu_seconds, -1);
}

Test(cn_limits, set_limits_stays_under_a_finite_ceiling) {
    cn_limits l;
    cn_limits_init(&l);
    l.file_size = 200;
    cn_limits_plan p;
    cn_error e;
    cr_assert_eq(cn_limits_at_spawn(&l, NULL, &p, &e), 0);
    cn_joblimits j = p.result;
    cr_assert_eq(cn_limits_plan_change(&j, FSIZE(100), 0, &p, &e), 0);
    cr_assert_eq(p.fsize.soft, 100);
    cr_assert_eq(p.fsize.hard, CN_RLIM_KEEP);
    cr_assert_eq(p.result.ceiling.file_size, 200);
    j = p.result;
    /* above the ceiling: refused, nothing planned */
    e.reason = NULL;
    cr_assert_eq(cn_limits_plan_change(&j, FSIZE(201), 0, &p, &e), -1);
    cr_assert_str_eq(e.reason, "above_ceiling");
    cr_assert_str_eq(e.detail, "file_size");
    /* infinity: back to the ceiling */
    cr_assert_eq(cn_limits_plan_change(&j, FSIZE(-1), 0, &p, &e), 0);
    cr_assert_eq(p.fsize.soft, 200);
    cr_assert_eq(p.result.limits.file_size, -1);
}

Test(cn_limits, a_refused_key_refuses_the_whole_request) {
    cn_limits l;
    cn_limits_init(&l);
    l.cpu_seconds = 10;
    cn_limits_plan p;
    cn_error e;
    cr_assert_eq(cn_limits_at_spawn(&l, NULL, &p, &e), 0);
    cn_joblimits j = p.result;
    /* #{processes => 3, cpu_seconds => 50}: the CPU part is above the ceiling */
    const cn_term *t =
        TERM(131, 116, 0, 0, 0, 2, 119, 9, 'p', 'r', 'o', 'c', 'e', 's', 's', 'e', 's', 97, 3, 119,
             11, 'c', 'p', 'u', '_', 's', 'e', 'c', 'o', 'n', 'd', 's', 97, 50);
    p.result.limits.processes = 77;
    cr_assert_eq(cn_limits_plan_change(&j, t, 0, &p, &e), -1);
    cr_assert_str_eq(e.reason, "above_ceiling");
    cr_assert_eq(j.limits.processes, -1);
    /* a CPU time relative to a huge usage saturates instead of wrapping */
    cn_limits_init(&l);
    cr_assert_eq(cn_limits_at_spawn(&l, NULL, &p, &e), 0);
    j = p.result;
    cr_assert_eq(cn_limits_plan_change(&j, CPU(5), INT64_MAX - 2, &p, &e), 0);
    cr_assert_eq(p.cpu.soft, INT64_MAX);
}

Test(cn_limits, ceilings_take_only_rlimits) {
    cn_limits c;
    cn_error e;
    cr_assert_eq(cn_ceiling_parse(CPU(9), &c, &e), 0);
    cr_assert_eq(c.cpu_seconds, 9);
    /* #{memory => 1} */
    cr_assert_eq(
        cn_ceiling_parse(TERM(131, 116, 0, 0, 0, 1, 119, 6, 'm', 'e', 'm', 'o', 'r', 'y', 97, 1),
                         &c, &e),
        -1);
    cr_assert_str_eq(e.reason, "bad_option");
    cr_assert_str_eq(e.detail, "ceiling");
}
