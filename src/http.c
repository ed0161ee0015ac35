/* http: bounded, incremental parser for a proxy's CONNECT request (RFC 9112, RFC 9110 §9.3.6),
 * and the builder of the proxy's own responses. Pure: no syscalls, no ev.h, no allocation.
 *
 * How it works: http_parse() walks the caller's buffer one byte at a time from p->pos. Every
 * check is a function of the bytes seen so far and runs at the byte that decides it, so the
 * outcome (result, status, reason, req) does not depend on how the bytes were split across
 * reads. A byte is looked at by the scan loop once and, when its line is complete, once more by
 * the line parser: total work is linear in the request size.
 *
 * Choices where the RFCs are silent or leave room:
 * - Limits: a zero field in struct http_limits means the default (max_line 8192, max_headers 100,
 *   max_total 16384). http_parser_init() resolves the defaults, so p->limits holds the values in
 *   force. A calloc'd parser (state 0) is initialised with defaults on the first http_parse().
 * - max_line counts the request line without its CR LF; it is reported (414) as soon as the
 *   buffered part of the line is longer, without waiting for the LF. max_total counts every byte
 *   of the header block, including ignored empty lines before the request line and the final
 *   empty line; 431 as soon as one byte too many arrives. When one byte breaks both, 414 wins.
 *   max_headers counts header field lines (431 when the count is exceeded).
 * - Up to HTTP_LEADING_EMPTY_MAX (4) empty lines before the request line are ignored (RFC 9112
 *   §2.2); one more is a 400.
 * - Line endings: CR LF or a bare LF; a CR not followed by LF anywhere is a 400.
 * - Request line: exactly "method SP target SP HTTP/1.x"; checked in this order: shape, version,
 *   method, target. So "GET / HTTP/1.1" is a 405 (not a 400 for the origin-form target), but
 *   "GET / HTTP/2.0" is a 400. Bytes that can never be part of a request line (CTL, HTAB, DEL,
 *   non-ASCII, a non-token byte in the method) are refused at once, so a client speaking TLS or
 *   garbage to the proxy gets a 400 on its first bytes instead of waiting for the timeout.
 * - A method longer than HTTP_METHOD_MAX is a 400 ("method too long"), not a 405: it is refused
 *   before it could be copied. On a 405, req.method holds the method, and the request line is
 *   buf[p->line_start .. p->pos) (for a PAC answer or the access log).
 * - HTTP/1.2 to HTTP/1.9 are read as HTTP/1.1 (RFC 9110 §2.5); another major version
 *   ("HTTP/2.0", the HTTP/2 preface "PRI * HTTP/2.0") is a 505; any other version text
 *   ("HTTP/1.10", "http/1.1", "HTTP/1") is a 400.
 * - Host: one Host field with a valid authority (port optional) is required for HTTP/1.1; a
 *   second Host is a 400 in any version; an invalid or empty Host is a 400 even in HTTP/1.0.
 *   Host need not equal the target: the target decides where we connect, and the policy checks
 *   the target. (RFC 9110 §7.2 has the target win for a proxy.)
 * - Content-Length is allowed only when every occurrence is exactly "0" (CONNECT has no body
 *   that we could tell apart from tunnel data); any Transfer-Encoding is a 400.
 * - The first Proxy-Authorization field is remembered even when its value is empty (later ones
 *   are ignored); the auth module decides what an empty or duplicate credential means.
 * - Header fields other than Host, Content-Length, Transfer-Encoding and Proxy-Authorization are
 *   validated (name is a token, value bytes are VCHAR / obs-text / SP / HTAB) and ignored.
 * - Authority: reg-name bytes are letters, digits, '-', '_' and '.'; labels of 1-63 bytes, at
 *   most 253 bytes after one trailing dot is removed; stored lowercased. Hyphens at the start or
 *   end of a label are tolerated (resolvers accept them). Anti-SSRF: when the last label is a
 *   number (all digits, or "0x"/"0X" followed by zero or more hex digits, as in the WHATWG URL
 *   "ends in a number" rule) the name is an IPv4 address in some notation, read as the WHATWG
 *   URL IPv4 parser (and so every browser) reads it: "127.1", "2130706433", "0x7f.1",
 *   "0177.0.0.1" all become HTTP_HOST_IPV4 "127.0.0.1", so that policy sees the address that
 *   would be dialed. What that parser rejects ("1.2.3.4.5", "256.1.1.1", "09.1.1.1",
 *   "4294967296") is a 400. "1.2.3.4." is the IPv4 1.2.3.4. IPv6 only in
 *   brackets, without zone id or IPvFuture, stored as inet_ntop() prints it. A port is 1-5
 *   digits with a value of 1-65535 ("00443" is 443); "host:" with an empty port is a 400 even
 *   where the port is optional.
 * - http_build_error(): details longer than HTTP_DETAILS_MAX (256) bytes are cut; '"' becomes
 *   '\'', '\\' becomes '/', other bytes outside 0x20-0x7E become '?', in both the Proxy-Status
 *   header and the body. The output is NUL-terminated; 0 is returned when the reply plus its NUL
 *   does not fit, or when proxy_error is not an sf-token, params holds a byte outside 0x20-0x7E,
 *   or extra is not a sequence of non-empty CR LF terminated lines (no header injection). */
