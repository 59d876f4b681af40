#include "code.h"

#include <stdlib.h>
#include <string.h>

#include "bytes.h"

/* ---- The instruction set -------------------------------------------------
 * Operand kinds, one letter each:
 *   u  unsigned (tag u), below 2^32      n  live register count, u <= 1024
 *   r  arity, u <= 255                    e  import index, u < ImpT's count
 *   l  lambda index, u < FunT's count     i  line item, u <= the Line items
 *   L  label, f >= 1                      F  fail label, f >= 0 (0: raise)
 *   s  source: x, y, atom or [], integer, literal, typed register
 *   d  destination: x, y                  Y  y register
 *   S  register source: x, y, typed register
 *   a  atom (not [])                      k  select_val value: integer, atom, literal
 *   R  float register                     q  s or R      w  d or R
 *   z  s or u (bit syntax sizes, string offsets)
 *   t  call_fun2's tag: an atom (safe, unsafe) or a lambda index
 *   h  heap need: u or an allocation list
 *   m  bs_start_match4's fail: an atom (no_fail, resume) or a fail label
 *   *  a list: the last operand; its elements follow the instruction's
 *      element pattern, cycled, and its count the instruction's rule.
 * A NULL signature marks an opcode the OTP 25 loader refuses (retired in
 * genop.tab), or none at all. */
enum list_rule { LR_NONE = 0, LR_ANY, LR_NONEMPTY, LR_PAIRS, LR_PAIRS_NONEMPTY, LR_SIX, LR_FREE };

typedef struct {
    const char *name;
    const char *sig;
    const char *elems;
    uint8_t rule;
} op_info;

