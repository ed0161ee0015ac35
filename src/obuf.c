/* obuf: growable output buffer (see obuf.h). */
#include "obuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *obuf_reserve(struct obuf *b, size_t n) {
    size_t max = b->max ? b->max : OBUF_DEFAULT_MAX;
    if (b->failed || n > max || b->len > max - n) {
        b->failed = true;
        return NULL;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        if (cap > max)
            cap = max;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return NULL;
        }
        b->p = p;
        b->cap = cap;
    }
    return b->p + b->len;
}

void obuf_append(struct obuf *b, const void *p, size_t n) {
    char *dst = obuf_reserve(b, n);
    if (dst) {
        memcpy(dst, p, n);
        b->len += n;
    }
}

void obuf_puts(struct obuf *b, const char *s) {
    obuf_append(b, s, strlen(s));
}

void obuf_printf(struct obuf *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->failed = true;
        return;
    }
    if ((size_t)n < sizeof small) {
        obuf_append(b, small, (size_t)n);
        return;
    }
    char *dst = obuf_reserve(b, (size_t)n + 1);
    if (!dst)
        return;
    va_start(ap, fmt);
    (void)vsnprintf(dst, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void obuf_consume(struct obuf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

void obuf_free(struct obuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}
