/* Unit tests for src/policy_yaml.c: what a good file loads into, the exact FILE:LINE:COLUMN of
 * every kind of error, limits, and the shipped conf/policy.yaml. Run from the repository root
 * (conf/policy.yaml is opened by relative path). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "policy_yaml.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static bool all_zero(const void *p, size_t n) {
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

static void load_ok(const char *text, struct rule_set *rs) {
    char err[512] = "";

    if (policy_yaml_load_string(text, strlen(text), "t.yaml", rs, err, sizeof err) != 0)
        fail_msg("rejected: %s\nfor:\n%s", err, text);
}

/* text must fail with a message starting with prefix ("t.yaml:L:C: ") and holding needle;
 * *rs must be zeroed afterwards. */
static void expect_error(const char *text, size_t len, const char *prefix, const char *needle) {
    struct rule_set rs;
    char err[512] = "";

    memset(&rs, 0xa5, sizeof rs);
    if (policy_yaml_load_string(text, len, "t.yaml", &rs, err, sizeof err) == 0) {
        rules_free(&rs);
        fail_msg("accepted:\n%s", text);
    }
    if (strncmp(err, prefix, strlen(prefix)) != 0)
        fail_msg("expected message starting '%s', got '%s' for:\n%s", prefix, err, text);
    if (!strstr(err, needle))
        fail_msg("expected '%s' in message '%s' for:\n%s", needle, err, text);
    if (!all_zero(&rs, sizeof rs))
        fail_msg("rule set not zeroed after error for:\n%s", text);
}

#define ERR(text, prefix, needle) expect_error((text), strlen(text), (prefix), (needle))

static void cidr_text(const struct cidr *c, char *out, size_t outlen) {
    char a[INET6_ADDRSTRLEN];

    assert_non_null(inet_ntop(c->family, c->bytes, a, sizeof a));
    (void)snprintf(out, outlen, "%s/%u", a, c->prefix);
}

static void assert_cidr(const struct cidr *c, const char *want) {
    char got[64];

    cidr_text(c, got, sizeof got);
    assert_string_equal(got, want);
}

/* ---- good files ---- */

static const char good[] = "# a comment\n"
                           "rules:\n"
                           "  - name: staff.web-1\n"
                           "    clients: [10.0.0.0/8, \"2001:db8::/32\"]\n"
                           "    users: [alice, bob]\n"
                           "    hosts: [\"*.Example.com\", example.com., 192.0.2.0/24, \"::1\"]\n"
                           "    ports: [443, 8443, 10000-10100]\n"
                           "    action: allow\n"
                           "\n"
                           "  - action: deny\n"
                           "    hosts:\n"
                           "      - \"*\"\n"
                           "  - {action: allow, ports: \"80, 8080-8081\", users: \"carol, dave\"}\n"
                           "  - action: deny\n"
                           "    clients: 192.0.2.7\n"
                           "    name: last\n";

static void test_good(void **state) {
    struct rule_set rs = {NULL, 0};
    const struct rule *r;

    (void)state;
    load_ok(good, &rs);
    assert_int_equal(rs.n, 4);

    r = &rs.v[0];
    assert_string_equal(r->name, "staff.web-1");
    assert_int_equal(r->action, RULE_ALLOW);
    assert_true(r->has_clients && r->has_users && r->has_hosts && r->has_ports);
    assert_int_equal(r->clients.n, 2);
    assert_cidr(&r->clients.v[0], "10.0.0.0/8");
    assert_cidr(&r->clients.v[1], "2001:db8::/32");
    assert_int_equal(r->nusers, 2);
    assert_string_equal(r->users[0], "alice");
    assert_string_equal(r->users[1], "bob");
    assert_int_equal(r->hosts.n, 4);
    assert_int_equal(r->hosts.v[0].kind, HOST_PAT_SUFFIX);
    assert_string_equal(r->hosts.v[0].name, ".example.com");
    assert_int_equal(r->hosts.v[1].kind, HOST_PAT_EXACT);
    assert_string_equal(r->hosts.v[1].name, "example.com");
    assert_int_equal(r->hosts.v[2].kind, HOST_PAT_CIDR);
    assert_cidr(&r->hosts.v[2].cidr, "192.0.2.0/24");
    assert_int_equal(r->hosts.v[3].kind, HOST_PAT_CIDR);
    assert_cidr(&r->hosts.v[3].cidr, "::1/128");
    assert_int_equal(r->ports.n, 3);
    assert_int_equal(r->ports.v[0].lo, 443);
    assert_int_equal(r->ports.v[0].hi, 443);
    assert_int_equal(r->ports.v[1].lo, 8443);
    assert_int_equal(r->ports.v[1].hi, 8443);
    assert_int_equal(r->ports.v[2].lo, 10000);
    assert_int_equal(r->ports.v[2].hi, 10100);

    /* Default names are FILE:LINE of the rule's first key. */
    r = &rs.v[1];
    assert_string_equal(r->name, "t.yaml:10");
    assert_int_equal(r->action, RULE_DENY);
    assert_false(r->has_clients || r->has_users || r->has_ports);
    assert_true(r->has_hosts);
    assert_int_equal(r->hosts.n, 1);
    assert_int_equal(r->hosts.v[0].kind, HOST_PAT_ANY);
    assert_int_equal(r->clients.n, 0);
    assert_null(r->users);

    r = &rs.v[2];
    assert_string_equal(r->name, "t.yaml:13");
    assert_int_equal(r->action, RULE_ALLOW);
    assert_false(r->has_clients || r->has_hosts);
    assert_true(r->has_users && r->has_ports);
    assert_int_equal(r->ports.n, 2);
    assert_int_equal(r->ports.v[0].lo, 80);
    assert_int_equal(r->ports.v[1].lo, 8080);
    assert_int_equal(r->ports.v[1].hi, 8081);
    assert_int_equal(r->nusers, 2);
    assert_string_equal(r->users[0], "carol");
    assert_string_equal(r->users[1], "dave");

    r = &rs.v[3];
    assert_string_equal(r->name, "last"); /* name may come last */
    assert_int_equal(r->action, RULE_DENY);
    assert_true(r->has_clients);
    assert_false(r->has_users || r->has_hosts || r->has_ports);
    assert_int_equal(r->clients.n, 1);
    assert_cidr(&r->clients.v[0], "192.0.2.7/32");

    rules_free(&rs);
    assert_null(rs.v);
    assert_int_equal(rs.n, 0);
}

