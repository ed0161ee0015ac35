/* Unit tests for src/admin_http.c: the admin listener's request reader, the query lookup and the
 * Bearer token check. Parser cases are rows of a declarative table (input bytes and the expected
 * outcome); every row is also fed as a caller would, one more byte per call, and each decided
 * prefix must give the same outcome as one call with the whole input. Each call gets a heap copy
 * of exactly the bytes it may read, so ASan reports any read past len. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin_http.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ------------------------------------------------------------------------------ */

/* Calls admin_http_parse with a heap copy of exactly len bytes of in. */
static enum admin_parse parse_exact(const char *in, size_t len, struct admin_request *req) {
    char *copy = malloc(len > 0 ? len : 1);
    enum admin_parse r;

    assert_non_null(copy);
    if (len > 0)
        memcpy(copy, in, len);
    r = admin_http_parse(copy, len, req);
    free(copy);
    return r;
}

static void assert_same_outcome(const struct admin_request *a, enum admin_parse ra,
                                const struct admin_request *b, enum admin_parse rb) {
    assert_int_equal(ra, rb);
    if (ra == ADMIN_PARSE_ERROR) {
        assert_int_equal(a->status, b->status);
        assert_non_null(a->reason);
        assert_non_null(b->reason);
        assert_string_equal(a->reason, b->reason);
    } else if (ra == ADMIN_PARSE_DONE) {
        assert_string_equal(a->method, b->method);
        assert_string_equal(a->path, b->path);
        assert_string_equal(a->query, b->query);
        assert_int_equal(a->version_minor, b->version_minor);
        assert_int_equal(a->has_auth, b->has_auth);
        assert_int_equal(a->auth_off, b->auth_off);
        assert_int_equal(a->auth_len, b->auth_len);
        assert_int_equal(a->header_len, b->header_len);
    }
}

/* Parses in whole into *whole, then feeds it as a caller would (0, 1, 2, ... n bytes): every
 * prefix from the first decided one on must give the outcome of the whole input. Returns the
 * whole input's result and, in *decided_at, the length of the shortest decided prefix (0 when
 * even the whole input is undecided). */
static enum admin_parse parse_all_ways(const char *in, size_t n, struct admin_request *whole,
                                       size_t *decided_at) {
    enum admin_parse r0, r;
    struct admin_request req;
    size_t first = 0;

    r0 = parse_exact(in, n, whole);
    r = parse_exact(in, n, &req); /* no hidden state: the same bytes, the same outcome */
    assert_same_outcome(whole, r0, &req, r);
    for (size_t k = 0; k <= n; k++) {
        r = parse_exact(in, k, &req);
        if (r != ADMIN_PARSE_MORE && first == 0)
            first = k;
        if (first != 0)
            assert_same_outcome(whole, r0, &req, r);
    }
    assert_true((r0 == ADMIN_PARSE_MORE) == (first == 0));
    if (decided_at != NULL)
        *decided_at = first;
    return r0;
}

/* ---- parser table ------------------------------------------------------------------------- */

struct parse_case {
    const char *name;
    const char *in;
    size_t len; /* 0: strlen(in) */
    enum admin_parse res;
    /* ERROR */
    int status;
    const char *reason; /* NULL: any */
    /* DONE */
    const char *method, *path, *query; /* NULL: "GET", "/", "" */
    bool v10;                          /* HTTP/1.0 expected, else HTTP/1.1 */
    const char *auth;                  /* expected Authorization value, NULL: none */
    size_t early;                      /* bytes after the header block */
    /* Decided before the whole input was there: the shortest decided prefix (0: any). */
    size_t decided_at;
};

#define BIN(s)    .in = (s), .len = sizeof(s) - 1
#define REQ(t)    "GET " t " HTTP/1.1\r\nHost: a\r\n\r\n"
#define HDR(h)    "GET / HTTP/1.1\r\n" h "\r\n\r\n"
#define OK        .res = ADMIN_PARSE_DONE
#define ERR(s, r) .res = ADMIN_PARSE_ERROR, .status = (s), .reason = (r)
#define MORE      .res = ADMIN_PARSE_MORE

