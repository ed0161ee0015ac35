/* loadgen: the client side of the connectd benchmark.
 *
 *   loadgen MODE [options]
 *
 * Modes (every one ends by itself: each phase has a time bound, and counts are bounded):
 *   throughput --tunnels N --dir up|down [--seconds S]
 *       N tunnels push bytes client->server (up; target in sink mode) or server->client (down;
 *       target in source mode). MB/s (1 MB = 10^6 bytes) over the steady window: the window
 *       starts after every tunnel is up and --warmup seconds have passed. In "up" the count is
 *       bytes accepted by send() in the window: with full socket buffers at both ends of the
 *       window that equals bytes delivered. In "down" it is bytes received.
 *   handshakes --concurrency C [--seconds S]
 *       C connections at a time, each: connect, CONNECT, read the 200, send 64 bytes, read the
 *       64 bytes echoed (target in echo mode), close; handshakes/s over the window. Also the
 *       p50/p99 of connect()->200 under that load.
 *   latency --concurrency 1 --count N
 *       Time from starting connect() to having the whole 200 reply (with --direct: to TCP
 *       connect completion); p50/p90/p99/max in ms. The first --warmup-count (default
 *       min(N/10, 100)) are not recorded. A higher --concurrency runs the handshake cycle for
 *       exactly N handshakes (what bench.py's strace profile uses).
 *   idle --tunnels N [--pid PROXYPID] [--hold S] [--open-concurrency K] [--open-timeout S]
 *       Open N tunnels, K handshakes in flight at most (default 128), each with the 200
 *       received and one 64-byte echo round trip done; sample the proxy's VmRSS and fd count
 *       before and 1 s after the last one is up, hold --hold seconds (default 3) and measure
 *       the proxy's CPU time meanwhile; KiB and fds per tunnel.
 *
 * Common options:
 *   --proxy HOST:PORT   proxy to CONNECT through (default 127.0.0.1:3128)
 *   --target HOST:PORT  destination in the CONNECT line, or the address dialled with --direct
 *   --direct            no proxy: connect straight to the target
 *   --proxy-v2          start every connection to the proxy with a PROXY protocol v2 header, as
 *                       a load balancer would: PROXY command, TCP, this connection's own
 *                       address and port as the source, the proxy's as the destination; sent
 *                       in the same send() as the CONNECT request (for a listener with
 *                       connectd's "proxy-protocol" option)
 *   --pid PID           the proxy's pid: CPU seconds per GB (throughput), per handshake,
 *                       RSS/fds/CPU (idle); its child processes are summed with it
 *   --threads T         worker threads, each with its own epoll (default 1)
 *   --warmup S          seconds before the measured window (default 1)
 *   --chunk BYTES       bytes per send/recv call in throughput mode (default 262144)
 *   --timeout S         hard bound on the whole run (default: derived from the phases)
 *   --label TEXT        copied into the JSON line
 *
 * TLS to the proxy (an HTTPS proxy: TLS between client and proxy, the CONNECT inside it):
 *   --tls               after the TCP connect, a TLS handshake with the proxy (OpenSSL, TLS 1.2
 *                       or later, ALPN "http/1.1"); the CONNECT, the reply, the echo and the
 *                       stream then go through TLS; close sends close_notify. Every mode works
 *                       over TLS; not with --direct or --proxy-v2. No certificate check unless:
 *   --cacert FILE       verify the proxy's certificate against FILE (and its IP address SAN)
 *   --tls-suites LIST   offer only these TLS 1.3 cipher suites (SSL_CTX_set_ciphersuites, e.g.
 *                       TLS_AES_128_GCM_SHA256), to hold the suite equal across proxies
 *   --tls-resume        resume sessions: each connection slot of a worker (C per worker in
 *                       handshakes/latency) keeps the session of its last connection
 *                       (SSL_get1_session once the echo is back, so TLS 1.3 tickets have
 *                       arrived) and offers it on its next one (SSL_set_session); the first of
 *                       each slot is a full handshake. Without it every handshake is full.
 *   With --tls the JSON line adds: tls_version, tls_cipher, tls_group (of the first handshake),
 *   tls_handshakes and tls_resumed (completed TLS handshakes, and how many of them resumed a
 *   session: in the window for handshakes/throughput, over the whole run otherwise) and, for
 *   handshakes/latency, the p50/p99 of the TLS handshake alone (TCP connected -> handshake done,
 *   tls_hs_*) and of CONNECT->200 alone (CONNECT written -> 200 read, req_*); p50_ms etc. stay
 *   connect()->200, the TLS handshake included.
 *
 * HTTP/2 to the proxy (with --tls; libnghttp2 does the framing):
 *   --h2                ONE TLS connection per loadgen thread, ALPN "h2" (the proxy must select
 *                       it), and every tunnel of the mode is a CONNECT stream on it (:method
 *                       CONNECT, :authority the target); streams are opened once the proxy's
 *                       SETTINGS have arrived, never more at once than its
 *                       SETTINGS_MAX_CONCURRENT_STREAMS. Per mode:
 *       throughput  --tunnels N streams on the thread's connection; "up" sends DATA as fast as
 *                   the flow-control windows allow (counted as DATA payload serialized into
 *                   the TLS stream), "down" counts DATA payload received
 *       handshakes  C streams at a time, each: HEADERS CONNECT -> :status 200 -> 64 bytes of
 *                   DATA -> the 64 bytes echoed -> an empty DATA with END_STREAM -> the proxy's
 *                   END_STREAM (the target closes after EOF), the stream closed with no error;
 *                   streams/s over the window, the p50/p99 of stream opened -> 200, the proxy's
 *                   CPU per stream (cpu_us_per_handshake)
 *       latency     the same cycle, --concurrency at a time, --count streams
 *       idle        --tunnels N streams, each proven with one 64-byte echo, held open
 *     A connection that dies is reopened in handshakes/latency (after 100 failures in a row
 *     at most 100 times a second, as plain connections); in throughput/idle its streams count
 *     as lost (or failed to open) and it is not reopened.
 *   --h2-stream-window BYTES      SETTINGS_INITIAL_WINDOW_SIZE sent (default 1048576)
 *   --h2-connection-window BYTES  the connection's receive window (default 16777216)
 *   Received DATA is consumed as read (nghttp2's automatic WINDOW_UPDATE). Not with
 *   --tls-resume. The JSON line adds h2, h2_connections (opened over the run), h2_goaways,
 *   h2_max_concurrent_streams (the proxy's setting), h2_stream_window, h2_connection_window.
 *
 * Throughput, every variant: the JSON line also has the spread between tunnels (streams with
 * --h2) over the window: tunnel_mb_per_s_min / _median / _max and jain_fairness (Jain's index,
 * (sum x)^2 / (n sum x^2) over the tunnels' MB/s: 1 = all equal, 1/n = one tunnel has it all).
 *
 * Output: one JSON line on stdout (machine-readable), then one human line on stderr.
 * Only loopback addresses (127.0.0.0/8, ::1) are accepted for --proxy and --target. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <nghttp2/nghttp2.h>

#define PING_LEN    64
#define HDR_CAP     2048
#define MAX_THREADS 16
#define MAX_SAMPLES (4 * 1024 * 1024)
#define MAX_STARTS  20000000L   /* connections one worker starts in a run, at most */
#define PROXYV2_MAX 52          /* 16-byte fixed part + two IPv6 addresses and ports */
#define READ_AHEAD  (64 * 1024) /* TLS read buffer: records taken per recv(2) */

enum mode { M_THROUGHPUT = 1, M_HANDSHAKES, M_LATENCY, M_IDLE };
enum state {
    S_CONNECTING = 1,
    S_TLS_HANDSHAKE,
    S_READ_REPLY,
    S_READ_ECHO,
    S_STREAM,
    S_IDLE,
    S_H2 /* --h2: the connection carries streams */
};

struct opts {
    enum mode mode;
    struct sockaddr_storage proxy, target;
    socklen_t proxy_len, target_len;
    char target_str[128];
    bool direct;
    bool proxy_v2;   /* a PROXY v2 header before the CONNECT request */
    bool up;         /* throughput direction */
    bool tls;        /* TLS to the proxy */
    bool tls_resume; /* offer each slot's last session */
    bool h2;         /* HTTP/2: tunnels are CONNECT streams of one connection per thread */
    long h2_stream_window, h2_conn_window;
    const char *cacert;
    const char *tls_suites;
    int tunnels, concurrency, threads, open_concurrency;
    long count, warmup_count;
    double seconds, warmup, hold, timeout, open_timeout;
    size_t chunk;
    long pid;
    const char *label;
};

struct conn {
    int fd;
    enum state st;
    uint32_t events;
    double t0;
    double t_tcp; /* --tls: TCP connected, handshake started */
    double t_req; /* --tls: handshake done, CONNECT written */
    SSL *ssl;     /* --tls only */
    int slot;     /* --tls-resume: index into the worker's sessions; -1 when none */
    /* throughput: this tunnel's byte counter (in the worker's tbytes) */
    _Atomic uint64_t *tb;
    size_t hlen, got;
    char hdr[HDR_CAP];
};

/* Extra latency samples (--tls). */
struct samples {
    double *v;
    long n, cap;
};

struct worker {
    int id;
    int ep;
    pthread_t th;
    int want;      /* throughput/idle: tunnels this worker opens; handshakes/latency: concurrency */
    long quota;    /* latency: handshakes to do (recorded + warm-up) */
    int active;    /* open connections */
    int opening;   /* connections not yet established (idle: capped) */
    long started;  /* connections started */
    long finished; /* latency: handshakes done (recorded or not) */
    /* Written by the worker, read by the main thread. */
    _Atomic uint64_t bytes;
    _Atomic uint64_t done;        /* completed handshakes */
    _Atomic uint64_t established; /* tunnels up */
    _Atomic uint64_t errors;      /* failed connects, bad replies, resets, short echoes */
    _Atomic uint64_t lost;        /* established tunnels that died (throughput/idle) */
    _Atomic uint64_t failed_open; /* throughput/idle tunnels that never came up */
    _Atomic int record;           /* handshakes: record latency samples now */
    long fail_streak;             /* failures since the last success */
    double next_try;              /* after a long failure streak: no new connection before */
    double *samples;
    long nsamples, cap;
    /* --tls only */
    _Atomic uint64_t tls_done;    /* completed TLS handshakes */
    _Atomic uint64_t tls_resumed; /* of which resumed a session */
    struct samples tls_hs, req;   /* TLS handshake alone, CONNECT->200 alone (ms) */
    SSL_SESSION **sess;           /* --tls-resume: one per slot */
    int *free_slots, nfree;
    /* throughput: bytes per tunnel (connection, or stream with --h2), want of them */
    _Atomic uint64_t *tbytes;
    /* --h2 only */
    struct h2conn *h2;            /* the worker's connection (one at a time) */
    int inflight;                 /* streams submitted and not closed */
    int h2_opened;                /* connections started */
    bool h2_given_up;             /* throughput/idle: the connection is gone; no other */
    _Atomic uint64_t h2_conns;    /* connections whose TLS handshake completed */
    _Atomic uint64_t h2_goaways;  /* GOAWAY frames received */
    _Atomic uint32_t h2_peer_max; /* the proxy's SETTINGS_MAX_CONCURRENT_STREAMS */
    char err[160];
};

