/* listener: the listening sockets and accept, with a spare fd and a pause on EMFILE/ENFILE so a
 * full fd table never makes the level-triggered loop spin. */
#ifndef CONNECTD_LISTENER_H
#define CONNECTD_LISTENER_H

#include <stddef.h>

#include "server.h"

/* Bind every [server] listen address. Returns 0, or -1 with "ADDR: syscall: reason" in err. */
int listeners_open(struct server *srv, char *err, size_t errlen);
/* Stop accepting (drain) and close the sockets. */
void listeners_close(struct server *srv);

#endif
