/* libFuzzer harness for src/http.c: the CONNECT request parser, http_parse_authority() and
 * http_build_error().
 *
 * Input: 4 control bytes (missing ones read as 0), then the payload.
 *   c[0]  max_line:    0 = default, else c[0] * 8
 *   c[1]  max_headers: c[1] % 64 (0 = default)
 *   c[2]  max_total:   0 = default, else c[2] * 16
 *   c[3]  how the payload arrives: the low 4 bits are log2 of the largest read (0: one byte at a
 *         time), the high 4 bits seed the generator that picks each read's size, repeated calls
 *         without new bytes and moves of the buffer (as a realloc would).
 *
 * The payload is parsed as http.h says the caller does (one contiguous buffer that grows, the
 * whole buffer passed every time), and the outcome must not depend on how the bytes were split
 * (http.c promises so): it is parsed in one call, in the reads c[3] picks, by a zeroed (calloc'd)
 * parser, and cut just before and at the byte that decided it. The bytes not received yet are
 * poisoned, so ASan reports any look past len. Then the payload is fed to
 * http_parse_authority() and, cut at NUL bytes, to http_build_error(); every result is checked
 * against its contract. A broken invariant aborts with a message naming it. */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sanitizer/asan_interface.h>

#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CONTROL_LEN 4
#define MAX_MOVES   8

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            broken(__LINE__, #cond);                                                               \
    } while (0)

static void broken(int line, const char *what) {
    fprintf(stderr, "fuzz_http.c:%d: invariant broken: %s\n", line, what);
    abort();
}

