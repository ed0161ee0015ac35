/* integrity: many tunnels at once through a CONNECT proxy to an echo server, every byte checked.
 *
 *   integrity --proxy HOST:PORT --target HOST:PORT [--tunnels N] [--max-bytes B] [--seed S]
 *             [--concurrency C] [--timeout S]
 *
 * Tunnel i (0 <= i < N) sends L(i) bytes of a deterministic pseudo-random stream through the
 * proxy to the target, which must echo them (bench/target in echo mode), then half-closes
 * (shutdown(SHUT_WR)); it reads the echo back until EOF. L(i) is log-uniform in 1 .. B
 * (default 4 MiB), drawn from --seed, so a run is reproducible and its total is known in
 * advance (printed as "planned_bytes"). The stream of tunnel i is splitmix64 of (key(i),
 * 8-byte block index), little-endian: any offset can be generated on its own, so every
 * received byte is compared with the byte that was sent at that offset.
 *
 * A tunnel is ok when the proxy's reply is exactly "HTTP/1.1 200 Connection established"
 * followed by an empty line, all L(i) bytes were sent, exactly L(i) bytes came back, every one
 * equal to the stream, and then EOF. Besides the byte comparison, a 64-bit hash of what was
 * sent and of what was received is kept per tunnel; the per-tunnel hashes are folded in tunnel
 * order into one sent and one received digest, printed (they are equal when all is well).
 *
 * One thread, one epoll set, non-blocking sockets, level-triggered. At most C tunnels open at
 * once (default: all N). RLIMIT_NOFILE is raised to the hard limit. The run ends by itself:
 * when every tunnel has finished or failed, or after --timeout seconds (default 60), when the
 * unfinished ones count as failed.
 *
 * Output: one JSON line on stdout (tunnels, ok, failed, mismatches, bytes each way, digests,
 * seconds, first error), one human line on stderr. Exit status 0 when all N tunnels are ok,
 * 1 otherwise, 2 on bad usage. Only loopback addresses (127.0.0.0/8, ::1) are accepted. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
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

#define SEND_CHUNK  (64 * 1024)  /* bytes generated and offered per send() */
#define RECV_CHUNK  (256 * 1024) /* bytes per recv() */
#define ROUNDS      4            /* send or recv calls per tunnel per wake-up, for fairness */
#define MAX_TUNNELS 100000
#define MAX_BYTES   (1LL << 32)
#define ERR_CAP     200
#define GOLDEN      0x9E3779B97F4A7C15ULL
#define ESTABLISHED "HTTP/1.1 200 Connection established\r\n\r\n"
#define FD_HEADROOM 32

enum state { S_IDLE = 0, S_CONNECTING, S_REPLY, S_STREAM, S_OK, S_FAILED };

struct hash {
    uint64_t h, acc, len;
    unsigned nacc; /* bytes in acc */
};

struct tunnel {
    int fd;
    enum state st;
    uint32_t events;
    uint64_t key;
    uint64_t len;        /* bytes to send and to get back */
    uint64_t sent, rcvd; /* stream offsets */
    size_t reply_got;
    bool shut; /* SHUT_WR done */
    struct hash hs, hr;
};

static struct {
    struct sockaddr_storage proxy, target;
    socklen_t proxy_len;
    char target_str[128];
    long tunnels, concurrency;
    uint64_t max_bytes, seed;
    double timeout;
} O;

static struct tunnel *T;
static int g_ep;
static long g_open, g_next, g_ok, g_failed, g_mismatch;
static uint64_t g_up, g_down;
static char g_err[ERR_CAP];
static char g_request[512];
static size_t g_request_len;
static unsigned char g_sbuf[SEND_CHUNK], g_rbuf[RECV_CHUNK], g_ebuf[RECV_CHUNK];
static volatile sig_atomic_t g_stop;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* The 8-byte block b of the stream with this key. */
static uint64_t block(uint64_t key, uint64_t b) {
    return mix64(key + (b + 1) * GOLDEN);
}

