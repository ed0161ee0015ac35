/* buf: fixed-capacity byte queue used by the relay. */
#include "buf.h"

#include <string.h>

void buf_produce(struct buf *b, size_t n) {
    b->end += n;
}

void buf_consume(struct buf *b, size_t n) {
    b->start += n;
    if (b->start == b->end)
        b->start = b->end = 0;
}

void buf_compact(struct buf *b) {
    if (b->start == 0)
        return;
    memmove(b->data, b->data + b->start, b->end - b->start);
    b->end -= b->start;
    b->start = 0;
}

size_t buf_append(struct buf *b, const void *p, size_t n) {
    if (n > buf_room(b))
        buf_compact(b);
    if (n > buf_room(b))
        n = buf_room(b);
    memcpy(buf_tail(b), p, n);
    b->end += n;
    return n;
}
