#include "relocate.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "buf.h"
#include "bytes.h"
#include "code.h"
#include "etf.h"
#include "rewrite.h"
#include "strmap.h"

/* Work units, about a nanosecond each for the slowest input of each kind on
 * the project's shared 2-core machine: measured on crafted worst cases
 * (terms of 1-byte elements, dense atoms, maps of 64,000 keys, random and
 * text-like data through zlib) and real modules, which come out at 0.1 to
 * 0.6 ns per unit. Every step is charged before it is taken, and long ones
 * in slices, so a step never starts unless its worst case fits in what is
 * left of a budget or deadline (see bench/beam_bench.exs's
 * relocate_hold_us_* lines). */
#define RELOC_WORK_BYTE 1     /* per byte of the file, parsed and copied */
#define RELOC_WORK_CHUNK 100  /* per chunk */
#define RELOC_WORK_INFLATE 10 /* per byte inflated (text-like data: short matches) */
#define RELOC_WORK_WALK 5     /* per byte of a term walked (1-byte terms: [] in a list) */
#define RELOC_WORK_ATOM 40    /* per atom looked up (hash and compare) */
#define RELOC_WORK_REWRITE 10 /* per byte of a term rewritten (1-byte terms again) */
#define RELOC_WORK_DEFLATE 70 /* per byte deflated at the fastest level (random bytes) */
#define RELOC_WORK_STORE 2    /* per byte stored without compression */
#define RELOC_WORK_COMPARE 20 /* per map key comparison (two per key and level) */
#define RELOC_WORK_ENTRY 30   /* per import, per name of the spec */
#define RELOC_WORK_CODE 20    /* per byte of code decoded (and rewritten) */

/* Slices of the long steps: a few hundred microseconds at worst each. */
#define INFLATE_SLICE (32 * 1024) /* bytes out */
#define DEFLATE_SLICE (4 * 1024)  /* bytes in */

/* The largest latin-1 atom name, in bytes of UTF-8. */
#define LATIN1_UTF8_MAX (2 * BEAM_MAX_ATOM_CHARS)

typedef struct {
    const reloc_spec *spec;
    strmap renames;
    strmap redirects;
    strmap mfas;       /* mfa_key() -> index in spec->mfas */
    uint8_t *mfa_keys; /* their storage */
    /* Atoms appended to the atom table, in order: names point into the spec
     * (or are the guard's function names). */
    const uint8_t **xnames;
    size_t *xlens;
    size_t nx, capx;
    strmap xmap;
    strmap keeps;       /* spec->keeps by name */
    int keeping;        /* rewriting literals: kept atoms stay as data */
    uint32_t *keep_idx; /* by atom index: 1 + the keep of a renamed kept atom, or 0 */
    const beam_module *m;
    reloc_error *err;
    uint64_t work;     /* units spent */
    uint64_t slack;    /* ns surely left before the deadline */
    uint64_t cap;      /* the cap on inflated and rewritten bytes */
    uint64_t grown;    /* bytes of rewritten terms so far */
    const char *chunk; /* the chunk being rewritten, for errors */
    int hit;           /* term_changes: an atom changes */
    size_t hit_pos;    /* term_changes: where */
    size_t walked;     /* term_changes: bytes charged for */
} reloc_ctx;

static uint64_t monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

/* Takes a step of `units` of work: 0, or -1 (RELOC_E_WORK) when it would
 * pass the budget, or might pass the deadline at a nanosecond per unit.
 * The clock is read only when the slack known from its last reading is
 * used up. */
static int charge(reloc_ctx *c, uint64_t units) {
    c->work += units;
    if (c->spec->max_work && c->work > c->spec->max_work) {
        goto over;
    }
    if (c->spec->deadline_ns) {
        if (c->slack < units) {
            uint64_t now = monotonic_ns();
            c->slack = now < c->spec->deadline_ns ? c->spec->deadline_ns - now : 0;
            if (c->slack < units) {
                goto over;
            }
        }
        c->slack -= units;
    }
    return 0;
over:
    c->err->code = RELOC_E_WORK;
    return -1;
}

/* ---- names ---------------------------------------------------------------- */

/* A latin-1 name in UTF-8, into `tmp` of `cap` bytes. NULL when it does not
 * fit: a latin-1 atom has at most 255 characters, whatever its length
 * field (2 bytes in ATOM_EXT) says. */
static const uint8_t *latin1_to_utf8(const uint8_t *s, size_t len, uint8_t *tmp, size_t cap,
                                     size_t *out) {
    if (len > BEAM_MAX_ATOM_CHARS || 2 * len > cap) {
        return NULL;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < 0x80) {
            tmp[n++] = s[i];
        } else {
            tmp[n++] = (uint8_t)(0xC0 | s[i] >> 6);
            tmp[n++] = (uint8_t)(0x80 | (s[i] & 0x3F));
        }
    }
    *out = n;
    return tmp;
}

/* Where an atom of a term occurs, for the name it gets. */
typedef enum {
    AR_DATA = 0,       /* data: a kept atom keeps its name in literals */
    AR_FUN_MODULE = 1, /* the module of an external fun: renamed or redirected */
    AR_CALL = 2        /* a call or an identity (an external fun's function, a
                        * local fun's module): renamed */
} atom_role;

/* The name an atom gets: its rename, or (for the module of an external fun)
 * its redirect, or itself (a kept atom as data in literals). Names are
 * UTF-8. Returns 1 when it changes. */
static int new_name(const reloc_ctx *c, const uint8_t *name, size_t len, atom_role role,
                    const uint8_t **out, size_t *out_len) {
    size_t i, k;
    if (role == AR_FUN_MODULE && strmap_get(&c->redirects, name, len, &i)) {
        *out = c->spec->redirects[i].to;
        *out_len = c->spec->redirects[i].to_len;
        return 1;
    }
    if (strmap_get(&c->renames, name, len, &i) &&
        !(role == AR_DATA && c->keeping && strmap_get(&c->keeps, name, len, &k))) {
        *out = c->spec->renames[i].to;
        *out_len = c->spec->renames[i].to_len;
        return 1;
    }
    *out = name;
    *out_len = len;
    return 0;
}

static int nomem(reloc_ctx *c) {
    c->err->code = RELOC_E_NOMEM;
    return -1;
}

static int too_long(reloc_ctx *c, const uint8_t *name, size_t len) {
    c->err->code = RELOC_E_ATOM_TOO_LONG;
    c->err->name = name;
    c->err->name_len = len;
    return -1;
}

/* Chunk c->chunk would take the inflated or rewritten bytes to `total`,
 * over the cap. */
static int too_large(reloc_ctx *c, uint64_t total) {
    c->err->code = RELOC_E_BEAM;
    c->err->beam.code = BEAM_E_TOO_LARGE;
    memset(c->err->beam.chunk, 0, sizeof c->err->beam.chunk);
    memcpy(c->err->beam.chunk, c->chunk, 4);
    c->err->beam.has_chunk = 1;
    c->err->beam.a = total;
    c->err->beam.b = c->cap;
    return -1;
}

/* ---- terms ---------------------------------------------------------------- */

/* Stops the walk (1) at the first atom that relocation changes, or when
 * the work budget runs out. The walk reports only atoms it has checked (at
 * most 255 characters, valid UTF-8). */
static int hit_atom(void *ctx, size_t off, size_t enc_len, const uint8_t *name, size_t len,
                    int utf8, etf_atom_role role) {
    (void)off;
    (void)enc_len;
    reloc_ctx *c = ctx;
    if (charge(c, RELOC_WORK_ATOM)) {
        return 1;
    }
    uint8_t tmp[LATIN1_UTF8_MAX];
    if (!utf8 && !(name = latin1_to_utf8(name, len, tmp, sizeof tmp, &len))) {
        return 1; /* cannot happen after the walk's own check */
    }
    const uint8_t *o;
    size_t ol;
    /* Kept atoms count as changes: the walk cannot tell a local fun's
     * module from data, rewrite_term() can (and writes data unchanged). */
    c->hit = new_name(c, name, len, role == ETF_ATOM_FUN_MODULE ? AR_FUN_MODULE : AR_CALL, &o, &ol);
    c->hit_pos = off;
    return c->hit;
}

