/* libFuzzer target: relocation of arbitrary bytes with a fixed rename and
 * redirect spec. Whatever it accepts must parse and validate again. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "beam.h"
#include "relocate.h"

#define PAIR(a, b)                                                                                 \
    { (const uint8_t *)(a), sizeof(a) - 1, (const uint8_t *)(b), sizeof(b) - 1 }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const reloc_pair renames[] = {PAIR("lists", "sandbox@f@lists"),
                                         PAIR("Elixir.Enum", "Elixir.Sandbox@f.Enum"),
                                         PAIR("ok", "a_much_longer_name_than_ok")};
    static const reloc_pair redirects[] = {PAIR("erlang", "shim"),
                                           PAIR("Elixir.Application", "Elixir.Shim")};
    for (int strip = 0; strip < 2; strip++) {
        reloc_spec spec = {.renames = renames,
                           .nrenames = 3,
                           .redirects = redirects,
                           .nredirects = 2,
                           .strip_debug = strip};
        uint8_t *out;
        size_t out_len;
        reloc_error err;
        if (beam_relocate(data, size, &spec, &out, &out_len, &err) == 0) {
            beam_module m;
            beam_error e;
            if (beam_parse(out, out_len, &m, &e) != BEAM_OK) {
                abort(); /* relocation produced something it cannot parse */
            }
            beam_module_free(&m);
            free(out);
        } else {
            reloc_error_free(&err);
        }
    }
    return 0;
}
