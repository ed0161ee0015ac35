/* server: one process's event loop: listeners, tunnels, resolver, signals, drain. */
#include "server.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "auth_service.h"
#include "clients.h"
#include "container.h"
#include "dns.h"
#include "listener.h"
#include "log.h"
#include "loopguard.h"
#include "tunnel.h"

static void reaper_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
    (void)loop;
    (void)revents;
    struct server *srv = container_of(w, struct server, reaper);
    tunnel_reap(srv);
    if (srv->draining && !srv->live)
        ev_break(loop, EVBREAK_ALL);
}

static void drain_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)revents;
    struct server *srv = container_of(w, struct server, drain_timer);
    unsigned n = 0;
    for (struct tunnel *t = srv->live, *next; t; t = next) {
        next = t->next;
        tunnel_close(t, "shutdown");
        n++;
    }
    log_info("shutdown timeout: closed %u tunnels", n);
    if (!srv->live)
        ev_break(loop, EVBREAK_ALL);
}

void server_drain(struct server *srv) {
    if (srv->draining)
        return;
    srv->draining = true;
    listeners_close(srv);
    tunnel_refuse_handshakes(srv);
    log_info("shutting down: %u tunnels open, waiting up to %.0fs", srv->active,
             srv->cfg->timeout_shutdown);
    if (!srv->live) {
        ev_break(srv->loop, EVBREAK_ALL);
        return;
    }
    ev_timer_init(&srv->drain_timer, drain_timeout_cb, srv->cfg->timeout_shutdown, 0.);
    ev_timer_start(srv->loop, &srv->drain_timer);
}

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents) {
    (void)loop;
    (void)revents;
    struct server *srv = w->data;
    log_info("received %s", strsignal(w->signum));
    server_drain(srv);
}

static void sweep_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    struct server *srv = container_of(w, struct server, sweep_timer);
    clients_sweep(srv->clients, ev_now(loop));
}

static void usr1_cb(struct ev_loop *loop, ev_signal *w, int revents) {
    (void)loop;
    (void)revents;
    (void)w;
    if (log_access_reopen() == 0)
        log_info("SIGUSR1: access log reopened");
}

static void hup_cb(struct ev_loop *loop, ev_signal *w, int revents) {
    (void)loop;
    (void)revents;
    (void)w;
    log_warn("SIGHUP: configuration reload is not supported in this version; ignored");
}

/* Each tunnel needs two fds; raise the soft limit as far as the hard limit allows, and serve
 * no more tunnels than it can carry, so clients beyond it get a clean 503 instead of
 * handshakes failing half-way for want of an upstream fd. */
#define FD_RESERVE 64 /* listeners, resolver, logs, the spare fd */

static unsigned fit_fd_limit(unsigned want) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
        return want;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
            log_warn("setrlimit(RLIMIT_NOFILE): %s", strerror(errno));
            if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
                return want;
        }
    }
    if (rl.rlim_cur == RLIM_INFINITY)
        return want;
    rlim_t fit = rl.rlim_cur > FD_RESERVE + 2 ? (rl.rlim_cur - FD_RESERVE) / 2 : 1;
    if (fit >= want)
        return want;
    log_warn("open-file limit %llu carries only %llu of the %u tunnels this process may serve "
             "(max_connections); serving at most %llu",
             (unsigned long long)rl.rlim_cur, (unsigned long long)fit, want,
             (unsigned long long)fit);
    return (unsigned)fit;
}

/* Free what server_run() set up; each part may be absent. */
static void server_free(struct server *srv) {
    listeners_close(srv);
    tunnel_reap(srv);
    dns_free(srv->dns);
    relay_pool_free(srv);
    clients_free(srv->clients);
    auth_service_free(srv->auth);
    loopguard_free(srv->loopguard);
}

int server_run(const struct config *cfg, const int *listen_fds, unsigned max_connections) {
    char err[CONFIG_ERR_MAX];
    struct server srv;
    int rc = 1;
    memset(&srv, 0, sizeof srv);
    srv.spare_fd = -1;
    srv.cfg = cfg;
    srv.max_active = fit_fd_limit(max_connections);
    srv.loop = ev_default_loop(EVFLAG_AUTO);
    if (!srv.loop) {
        log_error("cannot initialise the event loop");
        return 1;
    }
    log_attach_loop(srv.loop);
    ev_prepare_init(&srv.reaper, reaper_cb);
    ev_init(&srv.drain_timer, drain_timeout_cb);
    ev_init(&srv.sweep_timer, sweep_cb);

    struct dns_config dc = {
        .servers = cfg->dns_servers, .timeout = cfg->timeout_dns, .cache_size = cfg->dns_cache};
    srv.dns = dns_new(srv.loop, &dc, err, sizeof err);
    if (!srv.dns)
        goto fail;
    srv.loopguard = loopguard_new(listen_fds, cfg->nlisten, err, sizeof err);
    if (!srv.loopguard)
        goto fail;
    if (cfg->users_file) {
        srv.auth = auth_service_new(srv.loop, &cfg->users, err, sizeof err);
        if (!srv.auth)
            goto fail;
    }
    if (cfg->per_client_connections || cfg->per_client_rate) {
        srv.clients = clients_new(cfg->per_client_connections, cfg->per_client_rate);
        if (!srv.clients) {
            snprintf(err, sizeof err, "out of memory");
            goto fail;
        }
        ev_timer_set(&srv.sweep_timer, 10., 10.);
        ev_timer_start(srv.loop, &srv.sweep_timer);
    }
    if (listeners_start(&srv, listen_fds, err, sizeof err) == -1)
        goto fail;

    ev_signal sigterm, sigint, sighup, sigusr1;
    ev_signal_init(&sigterm, stop_cb, SIGTERM);
    ev_signal_init(&sigint, stop_cb, SIGINT);
    ev_signal_init(&sighup, hup_cb, SIGHUP);
    ev_signal_init(&sigusr1, usr1_cb, SIGUSR1);
    sigterm.data = sigint.data = &srv;
    ev_signal_start(srv.loop, &sigterm);
    ev_signal_start(srv.loop, &sigint);
    ev_signal_start(srv.loop, &sighup);
    ev_signal_start(srv.loop, &sigusr1);
    sigset_t held;
    sigemptyset(&held);
    sigaddset(&held, SIGTERM);
    sigaddset(&held, SIGINT);
    sigaddset(&held, SIGHUP);
    sigaddset(&held, SIGUSR1);
    sigprocmask(SIG_UNBLOCK, &held, NULL); /* main held them until now */
    log_info("ready (max_connections %u%s)", srv.max_active,
             srv.auth ? ", proxy authentication on" : "");

    ev_run(srv.loop, 0);

    log_info("stopped");
    ev_signal_stop(srv.loop, &sigterm);
    ev_signal_stop(srv.loop, &sigint);
    ev_signal_stop(srv.loop, &sighup);
    ev_signal_stop(srv.loop, &sigusr1);
    rc = 0;
    goto done;
fail:
    log_error("%s", err);
done:
    ev_timer_stop(srv.loop, &srv.drain_timer);
    ev_timer_stop(srv.loop, &srv.sweep_timer);
    server_free(&srv);
    ev_loop_destroy(srv.loop);
    return rc;
}