static const op_info ops[CODE_OTP25_MAX_OPCODE + 1] = {
    [1] = {"label", "u", NULL, 0},
    [2] = {"func_info", "aar", NULL, 0},
    [3] = {"int_code_end", "", NULL, 0},
    [4] = {"call", "rL", NULL, 0},
    [5] = {"call_last", "rLu", NULL, 0},
    [6] = {"call_only", "rL", NULL, 0},
    [7] = {"call_ext", "re", NULL, 0},
    [8] = {"call_ext_last", "reu", NULL, 0},
    [9] = {"bif0", "ed", NULL, 0},
    [10] = {"bif1", "Fesd", NULL, 0},
    [11] = {"bif2", "Fessd", NULL, 0},
    [12] = {"allocate", "un", NULL, 0},
    [13] = {"allocate_heap", "uhn", NULL, 0},
    [14] = {"allocate_zero", "un", NULL, 0},
    [15] = {"allocate_heap_zero", "uhn", NULL, 0},
    [16] = {"test_heap", "hn", NULL, 0},
    [17] = {"init", "Y", NULL, 0},
    [18] = {"deallocate", "u", NULL, 0},
    [19] = {"return", "", NULL, 0},
    [20] = {"send", "", NULL, 0},
    [21] = {"remove_message", "", NULL, 0},
    [22] = {"timeout", "", NULL, 0},
    [23] = {"loop_rec", "Ld", NULL, 0},
    [24] = {"loop_rec_end", "L", NULL, 0},
    [25] = {"wait", "L", NULL, 0},
    [26] = {"wait_timeout", "Ls", NULL, 0},
    [39] = {"is_lt", "Lss", NULL, 0},
    [40] = {"is_ge", "Lss", NULL, 0},
    [41] = {"is_eq", "Lss", NULL, 0},
    [42] = {"is_ne", "Lss", NULL, 0},
    [43] = {"is_eq_exact", "Lss", NULL, 0},
    [44] = {"is_ne_exact", "Lss", NULL, 0},
    [45] = {"is_integer", "Ls", NULL, 0},
    [46] = {"is_float", "Ls", NULL, 0},
    [47] = {"is_number", "Ls", NULL, 0},
    [48] = {"is_atom", "Ls", NULL, 0},
    [49] = {"is_pid", "Ls", NULL, 0},
    [50] = {"is_reference", "Ls", NULL, 0},
    [51] = {"is_port", "Ls", NULL, 0},
    [52] = {"is_nil", "Ls", NULL, 0},
    [53] = {"is_binary", "Ls", NULL, 0},
    [55] = {"is_list", "Ls", NULL, 0},
    [56] = {"is_nonempty_list", "Ls", NULL, 0},
    [57] = {"is_tuple", "Ls", NULL, 0},
    [58] = {"test_arity", "Lsu", NULL, 0},
    [59] = {"select_val", "sL*", "kL", LR_PAIRS_NONEMPTY},
    [60] = {"select_tuple_arity", "sL*", "uL", LR_PAIRS_NONEMPTY},
    [61] = {"jump", "L", NULL, 0},
    [62] = {"catch", "YL", NULL, 0},
    [63] = {"catch_end", "Y", NULL, 0},
    [64] = {"move", "sd", NULL, 0},
    [65] = {"get_list", "sdd", NULL, 0},
    [66] = {"get_tuple_element", "sud", NULL, 0},
    [67] = {"set_tuple_element", "ssu", NULL, 0},
    [69] = {"put_list", "ssd", NULL, 0},
    [70] = {"put_tuple", "ud", NULL, 0},
    [71] = {"put", "s", NULL, 0},
    [72] = {"badmatch", "s", NULL, 0},
    [73] = {"if_end", "", NULL, 0},
    [74] = {"case_end", "s", NULL, 0},
    [75] = {"call_fun", "r", NULL, 0},
    [77] = {"is_function", "Ls", NULL, 0},
    [78] = {"call_ext_only", "re", NULL, 0},
    [89] = {"bs_put_integer", "Fzuus", NULL, 0},
    [90] = {"bs_put_binary", "Fzuus", NULL, 0},
    [91] = {"bs_put_float", "Fzuus", NULL, 0},
    [92] = {"bs_put_string", "uu", NULL, 0},
    [94] = {"fclearerror", "", NULL, 0},
    [95] = {"fcheckerror", "F", NULL, 0},
    [96] = {"fmove", "qw", NULL, 0},
    [97] = {"fconv", "sR", NULL, 0},
    [98] = {"fadd", "FRRR", NULL, 0},
    [99] = {"fsub", "FRRR", NULL, 0},
    [100] = {"fmul", "FRRR", NULL, 0},
    [101] = {"fdiv", "FRRR", NULL, 0},
    [102] = {"fnegate", "FRR", NULL, 0},
    [103] = {"make_fun2", "l", NULL, 0},
    [104] = {"try", "YL", NULL, 0},
    [105] = {"try_end", "Y", NULL, 0},
    [106] = {"try_case", "Y", NULL, 0},
    [107] = {"try_case_end", "s", NULL, 0},
    [108] = {"raise", "ss", NULL, 0},
    [109] = {"bs_init2", "Fzhnud", NULL, 0},
    [111] = {"bs_add", "Fzzud", NULL, 0},
    [112] = {"apply", "r", NULL, 0},
    [113] = {"apply_last", "ru", NULL, 0},
    [114] = {"is_boolean", "Ls", NULL, 0},
    [115] = {"is_function2", "Lss", NULL, 0},
    [116] = {"bs_start_match2", "Fsnud", NULL, 0},
    [117] = {"bs_get_integer2", "Fdnzuud", NULL, 0},
    [118] = {"bs_get_float2", "Fdnzuud", NULL, 0},
    [119] = {"bs_get_binary2", "Fdnzuud", NULL, 0},
    [120] = {"bs_skip_bits2", "Fdzuu", NULL, 0},
    [121] = {"bs_test_tail2", "Fdu", NULL, 0},
    [122] = {"bs_save2", "ds", NULL, 0},
    [123] = {"bs_restore2", "ds", NULL, 0},
    [124] = {"gc_bif1", "Fnesd", NULL, 0},
    [125] = {"gc_bif2", "Fnessd", NULL, 0},
    [129] = {"is_bitstr", "Ls", NULL, 0},
    [130] = {"bs_context_to_binary", "d", NULL, 0},
    [131] = {"bs_test_unit", "Fdu", NULL, 0},
    [132] = {"bs_match_string", "Fduu", NULL, 0},
    [133] = {"bs_init_writable", "", NULL, 0},
    [134] = {"bs_append", "Fzhnusud", NULL, 0},
    [135] = {"bs_private_append", "Fzusud", NULL, 0},
    [136] = {"trim", "uu", NULL, 0},
    [137] = {"bs_init_bits", "Fzhnud", NULL, 0},
    [138] = {"bs_get_utf8", "Fduud", NULL, 0},
    [139] = {"bs_skip_utf8", "Fduu", NULL, 0},
    [140] = {"bs_get_utf16", "Fduud", NULL, 0},
    [141] = {"bs_skip_utf16", "Fduu", NULL, 0},
    [142] = {"bs_get_utf32", "Fduud", NULL, 0},
    [143] = {"bs_skip_utf32", "Fduu", NULL, 0},
    [144] = {"bs_utf8_size", "Fsd", NULL, 0},
    [145] = {"bs_put_utf8", "Fus", NULL, 0},
    [146] = {"bs_utf16_size", "Fsd", NULL, 0},
    [147] = {"bs_put_utf16", "Fus", NULL, 0},
    [148] = {"bs_put_utf32", "Fus", NULL, 0},
    [149] = {"on_load", "", NULL, 0},
    [150] = {"recv_mark", "L", NULL, 0},
    [151] = {"recv_set", "L", NULL, 0},
    [152] = {"gc_bif3", "Fnesssd", NULL, 0},
    [153] = {"line", "i", NULL, 0},
    [154] = {"put_map_assoc", "Fsdn*", "ss", LR_PAIRS},
    [155] = {"put_map_exact", "Fsdn*", "ss", LR_PAIRS},
    [156] = {"is_map", "Ls", NULL, 0},
    [157] = {"has_map_fields", "Ls*", "s", LR_NONEMPTY},
    [158] = {"get_map_elements", "Ls*", "sd", LR_PAIRS_NONEMPTY},
    [159] = {"is_tagged_tuple", "Lsua", NULL, 0},
    [160] = {"build_stacktrace", "", NULL, 0},
    [161] = {"raw_raise", "", NULL, 0},
    [162] = {"get_hd", "sd", NULL, 0},
    [163] = {"get_tl", "sd", NULL, 0},
    [164] = {"put_tuple2", "d*", "s", LR_ANY},
    [165] = {"bs_get_tail", "ddn", NULL, 0},
    [166] = {"bs_start_match3", "Fsnd", NULL, 0},
    [167] = {"bs_get_position", "ddn", NULL, 0},
    [168] = {"bs_set_position", "ds", NULL, 0},
    [169] = {"swap", "dd", NULL, 0},
    [170] = {"bs_start_match4", "mnsd", NULL, 0},
    [171] = {"make_fun3", "ld*", "s", LR_FREE},
    [172] = {"init_yregs", "*", "Y", LR_NONEMPTY},
    [173] = {"recv_marker_bind", "ss", NULL, 0},
    [174] = {"recv_marker_clear", "s", NULL, 0},
    [175] = {"recv_marker_reserve", "d", NULL, 0},
    [176] = {"recv_marker_use", "s", NULL, 0},
    [177] = {"bs_create_bin", "Fhnud*", "auuszs", LR_SIX},
    [178] = {"call_fun2", "trS", NULL, 0},
    [179] = {"nif_start", "", NULL, 0},
    [180] = {"badrecord", "s", NULL, 0},
};

