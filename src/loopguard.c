/* loopguard: is this destination one of our own listening sockets? See loopguard.h. */
#include "loopguard.h"

#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IFADDR_REFRESH 1.0 /* seconds an interface address list is trusted */
#define IFADDR_MAX     256

/* An address reduced to what matters here: family, bytes (IPv4-mapped folded to IPv4), port. */
struct ep {
    int family;
    uint8_t a[16];
    uint16_t port;
};

struct loopguard {
    struct ep *listen;
    size_t nlisten;
    struct ep local[IFADDR_MAX]; /* this host's interface addresses (port unused) */
    size_t nlocal;
    double local_at; /* when local[] was read; < 0 = never */
};

static const uint8_t mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static bool to_ep(const struct sockaddr *sa, struct ep *e) {
    memset(e, 0, sizeof *e);
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        e->family = AF_INET;
        memcpy(e->a, &s4->sin_addr, 4);
        e->port = ntohs(s4->sin_port);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        e->port = ntohs(s6->sin6_port);
        if (memcmp(s6->sin6_addr.s6_addr, mapped_prefix, 12) == 0) {
            e->family = AF_INET;
            memcpy(e->a, s6->sin6_addr.s6_addr + 12, 4);
        } else {
            e->family = AF_INET6;
            memcpy(e->a, s6->sin6_addr.s6_addr, 16);
        }
        return true;
    }
    return false;
}

static size_t alen(int family) {
    return family == AF_INET ? 4 : 16;
}

static bool is_unspecified(const struct ep *e) {
    static const uint8_t zero[16];
    return memcmp(e->a, zero, alen(e->family)) == 0;
}

/* Addresses that always mean "this host": 127.0.0.0/8, ::1, and the unspecified address
 * (connect() to 0.0.0.0 or :: reaches the local host on Linux). */
static bool is_self(const struct ep *e) {
    static const uint8_t v6loop[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    if (is_unspecified(e))
        return true;
    if (e->family == AF_INET)
        return e->a[0] == 127;
    return memcmp(e->a, v6loop, 16) == 0;
}

static void refresh_local(struct loopguard *g, double now) {
    struct ifaddrs *list, *i;

    if (g->local_at >= 0 && now - g->local_at < IFADDR_REFRESH)
        return;
    g->local_at = now;
    if (getifaddrs(&list) == -1)
        return; /* keep the previous list; loopback and exact matches still work */
    g->nlocal = 0;
    for (i = list; i && g->nlocal < IFADDR_MAX; i = i->ifa_next) {
        if (i->ifa_addr && to_ep(i->ifa_addr, &g->local[g->nlocal]))
            g->nlocal++;
    }
    freeifaddrs(list);
}

static bool is_local(struct loopguard *g, const struct ep *e, double now) {
    if (is_self(e))
        return true;
    refresh_local(g, now);
    for (size_t i = 0; i < g->nlocal; i++) {
        if (g->local[i].family == e->family && memcmp(g->local[i].a, e->a, alen(e->family)) == 0)
            return true;
    }
    return false;
}

struct loopguard *loopguard_new(const int *fds, size_t n, char *err, size_t errlen) {
    struct loopguard *g = calloc(1, sizeof *g);

    if (g)
        g->listen = calloc(n ? n : 1, sizeof *g->listen);
    if (!g || !g->listen) {
        snprintf(err, errlen, "out of memory");
        loopguard_free(g);
        return NULL;
    }
    g->local_at = -1;
    for (size_t i = 0; i < n; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;

        if (getsockname(fds[i], (struct sockaddr *)&ss, &len) == -1) {
            snprintf(err, errlen, "getsockname: %s", strerror(errno));
            loopguard_free(g);
            return NULL;
        }
        if (to_ep((struct sockaddr *)&ss, &g->listen[g->nlisten]))
            g->nlisten++;
    }
    return g;
}

void loopguard_free(struct loopguard *g) {
    if (!g)
        return;
    free(g->listen);
    free(g);
}

bool loopguard_hits(struct loopguard *g, const struct sockaddr *sa, double now) {
    struct ep e;

    if (!to_ep(sa, &e))
        return false;
    for (size_t i = 0; i < g->nlisten; i++) {
        const struct ep *l = &g->listen[i];

        if (l->port != e.port || l->family != e.family)
            continue;
        if (memcmp(l->a, e.a, alen(e.family)) == 0 || is_unspecified(&e))
            return true;
        if (is_unspecified(l) && is_local(g, &e, now))
            return true;
    }
    return false;
}