/* The key of an MFA in c->mfas: module, 0xFF, function, 0xFF, arity (0xFF
 * occurs in no UTF-8 name). Returns its length, 0 if it does not fit. */
static size_t mfa_key(const uint8_t *mod, size_t ml, const uint8_t *fun, size_t fl, uint32_t arity,
                      uint8_t *key, size_t cap) {
    if (ml + fl + 3 > cap || arity > 255) {
        return 0;
    }
    memcpy(key, mod, ml);
    key[ml] = 0xFF;
    memcpy(key + ml + 1, fun, fl);
    key[ml + 1 + fl] = 0xFF;
    key[ml + fl + 2] = (uint8_t)arity;
    return ml + fl + 3;
}

#define MFA_KEY_MAX (8 * BEAM_MAX_ATOM_CHARS + 3)

/* The MFA redirect of `fun M:F/A` (names as they occur, UTF-8 or latin-1):
 * 1 and *idx when there is one. */
static int mfa_redirect(const reloc_ctx *c, const uint8_t *m, size_t ml, int mu, const uint8_t *f,
                        size_t fl, int fu, unsigned arity, size_t *idx) {
    if (!c->spec->nmfas) {
        return 0;
    }
    uint8_t t1[LATIN1_UTF8_MAX], t2[LATIN1_UTF8_MAX], key[MFA_KEY_MAX];
    if ((!mu && !(m = latin1_to_utf8(m, ml, t1, sizeof t1, &ml))) ||
        (!fu && !(f = latin1_to_utf8(f, fl, t2, sizeof t2, &fl)))) {
        return 0;
    }
    size_t kl = mfa_key(m, ml, f, fl, arity, key, sizeof key);
    return kl && strmap_get(&c->mfas, key, kl, idx);
}

/* Stops the walk at an external fun that an MFA redirect changes. */
static int hit_fun(void *ctx, const etf_atom *mod, const etf_atom *fun, unsigned arity) {
    reloc_ctx *c = ctx;
    size_t i;
    c->hit =
        mfa_redirect(c, mod->name, mod->len, mod->utf8, fun->name, fun->len, fun->utf8, arity, &i);
    return c->hit;
}

/* Paces a long walk: the bytes walked since the last tick. */
static int walk_tick(void *ctx, size_t pos) {
    reloc_ctx *c = ctx;
    uint64_t units = (uint64_t)(pos - c->walked) * RELOC_WORK_WALK;
    c->walked = pos;
    return charge(c, units) ? 1 : 0;
}

/* Does relocation change a term (no version byte)? 1 changes, 0 unchanged,
 * -1 malformed, -2 out of work (c->err set). A term that does not change
 * is walked whole, which validates it; one that changes is walked up to
 * its first changed atom only: rewrite_term() checks everything it reads
 * as strictly as the walk does, so that is where the rest is validated. */
static int term_changes(reloc_ctx *c, const uint8_t *t, size_t len) {
    etf_visitor v = {hit_atom, c->spec->nmfas ? hit_fun : NULL, c, walk_tick};
    size_t end = len;
    c->hit = 0;
    c->walked = 0;
    etf_status st = etf_walk_term(t, len, &end, &v);
    if (st == ETF_E_CALLBACK && c->err->code == RELOC_E_WORK) {
        return -2;
    }
    /* The rest of what was walked (a walk that fails is charged whole). */
    size_t reached = st == ETF_E_CALLBACK ? c->hit_pos : st == ETF_OK ? end : len;
    if (charge(c, (uint64_t)(reached - c->walked) * RELOC_WORK_WALK)) {
        return -2;
    }
    if (st == ETF_E_CALLBACK) {
        return c->hit ? 1 : -1;
    }
    return st == ETF_OK && end == len ? 0 : -1;
}

typedef enum { FR_SEQ, FR_MAP, FR_FUN } frame_kind;

typedef struct {
    frame_kind kind;
    uint64_t remaining; /* child terms still to read */
    size_t child_start; /* output offset of the child being read */
    size_t size_field;  /* FR_FUN: output offset of the Size field */
    size_t keys_start;  /* FR_MAP: first of this map's entries in the key list */
    int module_next;    /* FR_FUN: the next child is the fun's module */
} frame;

typedef struct {
    size_t start, len;
} span;

typedef struct {
    frame *frames;
    size_t nframes, cap_frames;
    span *keys;
    size_t nkeys, cap_keys;
} rw_stack;

static int push_frame(rw_stack *s, frame f) {
    if (s->nframes == s->cap_frames) {
        size_t cap = s->cap_frames ? 2 * s->cap_frames : 16;
        frame *n = realloc(s->frames, cap * sizeof *n);
        if (!n) {
            return -1;
        }
        s->frames = n;
        s->cap_frames = cap;
    }
    s->frames[s->nframes++] = f;
    return 0;
}

static int push_key(rw_stack *s, span k) {
    if (s->nkeys == s->cap_keys) {
        size_t cap = s->cap_keys ? 2 * s->cap_keys : 16;
        span *n = realloc(s->keys, cap * sizeof *n);
        if (!n) {
            return -1;
        }
        s->keys = n;
        s->cap_keys = cap;
    }
    s->keys[s->nkeys++] = k;
    return 0;
}

static int cmp_span(const uint8_t *base, const span *x, const span *y) {
    if (x->len != y->len) {
        return x->len < y->len ? -1 : 1;
    }
    return memcmp(base + x->start, base + y->start, x->len);
}

static void sift_down(const uint8_t *base, span *a, size_t root, size_t n) {
    for (size_t child; (child = 2 * root + 1) < n; root = child) {
        if (child + 1 < n && cmp_span(base, &a[child], &a[child + 1]) < 0) {
            child++;
        }
        if (cmp_span(base, &a[root], &a[child]) >= 0) {
            return;
        }
        span t = a[root];
        a[root] = a[child];
        a[child] = t;
    }
}

/* Heapsort: in place, O(n log n) at worst, and the base pointer is an
 * argument rather than state shared by concurrent relocations. */
static void sort_spans(const uint8_t *base, span *a, size_t n) {
    for (size_t i = n / 2; i-- > 0;) {
        sift_down(base, a, i, n);
    }
    for (size_t end = n; end-- > 1;) {
        span t = a[0];
        a[0] = a[end];
        a[end] = t;
        sift_down(base, a, 0, end);
    }
}

static uint64_t log2_ceil(uint64_t n) {
    uint64_t k = 0;
    while (((uint64_t)1 << k) < n) {
        k++;
    }
    return k;
}

/* Two keys of one map encode the same term. Rewritten terms encode every atom
 * the same way and the rest is the compiler's canonical encoding, so equal
 * terms have equal bytes. Returns the index of a duplicate, -1 when there is
 * none, -2 out of work. */
static long find_duplicate_key(reloc_ctx *c, const buf_t *out, span *keys, size_t n) {
    if (n < 2) {
        return -1;
    }
    if (charge(c, 2 * (uint64_t)n * log2_ceil(n) * RELOC_WORK_COMPARE)) {
        return -2;
    }
    sort_spans(out->data, keys, n);
    for (size_t i = 1; i < n; i++) {
        if (cmp_span(out->data, &keys[i - 1], &keys[i]) == 0) {
            return (long)i;
        }
    }
    return -1;
}

/* The UTF-8 name an atom of the input gets (into *out, *out_len); `tmp`
 * holds a latin-1 name's conversion. Fails when a changed name is too long. */
static int resolve_atom(reloc_ctx *c, const uint8_t *name, size_t len, int utf8, atom_role role,
                        uint8_t tmp[LATIN1_UTF8_MAX], const uint8_t **out, size_t *out_len) {
    if (!utf8 && !(name = latin1_to_utf8(name, len, tmp, LATIN1_UTF8_MAX, &len))) {
        return -2; /* a latin-1 name over 255 bytes */
    }
    if (new_name(c, name, len, role, out, out_len) && *out_len > 255) {
        return too_long(c, *out, *out_len);
    }
    return 0;
}

