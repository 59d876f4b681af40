#include "rewrite.h"

#include <stdlib.h>
#include <string.h>

#include "bytes.h"

/* Frame state of a label, as the instructions that reach it say. */
#define FS_UNKNOWN 0
#define FS_NONE 1
#define FS_FRAME 2

typedef struct {
    const code_module *c;
    code_rewrite_spec *r;
    buf_t *out;
    uint32_t index[3][256]; /* import index by guard_fn and arity; 0: none yet */
    uint8_t *labels;        /* FS_* by label */
    int frame;              /* the current instruction runs with a stack frame */
    int reachable;          /* control can reach the current instruction */
    int pending_send;       /* a frameless send waits for the next instruction */
    uint8_t prev;           /* the previous opcode */
    uint32_t max_op;        /* the highest opcode written */
    int identity_fn;        /* in module_info/0,1 or __info__/1: no repointing */
    const beam_module *m;
    int nomem;
    int stopped; /* the repoint callback failed */
} rw_ctx;

static int put(rw_ctx *x, const void *d, size_t n) {
    if (buf_put(x->out, d, n)) {
        x->nomem = 1;
        return -1;
    }
    return 0;
}

/* An instruction under construction: a few small operands, written out
 * with one buf_put. */
typedef struct {
    uint8_t b[64];
    size_t n;
} ibuf;

static void ib_op(rw_ctx *x, ibuf *i, uint8_t o) {
    if (o > x->max_op) {
        x->max_op = o;
    }
    i->b[i->n++] = o;
}

static void ib_arg(ibuf *i, uint8_t tag, uint64_t v) {
    i->n += code_encode(tag, v, i->b + i->n);
}

static int ib_put(rw_ctx *x, const ibuf *i) {
    return put(x, i->b, i->n);
}

/* call_ext Arity, Import (or another call of that shape). */
static void ib_call(rw_ctx *x, ibuf *i, uint8_t o, uint32_t arity, uint32_t imp) {
    ib_op(x, i, o);
    ib_arg(i, CODE_U, arity);
    ib_arg(i, CODE_U, imp);
}

/* The import of Guard:fn/arity into *imp, given an index on first use;
 * -1 when the arity is over 255 (r->too_large_* set; `orig` is the
 * instruction's own arity). */
static int guard_import_index(rw_ctx *x, guard_fn fn, uint32_t arity, uint32_t orig,
                              uint32_t *imp) {
    if (arity > CODE_MAX_ARITY) {
        x->r->too_large_fn = (int)fn;
        x->r->too_large_arity = orig;
        return -1;
    }
    if (!x->index[fn][arity]) {
        code_rewrite_spec *r = x->r;
        r->imports[r->nimports] = (guard_import){(uint8_t)fn, (uint8_t)arity};
        x->index[fn][arity] = r->first_import + (uint32_t)r->nimports + 1;
        r->nimports++;
    }
    *imp = x->index[fn][arity] - 1;
    return 0;
}

static int flush_send(rw_ctx *x, int then_return) {
    x->pending_send = 0;
    uint32_t imp;
    ibuf i = {{0}, 0};
    guard_import_index(x, GUARD_FN_SEND, 2, 0, &imp);
    if (then_return) {
        ib_call(x, &i, CODE_OP_CALL_EXT_ONLY, 2, imp);
    } else {
        ib_op(x, &i, CODE_OP_ALLOCATE);
        ib_arg(&i, CODE_U, 0);
        ib_arg(&i, CODE_U, 2);
        ib_call(x, &i, CODE_OP_CALL_EXT, 2, imp);
        ib_op(x, &i, CODE_OP_DEALLOCATE);
        ib_arg(&i, CODE_U, 0);
    }
    return ib_put(x, &i);
}

static int is_terminal(uint8_t o) {
    switch (o) {
    case CODE_OP_FUNC_INFO:
    case CODE_OP_INT_CODE_END:
    case CODE_OP_CALL_LAST:
    case CODE_OP_CALL_ONLY:
    case CODE_OP_CALL_EXT_LAST:
    case CODE_OP_CALL_EXT_ONLY:
    case CODE_OP_RETURN:
    case CODE_OP_JUMP:
    case CODE_OP_BADMATCH:
    case CODE_OP_IF_END:
    case CODE_OP_CASE_END:
    case CODE_OP_TRY_CASE_END:
    case CODE_OP_RAISE:
    case CODE_OP_APPLY_LAST:
    case CODE_OP_BADRECORD:
    case 24: /* loop_rec_end */
    case 25: /* wait */
    case 59: /* select_val */
    case 60: /* select_tuple_arity */
        return 1;
    default:
        return 0;
    }
}

