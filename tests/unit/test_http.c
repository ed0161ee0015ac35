/* Unit tests for src/http.c: the CONNECT request parser, the authority parser and the response
 * builder. Most cases are rows of declarative tables (input bytes and the expected outcome); every
 * parser row is also replayed split at every byte boundary and fed one byte at a time, and must
 * give the same outcome as one call with the whole input. Each call gets a heap copy of exactly
 * the bytes it may read, so ASan reports any read past len. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ------------------------------------------------------------------------------ */

/* Calls http_parse with a heap copy of exactly len bytes of in. */
static enum http_parse_result parse_exact(struct http_parser *p, const char *in, size_t len) {
    char *copy = malloc(len > 0 ? len : 1);
    enum http_parse_result r;

    assert_non_null(copy);
    if (len > 0)
        memcpy(copy, in, len);
    r = http_parse(p, copy, len);
    free(copy);
    return r;
}

static void assert_same_outcome(const struct http_parser *a, enum http_parse_result ra,
                                const struct http_parser *b, enum http_parse_result rb) {
    assert_int_equal(ra, rb);
    assert_int_equal(a->state, b->state);
    assert_int_equal(a->pos, b->pos);
    assert_int_equal(a->status, b->status);
    if (a->reason == NULL || b->reason == NULL)
        assert_ptr_equal(a->reason, b->reason);
    else
        assert_string_equal(a->reason, b->reason);
    assert_string_equal(a->req.method, b->req.method);
    assert_string_equal(a->req.host, b->req.host);
    assert_int_equal(a->req.host_kind, b->req.host_kind);
    assert_int_equal(a->req.port, b->req.port);
    assert_int_equal(a->req.version_minor, b->req.version_minor);
    assert_int_equal(a->req.proxy_auth_off, b->req.proxy_auth_off);
    assert_int_equal(a->req.proxy_auth_len, b->req.proxy_auth_len);
    assert_int_equal(a->req.header_len, b->req.header_len);
}

/* Parses in whole into *whole, then checks that every split (first k bytes, then all) and a
 * byte-by-byte feed give the same outcome. Splits are thinned out for very long inputs. */
static enum http_parse_result
parse_all_ways(const char *in, size_t n, const struct http_limits *lim, struct http_parser *whole) {
    enum http_parse_result r0, r;
    size_t stride = n > 4096 ? n / 512 : 1;
    struct http_parser p;

    http_parser_init(whole, lim);
    r0 = parse_exact(whole, in, n);

    /* Same result on a repeated call with the same bytes. */
    p = *whole;
    r = parse_exact(&p, in, n);
    assert_same_outcome(whole, r0, &p, r);

    for (size_t k = 0; k <= n; k += stride) {
        http_parser_init(&p, lim);
        r = parse_exact(&p, in, k);
        if (r == HTTP_PARSE_MORE) {
            assert_int_equal(p.pos, k); /* resumes after what it has seen */
            r = parse_exact(&p, in, n);
        }
        assert_same_outcome(whole, r0, &p, r);
    }

    http_parser_init(&p, lim);
    r = HTTP_PARSE_MORE;
    for (size_t k = 1; k <= n && r == HTTP_PARSE_MORE; k += (k < 64 || stride == 1) ? 1 : stride)
        r = parse_exact(&p, in, k);
    if (r == HTTP_PARSE_MORE)
        r = parse_exact(&p, in, n);
    assert_same_outcome(whole, r0, &p, r);
    return r0;
}

/* ---- parser table ------------------------------------------------------------------------- */

struct parse_case {
    const char *name;
    const char *in;
    size_t len; /* 0: strlen(in) */
    struct http_limits lim;
    enum http_parse_result res;
    /* ERROR */
    int status;
    const char *reason; /* NULL: any */
    /* DONE */
    const char *host;
    enum http_host_kind kind;
    unsigned port;
    bool v10;         /* HTTP/1.0 expected, else HTTP/1.1 */
    const char *auth; /* expected Proxy-Authorization value, NULL: none */
    size_t early;     /* bytes after the header block */
};

#define BIN(s)      .in = (s), .len = sizeof(s) - 1
#define H           "Host: h\r\n"
#define REQ(t)      "CONNECT " t " HTTP/1.1\r\n" H "\r\n"
#define OK(h, k, p) .res = HTTP_PARSE_DONE, .host = (h), .kind = (k), .port = (p)
#define OKN(h, p)   OK(h, HTTP_HOST_NAME, p)
#define ERR(s)      .res = HTTP_PARSE_ERROR, .status = (s)
#define MORE        .res = HTTP_PARSE_MORE

