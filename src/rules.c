/* rules: match a request against the ordered rules of the YAML policy (rules.h).
 *
 * Host matching reuses policy_hosts_match() so that a rule's hosts mean exactly what the same
 * items mean in proxy.ini's allow_hosts/deny_hosts: names only match names, "*" matches
 * everything, CIDR entries match an IP literal target in step 1 and resolved addresses in
 * step 2. */
#include "rules.h"

#include <stdlib.h>
#include <string.h>

void rules_free(struct rule_set *rs) {
    if (!rs)
        return;
    for (size_t i = 0; i < rs->n; i++) {
        struct rule *r = &rs->v[i];

        free(r->name);
        r->name = NULL;
        policy_free_cidrs(&r->clients);
        for (size_t j = 0; j < r->nusers; j++)
            free(r->users[j]);
        free(r->users);
        r->users = NULL;
        r->nusers = 0;
        for (size_t j = 0; j < r->nvia; j++)
            free(r->via[j]);
        free(r->via);
        free(r->via_idx);
        r->via = NULL;
        r->via_idx = NULL;
        r->nvia = 0;
        policy_free_hosts(&r->hosts);
        policy_free_ports(&r->ports);
    }
    free(rs->v);
    rs->v = NULL;
    rs->n = 0;
}

static bool clients_match(const struct rule *r, const struct sockaddr *client) {
    if (!r->has_clients)
        return true;
    if (!client)
        return false;
    for (size_t i = 0; i < r->clients.n; i++)
        if (cidr_match(&r->clients.v[i], client)) /* IPv4-mapped clients match as IPv4 */
            return true;
    return false;
}

static bool users_match(const struct rule *r, const char *user) {
    if (!r->has_users)
        return true;
    /* Without authentication nobody is any of these users. */
    if (!user)
        return false;
    for (size_t i = 0; i < r->nusers; i++)
        if (strcmp(r->users[i], user) == 0)
            return true;
    return false;
}

static bool ports_match(const struct rule *r, uint16_t port) {
    if (!r->has_ports)
        return true;
    for (size_t i = 0; i < r->ports.n; i++)
        if (port >= r->ports.v[i].lo && port <= r->ports.v[i].hi)
            return true;
    return false;
}

/* Every condition except hosts. */
static bool others_match(const struct rule *r, const struct rule_query *q) {
    return clients_match(r, q->client) && users_match(r, q->user) && ports_match(r, q->port);
}

static bool has_cidr(const struct host_list *l) {
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].kind == HOST_PAT_CIDR)
            return true;
    return false;
}

static bool cidr_contains(const struct host_list *l, const struct sockaddr *addr) {
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].kind == HOST_PAT_CIDR && cidr_match(&l->v[i].cidr, addr))
            return true;
    return false;
}

enum rule_match rules_match(const struct rule_set *rs, const struct rule_query *q, size_t from,
                            size_t *idx) {
    struct sockaddr_storage ss;
    const struct sockaddr *ip = NULL;

    if (!rs || !q || !q->host)
        return RULE_NO_MATCH;
    if (q->is_ip && policy_target_ip(q->host, &ss))
        ip = (const struct sockaddr *)&ss;
    for (size_t i = from; i < rs->n; i++) {
        const struct rule *r = &rs->v[i];

        if (!others_match(r, q))
            continue;
        if (!r->has_hosts || policy_hosts_match(&r->hosts, q->host, q->is_ip, ip)) {
            if (idx)
                *idx = i;
            return RULE_MATCHED;
        }
        /* A name that no name pattern matched may still resolve into one of the CIDRs: the
         * decision waits for the addresses, and later rules must not be consulted first. */
        if (!q->is_ip && has_cidr(&r->hosts)) {
            if (idx)
                *idx = i;
            return RULE_NEEDS_ADDR;
        }
    }
    return RULE_NO_MATCH;
}

bool rules_match_addr(const struct rule_set *rs, const struct rule_query *q,
                      const struct sockaddr *addr, size_t from, size_t *idx) {
    if (!rs || !q || !q->host || !addr)
        return false;
    for (size_t i = from; i < rs->n; i++) {
        const struct rule *r = &rs->v[i];

        if (!others_match(r, q))
            continue;
        /* Name patterns against the name (no parsed ip: CIDR entries never match here, and an
         * IP literal only matches "*"), CIDR entries against this address. */
        if (!r->has_hosts || policy_hosts_match(&r->hosts, q->host, q->is_ip, NULL) ||
            cidr_contains(&r->hosts, addr)) {
            if (idx)
                *idx = i;
            return true;
        }
    }
    return false;
}

bool rules_names_addr(const struct rule *r, const struct sockaddr *addr) {
    return r && addr && r->has_hosts && cidr_contains(&r->hosts, addr);
}
