/* Unit tests for src/proxy_proto.c: the PROXY protocol header (v1 text, v2 binary) a load
 * balancer sends before the client's bytes. Parser cases are rows of a declarative table (input
 * bytes and the expected outcome); every row is also fed as a caller would, one more byte per
 * call, and each decided prefix must give the same outcome as one call with the whole input.
 * Each call gets a heap copy of exactly the bytes it may read, so ASan reports any read past len.
 * The address scanners are compared with inet_pton() on tables and on generated text, and headers
 * are built the way HAProxy builds them (make_proxy_line_v1/v2) and read back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "proxy_proto.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- helpers ------------------------------------------------------------------------------ */

/* Calls proxy_parse with a heap copy of exactly len bytes of in. */
static enum proxy_parse parse_exact(const void *in, size_t len, struct proxy_header *h) {
    unsigned char *copy = malloc(len > 0 ? len : 1);
    enum proxy_parse r;

    assert_non_null(copy);
    if (len > 0)
        memcpy(copy, in, len);
    r = proxy_parse(copy, len, h);
    free(copy);
    return r;
}

static void assert_same_outcome(const struct proxy_header *a, enum proxy_parse ra,
                                const struct proxy_header *b, enum proxy_parse rb) {
    assert_int_equal(ra, rb);
    if (ra == PROXY_ERROR) {
        assert_non_null(a->reason);
        assert_non_null(b->reason);
        assert_string_equal(a->reason, b->reason);
    } else if (ra == PROXY_DONE) {
        assert_int_equal(a->version, b->version);
        assert_int_equal(a->command, b->command);
        assert_int_equal(a->has_addr, b->has_addr);
        assert_int_equal(a->len, b->len);
        assert_memory_equal(&a->src, &b->src, sizeof(a->src));
        assert_memory_equal(&a->dst, &b->dst, sizeof(a->dst));
        assert_null(a->reason);
    }
}

/* Parses in whole into *whole, then feeds it as a caller would (0, 1, 2, ... n bytes): every
 * prefix from the first decided one on must give the outcome of the whole input. Returns the
 * whole input's result and, in *decided_at, the length of the shortest decided prefix (0 when
 * even the whole input is undecided). */
static enum proxy_parse parse_all_ways(const void *in, size_t n, struct proxy_header *whole,
                                       size_t *decided_at) {
    enum proxy_parse r0, r;
    struct proxy_header h;
    size_t first = 0;

    r0 = parse_exact(in, n, whole);
    r = parse_exact(in, n, &h); /* no hidden state: the same bytes, the same outcome */
    assert_same_outcome(whole, r0, &h, r);
    for (size_t k = 0; k <= n; k++) {
        r = parse_exact(in, k, &h);
        if (r != PROXY_MORE && first == 0)
            first = k;
        if (first != 0)
            assert_same_outcome(whole, r0, &h, r);
        else
            assert_null(h.reason);
    }
    assert_true((r0 == PROXY_MORE) == (first == 0));
    if (decided_at != NULL)
        *decided_at = first;
    return r0;
}

/* "1.2.3.4:80" or "[::1]:80"; IPv4-mapped addresses stay IPv6 ("[::ffff:1.2.3.4]:80"). */
static void format_sa(const struct sockaddr_storage *ss, char *out, size_t outlen) {
    char text[INET6_ADDRSTRLEN];

    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

        assert_non_null(inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text)));
        (void)snprintf(out, outlen, "%s:%u", text, (unsigned)ntohs(sin->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

        assert_non_null(inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text)));
        (void)snprintf(out, outlen, "[%s]:%u", text, (unsigned)ntohs(sin6->sin6_port));
    } else {
        (void)snprintf(out, outlen, "family %d", (int)ss->ss_family);
    }
}

static void assert_addr(const struct sockaddr_storage *ss, const char *expected) {
    char text[80];

    format_sa(ss, text, sizeof(text));
    assert_string_equal(text, expected);
}

static const struct sockaddr_storage zero_ss;

/* ---- parser table ------------------------------------------------------------------------- */

struct parse_case {
    const char *name;
    const char *in;
    size_t len; /* 0: strlen(in) */
    enum proxy_parse res;
    const char *reason; /* ERROR: NULL means any */
    /* DONE */
    int version;
    enum proxy_command cmd;
    const char *src, *dst; /* "a:port" as format_sa writes it; NULL: has_addr false */
    size_t early;          /* client bytes after the header */
    /* Decided before the whole input was there: the shortest decided prefix (0: not checked; for
     * DONE rows it must always be the header's length). */
    size_t decided_at;
};

#define BIN(s)     .in = (s), .len = sizeof(s) - 1
#define OK1        .res = PROXY_DONE, .version = 1, .cmd = PROXY_CMD_PROXY
#define OK2(c)     .res = PROXY_DONE, .version = 2, .cmd = (c)
#define ERR(r)     .res = PROXY_ERROR, .reason = (r)
#define MORE       .res = PROXY_MORE
#define ADDR(s, d) .src = (s), .dst = (d)

/* The v2 signature, and the 16-byte fixed header with a 2-byte length. */
#define SIG            "\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
#define V2(vc, fam, l) SIG vc fam l
#define IP4_BLOCK                                                                                  \
    "\xc0\x00\x02\x01"                                                                             \
    "\xc6\x33\x64\x0a"                                                                             \
    "\xdc\x04"                                                                                     \
    "\x01\xbb"
#define IP6_SRC "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01"
#define IP6_DST "\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02"
#define IP6_BLOCK                                                                                  \
    IP6_SRC IP6_DST "\xc3\x50"                                                                     \
                    "\x0c\x38"
#define CLIENT "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
#define S4     "192.0.2.1:56324"
#define D4     "198.51.100.10:443"
#define S6     "[2001:db8::1]:50000"
#define D6     "[2001:db8::2]:3128"