static struct opts O;
static _Atomic int g_stop;
static double g_hard_deadline;
static unsigned char *g_chunk;
static char g_request[512];
static size_t g_request_len;
static SSL_CTX *g_ssl_ctx;
static _Atomic int g_tls_info_set;
static char g_tls_version[32], g_tls_cipher[64], g_tls_group[64];
static const unsigned char g_ping[PING_LEN] = "0123456789abcdef0123456789abcdef"
                                              "0123456789abcdef0123456789abcde";

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_until(double t) {
    for (;;) {
        double left = t - now_s();
        if (left <= 0 || atomic_load(&g_stop))
            return;
        if (left > 0.05)
            left = 0.05;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(left * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static void inc(_Atomic uint64_t *c, uint64_t n) {
    /* One writer per counter: a relaxed load+store is enough and costs no locked op. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static void set_err(struct worker *w, const char *what, int err) {
    if (w->err[0] == '\0' && err)
        snprintf(w->err, sizeof w->err, "%s: %s", what, strerror(err));
    else if (w->err[0] == '\0')
        snprintf(w->err, sizeof w->err, "%s", what);
}

/* ---- /proc sampling of the proxy ----
 * --pid names the proxy's main process; its descendants (a master's workers, say) are summed
 * with it: RSS, fds and CPU time of the whole tree as it stands at the moment of sampling. */

#define MAX_TREE 256

/* The process and its descendants, breadth first, from /proc/PID/task/TID/children. */
static int proc_tree(long pid, long *out, int max) {
    int n = 0;
    out[n++] = pid;
    for (int i = 0; i < n && n < max; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%ld/task", out[i]);
        DIR *d = opendir(path);
        if (!d)
            continue;
        struct dirent *e;
        while ((e = readdir(d)) && n < max) {
            if (e->d_name[0] == '.')
                continue;
            char cpath[300];
            snprintf(cpath, sizeof cpath, "/proc/%ld/task/%s/children", out[i], e->d_name);
            FILE *f = fopen(cpath, "r");
            if (!f)
                continue;
            long c;
            while (n < max && fscanf(f, "%ld", &c) == 1)
                out[n++] = c;
            fclose(f);
        }
        closedir(d);
    }
    return n;
}

static long proc_rss_kib1(long pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kib = -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

static long proc_fds1(long pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/fd", pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

/* utime + stime of the whole process (all threads), in seconds; -1 when unreadable. */
static double proc_cpu_s1(long pid) {
    char path[64], buf[2048];
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* comm may contain spaces */
    if (!p)
        return -1;
    /* After ")": field 3 (state) ... utime is field 14, stime field 15. */
    unsigned long long ut = 0, st = 0;
    int field = 2;
    for (char *tok = p + 1; *tok;) {
        while (*tok == ' ')
            tok++;
        field++;
        if (field == 14)
            ut = strtoull(tok, NULL, 10);
        if (field == 15) {
            st = strtoull(tok, NULL, 10);
            break;
        }
        while (*tok && *tok != ' ')
            tok++;
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_rss_kib(long pid) {
    long t[MAX_TREE], sum = 0;
    int n = proc_tree(pid, t, MAX_TREE);
    for (int i = 0; i < n; i++) {
        long v = proc_rss_kib1(t[i]);
        if (v < 0 && i == 0)
            return -1;
        sum += v > 0 ? v : 0;
    }
    return sum;
}

static long proc_fds(long pid) {
    long t[MAX_TREE], sum = 0;
    int n = proc_tree(pid, t, MAX_TREE);
    for (int i = 0; i < n; i++) {
        long v = proc_fds1(t[i]);
        if (v < 0 && i == 0)
            return -1;
        sum += v > 0 ? v : 0;
    }
    return sum;
}

static double proc_cpu_s(long pid) {
    long t[MAX_TREE];
    double sum = 0;
    int n = proc_tree(pid, t, MAX_TREE);
    for (int i = 0; i < n; i++) {
        double v = proc_cpu_s1(t[i]);
        if (v < 0 && i == 0)
            return -1;
        sum += v > 0 ? v : 0;
    }
    return sum;
}

/* ---- connections ---- */

/* --tls: give the slot back, keep its session (--tls-resume), free the SSL. A clean close
 * (the echo came back) sends close_notify first, as a well-behaved client does: one write, no
 * wait for the peer's. After an error the SSL is freed without it. */
static void conn_tls_free(struct worker *w, struct conn *c, bool clean) {
    if (c->slot >= 0) {
        w->free_slots[w->nfree++] = c->slot;
        c->slot = -1;
    }
    if (!c->ssl)
        return;
    if (clean && SSL_is_init_finished(c->ssl))
        (void)SSL_shutdown(c->ssl);
    SSL_free(c->ssl);
    c->ssl = NULL;
    ERR_clear_error();
}

static void conn_close(struct worker *w, struct conn *c, bool clean) {
    if (O.tls)
        conn_tls_free(w, c, clean);
    close(c->fd); /* also removes it from the epoll set */
    free(c);
    w->active--;
}

static void conn_free(struct worker *w, struct conn *c) {
    conn_close(w, c, true);
}

static void add_to(struct samples *s, double ms) {
    if (s->n == s->cap) {
        if (s->cap >= MAX_SAMPLES)
            return;
        long ncap = s->cap ? s->cap * 2 : 4096;
        double *p = realloc(s->v, (size_t)ncap * sizeof *p);
        if (!p)
            return;
        s->v = p;
        s->cap = ncap;
    }
    s->v[s->n++] = ms;
}

static void add_sample(struct worker *w, double ms) {
    if (w->nsamples == w->cap) {
        if (w->cap >= MAX_SAMPLES)
            return;
        long ncap = w->cap ? w->cap * 2 : 4096;
        double *p = realloc(w->samples, (size_t)ncap * sizeof *p);
        if (!p)
            return;
        w->samples = p;
        w->cap = ncap;
    }
    w->samples[w->nsamples++] = ms;
}

static int set_events(struct worker *w, struct conn *c, uint32_t ev) {
    if (c->events == ev)
        return 0;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    if (epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &e) == -1)
        return -1;
    c->events = ev;
    return 0;
}

static bool is_tunnel_mode(void) {
    return O.mode == M_THROUGHPUT || O.mode == M_IDLE;
}

/* A connection failed. Tunnels that were up count as lost; others as failed opens. */
static void conn_fail(struct worker *w, struct conn *c, const char *what, int err) {
    set_err(w, what, err);
    inc(&w->errors, 1);
    w->fail_streak++;
    if (is_tunnel_mode()) {
        if (c->st == S_STREAM || c->st == S_IDLE)
            inc(&w->lost, 1);
        else {
            inc(&w->failed_open, 1);
            w->opening--;
        }
    }
    conn_close(w, c, false);
}

static void handshake_done(struct worker *w, struct conn *c) {
    double now = now_s();
    double ms = (now - c->t0) * 1e3;
    bool rec = false;
    if (O.mode == M_LATENCY)
        rec = w->finished >= O.warmup_count / O.threads;
    else if (O.mode == M_HANDSHAKES)
        rec = atomic_load_explicit(&w->record, memory_order_relaxed);
    if (!rec)
        return;
    add_sample(w, ms);
    if (O.tls) {
        add_to(&w->tls_hs, (c->t_req - c->t_tcp) * 1e3);
        add_to(&w->req, (now - c->t_req) * 1e3);
    }
}

/* ---- transport: plain socket or TLS ----
 * io_recv/io_send return what recv/send would: bytes, 0 at EOF (recv; a TLS close_notify or,
 * with SSL_OP_IGNORE_UNEXPECTED_EOF, a bare FIN), or -1 with errno EAGAIN when the TLS layer
 * wants to read or write first (the caller waits for the next event, as for a plain EAGAIN),
 * EPROTO for a TLS error (its text kept in g_tls_err of the calling thread). */

static _Thread_local char g_tls_err[120];

static void tls_note_error(int ssl_err) {
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, g_tls_err, sizeof g_tls_err);
    else
        snprintf(g_tls_err, sizeof g_tls_err, "SSL_get_error %d", ssl_err);
    ERR_clear_error();
}

static ssize_t tls_result(struct conn *c, int r) {
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE:
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == 0)
            errno = ECONNRESET;
        ERR_clear_error();
        return -1;
    default:
        tls_note_error(e);
        errno = EPROTO;
        return -1;
    }
}

static ssize_t io_recv(struct conn *c, void *buf, size_t len) {
    if (!c->ssl)
        return recv(c->fd, buf, len, 0);
    int r = SSL_read(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return r > 0 ? r : tls_result(c, r);
}

static ssize_t io_send(struct conn *c, const void *buf, size_t len) {
    if (!c->ssl)
        return send(c->fd, buf, len, MSG_NOSIGNAL);
    int r = SSL_write(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
    return r > 0 ? r : tls_result(c, r);
}

/* A failed io_*: conn_fail with the TLS error text when there is one. */
static void io_fail(struct worker *w, struct conn *c, const char *what, int err) {
    if (err == EPROTO && c->ssl) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s: TLS: %s", what, g_tls_err);
        conn_fail(w, c, msg, 0);
        return;
    }
    conn_fail(w, c, what, err);
}

static int send_all_small(struct worker *w, struct conn *c, const void *p, size_t n) {
    /* Requests and pings are small: one send fits in an empty socket buffer (and, over TLS,
     * one record). */
    ssize_t k = io_send(c, p, n);
    if (k == (ssize_t)n)
        return 0;
    io_fail(w, c, "send", k == -1 ? errno : 0);
    return -1;
}

/* --proxy-v2: the header a load balancer sends before the client's bytes (HAProxy's
 * doc/proxy-protocol.txt, section 2.2): signature, version 2 + PROXY, TCP over IPv4 or IPv6,
 * then source address (this socket's), destination address (the proxy's), source port,
 * destination port, in network order. Returns its length; 0 when getsockname() failed. */
static size_t proxy_v2_header(int fd, unsigned char *out) {
    static const unsigned char sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                          0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
    struct sockaddr_storage me;
    socklen_t mlen = sizeof me;
    if (getsockname(fd, (struct sockaddr *)&me, &mlen) == -1)
        return 0;
    memcpy(out, sig, sizeof sig);
    out[12] = 0x21; /* version 2, command PROXY */
    size_t n = 16;
    if (me.ss_family == AF_INET) {
        const struct sockaddr_in *src = (const struct sockaddr_in *)&me;
        const struct sockaddr_in *dst = (const struct sockaddr_in *)&O.proxy;
        out[13] = 0x11; /* AF_INET, STREAM */
        memcpy(out + n, &src->sin_addr, 4);
        memcpy(out + n + 4, &dst->sin_addr, 4);
        memcpy(out + n + 8, &src->sin_port, 2);
        memcpy(out + n + 10, &dst->sin_port, 2);
        n += 12;
    } else {
        const struct sockaddr_in6 *src = (const struct sockaddr_in6 *)&me;
        const struct sockaddr_in6 *dst = (const struct sockaddr_in6 *)&O.proxy;
        out[13] = 0x21; /* AF_INET6, STREAM */
        memcpy(out + n, &src->sin6_addr, 16);
        memcpy(out + n + 16, &dst->sin6_addr, 16);
        memcpy(out + n + 32, &src->sin6_port, 2);
        memcpy(out + n + 34, &dst->sin6_port, 2);
        n += 36;
    }
    out[14] = (unsigned char)((n - 16) >> 8);
    out[15] = (unsigned char)((n - 16) & 0xff);
    return n;
}

static void send_request(struct worker *w, struct conn *c);

/* The name of the key exchange group, whichever OpenSSL 3.0 call knows it. */
static const char *tls_group_name(SSL *ssl) {
    int nid = SSL_get_negotiated_group(ssl);
    const char *n = nid ? OBJ_nid2sn(nid & ~TLSEXT_nid_unknown) : NULL;
    return n ? n : "?";
}

/* A TLS handshake completed: count it; the first one names the version, suite and group. */
static void tls_handshake_done(struct worker *w, struct conn *c) {
    c->t_req = now_s();
    inc(&w->tls_done, 1);
    if (SSL_session_reused(c->ssl))
        inc(&w->tls_resumed, 1);
    if (atomic_load_explicit(&g_tls_info_set, memory_order_relaxed) == 0 &&
        atomic_exchange(&g_tls_info_set, 1) == 0) {
        snprintf(g_tls_version, sizeof g_tls_version, "%s", SSL_get_version(c->ssl));
        snprintf(g_tls_cipher, sizeof g_tls_cipher, "%s", SSL_get_cipher_name(c->ssl));
        snprintf(g_tls_group, sizeof g_tls_group, "%s", tls_group_name(c->ssl));
    }
}

/* Drive the TLS handshake; once done, write the CONNECT request. */
static void tls_step(struct worker *w, struct conn *c) {
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        tls_handshake_done(w, c);
        send_request(w, c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (set_events(w, c, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT) == -1)
            conn_fail(w, c, "epoll_ctl", errno);
        return;
    }
    if (e == SSL_ERROR_SYSCALL) {
        int err = errno ? errno : ECONNRESET;
        ERR_clear_error();
        conn_fail(w, c, "TLS handshake", err);
        return;
    }
    tls_note_error(e);
    char msg[160];
    snprintf(msg, sizeof msg, "TLS handshake: %s", g_tls_err);
    conn_fail(w, c, msg, 0);
}

/* --cacert: the certificate must name the address dialled (an IP address SAN). */
static void tls_verify_ip(SSL *ssl) {
    if (!O.cacert)
        return;
    char ip[INET6_ADDRSTRLEN] = "";
    const struct sockaddr_storage *a = &O.proxy;
    if (a->ss_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)a)->sin_addr, ip, sizeof ip);
    else
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)a)->sin6_addr, ip, sizeof ip);
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip);
}

