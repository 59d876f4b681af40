/* Criterion tests of relocation on a real module (stdlib's lists.beam). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "beam.h"
#include "relocate.h"
#include "test_helpers.h"

#define PAIR(a, b)                                                                                 \
    { (const uint8_t *)(a), strlen(a), (const uint8_t *)(b), strlen(b) }

static int atom_is(const beam_module *m, size_t index, const char *name) {
    const beam_atom *a = &m->atoms[index - 1];
    return a->len == strlen(name) && memcmp(a->name, name, a->len) == 0;
}

static int chunk_equal(const beam_module *a, const beam_module *b, const char *id) {
    const beam_chunk *x = beam_find_chunk(a, id), *y = beam_find_chunk(b, id);
    return x && y && x->size == y->size &&
           memcmp(a->data + x->offset, b->data + y->offset, x->size) == 0;
}

Test(relocate, renames_the_module_and_keeps_code) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    reloc_pair renames[] = {PAIR("lists", "sandbox@t@lists")};
    reloc_spec spec = {renames, 1, NULL, 0, 0, 0};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    cr_assert_eq(beam_validate(out, out_n, BEAM_DEFAULT_MAX_OPCODE, &err.beam), BEAM_OK);

    beam_module a, b;
    beam_error e;
    cr_assert_eq(beam_parse(in, n, &a, &e), BEAM_OK);
    cr_assert_eq(beam_parse(out, out_n, &b, &e), BEAM_OK);
    cr_assert(atom_is(&b, 1, "sandbox@t@lists"));
    cr_assert_eq(a.natoms, b.natoms);
    for (size_t i = 2; i <= a.natoms; i++) {
        cr_assert(a.atoms[i - 1].len == b.atoms[i - 1].len &&
                  memcmp(a.atoms[i - 1].name, b.atoms[i - 1].name, a.atoms[i - 1].len) == 0);
    }
    static const char *same[] = {"Code", "StrT", "ImpT", "ExpT", "LocT", "Line"};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++) {
        cr_assert(chunk_equal(&a, &b, same[i]), "%s changed", same[i]);
    }
    beam_module_free(&a);
    beam_module_free(&b);
    free(out);
    free(in);
}

Test(relocate, nothing_to_do_is_identity) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    reloc_spec spec = {NULL, 0, NULL, 0, 0, 0};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    cr_assert_eq(out_n, n);
    cr_assert(memcmp(in, out, n) == 0);
    free(out);
    free(in);
}

Test(relocate, redirect_appends_the_shim_and_repoints_imports) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    reloc_pair redirects[] = {PAIR("erlang", "my_shim")};
    reloc_spec spec = {NULL, 0, redirects, 1, 0, 0};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    beam_module a, b;
    beam_error e;
    cr_assert_eq(beam_parse(in, n, &a, &e), BEAM_OK);
    cr_assert_eq(beam_parse(out, out_n, &b, &e), BEAM_OK);
    cr_assert_eq(b.natoms, a.natoms + 1);
    cr_assert(atom_is(&b, b.natoms, "my_shim"));
    cr_assert_eq(a.nimports, b.nimports);
    size_t repointed = 0;
    for (uint32_t i = 0; i < a.nimports; i++) {
        uint32_t ea[3], eb[3];
        beam_table_entry(a.imports, i, ea);
        beam_table_entry(b.imports, i, eb);
        cr_assert_eq(ea[1], eb[1]);
        cr_assert_eq(ea[2], eb[2]);
        if (atom_is(&a, ea[0], "erlang")) {
            cr_assert_eq(eb[0], b.natoms);
            repointed++;
        } else {
            cr_assert_eq(ea[0], eb[0]);
        }
    }
    cr_assert_gt(repointed, 0);
    /* The atom 'erlang' itself stays in the table. */
    int still_there = 0;
    for (size_t i = 1; i <= b.natoms; i++) {
        still_there |= atom_is(&b, i, "erlang");
    }
    cr_assert(still_there);
    cr_assert(chunk_equal(&a, &b, "Code"));
    beam_module_free(&a);
    beam_module_free(&b);
    free(out);
    free(in);
}

Test(relocate, strip_drops_debug_info) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    reloc_spec spec = {NULL, 0, NULL, 0, 1, 0};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), 0);
    beam_module b;
    beam_error e;
    cr_assert_eq(beam_parse(out, out_n, &b, &e), BEAM_OK);
    cr_assert_null(beam_find_chunk(&b, "Dbgi"));
    cr_assert_lt(out_n, n);
    beam_module_free(&b);
    free(out);
    free(in);
}

Test(relocate, errors) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    char long_name[300];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    reloc_pair too_long[] = {PAIR("lists", long_name)};
    reloc_spec spec = {too_long, 1, NULL, 0, 0, 0};
    reloc_error err;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_ATOM_TOO_LONG);

    reloc_pair bad_utf8[] = {PAIR("lists", "\xff")};
    spec.renames = bad_utf8;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BAD_SPEC);

    reloc_pair dup[] = {PAIR("a", "b"), PAIR("a", "c")};
    spec.renames = dup;
    spec.nrenames = 2;
    cr_assert_eq(beam_relocate(in, n, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BAD_SPEC);

    spec.nrenames = 0;
    cr_assert_eq(beam_relocate(in, n / 2, &spec, &out, &out_n, &err), -1);
    cr_assert_eq(err.code, RELOC_E_BEAM);
    cr_assert_eq(err.beam.code, BEAM_E_TRUNCATED);
    free(in);
}

/* Every single-byte flip is either relocated or refused (ASan checks the rest). */
Test(relocate, byte_flips) {
    size_t n, out_n;
    uint8_t *in = test_lists_beam(&n), *out;
    reloc_pair renames[] = {PAIR("lists", "sandbox@t@lists"), PAIR("erlang", "sandbox@t@erlang")};
    reloc_spec spec = {renames, 2, NULL, 0, 0, 0};
    reloc_error err;
    for (size_t i = 0; i < n; i += 13) {
        in[i] ^= 0xA5;
        if (beam_relocate(in, n, &spec, &out, &out_n, &err) == 0) {
            free(out);
        } else {
            reloc_error_free(&err);
        }
        in[i] ^= 0xA5;
    }
    free(in);
}
