/* admin_http: the request reader of the admin listener (RFC 9112 request line and header
 * fields, RFC 6750 Bearer token). Pure: no syscalls, no ev.h, no allocation.
 *
 * How it works: every call walks buf from the start, one line at a time, over at most the first
 * ADMIN_REQ_MAX bytes, and stops at the first decision. Each check runs at the byte that decides
 * it and looks only at the bytes before it, so a prefix of the input that is decided is decided
 * the same way as the whole input: the outcome does not depend on how the bytes were split.
 * The request line is walked even before its LF arrives (a bad method or an overlong target is
 * refused at once); a header field line is checked when its LF arrives. A CR just before an LF
 * is part of the line ending; any other CR is a control byte and refused where it stands. */
#include "admin_http.h"

#include <string.h>

#include <openssl/sha.h>

/* tchar from RFC 9110 section 5.6.2. */
static bool is_tchar(unsigned char c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_digit(unsigned char c) {
    return c >= '0' && c <= '9';
}

/* Case-insensitive comparison of s[0..n) with a lowercase NUL-terminated name. */
static bool name_is(const unsigned char *s, size_t n, const char *lower) {
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = (s[i] >= 'A' && s[i] <= 'Z') ? (unsigned char)(s[i] - 'A' + 'a') : s[i];

        if (lower[i] == '\0' || c != (unsigned char)lower[i])
            return false;
    }
    return lower[i] == '\0';
}

static enum admin_parse fail(struct admin_request *req, int status, const char *reason) {
    req->status = status;
    req->reason = reason;
    return ADMIN_PARSE_ERROR;
}

/* The request line b[0..n), without its line ending; complete is false while its LF has not
 * arrived (MORE then means "fine so far"). */
static enum admin_parse request_line(const unsigned char *b, size_t n, bool complete,
                                     struct admin_request *req) {
    static const char version[] = "HTTP/d.d"; /* 'd': a digit */
    const unsigned char *qm;
    size_t i = 0, t, q, k;

    for (; i < n && b[i] != ' '; i++) {
        if (!is_tchar(b[i]))
            return fail(req, 400, "bad method");
        if (i + 1 == sizeof(req->method))
            return fail(req, 400, "method too long");
    }
    if (i == n)
        return complete ? fail(req, 400, "bad request line") : ADMIN_PARSE_MORE;
    if (i == 0)
        return fail(req, 400, "bad request line");
    memcpy(req->method, b, i);

    t = ++i;
    if (i < n && b[i] != '/')
        return fail(req, 400, "request target must start with '/'");
    for (; i < n && b[i] != ' '; i++) {
        if (b[i] < 0x21 || b[i] > 0x7e)
            return fail(req, 400, "bad byte in request target");
        if (i - t == ADMIN_PATH_MAX)
            return fail(req, 414, "request target too long");
    }
    if (i == n)
        return complete ? fail(req, 400, "bad request line") : ADMIN_PARSE_MORE;
    qm = memchr(b + t, '?', i - t);
    q = qm != NULL ? (size_t)(qm - b) : i;
    memcpy(req->path, b + t, q - t);
    if (q < i)
        memcpy(req->query, b + q + 1, i - q - 1);

    for (++i, k = 0; k < 8 && i + k < n; k++) {
        unsigned char c = b[i + k];

        if (version[k] == 'd' ? !is_digit(c) : c != (unsigned char)version[k])
            return fail(req, 400, "bad HTTP version");
    }
    /* "HTTP/2.0x" is a 400, not a 505: wait for the line end before calling it a version. */
    if (i + 8 < n || (k < 8 && complete))
        return fail(req, 400, "bad HTTP version");
    if (!complete)
        return ADMIN_PARSE_MORE;
    if (b[i + 5] != '1')
        return fail(req, 505, "HTTP version not supported");
    req->version_minor = b[i + 7] == '0' ? 0 : 1;
    return ADMIN_PARSE_MORE;
}

