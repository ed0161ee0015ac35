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
/* Accept on sockets bound by listeners_bind(); srv takes ownership of them. */
int listeners_start(struct server *srv, const int *fds, char *err, size_t errlen);
/* Stop accepting (drain) and close the sockets. */
void listeners_close(struct server *srv);

#endif
