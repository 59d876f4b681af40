/* libFuzzer target: relocation of arbitrary bytes with a fixed rename and
 * redirect spec. Whatever it accepts must parse and validate again.
 *
 * An input that starts with "FOR1" is taken as a whole BEAM file. Any other
 * input is a term for a module built here, so that mutations spend their
 * time inside the term chunks rather than on the container: its first byte
 * chooses the chunk (low 3 bits: Attr, CInf, Dbgi, Docs, ExCk, Meta, or
 * LitT with the term as its one literal) and whether it is compressed (bit
 * 3); the rest is the term, without its version byte. The renames include
 * `m`, the module's own name, so that terms naming it are rewritten (see
 * c_src/fuzz/seeds.exs for seeds that rename an atom before a long one).
 * Each input is relocated three ways: plain, stripping debug info, and
 * keeping `m`, `ok` and `lists` as data (reloc_spec.keeps), which walks and
 * rewrites the code (the built module's f/0 returns the atom m) and keeps
 * those atoms in literals. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "beam.h"
#include "bytes.h"
#include "etf.h"
#include "relocate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PAIR(a, b)                                                                                 \
    { (const uint8_t *)(a), sizeof(a) - 1, (const uint8_t *)(b), sizeof(b) - 1 }

static const uint8_t atoms[] = {0, 0, 0, 2, 1, 'm', 1, 'f'};
/* f() -> m: label 1, func_info m f 0, label 2, move {atom m} x0, return,
 * int_code_end (3 labels, 1 function, highest opcode 64). */
static const uint8_t code[] = {0,    0,    0,    16,   0,    0,    0,    0,    0,    0,    0,
                               64,   0,    0,    0,    3,    0,    0,    0,    1,    0x01, 0x10,
                               0x02, 0x12, 0x22, 0x00, 0x01, 0x20, 0x40, 0x12, 0x03, 0x13, 0x03};
static const uint8_t imports[] = {0, 0, 0, 0};
static const uint8_t exports[] = {0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1};

static void put_chunk(uint8_t **p, const char *id, const uint8_t *d, size_t n) {
    memcpy(*p, id, 4);
    wr_u32(*p + 4, (uint32_t)n);
    if (n) {
        memcpy(*p + 8, d, n);
    }
    memset(*p + 8 + n, 0, align4(n) - n);
    *p += 8 + align4(n);
}

/* The minimal module `m` with one more chunk `id` holding `d`. */
static uint8_t *module_with(const char *id, const uint8_t *d, size_t n, size_t *size) {
    size_t total = 12 + 8 + align4(sizeof atoms) + 8 + align4(sizeof code) + 8 + 8 +
                   align4(sizeof imports) + 8 + align4(sizeof exports) + 8 + align4(n);
    uint8_t *b = malloc(total), *p = b + 12;
    if (!b) {
        return NULL;
    }
    memcpy(b, "FOR1", 4);
    wr_u32(b + 4, (uint32_t)(total - 8));
    memcpy(b + 8, "BEAM", 4);
    put_chunk(&p, "AtU8", atoms, sizeof atoms);
    put_chunk(&p, "Code", code, sizeof code);
    put_chunk(&p, "StrT", NULL, 0);
    put_chunk(&p, "ImpT", imports, sizeof imports);
    put_chunk(&p, "ExpT", exports, sizeof exports);
    put_chunk(&p, id, d, n);
    *size = total;
    return b;
}

/* zlib-compresses src after `hdr` header bytes into a malloc'd buffer. */
static uint8_t *compressed(const uint8_t *src, size_t n, size_t hdr, size_t *out_n) {
    uLongf zn = compressBound((uLong)n);
    uint8_t *z = malloc(hdr + zn);
    if (!z || compress(z + hdr, &zn, src, (uLong)n) != Z_OK) {
        free(z);
        return NULL;
    }
    *out_n = hdr + zn;
    return z;
}

