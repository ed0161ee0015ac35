/* text: string helpers shared by the pure parsers. */
#include "text.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void text_seterr(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    (void)vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int text_next_item(const char **sp, char *buf, size_t bufsize) {
    const char *s = *sp, *end, *comma;
    size_t n;

    while (text_is_space(*s))
        s++;
    if (*s == '\0') {
        *sp = s;
        return 0;
    }
    comma = strchr(s, ',');
    end = comma ? comma : s + strlen(s);
    *sp = comma ? comma + 1 : end;
    while (end > s && text_is_space(end[-1]))
        end--;
    n = (size_t)(end - s);
    if (n >= bufsize) {
        memcpy(buf, s, bufsize - 1);
        buf[bufsize - 1] = '\0';
        return -1;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    return 1;
}