/* Operands of any instruction, list elements excluded. */
#define MAX_FIXED 8

int code_arity(uint8_t op) {
    if (op == 0 || op > CODE_OTP25_MAX_OPCODE || !ops[op].sig) {
        return -1;
    }
    return (int)strlen(ops[op].sig);
}

const char *code_opname(uint8_t op) {
    return code_arity(op) < 0 ? "unknown" : ops[op].name;
}

/* ---- Compact terms --------------------------------------------------------- */

typedef struct {
    const uint8_t *base; /* the chunk */
    uint32_t pos, end;
} reader;

/* One plain compact term (any of the 8 tags, z included as a raw value):
 * 0, or -1 at a malformed or truncated one (r->pos is then left at its
 * start). Values of the tags other than i must fit 32 bits; i may be a
 * bignum (big). */
static int read_plain(reader *r, uint8_t *tag, uint64_t *val, uint8_t *big) {
    uint32_t p = r->pos;
    if (p >= r->end) {
        return -1;
    }
    uint8_t b = r->base[p];
    *tag = b & 7;
    *big = 0;
    if ((b & 0x08) == 0) {
        *val = b >> 4;
        r->pos = p + 1;
        return 0;
    }
    if ((b & 0x10) == 0) {
        if (r->end - p < 2) {
            return -1;
        }
        *val = (uint64_t)(b >> 5) << 8 | r->base[p + 1];
        r->pos = p + 2;
        return 0;
    }
    uint32_t hdr = 1;
    uint64_t count = (uint64_t)(b >> 5) + 2;
    if ((b >> 5) == 7) {
        /* The byte count, less 9, as a nested u term of at most 4 bytes. */
        if (r->end - p < 2) {
            return -1;
        }
        uint8_t nb = r->base[p + 1];
        uint64_t n;
        if ((nb & 7) != CODE_U) {
            return -1;
        }
        if ((nb & 0x08) == 0) {
            n = nb >> 4;
            hdr = 2;
        } else if ((nb & 0x10) == 0) {
            if (r->end - p < 3) {
                return -1;
            }
            n = (uint64_t)(nb >> 5) << 8 | r->base[p + 2];
            hdr = 3;
        } else {
            uint32_t k = (uint32_t)(nb >> 5) + 2;
            if (k > 4 || r->end - p < 2 + k) {
                return -1;
            }
            n = 0;
            for (uint32_t i = 0; i < k; i++) {
                n = n << 8 | r->base[p + 2 + i];
            }
            hdr = 2 + k;
        }
        count = n + 9;
    }
    if (count > (uint64_t)(r->end - p - hdr)) {
        return -1;
    }
    const uint8_t *d = r->base + p + hdr;
    if (count > 8) {
        if (*tag != CODE_I) {
            return -1;
        }
        *big = 1;
        *val = 0;
    } else {
        uint64_t v = 0;
        for (uint32_t i = 0; i < count; i++) {
            v = v << 8 | d[i];
        }
        if (*tag == CODE_I) {
            /* Sign-extend from count bytes. */
            if (count < 8 && (d[0] & 0x80)) {
                v |= ~(uint64_t)0 << (8 * count);
            }
        } else if (v > UINT32_MAX) {
            return -1;
        }
        *val = v;
    }
    r->pos = p + hdr + (uint32_t)count;
    return 0;
}

size_t code_encode(uint8_t tag, uint64_t val, uint8_t *out) {
    if (val < 16) {
        out[0] = (uint8_t)(val << 4 | tag);
        return 1;
    }
    if (val < 2048) {
        out[0] = (uint8_t)((val >> 8) << 5 | 0x08 | tag);
        out[1] = (uint8_t)val;
        return 2;
    }
    /* Big-endian bytes, with a leading zero byte when the top bit is set
     * (the value is read as signed for tag i). */
    uint8_t tmp[9];
    size_t n = 0;
    while (val) {
        tmp[n++] = (uint8_t)val;
        val >>= 8;
    }
    if (tmp[n - 1] & 0x80) {
        tmp[n++] = 0;
    }
    out[0] = (uint8_t)((n - 2) << 5 | 0x18 | tag);
    for (size_t i = 0; i < n; i++) {
        out[1 + i] = tmp[n - 1 - i];
    }
    return n + 1;
}

