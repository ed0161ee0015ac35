/* Unit tests for src/policy.c: list parsing and the two-step destination decision. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "policy.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* An access_config from config-style strings; the test fails when one does not parse. */
static void mk(struct access_config *a, const char *ports, const char *allow, const char *deny,
               const char *clients, bool deny_private) {
    char err[256] = "";

    memset(a, 0, sizeof *a);
    if (policy_parse_ports(ports, &a->allow_ports, err, sizeof err) != 0)
        fail_msg("ports '%s': %s", ports, err);
    if (policy_parse_hosts(allow, &a->allow_hosts, err, sizeof err) != 0)
        fail_msg("allow '%s': %s", allow, err);
    if (policy_parse_hosts(deny, &a->deny_hosts, err, sizeof err) != 0)
        fail_msg("deny '%s': %s", deny, err);
    if (policy_parse_cidrs(clients, &a->allow_clients, err, sizeof err) != 0)
        fail_msg("clients '%s': %s", clients, err);
    a->deny_private = deny_private;
}

static struct sockaddr_storage ip(const char *s) {
    struct sockaddr_storage ss;

    if (addr_parse_ip(s, 443, &ss, NULL) != 0)
        fail_msg("test setup: '%s' is not an IP address", s);
    return ss;
}

static enum policy_addr check_addr(const struct access_config *a, const char *addr,
                                   bool name_allowed, const char **cls) {
    struct sockaddr_storage ss = ip(addr);

    return policy_check_addr(a, (const struct sockaddr *)&ss, name_allowed, cls);
}

static bool client_ok(const struct access_config *a, const char *addr) {
    struct sockaddr_storage ss = ip(addr);

    return policy_client_allowed(a, (const struct sockaddr *)&ss);
}

static const char *target_name(enum policy_target t) {
    switch (t) {
    case POLICY_TARGET_ALLOW:
        return "ALLOW";
    case POLICY_TARGET_CHECK_ADDR:
        return "CHECK_ADDR";
    case POLICY_TARGET_DENY_PORT:
        return "DENY_PORT";
    case POLICY_TARGET_DENY_HOST:
        return "DENY_HOST";
    }
    return "?";
}

#define assert_target(a, host, is_ip, port, want)                                                  \
    do {                                                                                           \
        enum policy_target got_ = policy_check_target((a), (host), (is_ip), (port));               \
        if (got_ != (want))                                                                        \
            fail_msg("target %s:%u: expected %s, got %s", (host), (unsigned)(port),                \
                     target_name(want), target_name(got_));                                        \
    } while (0)

/* ---- ports ---- */

static void test_ports_good(void **state) {
    static const struct {
        const char *in;
        size_t n;
        uint16_t lo0, hi0;
    } cases[] = {
        {"443", 1, 443, 443},
        {"443, 8443, 10000-10100", 3, 443, 443},
        {"1-65535", 1, 1, 65535},
        {"65535", 1, 65535, 65535},
        {"1", 1, 1, 1},
        {" 10000 - 10100 ", 1, 10000, 10100},
        {"80-80", 1, 80, 80},
        {"443,,80,", 2, 443, 443},
        {"443, 443", 2, 443, 443},
        {"", 0, 0, 0},
        {"   ", 0, 0, 0},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct port_list l;
        char err[128] = "";

        if (policy_parse_ports(cases[i].in, &l, err, sizeof err) != 0)
            fail_msg("'%s' rejected: %s", cases[i].in, err);
        assert_int_equal(l.n, cases[i].n);
        if (l.n > 0) {
            assert_int_equal(l.v[0].lo, cases[i].lo0);
            assert_int_equal(l.v[0].hi, cases[i].hi0);
        }
        policy_free_ports(&l);
        assert_null(l.v);
        assert_int_equal(l.n, 0);
    }
}

