/* listener: the listening sockets and accept, with a spare fd and a pause on EMFILE/ENFILE so a
 * full fd table never makes the level-triggered loop spin. */
#ifndef CONNECTD_LISTENER_H
#define CONNECTD_LISTENER_H

#include <stdbool.h>
#include <stddef.h>

#include "server.h"

/* Bind every [server] listen address into fds[0..nlisten) (SO_REUSEPORT when reuseport, so
 * several workers can each own a socket on the same address). Returns 0, or -1 with
 * "listen ADDR: syscall: reason" in err and nothing left open. */
int listeners_bind(const struct config *cfg, bool reuseport, int *fds, char *err, size_t errlen);
/* Accept on bound listening sockets (from listeners_bind() or systemd); srv takes ownership.
 * Listeners are named by the address they are bound to. */
int listeners_start(struct server *srv, const int *fds, size_t n, char *err, size_t errlen);
/* True when the listeners are bound to exactly cfg's listen addresses. */
bool listeners_match(struct server *srv, const struct config *cfg);
/* Reload: keep listeners whose address is still in cfg, bind the new ones, close the ones gone
 * (after accepting the clients already queued on them). On error nothing has changed. */
int listeners_update(struct server *srv, const struct config *cfg, bool reuseport, char *err,
                     size_t errlen);
/* The listening fds, for the loop guard. Returns how many were written (at most max). */
size_t listeners_fds(const struct server *srv, int *fds, size_t max);
/* Stop accepting and close the sockets; serve_queued: first take the clients already waiting
 * in the accept queues (a drain answers them 503, a retiring worker serves them). */
void listeners_close(struct server *srv, bool serve_queued);
/* Draining: close the proxy listeners (serving their queued clients), keep the admin ones, so
 * /healthz can tell a load balancer that this process is going away. */
void listeners_close_proxy(struct server *srv);

#endif