static const struct parse_case parse_cases[] = {
    /* Valid requests. */
    {"name", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
     OKN("example.com", 443)},
    {"ipv4", "CONNECT 192.0.2.1:8443 HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n",
     OK("192.0.2.1", HTTP_HOST_IPV4, 8443)},
    {"ipv4 zero", REQ("0.0.0.0:443"), OK("0.0.0.0", HTTP_HOST_IPV4, 443)},
    {"ipv4 max", REQ("255.255.255.255:443"), OK("255.255.255.255", HTTP_HOST_IPV4, 443)},
    {"ipv4 trailing dot", REQ("10.0.0.1.:443"), OK("10.0.0.1", HTTP_HOST_IPV4, 443)},
    {"ipv6", "CONNECT [2001:DB8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n",
     OK("2001:db8::1", HTTP_HOST_IPV6, 443)},
    {"ipv6 canonicalised", REQ("[2001:0db8:0:0:0:0:0:0001]:443"),
     OK("2001:db8::1", HTTP_HOST_IPV6, 443)},
    {"ipv6 loopback", REQ("[::1]:22"), OK("::1", HTTP_HOST_IPV6, 22)},
    {"ipv6 v4-mapped", REQ("[::FFFF:127.0.0.1]:443"), OK("::ffff:127.0.0.1", HTTP_HOST_IPV6, 443)},
    {"http/1.0 without host", "CONNECT example.com:443 HTTP/1.0\r\n\r\n", OKN("example.com", 443),
     .v10 = true},
    {"http/1.0 with host", "CONNECT a.b:1 HTTP/1.0\r\nHost: a.b:1\r\n\r\n", OKN("a.b", 1),
     .v10 = true},
    {"bare LF line endings", "CONNECT example.com:443 HTTP/1.1\nHost: example.com\n\n",
     OKN("example.com", 443)},
    {"mixed line endings", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\n\r\n",
     OKN("example.com", 443)},
    {"trailing dot stripped", REQ("example.com.:443"), OKN("example.com", 443)},
    {"host lowercased", REQ("ExAmPlE.COM:443"), OKN("example.com", 443)},
    {"underscore and hyphen", REQ("_srv-1.my-host.example:443"),
     OKN("_srv-1.my-host.example", 443)},
    {"single label", REQ("localhost:8080"), OKN("localhost", 8080)},
    {"numeric inner labels", REQ("1.2.3.example:443"), OKN("1.2.3.example", 443)},
    {"hex-looking but not a number", REQ("foo.0xzz:443"), OKN("foo.0xzz", 443)},
    {"label of 63", REQ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com:443"),
     OKN("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com", 443)},
    {"port 1", REQ("h:1"), OKN("h", 1)},
    {"port 65535", REQ("h:65535"), OKN("h", 65535)},
    {"port leading zeros", REQ("h:00443"), OKN("h", 443)},
    {"proxy-authorization captured",
     "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nProxy-Authorization:  Basic dXNlcjpwYXNz \t\r\n\r\n",
     OKN("h", 443), .auth = "Basic dXNlcjpwYXNz"},
    {"proxy-authorization first wins",
     "CONNECT h:443 HTTP/1.1\r\nproxy-authorization: Basic Zmlyc3Q=\r\nHost: h\r\n"
     "Proxy-Authorization: Basic c2Vjb25k\r\n\r\n",
     OKN("h", 443), .auth = "Basic Zmlyc3Q="},
    {"content-length 0", "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
     OKN("h", 443)},
    {"content-length 0 twice",
     "CONNECT h:443 HTTP/1.1\r\nContent-Length:0\r\nHost: h\r\ncontent-length: 0 \r\n\r\n",
     OKN("h", 443)},
    {BIN("CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n\x16\x03\x01\x00\x05\r\r\0GET"),
     .name = "early data not examined", OKN("h", 443), .early = 11},
    {"early data is another request", REQ("h:443") "GET / HTTP/1.1\r\n\r\n", OKN("h", 443),
     .early = 18},
    {"leading CRLF", "\r\n" REQ("h:443"), OKN("h", 443)},
    {"leading LF and CRLF", "\n\r\n" REQ("h:443"), OKN("h", 443)},
    {"four leading empty lines", "\r\n\n\r\n\n" REQ("h:443"), OKN("h", 443)},
    {"host differs from target", "CONNECT a.example:443 HTTP/1.1\r\nHost: b.example:80\r\n\r\n",
     OKN("a.example", 443)},
    {"host without OWS", "CONNECT h:443 HTTP/1.1\r\nHost:h\r\n\r\n", OKN("h", 443)},
    {"host with OWS", "CONNECT h:443 HTTP/1.1\r\nHost: \t h:443 \t \r\n\r\n", OKN("h", 443)},
    {"host ipv6", "CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]\r\n\r\n",
     OK("::1", HTTP_HOST_IPV6, 443)},
    {"header name case-insensitive", "CONNECT h:443 HTTP/1.1\r\nhOsT: h\r\n\r\n", OKN("h", 443)},
    {"other headers ignored",
     "CONNECT h:443 HTTP/1.1\r\nUser-Agent: curl/8.0 (x; y)\r\nHost: h\r\n"
     "Proxy-Connection: Keep-Alive\r\nX-Empty:\r\nX-Tab:\tv\t\r\n\r\n",
     OKN("h", 443)},
    {"obs-text in value", "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nX-Name: caf\xc3\xa9\xff\r\n\r\n",
     OKN("h", 443)},
    {"tchar header name", "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nX-a!#$%&'*+.^_`|~9: v\r\n\r\n",
     OKN("h", 443)},
    {"exactly max_headers", "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n",
     .lim = {.max_headers = 3}, OKN("h", 443)},
    /* request line "CONNECT h:443 HTTP/1.1" is 22 bytes. */
    {"request line exactly max_line", REQ("h:443"), .lim = {.max_line = 22}, OKN("h", 443)},
    {"request line exactly max_line, LF", "CONNECT h:443 HTTP/1.1\n" H "\n",
     .lim = {.max_line = 22}, OKN("h", 443)},
    /* REQ("h:443") is 24 + 9 + 2 = 35 bytes. */
    {"header block exactly max_total", REQ("h:443"), .lim = {.max_total = 35}, OKN("h", 443)},
    {"header block exactly max_total, early data", REQ("h:443") "early", .lim = {.max_total = 35},
     OKN("h", 443), .early = 5},

    /* Incomplete. */
    {"empty input", "", MORE},
    {"partial request line", "CONNECT exam", MORE},
    {"request line only", "CONNECT h:443 HTTP/1.1\r\n", MORE},
    {"missing final empty line", "CONNECT h:443 HTTP/1.1\r\n" H, MORE},
    {"final CR without LF", "CONNECT h:443 HTTP/1.1\r\n" H "\r", MORE},

    /* Request line shape. */
    {"double SP after method", "CONNECT  h:443 HTTP/1.1\r\n" H "\r\n", ERR(400)},
    {"double SP before version", "CONNECT h:443  HTTP/1.1\r\n" H "\r\n", ERR(400)},
    {"SP after version", "CONNECT h:443 HTTP/1.1 \r\n" H "\r\n", ERR(400)},
    {"leading SP", " CONNECT h:443 HTTP/1.1\r\n" H "\r\n", ERR(400)},
    {"HTAB separator", "CONNECT\th:443 HTTP/1.1\r\n" H "\r\n", ERR(400)},
    {"HTAB in target", "CONNECT h:443\tHTTP/1.1\r\n" H "\r\n", ERR(400)},
    {"HTTP/0.9 style", "CONNECT h:443\r\n\r\n", ERR(400), .reason = "malformed request line"},
    {"method only", "CONNECT\r\n\r\n", ERR(400)},
    {"empty version", "CONNECT h:443 \r\n" H "\r\n", ERR(400)},
    {"HTTP/2.0", "CONNECT h:443 HTTP/2.0\r\n" H "\r\n", ERR(505),
     .reason = "HTTP version not supported"},
    {"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", ERR(505)},
    {"HTTP/1.2 is read as 1.1", "CONNECT h:443 HTTP/1.2\r\n" H "\r\n", OKN("h", 443)},
    {"HTTP/1.9 is read as 1.1", "CONNECT h:443 HTTP/1.9\r\n" H "\r\n", OKN("h", 443)},
    {"lowercase http", "CONNECT h:443 http/1.1\r\n" H "\r\n", ERR(400),
     .reason = "malformed HTTP version"},
    {"HTTP/1.10", "CONNECT h:443 HTTP/1.10\r\n" H "\r\n", ERR(400)},
    {"HTTP/1", "CONNECT h:443 HTTP/1\r\n" H "\r\n", ERR(400)},
    {"bare CR ends request line", "CONNECT h:443 HTTP/1.1\r" H "\r\n", ERR(400),
     .reason = "bare CR"},
    {"CR CR LF", "CONNECT h:443 HTTP/1.1\r\r\n" H "\r\n", ERR(400)},
    {BIN("CONNECT h\0:443 HTTP/1.1\r\n" H "\r\n"), .name = "NUL in target", ERR(400)},
    {"control byte in target", "CONNECT h\x01:443 HTTP/1.1\r\n" H "\r\n", ERR(400)},
    {"non-ASCII in target", "CONNECT h\xc3\xa9.com:443 HTTP/1.1\r\n" H "\r\n", ERR(400)},
    {"TLS ClientHello refused at once", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ERR(400)},
    {"non-token method", "CON(ECT h:443 HTTP/1.1\r\n" H "\r\n", ERR(400)},
    {"method too long", "CONNECTCONNECTCONNECTCONNECTCONNE h:443 HTTP/1.1\r\n", ERR(400),
     .reason = "method too long"},
    {"five leading empty lines", "\r\n\r\n\n\r\n\n" REQ("h:443"), ERR(400)},
    {"whitespace-only leading line", " \r\n" REQ("h:443"), ERR(400)},

    /* 405. */
    {"GET origin-form", "GET / HTTP/1.1\r\n", ERR(405), .reason = "method not allowed"},
    {"GET absolute-form", "GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n",
     ERR(405)},
    {"lowercase connect", "connect h:443 HTTP/1.1\r\n", ERR(405)},
    {"OPTIONS asterisk", "OPTIONS * HTTP/1.0\r\n", ERR(405)},
    {"POST", "POST h:443 HTTP/1.1\r\n" H "\r\n", ERR(405)},
    {"method of 32", "CONNECTCONNECTCONNECTCONNECTCONN h:443 HTTP/1.1\r\n", ERR(405)},

    /* Target. */
    {"missing port", REQ("example.com"), ERR(400), .reason = "missing port"},
    {"empty port", REQ("example.com:"), ERR(400), .reason = "missing port"},
    {"port 0", REQ("example.com:0"), ERR(400), .reason = "port out of range"},
    {"port 65536", REQ("example.com:65536"), ERR(400), .reason = "port out of range"},
    {"port 99999", REQ("example.com:99999"), ERR(400)},
    {"port six digits", REQ("example.com:000443"), ERR(400), .reason = "bad port"},
    {"port plus", REQ("example.com:+443"), ERR(400), .reason = "bad port"},
    {"port minus", REQ("example.com:-1"), ERR(400)},
    {"port letters", REQ("example.com:44a"), ERR(400)},
    {"port hex", REQ("example.com:0x1bb"), ERR(400)},
    {"unbracketed ipv6", REQ("::1:443"), ERR(400), .reason = "IPv6 address must be in brackets"},
    {"unbracketed ipv6 full", REQ("2001:db8::1:443"), ERR(400)},
    {"ipv6 without port", REQ("[::1]"), ERR(400), .reason = "missing port"},
    {"ipv6 junk after bracket", REQ("[::1]443"), ERR(400)},
    {"ipv6 unterminated", REQ("[::1:443"), ERR(400)},
    {"ipv6 empty", REQ("[]:443"), ERR(400)},
    {"ipv6 zone id", REQ("[fe80::1%25eth0]:443"), ERR(400), .reason = "IPv6 zone id not allowed"},
    {"IPvFuture", REQ("[v1.fe80::1]:443"), ERR(400), .reason = "IPvFuture not supported"},
    {"ipv4 in brackets", REQ("[127.0.0.1]:443"), ERR(400)},
    {"bad ipv6", REQ("[1:2:3:4:5:6:7:8:9]:443"), ERR(400)},
    {"absolute-form", REQ("https://example.com:443"), ERR(400)},
    {"origin-form", REQ("/"), ERR(400)},
    {"asterisk-form", REQ("*"), ERR(400)},
    {"userinfo", REQ("user@example.com:443"), ERR(400), .reason = "userinfo not allowed"},
    {"userinfo with password", REQ("u:p@example.com:443"), ERR(400)},
    {"empty label", REQ("a..b:443"), ERR(400), .reason = "empty label in host"},
    {"leading dot", REQ(".example.com:443"), ERR(400)},
    {"two trailing dots", REQ("example.com..:443"), ERR(400)},
    {"only a dot", REQ(".:443"), ERR(400)},
    {"empty host", REQ(":443"), ERR(400)},
    {"percent-encoding", REQ("exa%6dple.com:443"), ERR(400)},
    {"comma in host", REQ("a,b:443"), ERR(400)},
    {"label of 64", REQ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com:443"),
     ERR(400), .reason = "host label too long"},

    /* Odd IPv4 notations (anti-SSRF). */
    {"ipv4 short 127.1", REQ("127.1:443"), OK("127.0.0.1", HTTP_HOST_IPV4, 443)},
    {"ipv4 decimal", REQ("2130706433:443"), OK("127.0.0.1", HTTP_HOST_IPV4, 443)},
    {"ipv4 hex parts", REQ("0x7f.1:443"), OK("127.0.0.1", HTTP_HOST_IPV4, 443)},
    {"ipv4 hex whole", REQ("0x7F000001:443"), OK("127.0.0.1", HTTP_HOST_IPV4, 443)},
    {"ipv4 bare 0x", REQ("foo.0x:443"), ERR(400), .reason = "bad IPv4 address"},
    {"ipv4 octal", REQ("0177.0.0.1:443"), OK("127.0.0.1", HTTP_HOST_IPV4, 443)},
    {"ipv4 leading zero", REQ("1.2.3.04:443"), OK("1.2.3.4", HTTP_HOST_IPV4, 443)},
    {"ipv4 octal digit 8", REQ("1.2.3.08:443"), ERR(400)},
    {"ipv4 octal whole", REQ("017700000001:443"), OK("127.0.0.1", HTTP_HOST_IPV4, 443)},
    {"ipv4 metadata decimal", REQ("2852039166:443"), OK("169.254.169.254", HTTP_HOST_IPV4, 443)},
    {"ipv4 bare 0x part", REQ("0x.1:443"), OK("0.0.0.1", HTTP_HOST_IPV4, 443)},
    {"ipv4 trailing dot", REQ("127.1.:443"), OK("127.0.0.1", HTTP_HOST_IPV4, 443)},
    {"ipv4 too big", REQ("4294967296:443"), ERR(400)},
    {"ipv4 max", REQ("4294967295:443"), OK("255.255.255.255", HTTP_HOST_IPV4, 443)},
    {"ipv4 two parts too big", REQ("1.16777216:443"), ERR(400)},
    {"ipv4 hex too long", REQ("0x1000000000:443"), ERR(400)},
    {"ipv4 part > 255", REQ("1.2.3.256:443"), ERR(400)},
    {"ipv4 five parts", REQ("1.2.3.4.5:443"), ERR(400)},
    {"ipv4 three parts", REQ("10.0.1:443"), OK("10.0.0.1", HTTP_HOST_IPV4, 443)},
    {"name with numeric tld", REQ("example.123:443"), ERR(400)},
    {"ipv4 single zero", REQ("0:443"), OK("0.0.0.0", HTTP_HOST_IPV4, 443)},

    /* Header fields. */
    {"obs-fold", "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", ERR(400),
     .reason = "obs-fold not allowed"},
    {"obs-fold HTAB", "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n", ERR(400)},
    {"whitespace line after request line", "CONNECT h:443 HTTP/1.1\r\n \r\n" H "\r\n", ERR(400)},
    {"SP before colon", "CONNECT h:443 HTTP/1.1\r\nHost : h\r\n\r\n", ERR(400),
     .reason = "whitespace in header field name"},
    {"HTAB before colon", "CONNECT h:443 HTTP/1.1\r\nHost\t: h\r\n\r\n", ERR(400)},
    {"missing colon", "CONNECT h:443 HTTP/1.1\r\nHost h\r\n\r\n", ERR(400)},
    {"missing colon no space", "CONNECT h:443 HTTP/1.1\r\n" H "Garbage\r\n\r\n", ERR(400),
     .reason = "missing colon in header field"},
    {"empty field name", "CONNECT h:443 HTTP/1.1\r\n" H ": v\r\n\r\n", ERR(400),
     .reason = "empty header field name"},
    {"bad field name", "CONNECT h:443 HTTP/1.1\r\n" H "X(y): v\r\n\r\n", ERR(400)},
    {BIN("CONNECT h:443 HTTP/1.1\r\n" H "X: a\0b\r\n\r\n"), .name = "NUL in value", ERR(400),
     .reason = "bad byte in header field value"},
    {"CTL in value",
     "CONNECT h:443 HTTP/1.1\r\n" H "X: a\x01"
     "b\r\n\r\n",
     ERR(400)},
    {"DEL in value", "CONNECT h:443 HTTP/1.1\r\n" H "X: a\x7f\r\n\r\n", ERR(400)},
    {"ESC in value", "CONNECT h:443 HTTP/1.1\r\n" H "X: \x1b[0m\r\n\r\n", ERR(400)},
    {"bare CR in value", "CONNECT h:443 HTTP/1.1\r\n" H "X: a\rb\r\n\r\n", ERR(400),
     .reason = "bare CR"},
    {"bare CR ends header", "CONNECT h:443 HTTP/1.1\r\n" H "X: a\r\r\n", ERR(400)},
    {"bare CR as final line", "CONNECT h:443 HTTP/1.1\r\n" H "\rX", ERR(400)},

    /* Host. */
    {"missing Host", "CONNECT h:443 HTTP/1.1\r\nX: y\r\n\r\n", ERR(400),
     .reason = "missing Host header"},
    {"duplicate Host", "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n", ERR(400),
     .reason = "duplicate Host header"},
    {"duplicate Host, other case", "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nHOST: h\r\n\r\n",
     ERR(400)},
    {"duplicate Host http/1.0", "CONNECT h:443 HTTP/1.0\r\nHost: h\r\nHost: h\r\n\r\n", ERR(400)},
    {"empty Host", "CONNECT h:443 HTTP/1.1\r\nHost:\r\n\r\n", ERR(400),
     .reason = "bad Host header"},
    {"invalid Host", "CONNECT h:443 HTTP/1.1\r\nHost: a..b\r\n\r\n", ERR(400)},
    {"Host with userinfo", "CONNECT h:443 HTTP/1.1\r\nHost: u@h\r\n\r\n", ERR(400)},
    {"Host with bad port", "CONNECT h:443 HTTP/1.1\r\nHost: h:0\r\n\r\n", ERR(400)},
    {"invalid Host http/1.0", "CONNECT h:443 HTTP/1.0\r\nHost: 1.2.3.4.5\r\n\r\n", ERR(400)},

    /* Body framing. */
    {"content-length 5", "CONNECT h:443 HTTP/1.1\r\n" H "Content-Length: 5\r\n\r\nhello", ERR(400),
     .reason = "request body not allowed"},
    {"content-length list", "CONNECT h:443 HTTP/1.1\r\n" H "Content-Length: 0, 0\r\n\r\n",
     ERR(400)},
    {"content-length 00", "CONNECT h:443 HTTP/1.1\r\n" H "Content-Length: 00\r\n\r\n", ERR(400)},
    {"content-length empty", "CONNECT h:443 HTTP/1.1\r\n" H "Content-Length:\r\n\r\n", ERR(400)},
    {"content-length 0 then 1",
     "CONNECT h:443 HTTP/1.1\r\n" H "Content-Length: 0\r\nContent-Length: 1\r\n\r\n", ERR(400)},
    {"transfer-encoding chunked",
     "CONNECT h:443 HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\n\r\n", ERR(400),
     .reason = "Transfer-Encoding not allowed"},
    {"transfer-encoding empty", "CONNECT h:443 HTTP/1.1\r\n" H "transfer-encoding:\r\n\r\n",
     ERR(400)},

    /* Limits. */
    {"request line over max_line", REQ("h:443"), .lim = {.max_line = 21}, ERR(414),
     .reason = "request line too long"},
    {"414 before LF", "CONNECT h:443 HTTP/1.1", .lim = {.max_line = 21}, ERR(414)},
    {"414 before the target is complete", "CONNECT aaaaaaaaaaaaaaaa", .lim = {.max_line = 16},
     ERR(414)},
    {"too many headers", "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
     .lim = {.max_headers = 3}, ERR(431), .reason = "too many header fields"},
    {"header block over max_total", REQ("h:443"), .lim = {.max_total = 34}, ERR(431),
     .reason = "request header block too large"},
    {"431 before the end", "CONNECT h:443 HTTP/1.1\r\nX-Long: aaaaaaaaaaaaaaaaaaaa",
     .lim = {.max_total = 40}, ERR(431)},
    {"leading empty lines count toward max_total", "\r\n" REQ("h:443"), .lim = {.max_total = 36},
     ERR(431)},
};

