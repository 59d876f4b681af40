#include "beam.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "bytes.h"
#include "code.h"
#include "etf.h"

/* `chunk`, when not NULL, is a 4-byte chunk id. */
static beam_errcode fail(beam_error *err, beam_errcode code, const char *chunk, uint64_t a) {
    err->code = code;
    memset(err->chunk, 0, sizeof err->chunk);
    err->has_chunk = chunk != NULL;
    if (chunk) {
        memcpy(err->chunk, chunk, 4);
    }
    err->a = a;
    err->b = 0;
    err->table = BEAM_TABLE_IMPORTS;
    return code;
}

static beam_errcode fail_index(beam_error *err, beam_table t, uint64_t idx) {
    fail(err, BEAM_E_BAD_ATOM_INDEX, NULL, idx);
    err->table = t;
    return BEAM_E_BAD_ATOM_INDEX;
}

void beam_module_free(beam_module *m) {
    free(m->chunks);
    free(m->atoms);
    memset(m, 0, sizeof *m);
}

const beam_chunk *beam_find_chunk(const beam_module *m, const char id[4]) {
    for (size_t i = 0; i < m->nchunks; i++) {
        if (memcmp(m->chunks[i].id, id, 4) == 0) {
            return &m->chunks[i];
        }
    }
    return NULL;
}

/* A chunk id as a number, for sorting. */
static uint32_t id_key(const char id[4]) {
    return rd_u32((const uint8_t *)id);
}

/* The index of the first chunk (in file order) whose id an earlier chunk
 * already has, or n when the ids are distinct. Linear: a few chunks are
 * compared pairwise, more are radix-sorted by id (stable, so each run of
 * equal ids is in file order and its second member is the first repeat). */
static size_t first_duplicate(const beam_chunk *chunks, size_t n, beam_error *err, int *nomem) {
    size_t first = n;
    *nomem = 0;
    if (n <= 32) {
        for (size_t i = 1; i < n && first == n; i++) {
            for (size_t j = 0; j < i; j++) {
                if (memcmp(chunks[i].id, chunks[j].id, 4) == 0) {
                    first = i;
                    break;
                }
            }
        }
        return first;
    }
    uint64_t *a = malloc(n * sizeof *a), *b = malloc(n * sizeof *b);
    if (!a || !b) {
        free(a);
        free(b);
        *nomem = 1;
        fail(err, BEAM_E_NOMEM, NULL, 0);
        return n;
    }
    /* Key in the high 32 bits, index in the low: sort by the key bytes. */
    for (size_t i = 0; i < n; i++) {
        a[i] = (uint64_t)id_key(chunks[i].id) << 32 | (uint64_t)i;
    }
    for (int shift = 32; shift < 64; shift += 8) {
        size_t count[257] = {0};
        for (size_t i = 0; i < n; i++) {
            count[(a[i] >> shift & 0xFF) + 1]++;
        }
        for (int k = 0; k < 256; k++) {
            count[k + 1] += count[k];
        }
        for (size_t i = 0; i < n; i++) {
            b[count[a[i] >> shift & 0xFF]++] = a[i];
        }
        uint64_t *t = a;
        a = b;
        b = t;
    }
    for (size_t i = 1; i < n; i++) {
        if (a[i] >> 32 == a[i - 1] >> 32 && (i < 2 || a[i - 1] >> 32 != a[i - 2] >> 32)) {
            size_t second = (size_t)(a[i] & 0xFFFFFFFFu);
            if (second < first) {
                first = second;
            }
        }
    }
    free(a);
    free(b);
    return first;
}

