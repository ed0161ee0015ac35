/* libFuzzer harness for src/policy_yaml.c (and the policy.c, addr.c and rules.c it relies on):
 * policy_yaml_load_string() on the input as it is (not NUL-terminated, in a buffer of exactly its
 * size), then, when it loads, rules_match(), rules_match_addr() and rules_names_addr() on a fixed
 * set of requests, and rules_free().
 *
 * Checked: an error message starts with "FILE:", is printable ASCII, and the set is empty after it;
 * a loaded set has 1 or more rules, each named, with allow or deny, and every condition it has
 * non-empty; matching names a rule inside the set, and RULE_NEEDS_ADDR only for a name target and a
 * rule whose hosts hold a CIDR. A broken invariant aborts, naming it. */
#include <arpa/inet.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "policy_yaml.h"
#include "rules.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz.yaml"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            broken(__LINE__, #cond);                                                               \
    } while (0)

static void broken(int line, const char *what) {
    fprintf(stderr, "fuzz_policy.c:%d: invariant broken: %s\n", line, what);
    abort();
}

static const char *const clients[] = {"127.0.0.1", "10.1.2.3", "::1", "::ffff:10.20.0.7",
                                      "2001:db8::1"};
static const char *const users[] = {NULL, "alice", "carol", ""};
static const struct {
    const char *host;
    bool is_ip;
} hosts[] = {
    {"example.com", false},
    {"a.example.com", false},
    {"mirror.internal.example.com", false},
    {"127.0.0.1", true},
    {"169.254.169.254", true},
    {"::1", true},
    {"fd00:ec2::254", true},
    {"10.30.0.5", true},
    {"[::1]", true},
    {"not-an-ip", true},
    {"", false},
    {"xn--bcher-kva.example", false},
};
static const uint16_t ports[] = {443, 1, 8443, 65535, 10050};
static const char *const resolved[] = {"10.30.0.9", "93.184.216.34", "::ffff:127.0.0.1",
                                       "2001:db8::5"};

static bool has_cidr(const struct rule *r) {
    for (size_t i = 0; i < r->hosts.n; i++)
        if (r->hosts.v[i].kind == HOST_PAT_CIDR)
            return true;
    return false;
}

static void check_rules(const struct rule_set *rs) {
    CHECK(rs->n >= 1 && rs->v != NULL);
    for (size_t i = 0; i < rs->n; i++) {
        const struct rule *r = &rs->v[i];

        CHECK(r->name != NULL && r->name[0] != '\0');
        CHECK(r->action == RULE_ALLOW || r->action == RULE_DENY);
        CHECK(!r->has_clients || r->clients.n >= 1);
        CHECK(!r->has_users || r->nusers >= 1);
        CHECK(!r->has_hosts || r->hosts.n >= 1);
        CHECK(!r->has_ports || r->ports.n >= 1);
        CHECK(r->has_clients || r->clients.n == 0);
        CHECK(r->has_users || r->nusers == 0);
        CHECK(r->has_hosts || r->hosts.n == 0);
        CHECK(r->has_ports || r->ports.n == 0);
        for (size_t j = 0; j < r->nusers; j++)
            CHECK(r->users[j] != NULL && r->users[j][0] != '\0');
        for (size_t j = 0; j < r->ports.n; j++)
            CHECK(r->ports.v[j].lo >= 1 && r->ports.v[j].lo <= r->ports.v[j].hi);
        for (size_t j = 0; j < r->hosts.n; j++) {
            const struct host_pattern *h = &r->hosts.v[j];

            if (h->kind == HOST_PAT_EXACT || h->kind == HOST_PAT_SUFFIX)
                CHECK(h->name != NULL && h->name[0] != '\0');
        }
    }
}

static void run_queries(const struct rule_set *rs) {
    struct sockaddr_storage client[sizeof clients / sizeof clients[0]];
    struct sockaddr_storage addr[sizeof resolved / sizeof resolved[0]];

    for (size_t i = 0; i < sizeof clients / sizeof clients[0]; i++)
        CHECK(addr_parse_ip(clients[i], 40000, &client[i], NULL) == 0);
    for (size_t i = 0; i < sizeof resolved / sizeof resolved[0]; i++)
        CHECK(addr_parse_ip(resolved[i], 443, &addr[i], NULL) == 0);

    for (size_t ci = 0; ci < sizeof clients / sizeof clients[0]; ci++) {
        for (size_t hi = 0; hi < sizeof hosts / sizeof hosts[0]; hi++) {
            /* Not every combination: a few ports and users per host keep each run short. */
            size_t ui = (ci + hi) % (sizeof users / sizeof users[0]);
            size_t pi = (ci * 3 + hi) % (sizeof ports / sizeof ports[0]);
            struct rule_query q = {
                .client = (const struct sockaddr *)&client[ci],
                .user = users[ui],
                .host = hosts[hi].host,
                .is_ip = hosts[hi].is_ip,
                .port = ports[pi],
            };
            size_t idx = (size_t)-1, from = 0;
            enum rule_match m;

            /* Walk the set as the caller does: resume after a rule that waits for addresses. */
            while ((m = rules_match(rs, &q, from, &idx)) != RULE_NO_MATCH) {
                CHECK(m == RULE_MATCHED || m == RULE_NEEDS_ADDR);
                CHECK(idx >= from && idx < rs->n);
                if (m == RULE_MATCHED)
                    break;
                CHECK(!q.is_ip && has_cidr(&rs->v[idx]));
                for (size_t ai = 0; ai < sizeof resolved / sizeof resolved[0]; ai++) {
                    const struct sockaddr *sa = (const struct sockaddr *)&addr[ai];
                    size_t aidx = (size_t)-1;

                    if (rules_match_addr(rs, &q, sa, idx, &aidx)) {
                        CHECK(aidx >= idx && aidx < rs->n);
                        (void)rules_names_addr(&rs->v[aidx], sa);
                    }
                }
                from = idx + 1;
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size ? size : 1);
    char err[512];
    struct rule_set rs;
    int rc;

    if (!text)
        abort();
    if (size)
        memcpy(text, data, size);
    memset(&rs, 0xa5, sizeof rs);
    memset(err, 0xa5, sizeof err);
    rc = policy_yaml_load_string(text, size, FUZZ_NAME, &rs, err, sizeof err);
    CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        check_rules(&rs);
        run_queries(&rs);
        rules_free(&rs);
        CHECK(rs.v == NULL && rs.n == 0);
    } else {
        CHECK(memchr(err, '\0', sizeof err) != NULL);
        CHECK(strncmp(err, FUZZ_NAME ":", strlen(FUZZ_NAME) + 1) == 0);
        /* Messages end up in logs and on terminals: no control bytes from the input. */
        for (const char *e = err; *e; e++)
            CHECK(*e >= 0x20 && *e <= 0x7e);
        CHECK(rs.v == NULL && rs.n == 0);
    }
    free(text);
    return 0;
}