static void test_parse_case(void **state) {
    const struct parse_case *c = *state;
    size_t n = c->len != 0 ? c->len : strlen(c->in);
    struct http_parser p;
    enum http_parse_result r = parse_all_ways(c->in, n, &c->lim, &p);

    assert_int_equal(r, c->res);
    if (r == HTTP_PARSE_ERROR) {
        assert_int_equal(p.status, c->status);
        assert_non_null(p.reason);
        if (c->reason != NULL)
            assert_string_equal(p.reason, c->reason);
    } else if (r == HTTP_PARSE_DONE) {
        assert_string_equal(p.req.method, "CONNECT");
        assert_string_equal(p.req.host, c->host);
        assert_int_equal(p.req.host_kind, c->kind);
        assert_int_equal(p.req.port, c->port);
        assert_int_equal(p.req.version_minor, c->v10 ? 0 : 1);
        assert_int_equal(p.req.header_len, n - c->early);
        if (c->auth != NULL) {
            assert_int_equal(p.req.proxy_auth_len, strlen(c->auth));
            assert_memory_equal(c->in + p.req.proxy_auth_off, c->auth, strlen(c->auth));
        } else {
            assert_int_equal(p.req.proxy_auth_len, 0);
            assert_int_equal(p.req.proxy_auth_off, 0);
        }
    }
}

