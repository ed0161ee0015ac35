/* Unit tests for src/addr.c: parsing, CIDR matching, reserved classes, formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "addr.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* An address from text; the test fails when it does not parse. */
static struct sockaddr_storage ip(const char *s, uint16_t port) {
    struct sockaddr_storage ss;

    if (addr_parse_ip(s, port, &ss, NULL) != 0)
        fail_msg("test setup: '%s' is not an IP address", s);
    return ss;
}

static const struct sockaddr *sa(const struct sockaddr_storage *ss) {
    return (const struct sockaddr *)ss;
}

static void assert_contains(const char *hay, const char *needle, const char *input) {
    if (!strstr(hay, needle))
        fail_msg("input '%s': expected '%s' in message '%s'", input, needle, hay);
}

static void test_hostport_good(void **state) {
    static const struct {
        const char *in;
        int family;
        const char *out; /* addr_format with port */
    } cases[] = {
        {"127.0.0.1:3128", AF_INET, "127.0.0.1:3128"},
        {"0.0.0.0:1", AF_INET, "0.0.0.0:1"},
        {"255.255.255.255:65535", AF_INET, "255.255.255.255:65535"},
        {"[::1]:3128", AF_INET6, "[::1]:3128"},
        {"[::]:80", AF_INET6, "[::]:80"},
        {"[2001:DB8:0::1]:443", AF_INET6, "[2001:db8::1]:443"},
        {"[::ffff:10.0.0.1]:8080", AF_INET6, "10.0.0.1:8080"},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct sockaddr_storage ss;
        socklen_t len = 0;
        char err[128] = "", out[ADDR_TEXT_MAX];

        if (addr_parse_hostport(cases[i].in, &ss, &len, err, sizeof err) != 0)
            fail_msg("'%s' rejected: %s", cases[i].in, err);
        assert_int_equal(ss.ss_family, cases[i].family);
        assert_int_equal(len, cases[i].family == AF_INET ? sizeof(struct sockaddr_in)
                                                         : sizeof(struct sockaddr_in6));
        addr_format(sa(&ss), true, out, sizeof out);
        assert_string_equal(out, cases[i].out);
    }
}

static void test_hostport_bad(void **state) {
    static const struct {
        const char *in;
        const char *msg; /* expected in the error */
    } cases[] = {
        {"", "empty"},
        {"127.0.0.1", "missing port"},
        {"127.0.0.1:", "missing port"},
        {"127.0.0.1:0", "bad port"},
        {"127.0.0.1:65536", "bad port"},
        {"127.0.0.1:99999999999", "bad port"},
        {"127.0.0.1:-1", "bad port"},
        {"127.0.0.1:+80", "bad port"},
        {"127.0.0.1:80x", "bad port"},
        {"127.0.0.1: 80", "whitespace"},
        {" 127.0.0.1:80", "whitespace"},
        {"localhost:3128", "not an IPv4 address"},
        {"1.2.3:80", "not an IPv4 address"},
        {"01.2.3.4:80", "not an IPv4 address"},
        {"256.1.1.1:80", "not an IPv4 address"},
        {":3128", "missing address"},
        {"::1:3128", "brackets"},
        {"[::1]", "missing port"},
        {"[::1]:", "missing port"},
        {"[::1]3128", "unexpected"},
        {"[::1:3128", "missing ']'"},
        {"[fe80::1%eth0]:3128", "zone"},
        {"[1.2.3.4]:80", "not an IPv6 address"},
        {"[]:80", "not an IPv6 address"},
        {"[::1]:0", "bad port"},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct sockaddr_storage ss;
        socklen_t len;
        char err[128] = "";

        if (addr_parse_hostport(cases[i].in, &ss, &len, err, sizeof err) == 0)
            fail_msg("'%s' accepted", cases[i].in);
        assert_contains(err, cases[i].msg, cases[i].in);
    }
    /* A NULL error buffer is allowed. */
    {
        struct sockaddr_storage ss;

        assert_int_equal(addr_parse_hostport("nope", &ss, NULL, NULL, 0), -1);
    }
}

