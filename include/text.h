/* text: small string helpers shared by the pure parsers (config, policy, addr). Pure. */
#ifndef CONNECTD_TEXT_H
#define CONNECTD_TEXT_H

#include <stdbool.h>
#include <stddef.h>

static inline bool text_is_space(char ch) {
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* snprintf into err, if err is not NULL and errlen > 0. */
void text_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Next comma-separated item of *sp with surrounding whitespace removed, copied into buf
 * (NUL-terminated). Returns 1 for an item (possibly empty), 0 at the end, -1 when the item
 * does not fit (buf then holds its truncated start, for the message). */
int text_next_item(const char **sp, char *buf, size_t bufsize);

/* Base64 (RFC 4648, with padding) of in[0..n) into out, which must hold 4 * ((n + 2) / 3) + 1
 * bytes; NUL-terminated. */
void text_base64(const void *in, size_t n, char *out);

/* A file with secrets (a parent's credentials) must not be readable by other users. Returns 0,
 * or -1 with "PATH: other users may read it (mode 0644): chmod o-rwx" in err. */
int text_file_private(const char *path, char *err, size_t errlen);

/* Read the whole file at path, at most max bytes, into a new buffer (*buf, NUL-terminated,
 * *len bytes before the NUL; free() it). Returns 0, or -1 with "PATH: cannot open: ...",
 * "PATH: larger than MAX bytes", "PATH: cannot read: ..." or "PATH: out of memory" in err. The
 * one file access of the otherwise pure loaders. */
int text_read_file(const char *path, size_t max, char **buf, size_t *len, char *err, size_t errlen);

#endif
