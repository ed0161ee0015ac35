/* listener: listening sockets and the accept loop. */
#include "listener.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "addr.h"
#include "admin.h"
#include "container.h"
#include "log.h"
#include "net.h"
#include "stats.h"
#include "tls.h"
#include "tunnel.h"

#define ACCEPT_BATCH   64  /* accepts per wake-up: one busy listener must not starve relays */
#define EMFILE_PAUSE   0.1 /* seconds the listeners rest when the fd table is full */
#define LISTEN_BACKLOG 4096

struct listener {
    struct server *srv;
    int fd;
    ev_io w;
    ev_timer pause;
    struct sockaddr_storage addr; /* as bound (getsockname) */
    socklen_t len;
    bool admin;          /* an [admin] listen address: admin_accept(), not tunnel_accept() */
    bool proxy_protocol; /* clients arrive behind a PROXY header ("proxy-protocol") */
    bool tls;            /* clients speak TLS first ("tls") */
    char name[ADDR_TEXT_MAX];
};

static void resume_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)revents;
    struct listener *l = container_of(w, struct listener, pause);
    if (!l->srv->draining || l->admin)
        ev_io_start(loop, &l->w);
}

/* Out of fds: accept-and-close one waiting client with the spare fd so it gets a prompt
 * reset instead of hanging in the backlog, then rest all listeners briefly. */
/* At most one accept complaint a second: errors come in bursts. */
static bool may_complain(struct server *srv) {
    static ev_tstamp last;
    ev_tstamp now = ev_now(srv->loop);
    if (now - last < 1.0)
        return false;
    last = now;
    return true;
}

static void shed_load(struct server *srv, struct listener *l, int err) {
    STATS_INC(c[C_LIMIT_FDS]);
    if (may_complain(srv))
        log_warn("accept on %s: %s: shedding load (active tunnels %u)", l->name, strerror(err),
                 srv->active);
    if (srv->spare_fd != -1) {
        close(srv->spare_fd);
        int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
        if (fd != -1)
            close(fd);
        srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    for (size_t i = 0; i < srv->nlisteners; i++) {
        struct listener *x = srv->listeners[i];
        if (!x)
            continue;
        ev_io_stop(srv->loop, &x->w);
        ev_timer_stop(srv->loop, &x->pause);
        ev_timer_set(&x->pause, EMFILE_PAUSE, 0.);
        ev_timer_start(srv->loop, &x->pause);
    }
}

/* Accept up to ACCEPT_BATCH clients; true when the queue is empty (or accepting failed). */
static bool accept_some(struct listener *l) {
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        union sockaddr_any peer;
        socklen_t len = sizeof peer;
        int fd = accept4(l->fd, &peer.sa, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            switch (errno) {
            case EINTR:
            case ECONNABORTED:
            case EPROTO:
                continue;
            case EAGAIN:
#if EAGAIN != EWOULDBLOCK
            case EWOULDBLOCK:
#endif
                return true;
            case EMFILE:
            case ENFILE:
            case ENOBUFS:
            case ENOMEM:
                shed_load(l->srv, l, errno);
                return true;
            default:
                if (may_complain(l->srv))
                    log_error("accept on %s: %s", l->name, strerror(errno));
                return true;
            }
        }
        if (l->admin)
            admin_accept(l->srv, fd, &peer.sa);
        else
            tunnel_accept(l->srv, fd, &peer.sa, l->proxy_protocol, l->tls);
    }
    return false;
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    (void)accept_some(container_of(w, struct listener, w));
}

int listeners_bind(const struct config *cfg, bool reuseport, int *fds, char *err, size_t errlen) {
    for (size_t i = 0; i < cfg->nlisten; i++) {
        const struct listen_addr *la = &cfg->listen[i];
        char name[ADDR_TEXT_MAX], why[128];
        addr_format((const struct sockaddr *)&la->ss, true, name, sizeof name);
        fds[i] = net_listen((const struct sockaddr *)&la->ss, la->len, LISTEN_BACKLOG, reuseport,
                            why, sizeof why);
        if (fds[i] == -1) {
            snprintf(err, errlen, "listen %s: %s", name, why);
            while (i > 0)
                close(fds[--i]);
            return -1;
        }
    }
    return 0;
}

