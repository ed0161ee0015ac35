/* loopguard: refuse tunnels that would dial connectd's own listening sockets (RFC 9209
 * proxy_loop_detected), whatever deny_private says: otherwise one CONNECT to ourselves would
 * chain tunnels until the fd limit. */
#ifndef CONNECTD_LOOPGUARD_H
#define CONNECTD_LOOPGUARD_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct loopguard;

/* From the bound listening sockets (their real addresses, via getsockname). NULL when out of
 * memory or a socket cannot be queried (err says which). */
struct loopguard *loopguard_new(const int *fds, size_t n, char *err, size_t errlen);
void loopguard_free(struct loopguard *g);

/* True when connecting to sa would reach one of our listeners: the exact address and port, or,
 * for a wildcard listener (0.0.0.0, ::), any address of this host on that port (loopback, the
 * unspecified address, or an interface address; interface addresses are read again at most
 * once a second, and only when the port is one of ours). IPv4-mapped IPv6 counts as IPv4. */
bool loopguard_hits(struct loopguard *g, const struct sockaddr *sa, double now);

#endif
