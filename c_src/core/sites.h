/* Call sites of a BEAM's code: every static call target (imports called or
 * used as BIFs, external fun literals) and every dynamic call (apply,
 * call_fun, send), with the function and line it occurs in. Pure C. */
#ifndef SANDBOX_SITES_H
#define SANDBOX_SITES_H

#include <stddef.h>
#include <stdint.h>

#include "beam.h"
#include "etf.h"

typedef enum {
    SITE_CALL = 0, /* call_ext, call_ext_last, call_ext_only: `import` */
    SITE_BIF,      /* bif0..2, gc_bif1..3: `import` */
    SITE_FUN,      /* an external fun literal `fun M:F/A`: `fun` */
    SITE_APPLY,    /* apply, apply_last: `arity` */
    SITE_CALL_FUN, /* call_fun, call_fun2: `arity` */
    SITE_SEND      /* send */
} site_kind;

typedef struct {
    uint8_t kind;
    uint32_t fn_atom;  /* the caller's name (1-based atom index); 0: none (a fun
                        * literal no instruction refers to) */
    uint32_t fn_arity; /* the caller's arity */
    uint32_t line;     /* 0: unknown */
    uint32_t import;   /* SITE_CALL, SITE_BIF: the ImpT index */
    uint32_t arity;    /* SITE_APPLY, SITE_CALL_FUN: the instruction's arity */
    uint32_t fun;      /* SITE_FUN: the index in `funs` */
} code_site;

/* An external fun among the literals. Names point into the literal table. */
typedef struct {
    etf_atom mod, fun;
    unsigned arity;
    uint32_t literal;
} code_fun;

typedef struct {
    code_site *sites;
    size_t nsites, cap;
    code_fun *funs;
    size_t nfuns, cap_funs;
} code_sites;

/* The call sites of module `m`, in code order, then the fun literals no
 * instruction refers to. `lits` is its literal table (beam_literals_load),
 * which the funs point into. Validates the code as code_walk does. */
beam_errcode code_call_sites(const beam_module *m, uint32_t max_opcode, const beam_literals *lits,
                             code_sites *out, beam_error *err);

void code_sites_free(code_sites *s);

#endif
