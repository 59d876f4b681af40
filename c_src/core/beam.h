/* BEAM file parsing and validation (IFF container, atoms, import/export/local
 * tables, literals, code header). Pure C: no erl_nif.h, no ei.h.
 *
 * A parsed module points into the caller's buffer; it owns only its two
 * arrays, released by beam_module_free(). */
#ifndef SANDBOX_BEAM_H
#define SANDBOX_BEAM_H

#include <stddef.h>
#include <stdint.h>

#define BEAM_MAX_ATOM_CHARS 255
/* The BEAM instruction set number every OTP since R7 writes. */
#define BEAM_FORMAT_NUMBER 0
/* The highest opcode OTP 25 loads (`badrecord`); the NIF passes the running
 * system's own value. */
#define BEAM_DEFAULT_MAX_OPCODE 180
/* The most bytes the compressed chunks of one file (LitT and the term
 * chunks) may declare they inflate to, together, unless the caller says
 * otherwise. The largest installed module (elixir_parser) declares 5.6 MB. */
#define BEAM_DEFAULT_MAX_INFLATED ((uint64_t)256 << 20)

typedef enum {
    BEAM_OK = 0,
    BEAM_E_TRUNCATED,       /* chunk: the id, or "FOR1" for the header; none for the form */
    BEAM_E_NOT_IFF,         /* no FOR1 magic */
    BEAM_E_NOT_BEAM,        /* form type is not BEAM */
    BEAM_E_TRAILING,        /* a = number of bytes after the form or the last chunk */
    BEAM_E_BAD_PADDING,     /* chunk: non-zero padding after it */
    BEAM_E_DUPLICATE_CHUNK, /* chunk */
    BEAM_E_MISSING_CHUNK,   /* chunk */
    BEAM_E_BAD_CHUNK,       /* chunk: its contents contradict its size */
    BEAM_E_BAD_ATOM,        /* a = 1-based index of the atom */
    BEAM_E_BAD_ATOM_INDEX,  /* table, a = the index */
    BEAM_E_ZLIB,            /* chunk */
    BEAM_E_BAD_LITERAL,     /* a = 0-based literal number */
    BEAM_E_BAD_TERM,        /* chunk: not one valid external term */
    BEAM_E_INSTRUCTION_SET, /* a = the instruction set number */
    BEAM_E_MAX_OPCODE,      /* a = the highest opcode the module uses */
    BEAM_E_NOMEM,
    BEAM_E_TOO_LARGE, /* chunk: a = declared inflated bytes up to and including it, b = the cap */
    BEAM_E_BAD_CODE,  /* a = offset in the Code chunk of the instruction stream's first bad byte */
    BEAM_E_STOPPED    /* a visitor stopped a walk (internal: never reported for input) */
} beam_errcode;

typedef enum { BEAM_TABLE_IMPORTS = 0, BEAM_TABLE_EXPORTS, BEAM_TABLE_LOCALS } beam_table;

typedef struct {
    beam_errcode code;
    char chunk[5]; /* NUL-terminated chunk id where the error is about a chunk */
    int has_chunk; /* chunk holds a 4-byte id (ids from the file may contain NUL bytes) */
    beam_table table;
    uint64_t a;
    uint64_t b;
} beam_error;

typedef struct {
    char id[4];
    uint32_t offset; /* of the chunk's data, from the start of the file */
    uint32_t size;   /* unpadded */
} beam_chunk;

typedef struct {
    const uint8_t *name;
    uint16_t len; /* bytes */
} beam_atom;

typedef struct {
    const uint8_t *data; /* the whole file */
    size_t size;
    beam_chunk *chunks;
    size_t nchunks;
    beam_atom *atoms; /* atoms[0] is atom index 1, the module name */
    size_t natoms;
    int atoms_utf8;         /* 1 for AtU8, 0 for the latin-1 Atom chunk */
    int atom_chunk;         /* index into chunks */
    const uint8_t *imports; /* 12-byte entries: module, function, arity */
    uint32_t nimports;
    const uint8_t *exports; /* 12-byte entries: function, arity, label */
    uint32_t nexports;
    const uint8_t *locals;
    uint32_t nlocals;
    uint64_t inflated; /* bytes the compressed chunks declare they inflate to, together */
} beam_module;

