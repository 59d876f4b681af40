/* Relocation of a compiled BEAM: renaming module atoms and redirecting calls
 * to host modules, without touching the code.
 *
 * Renames replace every atom equal to a renamed name: in the atom table and
 * inside every term-format chunk (LitT, Attr, CInf, Dbgi, Docs, ExCk, Meta).
 * Redirects append the shim's name to the atom table and repoint only the
 * import entries and external fun literals that name the redirected module.
 * Every other chunk is copied byte for byte. Pure C: no erl_nif.h. */
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

typedef struct {
    const reloc_pair *renames;
    size_t nrenames;
    const reloc_pair *redirects;
    size_t nredirects;
    int strip_debug; /* drop Dbgi and Docs instead of rewriting them */
    int names_valid; /* the caller guarantees every name is valid UTF-8 */
} reloc_spec;

typedef struct {
    beam_error beam; /* beam.code is BEAM_OK unless the input was malformed */
    enum {
        RELOC_OK = 0,
        RELOC_E_BEAM,              /* see beam */
        RELOC_E_ATOM_TOO_LONG,     /* name: a resulting atom over 255 characters or bytes */
        RELOC_E_DUPLICATE_MAP_KEY, /* key: the key's external term (no version byte) */
        RELOC_E_BAD_SPEC,          /* a name in the spec is not valid UTF-8 or repeats */
        RELOC_E_NOMEM
    } code;
    const uint8_t *name; /* points into the spec */
    size_t name_len;
    uint8_t *key; /* owned: release with reloc_error_free() */
    size_t key_len;
} reloc_error;

/* Relocates `in`. On success *out is a malloc'd BEAM of *out_len bytes (the
 * caller frees it) and the result is RELOC_OK. */
int beam_relocate(const uint8_t *in, size_t len, const reloc_spec *spec, uint8_t **out,
                  size_t *out_len, reloc_error *err);

void reloc_error_free(reloc_error *err);

#endif
