/* Criterion tests of the C-node's frame reassembly, term decoder and request
 * parsing (limits, spawn and watch arguments, signals). */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "bytes.h"
#include "cn_frame.h"
#include "cn_request.h"
#include "cn_term.h"

static void put_frame(uint8_t *out, const char *body, uint32_t n) {
    wr_u32(out, n);
    memcpy(out + 4, body, n);
}

Test(cn_frame, reassembles_frames_across_partial_reads) {
    uint8_t stream[4 + 5 + 4 + 3 + 4 + 0];
    put_frame(stream, "hello", 5);
    put_frame(stream + 9, "abc", 3);
    put_frame(stream + 16, "", 0);
    /* every split of the stream into two reads gives the same frames */
    for (size_t split = 0; split <= sizeof stream; split++) {
        cn_framebuf fb;
        cn_frame_init(&fb, 1024);
        const uint8_t *f;
        size_t len;
        uint64_t decl;
        int got = 0;
        const char *want[] = {"hello", "abc", ""};
        cr_assert_eq(cn_frame_append(&fb, stream, split), 0);
        for (int round = 0; round < 2; round++) {
            while (cn_frame_next(&fb, &f, &len, &decl) == CN_FRAME_OK) {
                cr_assert_lt(got, 3);
                cr_assert_eq(len, strlen(want[got]), "split %zu frame %d", split, got);
                cr_assert(memcmp(f, want[got], len) == 0);
                got++;
            }
            if (round == 0) {
                cr_assert_eq(cn_frame_append(&fb, stream + split, sizeof stream - split), 0);
            }
        }
        cr_assert_eq(got, 3, "split %zu", split);
        cr_assert_eq(cn_frame_pending(&fb), 0);
        cn_frame_free(&fb);
    }
}

Test(cn_frame, one_byte_at_a_time) {
    uint8_t stream[4 + 5];
    put_frame(stream, "12345", 5);
    cn_framebuf fb;
    cn_frame_init(&fb, 16);
    const uint8_t *f;
    size_t len;
    for (size_t i = 0; i < sizeof stream; i++) {
        cr_assert_eq(cn_frame_next(&fb, &f, &len, NULL), CN_FRAME_NONE);
        cn_frame_append(&fb, stream + i, 1);
    }
    cr_assert_eq(cn_frame_next(&fb, &f, &len, NULL), CN_FRAME_OK);
    cr_assert_eq(len, 5);
    cn_frame_free(&fb);
}

Test(cn_frame, oversized_frame_is_refused_and_skipped) {
    size_t big = 5000;
    uint8_t *stream = malloc(4 + big + 4 + 2);
    wr_u32(stream, (uint32_t)big);
    memset(stream + 4, 'x', big);
    put_frame(stream + 4 + big, "ok", 2);
    size_t total = 4 + big + 4 + 2;
    cn_framebuf fb;
    cn_frame_init(&fb, 100);
    const uint8_t *f;
    size_t len;
    uint64_t decl = 0;
    int too_big = 0, ok = 0;
    /* fed in chunks of 700 bytes */
    for (size_t off = 0; off < total; off += 700) {
        size_t n = total - off < 700 ? total - off : 700;
        cr_assert_eq(cn_frame_append(&fb, stream + off, n), 0);
        cn_frame_status st;
        while ((st = cn_frame_next(&fb, &f, &len, &decl)) != CN_FRAME_NONE) {
            if (st == CN_FRAME_TOO_BIG) {
                too_big++;
                cr_assert_eq(decl, big);
                cr_assert_eq(len, CN_FRAME_PEEK);
                cr_assert_eq(f[0], 'x');
            } else {
                ok++;
                cr_assert_eq(len, 2);
                cr_assert(memcmp(f, "ok", 2) == 0);
            }
        }
        /* never more than the peek of the big frame is kept */
        cr_assert_leq(fb.cap, 4096);
    }
    cr_assert_eq(too_big, 1);
    cr_assert_eq(ok, 1);
    cn_frame_free(&fb);
    free(stream);
}

/* ---- terms ---- */

#define T(...) ((const uint8_t[]){__VA_ARGS__})
#define DECODE(a, out, ...) cn_term_decode(T(__VA_ARGS__), sizeof(T(__VA_ARGS__)), a, out)