/* The loaded rules behave: a YAML list and a comma-separated string mean the same. */
static void test_list_forms(void **state) {
    struct rule_set a = {NULL, 0}, b = {NULL, 0};

    (void)state;
    load_ok("rules:\n"
            "  - hosts: [a.test, \"*.b.test\", 10.0.0.0/8]\n"
            "    ports:\n"
            "      - 443\n"
            "      - 1000-2000\n"
            "    action: allow\n",
            &a);
    load_ok("rules:\n"
            "  - hosts: \"a.test, *.b.test, 10.0.0.0/8\"\n"
            "    ports: 443, 1000-2000\n"
            "    action: allow\n",
            &b);
    assert_int_equal(a.v[0].hosts.n, 3);
    assert_int_equal(b.v[0].hosts.n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(a.v[0].hosts.v[i].kind, b.v[0].hosts.v[i].kind);
        if (a.v[0].hosts.v[i].name)
            assert_string_equal(a.v[0].hosts.v[i].name, b.v[0].hosts.v[i].name);
    }
    assert_int_equal(a.v[0].ports.n, 2);
    assert_int_equal(b.v[0].ports.n, 2);
    assert_memory_equal(a.v[0].ports.v, b.v[0].ports.v, 2 * sizeof *a.v[0].ports.v);
    assert_int_equal(a.v[0].ports.v[1].lo, 1000);
    assert_int_equal(a.v[0].ports.v[1].hi, 2000);
    rules_free(&a);
    rules_free(&b);
}

/* Quoted "null" is text; YAML details that are allowed (document markers, comments, %YAML). */
static void test_yaml_details(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    load_ok("%YAML 1.1\n"
            "---\n"
            "rules:   # the rules\n"
            "- users: [\"null\", 'x-y_z.1']\n"
            "  hosts: 'null'\n"
            "  action: \"deny\"\n"
            "...\n",
            &rs);
    assert_int_equal(rs.n, 1);
    assert_string_equal(rs.v[0].name, "t.yaml:4");
    assert_string_equal(rs.v[0].users[0], "null");
    assert_string_equal(rs.v[0].users[1], "x-y_z.1");
    assert_int_equal(rs.v[0].hosts.v[0].kind, HOST_PAT_EXACT);
    assert_string_equal(rs.v[0].hosts.v[0].name, "null");
    assert_int_equal(rs.v[0].action, RULE_DENY);
    rules_free(&rs);

    /* Names of 64 bytes and users of 64 bytes are fine. */
    load_ok("rules:\n"
            "  - name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
            "    users: [uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu]\n"
            "    action: allow\n",
            &rs);
    assert_int_equal(strlen(rs.v[0].name), 64);
    assert_int_equal(strlen(rs.v[0].users[0]), 64);
    rules_free(&rs);
}

/* ---- errors: one per kind, with the exact position ---- */