static const struct parse_case parse_cases[] = {
    /* v1: the spec's example and lines as senders write them. */
    {"v1 TCP4, spec example", "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", OK1,
     ADDR("192.168.0.1:56324", "192.168.0.11:443")},
    {"v1 TCP4 then the client's request", "PROXY TCP4 192.0.2.1 198.51.100.10 56324 443\r\n" CLIENT,
     OK1, ADDR(S4, D4), .early = sizeof(CLIENT) - 1},
    {"v1 TCP4 then TLS bytes", BIN("PROXY TCP4 192.0.2.1 198.51.100.10 56324 443\r\n\x16\x03\x01"),
     OK1, ADDR(S4, D4), .early = 3},
    {"v1 TCP4 longest", "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", OK1,
     ADDR("255.255.255.255:65535", "255.255.255.255:65535")},
    {"v1 TCP4 zeros", "PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n", OK1, ADDR("0.0.0.0:0", "0.0.0.0:0")},
    {"v1 TCP4 one-digit parts", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", OK1,
     ADDR("1.2.3.4:1", "5.6.7.8:2")},
    {"v1 TCP4 10, 100, 200, 250 parts", "PROXY TCP4 10.100.200.250 250.200.100.10 10 100\r\n", OK1,
     ADDR("10.100.200.250:10", "250.200.100.10:100")},
    {"v1 TCP6", "PROXY TCP6 2001:db8::1 2001:db8::2 50000 3128\r\n", OK1, ADDR(S6, D6)},
    {"v1 TCP6 then the client's request",
     "PROXY TCP6 2001:db8::1 2001:db8::2 50000 3128\r\n" CLIENT, OK1, ADDR(S6, D6),
     .early = sizeof(CLIENT) - 1},
    {"v1 TCP6 uppercase, full groups",
     "PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 2001:DB8:0:0:0:0:0:2 50000 3128\r\n", OK1,
     ADDR(S6, D6)},
    {"v1 TCP6 ::", "PROXY TCP6 :: ::1 1 65535\r\n", OK1, ADDR("[::]:1", "[::1]:65535")},
    {"v1 TCP6 trailing ::", "PROXY TCP6 fe80:: 1:: 1 2\r\n", OK1, ADDR("[fe80::]:1", "[1::]:2")},
    {"v1 TCP6 :: for one group", "PROXY TCP6 1:2:3:4:5:6:7:: ::2:3:4:5:6:7:8 1 2\r\n", OK1,
     ADDR("[1:2:3:4:5:6:7:0]:1", "[0:2:3:4:5:6:7:8]:2")},
    {"v1 TCP6 IPv4-mapped (HAProxy with mixed families)",
     "PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 56324 443\r\n", OK1,
     ADDR("[::ffff:192.0.2.1]:56324", "[2001:db8::2]:443")},
    {"v1 TCP6 dotted tail after six groups", "PROXY TCP6 1:2:3:4:5:6:1.2.3.4 ::1.2.3.4 1 2\r\n",
     OK1, ADDR("[1:2:3:4:5:6:102:304]:1", "[::1.2.3.4]:2")},
    {"v1 TCP6 longest (104 bytes)",
     "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
     "65535 65535\r\n",
     OK1,
     ADDR("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
          "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")},
    {"v1 UNKNOWN short form (HAProxy)", "PROXY UNKNOWN\r\n", OK1},
    {"v1 UNKNOWN then the client's request", "PROXY UNKNOWN\r\n" CLIENT, OK1,
     .early = sizeof(CLIENT) - 1},
    {"v1 UNKNOWN with addresses ignored", "PROXY UNKNOWN 192.0.2.1 198.51.100.10 56324 443\r\n",
     OK1},
    {"v1 UNKNOWN with anything printable", "PROXY UNKNOWN whatever :-) ~!@#$%^&*()\r\n", OK1},
    {"v1 UNKNOWN with an empty rest", "PROXY UNKNOWN \r\n", OK1},
    {"v1 UNKNOWN worst case (107 bytes)",
     "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
     "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
     "65535 65535\r\n",
     OK1},
    {"v1 UNKNOWN with a bare LF inside", "PROXY UNKNOWN a\nb\r\n", ERR("v1: bad byte in line"),
     .decided_at = 16},
    {BIN("PROXY UNKNOWN a\0b\r\n"), .name = "v1 UNKNOWN with NUL", ERR("v1: bad byte in line"),
     .decided_at = 16},
    {"v1 UNKNOWN with HTAB", "PROXY UNKNOWN a\tb\r\n", ERR("v1: bad byte in line")},
    {"v1 UNKNOWN with DEL", "PROXY UNKNOWN \x7f\r\n", ERR("v1: bad byte in line")},
    {"v1 UNKNOWN with 8-bit byte", "PROXY UNKNOWN \xc3\xa9\r\n", ERR("v1: bad byte in line")},
    {"v1 UNKNOWN with a bare CR inside", "PROXY UNKNOWN a\rb\r\n", ERR("v1: CR without LF"),
     .decided_at = 17},
    {"v1 UNKNOWNX", "PROXY UNKNOWNX\r\n", ERR("v1: unsupported protocol"), .decided_at = 14},
    {"v1 UNKNOWN then LF", "PROXY UNKNOWN\n", ERR("v1: unsupported protocol"), .decided_at = 14},
    {"v1 UNKNOWN then CR CR", "PROXY UNKNOWN\r\r\n", ERR("v1: CR without LF"), .decided_at = 15},

    /* v1: incomplete. */
    {"empty input", "", MORE},
    {"P", "P", MORE},
    {"PROXY", "PROXY", MORE},
    {"PROXY SP", "PROXY ", MORE},
    {"PROXY TC", "PROXY TC", MORE},
    {"PROXY UNKNOW", "PROXY UNKNOW", MORE},
    {"PROXY UNKNOWN", "PROXY UNKNOWN", MORE},
    {"PROXY UNKNOWN CR", "PROXY UNKNOWN\r", MORE},
    {"v1 TCP4 before the addresses", "PROXY TCP4 ", MORE},
    {"v1 TCP4 mid-address", "PROXY TCP4 192.0.2", MORE},
    {"v1 TCP4 without CRLF", "PROXY TCP4 192.0.2.1 198.51.100.10 56324 443", MORE},
    {"v1 TCP4 without LF", "PROXY TCP4 192.0.2.1 198.51.100.10 56324 443\r", MORE},
    {"v1 TCP6 mid-address", "PROXY TCP6 2001:db8:", MORE},
    {"v1 TCP6 after a leading colon", "PROXY TCP6 :", MORE},

    /* Not a PROXY header at all: decided at the first byte that shows it. */
    {"HTTP CONNECT without header", CLIENT, ERR("not a PROXY protocol header"), .decided_at = 1},
    {"HTTP POST", "POST / HTTP/1.1\r\n\r\n", ERR("not a PROXY protocol header"), .decided_at = 2},
    {"HTTP PUT", "PUT / HTTP/1.1\r\n\r\n", ERR("not a PROXY protocol header"), .decided_at = 2},
    {"TLS ClientHello", BIN("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
     ERR("not a PROXY protocol header"), .decided_at = 1},
    {"SSH banner", "SSH-2.0-OpenSSH_9.2\r\n", ERR("not a PROXY protocol header"), .decided_at = 1},
    {"lowercase proxy", "proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", ERR("not a PROXY protocol header"),
     .decided_at = 1},
    {"PROXX", "PROXX TCP4\r\n", ERR("not a PROXY protocol header"), .decided_at = 5},
    {"CR then GET", "\r\nGET / HTTP/1.1\r\n", ERR("not a PROXY protocol header"), .decided_at = 3},
    {BIN("\0\0\0\0"), .name = "NUL", ERR("not a PROXY protocol header"), .decided_at = 1},
    {"leading SP", " PROXY UNKNOWN\r\n", ERR("not a PROXY protocol header"), .decided_at = 1},

    /* v1: protocol and separators. */
    {"PROXY without space", "PROXYTCP4 1.2.3.4 1.2.3.4 1 2\r\n", ERR("v1: bad separator"),
     .decided_at = 6},
    {"PROXY with HTAB", "PROXY\tTCP4 1.2.3.4 1.2.3.4 1 2\r\n", ERR("v1: bad separator")},
    {"two spaces after PROXY", "PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
     ERR("v1: unsupported protocol"), .decided_at = 7},
    {"tcp4 lowercase", "PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", ERR("v1: unsupported protocol"),
     .decided_at = 7},
    {"TCP5", "PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", ERR("v1: unsupported protocol"),
     .decided_at = 10},
    {"UDP4", "PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n", ERR("v1: unsupported protocol"),
     .decided_at = 8},
    {"TCP4 without space", "PROXY TCP4\r\n", ERR("v1: unsupported protocol"), .decided_at = 11},
    {"TCP4 with two spaces", "PROXY TCP4  1.2.3.4 1.2.3.4 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 12},
    {"two spaces between addresses", "PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n",
     ERR("v1: bad destination address"), .decided_at = 20},
    {"two spaces between ports", "PROXY TCP4 1.2.3.4 1.2.3.4 1  2\r\n",
     ERR("v1: bad destination port"), .decided_at = 30},
    {"space before CRLF", "PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", ERR("v1: bad destination port"),
     .decided_at = 31},
    {"missing destination port", "PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", ERR("v1: bad source port"),
     .decided_at = 29},
    {"extra field", "PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", ERR("v1: bad destination port")},
    {"LF only", "PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", ERR("v1: bad destination port"),
     .decided_at = 31},
    {"CR then not LF", "PROXY TCP4 1.2.3.4 1.2.3.4 1 2\rX", ERR("v1: CR without LF"),
     .decided_at = 32},
    {"CR CR LF", "PROXY TCP4 1.2.3.4 1.2.3.4 1 2\r\r\n", ERR("v1: CR without LF")},
    {"HTAB separator", "PROXY TCP4 1.2.3.4\t1.2.3.4 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 19},

    /* v1: IPv4 addresses. */
    {"leading zero in first part", "PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n",
     ERR("v1: bad source address"), .decided_at = 13},
    {"leading zero in last part", "PROXY TCP4 1.2.3.04 1.2.3.4 1 2\r\n",
     ERR("v1: bad source address"), .decided_at = 19},
    {"00 part", "PROXY TCP4 1.2.00.4 1.2.3.4 1 2\r\n", ERR("v1: bad source address")},
    {"part 256", "PROXY TCP4 1.2.3.4 1.2.256.4 1 2\r\n", ERR("v1: bad destination address"),
     .decided_at = 26},
    {"part 1000", "PROXY TCP4 1.2.3.1000 1.2.3.4 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 21},
    {"three parts", "PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 17},
    {"five parts", "PROXY TCP4 1.2.3.4.5 1.2.3.4 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 19},
    {"empty part", "PROXY TCP4 1..3.4 1.2.3.4 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 14},
    {"leading dot", "PROXY TCP4 .1.2.3 1.2.3.4 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 12},
    {"trailing dot", "PROXY TCP4 1.2.3. 1.2.3.4 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 18},
    {"hex part", "PROXY TCP4 0x1.2.3.4 1.2.3.4 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 13},
    {"short form 127.1", "PROXY TCP4 127.1 1.2.3.4 1 2\r\n", ERR("v1: bad source address")},
    {"IPv6 in TCP4", "PROXY TCP4 ::1 ::1 1 2\r\n", ERR("v1: bad source address"), .decided_at = 12},
    {"name in TCP4", "PROXY TCP4 localhost 1.2.3.4 1 2\r\n", ERR("v1: bad source address")},
    {"empty address", "PROXY TCP4 \r\n", ERR("v1: bad source address"), .decided_at = 12},

    /* v1: IPv6 addresses. */
    {"IPv4 in TCP6", "PROXY TCP6 1.2.3.4 ::1 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 13},
    {"single leading colon", "PROXY TCP6 :1 ::1 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 13},
    {"single trailing colon", "PROXY TCP6 1: ::1 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 14},
    {":::", "PROXY TCP6 ::: ::1 1 2\r\n", ERR("v1: bad source address"), .decided_at = 14},
    {"two ::", "PROXY TCP6 1::2::3 ::1 1 2\r\n", ERR("v1: bad source address"), .decided_at = 17},
    {"five hex digits", "PROXY TCP6 12345:: ::1 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 16},
    {"leading zeros past four digits", "PROXY TCP6 00001:: ::1 1 2\r\n",
     ERR("v1: bad source address")},
    {"nine groups", "PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 27},
    {"seven groups", "PROXY TCP6 1:2:3:4:5:6:7 ::1 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 25},
    {"eight groups and ::", "PROXY TCP6 1:2:3:4:5:6:7:8:: ::1 1 2\r\n",
     ERR("v1: bad source address"), .decided_at = 27},
    {":: and seven groups after a group", "PROXY TCP6 1::2:3:4:5:6:7:8 ::1 1 2\r\n",
     ERR("v1: bad source address"), .decided_at = 26},
    {"dotted tail after seven groups", "PROXY TCP6 1:2:3:4:5:6:7:1.2.3.4 ::1 1 2\r\n",
     ERR("v1: bad source address"), .decided_at = 27},
    {"dotted tail with :: and six groups", "PROXY TCP6 1:2:3:4:5::6:1.2.3.4 ::1 1 2\r\n",
     ERR("v1: bad source address")},
    {"dotted tail with leading zero", "PROXY TCP6 ::ffff:1.02.3.4 ::1 1 2\r\n",
     ERR("v1: bad source address")},
    {"dotted tail first part 01", "PROXY TCP6 ::ffff:01.2.3.4 ::1 1 2\r\n",
     ERR("v1: bad source address"), .decided_at = 21},
    {"dotted tail with hex", "PROXY TCP6 ::ffff:a.2.3.4 ::1 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 20},
    {"dotted tail short", "PROXY TCP6 ::ffff:1.2.3 ::1 1 2\r\n", ERR("v1: bad source address")},
    {"dotted tail then group", "PROXY TCP6 ::1.2.3.4:5 ::1 1 2\r\n", ERR("v1: bad source address")},
    {"zone id", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 19},
    {"brackets", "PROXY TCP6 [::1] ::1 1 2\r\n", ERR("v1: bad source address"), .decided_at = 12},
    {"g is not hex", "PROXY TCP6 fe8g::1 ::1 1 2\r\n", ERR("v1: bad source address"),
     .decided_at = 15},
    {"bad destination", "PROXY TCP6 ::1 ::1::1 1 2\r\n", ERR("v1: bad destination address")},
    {"TCP6 too long with dotted tails (116 bytes)",
     "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 "
     "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255 65535 65535\r\n",
     ERR("v1: line too long"), .decided_at = 106},

    /* v1: ports. */
    {"port 65536", "PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", ERR("v1: bad source port"),
     .decided_at = 32},
    {"port 99999", "PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n", ERR("v1: bad destination port")},
    {"port 100000", "PROXY TCP4 1.2.3.4 1.2.3.4 1 100000\r\n", ERR("v1: bad destination port")},
    {"port with leading zero", "PROXY TCP4 1.2.3.4 1.2.3.4 080 2\r\n", ERR("v1: bad source port"),
     .decided_at = 29},
    {"port 00", "PROXY TCP4 1.2.3.4 1.2.3.4 1 00\r\n", ERR("v1: bad destination port"),
     .decided_at = 31},
    {"port +1", "PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n", ERR("v1: bad source port"),
     .decided_at = 28},
    {"port -1", "PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n", ERR("v1: bad source port")},
    {"port hex", "PROXY TCP4 1.2.3.4 1.2.3.4 0x50 2\r\n", ERR("v1: bad source port")},
    {"empty source port", "PROXY TCP4 1.2.3.4 1.2.3.4  2\r\n", ERR("v1: bad source port"),
     .decided_at = 28},
    {"empty destination port", "PROXY TCP4 1.2.3.4 1.2.3.4 1 \r\n", ERR("v1: bad destination port"),
     .decided_at = 30},

    /* v2: the address families connectd reads. */
    {BIN(V2("\x21", "\x11", "\x00\x0c") IP4_BLOCK), .name = "v2 PROXY TCP4", OK2(PROXY_CMD_PROXY),
     ADDR(S4, D4)},
    {BIN(V2("\x21", "\x11", "\x00\x0c") IP4_BLOCK CLIENT),
     .name = "v2 PROXY TCP4 then the client's request", OK2(PROXY_CMD_PROXY), ADDR(S4, D4),
     .early = sizeof(CLIENT) - 1},
    {BIN(V2("\x21", "\x21", "\x00\x24") IP6_BLOCK), .name = "v2 PROXY TCP6", OK2(PROXY_CMD_PROXY),
     ADDR(S6, D6)},
    {BIN(V2("\x21", "\x21", "\x00\x24") IP6_BLOCK CLIENT),
     .name = "v2 PROXY TCP6 then the client's request", OK2(PROXY_CMD_PROXY), ADDR(S6, D6),
     .early = sizeof(CLIENT) - 1},
    {BIN(V2("\x21", "\x11", "\x00\x0c") "\x00\x00\x00\x00\xff\xff\xff\xff\x00\x00\xff\xff"),
     .name = "v2 PROXY TCP4 extremes", OK2(PROXY_CMD_PROXY),
     ADDR("0.0.0.0:0", "255.255.255.255:65535")},
    {BIN(V2("\x21", "\x11", "\x00\x11") IP4_BLOCK "\x04\x00\x02\x00\x00"),
     .name = "v2 PROXY TCP4 with a NOOP TLV", OK2(PROXY_CMD_PROXY), ADDR(S4, D4)},
    {BIN(V2("\x21", "\x11", "\x00\x0f") IP4_BLOCK "\x04\x00\x00"),
     .name = "v2 PROXY TCP4 with an empty TLV", OK2(PROXY_CMD_PROXY), ADDR(S4, D4)},
    {BIN(V2("\x21", "\x21", "\x00\x3a") IP6_BLOCK "\x01\x00\x02h2"
                                                  "\x02\x00\x0b"
                                                  "example.com"
                                                  "\x04\x00\x00"),
     .name = "v2 PROXY TCP6 with ALPN, AUTHORITY, NOOP", OK2(PROXY_CMD_PROXY), ADDR(S6, D6)},
    {BIN(V2("\x21", "\x11", "\x00\x0c") IP4_BLOCK "\x00"), .name = "v2 bytes after the header",
     OK2(PROXY_CMD_PROXY), ADDR(S4, D4), .early = 1},

    /* v2: LOCAL (health checks): the block is consumed, the family ignored. */
    {BIN(V2("\x20", "\x00", "\x00\x00")), .name = "v2 LOCAL (HAProxy health check)",
     OK2(PROXY_CMD_LOCAL)},
    {BIN(V2("\x20", "\x00", "\x00\x00") CLIENT), .name = "v2 LOCAL then the client's request",
     OK2(PROXY_CMD_LOCAL), .early = sizeof(CLIENT) - 1},
    {BIN(V2("\x20", "\x11", "\x00\x0c") IP4_BLOCK CLIENT), .name = "v2 LOCAL with addresses",
     OK2(PROXY_CMD_LOCAL), .early = sizeof(CLIENT) - 1},
    {BIN(V2("\x20", "\x12", "\x00\x0c") IP4_BLOCK), .name = "v2 LOCAL with UDP4",
     OK2(PROXY_CMD_LOCAL)},
    {BIN(V2("\x20", "\xff", "\x00\x03") "\xff\xff\xff"), .name = "v2 LOCAL with a junk family",
     OK2(PROXY_CMD_LOCAL)},
    {BIN(V2("\x20", "\x11", "\x00\x02") "\x00\x00"), .name = "v2 LOCAL with a short block",
     OK2(PROXY_CMD_LOCAL)},
    {BIN(V2("\x20", "\x00", "\x00\x04") "\x01\x00\x05\x00"),
     .name = "v2 LOCAL block is not walked as TLVs", OK2(PROXY_CMD_LOCAL)},

    /* v2: families accepted without addresses. */
    {BIN(V2("\x21", "\x00", "\x00\x00")), .name = "v2 PROXY UNSPEC", OK2(PROXY_CMD_PROXY)},
    {BIN(V2("\x21", "\x00", "\x00\x05") "\x01\x00\x09\xff\xff"),
     .name = "v2 PROXY UNSPEC block is skipped unread", OK2(PROXY_CMD_PROXY)},

    /* v2: incomplete. */
    {BIN("\r"), .name = "v2 CR", MORE},
    {BIN("\r\n\r\n\0"), .name = "v2 signature start", MORE},
    {BIN(SIG), .name = "v2 signature", MORE},
    {BIN(SIG "\x21"), .name = "v2 ver/cmd", MORE},
    {BIN(SIG "\x21\x11"), .name = "v2 family", MORE},
    {BIN(SIG "\x21\x11\x00"), .name = "v2 length high byte", MORE},
    {BIN(SIG "\x21\x11\x00\x0c"), .name = "v2 fixed header only", MORE},
    {BIN(V2("\x21", "\x11", "\x00\x0c") "\xc0\x00\x02\x01\xc6\x33\x64\x0a\xdc\x04\x01"),
     .name = "v2 one address byte short", MORE},
    {BIN(V2("\x21", "\x11", "\x00\x11") IP4_BLOCK "\x04\x00\x02\x00"),
     .name = "v2 one TLV byte short", MORE},
    {BIN(V2("\x20", "\x00", "\x00\x01")), .name = "v2 LOCAL one byte short", MORE},

    /* v2: errors. */
    {BIN("\r\n\r\n\x01"), .name = "v2 bad signature byte", ERR("not a PROXY protocol header"),
     .decided_at = 5},
    {BIN("\r\n\r\n\0\r\nQUIT\r"), .name = "v2 signature with CR for LF",
     ERR("not a PROXY protocol header"), .decided_at = 12},
    {BIN(SIG "\x11\x11\x00\x0c" IP4_BLOCK), .name = "v2 version 1", ERR("v2: unsupported version"),
     .decided_at = 13},
    {BIN(SIG "\x31\x11\x00\x0c" IP4_BLOCK), .name = "v2 version 3", ERR("v2: unsupported version"),
     .decided_at = 13},
    {BIN(SIG "\x01\x11\x00\x0c" IP4_BLOCK), .name = "v2 version 0", ERR("v2: unsupported version"),
     .decided_at = 13},
    {BIN(SIG "\x22\x11\x00\x0c" IP4_BLOCK), .name = "v2 command 2", ERR("v2: unsupported command"),
     .decided_at = 13},
    {BIN(SIG "\x2f\x11\x00\x0c" IP4_BLOCK), .name = "v2 command 15", ERR("v2: unsupported command"),
     .decided_at = 13},
    {BIN(V2("\x21", "\x12", "\x00\x0c") IP4_BLOCK), .name = "v2 PROXY UDP4",
     ERR("v2: datagram transport not supported"), .decided_at = 14},
    {BIN(V2("\x21", "\x22", "\x00\x24") IP6_BLOCK), .name = "v2 PROXY UDP6",
     ERR("v2: datagram transport not supported"), .decided_at = 14},
    {BIN(V2("\x21", "\x32", "\x00\x00")), .name = "v2 PROXY UNIX dgram",
     ERR("v2: datagram transport not supported"), .decided_at = 14},
    {BIN(V2("\x21", "\x41", "\x00\x0c") IP4_BLOCK), .name = "v2 PROXY family 4",
     ERR("v2: bad address family or transport"), .decided_at = 14},
    {BIN(V2("\x21", "\x13", "\x00\x0c") IP4_BLOCK), .name = "v2 PROXY transport 3",
     ERR("v2: bad address family or transport"), .decided_at = 14},
    {BIN(V2("\x21", "\x10", "\x00\x0c") IP4_BLOCK), .name = "v2 PROXY INET, UNSPEC transport",
     ERR("v2: bad address family or transport"), .decided_at = 14},
    {BIN(V2("\x21", "\x01", "\x00\x00")), .name = "v2 PROXY UNSPEC family, STREAM",
     ERR("v2: bad address family or transport"), .decided_at = 14},
    {BIN(V2("\x21", "\x11", "\x00\x0b") IP4_BLOCK), .name = "v2 TCP4 block of 11",
     ERR("v2: address block too short"), .decided_at = 16},
    {BIN(V2("\x21", "\x21", "\x00\x23") IP6_BLOCK), .name = "v2 TCP6 block of 35",
     ERR("v2: address block too short"), .decided_at = 16},
    {BIN(V2("\x21", "\x21", "\x00\x0c") IP4_BLOCK), .name = "v2 TCP6 with a TCP4 block",
     ERR("v2: address block too short"), .decided_at = 16},
    {BIN(V2("\x21", "\x31", "\x00\xd7")), .name = "v2 UNIX block of 215",
     ERR("v2: address block too short"), .decided_at = 16},
    {BIN(V2("\x21", "\x11", "\x03\x00")), .name = "v2 length 768 decided at byte 15",
     ERR("v2: header too long"), .decided_at = 15},
    {BIN(V2("\x21", "\x11", "\xff\xff")), .name = "v2 length 65535", ERR("v2: header too long"),
     .decided_at = 15},
    {BIN(V2("\x20", "\x00", "\x02\x09")), .name = "v2 LOCAL length 521", ERR("v2: header too long"),
     .decided_at = 16},
    {BIN(V2("\x21", "\x11", "\x00\x0d") IP4_BLOCK "\x04"), .name = "v2 one stray TLV byte",
     ERR("v2: truncated TLV"), .decided_at = 16},
    {BIN(V2("\x21", "\x11", "\x00\x0e") IP4_BLOCK "\x04\x00"), .name = "v2 two stray TLV bytes",
     ERR("v2: truncated TLV"), .decided_at = 16},
    {BIN(V2("\x21", "\x11", "\x00\x11") IP4_BLOCK "\x04\x00\x03\x00\x00"),
     .name = "v2 TLV one byte too long", ERR("v2: TLV longer than the header"), .decided_at = 31},
    {BIN(V2("\x21", "\x11", "\x00\x11") IP4_BLOCK "\x04\xff\xff\x00\x00"),
     .name = "v2 TLV of 65535", ERR("v2: TLV longer than the header"), .decided_at = 31},
    {BIN(V2("\x21", "\x11", "\x00\x13") IP4_BLOCK "\x04\x00\x01\x00\x04\x00\x01"),
     .name = "v2 second TLV too long", ERR("v2: TLV longer than the header"), .decided_at = 35},
    {BIN(V2("\x21", "\x11", "\x00\x11") IP4_BLOCK "\x04\x00\x00\x04\x00"),
     .name = "v2 stray bytes after a TLV", ERR("v2: truncated TLV"), .decided_at = 31},
    {BIN(V2("\x21", "\x11", "\x00\x11") IP4_BLOCK "\x04\x00\x03"),
     .name = "v2 bad TLV decided before the header is whole", ERR("v2: TLV longer than the header"),
     .decided_at = 31},
};

static void test_parse_case(void **state) {
    const struct parse_case *c = *state;
    size_t n = c->len != 0 ? c->len : strlen(c->in), decided_at;
    struct proxy_header h;
    enum proxy_parse r = parse_all_ways(c->in, n, &h, &decided_at);

    assert_int_equal(r, c->res);
    if (c->decided_at != 0)
        assert_int_equal(decided_at, c->decided_at);
    if (r == PROXY_ERROR) {
        assert_non_null(h.reason);
        if (c->reason != NULL)
            assert_string_equal(h.reason, c->reason);
    } else if (r == PROXY_DONE) {
        assert_null(h.reason);
        assert_int_equal(h.version, c->version);
        assert_int_equal(h.command, c->cmd);
        assert_int_equal(h.len, n - c->early);
        assert_int_equal(decided_at, h.len); /* not DONE before the last header byte */
        assert_int_equal(h.has_addr, c->src != NULL);
        if (c->src != NULL) {
            assert_addr(&h.src, c->src);
            assert_addr(&h.dst, c->dst);
        } else {
            assert_memory_equal(&h.src, &zero_ss, sizeof(zero_ss));
            assert_memory_equal(&h.dst, &zero_ss, sizeof(zero_ss));
        }
    } else {
        assert_null(h.reason);
        assert_int_equal(h.len, 0);
    }
}

/* ---- v1 limits ---------------------------------------------------------------------------- */

/* "PROXY UNKNOWN " padded with 'x' to a line of exactly total bytes, CRLF included. */
static size_t unknown_line(char *buf, size_t total) {
    static const char head[] = "PROXY UNKNOWN ";

    memcpy(buf, head, sizeof(head) - 1);
    memset(buf + sizeof(head) - 1, 'x', total - 2 - (sizeof(head) - 1));
    memcpy(buf + total - 2, "\r\n", 2);
    return total;
}

static void test_v1_line_limit(void **state) {
    char buf[256];
    struct proxy_header h;
    size_t n, decided_at;

    (void)state;
    for (size_t total = 16; total <= PROXY_V1_MAX; total++) {
        n = unknown_line(buf, total);
        assert_int_equal(parse_all_ways(buf, n, &h, &decided_at), PROXY_DONE);
        assert_int_equal(h.len, total);
        assert_int_equal(decided_at, total);
    }
    /* 108 bytes: refused when the 106th byte is not the CR. */
    n = unknown_line(buf, PROXY_V1_MAX + 1);
    assert_int_equal(parse_all_ways(buf, n, &h, &decided_at), PROXY_ERROR);
    assert_string_equal(h.reason, "v1: line too long");
    assert_int_equal(decided_at, PROXY_V1_MAX - 1);

    /* No CR at all: the same. */
    memset(buf + 14, 'x', sizeof(buf) - 14);
    assert_int_equal(parse_all_ways(buf, sizeof(buf), &h, &decided_at), PROXY_ERROR);
    assert_string_equal(h.reason, "v1: line too long");
    assert_int_equal(decided_at, PROXY_V1_MAX - 1);

    /* The CR as the 106th byte and something else than LF as the 107th. */
    n = unknown_line(buf, PROXY_V1_MAX);
    buf[n - 1] = 'x';
    assert_int_equal(parse_all_ways(buf, n, &h, &decided_at), PROXY_ERROR);
    assert_string_equal(h.reason, "v1: CR without LF");
    assert_int_equal(decided_at, PROXY_V1_MAX);
}

/* Every port 0-65535 reads back; each with a leading zero or past 65535 is refused. */
static void test_v1_every_port(void **state) {
    char line[80];
    struct proxy_header h;

    (void)state;
    for (unsigned p = 0; p <= 70000; p++) {
        int n = snprintf(line, sizeof(line), "PROXY TCP4 1.2.3.4 5.6.7.8 %u %u\r\n", p,
                         65535 - (p % 65536));
        enum proxy_parse r = parse_exact(line, (size_t)n, &h);

        if (p > 65535) {
            assert_int_equal(r, PROXY_ERROR);
            assert_string_equal(h.reason, "v1: bad source port");
            continue;
        }
        assert_int_equal(r, PROXY_DONE);
        assert_int_equal(ntohs(((const struct sockaddr_in *)&h.src)->sin_port), p);
        assert_int_equal(ntohs(((const struct sockaddr_in *)&h.dst)->sin_port), 65535 - p);
        if (p % 97 == 0) {
            n = snprintf(line, sizeof(line), "PROXY TCP4 1.2.3.4 5.6.7.8 1 0%u\r\n", p);
            assert_int_equal(parse_exact(line, (size_t)n, &h), PROXY_ERROR);
            assert_string_equal(h.reason, "v1: bad destination port");
        }
    }
}

/* ---- v1 addresses against inet_pton ------------------------------------------------------- */

/* proxy_parse's reading of text as a TCP4 (v6 false) or TCP6 source address: 1 and the address
 * bytes in out, or 0. */
static int parse_src(bool v6, const char *text, uint8_t out[16]) {
    char line[200];
    struct proxy_header h;
    int n = snprintf(line, sizeof(line), "PROXY %s %s %s 1 2\r\n", v6 ? "TCP6" : "TCP4", text,
                     v6 ? "::1" : "127.0.0.1");
    enum proxy_parse r;

    assert_true(n > 0 && (size_t)n < sizeof(line));
    r = parse_all_ways(line, (size_t)n, &h, NULL);
    if (r != PROXY_DONE) {
        if (r == PROXY_ERROR && strcmp(h.reason, "v1: line too long") != 0)
            assert_string_equal(h.reason, "v1: bad source address");
        return r == PROXY_ERROR && strcmp(h.reason, "v1: line too long") == 0 ? -1 : 0;
    }
    assert_int_equal(h.src.ss_family, v6 ? AF_INET6 : AF_INET);
    if (v6)
        memcpy(out, &((const struct sockaddr_in6 *)&h.src)->sin6_addr, 16);
    else
        memcpy(out, &((const struct sockaddr_in *)&h.src)->sin_addr, 4);
    return 1;
}

static void check_against_pton(bool v6, const char *text) {
    uint8_t mine[16], ref[16];
    int want = inet_pton(v6 ? AF_INET6 : AF_INET, text, ref);
    int got = parse_src(v6, text, mine);

    if (got == -1) /* the line did not fit in 107 bytes: only long text gets here */
        return;
    if (got != want)
        fail_msg("%s \"%s\": proxy_parse %d, inet_pton %d", v6 ? "TCP6" : "TCP4", text, got, want);
    if (got == 1)
        assert_memory_equal(mine, ref, v6 ? 16 : 4);
}

static const char *const v6_texts[] = {
    "::",
    "::1",
    "1::",
    "1::1",
    "0:0:0:0:0:0:0:0",
    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    "FFFF:abcd:ABCD:0:0:0:0:1",
    "2001:db8::",
    "2001:db8:0:0:1::1",
    "1:2:3:4:5:6:7::",
    "::2:3:4:5:6:7:8",
    "1:2:3::6:7:8",
    "::ffff:192.0.2.1",
    "::192.0.2.1",
    "64:ff9b::192.0.2.1",
    "1:2:3:4:5:6:1.2.3.4",
    "1:2:3:4:5::1.2.3.4",
    "::0.0.0.0",
    "::255.255.255.255",
    "0001:0002:0003:0004:0005:0006:0007:0008",
    "::01.2.3.4",
    "::1.2.3.04",
    "::256.1.1.1",
    "::1.2.3",
    "::1.2.3.4.5",
    "::1..2.3",
    "::1.2.3.4:1",
    "::1.2.3.",
    "1:2:3:4:5:6:7:8:9",
    "1:2:3:4:5:6:7",
    "1:2:3:4:5:6:7:8::",
    "::1:2:3:4:5:6:7:8",
    "1::2:3:4:5:6:7:8",
    "1:2:3:4:5:6::1.2.3.4",
    "1:2:3:4:5:6:7:1.2.3.4",
    "1:2:3:4:5:6:1.2.3.4:8",
    ":1",
    "1:",
    ":",
    ":::",
    "::1::",
    "1::2::3",
    "12345::",
    "g::",
    "1.2.3.4",
    "::a.2.3.4",
    "::1a.2.3.4",
    "::1234.2.3.4",
    "::ffff:1.2.3.4",
    "0::0",
    ":::1",
    "1:::",
    "1:2:3:4:5:6:7:8",
    "1:2:3:4::5:6:7",
    "::0:0:0:0:0:0:0",
    "0:0:0:0:0:0:0::",
};

static void test_v6_table_against_inet_pton(void **state) {
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(v6_texts); i++)
        check_against_pton(true, v6_texts[i]);
}

/* xorshift32, for generated address text. */
static uint32_t next_rand(uint32_t *s) {
    uint32_t x = *s;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

/* Random strings over the bytes addresses are made of: most are invalid, many valid; both
 * scanners must agree with inet_pton on every one, and with its bytes on the valid ones. */
static void test_generated_against_inet_pton(void **state) {
    static const char v6_alphabet[] = "0123456789abcdefABCDEF:::::.....";
    static const char v4_alphabet[] = "0123456789....";
    uint32_t seed = 0x12345678u;
    unsigned valid6 = 0, valid4 = 0;

    (void)state;
    for (int i = 0; i < 40000; i++) {
        char text[48];
        uint8_t b[16];
        size_t n = 1 + next_rand(&seed) % 45;

        for (size_t k = 0; k < n; k++)
            text[k] = v6_alphabet[next_rand(&seed) % (sizeof(v6_alphabet) - 1)];
        text[n] = '\0';
        /* Bias towards the valid shapes: sometimes a "::" or a dotted tail. */
        if (i % 3 == 0 && n > 4)
            memcpy(text + next_rand(&seed) % (n - 2), "::", 2);
        check_against_pton(true, text);
        valid6 += inet_pton(AF_INET6, text, b) == 1;

        n = 7 + next_rand(&seed) % 9;
        for (size_t k = 0; k < n; k++)
            text[k] = v4_alphabet[next_rand(&seed) % (sizeof(v4_alphabet) - 1)];
        text[n] = '\0';
        check_against_pton(false, text);
        valid4 += inet_pton(AF_INET, text, b) == 1;
    }
    /* The generator does reach valid addresses, so both outcomes were compared. */
    assert_true(valid6 > 100);
    assert_true(valid4 > 100);
}

/* Every valid IPv6 text inet_ntop writes for some shapes of address reads back. */
static void test_v6_ntop_round_trip(void **state) {
    uint32_t seed = 0xdeadbeefu;

    (void)state;
    for (int i = 0; i < 20000; i++) {
        uint8_t a[16], back[16];
        char text[INET6_ADDRSTRLEN];

        for (int k = 0; k < 16; k++) {
            uint32_t r = next_rand(&seed);

            /* Runs of zeros, so that "::" appears in all positions. */
            a[k] = (r >> 8) % 3 == 0 ? 0 : (uint8_t)r;
        }
        if (i % 5 == 0) { /* IPv4-mapped: inet_ntop writes ::ffff:a.b.c.d */
            memset(a, 0, 10);
            a[10] = a[11] = 0xff;
        }
        assert_non_null(inet_ntop(AF_INET6, a, text, sizeof(text)));
        assert_int_equal(parse_src(true, text, back), 1);
        assert_memory_equal(a, back, 16);
    }
}

/* ---- v2 ----------------------------------------------------------------------------------- */

static const unsigned char sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                      0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

/* A v2 header: signature, ver_cmd, fam, big-endian length of body, body. */
static size_t v2_build(unsigned char *out, uint8_t ver_cmd, uint8_t fam, const void *body,
                       size_t blen) {
    memcpy(out, sig, 12);
    out[12] = ver_cmd;
    out[13] = fam;
    out[14] = (unsigned char)(blen >> 8);
    out[15] = (unsigned char)blen;
    if (blen > 0)
        memcpy(out + 16, body, blen);
    return 16 + blen;
}

/* Body lengths around PROXY_HEADER_MAX, for each command and family that takes a body. */
static void test_v2_length_limit(void **state) {
    static const uint8_t fams[] = {0x00, 0x11, 0x21, 0x31};
    unsigned char buf[16 + 600], body[600];
    struct proxy_header h;
    size_t n, decided_at;

    (void)state;
    memset(body, 0, sizeof(body));
    /* A body of NOOP TLVs after the addresses: 0x04 0x00 0x00, or one NOOP covering the rest. */
    for (size_t f = 0; f < ARRAY_LEN(fams); f++) {
        size_t need = fams[f] == 0x11 ? 12 : fams[f] == 0x21 ? 36 : fams[f] == 0x31 ? 216 : 0;

        for (size_t blen = 500; blen <= 522; blen++) {
            size_t rest = blen - need;

            memset(body, 0, sizeof(body));
            body[need] = 0x04;
            body[need + 1] = (uint8_t)((rest - 3) >> 8);
            body[need + 2] = (uint8_t)(rest - 3);
            for (int local = 0; local < 2; local++) {
                n = v2_build(buf, local ? 0x20 : 0x21, fams[f], body, blen);
                if (blen <= PROXY_HEADER_MAX - 16) {
                    assert_int_equal(parse_all_ways(buf, n, &h, &decided_at), PROXY_DONE);
                    assert_int_equal(h.len, n);
                    assert_int_equal(h.command, local ? PROXY_CMD_LOCAL : PROXY_CMD_PROXY);
                    assert_int_equal(h.has_addr, !local && (fams[f] == 0x11 || fams[f] == 0x21));
                } else {
                    assert_int_equal(parse_all_ways(buf, n, &h, &decided_at), PROXY_ERROR);
                    assert_string_equal(h.reason, "v2: header too long");
                    assert_int_equal(decided_at, 16);
                }
            }
        }
    }
    /* The longest header accepted is exactly PROXY_HEADER_MAX bytes. */
    n = v2_build(buf, 0x20, 0x00, body, PROXY_HEADER_MAX - 16);
    assert_int_equal(n, PROXY_HEADER_MAX);
    assert_int_equal(parse_exact(buf, n, &h), PROXY_DONE);
    assert_int_equal(h.len, PROXY_HEADER_MAX);
    assert_int_equal(parse_exact(buf, n - 1, &h), PROXY_MORE);
}

/* Each signature byte changed: refused at that byte. */
static void test_v2_signature(void **state) {
    unsigned char buf[64], body[12] = {0};
    struct proxy_header h;
    size_t n, decided_at;

    (void)state;
    for (size_t i = 0; i < 12; i++) {
        for (unsigned x = 1; x < 256; x *= 2) {
            n = v2_build(buf, 0x21, 0x11, body, sizeof(body));
            buf[i] ^= (unsigned char)x;
            assert_int_equal(parse_all_ways(buf, n, &h, &decided_at), PROXY_ERROR);
            assert_string_equal(h.reason, "not a PROXY protocol header");
            assert_int_equal(decided_at, i + 1);
        }
    }
}

/* All 256 version/command bytes: only 0x20 (LOCAL) and 0x21 (PROXY). */
static void test_v2_every_ver_cmd(void **state) {
    unsigned char buf[64], body[12] = {0};
    struct proxy_header h;
    size_t n, decided_at;

    (void)state;
    for (unsigned vc = 0; vc < 256; vc++) {
        n = v2_build(buf, (uint8_t)vc, 0x11, body, sizeof(body));
        if (vc == 0x20 || vc == 0x21) {
            assert_int_equal(parse_all_ways(buf, n, &h, NULL), PROXY_DONE);
            assert_int_equal(h.command, vc == 0x20 ? PROXY_CMD_LOCAL : PROXY_CMD_PROXY);
            continue;
        }
        assert_int_equal(parse_all_ways(buf, n, &h, &decided_at), PROXY_ERROR);
        assert_string_equal(h.reason,
                            vc >> 4 != 2 ? "v2: unsupported version" : "v2: unsupported command");
        assert_int_equal(decided_at, 13);
    }
}

/* All 256 family/transport bytes, with a body long enough for any: PROXY takes 0x00, 0x11, 0x21
 * and 0x31 only, LOCAL takes all. */
static void test_v2_every_family(void **state) {
    unsigned char buf[16 + 216], body[216];
    struct proxy_header h;
    size_t n, decided_at;

    (void)state;
    memset(body, 0xab, sizeof(body));
    for (unsigned fam = 0; fam < 256; fam++) {
        /* 216 bytes: a UNIX block; for INET/INET6, addresses then one TLV filling the rest. */
        if (fam == 0x11 || fam == 0x21) {
            size_t need = fam == 0x11 ? 12 : 36;

            body[need] = 0xea;
            body[need + 1] = 0;
            body[need + 2] = (uint8_t)(216 - need - 3);
        }
        n = v2_build(buf, 0x20, (uint8_t)fam, body, sizeof(body));
        assert_int_equal(parse_all_ways(buf, n, &h, NULL), PROXY_DONE);
        assert_false(h.has_addr);

        n = v2_build(buf, 0x21, (uint8_t)fam, body, sizeof(body));
        if (fam == 0x00 || fam == 0x11 || fam == 0x21 || fam == 0x31) {
            assert_int_equal(parse_all_ways(buf, n, &h, NULL), PROXY_DONE);
            assert_int_equal(h.has_addr, fam == 0x11 || fam == 0x21);
            assert_int_equal(h.len, n);
        } else {
            assert_int_equal(parse_all_ways(buf, n, &h, &decided_at), PROXY_ERROR);
            assert_int_equal(decided_at, 14);
            if (fam == 0x12 || fam == 0x22 || fam == 0x32)
                assert_string_equal(h.reason, "v2: datagram transport not supported");
            else
                assert_string_equal(h.reason, "v2: bad address family or transport");
        }
        memset(body, 0xab, sizeof(body));
    }
}

/* Minimum block lengths: one byte less is refused at the length, the minimum is accepted. */
static void test_v2_min_block(void **state) {
    static const struct {
        uint8_t fam;
        size_t need;
    } cases[] = {{0x11, 12}, {0x21, 36}, {0x31, 216}, {0x00, 0}};
    unsigned char buf[16 + 216], body[216];
    struct proxy_header h;
    size_t n, decided_at;

    (void)state;
    memset(body, 0x5a, sizeof(body));
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        n = v2_build(buf, 0x21, cases[i].fam, body, cases[i].need);
        assert_int_equal(parse_all_ways(buf, n, &h, NULL), PROXY_DONE);
        assert_int_equal(h.len, 16 + cases[i].need);
        if (cases[i].need == 0)
            continue;
        n = v2_build(buf, 0x21, cases[i].fam, body, cases[i].need - 1);
        assert_int_equal(parse_all_ways(buf, n, &h, &decided_at), PROXY_ERROR);
        assert_string_equal(h.reason, "v2: address block too short");
        assert_int_equal(decided_at, 16);
        /* LOCAL takes it: its block is ignored. */
        n = v2_build(buf, 0x20, cases[i].fam, body, cases[i].need - 1);
        assert_int_equal(parse_all_ways(buf, n, &h, NULL), PROXY_DONE);
    }
}

/* ---- headers as HAProxy and AWS NLB send them --------------------------------------------- */

/* An IPv4 or IPv6 sockaddr from text and port. */
static struct sockaddr_storage sa_of(const char *text, unsigned port) {
    struct sockaddr_storage ss;

    memset(&ss, 0, sizeof(ss));
    if (strchr(text, ':') != NULL) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;

        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        assert_int_equal(inet_pton(AF_INET6, text, &sin6->sin6_addr), 1);
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;

        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        assert_int_equal(inet_pton(AF_INET, text, &sin->sin_addr), 1);
    }
    return ss;
}

/* ss as IPv6, IPv4 addresses mapped (::ffff:a.b.c.d), as HAProxy does with mixed families. */
static struct sockaddr_in6 as_v6(const struct sockaddr_storage *ss) {
    struct sockaddr_in6 out;

    if (ss->ss_family == AF_INET6) {
        memcpy(&out, ss, sizeof(out));
        return out;
    }
    memset(&out, 0, sizeof(out));
    out.sin6_family = AF_INET6;
    out.sin6_port = ((const struct sockaddr_in *)ss)->sin_port;
    out.sin6_addr.s6_addr[10] = 0xff;
    out.sin6_addr.s6_addr[11] = 0xff;
    memcpy(&out.sin6_addr.s6_addr[12], &((const struct sockaddr_in *)ss)->sin_addr, 4);
    return out;
}

/* Like HAProxy's make_proxy_line_v1(): TCP4 when both are IPv4, TCP6 (IPv4 mapped) when the
 * families are IP but differ or are IPv6, inet_ntop text, "%u" ports. */
static size_t haproxy_v1(char *out, size_t cap, const struct sockaddr_storage *src,
                         const struct sockaddr_storage *dst) {
    char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
    int n;

    if (src->ss_family == AF_INET && dst->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)src, *b = (const void *)dst;

        assert_non_null(inet_ntop(AF_INET, &a->sin_addr, s, sizeof(s)));
        assert_non_null(inet_ntop(AF_INET, &b->sin_addr, d, sizeof(d)));
        n = snprintf(out, cap, "PROXY TCP4 %s %s %u %u\r\n", s, d, (unsigned)ntohs(a->sin_port),
                     (unsigned)ntohs(b->sin_port));
    } else {
        struct sockaddr_in6 a = as_v6(src), b = as_v6(dst);

        assert_non_null(inet_ntop(AF_INET6, &a.sin6_addr, s, sizeof(s)));
        assert_non_null(inet_ntop(AF_INET6, &b.sin6_addr, d, sizeof(d)));
        n = snprintf(out, cap, "PROXY TCP6 %s %s %u %u\r\n", s, d, (unsigned)ntohs(a.sin6_port),
                     (unsigned)ntohs(b.sin6_port));
    }
    assert_true(n > 0 && (size_t)n < cap);
    return (size_t)n;
}

static size_t put_tlv(unsigned char *out, uint8_t type, const void *value, size_t vlen) {
    out[0] = type;
    out[1] = (unsigned char)(vlen >> 8);
    out[2] = (unsigned char)vlen;
    if (vlen > 0)
        memcpy(out + 3, value, vlen);
    return 3 + vlen;
}

/* Like HAProxy's make_proxy_line_v2() with proxy-v2-options: 0x21, the family (IPv4 mapped to
 * IPv6 when the families differ), the address block, then the TLVs; tlvs selects them. */
enum {
    T_ALPN = 1,
    T_AUTHORITY = 2,
    T_UNIQUE_ID = 4,
    T_SSL = 8,
    T_NETNS = 16,
    T_CRC32C = 32,
    T_AWS = 64
};

static size_t haproxy_v2(unsigned char *out, const struct sockaddr_storage *src,
                         const struct sockaddr_storage *dst, unsigned tlvs) {
    unsigned char body[512];
    size_t blen;
    uint8_t fam;

    if (src->ss_family == AF_INET && dst->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)src, *b = (const void *)dst;

        fam = 0x11;
        memcpy(body, &a->sin_addr, 4);
        memcpy(body + 4, &b->sin_addr, 4);
        memcpy(body + 8, &a->sin_port, 2);
        memcpy(body + 10, &b->sin_port, 2);
        blen = 12;
    } else {
        struct sockaddr_in6 a = as_v6(src), b = as_v6(dst);

        fam = 0x21;
        memcpy(body, &a.sin6_addr, 16);
        memcpy(body + 16, &b.sin6_addr, 16);
        memcpy(body + 32, &a.sin6_port, 2);
        memcpy(body + 34, &b.sin6_port, 2);
        blen = 36;
    }
    if (tlvs & T_ALPN)
        blen += put_tlv(body + blen, 0x01, "h2", 2);
    if (tlvs & T_AUTHORITY)
        blen += put_tlv(body + blen, 0x02, "proxy.example.com", 17);
    if (tlvs & T_UNIQUE_ID)
        blen += put_tlv(body + blen, 0x05, "4F2A1B3C:A1B2_0A000001:01BB_61F0E2D3_0001:7A3B", 46);
    if (tlvs & T_SSL) {
        /* client PP2_CLIENT_SSL|CERT_CONN, verify 0, sub-TLVs version, CN, cipher, algs. */
        unsigned char ssl[128];
        size_t sl = 5;

        memcpy(ssl, "\x03\x00\x00\x00\x00", 5);
        sl += put_tlv(ssl + sl, 0x21, "TLSv1.3", 7);
        sl += put_tlv(ssl + sl, 0x22, "client.example.com", 18);
        sl += put_tlv(ssl + sl, 0x23, "TLS_AES_256_GCM_SHA384", 22);
        sl += put_tlv(ssl + sl, 0x24, "RSA-SHA256", 10);
        sl += put_tlv(ssl + sl, 0x25, "RSA2048", 7);
        blen += put_tlv(body + blen, 0x20, ssl, sl);
    }
    if (tlvs & T_NETNS)
        blen += put_tlv(body + blen, 0x30, "blue", 4);
    if (tlvs & T_AWS) /* AWS NLB: PP2_TYPE_AWS, subtype PP2_SUBTYPE_AWS_VPCE_ID, the endpoint */
        blen += put_tlv(body + blen, 0xea, "\x01vpce-0123456789abcdef0", 23);
    if (tlvs & T_CRC32C) /* not verified: any value passes */
        blen += put_tlv(body + blen, 0x03, "\x12\x34\x56\x78", 4);
    return v2_build(out, 0x21, fam, body, blen);
}

static void assert_same_sa(const struct sockaddr_storage *got,
                           const struct sockaddr_storage *want) {
    char g[80], w[80];

    format_sa(got, g, sizeof(g));
    format_sa(want, w, sizeof(w));
    assert_string_equal(g, w);
}

static void test_haproxy_headers(void **state) {
    static const struct {
        const char *src, *dst;
        unsigned sport, dport;
    } pairs[] = {
        {"192.0.2.1", "198.51.100.10", 56324, 3128},
        {"10.0.0.1", "10.0.0.2", 0, 65535},
        {"255.255.255.255", "0.0.0.0", 65535, 0},
        {"2001:db8::1", "2001:db8::2", 50000, 443},
        {"::1", "::1", 1, 1},
        {"fe80::1:2:3:4", "2001:db8:0:0:1:0:0:1", 40000, 8080},
        {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::", 65535, 65535},
        {"192.0.2.1", "2001:db8::2", 56324, 443}, /* mixed: TCP6 with a mapped source */
        {"2001:db8::1", "198.51.100.10", 56324, 443},
    };
    static const char client[] =
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    static const unsigned tlv_sets[] = {0,
                                        T_ALPN | T_AUTHORITY,
                                        T_UNIQUE_ID,
                                        T_SSL,
                                        T_NETNS | T_CRC32C,
                                        T_AWS,
                                        T_ALPN | T_AUTHORITY | T_UNIQUE_ID | T_SSL | T_NETNS |
                                            T_CRC32C | T_AWS};
    unsigned char buf[1024];
    struct proxy_header h;
    size_t hl, decided_at;

    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(pairs); i++) {
        struct sockaddr_storage src = sa_of(pairs[i].src, pairs[i].sport);
        struct sockaddr_storage dst = sa_of(pairs[i].dst, pairs[i].dport);
        bool both4 = src.ss_family == AF_INET && dst.ss_family == AF_INET;
        struct sockaddr_storage want_src = src, want_dst = dst;

        if (!both4) { /* HAProxy maps the IPv4 side into IPv6 */
            struct sockaddr_in6 a = as_v6(&src), b = as_v6(&dst);

            memset(&want_src, 0, sizeof(want_src));
            memset(&want_dst, 0, sizeof(want_dst));
            memcpy(&want_src, &a, sizeof(a));
            memcpy(&want_dst, &b, sizeof(b));
        }

        hl = haproxy_v1((char *)buf, sizeof(buf), &src, &dst);
        memcpy(buf + hl, client, sizeof(client) - 1);
        assert_int_equal(parse_all_ways(buf, hl + sizeof(client) - 1, &h, &decided_at), PROXY_DONE);
        assert_int_equal(h.version, 1);
        assert_int_equal(h.len, hl);
        assert_int_equal(decided_at, hl);
        assert_true(h.has_addr);
        assert_same_sa(&h.src, &want_src);
        assert_same_sa(&h.dst, &want_dst);
        assert_memory_equal(buf + h.len, "CONNECT ", 8);

        for (size_t t = 0; t < ARRAY_LEN(tlv_sets); t++) {
            hl = haproxy_v2(buf, &src, &dst, tlv_sets[t]);
            memcpy(buf + hl, client, sizeof(client) - 1);
            assert_int_equal(parse_all_ways(buf, hl + sizeof(client) - 1, &h, &decided_at),
                             PROXY_DONE);
            assert_int_equal(h.version, 2);
            assert_int_equal(h.command, PROXY_CMD_PROXY);
            assert_int_equal(h.len, hl);
            assert_int_equal(decided_at, hl);
            assert_true(h.has_addr);
            assert_same_sa(&h.src, &want_src);
            assert_same_sa(&h.dst, &want_dst);
            assert_memory_equal(buf + h.len, "CONNECT ", 8);
        }
    }
}

/* HAProxy's health check with send-proxy-v2: LOCAL, UNSPEC, no body; and an AWS NLB health
 * check, which is a LOCAL header too; then the check's own bytes. */
static void test_health_checks(void **state) {
    static const char check[] = "OPTIONS / HTTP/1.0\r\n\r\n";
    unsigned char buf[256];
    struct proxy_header h;
    size_t hl;

    (void)state;
    hl = v2_build(buf, 0x20, 0x00, NULL, 0);
    memcpy(buf + hl, check, sizeof(check) - 1);
    assert_int_equal(parse_all_ways(buf, hl + sizeof(check) - 1, &h, NULL), PROXY_DONE);
    assert_int_equal(h.command, PROXY_CMD_LOCAL);
    assert_false(h.has_addr);
    assert_int_equal(h.len, 16);

    /* LOCAL with a TLV-only body, as a sender adding a CRC32C TLV to a LOCAL header would. */
    hl = v2_build(buf, 0x20, 0x00, "\x03\x00\x04\x01\x02\x03\x04", 7);
    memcpy(buf + hl, check, sizeof(check) - 1);
    assert_int_equal(parse_all_ways(buf, hl + sizeof(check) - 1, &h, NULL), PROXY_DONE);
    assert_int_equal(h.command, PROXY_CMD_LOCAL);
    assert_int_equal(h.len, 23);
}

/* ---- misc --------------------------------------------------------------------------------- */

static void test_reparse_resets(void **state) {
    static const char good[] = "PROXY TCP4 192.0.2.1 198.51.100.10 56324 443\r\n";
    static const char bad[] = "PROXY TCP4 192.0.2.01";
    struct proxy_header h;

    (void)state;
    assert_int_equal(proxy_parse((const unsigned char *)good, sizeof(good) - 1, &h), PROXY_DONE);
    assert_true(h.has_addr);
    assert_int_equal(proxy_parse((const unsigned char *)bad, sizeof(bad) - 1, &h), PROXY_ERROR);
    assert_false(h.has_addr);
    assert_int_equal(h.len, 0);
    assert_int_equal(h.version, 0);
    assert_memory_equal(&h.src, &zero_ss, sizeof(zero_ss));
    assert_int_equal(proxy_parse((const unsigned char *)good, 10, &h), PROXY_MORE);
    assert_null(h.reason);
    assert_int_equal(proxy_parse((const unsigned char *)"", 0, &h), PROXY_MORE);
    assert_null(h.reason);
}

/* ---- main --------------------------------------------------------------------------------- */

static const struct CMUnitTest fixed_tests[] = {
    cmocka_unit_test(test_v1_line_limit),
    cmocka_unit_test(test_v1_every_port),
    cmocka_unit_test(test_v6_table_against_inet_pton),
    cmocka_unit_test(test_generated_against_inet_pton),
    cmocka_unit_test(test_v6_ntop_round_trip),
    cmocka_unit_test(test_v2_length_limit),
    cmocka_unit_test(test_v2_signature),
    cmocka_unit_test(test_v2_every_ver_cmd),
    cmocka_unit_test(test_v2_every_family),
    cmocka_unit_test(test_v2_min_block),
    cmocka_unit_test(test_haproxy_headers),
    cmocka_unit_test(test_health_checks),
    cmocka_unit_test(test_reparse_resets),
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