static void test_parse_ip(void **state) {
    static const char *const good[] = {
        "0.0.0.0", "1.2.3.4",        "255.255.255.255",     "10.0.0.1", "::", "::1",
        "fe80::1", "::ffff:1.2.3.4", "2001:db8:0:0:0:0:0:1"};
    static const char *const bad[] = {
        "",         "1.2.3",     "1.2.3.4.5", "01.2.3.4", "1.2.3.04",          "256.0.0.0",
        "1.2.3.4 ", " 1.2.3.4",  "0x1.2.3.4", "1..2.3",   "1.2.3.-4",          "1234.1.1.1",
        "1.2.3.4.", "fe80::1%1", "[::1]",     ":::",      "1:2:3:4:5:6:7:8:9", "example.com",
        "0",        "4294967295"};
    struct sockaddr_storage ss;
    socklen_t len = 0;

    (void)state;
    for (size_t i = 0; i < N(good); i++)
        if (addr_parse_ip(good[i], 80, &ss, &len) != 0)
            fail_msg("'%s' rejected", good[i]);
    for (size_t i = 0; i < N(bad); i++)
        if (addr_parse_ip(bad[i], 80, &ss, &len) == 0)
            fail_msg("'%s' accepted", bad[i]);

    assert_int_equal(addr_parse_ip("192.0.2.1", 8443, &ss, &len), 0);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(len, sizeof(struct sockaddr_in));
    assert_int_equal(addr_port(sa(&ss)), 8443);
    assert_int_equal(addr_parse_ip("2001:db8::1", 53, &ss, &len), 0);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(len, sizeof(struct sockaddr_in6));
    assert_int_equal(addr_port(sa(&ss)), 53);
}

static void test_cidr_good(void **state) {
    static const struct {
        const char *in;
        int family;
        unsigned prefix;
        const char *net; /* network address as text */
    } cases[] = {
        {"10.0.0.0/8", AF_INET, 8, "10.0.0.0"},
        {"0.0.0.0/0", AF_INET, 0, "0.0.0.0"},
        {"192.168.1.128/25", AF_INET, 25, "192.168.1.128"},
        {"1.2.3.4", AF_INET, 32, "1.2.3.4"},
        {"1.2.3.4/32", AF_INET, 32, "1.2.3.4"},
        {"::/0", AF_INET6, 0, "::"},
        {"::1", AF_INET6, 128, "::1"},
        {"fe80::/10", AF_INET6, 10, "fe80::"},
        {"2001:db8::/32", AF_INET6, 32, "2001:db8::"},
        {"2001:db8:8000::/33", AF_INET6, 33, "2001:db8:8000::"},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct cidr c;
        char err[128] = "", text[INET6_ADDRSTRLEN];

        if (cidr_parse(cases[i].in, &c, err, sizeof err) != 0)
            fail_msg("'%s' rejected: %s", cases[i].in, err);
        assert_int_equal(c.family, cases[i].family);
        assert_int_equal(c.prefix, cases[i].prefix);
        assert_non_null(inet_ntop(c.family, c.bytes, text, sizeof text));
        assert_string_equal(text, cases[i].net);
    }
}

static void test_cidr_bad(void **state) {
    static const struct {
        const char *in;
        const char *msg;
    } cases[] = {
        {"10.0.0.1/8", "did you mean 10.0.0.0/8"},
        {"192.168.1.1/24", "did you mean 192.168.1.0/24"},
        {"fe80::1/10", "did you mean fe80::/10"},
        {"10.0.0.0/33", "out of range"},
        {"::/129", "out of range"},
        {"10.0.0.0/", "bad prefix"},
        {"10.0.0.0/x", "bad prefix"},
        {"10.0.0.0/-1", "bad prefix"},
        {"10.0.0.0/08", "bad prefix"},
        {"10.0.0.0/8/8", "bad prefix"},
        {"10.0.0.0/ 8", "bad prefix"},
        {"/8", "missing address"},
        {"", "empty"},
        {"junk", "not an IP address"},
        {"10.0.0/8", "not an IP address"},
        {"example.com/8", "not an IP address"},
        {"fe80::1%eth0", "not an IP address"},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct cidr c;
        char err[128] = "";

        if (cidr_parse(cases[i].in, &c, err, sizeof err) == 0)
            fail_msg("'%s' accepted", cases[i].in);
        assert_contains(err, cases[i].msg, cases[i].in);
    }
}