static void test_errors_structure(void **state) {
    (void)state;
    ERR("", "t.yaml:1:1: ", "no rules");
    ERR("# nothing here\n", "t.yaml:2:1: ", "no rules");
    ERR("---\n", "t.yaml:2:1: ", "no rules");
    ERR("rules: []\n", "t.yaml:1:8: ", "no rules");
    ERR("rules:\n", "t.yaml:1:7: ", "no rules");
    ERR("{}\n", "t.yaml:1:1: ", "no rules");
    ERR("- action: allow\n", "t.yaml:1:1: ", "expected a mapping with the key 'rules'");
    ERR("just text\n", "t.yaml:1:1: ", "expected a mapping with the key 'rules'");
    ERR("rules:\n  - action: allow\npolicy: x\n", "t.yaml:3:1: ", "unknown top-level key 'policy'");
    ERR("rules:\n  - action: allow\nrules:\n  - action: deny\n",
        "t.yaml:3:1: ", "duplicate key 'rules'");
    ERR("rules: {action: allow}\n", "t.yaml:1:8: ", "rules: expected a list of rules");
    ERR("rules:\n  - action: allow\n  - deny\n",
        "t.yaml:3:5: ", "rules: expected a rule (a mapping with action:), found a single value");
    ERR("rules:\n  - [action, allow]\n", "t.yaml:2:5: ", "rules: expected a rule");
    ERR("rules:\n  - action: allow\n---\nrules:\n  - action: deny\n",
        "t.yaml:3:1: ", "more than one YAML document");
}

static void test_errors_rule_keys(void **state) {
    (void)state;
    ERR("rules:\n  - action: allow\n    host: example.com\n",
        "t.yaml:3:5: ", "unknown key 'host' in rule");
    ERR("rules:\n  - hosts: a.test\n    action: allow\n    hosts: b.test\n",
        "t.yaml:4:5: ", "duplicate key 'hosts' in rule");
    ERR("rules:\n  - name: a\n    action: allow\n    action: deny\n",
        "t.yaml:4:5: ", "duplicate key 'action' in rule");
    /* A missing action points at the rule. */
    ERR("rules:\n  - action: allow\n  - name: x\n    hosts: a.test\n",
        "t.yaml:3:5: ", "rule has no action");
    ERR("rules:\n  - {}\n", "t.yaml:2:5: ", "rule has no action");
    ERR("rules:\n  - ? [a]\n    : b\n", "t.yaml:2:7: ", "expected a key");
}

static void test_errors_values(void **state) {
    (void)state;
    ERR("rules:\n  - action: permit\n", "t.yaml:2:13: ", "action: bad value 'permit'");
    ERR("rules:\n  - action: Allow\n", "t.yaml:2:13: ", "action: bad value 'Allow'");
    ERR("rules:\n  - action:\n", "t.yaml:2:12: ", "action: expected allow or deny");
    ERR("rules:\n  - action: [allow]\n",
        "t.yaml:2:13: ", "action: expected allow or deny, found a list");
    ERR("rules:\n  - action: allow\n    name: {a: b}\n",
        "t.yaml:3:11: ", "name: expected a single value, found a mapping");
    ERR("rules:\n  - action: allow\n    hosts: {a: b}\n",
        "t.yaml:3:12: ", "hosts: expected a list or a single value, found a mapping");
    ERR("rules:\n  - action: allow\n    hosts: [[a.test]]\n",
        "t.yaml:3:13: ", "hosts: nested lists are not supported");
    ERR("rules:\n  - action: allow\n    ports:\n      - - 443\n",
        "t.yaml:4:9: ", "ports: nested lists are not supported");
    ERR("rules:\n  - action: allow\n    users: [{a: b}]\n",
        "t.yaml:3:13: ", "users: expected a list entry, found a mapping");
    /* Empty lists and values: leave the key out instead. */
    ERR("rules:\n  - action: allow\n    hosts: []\n",
        "t.yaml:3:12: ", "hosts: empty list; omit the key to match anything");
    ERR("rules:\n  - action: allow\n    ports:\n",
        "t.yaml:3:11: ", "ports: no value; omit the key");
    ERR("rules:\n  - action: allow\n    clients: ~\n", "t.yaml:3:14: ", "clients: no value");
    ERR("rules:\n  - action: allow\n    users: \" , \"\n",
        "t.yaml:3:12: ", "users: empty list; omit the key");
    ERR("rules:\n  - action: allow\n    ports: [443, \"\"]\n",
        "t.yaml:3:18: ", "ports: empty list entry");
    ERR("rules:\n  - action: allow\n    hosts:\n      - a.test\n      -\n",
        "t.yaml:5:8: ", "hosts: empty list entry");
    ERR("rules:\n  - action: allow\n    hosts: [a.test, \"b.test, c.test\"]\n",
        "t.yaml:3:21: ", "hosts: 'b.test, c.test' holds a comma");
}