/* Writes an atom term in canonical UTF-8 form: 0, -1 (c->err set) or -2
 * (malformed). */
static int put_atom(reloc_ctx *c, buf_t *out, const uint8_t *name, size_t len, int utf8,
                    atom_role role) {
    uint8_t tmp[LATIN1_UTF8_MAX];
    const uint8_t *n;
    size_t nl;
    int r = resolve_atom(c, name, len, utf8, role, tmp, &n, &nl);
    if (r) {
        return r;
    }
    if (charge(c, RELOC_WORK_ATOM + nl)) {
        return -1;
    }
    int err;
    if (nl > 255) { /* an unchanged latin-1 name longer than 255 bytes in UTF-8 */
        uint8_t hdr[3] = {TAG_ATOM_UTF8, (uint8_t)(nl >> 8), (uint8_t)nl};
        err = buf_put(out, hdr, 3) || buf_put(out, n, nl);
    } else {
        uint8_t hdr[2] = {TAG_SMALL_ATOM_UTF8, (uint8_t)nl};
        err = buf_put(out, hdr, 2) || buf_put(out, n, nl);
    }
    return err ? nomem(c) : 0;
}

/* Writes an atom as given (a name of the spec: valid UTF-8, at most 255
 * bytes). */
static int put_final_atom(reloc_ctx *c, buf_t *out, const uint8_t *name, size_t len) {
    uint8_t hdr[2] = {TAG_SMALL_ATOM_UTF8, (uint8_t)len};
    if (charge(c, RELOC_WORK_ATOM + len)) {
        return -1;
    }
    return buf_put(out, hdr, 2) || buf_put(out, name, len) ? nomem(c) : 0;
}

/* Reads an atom at in[p] as rw_atom() does, without writing it: its name,
 * length, encoding and end. 0, or -2 when malformed. */
static int read_atom(const uint8_t *in, size_t len, size_t p, const uint8_t **name, size_t *n,
                     int *utf8, size_t *end) {
    if (p >= len) {
        return -2;
    }
    uint8_t tag = in[p++];
    if (tag == TAG_ATOM || tag == TAG_ATOM_UTF8) {
        if (len - p < 2) {
            return -2;
        }
        *n = rd_u16(in + p);
        p += 2;
    } else if (tag == TAG_SMALL_ATOM || tag == TAG_SMALL_ATOM_UTF8) {
        if (len - p < 1) {
            return -2;
        }
        *n = in[p++];
    } else {
        return -2;
    }
    if (len - p < *n) {
        return -2;
    }
    *utf8 = tag == TAG_ATOM_UTF8 || tag == TAG_SMALL_ATOM_UTF8;
    if (*utf8 ? *n > 4 * BEAM_MAX_ATOM_CHARS || utf8_count(in + p, *n) < 0 ||
                    utf8_count(in + p, *n) > BEAM_MAX_ATOM_CHARS
              : *n > BEAM_MAX_ATOM_CHARS) {
        return -2;
    }
    *name = in + p;
    *end = p + *n;
    return 0;
}

/* An external fun at in[*pos] (after its tag) that an MFA redirect
 * changes: written redirected, 1; 0 when none applies; < 0 on error. */
static int rw_export_mfa(reloc_ctx *c, const uint8_t *in, size_t len, size_t *pos, buf_t *out) {
    const uint8_t *m, *f;
    size_t ml, fl, p1, p2;
    int mu, fu, r;
    if ((r = read_atom(in, len, *pos, &m, &ml, &mu, &p1)) ||
        (r = read_atom(in, len, p1, &f, &fl, &fu, &p2))) {
        return r;
    }
    size_t i;
    if (len - p2 < 2 || in[p2] != TAG_SMALL_INTEGER ||
        !mfa_redirect(c, m, ml, mu, f, fl, fu, in[p2 + 1], &i)) {
        return 0;
    }
    const reloc_mfa *x = &c->spec->mfas[i];
    if ((r = put_final_atom(c, out, x->to_mod, x->to_mod_len)) ||
        (r = put_final_atom(c, out, x->to_fun, x->to_fun_len))) {
        return r;
    }
    if (buf_put(out, in + p2, 2)) {
        return nomem(c);
    }
    *pos = p2 + 2;
    return 1;
}

/* Reads an atom at in[*pos] and writes it renamed. */
static int rw_atom(reloc_ctx *c, const uint8_t *in, size_t len, size_t *pos, buf_t *out,
                   atom_role role) {
    size_t p = *pos;
    if (p >= len) {
        return -2;
    }
    uint8_t tag = in[p++];
    size_t n;
    if (tag == TAG_ATOM || tag == TAG_ATOM_UTF8) {
        if (len - p < 2) {
            return -2;
        }
        n = rd_u16(in + p);
        p += 2;
    } else if (tag == TAG_SMALL_ATOM || tag == TAG_SMALL_ATOM_UTF8) {
        if (len - p < 1) {
            return -2;
        }
        n = in[p++];
    } else {
        return -2;
    }
    if (len - p < n) {
        return -2;
    }
    int utf8 = tag == TAG_ATOM_UTF8 || tag == TAG_SMALL_ATOM_UTF8;
    /* At most 255 characters, valid UTF-8 (etf_walk_term()'s checks). */
    if (utf8 ? n > 4 * BEAM_MAX_ATOM_CHARS || utf8_count(in + p, n) < 0 ||
                   utf8_count(in + p, n) > BEAM_MAX_ATOM_CHARS
             : n > BEAM_MAX_ATOM_CHARS) {
        return -2;
    }
    int r = put_atom(c, out, in + p, n, utf8, role);
    if (r) {
        return r;
    }
    *pos = p + n;
    return 0;
}

/* Size of a scalar term's encoding at in[0], or 0 if it is not a scalar, is
 * truncated, or has a field out of range (the checks of etf_walk_term()). */
static size_t scalar_size(const uint8_t *in, size_t len) {
    size_t need;
    switch (in[0]) {
    case TAG_SMALL_INTEGER:
        need = 2;
        break;
    case TAG_INTEGER:
        need = 5;
        break;
    case TAG_NEW_FLOAT:
        /* Finite only, as etf_walk_term() has it. */
        if (len < 9 || (rd_u16(in + 1) & 0x7FF0) == 0x7FF0) {
            return 0;
        }
        need = 9;
        break;
    case TAG_FLOAT:
        need = 32;
        break;
    case TAG_NIL:
        need = 1;
        break;
    case TAG_STRING:
        need = len >= 3 ? 3 + (size_t)rd_u16(in + 1) : 3;
        break;
    case TAG_BINARY:
        need = len >= 5 ? 5 + (size_t)rd_u32(in + 1) : 5;
        break;
    case TAG_BIT_BINARY:
        if (len < 6 || rd_u32(in + 1) == 0 || in[5] == 0 || in[5] > 8) {
            return 0;
        }
        need = 6 + (size_t)rd_u32(in + 1);
        break;
    case TAG_SMALL_BIG:
        if (len < 3 || in[2] > 1) {
            return 0;
        }
        need = 3 + (size_t)in[1];
        break;
    case TAG_LARGE_BIG:
        if (len < 6 || in[5] > 1) {
            return 0;
        }
        need = 6 + (size_t)rd_u32(in + 1);
        break;
    default:
        return 0;
    }
    return need <= len ? need : 0;
}

/* Rewrites one term (no version byte), checking everything it reads as
 * etf_walk_term() does: term_changes() stopped at the first atom that
 * changes, so the rest of the term is checked here only. Returns 0, -1
 * (error set in c->err) or -2 (malformed). */