static void tls_start(struct worker *w, struct conn *c) {
    c->st = S_TLS_HANDSHAKE;
    c->t_tcp = now_s();
    c->ssl = SSL_new(g_ssl_ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        tls_note_error(0);
        conn_fail(w, c, "SSL_new", ENOMEM);
        return;
    }
    SSL_set_connect_state(c->ssl);
    tls_verify_ip(c->ssl);
    if (c->slot >= 0 && w->sess[c->slot])
        SSL_set_session(c->ssl, w->sess[c->slot]);
    tls_step(w, c);
}

/* --tls-resume: keep the session of a connection that went well for its slot's next one. */
static void tls_keep_session(struct worker *w, struct conn *c) {
    if (c->slot < 0 || !c->ssl)
        return;
    SSL_SESSION *s = SSL_get1_session(c->ssl);
    if (!s)
        return;
    if (!SSL_SESSION_is_resumable(s)) {
        SSL_SESSION_free(s);
        return;
    }
    if (w->sess[c->slot])
        SSL_SESSION_free(w->sess[c->slot]);
    w->sess[c->slot] = s;
}

/* The TCP connection is up (to the proxy, or to the target with --direct). */
static void on_connected(struct worker *w, struct conn *c) {
    if (O.direct) {
        handshake_done(w, c);
        if (O.mode == M_THROUGHPUT) {
            c->st = S_STREAM;
            w->opening--;
            inc(&w->established, 1);
            if (set_events(w, c, O.up ? EPOLLOUT : EPOLLIN) == -1)
                conn_fail(w, c, "epoll_ctl", errno);
            return;
        }
        if (send_all_small(w, c, g_ping, PING_LEN) == -1)
            return;
        c->st = S_READ_ECHO;
        c->got = 0;
        if (set_events(w, c, EPOLLIN) == -1)
            conn_fail(w, c, "epoll_ctl", errno);
        return;
    }
    if (O.tls) {
        tls_start(w, c);
        return;
    }
    send_request(w, c);
}

/* Write the CONNECT request (after the PROXY header, with --proxy-v2); wait for the reply. */
static void send_request(struct worker *w, struct conn *c) {
    if (O.proxy_v2) {
        unsigned char buf[PROXYV2_MAX + sizeof g_request];
        size_t n = proxy_v2_header(c->fd, buf);
        if (n == 0) {
            conn_fail(w, c, "getsockname", errno);
            return;
        }
        memcpy(buf + n, g_request, g_request_len);
        if (send_all_small(w, c, buf, n + g_request_len) == -1)
            return;
    } else if (send_all_small(w, c, g_request, g_request_len) == -1) {
        return;
    }
    c->st = S_READ_REPLY;
    c->hlen = 0;
    if (set_events(w, c, EPOLLIN) == -1)
        conn_fail(w, c, "epoll_ctl", errno);
}

/* Start one connection. Returns -1 when it failed at once (the caller stops starting more
 * until the next loop turn, so a refused or exhausted port cannot spin the loop). */
static int start_conn(struct worker *w) {
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
        set_err(w, "calloc", ENOMEM);
        inc(&w->errors, 1);
        return -1;
    }
    const struct sockaddr_storage *dst = O.direct ? &O.target : &O.proxy;
    socklen_t dlen = O.direct ? O.target_len : O.proxy_len;
    c->slot = -1;
    if (w->tbytes && w->started < w->want)
        c->tb = &w->tbytes[w->started];
    c->fd = socket(dst->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    w->started++;
    w->active++;
    w->opening++;
    if (c->fd == -1) {
        set_err(w, "socket", errno);
        inc(&w->errors, 1);
        if (is_tunnel_mode())
            inc(&w->failed_open, 1);
        w->opening--;
        w->active--;
        free(c);
        return -1;
    }
    int one = 1;
    (void)setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (w->sess && w->nfree > 0)
        c->slot = w->free_slots[--w->nfree];
    c->st = S_CONNECTING;
    c->t0 = now_s();
    int r = connect(c->fd, (const struct sockaddr *)dst, dlen);
    if (r == -1 && errno != EINPROGRESS) {
        conn_fail(w, c, "connect", errno);
        return -1;
    }
    c->events = r == 0 ? EPOLLIN : EPOLLOUT;
    struct epoll_event e = {.events = c->events, .data.ptr = c};
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, c->fd, &e) == -1) {
        conn_fail(w, c, "epoll_ctl", errno);
        return -1;
    }
    if (r == 0) {
        if (!is_tunnel_mode())
            w->opening--;
        on_connected(w, c);
    }
    return 0;
}

/* Handshake/latency: the echo came back; close and count. */
static void echo_complete(struct worker *w, struct conn *c) {
    if (is_tunnel_mode()) { /* idle: the tunnel is proven; hold it */
        c->st = S_IDLE;
        w->opening--;
        inc(&w->established, 1);
        return;
    }
    inc(&w->done, 1);
    w->finished++;
    w->fail_streak = 0;
    if (O.tls_resume)
        tls_keep_session(w, c);
    conn_free(w, c);
}

static void on_read_echo(struct worker *w, struct conn *c) {
    unsigned char buf[PING_LEN];
    ssize_t n = io_recv(c, buf, PING_LEN - c->got);
    if (n > 0) {
        if (memcmp(buf, g_ping + c->got, (size_t)n) != 0) {
            conn_fail(w, c, "echo mismatch", 0);
            return;
        }
        c->got += (size_t)n;
        if (c->got == PING_LEN)
            echo_complete(w, c);
        return;
    }
    if (n == -1 && (errno == EAGAIN || errno == EINTR))
        return;
    io_fail(w, c, n == 0 ? "eof before echo" : "recv echo", n == 0 ? 0 : errno);
}

static void on_read_reply(struct worker *w, struct conn *c) {
    ssize_t n = io_recv(c, c->hdr + c->hlen, HDR_CAP - 1 - c->hlen);
    if (n <= 0) {
        if (n == -1 && (errno == EAGAIN || errno == EINTR))
            return;
        io_fail(w, c, n == 0 ? "eof before 200" : "recv reply", n == 0 ? 0 : errno);
        return;
    }
    c->hlen += (size_t)n;
    c->hdr[c->hlen] = '\0';
    char *end = strstr(c->hdr, "\r\n\r\n");
    if (!end) {
        if (c->hlen == HDR_CAP - 1)
            conn_fail(w, c, "reply too long", 0);
        return;
    }
    if (strncmp(c->hdr, "HTTP/1.", 7) != 0 || strncmp(c->hdr + 8, " 200", 4) != 0) {
        char line[80];
        snprintf(line, sizeof line, "proxy replied %.40s", c->hdr);
        char *nl = strchr(line, '\r');
        if (nl)
            *nl = '\0';
        conn_fail(w, c, line, 0);
        return;
    }
    size_t extra = c->hlen - (size_t)(end + 4 - c->hdr);
    handshake_done(w, c);
    if (O.mode == M_THROUGHPUT) {
        c->st = S_STREAM;
        w->opening--;
        inc(&w->established, 1);
        if (!O.up) {
            inc(&w->bytes, extra);
            if (c->tb)
                inc(c->tb, extra);
        }
        if (set_events(w, c, O.up ? EPOLLOUT : EPOLLIN) == -1)
            conn_fail(w, c, "epoll_ctl", errno);
        return;
    }
    if (extra > 0) {
        conn_fail(w, c, "bytes before the echo", 0);
        return;
    }
    if (send_all_small(w, c, g_ping, PING_LEN) == -1)
        return;
    c->st = S_READ_ECHO;
    c->got = 0;
}

static void on_stream(struct worker *w, struct conn *c, uint32_t ev) {
    if (O.up) {
        if (ev & (EPOLLERR | EPOLLHUP)) {
            int err = 0;
            socklen_t l = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
            conn_fail(w, c, "tunnel closed", err);
            return;
        }
        /* Over TLS (SSL_MODE_ENABLE_PARTIAL_WRITE) one SSL_write returns after one record
         * (16 KiB): keep writing until the socket is full (EAGAIN), up to the same 2 MiB a turn.
         * A retry after EAGAIN repeats the same call, as OpenSSL wants. */
        int calls = c->ssl ? 128 : 8;
        for (int i = 0; i < calls; i++) {
            ssize_t n = io_send(c, g_chunk, O.chunk);
            if (n > 0) {
                inc(&w->bytes, (uint64_t)n);
                if (c->tb)
                    inc(c->tb, (uint64_t)n);
                if (!c->ssl && (size_t)n < O.chunk)
                    return; /* socket buffer full */
                continue;
            }
            if (n == -1 && (errno == EAGAIN || errno == EINTR))
                return;
            io_fail(w, c, "send stream", errno);
            return;
        }
        return;
    }
    /* SSL_read returns one record (at most 16 KiB) a call, and without read-ahead leaves
     * nothing buffered that epoll would not report: a bigger bound, the same 2 MiB a turn. */
    int calls = c->ssl ? 128 : 8;
    for (int i = 0; i < calls; i++) {
        ssize_t n = io_recv(c, g_chunk, O.chunk);
        if (n > 0) {
            inc(&w->bytes, (uint64_t)n);
            if (c->tb)
                inc(c->tb, (uint64_t)n);
            if (!c->ssl && (size_t)n < O.chunk)
                return; /* drained */
            continue;
        }
        if (n == -1 && (errno == EAGAIN || errno == EINTR))
            return;
        io_fail(w, c, n == 0 ? "tunnel closed" : "recv stream", n == 0 ? 0 : errno);
        return;
    }
}