/* ---- Opening ----------------------------------------------------------------- */

static beam_errcode fail(beam_error *err, beam_errcode code, const char *chunk, uint64_t a) {
    memset(err, 0, sizeof *err);
    err->code = code;
    if (chunk) {
        memcpy(err->chunk, chunk, 4);
        err->has_chunk = 1;
    }
    err->a = a;
    return code;
}

/* The version of the Type chunk OTP 25's loader reads; others are ignored. */
#define TYPES_VERSION 1

static beam_errcode open_lambdas(const beam_module *m, code_module *c, beam_error *err) {
    const beam_chunk *ch = beam_find_chunk(m, "FunT");
    if (!ch) {
        return BEAM_OK;
    }
    const uint8_t *p = m->data + ch->offset;
    if (ch->size < 4 || (uint64_t)rd_u32(p) * 24 != (uint64_t)ch->size - 4) {
        return fail(err, ch->size < 4 ? BEAM_E_TRUNCATED : BEAM_E_BAD_CHUNK, "FunT", 0);
    }
    c->nlambdas = rd_u32(p);
    c->lambdas = p + 4;
    for (uint32_t i = 0; i < c->nlambdas; i++) {
        const uint8_t *e = c->lambdas + 24 * (size_t)i;
        uint32_t atom = rd_u32(e), arity = rd_u32(e + 4), index = rd_u32(e + 12),
                 nfree = rd_u32(e + 16);
        /* The label is checked against the code's functions by code_walk. */
        if (atom == 0 || atom > m->natoms || arity > CODE_MAX_ARITY || nfree > arity ||
            index >= c->nlambdas) {
            return fail(err, BEAM_E_BAD_CHUNK, "FunT", 0);
        }
    }
    return BEAM_OK;
}

/* Line: version (0: read; others: ignored by the loader), flags, the
 * number of line instructions, of items and of file names; the items as
 * compact terms (i: a line, a: switch to a file name), then the names. */
static beam_errcode open_lines(const beam_module *m, code_module *c, beam_error *err) {
    const beam_chunk *ch = beam_find_chunk(m, "Line");
    if (!ch) {
        return BEAM_OK;
    }
    const uint8_t *p = m->data + ch->offset;
    if (ch->size < 4) {
        return fail(err, BEAM_E_TRUNCATED, "Line", 0);
    }
    if (rd_u32(p) != 0) {
        return BEAM_OK;
    }
    if (ch->size < 20) {
        return fail(err, BEAM_E_TRUNCATED, "Line", 0);
    }
    uint32_t instrs = rd_u32(p + 8), items = rd_u32(p + 12), names = rd_u32(p + 16);
    /* Every item takes a byte, every name two, every line instruction two
     * bytes of code. */
    if (items > ch->size - 20 || names > (ch->size - 20) / 2 || instrs > c->size) {
        return fail(err, BEAM_E_BAD_CHUNK, "Line", 0);
    }
    reader r = {p, 20, ch->size};
    uint32_t n = 0;
    while (n < items) {
        uint8_t tag, big;
        uint64_t v;
        if (read_plain(&r, &tag, &v, &big) != 0 || big) {
            return fail(err, BEAM_E_BAD_CHUNK, "Line", 0);
        }
        if (tag == CODE_A) {
            if (v > names) {
                return fail(err, BEAM_E_BAD_CHUNK, "Line", 0);
            }
        } else if (tag == CODE_I && (int64_t)v >= 0) {
            n++;
        } else {
            return fail(err, BEAM_E_BAD_CHUNK, "Line", 0);
        }
    }
    c->line_items = p + 20;
    c->line_items_size = r.pos - 20;
    for (uint32_t i = 0; i < names; i++) {
        if (ch->size - r.pos < 2) {
            return fail(err, BEAM_E_BAD_CHUNK, "Line", 0);
        }
        uint16_t len = rd_u16(p + r.pos);
        if (len > 0x7FFF || len > ch->size - r.pos - 2 || utf8_count(p + r.pos + 2, len) < 0) {
            return fail(err, BEAM_E_BAD_CHUNK, "Line", 0);
        }
        r.pos += 2 + (uint32_t)len;
    }
    if (r.pos != ch->size) {
        return fail(err, BEAM_E_BAD_CHUNK, "Line", 0);
    }
    c->has_lines = 1;
    c->nline_items = items;
    c->line_instrs = instrs;
    c->nline_names = names;
    return BEAM_OK;
}

static beam_errcode open_types(const beam_module *m, code_module *c, beam_error *err) {
    const beam_chunk *ch = beam_find_chunk(m, "Type");
    if (!ch) {
        return BEAM_OK;
    }
    const uint8_t *p = m->data + ch->offset;
    if (ch->size < 4) {
        return fail(err, BEAM_E_TRUNCATED, "Type", 0);
    }
    if (rd_u32(p) != TYPES_VERSION) {
        return BEAM_OK;
    }
    if (ch->size < 8) {
        return fail(err, BEAM_E_TRUNCATED, "Type", 0);
    }
    uint32_t n = rd_u32(p + 4);
    /* Each entry takes at least two bytes (the loader reads their details). */
    if (n == 0 || n > (ch->size - 8) / 2) {
        return fail(err, BEAM_E_BAD_CHUNK, "Type", 0);
    }
    c->typed = 1;
    c->ntypes = n;
    return BEAM_OK;
}

