/* libFuzzer target: the C-node's request path through its pure parts. The
 * input is a byte stream from the port, split into reads of varying size;
 * every frame goes through the term decoder, the request envelope, the
 * argument parsers (Landlock rulesets included) and the JSON encoder of the
 * audit log. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "cn_audit.h"
#include "cn_frame.h"
#include "cn_landlock.h"
#include "cn_limits.h"
#include "cn_request.h"
#include "cn_term.h"

static void handle(const uint8_t *frame, size_t len, int too_big) {
    cn_arena a;
    cn_arena_init(&a);
    if (too_big) {
        cn_term from, ref;
        (void)cn_request_peek(frame, len, &a, &from, &ref);
        cn_arena_free(&a);
        return;
    }
    cn_term *t;
    cn_request r;
    if (cn_term_decode(frame, len, &a, &t) == CN_TERM_OK && cn_request_parse(t, &r) == 0) {
        cn_error e;
        cn_spawn_req s;
        if (cn_spawn_parse(r.args, &s, &e) == 0) {
            cn_spawn_req_free(&s);
        }
        cn_watch_req w;
        if (cn_watch_parse(r.args, &w, &e) == 0) {
            cn_watch_req_free(&w);
        }
        cn_limits l, c;
        cn_limits_init(&l);
        (void)cn_limits_parse(cn_term_get(r.args, "limits"), &l, &e);
        /* set_limits: a plan against the limits of a job spawned with them */
        cn_limits_plan plan;
        if (cn_ceiling_parse(cn_term_get(r.args, "ceiling"), &c, &e) != 0) {
            cn_limits_init(&c);
        }
        if (cn_limits_at_spawn(&l, &c, &plan, &e) == 0) {
            cn_joblimits j = plan.result;
            (void)cn_limits_plan_change(&j, cn_term_get(r.args, "limits"), INT64_MAX - 1, &plan,
                                        &e);
        }
        (void)cn_signal_parse(cn_term_get(r.args, "signal"));
        /* a spawn's Landlock option, planned at every ABI */
        cn_ll_spec ll;
        if (cn_ll_parse(cn_term_get(r.args, "landlock"), &ll, &e) == 0) {
            for (int abi = 0; abi <= CN_LL_ABI_KNOWN + 1; abi++) {
                cn_ll_plan p;
                if (cn_ll_plan_make(&ll, abi, &p) == 0) {
                    for (size_t i = 0; i < ll.n; i++) {
                        (void)cn_ll_access(ll.rules[i].cls, p.abi, (int)(i & 1));
                    }
                }
            }
            cn_ll_spec_free(&ll);
        }
        const char *why;
        free(cn_json_encode(r.args, &why));
    }
    cn_arena_free(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    cn_framebuf fb;
    cn_frame_init(&fb, 4096);
    size_t off = 0, step = 1;
    while (off < size) {
        size_t n = size - off < step ? size - off : step;
        if (cn_frame_append(&fb, data + off, n) != 0) {
            break;
        }
        off += n;
        step = step * 3 % 1021 + 1;
        const uint8_t *f;
        size_t len;
        uint64_t declared;
        cn_frame_status st;
        while ((st = cn_frame_next(&fb, &f, &len, &declared)) != CN_FRAME_NONE) {
            handle(f, len, st == CN_FRAME_TOO_BIG);
        }
    }
    /* the whole input as one frame body, too */
    handle(data, size, 0);
    cn_frame_free(&fb);
    return 0;
}