/* xorshift32: deterministic read sizes from the control byte. */
static uint32_t next_rand(uint32_t *s) {
    uint32_t x = *s;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

struct outcome {
    enum http_parse_result r;
    int status;
    const char *reason;
    size_t pos;
    struct http_request req;
};

static void record(struct outcome *o, const struct http_parser *p, enum http_parse_result r) {
    o->r = r;
    o->status = p->status;
    o->reason = p->reason;
    o->pos = p->pos;
    o->req = p->req;
}

static void same_outcome(const struct outcome *a, const struct outcome *b) {
    CHECK(a->r == b->r);
    if (a->r == HTTP_PARSE_ERROR) {
        CHECK(a->status == b->status);
        CHECK(a->reason != NULL && b->reason != NULL);
        CHECK(strcmp(a->reason, b->reason) == 0);
        CHECK(a->pos == b->pos);
        if (a->status == 405)
            CHECK(strcmp(a->req.method, b->req.method) == 0);
    } else if (a->r == HTTP_PARSE_DONE) {
        CHECK(strcmp(a->req.method, b->req.method) == 0);
        CHECK(strcmp(a->req.host, b->req.host) == 0);
        CHECK(a->req.host_kind == b->req.host_kind);
        CHECK(a->req.port == b->req.port);
        CHECK(a->req.version_minor == b->req.version_minor);
        CHECK(a->req.proxy_auth_off == b->req.proxy_auth_off);
        CHECK(a->req.proxy_auth_len == b->req.proxy_auth_len);
        CHECK(a->req.header_len == b->req.header_len);
    }
}

/* A host as http_parse_authority() stores it: a lowercase reg-name without trailing dot whose
 * last label is not a number, a canonical dotted quad, or IPv6 as inet_ntop() prints it. */
static void check_host(const char *host, enum http_host_kind kind) {
    size_t n = strnlen(host, HTTP_HOST_MAX + 1);

    CHECK(n > 0 && n <= HTTP_HOST_MAX);
    if (kind == HTTP_HOST_NAME) {
        size_t last = 0;
        bool numeric = true;

        CHECK(n <= 253 && host[n - 1] != '.' && host[0] != '.');
        for (size_t i = 0; i < n; i++) {
            char ch = host[i];

            CHECK((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_' ||
                  ch == '.');
            CHECK(!(ch == '.' && host[i + 1] == '.'));
            if (ch == '.')
                last = i + 1;
        }
        for (size_t i = last; i < n; i++)
            numeric = numeric && host[i] >= '0' && host[i] <= '9';
        CHECK(!numeric);
    } else if (kind == HTTP_HOST_IPV4 || kind == HTTP_HOST_IPV6) {
        int af = kind == HTTP_HOST_IPV4 ? AF_INET : AF_INET6;
        unsigned char a[16];
        char text[INET6_ADDRSTRLEN];

        CHECK(inet_pton(af, host, a) == 1);
        CHECK(inet_ntop(af, a, text, sizeof text) != NULL);
        CHECK(strcmp(text, host) == 0);
    } else {
        CHECK(!"host_kind is not a known kind");
    }
}

/* A successful result must read back the same way when printed as an authority. */
static void check_round_trip(const struct http_request *req) {
    char text[HTTP_HOST_MAX + 16];
    struct http_request again;
    const char *why = NULL;
    int n;

    if (req->host_kind == HTTP_HOST_IPV6)
        n = snprintf(text, sizeof text, "[%s]:%u", req->host, (unsigned)req->port);
    else
        n = snprintf(text, sizeof text, "%s:%u", req->host, (unsigned)req->port);
    CHECK(n > 0 && (size_t)n < sizeof text);
    memset(&again, 0, sizeof again);
    CHECK(http_parse_authority(text, (size_t)n, false, &again, &why) == 0);
    CHECK(strcmp(again.host, req->host) == 0);
    CHECK(again.host_kind == req->host_kind);
    CHECK(again.port == req->port);
}

static void check_outcome(const struct outcome *o, const struct http_parser *p, const char *buf,
                          size_t len) {
    CHECK(o->pos <= len);
    if (o->r == HTTP_PARSE_ERROR) {
        CHECK(o->status == 400 || o->status == 405 || o->status == 414 || o->status == 431 ||
              o->status == 505);
        CHECK(o->reason != NULL && o->reason[0] != '\0');
        CHECK(o->pos >= 1);
    } else if (o->r == HTTP_PARSE_DONE) {
        const struct http_request *req = &o->req;

        CHECK(strcmp(req->method, "CONNECT") == 0);
        CHECK(req->port >= 1); /* uint16_t: at most 65535 */
        CHECK(req->version_minor == 0 || req->version_minor == 1);
        check_host(req->host, req->host_kind);
        check_round_trip(req);
        CHECK(req->header_len >= 1 && req->header_len <= len);
        CHECK(req->header_len <= p->limits.max_total);
        CHECK(buf[req->header_len - 1] == '\n');
        CHECK(o->pos == req->header_len);
        CHECK(req->proxy_auth_off + req->proxy_auth_len <= req->header_len);
        if (req->proxy_auth_len > 0) {
            const char *v = buf + req->proxy_auth_off;

            CHECK(req->proxy_auth_off > 0);
            CHECK(v[0] != ' ' && v[0] != '\t');
            CHECK(v[req->proxy_auth_len - 1] != ' ' && v[req->proxy_auth_len - 1] != '\t');
            CHECK(memchr(v, '\n', req->proxy_auth_len) == NULL);
            CHECK(memchr(v, '\r', req->proxy_auth_len) == NULL);
        }
    } else {
        CHECK(o->r == HTTP_PARSE_MORE);
    }
}

/* Parse buf[0..len) in one call, then check that calling again changes nothing. */
static void parse_whole(const struct http_limits *lim, const char *buf, size_t len,
                        struct outcome *o) {
    struct http_parser p;
    struct outcome again;

    http_parser_init(&p, lim);
    record(o, &p, http_parse(&p, buf, len));
    check_outcome(o, &p, buf, len);
    record(&again, &p, http_parse(&p, buf, len));
    same_outcome(o, &again);
}

/* A copy of data[0..len) in a buffer of exactly len bytes, so ASan sees reads past the end. */
static char *exact_copy(const uint8_t *data, size_t len) {
    char *b = malloc(len ? len : 1);

    if (!b)
        abort();
    if (len)
        memcpy(b, data, len);
    return b;
}

/* As the real caller: the bytes arrive in reads of the sizes c3 picks, into one buffer whose
 * unreceived tail is poisoned. */
static void parse_split(const struct http_limits *lim, const uint8_t *data, size_t len, uint8_t c3,
                        bool zeroed, struct outcome *o) {
    struct http_parser p;
    uint32_t seed = 0x9e3779b9u ^ ((uint32_t)c3 << 24 | (uint32_t)c3 << 8 | 1u);
    size_t max_read = (size_t)1 << (c3 & 15), have = 0;
    unsigned moves = 0;
    char *buf = exact_copy(data, len);
    enum http_parse_result r = HTTP_PARSE_MORE;

    if (zeroed) {
        memset(&p, 0, sizeof p);
        if (lim)
            p.limits = *lim;
    } else {
        http_parser_init(&p, lim);
    }
    ASAN_POISON_MEMORY_REGION(buf, len);
    while (have < len) {
        uint32_t rnd = next_rand(&seed);
        size_t n = 1 + rnd % max_read;

        if ((rnd >> 16) % 16 == 0) {
            /* No new bytes: the parser must neither move on nor decide anything new. */
            enum http_parse_result again = http_parse(&p, buf, have);

            CHECK(again == r);
        }
        if ((rnd >> 20) % 8 == 0 && moves < MAX_MOVES) {
            /* The caller grew its buffer with realloc: the parser may not keep pointers. */
            char *nb = exact_copy(data, len);

            ASAN_POISON_MEMORY_REGION(nb + have, len - have);
            free(buf);
            buf = nb;
            moves++;
        }
        if (n > len - have)
            n = len - have;
        ASAN_UNPOISON_MEMORY_REGION(buf + have, n);
        have += n;
        r = http_parse(&p, buf, have);
        if (r != HTTP_PARSE_MORE) {
            /* Decided: further calls, with or without more bytes, say the same. */
            struct outcome a, b;

            record(&a, &p, r);
            record(&b, &p, http_parse(&p, buf, have));
            same_outcome(&a, &b);
            ASAN_UNPOISON_MEMORY_REGION(buf, len);
            record(&b, &p, http_parse(&p, buf, len));
            same_outcome(&a, &b);
            have = len;
        }
    }
    ASAN_UNPOISON_MEMORY_REGION(buf, len);
    record(o, &p, http_parse(&p, buf, len));
    check_outcome(o, &p, buf, len);
    free(buf);
}

static void fuzz_parser(const uint8_t *c, const uint8_t *payload, size_t plen) {
    struct http_limits lim = {
        .max_line = (size_t)c[0] * 8,
        .max_headers = c[1] % 64,
        .max_total = (size_t)c[2] * 16,
    };
    const struct http_limits *limp = (c[0] | c[1] | c[2]) ? &lim : NULL;
    char *whole = exact_copy(payload, plen);
    struct outcome ref, o;

    parse_whole(limp, whole, plen, &ref);
    parse_split(limp, payload, plen, c[3], false, &o);
    same_outcome(&ref, &o);
    parse_split(limp, payload, plen, (uint8_t)(c[3] ^ 0x5a), true, &o);
    same_outcome(&ref, &o);

    /* The outcome is decided at the byte before pos: one byte less is undecided, and the bytes
     * after it change nothing. */
    if (ref.r != HTTP_PARSE_MORE) {
        char *cut = exact_copy(payload, ref.pos);

        parse_whole(limp, cut, ref.pos, &o);
        same_outcome(&ref, &o);
        free(cut);
        cut = exact_copy(payload, ref.pos - 1);
        parse_whole(limp, cut, ref.pos - 1, &o);
        CHECK(o.r == HTTP_PARSE_MORE);
        free(cut);
    }
    free(whole);
}

static void fuzz_authority(const uint8_t *payload, size_t plen) {
    char *s = exact_copy(payload, plen);
    struct http_request opt, req;
    const char *why_opt = NULL, *why = NULL;
    int rc_opt, rc;

    memset(&opt, 0, sizeof opt);
    memset(&req, 0, sizeof req);
    rc_opt = http_parse_authority(s, plen, true, &opt, &why_opt);
    rc = http_parse_authority(s, plen, false, &req, &why);
    CHECK(rc_opt == 0 || rc_opt == -1);
    CHECK(rc == 0 || rc == -1);
    if (rc_opt != 0)
        CHECK(why_opt != NULL && why_opt[0] != '\0');
    if (rc != 0)
        CHECK(why != NULL && why[0] != '\0');
    /* Requiring the port can only refuse more. */
    if (rc == 0) {
        CHECK(rc_opt == 0);
        CHECK(req.port >= 1);
        check_host(req.host, req.host_kind);
        check_round_trip(&req);
        CHECK(strcmp(req.host, opt.host) == 0 && req.host_kind == opt.host_kind &&
              req.port == opt.port);
    }
    if (rc_opt == 0) {
        check_host(opt.host, opt.host_kind);
        if (opt.port != 0)
            check_round_trip(&opt);
        else
            CHECK(rc != 0);
    }
    free(s);
}

/* The NUL-separated pieces of the payload, each a NUL-terminated exact-size copy, or NULL when
 * there are fewer pieces. */
static char *piece(const uint8_t *payload, size_t plen, unsigned k) {
    size_t start = 0;

    for (unsigned i = 0; i < k; i++) {
        const uint8_t *nul = memchr(payload + start, '\0', plen - start);

        if (!nul)
            return NULL;
        start = (size_t)(nul - payload) + 1;
    }
    const uint8_t *end = memchr(payload + start, '\0', plen - start);
    size_t n = end ? (size_t)(end - payload) - start : plen - start;
    char *s = malloc(n + 1);

    if (!s)
        abort();
    memcpy(s, payload + start, n);
    s[n] = '\0';
    return s;
}

static size_t count_crlf(const char *s, size_t n) {
    size_t k = 0;

    for (size_t i = 0; i + 1 < n; i++)
        k += s[i] == '\r' && s[i + 1] == '\n';
    return k;
}

static void check_reply(const char *out, size_t n, size_t outlen, int status,
                        const char *proxy_error, const char *params, const char *details,
                        const char *extra) {
    const char *hdr_end, *cl;
    size_t head, body_len, crlf = 0;
    char first[48];
    unsigned long content_length;
    char *end;

    CHECK(n < outlen);
    CHECK(out[n] == '\0' && strlen(out) == n);
    snprintf(first, sizeof first, "HTTP/1.1 %d %s\r\n", status, http_status_text(status));
    CHECK(strncmp(out, first, strlen(first)) == 0);
    CHECK(strncmp(out + strlen(first), "Proxy-Status: connectd; error=", 30) == 0);
    CHECK(strncmp(out + strlen(first) + 30, proxy_error, strlen(proxy_error)) == 0);

    /* The header block: printable ASCII, HTAB or obs-text (which extra may hold), CR only in
     * CR LF, LF only after CR. */
    hdr_end = strstr(out, "\r\n\r\n");
    CHECK(hdr_end != NULL);
    head = (size_t)(hdr_end - out) + 4;
    for (size_t i = 0; i < head; i++) {
        unsigned char ch = (unsigned char)out[i];

        if (ch == '\r')
            CHECK(out[i + 1] == '\n');
        else if (ch == '\n')
            CHECK(i > 0 && out[i - 1] == '\r');
        else
            CHECK((ch >= 0x20 && ch != 0x7f) || ch == '\t');
    }
    /* No line from details or params: status line, Proxy-Status, extra's lines,
     * Content-Type, Content-Length, Connection, the empty line. */
    crlf = count_crlf(out, head);
    CHECK(crlf == 6 + (extra ? count_crlf(extra, strlen(extra)) : 0));
    (void)params;

    /* The body: printable ASCII ending in its only LF, as long as Content-Length says. */
    body_len = n - head;
    /* Ours is the last one: extra may hold a Content-Length line of its own. */
    cl = NULL;
    for (const char *f = strstr(out, "\r\nContent-Length: "); f && f < hdr_end;
         f = strstr(f + 1, "\r\nContent-Length: "))
        cl = f;
    CHECK(cl != NULL);
    content_length = strtoul(cl + 18, &end, 10);
    CHECK(end[0] == '\r' && end[1] == '\n');
    CHECK(content_length == body_len);
    CHECK(body_len >= 1 && out[n - 1] == '\n');
    for (size_t i = head; i + 1 < n; i++)
        CHECK(out[i] >= 0x20 && out[i] <= 0x7e);
    snprintf(first, sizeof first, "%d %s: ", status, http_status_text(status));
    CHECK(strncmp(out + head, first, strlen(first)) == 0);
    if (details == NULL) {
        const char *text = http_status_text(status), *rest = out + head + strlen(first);

        CHECK(strncmp(rest, text, strlen(text)) == 0 && strcmp(rest + strlen(text), "\n") == 0);
    }
}

static void fuzz_build_error(const uint8_t *c, const uint8_t *payload, size_t plen) {
    static const int statuses[] = {400,  403, 407, 408, 429, 502, 503, 504, 200, 999, 100, 99,
                                   1000, 0,   -1,  555, 404, 405, 414, 431, 505, 500, 101, 600};
    static const char *const errors[] = {"http_request_error", "destination_ip_prohibited",
                                         "dns_error", "connection_refused"};
    /* The callers' 1 KiB, no room at all, or anything up to 1.5 KiB. */
    size_t outlen = c[0] == 0 ? 1024 : c[0] == 1 ? 0 : (size_t)c[0] * 6;
    int status = statuses[c[1] % (sizeof statuses / sizeof statuses[0])];
    char *details = (c[2] & 1) ? NULL : piece(payload, plen, 0);
    char *params = (c[2] & 2) ? NULL : piece(payload, plen, 1);
    char *extra = (c[2] & 4) ? NULL : piece(payload, plen, 2);
    char *err_piece = piece(payload, plen, 3);
    const char *proxy_error = err_piece && (c[2] & 8) ? err_piece : errors[(c[2] >> 4) % 4];
    char *out = malloc(outlen ? outlen : 1);
    size_t n;

    if (!out)
        abort();
    memset(out, 0xaa, outlen ? outlen : 1);
    n = http_build_error(out, outlen, status, proxy_error, params, details, extra);
    if (outlen == 0)
        CHECK(n == 0 && (unsigned char)out[0] == 0xaa); /* not even a NUL fits */
    else if (n == 0)
        CHECK(out[0] == '\0');
    else
        check_reply(out, n, outlen, status, proxy_error, params, details, extra);
    CHECK(http_status_text(status) != NULL);
    free(out);
    free(details);
    free(params);
    free(extra);
    free(err_piece);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t c[CONTROL_LEN] = {0, 0, 0, 0};
    size_t nc = size < CONTROL_LEN ? size : CONTROL_LEN;

    memcpy(c, data, nc);
    data += nc;
    size -= nc;
    fuzz_parser(c, data, size);
    fuzz_authority(data, size);
    fuzz_build_error(c, data, size);
    return 0;
}
