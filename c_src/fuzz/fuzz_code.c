/* libFuzzer target: the Code chunk decoder, call sites and the guard
 * rewriter. Whatever validates must give call sites; whatever relocation
 * with a dynamic guard and an MFA redirect accepts must validate again and
 * have no dynamic call site left.
 *
 * An input that starts with "FOR1" is a whole BEAM file (the installed
 * modules are the seeds). Any other input is an instruction stream for a
 * module built here, so that mutations spend their time in the code: its
 * first byte gives the header's label count (3 + low 4 bits) and function
 * count (1 + bits 4-5); the rest follows `label 1, func_info m f 2,
 * label 2`. The module has atoms m f erlang element lists reverse self,
 * imports erlang:element/2, lists:reverse/1, erlang:self/0, the literals
 * `fun lists:reverse/1` and `{f}`, a lambda f/2 at label 2, two line items
 * and "abcd" as StrT. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "beam.h"
#include "bytes.h"
#include "code.h"
#include "relocate.h"
#include "rewrite.h"
#include "sites.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t atoms[] = {0,   0, 0,   7,   1,   'm', 1,   'f', 6,   'e', 'r', 'l', 'a', 'n',
                                'g', 7, 'e', 'l', 'e', 'm', 'e', 'n', 't', 5,   'l', 'i', 's', 't',
                                's', 7, 'r', 'e', 'v', 'e', 'r', 's', 'e', 4,   's', 'e', 'l', 'f'};
static const uint8_t imports[] = {0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, 5,
                                  0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 7, 0, 0, 0, 0};
static const uint8_t exports[] = {0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2};
static const uint8_t funt[] = {0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0,
                               0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
static const uint8_t line[] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,    0,
                               8, 0, 0, 0, 2, 0, 0, 0, 0, 0x71, 0x91};
/* The literal table, uncompressed: count, then size and term each. */
static const uint8_t table[] = {0,   0,   0,   2,   0,   0, 0,   20,  131, 113, 119, 5,   'l',
                                'i', 's', 't', 's', 119, 7, 'r', 'e', 'v', 'e', 'r', 's', 'e',
                                97,  1,   0,   0,   0,   5, 131, 104, 1,   119, 1,   'f'};

static void put_chunk(uint8_t **p, const char *id, const uint8_t *d, size_t n) {
    memcpy(*p, id, 4);
    wr_u32(*p + 4, (uint32_t)n);
    if (n) {
        memcpy(*p + 8, d, n);
    }
    memset(*p + 8 + n, 0, align4(n) - n);
    *p += 8 + align4(n);
}

static uint8_t *structured(const uint8_t *data, size_t size, size_t *out_size) {
    static const uint8_t prefix[] = {0x01, 0x10, 0x02, 0x12, 0x22, 0x20, 0x01, 0x20};
    uLongf zn = compressBound(sizeof table);
    uint8_t *lit = malloc(4 + zn);
    if (!lit || compress(lit + 4, &zn, table, sizeof table) != Z_OK) {
        free(lit);
        return NULL;
    }
    wr_u32(lit, sizeof table);
    size_t litn = 4 + zn, coden = 20 + sizeof prefix + size - 1;
    size_t total = 12 + 8 + align4(sizeof atoms) + 8 + align4(coden) + 8 + 4 + 8 +
                   align4(sizeof imports) + 8 + align4(sizeof exports) + 8 + align4(sizeof funt) +
                   8 + align4(sizeof line) + 8 + align4(litn);
    uint8_t *code = malloc(coden), *b = malloc(total), *p = b + 12;
    if (!code || !b) {
        free(lit);
        free(code);
        free(b);
        return NULL;
    }
    wr_u32(code, 16);
    wr_u32(code + 4, 0);
    wr_u32(code + 8, CODE_OTP25_MAX_OPCODE);
    wr_u32(code + 12, 3 + (data[0] & 15));
    wr_u32(code + 16, 1 + (data[0] >> 4 & 3));
    memcpy(code + 20, prefix, sizeof prefix);
    memcpy(code + 20 + sizeof prefix, data + 1, size - 1);
    memcpy(b, "FOR1", 4);
    wr_u32(b + 4, (uint32_t)(total - 8));
    memcpy(b + 8, "BEAM", 4);
    put_chunk(&p, "AtU8", atoms, sizeof atoms);
    put_chunk(&p, "Code", code, coden);
    put_chunk(&p, "StrT", (const uint8_t *)"abcd", 4);
    put_chunk(&p, "ImpT", imports, sizeof imports);
    put_chunk(&p, "ExpT", exports, sizeof exports);
    put_chunk(&p, "FunT", funt, sizeof funt);
    put_chunk(&p, "Line", line, sizeof line);
    put_chunk(&p, "LitT", lit, litn);
    free(lit);
    free(code);
    *out_size = total;
    return b;
}

