/* The Code chunk of a BEAM file: its header, and a linear decoder of the
 * instruction stream that checks every operand. Pure C: no erl_nif.h.
 *
 * The stream is a sequence of generic instructions (OTP 25's genop.tab): an
 * opcode byte, then the opcode's operands in the compact term encoding. Each
 * operand byte carries a 3-bit tag (u, i, a, x, y, f, h, z) and a value of
 * 4 bits, 11 bits, or 2 to 8 (or more) following bytes; tag z introduces an
 * extended operand: a list (a count, then that many operands), a float
 * register, an allocation list, a literal, or a register with a type.
 *
 * The loader trusts the shapes of operands in many places (it allocates a
 * list's count before reading it, indexes tables with operand values, and
 * hands lists to helpers that expect pairs), so the decoder accepts only
 * what OTP 25's compiler emits: each opcode's operands have a kind (label,
 * fail label, source, destination, import, lambda, live count, ...), lists
 * only as the last operand of the instructions that take one, with the
 * element kinds and counts those instructions need, every index within its
 * table, and the function structure the loader recognises (label, optional
 * line, func_info, entry label). Anything else is refused. */
#ifndef SANDBOX_CODE_H
#define SANDBOX_CODE_H

#include <stddef.h>
#include <stdint.h>

#include "beam.h"

/* x and y registers, float registers and live counts stay below this
 * (OTP 25's MAX_REG). */
#define CODE_MAX_REG 1024
#define CODE_MAX_ARITY 255
/* Opcodes (genop.tab) that the rest of the toolkit names. */
#define CODE_OP_LABEL 1
#define CODE_OP_FUNC_INFO 2
#define CODE_OP_INT_CODE_END 3
#define CODE_OP_CALL 4
#define CODE_OP_CALL_LAST 5
#define CODE_OP_CALL_ONLY 6
#define CODE_OP_CALL_EXT 7
#define CODE_OP_CALL_EXT_LAST 8
#define CODE_OP_BIF0 9
#define CODE_OP_BIF1 10
#define CODE_OP_BIF2 11
#define CODE_OP_ALLOCATE 12
#define CODE_OP_ALLOCATE_HEAP 13
#define CODE_OP_ALLOCATE_ZERO 14
#define CODE_OP_ALLOCATE_HEAP_ZERO 15
#define CODE_OP_DEALLOCATE 18
#define CODE_OP_RETURN 19
#define CODE_OP_SEND 20
#define CODE_OP_JUMP 61
#define CODE_OP_MOVE 64
#define CODE_OP_BADMATCH 72
#define CODE_OP_IF_END 73
#define CODE_OP_CASE_END 74
#define CODE_OP_CALL_FUN 75
#define CODE_OP_CALL_EXT_ONLY 78
#define CODE_OP_RAISE 108
#define CODE_OP_APPLY 112
#define CODE_OP_APPLY_LAST 113
#define CODE_OP_GC_BIF1 124
#define CODE_OP_GC_BIF2 125
#define CODE_OP_GC_BIF3 152
#define CODE_OP_LINE 153
#define CODE_OP_TRY_CASE_END 107
#define CODE_OP_RAW_RAISE 161
#define CODE_OP_CALL_FUN2 178
#define CODE_OP_BADRECORD 180
/* The highest opcode of OTP 25 (badrecord/1). */
#define CODE_OTP25_MAX_OPCODE 180

/* Decoded operand tags: the compact encoding's seven plain tags, then the
 * extended ones. */
typedef enum {
    CODE_U = 0,
    CODE_I = 1,
    CODE_A = 2, /* value 0 is [] */
    CODE_X = 3,
    CODE_Y = 4,
    CODE_F = 5,
    CODE_H = 6,
    CODE_LIST = 8,   /* val: the element count; the elements follow as operands */
    CODE_FR = 9,     /* val: the float register */
    CODE_ALLOC = 10, /* val: the heap words it asks for */
    CODE_LIT = 11,   /* val: the literal index */
    CODE_TREG = 12   /* val: the register, reg: CODE_X or CODE_Y, type: the type index */
} code_tag;

