/* admin: connections to the admin listener ([admin] listen): GET /metrics (Prometheus),
 * /healthz (load balancers) and /tunnels (the live tunnels as JSON). It never tunnels: a proxy
 * client cannot reach it (the loop guard refuses CONNECTs to it), and it has its own limits:
 * one request per connection of at most ADMIN_REQ_MAX bytes, ADMIN_TIMEOUT seconds to send it,
 * ADMIN_MAX_CONNS connections per process. */
#ifndef CONNECTD_ADMIN_H
#define CONNECTD_ADMIN_H

#include <sys/socket.h>

#include "server.h"

struct tunnel;

#define ADMIN_MAX_CONNS 32
#define ADMIN_TIMEOUT   10.0 /* seconds to send the request; and of no write progress */

/* Take a freshly accepted, non-blocking admin connection. */
void admin_accept(struct server *srv, int fd, const struct sockaddr *peer);
/* Tunnel t is leaving the live list: move any GET /tunnels cursor on it along. */
void admin_tunnel_gone(struct server *srv, struct tunnel *t);
/* A worker: listen for the other workers' requests for its tunnels (GET /tunnels gathers every
 * worker's). Returns 0, or -1 (then /tunnels on the others lacks this worker's). */
int admin_peer_listen(struct server *srv);
/* Close every admin connection and the peer socket (the process is exiting). */
void admin_close_all(struct server *srv);
/* Refresh this process's published figures (pools, CPU, memory, fds). */
void admin_publish(struct server *srv);

#endif
