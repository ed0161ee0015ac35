/* server: one process's event loop: listeners, tunnels, signals, reload, drain. */
#include "server.h"
#include "tls.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "admin.h"
#include "auth_service.h"
#include "clients.h"
#include "container.h"
#include "dns.h"
#include "h2.h"
#include "listener.h"
#include "log.h"
#include "loopguard.h"
#include "stats.h"
#include "transport.h"
#include "tunnel.h"

static void reaper_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
    (void)loop;
    (void)revents;
    struct server *srv = container_of(w, struct server, reaper);
    tunnel_reap(srv);
    h2_reap(srv);
    server_maybe_done(srv);
}

void server_maybe_done(struct server *srv) {
    if (srv->draining && !srv->live && !srv->h2conns)
        ev_break(srv->loop, EVBREAK_ALL);
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
    h2_close_all(srv);
    log_info("shutdown timeout: closed %u tunnels", n);
    if (!srv->live)
        ev_break(loop, EVBREAK_ALL);
}

void server_drain(struct server *srv) {
    if (srv->draining)
        return;
    srv->draining = true;
    srv->unhealthy = true;
    ev_timer_stop(srv->loop, &srv->grace_timer);
    if (srv->notify)
        sd_notify(0, "STOPPING=1");
    listeners_close_proxy(srv); /* the admin listener stays: /healthz says 503 until the end */
    tunnel_refuse_handshakes(srv);
    h2_drain(srv); /* GOAWAY: no new streams; open ones finish */
    log_info("shutting down: %u tunnels open, waiting up to %.0fs", srv->active,
             srv->gen->cfg.timeout_shutdown);
    if (!srv->live && !srv->h2conns) {
        ev_break(srv->loop, EVBREAK_ALL);
        return;
    }
    ev_timer_set(&srv->drain_timer, srv->gen->cfg.timeout_shutdown, 0.);
    ev_timer_start(srv->loop, &srv->drain_timer);
}

/* A worker being replaced (the master got a reload that changed the listen addresses): stop
 * accepting, let every tunnel, handshakes included, run to its end, then exit. */
static void server_retire(struct server *srv) {
    if (srv->draining)
        return;
    srv->draining = true;
    listeners_close(srv, true);
    log_info("retiring: no longer accepting; %u tunnels open will finish", srv->active);
    h2_drain(srv);
    if (!srv->live && !srv->h2conns)
        ev_break(srv->loop, EVBREAK_ALL);
}

static void grace_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    server_drain(container_of(w, struct server, grace_timer));
}

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents) {
    (void)revents;
    struct server *srv = w->data;
    log_info("received %s", strsignal(w->signum));
    if (w->signum == SIGQUIT) {
        server_retire(srv);
        return;
    }
    /* [timeouts] grace: first only tell load balancers (/healthz 503) while still serving, so
     * they stop sending clients before this process stops accepting. A second signal drains at
     * once. */
    double grace = srv->gen->cfg.timeout_grace;
    if (grace > 0 && !srv->unhealthy) {
        srv->unhealthy = true;
        log_info("stopping: /healthz answers 503; still accepting for %.3gs (grace)", grace);
        ev_timer_set(&srv->grace_timer, grace, 0.);
        ev_timer_start(loop, &srv->grace_timer);
        return;
    }
    server_drain(srv);
}

static void sweep_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    struct server *srv = container_of(w, struct server, sweep_timer);
    if (srv->clients)
        clients_sweep(srv->clients, ev_now(loop));
}

static void usr1_cb(struct ev_loop *loop, ev_signal *w, int revents) {
    (void)loop;
    (void)revents;
    (void)w;
    if (log_access_reopen() == 0)
        log_info("SIGUSR1: access log reopened");
}

/* STATUS= for `systemctl status`. */
static void status_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    struct server *srv = container_of(w, struct server, status_timer);
    if (srv->notify)
        sd_notifyf(0, "STATUS=%u tunnels open", srv->active);
}

/* Figures that are cheaper read once a second than kept up to date: pools, CPU, memory, fds. */
static void stats_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    admin_publish(container_of(w, struct server, stats_timer));
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
    admin_close_all(srv);
    listeners_close(srv, false);
    h2_close_all(srv); /* none left after a drain; this is for a loop that ended otherwise */
    tunnel_reap(srv);
    h2_reap(srv);
    relay_pool_free(srv);
    clients_free(srv->clients);
    loopguard_free(srv->loopguard);
    gen_unref(srv->gen);
    srv->gen = NULL;
}