static const struct parse_case parse_cases[] = {
    /* Valid requests. */
    {"metrics", "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9090\r\nAccept: */*\r\n\r\n", OK,
     .path = "/metrics"},
    {"healthz, no headers", "GET /healthz HTTP/1.1\r\n\r\n", OK, .path = "/healthz"},
    {"query", REQ("/tunnels?limit=20&x=1"), OK, .path = "/tunnels", .query = "limit=20&x=1"},
    {"empty query", REQ("/tunnels?"), OK, .path = "/tunnels", .query = ""},
    {"second '?' is in the query", REQ("/a?b?c"), OK, .path = "/a", .query = "b?c"},
    {"no decoding", REQ("/a%2Fb?x=%41"), OK, .path = "/a%2Fb", .query = "x=%41"},
    {"visible ASCII target", REQ("/!$&'()*+,;=:@~-._%#[]{}|\\^`\"<>"), OK,
     .path = "/!$&'()*+,;=:@~-._%#[]{}|\\^`\"<>"},
    {"HTTP/1.0", "GET /metrics HTTP/1.0\r\n\r\n", OK, .path = "/metrics", .v10 = true},
    {"HTTP/1.2 is read as 1.1", "GET / HTTP/1.2\r\n\r\n", OK},
    {"HTTP/1.9 is read as 1.1", "GET / HTTP/1.9\r\n\r\n", OK},
    {"other method is the server's business", "POST /metrics HTTP/1.1\r\n\r\n", OK,
     .method = "POST", .path = "/metrics"},
    {"method with tchars", "M-S.~!#$%&'*+^_ / HTTP/1.1\r\n\r\n", OK, .method = "M-S.~!#$%&'*+^_"},
    {"method with tchars 2", "`|9 / HTTP/1.1\r\n\r\n", OK, .method = "`|9"},
    {"method of 15", "ABCDEFGHIJKLMNO / HTTP/1.1\r\n\r\n", OK, .method = "ABCDEFGHIJKLMNO"},
    {"method of 16", "ABCDEFGHIJKLMNOP / HTTP/1.1\r\n\r\n", ERR(400, "method too long"),
     .decided_at = 16},
    {"lowercase method kept as sent", "get / HTTP/1.1\r\n\r\n", OK, .method = "get"},
    {"bare LF line endings", "GET /metrics HTTP/1.1\nHost: a\n\n", OK, .path = "/metrics"},
    {"mixed line endings", "GET / HTTP/1.1\nHost: a\r\n\n", OK},
    {"bare LF final line", "GET / HTTP/1.1\r\nHost: a\r\n\n", OK},
    {"bytes after the block not examined", BIN("GET / HTTP/1.1\r\n\r\n\0\r\x01junk"), OK,
     .early = 7},
    {"next request after the block", REQ("/") "GET /x HTTP/1.1\r\n\r\n", OK, .early = 19},
    {"authorization", HDR("Authorization: Bearer abc"), OK, .auth = "Bearer abc"},
    {"authorization OWS trimmed", HDR("Authorization: \t Bearer abc \t "), OK,
     .auth = "Bearer abc"},
    {"authorization name case-insensitive", HDR("aUTHORIZATION:Bearer x"), OK, .auth = "Bearer x"},
    {"authorization empty", HDR("Authorization:"), OK, .auth = ""},
    {"authorization among others",
     "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic eDp5\r\nX: 1\r\n\r\n", OK,
     .auth = "Basic eDp5"},
    {"proxy-authorization is another header", HDR("Proxy-Authorization: Bearer x"), OK},
    {"content-length 0", HDR("Content-Length: 0"), OK},
    {"content-length 0 twice, OWS", HDR("content-length:0\r\nContent-Length: \t0 "), OK},
    {"empty value", HDR("X-Empty:"), OK},
    {"no space after colon", HDR("X:y"), OK},
    {"HTAB in value", HDR("X: a\tb"), OK},
    {"obs-text in value", HDR("X: caf\xc3\xa9\xff"), OK},
    {"tchar header name", HDR("X-a!#$%&'*+.^_`|~9: v"), OK},
    {"colon in value", HDR("X: a:b: c"), OK},

    /* Incomplete. */
    {"empty input", "", MORE},
    {"partial method", "GE", MORE},
    {"partial target", "GET /metr", MORE},
    {"partial version", "GET / HTTP/1", MORE},
    {"version without line end", "GET / HTTP/1.1", MORE},
    {"version then CR", "GET / HTTP/1.1\r", MORE},
    {"HTTP/2.0 undecided without line end", "GET / HTTP/2.0", MORE},
    {"request line only", "GET / HTTP/1.1\r\n", MORE},
    {"missing final empty line", "GET / HTTP/1.1\r\nHost: a\r\n", MORE},
    {"final CR without LF", "GET / HTTP/1.1\r\nHost: a\r\n\r", MORE},
    {"bad header without its LF yet", "GET / HTTP/1.1\r\nX : y", MORE},

    /* Request line shape. */
    {"leading empty line", "\r\nGET / HTTP/1.1\r\n\r\n", ERR(400, "bad request line"),
     .decided_at = 2},
    {"leading LF", "\nGET / HTTP/1.1\r\n\r\n", ERR(400, "bad request line")},
    {"leading SP", " GET / HTTP/1.1\r\n\r\n", ERR(400, "bad request line"), .decided_at = 1},
    {"method only", "GET\r\n\r\n", ERR(400, "bad request line")},
    {"no version", "GET /\r\n\r\n", ERR(400, "bad request line")},
    {"double SP after method", "GET  / HTTP/1.1\r\n\r\n",
     ERR(400, "request target must start with '/'"), .decided_at = 5},
    {"double SP before version", "GET /  HTTP/1.1\r\n\r\n", ERR(400, "bad HTTP version")},
    {"SP after version", "GET / HTTP/1.1 \r\n\r\n", ERR(400, "bad HTTP version"), .decided_at = 15},
    {"empty version", "GET / \r\n\r\n", ERR(400, "bad HTTP version")},
    {"HTAB separator", "GET\t/ HTTP/1.1\r\n\r\n", ERR(400, "bad method"), .decided_at = 4},
    {"bad method byte", "G(T / HTTP/1.1\r\n\r\n", ERR(400, "bad method"), .decided_at = 2},
    {"non-ASCII method", "G\xc3\xa9T / HTTP/1.1\r\n\r\n", ERR(400, "bad method")},
    {BIN("G\0T / HTTP/1.1\r\n\r\n"), .name = "NUL in method", ERR(400, "bad method")},
    {"TLS ClientHello", "\x16\x03\x01\x02\x00\x01", ERR(400, "bad method"), .decided_at = 1},
    {"absolute-form", REQ("http://a/metrics"), ERR(400, "request target must start with '/'"),
     .decided_at = 5},
    {"asterisk-form", "OPTIONS * HTTP/1.1\r\n\r\n", ERR(400, "request target must start with '/'")},
    {"authority-form", "CONNECT a:443 HTTP/1.1\r\n\r\n",
     ERR(400, "request target must start with '/'")},
    {"HTAB in target", "GET /a\tb HTTP/1.1\r\n\r\n", ERR(400, "bad byte in request target"),
     .decided_at = 7},
    {BIN("GET /a\0 HTTP/1.1\r\n\r\n"), .name = "NUL in target",
     ERR(400, "bad byte in request target")},
    {"DEL in target", REQ("/a\x7f"), ERR(400, "bad byte in request target")},
    {"non-ASCII in target", REQ("/caf\xc3\xa9"), ERR(400, "bad byte in request target")},
    {"bare CR in target", "GET /a\rb HTTP/1.1\r\n\r\n", ERR(400, "bad byte in request target")},
    {"bare CR after version", "GET / HTTP/1.1\rHost: a\r\n\r\n", ERR(400, "bad HTTP version"),
     .decided_at = 16},
    {"CR CR LF", "GET / HTTP/1.1\r\r\n\r\n", ERR(400, "bad HTTP version")},
    {"lowercase http", "GET / http/1.1\r\n\r\n", ERR(400, "bad HTTP version"), .decided_at = 7},
    {"HTTP/1.10", "GET / HTTP/1.10\r\n\r\n", ERR(400, "bad HTTP version"), .decided_at = 15},
    {"HTTP/1", "GET / HTTP/1\r\n\r\n", ERR(400, "bad HTTP version")},
    {"HTTP/1.x", "GET / HTTP/1.x\r\n\r\n", ERR(400, "bad HTTP version")},
    {"HTTP/11.1", "GET / HTTP/11.1\r\n\r\n", ERR(400, "bad HTTP version")},
    {"HTTP/2.0x", "GET / HTTP/2.0x\r\n\r\n", ERR(400, "bad HTTP version")},
    {"HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", ERR(505, "HTTP version not supported"),
     .decided_at = 16},
    {"HTTP/2.0, LF", "GET / HTTP/2.0\n", ERR(505, "HTTP version not supported")},
    {"HTTP/0.9", "GET / HTTP/0.9\r\n\r\n", ERR(505, "HTTP version not supported")},
    {"HTTP/3.1", "GET / HTTP/3.1\r\n\r\n", ERR(505, "HTTP version not supported")},
    {"HTTP/2 preface (asterisk target first)", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
     ERR(400, "request target must start with '/'")},

    /* Header fields. */
    {"obs-fold SP", HDR("X: a\r\n b"), ERR(400, "obs-fold not allowed")},
    {"obs-fold HTAB", HDR("X: a\r\n\tb"), ERR(400, "obs-fold not allowed")},
    {"obs-fold first line", HDR(" X: a"), ERR(400, "obs-fold not allowed")},
    {"SP before colon", HDR("X : y"), ERR(400, "whitespace in header field name")},
    {"HTAB before colon", HDR("X\t: y"), ERR(400, "whitespace in header field name")},
    {"SP in name", HDR("X Y: z"), ERR(400, "whitespace in header field name")},
    {"bad name byte", HDR("X@: y"), ERR(400, "bad header field name")},
    {"non-ASCII name", HDR("X\xc3\xa9: y"), ERR(400, "bad header field name")},
    {BIN(HDR("X\0: y")), .name = "NUL in name", ERR(400, "bad header field name")},
    {"empty name", HDR(": y"), ERR(400, "bad header field")},
    {"no colon", HDR("novalue"), ERR(400, "bad header field")},
    {BIN(HDR("X: a\0b")), .name = "NUL in value", ERR(400, "bad byte in header field value")},
    {"control byte in value", HDR("X: a\x01"), ERR(400, "bad byte in header field value")},
    {"DEL in value", HDR("X: a\x7f"), ERR(400, "bad byte in header field value")},
    {"bare CR in value", HDR("X: a\rb"), ERR(400, "bad byte in header field value")},
    {"CR CR LF after a field", HDR("X: a\r"), ERR(400, "bad byte in header field value")},
    {"bare CR line", "GET / HTTP/1.1\r\n\rX: y\r\n\r\n", ERR(400, "bad header field name")},
    {"content-length 5", HDR("Content-Length: 5"), ERR(400, "request body not allowed")},
    {"content-length 00", HDR("Content-Length: 00"), ERR(400, "request body not allowed")},
    {"content-length empty", HDR("Content-Length:"), ERR(400, "request body not allowed")},
    {"content-length list", HDR("Content-Length: 0, 0"), ERR(400, "request body not allowed")},
    {"content-length 0 then 5", HDR("Content-Length: 0\r\nCONTENT-LENGTH: 5"),
     ERR(400, "request body not allowed")},
    {"transfer-encoding", HDR("Transfer-Encoding: chunked"),
     ERR(400, "Transfer-Encoding not allowed")},
    {"transfer-encoding empty", HDR("transfer-encoding:"),
     ERR(400, "Transfer-Encoding not allowed")},
    {"duplicate authorization", HDR("Authorization: Bearer a\r\nAuthorization: Bearer a"),
     ERR(400, "duplicate Authorization header")},
    {"duplicate authorization, other case", HDR("authorization: x\r\nX: 1\r\nAUTHORIZATION: y"),
     ERR(400, "duplicate Authorization header")},
    {"error in a header decided before the end", "GET / HTTP/1.1\r\nX : y\r\nmore",
     ERR(400, "whitespace in header field name"), .decided_at = 23},
};