/* ---- authority table ---------------------------------------------------------------------- */

struct authority_case {
    const char *in;
    bool port_optional;
    int rc;
    const char *host;
    enum http_host_kind kind;
    unsigned port;
};

static const struct authority_case authority_cases[] = {
    {"example.com:443", false, 0, "example.com", HTTP_HOST_NAME, 443},
    {"example.com", true, 0, "example.com", HTTP_HOST_NAME, 0},
    {"example.com", false, -1, NULL, 0, 0},
    {"example.com:", true, -1, NULL, 0, 0},
    {"Example.COM.", true, 0, "example.com", HTTP_HOST_NAME, 0},
    {"192.0.2.1", true, 0, "192.0.2.1", HTTP_HOST_IPV4, 0},
    {"192.0.2.1:80", true, 0, "192.0.2.1", HTTP_HOST_IPV4, 80},
    {"[::1]", true, 0, "::1", HTTP_HOST_IPV6, 0},
    {"[::1]:8080", true, 0, "::1", HTTP_HOST_IPV6, 8080},
    {"[0:0:0:0:0:0:0:1]:1", false, 0, "::1", HTTP_HOST_IPV6, 1},
    {"[::1]", false, -1, NULL, 0, 0},
    {"::1", true, -1, NULL, 0, 0},
    {"[::1]:", true, -1, NULL, 0, 0},
    {"127.1", true, 0, "127.0.0.1", HTTP_HOST_IPV4, 0},
    {"0x7f.0.0.1", true, 0, "127.0.0.1", HTTP_HOST_IPV4, 0},
    {"017700000001", true, 0, "127.0.0.1", HTTP_HOST_IPV4, 0},
    {"1.2.3.4.5", true, -1, NULL, 0, 0},
    {"", true, -1, NULL, 0, 0},
    {"h:65536", false, -1, NULL, 0, 0},
    {"h: 443", false, -1, NULL, 0, 0},
    {"h :443", false, -1, NULL, 0, 0},
};

static void test_authority_case(void **state) {
    const struct authority_case *c = *state;
    struct http_request req;
    const char *reason = NULL;
    int rc;

    memset(&req, 0x5a, sizeof(req));
    rc = http_parse_authority(c->in, strlen(c->in), c->port_optional, &req, &reason);
    assert_int_equal(rc, c->rc);
    if (rc == 0) {
        assert_string_equal(req.host, c->host);
        assert_int_equal(req.host_kind, c->kind);
        assert_int_equal(req.port, c->port);
    } else {
        assert_non_null(reason);
        /* req is left alone on failure. */
        assert_int_equal((unsigned char)req.host[0], 0x5a);
    }
}

/* ---- individual parser tests -------------------------------------------------------------- */

/* A host of exactly 253 bytes (plus a trailing dot) is accepted; 254 is not. */
static void test_host_length_limit(void **state) {
    char host[300], req[400];
    struct http_parser p;
    int n;

    (void)state;
    /* 3 labels of 63 and one of 61: 63*3 + 61 + 3 dots = 253. */
    memset(host, 'a', sizeof(host));
    host[63] = host[127] = host[191] = '.';
    host[253] = '\0';
    n = snprintf(req, sizeof(req), "CONNECT %s.:443 HTTP/1.1\r\nHost: h\r\n\r\n", host);
    assert_true(n > 0 && (size_t)n < sizeof(req));
    assert_int_equal(parse_all_ways(req, (size_t)n, NULL, &p), HTTP_PARSE_DONE);
    assert_int_equal(strlen(p.req.host), 253);
    assert_memory_equal(p.req.host, host, 253);

    host[253] = 'a';
    host[254] = '\0';
    n = snprintf(req, sizeof(req), "CONNECT %s:443 HTTP/1.1\r\nHost: h\r\n\r\n", host);
    assert_true(n > 0 && (size_t)n < sizeof(req));
    assert_int_equal(parse_all_ways(req, (size_t)n, NULL, &p), HTTP_PARSE_ERROR);
    assert_int_equal(p.status, 400);
    assert_string_equal(p.reason, "host name too long");
}

/* With default limits, a request line of 8193 bytes is a 414 before any LF arrives, and one of
 * exactly 8192 bytes is not a 414. */
static void test_default_max_line(void **state) {
    size_t n = 8 + 8192 + 20;
    char *buf = malloc(n);
    struct http_parser p;

    (void)state;
    assert_non_null(buf);
    memcpy(buf, "CONNECT ", 8);
    memset(buf + 8, 'a', n - 8);
    assert_int_equal(parse_all_ways(buf, n, NULL, &p), HTTP_PARSE_ERROR);
    assert_int_equal(p.status, 414);
    assert_int_equal(p.pos, 8193); /* decided by byte 8193 */

    /* "CONNECT " + target + " HTTP/1.1" = 8192 bytes, then CR LF. */
    memcpy(buf + 8192 - 9, " HTTP/1.1\r\n", 11);
    assert_int_equal(parse_all_ways(buf, 8192 + 2, NULL, &p), HTTP_PARSE_ERROR);
    assert_int_equal(p.status, 400);
    free(buf);
}