/* Per-client limits follow the current configuration; the table is made when first needed. */
static int apply_client_limits(struct server *srv, const struct config *cfg) {
    if (!srv->clients && (cfg->per_client_connections || cfg->per_client_rate)) {
        srv->clients = clients_new(cfg->per_client_connections, cfg->per_client_rate);
        if (!srv->clients)
            return -1;
        ev_timer_set(&srv->sweep_timer, 10., 10.);
        ev_timer_start(srv->loop, &srv->sweep_timer);
    } else if (srv->clients) {
        clients_set_limits(srv->clients, cfg->per_client_connections, cfg->per_client_rate);
    }
    return 0;
}

static int rebuild_loopguard(struct server *srv, char *err, size_t errlen) {
    int fds[256];
    size_t n = listeners_fds(srv, fds, sizeof fds / sizeof fds[0]);
    struct loopguard *g = loopguard_new(fds, n, err, errlen);
    if (!g)
        return -1;
    loopguard_free(srv->loopguard);
    srv->loopguard = g;
    return 0;
}

/* SIGHUP: read the configuration again. All or nothing: until every part of the new one is in
 * place (config, policy and users files, listeners, resolver), the old one keeps serving. */
static void reload(struct server *srv) {
    char err[CONFIG_ERR_MAX];
    struct config nc;
    if (srv->notify)
        sd_notify(0, "RELOADING=1");
    bool ok = false;
    if (config_load_file(srv->config_path, &nc, err, sizeof err) != 0) {
        log_error("reload: %s; still serving the previous configuration", err);
        goto done;
    }
    if (tls_keep_key(&nc, &srv->gen->cfg) != 0) {
        config_free(&nc);
        goto done;
    }
    /* Draining, the proxy listeners are closed on purpose: a reload must not open them again. */
    bool relisten = !srv->draining && !listeners_match(srv, &nc);
    if (relisten && !srv->own_listeners) {
        log_warn("reload: [server] listen changed, but the listening sockets are %s; "
                 "keeping them",
                 srv->has_master ? "the master's" : "systemd's");
        relisten = false;
    }
    if (relisten && listeners_update(srv, &nc, false, err, sizeof err) != 0) {
        log_error("reload: %s; still serving the previous configuration", err);
        config_free(&nc);
        goto done;
    }
    if (relisten && rebuild_loopguard(srv, err, sizeof err) != 0)
        log_error("reload: loop guard: %s", err);
    enum log_level level = nc.log_level;
    struct gen *g = gen_new(srv->loop, &nc, err, sizeof err);
    if (!g) {
        log_error("reload: %s; still serving the previous configuration", err);
        goto done;
    }
    const struct config *cfg = &g->cfg;
    /* Cached answers stay valid across a reload, unless they came from other DNS servers. */
    const char *olds = srv->gen->cfg.dns_servers, *news = cfg->dns_servers;
    if (strcmp(olds ? olds : "", news ? news : "") == 0)
        dns_adopt_cache(g->dns, srv->gen->dns);
    else
        log_info("reload: [dns] servers changed: the DNS cache starts empty");
    if (strcmp(cfg->access_log, srv->gen->cfg.access_log) != 0 &&
        log_access_open(cfg->access_log, err, sizeof err) != 0)
        log_error("reload: %s; the access log stays where it was", err);
    if (apply_client_limits(srv, cfg) != 0)
        log_error("reload: out of memory for per-client limits");
    srv->max_active = fit_fd_limit((cfg->max_connections + srv->workers - 1) / srv->workers);
    struct gen *old = srv->gen;
    srv->gen = g;
    gen_unref(old); /* freed with the last tunnel that still uses it */
    log_info("reloaded %s", srv->config_path);
    log_set_level(level); /* after saying so: a quieter level would hide the line */
    ok = true;
done:
    if (!srv->has_master) /* with a master, the master counts reloads */
        stats_reload_result(stats_shm, ok, ev_time());
    if (srv->notify)
        sd_notify(0, "READY=1");
}

static void hup_cb(struct ev_loop *loop, ev_signal *w, int revents) {
    (void)loop;
    (void)revents;
    reload(w->data);
}