static void test_parse_case(void **state) {
    const struct parse_case *c = *state;
    size_t n = c->len != 0 ? c->len : strlen(c->in), decided_at;
    struct admin_request req;
    enum admin_parse r = parse_all_ways(c->in, n, &req, &decided_at);

    assert_int_equal(r, c->res);
    if (c->decided_at != 0)
        assert_int_equal(decided_at, c->decided_at);
    if (r == ADMIN_PARSE_ERROR) {
        assert_int_equal(req.status, c->status);
        assert_non_null(req.reason);
        if (c->reason != NULL)
            assert_string_equal(req.reason, c->reason);
    } else if (r == ADMIN_PARSE_DONE) {
        assert_string_equal(req.method, c->method != NULL ? c->method : "GET");
        assert_string_equal(req.path, c->path != NULL ? c->path : "/");
        assert_string_equal(req.query, c->query != NULL ? c->query : "");
        assert_int_equal(req.version_minor, c->v10 ? 0 : 1);
        assert_int_equal(req.header_len, n - c->early);
        assert_int_equal(req.has_auth, c->auth != NULL);
        if (c->auth != NULL) {
            assert_int_equal(req.auth_len, strlen(c->auth));
            assert_memory_equal(c->in + req.auth_off, c->auth, strlen(c->auth));
        }
    }
}

