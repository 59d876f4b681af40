#include "cn_frame.h"

#include <stdlib.h>
#include <string.h>

#include "bytes.h"

void cn_frame_init(cn_framebuf *fb, size_t max_frame) {
    memset(fb, 0, sizeof *fb);
    fb->max_frame = max_frame ? max_frame : CN_FRAME_DEFAULT_MAX;
}

void cn_frame_free(cn_framebuf *fb) {
    free(fb->buf);
    fb->buf = NULL;
    fb->start = fb->len = fb->cap = 0;
    fb->skip = 0;
}

size_t cn_frame_pending(const cn_framebuf *fb) {
    return fb->len - fb->start;
}

void cn_frame_header(uint8_t out[4], uint32_t len) {
    wr_u32(out, len);
}

int cn_frame_append(cn_framebuf *fb, const uint8_t *data, size_t n) {
    /* The rest of an oversized frame is dropped as it comes. */
    if (fb->skip > 0) {
        size_t drop = fb->skip < n ? (size_t)fb->skip : n;
        fb->skip -= drop;
        data += drop;
        n -= drop;
    }
    if (n == 0) {
        return 0;
    }
    if (fb->start > 0) {
        memmove(fb->buf, fb->buf + fb->start, fb->len - fb->start);
        fb->len -= fb->start;
        fb->start = 0;
    }
    if (fb->len + n > fb->cap) {
        size_t cap = fb->cap ? fb->cap : 4096;
        while (cap < fb->len + n) {
            cap *= 2;
        }
        uint8_t *nb = realloc(fb->buf, cap);
        if (!nb) {
            return -1;
        }
        fb->buf = nb;
        fb->cap = cap;
    }
    memcpy(fb->buf + fb->len, data, n);
    fb->len += n;
    return 0;
}

cn_frame_status cn_frame_next(cn_framebuf *fb, const uint8_t **frame, size_t *len,
                              uint64_t *declared) {
    size_t avail = fb->len - fb->start;
    if (avail < 4) {
        return CN_FRAME_NONE;
    }
    const uint8_t *p = fb->buf + fb->start;
    uint32_t flen = rd_u32(p);
    if (declared) {
        *declared = flen;
    }
    if (flen > fb->max_frame) {
        size_t peek = flen < CN_FRAME_PEEK ? flen : CN_FRAME_PEEK;
        if (avail - 4 < peek) {
            return CN_FRAME_NONE;
        }
        *frame = p + 4;
        *len = peek;
        /* Whatever of the frame is buffered beyond the peek is dropped now,
         * the rest as it arrives. */
        size_t have = avail - 4;
        if (have >= flen) {
            fb->start += 4 + (size_t)flen;
        } else {
            fb->start = fb->len;
            fb->skip = (uint64_t)flen - have;
        }
        return CN_FRAME_TOO_BIG;
    }
    if (avail - 4 < flen) {
        return CN_FRAME_NONE;
    }
    *frame = p + 4;
    *len = flen;
    fb->start += 4 + (size_t)flen;
    return CN_FRAME_OK;
}