static void test_ports_bad(void **state) {
    static const struct {
        const char *in;
        const char *item; /* the message names it */
    } cases[] = {
        {"0", "'0'"},
        {"443, 0", "'0'"},
        {"65536", "'65536'"},
        {"99999999999999999999", "'99999999999999999999'"},
        {"abc", "'abc'"},
        {"443x", "'443x'"},
        {"+443", "'+443'"},
        {"-443", "'-443'"},
        {"443-", "'443-'"},
        {"10-5", "'10-5'"},
        {"0-10", "'0-10'"},
        {"1-2-3", "'1-2-3'"},
        {"44 3", "'44 3'"},
        {"443 8443", "separate items with commas"},
        {"443; 80", "'443; 80'"},
        {"80, https", "'https'"},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct port_list l = {(struct port_range *)1, 99};
        char err[128] = "";

        if (policy_parse_ports(cases[i].in, &l, err, sizeof err) == 0)
            fail_msg("'%s' accepted", cases[i].in);
        if (!strstr(err, cases[i].item))
            fail_msg("'%s': message '%s' does not name %s", cases[i].in, err, cases[i].item);
        /* On error the output is an empty list, safe to free. */
        assert_null(l.v);
        assert_int_equal(l.n, 0);
    }
}

static void test_port_check(void **state) {
    struct access_config a;

    (void)state;
    mk(&a, "443, 8443, 10000-10100", "*", "", "", true);
    assert_target(&a, "example.com", false, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "example.com", false, 8443, POLICY_TARGET_ALLOW);
    assert_target(&a, "example.com", false, 10000, POLICY_TARGET_ALLOW);
    assert_target(&a, "example.com", false, 10050, POLICY_TARGET_ALLOW);
    assert_target(&a, "example.com", false, 10100, POLICY_TARGET_ALLOW);
    assert_target(&a, "example.com", false, 442, POLICY_TARGET_DENY_PORT);
    assert_target(&a, "example.com", false, 444, POLICY_TARGET_DENY_PORT);
    assert_target(&a, "example.com", false, 9999, POLICY_TARGET_DENY_PORT);
    assert_target(&a, "example.com", false, 10101, POLICY_TARGET_DENY_PORT);
    assert_target(&a, "example.com", false, 0, POLICY_TARGET_DENY_PORT);
    assert_target(&a, "example.com", false, 80, POLICY_TARGET_DENY_PORT);
    /* The port is checked first, even for a denied host. */
    policy_free_access(&a);
    mk(&a, "443", "*", "evil.com", "", true);
    assert_target(&a, "evil.com", false, 80, POLICY_TARGET_DENY_PORT);
    assert_target(&a, "evil.com", false, 443, POLICY_TARGET_DENY_HOST);
    policy_free_access(&a);
    /* No ports: nothing passes. */
    mk(&a, "", "*", "", "", true);
    assert_target(&a, "example.com", false, 443, POLICY_TARGET_DENY_PORT);
    policy_free_access(&a);
}

/* ---- host patterns ---- */