/* ---- limits ------------------------------------------------------------------------------- */

/* "GET <target> HTTP/1.1\r\n\r\n" with a target of '/' and then n - 1 bytes of fill. */
static size_t target_request(char *buf, size_t cap, size_t n, char fill) {
    size_t len = 0;

    assert_true(n + 32 <= cap);
    memcpy(buf, "GET /", 5);
    len = 5;
    memset(buf + len, fill, n - 1);
    len += n - 1;
    memcpy(buf + len, " HTTP/1.1\r\n\r\n", 13);
    return len + 13;
}

static void test_target_limit(void **state) {
    char buf[ADMIN_PATH_MAX + 64];
    struct admin_request req;
    size_t n, decided_at;

    (void)state;
    n = target_request(buf, sizeof(buf), ADMIN_PATH_MAX, 'a');
    assert_int_equal(parse_all_ways(buf, n, &req, NULL), ADMIN_PARSE_DONE);
    assert_int_equal(strlen(req.path), ADMIN_PATH_MAX);
    assert_string_equal(req.query, "");

    /* A query fills the rest of a target of exactly the limit. */
    buf[5] = '?';
    assert_int_equal(parse_all_ways(buf, n, &req, NULL), ADMIN_PARSE_DONE);
    assert_string_equal(req.path, "/");
    assert_int_equal(strlen(req.query), ADMIN_PATH_MAX - 2);

    /* One more byte: 414 at the 257th target byte, without waiting for the line end. */
    n = target_request(buf, sizeof(buf), ADMIN_PATH_MAX + 1, 'a');
    assert_int_equal(parse_all_ways(buf, n, &req, &decided_at), ADMIN_PARSE_ERROR);
    assert_int_equal(req.status, 414);
    assert_string_equal(req.reason, "request target too long");
    assert_int_equal(decided_at, 4 + ADMIN_PATH_MAX + 1);
}