static void test_cidr_match(void **state) {
    static const struct {
        const char *cidr;
        const char *addr;
        bool match;
    } cases[] = {
        {"10.0.0.0/8", "10.0.0.0", true},
        {"10.0.0.0/8", "10.255.255.255", true},
        {"10.0.0.0/8", "11.0.0.0", false},
        {"10.0.0.0/8", "9.255.255.255", false},
        {"192.168.1.128/25", "192.168.1.127", false},
        {"192.168.1.128/25", "192.168.1.128", true},
        {"1.2.3.4", "1.2.3.4", true},
        {"1.2.3.4", "1.2.3.5", false},
        {"0.0.0.0/0", "203.0.113.9", true},
        {"0.0.0.0/0", "2001:db8::1", false},
        {"::/0", "2001:db8::1", true},
        {"::/0", "203.0.113.9", false}, /* IPv6 blocks do not swallow IPv4 */
        {"fe80::/10", "febf:ffff::1", true},
        {"fe80::/10", "fec0::1", false},
        {"::1", "::1", true},
        {"::1", "::2", false},
        /* IPv4-mapped addresses are the IPv4 host they carry. */
        {"10.0.0.0/8", "::ffff:10.1.2.3", true},
        {"10.0.0.0/8", "::ffff:11.1.2.3", false},
        {"127.0.0.1", "::ffff:127.0.0.1", true},
        {"0.0.0.0/0", "::ffff:8.8.8.8", true},
        /* A block written in mapped form is the IPv4 block. */
        {"::ffff:10.0.0.0/104", "10.9.9.9", true},
        {"::ffff:10.0.0.0/104", "::ffff:10.9.9.9", true},
        {"::ffff:10.0.0.0/104", "11.9.9.9", false},
        /* Other embeddings are not the IPv4 host. */
        {"127.0.0.0/8", "::127.0.0.1", false},
        {"127.0.0.0/8", "64:ff9b::127.0.0.1", false},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct sockaddr_storage ss = ip(cases[i].addr, 443);
        struct cidr c;

        assert_int_equal(cidr_parse(cases[i].cidr, &c, NULL, 0), 0);
        if (cidr_match(&c, sa(&ss)) != cases[i].match)
            fail_msg("%s in %s: expected %s", cases[i].addr, cases[i].cidr,
                     cases[i].match ? "match" : "no match");
    }
}

static void test_reserved_classes(void **state) {
    static const struct {
        const char *addr;
        const char *cls; /* NULL: public */
    } cases[] = {
        /* IPv4 */
        {"0.0.0.0", "this-network"},
        {"0.255.255.255", "this-network"},
        {"10.0.0.1", "private"},
        {"10.255.255.255", "private"},
        {"100.64.0.1", "cgnat"},
        {"100.127.255.255", "cgnat"},
        {"100.128.0.0", NULL},
        {"100.63.255.255", NULL},
        {"127.0.0.1", "loopback"},
        {"127.255.255.254", "loopback"},
        {"169.254.169.254", "link-local"},
        {"169.254.0.1", "link-local"},
        {"172.16.0.1", "private"},
        {"172.31.255.255", "private"},
        {"172.15.255.255", NULL},
        {"172.32.0.0", NULL},
        {"192.0.0.8", "reserved"},
        {"192.0.2.1", "documentation"},
        {"198.51.100.7", "documentation"},
        {"203.0.113.200", "documentation"},
        {"192.88.99.1", "reserved"},
        {"192.168.0.1", "private"},
        {"192.169.0.1", NULL},
        {"198.18.0.1", "benchmarking"},
        {"198.19.255.255", "benchmarking"},
        {"198.20.0.0", NULL},
        {"224.0.0.1", "multicast"},
        {"239.255.255.255", "multicast"},
        {"240.0.0.1", "reserved"},
        {"255.255.255.254", "reserved"},
        {"255.255.255.255", "broadcast"},
        {"8.8.8.8", NULL},
        {"1.1.1.1", NULL},
        {"223.255.255.255", NULL},
        /* IPv6 */
        {"::", "unspecified"},
        {"::1", "loopback"},
        {"::ffff:127.0.0.1", "loopback"},
        {"::ffff:10.0.0.1", "private"},
        {"::ffff:169.254.169.254", "link-local"},
        {"::ffff:8.8.8.8", NULL},
        {"::127.0.0.1", "loopback"}, /* IPv4-compatible (deprecated) */
        {"::8.8.8.8", "reserved"},   /* ... never public */
        {"::0.0.0.2", "this-network"},
        {"64:ff9b::7f00:1", "loopback"}, /* NAT64 */
        {"64:ff9b::10.1.1.1", "private"},
        {"64:ff9b::8.8.8.8", NULL},
        {"64:ff9b:1::1", "private"}, /* local-use NAT64 */
        {"64:ff9b:1:ffff::8.8.8.8", "private"},
        {"100::1", "reserved"}, /* discard */
        {"100::ffff:ffff:ffff:ffff", "reserved"},
        {"100:0:0:1::", NULL},
        {"2001::1", "reserved"}, /* Teredo */
        {"2001:0:ffff::1", "reserved"},
        {"2001:2::1", "benchmarking"},
        {"2001:db8::1", "documentation"},
        {"3fff::1", "documentation"},
        {"2002:7f00:1::1", "loopback"}, /* 6to4 of 127.0.0.1 */
        {"2002:a9fe:a9fe::1", "link-local"},
        {"2002:c0a8:101::", "private"},
        {"2002:808:808::1", NULL},            /* 6to4 of 8.8.8.8 */
        {"::ffff:0:7f00:1", "loopback"},      /* IPv4-translated 127.0.0.1 (RFC 2765) */
        {"::ffff:0:a00:1", "private"},        /* IPv4-translated 10.0.0.1 */
        {"::ffff:0:a9fe:a9fe", "link-local"}, /* IPv4-translated 169.254.169.254 */
        {"::ffff:0:808:808", NULL},           /* IPv4-translated 8.8.8.8 */
        {"fc00::1", "unique-local"},
        {"fdff:ffff::1", "unique-local"},
        {"fe80::1", "link-local"},
        {"febf::1", "link-local"},
        {"fec0::1", "reserved"}, /* site-local */
        {"ff02::1", "multicast"},
        {"ff0e::1", "multicast"},
        {"2001:4860:4860::8888", NULL},
        {"2606:4700::1111", NULL},
        {"2003::1", NULL},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct sockaddr_storage ss = ip(cases[i].addr, 443);
        const char *got = addr_reserved_class(sa(&ss));

        if (cases[i].cls == NULL && got != NULL)
            fail_msg("%s: expected public, got '%s'", cases[i].addr, got);
        if (cases[i].cls != NULL && (got == NULL || strcmp(got, cases[i].cls) != 0))
            fail_msg("%s: expected '%s', got '%s'", cases[i].addr, cases[i].cls,
                     got ? got : "(public)");
    }
    /* Not an IP family at all: never public. */
    {
        struct sockaddr_storage ss;

        memset(&ss, 0, sizeof ss);
        ss.ss_family = AF_UNIX;
        assert_non_null(addr_reserved_class(sa(&ss)));
    }
}