static void test_errors_items(void **state) {
    (void)state;
    ERR("rules:\n  - name: x\n    hosts: [a.test]\n    ports: [443, abc]\n    action: allow\n",
        "t.yaml:4:18: ", "ports: bad port 'abc'");
    ERR("rules:\n  - action: allow\n    ports: 443, 0\n", "t.yaml:3:12: ", "ports: bad port '0'");
    ERR("rules:\n  - action: allow\n    ports: [2000-1000]\n",
        "t.yaml:3:13: ", "ports: bad port range '2000-1000'");
    ERR("rules:\n  - action: allow\n    ports: [70000]\n",
        "t.yaml:3:13: ", "ports: bad port '70000'");
    ERR("rules:\n  - action: allow\n    clients: [10.0.0.1/8]\n",
        "t.yaml:3:15: ", "clients: bad address '10.0.0.1/8'");
    ERR("rules:\n  - action: allow\n    clients: [example.com]\n",
        "t.yaml:3:15: ", "clients: bad address 'example.com'");
    ERR("rules:\n  - action: allow\n    hosts: [\"10.0.0.0/33\"]\n",
        "t.yaml:3:13: ", "hosts: bad address '10.0.0.0/33'");
    ERR("rules:\n  - action: allow\n    hosts: [a..b]\n",
        "t.yaml:3:13: ", "hosts: bad host 'a..b'");
    ERR("rules:\n  - action: allow\n    hosts: \"*.10.0.0.1\"\n",
        "t.yaml:3:12: ", "hosts: bad host '*.10.0.0.1'");
    ERR("rules:\n  - action: allow\n    hosts: [\"exa mple.com\"]\n",
        "t.yaml:3:13: ", "hosts: bad host 'exa mple.com'");
    ERR("rules:\n  - action: allow\n    hosts: [\"b\\u00fccher.de\"]\n",
        "t.yaml:3:13: ", "hosts: non-ASCII character");
    ERR("rules:\n  - action: allow\n    hosts: [\"a\\x1b.test\"]\n",
        "t.yaml:3:13: ", "hosts: control character in 'a?.test'");
    ERR("rules:\n  - action: allow\n    users: [\"a\\0b\"]\n",
        "t.yaml:3:13: ", "users: control character");
    ERR("rules:\n  - action: allow\n    users: [alice, \"bo:b\"]\n",
        "t.yaml:3:20: ", "users: bad user 'bo:b'");
    ERR("rules:\n  - action: allow\n    users: \"alice, b b\"\n",
        "t.yaml:3:12: ", "users: bad user 'b b'");
    ERR("rules:\n  - action: allow\n    users: "
        "[uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu]\n",
        "t.yaml:3:13: ", "longer than 64 bytes");
    ERR("rules:\n  - name: \"a b\"\n    action: allow\n",
        "t.yaml:2:11: ", "name: bad rule name 'a b'");
    ERR("rules:\n  - name: \"\"\n    action: allow\n", "t.yaml:2:11: ", "name: bad rule name ''");
    ERR("rules:\n  - name: a:1\n    action: allow\n", "t.yaml:2:11: ", "name: bad rule name 'a:1'");
    ERR("rules:\n  - name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n"
        "    action: allow\n",
        "t.yaml:2:11: ", "longer than 64 bytes");
    ERR("rules:\n  - name: web\n    action: allow\n  - action: deny\n  - action: deny\n"
        "    name: web\n",
        "t.yaml:6:11: ", "name: duplicate rule name 'web'");
}