static void test_target_limit_wins_over_431(void **state) {
    size_t n = ADMIN_REQ_MAX + 100, decided_at;
    char *buf = malloc(n);
    struct admin_request req;

    (void)state;
    assert_non_null(buf);
    memcpy(buf, "GET /", 5);
    memset(buf + 5, 'a', n - 5);
    assert_int_equal(parse_all_ways(buf, n, &req, &decided_at), ADMIN_PARSE_ERROR);
    assert_int_equal(req.status, 414);
    assert_int_equal(decided_at, 4 + ADMIN_PATH_MAX + 1);
    free(buf);
}

/* A request whose header block is exactly size bytes: one X-Pad field fills it. complete: end
 * with the empty line, else with 'p' bytes only. */
static char *block_of(size_t size, bool complete) {
    static const char head[] = "GET /metrics HTTP/1.1\r\nX-Pad: ";
    char *buf = malloc(size);
    size_t h = sizeof(head) - 1;

    assert_non_null(buf);
    memcpy(buf, head, h);
    memset(buf + h, 'p', size - h);
    if (complete)
        memcpy(buf + size - 4, "\r\n\r\n", 4);
    return buf;
}

static void test_block_limit(void **state) {
    struct admin_request req;
    size_t decided_at;
    char *buf;

    (void)state;
    buf = block_of(ADMIN_REQ_MAX, true);
    assert_int_equal(parse_all_ways(buf, ADMIN_REQ_MAX, &req, NULL), ADMIN_PARSE_DONE);
    assert_int_equal(req.header_len, ADMIN_REQ_MAX);
    free(buf);

    /* One byte more: 431 once byte 8193 is there, although the block ends right there. */
    buf = block_of(ADMIN_REQ_MAX + 1, true);
    assert_int_equal(parse_all_ways(buf, ADMIN_REQ_MAX + 1, &req, &decided_at), ADMIN_PARSE_ERROR);
    assert_int_equal(req.status, 431);
    assert_string_equal(req.reason, "request header block too large");
    assert_int_equal(decided_at, ADMIN_REQ_MAX + 1);
    free(buf);

    /* No block end at all: MORE up to the limit, 431 one byte over. */
    buf = block_of(ADMIN_REQ_MAX + 1, false);
    assert_int_equal(parse_all_ways(buf, ADMIN_REQ_MAX, &req, NULL), ADMIN_PARSE_MORE);
    assert_int_equal(parse_exact(buf, ADMIN_REQ_MAX + 1, &req), ADMIN_PARSE_ERROR);
    assert_int_equal(req.status, 431);
    free(buf);

    /* Without any line end, even the request line: 431 at byte 8193 unless decided earlier. */
    buf = block_of(ADMIN_REQ_MAX + 1, false);
    memset(buf, 'G', ADMIN_REQ_MAX + 1);
    assert_int_equal(parse_exact(buf, ADMIN_REQ_MAX + 1, &req), ADMIN_PARSE_ERROR);
    assert_int_equal(req.status, 400); /* the 16th method byte decided it */
    free(buf);
}

