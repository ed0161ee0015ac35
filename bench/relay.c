/* relay: the "ceiling" of the throughput figures: a bare CONNECT relay with no policy, no DNS,
 * no logging, a thread per direction and splice(2) through a pipe, as issue 3 describes it
 * ("a bare splice(2) relay with no policy and a thread per direction reaches 0.57 / 0.67 x
 * direct here"). Not a proxy anyone should run: it exists to tell how close connectd is to what
 * the kernel allows on this machine.
 *
 *   relay [--lifetime SECONDS] PORT
 *
 * Listens on 127.0.0.1:PORT; accepts "CONNECT a.b.c.d:port HTTP/1.1" with an IPv4 loopback
 * literal only (anything else gets 403), answers "HTTP/1.1 200 Connection established", then
 * two threads splice the two directions through 1 MiB pipes; EOF on one side becomes
 * shutdown(SHUT_WR) on the other. Exits by itself after --lifetime seconds (default 3600). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PIPE_BYTES (1024 * 1024)

struct half {
    int src, dst;
    struct pair *p;
};

struct pair {
    int cfd, ufd;
    atomic_int left; /* directions still running; the last one closes both sockets */
    struct half h[2];
};

static void pair_done(struct pair *p) {
    if (atomic_fetch_sub(&p->left, 1) == 1) {
        close(p->cfd);
        close(p->ufd);
        free(p);
    }
}

static void *pump(void *arg) {
    struct half *h = arg;
    int pp[2];
    if (pipe2(pp, O_CLOEXEC) == -1) {
        shutdown(h->dst, SHUT_WR);
        pair_done(h->p);
        return NULL;
    }
    (void)fcntl(pp[1], F_SETPIPE_SZ, PIPE_BYTES);
    for (;;) {
        ssize_t n = splice(h->src, NULL, pp[1], NULL, PIPE_BYTES, SPLICE_F_MOVE);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        while (n > 0) {
            ssize_t w = splice(pp[0], NULL, h->dst, NULL, (size_t)n, SPLICE_F_MOVE);
            if (w == -1 && errno == EINTR)
                continue;
            if (w <= 0) {
                n = -1;
                break;
            }
            n -= w;
        }
        if (n < 0)
            break;
    }
    shutdown(h->dst, SHUT_WR);
    close(pp[0]);
    close(pp[1]);
    pair_done(h->p);
    return NULL;
}

static int send_all(int fd, const char *s) {
    size_t len = strlen(s), off = 0;
    while (off < len) {
        ssize_t n = send(fd, s + off, len - off, MSG_NOSIGNAL);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        off += (size_t)n;
    }
    return 0;
}

/* Read the request, dial, answer, then hand the two directions to two threads. */
static void *handshake(void *arg) {
    int cfd = (int)(intptr_t)arg;
    char req[4096];
    size_t len = 0;
    char *end = NULL;
    while (!end && len < sizeof req - 1) {
        ssize_t n = recv(cfd, req + len, sizeof req - 1 - len, 0);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0) {
            close(cfd);
            return NULL;
        }
        len += (size_t)n;
        req[len] = '\0';
        end = strstr(req, "\r\n\r\n");
    }
    char host[64];
    unsigned port = 0;
    struct sockaddr_in sin = {.sin_family = AF_INET};
    if (!end || sscanf(req, "CONNECT %63[0-9.]:%u HTTP/1.", host, &port) != 2 || port == 0 ||
        port > 65535 || inet_pton(AF_INET, host, &sin.sin_addr) != 1 ||
        (ntohl(sin.sin_addr.s_addr) >> 24) != 127 || end + 4 != req + len) {
        (void)send_all(cfd, "HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\n");
        close(cfd);
        return NULL;
    }
    sin.sin_port = htons((uint16_t)port);
    int ufd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (ufd == -1 || connect(ufd, (struct sockaddr *)&sin, sizeof sin) == -1) {
        (void)send_all(cfd, "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n");
        if (ufd != -1)
            close(ufd);
        close(cfd);
        return NULL;
    }
    int one = 1;
    (void)setsockopt(ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (send_all(cfd, "HTTP/1.1 200 Connection established\r\n\r\n") == -1) {
        close(ufd);
        close(cfd);
        return NULL;
    }
    struct pair *p = calloc(1, sizeof *p);
    if (!p) {
        close(ufd);
        close(cfd);
        return NULL;
    }
    p->cfd = cfd;
    p->ufd = ufd;
    atomic_init(&p->left, 2);
    p->h[0] = (struct half){.src = cfd, .dst = ufd, .p = p};
    p->h[1] = (struct half){.src = ufd, .dst = cfd, .p = p};
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 64 * 1024);
    pthread_t th;
    if (pthread_create(&th, &at, pump, &p->h[1]) != 0) {
        shutdown(cfd, SHUT_WR);
        pair_done(p);
    }
    pthread_attr_destroy(&at);
    return pump(&p->h[0]); /* this thread carries client -> server */
}

static void *lifetime_guard(void *arg) {
    double s = *(double *)arg;
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = 0};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
    _exit(0);
}

int main(int argc, char **argv) {
    double lifetime = 3600;
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--lifetime") == 0 && i + 1 < argc)
            lifetime = strtod(argv[++i], NULL);
        else
            port = (int)strtol(argv[i], NULL, 10);
    }
    if (port < 1 || port > 65535 || lifetime <= 0) {
        fprintf(stderr, "usage: relay [--lifetime SECONDS] PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (lfd == -1 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == -1 ||
        bind(lfd, (struct sockaddr *)&sin, sizeof sin) == -1 || listen(lfd, 4096) == -1) {
        perror("relay: listen");
        return 1;
    }
    pthread_t guard;
    if (pthread_create(&guard, NULL, lifetime_guard, &lifetime) != 0)
        return 1;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 64 * 1024);
    for (;;) {
        int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (cfd == -1) {
            if (errno == EMFILE || errno == ENFILE) {
                struct timespec ts = {.tv_sec = 0, .tv_nsec = 10 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        (void)setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t th;
        if (pthread_create(&th, &at, handshake, (void *)(intptr_t)cfd) != 0)
            close(cfd);
    }
}