static void on_event(struct worker *w, struct conn *c, uint32_t ev) {
    switch (c->st) {
    case S_CONNECTING: {
        int err = 0;
        socklen_t l = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) == -1)
            err = errno;
        if (err) {
            conn_fail(w, c, "connect", err);
            return;
        }
        if (!is_tunnel_mode())
            w->opening--;
        on_connected(w, c);
        return;
    }
    case S_TLS_HANDSHAKE:
        tls_step(w, c);
        return;
    case S_READ_REPLY:
        on_read_reply(w, c);
        return;
    case S_READ_ECHO:
        on_read_echo(w, c);
        return;
    case S_STREAM:
        on_stream(w, c, ev);
        return;
    case S_IDLE: {
        /* Nothing should arrive on an idle tunnel: any event is data or a close. */
        char b[256];
        ssize_t n = io_recv(c, b, sizeof b);
        if (n == -1 && (errno == EAGAIN || errno == EINTR))
            return; /* over TLS: a late session ticket, say */
        conn_fail(w, c, n == 0 ? "idle tunnel closed" : "idle tunnel got data",
                  n == -1 ? errno : 0);
        return;
    }
    case S_H2: /* --h2 connections have their own loop (h2_worker_main) */
        return;
    }
}

/* Start connections up to this worker's target for the mode. */
static void top_up(struct worker *w) {
    if (atomic_load_explicit(&g_stop, memory_order_relaxed))
        return;
    if (w->started >= MAX_STARTS)
        return; /* a bound on count as well as on time */
    if (w->fail_streak > 100) {
        /* Nothing but failures (refused, 5xx): retry at most 100 times a second, not in a
         * tight loop, until the run's time is up. */
        double now = now_s();
        if (now < w->next_try || w->active > 0)
            return;
        w->next_try = now + 0.01;
        start_conn(w);
        return;
    }
    switch (O.mode) {
    case M_THROUGHPUT:
        while (w->started < w->want)
            if (start_conn(w) == -1)
                break;
        break;
    case M_IDLE:
        while (w->started < w->want && w->opening < O.open_concurrency)
            if (start_conn(w) == -1)
                break;
        break;
    case M_HANDSHAKES:
        while (w->active < w->want && w->started < MAX_STARTS)
            if (start_conn(w) == -1)
                break;
        break;
    case M_LATENCY:
        while (w->active < w->want && w->started < w->quota)
            if (start_conn(w) == -1)
                break;
        break;
    }
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct epoll_event evs[512];
    top_up(w);
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        if (now_s() > g_hard_deadline)
            break;
        if (O.mode == M_LATENCY && w->started >= w->quota && w->active == 0)
            break;
        int n = epoll_wait(w->ep, evs, 512, 50);
        if (n == -1 && errno != EINTR) {
            set_err(w, "epoll_wait", errno);
            break;
        }
        for (int i = 0; i < n; i++)
            on_event(w, evs[i].data.ptr, evs[i].events);
        top_up(w);
    }
    return NULL;
}

/* ---- HTTP/2 (--h2) ----
 * One connection per worker: TCP connect, TLS handshake with ALPN h2, then an nghttp2 client
 * session driven by hand: what SSL_read returns goes to nghttp2_session_mem_recv, and the
 * frames of nghttp2_session_mem_send are gathered into an out buffer that SSL_write drains
 * (SSL_MODE_ENABLE_PARTIAL_WRITE: one record a call, as plain TLS tunnels). The callbacks only
 * mark streams and submit frames; a stream is counted and freed when nghttp2 closes it, and
 * the connection is freed by the event loop, never from inside nghttp2. */

#define H2_OUT_FILL (64 * 1024) /* frames gathered for the SSL_writes of one round */
#define H2_ROUNDS   128         /* record reads or writes per wake-up (2 MiB, as plain TLS) */

enum h2st {
    HS_REPLY = 1, /* CONNECT submitted, waiting for :status */
    HS_ECHO,      /* 200; the 64 bytes sent, waiting for them to come back */
    HS_ENDING,    /* echoed; our END_STREAM submitted, waiting for the proxy's */
    HS_STREAM,    /* throughput: moving bytes */
    HS_IDLE       /* idle: proven, held */
};

struct h2stream {
    struct h2stream *prev, *next;
    int32_t id;
    enum h2st st;
    int idx;         /* throughput: the tunnel's byte counter; -1 otherwise */
    int status;      /* :status of the reply */
    double t0;       /* CONNECT submitted */
    size_t got;      /* echo bytes back */
    size_t ping_off; /* echo bytes handed to nghttp2 */
    bool remote_end; /* the proxy's END_STREAM arrived */
    /* why we reset it (it is counted as a failure when it closes), in failbuf */
    const char *fail;
    char failbuf[96];
};

struct h2conn {
    struct conn c; /* first: epoll's data.ptr is &c, which is the h2conn */
    struct worker *w;
    nghttp2_session *ng;
    struct h2stream *streams; /* submitted and not closed */
    bool ready;               /* the proxy's SETTINGS arrived: streams may be opened */
    bool goaway;              /* GOAWAY received: no new streams */
    bool dead;                /* to be closed by the event loop (why says why) */
    uint32_t peer_max;        /* the proxy's SETTINGS_MAX_CONCURRENT_STREAMS */
    unsigned char *out;       /* frames not yet taken by SSL_write */
    size_t outlen, outoff, outcap;
    char why[160]; /* as a worker's err */
};

__attribute__((format(printf, 2, 3))) static void h2_failf(struct h2conn *h, const char *fmt, ...) {
    if (h->dead)
        return;
    h->dead = true;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->why, sizeof h->why, fmt, ap);
    va_end(ap);
}

static struct h2stream *h2_stream(nghttp2_session *ng, int32_t id) {
    return id > 0 ? nghttp2_session_get_stream_user_data(ng, id) : NULL;
}

/* The stream is over: count it, unlink and free it. ok: its echo cycle completed. */
static void h2_stream_end(struct h2conn *h, struct h2stream *s, bool ok, const char *why) {
    struct worker *w = h->w;
    if (s->prev)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    w->inflight--;
    if (ok) {
        inc(&w->done, 1);
        w->finished++;
        w->fail_streak = 0;
    } else {
        set_err(w, why, 0);
        inc(&w->errors, 1);
        w->fail_streak++;
        if (is_tunnel_mode()) {
            if (s->st == HS_STREAM || s->st == HS_IDLE) {
                inc(&w->lost, 1);
            } else {
                inc(&w->failed_open, 1);
                w->opening--;
            }
        }
    }
    free(s);
}

/* A stream we no longer want (a refusal, a bad echo): RST_STREAM CANCEL; it is counted as a
 * failure, with this reason, when nghttp2 closes it. */
static void h2_reset(struct h2conn *h, struct h2stream *s, const char *why) {
    if (!s->fail) {
        snprintf(s->failbuf, sizeof s->failbuf, "%s", why);
        s->fail = s->failbuf;
    }
    (void)nghttp2_submit_rst_stream(h->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
}

/* DATA sources: the upload stream (any bytes, never ends), the 64-byte echo, the empty end. */
static ssize_t h2_up_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                          uint32_t *flags, nghttp2_data_source *src, void *user) {
    (void)ng, (void)id, (void)flags, (void)src, (void)user;
    size_t n = len < O.chunk ? len : O.chunk;
    memcpy(buf, g_chunk, n);
    return (ssize_t)n;
}

static ssize_t h2_ping_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *user) {
    (void)ng, (void)id, (void)user;
    struct h2stream *s = src->ptr;
    size_t n = PING_LEN - s->ping_off;
    if (n > len)
        n = len;
    memcpy(buf, g_ping + s->ping_off, n);
    s->ping_off += n;
    if (s->ping_off == PING_LEN)
        *flags |= NGHTTP2_DATA_FLAG_EOF; /* no END_STREAM: nghttp2_submit_data had none */
    return (ssize_t)n;
}

static ssize_t h2_end_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                           uint32_t *flags, nghttp2_data_source *src, void *user) {
    (void)ng, (void)id, (void)buf, (void)len, (void)src, (void)user;
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return 0;
}

static void h2_submit_data(struct h2conn *h, struct h2stream *s, uint8_t flags,
                           nghttp2_data_source_read_callback cb) {
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = cb};
    int r = nghttp2_submit_data(h->ng, flags, s->id, &prd);
    if (r != 0) {
        char m[96];
        snprintf(m, sizeof m, "nghttp2_submit_data: %s", nghttp2_strerror(r));
        h2_reset(h, s, m);
    }
}

/* The reply's HEADERS: 200 opens the tunnel; anything else is a refusal. */
static void h2_on_reply(struct h2conn *h, struct h2stream *s) {
    struct worker *w = h->w;
    if (s->st != HS_REPLY || s->fail)
        return; /* trailers, or a stream already given up */
    if (s->status != 200) {
        char m[64];
        snprintf(m, sizeof m, "proxy replied :status %d", s->status);
        h2_reset(h, s, m);
        return;
    }
    double ms = (now_s() - s->t0) * 1e3;
    bool rec = false;
    if (O.mode == M_LATENCY)
        rec = w->finished >= O.warmup_count / O.threads;
    else if (O.mode == M_HANDSHAKES)
        rec = atomic_load_explicit(&w->record, memory_order_relaxed);
    if (rec) {
        add_sample(w, ms);
        add_to(&w->req, ms); /* CONNECT->200 alone: the stream's whole opening */
    }
    if (O.mode == M_THROUGHPUT) {
        s->st = HS_STREAM;
        w->opening--;
        inc(&w->established, 1);
        if (O.up)
            h2_submit_data(h, s, NGHTTP2_FLAG_NONE, h2_up_read);
        return;
    }
    s->st = HS_ECHO;
    h2_submit_data(h, s, NGHTTP2_FLAG_NONE, h2_ping_read);
}

static int h2_on_header(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                        size_t nl, const uint8_t *value, size_t vl, uint8_t flags, void *user) {
    (void)flags, (void)user;
    if (frame->hd.type != NGHTTP2_HEADERS || nl != 7 || memcmp(name, ":status", 7) != 0)
        return 0;
    struct h2stream *s = h2_stream(ng, frame->hd.stream_id);
    if (!s)
        return 0;
    int st = 0;
    for (size_t i = 0; i < vl && i < 4; i++)
        st = st * 10 + (value[i] >= '0' && value[i] <= '9' ? value[i] - '0' : 0);
    s->status = st;
    return 0;
}

static int h2_on_frame_recv(nghttp2_session *ng, const nghttp2_frame *frame, void *user) {
    struct h2conn *h = user;
    struct worker *w = h->w;
    struct h2stream *s = h2_stream(ng, frame->hd.stream_id);
    switch (frame->hd.type) {
    case NGHTTP2_SETTINGS:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK)
            break;
        h->peer_max =
            nghttp2_session_get_remote_settings(ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        atomic_store(&w->h2_peer_max, h->peer_max);
        if (!h->ready) {
            h->ready = true;
            if (is_tunnel_mode() && (uint32_t)w->want > h->peer_max)
                h2_failf(h,
                         "the proxy allows %u concurrent streams a connection, fewer than the "
                         "%d tunnels of this loadgen thread (use more --threads)",
                         h->peer_max, w->want);
        }
        break;
    case NGHTTP2_GOAWAY: {
        h->goaway = true;
        inc(&w->h2_goaways, 1);
        if (frame->goaway.error_code != NGHTTP2_NO_ERROR) {
            char m[120];
            snprintf(m, sizeof m, "GOAWAY %s (last stream %d)",
                     nghttp2_http2_strerror(frame->goaway.error_code),
                     frame->goaway.last_stream_id);
            set_err(w, m, 0);
            inc(&w->errors, 1);
        }
        break;
    }
    case NGHTTP2_HEADERS:
        if (s && frame->headers.cat == NGHTTP2_HCAT_RESPONSE)
            h2_on_reply(h, s);
        break;
    default:
        break;
    }
    if (s && (frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        s->remote_end = true;
        if (s->st != HS_ENDING && !s->fail)
            h2_reset(h, s,
                     s->st == HS_ECHO     ? "END_STREAM before the echo"
                     : s->st == HS_REPLY  ? "END_STREAM with the reply"
                     : s->st == HS_STREAM ? "tunnel ended by the proxy"
                                          : "idle tunnel ended by the proxy");
    }
    return 0;
}

static int h2_on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                      size_t len, void *user) {
    (void)flags;
    struct h2conn *h = user;
    struct worker *w = h->w;
    struct h2stream *s = h2_stream(ng, id);
    if (!s || s->fail)
        return 0;
    switch (s->st) {
    case HS_STREAM:
        if (!O.up) {
            inc(&w->bytes, len);
            if (w->tbytes && s->idx >= 0)
                inc(&w->tbytes[s->idx], len);
        }
        return 0;
    case HS_ECHO:
        if (s->got + len > PING_LEN || memcmp(data, g_ping + s->got, len) != 0) {
            h2_reset(h, s, "echo mismatch");
            return 0;
        }
        s->got += len;
        if (s->got < PING_LEN)
            return 0;
        if (O.mode == M_IDLE) { /* proven: hold it */
            s->st = HS_IDLE;
            w->opening--;
            inc(&w->established, 1);
            return 0;
        }
        s->st = HS_ENDING;
        h2_submit_data(h, s, NGHTTP2_FLAG_END_STREAM, h2_end_read);
        return 0;
    case HS_IDLE:
        h2_reset(h, s, "idle tunnel got data");
        return 0;
    default:
        h2_reset(h, s, "bytes after the echo");
        return 0;
    }
}