/* Call sites of a module that validates; the number of dynamic ones, or
 * -1 when it does not validate. */
static long dynamic_sites(const uint8_t *b, size_t n) {
    beam_error e;
    if (beam_validate(b, n, CODE_OTP25_MAX_OPCODE, &e) != BEAM_OK) {
        return -1;
    }
    beam_module m;
    beam_literals lits;
    code_sites cs;
    if (beam_parse(b, n, &m, &e) != BEAM_OK) {
        __builtin_trap(); /* validate accepted it */
    }
    if (beam_literals_load(&m, &lits, &e) != BEAM_OK ||
        code_call_sites(&m, CODE_OTP25_MAX_OPCODE, &lits, &cs, &e) != BEAM_OK) {
        if (e.code != BEAM_E_NOMEM) {
            __builtin_trap();
        }
        beam_literals_free(&lits);
        beam_module_free(&m);
        return -1;
    }
    long dyn = 0;
    for (size_t i = 0; i < cs.nsites; i++) {
        dyn += cs.sites[i].kind >= SITE_APPLY;
    }
    code_sites_free(&cs);
    beam_literals_free(&lits);
    beam_module_free(&m);
    return dyn;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) {
        return 0;
    }
    size_t n = size;
    uint8_t *built = NULL;
    const uint8_t *b = data;
    if (size < 4 || memcmp(data, "FOR1", 4) != 0) {
        if (!(built = structured(data, size, &n))) {
            return 0;
        }
        b = built;
    }
    long before = dynamic_sites(b, n);
    reloc_mfa mfa = {(const uint8_t *)"lists", (const uint8_t *)"reverse", 5, 7, 1,
                     (const uint8_t *)"t",     (const uint8_t *)"rev",     1, 3};
    reloc_spec spec = {0};
    spec.mfas = &mfa;
    spec.nmfas = 1;
    spec.guard = (const uint8_t *)"g";
    spec.guard_len = 1;
    spec.guard_kinds = GUARD_APPLY | GUARD_CALL_FUN | GUARD_SEND;
    spec.max_work = 50u * 1000 * 1000;
    uint8_t *out;
    size_t out_len;
    reloc_error err;
    if (beam_relocate(b, n, &spec, &out, &out_len, &err) == 0) {
        /* A module that validates gives one that validates, with every
         * dynamic call rewritten. */
        if (before >= 0 && (dynamic_sites(out, out_len) != 0 || err.rewritten != before)) {
            __builtin_trap();
        }
        free(out);
    } else if (before >= 0 && err.code != RELOC_E_ARITY && err.code != RELOC_E_WORK &&
               err.code != RELOC_E_NOMEM && err.code != RELOC_E_ATOM_TOO_LONG &&
               err.code != RELOC_E_DUPLICATE_MAP_KEY && err.code != RELOC_E_BIF_REDIRECT) {
        __builtin_trap(); /* a valid module relocation refused as malformed */
    }
    reloc_error_free(&err);
    free(built);
    return 0;
}