#include "http.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#define HTTP_DEFAULT_MAX_LINE    8192
#define HTTP_DEFAULT_MAX_HEADERS 100
#define HTTP_DEFAULT_MAX_TOTAL   16384
#define HTTP_LEADING_EMPTY_MAX   4
#define HTTP_DETAILS_MAX         256
#define HTTP_NAME_MAX            253
#define HTTP_LABEL_MAX           63

enum http_state {
    HTTP_ST_METHOD = 1, /* in the request line before its first SP, or in a leading empty line */
    HTTP_ST_REQLINE,    /* in the request line after its first SP */
    HTTP_ST_HEADERS,    /* at or in a header field line, or the final empty line */
    HTTP_ST_DONE,
    HTTP_ST_ERROR,
};

const char HTTP_CONNECT_OK[] = "HTTP/1.1 200 Connection established\r\n\r\n";
const size_t HTTP_CONNECT_OK_LEN = sizeof(HTTP_CONNECT_OK) - 1;

/* tchar from RFC 9110 §5.6.2. */
static bool is_tchar(unsigned char c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_digit(unsigned char c) {
    return c >= '0' && c <= '9';
}

static bool is_hex(unsigned char c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static bool is_alpha(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static unsigned char to_lower(unsigned char c) {
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c - 'A' + 'a') : c;
}

/* Case-insensitive comparison of s[0..n) with a lowercase NUL-terminated name. */
static bool name_is(const unsigned char *s, size_t n, const char *lower) {
    size_t i;

    for (i = 0; i < n; i++) {
        if (lower[i] == '\0' || to_lower(s[i]) != (unsigned char)lower[i])
            return false;
    }
    return lower[i] == '\0';
}

/* ---- authority ---------------------------------------------------------------------------- */

/* "1-5 digits, 1..65535". */
static const char *parse_port(const unsigned char *s, size_t n, uint16_t *port) {
    unsigned long v = 0;

    if (n == 0)
        return "missing port";
    if (n > 5)
        return "bad port";
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return "bad port";
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v == 0 || v > 65535)
        return "port out of range";
    *port = (uint16_t)v;
    return NULL;
}

/* Exactly four decimal parts 0-255, no leading zeros except "0" itself. */
/* One part of an IPv4 address as the WHATWG URL standard reads it: "0x"/"0X" prefix = hex
 * ("0x" alone is 0), another leading 0 = octal, else decimal. Returns false for bad digits or a
 * value above 2^32. */
static bool ipv4_part(const unsigned char *s, size_t n, uint64_t *out) {
    unsigned radix = 10;
    uint64_t v = 0;

    if (n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        radix = 16;
        s += 2;
        n -= 2;
    } else if (n >= 2 && s[0] == '0') {
        radix = 8;
        s++;
        n--;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned d;

        if (is_digit(s[i]))
            d = (unsigned)(s[i] - '0');
        else if (radix == 16 && is_hex(s[i]))
            d = (unsigned)(to_lower(s[i]) - 'a' + 10);
        else
            return false;
        if (d >= radix)
            return false;
        v = v * radix + d;
        if (v > 0xffffffffu)
            return false;
    }
    *out = v;
    return true;
}

/* The WHATWG URL IPv4 parser: 1-4 dot-separated parts, the last filling the remaining bytes
 * ("127.1", "2130706433", "0x7f.1", "0177.0.0.1" are all 127.0.0.1). Writes the canonical
 * dotted quad into out (16 bytes); returns false when the text is not a valid address. */
static bool ipv4_normalise(const unsigned char *s, size_t n, char *out) {
    uint64_t parts[4];
    size_t nparts = 0, start = 0;

    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != '.')
            continue;
        if (nparts == 4 || i == start || !ipv4_part(s + start, i - start, &parts[nparts]))
            return false;
        nparts++;
        start = i + 1;
    }
    uint64_t v = 0;
    for (size_t i = 0; i + 1 < nparts; i++) {
        if (parts[i] > 255)
            return false;
        v |= parts[i] << (8 * (3 - i));
    }
    uint64_t last = parts[nparts - 1];
    if (last >= (uint64_t)1 << (8 * (5 - nparts)))
        return false;
    v |= last;
    snprintf(out, 16, "%u.%u.%u.%u", (unsigned)(v >> 24), (unsigned)(v >> 16) & 255,
             (unsigned)(v >> 8) & 255, (unsigned)v & 255);
    return true;
}

