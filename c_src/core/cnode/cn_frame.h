/* Reassembly of {packet, 4} frames from a byte stream (the port's stdin).
 *
 * Bytes are appended as they are read, in pieces of any size; complete frames
 * are then taken out one by one. A frame whose declared length exceeds the
 * maximum is never buffered whole: its first bytes (up to CN_FRAME_PEEK) are
 * handed out once, flagged as too large, so the caller can still read the
 * request's sender and reference for an error reply, and the rest of it is
 * discarded as it arrives. Pure C: no ei.h. */
#ifndef SANDBOX_CN_FRAME_H
#define SANDBOX_CN_FRAME_H

#include <stddef.h>
#include <stdint.h>

#define CN_FRAME_DEFAULT_MAX (64u * 1024u * 1024u)
/* Bytes of an oversized frame kept for the error reply. */
#define CN_FRAME_PEEK 1024u

typedef struct {
    uint8_t *buf;
    size_t start; /* first unconsumed byte */
    size_t len;   /* end of the buffered bytes */
    size_t cap;
    size_t max_frame;
    uint64_t skip; /* bytes of an oversized frame still to discard */
} cn_framebuf;

typedef enum {
    CN_FRAME_NONE = 0, /* no complete frame buffered */
    CN_FRAME_OK,       /* *frame, *len is one whole frame */
    CN_FRAME_TOO_BIG   /* *frame, *len is the start of a frame of *declared bytes */
} cn_frame_status;

void cn_frame_init(cn_framebuf *fb, size_t max_frame);
void cn_frame_free(cn_framebuf *fb);

/* Appends n bytes read from the stream. Returns 0, or -1 when out of memory. */
int cn_frame_append(cn_framebuf *fb, const uint8_t *data, size_t n);

/* Takes out the next frame. The pointer stays valid until the next call of
 * cn_frame_append() or cn_frame_free(). */
cn_frame_status cn_frame_next(cn_framebuf *fb, const uint8_t **frame, size_t *len,
                              uint64_t *declared);

/* Bytes buffered but not yet taken out (for tests). */
size_t cn_frame_pending(const cn_framebuf *fb);

/* Writes the 4-byte big-endian header of a frame of len bytes. */
void cn_frame_header(uint8_t out[4], uint32_t len);

#endif
