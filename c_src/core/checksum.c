#include "checksum.h"

#include <string.h>
#include <xxhash.h>

void checksum128(const void *data, size_t len, uint8_t out[CHECKSUM_BYTES]) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
    memcpy(out, c.digest, CHECKSUM_BYTES);
}

void checksum_hex(const uint8_t digest[CHECKSUM_BYTES], char out[2 * CHECKSUM_BYTES]) {
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < CHECKSUM_BYTES; i++) {
        out[2 * i] = hex[digest[i] >> 4];
        out[2 * i + 1] = hex[digest[i] & 15];
    }
}