/* "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n", nheaders more fields, the final empty line. */
static char *build_headers(size_t nheaders, size_t *len) {
    size_t cap = 64 + nheaders * 32;
    char *buf = malloc(cap);
    int n;
    size_t used;

    assert_non_null(buf);
    n = snprintf(buf, cap, "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n");
    assert_true(n > 0 && (size_t)n < cap);
    used = (size_t)n;
    for (size_t i = 0; i < nheaders; i++) {
        n = snprintf(buf + used, cap - used, "X-%zu: v\r\n", i);
        assert_true(n > 0 && (size_t)n < cap - used);
        used += (size_t)n;
    }
    assert_true(cap - used >= 2);
    memcpy(buf + used, "\r\n", 2);
    *len = used + 2;
    return buf;
}

static void test_default_max_headers(void **state) {
    struct http_parser p;
    size_t n;
    char *buf;

    (void)state;
    buf = build_headers(99, &n); /* Host + 99 = 100 fields */
    assert_int_equal(parse_all_ways(buf, n, NULL, &p), HTTP_PARSE_DONE);
    free(buf);

    buf = build_headers(100, &n);
    assert_int_equal(parse_all_ways(buf, n, NULL, &p), HTTP_PARSE_ERROR);
    assert_int_equal(p.status, 431);
    free(buf);
}

static void test_default_max_total(void **state) {
    struct http_parser p;
    size_t cap = 16384 + 100, n;
    char *buf = malloc(cap);

    (void)state;
    assert_non_null(buf);
    /* One big header so that the block is exactly 16384 bytes. */
    n = (size_t)snprintf(buf, cap, "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nX-Pad: ");
    memset(buf + n, 'p', 16384 - 4 - n);
    n = 16384 - 4;
    memcpy(buf + n, "\r\n\r\n", 4);
    n += 4;
    assert_int_equal(parse_all_ways(buf, n, NULL, &p), HTTP_PARSE_DONE);
    assert_int_equal(p.req.header_len, 16384);

    /* One more byte of value: 431, decided by byte 16385, before the final empty line. */
    memset(buf + n - 4, 'p', 1);
    memcpy(buf + n - 3, "\r\n\r\n", 4);
    assert_int_equal(parse_all_ways(buf, n + 1, NULL, &p), HTTP_PARSE_ERROR);
    assert_int_equal(p.status, 431);
    assert_int_equal(p.pos, 16385);

    /* No line ending at all: still 431 once 16385 bytes are buffered. */
    memset(buf + 40, 'p', cap - 40);
    assert_int_equal(parse_all_ways(buf, cap, NULL, &p), HTTP_PARSE_ERROR);
    assert_int_equal(p.status, 431);
    free(buf);
}

static void test_init_defaults(void **state) {
    struct http_parser p;
    struct http_limits lim = {.max_line = 100, .max_headers = 0, .max_total = 0};

    (void)state;
    http_parser_init(&p, NULL);
    assert_int_equal(p.limits.max_line, 8192);
    assert_int_equal(p.limits.max_headers, 100);
    assert_int_equal(p.limits.max_total, 16384);
    assert_int_equal(p.pos, 0);

    http_parser_init(&p, &lim);
    assert_int_equal(p.limits.max_line, 100);
    assert_int_equal(p.limits.max_headers, 100);
    assert_int_equal(p.limits.max_total, 16384);
    /* init copies: changing the caller's struct later changes nothing. */
    lim.max_line = 5;
    assert_int_equal(p.limits.max_line, 100);
}

static void test_zeroed_parser_works(void **state) {
    static const char in[] = "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n";
    struct http_parser p;

    (void)state;
    memset(&p, 0, sizeof(p));
    assert_int_equal(http_parse(&p, in, sizeof(in) - 1), HTTP_PARSE_DONE);
    assert_int_equal(p.limits.max_total, 16384);
    assert_string_equal(p.req.host, "h");
}

static void test_sticky_done(void **state) {
    static const char in[] = "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n\r\r\r\nGET";
    size_t hlen = sizeof("CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n") - 1;
    struct http_parser p;

    (void)state;
    http_parser_init(&p, NULL);
    assert_int_equal(http_parse(&p, in, hlen), HTTP_PARSE_DONE);
    assert_int_equal(p.req.header_len, hlen);
    /* More bytes arrive (early data that would be a syntax error if it were examined). */
    assert_int_equal(http_parse(&p, in, sizeof(in) - 1), HTTP_PARSE_DONE);
    assert_int_equal(p.req.header_len, hlen);
    assert_int_equal(p.pos, hlen);
}

static void test_sticky_error(void **state) {
    static const char in[] = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    struct http_parser p;

    (void)state;
    http_parser_init(&p, NULL);
    assert_int_equal(http_parse(&p, in, 16), HTTP_PARSE_ERROR);
    assert_int_equal(p.status, 405);
    assert_string_equal(p.req.method, "GET");
    /* The request line stays addressable for the access log / a PAC answer. */
    assert_int_equal(p.line_start, 0);
    assert_int_equal(p.pos, 16);
    assert_int_equal(http_parse(&p, in, sizeof(in) - 1), HTTP_PARSE_ERROR);
    assert_int_equal(p.status, 405);
    assert_int_equal(p.pos, 16);
}

/* The status and request line are known as soon as the request line is complete. */
static void test_405_without_headers(void **state) {
    static const char in[] = "\r\nPOST /x HTTP/1.0\r\n";
    struct http_parser p;

    (void)state;
    http_parser_init(&p, NULL);
    assert_int_equal(http_parse(&p, in, sizeof(in) - 1), HTTP_PARSE_ERROR);
    assert_int_equal(p.status, 405);
    assert_string_equal(p.req.method, "POST");
    assert_int_equal(p.line_start, 2);
}

static void test_proxy_auth_offset(void **state) {
    static const char in[] =
        "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nProxy-Authorization: Basic YTpi\r\n\r\n";
    struct http_parser p;

    (void)state;
    http_parser_init(&p, NULL);
    assert_int_equal(http_parse(&p, in, sizeof(in) - 1), HTTP_PARSE_DONE);
    assert_int_equal(p.req.proxy_auth_off, strstr(in, "Basic") - in);
    assert_int_equal(p.req.proxy_auth_len, 10);
}

static void test_empty_proxy_auth_is_first(void **state) {
    static const char in[] = "CONNECT h:443 HTTP/1.1\r\nHost: h\r\nProxy-Authorization:  \r\n"
                             "Proxy-Authorization: Basic YTpi\r\n\r\n";
    struct http_parser p;

    (void)state;
    http_parser_init(&p, NULL);
    assert_int_equal(http_parse(&p, in, sizeof(in) - 1), HTTP_PARSE_DONE);
    assert_int_equal(p.req.proxy_auth_len, 0);
    assert_true(p.req.proxy_auth_off > 0);
}

/* Every prefix of a valid request is MORE, and pos follows the bytes seen (resume, not rescan). */
static void test_prefixes_are_more(void **state) {
    static const char in[] = "\r\nCONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: x\r\nA: b\r\n\r\n";
    struct http_parser p;
    size_t last = 0;

    (void)state;
    http_parser_init(&p, NULL);
    for (size_t k = 0; k < sizeof(in) - 1; k++) {
        assert_int_equal(parse_exact(&p, in, k), HTTP_PARSE_MORE);
        /* Every byte so far was examined; the next call resumes after them. */
        assert_int_equal(p.pos, k);
        assert_true(p.pos >= last);
        last = p.pos;
    }
    assert_int_equal(parse_exact(&p, in, sizeof(in) - 1), HTTP_PARSE_DONE);
}

/* ---- responses ---------------------------------------------------------------------------- */

