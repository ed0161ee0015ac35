/* text: string helpers shared by the pure parsers, and the one way they read a file. */
#include "text.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

int text_read_file(const char *path, size_t max, char **buf, size_t *len, char *err,
                   size_t errlen) {
    size_t n = 0, cap = 0;
    char *b = NULL;
    FILE *f = fopen(path, "re");

    *buf = NULL;
    *len = 0;
    if (!f) {
        text_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    for (;;) {
        if (n + 1 >= cap) {
            /* Grow to one byte past max, so a file of exactly max bytes is told from a bigger
             * one, and keep room for the NUL. */
            size_t want = cap ? cap * 2 : 4096;
            if (want > max + 2)
                want = max + 2;
            if (want <= cap) {
                text_seterr(err, errlen, "%s: larger than %zu bytes", path, max);
                goto fail;
            }
            char *nb = realloc(b, want);
            if (!nb) {
                text_seterr(err, errlen, "%s: out of memory", path);
                goto fail;
            }
            b = nb;
            cap = want;
        }
        size_t got = fread(b + n, 1, cap - 1 - n, f);
        n += got;
        if (n > max) {
            text_seterr(err, errlen, "%s: larger than %zu bytes", path, max);
            goto fail;
        }
        if (got == 0)
            break;
    }
    if (ferror(f)) {
        text_seterr(err, errlen, "%s: cannot read: %s", path, strerror(errno));
        goto fail;
    }
    (void)fclose(f);
    b[n] = '\0';
    *buf = b;
    *len = n;
    return 0;
fail:
    (void)fclose(f);
    free(b);
    return -1;
}

void text_base64(const void *in, size_t n, char *out) {
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = in;
    size_t o = 0;

    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = i + 1 < n ? abc[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? abc[v & 63] : '=';
    }
    out[o] = '\0';
}

int text_file_private(const char *path, char *err, size_t errlen) {
    struct stat st;
    if (stat(path, &st) == -1) {
        text_seterr(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    if (st.st_mode & (S_IROTH | S_IWOTH)) {
        text_seterr(err, errlen, "%s: other users may read it (mode %04o): chmod o-rwx", path,
                    (unsigned)(st.st_mode & 07777));
        return -1;
    }
    return 0;
}
