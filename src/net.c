/* net: socket helpers. */
#include "net.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int net_listen(const struct sockaddr *sa, socklen_t len, int backlog, bool reuseport, char *err,
               size_t errlen) {
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd == -1) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -1;
    }
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) == -1) {
        snprintf(err, errlen, "setsockopt(SO_REUSEADDR): %s", strerror(errno));
        goto fail;
    }
    if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) == -1) {
        snprintf(err, errlen, "setsockopt(SO_REUSEPORT): %s", strerror(errno));
        goto fail;
    }
    if (sa->sa_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) == -1) {
        snprintf(err, errlen, "setsockopt(IPV6_V6ONLY): %s", strerror(errno));
        goto fail;
    }
    if (bind(fd, sa, len) == -1) {
        snprintf(err, errlen, "bind: %s", strerror(errno));
        goto fail;
    }
    if (listen(fd, backlog) == -1) {
        snprintf(err, errlen, "listen: %s", strerror(errno));
        goto fail;
    }
    return fd;
fail : {
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}
}

int net_connect_start(const struct sockaddr *sa, socklen_t len) {
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (fd == -1)
        return -1;
    net_tune(fd);
    /* EINTR on a non-blocking connect means it goes on in the background, like EINPROGRESS. */
    if (connect(fd, sa, len) == -1 && errno != EINPROGRESS && errno != EINTR) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int net_connect_result(int fd) {
    int soerr = 0;
    socklen_t l = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &l) == -1)
        return errno;
    return soerr;
}

void net_tune(int fd) {
    int on = 1;
    /* Best effort: a relay works without it, only with more latency. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}