static void test_status_text(void **state) {
    static const struct {
        int status;
        const char *text;
    } t[] = {
        {200, "Connection established"},
        {400, "Bad Request"},
        {403, "Forbidden"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {407, "Proxy Authentication Required"},
        {408, "Request Timeout"},
        {414, "URI Too Long"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {504, "Gateway Timeout"},
        {0, "Unknown"},
        {418, "Unknown"},
        {-1, "Unknown"},
    };

    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(t); i++)
        assert_string_equal(http_status_text(t[i].status), t[i].text);
}

static void test_connect_ok(void **state) {
    (void)state;
    assert_int_equal(HTTP_CONNECT_OK_LEN, strlen(HTTP_CONNECT_OK));
    assert_string_equal(HTTP_CONNECT_OK, "HTTP/1.1 200 Connection established\r\n\r\n");
}

static const char expect_502[] = "HTTP/1.1 502 Bad Gateway\r\n"
                                 "Proxy-Status: connectd; error=dns_error; rcode=\"NXDOMAIN\"; "
                                 "details=\"no such host\"\r\n"
                                 "Content-Type: text/plain\r\n"
                                 "Content-Length: 30\r\n"
                                 "Connection: close\r\n"
                                 "\r\n"
                                 "502 Bad Gateway: no such host\n";

static void test_build_error_exact(void **state) {
    char out[1024];
    size_t n;

    (void)state;
    n = http_build_error(out, sizeof(out), 502, "dns_error", "rcode=\"NXDOMAIN\"", "no such host",
                         NULL);
    assert_int_equal(n, sizeof(expect_502) - 1);
    assert_string_equal(out, expect_502);
}

static void test_build_error_extra_no_details(void **state) {
    static const char expect[] = "HTTP/1.1 405 Method Not Allowed\r\n"
                                 "Proxy-Status: connectd; error=http_request_denied\r\n"
                                 "Allow: CONNECT\r\n"
                                 "Content-Type: text/plain\r\n"
                                 "Content-Length: 43\r\n"
                                 "Connection: close\r\n"
                                 "\r\n"
                                 "405 Method Not Allowed: Method Not Allowed\n";
    char out[1024];

    (void)state;
    assert_int_equal(http_build_error(out, sizeof(out), 405, "http_request_denied", NULL, NULL,
                                      "Allow: CONNECT\r\n"),
                     sizeof(expect) - 1);
    assert_string_equal(out, expect);
}

static void test_build_error_407(void **state) {
    char out[1024];
    size_t n;

    (void)state;
    n = http_build_error(out, sizeof(out), 407, "http_request_denied", "", "credentials required",
                         "Proxy-Authenticate: Basic realm=\"connectd\"\r\n");
    assert_true(n > 0);
    assert_non_null(strstr(out, "HTTP/1.1 407 Proxy Authentication Required\r\n"));
    assert_non_null(strstr(out, "error=http_request_denied; details=\"credentials required\"\r\n"));
    assert_non_null(strstr(out, "\r\nProxy-Authenticate: Basic realm=\"connectd\"\r\nContent-"));
}

static void test_build_error_sanitises(void **state) {
    char out[1024];
    size_t n;
    const char *body;

    (void)state;
    n = http_build_error(out, sizeof(out), 400, "http_request_error", NULL,
                         "a\"b\\c\r\nX-Evil: 1\x01\x7f\xff", NULL);
    assert_true(n > 0);
    assert_non_null(strstr(out, "details=\"a'b/c??X-Evil: 1???\"\r\n"));
    assert_null(strstr(out, "\r\nX-Evil"));
    body = strstr(out, "\r\n\r\n");
    assert_non_null(body);
    assert_string_equal(body + 4, "400 Bad Request: a'b/c??X-Evil: 1???\n");
    assert_non_null(strstr(out, "Content-Length: 37\r\n"));
}

/* Content-Length always equals the body that follows. */
static void test_build_error_content_length(void **state) {
    static const int statuses[] = {400, 403, 405, 407, 408, 414, 431, 502, 503, 504, 599};
    static const char *const details[] = {NULL, "", "x", "a longer explanation: 10.0.0.1"};

    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(statuses); i++) {
        for (size_t j = 0; j < ARRAY_LEN(details); j++) {
            char out[1024];
            size_t n = http_build_error(out, sizeof(out), statuses[i], "proxy_internal_error", NULL,
                                        details[j], NULL);
            const char *cl = strstr(out, "Content-Length: ");
            const char *body = strstr(out, "\r\n\r\n");

            assert_true(n > 0);
            assert_int_equal(n, strlen(out));
            assert_non_null(cl);
            assert_non_null(body);
            assert_int_equal(strtoul(cl + 16, NULL, 10), strlen(body + 4));
            /* one line */
            assert_ptr_equal(strchr(body + 4, '\n'), out + n - 1);
        }
    }
}

/* Too small a buffer gives 0 and never writes past outlen; outlen = length + 1 (room for the
 * NUL) is the smallest that works. */
static void test_build_error_truncation(void **state) {
    size_t full = sizeof(expect_502) - 1;

    (void)state;
    assert_int_equal(
        http_build_error(NULL, 0, 502, "dns_error", "rcode=\"NXDOMAIN\"", "no such host", NULL), 0);
    for (size_t outlen = 1; outlen <= full + 1; outlen++) {
        char *out = malloc(outlen); /* exact size: ASan catches any overrun */
        size_t n;

        assert_non_null(out);
        n = http_build_error(out, outlen, 502, "dns_error", "rcode=\"NXDOMAIN\"", "no such host",
                             NULL);
        if (outlen <= full) {
            assert_int_equal(n, 0);
            assert_int_equal(out[0], '\0');
        } else {
            assert_int_equal(n, full);
            assert_memory_equal(out, expect_502, full + 1);
        }
        free(out);
    }
}

static void test_build_error_details_capped(void **state) {
    char details[1000], out[1024];
    size_t n;

    (void)state;
    memset(details, 'd', sizeof(details) - 1);
    details[sizeof(details) - 1] = '\0';
    n = http_build_error(out, sizeof(out), 502, "dns_error", NULL, details, NULL);
    assert_true(n > 0 && n < sizeof(out));
    assert_null(strstr(out, "ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
                            "ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
                            "ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"
                            "ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd"));
}

static void test_build_error_rejects_bad_input(void **state) {
    char out[1024];

    (void)state;
    assert_int_equal(http_build_error(out, sizeof(out), 400, NULL, NULL, NULL, NULL), 0);
    assert_int_equal(http_build_error(out, sizeof(out), 400, "", NULL, NULL, NULL), 0);
    assert_int_equal(http_build_error(out, sizeof(out), 400, "bad token", NULL, NULL, NULL), 0);
    assert_int_equal(http_build_error(out, sizeof(out), 400, "1abc", NULL, NULL, NULL), 0);
    assert_int_equal(http_build_error(out, sizeof(out), 400, "x\r\nY: z", NULL, NULL, NULL), 0);
    assert_int_equal(
        http_build_error(out, sizeof(out), 400, "dns_error", "rcode=1\r\nX: y", NULL, NULL), 0);
    assert_int_equal(
        http_build_error(out, sizeof(out), 400, "dns_error", NULL, NULL, "Allow: CONNECT"), 0);
    assert_int_equal(
        http_build_error(out, sizeof(out), 400, "dns_error", NULL, NULL, "A: b\nC: d\r\n"), 0);
    assert_int_equal(http_build_error(out, sizeof(out), 400, "dns_error", NULL, NULL, "\r\n"), 0);
    assert_int_equal(
        http_build_error(out, sizeof(out), 400, "dns_error", NULL, NULL, "A: b\r\n\r\nX"), 0);
    assert_int_equal(http_build_error(out, sizeof(out), 99, "dns_error", NULL, NULL, NULL), 0);
    assert_int_equal(http_build_error(out, sizeof(out), 1000, "dns_error", NULL, NULL, NULL), 0);
    /* sf-tokens may start with '*' and contain ':' and '/'. */
    assert_true(http_build_error(out, sizeof(out), 400, "*a:b/c", NULL, NULL, NULL) > 0);
    assert_true(http_build_error(out, sizeof(out), 400, "x", NULL, NULL, "") > 0);
}

/* ---- a parent's answer: http_parse_response() -------------------------------------------- */

struct response_case {
    const char *name;
    const char *in;
    size_t len;
    size_t max;
    enum http_parse_result res;
    int status;         /* on DONE */
    size_t head_len;    /* on DONE */
    const char *reason; /* on ERROR */
    size_t decided;     /* the shortest prefix with the final outcome (the rest are MORE) */
};

