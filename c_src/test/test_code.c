/* Criterion tests of the Code chunk decoder (code.h): real modules of the
 * installed OTP, and hand-made instruction streams around one function
 * f/0 of a module `m`, each checked to be refused at the byte where it goes
 * wrong. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "beam.h"
#include "bytes.h"
#include "code.h"
#include "etf.h"
#include "test_helpers.h"

#define BYTES(...) ((const uint8_t[]){__VA_ARGS__}), sizeof((const uint8_t[]){__VA_ARGS__})

/* The function's first bytes: label 1, func_info m f 0, label 2. The body
 * given to a test follows them, then int_code_end unless the test says. */
static const uint8_t prefix[] = {0x01, 0x10, 0x02, 0x12, 0x22, 0x00, 0x01, 0x20};
/* The offset of the body in the Code chunk: 4 + the 16-byte header + prefix. */
#define BODY (20 + sizeof prefix)

typedef struct {
    uint32_t labels;    /* the header's label count (0: 3) */
    uint32_t functions; /* the header's function count (0: 1) */
    int no_end;         /* no int_code_end after the body */
    const test_chunk *extra;
    size_t nextra;
} shape;

/* Atoms m, f, erlang, self, integer; import erlang:self/0; export f/0 at
 * label 2; one literal, the atom ok; StrT "abcd"; the code. */
static uint8_t *module(const uint8_t *body, size_t n, const shape *s, size_t *size) {
    static const uint8_t atoms[] = {0,   0,   0,   5,   1,   'm', 1,   'f', 6,   'e',
                                    'r', 'l', 'a', 'n', 'g', 4,   's', 'e', 'l', 'f',
                                    7,   'i', 'n', 't', 'e', 'g', 'e', 'r'};
    static const uint8_t imports[] = {0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 0};
    static const uint8_t exports[] = {0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2};
    const uint8_t ok[] = {131, 119, 2, 'o', 'k'};
    const uint8_t *terms[] = {ok};
    size_t lens[] = {sizeof ok}, litn;
    uint8_t *lit = test_literal_table(terms, lens, 1, &litn);
    test_bytes code = {0};
    test_put_u32(&code, 16);
    test_put_u32(&code, 0);
    test_put_u32(&code, CODE_OTP25_MAX_OPCODE);
    test_put_u32(&code, s && s->labels ? s->labels : 3);
    test_put_u32(&code, s && s->functions ? s->functions : 1);
    test_put(&code, prefix, sizeof prefix);
    test_put(&code, body, n);
    if (!(s && s->no_end)) {
        test_put_u8(&code, CODE_OP_INT_CODE_END);
    }
    size_t nextra = s ? s->nextra : 0;
    test_chunk *cs = calloc(7 + nextra, sizeof *cs);
    cs[0] = (test_chunk){"AtU8", atoms, sizeof atoms};
    cs[1] = (test_chunk){"Code", code.data, code.len};
    cs[2] = (test_chunk){"StrT", (const uint8_t *)"abcd", 4};
    cs[3] = (test_chunk){"ImpT", imports, sizeof imports};
    cs[4] = (test_chunk){"ExpT", exports, sizeof exports};
    cs[5] = (test_chunk){"LitT", lit, litn};
    for (size_t i = 0; i < nextra; i++) {
        cs[6 + i] = s->extra[i];
    }
    uint8_t *b = test_build_beam(cs, 6 + nextra, size);
    free(cs);
    free(code.data);
    free(lit);
    return b;
}

static beam_errcode check(const uint8_t *body, size_t n, const shape *s, beam_error *e) {
    size_t size;
    uint8_t *b = module(body, n, s, &size);
    beam_errcode rc = beam_validate(b, size, CODE_OTP25_MAX_OPCODE, e);
    free(b);
    return rc;
}

