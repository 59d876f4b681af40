/* Content checksums: XXH3-128 (libxxhash) in canonical big-endian byte order. */
#ifndef SANDBOX_CHECKSUM_H
#define SANDBOX_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

#define CHECKSUM_BYTES 16

void checksum128(const void *data, size_t len, uint8_t out[CHECKSUM_BYTES]);

/* Writes 32 lowercase hex characters (no terminator). */
void checksum_hex(const uint8_t digest[CHECKSUM_BYTES], char out[2 * CHECKSUM_BYTES]);

#endif
