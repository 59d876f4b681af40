/* Relocation of a compiled BEAM: renaming module atoms and redirecting calls
 * to host modules, without touching the code unless asked to guard its
 * dynamic calls.
 *
 * Renames replace every atom equal to a renamed name: in the atom table and
 * inside every term-format chunk (LitT, Attr, CInf, Dbgi, Docs, ExCk, Meta).
 * Redirects append the shim's name to the atom table and repoint only the
 * import entries and external fun literals that name the redirected module.
 * MFA redirects repoint single imports and external funs `fun M:F/A` (never
 * an import a bif instruction uses). A dynamic guard rewrites the code's
 * apply, call_fun and send instructions into calls of a guard module
 * (rewrite.h), appending their imports. Every other chunk is copied byte
 * for byte.
 *
 * Kept atoms (reloc_spec.keeps) are renamed atoms that keep their original
 * name where they are data: the atom table entry is renamed as ever (it is
 * the module's identity and the name its imports, exports and func_info
 * use), one atom of the original name is appended, and the Code chunk's
 * atom operands naming the renamed entry are repointed at it, except the
 * operands of func_info and the bodies of module_info/0,1 and __info__/1
 * (which answer with the module's own, relocated name). Literals keep the
 * original name too, except where it is a call or an identity: the module
 * and function of an external fun `fun M:F/A`, and the module of a local
 * fun. Other term chunks (Attr, CInf, Dbgi, ...) are renamed as ever.
 * Pure C: no erl_nif.h. */
#ifndef SANDBOX_RELOCATE_H
#define SANDBOX_RELOCATE_H

#include <stddef.h>
#include <stdint.h>

#include "beam.h"

/* Names are UTF-8 byte strings. */
typedef struct {
    const uint8_t *from;
    size_t from_len;
    const uint8_t *to;
    size_t to_len;
} reloc_pair;

/* An MFA redirect: imports of and funs `fun mod:fun/arity` become
 * `to_mod:to_fun/arity`. Names are UTF-8; the targets are written as given
 * (renames do not apply to them). */
typedef struct {
    const uint8_t *mod, *fun;
    size_t mod_len, fun_len;
    uint32_t arity;
    const uint8_t *to_mod, *to_fun;
    size_t to_mod_len, to_fun_len;
} reloc_mfa;

/* A UTF-8 name. */
typedef struct {
    const uint8_t *name;
    size_t len;
} reloc_name;

typedef struct {
    const reloc_pair *renames;
    size_t nrenames;
    const reloc_pair *redirects;
    size_t nredirects;
    const reloc_mfa *mfas;
    size_t nmfas;
    const uint8_t *guard; /* the guard module (NULL: no dynamic guard) */
    size_t guard_len;
    unsigned guard_kinds; /* GUARD_APPLY | GUARD_CALL_FUN | GUARD_SEND (rewrite.h) */
    /* Kept atoms (see above): names of renamed atoms, at most 4 * 255
     * bytes each, no repeats. A name that is not renamed changes nothing. */
    const reloc_name *keeps;
    size_t nkeeps;
    /* The highest opcode the system loads, for the code walks that MFA
     * redirects and guards need (0: OTP 25's). */
    uint32_t max_opcode;
    int strip_debug; /* drop Dbgi and Docs instead of rewriting them */
    int names_valid; /* the caller guarantees every name is valid UTF-8 */
    /* The most bytes the compressed chunks may declare they inflate to, and
     * the rewritten terms may grow to, together (0: BEAM_DEFAULT_MAX_INFLATED). */
    uint64_t max_inflated;
    /* Give up with RELOC_E_WORK after this many units of work (each about
     * a nanosecond of the slowest input of its kind; see RELOC_WORK_* in
     * relocate.c). 0: no limit. Deterministic, for tests. */
    uint64_t max_work;
    /* Give up with RELOC_E_WORK rather than pass this CLOCK_MONOTONIC time
     * (ns; 0: no deadline): no step starts unless its worst case (its units
     * as nanoseconds) fits in the time left, and long steps (inflating,
     * deflating, walking and rewriting large terms) are taken in slices. A
     * caller on a time budget starts again where time does not matter. */
    uint64_t deadline_ns;
} reloc_spec;

typedef struct {
    beam_error beam; /* beam.code is BEAM_OK unless the input was malformed */
    enum {
        RELOC_OK = 0,
        RELOC_E_BEAM,              /* see beam */
        RELOC_E_ATOM_TOO_LONG,     /* name: a resulting atom over 255 characters or bytes */
        RELOC_E_DUPLICATE_MAP_KEY, /* key: the key's external term (no version byte) */
        RELOC_E_BAD_SPEC,          /* a name in the spec is not valid UTF-8 or repeats */
        RELOC_E_NOMEM,
        RELOC_E_WORK, /* spec->max_work or spec->deadline_ns was reached; nothing was produced */
        RELOC_E_BIF_REDIRECT, /* index: an MFA redirect whose import a bif instruction uses */
        RELOC_E_ARITY         /* a guarded call would take over 255 arguments: fn, arity */
    } code;
    const uint8_t *name; /* points into the spec */
    size_t name_len;
    uint8_t *key; /* owned: release with reloc_error_free() */
    size_t key_len;
    uint64_t work;      /* units of work spent, whatever the result */
    size_t index;       /* RELOC_E_BIF_REDIRECT */
    int fn;             /* RELOC_E_ARITY: the guard_fn (rewrite.h) */
    uint32_t arity;     /* RELOC_E_ARITY: the instruction's own arity */
    uint32_t rewritten; /* dynamic call sites rewritten */
    uint32_t repointed; /* atom operands repointed at a kept atom */
} reloc_error;

/* Relocates `in`. On success *out is a malloc'd BEAM of *out_len bytes (the
 * caller frees it) and the result is RELOC_OK. Every term chunk it rewrites
 * and the literal table are walked whole (and so validated) before anything
 * is rewritten. A compressed chunk that declares more than the cap is
 * RELOC_E_BEAM with BEAM_E_TOO_LARGE, as is rewriting that would grow past
 * it. Reentrant: no state outside the call. */
int beam_relocate(const uint8_t *in, size_t len, const reloc_spec *spec, uint8_t **out,
                  size_t *out_len, reloc_error *err);

/* An estimate of the work units beam_relocate will spend on a parsed
 * module, from what it declares (its size, chunk count, atoms, imports and
 * the sizes its compressed chunks inflate to), assuming its term chunks
 * change and its literals do not: a caller with a time budget can skip a
 * start that is bound to run out. */
uint64_t reloc_work_estimate(const beam_module *m, const reloc_spec *spec);

void reloc_error_free(reloc_error *err);

#endif