#define ACCEPTS(...)                                                                               \
    do {                                                                                           \
        beam_error e_;                                                                             \
        beam_errcode rc_ = check(BYTES(__VA_ARGS__), NULL, &e_);                                   \
        cr_assert_eq(rc_, BEAM_OK, "%s a=%lu", beam_errcode_name(rc_), (unsigned long)e_.a);       \
    } while (0)

/* Refused as bad code at `at` bytes into the body. */
#define BAD_AT(at, ...)                                                                            \
    do {                                                                                           \
        beam_error e_;                                                                             \
        beam_errcode rc_ = check(BYTES(__VA_ARGS__), NULL, &e_);                                   \
        cr_assert_eq(rc_, BEAM_E_BAD_CODE, "%s", beam_errcode_name(rc_));                          \
        cr_assert_eq(e_.a, BODY + (at), "at %lu, not %lu", (unsigned long)e_.a,                    \
                     (unsigned long)(BODY + (at)));                                                \
    } while (0)

Test(code, a_handmade_function_is_valid) {
    ACCEPTS(0x40, 0x02, 0x03, 0x13);       /* move [] x0; return */
    ACCEPTS(0x40, 0x47, 0x00, 0x03, 0x13); /* move literal 0 x0; return */
    ACCEPTS(0x07, 0x00, 0x00, 0x13);       /* call_ext 0 erlang:self/0 */
    /* select_val x0 f2 [1 f2, 2 f2] */
    ACCEPTS(0x3b, 0x03, 0x25, 0x17, 0x40, 0x11, 0x25, 0x21, 0x25);
    /* put_tuple2 x0 [x0, ok-literal, 7] */
    ACCEPTS(0xa4, 0x03, 0x17, 0x30, 0x03, 0x47, 0x00, 0x71, 0x13);
}

Test(code, lists_only_where_an_instruction_takes_one) {
    /* move [list of 0] x0: move takes no list. */
    BAD_AT(1, 0x40, 0x17, 0x00, 0x03, 0x13);
    /* select_val whose last operand is not a list. */
    BAD_AT(3, 0x3b, 0x03, 0x25, 0x03);
    /* A list nested in a list (the loader would extend the instruction). */
    BAD_AT(4, 0xa4, 0x03, 0x17, 0x10, 0x17, 0x00);
}

Test(code, list_counts_are_bounded_by_the_bytes_left) {
    /* put_tuple2 x0 with a list of 2047 elements and 2 bytes left. */
    BAD_AT(2, 0xa4, 0x03, 0x17, 0xe8, 0xff, 0x03, 0x03);
    /* A count in 8 bytes: more than the file could ever hold. */
    BAD_AT(2, 0xa4, 0x03, 0x17, 0xd8, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff);
    /* select_val needs pairs: an odd count, then an empty list. */
    BAD_AT(3, 0x3b, 0x03, 0x25, 0x17, 0x30, 0x11, 0x25, 0x21);
    BAD_AT(3, 0x3b, 0x03, 0x25, 0x17, 0x00);
    /* Its values are constants and its targets labels. */
    BAD_AT(5, 0x3b, 0x03, 0x25, 0x17, 0x20, 0x13, 0x25);
    BAD_AT(6, 0x3b, 0x03, 0x25, 0x17, 0x20, 0x11, 0x13);
}