static int rewrite_term(reloc_ctx *c, const uint8_t *in, size_t len, buf_t *out) {
    rw_stack s = {0};
    size_t pos = 0, start = out->len, charged = 0;
    unsigned steps = 0;
    int rc = 0;
    if (push_frame(&s, (frame){FR_SEQ, 1, 0, 0, 0, 0})) {
        rc = -1;
        goto nomem;
    }
    while (s.nframes > 0) {
        /* Paced like a walk: the bytes read since the last step. */
        if (++steps == ETF_TICK_TERMS) {
            steps = 0;
            if (charge(c, (uint64_t)(pos - charged) * RELOC_WORK_REWRITE)) {
                rc = -1;
                goto out;
            }
            charged = pos;
        }
        /* Renamed atoms can make a term grow up to 85-fold: bound the result. */
        if (out->len - start > c->cap - c->grown) {
            rc = too_large(c, c->grown + (out->len - start));
            goto out;
        }
        frame *top = &s.frames[s.nframes - 1];
        if (top->remaining == 0) {
            frame done = *top;
            s.nframes--;
            if (done.kind == FR_FUN) {
                wr_u32(out->data + done.size_field, (uint32_t)(out->len - done.size_field));
            } else if (done.kind == FR_MAP && s.nkeys > done.keys_start) {
                /* (An empty map has no keys, and s.keys may still be NULL.) */
                long dup =
                    find_duplicate_key(c, out, s.keys + done.keys_start, s.nkeys - done.keys_start);
                if (dup == -2) {
                    rc = -1;
                    goto out;
                }
                if (dup >= 0) {
                    span k = s.keys[done.keys_start + (size_t)dup];
                    c->err->code = RELOC_E_DUPLICATE_MAP_KEY;
                    c->err->key = malloc(k.len);
                    if (c->err->key) {
                        memcpy(c->err->key, out->data + k.start, k.len);
                        c->err->key_len = k.len;
                    }
                    rc = -1;
                    goto out;
                }
                s.nkeys = done.keys_start;
            }
            goto child_done;
        }
        /* Read the next child of `top`. */
        top->remaining--;
        top->child_start = out->len;
        atom_role role = top->kind == FR_FUN && top->module_next ? AR_CALL : AR_DATA;
        top->module_next = 0;
        if (pos >= len) {
            rc = -2;
            goto out;
        }
        uint8_t tag = in[pos];
        size_t n;
        switch (tag) {
        case TAG_ATOM:
        case TAG_ATOM_UTF8:
        case TAG_SMALL_ATOM:
        case TAG_SMALL_ATOM_UTF8:
            if ((rc = rw_atom(c, in, len, &pos, out, role))) {
                goto out;
            }
            break;
        case TAG_SMALL_TUPLE:
        case TAG_LARGE_TUPLE:
        case TAG_LIST:
        case TAG_MAP: {
            size_t hdr = tag == TAG_SMALL_TUPLE ? 2 : 5;
            if (len - pos < hdr) {
                rc = -2;
                goto out;
            }
            uint64_t arity = tag == TAG_SMALL_TUPLE ? in[pos + 1] : rd_u32(in + pos + 1);
            frame f = {FR_SEQ, arity, 0, 0, 0, 0};
            if (tag == TAG_LIST) {
                f.remaining = arity + 1;
            } else if (tag == TAG_MAP) {
                f.kind = FR_MAP;
                f.remaining = 2 * arity;
                f.keys_start = s.nkeys;
            }
            if (f.remaining > len - pos) {
                rc = -2;
                goto out;
            }
            if (buf_put(out, in + pos, hdr) || push_frame(&s, f)) {
                rc = -1;
                goto nomem;
            }
            pos += hdr;
            continue; /* the container completes when its frame is popped */
        }
        case TAG_EXPORT:
            pos++;
            if (buf_put_u8(out, TAG_EXPORT)) {
                rc = -1;
                goto nomem;
            }
            if (c->spec->nmfas) {
                int r = rw_export_mfa(c, in, len, &pos, out);
                if (r < 0) {
                    rc = r;
                    goto out;
                }
                if (r > 0) {
                    break;
                }
            }
            if ((rc = rw_atom(c, in, len, &pos, out, AR_FUN_MODULE)) ||
                (rc = rw_atom(c, in, len, &pos, out, AR_CALL))) {
                goto out;
            }
            if (len - pos < 2 || in[pos] != TAG_SMALL_INTEGER) {
                rc = -2;
                goto out;
            }
            if (buf_put(out, in + pos, 2)) {
                rc = -1;
                goto nomem;
            }
            pos += 2;
            break;
        case TAG_NEW_FUN: {
            if (len - pos < 30) {
                rc = -2;
                goto out;
            }
            frame f = {FR_FUN, 4 + (uint64_t)rd_u32(in + pos + 26), 0, out->len + 1, 0, 1};
            uint32_t size = rd_u32(in + pos + 1);
            if (size < 29 || size > len - pos - 1 || f.remaining > len - pos) {
                rc = -2;
                goto out;
            }
            /* Tag, a Size patched when the fun ends, then the fixed fields. */
            if (buf_put(out, in + pos, 30) || push_frame(&s, f)) {
                rc = -1;
                goto nomem;
            }
            pos += 30;
            continue;
        }
        case TAG_PID:
        case TAG_NEW_PID:
        case TAG_PORT:
        case TAG_NEW_PORT:
        case TAG_V4_PORT:
        case TAG_REFERENCE:
        case TAG_NEW_REFERENCE:
        case TAG_NEWER_REFERENCE: {
            size_t lead = 1, rest;
            uint16_t words = 0;
            if (tag == TAG_NEW_REFERENCE || tag == TAG_NEWER_REFERENCE) {
                if (len - pos < 3) {
                    rc = -2;
                    goto out;
                }
                words = rd_u16(in + pos + 1);
                if (words == 0 || words > 5) {
                    rc = -2;
                    goto out;
                }
                lead = 3;
            }
            rest = tag == TAG_PID             ? 9
                   : tag == TAG_NEW_PID       ? 12
                   : tag == TAG_PORT          ? 5
                   : tag == TAG_NEW_PORT      ? 8
                   : tag == TAG_V4_PORT       ? 12
                   : tag == TAG_REFERENCE     ? 5
                   : tag == TAG_NEW_REFERENCE ? 1 + 4 * (size_t)words
                                              : 4 + 4 * (size_t)words;
            if (buf_put(out, in + pos, lead)) {
                rc = -1;
                goto nomem;
            }
            pos += lead;
            if ((rc = rw_atom(c, in, len, &pos, out, AR_DATA))) {
                goto out;
            }
            if (len - pos < rest) {
                rc = -2;
                goto out;
            }
            if (buf_put(out, in + pos, rest)) {
                rc = -1;
                goto nomem;
            }
            pos += rest;
            break;
        }
        default:
            n = scalar_size(in + pos, len - pos);
            if (n == 0) {
                rc = -2;
                goto out;
            }
            if (buf_put(out, in + pos, n)) {
                rc = -1;
                goto nomem;
            }
            pos += n;
            break;
        }
    child_done:
        /* A child of a map at an even position (counting down) was a key. */
        if (s.nframes > 0) {
            frame *parent = &s.frames[s.nframes - 1];
            if (parent->kind == FR_MAP && parent->remaining % 2 == 1 &&
                push_key(&s, (span){parent->child_start, out->len - parent->child_start})) {
                rc = -1;
                goto nomem;
            }
        }
    }
    if (pos != len) {
        rc = -2;
    } else if (charge(c, (uint64_t)(pos - charged) * RELOC_WORK_REWRITE)) {
        rc = -1;
    } else {
        c->grown += out->len - start;
    }
    goto out;
nomem:
    c->err->code = RELOC_E_NOMEM;
out:
    free(s.frames);
    free(s.keys);
    return rc;
}

/* ---- chunks --------------------------------------------------------------- */

static int fail_beam(reloc_ctx *c, beam_errcode code, const char *chunk, uint64_t a) {
    c->err->code = RELOC_E_BEAM;
    c->err->beam.code = code;
    memset(c->err->beam.chunk, 0, sizeof c->err->beam.chunk);
    if (chunk) {
        memcpy(c->err->beam.chunk, chunk, strnlen(chunk, 4));
    }
    c->err->beam.a = a;
    return -1;
}

/* zlib-compresses src onto out, at the fastest level: the loader inflates
 * any level, and relocation runs once per module and sandbox. The window and
 * hash sizes follow the input (a 2 KiB literal table needs a 2 KiB window,
 * not 32 KiB and 320 KiB of state to allocate and clear); measured with
 * callgrind on 40 stdlib modules, this cut :keep relocation by a third. The
 * input goes in slices, each charged `per_byte` units a byte. 0, or -1
 * (c->err set). */