Test(cn_term, scalars_and_containers) {
    cn_arena a;
    cn_arena_init(&a);
    cn_term *t;
    cr_assert_eq(DECODE(&a, &t, 131, 97, 7), CN_TERM_OK);
    cr_assert_eq(t->type, CN_T_INT);
    cr_assert_eq(t->u.i, 7);
    cr_assert_eq(DECODE(&a, &t, 131, 98, 0xff, 0xff, 0xff, 0xfe), CN_TERM_OK);
    cr_assert_eq(t->u.i, -2);
    /* 2^40 as SMALL_BIG_EXT; -(2^63) fits, 2^63 does not */
    cr_assert_eq(DECODE(&a, &t, 131, 110, 6, 0, 0, 0, 0, 0, 0, 1), CN_TERM_OK);
    cr_assert_eq(t->u.i, (int64_t)1 << 40);
    cr_assert_eq(DECODE(&a, &t, 131, 110, 8, 1, 0, 0, 0, 0, 0, 0, 0, 0x80), CN_TERM_OK);
    cr_assert_eq(t->u.i, INT64_MIN);
    cr_assert_eq(DECODE(&a, &t, 131, 110, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0x80), CN_TERM_E_BAD_VALUE);
    cr_assert_eq(DECODE(&a, &t, 131, 110, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1), CN_TERM_E_BAD_VALUE);
    /* #{argv => [<<"ls">>], limits => [{memory, 5}]} */
    cr_assert_eq(DECODE(&a, &t, 131, 116, 0, 0, 0, 2, 119, 4, 'a', 'r', 'g', 'v', 108, 0, 0, 0, 1,
                        109, 0, 0, 0, 2, 'l', 's', 106, 119, 6, 'l', 'i', 'm', 'i', 't', 's', 108,
                        0, 0, 0, 1, 104, 2, 119, 6, 'm', 'e', 'm', 'o', 'r', 'y', 97, 5, 106),
                 CN_TERM_OK);
    cr_assert_eq(t->type, CN_T_MAP);
    const cn_term *argv = cn_term_get(t, "argv");
    cr_assert_not_null(argv);
    cr_assert_eq(argv->u.c.n, 1);
    char *s = cn_term_strdup(&argv->u.c.items[0]);
    cr_assert_str_eq(s, "ls");
    free(s);
    const cn_term *mem = cn_term_get(cn_term_get(t, "limits"), "memory");
    cr_assert_eq(mem->u.i, 5);
    cr_assert_null(cn_term_get(t, "nope"));
    cn_arena_free(&a);
}

Test(cn_term, rejects_bad_input) {
    cn_arena a;
    cn_arena_init(&a);
    cn_term *t;
    cr_assert_eq(DECODE(&a, &t, 130, 97, 1), CN_TERM_E_VERSION);
    cr_assert_eq(DECODE(&a, &t, 131, 97), CN_TERM_E_TRUNCATED);
    cr_assert_eq(DECODE(&a, &t, 131, 97, 1, 0), CN_TERM_E_TRAILING);
    cr_assert_eq(DECODE(&a, &t, 131, 112), CN_TERM_E_BAD_TAG); /* a fun */
    cr_assert_eq(DECODE(&a, &t, 131, 108, 0, 0, 0, 1, 97, 1, 97, 2), CN_TERM_E_IMPROPER);
    /* counts larger than the buffer are refused before allocating */
    cr_assert_eq(DECODE(&a, &t, 131, 108, 0xff, 0xff, 0xff, 0xff, 106), CN_TERM_E_TRUNCATED);
    cr_assert_eq(DECODE(&a, &t, 131, 116, 0x7f, 0xff, 0xff, 0xff), CN_TERM_E_TRUNCATED);
    cr_assert_eq(DECODE(&a, &t, 131, 109, 0, 0, 0, 9, 'x'), CN_TERM_E_TRUNCATED);
    /* nesting deeper than the limit */
    uint8_t deep[2 + 2 * (CN_TERM_MAX_DEPTH + 2)];
    deep[0] = 131;
    size_t n = 1;
    for (int i = 0; i < CN_TERM_MAX_DEPTH + 2; i++) {
        deep[n++] = 104;
        deep[n++] = 1;
    }
    deep[n++] = 106;
    cr_assert_eq(cn_term_decode(deep, n, &a, &t), CN_TERM_E_DEPTH);
    cn_arena_free(&a);
}

