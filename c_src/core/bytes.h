/* Big-endian readers and writers shared by the C core. */
#ifndef SANDBOX_BYTES_H
#define SANDBOX_BYTES_H

#include <stddef.h>
#include <stdint.h>

static inline uint16_t rd_u16(const uint8_t *p) {
    return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}

static inline uint32_t rd_u32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t rd_u64(const uint8_t *p) {
    return (uint64_t)rd_u32(p) << 32 | rd_u32(p + 4);
}

static inline void wr_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void wr_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static inline size_t align4(size_t n) {
    return (n + 3) & ~(size_t)3;
}

/* Number of Unicode code points in a UTF-8 string, or -1 if it is not valid UTF-8
 * (overlong forms, surrogates and values above U+10FFFF are invalid). */
long utf8_count(const uint8_t *s, size_t len);

#endif
