#include <string.h>

#include "bytes.h"

long utf8_count(const uint8_t *s, size_t len) {
    long n = 0;
    size_t i = 0;
    /* Atom names are mostly ASCII: skip 8 ASCII bytes at a time. */
    for (uint64_t w; len - i >= 8 && (memcpy(&w, s + i, 8), (w & 0x8080808080808080u) == 0);) {
        i += 8;
        n += 8;
    }
    while (i < len) {
        uint8_t c = s[i];
        uint32_t cp;
        size_t k;
        if (c < 0x80) {
            i++;
            n++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            cp = c & 0x1F;
            k = 1;
        } else if ((c & 0xF0) == 0xE0) {
            cp = c & 0x0F;
            k = 2;
        } else if ((c & 0xF8) == 0xF0) {
            cp = c & 0x07;
            k = 3;
        } else {
            return -1;
        }
        if (len - i <= k) {
            return -1;
        }
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) {
                return -1;
            }
            cp = cp << 6 | (s[i + j] & 0x3F);
        }
        if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
            cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
            return -1;
        }
        i += k + 1;
        n++;
    }
    return n;
}