/* Upload: DATA payload counted as it is serialized into the TLS stream. */
static int h2_on_frame_send(nghttp2_session *ng, const nghttp2_frame *frame, void *user) {
    if (frame->hd.type != NGHTTP2_DATA || O.mode != M_THROUGHPUT || !O.up)
        return 0;
    struct h2conn *h = user;
    struct worker *w = h->w;
    size_t n = frame->hd.length - (frame->data.padlen ? frame->data.padlen : 0);
    inc(&w->bytes, n);
    struct h2stream *s = h2_stream(ng, frame->hd.stream_id);
    if (s && w->tbytes && s->idx >= 0)
        inc(&w->tbytes[s->idx], n);
    return 0;
}

/* A CONNECT that could not go out (GOAWAY received, say): the stream never opened. */
static int h2_on_not_send(nghttp2_session *ng, const nghttp2_frame *frame, int err, void *user) {
    struct h2conn *h = user;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    for (struct h2stream *s = h->streams; s; s = s->next) {
        if (s->id != frame->hd.stream_id)
            continue;
        char m[120];
        snprintf(m, sizeof m, "CONNECT not sent: %s", nghttp2_strerror(err));
        (void)nghttp2_session_set_stream_user_data(ng, s->id, NULL);
        h2_stream_end(h, s, false, m);
        break;
    }
    return 0;
}

static int h2_on_close(nghttp2_session *ng, int32_t id, uint32_t code, void *user) {
    struct h2conn *h = user;
    struct h2stream *s = h2_stream(ng, id);
    if (!s)
        return 0;
    (void)nghttp2_session_set_stream_user_data(ng, id, NULL);
    bool ok = s->st == HS_ENDING && s->remote_end && code == NGHTTP2_NO_ERROR && !s->fail;
    char m[120];
    const char *why = s->fail;
    if (!ok && !why) {
        snprintf(m, sizeof m, "stream %s by the proxy (%s)", code ? "reset" : "closed",
                 nghttp2_http2_strerror(code));
        why = m;
    }
    h2_stream_end(h, s, ok, why);
    return 0;
}

static int h2_session_start(struct h2conn *h) {
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) {
        h2_failf(h, "nghttp2_session_callbacks_new failed");
        return -1;
    }
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, h2_on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2_on_data);
    nghttp2_session_callbacks_set_on_header_callback(cb, h2_on_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_on_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, h2_on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, h2_on_not_send);
    int r = nghttp2_session_client_new(&h->ng, cb, h);
    nghttp2_session_callbacks_del(cb);
    if (r == 0) {
        nghttp2_settings_entry iv[] = {
            {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
            {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, (uint32_t)O.h2_stream_window},
        };
        r = nghttp2_submit_settings(h->ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]);
    }
    if (r == 0) /* the connection's receive window, raised by a WINDOW_UPDATE */
        r = nghttp2_session_set_local_window_size(h->ng, NGHTTP2_FLAG_NONE, 0,
                                                  (int32_t)O.h2_conn_window);
    if (r != 0) {
        h2_failf(h, "nghttp2 session: %s", nghttp2_strerror(r));
        return -1;
    }
    return 0;
}

/* Write what nghttp2 has to send, as far as the socket takes it (H2_ROUNDS records a turn);
 * EPOLLOUT while anything waits. */
static void h2_flush(struct h2conn *h) {
    struct worker *w = h->w;
    for (int i = 0; i < H2_ROUNDS && !h->dead; i++) {
        if (h->outoff == h->outlen) {
            h->outoff = h->outlen = 0;
            while (h->outlen < H2_OUT_FILL) {
                const uint8_t *p;
                ssize_t n = nghttp2_session_mem_send(h->ng, &p);
                if (n < 0) {
                    h2_failf(h, "nghttp2_session_mem_send: %s", nghttp2_strerror((int)n));
                    return;
                }
                if (n == 0)
                    break;
                if (h->outlen + (size_t)n > h->outcap) {
                    size_t cap = h->outcap ? h->outcap * 2 : 2 * H2_OUT_FILL;
                    while (cap < h->outlen + (size_t)n)
                        cap *= 2;
                    unsigned char *o = realloc(h->out, cap);
                    if (!o) {
                        h2_failf(h, "realloc: %s", strerror(ENOMEM));
                        return;
                    }
                    h->out = o;
                    h->outcap = cap;
                }
                memcpy(h->out + h->outlen, p, (size_t)n);
                h->outlen += (size_t)n;
            }
            if (h->outlen == 0) {
                if (!nghttp2_session_want_read(h->ng) && !nghttp2_session_want_write(h->ng))
                    h2_failf(h, "the HTTP/2 session ended%s", h->goaway ? " (GOAWAY)" : "");
                else if (set_events(w, &h->c, EPOLLIN) == -1)
                    h2_failf(h, "epoll_ctl: %s", strerror(errno));
                return;
            }
        }
        ssize_t k = io_send(&h->c, h->out + h->outoff, h->outlen - h->outoff);
        if (k > 0) {
            h->outoff += (size_t)k;
            continue;
        }
        if (k == -1 && (errno == EAGAIN || errno == EINTR)) {
            if (set_events(w, &h->c, EPOLLIN | EPOLLOUT) == -1)
                h2_failf(h, "epoll_ctl: %s", strerror(errno));
            return;
        }
        if (k == -1 && errno == EPROTO)
            h2_failf(h, "send: TLS: %s", g_tls_err);
        else
            h2_failf(h, "send: %s", strerror(k == -1 ? errno : EPIPE));
        return;
    }
    if (!h->dead && set_events(w, &h->c, EPOLLIN | EPOLLOUT) == -1) /* more next turn */
        h2_failf(h, "epoll_ctl: %s", strerror(errno));
}

/* Read what TLS has (H2_ROUNDS records a turn) and hand it to nghttp2. */
static void h2_read(struct h2conn *h) {
    unsigned char buf[16384]; /* one TLS record */
    for (int i = 0; i < H2_ROUNDS && !h->dead; i++) {
        ssize_t n = io_recv(&h->c, buf, sizeof buf);
        if (n > 0) {
            ssize_t r = nghttp2_session_mem_recv(h->ng, buf, (size_t)n);
            if (r < 0) {
                h2_failf(h, "HTTP/2 from the proxy: %s", nghttp2_strerror((int)r));
                return;
            }
            continue;
        }
        if (n == -1 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n == 0)
            h2_failf(h, "the proxy closed the connection%s", h->goaway ? " after GOAWAY" : "");
        else if (errno == EPROTO)
            h2_failf(h, "recv: TLS: %s", g_tls_err);
        else
            h2_failf(h, "recv: %s", strerror(errno));
        return;
    }
}

/* Free the connection; its open streams fail with it (lost, or failed to open), and in
 * throughput/idle so do the tunnels not yet submitted. */
static void h2_close(struct worker *w, struct h2conn *h) {
    const char *why = h->why[0] ? h->why : "connection closed";
    if (h->ng)
        nghttp2_session_del(h->ng); /* calls no callback */
    h->ng = NULL;
    bool any = h->streams != NULL;
    while (h->streams)
        h2_stream_end(h, h->streams, false, why);
    if (!any) {
        set_err(w, why, 0);
        inc(&w->errors, 1);
        w->fail_streak++;
    }
    if (is_tunnel_mode()) {
        if (w->started < w->want) {
            inc(&w->failed_open, (uint64_t)(w->want - w->started));
            w->started = w->want;
        }
        w->h2_given_up = true;
    }
    if (h->c.ssl) {
        SSL_free(h->c.ssl);
        ERR_clear_error();
    }
    if (h->c.fd != -1)
        close(h->c.fd);
    free(h->out);
    free(h);
    w->h2 = NULL;
}

static void h2_tls_step(struct worker *w, struct h2conn *h) {
    SSL *ssl = h->c.ssl;
    int r = SSL_do_handshake(ssl);
    if (r == 1) {
        tls_handshake_done(w, &h->c);
        const unsigned char *p = NULL;
        unsigned int n = 0;
        SSL_get0_alpn_selected(ssl, &p, &n);
        if (n != 2 || memcmp(p, "h2", 2) != 0) {
            h2_failf(h, "the proxy did not select ALPN h2 (it selected %.*s)", n ? (int)n : 4,
                     n ? (const char *)p : "none");
            return;
        }
        inc(&w->h2_conns, 1);
        if (h2_session_start(h) != 0)
            return;
        h->c.st = S_H2;
        h2_flush(h);
        return;
    }
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (set_events(w, &h->c, e == SSL_ERROR_WANT_READ ? EPOLLIN : EPOLLOUT) == -1)
            h2_failf(h, "epoll_ctl: %s", strerror(errno));
        return;
    }
    if (e == SSL_ERROR_SYSCALL) {
        int err = errno ? errno : ECONNRESET;
        ERR_clear_error();
        h2_failf(h, "TLS handshake: %s", strerror(err));
        return;
    }
    tls_note_error(e);
    h2_failf(h, "TLS handshake: %s", g_tls_err);
}

static void h2_tls_start(struct worker *w, struct h2conn *h) {
    h->c.st = S_TLS_HANDSHAKE;
    h->c.t_tcp = now_s();
    h->c.ssl = SSL_new(g_ssl_ctx);
    if (!h->c.ssl || SSL_set_fd(h->c.ssl, h->c.fd) != 1) {
        tls_note_error(0);
        h2_failf(h, "SSL_new: %s", g_tls_err);
        return;
    }
    SSL_set_connect_state(h->c.ssl);
    tls_verify_ip(h->c.ssl);
    h2_tls_step(w, h);
}