beam_errcode code_open(const beam_module *m, uint32_t nliterals, uint32_t max_opcode,
                       code_module *c, beam_error *err) {
    memset(c, 0, sizeof *c);
    const beam_chunk *ch = beam_find_chunk(m, "Code");
    if (!ch) {
        return fail(err, BEAM_E_MISSING_CHUNK, "Code", 0);
    }
    const uint8_t *p = m->data + ch->offset;
    if (ch->size < 20) {
        return fail(err, BEAM_E_TRUNCATED, "Code", 0);
    }
    uint32_t hdr = rd_u32(p);
    if (hdr < 16 || hdr > ch->size - 4) {
        return fail(err, BEAM_E_BAD_CHUNK, "Code", 0);
    }
    uint32_t iset = rd_u32(p + 4);
    if (iset != BEAM_FORMAT_NUMBER) {
        return fail(err, BEAM_E_INSTRUCTION_SET, NULL, iset);
    }
    c->chunk = p;
    c->size = ch->size;
    c->start = 4 + hdr;
    c->max_opcode = rd_u32(p + 8);
    c->label_count = rd_u32(p + 12);
    c->function_count = rd_u32(p + 16);
    if (c->max_opcode > max_opcode) {
        return fail(err, BEAM_E_MAX_OPCODE, NULL, c->max_opcode);
    }
    /* A label takes two bytes of code at least, a function five: the
     * loader allocates by these counts before it reads the code. */
    uint32_t code_bytes = c->size - c->start;
    if (c->label_count == 0 || c->label_count - 1 > code_bytes / 2 ||
        c->function_count > code_bytes / 5) {
        return fail(err, BEAM_E_BAD_CHUNK, "Code", 0);
    }
    c->natoms = (uint32_t)m->natoms;
    c->nimports = m->nimports;
    c->imports = m->imports;
    c->nliterals = nliterals;
    const beam_chunk *s = beam_find_chunk(m, "StrT");
    c->strings = s ? s->size : 0;
    beam_errcode rc;
    if ((rc = open_lambdas(m, c, err)) != BEAM_OK || (rc = open_lines(m, c, err)) != BEAM_OK ||
        (rc = open_types(m, c, err)) != BEAM_OK) {
        return rc;
    }
    return BEAM_OK;
}

/* ---- Walking ------------------------------------------------------------------ */

/* Label flags. */
#define LBL_DEFINED 1
#define LBL_ENTRY 2 /* the label after a func_info */
#define LBL_USED 4

typedef struct {
    const code_module *c;
    reader r;
    beam_error *err;
    uint8_t *labels;    /* LBL_* by label */
    uint64_t *entry_fa; /* by entry label: the function's atom << 8 | arity */
    uint64_t *calls;    /* local call targets: label << 8 | arity */
    size_t ncalls, cap_calls;
    code_arg *args;
    size_t cap_args;
    uint32_t functions; /* func_info instructions seen */
    uint32_t lines;     /* line instructions seen */
} walker;

static beam_errcode bad_at(walker *w, uint32_t off) {
    return fail(w->err, BEAM_E_BAD_CODE, NULL, off);
}

static int grow_args(walker *w, size_t need) {
    if (need <= w->cap_args) {
        return 0;
    }
    size_t cap = w->cap_args ? w->cap_args : 16;
    while (cap < need) {
        cap *= 2;
    }
    code_arg *a = realloc(w->args, cap * sizeof *a);
    if (!a) {
        return -1;
    }
    w->args = a;
    w->cap_args = cap;
    return 0;
}

