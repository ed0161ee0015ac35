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

#endif