/* Does this label look like a number to an inet_aton-style or WHATWG URL parser? */
static bool label_is_numeric(const unsigned char *s, size_t n) {
    size_t i = 0;

    if (n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        for (i = 2; i < n; i++) {
            if (!is_hex(s[i]))
                return false;
        }
        return true;
    }
    for (i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return false;
    }
    return n > 0;
}

/* reg-name or dotted quad; out has HTTP_HOST_MAX + 1 bytes. */
static const char *parse_name(const unsigned char *s, size_t n, char *out,
                              enum http_host_kind *kind) {
    size_t label_start = 0;

    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];

        if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '_' && c != '.')
            return "bad character in host";
    }
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n == 0)
        return "empty host";
    if (n > HTTP_NAME_MAX)
        return "host name too long";
    for (size_t i = 0; i <= n; i++) {
        if (i == n || s[i] == '.') {
            if (i == label_start)
                return "empty label in host";
            if (i - label_start > HTTP_LABEL_MAX)
                return "host label too long";
            if (i < n)
                label_start = i + 1;
        }
    }
    /* Anti-SSRF: "127.1", "2130706433", "0x7f.1" are IPv4 addresses to browsers and many
     * resolvers: read them as the address they stand for, so the checks see what is dialed. */
    if (label_is_numeric(s + label_start, n - label_start)) {
        if (!ipv4_normalise(s, n, out))
            return "bad IPv4 address";
        *kind = HTTP_HOST_IPV4;
        return NULL;
    } else {
        *kind = HTTP_HOST_NAME;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = (char)to_lower(s[i]);
    out[n] = '\0';
    return NULL;
}

/* The inside of "[...]"; out has HTTP_HOST_MAX + 1 bytes. */
static const char *parse_ipv6(const unsigned char *s, size_t n, char *out) {
    char tmp[INET6_ADDRSTRLEN];
    struct in6_addr a;

    if (n == 0)
        return "empty IPv6 address";
    if (s[0] == 'v' || s[0] == 'V')
        return "IPvFuture not supported";
    if (memchr(s, '%', n) != NULL)
        return "IPv6 zone id not allowed";
    if (n >= sizeof(tmp))
        return "bad IPv6 address";
    for (size_t i = 0; i < n; i++) {
        if (!is_hex(s[i]) && s[i] != ':' && s[i] != '.')
            return "bad IPv6 address";
    }
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    if (inet_pton(AF_INET6, tmp, &a) != 1)
        return "bad IPv6 address";
    if (inet_ntop(AF_INET6, &a, out, HTTP_HOST_MAX + 1) == NULL)
        return "bad IPv6 address";
    return NULL;
}

