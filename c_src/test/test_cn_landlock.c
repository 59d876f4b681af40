/* Criterion tests of the Landlock rulesets' pure part: the `landlock` option
 * of a spawn, the rights each ABI handles and each rule grants, and what an
 * older ABI cannot enforce. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cn_landlock.h"
#include "cn_request.h"
#include "cn_term.h"
#include "test_helpers.h"

static cn_arena g_arena;
static test_bytes g_b;

static void setup(void) {
    cn_arena_init(&g_arena);
    memset(&g_b, 0, sizeof g_b);
}
static void teardown(void) {
    cn_arena_free(&g_arena);
    free(g_b.data);
}

static void put_bin(test_bytes *b, const char *s) {
    test_put_u8(b, 109);
    test_put_u32(b, (uint32_t)strlen(s));
    test_put(b, s, strlen(s));
}

/* [<<"p1">>, ...] of n paths */
static void put_paths(test_bytes *b, const char *const *paths, size_t n) {
    if (n == 0) {
        test_put_u8(b, 106);
        return;
    }
    test_put_u8(b, 108);
    test_put_u32(b, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        put_bin(b, paths[i]);
    }
    test_put_u8(b, 106);
}

static const cn_term *decode(void) {
    cn_term *t;
    cr_assert_eq(cn_term_decode(g_b.data, g_b.len, &g_arena, &t), CN_TERM_OK);
    return t;
}

/* #{read => R, write => W} plus an optional extra pair key => atom value */
static const cn_term *spec_term(const char *const *r, size_t nr, const char *const *w, size_t nw,
                                const char *key, const char *atom) {
    test_put_u8(&g_b, 131);
    test_put_u8(&g_b, 116);
    test_put_u32(&g_b, key ? 3 : 2);
    test_put_atom(&g_b, "read");
    put_paths(&g_b, r, nr);
    test_put_atom(&g_b, "write");
    put_paths(&g_b, w, nw);
    if (key) {
        test_put_atom(&g_b, key);
        test_put_atom(&g_b, atom);
    }
    return decode();
}

TestSuite(cn_landlock, .init = setup, .fini = teardown);

Test(cn_landlock, parses_paths_by_class_with_tcp_and_scope_closed_by_default) {
    const char *r[] = {"/usr/lib/erlang", "/srv/project"};
    const char *w[] = {"/dev/shm/job-1"};
    cn_ll_spec s;
    cn_error e;
    cr_assert_eq(cn_ll_parse(spec_term(r, 2, w, 1, NULL, NULL), &s, &e), 0);
    cr_assert_eq(s.n, 3);
    cr_assert_str_eq(s.rules[0].path, "/usr/lib/erlang");
    cr_assert_eq(s.rules[0].cls, CN_LL_READ);
    cr_assert_str_eq(s.rules[1].path, "/srv/project");
    cr_assert_str_eq(s.rules[2].path, "/dev/shm/job-1");
    cr_assert_eq(s.rules[2].cls, CN_LL_WRITE);
    cr_assert_eq(s.deny_tcp, 1);
    cr_assert_eq(s.scope, 1);
    cr_assert_eq(s.proc_self, 0);
    cn_ll_spec_free(&s);
}

static void expect_refused(const cn_term *t);

Test(cn_landlock, tcp_allow_scope_false_and_proc_self_are_honoured) {
    const char *r[] = {"/usr"};
    cn_ll_spec s;
    cn_error e;
    cr_assert_eq(cn_ll_parse(spec_term(r, 1, NULL, 0, "tcp", "allow"), &s, &e), 0);
    cr_assert_eq(s.deny_tcp, 0);
    cn_ll_spec_free(&s);
    free(g_b.data);
    memset(&g_b, 0, sizeof g_b);
    cr_assert_eq(cn_ll_parse(spec_term(r, 1, NULL, 0, "scope", "false"), &s, &e), 0);
    cr_assert_eq(s.scope, 0);
    cn_ll_spec_free(&s);
    free(g_b.data);
    memset(&g_b, 0, sizeof g_b);
    cr_assert_eq(cn_ll_parse(spec_term(r, 1, NULL, 0, "proc_self", "true"), &s, &e), 0);
    cr_assert_eq(s.proc_self, 1);
    cn_ll_spec_free(&s);
    free(g_b.data);
    memset(&g_b, 0, sizeof g_b);
    expect_refused(spec_term(r, 1, NULL, 0, "proc_self", "yes"));
}

