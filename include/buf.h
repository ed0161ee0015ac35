/* buf: a fixed-capacity byte queue, allocated with its capacity (cap bytes of data). Pure: no
 * syscalls. */
#ifndef CONNECTD_BUF_H
#define CONNECTD_BUF_H

#include <stddef.h>

/* Bytes one relay direction buffers at most; reads stop while it is full (backpressure). */
#define BUF_CAP (64 * 1024)
/* A download towards a TLS client (records built by OpenSSL in user space): one read of 256 KiB
 * rather than 64 is a quarter of the reads and of the sends, 16% of its CPU per GB
 * (BENCHMARKS.md, 2026-12-04, night). Only there: HTTP/2 streams and the rest keep 64 KiB. */
#define BUF_CAP_BIG (256 * 1024)

struct buf {
    size_t start; /* first unsent byte */
    size_t end;   /* one past the last byte */
    size_t cap;   /* bytes data holds */
    unsigned char data[];
};

static inline size_t buf_len(const struct buf *b) {
    return b->end - b->start;
}

/* Room left at the tail; buf_compact() first to reclaim consumed space at the head. */
static inline size_t buf_room(const struct buf *b) {
    return b->cap - b->end;
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