/* Follows the stack frame through the instruction (before it runs). */
static void frame_before(rw_ctx *x, const code_instr *ins) {
    const code_arg *a = ins->args;
    if (ins->op == CODE_OP_LABEL) {
        uint8_t *s = &x->labels[a[0].val];
        if (x->prev == CODE_OP_FUNC_INFO) {
            x->frame = 0; /* a function's entry */
        } else if (!x->reachable) {
            x->frame = *s != FS_NONE; /* unknown: not reached by any branch seen */
        }
        if (*s == FS_UNKNOWN) {
            *s = x->frame ? FS_FRAME : FS_NONE;
        }
        x->reachable = 1;
        return;
    }
    /* Branches carry the current frame to their labels (a local call's
     * label is another function's entry). */
    if (ins->op != CODE_OP_CALL && ins->op != CODE_OP_CALL_LAST && ins->op != CODE_OP_CALL_ONLY) {
        for (uint32_t i = 0; i < ins->nargs; i++) {
            if (a[i].tag == CODE_F && a[i].val > 0 && x->labels[a[i].val] == FS_UNKNOWN) {
                x->labels[a[i].val] = x->frame ? FS_FRAME : FS_NONE;
            }
        }
    }
}

static void frame_after(rw_ctx *x, uint8_t o) {
    switch (o) {
    case CODE_OP_ALLOCATE:
    case CODE_OP_ALLOCATE_HEAP:
    case CODE_OP_ALLOCATE_ZERO:
    case CODE_OP_ALLOCATE_HEAP_ZERO:
        x->frame = 1;
        break;
    case CODE_OP_DEALLOCATE:
        x->frame = 0;
        break;
    default:
        break;
    }
    if (is_terminal(o)) {
        x->reachable = 0;
    }
    x->prev = o;
}

static void mark_bif(rw_ctx *x, const code_instr *ins) {
    uint8_t *b = x->r->bif_imports;
    if (!b) {
        return;
    }
    switch (ins->op) {
    case CODE_OP_BIF0:
        b[ins->args[0].val] = 1;
        break;
    case CODE_OP_BIF1:
    case CODE_OP_BIF2:
        b[ins->args[1].val] = 1;
        break;
    case CODE_OP_GC_BIF1:
    case CODE_OP_GC_BIF2:
    case CODE_OP_GC_BIF3:
        b[ins->args[2].val] = 1;
        break;
    default:
        break;
    }
}

/* The rewrite of one instruction: 1 when written, 0 to copy it as it is,
 * -1 on error. */
static int rewrite(rw_ctx *x, const code_instr *ins) {
    const code_arg *a = ins->args;
    unsigned k = x->r->kinds;
    uint32_t imp, arity;
    ibuf i = {{0}, 0};
    switch (ins->op) {
    case CODE_OP_APPLY:
    case CODE_OP_APPLY_LAST:
        if (!(k & GUARD_APPLY)) {
            return 0;
        }
        arity = (uint32_t)a[0].val;
        if (guard_import_index(x, GUARD_FN_APPLY, arity + 2, arity, &imp)) {
            return -1;
        }
        if (ins->op == CODE_OP_APPLY) {
            ib_call(x, &i, CODE_OP_CALL_EXT, arity + 2, imp);
        } else {
            ib_call(x, &i, CODE_OP_CALL_EXT_LAST, arity + 2, imp);
            /* D, a u operand: at most 9 bytes. */
            if (a[1].len > sizeof i.b - i.n) {
                return -1;
            }
            memcpy(i.b + i.n, x->c->chunk + a[1].off, a[1].len);
            i.n += a[1].len;
        }
        break;
    case CODE_OP_CALL_FUN:
    case CODE_OP_CALL_FUN2: {
        if (!(k & GUARD_CALL_FUN)) {
            return 0;
        }
        int two = ins->op == CODE_OP_CALL_FUN2;
        arity = (uint32_t)a[two ? 1 : 0].val;
        if (guard_import_index(x, GUARD_FN_CALL_FUN, arity + 1, arity, &imp)) {
            return -1;
        }
        if (two) {
            const code_arg *fun = &a[2];
            int in_place = (fun->tag == CODE_X || (fun->tag == CODE_TREG && fun->reg == CODE_X)) &&
                           fun->val == arity;
            if (!in_place) {
                /* move Fun, x(Arity): Fun, a register (code.c's kind S), as it
                 * is encoded: at most 19 bytes. */
                if (fun->len > sizeof i.b - 24) {
                    return -1;
                }
                ib_op(x, &i, CODE_OP_MOVE);
                memcpy(i.b + i.n, x->c->chunk + fun->off, fun->len);
                i.n += fun->len;
                ib_arg(&i, CODE_X, arity);
            }
        }
        ib_call(x, &i, CODE_OP_CALL_EXT, arity + 1, imp);
        break;
    }
    case CODE_OP_SEND:
        if (!(k & GUARD_SEND)) {
            return 0;
        }
        if (!x->frame) {
            x->pending_send = 1; /* decided by the next instruction */
            return 1;
        }
        guard_import_index(x, GUARD_FN_SEND, 2, 0, &imp);
        ib_call(x, &i, CODE_OP_CALL_EXT, 2, imp);
        break;
    default:
        return 0;
    }
    return ib_put(x, &i) ? -1 : 1;
}