Test(code, indices_stay_in_their_tables) {
    /* move atom 6 (5 atoms) x0; move atom 5 x0 is fine. */
    BAD_AT(1, 0x40, 0x62, 0x03, 0x13);
    ACCEPTS(0x40, 0x52, 0x03, 0x13);
    /* literal 1 (1 literal) */
    BAD_AT(1, 0x40, 0x47, 0x10, 0x03, 0x13);
    /* x(1024) and y(1024): one over the loader's register file; x(1023) fits. */
    BAD_AT(2, 0x40, 0x02, 0x8b, 0x00, 0x13);
    BAD_AT(2, 0x40, 0x02, 0x8c, 0x00, 0x13);
    ACCEPTS(0x40, 0x02, 0x6b, 0xff, 0x13);
    /* call_ext 0, import 1 (one import); with arity 1 for an arity-0 import. */
    BAD_AT(2, 0x07, 0x00, 0x10);
    BAD_AT(1, 0x07, 0x10, 0x00);
    /* jump to label 3 of 3 (labels are 1 .. count - 1). */
    BAD_AT(1, 0x3d, 0x35);
    /* make_fun3 with no FunT; line 1 of none is fine without a Line chunk. */
    BAD_AT(1, 0xab, 0x00, 0x03, 0x17, 0x00, 0x13);
    ACCEPTS(0x99, 0x10, 0x13);
    /* A live count over the register file. */
    BAD_AT(2, 0x10, 0x00, 0x88, 0x01);
    /* A typed register whose type index is beyond the Type chunk. */
    static const uint8_t types[] = {0, 0, 0, 1, 0, 0, 0, 1, 0x1f, 0xff};
    test_chunk type = {"Type", types, sizeof types};
    shape typed = {0, 0, 0, &type, 1};
    beam_error e;
    cr_assert_eq(check(BYTES(0x40, 0x57, 0x03, 0x00, 0x13, 0x13), &typed, &e), BEAM_OK);
    cr_assert_eq(check(BYTES(0x40, 0x57, 0x03, 0x10, 0x13, 0x13), &typed, &e), BEAM_E_BAD_CODE);
    cr_assert_eq(e.a, BODY + 1);
}

Test(code, opcodes_the_loader_does_not_take) {
    beam_error e;
    BAD_AT(0, 0x00);
    /* m_plus (27) is retired; 181 is past OTP 25. */
    cr_assert_eq(check(BYTES(27, 0x05, 0x03, 0x03, 0x03), NULL, &e), BEAM_E_MAX_OPCODE);
    cr_assert_eq(e.a, 27);
    cr_assert_eq(check(BYTES(181, 0x13), NULL, &e), BEAM_E_MAX_OPCODE);
    cr_assert_eq(e.a, 181);
    /* An opcode above what the running system loads. */
    size_t size;
    uint8_t *b = module(BYTES(0xb4, 0x03, 0x13), NULL, &size); /* badrecord x0 */
    cr_assert_eq(beam_validate(b, size, CODE_OTP25_MAX_OPCODE, &e), BEAM_OK);
    beam_module m;
    cr_assert_eq(beam_parse(b, size, &m, &e), BEAM_OK);
    code_module c;
    cr_assert_eq(code_open(&m, 1, 200, &c, &e), BEAM_OK);
    cr_assert_eq(code_walk(&c, 179, &m, NULL, NULL, &e), BEAM_E_MAX_OPCODE);
    cr_assert_eq(e.a, 180);
    beam_module_free(&m);
    free(b);
}

Test(code, truncated_operands) {
    /* A 2-byte value without its second byte, a 5-byte one with 3. */
    shape s = {0, 0, 1, NULL, 0};
    beam_error e;
    cr_assert_eq(check(BYTES(0x40, 0x02, 0x0b), &s, &e), BEAM_E_BAD_CODE);
    cr_assert_eq(e.a, BODY + 2);
    cr_assert_eq(check(BYTES(0x40, 0x79, 0x01, 0x02, 0x03), &s, &e), BEAM_E_BAD_CODE);
    cr_assert_eq(e.a, BODY + 1);
    /* No int_code_end: bad at the chunk's end. */
    cr_assert_eq(check(BYTES(0x13), &s, &e), BEAM_E_BAD_CODE);
    cr_assert_eq(e.a, BODY + 1);
}