static int deflate_into(reloc_ctx *c, buf_t *out, const uint8_t *src, size_t len, int level,
                        uint64_t per_byte) {
    if (len > UINT32_MAX) {
        return nomem(c);
    }
    int wbits = 9;
    while (wbits < 15 && ((size_t)1 << wbits) < len) {
        wbits++;
    }
    int mem_level = wbits - 6 < 1 ? 1 : (wbits - 6 > 8 ? 8 : wbits - 6);
    z_stream zs = {0};
    if (deflateInit2(&zs, level, Z_DEFLATED, wbits, mem_level, Z_DEFAULT_STRATEGY) != Z_OK) {
        return nomem(c);
    }
    uLong bound = deflateBound(&zs, (uLong)len);
    int rc = -1, zr = Z_OK;
    if (buf_reserve(out, bound) != 0) {
        rc = nomem(c);
        goto end;
    }
    zs.next_out = out->data + out->len;
    zs.avail_out = (uInt)bound;
    size_t done = 0;
    do {
        size_t piece = len - done < DEFLATE_SLICE ? len - done : DEFLATE_SLICE;
        if (charge(c, (uint64_t)piece * per_byte)) {
            goto end;
        }
        zs.next_in = (Bytef *)(uintptr_t)(src + done);
        zs.avail_in = (uInt)piece;
        done += piece;
        zr = deflate(&zs, done == len ? Z_FINISH : Z_NO_FLUSH);
    } while (done < len && zr == Z_OK);
    if (zr == Z_STREAM_END) {
        out->len += bound - zs.avail_out;
        rc = 0;
    } else {
        rc = nomem(c);
    }
end:
    deflateEnd(&zs);
    return rc;
}

/* Inflates a zlib stream that must give exactly dst_len bytes and end
 * exactly at the end of src (etf_inflate_exact()), in slices, each charged.
 * 0, -1 (c->err set) or -2 (not such a stream). */
static int inflate_paced(reloc_ctx *c, const uint8_t *src, size_t src_len, uint8_t *dst,
                         size_t dst_len) {
    if (src_len > UINT32_MAX || dst_len > UINT32_MAX) {
        return -2;
    }
    z_stream zs = {0};
    if (inflateInit(&zs) != Z_OK) {
        return nomem(c);
    }
    zs.next_in = (Bytef *)(uintptr_t)src;
    zs.avail_in = (uInt)src_len;
    zs.next_out = dst;
    int rc = -2, zr = Z_OK;
    while (zs.total_out < dst_len) {
        size_t piece =
            dst_len - zs.total_out < INFLATE_SLICE ? dst_len - zs.total_out : INFLATE_SLICE;
        if (charge(c, (uint64_t)piece * RELOC_WORK_INFLATE)) {
            rc = -1;
            goto end;
        }
        zs.avail_out = (uInt)piece;
        zr = inflate(&zs, Z_NO_FLUSH);
        if (zr == Z_STREAM_END) {
            break;
        }
        if (zr != Z_OK || zs.avail_out != 0) {
            goto end; /* an error, or the input ran out before the output */
        }
    }
    if (zr != Z_STREAM_END) {
        /* All the output is there: only the end of the stream may be left. */
        uint8_t none;
        zs.next_out = &none;
        zs.avail_out = 0;
        zr = inflate(&zs, Z_FINISH);
    }
    rc = zr == Z_STREAM_END && zs.avail_in == 0 && zs.total_out == dst_len ? 0 : -2;
end:
    inflateEnd(&zs);
    return rc;
}

/* A whole external-format chunk (Attr, CInf, Dbgi, Docs, ExCk, Meta),
 * compressed or not. *changed is 0 when the chunk can be kept as it is. */
static int rw_term_chunk(reloc_ctx *c, const char *id, const uint8_t *d, size_t len, buf_t *out,
                         int *changed) {
    *changed = 0;
    c->chunk = id;
    if (len < 2 || d[0] != ETF_VERSION) {
        return fail_beam(c, BEAM_E_BAD_TERM, id, 0);
    }
    const uint8_t *term = d + 1;
    size_t tlen = len - 1;
    uint8_t *inflated = NULL;
    int compressed = d[1] == TAG_COMPRESSED;
    if (compressed) {
        if (len < 6) {
            return fail_beam(c, BEAM_E_BAD_TERM, id, 0);
        }
        tlen = rd_u32(d + 2);
        if (tlen == 0 || tlen > etf_inflate_bound(len - 6)) {
            return fail_beam(c, BEAM_E_ZLIB, id, 0);
        }
        if (!(inflated = malloc(tlen))) {
            return nomem(c);
        }
        int r = inflate_paced(c, d + 6, len - 6, inflated, tlen);
        if (r) {
            free(inflated);
            return r == -2 ? fail_beam(c, BEAM_E_ZLIB, id, 0) : -1;
        }
        term = inflated;
    }
    int rc = 0;
    int hit = term_changes(c, term, tlen);
    if (hit == -1) {
        rc = fail_beam(c, BEAM_E_BAD_TERM, id, 0);
    } else if (hit < 0) {
        rc = -1;
    } else if (hit > 0) {
        *changed = 1;
        buf_t t = {0};
        int r = rewrite_term(c, term, tlen, &t);
        if (r == -2) {
            rc = fail_beam(c, BEAM_E_BAD_TERM, id, 0);
        } else if (r < 0) {
            rc = -1;
        } else if (compressed) {
            uint8_t hdr[6] = {ETF_VERSION, TAG_COMPRESSED};
            wr_u32(hdr + 2, (uint32_t)t.len);
            if (buf_put(out, hdr, 6)) {
                rc = nomem(c);
            } else {
                rc = deflate_into(c, out, t.data, t.len, Z_BEST_SPEED, RELOC_WORK_DEFLATE);
            }
        } else if (buf_put_u8(out, ETF_VERSION) || buf_put(out, t.data, t.len)) {
            rc = nomem(c);
        }
        buf_free(&t);
    }
    free(inflated);
    return rc;
}

/* The literal table, inflated in slices when it is compressed. */
static int load_literals(reloc_ctx *c, const beam_module *m, const beam_chunk *ch,
                         beam_literals *lits) {
    const uint8_t *p = m->data + ch->offset;
    uint32_t usize = ch->size >= 4 ? rd_u32(p) : 0;
    if (usize == 0) {
        /* Not compressed, or too short to say: nothing to inflate. */
        if (beam_literals_load(m, lits, &c->err->beam) != BEAM_OK) {
            c->err->code = RELOC_E_BEAM;
            return -1;
        }
        return 0;
    }
    if (usize > etf_inflate_bound(ch->size - 4)) {
        return fail_beam(c, BEAM_E_ZLIB, "LitT", 0);
    }
    uint8_t *table = malloc(usize);
    if (!table) {
        return nomem(c);
    }
    int r = inflate_paced(c, p + 4, ch->size - 4, table, usize);
    if (r) {
        free(table);
        return r == -2 ? fail_beam(c, BEAM_E_ZLIB, "LitT", 0) : -1;
    }
    if (beam_literals_adopt(table, usize, lits, &c->err->beam) != BEAM_OK) {
        c->err->code = RELOC_E_BEAM;
        return -1;
    }
    return 0;
}

