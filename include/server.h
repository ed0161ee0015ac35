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

struct server {
    struct ev_loop *loop;
    const struct config *cfg;
    struct dns *dns;
    struct listener *listeners;
    size_t nlisteners;
    int spare_fd;        /* held in reserve so EMFILE can still accept-and-close */
    struct tunnel *live; /* every open tunnel */
    struct tunnel *dead; /* closed, freed by reaper once the current callbacks return */
    ev_prepare reaper;   /* runs after a loop iteration's callbacks, before it blocks */
    unsigned active;     /* tunnels counted against max_connections */
    unsigned max_active; /* max_connections, lowered to what the fd limit can carry */
    unsigned refusing;   /* connections only being sent a refusal (503 at the limit) */
    struct buf *pool;    /* free relay buffers, linked through their first bytes */
    size_t npool;
    int (*pipes)[2]; /* empty pipes kept for the splice path */
    size_t npipes;
    struct client_table *clients; /* NULL unless a per-client limit is set */
    struct auth_service *auth;    /* NULL unless [auth] users_file is set */
    struct loopguard *loopguard;  /* our own listening addresses */
    ev_timer sweep_timer;
    bool draining;
    ev_timer drain_timer;
};

/* Stop accepting and refuse handshakes in progress; established tunnels may finish until the
 * shutdown timeout, then the loop ends. */
void server_drain(struct server *srv);

/* Serve on already bound listening sockets (one per [server] listen address) until SIGTERM or
 * SIGINT has drained the tunnels. max_connections is this process's share. Returns the exit
 * status. */
int server_run(const struct config *cfg, const int *listen_fds, unsigned max_connections);

#endif