static void test_errors_yaml(void **state) {
    (void)state;
    ERR("rules:\n  - &r {action: allow}\n", "t.yaml:2:5: ", "aliases are not supported");
    ERR("rules:\n  - action: &a allow\n  - action: *a\n",
        "t.yaml:2:13: ", "aliases are not supported");
    ERR("rules:\n  - action: allow\n    hosts: *h\n", "t.yaml:3:12: ", "aliases are not supported");
    /* An unquoted *.example.com is YAML alias syntax: a hint says to quote it. */
    ERR("rules:\n  - action: allow\n    hosts: [*.example.com]\n",
        "t.yaml:3:14: ", "quote a value that starts with '*'");
    ERR("rules:\n  - action: !!str allow\n", "t.yaml:2:13: ", "tags are not supported");
    ERR("rules: !custom\n  - action: allow\n", "t.yaml:1:8: ", "tags are not supported");
    ERR("!!map\nrules:\n  - action: allow\n", "t.yaml:1:1: ", "tags are not supported");
    /* A tag is shown like any value: its %-escapes can spell control bytes, which must not
     * reach a log or a terminal (tests/fuzz/fuzz_policy.c checks every message). */
    ERR("rules:\n  - action: !a%01%1Bb allow\n",
        "t.yaml:2:13: ", "tags are not supported (here '!a??b')");
    ERR("rules:\n  - action: !<tag:%C3%A9%0A> allow\n", "t.yaml:2:13: ",
        "tags are not supported (here 'tag:??"
        "?')"); /* split: "??'" is a trigraph */
    /* libyaml's own syntax errors, at its problem mark. */
    ERR("rules:\n  - action: \"allow\n", "t.yaml:3:1: ",
        "found unexpected end of stream (while scanning a quoted scalar at line 2, column 13)");
    ERR("rules:\n\t- action: allow\n", "t.yaml:2:1: ", "found character that cannot start");
    ERR("rules:\n  - action: allow\n   hosts: a.test\n",
        "t.yaml:3:4: ", "YAML: did not find expected '-' indicator");
    ERR("rules: [{action: allow}\n", "t.yaml:2:1: ", "did not find expected ',' or ']'");
    /* Reader errors: a byte position turned into line and column. */
    ERR("rules:\n  - action: allow\n    hosts: a\xff.test\n",
        "t.yaml:3:13: ", "invalid leading UTF-8 octet");
    ERR("rules:\n  - action: al\x01low\n", "t.yaml:2:15: ", "control characters are not allowed");
    expect_error("rules:\n  - action: allow\0\n", 26,
                 "t.yaml:2:18: ", "control characters are not allowed");
}

/* ---- via: where an allowed request goes ---- */

/* text must fail with exactly the message want; *rs must be zeroed afterwards. */
static void expect_exact(const char *text, const char *want) {
    struct rule_set rs;
    char err[512] = "";

    memset(&rs, 0xa5, sizeof rs);
    if (policy_yaml_load_string(text, strlen(text), "t.yaml", &rs, err, sizeof err) == 0) {
        rules_free(&rs);
        fail_msg("accepted:\n%s", text);
    }
    if (strcmp(err, want) != 0)
        fail_msg("expected message\n  '%s'\ngot\n  '%s'\nfor:\n%s", want, err, text);
    if (!all_zero(&rs, sizeof rs))
        fail_msg("rule set not zeroed after error for:\n%s", text);
}

static void assert_via(const struct rule *r, const char *const *want, size_t n) {
    assert_true(r->has_via);
    assert_int_equal(r->nvia, n);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(r->via[i], want[i]);
    assert_null(r->via_idx); /* resolved by config.c against proxy.ini's parents */
}

#define ASSERT_VIA(r, ...)                                                                         \
    do {                                                                                           \
        const char *const want_[] = {__VA_ARGS__};                                                 \
        assert_via((r), want_, N(want_));                                                          \
    } while (0)

/* A list and a comma-separated string mean the same; names are kept as written, in order;
 * whether they exist is config.c's business. */
static void test_via(void **state) {
    struct rule_set rs = {NULL, 0};

    (void)state;
    load_ok("rules:\n"
            "  - name: list\n"
            "    via: [corp, backup-1, direct]\n"
            "    action: allow\n"
            "  - via: \" corp ,backup-1,, direct \"\n"
            "    hosts: [a.test]\n"
            "    action: allow\n"
            "  - via:\n"
            "      - Up_2\n"
            "      - 'direct'\n"
            "    action: allow\n"
            "  - {action: allow, via: direct}\n"
            "  - action: allow\n"
            "    via: abcdefghijklmnopqrstuvwxyz012345\n"
            "  - action: deny\n"
            "  - action: allow\n",
            &rs);
    assert_int_equal(rs.n, 7);
    ASSERT_VIA(&rs.v[0], "corp", "backup-1", "direct");
    ASSERT_VIA(&rs.v[1], "corp", "backup-1", "direct");
    assert_true(rs.v[1].has_hosts);
    ASSERT_VIA(&rs.v[2], "Up_2", "direct");
    ASSERT_VIA(&rs.v[3], "direct");
    ASSERT_VIA(&rs.v[4], "abcdefghijklmnopqrstuvwxyz012345"); /* 32: the longest name */
    for (size_t i = 5; i < 7; i++) {                          /* no via: proxy.ini's applies */
        assert_false(rs.v[i].has_via);
        assert_int_equal(rs.v[i].nvia, 0);
        assert_null(rs.v[i].via);
        assert_null(rs.v[i].via_idx);
    }
    rules_free(&rs);
    assert_null(rs.v);
}