static void test_hosts_parse(void **state) {
    static const struct {
        const char *in;
        enum host_pattern_kind kind;
        const char *name; /* EXACT / SUFFIX */
        int family;       /* CIDR */
        unsigned prefix;
    } cases[] = {
        {"*", HOST_PAT_ANY, NULL, 0, 0},
        {"example.com", HOST_PAT_EXACT, "example.com", 0, 0},
        {"Example.COM.", HOST_PAT_EXACT, "example.com", 0, 0},
        {"localhost", HOST_PAT_EXACT, "localhost", 0, 0},
        {"_srv.under_score-ok.example", HOST_PAT_EXACT, "_srv.under_score-ok.example", 0, 0},
        {"*.example.com", HOST_PAT_SUFFIX, ".example.com", 0, 0},
        {"*.Example.Com.", HOST_PAT_SUFFIX, ".example.com", 0, 0},
        {"*.com", HOST_PAT_SUFFIX, ".com", 0, 0},
        {"10.0.0.0/8", HOST_PAT_CIDR, NULL, AF_INET, 8},
        {"192.0.2.1", HOST_PAT_CIDR, NULL, AF_INET, 32},
        {"::1", HOST_PAT_CIDR, NULL, AF_INET6, 128},
        {"[::1]", HOST_PAT_CIDR, NULL, AF_INET6, 128},
        {"2001:db8::/32", HOST_PAT_CIDR, NULL, AF_INET6, 32},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct host_list l;
        char err[256] = "";

        if (policy_parse_hosts(cases[i].in, &l, err, sizeof err) != 0)
            fail_msg("'%s' rejected: %s", cases[i].in, err);
        assert_int_equal(l.n, 1);
        assert_int_equal(l.v[0].kind, cases[i].kind);
        if (cases[i].name)
            assert_string_equal(l.v[0].name, cases[i].name);
        if (cases[i].kind == HOST_PAT_CIDR) {
            assert_int_equal(l.v[0].cidr.family, cases[i].family);
            assert_int_equal(l.v[0].cidr.prefix, cases[i].prefix);
        }
        policy_free_hosts(&l);
    }
    /* Lists: whitespace, empty items and duplicates are fine. */
    {
        struct host_list l;

        assert_int_equal(policy_parse_hosts(" *.a.com ,, b.com, b.com , 10.0.0.0/8,", &l, NULL, 0),
                         0);
        assert_int_equal(l.n, 4);
        policy_free_hosts(&l);
        assert_int_equal(policy_parse_hosts("", &l, NULL, 0), 0);
        assert_int_equal(l.n, 0);
        policy_free_hosts(&l);
    }
}

static void test_hosts_bad(void **state) {
    static const char label64[] =
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com";
    static const struct {
        const char *in;
        const char *msg;
    } cases[] = {
        {"a*.b", "'a*.b': '*' is only allowed as the whole first label"},
        {"*.*.x", "'*.*.x'"},
        {"*foo.com", "'*foo.com'"},
        {"**", "'**'"},
        {"*.", "'*.'"},
        {"a..b", "'a..b'"},
        {".example.com", "'.example.com'"},
        {"example.com..", "'example.com..'"},
        {"exa mple.com", "'exa mple.com'"},
        {"a.com b.com", "separate items with commas"},
        {"ex!ample.com", "'ex!ample.com'"},
        {"ok.com, bad/name", "'bad/name'"},
        {label64, "label longer than 63"},
        {"10.0.0.1/8", "did you mean 10.0.0.0/8"},
        {"1.2.3", "'1.2.3'"},
        {"999.1.1.1", "'999.1.1.1'"},
        {"01.2.3.4", "'01.2.3.4'"},
        {"*.10.0.0.1", "'*.10.0.0.1'"},
        {"[10.0.0.1]", "'[10.0.0.1]'"},
        {"[::1", "'[::1'"},
        {"[::1]/128", "'[::1]/128'"},
        {"fe80::1%eth0", "'fe80::1%eth0'"},
        {"::/129", "out of range"},
    };
    char longname[300];

    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct host_list l = {(struct host_pattern *)1, 99};
        char err[256] = "";

        if (policy_parse_hosts(cases[i].in, &l, err, sizeof err) == 0)
            fail_msg("'%s' accepted", cases[i].in);
        if (!strstr(err, cases[i].msg))
            fail_msg("'%s': expected '%s' in '%s'", cases[i].in, cases[i].msg, err);
        assert_null(l.v);
        assert_int_equal(l.n, 0);
    }
    /* 254 characters: too long for DNS even though every label is fine. */
    {
        struct host_list l;
        size_t o = 0;

        while (o + 10 <= 254) {
            memcpy(longname + o, "abcdefghi.", 10);
            o += 10;
        }
        memcpy(longname + o, "abcd", 4);
        o += 4;
        longname[o] = '\0';
        assert_int_equal(strlen(longname), 254);
        assert_int_equal(policy_parse_hosts(longname, &l, NULL, 0), -1);
        longname[253] = '\0';
        assert_int_equal(policy_parse_hosts(longname, &l, NULL, 0), 0);
        policy_free_hosts(&l);
    }
}