#define RMAX 16384
#define RDONE(st, head)                                                                            \
    .res = HTTP_PARSE_DONE, .status = (st), .head_len = (head), .decided = (head)
#define RERR(why, at) .res = HTTP_PARSE_ERROR, .reason = (why), .decided = (at)
#define RMORE         .res = HTTP_PARSE_MORE

#define OK200     "HTTP/1.1 200 Connection established\r\n\r\n"
#define TOO_LARGE "response header too large"
#define NOT_HTTP  "not an HTTP response"
#define BAD_LINE  "bad status line"

static const struct response_case response_cases[] = {
    /* DONE: the status, and where the head ends (bytes after it are the tunnel's). */
    {"response: 200 with CR LF", BIN(OK200), RMAX, RDONE(200, sizeof(OK200) - 1)},
    {"response: 200 with bare LF", BIN("HTTP/1.0 200 OK\n\n"), RMAX, RDONE(200, 17)},
    {"response: no reason phrase", BIN("HTTP/1.1 200\r\n\r\n"), RMAX, RDONE(200, 16)},
    {"response: no reason phrase, bare LF", BIN("HTTP/1.1 204\n\n"), RMAX, RDONE(204, 14)},
    {"response: mixed line endings", BIN("HTTP/1.1 200 OK\r\nVia: 1.1 p\n\r\n"), RMAX,
     RDONE(200, 30)},
    {"response: bare LF then CR LF", BIN("HTTP/1.1 200 OK\nA: b\r\n\n"), RMAX, RDONE(200, 23)},
    {"response: tunnel data after the head", BIN(OK200 "\x16\x03\x01\x02\x00\r\n\r\n"), RMAX,
     RDONE(200, sizeof(OK200) - 1)},
    {"response: 407 with headers",
     BIN("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic "
         "realm=\"p\"\r\nContent-Length: 0\r\n\r\n"),
     RMAX, RDONE(407, 102)},
    {"response: HTTP/1.9 504", BIN("HTTP/1.9 504 Gateway Timeout\r\n\r\n"), RMAX, RDONE(504, 32)},
    {"response: 100 is the caller's to judge", BIN("HTTP/1.1 100 Continue\r\n\r\n"), RMAX,
     RDONE(100, 25)},
    /* max counts the head only. */
    {"response: head of exactly max", BIN("HTTP/1.1 200 OK\r\n\r\n"), 19, RDONE(200, 19)},
    {"response: data past max after the head", BIN("HTTP/1.1 200 OK\r\n\r\nlots of tunnel data"),
     19, RDONE(200, 19)},
    {"response: head one byte over max", BIN("HTTP/1.1 200 OK\r\n\r\n"), 18, RERR(TOO_LARGE, 18)},
    {"response: headers over max",
     BIN("HTTP/1.1 200 OK\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n"), 32,
     RERR(TOO_LARGE, 32)},
    /* MORE: the head has not ended yet. */
    {"response: nothing yet", BIN(""), RMAX, RMORE},
    {"response: status line only", BIN("HTTP/1.1 200 OK\r\n"), RMAX, RMORE},
    {"response: CR of the last CR LF", BIN("HTTP/1.1 200 OK\r\nA: b\r\n\r"), RMAX, RMORE},
    {"response: CR CR LF is no end", BIN("HTTP/1.1 200 OK\r\r\n"), RMAX, RMORE},
    /* ERROR at the first byte: anything but 'H' is no HTTP response. */
    {"response: bad first byte", BIN("X"), RMAX, RERR(NOT_HTTP, 1)},
    {"response: TLS record", BIN("\x16\x03\x01\x00\x05hello world"), RMAX, RERR(NOT_HTTP, 1)},
    {"response: leading CR LF", BIN("\r\nHTTP/1.1 200 OK\r\n\r\n"), RMAX, RERR(NOT_HTTP, 1)},
    {"response: lowercase http", BIN("http/1.1 200 OK\r\n\r\n"), RMAX, RERR(NOT_HTTP, 1)},
    {"response: empty head", BIN("\n\n"), RMAX, RERR(NOT_HTTP, 1)},
    /* ERROR once "HTTP/1.x NNN" and the byte after it are there. */
    {"response: HTTP/2", BIN("HTTP/2 200\r\n\r\n"), RMAX, RERR(BAD_LINE, 12)},
    {"response: HTTX", BIN("HTTX/1.1 200 OK\r\n\r\n"), RMAX, RERR(BAD_LINE, 12)},
    {"response: minor version not a digit", BIN("HTTP/1.x 200 OK\r\n\r\n"), RMAX,
     RERR(BAD_LINE, 12)},
    {"response: status not digits", BIN("HTTP/1.1 2x0 OK\r\n\r\n"), RMAX, RERR(BAD_LINE, 12)},
    {"response: two spaces", BIN("HTTP/1.1  200 OK\r\n\r\n"), RMAX, RERR(BAD_LINE, 12)},
    {"response: four-digit status", BIN("HTTP/1.1 2000 OK\r\n\r\n"), RMAX, RERR(BAD_LINE, 13)},
    {"response: no space after status", BIN("HTTP/1.1 200OK\r\n\r\n"), RMAX, RERR(BAD_LINE, 13)},
    {"response: tab after status", BIN("HTTP/1.1 200\tOK\r\n\r\n"), RMAX, RERR(BAD_LINE, 13)},
    {"response: no status, CR LF", BIN("HTTP/1.1\r\n\r\n"), RMAX, RERR(BAD_LINE, 12)},
    /* A head that ends before a status line fits. */
    {"response: head ends at once", BIN("H\n\n"), RMAX, RERR(BAD_LINE, 3)},
    {"response: no status, bare LF", BIN("HTTP/1.1\n\n"), RMAX, RERR(BAD_LINE, 10)},
    {"response: status cut short", BIN("HTTP/1.1 20\n\n"), RMAX, RERR(BAD_LINE, 12)},
};

/* http_parse_response() on a heap copy of exactly len bytes of in (ASan sees any read past). */
static enum http_parse_result response_exact(const char *in, size_t len, size_t max, int *status,
                                             size_t *head_len, const char **reason) {
    char *copy = malloc(len > 0 ? len : 1);
    enum http_parse_result r;

    assert_non_null(copy);
    if (len > 0)
        memcpy(copy, in, len);
    r = http_parse_response(copy, len, max, status, head_len, reason);
    free(copy);
    return r;
}

/* The whole input, then every prefix: MORE before the deciding byte, the same outcome from it
 * on (the caller calls again with the buffer grown after every read). */
static void test_response_case(void **state) {
    const struct response_case *tc = *state;
    size_t first = tc->res == HTTP_PARSE_MORE ? tc->len + 1 : tc->decided;

    for (size_t k = 0; k <= tc->len; k++) {
        int status = -1;
        size_t head = 0;
        const char *reason = "unset";
        enum http_parse_result r = response_exact(tc->in, k, tc->max, &status, &head, &reason);

        if (k < first) {
            if (r != HTTP_PARSE_MORE)
                fail_msg("prefix of %zu bytes: expected MORE, got %d (%s)", k, r,
                         reason ? reason : "");
            assert_null(reason);
            continue;
        }
        if (r != tc->res)
            fail_msg("prefix of %zu bytes: expected %d, got %d (%s)", k, tc->res, r,
                     reason ? reason : "");
        if (r == HTTP_PARSE_DONE) {
            assert_null(reason);
            assert_int_equal(status, tc->status);
            assert_int_equal(head, tc->head_len);
        } else {
            assert_non_null(reason);
            assert_string_equal(reason, tc->reason);
        }
    }
}

/* ---- http_header_values() ----------------------------------------------------------------- */

/* http_header_values() on a heap copy of exactly header_len bytes; out is checked to be
 * NUL-terminated within outlen and not written past it. */