/* {Pid, Ref, ping, []} with a NEW_PID_EXT and a NEWER_REFERENCE_EXT */
static const uint8_t ping_req[] = {
    131, 104, 4,   88,  119, 13,  'n', 'o', 'n', 'o', 'd', 'e', '@', 'n', 'o', 'h', 'o', 's',
    't', 0,   0,   0,   80,  0,   0,   0,   0,   0,   0,   0,   0,   90,  0,   3,   119, 13,
    'n', 'o', 'n', 'o', 'd', 'e', '@', 'n', 'o', 'h', 'o', 's', 't', 0,   0,   0,   0,   0,
    0,   1,   1,   0,   0,   0,   2,   0,   0,   0,   3,   119, 4,   'p', 'i', 'n', 'g', 106};

Test(cn_request, envelope) {
    cn_arena a;
    cn_arena_init(&a);
    cn_term *t;
    cr_assert_eq(cn_term_decode(ping_req, sizeof ping_req, &a, &t), CN_TERM_OK);
    cn_request r;
    cr_assert_eq(cn_request_parse(t, &r), 0);
    cr_assert_eq(r.from->type, CN_T_PID);
    cr_assert_eq(r.from->raw_len, 1 + 15 + 12);
    cr_assert_eq(r.ref->type, CN_T_REF);
    cr_assert(cn_term_is_atom(r.cmd, "ping"));
    /* the peek reads sender and reference from a prefix only */
    cn_term from, ref;
    cr_assert_eq(cn_request_peek(ping_req, sizeof ping_req - 7, &a, &from, &ref), 0);
    cr_assert_eq(ref.raw_len, r.ref->raw_len);
    cr_assert_neq(cn_request_peek(ping_req, 20, &a, &from, &ref), 0);
    /* not a 4-tuple */
    cr_assert_eq(DECODE(&a, &t, 131, 104, 1, 97, 1), CN_TERM_OK);
    cr_assert_neq(cn_request_parse(t, &r), 0);
    cn_arena_free(&a);
}

Test(cn_request, limits) {
    cn_arena a;
    cn_arena_init(&a);
    cn_term *t;
    cn_limits l;
    cn_error e;
    cn_limits_init(&l);
    /* #{memory => 1000, cpu_seconds => infinity} */
    cr_assert_eq(DECODE(&a, &t, 131, 116, 0, 0, 0, 2, 119, 6, 'm', 'e', 'm', 'o', 'r', 'y', 98, 0,
                        0, 3, 232, 119, 11, 'c', 'p', 'u', '_', 's', 'e', 'c', 'o', 'n', 'd', 's',
                        119, 8, 'i', 'n', 'f', 'i', 'n', 'i', 't', 'y'),
                 CN_TERM_OK);
    l.cpu_seconds = 5;
    cr_assert_eq(cn_limits_parse(t, &l, &e), 0);
    cr_assert_eq(l.memory, 1000);
    cr_assert_eq(l.cpu_seconds, CN_LIMIT_NONE);
    cr_assert_eq(l.processes, CN_LIMIT_NONE);
    /* #{processes => 0}: at least the process itself */
    cr_assert_eq(DECODE(&a, &t, 131, 116, 0, 0, 0, 1, 119, 9, 'p', 'r', 'o', 'c', 'e', 's', 's',
                        'e', 's', 97, 0),
                 CN_TERM_OK);
    cr_assert_neq(cn_limits_parse(t, &l, &e), 0);
    cr_assert_str_eq(e.reason, "bad_limit");
    cr_assert_str_eq(e.detail, "processes");
    /* #{memory => -1} */
    cr_assert_eq(DECODE(&a, &t, 131, 116, 0, 0, 0, 1, 119, 6, 'm', 'e', 'm', 'o', 'r', 'y', 98,
                        0xff, 0xff, 0xff, 0xff),
                 CN_TERM_OK);
    cr_assert_neq(cn_limits_parse(t, &l, &e), 0);
    cr_assert_str_eq(e.detail, "memory");
    /* #{bogus => 1} */
    cr_assert_eq(DECODE(&a, &t, 131, 116, 0, 0, 0, 1, 119, 5, 'b', 'o', 'g', 'u', 's', 97, 1),
                 CN_TERM_OK);
    cr_assert_neq(cn_limits_parse(t, &l, &e), 0);
    cr_assert_str_eq(e.reason, "unknown_limit");
    cn_arena_free(&a);
}