/* The IFF container: "FOR1" size "BEAM", then chunks of id, size, data, padding. */
static beam_errcode parse_container(beam_module *m, beam_error *err) {
    const uint8_t *d = m->data;
    size_t size = m->size;
    if (size < 12) {
        if (size >= 4 && memcmp(d, "FOR1", 4) != 0) {
            return fail(err, BEAM_E_NOT_IFF, NULL, 0);
        }
        return fail(err, BEAM_E_TRUNCATED, "FOR1", 0);
    }
    if (memcmp(d, "FOR1", 4) != 0) {
        return fail(err, BEAM_E_NOT_IFF, NULL, 0);
    }
    if (memcmp(d + 8, "BEAM", 4) != 0) {
        return fail(err, BEAM_E_NOT_BEAM, NULL, 0);
    }
    uint64_t form_end = (uint64_t)rd_u32(d + 4) + 8;
    if (form_end < 12) {
        return fail(err, BEAM_E_TRUNCATED, "FOR1", 0);
    }
    if (form_end < size) {
        return fail(err, BEAM_E_TRAILING, NULL, size - form_end);
    }
    /* Count the chunk headers that fit first, so the table is sized exactly
     * (the walk below reports whatever does not fit). A chunk may claim more
     * than the file holds, so p can pass size: test that before size - p. */
    size_t nmax = 0;
    for (size_t p = 12; p < form_end && p <= size - 8; p += 8 + align4(rd_u32(d + p + 4))) {
        nmax++;
    }
    m->chunks = calloc(nmax + 1, sizeof *m->chunks);
    if (!m->chunks) {
        return fail(err, BEAM_E_NOMEM, NULL, 0);
    }
    /* Walk the chunks up to the first that does not fit; a repeated id
     * before that one is reported first, as a walk that checked each id
     * against the earlier ones would. */
    beam_error walk_err = {0};
    beam_errcode walk_rc = BEAM_OK;
    size_t pos = 12;
    while (pos < form_end) {
        if (form_end - pos < 8) {
            /* Too little left for a chunk header: bytes that trail the last
             * chunk, unless the file ends before the form does. */
            walk_rc = form_end > size ? fail(&walk_err, BEAM_E_TRUNCATED, NULL, 0)
                                      : fail(&walk_err, BEAM_E_TRAILING, NULL, form_end - pos);
            break;
        }
        if (size - pos < 8) {
            /* The form claims more than the file holds, cut at a chunk boundary. */
            walk_rc = fail(&walk_err, BEAM_E_TRUNCATED, NULL, 0);
            break;
        }
        char id[5] = {0};
        memcpy(id, d + pos, 4);
        uint32_t csize = rd_u32(d + pos + 4);
        size_t data_off = pos + 8;
        size_t padded = align4(csize);
        if ((uint64_t)padded > form_end - data_off || padded > size - data_off) {
            walk_rc = fail(&walk_err, BEAM_E_TRUNCATED, id, 0);
            break;
        }
        int bad_padding = 0;
        for (size_t i = data_off + csize; i < data_off + padded; i++) {
            bad_padding |= d[i] != 0;
        }
        if (bad_padding) {
            walk_rc = fail(&walk_err, BEAM_E_BAD_PADDING, id, 0);
            break;
        }
        beam_chunk *c = &m->chunks[m->nchunks++];
        memcpy(c->id, id, 4);
        c->offset = (uint32_t)data_off;
        c->size = csize;
        pos = data_off + padded;
    }
    int nomem;
    size_t dup = first_duplicate(m->chunks, m->nchunks, err, &nomem);
    if (nomem) {
        return BEAM_E_NOMEM;
    }
    if (dup < m->nchunks) {
        return fail(err, BEAM_E_DUPLICATE_CHUNK, m->chunks[dup].id, 0);
    }
    if (walk_rc != BEAM_OK) {
        *err = walk_err;
    }
    return walk_rc;
}

int beam_is_term_chunk(const char id[4]) {
    static const char *const ids[] = {"Attr", "CInf", "Dbgi", "Docs", "ExCk", "Meta"};
    for (size_t i = 0; i < sizeof ids / sizeof *ids; i++) {
        if (memcmp(id, ids[i], 4) == 0) {
            return 1;
        }
    }
    return 0;
}

/* The size a compressed chunk declares it inflates to, or 0 when it is not
 * compressed (or too short to say). */
