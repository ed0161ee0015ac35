/* Unit tests for src/rules.c: each condition, first-match order, the two matching steps and the
 * deny_private exception (rules_names_addr). Rules are built with proxy.ini's list parsers, so
 * these tests do not depend on the YAML loader. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rules.h"
#include "text.h"

/* Append a rule; a NULL list is an absent condition. The test fails when a list does not parse. */
static void add(struct rule_set *rs, enum rule_action action, const char *clients,
                const char *users, const char *hosts, const char *ports) {
    char err[256] = "";
    struct rule *r;

    rs->v = realloc(rs->v, (rs->n + 1) * sizeof *rs->v);
    assert_non_null(rs->v);
    r = &rs->v[rs->n++];
    memset(r, 0, sizeof *r);
    r->action = action;
    r->name = malloc(16);
    assert_non_null(r->name);
    (void)snprintf(r->name, 16, "r%zu", rs->n - 1);
    if (clients) {
        r->has_clients = true;
        if (policy_parse_cidrs(clients, &r->clients, err, sizeof err) != 0)
            fail_msg("clients '%s': %s", clients, err);
    }
    if (users) {
        const char *s = users;
        char item[80];

        r->has_users = true;
        while (text_next_item(&s, item, sizeof item) > 0) {
            r->users = realloc(r->users, (r->nusers + 1) * sizeof *r->users);
            assert_non_null(r->users);
            r->users[r->nusers] = strdup(item);
            assert_non_null(r->users[r->nusers]);
            r->nusers++;
        }
    }
    if (hosts) {
        r->has_hosts = true;
        if (policy_parse_hosts(hosts, &r->hosts, err, sizeof err) != 0)
            fail_msg("hosts '%s': %s", hosts, err);
    }
    if (ports) {
        r->has_ports = true;
        if (policy_parse_ports(ports, &r->ports, err, sizeof err) != 0)
            fail_msg("ports '%s': %s", ports, err);
    }
}

static struct sockaddr_storage ip(const char *s) {
    struct sockaddr_storage ss;

    if (addr_parse_ip(s, 40000, &ss, NULL) != 0)
        fail_msg("test setup: '%s' is not an IP address", s);
    return ss;
}

/* A query; client may be NULL. host is an IP literal when is_ip. */
struct q {
    struct sockaddr_storage client;
    struct rule_query q;
};

static void query(struct q *out, const char *client, const char *user, const char *host, bool is_ip,
                  uint16_t port) {
    memset(out, 0, sizeof *out);
    if (client)
        out->client = ip(client);
    out->q.client = client ? (const struct sockaddr *)&out->client : NULL;
    out->q.user = user;
    out->q.host = host;
    out->q.is_ip = is_ip;
    out->q.port = port;
}

static const char *match_name(enum rule_match m) {
    switch (m) {
    case RULE_NO_MATCH:
        return "NO_MATCH";
    case RULE_MATCHED:
        return "MATCHED";
    case RULE_NEEDS_ADDR:
        return "NEEDS_ADDR";
    }
    return "?";
}

/* Step 1 from index `from` must give want, with *idx == want_idx unless NO_MATCH. */
static void expect(const struct rule_set *rs, const char *client, const char *user,
                   const char *host, bool is_ip, uint16_t port, size_t from, enum rule_match want,
                   size_t want_idx) {
    struct q q;
    size_t idx = 9999;
    enum rule_match got;

    query(&q, client, user, host, is_ip, port);
    got = rules_match(rs, &q.q, from, &idx);
    if (got != want)
        fail_msg("%s/%s -> %s:%u from %zu: expected %s, got %s", client ? client : "-",
                 user ? user : "-", host, (unsigned)port, from, match_name(want), match_name(got));
    if (want != RULE_NO_MATCH && idx != want_idx)
        fail_msg("%s/%s -> %s:%u from %zu: expected rule %zu, got %zu", client ? client : "-",
                 user ? user : "-", host, (unsigned)port, from, want_idx, idx);
    if (want == RULE_NO_MATCH && idx != 9999)
        fail_msg("%s:%u: NO_MATCH changed *idx to %zu", host, (unsigned)port, idx);
}

