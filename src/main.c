/* main: command line, signals, the loop. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <ev.h>

#include "clients.h"
#include "config.h"
#include "dns.h"
#include "listener.h"
#include "log.h"
#include "server.h"
#include "tunnel.h"

#define CONNECTD_VERSION "0.1.0"
#define DEFAULT_CONFIG   "/etc/connectd/proxy.ini"

static void usage(FILE *out) {
    fprintf(out, "usage: connectd [-t] [-c FILE]\n"
                 "  -c FILE  configuration file (default " DEFAULT_CONFIG ")\n"
                 "  -t       check the configuration and exit (0 = valid)\n"
                 "  -V       print the version and exit\n"
                 "  -h       print this help and exit\n");
}

static void reaper_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
    (void)loop;
    (void)revents;
    struct server *srv = (struct server *)((char *)w - offsetof(struct server, reaper));
    tunnel_reap(srv);
    if (srv->draining && !srv->live)
        ev_break(loop, EVBREAK_ALL);
}

static void drain_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)revents;
    struct server *srv = (struct server *)((char *)w - offsetof(struct server, drain_timer));
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
    struct server *srv = (struct server *)((char *)w - offsetof(struct server, sweep_timer));
    clients_sweep(srv->clients, ev_now(loop));
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

static unsigned fit_fd_limit(const struct config *cfg) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
        return cfg->max_connections;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
            log_warn("setrlimit(RLIMIT_NOFILE): %s", strerror(errno));
            if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
                return cfg->max_connections;
        }
    }
    if (rl.rlim_cur == RLIM_INFINITY)
        return cfg->max_connections;
    rlim_t fit = rl.rlim_cur > FD_RESERVE + 2 ? (rl.rlim_cur - FD_RESERVE) / 2 : 1;
    if (fit >= cfg->max_connections)
        return cfg->max_connections;
    log_warn("open-file limit %llu carries only %llu of max_connections = %u tunnels; "
             "serving at most %llu",
             (unsigned long long)rl.rlim_cur, (unsigned long long)fit, cfg->max_connections,
             (unsigned long long)fit);
    return (unsigned)fit;
}

/* If the daemon was started with fd 0, 1 or 2 closed, a socket could take that number and log
 * lines would go to a client: keep them occupied. */
static void reserve_std_fds(void) {
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
            int n = open("/dev/null", O_RDWR);
            if (n > 2)
                close(n);
        }
    }
}

int main(int argc, char **argv) {
    const char *path = DEFAULT_CONFIG;
    bool check_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:thV")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check_only = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("connectd %s\n", CONNECTD_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    reserve_std_fds();
    struct config cfg;
    char err[CONFIG_ERR_MAX];
    if (config_load_file(path, &cfg, err, sizeof err) == -1) {
        fprintf(stderr, "connectd: %s\n", err);
        return 1;
    }
    if (check_only) {
        fprintf(stderr, "connectd: %s: configuration ok\n", path);
        config_free(&cfg);
        return 0;
    }

    log_init(cfg.log_level);
    if (log_access_open(cfg.access_log, err, sizeof err) == -1) {
        log_error("%s", err);
        config_free(&cfg);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    struct server srv;
    memset(&srv, 0, sizeof srv);
    srv.spare_fd = -1;
    srv.cfg = &cfg;
    srv.max_active = fit_fd_limit(&cfg);
    srv.loop = ev_default_loop(EVFLAG_AUTO);
    if (!srv.loop) {
        log_error("cannot initialise the event loop");
        return 1;
    }
    log_attach_loop(srv.loop);
    ev_prepare_init(&srv.reaper, reaper_cb);

    struct dns_config dc = {
        .servers = cfg.dns_servers, .timeout = cfg.timeout_dns, .cache_size = cfg.dns_cache};
    srv.dns = dns_new(srv.loop, &dc, err, sizeof err);
    if (!srv.dns) {
        log_error("%s", err);
        return 1;
    }
    if (cfg.per_client_connections || cfg.per_client_rate) {
        srv.clients = clients_new(cfg.per_client_connections, cfg.per_client_rate);
        if (!srv.clients) {
            log_error("out of memory");
            return 1;
        }
        ev_timer_init(&srv.sweep_timer, sweep_cb, 10., 10.);
        ev_timer_start(srv.loop, &srv.sweep_timer);
    }
    if (listeners_open(&srv, err, sizeof err) == -1) {
        log_error("%s", err);
        dns_free(srv.dns);
        log_close();
        config_free(&cfg);
        return 1;
    }

    ev_signal sigterm, sigint, sighup;
    ev_signal_init(&sigterm, stop_cb, SIGTERM);
    ev_signal_init(&sigint, stop_cb, SIGINT);
    ev_signal_init(&sighup, hup_cb, SIGHUP);
    sigterm.data = sigint.data = &srv;
    ev_signal_start(srv.loop, &sigterm);
    ev_signal_start(srv.loop, &sigint);
    ev_signal_start(srv.loop, &sighup);
    log_info("connectd %s ready (max_connections %u)", CONNECTD_VERSION, srv.max_active);

    ev_run(srv.loop, 0);

    log_info("stopped");
    ev_timer_stop(srv.loop, &srv.drain_timer);
    ev_timer_stop(srv.loop, &srv.sweep_timer);
    listeners_close(&srv);
    tunnel_reap(&srv);
    dns_free(srv.dns);
    relay_pool_free(&srv);
    clients_free(srv.clients);
    ev_signal_stop(srv.loop, &sigterm);
    ev_signal_stop(srv.loop, &sigint);
    ev_signal_stop(srv.loop, &sighup);
    log_close();
    config_free(&cfg);
    ev_loop_destroy(srv.loop);
    return 0;
}