static void expect_refused(const cn_term *t) {
    cn_ll_spec s;
    cn_error e = {NULL, NULL};
    cr_assert_eq(cn_ll_parse(t, &s, &e), -1);
    cr_assert_str_eq(e.reason, "bad_option");
    cr_assert_str_eq(e.detail, "landlock");
    cr_assert_null(s.rules);
    cr_assert_eq(s.n, 0);
}

Test(cn_landlock, refuses_relative_paths_unknown_keys_bad_values_and_no_rules) {
    const char *rel[] = {"/usr", "lib"};
    expect_refused(spec_term(rel, 2, NULL, 0, NULL, NULL));
    free(g_b.data);
    memset(&g_b, 0, sizeof g_b);
    const char *r[] = {"/usr"};
    expect_refused(spec_term(r, 1, NULL, 0, "wirte", "true"));
    free(g_b.data);
    memset(&g_b, 0, sizeof g_b);
    expect_refused(spec_term(r, 1, NULL, 0, "tcp", "maybe"));
    free(g_b.data);
    memset(&g_b, 0, sizeof g_b);
    expect_refused(spec_term(r, 1, NULL, 0, "scope", "yes"));
    free(g_b.data);
    memset(&g_b, 0, sizeof g_b);
    /* no path at all: not even the program could be read */
    expect_refused(spec_term(NULL, 0, NULL, 0, NULL, NULL));
    free(g_b.data);
    memset(&g_b, 0, sizeof g_b);
    /* not a map */
    test_put_u8(&g_b, 131);
    test_put_atom(&g_b, "true");
    expect_refused(decode());
    free(g_b.data);
    memset(&g_b, 0, sizeof g_b);
    /* a path with a NUL byte */
    test_put_u8(&g_b, 131);
    test_put_u8(&g_b, 116);
    test_put_u32(&g_b, 1);
    test_put_atom(&g_b, "read");
    test_put_u8(&g_b, 108);
    test_put_u32(&g_b, 1);
    test_put_u8(&g_b, 109);
    test_put_u32(&g_b, 6);
    test_put(&g_b, "/a\0/bc", 6);
    test_put_u8(&g_b, 106);
    expect_refused(decode());
}

Test(cn_landlock, handled_rights_grow_with_the_abi) {
    cr_assert_eq(cn_ll_fs_handled(0), 0);
    cr_assert_eq(cn_ll_fs_handled(1), 0x1fff);
    cr_assert_eq(cn_ll_fs_handled(2), 0x3fff);
    cr_assert_eq(cn_ll_fs_handled(3), 0x7fff);
    cr_assert_eq(cn_ll_fs_handled(4), 0x7fff);
    cr_assert_eq(cn_ll_fs_handled(5), 0xffff);
    cr_assert_eq(cn_ll_fs_handled(7), 0xffff);
    cr_assert_eq(cn_ll_net_handled(3), 0);
    cr_assert_eq(cn_ll_net_handled(4), CN_LL_NET_BIND_TCP | CN_LL_NET_CONNECT_TCP);
    cr_assert_eq(cn_ll_scoped(5), 0);
    cr_assert_eq(cn_ll_scoped(6), CN_LL_SCOPE_ABSTRACT_UNIX_SOCKET | CN_LL_SCOPE_SIGNAL);
}

Test(cn_landlock, rule_rights_by_class) {
    /* read: files and listings, nothing else */
    cr_assert_eq(cn_ll_access(CN_LL_READ, 7, 1), CN_LL_FS_READ_FILE | CN_LL_FS_READ_DIR);
    cr_assert_eq(cn_ll_access(CN_LL_READ, 7, 0), CN_LL_FS_READ_FILE);
    /* exec adds execute */
    cr_assert_eq(cn_ll_access(CN_LL_EXEC, 7, 0), CN_LL_FS_READ_FILE | CN_LL_FS_EXECUTE);
    /* write: everything handled but execute, device nodes and device ioctls */
    uint64_t w = cn_ll_access(CN_LL_WRITE, 7, 1);
    cr_assert(w & CN_LL_FS_MAKE_REG);
    cr_assert(w & CN_LL_FS_REMOVE_FILE);
    cr_assert(w & CN_LL_FS_REFER);
    cr_assert(w & CN_LL_FS_TRUNCATE);
    cr_assert(w & CN_LL_FS_READ_FILE);
    cr_assert_not(w & CN_LL_FS_EXECUTE);
    cr_assert_not(w & CN_LL_FS_MAKE_BLOCK);
    cr_assert_not(w & CN_LL_FS_MAKE_CHAR);
    cr_assert_not(w & CN_LL_FS_IOCTL_DEV);
    /* on a file only the file rights */
    cr_assert_eq(cn_ll_access(CN_LL_WRITE, 7, 0),
                 CN_LL_FS_WRITE_FILE | CN_LL_FS_READ_FILE | CN_LL_FS_TRUNCATE);
    /* never a right the ABI does not handle (the kernel would refuse the rule) */
    cr_assert_eq(cn_ll_access(CN_LL_WRITE, 1, 1) & ~cn_ll_fs_handled(1), 0);
    cr_assert_eq(cn_ll_access(CN_LL_WRITE, 2, 0), CN_LL_FS_WRITE_FILE | CN_LL_FS_READ_FILE);
    cr_assert_eq(cn_ll_access((cn_ll_class)42, 7, 1), 0);
}