/* Parses the container, the atom table and the import/export/local tables,
 * checking every bound and index, and that the compressed chunks declare no
 * more than BEAM_DEFAULT_MAX_INFLATED bytes. On error fills *err and leaves
 * *m freed. Linear in the size of the file. */
beam_errcode beam_parse(const uint8_t *data, size_t size, beam_module *m, beam_error *err);

/* beam_parse with the cap on declared inflated bytes given (0: the default). */
beam_errcode beam_parse_limited(const uint8_t *data, size_t size, uint64_t max_inflated,
                                beam_module *m, beam_error *err);

/* beam_parse plus the remaining checks of a loadable module: the required
 * chunks, the literal table, every term chunk (Attr, CInf, Dbgi, Docs, ExCk,
 * Meta), the code header, and the whole instruction stream with the chunks
 * it refers to (FunT, Line, Type, StrT; see code.h). */
beam_errcode beam_validate(const uint8_t *data, size_t size, uint32_t max_opcode, beam_error *err);

/* beam_validate with the cap on declared inflated bytes given (0: the default). */
beam_errcode beam_validate_limited(const uint8_t *data, size_t size, uint32_t max_opcode,
                                   uint64_t max_inflated, beam_error *err);

/* Whether a chunk id is one of the external-term-format chunks (Attr, CInf,
 * Dbgi, Docs, ExCk, Meta). */
int beam_is_term_chunk(const char id[4]);

/* The bytes chunk `c` holds once inflated, as it declares: its own size
 * when it is not compressed (LitT's declared size, or a compressed term
 * chunk's). For cost estimates; the declaration is checked when inflating. */
uint64_t beam_plain_size(const beam_module *m, const beam_chunk *c);

void beam_module_free(beam_module *m);

/* The chunk with the given id, or NULL. */
const beam_chunk *beam_find_chunk(const beam_module *m, const char id[4]);

/* Reads entry i (0-based) of a 12-byte table into three words. */
static inline void beam_table_entry(const uint8_t *table, uint32_t i, uint32_t out[3]) {
    const uint8_t *p = table + 12 * (size_t)i;
    out[0] = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    out[1] = (uint32_t)p[4] << 24 | (uint32_t)p[5] << 16 | (uint32_t)p[6] << 8 | p[7];
    out[2] = (uint32_t)p[8] << 24 | (uint32_t)p[9] << 16 | (uint32_t)p[10] << 8 | p[11];
}

/* The literal table (LitT), inflated: `count` literals, each a 4-byte size
 * and one external term with its version byte. */
typedef struct {
    uint8_t *owned; /* the inflated buffer, or NULL when data points into the file */
    const uint8_t *data;
    size_t size;
    uint32_t count;
} beam_literals;

/* Loads the literal table (an empty one when the module has no LitT) and
 * checks its framing: every literal's size fits and nothing trails. */
beam_errcode beam_literals_load(const beam_module *m, beam_literals *lits, beam_error *err);

/* The literal table's count alone (0 without a LitT), inflating no more
 * than its first bytes; the table itself is not checked. */
beam_errcode beam_literal_count(const beam_module *m, uint32_t *count, beam_error *err);

/* beam_literals_load's framing checks on a table the caller inflated
 * itself: `owned` (malloc'd, `size` bytes) belongs to *lits afterwards, and
 * is freed on error too. */
beam_errcode beam_literals_adopt(uint8_t *owned, size_t size, beam_literals *lits, beam_error *err);

/* Iterates literals: start with *pos = 0; returns 0 at the end. */
int beam_literals_next(const beam_literals *lits, size_t *pos, const uint8_t **term, uint32_t *len);

void beam_literals_free(beam_literals *lits);

/* A short English description of an error code (for tests and logs). */
const char *beam_errcode_name(beam_errcode c);

#endif