/* Bytes [off, off+n) of the stream with this key, into out. */
static void gen(uint64_t key, uint64_t off, unsigned char *out, size_t n) {
    size_t i = 0;
    while (i < n && (off + i) % 8 != 0) { /* head, up to the next block boundary */
        uint64_t o = off + i;
        out[i++] = (unsigned char)(block(key, o / 8) >> (8 * (o % 8)));
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t w = block(key, (off + i) / 8);
        for (int k = 0; k < 8; k++) /* little-endian whatever the host */
            out[i + (size_t)k] = (unsigned char)(w >> (8 * k));
    }
    for (; i < n; i++) {
        uint64_t o = off + i;
        out[i] = (unsigned char)(block(key, o / 8) >> (8 * (o % 8)));
    }
}

/* A 64-bit hash over a byte stream fed in pieces of any size (same result for any split). */
static void hash_word(struct hash *s, uint64_t w) {
    s->h = (s->h ^ w) * 0xFF51AFD7ED558CCDULL;
    s->h ^= s->h >> 29;
}

static void hash_feed(struct hash *s, const unsigned char *p, size_t n) {
    s->len += n;
    size_t i = 0;
    while (i < n && s->nacc != 0) {
        s->acc |= (uint64_t)p[i++] << (8 * s->nacc);
        if (++s->nacc == 8) {
            hash_word(s, s->acc);
            s->acc = 0;
            s->nacc = 0;
        }
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t w = 0;
        for (int k = 0; k < 8; k++)
            w |= (uint64_t)p[i + (size_t)k] << (8 * k);
        hash_word(s, w);
    }
    for (; i < n; i++)
        s->acc |= (uint64_t)p[i] << (8 * s->nacc++);
}

static uint64_t hash_final(const struct hash *s) {
    uint64_t h = s->h;
    if (s->nacc)
        h = ((h ^ s->acc) * 0xFF51AFD7ED558CCDULL) ^ 0x5bd1e995;
    return mix64(h ^ s->len);
}

/* Keep the first error: "tunnel I: WHAT[: strerror(err)]". */
static void set_err(long i, const char *what, int err) {
    if (g_err[0])
        return;
    if (err)
        snprintf(g_err, sizeof g_err, "tunnel %ld: %s: %s", i, what, strerror(err));
    else
        snprintf(g_err, sizeof g_err, "tunnel %ld: %s", i, what);
}

static void finish(struct tunnel *t, enum state st) {
    if (t->fd != -1)
        close(t->fd); /* also leaves the epoll set */
    t->fd = -1;
    t->st = st;
    g_open--;
    if (st == S_OK)
        g_ok++;
    else
        g_failed++;
}

static void fail(struct tunnel *t, const char *what, int err) {
    set_err((long)(t - T), what, err);
    finish(t, S_FAILED);
}

static int set_events(struct tunnel *t, uint32_t ev) {
    if (t->events == ev)
        return 0;
    struct epoll_event e = {.events = ev, .data.ptr = t};
    if (epoll_ctl(g_ep, EPOLL_CTL_MOD, t->fd, &e) == -1) {
        fail(t, "epoll_ctl", errno);
        return -1;
    }
    t->events = ev;
    return 0;
}

