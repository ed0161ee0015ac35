/* obuf: a growable output buffer with a hard maximum, for responses built in memory (metrics
 * text, JSON batches). Pure: no syscalls. An all-zero struct is an empty buffer. */
#ifndef CONNECTD_OBUF_H
#define CONNECTD_OBUF_H

#include <stdbool.h>
#include <stddef.h>

struct obuf {
    char *p;
    size_t len, cap;
    size_t max;  /* 0 = OBUF_DEFAULT_MAX */
    bool failed; /* an append did not fit (memory or max): the content is incomplete */
};

#define OBUF_DEFAULT_MAX ((size_t)16 * 1024 * 1024)

/* Room for n more bytes; returns a pointer to it, or NULL (and sets failed). */
char *obuf_reserve(struct obuf *b, size_t n);
void obuf_append(struct obuf *b, const void *p, size_t n);
void obuf_puts(struct obuf *b, const char *s);
void obuf_printf(struct obuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes (sent). */
void obuf_consume(struct obuf *b, size_t n);
void obuf_free(struct obuf *b);

#endif
