/* policy: who may use the proxy and where it may tunnel. Pure: no syscalls, no ev.h.
 *
 * Decisions come in two steps because names are checked before resolution and addresses after:
 *   1. policy_check_target(): port allowlist, then host name / IP literal against deny_hosts and
 *      allow_hosts.
 *   2. policy_check_addr(): every address about to be dialed, against CIDR entries of deny_hosts
 *      and allow_hosts and the private-destination rule. */
#ifndef CONNECTD_POLICY_H
#define CONNECTD_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "addr.h"

struct port_range {
    uint16_t lo, hi; /* inclusive */
};

struct port_list {
    struct port_range *v;
    size_t n;
};

enum host_pattern_kind {
    HOST_PAT_ANY = 1, /* "*" */
    HOST_PAT_EXACT,   /* "example.com": that name only */
    HOST_PAT_SUFFIX,  /* "*.example.com": any name below example.com, not example.com itself */
    HOST_PAT_CIDR,    /* "10.0.0.0/8", "192.0.2.1", "::1", "2001:db8::/32" */
};

struct host_pattern {
    enum host_pattern_kind kind;
    char *name;       /* EXACT: the name; SUFFIX: ".example.com" (leading dot kept); lowercase */
    struct cidr cidr; /* CIDR */
};

struct host_list {
    struct host_pattern *v;
    size_t n;
};

struct cidr_list {
    struct cidr *v;
    size_t n;
};

struct access_config {
    struct port_list allow_ports;
    struct host_list allow_hosts;
    struct host_list deny_hosts;
    struct cidr_list allow_clients;
    bool deny_private;
};

/* List parsers for comma-separated config values ("443, 8443, 10000-10100"; "*, *.example.com,
 * 10.0.0.0/8"; "127.0.0.0/8, ::1"). Whitespace around items is ignored; empty items, duplicates
 * are fine, bad items are errors. An empty string gives an empty list. Return 0, or -1 with a
 * message naming the bad item in err. Names are stored lowercased, trailing dot removed. */
int policy_parse_ports(const char *s, struct port_list *out, char *err, size_t errlen);
int policy_parse_hosts(const char *s, struct host_list *out, char *err, size_t errlen);
int policy_parse_cidrs(const char *s, struct cidr_list *out, char *err, size_t errlen);
void policy_free_ports(struct port_list *l);
void policy_free_hosts(struct host_list *l);
void policy_free_cidrs(struct cidr_list *l);
void policy_free_access(struct access_config *a);

/* True when sa is in one of l's networks (IPv4-mapped matched as IPv4). */
bool policy_cidrs_contain(const struct cidr_list *l, const struct sockaddr *sa);

/* True when the client address may use the proxy (allow_clients; IPv4-mapped matched as IPv4). */
bool policy_client_allowed(const struct access_config *a, const struct sockaddr *client);

enum policy_target {
    POLICY_TARGET_ALLOW = 1,  /* a name or IP pattern in allow_hosts matched */
    POLICY_TARGET_CHECK_ADDR, /* no name pattern matched, but allow_hosts has CIDR entries that
                                 a resolved address may match: decide per address */
    POLICY_TARGET_DENY_PORT,  /* port not in allow_ports */
    POLICY_TARGET_DENY_HOST,  /* deny_hosts matched, or nothing in allow_hosts can match */
};

/* Step 1. host is already normalised (lowercase, no trailing dot); is_ip tells whether it is an
 * IP literal (then CIDR patterns are matched against it here, and name patterns other than "*"
 * never match it). deny_hosts wins over allow_hosts. */
enum policy_target policy_check_target(const struct access_config *a, const char *host, bool is_ip,
                                       uint16_t port);

/* True when an item of l matches a step-1 target the way policy_check_target() matches it: a
 * normalised name, or an IP literal (is_ip) whose parsed address is ip (NULL: only "*" can match
 * it). Shared with rules.c so that YAML rules and proxy.ini match hosts alike. */
bool policy_hosts_match(const struct host_list *l, const char *host, bool is_ip,
                        const struct sockaddr *ip);

/* An IP literal target ("192.0.2.1", "::1", also "[::1]") into ss (port 0). False when host is
 * not one. */
bool policy_target_ip(const char *host, struct sockaddr_storage *ss);

enum policy_addr {
    POLICY_ADDR_ALLOW = 1,
    POLICY_ADDR_DENY_HOST, /* a deny_hosts CIDR matched, or (after CHECK_ADDR) no allow CIDR did */
    POLICY_ADDR_PRIVATE,   /* reserved/private class and deny_private, with no allow_hosts
                              address/CIDR entry covering it: *cls names the class */
};

/* Step 2, for each address about to be dialed. name_allowed is true when step 1 answered
 * POLICY_TARGET_ALLOW. An explicit address or CIDR entry in allow_hosts (not "*") is the only
 * exception to deny_private. */
enum policy_addr policy_check_addr(const struct access_config *a, const struct sockaddr *sa,
                                   bool name_allowed, const char **cls);

#endif