static void test_format(void **state) {
    static const struct {
        const char *addr;
        uint16_t port;
        const char *with, *without;
    } cases[] = {
        {"192.0.2.1", 443, "192.0.2.1:443", "192.0.2.1"},
        {"::1", 3128, "[::1]:3128", "::1"},
        {"2001:db8:0:0:1:0:0:1", 1, "[2001:db8::1:0:0:1]:1", "2001:db8::1:0:0:1"},
        {"::ffff:198.51.100.2", 8080, "198.51.100.2:8080", "198.51.100.2"},
        {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
         "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
         "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
    };
    char out[ADDR_TEXT_MAX];

    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct sockaddr_storage ss = ip(cases[i].addr, cases[i].port);

        addr_format(sa(&ss), true, out, sizeof out);
        assert_string_equal(out, cases[i].with);
        addr_format(sa(&ss), false, out, sizeof out);
        assert_string_equal(out, cases[i].without);
        assert_int_equal(addr_port(sa(&ss)), cases[i].port);
    }
    /* A short buffer is truncated but always terminated. */
    {
        struct sockaddr_storage ss = ip("192.0.2.1", 443);
        char small[6];

        memset(small, 'x', sizeof small);
        addr_format(sa(&ss), true, small, sizeof small);
        assert_string_equal(small, "192.0");
    }
    /* Unknown family. */
    {
        struct sockaddr_storage ss;

        memset(&ss, 0, sizeof ss);
        ss.ss_family = AF_UNIX;
        addr_format(sa(&ss), true, out, sizeof out);
        assert_string_equal(out, "(unknown)");
        assert_int_equal(addr_port(sa(&ss)), 0);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hostport_good),    cmocka_unit_test(test_hostport_bad),
        cmocka_unit_test(test_parse_ip),         cmocka_unit_test(test_cidr_good),
        cmocka_unit_test(test_cidr_bad),         cmocka_unit_test(test_cidr_match),
        cmocka_unit_test(test_reserved_classes), cmocka_unit_test(test_format),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
