/* target: the destination server of the connectd benchmark.
 *
 *   target [--host 127.0.0.1] [--lifetime SECONDS] MODE:PORT [MODE:PORT ...]
 *
 * MODE is one of
 *   sink    read and discard everything, counting bytes
 *   source  write a stream to every connection as fast as it takes it
 *   echo    write back every byte read (with backpressure); close after the peer's EOF
 *
 * One thread, one epoll instance, non-blocking sockets, level-triggered. Binds loopback only
 * (any --host outside 127.0.0.0/8 or ::1 is refused). Exits by itself after --lifetime seconds
 * (default 3600) or on SIGTERM/SIGINT, printing its counters as one JSON line on stderr;
 * SIGUSR1 prints the counters without exiting. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IO_CHUNK   (256 * 1024) /* bytes per read/write call */
#define ECHO_CAP   (64 * 1024)  /* bytes an echo connection buffers before it stops reading */
#define MAX_LISTEN 8

enum mode { MODE_SINK = 1, MODE_SOURCE, MODE_ECHO };

struct listener {
    bool is_listener; /* first member of both structs: tells epoll data apart */
    int fd;
    enum mode mode;
    int port;
};

struct conn {
    bool is_listener;
    int fd;
    enum mode mode;
    unsigned char *pending; /* echo only: bytes read but not yet written back */
    size_t plen, poff;
};

static volatile sig_atomic_t g_stop, g_report;
static unsigned char g_buf[IO_CHUNK];
static uint64_t g_accepted, g_closed, g_bytes_in, g_bytes_out, g_errors;
static long g_open;

static void on_signal(int sig) {
    if (sig == SIGUSR1)
        g_report = 1;
    else
        g_stop = 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report(void) {
    fprintf(stderr,
            "{\"target\":1,\"accepted\":%llu,\"closed\":%llu,\"open\":%ld,\"bytes_in\":%llu,"
            "\"bytes_out\":%llu,\"errors\":%llu}\n",
            (unsigned long long)g_accepted, (unsigned long long)g_closed, g_open,
            (unsigned long long)g_bytes_in, (unsigned long long)g_bytes_out,
            (unsigned long long)g_errors);
    fflush(stderr);
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Loopback only: 127.0.0.0/8 or ::1. */
static int parse_loopback(const char *host, struct sockaddr_storage *ss, socklen_t *len, int port) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        if ((ntohl(a4->sin_addr.s_addr) >> 24) != 127)
            return -1;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr))
            return -1;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return 0;
    }
    return -1;
}

static void conn_close(int ep, struct conn *c) {
    (void)epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pending);
    free(c);
    g_closed++;
    g_open--;
}

static int set_events(int ep, struct conn *c, uint32_t ev) {
    struct epoll_event e = {.events = ev, .data.ptr = c};
    return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
}

static bool is_reset(int err) {
    return err == ECONNRESET || err == EPIPE || err == ENOTCONN;
}

static void do_accept(int ep, struct listener *l) {
    for (int i = 0; i < 256; i++) { /* batch, then give the other sockets a turn */
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            if (errno == ECONNABORTED)
                continue;
            g_errors++; /* EMFILE and friends: the backlog keeps them; try again later */
            return;
        }
        int one = 1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            g_errors++;
            continue;
        }
        c->fd = fd;
        c->mode = l->mode;
        struct epoll_event e = {.events = l->mode == MODE_SOURCE ? EPOLLOUT | EPOLLIN : EPOLLIN,
                                .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) == -1) {
            close(fd);
            free(c);
            g_errors++;
            continue;
        }
        g_accepted++;
        g_open++;
    }
}

/* Read and discard until EAGAIN. Returns -1 when the connection was closed. */
static int drain(int ep, struct conn *c) {
    for (;;) {
        ssize_t n = recv(c->fd, g_buf, sizeof g_buf, 0);
        if (n > 0) {
            g_bytes_in += (uint64_t)n;
            if ((size_t)n < sizeof g_buf)
                return 0; /* short read: drained */
            continue;
        }
        if (n == 0) {
            conn_close(ep, c);
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (!is_reset(errno))
            g_errors++;
        conn_close(ep, c);
        return -1;
    }
}

static void on_source(int ep, struct conn *c, uint32_t ev) {
    if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (drain(ep, c) == -1)
            return;
    }
    if (!(ev & EPOLLOUT))
        return;
    for (int i = 0; i < 16; i++) { /* a cap per wake-up, for fairness between connections */
        ssize_t n = send(c->fd, g_buf, sizeof g_buf, MSG_NOSIGNAL);
        if (n > 0) {
            g_bytes_out += (uint64_t)n;
            if ((size_t)n < sizeof g_buf)
                return; /* short write: the socket buffer is full */
            continue;
        }
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (!is_reset(errno))
            g_errors++;
        conn_close(ep, c);
        return;
    }
}

/* Write back what is pending. Returns -1 when closed, 0 when all is written, 1 when some is
 * left (EPOLLOUT armed, reading stopped). */
static int echo_flush(int ep, struct conn *c) {
    while (c->poff < c->plen) {
        ssize_t n = send(c->fd, c->pending + c->poff, c->plen - c->poff, MSG_NOSIGNAL);
        if (n > 0) {
            g_bytes_out += (uint64_t)n;
            c->poff += (size_t)n;
            continue;
        }
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (set_events(ep, c, EPOLLOUT) == -1) {
                g_errors++;
                conn_close(ep, c);
                return -1;
            }
            return 1;
        }
        if (!is_reset(errno))
            g_errors++;
        conn_close(ep, c);
        return -1;
    }
    free(c->pending);
    c->pending = NULL;
    c->plen = c->poff = 0;
    return 0;
}