static cn_ll_spec one_rule(cn_ll_class c) {
    static cn_ll_rule rule;
    rule.path = (char *)"/x";
    rule.cls = c;
    cn_ll_spec s = {&rule, 1, 1, 1, 0, 0};
    return s;
}

Test(cn_landlock, plan_at_abi_7_misses_nothing) {
    cn_ll_spec s = one_rule(CN_LL_WRITE);
    cn_ll_plan p;
    cr_assert_eq(cn_ll_plan_make(&s, 7, &p), 0);
    cr_assert_eq(p.abi, 7);
    cr_assert_eq(p.missing, 0);
    cr_assert_eq(p.attr.handled_access_fs, 0xffff);
    cr_assert_eq(p.attr.handled_access_net, CN_LL_NET_BIND_TCP | CN_LL_NET_CONNECT_TCP);
    cr_assert_eq(p.attr.scoped, CN_LL_SCOPE_ABSTRACT_UNIX_SOCKET | CN_LL_SCOPE_SIGNAL);
    /* a newer kernel is used as the newest ABI we know */
    cr_assert_eq(cn_ll_plan_make(&s, 99, &p), 0);
    cr_assert_eq(p.abi, CN_LL_ABI_KNOWN);
}

Test(cn_landlock, older_abis_report_what_they_cannot_enforce) {
    cn_ll_spec s = one_rule(CN_LL_WRITE);
    cn_ll_plan p;
    cr_assert_eq(cn_ll_plan_make(&s, 3, &p), 0);
    cr_assert_eq(p.attr.handled_access_net, 0);
    cr_assert_eq(p.missing, CN_LL_MISSING_TCP | CN_LL_MISSING_IOCTL | CN_LL_MISSING_SCOPE);
    cr_assert_eq(cn_ll_plan_make(&s, 1, &p), 0);
    cr_assert_eq(p.missing, CN_LL_MISSING_TCP | CN_LL_MISSING_TRUNCATE | CN_LL_MISSING_REFER |
                                CN_LL_MISSING_IOCTL | CN_LL_MISSING_SCOPE);
    cr_assert_eq(cn_ll_plan_make(&s, 5, &p), 0);
    cr_assert_eq(p.missing, CN_LL_MISSING_SCOPE);
    /* what was not asked for is not missing */
    s.deny_tcp = 0;
    s.scope = 0;
    cr_assert_eq(cn_ll_plan_make(&s, 3, &p), 0);
    cr_assert_eq(p.missing, CN_LL_MISSING_IOCTL);
    cr_assert_eq(p.attr.scoped, 0);
    /* refer only matters with a writable rule */
    cn_ll_spec r = one_rule(CN_LL_READ);
    cr_assert_eq(cn_ll_plan_make(&r, 1, &p), 0);
    cr_assert_not(p.missing & CN_LL_MISSING_REFER);
    /* no Landlock at all */
    cr_assert_eq(cn_ll_plan_make(&s, 0, &p), -1);
}

Test(cn_landlock, tcp_connect_refuses_bind_only) {
    const char *r[] = {"/usr"};
    cn_ll_spec s;
    cn_error e;
    cn_ll_plan p;
    cr_assert_eq(cn_ll_parse(spec_term(r, 1, NULL, 0, "tcp", "connect"), &s, &e), 0);
    cr_assert_eq(s.deny_tcp, 0);
    cr_assert_eq(s.deny_bind, 1);
    cr_assert_eq(cn_ll_plan_make(&s, 4, &p), 0);
    cr_assert_eq(p.attr.handled_access_net, CN_LL_NET_BIND_TCP);
    cr_assert_not(p.missing & CN_LL_MISSING_TCP);
    /* below ABI 4 nothing about TCP can be refused */
    cr_assert_eq(cn_ll_plan_make(&s, 3, &p), 0);
    cr_assert_eq(p.attr.handled_access_net, 0);
    cr_assert(p.missing & CN_LL_MISSING_TCP);
    cn_ll_spec_free(&s);
    free(g_b.data);
    memset(&g_b, 0, sizeof g_b);
}