/* One operand, extended ones decoded (a list's count only). */
static int read_arg(walker *w, code_arg *a) {
    reader *r = &w->r;
    a->off = r->pos;
    a->reg = 0;
    a->type = 0;
    uint8_t tag, big;
    uint64_t v;
    if (read_plain(r, &tag, &v, &big) != 0) {
        return -1;
    }
    a->big = big;
    a->val = v;
    a->tag = tag;
    if (tag == 7) {
        /* Extended: the sub-tag in one byte, as the compiler writes it. */
        if (r->pos - a->off != 1) {
            return -1;
        }
        uint8_t t2, b2;
        uint64_t v2;
        switch (v) {
        case 1: /* list */
            if (read_plain(r, &t2, &v2, &b2) != 0 || t2 != CODE_U) {
                return -1;
            }
            a->tag = CODE_LIST;
            a->val = v2;
            break;
        case 2: /* float register */
            if (read_plain(r, &t2, &v2, &b2) != 0 || t2 != CODE_U || v2 >= CODE_MAX_REG) {
                return -1;
            }
            a->tag = CODE_FR;
            a->val = v2;
            break;
        case 3: { /* allocation list: up to three (kind, count) pairs */
            if (read_plain(r, &t2, &v2, &b2) != 0 || t2 != CODE_U || v2 > 3) {
                return -1;
            }
            uint64_t words = 0, n = v2;
            for (uint64_t i = 0; i < n; i++) {
                uint64_t kind, num;
                if (read_plain(r, &t2, &kind, &b2) != 0 || t2 != CODE_U || kind > 2 ||
                    read_plain(r, &t2, &num, &b2) != 0 || t2 != CODE_U || num > 0x7FFFFFF) {
                    return -1;
                }
                /* Words, floats (3 words each), funs (up to 10 words each). */
                words += num * (kind == 0 ? 1 : kind == 1 ? 3 : 10);
            }
            if (words > 0x7FFFFFFF) {
                return -1;
            }
            a->tag = CODE_ALLOC;
            a->val = words;
            break;
        }
        case 4: /* literal */
            if (read_plain(r, &t2, &v2, &b2) != 0 || t2 != CODE_U || v2 >= w->c->nliterals) {
                return -1;
            }
            a->tag = CODE_LIT;
            a->val = v2;
            break;
        case 5: { /* register with a type */
            uint64_t ty;
            if (read_plain(r, &t2, &v2, &b2) != 0 || (t2 != CODE_X && t2 != CODE_Y) ||
                v2 >= CODE_MAX_REG || read_plain(r, &tag, &ty, &b2) != 0 || tag != CODE_U ||
                (w->c->typed && ty >= w->c->ntypes)) {
                return -1;
            }
            a->tag = CODE_TREG;
            a->reg = t2;
            a->val = v2;
            a->type = (uint32_t)ty;
            break;
        }
        default:
            return -1;
        }
    }
    a->len = r->pos - a->off;
    return 0;
}

static int use_label(walker *w, uint64_t l, int allow_zero) {
    if (l == 0) {
        return allow_zero ? 0 : -1;
    }
    if (l >= w->c->label_count) {
        return -1;
    }
    w->labels[l] |= LBL_USED;
    return 0;
}

static int is_src(const code_arg *a) {
    return a->tag == CODE_X || a->tag == CODE_Y || a->tag == CODE_A || a->tag == CODE_I ||
           a->tag == CODE_LIT || a->tag == CODE_TREG;
}

/* Does operand `a` fit kind `k`? Labels are marked used. */
static int check_kind(walker *w, char k, const code_arg *a) {
    const code_module *c = w->c;
    switch (k) {
    case 'u':
        return a->tag == CODE_U ? 0 : -1;
    case 'n':
        return a->tag == CODE_U && a->val <= CODE_MAX_REG ? 0 : -1;
    case 'r':
        return a->tag == CODE_U && a->val <= CODE_MAX_ARITY ? 0 : -1;
    case 'e':
        return a->tag == CODE_U && a->val < c->nimports ? 0 : -1;
    case 'l':
        return a->tag == CODE_U && a->val < c->nlambdas ? 0 : -1;
    case 'i':
        return a->tag == CODE_U && (!c->has_lines || a->val <= c->nline_items) ? 0 : -1;
    case 'L':
    case 'F':
        return a->tag == CODE_F ? use_label(w, a->val, k == 'F') : -1;
    case 'm':
        if (a->tag == CODE_F) {
            return use_label(w, a->val, 1);
        }
        return a->tag == CODE_A && a->val >= 1 && a->val <= c->natoms ? 0 : -1;
    case 's':
        if (!is_src(a)) {
            return -1;
        }
        break;
    case 'z':
        if (a->tag == CODE_U) {
            return 0;
        }
        if (!is_src(a)) {
            return -1;
        }
        break;
    case 't':
        if (a->tag == CODE_U) {
            return a->val < c->nlambdas ? 0 : -1;
        }
        return a->tag == CODE_A && a->val >= 1 && a->val <= c->natoms ? 0 : -1;
    case 'k':
        if (a->tag != CODE_I && a->tag != CODE_A && a->tag != CODE_LIT) {
            return -1;
        }
        break;
    case 'd':
        if (a->tag != CODE_X && a->tag != CODE_Y) {
            return -1;
        }
        break;
    case 'S':
        if (a->tag != CODE_X && a->tag != CODE_Y && a->tag != CODE_TREG) {
            return -1;
        }
        break;
    case 'Y':
        return a->tag == CODE_Y && a->val < CODE_MAX_REG ? 0 : -1;
    case 'a':
        return a->tag == CODE_A && a->val >= 1 && a->val <= c->natoms ? 0 : -1;
    case 'R':
        return a->tag == CODE_FR ? 0 : -1;
    case 'q':
        if (a->tag == CODE_FR) {
            return 0;
        }
        if (!is_src(a)) {
            return -1;
        }
        break;
    case 'w':
        if (a->tag == CODE_FR) {
            return 0;
        }
        if (a->tag != CODE_X && a->tag != CODE_Y) {
            return -1;
        }
        break;
    case 'h':
        return a->tag == CODE_U || a->tag == CODE_ALLOC ? 0 : -1;
    default:
        return -1;
    }
    /* Sources and destinations: registers in range, atoms in the table. */
    if ((a->tag == CODE_X || a->tag == CODE_Y) && a->val >= CODE_MAX_REG) {
        return -1;
    }
    if (a->tag == CODE_A && a->val > c->natoms) {
        return -1;
    }
    return 0;
}

static uint32_t import_arity(const code_module *c, uint64_t i) {
    return rd_u32(c->imports + 12 * (size_t)i + 8);
}