static uint64_t declared_inflated(const beam_module *m, const beam_chunk *c) {
    const uint8_t *p = m->data + c->offset;
    if (memcmp(c->id, "LitT", 4) == 0) {
        return c->size >= 4 ? rd_u32(p) : 0;
    }
    if (beam_is_term_chunk(c->id) && c->size >= 6 && p[0] == ETF_VERSION &&
        p[1] == TAG_COMPRESSED) {
        return rd_u32(p + 2);
    }
    return 0;
}

uint64_t beam_plain_size(const beam_module *m, const beam_chunk *c) {
    uint64_t d = declared_inflated(m, c);
    return d ? d : c->size;
}

/* The declared inflated sizes, summed in file order, stay within the cap. */
static beam_errcode check_inflated(beam_module *m, uint64_t cap, beam_error *err) {
    uint64_t total = 0;
    for (size_t i = 0; i < m->nchunks; i++) {
        total += declared_inflated(m, &m->chunks[i]);
        if (total > cap) {
            fail(err, BEAM_E_TOO_LARGE, m->chunks[i].id, total);
            err->b = cap;
            return BEAM_E_TOO_LARGE;
        }
    }
    m->inflated = total;
    return BEAM_OK;
}

/* Compact-term encoded unsigned integer (tag u), as used for atom lengths in
 * the negative-count atom chunk format: the encoding's length in bytes as
 * told by its first byte, or 0 for a form that never describes an atom
 * length (another tag, or the forms for values of 2048 and up). */
static size_t compact_u_size(uint8_t first) {
    if ((first & 7) != 0) {
        return 0;
    }
    if ((first & 0x08) == 0) {
        return 1;
    }
    return (first & 0x10) == 0 ? 2 : 0;
}

static uint32_t compact_u_value(const uint8_t *p, size_t size) {
    return size == 1 ? (uint32_t)(p[0] >> 4) : (uint32_t)(p[0] & 0xE0) << 3 | p[1];
}

static beam_errcode parse_atoms(beam_module *m, beam_error *err) {
    const beam_chunk *c = beam_find_chunk(m, "AtU8");
    m->atoms_utf8 = 1;
    if (!c) {
        c = beam_find_chunk(m, "Atom");
        m->atoms_utf8 = 0;
    }
    if (!c) {
        return fail(err, BEAM_E_MISSING_CHUNK, "AtU8", 0);
    }
    m->atom_chunk = (int)(c - m->chunks);
    char id[5] = {0};
    memcpy(id, c->id, 4);
    const uint8_t *p = m->data + c->offset;
    size_t avail = c->size;
    if (avail < 4) {
        return fail(err, BEAM_E_TRUNCATED, id, 0);
    }
    int32_t raw = (int32_t)rd_u32(p);
    int compact = raw < 0;
    uint64_t count = compact ? (uint64_t)(-(int64_t)raw) : (uint64_t)raw;
    p += 4;
    avail -= 4;
    if (count == 0) {
        return fail(err, BEAM_E_BAD_CHUNK, id, 0);
    }
    if (count > avail) { /* every atom takes at least its length byte */
        return fail(err, BEAM_E_BAD_CHUNK, id, count);
    }
    m->atoms = malloc(count * sizeof *m->atoms);
    if (!m->atoms) {
        return fail(err, BEAM_E_NOMEM, NULL, 0);
    }
    for (uint64_t i = 0; i < count; i++) {
        uint32_t len;
        size_t hdr;
        if (avail < 1) {
            return fail(err, BEAM_E_TRUNCATED, id, 0);
        }
        if (compact) {
            hdr = compact_u_size(p[0]);
            if (!hdr) {
                return fail(err, BEAM_E_BAD_ATOM, NULL, i + 1);
            }
            if (hdr > avail) {
                return fail(err, BEAM_E_TRUNCATED, id, 0);
            }
            len = compact_u_value(p, hdr);
        } else {
            len = p[0];
            hdr = 1;
        }
        if (len > avail - hdr) {
            return fail(err, BEAM_E_TRUNCATED, id, 0);
        }
        const uint8_t *name = p + hdr;
        if (m->atoms_utf8) {
            long chars = utf8_count(name, len);
            if (chars < 0 || chars > BEAM_MAX_ATOM_CHARS) {
                return fail(err, BEAM_E_BAD_ATOM, NULL, i + 1);
            }
        } else if (len > BEAM_MAX_ATOM_CHARS) {
            return fail(err, BEAM_E_BAD_ATOM, NULL, i + 1);
        }
        m->atoms[i].name = name;
        m->atoms[i].len = (uint16_t)len;
        p += hdr + len;
        avail -= hdr + len;
    }
    m->natoms = (size_t)count;
    /* Bytes after the last atom would be ignored by the loader; refuse them. */
    if (avail != 0) {
        return fail(err, BEAM_E_BAD_CHUNK, id, 0);
    }
    return BEAM_OK;
}