#define M(rs, client, user, host, is_ip, port, want_idx)                                           \
    expect((rs), (client), (user), (host), (is_ip), (port), 0, RULE_MATCHED, (want_idx))
#define NONE(rs, client, user, host, is_ip, port)                                                  \
    expect((rs), (client), (user), (host), (is_ip), (port), 0, RULE_NO_MATCH, 0)

/* Step 2: the rule index for addr, or -1 for none. */
static long step2(const struct rule_set *rs, const char *client, const char *user, const char *host,
                  uint16_t port, const char *addr, size_t from) {
    struct q q;
    struct sockaddr_storage a = ip(addr);
    size_t idx = 9999;

    query(&q, client, user, host, false, port);
    if (!rules_match_addr(rs, &q.q, (const struct sockaddr *)&a, from, &idx))
        return -1;
    return (long)idx;
}

static bool names(const struct rule *r, const char *addr) {
    struct sockaddr_storage a = ip(addr);

    return rules_names_addr(r, (const struct sockaddr *)&a);
}

/* ---- each condition ---- */

static void test_no_conditions(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    add(&rs, RULE_DENY, NULL, NULL, NULL, NULL);
    M(&rs, "192.0.2.1", NULL, "example.com", false, 443, 0);
    M(&rs, NULL, "alice", "192.0.2.9", true, 1, 0);
    M(&rs, "2001:db8::1", NULL, "2001:db8::2", true, 65535, 0);
    assert_int_equal(rs.v[0].action, RULE_DENY);
    rules_free(&rs);
    assert_null(rs.v);
    assert_int_equal(rs.n, 0);
}

static void test_clients(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    add(&rs, RULE_ALLOW, "10.0.0.0/8, 2001:db8::/32", NULL, NULL, NULL);
    M(&rs, "10.1.2.3", NULL, "example.com", false, 443, 0);
    M(&rs, "10.255.255.255", NULL, "example.com", false, 443, 0);
    M(&rs, "2001:db8:ffff::1", NULL, "example.com", false, 443, 0);
    /* An IPv4 client on an IPv6 socket is matched as IPv4. */
    M(&rs, "::ffff:10.1.2.3", NULL, "example.com", false, 443, 0);
    NONE(&rs, "::ffff:11.1.2.3", NULL, "example.com", false, 443);
    NONE(&rs, "11.0.0.1", NULL, "example.com", false, 443);
    NONE(&rs, "2001:db9::1", NULL, "example.com", false, 443);
    /* Unknown client address: a clients condition cannot match. */
    NONE(&rs, NULL, NULL, "example.com", false, 443);
    rules_free(&rs);
}

static void test_users(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    add(&rs, RULE_ALLOW, NULL, "alice, bob", NULL, NULL);
    M(&rs, "192.0.2.1", "alice", "example.com", false, 443, 0);
    M(&rs, "192.0.2.1", "bob", "example.com", false, 443, 0);
    NONE(&rs, "192.0.2.1", "carol", "example.com", false, 443);
    NONE(&rs, "192.0.2.1", "Alice", "example.com", false, 443); /* case-sensitive */
    NONE(&rs, "192.0.2.1", "alic", "example.com", false, 443);
    NONE(&rs, "192.0.2.1", "", "example.com", false, 443);
    /* Auth off: no user, so no users condition matches, whatever else does. */
    NONE(&rs, "192.0.2.1", NULL, "example.com", false, 443);
    rules_free(&rs);

    /* ...but a rule without users matches with or without a user. */
    add(&rs, RULE_ALLOW, NULL, NULL, "example.com", NULL);
    M(&rs, "192.0.2.1", NULL, "example.com", false, 443, 0);
    M(&rs, "192.0.2.1", "alice", "example.com", false, 443, 0);
    rules_free(&rs);
}

