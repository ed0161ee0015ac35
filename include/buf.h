/* buf: a fixed-capacity byte queue. An all-zero struct is a valid empty buffer.
 * Pure: no syscalls. */
#ifndef CONNECTD_BUF_H
#define CONNECTD_BUF_H

#include <stddef.h>

/* Bytes one relay direction buffers at most; reads stop while it is full (backpressure). */
#define BUF_CAP (64 * 1024)

struct buf {
    size_t start; /* first unsent byte */
    size_t end;   /* one past the last byte */
    unsigned char data[BUF_CAP];
};

static inline size_t buf_len(const struct buf *b) {
    return b->end - b->start;
}

/* Room left at the tail; buf_compact() first to reclaim consumed space at the head. */
static inline size_t buf_room(const struct buf *b) {
    return BUF_CAP - b->end;
}

static inline unsigned char *buf_tail(struct buf *b) {
    return b->data + b->end;
}

static inline const unsigned char *buf_head(const struct buf *b) {
    return b->data + b->start;
}

/* Record n bytes written at buf_tail(). */
void buf_produce(struct buf *b, size_t n);
/* Drop n bytes from the head; an emptied buffer rewinds to offset 0. */
void buf_consume(struct buf *b, size_t n);
/* Move unsent bytes to the front so the tail has all free room. */
void buf_compact(struct buf *b);
/* Append up to n bytes; returns how many fit. */
size_t buf_append(struct buf *b, const void *p, size_t n);

#endif