static void test_block_limit_with_early_data(void **state) {
    size_t n = ADMIN_REQ_MAX + 50;
    char *buf = block_of(n, false);
    struct admin_request req;

    (void)state;
    /* The block ends exactly at the limit; the bytes after it do not count. */
    memcpy(buf + ADMIN_REQ_MAX - 4, "\r\n\r\n", 4);
    assert_int_equal(parse_all_ways(buf, n, &req, NULL), ADMIN_PARSE_DONE);
    assert_int_equal(req.header_len, ADMIN_REQ_MAX);
    free(buf);
}

/* "GET / HTTP/1.1\r\n" + nfields "X: v\r\n" + "\r\n". */
static size_t fields_request(char *buf, size_t cap, size_t nfields) {
    size_t len = 0;

    assert_true(16 + nfields * 6 + 2 <= cap);
    memcpy(buf, "GET / HTTP/1.1\r\n", 16);
    len = 16;
    for (size_t i = 0; i < nfields; i++) {
        memcpy(buf + len, "X: v\r\n", 6);
        len += 6;
    }
    memcpy(buf + len, "\r\n", 2);
    return len + 2;
}

static void test_field_count_limit(void **state) {
    char buf[1024];
    struct admin_request req;
    size_t n, decided_at;

    (void)state;
    n = fields_request(buf, sizeof(buf), ADMIN_FIELDS_MAX);
    assert_int_equal(parse_all_ways(buf, n, &req, NULL), ADMIN_PARSE_DONE);
    assert_int_equal(req.header_len, n);

    n = fields_request(buf, sizeof(buf), ADMIN_FIELDS_MAX + 1);
    assert_int_equal(parse_all_ways(buf, n, &req, &decided_at), ADMIN_PARSE_ERROR);
    assert_int_equal(req.status, 431);
    assert_string_equal(req.reason, "too many header fields");
    assert_int_equal(decided_at, n - 2); /* at the LF of the 65th field */
}

