/* libFuzzer target: beam_parse on arbitrary bytes, then a walk over
 * everything it returns (every atom, every table entry's atom index, the
 * literal table) so that a bound the parser forgot shows up under ASan. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "beam.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile uint8_t sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    beam_module m;
    beam_error err;
    if (beam_parse(data, size, &m, &err) != BEAM_OK) {
        return 0;
    }
    for (size_t i = 0; i < m.natoms; i++) {
        if (m.atoms[i].len > 0) {
            sink ^= m.atoms[i].name[m.atoms[i].len - 1];
        }
    }
    for (size_t i = 0; i < m.nchunks; i++) {
        if (m.chunks[i].size > 0) {
            sink ^= data[m.chunks[i].offset + m.chunks[i].size - 1];
        }
    }
    uint32_t e[3];
    for (uint32_t i = 0; i < m.nimports; i++) {
        beam_table_entry(m.imports, i, e);
        sink ^= m.atoms[e[0] - 1].len ^ m.atoms[e[1] - 1].len;
    }
    for (uint32_t i = 0; i < m.nexports; i++) {
        beam_table_entry(m.exports, i, e);
        sink ^= m.atoms[e[0] - 1].len;
    }
    for (uint32_t i = 0; i < m.nlocals; i++) {
        beam_table_entry(m.locals, i, e);
        sink ^= m.atoms[e[0] - 1].len;
    }
    beam_literals lits;
    if (beam_literals_load(&m, &lits, &err) == BEAM_OK) {
        size_t pos = 0;
        const uint8_t *term;
        uint32_t len;
        while (beam_literals_next(&lits, &pos, &term, &len)) {
            if (len > 0) {
                sink ^= term[len - 1];
            }
        }
        beam_literals_free(&lits);
    }
    beam_module_free(&m);
    return 0;
}