static void start(struct tunnel *t) {
    t->fd = socket(O.proxy.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    g_open++;
    if (t->fd == -1) {
        fail(t, "socket", errno);
        return;
    }
    int one = 1;
    (void)setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    t->st = S_CONNECTING;
    if (connect(t->fd, (const struct sockaddr *)&O.proxy, O.proxy_len) == -1 &&
        errno != EINPROGRESS) {
        fail(t, "connect", errno);
        return;
    }
    t->events = EPOLLOUT;
    struct epoll_event e = {.events = t->events, .data.ptr = t};
    if (epoll_ctl(g_ep, EPOLL_CTL_ADD, t->fd, &e) == -1)
        fail(t, "epoll_ctl", errno);
}

static void on_connecting(struct tunnel *t) {
    int err = 0;
    socklen_t l = sizeof err;
    if (getsockopt(t->fd, SOL_SOCKET, SO_ERROR, &err, &l) == -1)
        err = errno;
    if (err) {
        fail(t, "connect", err);
        return;
    }
    /* The request is small: one send() fits in a fresh socket buffer. */
    ssize_t n = send(t->fd, g_request, g_request_len, MSG_NOSIGNAL);
    if (n != (ssize_t)g_request_len) {
        fail(t, "send request", n == -1 ? errno : 0);
        return;
    }
    t->st = S_REPLY;
    set_events(t, EPOLLIN);
}

static void on_reply(struct tunnel *t) {
    /* Read no further than the expected reply: what follows is echoed stream. */
    char b[sizeof ESTABLISHED];
    size_t want = sizeof ESTABLISHED - 1 - t->reply_got;
    ssize_t n = recv(t->fd, b, want, 0);
    if (n == -1 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        fail(t, n == 0 ? "EOF before the 200 reply" : "recv reply", n == 0 ? 0 : errno);
        return;
    }
    if (memcmp(b, ESTABLISHED + t->reply_got, (size_t)n) != 0) {
        char line[64];
        size_t k = (size_t)n < sizeof line - 1 ? (size_t)n : sizeof line - 1;
        memcpy(line, b, k);
        line[k] = '\0';
        line[strcspn(line, "\r\n")] = '\0';
        char m[96];
        snprintf(m, sizeof m, "unexpected reply %s", line);
        fail(t, m, 0);
        return;
    }
    t->reply_got += (size_t)n;
    if (t->reply_got < sizeof ESTABLISHED - 1)
        return;
    t->st = S_STREAM;
    set_events(t, EPOLLIN | EPOLLOUT);
}

static void do_send(struct tunnel *t) {
    for (int r = 0; r < ROUNDS && t->sent < t->len; r++) {
        uint64_t left = t->len - t->sent;
        size_t k = left < SEND_CHUNK ? (size_t)left : SEND_CHUNK;
        gen(t->key, t->sent, g_sbuf, k);
        ssize_t n = send(t->fd, g_sbuf, k, MSG_NOSIGNAL);
        if (n == -1) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            fail(t, "send", errno);
            return;
        }
        hash_feed(&t->hs, g_sbuf, (size_t)n);
        t->sent += (uint64_t)n;
        g_up += (uint64_t)n;
        if ((size_t)n < k)
            return; /* the socket buffer is full */
    }
    if (t->sent == t->len && !t->shut) {
        if (shutdown(t->fd, SHUT_WR) == -1) {
            fail(t, "shutdown", errno);
            return;
        }
        t->shut = true;
        set_events(t, EPOLLIN);
    }
}

static void do_recv(struct tunnel *t) {
    for (int r = 0; r < ROUNDS; r++) {
        ssize_t n = recv(t->fd, g_rbuf, sizeof g_rbuf, 0);
        if (n == -1) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            fail(t, "recv", errno);
            return;
        }
        if (n == 0) {
            if (t->rcvd == t->len && t->shut) {
                if (hash_final(&t->hs) != hash_final(&t->hr)) { /* cannot happen if bytes match */
                    g_mismatch++;
                    fail(t, "hash of received bytes differs from hash of sent bytes", 0);
                    return;
                }
                finish(t, S_OK);
            } else {
                char m[128];
                snprintf(m, sizeof m, "EOF after %llu of %llu bytes (sent %llu)",
                         (unsigned long long)t->rcvd, (unsigned long long)t->len,
                         (unsigned long long)t->sent);
                fail(t, m, 0);
            }
            return;
        }
        if ((uint64_t)n > t->sent - t->rcvd) {
            g_mismatch++;
            fail(t, "received more bytes than were sent", 0);
            return;
        }
        gen(t->key, t->rcvd, g_ebuf, (size_t)n);
        if (memcmp(g_rbuf, g_ebuf, (size_t)n) != 0) {
            size_t k = 0;
            while (g_rbuf[k] == g_ebuf[k])
                k++;
            char m[128];
            snprintf(m, sizeof m, "byte %llu of %llu is 0x%02x, sent 0x%02x",
                     (unsigned long long)(t->rcvd + k), (unsigned long long)t->len, g_rbuf[k],
                     g_ebuf[k]);
            g_mismatch++;
            fail(t, m, 0);
            return;
        }
        hash_feed(&t->hr, g_rbuf, (size_t)n);
        t->rcvd += (uint64_t)n;
        g_down += (uint64_t)n;
        if ((size_t)n < sizeof g_rbuf)
            return; /* drained */
    }
}