typedef struct {
    uint8_t tag;
    uint8_t reg;  /* CODE_TREG: CODE_X or CODE_Y */
    uint8_t big;  /* CODE_I: more than 8 bytes (a bignum); val is then 0 */
    uint64_t val; /* CODE_I: the value as a two's complement int64 */
    uint32_t type;
    uint32_t off; /* of the operand's first byte, from the start of the chunk */
    uint32_t len; /* its bytes (a list: its tag and count only) */
} code_arg;

typedef struct {
    uint8_t op;
    uint32_t off; /* of the opcode byte, from the start of the chunk */
    uint32_t len; /* the whole instruction, list elements included */
    uint32_t nargs;
    const code_arg *args; /* the fixed operands, then a list's elements */
} code_instr;

/* What the Code chunk's operands may refer to, and its header. */
typedef struct {
    const uint8_t *chunk; /* the Code chunk's data */
    uint32_t size;
    uint32_t start; /* offset of the first instruction in the chunk */
    uint32_t max_opcode, label_count, function_count;
    uint32_t natoms, nimports, nliterals, nlambdas;
    const uint8_t *imports;    /* 12-byte entries */
    const uint8_t *lambdas;    /* FunT: 24-byte entries */
    int has_lines;             /* a Line chunk of the version the loader reads */
    uint32_t nline_items;      /* line operands stay at or below this */
    uint32_t line_instrs;      /* the Line chunk's count of line instructions */
    const uint8_t *line_items; /* the Line chunk's items (compact terms) */
    uint32_t line_items_size;
    uint32_t nline_names;
    int typed; /* a Type chunk the loader reads: type indices are checked */
    uint32_t ntypes;
    uint32_t strings; /* StrT's size */
} code_module;

/* Reads the Code header and the chunks its operands refer to (FunT, Line,
 * Type, StrT), checking their framing and that every count is within what
 * the file can hold. `nliterals` is the literal table's count. Errors:
 * BEAM_E_TRUNCATED / BEAM_E_BAD_CHUNK (Code, FunT, Line, Type),
 * BEAM_E_INSTRUCTION_SET, BEAM_E_MAX_OPCODE (the header's, above
 * `max_opcode`). */
beam_errcode code_open(const beam_module *m, uint32_t nliterals, uint32_t max_opcode,
                       code_module *c, beam_error *err);

/* Called for each instruction in order; non-zero stops the walk. */
typedef int (*code_visit_fn)(void *ctx, const code_instr *ins);

/* Walks and checks the whole instruction stream; `visit` (may be NULL) sees
 * each instruction. Errors: BEAM_E_BAD_CODE (a: the offset in the chunk of
 * the offending byte), BEAM_E_MAX_OPCODE (a: an opcode the system does not
 * load: above `max_opcode`, or retired), BEAM_E_BAD_CHUNK (Code: the header's
 * counts disagree with the code; ExpT, FunT: an entry names no function of
 * the code), BEAM_E_NOMEM, BEAM_E_STOPPED (the visitor stopped it). The work
 * is linear in the code's size. */
beam_errcode code_walk(const code_module *c, uint32_t max_opcode, const beam_module *m,
                       code_visit_fn visit, void *ctx, beam_error *err);

/* The line numbers of the line operands: (*lines)[item] for item 0 ..
 * nline_items (0: no line known), in a malloc'd array. 0, or -1 when out of
 * memory. */
int code_line_table(const code_module *c, uint32_t **lines);

/* Encodes an operand with one of the plain tags (CODE_U .. CODE_F, value
 * non-negative) into out (at least 9 bytes); returns its length. */
size_t code_encode(uint8_t tag, uint64_t val, uint8_t *out);

/* The number of operands of an opcode (genop.tab), or -1 when the system
 * does not load it. */
int code_arity(uint8_t op);

const char *code_opname(uint8_t op);

#endif