/* A module around the term in data[1..]; NULL when memory is short. */
static uint8_t *structured(const uint8_t *data, size_t size, size_t *out_size) {
    static const char *ids[] = {"Attr", "CInf", "Dbgi", "Docs", "ExCk", "Meta"};
    unsigned which = data[0] & 7, compress_it = data[0] & 8;
    const uint8_t *term = data + 1;
    size_t tn = size - 1, n = 0;
    uint8_t *chunk = NULL, *mod = NULL;
    if (which >= 6) {
        /* LitT: count 1, then the literal's size and the term with its
         * version byte; compressed (the loader reads no other kind). */
        uint8_t *table = malloc(9 + tn);
        if (!table) {
            return NULL;
        }
        wr_u32(table, 1);
        wr_u32(table + 4, (uint32_t)(tn + 1));
        table[8] = 131;
        memcpy(table + 9, term, tn);
        chunk = compressed(table, 9 + tn, 4, &n);
        if (chunk) {
            wr_u32(chunk, (uint32_t)(9 + tn));
            mod = module_with("LitT", chunk, n, out_size);
        }
        free(table);
    } else if (compress_it) {
        chunk = compressed(term, tn, 6, &n);
        if (chunk) {
            chunk[0] = 131;
            chunk[1] = 80;
            wr_u32(chunk + 2, (uint32_t)tn);
            mod = module_with(ids[which], chunk, n, out_size);
        }
    } else if ((chunk = malloc(1 + tn))) {
        chunk[0] = 131;
        memcpy(chunk + 1, term, tn);
        mod = module_with(ids[which], chunk, 1 + tn, out_size);
    }
    free(chunk);
    return mod;
}

/* Relocation refuses what the validator refuses: when it succeeds, every
 * term chunk it kept and every literal are valid external terms (it walks
 * an unchanged term whole, and checks the rest of a changed one while
 * rewriting it). */
static void check_terms_valid(const uint8_t *data, size_t size, int strip) {
    beam_module m;
    beam_error e;
    if (beam_parse(data, size, &m, &e) != BEAM_OK) {
        abort(); /* relocation parses its input the same way */
    }
    for (size_t i = 0; i < m.nchunks; i++) {
        const beam_chunk *c = &m.chunks[i];
        int debug = memcmp(c->id, "Dbgi", 4) == 0 || memcmp(c->id, "Docs", 4) == 0;
        if (beam_is_term_chunk(c->id) && !(strip && debug) &&
            etf_validate(data + c->offset, c->size, 1) != ETF_OK) {
            abort();
        }
    }
    beam_literals lits;
    if (beam_literals_load(&m, &lits, &e) != BEAM_OK) {
        abort();
    }
    size_t pos = 0;
    const uint8_t *t;
    uint32_t len;
    while (beam_literals_next(&lits, &pos, &t, &len)) {
        if (etf_validate(t, len, 0) != ETF_OK) {
            abort();
        }
    }
    beam_literals_free(&lits);
    beam_module_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const reloc_pair renames[] = {PAIR("m", "sandbox@f@m"), PAIR("lists", "sandbox@f@lists"),
                                         PAIR("Elixir.Enum", "Elixir.Sandbox@f.Enum"),
                                         PAIR("ok", "a_much_longer_name_than_ok")};
    static const reloc_pair redirects[] = {PAIR("erlang", "shim"),
                                           PAIR("Elixir.Application", "Elixir.Shim")};
    uint8_t *built = NULL;
    if (size < 1) {
        return 0;
    }
    if (size < 4 || memcmp(data, "FOR1", 4) != 0) {
        if (!(built = structured(data, size, &size))) {
            return 0;
        }
        data = built;
    }
    static const reloc_name keeps[] = {
        {(const uint8_t *)"m", 1}, {(const uint8_t *)"ok", 2}, {(const uint8_t *)"lists", 5}};
    for (int way = 0; way < 3; way++) {
        int strip = way == 1;
        /* A small cap, so that growth past it is exercised too. */
        reloc_spec spec = {.renames = renames,
                           .nrenames = 4,
                           .redirects = redirects,
                           .nredirects = 2,
                           .keeps = way == 2 ? keeps : NULL,
                           .nkeeps = way == 2 ? 3 : 0,
                           .strip_debug = strip,
                           .max_inflated = 16 << 20};
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
            check_terms_valid(data, size, strip);
            /* A module that validated relocates into one that validates. */
            if (beam_validate(data, size, BEAM_DEFAULT_MAX_OPCODE, &e) == BEAM_OK &&
                beam_validate(out, out_len, BEAM_DEFAULT_MAX_OPCODE, &e) != BEAM_OK) {
                abort();
            }
            free(out);
        } else {
            reloc_error_free(&err);
        }
    }
    free(built);
    return 0;
}
