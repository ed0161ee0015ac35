/* clients: per-address connection counting and rate limiting (token bucket, burst = rate). */
#include "clients.h"

#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 4096 /* power of two */

struct client_entry {
    struct client_entry *next;
    uint8_t key[16]; /* IPv6, or IPv4 as ::ffff:a.b.c.d */
    unsigned conns;
    double tokens;
    double last; /* when tokens was last brought up to date */
};

struct client_table {
    unsigned max_conns, rate;
    size_t count;
    struct client_entry *buckets[NBUCKETS];
};

static void make_key(const struct sockaddr *sa, uint8_t key[16]) {
    memset(key, 0, 16);
    if (sa->sa_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
    }
}

static size_t hash_key(const uint8_t key[16]) {
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29)) & (NBUCKETS - 1);
}

static void refill(const struct client_table *ct, struct client_entry *e, double now) {
    if (ct->rate == 0)
        return;
    if (now > e->last) {
        e->tokens += (now - e->last) * ct->rate;
        if (e->tokens > ct->rate)
            e->tokens = ct->rate;
    }
    e->last = now;
}

void clients_set_limits(struct client_table *ct, unsigned max_conns, unsigned rate) {
    ct->max_conns = max_conns;
    ct->rate = rate;
}

struct client_table *clients_new(unsigned max_conns, unsigned rate) {
    struct client_table *ct = calloc(1, sizeof *ct);
    if (ct) {
        ct->max_conns = max_conns;
        ct->rate = rate;
    }
    return ct;
}

void clients_free(struct client_table *ct) {
    if (!ct)
        return;
    for (size_t i = 0; i < NBUCKETS; i++) {
        struct client_entry *e = ct->buckets[i];
        while (e) {
            struct client_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(ct);
}

enum client_verdict clients_admit(struct client_table *ct, const struct sockaddr *sa, double now,
                                  struct client_entry **entry) {
    uint8_t key[16];
    make_key(sa, key);
    size_t b = hash_key(key);
    struct client_entry *e = ct->buckets[b];
    while (e && memcmp(e->key, key, 16) != 0)
        e = e->next;
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e) {
            *entry = NULL;
            return CLIENT_OK;
        }
        memcpy(e->key, key, 16);
        e->tokens = ct->rate;
        e->last = now;
        e->next = ct->buckets[b];
        ct->buckets[b] = e;
        ct->count++;
    }
    *entry = NULL;
    if (ct->max_conns && e->conns >= ct->max_conns)
        return CLIENT_TOO_MANY;
    refill(ct, e, now);
    if (ct->rate) {
        if (e->tokens < 1.0)
            return CLIENT_TOO_FAST;
        e->tokens -= 1.0;
    }
    e->conns++;
    *entry = e;
    return CLIENT_OK;
}

void clients_release(struct client_table *ct, struct client_entry *e, double now) {
    (void)ct;
    (void)now;
    if (e && e->conns > 0)
        e->conns--;
}

size_t clients_sweep(struct client_table *ct, double now) {
    for (size_t i = 0; i < NBUCKETS; i++) {
        struct client_entry **pp = &ct->buckets[i];
        while (*pp) {
            struct client_entry *e = *pp;
            refill(ct, e, now);
            if (e->conns == 0 && (ct->rate == 0 || e->tokens >= ct->rate)) {
                *pp = e->next;
                free(e);
                ct->count--;
            } else {
                pp = &e->next;
            }
        }
    }
    return ct->count;
}