/* LitT: each literal that changes is rewritten, the others are copied. */
static int rw_literals(reloc_ctx *c, const beam_module *m, const beam_chunk *ch, buf_t *out,
                       int *changed) {
    beam_literals lits;
    *changed = 0;
    c->chunk = "LitT";
    if (load_literals(c, m, ch, &lits)) {
        return -1;
    }
    c->keeping = c->spec->nkeeps > 0;
    buf_t table = {0};
    int rc = 0;
    size_t pos = 0;
    const uint8_t *t;
    uint32_t tl;
    if (buf_put_u32(&table, lits.count)) {
        rc = nomem(c);
        goto out;
    }
    for (uint32_t i = 0; beam_literals_next(&lits, &pos, &t, &tl); i++) {
        int hit = tl >= 1 && t[0] == ETF_VERSION ? term_changes(c, t + 1, tl - 1) : -1;
        if (hit == -1) {
            rc = fail_beam(c, BEAM_E_BAD_LITERAL, NULL, i);
            goto out;
        }
        if (hit < 0) {
            rc = -1;
            goto out;
        }
        if (!hit) {
            if (buf_put_u32(&table, tl) || buf_put(&table, t, tl)) {
                rc = nomem(c);
                goto out;
            }
            continue;
        }
        *changed = 1;
        size_t size_at = table.len;
        if (buf_put_u32(&table, 0) || buf_put_u8(&table, ETF_VERSION)) {
            rc = nomem(c);
            goto out;
        }
        int r = rewrite_term(c, t + 1, tl - 1, &table);
        if (r == -2) {
            rc = fail_beam(c, BEAM_E_BAD_LITERAL, NULL, i);
            goto out;
        }
        if (r < 0) {
            rc = -1;
            goto out;
        }
        wr_u32(table.data + size_at, (uint32_t)(table.len - size_at - 4));
    }
    if (*changed) {
        rc = buf_put_u32(out, (uint32_t)table.len)
                 ? nomem(c)
                 : deflate_into(c, out, table.data, table.len, Z_NO_COMPRESSION, RELOC_WORK_STORE);
    }
out:
    c->keeping = 0;
    buf_free(&table);
    beam_literals_free(&lits);
    return rc;
}

/* The atom index (1-based) of an appended atom, appending it on first use.
 * 0, or -1 when out of memory. */
static int append_atom(reloc_ctx *c, const beam_module *m, const uint8_t *name, size_t len,
                       uint32_t *index) {
    size_t i;
    if (!strmap_get(&c->xmap, name, len, &i)) {
        if (c->nx == c->capx || strmap_put(&c->xmap, name, len, c->nx) != 0) {
            return nomem(c);
        }
        c->xnames[c->nx] = name;
        c->xlens[c->nx] = len;
        i = c->nx++;
    }
    *index = (uint32_t)(m->natoms + i + 1);
    return 0;
}

/* The atom table as AtU8, renamed, with the appended atoms (redirect shims,
 * MFA redirect targets, the guard's names) after it. An atom over 255
 * bytes cannot be written in the one-byte-length format. */
static int rw_atoms(reloc_ctx *c, const beam_module *m, buf_t *out) {
    if (charge(c, (uint64_t)(m->natoms + c->nx) * RELOC_WORK_ATOM)) {
        return -1;
    }
    if (buf_put_u32(out, (uint32_t)(m->natoms + c->nx))) {
        return nomem(c);
    }
    for (size_t i = 0; i < m->natoms; i++) {
        uint8_t tmp[LATIN1_UTF8_MAX];
        const uint8_t *n;
        size_t nl;
        int r = resolve_atom(c, m->atoms[i].name, m->atoms[i].len, m->atoms_utf8, AR_CALL, tmp, &n,
                             &nl);
        if (r) {
            return r == -2 ? fail_beam(c, BEAM_E_BAD_ATOM, NULL, i + 1) : -1;
        }
        if (nl > 255) {
            return too_long(c, n == tmp ? m->atoms[i].name : n, n == tmp ? m->atoms[i].len : nl);
        }
        if (buf_put_u8(out, (uint8_t)nl) || buf_put(out, n, nl)) {
            return nomem(c);
        }
    }
    for (size_t k = 0; k < c->nx; k++) {
        if (buf_put_u8(out, (uint8_t)c->xlens[k]) || buf_put(out, c->xnames[k], c->xlens[k])) {
            return nomem(c);
        }
    }
    return 0;
}

static const char *const guard_names[] = {"$apply", "$call_fun", "$send"};

/* An atom's name in UTF-8 (tmp holds a latin-1 name's conversion). */
static const uint8_t *atom_utf8(const beam_module *m, uint32_t index, uint8_t *tmp, size_t *len) {
    const beam_atom *a = &m->atoms[index - 1];
    *len = a->len;
    return m->atoms_utf8 ? a->name : latin1_to_utf8(a->name, a->len, tmp, LATIN1_UTF8_MAX, len);
}

/* ImpT with the imports of redirected MFAs and modules repointed at
 * appended atoms (imp_mfa[i]: 1 + the MFA redirect of import i, or 0), and
 * the guard's imports (gr, may be NULL) appended. */
static int rw_imports(reloc_ctx *c, const beam_module *m, const uint32_t *imp_mfa,
                      const code_rewrite_spec *gr, buf_t *out, int *changed) {
    size_t extra = gr ? gr->nimports : 0;
    *changed = extra > 0;
    if (charge(c, (uint64_t)(m->nimports + extra) * RELOC_WORK_ENTRY)) {
        return -1;
    }
    if (buf_put_u32(out, (uint32_t)(m->nimports + extra))) {
        return nomem(c);
    }
    for (uint32_t i = 0; i < m->nimports; i++) {
        uint32_t e[3];
        beam_table_entry(m->imports, i, e);
        uint8_t tmp[LATIN1_UTF8_MAX];
        size_t len, r;
        const uint8_t *name = atom_utf8(m, e[0], tmp, &len);
        if (!name) {
            return fail_beam(c, BEAM_E_BAD_ATOM, NULL, e[0]);
        }
        if (imp_mfa && imp_mfa[i]) {
            const reloc_mfa *x = &c->spec->mfas[imp_mfa[i] - 1];
            if (append_atom(c, m, x->to_mod, x->to_mod_len, &e[0]) ||
                append_atom(c, m, x->to_fun, x->to_fun_len, &e[1])) {
                return -1;
            }
            *changed = 1;
        } else if (strmap_get(&c->redirects, name, len, &r)) {
            const reloc_pair *p = &c->spec->redirects[r];
            if (append_atom(c, m, p->to, p->to_len, &e[0])) {
                return -1;
            }
            *changed = 1;
        }
        if (buf_put_u32(out, e[0]) || buf_put_u32(out, e[1]) || buf_put_u32(out, e[2])) {
            return nomem(c);
        }
    }
    for (size_t k = 0; k < extra; k++) {
        const char *fn = guard_names[gr->imports[k].fn];
        uint32_t mod, fun;
        if (append_atom(c, m, c->spec->guard, c->spec->guard_len, &mod) ||
            append_atom(c, m, (const uint8_t *)fn, strlen(fn), &fun) || buf_put_u32(out, mod) ||
            buf_put_u32(out, fun) || buf_put_u32(out, gr->imports[k].arity)) {
            return c->err->code ? -1 : nomem(c);
        }
    }
    return 0;
}

static int add_chunk(buf_t *out, const char id[4], const uint8_t *data, size_t len) {
    static const uint8_t pad[3] = {0, 0, 0};
    if (len > UINT32_MAX) {
        return -1;
    }
    if (buf_put(out, id, 4) || buf_put_u32(out, (uint32_t)len) || buf_put(out, data, len) ||
        buf_put(out, pad, align4(len) - len)) {
        return -1;
    }
    return 0;
}

static int valid_name(const reloc_spec *sp, const uint8_t *name, size_t len, size_t max) {
    return len <= max && (sp->names_valid || utf8_count(name, len) >= 0);
}

static int bad_spec(reloc_ctx *c, const uint8_t *name, size_t len) {
    c->err->code = RELOC_E_BAD_SPEC;
    c->err->name = name;
    c->err->name_len = len;
    return -1;
}