static bool same_addr(const struct listener *l, const struct listen_addr *la);

/* What cfg says about l's address: its role and options (also for sockets from systemd: they
 * are recognised by the address they are bound to). Unknown addresses are plain proxy ones. */
static void apply_options(struct listener *l, const struct config *cfg) {
    l->admin = l->proxy_protocol = l->tls = false;
    for (size_t i = 0; i < cfg->nlisten; i++) {
        if (same_addr(l, &cfg->listen[i])) {
            l->admin = cfg->listen[i].admin;
            l->proxy_protocol = cfg->listen[i].proxy_protocol;
            l->tls = cfg->listen[i].tls;
            return;
        }
    }
}

/* " (admin)", " (tls, proxy-protocol)", ...: what the log says about a listener. A TLS one
 * also says whether the kernel can take over the encryption (kTLS) or OpenSSL does it all. */
static const char *role(const struct listener *l, char *out, size_t outlen) {
    char why[80] = "";
    if (l->admin)
        return " (admin)";
    if (l->tls) {
        bool k = tls_ktls_available(why, sizeof why);
        snprintf(out, outlen, " (tls%s; %s: %s)", l->proxy_protocol ? ", proxy-protocol" : "",
                 k ? "kTLS transmit once the handshake is done" : "TLS in user space, copy relay",
                 why);
        return out;
    }
    return l->proxy_protocol ? " (proxy-protocol)" : "";
}

/* A listener for fd, named and keyed by the address it is really bound to. */
static struct listener *listener_new(struct server *srv, int fd) {
    struct listener *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->srv = srv;
    l->fd = fd;
    l->len = sizeof l->addr;
    if (getsockname(fd, (struct sockaddr *)&l->addr, &l->len) == -1)
        l->len = 0;
    if (l->len)
        addr_format((const struct sockaddr *)&l->addr, true, l->name, sizeof l->name);
    else
        snprintf(l->name, sizeof l->name, "fd %d", fd);
    apply_options(l, &srv->gen->cfg);
    ev_io_init(&l->w, accept_cb, fd, EV_READ);
    ev_init(&l->pause, resume_cb);
    return l;
}

/* l must already be out of srv->listeners (shed_load() walks that list). */
static void listener_free(struct server *srv, struct listener *l, bool serve_queued) {
    /* Clients already in the accept queue were promised a connection: take them (to serve, or
     * to answer 503 when stopping) rather than reset them when the socket closes. */
    for (int i = 0; serve_queued && i < 64 && !accept_some(l); i++)
        ;
    ev_io_stop(srv->loop, &l->w);
    ev_timer_stop(srv->loop, &l->pause);
    close(l->fd);
    free(l);
}

int listeners_start(struct server *srv, const int *fds, size_t n, char *err, size_t errlen) {
    srv->listeners = calloc(n ? n : 1, sizeof *srv->listeners);
    if (!srv->listeners) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char why[200];
    for (size_t i = 0; i < n; i++) {
        struct listener *l = listener_new(srv, fds[i]);
        if (!l) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        srv->listeners[i] = l;
        srv->nlisteners = i + 1;
        ev_io_start(srv->loop, &l->w);
        log_info("listening on %s%s", l->name, role(l, why, sizeof why));
    }
    if (srv->spare_fd == -1)
        srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return 0;
}

static bool same_addr(const struct listener *l, const struct listen_addr *la) {
    const struct sockaddr *a = (const struct sockaddr *)&l->addr;
    const struct sockaddr *b = (const struct sockaddr *)&la->ss;
    if (l->len == 0 || a->sa_family != b->sa_family)
        return false;
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *x = (const struct sockaddr_in *)a,
                                 *y = (const struct sockaddr_in *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const struct sockaddr_in6 *)a,
                              *y = (const struct sockaddr_in6 *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr) == 0;
}

static struct listener *find_listener(struct server *srv, const struct listen_addr *la) {
    for (size_t i = 0; i < srv->nlisteners; i++)
        if (srv->listeners[i] && same_addr(srv->listeners[i], la))
            return srv->listeners[i];
    return NULL;
}