int http_parse_authority(const char *str, size_t len, bool port_optional, struct http_request *req,
                         const char **reason) {
    const unsigned char *s = (const unsigned char *)str;
    const unsigned char *host, *port_str = NULL;
    size_t host_len, port_len = 0;
    bool bracket = false;
    char out[HTTP_HOST_MAX + 1];
    enum http_host_kind kind = HTTP_HOST_IPV6;
    uint16_t port = 0;
    const char *why;

    if (len == 0) {
        *reason = "empty authority";
        return -1;
    }
    if (memchr(s, '/', len) != NULL) {
        *reason = "request target must be host:port";
        return -1;
    }
    if (memchr(s, '@', len) != NULL) {
        *reason = "userinfo not allowed";
        return -1;
    }
    if (s[0] == '[') {
        const unsigned char *rb = memchr(s, ']', len);
        size_t after;

        if (rb == NULL) {
            *reason = "unterminated IPv6 address";
            return -1;
        }
        bracket = true;
        host = s + 1;
        host_len = (size_t)(rb - host);
        after = (size_t)(rb - s) + 1;
        if (after < len) {
            if (s[after] != ':') {
                *reason = "bad authority";
                return -1;
            }
            port_str = s + after + 1;
            port_len = len - after - 1;
        }
    } else {
        const unsigned char *colon = memchr(s, ':', len);

        host = s;
        host_len = len;
        if (colon != NULL) {
            host_len = (size_t)(colon - s);
            port_str = colon + 1;
            port_len = len - host_len - 1;
            if (memchr(port_str, ':', port_len) != NULL) {
                *reason = "IPv6 address must be in brackets";
                return -1;
            }
        }
    }

    why = bracket ? parse_ipv6(host, host_len, out) : parse_name(host, host_len, out, &kind);
    if (why == NULL) {
        if (port_str != NULL)
            why = parse_port(port_str, port_len, &port);
        else if (!port_optional)
            why = "missing port";
    }
    if (why != NULL) {
        *reason = why;
        return -1;
    }
    memcpy(req->host, out, strlen(out) + 1);
    req->host_kind = kind;
    req->port = port;
    return 0;
}

/* ---- request parser ----------------------------------------------------------------------- */

void http_parser_init(struct http_parser *p, const struct http_limits *limits) {
    memset(p, 0, sizeof(*p));
    if (limits != NULL)
        p->limits = *limits;
    if (p->limits.max_line == 0)
        p->limits.max_line = HTTP_DEFAULT_MAX_LINE;
    if (p->limits.max_headers == 0)
        p->limits.max_headers = HTTP_DEFAULT_MAX_HEADERS;
    if (p->limits.max_total == 0)
        p->limits.max_total = HTTP_DEFAULT_MAX_TOTAL;
    p->state = HTTP_ST_METHOD;
}

/* at is the index of the byte that decided the error. */
static enum http_parse_result fail(struct http_parser *p, size_t at, int status,
                                   const char *reason) {
    p->state = HTTP_ST_ERROR;
    p->pos = at + 1;
    p->status = status;
    p->reason = reason;
    return HTTP_PARSE_ERROR;
}

/* The request line is b[ls..e), without its line ending; lf is the index of its LF. It has a
 * first SP (the state machine saw it) and only SP, CR-free printable ASCII. */