/* A non-empty header field line b[ls..e), without its line ending. */
static enum admin_parse header_line(const unsigned char *b, size_t ls, size_t e,
                                    struct admin_request *req) {
    size_t colon, vs, ve;

    if (b[ls] == ' ' || b[ls] == '\t')
        return fail(req, 400, "obs-fold not allowed");
    for (colon = ls; colon < e && b[colon] != ':'; colon++) {
        if (b[colon] == ' ' || b[colon] == '\t')
            return fail(req, 400, "whitespace in header field name");
        if (!is_tchar(b[colon]))
            return fail(req, 400, "bad header field name");
    }
    if (colon == e || colon == ls)
        return fail(req, 400, "bad header field");
    for (vs = colon + 1; vs < e; vs++) {
        if ((b[vs] < 0x20 && b[vs] != '\t') || b[vs] == 0x7f)
            return fail(req, 400, "bad byte in header field value");
    }
    vs = colon + 1;
    ve = e;
    while (vs < ve && (b[vs] == ' ' || b[vs] == '\t'))
        vs++;
    while (ve > vs && (b[ve - 1] == ' ' || b[ve - 1] == '\t'))
        ve--;

    if (name_is(b + ls, colon - ls, "content-length")) {
        if (ve - vs != 1 || b[vs] != '0')
            return fail(req, 400, "request body not allowed");
    } else if (name_is(b + ls, colon - ls, "transfer-encoding")) {
        return fail(req, 400, "Transfer-Encoding not allowed");
    } else if (name_is(b + ls, colon - ls, "authorization")) {
        if (req->has_auth)
            return fail(req, 400, "duplicate Authorization header");
        req->has_auth = true;
        req->auth_off = vs;
        req->auth_len = ve - vs;
    }
    return ADMIN_PARSE_MORE;
}

enum admin_parse admin_http_parse(const char *buf, size_t len, struct admin_request *req) {
    const unsigned char *b = (const unsigned char *)buf;
    size_t window = len < ADMIN_REQ_MAX ? len : ADMIN_REQ_MAX;
    size_t ls = 0, nfields = 0;
    enum admin_parse r;

    memset(req, 0, sizeof(*req));
    for (;;) {
        const unsigned char *lf = memchr(b + ls, '\n', window - ls);
        size_t e = lf != NULL ? (size_t)(lf - b) : window;

        /* Without its LF yet, a trailing CR may be the first half of the line's CR LF. */
        if (e > ls && b[e - 1] == '\r')
            e--;
        if (ls == 0) {
            r = request_line(b, e, lf != NULL, req);
        } else if (lf == NULL) {
            r = ADMIN_PARSE_MORE;
        } else if (e == ls) {
            req->header_len = (size_t)(lf - b) + 1;
            return ADMIN_PARSE_DONE;
        } else if (++nfields > ADMIN_FIELDS_MAX) {
            return fail(req, 431, "too many header fields");
        } else {
            r = header_line(b, ls, e, req);
        }
        if (r != ADMIN_PARSE_MORE)
            return r;
        if (lf == NULL)
            break;
        ls = (size_t)(lf - b) + 1;
    }
    if (len > ADMIN_REQ_MAX)
        return fail(req, 431, "request header block too large");
    return ADMIN_PARSE_MORE;
}

int admin_http_query_uint(const char *query, const char *name, unsigned long *out) {
    size_t nlen = name != NULL ? strlen(name) : 0;
    const char *p = query;

    if (query == NULL || nlen == 0)
        return 0;
    for (;;) {
        const char *amp = strchr(p, '&');
        size_t plen = amp != NULL ? (size_t)(amp - p) : strlen(p);

        if (plen >= nlen && memcmp(p, name, nlen) == 0 && (plen == nlen || p[nlen] == '=')) {
            size_t ndigits = plen > nlen ? plen - nlen - 1 : 0;
            unsigned long v = 0;

            if (ndigits == 0 || ndigits > 9)
                return -1;
            for (size_t i = nlen + 1; i < plen; i++) {
                if (!is_digit((unsigned char)p[i]))
                    return -1;
                v = v * 10 + (unsigned long)(p[i] - '0');
            }
            *out = v;
            return 1;
        }
        if (amp == NULL)
            return 0;
        p = amp + 1;
    }
}

bool admin_http_token_ok(const struct admin_request *req, const char *buf, const char *token) {
    const unsigned char *v;
    size_t n, i = 6;
    uint8_t got[SHA256_DIGEST_LENGTH], want[SHA256_DIGEST_LENGTH];
    unsigned diff = 0;

    if (!req->has_auth || buf == NULL || token == NULL || token[0] == '\0')
        return false;
    v = (const unsigned char *)buf + req->auth_off;
    n = req->auth_len;
    if (n <= i || !name_is(v, i, "bearer") || v[i] != ' ')
        return false;
    while (i < n && v[i] == ' ')
        i++;
    if (i == n)
        return false;
    /* Equal-length digests, compared in full: the time says nothing about where the presented
     * token first differs, nor about the configured token's length. */
    if (!SHA256(v + i, n - i, got) || !SHA256((const unsigned char *)token, strlen(token), want))
        return false;
    for (size_t k = 0; k < SHA256_DIGEST_LENGTH; k++)
        diff |= (unsigned)(got[k] ^ want[k]);
    return diff == 0;
}