static void test_ports(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    add(&rs, RULE_ALLOW, NULL, NULL, NULL, "443, 10000-10100");
    M(&rs, NULL, NULL, "example.com", false, 443, 0);
    M(&rs, NULL, NULL, "example.com", false, 10000, 0);
    M(&rs, NULL, NULL, "example.com", false, 10050, 0);
    M(&rs, NULL, NULL, "example.com", false, 10100, 0);
    NONE(&rs, NULL, NULL, "example.com", false, 9999);
    NONE(&rs, NULL, NULL, "example.com", false, 10101);
    NONE(&rs, NULL, NULL, "example.com", false, 442);
    NONE(&rs, NULL, NULL, "example.com", false, 80);
    rules_free(&rs);
}

static void test_host_names(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    add(&rs, RULE_ALLOW, NULL, NULL, "example.com", NULL);       /* 0 */
    add(&rs, RULE_DENY, NULL, NULL, "*.example.org", NULL);      /* 1 */
    add(&rs, RULE_ALLOW, NULL, NULL, "Mixed.Example.NET", NULL); /* 2: stored lowercase */
    M(&rs, NULL, NULL, "example.com", false, 443, 0);
    NONE(&rs, NULL, NULL, "www.example.com", false, 443);
    NONE(&rs, NULL, NULL, "example.com.evil", false, 443);
    M(&rs, NULL, NULL, "a.example.org", false, 443, 1);
    M(&rs, NULL, NULL, "a.b.example.org", false, 443, 1);
    NONE(&rs, NULL, NULL, "example.org", false, 443);    /* not the name itself */
    NONE(&rs, NULL, NULL, "badexample.org", false, 443); /* label boundary */
    M(&rs, NULL, NULL, "mixed.example.net", false, 443, 2);
    /* Name patterns never match IP literals. */
    NONE(&rs, NULL, NULL, "192.0.2.1", true, 443);
    NONE(&rs, NULL, NULL, "2001:db8::1", true, 443);
    rules_free(&rs);
}

static void test_host_any(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    add(&rs, RULE_ALLOW, NULL, NULL, "*", "443");
    M(&rs, NULL, NULL, "example.com", false, 443, 0);
    M(&rs, NULL, NULL, "192.0.2.1", true, 443, 0);
    M(&rs, NULL, NULL, "::1", true, 443, 0);
    M(&rs, NULL, NULL, "not-an-ip", true, 443, 0); /* even an unparsable literal */
    NONE(&rs, NULL, NULL, "example.com", false, 80);
    rules_free(&rs);
}

static void test_host_cidr_literal(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    add(&rs, RULE_DENY, NULL, NULL, "192.0.2.0/24, 2001:db8::/32, 198.51.100.7", NULL);
    M(&rs, NULL, NULL, "192.0.2.200", true, 443, 0);
    M(&rs, NULL, NULL, "198.51.100.7", true, 443, 0);
    M(&rs, NULL, NULL, "2001:db8::5", true, 443, 0);
    M(&rs, NULL, NULL, "[2001:db8::5]", true, 443, 0); /* brackets tolerated */
    M(&rs, NULL, NULL, "::ffff:192.0.2.1", true, 443, 0);
    /* An IP literal outside every CIDR: decided now, nothing to resolve. */
    NONE(&rs, NULL, NULL, "198.51.100.8", true, 443);
    NONE(&rs, NULL, NULL, "2001:db9::1", true, 443);
    NONE(&rs, NULL, NULL, "not-an-ip", true, 443); /* fail closed: matches no CIDR */
    rules_free(&rs);
}