static void on_event(struct tunnel *t, uint32_t ev) {
    switch (t->st) {
    case S_CONNECTING:
        on_connecting(t);
        return;
    case S_REPLY:
        on_reply(t);
        return;
    case S_STREAM:
        /* Read first: a reset or EOF is reported by recv() with its reason. */
        if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            do_recv(t);
            if (t->st != S_STREAM)
                return;
        }
        if ((ev & EPOLLOUT) && !t->shut)
            do_send(t);
        return;
    default:
        return;
    }
}

/* ---- arguments ---- */

static int parse_addr(const char *s, struct sockaddr_storage *ss, socklen_t *len) {
    char host[128];
    const char *colon = strrchr(s, ':');
    if (!colon)
        return -1;
    size_t hl = (size_t)(colon - s);
    if (hl == 0 || hl >= sizeof host)
        return -1;
    memcpy(host, s, hl);
    host[hl] = '\0';
    char *h = host;
    if (h[0] == '[' && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 1 || port > 65535)
        return -1;
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
        if ((ntohl(a4->sin_addr.s_addr) >> 24) != 127)
            return -2; /* loopback only */
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, h, &a6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr))
            return -2;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return 0;
    }
    return -1;
}

static int usage(const char *why) {
    if (why)
        fprintf(stderr, "integrity: %s\n", why);
    fprintf(stderr, "usage: integrity --proxy HOST:PORT --target HOST:PORT [--tunnels N]\n"
                    "                 [--max-bytes B] [--seed S] [--concurrency C] [--timeout S]\n"
                    "  loopback addresses only (127.0.0.0/8, ::1)\n");
    return 2;
}

static int parse_args(int argc, char **argv) {
    const char *proxy = NULL, *target = NULL;
    O.tunnels = 2000;
    O.concurrency = 0;
    O.max_bytes = 4 << 20;
    O.seed = 1;
    O.timeout = 60;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            return usage("option needs a value");
        const char *v = argv[++i];
        if (strcmp(a, "--proxy") == 0)
            proxy = v;
        else if (strcmp(a, "--target") == 0)
            target = v;
        else if (strcmp(a, "--tunnels") == 0)
            O.tunnels = strtol(v, NULL, 10);
        else if (strcmp(a, "--concurrency") == 0)
            O.concurrency = strtol(v, NULL, 10);
        else if (strcmp(a, "--max-bytes") == 0)
            O.max_bytes = strtoull(v, NULL, 10);
        else if (strcmp(a, "--seed") == 0)
            O.seed = strtoull(v, NULL, 10);
        else if (strcmp(a, "--timeout") == 0)
            O.timeout = strtod(v, NULL);
        else
            return usage("unknown option");
    }
    if (!proxy || !target)
        return usage("--proxy and --target are required");
    struct sockaddr_storage ts;
    socklen_t tl;
    int r = parse_addr(target, &ts, &tl);
    if (r == 0)
        r = parse_addr(proxy, &O.proxy, &O.proxy_len);
    if (r == -2)
        return usage("only loopback addresses are allowed");
    if (r != 0)
        return usage("bad HOST:PORT");
    snprintf(O.target_str, sizeof O.target_str, "%s", target);
    if (O.concurrency == 0)
        O.concurrency = O.tunnels;
    if (O.tunnels < 1 || O.tunnels > MAX_TUNNELS || O.concurrency < 1 ||
        O.concurrency > O.tunnels || O.max_bytes < 1 || O.max_bytes > (uint64_t)MAX_BYTES ||
        !(O.timeout > 0 && O.timeout <= 3600))
        return usage("value out of range");
    return 0;
}

static int raise_nofile(long need) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
        return -1;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
        (void)getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur < need) {
        fprintf(stderr, "integrity: need %ld fds, the limit is %ld\n", need, (long)rl.rlim_cur);
        return -1;
    }
    return 0;
}

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