static enum http_parse_result request_line(struct http_parser *p, const unsigned char *b, size_t ls,
                                           size_t e, size_t lf) {
    const unsigned char *sp1 = memchr(b + ls, ' ', e - ls);
    const unsigned char *target, *sp2, *version;
    size_t method_len, version_len;
    const char *why;

    if (sp1 == NULL)
        return fail(p, lf, 400, "malformed request line");
    method_len = (size_t)(sp1 - (b + ls));
    target = sp1 + 1;
    sp2 = memchr(target, ' ', (size_t)(b + e - target));
    if (sp2 == NULL || sp2 == target)
        return fail(p, lf, 400, "malformed request line");
    version = sp2 + 1;
    version_len = (size_t)(b + e - version);
    if (memchr(version, ' ', version_len) != NULL)
        return fail(p, lf, 400, "malformed request line");
    if (version_len == 8 && memcmp(version, "HTTP/1.", 7) == 0 && is_digit(version[7])) {
        /* RFC 9110 §2.5: a higher minor version is processed as the highest we implement. */
        p->req.version_minor = version[7] == '0' ? 0 : 1;
    } else if (version_len == 8 && memcmp(version, "HTTP/", 5) == 0 && is_digit(version[5]) &&
               version[6] == '.' && is_digit(version[7])) {
        return fail(p, lf, 505, "HTTP version not supported");
    } else {
        return fail(p, lf, 400, "malformed HTTP version");
    }

    /* Longer methods were refused byte by byte already; this keeps the copy safe regardless. */
    if (method_len > HTTP_METHOD_MAX)
        return fail(p, lf, 400, "method too long");
    memcpy(p->req.method, b + ls, method_len);
    p->req.method[method_len] = '\0';
    if (method_len != 7 || memcmp(p->req.method, "CONNECT", 7) != 0)
        return fail(p, lf, 405, "method not allowed");

    if (http_parse_authority((const char *)target, (size_t)(sp2 - target), false, &p->req, &why) !=
        0)
        return fail(p, lf, 400, why);
    return HTTP_PARSE_MORE;
}

/* A non-empty header field line b[ls..e), without its line ending; lf is the index of its LF. */
static enum http_parse_result header_line(struct http_parser *p, const unsigned char *b, size_t ls,
                                          size_t e, size_t lf) {
    size_t colon, vs, ve, name_len;
    const unsigned char *name = b + ls;

    if (b[ls] == ' ' || b[ls] == '\t')
        return fail(p, lf, 400, "obs-fold not allowed");
    if (++p->nheaders > p->limits.max_headers)
        return fail(p, lf, 431, "too many header fields");

    for (colon = ls; colon < e && b[colon] != ':'; colon++) {
        if (b[colon] == ' ' || b[colon] == '\t')
            return fail(p, lf, 400, "whitespace in header field name");
        if (!is_tchar(b[colon]))
            return fail(p, lf, 400, "bad header field name");
    }
    if (colon == e)
        return fail(p, lf, 400, "missing colon in header field");
    if (colon == ls)
        return fail(p, lf, 400, "empty header field name");
    name_len = colon - ls;

    for (size_t i = colon + 1; i < e; i++) {
        unsigned char c = b[i];

        if (c != '\t' && (c < 0x20 || c == 0x7f))
            return fail(p, lf, 400, "bad byte in header field value");
    }
    vs = colon + 1;
    ve = e;
    while (vs < ve && (b[vs] == ' ' || b[vs] == '\t'))
        vs++;
    while (ve > vs && (b[ve - 1] == ' ' || b[ve - 1] == '\t'))
        ve--;

    if (name_is(name, name_len, "host")) {
        struct http_request scratch;
        const char *why;

        if (++p->host_count > 1)
            return fail(p, lf, 400, "duplicate Host header");
        if (http_parse_authority((const char *)b + vs, ve - vs, true, &scratch, &why) != 0)
            return fail(p, lf, 400, "bad Host header");
    } else if (name_is(name, name_len, "content-length")) {
        if (ve - vs != 1 || b[vs] != '0')
            return fail(p, lf, 400, "request body not allowed");
    } else if (name_is(name, name_len, "transfer-encoding")) {
        return fail(p, lf, 400, "Transfer-Encoding not allowed");
    } else if (name_is(name, name_len, "proxy-authorization")) {
        /* Offset 0 is the request line, so it means "not seen yet". */
        if (p->req.proxy_auth_off == 0) {
            p->req.proxy_auth_off = vs;
            p->req.proxy_auth_len = ve - vs;
        }
    }
    return HTTP_PARSE_MORE;
}