/* A table of 12-byte entries with a leading count. `checked` lists which of
 * the three words are 1-based atom indices. */
static beam_errcode parse_table(beam_module *m, const char *id, beam_table t, int check0,
                                int check1, const uint8_t **out, uint32_t *nout, beam_error *err) {
    const beam_chunk *c = beam_find_chunk(m, id);
    *out = NULL;
    *nout = 0;
    if (!c) {
        return BEAM_OK;
    }
    if (c->size < 4) {
        return fail(err, BEAM_E_TRUNCATED, id, 0);
    }
    const uint8_t *p = m->data + c->offset;
    uint32_t n = rd_u32(p);
    if ((uint64_t)n * 12 != (uint64_t)c->size - 4) {
        return fail(err,
                    (uint64_t)n * 12 > (uint64_t)c->size - 4 ? BEAM_E_TRUNCATED : BEAM_E_BAD_CHUNK,
                    id, 0);
    }
    for (uint32_t i = 0; i < n; i++) {
        uint32_t e[3];
        beam_table_entry(p + 4, i, e);
        if (check0 && (e[0] == 0 || e[0] > m->natoms)) {
            return fail_index(err, t, e[0]);
        }
        if (check1 && (e[1] == 0 || e[1] > m->natoms)) {
            return fail_index(err, t, e[1]);
        }
    }
    *out = p + 4;
    *nout = n;
    return BEAM_OK;
}

beam_errcode beam_parse(const uint8_t *data, size_t size, beam_module *m, beam_error *err) {
    return beam_parse_limited(data, size, 0, m, err);
}

beam_errcode beam_parse_limited(const uint8_t *data, size_t size, uint64_t max_inflated,
                                beam_module *m, beam_error *err) {
    memset(m, 0, sizeof *m);
    memset(err, 0, sizeof *err);
    m->data = data;
    m->size = size;
    beam_errcode rc;
    if ((rc = parse_container(m, err)) != BEAM_OK ||
        (rc = check_inflated(m, max_inflated ? max_inflated : BEAM_DEFAULT_MAX_INFLATED, err)) !=
            BEAM_OK ||
        (rc = parse_atoms(m, err)) != BEAM_OK ||
        (rc = parse_table(m, "ImpT", BEAM_TABLE_IMPORTS, 1, 1, &m->imports, &m->nimports, err)) !=
            BEAM_OK ||
        (rc = parse_table(m, "ExpT", BEAM_TABLE_EXPORTS, 1, 0, &m->exports, &m->nexports, err)) !=
            BEAM_OK ||
        (rc = parse_table(m, "LocT", BEAM_TABLE_LOCALS, 1, 0, &m->locals, &m->nlocals, err)) !=
            BEAM_OK) {
        beam_module_free(m);
        return rc;
    }
    return BEAM_OK;
}

