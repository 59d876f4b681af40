#include "sites.h"

#include <stdlib.h>
#include <string.h>

#include "code.h"

typedef struct {
    code_sites *out;
    const uint32_t *lines; /* line number by line operand */
    uint32_t nline_items;
    const uint32_t *lit_funs; /* funs of literal i: lit_funs[i] .. lit_funs[i + 1] - 1 */
    uint8_t *lit_used;
    uint32_t nliterals;
    uint32_t fn_atom, fn_arity, line;
    int nomem;
} sites_ctx;

static int add_site(sites_ctx *s, code_site site) {
    code_sites *o = s->out;
    if (o->nsites == o->cap) {
        size_t cap = o->cap ? 2 * o->cap : 64;
        code_site *n = realloc(o->sites, cap * sizeof *n);
        if (!n) {
            s->nomem = 1;
            return -1;
        }
        o->sites = n;
        o->cap = cap;
    }
    o->sites[o->nsites++] = site;
    return 0;
}

static int collect_fun(void *ctx, const etf_atom *mod, const etf_atom *fun, unsigned arity) {
    code_sites *o = ctx;
    if (o->nfuns == o->cap_funs) {
        size_t cap = o->cap_funs ? 2 * o->cap_funs : 16;
        code_fun *n = realloc(o->funs, cap * sizeof *n);
        if (!n) {
            return 1;
        }
        o->funs = n;
        o->cap_funs = cap;
    }
    o->funs[o->nfuns++] = (code_fun){*mod, *fun, arity, 0};
    return 0;
}

static int visit(void *ctx, const code_instr *ins) {
    sites_ctx *s = ctx;
    const code_arg *a = ins->args;
    code_site site = {0, s->fn_atom, s->fn_arity, s->line, 0, 0, 0};
    int call = 1;
    switch (ins->op) {
    case CODE_OP_FUNC_INFO:
        s->fn_atom = (uint32_t)a[1].val;
        s->fn_arity = (uint32_t)a[2].val;
        return 0;
    case CODE_OP_LINE:
        s->line = a[0].val <= s->nline_items ? s->lines[a[0].val] : 0;
        return 0;
    case CODE_OP_CALL_EXT:
    case CODE_OP_CALL_EXT_LAST:
    case CODE_OP_CALL_EXT_ONLY:
        site.kind = SITE_CALL;
        site.import = (uint32_t)a[1].val;
        break;
    case CODE_OP_BIF0:
        site.kind = SITE_BIF;
        site.import = (uint32_t)a[0].val;
        break;
    case CODE_OP_BIF1:
    case CODE_OP_BIF2:
        site.kind = SITE_BIF;
        site.import = (uint32_t)a[1].val;
        break;
    case CODE_OP_GC_BIF1:
    case CODE_OP_GC_BIF2:
    case CODE_OP_GC_BIF3:
        site.kind = SITE_BIF;
        site.import = (uint32_t)a[2].val;
        break;
    case CODE_OP_APPLY:
    case CODE_OP_APPLY_LAST:
        site.kind = SITE_APPLY;
        site.arity = (uint32_t)a[0].val;
        break;
    case CODE_OP_CALL_FUN:
        site.kind = SITE_CALL_FUN;
        site.arity = (uint32_t)a[0].val;
        break;
    case CODE_OP_CALL_FUN2:
        site.kind = SITE_CALL_FUN;
        site.arity = (uint32_t)a[1].val;
        break;
    case CODE_OP_SEND:
        site.kind = SITE_SEND;
        break;
    default:
        call = 0;
        break;
    }
    if (call && add_site(s, site)) {
        return -1;
    }
    /* Operands that refer to a literal holding external funs. */
    for (uint32_t i = 0; i < ins->nargs; i++) {
        if (a[i].tag != CODE_LIT) {
            continue;
        }
        uint32_t lit = (uint32_t)a[i].val;
        s->lit_used[lit] = 1;
        for (uint32_t f = s->lit_funs[lit]; f < s->lit_funs[lit + 1]; f++) {
            code_site fs = {SITE_FUN, s->fn_atom, s->fn_arity, s->line, 0, s->out->funs[f].arity,
                            f};
            if (add_site(s, fs)) {
                return -1;
            }
        }
    }
    return 0;
}

beam_errcode code_call_sites(const beam_module *m, uint32_t max_opcode, const beam_literals *lits,
                             code_sites *out, beam_error *err) {
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    code_module c;
    beam_errcode rc = code_open(m, lits->count, max_opcode, &c, err);
    if (rc != BEAM_OK) {
        return rc;
    }
    sites_ctx s = {out, NULL, c.nline_items, NULL, NULL, lits->count, 0, 0, 0, 0};
    uint32_t *lines = NULL, *lit_funs = malloc(((size_t)lits->count + 1) * sizeof *lit_funs);
    uint8_t *used = calloc((size_t)lits->count + 1, 1);
    if (!lit_funs || !used || code_line_table(&c, &lines)) {
        rc = BEAM_E_NOMEM;
        goto out;
    }
    /* The external funs of each literal, in literal order. */
    etf_visitor v = {NULL, collect_fun, out, NULL};
    size_t pos = 0, end;
    const uint8_t *term;
    uint32_t len, i = 0;
    for (; beam_literals_next(lits, &pos, &term, &len); i++) {
        lit_funs[i] = (uint32_t)out->nfuns;
        size_t before = out->nfuns;
        etf_status st = len < 1 || term[0] != ETF_VERSION
                            ? ETF_E_VERSION
                            : etf_walk_term(term + 1, len - 1, &end, &v);
        if (st == ETF_E_CALLBACK) {
            rc = BEAM_E_NOMEM;
            goto out;
        }
        if (st != ETF_OK || end != len - 1) {
            err->code = BEAM_E_BAD_LITERAL;
            err->a = i;
            rc = BEAM_E_BAD_LITERAL;
            goto out;
        }
        for (size_t f = before; f < out->nfuns; f++) {
            out->funs[f].literal = i;
        }
    }
    lit_funs[i] = (uint32_t)out->nfuns;
    s.lines = lines;
    s.lit_funs = lit_funs;
    s.lit_used = used;
    rc = code_walk(&c, max_opcode, m, visit, &s, err);
    if (rc == BEAM_E_STOPPED) {
        rc = BEAM_E_NOMEM;
        goto out;
    }
    if (rc != BEAM_OK) {
        goto out;
    }
    /* Funs of literals no instruction refers to (a literal the code does
     * not use, or one only the loader's own tables hold). */
    for (uint32_t l = 0; l < lits->count; l++) {
        for (uint32_t f = lit_funs[l]; !used[l] && f < lit_funs[l + 1]; f++) {
            code_site site = {SITE_FUN, 0, 0, 0, 0, out->funs[f].arity, f};
            if (add_site(&s, site)) {
                rc = BEAM_E_NOMEM;
                goto out;
            }
        }
    }
out:
    if (rc == BEAM_E_NOMEM) {
        memset(err, 0, sizeof *err);
        err->code = BEAM_E_NOMEM;
    }
    if (rc != BEAM_OK) {
        code_sites_free(out);
    }
    free(lines);
    free(lit_funs);
    free(used);
    return rc;
}

void code_sites_free(code_sites *s) {
    free(s->sites);
    free(s->funs);
    memset(s, 0, sizeof *s);
}
