/* rules: the ordered allow/deny rules of the YAML policy file ([access] policy), and how a
 * request is matched against them. Pure: no syscalls, no ev.h. policy_yaml.c loads them.
 *
 * A rule matches when every condition it has matches (an absent condition matches anything):
 *   clients  the client address is inside one of the CIDRs
 *   users    the authenticated user name is one of these (never matches without auth)
 *   hosts    a name pattern matches the requested name, or (IP literal target or resolved
 *            address) a CIDR/address entry contains the address; "*" matches everything
 *   ports    the requested port is one of the ports/ranges
 * The first matching rule decides. Names are checked before resolution and addresses after,
 * so matching runs in two steps, like policy.h. */
#ifndef CONNECTD_RULES_H
#define CONNECTD_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "policy.h"

enum rule_action {
    RULE_ALLOW = 1,
    RULE_DENY,
};

struct rule {
    char *name; /* the rule's "name:", or "FILE:LINE" where the rule starts */
    enum rule_action action;
    bool has_clients, has_users, has_hosts, has_ports; /* false: condition absent, matches all */
    struct cidr_list clients;
    char **users;
    size_t nusers;
    struct host_list hosts;
    struct port_list ports;
    /* via: where an allowed request goes: parent names ([parent NAME] in proxy.ini) and
     * "direct", tried in this order (failover). Absent: proxy.ini's [access] via. */
    bool has_via;
    char **via;
    size_t nvia;
    int *via_idx; /* the same, resolved by config.c: a parent's index, or -1 for direct */
};

struct rule_set {
    struct rule *v;
    size_t n;
};

void rules_free(struct rule_set *rs);

/* What is known about a request when rules are evaluated. */
struct rule_query {
    const struct sockaddr *client;
    const char *user; /* authenticated user, NULL when auth is off */
    const char *host; /* normalised: lowercase, no trailing dot; IP literals canonical */
    bool is_ip;       /* host is an IP literal (then CIDR entries are matched against it) */
    uint16_t port;
};

enum rule_match {
    RULE_NO_MATCH = 1, /* no rule from `from` on matches: fall back to proxy.ini's lists */
    RULE_MATCHED,      /* *idx is the deciding rule */
    RULE_NEEDS_ADDR,   /* *idx may match depending on the resolved address (its hosts have
                          CIDR entries, no name pattern matched, every other condition did) */
};

/* Step 1, before resolution: scan rules from index `from`. On RULE_MATCHED or RULE_NEEDS_ADDR,
 * *idx is that rule's index. */
enum rule_match rules_match(const struct rule_set *rs, const struct rule_query *q, size_t from,
                            size_t *idx);

/* Step 2, for one resolved address of a name target: the first rule from `from` that matches
 * when its CIDR host entries are tested against addr (its name patterns against q->host as in
 * step 1). Returns true with *idx set, or false when none matches. */
bool rules_match_addr(const struct rule_set *rs, const struct rule_query *q,
                      const struct sockaddr *addr, size_t from, size_t *idx);

/* True when r's hosts has an address/CIDR entry (not "*") containing addr: the one way a rule
 * lets a private destination through deny_private. */
bool rules_names_addr(const struct rule *r, const struct sockaddr *addr);

#endif