int server_run(const struct server_opts *o) {
    char err[CONFIG_ERR_MAX];
    struct server srv;
    int rc = 1;
    memset(&srv, 0, sizeof srv);
    srv.spare_fd = -1;
    srv.peer_fd = -1;
    srv.config_path = o->config_path;
    srv.own_listeners = o->own_listeners;
    srv.notify = o->notify;
    srv.has_master = o->has_master;
    srv.worker = o->worker;
    if (!stats_shm) { /* no master made the shared counters: this process's own */
        struct stats_shm *shm = stats_create(1);
        if (shm) {
            stats_slot_start(shm, 0, 0, getpid());
            stats_attach(shm, 0);
        } else {
            log_warn("metrics: cannot map the counters (%s); they stay at zero", strerror(errno));
        }
    }
    srv.workers = o->workers ? o->workers : 1;
    srv.loop = ev_default_loop(EVFLAG_AUTO);
    if (!srv.loop) {
        log_error("cannot initialise the event loop");
        config_free(o->cfg);
        return 1;
    }
    log_attach_loop(srv.loop);
    ev_prepare_init(&srv.reaper, reaper_cb);
    tp_later_init(&srv);
    ev_init(&srv.drain_timer, drain_timeout_cb);
    ev_init(&srv.sweep_timer, sweep_cb);
    ev_timer_init(&srv.status_timer, status_cb, 0., 2.);
    ev_timer_init(&srv.stats_timer, stats_cb, 0., 1.);
    ev_init(&srv.grace_timer, grace_cb);

    srv.gen = gen_new(srv.loop, o->cfg, err, sizeof err);
    if (!srv.gen)
        goto fail;
    srv.max_active = fit_fd_limit(o->max_connections);
    if (apply_client_limits(&srv, &srv.gen->cfg) != 0) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    if (listeners_start(&srv, o->fds, o->nfds, err, sizeof err) == -1)
        goto fail;
    if (rebuild_loopguard(&srv, err, sizeof err) != 0)
        goto fail;
    if (srv.has_master && admin_peer_listen(&srv) != 0)
        log_warn("admin: cannot listen for the other workers (%s): /tunnels on them will not "
                 "list this worker's tunnels",
                 strerror(errno));

    ev_signal sigterm, sigint, sigquit, sighup, sigusr1;
    ev_signal_init(&sigterm, stop_cb, SIGTERM);
    ev_signal_init(&sigint, stop_cb, SIGINT);
    ev_signal_init(&sigquit, stop_cb, SIGQUIT);
    ev_signal_init(&sighup, hup_cb, SIGHUP);
    ev_signal_init(&sigusr1, usr1_cb, SIGUSR1);
    sigterm.data = sigint.data = sigquit.data = sighup.data = &srv;
    ev_signal_start(srv.loop, &sigterm);
    ev_signal_start(srv.loop, &sigint);
    ev_signal_start(srv.loop, &sigquit);
    ev_signal_start(srv.loop, &sighup);
    ev_signal_start(srv.loop, &sigusr1);
    ev_timer_again(srv.loop, &srv.status_timer);
    ev_timer_again(srv.loop, &srv.stats_timer);
    admin_publish(&srv);
    sigset_t held;
    sigemptyset(&held);
    sigaddset(&held, SIGTERM);
    sigaddset(&held, SIGINT);
    sigaddset(&held, SIGQUIT);
    sigaddset(&held, SIGHUP);
    sigaddset(&held, SIGUSR1);
    sigprocmask(SIG_UNBLOCK, &held, NULL); /* main held them until now */
    log_info("ready (max_connections %u%s)", srv.max_active,
             srv.gen->auth ? ", proxy authentication on" : "");
    if (srv.notify)
        sd_notify(0, "READY=1\nSTATUS=0 tunnels open");
    srv.ready = true;

    ev_run(srv.loop, 0);

    log_info("stopped");
    ev_timer_stop(srv.loop, &srv.status_timer);
    ev_timer_stop(srv.loop, &srv.stats_timer);
    ev_signal_stop(srv.loop, &sigterm);
    ev_signal_stop(srv.loop, &sigint);
    ev_signal_stop(srv.loop, &sigquit);
    ev_signal_stop(srv.loop, &sighup);
    ev_signal_stop(srv.loop, &sigusr1);
    rc = 0;
    goto done;
fail:
    log_error("%s", err);
    if (srv.notify)
        sd_notifyf(0, "STATUS=failed to start: %s", err);
done:
    ev_timer_stop(srv.loop, &srv.drain_timer);
    ev_timer_stop(srv.loop, &srv.grace_timer);
    ev_timer_stop(srv.loop, &srv.sweep_timer);
    server_free(&srv);
    ev_loop_destroy(srv.loop);
    return rc;
}
