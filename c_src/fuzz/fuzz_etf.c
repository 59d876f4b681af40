/* libFuzzer target: the external term format validator, compressed terms
 * allowed, and the walker with a visitor that reads every atom it reports. */
#include <stddef.h>
#include <stdint.h>

#include "etf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint8_t sink;

static int touch_atom(void *ctx, size_t off, size_t enc_len, const uint8_t *name, size_t len,
                      int utf8, etf_atom_role role) {
    const uint8_t *buf = ctx;
    (void)utf8;
    (void)role;
    sink ^= buf[off] ^ buf[off + enc_len - 1];
    if (len > 0) {
        sink ^= name[len - 1];
    }
    return 0;
}

static int touch_fun(void *ctx, const etf_atom *mod, const etf_atom *fun, unsigned arity) {
    (void)ctx;
    sink ^= (uint8_t)(mod->len ^ fun->len ^ arity);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    etf_validate(data, size, 1);
    if (size > 1) {
        etf_visitor v = {touch_atom, touch_fun, (void *)(data + 1), NULL};
        size_t end;
        etf_walk_term(data + 1, size - 1, &end, &v);
    }
    return 0;
}