Test(code, function_structure) {
    beam_error e;
    /* Code after int_code_end. */
    BAD_AT(2, 0x13, 0x03, 0x13);
    /* func_info not after a label; the entry label missing. */
    BAD_AT(1, 0x13, 0x02, 0x12, 0x22, 0x00);
    shape two = {5, 2, 0, NULL, 0};
    const uint8_t no_entry[] = {0x13, 0x01, 0x30, 0x02, 0x12, 0x22, 0x00, 0x13};
    cr_assert_eq(check(no_entry, sizeof no_entry, &two, &e), BEAM_E_BAD_CODE);
    cr_assert_eq(e.a, BODY + 7);
    /* A label defined twice. */
    BAD_AT(1, 0x01, 0x20, 0x13);
    /* A second function where the header says one. */
    const uint8_t second[] = {0x13, 0x01, 0x30, 0x02, 0x12, 0x22, 0x00, 0x01, 0x40, 0x13};
    cr_assert_eq(check(second, sizeof second, &two, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    shape one = {5, 1, 0, NULL, 0};
    cr_assert_eq(check(second, sizeof second, &one, &e), BEAM_E_BAD_CODE);
    cr_assert_eq(e.a, BODY + 3);
    /* Fewer functions than the header says. */
    shape more = {3, 2, 0, NULL, 0};
    cr_assert_eq(check(BYTES(0x13), &more, &e), BEAM_E_BAD_CHUNK);
    cr_assert_str_eq(e.chunk, "Code");
    /* A label count the code cannot hold (the loader allocates by it). */
    shape huge = {1u << 30, 1, 0, NULL, 0};
    cr_assert_eq(check(BYTES(0x13), &huge, &e), BEAM_E_BAD_CHUNK);
    cr_assert_str_eq(e.chunk, "Code");
    /* A jump to a label that exists in the count but is never defined. */
    shape spare = {4, 1, 0, NULL, 0};
    cr_assert_eq(check(BYTES(0x3d, 0x35), &spare, &e), BEAM_E_BAD_CHUNK);
    cr_assert_str_eq(e.chunk, "Code");
    /* call to the entry label with the wrong arity; then the right one. */
    cr_assert_eq(check(BYTES(0x04, 0x10, 0x25, 0x13), NULL, &e), BEAM_E_BAD_CHUNK);
    ACCEPTS(0x04, 0x00, 0x25, 0x13);
}

Test(code, exports_and_lambdas_name_functions) {
    beam_error e;
    /* FunT: f/0 at label 2, no free variables; make_fun3 0 x0 []. */
    static const uint8_t funt[] = {0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0,
                                   0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    test_chunk fun = {"FunT", funt, sizeof funt};
    shape s = {0, 0, 0, &fun, 1};
    cr_assert_eq(check(BYTES(0xab, 0x00, 0x03, 0x17, 0x00, 0x13), &s, &e), BEAM_OK, "%s",
                 beam_errcode_name(e.code));
    /* One free variable where the lambda has none. */
    cr_assert_eq(check(BYTES(0xab, 0x00, 0x03, 0x17, 0x10, 0x03, 0x13), &s, &e), BEAM_E_BAD_CODE);
    cr_assert_eq(e.a, BODY + 3);
    /* The lambda's label is not a function's entry. */
    uint8_t bad[sizeof funt];
    memcpy(bad, funt, sizeof bad);
    bad[15] = 1;
    test_chunk badfun = {"FunT", bad, sizeof bad};
    shape sb = {0, 0, 0, &badfun, 1};
    cr_assert_eq(check(BYTES(0x13), &sb, &e), BEAM_E_BAD_CHUNK);
    cr_assert_str_eq(e.chunk, "FunT");
    /* Its label beyond the code's labels (the loader indexes by it). */
    wr_u32(bad + 12, 1u << 20);
    cr_assert_eq(check(BYTES(0x13), &sb, &e), BEAM_E_BAD_CHUNK);
    cr_assert_str_eq(e.chunk, "FunT");
}

Test(code, line_chunk) {
    beam_error e;
    /* Version 0, 1 line instruction, 2 items (lines 10 and 20), 0 names. */
    static const uint8_t line[] = {0, 0, 0, 0, 0, 0, 0, 0, 0,    0,    0,    1,
                                   0, 0, 0, 2, 0, 0, 0, 0, 0x09, 0x0a, 0x09, 0x14};
    test_chunk lc = {"Line", line, sizeof line};
    shape s = {0, 0, 0, &lc, 1};
    cr_assert_eq(check(BYTES(0x99, 0x20, 0x13), &s, &e), BEAM_OK, "%s", beam_errcode_name(e.code));
    cr_assert_eq(check(BYTES(0x99, 0x30, 0x13), &s, &e), BEAM_E_BAD_CODE);
    cr_assert_eq(e.a, BODY + 1);
    /* A file-name switch to a name the chunk does not have. */
    uint8_t bad[sizeof line];
    memcpy(bad, line, sizeof bad);
    bad[20] = 0x12; /* a1 */
    test_chunk lb = {"Line", bad, sizeof bad};
    shape sb = {0, 0, 0, &lb, 1};
    cr_assert_eq(check(BYTES(0x13), &sb, &e), BEAM_E_BAD_CHUNK);
    cr_assert_str_eq(e.chunk, "Line");
    /* More items declared than bytes. */
    memcpy(bad, line, sizeof bad);
    wr_u32(bad + 12, 1000);
    cr_assert_eq(check(BYTES(0x13), &sb, &e), BEAM_E_BAD_CHUNK);
}

Test(code, strings_stay_in_strt) {
    /* bs_put_string 4 0 fits "abcd"; 3 at offset 2 does not. */
    ACCEPTS(0x5c, 0x40, 0x00, 0x13);
    BAD_AT(2, 0x5c, 0x30, 0x20, 0x13);
}

Test(code, encoding_round_trips) {
    uint64_t vals[] = {0, 1, 15, 16, 2047, 2048, 65535, 1u << 24, 0x7fffffff, 0xffffffff};
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++) {
        uint8_t buf[16];
        size_t n = code_encode(CODE_U, vals[i], buf);
        /* As a move's source it decodes to the same value: check via a
         * line operand without a Line chunk, which takes any u. */
        uint8_t body[20] = {0x99};
        memcpy(body + 1, buf, n);
        body[1 + n] = 0x13;
        beam_error e;
        cr_assert_eq(check(body, n + 2, NULL, &e), BEAM_OK, "%lu", (unsigned long)vals[i]);
    }
}

/* Every instruction of real modules is visited once, in order, and the
 * counts agree with the header. */
static int count_instr(void *ctx, const code_instr *ins) {
    uint32_t *c = ctx;
    c[0]++;
    c[1] += ins->op == CODE_OP_FUNC_INFO;
    c[2] = ins->off + ins->len;
    return 0;
}

Test(code, real_modules_walk_whole) {
    const char *files[] = {"lib/stdlib-*/ebin/lists.beam", "lib/stdlib-*/ebin/gen_server.beam",
                           "lib/compiler-*/ebin/beam_asm.beam"};
    for (size_t k = 0; k < sizeof files / sizeof *files; k++) {
        size_t n;
        uint8_t *d = test_read_otp_file(files[k], &n);
        beam_module m;
        beam_error e;
        cr_assert_eq(beam_parse(d, n, &m, &e), BEAM_OK);
        beam_literals lits;
        cr_assert_eq(beam_literals_load(&m, &lits, &e), BEAM_OK);
        code_module c;
        cr_assert_eq(code_open(&m, lits.count, CODE_OTP25_MAX_OPCODE, &c, &e), BEAM_OK);
        uint32_t counts[3] = {0};
        cr_assert_eq(code_walk(&c, CODE_OTP25_MAX_OPCODE, &m, count_instr, counts, &e), BEAM_OK,
                     "%s %lu", beam_errcode_name(e.code), (unsigned long)e.a);
        cr_assert_gt(counts[0], 100);
        cr_assert_eq(counts[1], c.function_count);
        cr_assert_eq(counts[2], c.size);
        beam_literals_free(&lits);
        beam_module_free(&m);
        free(d);
    }
}