static void h2_connect(struct worker *w) {
    struct h2conn *h = calloc(1, sizeof *h);
    if (!h) {
        set_err(w, "calloc", ENOMEM);
        inc(&w->errors, 1);
        w->fail_streak++;
        return;
    }
    h->w = w;
    h->c.slot = -1;
    w->h2 = h;
    w->h2_opened++;
    h->c.fd = socket(O.proxy.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (h->c.fd == -1) {
        h2_failf(h, "socket: %s", strerror(errno));
        h2_close(w, h);
        return;
    }
    int one = 1;
    (void)setsockopt(h->c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    h->c.st = S_CONNECTING;
    h->c.t0 = now_s();
    int r = connect(h->c.fd, (const struct sockaddr *)&O.proxy, O.proxy_len);
    if (r == -1 && errno != EINPROGRESS) {
        h2_failf(h, "connect: %s", strerror(errno));
        h2_close(w, h);
        return;
    }
    h->c.events = r == 0 ? EPOLLIN : EPOLLOUT;
    struct epoll_event e = {.events = h->c.events, .data.ptr = &h->c};
    if (epoll_ctl(w->ep, EPOLL_CTL_ADD, h->c.fd, &e) == -1) {
        h2_failf(h, "epoll_ctl: %s", strerror(errno));
        h2_close(w, h);
        return;
    }
    if (r == 0)
        h2_tls_start(w, h);
    if (h->dead)
        h2_close(w, h);
}

/* Submit one CONNECT stream. idx: its tunnel (throughput) or -1. */
static int h2_submit(struct worker *w, struct h2conn *h, int idx) {
    struct h2stream *s = calloc(1, sizeof *s);
    w->started++;
    if (!s) {
        set_err(w, "calloc", ENOMEM);
        inc(&w->errors, 1);
        if (is_tunnel_mode())
            inc(&w->failed_open, 1);
        return -1;
    }
    s->idx = idx;
    s->st = HS_REPLY;
    s->t0 = now_s();
    nghttp2_nv nva[] = {
        {(uint8_t *)":method", (uint8_t *)"CONNECT", 7, 7, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)O.target_str, 10, strlen(O.target_str),
         NGHTTP2_NV_FLAG_NONE},
    };
    /* HEADERS without END_STREAM (nghttp2_submit_request with no body would set it) */
    int32_t id = nghttp2_submit_headers(h->ng, NGHTTP2_FLAG_NONE, -1, NULL, nva, 2, s);
    if (id < 0) {
        char m[96];
        snprintf(m, sizeof m, "nghttp2_submit_headers: %s", nghttp2_strerror(id));
        set_err(w, m, 0);
        inc(&w->errors, 1);
        w->fail_streak++;
        if (is_tunnel_mode())
            inc(&w->failed_open, 1);
        free(s);
        return -1;
    }
    s->id = id;
    s->next = h->streams;
    if (h->streams)
        h->streams->prev = s;
    h->streams = s;
    w->inflight++;
    if (is_tunnel_mode())
        w->opening++;
    return 0;
}

/* Open the connection when there is none (again only in handshakes/latency), and streams up to
 * the mode's target once the proxy's SETTINGS are in. */
static void h2_top_up(struct worker *w) {
    if (atomic_load_explicit(&g_stop, memory_order_relaxed))
        return;
    struct h2conn *h = w->h2;
    if (!h) {
        if (w->h2_given_up || w->want == 0 || w->started >= MAX_STARTS ||
            (O.mode == M_LATENCY && w->started >= w->quota))
            return;
        if (w->fail_streak > 100) { /* as plain connections: at most 100 tries a second */
            double now = now_s();
            if (now < w->next_try)
                return;
            w->next_try = now + 0.01;
        }
        h2_connect(w);
        return;
    }
    if (h->dead || !h->ready || h->goaway)
        return;
    int cap = h->peer_max < (uint32_t)w->want ? (int)h->peer_max : w->want;
    bool any = false;
    switch (O.mode) {
    case M_THROUGHPUT:
        while (w->started < w->want && h2_submit(w, h, (int)w->started) == 0)
            any = true;
        break;
    case M_IDLE:
        while (w->started < w->want && w->opening < O.open_concurrency && h2_submit(w, h, -1) == 0)
            any = true;
        break;
    case M_HANDSHAKES:
        while (w->inflight < cap && w->started < MAX_STARTS && h2_submit(w, h, -1) == 0)
            any = true;
        break;
    case M_LATENCY:
        while (w->inflight < cap && w->started < w->quota && h2_submit(w, h, -1) == 0)
            any = true;
        break;
    }
    if (any)
        h2_flush(h);
    if (h->dead)
        h2_close(w, h);
}

static void h2_on_event(struct worker *w, struct h2conn *h, uint32_t ev) {
    switch (h->c.st) {
    case S_CONNECTING: {
        int err = 0;
        socklen_t l = sizeof err;
        if (getsockopt(h->c.fd, SOL_SOCKET, SO_ERROR, &err, &l) == -1)
            err = errno;
        if (err)
            h2_failf(h, "connect: %s", strerror(err));
        else
            h2_tls_start(w, h);
        break;
    }
    case S_TLS_HANDSHAKE:
        h2_tls_step(w, h);
        break;
    default:
        if (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))
            h2_read(h);
        if (!h->dead)
            h2_flush(h);
        break;
    }
    if (h->dead)
        h2_close(w, h);
}

static void *h2_worker_main(void *arg) {
    struct worker *w = arg;
    struct epoll_event evs[4];
    h2_top_up(w);
    while (!atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        if (now_s() > g_hard_deadline)
            break;
        if (O.mode == M_LATENCY && w->started >= w->quota && w->inflight == 0)
            break;
        int n = epoll_wait(w->ep, evs, 4, 50);
        if (n == -1 && errno != EINTR) {
            set_err(w, "epoll_wait", errno);
            break;
        }
        for (int i = 0; i < n; i++)
            if (w->h2 && evs[i].data.ptr == &w->h2->c)
                h2_on_event(w, w->h2, evs[i].events);
        h2_top_up(w);
    }
    return NULL;
}

/* ---- argument parsing ---- */

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
    long port = strtol(colon + 1, NULL, 10);
    if (port < 1 || port > 65535)
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
        fprintf(stderr, "loadgen: %s\n", why);
    fprintf(stderr,
            "usage: loadgen throughput --tunnels N --dir up|down [--seconds S]\n"
            "       loadgen handshakes --concurrency C [--seconds S]\n"
            "       loadgen latency [--concurrency 1] --count N [--warmup-count W]\n"
            "       loadgen idle --tunnels N [--pid PID] [--hold S]\n"
            "  common: --proxy HOST:PORT --target HOST:PORT [--direct] [--pid PID]\n"
            "          [--proxy-v2] (a PROXY protocol v2 header before each CONNECT)\n"
            "          [--threads T] [--warmup S] [--chunk BYTES] [--timeout S] [--label TEXT]\n"
            "          [--tls [--tls-resume] [--cacert FILE] [--tls-suites LIST]] (TLS to the "
            "proxy)\n"
            "          [--tls --h2 [--h2-stream-window B] [--h2-connection-window B]] (HTTP/2: "
            "one\n"
            "          connection per thread, every tunnel a CONNECT stream on it)\n"
            "  loopback addresses only (127.0.0.0/8, ::1)\n");
    return 2;
}

static int parse_args(int argc, char **argv) {
    if (argc < 2)
        return usage(NULL);
    if (strcmp(argv[1], "throughput") == 0)
        O.mode = M_THROUGHPUT;
    else if (strcmp(argv[1], "handshakes") == 0)
        O.mode = M_HANDSHAKES;
    else if (strcmp(argv[1], "latency") == 0)
        O.mode = M_LATENCY;
    else if (strcmp(argv[1], "idle") == 0)
        O.mode = M_IDLE;
    else
        return usage("unknown mode");
    const char *proxy = "127.0.0.1:3128", *target = NULL, *dir = NULL;
    O.tunnels = 1;
    O.concurrency = 1;
    O.threads = 1;
    O.open_concurrency = 128;
    O.count = 1000;
    O.warmup_count = -1;
    O.seconds = 5;
    O.warmup = 1;
    O.hold = 3;
    O.open_timeout = 60;
    O.chunk = 256 * 1024;
    O.label = "";
    O.h2_stream_window = 1L << 20;
    O.h2_conn_window = 16L << 20;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--direct") == 0) {
            O.direct = true;
            continue;
        }
        if (strcmp(a, "--proxy-v2") == 0) {
            O.proxy_v2 = true;
            continue;
        }
        if (strcmp(a, "--tls") == 0) {
            O.tls = true;
            continue;
        }
        if (strcmp(a, "--tls-resume") == 0) {
            O.tls_resume = true;
            continue;
        }
        if (strcmp(a, "--h2") == 0) {
            O.h2 = true;
            continue;
        }
        if (!v)
            return usage("option needs a value");
        i++;
        if (strcmp(a, "--proxy") == 0)
            proxy = v;
        else if (strcmp(a, "--target") == 0)
            target = v;
        else if (strcmp(a, "--tunnels") == 0)
            O.tunnels = (int)strtol(v, NULL, 10);
        else if (strcmp(a, "--dir") == 0)
            dir = v;
        else if (strcmp(a, "--seconds") == 0)
            O.seconds = strtod(v, NULL);
        else if (strcmp(a, "--warmup") == 0)
            O.warmup = strtod(v, NULL);
        else if (strcmp(a, "--concurrency") == 0)
            O.concurrency = (int)strtol(v, NULL, 10);
        else if (strcmp(a, "--count") == 0)
            O.count = strtol(v, NULL, 10);
        else if (strcmp(a, "--warmup-count") == 0)
            O.warmup_count = strtol(v, NULL, 10);
        else if (strcmp(a, "--pid") == 0)
            O.pid = strtol(v, NULL, 10);
        else if (strcmp(a, "--threads") == 0)
            O.threads = (int)strtol(v, NULL, 10);
        else if (strcmp(a, "--hold") == 0)
            O.hold = strtod(v, NULL);
        else if (strcmp(a, "--open-concurrency") == 0)
            O.open_concurrency = (int)strtol(v, NULL, 10);
        else if (strcmp(a, "--open-timeout") == 0)
            O.open_timeout = strtod(v, NULL);
        else if (strcmp(a, "--chunk") == 0)
            O.chunk = (size_t)strtoul(v, NULL, 10);
        else if (strcmp(a, "--timeout") == 0)
            O.timeout = strtod(v, NULL);
        else if (strcmp(a, "--label") == 0)
            O.label = v;
        else if (strcmp(a, "--cacert") == 0)
            O.cacert = v;
        else if (strcmp(a, "--tls-suites") == 0)
            O.tls_suites = v;
        else if (strcmp(a, "--h2-stream-window") == 0)
            O.h2_stream_window = strtol(v, NULL, 10);
        else if (strcmp(a, "--h2-connection-window") == 0)
            O.h2_conn_window = strtol(v, NULL, 10);
        else
            return usage("unknown option");
    }
    if (!target)
        return usage("--target is required");
    if (O.proxy_v2 && O.direct)
        return usage("--proxy-v2 is for a proxy, not with --direct");
    if ((O.tls_resume || O.cacert || O.tls_suites) && !O.tls)
        return usage("--tls-resume, --cacert and --tls-suites go with --tls");
    if (O.tls && (O.direct || O.proxy_v2))
        return usage("--tls is TLS to the proxy: not with --direct or --proxy-v2");
    if (O.h2 && (!O.tls || O.tls_resume))
        return usage("--h2 needs --tls, and is one connection: not with --tls-resume");
    if (O.h2_stream_window < 65535 || O.h2_stream_window > INT32_MAX || O.h2_conn_window < 65535 ||
        O.h2_conn_window > INT32_MAX)
        return usage("--h2-stream-window and --h2-connection-window: 65535 to 2^31-1");
    int r = parse_addr(target, &O.target, &O.target_len);
    if (r == 0 && !O.direct)
        r = parse_addr(proxy, &O.proxy, &O.proxy_len);
    if (r == -2)
        return usage("only loopback addresses are allowed");
    if (r != 0)
        return usage("bad HOST:PORT");
    snprintf(O.target_str, sizeof O.target_str, "%s", target);
    if (O.mode == M_THROUGHPUT) {
        if (!dir || (strcmp(dir, "up") != 0 && strcmp(dir, "down") != 0))
            return usage("--dir up|down is required");
        O.up = strcmp(dir, "up") == 0;
    }
    if (O.threads < 1 || O.threads > MAX_THREADS || O.tunnels < 1 || O.tunnels > 100000 ||
        O.concurrency < 1 || O.concurrency > 100000 || O.count < 1 || O.count > 10000000 ||
        O.seconds <= 0 || O.seconds > 3600 || O.warmup < 0 || O.warmup > 600 || O.hold < 0 ||
        O.hold > 600 || O.chunk < 1024 || O.chunk > 16 * 1024 * 1024 || O.open_concurrency < 1 ||
        O.open_timeout <= 0 || O.open_timeout > 600 || O.timeout < 0 || O.timeout > 7200)
        return usage("value out of range");
    if (O.warmup_count < 0)
        O.warmup_count = O.count / 10 < 100 ? O.count / 10 : 100;
    if (O.timeout == 0) {
        switch (O.mode) {
        case M_THROUGHPUT:
            O.timeout = 15 + O.warmup + O.seconds;
            break;
        case M_HANDSHAKES:
            O.timeout = 10 + O.warmup + O.seconds;
            break;
        case M_LATENCY:
            O.timeout = 60;
            break;
        case M_IDLE:
            O.timeout = O.open_timeout + O.hold + 15;
            break;
        }
    }
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, long n, double p) {
    if (n == 0)
        return -1;
    long i = (long)(p / 100.0 * (double)(n - 1) + 0.5);
    return v[i < n ? i : n - 1];
}