/* Every literal's size fits and nothing trails; frees the table otherwise. */
static beam_errcode frame_literals(beam_literals *lits, beam_error *err) {
    if (lits->size < 4) {
        beam_literals_free(lits);
        return fail(err, BEAM_E_BAD_CHUNK, "LitT", 0);
    }
    uint32_t n = rd_u32(lits->data);
    size_t pos = 4;
    for (uint32_t i = 0; i < n; i++) {
        if (lits->size - pos < 4 || rd_u32(lits->data + pos) > lits->size - pos - 4) {
            beam_literals_free(lits);
            return fail(err, BEAM_E_BAD_LITERAL, NULL, i);
        }
        pos += 4 + (size_t)rd_u32(lits->data + pos);
    }
    if (pos != lits->size) {
        beam_literals_free(lits);
        return fail(err, BEAM_E_BAD_CHUNK, "LitT", 0);
    }
    lits->count = n;
    return BEAM_OK;
}

/* LitT: uncompressed size (0: not compressed), then a zlib stream of: count,
 * then per literal a size and one external term (with its version byte). */
beam_errcode beam_literals_load(const beam_module *m, beam_literals *lits, beam_error *err) {
    memset(lits, 0, sizeof *lits);
    const beam_chunk *c = beam_find_chunk(m, "LitT");
    if (!c) {
        return BEAM_OK;
    }
    if (c->size < 4) {
        return fail(err, BEAM_E_TRUNCATED, "LitT", 0);
    }
    const uint8_t *p = m->data + c->offset;
    uint32_t usize = rd_u32(p);
    if (usize == 0) {
        lits->data = p + 4;
        lits->size = c->size - 4;
    } else {
        if (usize > etf_inflate_bound(c->size - 4)) {
            return fail(err, BEAM_E_ZLIB, "LitT", 0);
        }
        lits->owned = malloc(usize);
        if (!lits->owned) {
            return fail(err, BEAM_E_NOMEM, NULL, 0);
        }
        if (etf_inflate_exact(p + 4, c->size - 4, lits->owned, usize) != 0) {
            beam_literals_free(lits);
            return fail(err, BEAM_E_ZLIB, "LitT", 0);
        }
        lits->data = lits->owned;
        lits->size = usize;
    }
    return frame_literals(lits, err);
}

beam_errcode beam_literal_count(const beam_module *m, uint32_t *count, beam_error *err) {
    const beam_chunk *c = beam_find_chunk(m, "LitT");
    *count = 0;
    if (!c) {
        return BEAM_OK;
    }
    const uint8_t *p = m->data + c->offset;
    if (c->size < 8) {
        return fail(err, c->size < 4 ? BEAM_E_TRUNCATED : BEAM_E_BAD_CHUNK, "LitT", 0);
    }
    if (rd_u32(p) == 0) {
        *count = rd_u32(p + 4);
        return BEAM_OK;
    }
    /* Only the count: the first four bytes of the stream. */
    uint8_t head[4];
    z_stream zs = {0};
    if (inflateInit(&zs) != Z_OK) {
        return fail(err, BEAM_E_NOMEM, NULL, 0);
    }
    zs.next_in = (Bytef *)(uintptr_t)(p + 4);
    zs.avail_in = c->size - 4;
    zs.next_out = head;
    zs.avail_out = 4;
    int zr = Z_OK;
    while (zs.avail_out > 0 && zr == Z_OK) {
        zr = inflate(&zs, Z_SYNC_FLUSH);
    }
    inflateEnd(&zs);
    if (zs.avail_out > 0) {
        return fail(err, BEAM_E_ZLIB, "LitT", 0);
    }
    *count = rd_u32(head);
    return BEAM_OK;
}

beam_errcode beam_literals_adopt(uint8_t *owned, size_t size, beam_literals *lits,
                                 beam_error *err) {
    memset(lits, 0, sizeof *lits);
    lits->owned = owned;
    lits->data = owned;
    lits->size = size;
    return frame_literals(lits, err);
}

int beam_literals_next(const beam_literals *lits, size_t *pos, const uint8_t **term,
                       uint32_t *len) {
    if (*pos == 0) {
        *pos = 4;
    }
    if (!lits->data || *pos >= lits->size) {
        return 0;
    }
    *len = rd_u32(lits->data + *pos);
    *term = lits->data + *pos + 4;
    *pos += 4 + (size_t)*len;
    return 1;
}