Test(cn_landlock, missing_names) {
    cr_assert_str_eq(cn_ll_missing_name(CN_LL_MISSING_TCP), "tcp");
    cr_assert_str_eq(cn_ll_missing_name(CN_LL_MISSING_TRUNCATE), "truncate");
    cr_assert_str_eq(cn_ll_missing_name(CN_LL_MISSING_REFER), "refer");
    cr_assert_str_eq(cn_ll_missing_name(CN_LL_MISSING_IOCTL), "ioctl_dev");
    cr_assert_str_eq(cn_ll_missing_name(CN_LL_MISSING_SCOPE), "scope");
    cr_assert_null(cn_ll_missing_name(0));
    cr_assert_null(cn_ll_missing_name(1 << 9));
}

Test(cn_landlock, setting_parse) {
    int v = 123;
    cr_assert_eq(cn_ll_setting_parse(NULL, &v), 0);
    cr_assert_eq(v, -1);
    cr_assert_eq(cn_ll_setting_parse("auto", &v), 0);
    cr_assert_eq(v, -1);
    cr_assert_eq(cn_ll_setting_parse("", &v), 0);
    cr_assert_eq(v, -1);
    cr_assert_eq(cn_ll_setting_parse("off", &v), 0);
    cr_assert_eq(v, 0);
    cr_assert_eq(cn_ll_setting_parse("3", &v), 0);
    cr_assert_eq(v, 3);
    cr_assert_eq(cn_ll_setting_parse("0", &v), -1);
    cr_assert_eq(cn_ll_setting_parse("-1", &v), -1);
    cr_assert_eq(cn_ll_setting_parse("3x", &v), -1);
    cr_assert_eq(cn_ll_setting_parse("99999999999999999999", &v), -1);
    cr_assert_eq(cn_ll_setting_parse("on", &v), -1);
}

Test(cn_landlock, errno_reasons) {
    cr_assert_str_eq(cn_ll_errno_reason(ENOSYS), "not_supported");
    cr_assert_str_eq(cn_ll_errno_reason(EOPNOTSUPP), "disabled");
    cr_assert_str_eq(cn_ll_errno_reason(EINVAL), "error");
}

Test(cn_landlock, spawn_request_carries_the_spec) {
    /* #{argv => [<<"/bin/true">>], landlock => #{read => [<<"/usr">>]}} */
    test_put_u8(&g_b, 131);
    test_put_u8(&g_b, 116);
    test_put_u32(&g_b, 2);
    test_put_atom(&g_b, "argv");
    const char *argv[] = {"/bin/true"};
    put_paths(&g_b, argv, 1);
    test_put_atom(&g_b, "landlock");
    test_put_u8(&g_b, 116);
    test_put_u32(&g_b, 1);
    test_put_atom(&g_b, "read");
    const char *r[] = {"/usr"};
    put_paths(&g_b, r, 1);
    cn_spawn_req req;
    cn_error e;
    cr_assert_eq(cn_spawn_parse(decode(), &req, &e), 0);
    cr_assert_not_null(req.landlock);
    cr_assert_eq(req.landlock->n, 1);
    cr_assert_str_eq(req.landlock->rules[0].path, "/usr");
    cn_spawn_req_free(&req);
    cr_assert_null(req.landlock);
}

Test(cn_landlock, spawn_request_with_a_bad_spec_is_refused) {
    test_put_u8(&g_b, 131);
    test_put_u8(&g_b, 116);
    test_put_u32(&g_b, 2);
    test_put_atom(&g_b, "argv");
    const char *argv[] = {"/bin/true"};
    put_paths(&g_b, argv, 1);
    test_put_atom(&g_b, "landlock");
    test_put_u8(&g_b, 116);
    test_put_u32(&g_b, 1);
    test_put_atom(&g_b, "read");
    const char *r[] = {"relative"};
    put_paths(&g_b, r, 1);
    cn_spawn_req req;
    cn_error e;
    cr_assert_eq(cn_spawn_parse(decode(), &req, &e), -1);
    cr_assert_str_eq(e.reason, "bad_option");
    cr_assert_str_eq(e.detail, "landlock");
    cr_assert_null(req.landlock);
}