static void test_suffix_semantics(void **state) {
    struct access_config a;

    (void)state;
    mk(&a, "443", "*.example.com", "", "", true);
    assert_target(&a, "a.example.com", false, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "a.b.example.com", false, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "example.com", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "badexample.com", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "a.badexample.com", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "example.com.evil.net", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "aexample.com", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "com", false, 443, POLICY_TARGET_DENY_HOST);
    /* Not a valid name, but must not match as "nothing below the dot". */
    assert_target(&a, ".example.com", false, 443, POLICY_TARGET_DENY_HOST);
    policy_free_access(&a);
}

static void test_exact_and_case(void **state) {
    struct access_config a;

    (void)state;
    mk(&a, "443", "Example.COM.", "", "", true);
    assert_target(&a, "example.com", false, 443, POLICY_TARGET_ALLOW);
    /* The caller normalises, but the match does not depend on it. */
    assert_target(&a, "EXAMPLE.com", false, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "example.com.", false, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "www.example.com", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "example.co", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "example.com.au", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "xexample.com", false, 443, POLICY_TARGET_DENY_HOST);
    policy_free_access(&a);
    /* Both the name and its subdomains. */
    mk(&a, "443", "example.com, *.example.com", "", "", true);
    assert_target(&a, "example.com", false, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "www.example.com", false, 443, POLICY_TARGET_ALLOW);
    policy_free_access(&a);
}

static void test_deny_wins(void **state) {
    struct access_config a;

    (void)state;
    mk(&a, "443", "*", "evil.example.com, *.bad.com, 192.0.2.0/24", "", false);
    assert_target(&a, "evil.example.com", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "x.bad.com", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "bad.com", false, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "good.example.com", false, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "192.0.2.7", true, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "198.51.100.7", true, 443, POLICY_TARGET_ALLOW);
    policy_free_access(&a);

    mk(&a, "443", "www.example.com, 10.0.0.0/8", "*.example.com, 10.1.0.0/16", "", true);
    assert_target(&a, "www.example.com", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "10.1.2.3", true, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "10.2.0.1", true, 443, POLICY_TARGET_ALLOW);
    /* Step 2: a deny CIDR beats an allow CIDR and an allowed name. */
    assert_int_equal(check_addr(&a, "10.1.2.3", false, NULL), POLICY_ADDR_DENY_HOST);
    assert_int_equal(check_addr(&a, "10.1.2.3", true, NULL), POLICY_ADDR_DENY_HOST);
    assert_int_equal(check_addr(&a, "::ffff:10.1.2.3", true, NULL), POLICY_ADDR_DENY_HOST);
    assert_int_equal(check_addr(&a, "10.2.0.1", false, NULL), POLICY_ADDR_ALLOW);
    policy_free_access(&a);

    /* deny_hosts "*" refuses everything, names and IPs. */
    mk(&a, "443", "*", "*", "", false);
    assert_target(&a, "example.com", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "8.8.8.8", true, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "2001:4860:4860::8888", true, 443, POLICY_TARGET_DENY_HOST);
    policy_free_access(&a);

    /* A deny CIDR also applies to the addresses a name resolves to. */
    mk(&a, "443", "*", "203.0.113.0/24", "", false);
    assert_target(&a, "example.com", false, 443, POLICY_TARGET_ALLOW);
    assert_int_equal(check_addr(&a, "203.0.113.5", true, NULL), POLICY_ADDR_DENY_HOST);
    assert_int_equal(check_addr(&a, "203.0.114.5", true, NULL), POLICY_ADDR_ALLOW);
    policy_free_access(&a);
}