/* Every via message, with its exact text and position. */
static void test_via_errors(void **state) {
    static const struct {
        const char *text, *want;
    } cases[] = {
        /* A deny rule sends nothing anywhere: the rule is pointed at, wherever via is. */
        {"rules:\n  - action: allow\n  - action: deny\n    via: corp\n",
         "t.yaml:3:5: a deny rule has no via: it sends nothing anywhere"},
        {"rules:\n  - via: [direct]\n    action: deny\n",
         "t.yaml:2:5: a deny rule has no via: it sends nothing anywhere"},
        {"rules:\n  - {via: direct, action: deny}\n",
         "t.yaml:2:5: a deny rule has no via: it sends nothing anywhere"},
        /* Names: 1-32 of [A-Za-z0-9_-], or direct. */
        {"rules:\n  - action: allow\n    via: [corp, a.b]\n",
         "t.yaml:3:17: via: bad name 'a.b': a parent's name (letters, digits, '-', '_', at most "
         "32) or direct"},
        {"rules:\n  - action: allow\n    via: corp, a b\n",
         "t.yaml:3:10: via: bad name 'a b': a parent's name (letters, digits, '-', '_', at most "
         "32) or direct"},
        {"rules:\n  - action: allow\n    via: abcdefghijklmnopqrstuvwxyz0123456\n",
         "t.yaml:3:10: via: bad name 'abcdefghijklmnopqrstuvwxyz0123456': a parent's name "
         "(letters, digits, '-', '_', at most 32) or direct"},
        {"rules:\n  - action: allow\n    via: [\"c:orp\"]\n",
         "t.yaml:3:11: via: bad name 'c:orp': a parent's name (letters, digits, '-', '_', at "
         "most 32) or direct"},
        /* Empty lists, entries and values: leave the key out instead. */
        {"rules:\n  - action: allow\n    via: []\n",
         "t.yaml:3:10: via: empty list; omit the key to match anything"},
        {"rules:\n  - action: allow\n    via: \" , \"\n",
         "t.yaml:3:10: via: empty list; omit the key to match anything"},
        {"rules:\n  - action: allow\n    via:\n",
         "t.yaml:3:9: via: no value; omit the key to match anything"},
        {"rules:\n  - action: allow\n    via: ~\n",
         "t.yaml:3:10: via: no value; omit the key to match anything"},
        {"rules:\n  - action: allow\n    via: [corp, \"\"]\n",
         "t.yaml:3:17: via: empty list entry"},
        {"rules:\n  - action: allow\n    via: [corp, null]\n",
         "t.yaml:3:17: via: empty list entry"},
        /* Shapes. */
        {"rules:\n  - action: allow\n    via: [corp, \"a, b\"]\n",
         "t.yaml:3:17: via: 'a, b' holds a comma: write one item per list entry, e.g. [a, b]"},
        {"rules:\n  - action: allow\n    via: {corp: 1}\n",
         "t.yaml:3:10: via: expected a list or a single value, found a mapping"},
        {"rules:\n  - action: allow\n    via: [[corp]]\n",
         "t.yaml:3:11: via: nested lists are not supported"},
        {"rules:\n  - action: allow\n    via: [{corp: 1}]\n",
         "t.yaml:3:11: via: expected a list entry, found a mapping"},
        {"rules:\n  - via: corp\n    action: allow\n    via: direct\n",
         "t.yaml:4:5: duplicate key 'via' in rule"},
        {"rules:\n  - action: allow\n    vias: corp\n",
         "t.yaml:3:5: unknown key 'vias' in rule (expected name, clients, users, hosts, ports, "
         "via, action)"},
        /* Bytes. */
        {"rules:\n  - action: allow\n    via: \"co\\trp\"\n",
         "t.yaml:3:10: via: control character in 'co?rp'"},
        {"rules:\n  - action: allow\n    via: \"b\\u00fccher\"\n",
         "t.yaml:3:10: via: non-ASCII character in 'b??cher' (write names as IDNA A-labels, "
         "xn--...)"},
    };

    (void)state;
    for (size_t i = 0; i < N(cases); i++)
        expect_exact(cases[i].text, cases[i].want);
    /* A name too long for the item buffer is refused too (quoted back cut short). */
    ERR("rules:\n  - action: allow\n    via: "
        "aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeee\n",
        "t.yaml:3:10: via: bad name 'aaaaaaaaaabbbbbbbbbbcccccccccc",
        "': a parent's name (letters, digits, '-', '_', at most 32) or direct");
}

/* ---- limits ---- */

static char *repeat_rules(size_t n, size_t *len) {
    static const char head[] = "rules:\n";
    static const char item[] = "- {action: allow}\n";
    size_t total = sizeof head - 1 + n * (sizeof item - 1);
    char *s = malloc(total + 1);
    char *p = s;

    assert_non_null(s);
    memcpy(p, head, sizeof head - 1);
    p += sizeof head - 1;
    for (size_t i = 0; i < n; i++) {
        memcpy(p, item, sizeof item - 1);
        p += sizeof item - 1;
    }
    *p = '\0';
    *len = total;
    return s;
}

