/* Rewriting of a BEAM's dynamic call sites into calls of a guard module,
 * for relocation's `dynamic_guard` option. Pure C.
 *
 *   apply A              -> call_ext A+2, Guard:'$apply'/A+2
 *   apply_last A, D      -> call_ext_last A+2, Guard:'$apply'/A+2, D
 *   call_fun A           -> call_ext A+1, Guard:'$call_fun'/A+1
 *   call_fun2 T, A, Fun  -> [move Fun, x(A)] call_ext A+1, Guard:'$call_fun'/A+1
 *   send                 -> call_ext 2, Guard:'$send'/2
 *
 * The registers line up: apply has its arguments in x0..x(A-1), the module
 * in x(A) and the function in x(A+1); call_fun the fun in x(A); send the
 * destination in x0 and the message in x1, and leaves the message in x0
 * (as '$send'/2 returns it). call_fun2's fun may be anywhere: it is moved
 * into x(A) first unless it is there (x registers above the arguments are
 * dead across a call). A call needs a stack frame (it overwrites the
 * return address); apply and call_fun always have one, being calls
 * themselves, but send does not need one: a send in a function without a
 * frame becomes a tail call when a return follows it, and is wrapped in
 * `allocate 0, 2` / `deallocate 0` otherwise. Labels are symbolic, so the
 * instructions may change size freely.
 *
 * Atom operands may be repointed too (kept atoms, relocate.h): each atom
 * operand of an instruction that is copied is offered to a callback, which
 * gives the index it takes instead; func_info's operands and the bodies of
 * module_info/0, module_info/1 and __info__/1 are left alone. */
#ifndef SANDBOX_REWRITE_H
#define SANDBOX_REWRITE_H

#include <stddef.h>
#include <stdint.h>

#include "beam.h"
#include "buf.h"
#include "code.h"

#define GUARD_APPLY 1u
#define GUARD_CALL_FUN 2u
#define GUARD_SEND 4u

typedef enum { GUARD_FN_APPLY = 0, GUARD_FN_CALL_FUN = 1, GUARD_FN_SEND = 2 } guard_fn;

/* An import the rewritten code needs: Guard:'$apply'/arity etc. */
typedef struct {
    uint8_t fn; /* guard_fn */
    uint8_t arity;
} guard_import;

/* The index an atom operand takes instead of `atom` into *to (0: it
 * stays); non-zero stops the rewrite with BEAM_E_STOPPED. */
typedef int (*code_repoint_fn)(void *ctx, uint32_t atom, uint32_t *to);

typedef struct {
    /* In. */
    unsigned kinds;          /* GUARD_*: which instructions to rewrite (0: none) */
    code_repoint_fn repoint; /* NULL: no atom operand changes */
    void *repoint_ctx;
    uint32_t first_import; /* the index the first new import gets */
    /* Out. */
    guard_import imports[3 * 256]; /* in order of their index */
    size_t nimports;
    uint32_t rewritten;   /* instructions rewritten */
    uint32_t repointed;   /* atom operands repointed */
    uint8_t *bif_imports; /* nimports of the module bytes: 1 for an import a bif or
                           * gc_bif instruction uses (NULL: not wanted) */
    /* Set with BEAM_E_STOPPED when a rewritten call would take more than
     * 255 arguments: the guard_fn and the instruction's arity. */
    int too_large_fn;
    uint32_t too_large_arity;
} code_rewrite_spec;

/* Walks (and so validates) the code of `m` as code_walk does, marking the
 * imports bif instructions use when asked; with kinds or repoint, writes
 * the whole rewritten Code chunk (its header's highest opcode raised as
 * needed) onto `out`. BEAM_E_STOPPED: a call's arity would be too large
 * (see above; too_large_fn is then >= 0), or the repoint callback failed. */
beam_errcode code_rewrite(const code_module *c, uint32_t max_opcode, const beam_module *m,
                          code_rewrite_spec *r, buf_t *out, beam_error *err);

#endif