static void test_all_conditions(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    add(&rs, RULE_ALLOW, "10.0.0.0/8", "alice", "*.example.com", "443");
    M(&rs, "10.0.0.1", "alice", "www.example.com", false, 443, 0);
    NONE(&rs, "11.0.0.1", "alice", "www.example.com", false, 443);
    NONE(&rs, "10.0.0.1", "bob", "www.example.com", false, 443);
    NONE(&rs, "10.0.0.1", "alice", "www.example.org", false, 443);
    NONE(&rs, "10.0.0.1", "alice", "www.example.com", false, 8443);
    NONE(&rs, "10.0.0.1", NULL, "www.example.com", false, 443);
    rules_free(&rs);
}

/* ---- order and steps ---- */

static void test_first_match(void **state) {
    struct rule_set rs = {NULL, 0};
    size_t idx = 7;
    struct q q;

    (void)state;
    add(&rs, RULE_DENY, NULL, NULL, "bad.example.com", NULL); /* 0 */
    add(&rs, RULE_ALLOW, NULL, NULL, "*.example.com", NULL);  /* 1 */
    add(&rs, RULE_DENY, NULL, NULL, "*", NULL);               /* 2 */
    M(&rs, NULL, NULL, "bad.example.com", false, 443, 0);
    M(&rs, NULL, NULL, "good.example.com", false, 443, 1);
    M(&rs, NULL, NULL, "other.test", false, 443, 2);
    /* Continuing after a rule. */
    expect(&rs, NULL, NULL, "bad.example.com", false, 443, 1, RULE_MATCHED, 1);
    expect(&rs, NULL, NULL, "bad.example.com", false, 443, 2, RULE_MATCHED, 2);
    expect(&rs, NULL, NULL, "bad.example.com", false, 443, 3, RULE_NO_MATCH, 0);
    expect(&rs, NULL, NULL, "bad.example.com", false, 443, 100, RULE_NO_MATCH, 0);

    /* An empty set, NULL arguments. */
    query(&q, NULL, NULL, "example.com", false, 443);
    assert_int_equal(rules_match(NULL, &q.q, 0, &idx), RULE_NO_MATCH);
    assert_int_equal(rules_match(&rs, NULL, 0, &idx), RULE_NO_MATCH);
    assert_int_equal(rules_match(&rs, &q.q, 0, NULL), RULE_MATCHED);
    rules_free(&rs);
    assert_int_equal(rules_match(&rs, &q.q, 0, &idx), RULE_NO_MATCH);
    assert_int_equal(idx, 7);
}

static void test_needs_addr(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    add(&rs, RULE_ALLOW, NULL, "alice", "example.org, 10.0.0.0/8", NULL); /* 0 */
    add(&rs, RULE_DENY, NULL, NULL, "*.example.org", NULL);               /* 1: names only */
    add(&rs, RULE_DENY, NULL, NULL, "192.168.0.0/16", "22");              /* 2 */
    add(&rs, RULE_ALLOW, NULL, NULL, "*", NULL);                          /* 3 */

    /* A name pattern matched: decided now. */
    M(&rs, NULL, "alice", "example.org", false, 443, 0);
    /* No name matched, but rule 0 has a CIDR: wait for the address, do not look further. */
    expect(&rs, NULL, "alice", "intranet.test", false, 443, 0, RULE_NEEDS_ADDR, 0);
    expect(&rs, NULL, "alice", "www.example.org", false, 443, 0, RULE_NEEDS_ADDR, 0);
    /* Rule 0's other conditions fail (user): it is skipped; rule 1 matches by name. */
    M(&rs, NULL, "bob", "www.example.org", false, 443, 1);
    M(&rs, NULL, NULL, "www.example.org", false, 443, 1);
    /* Rule 1 has no CIDR, so a name it does not match just moves on; rule 2 needs the address
     * only for port 22. */
    expect(&rs, NULL, "bob", "intranet.test", false, 22, 0, RULE_NEEDS_ADDR, 2);
    M(&rs, NULL, "bob", "intranet.test", false, 443, 3);
    /* Continuing after NEEDS_ADDR (no address matched rule 0). */
    expect(&rs, NULL, "alice", "intranet.test", false, 22, 1, RULE_NEEDS_ADDR, 2);
    expect(&rs, NULL, "alice", "intranet.test", false, 22, 3, RULE_MATCHED, 3);
    /* An IP literal is matched against the CIDRs at once: never NEEDS_ADDR. */
    M(&rs, NULL, "alice", "10.9.9.9", true, 443, 0);
    M(&rs, NULL, "alice", "192.168.1.1", true, 22, 2);
    M(&rs, NULL, "alice", "172.16.0.1", true, 22, 3);
    rules_free(&rs);

    /* Without a catch-all, a name nothing can match is NO_MATCH. */
    add(&rs, RULE_DENY, NULL, NULL, "*.example.org", NULL);
    add(&rs, RULE_DENY, NULL, "alice", "10.0.0.0/8", NULL);
    NONE(&rs, NULL, "bob", "intranet.test", false, 443);
    NONE(&rs, NULL, NULL, "intranet.test", false, 443);
    expect(&rs, NULL, "alice", "intranet.test", false, 443, 0, RULE_NEEDS_ADDR, 1);
    rules_free(&rs);
}