static void test_reparse_resets(void **state) {
    static const char bad[] = "GET / HTTP/2.0\r\n\r\n";
    static const char good[] = "GET /x?y HTTP/1.0\r\n\r\n";
    struct admin_request req;

    (void)state;
    assert_int_equal(admin_http_parse(bad, sizeof(bad) - 1, &req), ADMIN_PARSE_ERROR);
    assert_int_equal(admin_http_parse(good, sizeof(good) - 1, &req), ADMIN_PARSE_DONE);
    assert_int_equal(req.status, 0);
    assert_null(req.reason);
    assert_string_equal(req.path, "/x");
    assert_string_equal(req.query, "y");
    assert_false(req.has_auth);
}

/* ---- query -------------------------------------------------------------------------------- */

struct query_case {
    const char *query, *name;
    int rc;
    unsigned long value; /* when rc is 1 */
};

static const struct query_case query_cases[] = {
    {"limit=20", "limit", 1, 20},
    {"", "limit", 0, 0},
    {"a=1&limit=20", "limit", 1, 20},
    {"limit=20&a=1", "limit", 1, 20},
    {"a=1&limit=20&b=2", "limit", 1, 20},
    {"limit=0", "limit", 1, 0},
    {"limit=007", "limit", 1, 7},
    {"limit=999999999", "limit", 1, 999999999},
    {"limit=1234567890", "limit", -1, 0},
    {"limit=0000000001", "limit", -1, 0},
    {"limit=", "limit", -1, 0},
    {"limit", "limit", -1, 0},
    {"a=1&limit", "limit", -1, 0},
    {"limit&a=1", "limit", -1, 0},
    {"limit=&a=1", "limit", -1, 0},
    {"limit=abc", "limit", -1, 0},
    {"limit=12a", "limit", -1, 0},
    {"limit=-1", "limit", -1, 0},
    {"limit=+1", "limit", -1, 0},
    {"limit= 1", "limit", -1, 0},
    {"limit=%31", "limit", -1, 0},
    {"limit=1=2", "limit", -1, 0},
    {"xlimit=3", "limit", 0, 0},
    {"limitx=3", "limit", 0, 0},
    {"xlimit=3&limit=4", "limit", 1, 4},
    {"limits=3&limit=4", "limit", 1, 4},
    {"LIMIT=3", "limit", 0, 0},
    {"limit=5&limit=6", "limit", 1, 5},
    {"limit=x&limit=6", "limit", -1, 0},
    {"&&limit=7&", "limit", 1, 7},
    {"a&limit=7", "limit", 1, 7},
    {"=3", "limit", 0, 0},
    {"limit=3", "", 0, 0},
};

static void test_query_uint(void **state) {
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(query_cases); i++) {
        const struct query_case *c = &query_cases[i];
        unsigned long v = 4242;
        int rc = admin_http_query_uint(c->query, c->name, &v);

        if (rc != c->rc)
            fail_msg("query \"%s\" name \"%s\": %d, expected %d", c->query, c->name, rc, c->rc);
        /* *out is written only on success. */
        assert_int_equal(v, c->rc == 1 ? c->value : 4242);
    }
}

static void test_query_from_request(void **state) {
    static const char in[] = "GET /tunnels?limit=15 HTTP/1.1\r\n\r\n";
    struct admin_request req;
    unsigned long v = 0;

    (void)state;
    assert_int_equal(admin_http_parse(in, sizeof(in) - 1, &req), ADMIN_PARSE_DONE);
    assert_int_equal(admin_http_query_uint(req.query, "limit", &v), 1);
    assert_int_equal(v, 15);
    assert_int_equal(admin_http_query_uint(req.query, "offset", &v), 0);
}

/* ---- token -------------------------------------------------------------------------------- */

struct token_case {
    const char *header; /* the Authorization line, NULL: none */
    const char *token;  /* the configured token */
    bool ok;
};