static size_t values_exact(const char *block, size_t header_len, const char *name, char *out,
                           size_t outlen) {
    char *copy = malloc(header_len > 0 ? header_len : 1);
    char *o = malloc(outlen + 1);
    size_t n;

    assert_non_null(copy);
    assert_non_null(o);
    memcpy(copy, block, header_len);
    memset(o, 'Z', outlen + 1);
    n = http_header_values(copy, header_len, name, o, outlen);
    assert_int_equal(o[outlen], 'Z');
    if (outlen > 0) {
        assert_int_equal(strlen(o), n);
        memcpy(out, o, n + 1);
    } else {
        assert_int_equal(n, 0);
        assert_int_equal(o[0], 'Z'); /* nothing written */
    }
    free(copy);
    free(o);
    return n;
}

static void expect_values(const char *block, const char *name, size_t outlen, const char *want) {
    char out[1024];

    assert_true(outlen <= sizeof(out));
    size_t n = values_exact(block, strlen(block), name, out, outlen);
    if (outlen > 0 && strcmp(out, want) != 0)
        fail_msg("'%s' (out %zu bytes): expected '%s', got '%s'", name, outlen, want, out);
    assert_int_equal(n, strlen(want));
}

static const char via_block[] = "CONNECT a.test:443 HTTP/1.1\r\n"
                                "Host: a.test:443\r\n"
                                "Via: 1.0 fred, 1.1 p.example\r\n"
                                "X-Via: not this\r\n"
                                "via:1.1 second  \r\n"
                                "Viaduct: not this\r\n"
                                "Via : not this (no space before the colon)\r\n"
                                "VIA:\t 1.1  third \t\r\n"
                                "Via:\r\n"
                                "Via:  \t \r\n"
                                "\r\n";

static void test_header_values(void **state) {
    (void)state;
    /* Every field of that name, any case, in order; OWS trimmed, inner spaces kept; empty
     * values left out. */
    expect_values(via_block, "via", 1024, "1.0 fred, 1.1 p.example, 1.1 second, 1.1  third");
    expect_values(via_block, "host", 1024, "a.test:443");
    expect_values(via_block, "x-via", 1024, "not this");
    expect_values(via_block, "proxy-authorization", 1024, "");
    /* Bare LF line endings. */
    expect_values("CONNECT a:1 HTTP/1.1\nVia: a\nHost: a:1\nvia: b\n\n", "via", 64, "a, b");
    /* The request line is not a field, whatever it holds; a block without a LF is only that. */
    expect_values("Via: request line\r\nVia: a\r\n\r\n", "via", 64, "a");
    expect_values("Via: no LF", "via", 64, "");
    expect_values("CONNECT a:1 HTTP/1.1\r\n\r\n", "via", 64, "");
    /* A last line cut by header_len (no LF) still counts. */
    expect_values("CONNECT a:1 HTTP/1.1\r\nVia: a\r\nVia: last", "via", 64, "a, last");
}

/* Only header_len bytes are read: a field after the head is tunnel data. */
static void test_header_values_header_len(void **state) {
    static const char buf[] = "CONNECT a:1 HTTP/1.1\r\nVia: a\r\n\r\nVia: b\r\n\r\n";
    size_t head = strstr(buf, "\r\n\r\n") + 4 - buf;
    char out[64];

    (void)state;
    assert_int_equal(values_exact(buf, head, "via", out, sizeof(out)), 1);
    assert_string_equal(out, "a");
    assert_int_equal(values_exact(buf, sizeof(buf) - 1, "via", out, sizeof(out)), 4);
    assert_string_equal(out, "a, b");
    assert_int_equal(values_exact(buf, 0, "via", out, sizeof(out)), 0);
    assert_string_equal(out, "");
}

/* A value is kept whole or not at all: the output is always a list of complete values. */
static void test_header_values_fit(void **state) {
    static const char block[] = "CONNECT a:1 HTTP/1.1\r\nVia: abc\r\nVia: de\r\n\r\n";

    (void)state;
    expect_values(block, "via", 8, "abc, de"); /* 7 bytes and the NUL */
    expect_values(block, "via", 7, "abc");     /* ", de" does not fit */
    expect_values(block, "via", 5, "abc");
    expect_values(block, "via", 4, "abc");
    expect_values(block, "via", 3, "");
    expect_values(block, "via", 1, "");
    expect_values(block, "via", 0, "");
    /* The list stops at the first value that does not fit (src/http.c: "what fits is kept
     * whole, item by item"), so it never has a hole: a later shorter value is left out too. */
    expect_values("CONNECT a:1 HTTP/1.1\r\nVia: 1.1 a-very-long-pseudonym\r\nVia: 1.1 b\r\n\r\n",
                  "via", 16, "");
    expect_values("CONNECT a:1 HTTP/1.1\r\nVia: x\r\nVia: 1.1 a-very-long-pseudonym\r\nVia: y\r\n"
                  "\r\n",
                  "via", 16, "x");
}

/* http.h: "Every value of the header fields called name (case-insensitive)": the name passed
 * in may be written in any case too, as header names usually are ("Via"). */
static void test_header_values_name_case(void **state) {
    (void)state;
    expect_values(via_block, "Via", 1024, "1.0 fred, 1.1 p.example, 1.1 second, 1.1  third");
    expect_values(via_block, "HOST", 1024, "a.test:443");
}

/* ---- main --------------------------------------------------------------------------------- */

static const struct CMUnitTest fixed_tests[] = {
    cmocka_unit_test(test_host_length_limit),
    cmocka_unit_test(test_default_max_line),
    cmocka_unit_test(test_default_max_headers),
    cmocka_unit_test(test_default_max_total),
    cmocka_unit_test(test_init_defaults),
    cmocka_unit_test(test_zeroed_parser_works),
    cmocka_unit_test(test_sticky_done),
    cmocka_unit_test(test_sticky_error),
    cmocka_unit_test(test_405_without_headers),
    cmocka_unit_test(test_proxy_auth_offset),
    cmocka_unit_test(test_empty_proxy_auth_is_first),
    cmocka_unit_test(test_prefixes_are_more),
    cmocka_unit_test(test_status_text),
    cmocka_unit_test(test_connect_ok),
    cmocka_unit_test(test_build_error_exact),
    cmocka_unit_test(test_build_error_extra_no_details),
    cmocka_unit_test(test_build_error_407),
    cmocka_unit_test(test_build_error_sanitises),
    cmocka_unit_test(test_build_error_content_length),
    cmocka_unit_test(test_build_error_truncation),
    cmocka_unit_test(test_build_error_details_capped),
    cmocka_unit_test(test_build_error_rejects_bad_input),
    cmocka_unit_test(test_header_values),
    cmocka_unit_test(test_header_values_header_len),
    cmocka_unit_test(test_header_values_fit),
    cmocka_unit_test(test_header_values_name_case),
};

int main(void) {
    static char authority_names[ARRAY_LEN(authority_cases)][96];
    struct CMUnitTest tests[ARRAY_LEN(parse_cases) + ARRAY_LEN(authority_cases) +
                            ARRAY_LEN(response_cases) + ARRAY_LEN(fixed_tests)];
    size_t n = 0;

    for (size_t i = 0; i < ARRAY_LEN(parse_cases); i++) {
        struct CMUnitTest t = cmocka_unit_test_prestate(test_parse_case, (void *)&parse_cases[i]);

        t.name = parse_cases[i].name;
        tests[n++] = t;
    }
    for (size_t i = 0; i < ARRAY_LEN(authority_cases); i++) {
        struct CMUnitTest t =
            cmocka_unit_test_prestate(test_authority_case, (void *)&authority_cases[i]);

        snprintf(authority_names[i], sizeof(authority_names[i]), "authority \"%s\"%s",
                 authority_cases[i].in, authority_cases[i].port_optional ? " (port optional)" : "");
        t.name = authority_names[i];
        tests[n++] = t;
    }
    for (size_t i = 0; i < ARRAY_LEN(response_cases); i++) {
        struct CMUnitTest t =
            cmocka_unit_test_prestate(test_response_case, (void *)&response_cases[i]);

        t.name = response_cases[i].name;
        tests[n++] = t;
    }
    for (size_t i = 0; i < ARRAY_LEN(fixed_tests); i++)
        tests[n++] = fixed_tests[i];

    return cmocka_run_group_tests(tests, NULL, NULL);
}