static void test_match_addr(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    add(&rs, RULE_DENY, "10.0.0.0/8", NULL, "192.168.1.0/24", NULL); /* 0 */
    add(&rs, RULE_ALLOW, NULL, NULL, "*.corp.test", "443");          /* 1 */
    add(&rs, RULE_ALLOW, NULL, "alice", "172.16.0.0/12, ::1", NULL); /* 2 */
    add(&rs, RULE_DENY, NULL, NULL, "*", "8443");                    /* 3 */

    /* CIDR against the resolved address, other conditions as in step 1. */
    assert_int_equal(step2(&rs, "10.0.0.1", NULL, "a.test", 443, "192.168.1.5", 0), 0);
    assert_int_equal(step2(&rs, "::ffff:10.0.0.1", NULL, "a.test", 443, "192.168.1.5", 0), 0);
    assert_int_equal(step2(&rs, "11.0.0.1", NULL, "a.test", 443, "192.168.1.5", 0), -1);
    assert_int_equal(step2(&rs, "10.0.0.1", NULL, "a.test", 443, "192.168.2.5", 0), -1);
    /* Name patterns still match the name: rule 1 for any address. */
    assert_int_equal(step2(&rs, "11.0.0.1", NULL, "x.corp.test", 443, "8.8.8.8", 0), 1);
    /* ...unless an earlier rule's CIDR takes the address first. */
    assert_int_equal(step2(&rs, "10.0.0.1", NULL, "x.corp.test", 443, "192.168.1.1", 0), 0);
    assert_int_equal(step2(&rs, "11.0.0.1", NULL, "x.corp.test", 80, "8.8.8.8", 0), -1);
    assert_int_equal(step2(&rs, "11.0.0.1", "alice", "a.test", 80, "172.20.0.1", 0), 2);
    assert_int_equal(step2(&rs, "11.0.0.1", "alice", "a.test", 80, "::1", 0), 2);
    assert_int_equal(step2(&rs, "11.0.0.1", "alice", "a.test", 80, "::ffff:172.20.0.1", 0), 2);
    assert_int_equal(step2(&rs, "11.0.0.1", NULL, "a.test", 80, "172.20.0.1", 0), -1);
    /* "*" matches whatever the address. */
    assert_int_equal(step2(&rs, "11.0.0.1", NULL, "a.test", 8443, "203.0.113.1", 0), 3);
    /* from */
    assert_int_equal(step2(&rs, "10.0.0.1", NULL, "x.corp.test", 443, "192.168.1.1", 1), 1);
    assert_int_equal(step2(&rs, "10.0.0.1", NULL, "x.corp.test", 443, "192.168.1.1", 2), -1);
    assert_int_equal(step2(&rs, "10.0.0.1", NULL, "x.corp.test", 8443, "192.168.1.1", 2), 3);
    assert_int_equal(step2(&rs, "10.0.0.1", NULL, "x.corp.test", 8443, "192.168.1.1", 4), -1);
    rules_free(&rs);
}