/* The LF at index lf ends the line that began at p->line_start. */
static enum http_parse_result end_of_line(struct http_parser *p, const unsigned char *b,
                                          size_t lf) {
    size_t ls = p->line_start, e = lf;
    enum http_parse_result r;

    if (e > ls && b[e - 1] == '\r')
        e--;

    switch (p->state) {
    case HTTP_ST_METHOD:
        if (e != ls)
            return fail(p, lf, 400, "malformed request line");
        /* nheaders counts leading empty lines until the request line is complete. */
        if (++p->nheaders > HTTP_LEADING_EMPTY_MAX)
            return fail(p, lf, 400, "too many empty lines before request line");
        break;
    case HTTP_ST_REQLINE:
        r = request_line(p, b, ls, e, lf);
        if (r != HTTP_PARSE_MORE)
            return r;
        p->nheaders = 0;
        p->state = HTTP_ST_HEADERS;
        break;
    case HTTP_ST_HEADERS:
        if (e == ls) {
            if (p->req.version_minor == 1 && p->host_count == 0)
                return fail(p, lf, 400, "missing Host header");
            p->state = HTTP_ST_DONE;
            p->req.header_len = lf + 1;
            p->pos = lf + 1;
            return HTTP_PARSE_DONE;
        }
        r = header_line(p, b, ls, e, lf);
        if (r != HTTP_PARSE_MORE)
            return r;
        break;
    default:
        return fail(p, lf, 400, "internal parser error");
    }
    p->line_start = lf + 1;
    return HTTP_PARSE_MORE;
}

enum http_parse_result http_parse(struct http_parser *p, const char *buf, size_t len) {
    const unsigned char *b = (const unsigned char *)buf;

    if (p->state == 0) {
        struct http_limits l = p->limits;

        http_parser_init(p, &l);
    }
    if (p->state == HTTP_ST_DONE)
        return HTTP_PARSE_DONE;
    if (p->state == HTTP_ST_ERROR)
        return HTTP_PARSE_ERROR;

    for (size_t i = p->pos; i < len; i++) {
        unsigned char c = b[i];

        if (i > p->line_start && b[i - 1] == '\r' && c != '\n')
            return fail(p, i, 400, "bare CR");
        if (c != '\n' && p->state != HTTP_ST_HEADERS) {
            /* Request line length without the CR that may be the first half of its CR LF. */
            size_t n = i - p->line_start + (c == '\r' ? 0 : 1);

            if (n > p->limits.max_line)
                return fail(p, i, 414, "request line too long");
        }
        if (i + 1 > p->limits.max_total)
            return fail(p, i, 431, "request header block too large");

        if (c == '\n') {
            enum http_parse_result r = end_of_line(p, b, i);

            if (r != HTTP_PARSE_MORE)
                return r;
            continue;
        }
        if (c == '\r')
            continue;
        if (p->state == HTTP_ST_METHOD) {
            if (c == ' ') {
                if (i == p->line_start)
                    return fail(p, i, 400, "malformed request line");
                p->state = HTTP_ST_REQLINE;
            } else if (!is_tchar(c)) {
                return fail(p, i, 400, "malformed request line");
            } else if (i - p->line_start + 1 > HTTP_METHOD_MAX) {
                return fail(p, i, 400, "method too long");
            }
        } else if (p->state == HTTP_ST_REQLINE) {
            if (c < 0x20 || c > 0x7e)
                return fail(p, i, 400, "bad byte in request line");
        }
    }
    p->pos = len > p->pos ? len : p->pos;
    return HTTP_PARSE_MORE;
}

/* ---- responses ---------------------------------------------------------------------------- */