static void test_rule_limit(void **state) {
    struct rule_set rs = {NULL, 0};
    char err[512] = "";
    size_t len;
    char *s;

    (void)state;
    s = repeat_rules(10000, &len);
    assert_int_equal(policy_yaml_load_string(s, len, "t.yaml", &rs, err, sizeof err), 0);
    assert_int_equal(rs.n, 10000);
    assert_string_equal(rs.v[9999].name, "t.yaml:10001");
    rules_free(&rs);
    free(s);

    s = repeat_rules(10001, &len);
    expect_error(s, len, "t.yaml:10002:3: ", "more than 10000 rules");
    free(s);
}

static void test_size_limit(void **state) {
    static const char head[] = "rules:\n  - action: allow\n";
    struct rule_set rs = {NULL, 0};
    char err[512] = "";
    char path[] = "/tmp/test_policy_yaml.XXXXXX";
    char want[64];
    size_t max = 1024 * 1024;
    char *s = malloc(max + 1);
    FILE *f;
    int fd;

    (void)state;
    assert_non_null(s);
    /* Exactly 1 MiB: a rule and a long comment. */
    memset(s, ' ', max);
    memcpy(s, head, sizeof head - 1);
    s[sizeof head - 1] = '#';
    s[max - 1] = '\n';
    s[max] = 'x';
    assert_int_equal(policy_yaml_load_string(s, max, "t.yaml", &rs, err, sizeof err), 0);
    assert_int_equal(rs.n, 1);
    rules_free(&rs);
    expect_error(s, max + 1, "t.yaml: ", "larger than 1048576 bytes");

    /* The same through a file. */
    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(s, 1, max, f), max);
    assert_int_equal(fflush(f), 0);
    assert_int_equal(policy_yaml_load(path, &rs, err, sizeof err), 0);
    assert_int_equal(rs.n, 1);
    rules_free(&rs);
    assert_int_equal(fwrite("\n", 1, 1, f), 1);
    assert_int_equal(fclose(f), 0);
    memset(&rs, 0xa5, sizeof rs);
    assert_int_equal(policy_yaml_load(path, &rs, err, sizeof err), -1);
    assert_true(all_zero(&rs, sizeof rs));
    (void)snprintf(want, sizeof want, "%s: larger than 1048576 bytes", path);
    assert_string_equal(err, want);
    assert_int_equal(unlink(path), 0);
    free(s);
}

/* ---- files ---- */

static void test_file(void **state) {
    struct rule_set rs;
    char err[512] = "";
    char path[] = "/tmp/test_policy_yaml.XXXXXX";
    char want[64];
    FILE *f;
    int fd;

    (void)state;
    memset(&rs, 0xa5, sizeof rs);
    assert_int_equal(policy_yaml_load("/nonexistent/policy.yaml", &rs, err, sizeof err), -1);
    assert_string_equal(err, "/nonexistent/policy.yaml: cannot open: No such file or directory");
    assert_true(all_zero(&rs, sizeof rs));

    /* Default names and messages use the path as given. */
    fd = mkstemp(path);
    assert_true(fd >= 0);
    f = fdopen(fd, "wb");
    assert_non_null(f);
    assert_true(fputs("rules:\n\n  - action: deny\n  - action: maybe\n", f) >= 0);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(policy_yaml_load(path, &rs, err, sizeof err), -1);
    (void)snprintf(want, sizeof want, "%s:4:13: action: bad value 'maybe'", path);
    assert_int_equal(strncmp(err, want, strlen(want)), 0);

    f = fopen(path, "wb");
    assert_non_null(f);
    assert_true(fputs("rules:\n\n  - action: deny\n", f) >= 0);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(policy_yaml_load(path, &rs, err, sizeof err), 0);
    (void)snprintf(want, sizeof want, "%s:3", path);
    assert_string_equal(rs.v[0].name, want);
    rules_free(&rs);
    assert_int_equal(unlink(path), 0);

    /* A directory is not a policy file. */
    assert_int_equal(policy_yaml_load("conf", &rs, err, sizeof err), -1);
    assert_non_null(strstr(err, "conf: cannot read"));
}