static void test_check_addr_flow(void **state) {
    struct access_config a;
    const char *cls = "x";

    (void)state;
    /* Only a CIDR: names are decided by where they resolve to. */
    mk(&a, "443", "10.0.0.0/8", "", "", true);
    assert_target(&a, "intranet.corp", false, 443, POLICY_TARGET_CHECK_ADDR);
    assert_int_equal(check_addr(&a, "10.1.1.1", false, &cls), POLICY_ADDR_ALLOW);
    assert_null(cls);
    assert_int_equal(check_addr(&a, "8.8.8.8", false, &cls), POLICY_ADDR_DENY_HOST);
    assert_null(cls);
    assert_int_equal(check_addr(&a, "192.168.1.1", false, &cls), POLICY_ADDR_DENY_HOST);
    policy_free_access(&a);

    /* Names only: no CIDR that could match later, so no CHECK_ADDR. */
    mk(&a, "443", "example.com", "", "", true);
    assert_target(&a, "other.com", false, 443, POLICY_TARGET_DENY_HOST);
    policy_free_access(&a);

    /* Mixed: the name wins first; other names go to step 2. */
    mk(&a, "443", "example.com, 192.0.2.0/24", "", "", false);
    assert_target(&a, "example.com", false, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "other.com", false, 443, POLICY_TARGET_CHECK_ADDR);
    assert_int_equal(check_addr(&a, "192.0.2.9", false, NULL), POLICY_ADDR_ALLOW);
    assert_int_equal(check_addr(&a, "198.51.100.1", false, NULL), POLICY_ADDR_DENY_HOST);
    /* The allowed name may resolve anywhere public. */
    assert_int_equal(check_addr(&a, "198.51.100.1", true, NULL), POLICY_ADDR_ALLOW);
    policy_free_access(&a);

    /* Empty allow_hosts: nothing. */
    mk(&a, "443", "", "", "", true);
    assert_target(&a, "example.com", false, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "8.8.8.8", true, 443, POLICY_TARGET_DENY_HOST);
    policy_free_access(&a);
}

static void test_private_refusal(void **state) {
    static const struct {
        const char *addr;
        const char *cls; /* NULL: allowed */
    } cases[] = {
        {"127.0.0.1", "loopback"},
        {"10.0.0.1", "private"},
        {"172.16.5.4", "private"},
        {"192.168.1.1", "private"},
        {"169.254.169.254", "link-local"},
        {"100.64.0.1", "cgnat"},
        {"0.0.0.0", "this-network"},
        {"224.0.0.1", "multicast"},
        {"255.255.255.255", "broadcast"},
        {"::", "unspecified"},
        {"::1", "loopback"},
        {"fd00::1", "unique-local"},
        {"fe80::1", "link-local"},
        {"ff02::1", "multicast"},
        {"::ffff:127.0.0.1", "loopback"},
        {"::ffff:169.254.169.254", "link-local"},
        {"64:ff9b::7f00:1", "loopback"},
        {"2002:7f00:1::1", "loopback"},
        {"::ffff:0:7f00:1", "loopback"}, /* IPv4-translated (RFC 2765) */
        {"8.8.8.8", NULL},
        {"2001:4860:4860::8888", NULL},
        {"::ffff:8.8.8.8", NULL},
        {"64:ff9b::8.8.8.8", NULL},
    };
    struct access_config a;

    (void)state;
    /* "*" allows every name, but is not an exception to deny_private. */
    mk(&a, "443", "*", "", "", true);
    for (size_t i = 0; i < N(cases); i++) {
        const char *cls = "unset";
        enum policy_addr r = check_addr(&a, cases[i].addr, true, &cls);

        if (cases[i].cls == NULL) {
            if (r != POLICY_ADDR_ALLOW || cls != NULL)
                fail_msg("%s: expected ALLOW, got %d (%s)", cases[i].addr, r, cls ? cls : "-");
        } else {
            if (r != POLICY_ADDR_PRIVATE || !cls || strcmp(cls, cases[i].cls) != 0)
                fail_msg("%s: expected PRIVATE %s, got %d (%s)", cases[i].addr, cases[i].cls, r,
                         cls ? cls : "-");
        }
    }
    /* An IP literal passes step 1 through "*" and is still refused in step 2. */
    assert_target(&a, "127.0.0.1", true, 443, POLICY_TARGET_ALLOW);
    assert_int_equal(check_addr(&a, "127.0.0.1", true, NULL), POLICY_ADDR_PRIVATE);
    policy_free_access(&a);

    /* A name pattern is not an exception either (DNS may point it anywhere). */
    mk(&a, "443", "localhost, *.internal", "", "", true);
    assert_target(&a, "localhost", false, 443, POLICY_TARGET_ALLOW);
    assert_int_equal(check_addr(&a, "127.0.0.1", true, NULL), POLICY_ADDR_PRIVATE);
    assert_int_equal(check_addr(&a, "10.0.0.5", true, NULL), POLICY_ADDR_PRIVATE);
    policy_free_access(&a);

    /* deny_private off: reserved addresses pass. */
    mk(&a, "443", "*", "", "", false);
    assert_int_equal(check_addr(&a, "127.0.0.1", true, NULL), POLICY_ADDR_ALLOW);
    assert_int_equal(check_addr(&a, "169.254.169.254", true, NULL), POLICY_ADDR_ALLOW);
    policy_free_access(&a);
}