static void raise_nofile(void) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static uint64_t sum(struct worker *ws, size_t off) {
    uint64_t s = 0;
    for (int i = 0; i < O.threads; i++)
        s += atomic_load((_Atomic uint64_t *)((char *)&ws[i] + off));
    return s;
}
#define SUM(field) sum(ws, offsetof(struct worker, field))

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

static void print_common(const char *mode, struct worker *ws) {
    printf("{\"mode\":\"%s\",\"via\":\"%s\",\"label\":", mode, O.direct ? "direct" : "proxy");
    json_str(O.label);
    const char *err = "";
    for (int i = 0; i < O.threads; i++)
        if (ws[i].err[0]) {
            err = ws[i].err;
            break;
        }
    printf(",\"threads\":%d,\"errors\":%llu,\"first_error\":", O.threads,
           (unsigned long long)SUM(errors));
    json_str(err);
}

/* The samples of one kind from every worker, sorted (--tls); n set to how many. */
static double *merge_sorted(struct worker *ws, size_t off, long *n) {
    long ns = 0;
    for (int i = 0; i < O.threads; i++)
        ns += ((struct samples *)((char *)&ws[i] + off))->n;
    double *all = malloc((size_t)(ns ? ns : 1) * sizeof *all);
    if (!all) {
        *n = 0;
        return NULL;
    }
    long k = 0;
    for (int i = 0; i < O.threads; i++) {
        const struct samples *s = (const struct samples *)((char *)&ws[i] + off);
        memcpy(all + k, s->v, (size_t)s->n * sizeof *all);
        k += s->n;
    }
    qsort(all, (size_t)ns, sizeof *all, cmp_double);
    *n = ns;
    return all;
}

static char g_tls_human[320]; /* the second human line (--tls), printed after the first */

/* --tls: the fields added to the JSON line (nothing without --tls, so that the plain line is
 * unchanged), and the text of a second human line. hs/res: TLS handshakes and resumed ones
 * counted. */
static void print_tls(struct worker *ws, uint64_t hs, uint64_t res) {
    if (!O.tls)
        return;
    printf(",\"tls\":true,\"tls_resume\":%s,\"tls_version\":", O.tls_resume ? "true" : "false");
    json_str(g_tls_version);
    printf(",\"tls_cipher\":");
    json_str(g_tls_cipher);
    printf(",\"tls_group\":");
    json_str(g_tls_group);
    printf(",\"tls_handshakes\":%llu,\"tls_resumed\":%llu", (unsigned long long)hs,
           (unsigned long long)res);
    size_t k = (size_t)snprintf(
        g_tls_human, sizeof g_tls_human, "  TLS %s %s %s: %llu handshakes, %llu resumed",
        g_tls_version, g_tls_cipher, g_tls_group, (unsigned long long)hs, (unsigned long long)res);
    if (O.mode == M_HANDSHAKES || O.mode == M_LATENCY) {
        long nt = 0, nr = 0;
        double *t = merge_sorted(ws, offsetof(struct worker, tls_hs), &nt);
        double *q = merge_sorted(ws, offsetof(struct worker, req), &nr);
        printf(",\"tls_hs_p50_ms\":%.4f,\"tls_hs_p99_ms\":%.4f,\"req_p50_ms\":%.4f,"
               "\"req_p99_ms\":%.4f",
               pct(t, nt, 50), pct(t, nt, 99), pct(q, nr, 50), pct(q, nr, 99));
        if (k < sizeof g_tls_human)
            snprintf(g_tls_human + k, sizeof g_tls_human - k,
                     "; TLS handshake alone p50 %.3f p99 %.3f ms, CONNECT->200 alone p50 %.3f "
                     "p99 %.3f ms",
                     pct(t, nt, 50), pct(t, nt, 99), pct(q, nr, 50), pct(q, nr, 99));
        free(t);
        free(q);
    }
}

static uint32_t h2_peer_max(struct worker *ws) {
    uint32_t m = 0;
    for (int i = 0; i < O.threads; i++) {
        uint32_t v = atomic_load(&ws[i].h2_peer_max);
        m = v > m ? v : m;
    }
    return m;
}

/* --h2: the fields added to the JSON line (nothing without --h2). */
static void print_h2(struct worker *ws) {
    if (!O.h2)
        return;
    printf(",\"h2\":true,\"h2_connections\":%llu,\"h2_goaways\":%llu,"
           "\"h2_max_concurrent_streams\":%u,\"h2_stream_window\":%ld,"
           "\"h2_connection_window\":%ld",
           (unsigned long long)SUM(h2_conns), (unsigned long long)SUM(h2_goaways), h2_peer_max(ws),
           O.h2_stream_window, O.h2_conn_window);
}

/* throughput: every tunnel's byte counter, worker by worker, into out[O.tunnels]. */
static void tunnel_bytes(struct worker *ws, uint64_t *out) {
    int k = 0;
    for (int i = 0; i < O.threads; i++)
        for (int j = 0; j < ws[i].want && ws[i].tbytes && k < O.tunnels; j++)
            out[k++] = atomic_load_explicit(&ws[i].tbytes[j], memory_order_relaxed);
}

/* The spread of the tunnels' rates over the window (MB/s), and Jain's fairness index. */
struct spread {
    double min, median, max, jain;
};

static struct spread spread_of(const uint64_t *b0, const uint64_t *b1, double wall) {
    struct spread sp = {-1, -1, -1, -1};
    int n = O.tunnels;
    double *x = malloc((size_t)n * sizeof *x);
    if (!x || wall <= 0) {
        free(x);
        return sp;
    }
    double sum = 0, sq = 0;
    for (int i = 0; i < n; i++) {
        x[i] = (double)(b1[i] - b0[i]) / 1e6 / wall;
        sum += x[i];
        sq += x[i] * x[i];
    }
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    sp.min = x[0];
    sp.max = x[n - 1];
    sp.median = n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
    sp.jain = sq > 0 ? sum * sum / ((double)n * sq) : -1;
    free(x);
    return sp;
}

