/* dns: c-ares driven by libev (socket-state callback + one timer), with a TTL-honouring cache.
 *
 * Every result is delivered through the pending list and a zero-delay timer, never from inside
 * dns_lookup() or from inside c-ares' own callback: callers may then start, cancel or free
 * anything in their callback without re-entering c-ares. */
#include "dns.h"

#include <ares.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container.h"
#include "log.h"
#include "stats.h"

#define CACHE_TTL_MAX 3600 /* seconds: a longer TTL is capped so answers get refreshed */

struct dns_sock {
    struct dns *d;
    int fd;
    ev_io w;
};

struct cached_addr {
    uint8_t family;
    uint8_t bytes[16];
};

struct cache_entry {
    struct cache_entry *hnext;         /* hash chain */
    struct cache_entry *older, *newer; /* insertion order, for eviction */
    ev_tstamp expires;
    char *name;
    size_t n;
    struct cached_addr a[];
};

struct dns {
    struct ev_loop *loop;
    ares_channel ch;
    ev_timer timer;   /* c-ares' own retransmit/timeout clock */
    ev_timer deliver; /* zero-delay: hands pending results to callers */
    struct dns_sock **socks;
    size_t nsocks, capsocks;
    struct dns_query *pending_head, *pending_tail;
    /* cache */
    unsigned cache_max, cache_count;
    size_t nbuckets;
    struct cache_entry **buckets;
    struct cache_entry *oldest, *newest;
};

struct dns_query {
    struct dns *d;
    dns_cb cb;
    void *arg;
    uint16_t port;
    bool cancelled;
    enum dns_status status;
    const char *rcode, *detail;
    struct dns_query *next;
    struct dns_answer ans;
    char name[];
};

/* ---- cache ---- */