Test(cn_request, spawn_args) {
    cn_arena a;
    cn_arena_init(&a);
    cn_term *t;
    cn_spawn_req s;
    cn_error e;
    /* #{argv => ["sh"], env => [{"A", "1"}, {"B", nil}], timeout => 10} */
    cr_assert_eq(DECODE(&a, &t, 131, 116, 0, 0, 0, 3, 119, 4, 'a', 'r', 'g', 'v', 108, 0, 0, 0, 1,
                        109, 0, 0, 0, 2, 's', 'h', 106, 119, 3, 'e', 'n', 'v', 108, 0, 0, 0, 2, 104,
                        2, 109, 0, 0, 0, 1, 'A', 109, 0, 0, 0, 1, '1', 104, 2, 109, 0, 0, 0, 1, 'B',
                        119, 3, 'n', 'i', 'l', 106, 119, 7, 't', 'i', 'm', 'e', 'o', 'u', 't', 97,
                        10),
                 CN_TERM_OK);
    cr_assert_eq(cn_spawn_parse(t, &s, &e), 0);
    cr_assert_eq(s.argc, 1);
    cr_assert_str_eq(s.argv[0], "sh");
    cr_assert_null(s.argv[1]);
    cr_assert_str_eq(s.env[0], "A=1");
    cr_assert_str_eq(s.env[1], "B");
    cr_assert_eq(s.timeout_ms, 10);
    cr_assert_eq(s.sample_ms, CN_DEFAULT_SAMPLE_MS);
    cn_spawn_req_free(&s);
    /* argv with a NUL byte */
    cr_assert_eq(DECODE(&a, &t, 131, 116, 0, 0, 0, 1, 119, 4, 'a', 'r', 'g', 'v', 108, 0, 0, 0, 1,
                        109, 0, 0, 0, 2, 'a', 0, 106),
                 CN_TERM_OK);
    cr_assert_neq(cn_spawn_parse(t, &s, &e), 0);
    cr_assert_str_eq(e.detail, "argv");
    /* env key with '=' */
    cr_assert_eq(DECODE(&a, &t, 131, 116, 0, 0, 0, 2, 119, 4, 'a', 'r', 'g', 'v', 108, 0, 0, 0, 1,
                        109, 0, 0, 0, 1, 'a', 106, 119, 3, 'e', 'n', 'v', 108, 0, 0, 0, 1, 104, 2,
                        109, 0, 0, 0, 3, 'A', '=', 'B', 109, 0, 0, 0, 0, 106),
                 CN_TERM_OK);
    cr_assert_neq(cn_spawn_parse(t, &s, &e), 0);
    cr_assert_str_eq(e.detail, "env");
    /* not a map */
    cr_assert_eq(DECODE(&a, &t, 131, 97, 1), CN_TERM_OK);
    cr_assert_neq(cn_spawn_parse(t, &s, &e), 0);
    cr_assert_str_eq(e.reason, "bad_args");
    cn_arena_free(&a);
}

Test(cn_request, signals) {
    cn_arena a;
    cn_arena_init(&a);
    cn_term *t;
    cr_assert_eq(DECODE(&a, &t, 131, 119, 7, 's', 'i', 'g', 't', 'e', 'r', 'm'), CN_TERM_OK);
    cr_assert_eq(cn_signal_parse(t), SIGTERM);
    cr_assert_eq(DECODE(&a, &t, 131, 97, 9), CN_TERM_OK);
    cr_assert_eq(cn_signal_parse(t), 9);
    cr_assert_eq(DECODE(&a, &t, 131, 97, 0), CN_TERM_OK);
    cr_assert_eq(cn_signal_parse(t), -1);
    cr_assert_eq(DECODE(&a, &t, 131, 119, 4, 'n', 'o', 'p', 'e'), CN_TERM_OK);
    cr_assert_eq(cn_signal_parse(t), -1);
    cr_assert_str_eq(cn_signal_name(SIGKILL), "sigkill");
    cn_arena_free(&a);
}