static void test_cidr_exception(void **state) {
    struct access_config a;
    const char *cls;

    (void)state;
    mk(&a, "443", "*, 127.0.0.1, 10.0.0.0/8, fd00::/8", "", "", true);
    assert_int_equal(check_addr(&a, "127.0.0.1", true, &cls), POLICY_ADDR_ALLOW);
    assert_int_equal(check_addr(&a, "::ffff:127.0.0.1", true, &cls), POLICY_ADDR_ALLOW);
    assert_int_equal(check_addr(&a, "127.0.0.2", true, &cls), POLICY_ADDR_PRIVATE);
    assert_string_equal(cls, "loopback");
    assert_int_equal(check_addr(&a, "10.200.0.1", true, &cls), POLICY_ADDR_ALLOW);
    assert_int_equal(check_addr(&a, "fd12::1", true, &cls), POLICY_ADDR_ALLOW);
    assert_int_equal(check_addr(&a, "fc00::1", true, &cls), POLICY_ADDR_PRIVATE);
    assert_string_equal(cls, "unique-local");
    assert_int_equal(check_addr(&a, "192.168.0.1", true, &cls), POLICY_ADDR_PRIVATE);
    assert_string_equal(cls, "private");
    /* The exception also holds when step 1 sent us here by CHECK_ADDR. */
    assert_int_equal(check_addr(&a, "10.200.0.1", false, &cls), POLICY_ADDR_ALLOW);
    policy_free_access(&a);

    /* The metadata address only when named exactly. */
    mk(&a, "80", "*.internal, 169.254.169.254", "", "", true);
    assert_int_equal(check_addr(&a, "169.254.169.254", true, NULL), POLICY_ADDR_ALLOW);
    assert_int_equal(check_addr(&a, "169.254.169.253", true, NULL), POLICY_ADDR_PRIVATE);
    policy_free_access(&a);
}

static void test_ip_literal_targets(void **state) {
    struct access_config a;

    (void)state;
    mk(&a, "443", "10.0.0.0/8, ::1, 2001:db8::/32", "", "", true);
    assert_target(&a, "10.1.2.3", true, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "11.0.0.1", true, 443, POLICY_TARGET_DENY_HOST); /* not CHECK_ADDR */
    assert_target(&a, "::1", true, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "[::1]", true, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "::2", true, 443, POLICY_TARGET_DENY_HOST);
    assert_target(&a, "2001:db8:1::5", true, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "::ffff:10.9.8.7", true, 443, POLICY_TARGET_ALLOW);
    /* Not parseable as an address: no CIDR matches (fail closed). */
    assert_target(&a, "010.1.2.3", true, 443, POLICY_TARGET_DENY_HOST);
    /* A name that looks like nothing in the list is decided by its addresses. */
    assert_target(&a, "10.example", false, 443, POLICY_TARGET_CHECK_ADDR);
    policy_free_access(&a);

    /* Name patterns never match an IP literal; "*" does. */
    mk(&a, "443", "example.com, *.example.com", "", "", true);
    assert_target(&a, "192.0.2.1", true, 443, POLICY_TARGET_DENY_HOST);
    policy_free_access(&a);
    mk(&a, "443", "*", "", "", true);
    assert_target(&a, "192.0.2.1", true, 443, POLICY_TARGET_ALLOW);
    assert_target(&a, "010.1.2.3", true, 443, POLICY_TARGET_ALLOW);
    policy_free_access(&a);

    /* A CIDR pattern never matches a name in step 1. */
    mk(&a, "443", "example.com", "0.0.0.0/0", "", true);
    assert_target(&a, "example.com", false, 443, POLICY_TARGET_ALLOW);
    assert_int_equal(check_addr(&a, "93.184.216.34", true, NULL), POLICY_ADDR_DENY_HOST);
    policy_free_access(&a);
}