static int build_maps(reloc_ctx *c) {
    const reloc_spec *sp = c->spec;
    size_t nx = sp->nredirects + 2 * sp->nmfas + sp->nkeeps + 4;
    if (strmap_init(&c->renames, sp->nrenames) || strmap_init(&c->redirects, sp->nredirects) ||
        strmap_init(&c->mfas, sp->nmfas) || strmap_init(&c->xmap, nx) ||
        strmap_init(&c->keeps, sp->nkeeps)) {
        return nomem(c);
    }
    c->xnames = malloc(nx * sizeof *c->xnames);
    c->xlens = malloc(nx * sizeof *c->xlens);
    c->mfa_keys = malloc((sp->nmfas + 1) * MFA_KEY_MAX);
    if (!c->xnames || !c->xlens || !c->mfa_keys) {
        return nomem(c);
    }
    c->capx = nx;
    for (int pass = 0; pass < 2; pass++) {
        const reloc_pair *pairs = pass ? sp->redirects : sp->renames;
        size_t n = pass ? sp->nredirects : sp->nrenames;
        strmap *map = pass ? &c->redirects : &c->renames;
        for (size_t i = 0; i < n; i++) {
            const reloc_pair *p = &pairs[i];
            int valid = sp->names_valid || (utf8_count(p->from, p->from_len) >= 0 &&
                                            utf8_count(p->to, p->to_len) >= 0);
            if (!valid || strmap_put(map, p->from, p->from_len, i) != 0) {
                return bad_spec(c, p->from, p->from_len);
            }
            if (p->to_len > 255) {
                return too_long(c, p->to, p->to_len);
            }
        }
    }
    /* MFA redirects: names of at most 255 characters (1020 bytes), targets
     * of at most 255 bytes (the atom table's length byte). */
    for (size_t i = 0; i < sp->nmfas; i++) {
        const reloc_mfa *x = &sp->mfas[i];
        uint8_t *key = c->mfa_keys + i * MFA_KEY_MAX;
        size_t kl;
        if (!valid_name(sp, x->mod, x->mod_len, 4 * BEAM_MAX_ATOM_CHARS) ||
            !valid_name(sp, x->fun, x->fun_len, 4 * BEAM_MAX_ATOM_CHARS) ||
            !valid_name(sp, x->to_mod, x->to_mod_len, SIZE_MAX) ||
            !valid_name(sp, x->to_fun, x->to_fun_len, SIZE_MAX) ||
            !(kl = mfa_key(x->mod, x->mod_len, x->fun, x->fun_len, x->arity, key, MFA_KEY_MAX)) ||
            strmap_put(&c->mfas, key, kl, i) != 0) {
            return bad_spec(c, x->mod, x->mod_len);
        }
        if (x->to_mod_len > 255 || x->to_fun_len > 255) {
            return x->to_mod_len > 255 ? too_long(c, x->to_mod, x->to_mod_len)
                                       : too_long(c, x->to_fun, x->to_fun_len);
        }
    }
    /* Kept names: at most 255 characters (1020 bytes); appending one over
     * 255 bytes is RELOC_E_ATOM_TOO_LONG. */
    for (size_t i = 0; i < sp->nkeeps; i++) {
        const reloc_name *k = &sp->keeps[i];
        if (!valid_name(sp, k->name, k->len, 4 * BEAM_MAX_ATOM_CHARS) ||
            strmap_put(&c->keeps, k->name, k->len, i) != 0) {
            return bad_spec(c, k->name, k->len);
        }
    }
    if (sp->guard) {
        if (!valid_name(sp, sp->guard, sp->guard_len, SIZE_MAX)) {
            return bad_spec(c, sp->guard, sp->guard_len);
        }
        if (sp->guard_len > 255) {
            return too_long(c, sp->guard, sp->guard_len);
        }
    }
    return 0;
}

/* The cap on inflated and rewritten bytes: a chunk holds at most 4 GiB - 1. */
static uint64_t effective_cap(const reloc_spec *spec) {
    uint64_t cap = spec->max_inflated ? spec->max_inflated : BEAM_DEFAULT_MAX_INFLATED;
    return cap < UINT32_MAX ? cap : UINT32_MAX;
}

uint64_t reloc_work_estimate(const beam_module *m, const reloc_spec *spec) {
    uint64_t w = (uint64_t)m->size * RELOC_WORK_BYTE + (uint64_t)m->nchunks * RELOC_WORK_CHUNK +
                 (uint64_t)m->natoms * RELOC_WORK_ATOM + (uint64_t)m->nimports * RELOC_WORK_ENTRY +
                 (uint64_t)(spec->nrenames + spec->nredirects + spec->nmfas + spec->nkeeps) *
                     RELOC_WORK_ENTRY;
    if (spec->nkeeps) {
        w += (uint64_t)m->natoms * RELOC_WORK_ATOM;
    }
    const beam_chunk *code = beam_find_chunk(m, "Code");
    if (code && (spec->nmfas || spec->nkeeps || (spec->guard && spec->guard_kinds))) {
        w += (uint64_t)code->size * RELOC_WORK_CODE;
    }
    for (size_t i = 0; i < m->nchunks; i++) {
        const beam_chunk *c = &m->chunks[i];
        uint64_t plain = beam_plain_size(m, c);
        int compressed = plain != c->size;
        int debug = memcmp(c->id, "Dbgi", 4) == 0 || memcmp(c->id, "Docs", 4) == 0;
        if (memcmp(c->id, "LitT", 4) == 0) {
            /* Literals are walked; most do not change. */
            w += plain * (RELOC_WORK_WALK + (compressed ? RELOC_WORK_INFLATE : 0));
        } else if (beam_is_term_chunk(c->id) && !(debug && spec->strip_debug)) {
            /* Term chunks nearly always name the module: rewritten. */
            w += plain * (RELOC_WORK_WALK + RELOC_WORK_REWRITE +
                          (compressed ? RELOC_WORK_INFLATE + RELOC_WORK_DEFLATE : 0));
        }
    }
    return w;
}

/* The imports MFA redirects repoint: imp_mfa[i] = 1 + the redirect of
 * import i, or 0. Returns how many, or -1 when out of memory. */
static long match_imports(reloc_ctx *c, const beam_module *m, uint32_t **imp_mfa) {
    *imp_mfa = NULL;
    if (!c->spec->nmfas || !m->nimports) {
        return 0;
    }
    if (!(*imp_mfa = calloc(m->nimports, sizeof **imp_mfa))) {
        return nomem(c);
    }
    long n = 0;
    for (uint32_t i = 0; i < m->nimports; i++) {
        uint32_t e[3];
        beam_table_entry(m->imports, i, e);
        const beam_atom *mod = &m->atoms[e[0] - 1], *fun = &m->atoms[e[1] - 1];
        size_t idx;
        if (mfa_redirect(c, mod->name, mod->len, m->atoms_utf8, fun->name, fun->len, m->atoms_utf8,
                         e[2], &idx)) {
            (*imp_mfa)[i] = (uint32_t)idx + 1;
            n++;
        }
    }
    return n;
}

/* The renamed atoms of the table that are kept (c->keep_idx). Returns how
 * many, or -1 (c->err set). */
static long find_kept(reloc_ctx *c, const beam_module *m) {
    if (!c->spec->nkeeps || !m->natoms) {
        return 0;
    }
    if (charge(c, (uint64_t)m->natoms * RELOC_WORK_ATOM)) {
        return -1;
    }
    long n = 0;
    for (uint32_t i = 1; i <= m->natoms; i++) {
        uint8_t tmp[LATIN1_UTF8_MAX];
        size_t len, k, r;
        const uint8_t *name = atom_utf8(m, i, tmp, &len);
        if (!name || !strmap_get(&c->keeps, name, len, &k) ||
            !strmap_get(&c->renames, name, len, &r)) {
            continue; /* (a bad name is reported by rw_atoms) */
        }
        if (!c->keep_idx && !(c->keep_idx = calloc((size_t)m->natoms + 1, sizeof *c->keep_idx))) {
            return nomem(c);
        }
        c->keep_idx[i] = (uint32_t)k + 1;
        n++;
    }
    return n;
}

/* code_repoint_fn: an operand naming a kept atom's renamed entry names an
 * appended atom of the original name instead. */
static int repoint_kept(void *ctx, uint32_t atom, uint32_t *to) {
    reloc_ctx *c = ctx;
    *to = 0;
    if (atom > c->m->natoms || !c->keep_idx[atom]) {
        return 0;
    }
    const reloc_name *k = &c->spec->keeps[c->keep_idx[atom] - 1];
    if (k->len > 255) {
        return too_long(c, k->name, k->len);
    }
    return append_atom(c, c->m, k->name, k->len, to);
}