static const struct token_case token_cases[] = {
    {"Authorization: Bearer s3cret", "s3cret", true},
    {"authorization: bearer s3cret", "s3cret", true},
    {"Authorization: BEARER s3cret", "s3cret", true},
    {"Authorization: Bearer    s3cret", "s3cret", true},
    {"Authorization:  \tBearer s3cret \t", "s3cret", true},
    {"Authorization: Bearer x/y+z=~._-", "x/y+z=~._-", true},
    {"Authorization: Bearer wrong!", "s3cret", false},
    {"Authorization: Bearer s3cre", "s3cret", false},
    {"Authorization: Bearer s3cret2", "s3cret", false},
    {"Authorization: Bearer S3CRET", "s3cret", false},
    {"Authorization: Bearer s3cret extra", "s3cret", false},
    {"Authorization: Bearer\ts3cret", "s3cret", false},
    {"Authorization: Bearers3cret", "s3cret", false},
    {"Authorization: Bear s3cret", "s3cret", false},
    {"Authorization: Basic czNjcmV0", "s3cret", false},
    {"Authorization: s3cret", "s3cret", false},
    {"Authorization: Bearer", "s3cret", false},
    {"Authorization: Bearer   ", "s3cret", false},
    {"Authorization:", "s3cret", false},
    {"Authorization: Bearer s3cret", "", false},
    {"Authorization: Bearer ", "", false},
    {"Proxy-Authorization: Bearer s3cret", "s3cret", false},
    {NULL, "s3cret", false},
};

static void test_token_ok(void **state) {
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(token_cases); i++) {
        const struct token_case *c = &token_cases[i];
        char in[256];
        struct admin_request req;
        int n = snprintf(in, sizeof(in), "GET /metrics HTTP/1.1\r\nHost: a\r\n%s%s\r\n",
                         c->header != NULL ? c->header : "", c->header != NULL ? "\r\n" : "");

        assert_true(n > 0 && (size_t)n < sizeof(in));
        assert_int_equal(admin_http_parse(in, (size_t)n, &req), ADMIN_PARSE_DONE);
        if (admin_http_token_ok(&req, in, c->token) != c->ok)
            fail_msg("\"%s\" with token \"%s\": expected %s", c->header ? c->header : "(none)",
                     c->token, c->ok ? "true" : "false");
    }
}

static void test_token_ok_null(void **state) {
    static const char in[] = "GET / HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n";
    struct admin_request req;

    (void)state;
    assert_int_equal(admin_http_parse(in, sizeof(in) - 1, &req), ADMIN_PARSE_DONE);
    assert_true(admin_http_token_ok(&req, in, "t"));
    assert_false(admin_http_token_ok(&req, in, NULL));
    assert_false(admin_http_token_ok(&req, NULL, "t"));
}

/* ---- main --------------------------------------------------------------------------------- */

static const struct CMUnitTest fixed_tests[] = {
    cmocka_unit_test(test_target_limit),      cmocka_unit_test(test_target_limit_wins_over_431),
    cmocka_unit_test(test_block_limit),       cmocka_unit_test(test_block_limit_with_early_data),
    cmocka_unit_test(test_field_count_limit), cmocka_unit_test(test_reparse_resets),
    cmocka_unit_test(test_query_uint),        cmocka_unit_test(test_query_from_request),
    cmocka_unit_test(test_token_ok),          cmocka_unit_test(test_token_ok_null),
};

int main(void) {
    struct CMUnitTest tests[ARRAY_LEN(parse_cases) + ARRAY_LEN(fixed_tests)];
    size_t n = 0;

    for (size_t i = 0; i < ARRAY_LEN(parse_cases); i++) {
        struct CMUnitTest t = cmocka_unit_test_prestate(test_parse_case, (void *)&parse_cases[i]);

        t.name = parse_cases[i].name;
        tests[n++] = t;
    }
    for (size_t i = 0; i < ARRAY_LEN(fixed_tests); i++)
        tests[n++] = fixed_tests[i];

    return cmocka_run_group_tests(tests, NULL, NULL);
}