bool listeners_match(struct server *srv, const struct config *cfg) {
    if (cfg->nlisten != srv->nlisteners)
        return false;
    for (size_t i = 0; i < cfg->nlisten; i++) {
        const struct listener *l = find_listener(srv, &cfg->listen[i]);
        if (!l || l->admin != cfg->listen[i].admin ||
            l->proxy_protocol != cfg->listen[i].proxy_protocol || l->tls != cfg->listen[i].tls)
            return false;
    }
    return true;
}

int listeners_update(struct server *srv, const struct config *cfg, bool reuseport, char *err,
                     size_t errlen) {
    char what[200];
    struct listener **next = calloc(cfg->nlisten ? cfg->nlisten : 1, sizeof *next);
    bool *fresh = calloc(cfg->nlisten ? cfg->nlisten : 1, sizeof *fresh);
    if (!next || !fresh) {
        free(next);
        free(fresh);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    /* Bind what is new first: if any address fails, nothing has changed. */
    for (size_t i = 0; i < cfg->nlisten; i++) {
        next[i] = find_listener(srv, &cfg->listen[i]);
        if (next[i])
            continue;
        const struct listen_addr *la = &cfg->listen[i];
        char name[ADDR_TEXT_MAX], why[128];
        int fd = net_listen((const struct sockaddr *)&la->ss, la->len, LISTEN_BACKLOG, reuseport,
                            why, sizeof why);
        if (fd == -1 || !(next[i] = listener_new(srv, fd))) {
            addr_format((const struct sockaddr *)&la->ss, true, name, sizeof name);
            snprintf(err, errlen, "listen %s: %s", name, fd == -1 ? why : "out of memory");
            if (fd != -1)
                close(fd);
            for (size_t j = 0; j < i; j++)
                if (fresh[j])
                    listener_free(srv, next[j], false);
            free(next);
            free(fresh);
            return -1;
        }
        fresh[i] = true;
    }
    /* Close what is gone, start what is new. */
    for (size_t i = 0; i < srv->nlisteners; i++) {
        struct listener *l = srv->listeners[i];
        bool kept = false;
        if (!l)
            continue; /* closed already (a drain) */
        for (size_t j = 0; j < cfg->nlisten; j++)
            kept |= next[j] == l;
        if (!kept) {
            log_info("no longer listening on %s", l->name);
            srv->listeners[i] = NULL;
            listener_free(srv, l, true);
        }
    }
    for (size_t i = 0; i < cfg->nlisten; i++) {
        next[i]->admin = cfg->listen[i].admin; /* an address may change its role */
        next[i]->proxy_protocol = cfg->listen[i].proxy_protocol;
        next[i]->tls = cfg->listen[i].tls;
        if (fresh[i]) {
            if (!srv->draining || next[i]->admin)
                ev_io_start(srv->loop, &next[i]->w);
            log_info("listening on %s%s", next[i]->name, role(next[i], what, sizeof what));
        }
    }
    free(srv->listeners);
    free(fresh);
    srv->listeners = next;
    srv->nlisteners = cfg->nlisten;
    return 0;
}

size_t listeners_fds(const struct server *srv, int *fds, size_t max) {
    size_t n = 0;
    for (size_t i = 0; i < srv->nlisteners && n < max; i++)
        if (srv->listeners[i])
            fds[n++] = srv->listeners[i]->fd;
    return n;
}

void listeners_close_proxy(struct server *srv) {
    for (size_t i = 0; i < srv->nlisteners; i++) {
        struct listener *l = srv->listeners[i];
        if (l && !l->admin) {
            srv->listeners[i] = NULL;
            listener_free(srv, l, true);
        }
    }
}

void listeners_close(struct server *srv, bool serve_queued) {
    for (size_t i = 0; i < srv->nlisteners; i++) {
        struct listener *l = srv->listeners[i];
        srv->listeners[i] = NULL;
        if (l)
            listener_free(srv, l, serve_queued);
    }
    free(srv->listeners);
    srv->listeners = NULL;
    srv->nlisteners = 0;
    if (srv->spare_fd != -1) {
        close(srv->spare_fd);
        srv->spare_fd = -1;
    }
}