/* Steps 1 and 2 together, the way the caller runs them. */
static void test_two_steps(void **state) {
    struct rule_set rs = {NULL, 0};
    struct q q;
    struct sockaddr_storage a;
    size_t idx = 99;

    (void)state;
    add(&rs, RULE_DENY, NULL, NULL, "169.254.169.254", NULL); /* 0 */
    add(&rs, RULE_ALLOW, NULL, NULL, "*.example.com", NULL);  /* 1 */
    query(&q, "192.0.2.1", NULL, "www.example.com", false, 443);
    assert_int_equal(rules_match(&rs, &q.q, 0, &idx), RULE_NEEDS_ADDR);
    assert_int_equal(idx, 0);
    a = ip("169.254.169.254");
    assert_true(rules_match_addr(&rs, &q.q, (const struct sockaddr *)&a, idx, &idx));
    assert_int_equal(idx, 0);
    a = ip("93.184.216.34");
    idx = 0;
    assert_true(rules_match_addr(&rs, &q.q, (const struct sockaddr *)&a, idx, &idx));
    assert_int_equal(idx, 1);
    assert_false(rules_match_addr(&rs, &q.q, NULL, 0, &idx));
    assert_false(rules_match_addr(NULL, &q.q, (const struct sockaddr *)&a, 0, &idx));
    rules_free(&rs);
}

static void test_names_addr(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    add(&rs, RULE_ALLOW, NULL, NULL, "*, example.com, 10.0.0.0/8, ::1, 192.0.2.7", NULL);
    add(&rs, RULE_ALLOW, NULL, NULL, "*, *.example.com", NULL);
    add(&rs, RULE_ALLOW, NULL, NULL, NULL, NULL);
    assert_true(names(&rs.v[0], "10.1.2.3"));
    assert_true(names(&rs.v[0], "::ffff:10.1.2.3"));
    assert_true(names(&rs.v[0], "::1"));
    assert_true(names(&rs.v[0], "192.0.2.7"));
    assert_false(names(&rs.v[0], "192.0.2.8"));
    assert_false(names(&rs.v[0], "127.0.0.1"));
    assert_false(names(&rs.v[0], "169.254.169.254"));
    /* "*" and names are never an exception to deny_private, nor is a rule without hosts. */
    assert_false(names(&rs.v[1], "127.0.0.1"));
    assert_false(names(&rs.v[1], "10.0.0.1"));
    assert_false(names(&rs.v[2], "10.0.0.1"));
    assert_false(rules_names_addr(NULL, NULL));
    assert_false(rules_names_addr(&rs.v[0], NULL));
    rules_free(&rs);
}

static void test_free_safe(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    rules_free(NULL);
    rules_free(&rs);
    add(&rs, RULE_ALLOW, "10.0.0.0/8", "a, b, c", "*.example.com, x.test, ::1/128", "1-2");
    rs.v = realloc(rs.v, 2 * sizeof *rs.v); /* a half-built rule, as the loader leaves one */
    assert_non_null(rs.v);
    memset(&rs.v[1], 0, sizeof rs.v[1]);
    rs.n = 2;
    rules_free(&rs);
    assert_null(rs.v);
    assert_int_equal(rs.n, 0);
    rules_free(&rs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_conditions),
        cmocka_unit_test(test_clients),
        cmocka_unit_test(test_users),
        cmocka_unit_test(test_ports),
        cmocka_unit_test(test_host_names),
        cmocka_unit_test(test_host_any),
        cmocka_unit_test(test_host_cidr_literal),
        cmocka_unit_test(test_all_conditions),
        cmocka_unit_test(test_first_match),
        cmocka_unit_test(test_needs_addr),
        cmocka_unit_test(test_match_addr),
        cmocka_unit_test(test_two_steps),
        cmocka_unit_test(test_names_addr),
        cmocka_unit_test(test_free_safe),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
