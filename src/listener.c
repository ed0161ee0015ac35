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
#include "container.h"
#include "log.h"
#include "net.h"
#include "tunnel.h"

#define ACCEPT_BATCH   64  /* accepts per wake-up: one busy listener must not starve relays */
#define EMFILE_PAUSE   0.1 /* seconds the listeners rest when the fd table is full */
#define LISTEN_BACKLOG 4096

struct listener {
    struct server *srv;
    int fd;
    ev_io w;
    ev_timer pause;
    char name[ADDR_TEXT_MAX];
};

static void resume_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)revents;
    struct listener *l = container_of(w, struct listener, pause);
    if (!l->srv->draining)
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
        struct listener *x = &srv->listeners[i];
        ev_io_stop(srv->loop, &x->w);
        ev_timer_stop(srv->loop, &x->pause);
        ev_timer_set(&x->pause, EMFILE_PAUSE, 0.);
        ev_timer_start(srv->loop, &x->pause);
    }
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    struct listener *l = container_of(w, struct listener, w);
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
                return;
            case EMFILE:
            case ENFILE:
            case ENOBUFS:
            case ENOMEM:
                shed_load(l->srv, l, errno);
                return;
            default:
                if (may_complain(l->srv))
                    log_error("accept on %s: %s", l->name, strerror(errno));
                return;
            }
        }
        tunnel_accept(l->srv, fd, &peer.sa);
    }
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

int listeners_start(struct server *srv, const int *fds, char *err, size_t errlen) {
    const struct config *cfg = srv->cfg;
    srv->listeners = calloc(cfg->nlisten, sizeof *srv->listeners);
    if (!srv->listeners) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < cfg->nlisten; i++) {
        struct listener *l = &srv->listeners[i];
        l->srv = srv;
        l->fd = fds[i];
        addr_format((const struct sockaddr *)&cfg->listen[i].ss, true, l->name, sizeof l->name);
        ev_io_init(&l->w, accept_cb, l->fd, EV_READ);
        ev_init(&l->pause, resume_cb);
        ev_io_start(srv->loop, &l->w);
        log_info("listening on %s", l->name);
    }
    srv->nlisteners = cfg->nlisten;
    srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    return 0;
}

void listeners_close(struct server *srv) {
    for (size_t i = 0; i < srv->nlisteners; i++) {
        struct listener *l = &srv->listeners[i];
        ev_io_stop(srv->loop, &l->w);
        ev_timer_stop(srv->loop, &l->pause);
        close(l->fd);
    }
    free(srv->listeners);
    srv->listeners = NULL;
    srv->nlisteners = 0;
    if (srv->spare_fd != -1) {
        close(srv->spare_fd);
        srv->spare_fd = -1;
    }
}