/* A tiny error buffer is truncated, not overrun; no buffer at all is fine. */
static void test_error_buffer(void **state) {
    struct rule_set rs = {NULL, 0};
    char err[8];

    (void)state;
    memset(err, 'z', sizeof err);
    assert_int_equal(policy_yaml_load_string("x", 1, "t.yaml", &rs, err, 5), -1);
    assert_string_equal(err, "t.ya");
    assert_int_equal(err[5], 'z');
    assert_int_equal(policy_yaml_load_string("x", 1, "t.yaml", &rs, NULL, 0), -1);
    assert_int_equal(policy_yaml_load_string(NULL, 0, "t.yaml", &rs, NULL, 0), -1);
}

/* The shipped example loads, and decides the way its comments say. */
static void test_shipped_example(void **state) {
    struct rule_set rs = {NULL, 0};
    char err[512] = "";
    struct sockaddr_storage client, addr;
    struct rule_query q;
    size_t idx = 99;

    (void)state;
    if (policy_yaml_load("conf/policy.yaml", &rs, err, sizeof err) != 0)
        fail_msg("conf/policy.yaml: %s", err);
    assert_int_equal(rs.n, 4);
    assert_string_equal(rs.v[0].name, "deny-metadata");
    assert_int_equal(rs.v[0].action, RULE_DENY);
    assert_string_equal(rs.v[1].name, "staff-web");
    assert_int_equal(rs.v[1].action, RULE_ALLOW);
    assert_string_equal(rs.v[2].name, "build-mirror");
    assert_int_equal(rs.v[2].action, RULE_ALLOW);
    assert_string_equal(rs.v[3].name, "contractors-deny");
    assert_int_equal(rs.v[3].action, RULE_DENY);

    assert_int_equal(addr_parse_ip("10.20.1.2", 40000, &client, NULL), 0);
    memset(&q, 0, sizeof q);
    q.client = (const struct sockaddr *)&client;

    /* The metadata address as a literal: denied by rule 0, whoever asks. */
    q.user = "alice";
    q.host = "169.254.169.254";
    q.is_ip = true;
    q.port = 443;
    assert_int_equal(rules_match(&rs, &q, 0, &idx), RULE_MATCHED);
    assert_int_equal(idx, 0);
    /* A name might resolve to it: step 1 waits at rule 0, step 2 decides per address. */
    q.host = "www.example.com";
    q.is_ip = false;
    assert_int_equal(rules_match(&rs, &q, 0, &idx), RULE_NEEDS_ADDR);
    assert_int_equal(idx, 0);
    assert_int_equal(addr_parse_ip("169.254.169.254", 443, &addr, NULL), 0);
    assert_true(rules_match_addr(&rs, &q, (const struct sockaddr *)&addr, 0, &idx));
    assert_int_equal(idx, 0);
    assert_int_equal(addr_parse_ip("93.184.216.34", 443, &addr, NULL), 0);
    assert_true(rules_match_addr(&rs, &q, (const struct sockaddr *)&addr, 0, &idx));
    assert_int_equal(idx, 1);
    assert_int_equal(rules_match(&rs, &q, 1, &idx), RULE_MATCHED);
    assert_int_equal(idx, 1);
    q.port = 80;
    assert_int_equal(rules_match(&rs, &q, 1, &idx), RULE_NO_MATCH);

    /* The build network and its mirror: the CIDR lets the private address through. */
    q.user = NULL;
    q.host = "mirror.internal.example.com";
    q.port = 443;
    assert_int_equal(rules_match(&rs, &q, 1, &idx), RULE_MATCHED);
    assert_int_equal(idx, 2);
    assert_int_equal(addr_parse_ip("10.30.0.5", 443, &addr, NULL), 0);
    assert_true(rules_names_addr(&rs.v[2], (const struct sockaddr *)&addr));
    assert_int_equal(addr_parse_ip("10.31.0.5", 443, &addr, NULL), 0);
    assert_false(rules_names_addr(&rs.v[2], (const struct sockaddr *)&addr));

    /* Contractors: denied anything the rules above do not allow. */
    assert_int_equal(addr_parse_ip("192.0.2.50", 40000, &client, NULL), 0);
    q.user = "dave";
    q.host = "elsewhere.test";
    assert_int_equal(rules_match(&rs, &q, 1, &idx), RULE_MATCHED);
    assert_int_equal(idx, 3);
    rules_free(&rs);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_list_forms),
        cmocka_unit_test(test_yaml_details),
        cmocka_unit_test(test_errors_structure),
        cmocka_unit_test(test_errors_rule_keys),
        cmocka_unit_test(test_errors_values),
        cmocka_unit_test(test_errors_items),
        cmocka_unit_test(test_errors_yaml),
        cmocka_unit_test(test_via),
        cmocka_unit_test(test_via_errors),
        cmocka_unit_test(test_rule_limit),
        cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_file),
        cmocka_unit_test(test_error_buffer),
        cmocka_unit_test(test_shipped_example),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