/* The client side of TLS to the proxy; 0 on success. */
static int tls_init(void) {
    g_ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!g_ssl_ctx)
        return -1;
    SSL_CTX_set_min_proto_version(g_ssl_ctx, TLS1_2_VERSION);
    /* Partial writes: a 256 KiB SSL_write returns what fitted in the socket, like send(). */
    SSL_CTX_set_mode(g_ssl_ctx,
                     SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* A FIN without close_notify (a proxy closing the tunnel) reads as EOF, not an error. */
    SSL_CTX_set_options(g_ssl_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* Read-ahead into a buffer of several records: one recv(2) takes what the socket holds,
     * as browsers' TLS stacks do, instead of two per record (its 5-byte header, then the
     * rest). Every reader loops until EAGAIN or re-arms, so nothing waits unseen in it. */
    SSL_CTX_set_read_ahead(g_ssl_ctx, 1);
    SSL_CTX_set_default_read_buffer_len(g_ssl_ctx, READ_AHEAD);
    /* Sessions are kept by hand, per slot (--tls-resume); none otherwise. */
    SSL_CTX_set_session_cache_mode(g_ssl_ctx, SSL_SESS_CACHE_OFF);
    if (O.tls_suites && SSL_CTX_set_ciphersuites(g_ssl_ctx, O.tls_suites) != 1)
        return -1;
    static const unsigned char alpn[] = "\x08http/1.1", alpn_h2[] = "\x02h2";
    if (O.h2 ? SSL_CTX_set_alpn_protos(g_ssl_ctx, alpn_h2, sizeof alpn_h2 - 1) != 0
             : SSL_CTX_set_alpn_protos(g_ssl_ctx, alpn, sizeof alpn - 1) != 0)
        return -1;
    if (O.cacert) {
        if (SSL_CTX_load_verify_locations(g_ssl_ctx, O.cacert, NULL) != 1)
            return -1;
        SSL_CTX_set_verify(g_ssl_ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(g_ssl_ctx, SSL_VERIFY_NONE, NULL);
    }
    return 0;
}

static void on_signal(int sig) {
    (void)sig;
    atomic_store(&g_stop, 1);
}

int main(int argc, char **argv) {
    int r = parse_args(argc, argv);
    if (r)
        return r;
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    g_chunk = malloc(O.chunk);
    if (!g_chunk)
        return 1;
    memset(g_chunk, 'u', O.chunk);
    g_request_len =
        (size_t)snprintf(g_request, sizeof g_request, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n",
                         O.target_str, O.target_str);
    if (O.tls && tls_init() != 0) {
        char e[160] = "";
        ERR_error_string_n(ERR_get_error(), e, sizeof e);
        fprintf(stderr, "loadgen: TLS setup failed%s%s: %s\n", O.cacert ? " (--cacert " : "",
                O.cacert ? O.cacert : "", e);
        return 2;
    }

    struct worker *ws = calloc((size_t)O.threads, sizeof *ws);
    if (!ws)
        return 1;
    int per_total = O.mode == M_THROUGHPUT || O.mode == M_IDLE ? O.tunnels : O.concurrency;
    for (int i = 0; i < O.threads; i++) {
        ws[i].id = i;
        ws[i].want = per_total / O.threads + (i < per_total % O.threads);
        ws[i].quota =
            (O.count + O.warmup_count) / O.threads + (i < (O.count + O.warmup_count) % O.threads);
        ws[i].ep = epoll_create1(EPOLL_CLOEXEC);
        if (ws[i].ep == -1) {
            perror("loadgen: epoll_create1");
            return 1;
        }
        if (O.mode == M_THROUGHPUT && ws[i].want > 0) {
            ws[i].tbytes = calloc((size_t)ws[i].want, sizeof *ws[i].tbytes);
            if (!ws[i].tbytes)
                return 1;
        }
        if (O.tls_resume && ws[i].want > 0) {
            ws[i].sess = calloc((size_t)ws[i].want, sizeof *ws[i].sess);
            ws[i].free_slots = calloc((size_t)ws[i].want, sizeof *ws[i].free_slots);
            if (!ws[i].sess || !ws[i].free_slots)
                return 1;
            for (int k = ws[i].want; k > 0; k--)
                ws[i].free_slots[ws[i].nfree++] = k - 1;
        }
    }

    double t_start = now_s();
    g_hard_deadline = t_start + O.timeout;
    long rss0 = -1, fds0 = -1;
    if (O.pid > 0) {
        rss0 = proc_rss_kib(O.pid);
        fds0 = proc_fds(O.pid);
    }
    for (int i = 0; i < O.threads; i++) {
        if (pthread_create(&ws[i].th, NULL, O.h2 ? h2_worker_main : worker_main, &ws[i]) != 0) {
            fprintf(stderr, "loadgen: pthread_create failed\n");
            atomic_store(&g_stop, 1);
            O.threads = i;
            break;
        }
    }

    double wall = 0;
    uint64_t b0 = 0, b1 = 0, d0 = 0, d1 = 0, h0 = 0, h1 = 0, r0 = 0, r1 = 0;
    double c0 = -1, c1 = -1;
    long rss1 = -1, fds1 = -1, rss2 = -1;
    double open_s = 0;
    /* throughput: each tunnel's bytes at the start and the end of the window */
    uint64_t *tb0 = calloc((size_t)O.tunnels, sizeof *tb0);
    uint64_t *tb1 = calloc((size_t)O.tunnels, sizeof *tb1);
    if (!tb0 || !tb1)
        return 1;
    if (O.mode == M_THROUGHPUT || O.mode == M_IDLE) {
        /* Wait until every tunnel is up or has failed, within the open timeout. */
        double lim = t_start + O.open_timeout;
        while (now_s() < lim && !atomic_load(&g_stop) &&
               SUM(established) + SUM(failed_open) < (uint64_t)O.tunnels)
            sleep_until(now_s() + 0.01);
        open_s = now_s() - t_start;
    }
    if (O.mode == M_THROUGHPUT || O.mode == M_HANDSHAKES) {
        sleep_until(now_s() + O.warmup);
        double t0 = now_s();
        b0 = SUM(bytes);
        tunnel_bytes(ws, tb0);
        d0 = SUM(done);
        h0 = SUM(tls_done);
        r0 = SUM(tls_resumed);
        if (O.pid > 0)
            c0 = proc_cpu_s(O.pid);
        for (int i = 0; i < O.threads; i++)
            atomic_store(&ws[i].record, 1);
        sleep_until(t0 + O.seconds);
        for (int i = 0; i < O.threads; i++)
            atomic_store(&ws[i].record, 0);
        b1 = SUM(bytes);
        tunnel_bytes(ws, tb1);
        d1 = SUM(done);
        h1 = SUM(tls_done);
        r1 = SUM(tls_resumed);
        if (O.pid > 0)
            c1 = proc_cpu_s(O.pid);
        wall = now_s() - t0;
        atomic_store(&g_stop, 1);
    } else if (O.mode == M_IDLE) {
        sleep_until(now_s() + 1.0); /* let the proxy settle after the last open */
        if (O.pid > 0) {
            rss1 = proc_rss_kib(O.pid);
            fds1 = proc_fds(O.pid);
            c0 = proc_cpu_s(O.pid);
        }
        double t0 = now_s();
        sleep_until(t0 + O.hold);
        wall = now_s() - t0;
        if (O.pid > 0) {
            c1 = proc_cpu_s(O.pid);
            rss2 = proc_rss_kib(O.pid);
        }
        atomic_store(&g_stop, 1);
    }
    for (int i = 0; i < O.threads; i++)
        pthread_join(ws[i].th, NULL);
    bool timed_out = now_s() > g_hard_deadline;

    /* Merge latency samples. */
    long ns = 0;
    for (int i = 0; i < O.threads; i++)
        ns += ws[i].nsamples;
    double *all = malloc((size_t)(ns ? ns : 1) * sizeof *all);
    if (!all)
        return 1;
    long k = 0;
    for (int i = 0; i < O.threads; i++) {
        memcpy(all + k, ws[i].samples, (size_t)ws[i].nsamples * sizeof *all);
        k += ws[i].nsamples;
    }
    qsort(all, (size_t)ns, sizeof *all, cmp_double);

    int rc = 0;
    uint64_t errors = SUM(errors);
    /* TLS handshakes: in the window for handshakes, over the whole run otherwise. */
    uint64_t tls_hs = O.mode == M_HANDSHAKES ? h1 - h0 : SUM(tls_done);
    uint64_t tls_res = O.mode == M_HANDSHAKES ? r1 - r0 : SUM(tls_resumed);
    switch (O.mode) {
    case M_THROUGHPUT: {
        uint64_t bytes = b1 - b0;
        double mbps = (double)bytes / 1e6 / wall;
        double cpu = (c0 >= 0 && c1 >= 0) ? c1 - c0 : -1;
        double cpu_per_gb = cpu >= 0 && bytes > 0 ? cpu / ((double)bytes / 1e9) : -1;
        uint64_t est = SUM(established), lost = SUM(lost);
        struct spread sp = spread_of(tb0, tb1, wall);
        print_common("throughput", ws);
        printf(",\"tunnels\":%d,\"dir\":\"%s\",\"established\":%llu,\"lost\":%llu,"
               "\"window_s\":%.3f,\"bytes\":%llu,\"mb_per_s\":%.1f,\"proxy_cpu_s\":%.3f,"
               "\"cpu_s_per_gb\":%.4f,\"timed_out\":%s",
               O.tunnels, O.up ? "up" : "down", (unsigned long long)est, (unsigned long long)lost,
               wall, (unsigned long long)bytes, mbps, cpu, cpu_per_gb,
               timed_out ? "true" : "false");
        printf(",\"tunnel_mb_per_s_min\":%.3f,\"tunnel_mb_per_s_median\":%.3f,"
               "\"tunnel_mb_per_s_max\":%.3f,\"jain_fairness\":%.4f",
               sp.min, sp.median, sp.max, sp.jain);
        print_tls(ws, tls_hs, tls_res);
        print_h2(ws);
        printf("}\n");
        fprintf(stderr, "throughput %s %s %d tunnel(s): %.1f MB/s (1 MB = 10^6 B) over %.2f s",
                O.direct ? "direct" : "via proxy", O.up ? "up" : "down", O.tunnels, mbps, wall);
        if (cpu >= 0)
            fprintf(stderr, ", proxy CPU %.2f s = %.3f CPU-s/GB", cpu, cpu_per_gb);
        fprintf(stderr, ", %llu errors\n", (unsigned long long)errors);
        fprintf(stderr,
                "  per %s: min %.1f, median %.1f, max %.1f MB/s; Jain's fairness index %.4f\n",
                O.h2 ? "stream" : "tunnel", sp.min, sp.median, sp.max, sp.jain);
        if (est < (uint64_t)O.tunnels || lost > 0 || bytes == 0)
            rc = 1;
        break;
    }
    case M_HANDSHAKES: {
        uint64_t done = d1 - d0;
        double rate = (double)done / wall;
        double cpu = (c0 >= 0 && c1 >= 0) ? c1 - c0 : -1;
        double cpu_us = cpu >= 0 && done > 0 ? cpu * 1e6 / (double)done : -1;
        print_common("handshakes", ws);
        printf(",\"concurrency\":%d,\"window_s\":%.3f,\"handshakes\":%llu,\"per_s\":%.1f,"
               "\"lat_p50_ms\":%.4f,\"lat_p99_ms\":%.4f,\"proxy_cpu_s\":%.3f,"
               "\"cpu_us_per_handshake\":%.2f,\"timed_out\":%s",
               O.concurrency, wall, (unsigned long long)done, rate, pct(all, ns, 50),
               pct(all, ns, 99), cpu, cpu_us, timed_out ? "true" : "false");
        print_tls(ws, tls_hs, tls_res);
        print_h2(ws);
        printf("}\n");
        fprintf(stderr,
                "%s %s at concurrency %d: %.0f /s over %.2f s (%s->%s p50 %.3f ms, "
                "p99 %.3f ms), %llu errors\n",
                O.h2 ? "h2 streams" : "handshakes", O.direct ? "direct" : "via proxy",
                O.concurrency, rate, wall, O.h2 ? "stream" : "connect",
                O.direct ? "established" : "200", pct(all, ns, 50), pct(all, ns, 99),
                (unsigned long long)errors);
        if (cpu >= 0)
            fprintf(stderr, "  proxy CPU %.2f s = %.1f us per %s\n", cpu, cpu_us,
                    O.h2 ? "stream" : "handshake");
        if (done == 0)
            rc = 1;
        break;
    }
    case M_LATENCY: {
        print_common("latency", ws);
        printf(",\"concurrency\":%d,\"count\":%ld,\"samples\":%ld,\"p50_ms\":%.4f,"
               "\"p90_ms\":%.4f,\"p99_ms\":%.4f,\"max_ms\":%.4f,\"timed_out\":%s",
               O.concurrency, O.count, ns, pct(all, ns, 50), pct(all, ns, 90), pct(all, ns, 99),
               pct(all, ns, 100), timed_out ? "true" : "false");
        print_tls(ws, tls_hs, tls_res);
        print_h2(ws);
        printf("}\n");
        fprintf(stderr,
                "latency %s (%s->%s) at concurrency %d: p50 %.3f ms, p90 %.3f ms, "
                "p99 %.3f ms, max %.3f ms over %ld samples, %llu errors\n",
                O.direct ? "direct" : "via proxy", O.h2 ? "h2 stream" : "connect",
                O.direct ? "established" : "200 reply", O.concurrency, pct(all, ns, 50),
                pct(all, ns, 90), pct(all, ns, 99), pct(all, ns, 100), ns,
                (unsigned long long)errors);
        if (ns < O.count || timed_out)
            rc = 1;
        break;
    }
    case M_IDLE: {
        uint64_t est = SUM(established), lost = SUM(lost);
        double per_kib = est && rss0 >= 0 && rss1 >= 0 ? (double)(rss1 - rss0) / (double)est : -1;
        double per_fd = est && fds0 >= 0 && fds1 >= 0 ? (double)(fds1 - fds0) / (double)est : -1;
        double cpu = (c0 >= 0 && c1 >= 0) ? c1 - c0 : -1;
        print_common("idle", ws);
        printf(",\"tunnels\":%d,\"established\":%llu,\"failed\":%llu,\"lost\":%llu,"
               "\"open_s\":%.2f,\"rss_before_kib\":%ld,\"rss_after_kib\":%ld,"
               "\"rss_end_kib\":%ld,\"fds_before\":%ld,\"fds_after\":%ld,"
               "\"kib_per_tunnel\":%.3f,\"fds_per_tunnel\":%.3f,\"hold_s\":%.2f,"
               "\"idle_cpu_s\":%.3f,\"timed_out\":%s",
               O.tunnels, (unsigned long long)est, (unsigned long long)SUM(failed_open),
               (unsigned long long)lost, open_s, rss0, rss1, rss2, fds0, fds1, per_kib, per_fd,
               wall, cpu, timed_out ? "true" : "false");
        print_tls(ws, tls_hs, tls_res);
        print_h2(ws);
        printf("}\n");
        fprintf(stderr,
                "idle %s: %llu/%d tunnels up in %.1f s; proxy RSS %ld -> %ld KiB = %.2f "
                "KiB/tunnel, fds %ld -> %ld = %.2f/tunnel; CPU while idle %.2f s over %.1f s; "
                "%llu lost, %llu errors\n",
                O.direct ? "direct" : "via proxy", (unsigned long long)est, O.tunnels, open_s, rss0,
                rss1, per_kib, fds0, fds1, per_fd, cpu, wall, (unsigned long long)lost,
                (unsigned long long)errors);
        if (est == 0 || lost > 0)
            rc = 1;
        break;
    }
    }
    if (O.tls && g_tls_human[0])
        fprintf(stderr, "%s\n", g_tls_human);
    if (O.h2)
        fprintf(stderr,
                "  HTTP/2: %llu connection(s) up, the proxy allows %u concurrent streams, %llu "
                "GOAWAY\n",
                (unsigned long long)SUM(h2_conns), h2_peer_max(ws),
                (unsigned long long)SUM(h2_goaways));
    fflush(stdout);
    return rc;
}