const char *http_status_text(int status) {
    switch (status) {
    case 200:
        return "Connection established";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 407:
        return "Proxy Authentication Required";
    case 408:
        return "Request Timeout";
    case 414:
        return "URI Too Long";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 505:
        return "HTTP Version Not Supported";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

/* A bounded writer: once something does not fit, every later write is dropped. */
struct writer {
    char *out;
    size_t cap, len;
    bool overflow;
};

static void put(struct writer *w, const char *s, size_t n) {
    if (w->overflow || n > w->cap - w->len) {
        w->overflow = true;
        return;
    }
    memcpy(w->out + w->len, s, n);
    w->len += n;
}

static void put_str(struct writer *w, const char *s) {
    put(w, s, strlen(s));
}

static void put_uint(struct writer *w, size_t v) {
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%zu", v);

    if (n < 0 || (size_t)n >= sizeof(tmp)) {
        w->overflow = true;
        return;
    }
    put(w, tmp, (size_t)n);
}

/* Same length as the input: one byte out for every byte in. */
static void put_sanitised(struct writer *w, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char r = (char)c;

        if (c == '"')
            r = '\'';
        else if (c == '\\')
            r = '/';
        else if (c < 0x20 || c > 0x7e)
            r = '?';
        put(w, &r, 1);
    }
}

/* sf-token (RFC 8941 §3.3.4): ( ALPHA / "*" ) *( tchar / ":" / "/" ). */
static bool is_sf_token(const char *s) {
    const unsigned char *u = (const unsigned char *)s;

    if (!is_alpha(u[0]) && u[0] != '*')
        return false;
    for (size_t i = 1; u[i] != '\0'; i++) {
        if (!is_tchar(u[i]) && u[i] != ':' && u[i] != '/')
            return false;
    }
    return true;
}

static bool is_printable(const char *s) {
    for (const unsigned char *u = (const unsigned char *)s; *u != '\0'; u++) {
        if (*u < 0x20 || *u > 0x7e)
            return false;
    }
    return true;
}

/* Zero or more non-empty lines, each ending in CR LF, with no other CR or LF. */
static bool is_header_lines(const char *s) {
    size_t line_len = 0;

    for (const unsigned char *u = (const unsigned char *)s; *u != '\0'; u++) {
        if (*u == '\r') {
            if (u[1] != '\n' || line_len == 0)
                return false;
            u++;
            line_len = 0;
        } else if (*u == '\n' || (*u < 0x20 && *u != '\t') || *u == 0x7f) {
            return false;
        } else {
            line_len++;
        }
    }
    return line_len == 0;
}

size_t http_build_error(char *out, size_t outlen, int status, const char *proxy_error,
                        const char *params, const char *details, const char *extra) {
    struct writer w = {.out = out, .cap = outlen, .len = 0, .overflow = false};
    const char *text = http_status_text(status);
    size_t dlen = details != NULL ? strnlen(details, HTTP_DETAILS_MAX) : 0;
    size_t body_len;

    if (out == NULL || outlen == 0)
        return 0;
    out[0] = '\0';
    if (status < 100 || status > 999 || proxy_error == NULL || !is_sf_token(proxy_error) ||
        (params != NULL && !is_printable(params)) || (extra != NULL && !is_header_lines(extra)))
        return 0;

    put_str(&w, "HTTP/1.1 ");
    put_uint(&w, (size_t)status);
    put_str(&w, " ");
    put_str(&w, text);
    put_str(&w, "\r\nProxy-Status: connectd; error=");
    put_str(&w, proxy_error);
    if (params != NULL && params[0] != '\0') {
        put_str(&w, "; ");
        put_str(&w, params);
    }
    if (details != NULL) {
        put_str(&w, "; details=\"");
        put_sanitised(&w, details, dlen);
        put_str(&w, "\"");
    }
    put_str(&w, "\r\n");
    if (extra != NULL)
        put_str(&w, extra);

    /* Body: "<status> <text>: <details or text>\n"; sanitising keeps the length. */
    body_len = 3 + 1 + strlen(text) + 2 + (details != NULL ? dlen : strlen(text)) + 1;
    put_str(&w, "Content-Type: text/plain\r\nContent-Length: ");
    put_uint(&w, body_len);
    put_str(&w, "\r\nConnection: close\r\n\r\n");

    put_uint(&w, (size_t)status);
    put_str(&w, " ");
    put_str(&w, text);
    put_str(&w, ": ");
    if (details != NULL)
        put_sanitised(&w, details, dlen);
    else
        put_str(&w, text);
    put_str(&w, "\n");

    /* Room for the NUL too, so callers may log the reply as a string. */
    put(&w, "", 1);
    if (w.overflow) {
        out[0] = '\0';
        return 0;
    }
    return w.len - 1;
}

/* ---- a parent proxy's answer ---- */

enum http_parse_result http_parse_response(const char *buf, size_t len, size_t max, int *status,
                                           size_t *head_len, const char **reason) {
    const unsigned char *b = (const unsigned char *)buf;
    size_t end = 0;

    *reason = NULL;
    /* The status line is judged as soon as it is there: "HTTP/1.x NNN". */
    if (len >= 1 && b[0] != 'H') {
        *reason = "not an HTTP response";
        return HTTP_PARSE_ERROR;
    }
    if (len >= 12) {
        if (memcmp(b, "HTTP/1.", 7) != 0 || !is_digit(b[7]) || b[8] != ' ' || !is_digit(b[9]) ||
            !is_digit(b[10]) || !is_digit(b[11]) ||
            (len > 12 && b[12] != ' ' && b[12] != '\r' && b[12] != '\n')) {
            *reason = "bad status line";
            return HTTP_PARSE_ERROR;
        }
        *status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    }
    for (size_t i = 0; i < len && i < max; i++) {
        if (b[i] != '\n')
            continue;
        if (i >= 1 && b[i - 1] == '\n') {
            end = i + 1;
            break;
        }
        if (i >= 2 && b[i - 1] == '\r' && b[i - 2] == '\n') {
            end = i + 1;
            break;
        }
    }
    if (end == 0) {
        if (len >= max) {
            *reason = "response header too large";
            return HTTP_PARSE_ERROR;
        }
        return HTTP_PARSE_MORE;
    }
    if (end < 13) {
        *reason = "bad status line";
        return HTTP_PARSE_ERROR;
    }
    *head_len = end;
    return HTTP_PARSE_DONE;
}

size_t http_header_values(const char *buf, size_t header_len, const char *name, char *out,
                          size_t outlen) {
    size_t nl = strlen(name), o = 0, pos = 0;
    char lower[64];

    if (outlen == 0)
        return 0;
    out[0] = '\0';
    if (nl >= sizeof lower)
        return 0;
    for (size_t i = 0; i <= nl; i++)
        lower[i] = (char)to_lower((unsigned char)name[i]);
    out[0] = '\0';
    /* Skip the request line; then each "name: value" line. */
    while (pos < header_len && buf[pos] != '\n')
        pos++;
    while (++pos < header_len) {
        size_t eol = pos;
        while (eol < header_len && buf[eol] != '\n')
            eol++;
        if (eol - pos > nl && buf[pos + nl] == ':' &&
            name_is((const unsigned char *)buf + pos, nl, lower)) {
            size_t v = pos + nl + 1, e = eol;
            while (v < e && (buf[v] == ' ' || buf[v] == '\t'))
                v++;
            while (e > v && (buf[e - 1] == '\r' || buf[e - 1] == ' ' || buf[e - 1] == '\t'))
                e--;
            if (e > v) {
                size_t need = (o ? 2 : 0) + (e - v);
                if (o + need >= outlen)
                    break; /* what fits is kept whole, item by item */
                if (o) {
                    memcpy(out + o, ", ", 2);
                    o += 2;
                }
                memcpy(out + o, buf + v, e - v);
                o += e - v;
                out[o] = '\0';
            }
        }
        pos = eol;
    }
    return o;
}