static int add_call(walker *w, uint64_t label, uint64_t arity) {
    if (w->ncalls == w->cap_calls) {
        size_t cap = w->cap_calls ? 2 * w->cap_calls : 64;
        uint64_t *n = realloc(w->calls, cap * sizeof *n);
        if (!n) {
            return -1;
        }
        w->calls = n;
        w->cap_calls = cap;
    }
    w->calls[w->ncalls++] = label << 8 | arity;
    return 0;
}

/* Checks of one instruction beyond its operands' kinds: 0, or the offset of
 * the bad operand + 1 (-1: out of memory). */
static long check_instr(walker *w, uint8_t op, const code_arg *a, uint32_t nargs) {
    const code_module *c = w->c;
    switch (op) {
    case CODE_OP_CALL:
    case CODE_OP_CALL_LAST:
    case CODE_OP_CALL_ONLY:
        return add_call(w, a[1].val, a[0].val) ? -1 : 0;
    case CODE_OP_CALL_EXT:
    case CODE_OP_CALL_EXT_LAST:
    case CODE_OP_CALL_EXT_ONLY:
        return import_arity(c, a[1].val) == a[0].val ? 0 : (long)a[0].off + 1;
    case 92: /* bs_put_string Length Offset */
        return a[0].val + a[1].val <= c->strings ? 0 : (long)a[1].off + 1;
    case 132: /* bs_match_string Fail Ctx Bits Offset */
        return (a[2].val + 7) / 8 + a[3].val <= c->strings ? 0 : (long)a[3].off + 1;
    case 171: { /* make_fun3 Lambda Dst [FreeVars] */
        const uint8_t *e = c->lambdas + 24 * (size_t)a[0].val;
        return rd_u32(e + 16) == nargs - 3 ? 0 : (long)a[2].off + 1;
    }
    default:
        return 0;
    }
}

/* What only the whole code tells: the header's counts, every label used is
 * defined, local calls reach function entries of their arity, and the
 * exports and lambdas name functions of the code. */
static beam_errcode check_whole(walker *w, const beam_module *m) {
    const code_module *c = w->c;
    if (w->functions != c->function_count || (c->has_lines && c->line_instrs > w->lines)) {
        return fail(w->err, BEAM_E_BAD_CHUNK, "Code", 0);
    }
    for (uint32_t l = 1; l < c->label_count; l++) {
        if ((w->labels[l] & (LBL_USED | LBL_DEFINED)) == LBL_USED) {
            return fail(w->err, BEAM_E_BAD_CHUNK, "Code", 0);
        }
    }
    for (size_t i = 0; i < w->ncalls; i++) {
        uint64_t l = w->calls[i] >> 8, arity = w->calls[i] & 0xFF;
        if (!(w->labels[l] & LBL_ENTRY) || (w->entry_fa[l] & 0xFF) != arity) {
            return fail(w->err, BEAM_E_BAD_CHUNK, "Code", 0);
        }
    }
    for (uint32_t i = 0; i < m->nexports; i++) {
        uint32_t e[3];
        beam_table_entry(m->exports, i, e);
        if (e[2] >= c->label_count || !(w->labels[e[2]] & LBL_ENTRY) ||
            w->entry_fa[e[2]] != ((uint64_t)e[0] << 8 | e[1]) || e[1] > CODE_MAX_ARITY) {
            return fail(w->err, BEAM_E_BAD_CHUNK, "ExpT", 0);
        }
    }
    for (uint32_t i = 0; i < c->nlambdas; i++) {
        const uint8_t *e = c->lambdas + 24 * (size_t)i;
        uint32_t arity = rd_u32(e + 4), label = rd_u32(e + 8);
        if (label >= c->label_count || !(w->labels[label] & LBL_ENTRY) ||
            (w->entry_fa[label] & 0xFF) != arity) {
            return fail(w->err, BEAM_E_BAD_CHUNK, "FunT", 0);
        }
    }
    return BEAM_OK;
}

