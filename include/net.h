/* net: small socket helpers. Each returns the fd (or 0) on success and -1 on failure with
 * errno preserved; the ones that can fail for several reasons write "syscall: strerror" in err. */
#ifndef CONNECTD_NET_H
#define CONNECTD_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* Non-blocking, close-on-exec listening TCP socket with SO_REUSEADDR (and IPV6_V6ONLY for
 * IPv6, so [::]:p and 0.0.0.0:p can coexist); SO_REUSEPORT when reuseport. */
int net_listen(const struct sockaddr *sa, socklen_t len, int backlog, bool reuseport, char *err,
               size_t errlen);

/* Start a non-blocking connect. Returns the fd when the connect is under way (EINPROGRESS) or
 * done; -1 with errno on immediate failure. */
int net_connect_start(const struct sockaddr *sa, socklen_t len);

/* Result of a finished non-blocking connect: 0, or the errno from SO_ERROR. */
int net_connect_result(int fd);

/* Per-connection options for relayed sockets (TCP_NODELAY: the client decides batching). */
void net_tune(int fd);

#endif
