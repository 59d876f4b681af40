/* libFuzzer target: beam_validate on arbitrary bytes. */
#include <stddef.h>
#include <stdint.h>

#include "beam.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    beam_error err;
    beam_validate(data, size, BEAM_DEFAULT_MAX_OPCODE, &err);
    return 0;
}