beam_errcode code_walk(const code_module *c, uint32_t max_opcode, const beam_module *m,
                       code_visit_fn visit, void *ctx, beam_error *err) {
    walker w = {c, {c->chunk, c->start, c->size}, err, NULL, NULL, NULL, 0, 0, NULL, 0, 0, 0};
    beam_errcode rc = BEAM_OK;
    memset(err, 0, sizeof *err);
    w.labels = calloc(c->label_count, 1);
    w.entry_fa = calloc(c->label_count, sizeof *w.entry_fa);
    if (!w.labels || !w.entry_fa || grow_args(&w, 16)) {
        rc = fail(err, BEAM_E_NOMEM, NULL, 0);
        goto out;
    }
    /* The last two opcodes, for the function structure the loader expects:
     * label, [line,] func_info, label. */
    uint8_t prev = 0, prev2 = 0;
    int seen_func = 0, want_entry = 0, ended = 0;
    uint64_t fn_fa = 0;
    while (w.r.pos < c->size) {
        uint32_t at = w.r.pos;
        uint8_t op = c->chunk[at];
        if (ended) {
            rc = bad_at(&w, at); /* nothing after int_code_end */
            goto out;
        }
        if (op == 0) {
            rc = bad_at(&w, at);
            goto out;
        }
        if (op > max_opcode || code_arity(op) < 0) {
            rc = fail(err, BEAM_E_MAX_OPCODE, NULL, op);
            goto out;
        }
        w.r.pos++;
        const char *sig = ops[op].sig;
        uint32_t nfixed = (uint32_t)strlen(sig), nargs = nfixed;
        for (uint32_t i = 0; i < nfixed; i++) {
            code_arg *a = &w.args[i];
            uint32_t off = w.r.pos;
            if (read_arg(&w, a) != 0) {
                rc = bad_at(&w, off);
                goto out;
            }
            if (sig[i] == '*') {
                if (a->tag != CODE_LIST) {
                    rc = bad_at(&w, off);
                    goto out;
                }
                continue;
            }
            if (a->tag == CODE_LIST || check_kind(&w, sig[i], a) != 0) {
                rc = bad_at(&w, off);
                goto out;
            }
        }
        if (nfixed > 0 && sig[nfixed - 1] == '*') {
            const code_arg *l = &w.args[nfixed - 1];
            uint64_t n = l->val;
            const op_info *info = &ops[op];
            size_t plen = strlen(info->elems);
            int ok = n <= c->size - w.r.pos; /* every element takes a byte */
            switch (info->rule) {
            case LR_NONEMPTY:
                ok = ok && n >= 1;
                break;
            case LR_PAIRS:
                ok = ok && n % 2 == 0;
                break;
            case LR_PAIRS_NONEMPTY:
                ok = ok && n % 2 == 0 && n >= 2;
                break;
            case LR_SIX:
                ok = ok && n % 6 == 0 && n >= 6;
                break;
            default:
                break;
            }
            if (!ok) {
                rc = bad_at(&w, l->off);
                goto out;
            }
            if (grow_args(&w, nfixed + (size_t)n)) {
                rc = fail(err, BEAM_E_NOMEM, NULL, 0);
                goto out;
            }
            for (uint64_t i = 0; i < n; i++) {
                code_arg *a = &w.args[nfixed + i];
                uint32_t off = w.r.pos;
                if (read_arg(&w, a) != 0 || a->tag == CODE_LIST ||
                    check_kind(&w, info->elems[i % plen], a) != 0) {
                    rc = bad_at(&w, off);
                    goto out;
                }
            }
            nargs = nfixed + (uint32_t)n;
        }
        const code_arg *a = w.args;
        long bad = check_instr(&w, op, a, nargs);
        if (bad < 0) {
            rc = fail(err, BEAM_E_NOMEM, NULL, 0);
            goto out;
        }
        if (bad > 0) {
            rc = bad_at(&w, (uint32_t)(bad - 1));
            goto out;
        }
        /* Structure. */
        if (want_entry && op != CODE_OP_LABEL) {
            rc = bad_at(&w, at);
            goto out;
        }
        switch (op) {
        case CODE_OP_LABEL: {
            uint64_t l = a[0].val;
            if (l == 0 || l >= c->label_count || (w.labels[l] & LBL_DEFINED)) {
                rc = bad_at(&w, a[0].off);
                goto out;
            }
            w.labels[l] |= LBL_DEFINED;
            if (want_entry) {
                w.labels[l] |= LBL_ENTRY;
                w.entry_fa[l] = fn_fa;
                want_entry = 0;
            }
            break;
        }
        case CODE_OP_FUNC_INFO:
            if (!(prev == CODE_OP_LABEL || (prev == CODE_OP_LINE && prev2 == CODE_OP_LABEL)) ||
                w.functions == c->function_count || a[0].val != 1) {
                rc = bad_at(&w, at);
                goto out;
            }
            w.functions++;
            want_entry = 1;
            seen_func = 1;
            fn_fa = a[1].val << 8 | a[2].val;
            break;
        case CODE_OP_LINE:
            w.lines++;
            break;
        case CODE_OP_INT_CODE_END:
            ended = 1;
            break;
        default:
            if (!seen_func) {
                rc = bad_at(&w, at);
                goto out;
            }
            break;
        }
        prev2 = prev;
        prev = op;
        if (visit) {
            code_instr ins = {op, at, w.r.pos - at, nargs, w.args};
            if (visit(ctx, &ins)) {
                rc = fail(err, BEAM_E_STOPPED, NULL, 0);
                goto out;
            }
        }
    }
    if (!ended) {
        rc = bad_at(&w, c->size);
        goto out;
    }
    rc = check_whole(&w, m);
out:
    free(w.labels);
    free(w.entry_fa);
    free(w.calls);
    free(w.args);
    return rc;
}

int code_line_table(const code_module *c, uint32_t **lines) {
    *lines = calloc((size_t)c->nline_items + 1, sizeof **lines);
    if (!*lines) {
        return -1;
    }
    reader r = {c->line_items, 0, c->line_items_size};
    uint32_t n = 0;
    while (c->has_lines && n < c->nline_items) {
        uint8_t tag, big;
        uint64_t v;
        if (read_plain(&r, &tag, &v, &big) != 0) {
            break; /* cannot happen: code_open read them */
        }
        if (tag == CODE_I) {
            (*lines)[++n] = v > UINT32_MAX ? 0 : (uint32_t)v;
        }
    }
    return 0;
}