static void on_echo(int ep, struct conn *c, uint32_t ev) {
    if (c->pending) { /* only EPOLLOUT is armed while bytes are pending */
        if (echo_flush(ep, c) == 0 && set_events(ep, c, EPOLLIN) == -1) {
            g_errors++;
            conn_close(ep, c);
        }
        return;
    }
    (void)ev;
    for (int i = 0; i < 16; i++) {
        ssize_t n = recv(c->fd, g_buf, ECHO_CAP, 0);
        if (n == 0) {
            conn_close(ep, c);
            return;
        }
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (!is_reset(errno))
                g_errors++;
            conn_close(ep, c);
            return;
        }
        g_bytes_in += (uint64_t)n;
        /* Fast path: write straight from the shared buffer; keep only what did not fit. */
        ssize_t w = send(c->fd, g_buf, (size_t)n, MSG_NOSIGNAL);
        if (w == -1) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                if (!is_reset(errno))
                    g_errors++;
                conn_close(ep, c);
                return;
            }
            w = 0;
        }
        g_bytes_out += (uint64_t)w;
        if (w < n) {
            c->pending = malloc((size_t)(n - w));
            if (!c->pending) {
                g_errors++;
                conn_close(ep, c);
                return;
            }
            memcpy(c->pending, g_buf + w, (size_t)(n - w));
            c->plen = (size_t)(n - w);
            c->poff = 0;
            if (set_events(ep, c, EPOLLOUT) == -1) {
                g_errors++;
                conn_close(ep, c);
            }
            return;
        }
        if (n < ECHO_CAP)
            return; /* short read: drained */
    }
}

static void on_sink(int ep, struct conn *c) {
    for (int i = 0; i < 16; i++) {
        ssize_t n = recv(c->fd, g_buf, sizeof g_buf, 0);
        if (n > 0) {
            g_bytes_in += (uint64_t)n;
            if ((size_t)n < sizeof g_buf)
                return;
            continue;
        }
        if (n == 0) {
            conn_close(ep, c);
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        if (!is_reset(errno))
            g_errors++;
        conn_close(ep, c);
        return;
    }
}

static int usage(void) {
    fprintf(stderr, "usage: target [--host 127.0.0.1] [--lifetime SECONDS] "
                    "sink|source|echo:PORT ...\n");
    return 2;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    double lifetime = 3600;
    struct listener ls[MAX_LISTEN];
    int nls = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--host") == 0 && i + 1 < argc) {
            host = argv[++i];
        } else if (strcmp(argv[i], "--lifetime") == 0 && i + 1 < argc) {
            lifetime = strtod(argv[++i], NULL);
        } else {
            char *colon = strchr(argv[i], ':');
            if (!colon || nls == MAX_LISTEN)
                return usage();
            *colon = '\0';
            enum mode m;
            if (strcmp(argv[i], "sink") == 0)
                m = MODE_SINK;
            else if (strcmp(argv[i], "source") == 0)
                m = MODE_SOURCE;
            else if (strcmp(argv[i], "echo") == 0)
                m = MODE_ECHO;
            else
                return usage();
            long port = strtol(colon + 1, NULL, 10);
            if (port < 1 || port > 65535)
                return usage();
            ls[nls++] =
                (struct listener){.is_listener = true, .fd = -1, .mode = m, .port = (int)port};
        }
    }
    if (nls == 0 || lifetime <= 0)
        return usage();

    raise_nofile();
    memset(g_buf, 'x', sizeof g_buf);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep == -1) {
        perror("target: epoll_create1");
        return 1;
    }
    for (int i = 0; i < nls; i++) {
        struct sockaddr_storage ss;
        socklen_t sl;
        if (parse_loopback(host, &ss, &sl, ls[i].port) == -1) {
            fprintf(stderr, "target: %s is not a loopback address\n", host);
            return 2;
        }
        int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        int one = 1;
        if (fd == -1 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == -1 ||
            bind(fd, (struct sockaddr *)&ss, sl) == -1 || listen(fd, 4096) == -1) {
            fprintf(stderr, "target: listen on %s:%d: %s\n", host, ls[i].port, strerror(errno));
            return 1;
        }
        ls[i].fd = fd;
        struct epoll_event e = {.events = EPOLLIN, .data.ptr = &ls[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) == -1) {
            perror("target: epoll_ctl");
            return 1;
        }
    }
    fprintf(stderr, "target: ready pid=%d\n", (int)getpid());
    fflush(stderr);

    double deadline = now_s() + lifetime;
    struct epoll_event evs[256];
    while (!g_stop) {
        double left = deadline - now_s();
        if (left <= 0)
            break;
        int n = epoll_wait(ep, evs, 256, left > 1.0 ? 1000 : (int)(left * 1000) + 1);
        if (g_report) {
            g_report = 0;
            report();
        }
        if (n == -1) {
            if (errno == EINTR)
                continue;
            perror("target: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            bool *tag = evs[i].data.ptr;
            if (*tag) {
                do_accept(ep, (struct listener *)tag);
                continue;
            }
            struct conn *c = (struct conn *)tag;
            switch (c->mode) {
            case MODE_SINK:
                on_sink(ep, c);
                break;
            case MODE_SOURCE:
                on_source(ep, c, evs[i].events);
                break;
            case MODE_ECHO:
                on_echo(ep, c, evs[i].events);
                break;
            }
        }
    }
    report();
    return 0;
}