static uint64_t hash_name(const char *s) {
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Take e out of d's hash chain and age list (it stays allocated). */
static void cache_detach(struct dns *d, struct cache_entry *e) {
    struct cache_entry **pp = &d->buckets[hash_name(e->name) & (d->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->older)
        e->older->newer = e->newer;
    else
        d->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        d->newest = e->older;
    d->cache_count--;
}

static void cache_unlink(struct dns *d, struct cache_entry *e) {
    cache_detach(d, e);
    free(e->name);
    free(e);
}

/* Add e as the newest entry. */
static void cache_insert(struct dns *d, struct cache_entry *e) {
    size_t b = hash_name(e->name) & (d->nbuckets - 1);
    e->hnext = d->buckets[b];
    d->buckets[b] = e;
    e->older = d->newest;
    e->newer = NULL;
    if (d->newest)
        d->newest->newer = e;
    else
        d->oldest = e;
    d->newest = e;
    d->cache_count++;
}

static struct cache_entry *cache_find(struct dns *d, const char *name) {
    if (!d->buckets)
        return NULL;
    struct cache_entry *e = d->buckets[hash_name(name) & (d->nbuckets - 1)];
    for (; e; e = e->hnext) {
        if (strcmp(e->name, name) == 0)
            break;
    }
    if (e && e->expires <= ev_now(d->loop)) {
        cache_unlink(d, e);
        return NULL;
    }
    return e;
}

static void cache_store(struct dns *d, const char *name, const struct ares_addrinfo *ai) {
    if (!d->buckets || !ai)
        return;
    int ttl = CACHE_TTL_MAX;
    size_t n = 0;
    for (const struct ares_addrinfo_node *nd = ai->nodes; nd; nd = nd->ai_next) {
        if (nd->ai_ttl < ttl)
            ttl = nd->ai_ttl;
        n++;
    }
    for (const struct ares_addrinfo_cname *c = ai->cnames; c; c = c->next) {
        if (c->ttl < ttl)
            ttl = c->ttl;
    }
    if (ttl <= 0 || n == 0) /* /etc/hosts answers carry no TTL: not cached */
        return;
    if (n > DNS_MAX_ADDRS)
        n = DNS_MAX_ADDRS;
    struct cache_entry *old = cache_find(d, name);
    if (old)
        cache_unlink(d, old);
    if (d->cache_count >= d->cache_max && d->oldest)
        cache_unlink(d, d->oldest);
    struct cache_entry *e = calloc(1, sizeof *e + n * sizeof e->a[0]);
    if (!e)
        return;
    e->name = strdup(name);
    if (!e->name) {
        free(e);
        return;
    }
    size_t i = 0;
    for (const struct ares_addrinfo_node *nd = ai->nodes; nd && i < n; nd = nd->ai_next) {
        if (nd->ai_family == AF_INET) {
            e->a[i].family = AF_INET;
            memcpy(e->a[i].bytes, &((const struct sockaddr_in *)(void *)nd->ai_addr)->sin_addr, 4);
            i++;
        } else if (nd->ai_family == AF_INET6) {
            e->a[i].family = AF_INET6;
            memcpy(e->a[i].bytes, &((const struct sockaddr_in6 *)(void *)nd->ai_addr)->sin6_addr,
                   16);
            i++;
        }
    }
    e->n = i;
    e->expires = ev_now(d->loop) + ttl;
    cache_insert(d, e);
}

void dns_adopt_cache(struct dns *to, struct dns *from) {
    ev_tstamp now = ev_now(from->loop);
    size_t moved = 0;
    /* Oldest first, so the age order (and so what is evicted first) stays the same. */
    while (from->oldest) {
        struct cache_entry *e = from->oldest;
        cache_detach(from, e);
        if (!to->buckets || e->expires <= now || cache_find(to, e->name)) {
            free(e->name);
            free(e);
            continue;
        }
        if (to->cache_count >= to->cache_max && to->oldest)
            cache_unlink(to, to->oldest);
        cache_insert(to, e);
        moved++;
    }
    log_debug("dns: %zu cached answers carried over", moved);
}

static void answer_add(struct dns_answer *ans, int family, const void *bytes, uint16_t port) {
    if (ans->n >= DNS_MAX_ADDRS)
        return;
    union sockaddr_any *ss = &ans->addr[ans->n];
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *sin = &ss->sin;
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        memcpy(&sin->sin_addr, bytes, 4);
        ans->len[ans->n] = sizeof *sin;
    } else {
        struct sockaddr_in6 *sin6 = &ss->sin6;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        memcpy(&sin6->sin6_addr, bytes, 16);
        ans->len[ans->n] = sizeof *sin6;
    }
    ans->n++;
}

/* ---- c-ares on libev ---- */

static void rearm_timer(struct dns *d) {
    struct timeval tv;
    ev_timer_stop(d->loop, &d->timer);
    if (ares_timeout(d->ch, NULL, &tv)) {
        ev_timer_set(&d->timer, (double)tv.tv_sec + (double)tv.tv_usec / 1e6, 0.);
        ev_timer_start(d->loop, &d->timer);
    }
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    struct dns *d = container_of(w, struct dns, timer);
    ares_process_fd(d->ch, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    rearm_timer(d);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    struct dns_sock *s = container_of(w, struct dns_sock, w);
    struct dns *d = s->d;
    int fd = s->fd;
    /* s may be freed by the socket-state callback inside ares_process_fd. */
    ares_process_fd(d->ch, (revents & EV_READ) ? fd : ARES_SOCKET_BAD,
                    (revents & EV_WRITE) ? fd : ARES_SOCKET_BAD);
    rearm_timer(d);
}

static void sock_state_cb(void *data, ares_socket_t fd, int readable, int writable) {
    struct dns *d = data;
    size_t i;
    for (i = 0; i < d->nsocks; i++) {
        if (d->socks[i]->fd == fd)
            break;
    }
    if (!readable && !writable) {
        if (i < d->nsocks) {
            ev_io_stop(d->loop, &d->socks[i]->w);
            free(d->socks[i]);
            d->socks[i] = d->socks[--d->nsocks];
        }
        return;
    }
    struct dns_sock *s;
    if (i < d->nsocks) {
        s = d->socks[i];
        ev_io_stop(d->loop, &s->w);
    } else {
        if (d->nsocks == d->capsocks) {
            size_t cap = d->capsocks ? d->capsocks * 2 : 8;
            struct dns_sock **v = realloc(d->socks, cap * sizeof *v);
            if (!v) {
                log_error("dns: out of memory watching a resolver socket");
                return;
            }
            d->socks = v;
            d->capsocks = cap;
        }
        s = calloc(1, sizeof *s);
        if (!s) {
            log_error("dns: out of memory watching a resolver socket");
            return;
        }
        s->d = d;
        s->fd = fd;
        ev_init(&s->w, io_cb);
        d->socks[d->nsocks++] = s;
    }
    ev_io_set(&s->w, fd, (readable ? EV_READ : 0) | (writable ? EV_WRITE : 0));
    ev_io_start(d->loop, &s->w);
}

/* ---- queries ---- */

static void pend(struct dns *d, struct dns_query *q) {
    q->next = NULL;
    if (d->pending_tail)
        d->pending_tail->next = q;
    else
        d->pending_head = q;
    d->pending_tail = q;
    if (!ev_is_active(&d->deliver)) {
        ev_timer_set(&d->deliver, 0., 0.);
        ev_timer_start(d->loop, &d->deliver);
    }
}

static void deliver_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    struct dns *d = container_of(w, struct dns, deliver);
    /* Take the list first: callbacks may queue new results for the next round. */
    struct dns_query *q = d->pending_head;
    d->pending_head = d->pending_tail = NULL;
    while (q) {
        struct dns_query *next = q->next;
        if (!q->cancelled)
            q->cb(q->arg, q->status, &q->ans, q->rcode, q->detail);
        free(q);
        q = next;
    }
}

static void map_error(struct dns_query *q, int status) {
    q->status = DNS_ERROR;
    q->rcode = NULL;
    switch (status) {
    case ARES_ENOTFOUND:
        q->rcode = "NXDOMAIN";
        q->detail = "name not found";
        break;
    case ARES_ENODATA:
        q->rcode = "NOERROR";
        q->detail = "no address records";
        break;
    case ARES_ESERVFAIL:
        q->rcode = "SERVFAIL";
        q->detail = "server failure";
        break;
    case ARES_EREFUSED:
        q->rcode = "REFUSED";
        q->detail = "query refused";
        break;
    case ARES_EFORMERR:
        q->rcode = "FORMERR";
        q->detail = "format error";
        break;
    case ARES_ENOTIMP:
        q->rcode = "NOTIMP";
        q->detail = "not implemented by server";
        break;
    case ARES_ETIMEOUT:
        q->status = DNS_TIMEOUT;
        q->detail = "no answer from DNS servers";
        break;
    case ARES_ECONNREFUSED:
        q->detail = "DNS server unreachable";
        break;
    case ARES_EBADNAME:
        q->detail = "bad name";
        break;
    default:
        q->detail = ares_strerror(status);
        break;
    }
}

static void ares_cb(void *arg, int status, int timeouts, struct ares_addrinfo *ai) {
    (void)timeouts;
    struct dns_query *q = arg;
    if (q->cancelled) {
        /* Nobody waits any more, but the answer can still serve the client's retry. */
        if (status == ARES_SUCCESS && ai)
            cache_store(q->d, q->name, ai);
        if (ai)
            ares_freeaddrinfo(ai);
        free(q);
        return;
    }
    if (status == ARES_SUCCESS && ai) {
        for (const struct ares_addrinfo_node *nd = ai->nodes; nd; nd = nd->ai_next) {
            if (nd->ai_family == AF_INET)
                answer_add(&q->ans, AF_INET,
                           &((const struct sockaddr_in *)(void *)nd->ai_addr)->sin_addr, q->port);
            else if (nd->ai_family == AF_INET6)
                answer_add(&q->ans, AF_INET6,
                           &((const struct sockaddr_in6 *)(void *)nd->ai_addr)->sin6_addr, q->port);
        }
        if (q->ans.n > 0) {
            q->status = DNS_OK;
            cache_store(q->d, q->name, ai);
        } else {
            map_error(q, ARES_ENODATA);
        }
    } else {
        map_error(q, status == ARES_SUCCESS ? ARES_ENODATA : status);
    }
    if (ai)
        ares_freeaddrinfo(ai);
    pend(q->d, q);
}

struct dns_query *dns_lookup(struct dns *d, const char *name, uint16_t port, dns_cb cb, void *arg) {
    size_t nlen = strlen(name);
    struct dns_query *q = calloc(1, sizeof *q + nlen + 1);
    if (!q)
        return NULL;
    q->d = d;
    q->cb = cb;
    q->arg = arg;
    q->port = port;
    memcpy(q->name, name, nlen + 1);

    struct cache_entry *e = cache_find(d, name);
    if (e) {
        STATS_INC(c[C_DNS_CACHE_HIT]);
        for (size_t i = 0; i < e->n; i++)
            answer_add(&q->ans, e->a[i].family, e->a[i].bytes, port);
        q->status = DNS_OK;
        pend(d, q);
        return q;
    }
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    STATS_INC(c[C_DNS_CACHE_MISS]);
    ares_getaddrinfo(d->ch, name, NULL, &hints, ares_cb, q);
    rearm_timer(d);
    return q;
}

void dns_cancel(struct dns_query *q) {
    if (q)
        q->cancelled = true;
}

struct dns *dns_new(struct ev_loop *loop, const struct dns_config *cfg, char *err, size_t errlen) {
    static bool lib_ready;
    if (!lib_ready) {
        int rc = ares_library_init(ARES_LIB_INIT_ALL);
        if (rc != ARES_SUCCESS) {
            snprintf(err, errlen, "c-ares init: %s", ares_strerror(rc));
            return NULL;
        }
        lib_ready = true;
    }
    struct dns *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->loop = loop;
    ev_init(&d->timer, timer_cb);
    ev_init(&d->deliver, deliver_cb);

    struct ares_options opts;
    memset(&opts, 0, sizeof opts);
    opts.sock_state_cb = sock_state_cb;
    opts.sock_state_cb_data = d;
    /* c-ares doubles the timeout on each retry round: tries of t/3 and 2t/3 fill the budget
     * with one retransmission. The caller's own timer is the hard limit. */
    int ms = (int)(cfg->timeout * 1000.0 / 3.0);
    opts.timeout = ms < 100 ? 100 : ms;
    opts.tries = 2;
    int rc = ares_init_options(&d->ch, &opts,
                               ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
        free(d);
        return NULL;
    }
    if (cfg->servers && cfg->servers[0]) {
        rc = ares_set_servers_ports_csv(d->ch, cfg->servers);
        if (rc != ARES_SUCCESS) {
            snprintf(err, errlen, "c-ares servers '%s': %s", cfg->servers, ares_strerror(rc));
            ares_destroy(d->ch);
            free(d);
            return NULL;
        }
    }
    if (cfg->cache_size > 0) {
        d->cache_max = cfg->cache_size;
        d->nbuckets = 64;
        while (d->nbuckets < cfg->cache_size && d->nbuckets < (1u << 20))
            d->nbuckets <<= 1;
        d->buckets = calloc(d->nbuckets, sizeof *d->buckets);
        if (!d->buckets) {
            snprintf(err, errlen, "out of memory");
            ares_destroy(d->ch);
            free(d);
            return NULL;
        }
    }
    return d;
}

void dns_free(struct dns *d) {
    if (!d)
        return;
    /* Outstanding queries get ARES_EDESTRUCTION and are freed (or pended) in ares_cb. */
    ares_destroy(d->ch);
    ev_timer_stop(d->loop, &d->timer);
    ev_timer_stop(d->loop, &d->deliver);
    for (struct dns_query *q = d->pending_head; q;) {
        struct dns_query *next = q->next;
        free(q);
        q = next;
    }
    for (size_t i = 0; i < d->nsocks; i++) {
        ev_io_stop(d->loop, &d->socks[i]->w);
        free(d->socks[i]);
    }
    free(d->socks);
    while (d->oldest)
        cache_unlink(d, d->oldest);
    free(d->buckets);
    free(d);
}