static int atom_named(const beam_module *m, uint64_t index, const char *name) {
    size_t n = strlen(name);
    return index >= 1 && index <= m->natoms && m->atoms[index - 1].len == n &&
           memcmp(m->atoms[index - 1].name, name, n) == 0;
}

/* The functions that answer with the module's own name. */
static int is_identity_fn(const beam_module *m, const code_arg *a) {
    return (atom_named(m, a[1].val, "module_info") && a[2].val <= 1) ||
           (atom_named(m, a[1].val, "__info__") && a[2].val == 1);
}

/* Copies an instruction, its atom operands repointed as the callback says
 * (operands are in the order of their offsets, a list's elements after
 * its count). */
static int copy_instr(rw_ctx *x, const code_instr *ins) {
    const uint8_t *base = x->c->chunk;
    if (ins->op == CODE_OP_FUNC_INFO) {
        x->identity_fn = is_identity_fn(x->m, ins->args);
    }
    if (!x->r->repoint || x->identity_fn || ins->op == CODE_OP_FUNC_INFO) {
        return put(x, base + ins->off, ins->len);
    }
    uint32_t from = ins->off;
    for (uint32_t i = 0; i < ins->nargs; i++) {
        const code_arg *a = &ins->args[i];
        uint32_t to = 0;
        if (a->tag != CODE_A || a->val == 0) {
            continue;
        }
        if (x->r->repoint(x->r->repoint_ctx, (uint32_t)a->val, &to)) {
            x->stopped = 1;
            return -1;
        }
        if (to == 0 || to == a->val) {
            continue;
        }
        uint8_t enc[9];
        size_t n = code_encode(CODE_A, to, enc);
        if (put(x, base + from, a->off - from) || put(x, enc, n)) {
            return -1;
        }
        from = a->off + a->len;
        x->r->repointed++;
    }
    return put(x, base + from, ins->off + ins->len - from);
}

static int visit(void *ctx, const code_instr *ins) {
    rw_ctx *x = ctx;
    mark_bif(x, ins);
    if (!x->r->kinds && !x->r->repoint) {
        return 0;
    }
    if (x->pending_send) {
        if (ins->op == CODE_OP_RETURN) {
            x->r->rewritten++;
            frame_after(x, ins->op);
            return flush_send(x, 1) ? -1 : 0;
        }
        x->r->rewritten++;
        if (flush_send(x, 0)) {
            return -1;
        }
    }
    frame_before(x, ins);
    int done = rewrite(x, ins);
    if (done < 0) {
        return -1;
    }
    if (done) {
        x->r->rewritten += ins->op != CODE_OP_SEND || !x->pending_send;
    } else {
        if (ins->op > x->max_op) {
            x->max_op = ins->op;
        }
        if (copy_instr(x, ins)) {
            return -1;
        }
    }
    frame_after(x, ins->op);
    return 0;
}

beam_errcode code_rewrite(const code_module *c, uint32_t max_opcode, const beam_module *m,
                          code_rewrite_spec *r, buf_t *out, beam_error *err) {
    rw_ctx *x = calloc(1, sizeof *x);
    beam_errcode rc;
    r->nimports = 0;
    r->rewritten = 0;
    r->repointed = 0;
    r->too_large_fn = -1;
    if (!x || !(x->labels = calloc(c->label_count, 1))) {
        free(x);
        memset(err, 0, sizeof *err);
        err->code = BEAM_E_NOMEM;
        return BEAM_E_NOMEM;
    }
    x->c = c;
    x->r = r;
    x->out = out;
    x->m = m;
    size_t start = out->len;
    int writes = r->kinds || r->repoint;
    if (writes && buf_put(out, c->chunk, c->start)) {
        x->nomem = 1;
        rc = BEAM_E_NOMEM;
        goto out;
    }
    rc = code_walk(c, max_opcode, m, visit, x, err);
    if (rc == BEAM_E_STOPPED && x->nomem) {
        rc = BEAM_E_NOMEM;
    }
    if (rc == BEAM_OK && writes && c->max_opcode < x->max_op) {
        wr_u32(out->data + start + 8, x->max_op);
    }
out:
    if (rc == BEAM_E_NOMEM) {
        memset(err, 0, sizeof *err);
        err->code = BEAM_E_NOMEM;
    }
    free(x->labels);
    free(x);
    return rc;
}