int main(int argc, char **argv) {
    int r = parse_args(argc, argv);
    if (r)
        return r;
    if (raise_nofile(O.concurrency + FD_HEADROOM) == -1)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    g_request_len =
        (size_t)snprintf(g_request, sizeof g_request, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n",
                         O.target_str, O.target_str);

    /* The plan: per-tunnel keys and log-uniform lengths in 1 .. max_bytes, all from the seed. */
    T = calloc((size_t)O.tunnels, sizeof *T);
    if (!T)
        return 1;
    uint64_t planned = 0;
    double lmax = log((double)O.max_bytes + 1.0);
    for (long i = 0; i < O.tunnels; i++) {
        struct tunnel *t = &T[i];
        t->fd = -1;
        t->key = mix64(O.seed * GOLDEN + (uint64_t)i * 0xD1B54A32D192ED03ULL + 1);
        double u = (double)(mix64(t->key ^ 0xA0761D6478BD642FULL) >> 11) / 9007199254740992.0;
        uint64_t len = (uint64_t)exp(u * lmax);
        t->len = len < 1 ? 1 : len > O.max_bytes ? O.max_bytes : len;
        planned += t->len;
    }

    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep == -1) {
        perror("integrity: epoll_create1");
        return 1;
    }
    double t0 = now_s(), deadline = t0 + O.timeout;
    long max_open = 0;
    struct epoll_event evs[512];
    bool timed_out = false;
    while (g_ok + g_failed < O.tunnels) {
        while (g_open < O.concurrency && g_next < O.tunnels)
            start(&T[g_next++]);
        if (g_open > max_open)
            max_open = g_open;
        if (g_ok + g_failed == O.tunnels)
            break;
        if (g_stop || now_s() > deadline) {
            timed_out = true;
            break;
        }
        int n = epoll_wait(g_ep, evs, 512, 100);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            perror("integrity: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct tunnel *t = evs[i].data.ptr;
            if (t->fd != -1)
                on_event(t, evs[i].events);
        }
    }
    double secs = now_s() - t0;
    long unfinished = 0;
    if (timed_out) {
        for (long i = 0; i < O.tunnels; i++) {
            if (T[i].st == S_OK || T[i].st == S_FAILED)
                continue;
            if (!unfinished) {
                char m[160];
                snprintf(m, sizeof m, "unfinished at the timeout: %llu/%llu sent, %llu received",
                         (unsigned long long)T[i].sent, (unsigned long long)T[i].len,
                         (unsigned long long)T[i].rcvd);
                set_err(i, m, 0);
            }
            unfinished++;
            if (T[i].st != S_IDLE)
                finish(&T[i], S_FAILED);
            else
                g_failed++;
        }
    }

    /* Fold the per-tunnel hashes, in tunnel order, into one digest per direction. */
    uint64_t dsent = 0, drecv = 0;
    long hash_equal = 0;
    for (long i = 0; i < O.tunnels; i++) {
        uint64_t hs = hash_final(&T[i].hs), hr = hash_final(&T[i].hr);
        dsent = mix64(dsent ^ hs) + (uint64_t)i;
        drecv = mix64(drecv ^ hr) + (uint64_t)i;
        hash_equal += hs == hr;
    }
    printf("{\"tunnels\":%ld,\"ok\":%ld,\"failed\":%ld,\"unfinished\":%ld,\"mismatches\":%ld,"
           "\"hash_equal\":%ld,\"planned_bytes\":%llu,\"bytes_up\":%llu,\"bytes_down\":%llu,"
           "\"digest_sent\":\"%016llx\",\"digest_received\":\"%016llx\",\"max_open\":%ld,"
           "\"seed\":%llu,\"max_bytes\":%llu,\"seconds\":%.3f,\"timed_out\":%s,"
           "\"first_error\":\"",
           O.tunnels, g_ok, g_failed, unfinished, g_mismatch, hash_equal,
           (unsigned long long)planned, (unsigned long long)g_up, (unsigned long long)g_down,
           (unsigned long long)dsent, (unsigned long long)drecv, max_open,
           (unsigned long long)O.seed, (unsigned long long)O.max_bytes, secs,
           timed_out ? "true" : "false");
    for (const char *p = g_err; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    printf("\"}\n");
    fflush(stdout);
    fprintf(stderr,
            "integrity: %ld/%ld tunnels ok, %llu bytes up, %llu down (planned %llu each way) in "
            "%.2f s, %ld mismatches, digests %016llx/%016llx%s%s\n",
            g_ok, O.tunnels, (unsigned long long)g_up, (unsigned long long)g_down,
            (unsigned long long)planned, secs, g_mismatch, (unsigned long long)dsent,
            (unsigned long long)drecv, g_err[0] ? "; first error: " : "", g_err);
    return g_ok == O.tunnels && g_mismatch == 0 && dsent == drecv ? 0 : 1;
}
