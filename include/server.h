/* server: the process-wide state the loop callbacks share. */
#ifndef CONNECTD_SERVER_H
#define CONNECTD_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include <ev.h>

#include "config.h"

struct dns;
struct listener;
struct tunnel;
struct buf;
struct client_table;
struct auth_service;
struct loopguard;
struct admin_conn;

/* One configuration and what is built from it. A tunnel holds the generation it was accepted
 * under until it ends: a reload never changes a tunnel's rules half-way, and an old
 * generation (its config, resolver and credential checker) is freed with its last tunnel. */
struct gen {
    struct config cfg;
    struct dns *dns;
    struct auth_service *auth; /* NULL without [auth] users_file */
    double *parent_down;       /* per [parent NAME]: skipped until this ev_now() (back-off) */
    struct tls_ctx *tls;       /* from [tls]; NULL without a certificate */
    unsigned refs;
};

/* Build a generation from *cfg, which it takes over (*cfg is zeroed). NULL with err filled (and
 * *cfg freed) when the resolver or the credential checker cannot be set up. One reference. */
struct gen *gen_new(struct ev_loop *loop, struct config *cfg, char *err, size_t errlen);
void gen_ref(struct gen *g);
void gen_unref(struct gen *g);

struct server {
    struct ev_loop *loop;
    struct gen *gen;         /* the current configuration: new tunnels take it */
    const char *config_path; /* read again on SIGHUP */
    bool own_listeners;      /* a reload may bind and close listeners (no master, no systemd) */
    bool notify;             /* this process reports to systemd (NOTIFY_SOCKET) */
    unsigned workers;        /* processes sharing [limits] max_connections */
    bool has_master;         /* a worker: the master holds the sockets and counts reloads */
    struct listener **listeners;
    size_t nlisteners;
    int spare_fd;                /* held in reserve so EMFILE can still accept-and-close */
    struct tunnel *live;         /* every open tunnel */
    struct h2conn *h2conns;      /* HTTP/2 client connections (their streams are tunnels in live) */
    unsigned long h2_seq;        /* numbers them for the access log */
    struct h2conn *h2dead;       /* closed, freed by the reaper */
    struct tunnel *dead;         /* closed, freed by reaper once the current callbacks return */
    ev_prepare reaper;           /* runs after a loop iteration's callbacks, before it blocks */
    struct endpoint *read_later; /* TLS sessions holding bytes: read next turn (transport.c) */
    ev_idle read_later_idle;
    unsigned active;     /* tunnels counted against max_connections */
    unsigned tunnels;    /* established tunnels (200 sent) */
    unsigned max_active; /* max_connections, lowered to what the fd limit can carry */
    unsigned refusing;   /* connections only being sent a refusal (503 at the limit) */
    struct buf *pool;    /* free relay buffers, linked through their first bytes */
    size_t npool;
    struct buf *pool_big; /* the same, of BUF_CAP_BIG */
    size_t npool_big;
    int (*pipes)[2]; /* empty pipes kept for the splice path */
    size_t npipes;
    struct client_table *clients; /* NULL unless a per-client limit is set */
    struct loopguard *loopguard;  /* our own listening addresses */
    ev_timer status_timer;        /* STATUS= for systemd */
    ev_timer sweep_timer;
    ev_timer stats_timer; /* publishes this process's figures for the metrics */
    unsigned worker;      /* this process's worker index (0 without a master) */
    bool ready;           /* serving: /healthz says 200 unless unhealthy */
    bool unhealthy;       /* a stop signal arrived: /healthz says 503 from now on */
    bool draining;        /* no longer accepting proxy clients */
    ev_timer grace_timer; /* [timeouts] grace: from the stop signal to the drain */
    ev_timer drain_timer;
    struct admin_conn *admins; /* open admin-listener connections */
    unsigned nadmins;
    struct admin_conn *cursors; /* admin connections walking the live tunnels (GET /tunnels) */
    int peer_fd;                /* workers: where the others ask for our tunnels; -1 */
    ev_io peer_w;
};

/* Stop accepting and refuse handshakes in progress; established tunnels may finish until the
 * shutdown timeout, then the loop ends. */
void server_drain(struct server *srv);
/* Draining and nothing left open (tunnels, HTTP/2 connections): end the loop. */
void server_maybe_done(struct server *srv);

struct server_opts {
    const char *config_path; /* for SIGHUP */
    struct config *cfg;      /* taken over (zeroed) */
    const int *fds;          /* bound listening sockets, taken over */
    size_t nfds;
    unsigned max_connections; /* this process's share */
    unsigned workers;         /* processes sharing max_connections (1 without a master) */
    bool own_listeners;       /* see struct server */
    bool notify;              /* see struct server */
    bool has_master;          /* see struct server */
    unsigned worker;          /* see struct server */
};

/* Serve until SIGTERM or SIGINT has drained the tunnels (or SIGQUIT: stop accepting and let
 * every tunnel finish, for a worker being replaced). Returns the exit status. */
int server_run(const struct server_opts *o);

#endif