static void test_clients(void **state) {
    struct access_config a;

    (void)state;
    mk(&a, "443", "*", "", "127.0.0.0/8, ::1", true);
    assert_true(client_ok(&a, "127.0.0.1"));
    assert_true(client_ok(&a, "127.1.2.3"));
    assert_true(client_ok(&a, "::1"));
    assert_true(client_ok(&a, "::ffff:127.0.0.1")); /* IPv4 client on a dual-stack socket */
    assert_false(client_ok(&a, "::ffff:10.0.0.1"));
    assert_false(client_ok(&a, "10.0.0.1"));
    assert_false(client_ok(&a, "::2"));
    assert_false(client_ok(&a, "128.0.0.1"));
    assert_false(policy_client_allowed(&a, NULL));
    policy_free_access(&a);

    /* Empty list: nobody. */
    mk(&a, "443", "*", "", "", true);
    assert_false(client_ok(&a, "127.0.0.1"));
    assert_false(client_ok(&a, "::1"));
    policy_free_access(&a);

    /* Everyone, explicitly; the bracketed form works too. */
    mk(&a, "443", "*", "", "0.0.0.0/0, ::/0, [fe80::1]", true);
    assert_true(client_ok(&a, "203.0.113.1"));
    assert_true(client_ok(&a, "::ffff:203.0.113.1"));
    assert_true(client_ok(&a, "2001:db8::1"));
    policy_free_access(&a);
}

static void test_cidrs_bad(void **state) {
    static const struct {
        const char *in;
        const char *msg;
    } cases[] = {
        {"10.0.0.1/8", "did you mean 10.0.0.0/8"},
        {"127.0.0.0/8, localhost", "'localhost'"},
        {"*", "'*'"},
        {"::1, [::1", "'[::1'"},
        {"10.0.0.0/40", "out of range"},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct cidr_list l;
        char err[256] = "";

        if (policy_parse_cidrs(cases[i].in, &l, err, sizeof err) == 0)
            fail_msg("'%s' accepted", cases[i].in);
        if (!strstr(err, cases[i].msg))
            fail_msg("'%s': expected '%s' in '%s'", cases[i].in, cases[i].msg, err);
        assert_null(l.v);
    }
}

static void test_free_safe(void **state) {
    struct access_config a;

    (void)state;
    memset(&a, 0, sizeof a);
    policy_free_access(&a);
    policy_free_access(&a);
    policy_free_access(NULL);
    policy_free_ports(NULL);
    policy_free_hosts(NULL);
    policy_free_cidrs(NULL);
    assert_int_equal(policy_check_target(&a, NULL, false, 443), POLICY_TARGET_DENY_HOST);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ports_good),      cmocka_unit_test(test_ports_bad),
        cmocka_unit_test(test_port_check),      cmocka_unit_test(test_hosts_parse),
        cmocka_unit_test(test_hosts_bad),       cmocka_unit_test(test_suffix_semantics),
        cmocka_unit_test(test_exact_and_case),  cmocka_unit_test(test_deny_wins),
        cmocka_unit_test(test_check_addr_flow), cmocka_unit_test(test_private_refusal),
        cmocka_unit_test(test_cidr_exception),  cmocka_unit_test(test_ip_literal_targets),
        cmocka_unit_test(test_clients),         cmocka_unit_test(test_cidrs_bad),
        cmocka_unit_test(test_free_safe),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
