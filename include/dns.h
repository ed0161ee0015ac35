/* dns: asynchronous name resolution with c-ares on the libev loop, plus a small answer cache
 * that honours TTLs. Callbacks never run inside dns_lookup(): a result known at once (cache hit,
 * /etc/hosts, immediate failure) is delivered on the next loop iteration. */
#ifndef CONNECTD_DNS_H
#define CONNECTD_DNS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "addr.h"

struct ev_loop;
struct dns;
struct dns_query;

#define DNS_MAX_ADDRS 16

struct dns_answer {
    size_t n;
    union sockaddr_any addr[DNS_MAX_ADDRS];
    socklen_t len[DNS_MAX_ADDRS];
};

enum dns_status {
    DNS_OK = 0,
    DNS_ERROR,   /* name does not resolve: rcode says why */
    DNS_TIMEOUT, /* no server answered in time */
};

/* status DNS_OK: ans has n >= 1 addresses with the port set. Otherwise rcode is a DNS RCODE
 * name ("NXDOMAIN", "SERVFAIL", "REFUSED", "NOERROR" for no data) or NULL when there was no
 * answer to take one from; detail is a short static text for logs. */
typedef void (*dns_cb)(void *arg, enum dns_status status, const struct dns_answer *ans,
                       const char *rcode, const char *detail);

struct dns_config {
    const char *servers; /* c-ares CSV "1.2.3.4:53,[::1]:53"; NULL = /etc/resolv.conf */
    double timeout;      /* seconds for the whole lookup */
    unsigned cache_size; /* answers kept; 0 = no cache */
};

struct dns *dns_new(struct ev_loop *loop, const struct dns_config *cfg, char *err, size_t errlen);
/* Look up A and AAAA for name; every answer gets port. Returns NULL only when out of memory. */
struct dns_query *dns_lookup(struct dns *d, const char *name, uint16_t port, dns_cb cb, void *arg);
/* The callback will not be called; the query's memory is released when c-ares is done with it. */
void dns_cancel(struct dns_query *q);
void dns_free(struct dns *d);
/* A reload: move from's unexpired cached answers into to (they keep their expiry; beyond to's
 * cache size the oldest go). from's cache is left empty. */
void dns_adopt_cache(struct dns *to, struct dns *from);

#endif