void beam_literals_free(beam_literals *lits) {
    free(lits->owned);
    memset(lits, 0, sizeof *lits);
}

static beam_errcode validate_literals(const beam_module *m, uint32_t *count, beam_error *err) {
    const beam_chunk *c = beam_find_chunk(m, "LitT");
    /* OTP 25's loader only reads a compressed table (size 0 is refused). */
    if (c && c->size >= 4 && rd_u32(m->data + c->offset) == 0) {
        return fail(err, BEAM_E_ZLIB, "LitT", 0);
    }
    beam_literals lits;
    beam_errcode rc = beam_literals_load(m, &lits, err);
    if (rc != BEAM_OK) {
        return rc;
    }
    *count = lits.count;
    size_t pos = 0;
    const uint8_t *term;
    uint32_t len;
    for (uint32_t i = 0; beam_literals_next(&lits, &pos, &term, &len); i++) {
        if (etf_validate(term, len, 0) != ETF_OK) {
            rc = fail(err, BEAM_E_BAD_LITERAL, NULL, i);
            break;
        }
    }
    beam_literals_free(&lits);
    return rc;
}

static beam_errcode validate_term_chunk(const beam_module *m, const beam_chunk *c,
                                        beam_error *err) {
    etf_status st = etf_validate(m->data + c->offset, c->size, 1);
    if (st == ETF_E_NOMEM) {
        return fail(err, BEAM_E_NOMEM, NULL, 0);
    }
    if (st != ETF_OK) {
        return fail(err, BEAM_E_BAD_TERM, c->id, 0);
    }
    return BEAM_OK;
}

beam_errcode beam_validate(const uint8_t *data, size_t size, uint32_t max_opcode, beam_error *err) {
    return beam_validate_limited(data, size, max_opcode, 0, err);
}

beam_errcode beam_validate_limited(const uint8_t *data, size_t size, uint32_t max_opcode,
                                   uint64_t max_inflated, beam_error *err) {
    beam_module m;
    beam_errcode rc = beam_parse_limited(data, size, max_inflated, &m, err);
    if (rc != BEAM_OK) {
        return rc;
    }
    static const char *const required[] = {"Code", "StrT", "ImpT", "ExpT"};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
        if (!beam_find_chunk(&m, required[i])) {
            rc = fail(err, BEAM_E_MISSING_CHUNK, required[i], 0);
            goto out;
        }
    }
    /* The code header first; the code itself once the literals are known. */
    code_module code;
    uint32_t nliterals = 0;
    if ((rc = code_open(&m, 0, max_opcode, &code, err)) != BEAM_OK ||
        (rc = validate_literals(&m, &nliterals, err)) != BEAM_OK) {
        goto out;
    }
    /* Every term chunk, in file order: relocation rewrites them all. */
    for (size_t i = 0; i < m.nchunks; i++) {
        if (beam_is_term_chunk(m.chunks[i].id) &&
            (rc = validate_term_chunk(&m, &m.chunks[i], err)) != BEAM_OK) {
            goto out;
        }
    }
    code.nliterals = nliterals;
    rc = code_walk(&code, max_opcode, &m, NULL, NULL, err);
out:
    beam_module_free(&m);
    return rc;
}

const char *beam_errcode_name(beam_errcode c) {
    static const char *const names[] = {"ok",
                                        "truncated",
                                        "not_iff",
                                        "not_beam",
                                        "trailing_bytes",
                                        "bad_padding",
                                        "duplicate_chunk",
                                        "missing_chunk",
                                        "bad_chunk",
                                        "bad_atom",
                                        "bad_atom_index",
                                        "zlib_error",
                                        "bad_literal",
                                        "bad_term",
                                        "bad_instruction_set",
                                        "bad_max_opcode",
                                        "out_of_memory",
                                        "too_large",
                                        "bad_code",
                                        "stopped"};
    return (size_t)c < sizeof names / sizeof *names ? names[c] : "unknown";
}