/* Walks the code when MFA redirects or a guard need it: refuses redirects
 * of imports that bif instructions use, and rewrites the dynamic calls
 * into *code (gr->kinds). */
static int walk_code(reloc_ctx *c, const beam_module *m, const uint32_t *imp_mfa,
                     code_rewrite_spec *gr, buf_t *code) {
    beam_error *be = &c->err->beam;
    uint32_t nlits;
    code_module cm;
    uint32_t max_op = c->spec->max_opcode ? c->spec->max_opcode : CODE_OTP25_MAX_OPCODE;
    const beam_chunk *ch = beam_find_chunk(m, "Code");
    if (!ch) {
        return fail_beam(c, BEAM_E_MISSING_CHUNK, "Code", 0);
    }
    if (gr->kinds && !m->imports) {
        return fail_beam(c, BEAM_E_MISSING_CHUNK, "ImpT", 0);
    }
    if (charge(c, (uint64_t)ch->size * RELOC_WORK_CODE)) {
        return -1;
    }
    beam_errcode rc;
    if ((rc = beam_literal_count(m, &nlits, be)) != BEAM_OK ||
        (rc = code_open(m, nlits, max_op, &cm, be)) != BEAM_OK) {
        c->err->code = rc == BEAM_E_NOMEM ? RELOC_E_NOMEM : RELOC_E_BEAM;
        return -1;
    }
    gr->first_import = m->nimports;
    gr->bif_imports = calloc((size_t)m->nimports + 1, 1);
    if (!gr->bif_imports) {
        return nomem(c);
    }
    rc = code_rewrite(&cm, max_op, m, gr, code, be);
    if (rc == BEAM_E_STOPPED && gr->too_large_fn < 0) {
        return -1; /* the repoint callback set c->err */
    }
    if (rc == BEAM_E_STOPPED) {
        c->err->code = RELOC_E_ARITY;
        c->err->fn = gr->too_large_fn;
        c->err->arity = gr->too_large_arity;
        return -1;
    }
    if (rc != BEAM_OK) {
        c->err->code = rc == BEAM_E_NOMEM ? RELOC_E_NOMEM : RELOC_E_BEAM;
        return -1;
    }
    c->err->rewritten = gr->rewritten;
    c->err->repointed = gr->repointed;
    for (uint32_t i = 0; imp_mfa && i < m->nimports; i++) {
        if (imp_mfa[i] && gr->bif_imports[i]) {
            c->err->code = RELOC_E_BIF_REDIRECT;
            c->err->index = imp_mfa[i] - 1;
            return -1;
        }
    }
    return 0;
}

int beam_relocate(const uint8_t *in, size_t len, const reloc_spec *spec, uint8_t **out,
                  size_t *out_len, reloc_error *err) {
    memset(err, 0, sizeof *err);
    *out = NULL;
    *out_len = 0;
    reloc_ctx c = {.spec = spec, .err = err, .cap = effective_cap(spec), .chunk = ""};
    beam_module m;
    c.m = &m;
    buf_t res = {0}, tmp = {0}, imports = {0}, code = {0};
    uint32_t *imp_mfa = NULL;
    code_rewrite_spec *gr = NULL;
    int rc = -1;
    if (beam_parse_limited(in, len, c.cap, &m, &err->beam) != BEAM_OK) {
        err->code = RELOC_E_BEAM;
        return -1;
    }
    if (charge(&c, (uint64_t)len * RELOC_WORK_BYTE + (uint64_t)m.nchunks * RELOC_WORK_CHUNK +
                       (uint64_t)(spec->nrenames + spec->nredirects + spec->nmfas + spec->nkeeps) *
                           RELOC_WORK_ENTRY) ||
        build_maps(&c)) {
        goto out;
    }
    /* The code first, when it matters: which imports bifs use, and the
     * guard's rewrite, which decides the imports the table gains. */
    long nmatched = match_imports(&c, &m, &imp_mfa);
    if (nmatched < 0) {
        goto out;
    }
    unsigned kinds =
        spec->guard ? spec->guard_kinds & (GUARD_APPLY | GUARD_CALL_FUN | GUARD_SEND) : 0;
    long nkept = find_kept(&c, &m);
    if (nkept < 0) {
        goto out;
    }
    if (nmatched > 0 || kinds || nkept > 0) {
        if (!(gr = calloc(1, sizeof *gr))) {
            nomem(&c);
            goto out;
        }
        gr->kinds = kinds;
        if (nkept > 0) {
            gr->repoint = repoint_kept;
            gr->repoint_ctx = &c;
        }
        if (walk_code(&c, &m, imp_mfa, gr, &code)) {
            goto out;
        }
    }
    int code_changed = gr && (gr->rewritten > 0 || gr->repointed > 0);
    /* Imports next: they decide which atoms the atom table gains. */
    int imports_changed = 0;
    if (m.imports &&
        rw_imports(&c, &m, imp_mfa, code_changed ? gr : NULL, &imports, &imports_changed)) {
        goto out;
    }
    if (buf_put(&res, "FOR1\0\0\0\0BEAM", 12)) {
        nomem(&c);
        goto out;
    }
    int have_utf8_atoms = beam_find_chunk(&m, "AtU8") != NULL;
    for (size_t i = 0; i < m.nchunks; i++) {
        const beam_chunk *ch = &m.chunks[i];
        const uint8_t *data = in + ch->offset;
        char id[5] = {0};
        memcpy(id, ch->id, 4);
        int changed = 0, r = 0;
        tmp.len = 0;
        if ((int)i == m.atom_chunk) {
            r = rw_atoms(&c, &m, &tmp);
            changed = 1;
            memcpy(id, "AtU8", 4);
        } else if (memcmp(id, "Atom", 4) == 0 && have_utf8_atoms) {
            continue; /* superseded by AtU8 */
        } else if (memcmp(id, "ImpT", 4) == 0) {
            changed = imports_changed;
            if (changed) {
                r = buf_put(&tmp, imports.data, imports.len) ? nomem(&c) : 0;
            }
        } else if (memcmp(id, "Code", 4) == 0 && code_changed) {
            changed = 1;
            r = buf_put(&tmp, code.data, code.len) ? nomem(&c) : 0;
        } else if (memcmp(id, "LitT", 4) == 0) {
            r = rw_literals(&c, &m, ch, &tmp, &changed);
        } else if (spec->strip_debug &&
                   (memcmp(id, "Dbgi", 4) == 0 || memcmp(id, "Docs", 4) == 0)) {
            continue;
        } else if (beam_is_term_chunk(id)) {
            r = rw_term_chunk(&c, id, data, ch->size, &tmp, &changed);
        }
        if (r) {
            goto out;
        }
        if (changed ? add_chunk(&res, id, tmp.data, tmp.len)
                    : add_chunk(&res, id, data, ch->size)) {
            nomem(&c);
            goto out;
        }
    }
    if (res.len - 8 > UINT32_MAX) {
        nomem(&c);
        goto out;
    }
    /* The caller's copy of the result. */
    if (charge(&c, (uint64_t)res.len * RELOC_WORK_BYTE)) {
        goto out;
    }
    wr_u32(res.data + 4, (uint32_t)(res.len - 8));
    *out = res.data;
    *out_len = res.len;
    res.data = NULL;
    rc = 0;
out:
    buf_free(&res);
    buf_free(&tmp);
    buf_free(&imports);
    buf_free(&code);
    free(imp_mfa);
    if (gr) {
        free(gr->bif_imports);
        free(gr);
    }
    err->work = c.work;
    strmap_free(&c.renames);
    strmap_free(&c.redirects);
    strmap_free(&c.mfas);
    strmap_free(&c.xmap);
    strmap_free(&c.keeps);
    free(c.keep_idx);
    free(c.mfa_keys);
    free(c.xnames);
    free(c.xlens);
    beam_module_free(&m);
    return rc;
}

void reloc_error_free(reloc_error *err) {
    free(err->key);
    err->key = NULL;
    err->key_len = 0;
}
