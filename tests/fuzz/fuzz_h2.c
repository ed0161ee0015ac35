/* libFuzzer harness for src/h2.c: what an HTTP/2 client sends (frames, HPACK) through nghttp2
 * and the real h2.c, on a real libev loop and socket; the rest of the daemon is stubs here: a
 * TLS session that hands out the input in slices and takes the output, the CONNECT streams'
 * tunnels (refused, PAC, or relaying to a destination that answers byte for byte), the clock.
 *
 * Input: 4 control bytes, then the client's bytes.
 *   byte 0: bit 0 the input has its own preface (else "PRI * ..." is prepended); bits 1-2 the
 *     end: EOF, stay open, reset, h2_drain; bits 3-5 the largest read (1..16384 bytes); bit 6
 *     small windows; bit 7 few streams.
 *   byte 1: bits 0-1 how often writes block; bits 2-3 clock jumps (the flood second, timer
 *     ticks, handshake and idle timeouts); bit 4 draining; bits 5-7 how often tunnels act.
 *   bytes 2-3: the seed of the rest (read sizes, blocking, each stream's fate).
 * Checked besides ASan/UBSan/LSan: the request h2.c writes for tunnel.c (CRLF lines, a blank
 * line only at the end, two spaces in the request line); the output frame by frame (types,
 * lengths, ids, a response only where the tunnel gave one, its :status, no connection-specific
 * fields, DATA exactly the bytes the tunnel gave, END_STREAM after the last); once the input is
 * in and writes flow, nothing left unsent and every DATA byte credited back to the client's
 * window; at the end no connection, stream, buffer, timer, fd or watcher left.
 * FUZZ_H2_STRICT=1: TLS may also take a write whole and send it later, as tls.c does when the
 * socket is full (tls.h: the caller flushes while tls_conn_unsent); see tests/fuzz/README.md. */
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ev.h>
#include <nghttp2/nghttp2.h>

#include "buf.h"
#include "container.h"
#include "h2.h"
#include "log.h"
#include "server.h"
#include "stats.h"
#include "tls.h"
#include "tunnel.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* -Wl,--wrap (Makefile): the clock and timer h2.c sees; what h2.c tells nghttp2. */
#define WRAP(ret, name, ...) ret __wrap_##name(__VA_ARGS__), __real_##name(__VA_ARGS__)
WRAP(ev_tstamp, ev_now, struct ev_loop *);
WRAP(void, ev_timer_start, struct ev_loop *, ev_timer *);
WRAP(void, ev_timer_stop, struct ev_loop *, ev_timer *);
WRAP(int, nghttp2_session_set_stream_user_data, nghttp2_session *, int32_t, void *);
WRAP(int, nghttp2_session_consume, nghttp2_session *, int32_t, size_t);
WRAP(int, nghttp2_session_consume_connection, nghttp2_session *, size_t);
WRAP(void, nghttp2_session_callbacks_set_on_data_chunk_recv_callback, nghttp2_session_callbacks *,
     nghttp2_on_data_chunk_recv_callback);

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            (void)fprintf(stderr, "fuzz_h2.c:%d: invariant broken: %s\n", __LINE__, #cond);        \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define MAX_ST  4096   /* streams tracked per input */
#define OWE_MAX 200000 /* a destination's unsent answer at most, then it stops reading */
enum { END_EOF, END_OPEN, END_RESET, END_DRAIN };
enum { FT_PENDING, FT_RELAY, FT_CLOSED };

struct tls_conn {
    int unused;
};

struct st { /* one stream as the client sees it */
    int32_t id;
    int status;         /* the :status its tunnel chose; 0: none */
    bool headers, end;  /* its response seen; END_STREAM or RST_STREAM seen */
    uint64_t sent, off; /* bytes the tunnel gave h2.c; bytes of DATA seen */
};

struct ft {          /* a fake tunnel: the stream is its client side */
    struct tunnel t; /* first: tunnel_close() gets &ft->t */
    struct h2stream *s;
    struct st *st;
    int state;
    bool dest_failed, rx_eof, shut, paused;
    uint64_t owe; /* bytes the destination has yet to send */
    struct ft *prev, *next;
};

static struct {
    const uint8_t *p;
    size_t len, pos, chunk_max;
    unsigned end, block, blocks, time_mode, op_rate;
    uint32_t rnd;
    bool strict, quiet, read_pause, unsent, tls_freed, untracked;
    struct tls_conn *tls;
    double now, due; /* the clock; when the timer fires */
    ev_timer *timer;
    long bufs;
    uint64_t delivered, consumed; /* DATA bytes given to h2.c; credited back by it */
    struct h2stream *last_s;      /* the stream whose request began last, and its id */
    int32_t last_id;
} in;

static struct ev_loop *loop;
static struct server srv;
static struct gen gen;
static struct stats_slot slot;
struct stats_slot *stats_me = &slot;
static struct ft *live, *dead;
static struct st sts[MAX_ST];
static nghttp2_on_data_chunk_recv_callback real_chunk_cb;
static nghttp2_hd_inflater *inflater;
static struct { /* the output parser */
    uint8_t hdr[9], type, flags, blk[16384];
    size_t hdrlen, left, nframes, blklen;
    int32_t id;
    struct st *st;
} out;

static uint32_t rnd(void) {
    in.rnd ^= in.rnd << 13;
    in.rnd ^= in.rnd >> 17;
    return in.rnd ^= in.rnd << 5;
}

static bool chance(unsigned one_in) {
    return one_in > 0 && rnd() % one_in == 0;
}

static uint8_t pat(int32_t id, uint64_t i) { /* what destinations send */
    return (uint8_t)(i * 131u ^ i >> 9 ^ (uint64_t)id * 29u);
}

static struct st *st_find(int32_t id, bool add) {
    for (size_t i = (size_t)id >> 1, n = 0; n < MAX_ST / 2; i++, n++) {
        struct st *e = &sts[i % MAX_ST];
        if (e->id == 0 && add)
            e->id = id;
        if (e->id == id)
            return e;
        if (e->id == 0)
            return NULL;
    }
    in.untracked = true; /* full: from now on an unknown stream is no error */
    return NULL;
}

/* ---- the output, frame by frame ---- */

static void check_block(const struct st *st) {
    static const char *const hop[] = {"connection", "keep-alive", "transfer-encoding",
                                      "proxy-connection", "upgrade"};
    const uint8_t *p = out.blk;
    size_t n = out.blklen, fields = 0;
    for (int fl = 0; !(fl & NGHTTP2_HD_INFLATE_FINAL);) {
        nghttp2_nv nv;
        ssize_t r = nghttp2_hd_inflate_hd2(inflater, &nv, &fl, p, n, 1);
        CHECK(r >= 0 && (r > 0 || fl));
        p += r, n -= (size_t)r;
        if (!(fl & NGHTTP2_HD_INFLATE_EMIT))
            continue;
        if (fields++ == 0) {
            char want[4];
            snprintf(want, sizeof want, "%03d", st->status);
            CHECK(nv.namelen == 7 && memcmp(nv.name, ":status", 7) == 0);
            CHECK(nv.valuelen == 3 && memcmp(nv.value, want, 3) == 0);
            continue;
        }
        CHECK(nv.namelen > 0 && nv.name[0] != ':');
        for (size_t i = 0; i < nv.namelen; i++)
            CHECK(nv.name[i] < 'A' || nv.name[i] > 'Z');
        for (size_t i = 0; i < sizeof hop / sizeof hop[0]; i++)
            CHECK(nv.namelen != strlen(hop[i]) || memcmp(nv.name, hop[i], nv.namelen) != 0);
    }
    CHECK(fields > 0);
    nghttp2_hd_inflate_end_headers(inflater);
}

static void frame_begin(void) {
    static const size_t len[9] = {
        [NGHTTP2_RST_STREAM] = 4, [NGHTTP2_PING] = 8, [NGHTTP2_WINDOW_UPDATE] = 4}; /* 0: any */
    const uint8_t *h = out.hdr;
    out.left = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
    out.type = h[3], out.flags = h[4];
    out.id = (int32_t)((uint32_t)h[5] << 24 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 8 | h[8]);
    out.blklen = 0;
    out.st = NULL;
    CHECK(out.type <= NGHTTP2_WINDOW_UPDATE && out.type != NGHTTP2_PRIORITY &&
          out.type != NGHTTP2_PUSH_PROMISE && out.id >= 0 && out.left <= 16384);
    CHECK(out.nframes++ > 0 || (out.type == NGHTTP2_SETTINGS && out.flags == 0));
    CHECK(len[out.type] == 0 || out.left == len[out.type]);
    CHECK(out.type != NGHTTP2_GOAWAY || out.left >= 8);
    CHECK(out.type != NGHTTP2_SETTINGS || out.left % 6 == 0);
    bool conn =
        out.type == NGHTTP2_SETTINGS || out.type == NGHTTP2_PING || out.type == NGHTTP2_GOAWAY;
    CHECK(conn ? out.id == 0 : out.type == NGHTTP2_WINDOW_UPDATE || out.id % 2 == 1);
    if (out.type == NGHTTP2_SETTINGS && out.flags & NGHTTP2_FLAG_ACK)
        CHECK(out.left == 0);
    if (out.type != NGHTTP2_DATA && out.type != NGHTTP2_HEADERS)
        return;
    out.st = st_find(out.id, false);
    CHECK(out.st || in.untracked); /* a response only where a tunnel gave one */
    if (out.st)
        CHECK(!out.st->end && out.st->headers == (out.type == NGHTTP2_DATA));
    /* No padding, no priority, no CONTINUATION: DATA, or HEADERS with END_HEADERS. */
    CHECK((out.flags & ~NGHTTP2_FLAG_END_STREAM) ==
          (out.type == NGHTTP2_DATA ? 0 : NGHTTP2_FLAG_END_HEADERS));
}

static void frame_payload(const uint8_t *p, size_t n) {
    if (out.st && out.type == NGHTTP2_HEADERS) {
        CHECK(out.blklen + n <= sizeof out.blk);
        memcpy(out.blk + out.blklen, p, n);
        out.blklen += n;
    }
    for (size_t i = 0; out.st && out.type == NGHTTP2_DATA && i < n; i++, out.st->off++)
        CHECK(out.st->off < out.st->sent && p[i] == pat(out.id, out.st->off));
}

static void frame_end(void) {
    struct st *st = out.type == NGHTTP2_RST_STREAM ? st_find(out.id, false) : out.st;
    if (out.st && out.type == NGHTTP2_HEADERS) {
        CHECK(out.st->status != 0);
        check_block(out.st);
        out.st->headers = true;
    }
    if (out.st && out.flags & NGHTTP2_FLAG_END_STREAM)
        CHECK(out.st->off == out.st->sent); /* nothing the destination sent was lost */
    if (st && (out.type == NGHTTP2_RST_STREAM || out.flags & NGHTTP2_FLAG_END_STREAM))
        st->end = true;
}

static void out_bytes(const uint8_t *p, size_t n) {
    while (n > 0) {
        size_t k = 9 - out.hdrlen < n ? 9 - out.hdrlen : n;
        memcpy(out.hdr + out.hdrlen, p, k);
        out.hdrlen += k, p += k, n -= k;
        if (out.hdrlen < 9)
            return;
        if (k > 0)
            frame_begin();
        k = out.left < n ? out.left : n;
        frame_payload(p, k);
        out.left -= k, p += k, n -= k;
        if (out.left == 0)
            frame_end(), out.hdrlen = 0;
    }
}

/* ---- the TLS session: the input in slices; the output checked and dropped ---- */

ssize_t tls_conn_read(struct tls_conn *s, void *buf, size_t n) {
    CHECK(s == in.tls && !in.tls_freed && n > 0);
    if (in.pos == in.len)
        return in.end == END_EOF ? 0 : in.end == END_RESET ? -1 : TLS_WANT_READ;
    if (in.read_pause) {
        in.read_pause = false;
        return TLS_WANT_READ;
    }
    if (!in.quiet && in.block > 0 && in.blocks > 0 && chance(64))
        return in.blocks--, TLS_WANT_WRITE; /* a read that must write first */
    size_t k = 1 + rnd() % in.chunk_max;
    k = k < n ? k : n;
    k = k < in.len - in.pos ? k : in.len - in.pos;
    memcpy(buf, in.p + in.pos, k);
    in.pos += k;
    in.read_pause = !chance(4);
    return (ssize_t)k;
}

ssize_t tls_conn_write(struct tls_conn *s, const void *buf, size_t n) {
    CHECK(s == in.tls && !in.tls_freed && n > 0);
    size_t k = n;
    if (!in.quiet && chance(2048))
        return -1;
    if (!in.quiet && in.blocks > 0 && rnd() % 8 < in.block) {
        in.blocks--;
        in.unsent = true;
        if (n == 1 || chance(2))
            return TLS_WANT_WRITE;
        k = 1 + rnd() % (n - 1);
    } else { /* all taken; sent with what waited, unless the socket is full (tls.c) */
        in.unsent = in.strict && !in.quiet && in.block > 0 && chance(4);
    }
    out_bytes(buf, k);
    return (ssize_t)k;
}

int tls_conn_flush(struct tls_conn *s) {
    CHECK(s == in.tls && !in.tls_freed);
    if (!in.quiet && in.unsent && in.blocks > 0 && rnd() % 8 < in.block)
        return in.blocks--, TLS_WANT_WRITE;
    in.unsent = false;
    return 0;
}

bool tls_conn_unsent(const struct tls_conn *s) {
    CHECK(s == in.tls && !in.tls_freed);
    return in.unsent;
}

bool tls_conn_pending(const struct tls_conn *s) {
    CHECK(s == in.tls && !in.tls_freed);
    return in.pos < in.len;
}

void tls_conn_close_notify(struct tls_conn *s) {
    CHECK(s == in.tls && !in.tls_freed);
}

void tls_conn_free(struct tls_conn *s) {
    CHECK(s == in.tls && !in.tls_freed);
    in.tls_freed = true;
    free(s);
}

/* ---- the clock and the connection's timer; what h2.c tells nghttp2 ---- */

ev_tstamp __wrap_ev_now(struct ev_loop *l) {
    return (void)l, in.now;
}

void __wrap_ev_timer_start(struct ev_loop *l, ev_timer *w) {
    CHECK(l == loop && (!in.timer || in.timer == w)); /* one connection, one timer */
    in.timer = w;
    in.due = in.now + w->at;
}

void __wrap_ev_timer_stop(struct ev_loop *l, ev_timer *w) {
    if (l == loop && in.timer == w)
        in.timer = NULL;
}

static void clock_step(void) {
    static const unsigned rate[4] = {0, 16, 32, 64};
    if (!in.quiet && chance(rate[in.time_mode])) {
        unsigned r = rnd() % 16;
        in.now += r < 8                        ? 0.4
                  : r < 14 || in.time_mode < 2 ? 1.0
                  : r == 14                    ? gen.cfg.timeout_handshake
                                               : gen.cfg.timeout_idle;
    }
    if (in.timer && in.due <= in.now) {
        ev_timer *w = in.timer;
        in.timer = NULL;
        w->cb(loop, w, EV_TIMER);
    }
}

int __wrap_nghttp2_session_set_stream_user_data(nghttp2_session *ng, int32_t id, void *p) {
    if (p) /* begin_headers_cb: a new stream */
        in.last_s = p, in.last_id = id;
    return __real_nghttp2_session_set_stream_user_data(ng, id, p);
}

int __wrap_nghttp2_session_consume(nghttp2_session *ng, int32_t id, size_t n) {
    int r = __real_nghttp2_session_consume(ng, id, n);
    in.consumed += r == 0 ? n : 0;
    return r;
}

int __wrap_nghttp2_session_consume_connection(nghttp2_session *ng, size_t n) {
    int r = __real_nghttp2_session_consume_connection(ng, n);
    in.consumed += r == 0 ? n : 0;
    return r;
}

static int chunk_cb(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                    void *user) {
    in.delivered += len;
    return real_chunk_cb(ng, flags, id, data, len, user);
}

void __wrap_nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
    nghttp2_session_callbacks *cb, nghttp2_on_data_chunk_recv_callback f) {
    real_chunk_cb = f;
    __real_nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, chunk_cb);
}

/* ---- the rest of the daemon ---- */

void log_msg(enum log_level level, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    (void)level;
}

void gen_ref(struct gen *g) {
    CHECK(g == &gen);
    g->refs++;
}

void gen_unref(struct gen *g) {
    CHECK(g == &gen && g->refs > 1);
    g->refs--;
}

struct buf *relay_buf_get(struct server *s) {
    struct buf *b = malloc(sizeof *b + BUF_CAP);
    CHECK(s == &srv && b);
    in.bufs++;
    b->start = b->end = 0;
    b->cap = BUF_CAP;
    return b;
}

void relay_buf_put(struct server *s, struct buf *b) {
    CHECK(s == &srv && b);
    in.bufs--;
    free(b);
}

/* ---- the tunnels ---- */

void tunnel_close(struct tunnel *t, const char *reason) {
    struct ft *f = (struct ft *)t;
    CHECK(reason && reason[0]);
    if (f->state == FT_CLOSED)
        return;
    f->state = FT_CLOSED;
    *(f->prev ? &f->prev->next : &live) = f->next;
    if (f->next)
        f->next->prev = f->prev;
    f->next = dead;
    dead = f;
    ev_io_stop(loop, &t->client.rw);
    ev_io_stop(loop, &t->client.ww);
    t->client.h2 = NULL;
    h2_stream_detach(f->s, f->dest_failed); /* as tp_free() */
    if (!ev_is_active(&srv.reaper))
        ev_prepare_start(loop, &srv.reaper);
}

/* tunnel.c's send_reply(): a refusal (403; 503 with more fields than h2.c keeps, some with long
 * names) or the PAC file (its body in pattern bytes), then the close. */
static void answer(struct ft *f, unsigned kind) {
    static const size_t sizes[4] = {0, 5, 3000, 70000};
    char text[1024];
    size_t body = kind == 1 ? sizes[rnd() % 4] : 0, n;
    if (kind == 0)
        n = (size_t)snprintf(text, sizeof text,
                             "HTTP/1.1 403 Forbidden\r\nProxy-Status: connectd; error=http_request_"
                             "denied\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n"
                             "Connection: close\r\n\r\nno\r\n");
    else if (kind == 1)
        n = (size_t)snprintf(text, sizeof text,
                             "HTTP/1.1 200 OK\r\nContent-Type: application/x-ns-proxy-autoconfig"
                             "\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
                             body);
    else {
        n = (size_t)snprintf(text, sizeof text, "HTTP/1.1 503 Service Unavailable\r\n");
        for (int i = 0; i < 20; i++)
            n += (size_t)snprintf(text + n, sizeof text - n, "X-%d%s: v\r\n", i,
                                  i % 3 ? "" : "-a-field-name-longer-than-forty-bytes");
        n += (size_t)snprintf(text + n, sizeof text - n, "Connection: close\r\n\r\nbusy\r\n");
    }
    char *msg = malloc(n + body);
    CHECK(n < sizeof text && msg);
    memcpy(msg, text, n);
    for (size_t i = 0; i < body; i++)
        msg[n + i] = (char)pat(f->st ? f->st->id : 0, i);
    if (h2_stream_reply(f->s, msg, n + body) == 0 && f->st)
        f->st->status = kind == 0 ? 403 : kind == 1 ? 200 : 503, f->st->sent = body;
    free(msg);
    tunnel_close(&f->t, "denied");
}

/* The destination's answer towards the client, then its end once the client's came. */
static void relay_write(struct ft *f) {
    while (f->state == FT_RELAY && f->owe > 0 && !f->shut) {
        uint8_t buf[4096];
        size_t k = 1 + rnd() % sizeof buf;
        k = k < f->owe ? k : f->owe;
        for (size_t i = 0; i < k; i++)
            buf[i] = pat(f->st ? f->st->id : 0, (f->st ? f->st->sent : 0) + i);
        ssize_t r = h2_stream_send(f->s, buf, k);
        if (r < 0 && errno == EAGAIN) {
            h2_stream_watch_write(f->s, true);
            return;
        }
        if (r < 0) {
            CHECK(errno == EPIPE);
            tunnel_close(&f->t, "client_reset");
            return;
        }
        CHECK(r > 0 && (size_t)r <= k);
        f->owe -= (size_t)r;
        if (f->st)
            f->st->sent += (size_t)r;
    }
    if (f->state != FT_RELAY)
        return;
    if (f->rx_eof && !f->shut)
        h2_stream_shutdown_write(f->s), f->shut = true;
    if (f->rx_eof && !h2_stream_unsent(f->s)) {
        tunnel_close(&f->t, "client_eof"); /* both ways done */
        return;
    }
    bool unsent = f->shut && h2_stream_unsent(f->s);
    h2_stream_watch_write(f->s, unsent);
    CHECK(h2_stream_watching_write(f->s) == unsent);
    h2_stream_watch_read(f->s, !f->rx_eof && f->owe < OWE_MAX && !f->paused);
}

static void relay_read(struct ft *f) {
    uint8_t buf[16384];
    for (int i = 0; i < 4 && f->state == FT_RELAY && !f->rx_eof && f->owe < OWE_MAX; i++) {
        size_t cap = 1 + rnd() % sizeof buf;
        struct buf *taken = rnd() % 2 ? h2_stream_take(f->s) : NULL; /* relay.c's no-copy read */
        if (taken) {
            CHECK(buf_len(taken) > 0);
            f->owe += f->shut ? 0 : buf_len(taken);
            relay_buf_put(&srv, taken);
            continue;
        }
        ssize_t r = h2_stream_recv(f->s, buf, cap);
        CHECK(r <= (ssize_t)cap && (r >= 0 || errno == EAGAIN));
        if (r < 0)
            break;
        f->rx_eof = r == 0;
        f->owe += f->shut ? 0 : (size_t)r; /* the destination answers byte for byte */
    }
    relay_write(f);
}

static void read_cb(struct ev_loop *l, ev_io *w, int revents) {
    (void)l, (void)revents;
    relay_read(container_of(w, struct ft, t.client.rw));
}

static void write_cb(struct ev_loop *l, ev_io *w, int revents) {
    (void)l, (void)revents;
    relay_write(container_of(w, struct ft, t.client.ww));
}

static void start_relay(struct ft *f) {
    if (h2_stream_ok(f->s) == -1) {
        tunnel_close(&f->t, "out_of_memory");
        return;
    }
    if (f->st)
        f->st->status = 200;
    f->state = FT_RELAY;
    relay_write(f);
}

void tunnel_open_stream(struct server *s, struct h2stream *hs, const union sockaddr_any *peer,
                        const union sockaddr_any *balancer, const char *tls_version,
                        unsigned long conn, const char *req, size_t len, bool extended) {
    static const char big[] = "CONNECT a:1 HTTP/1.1\r\nx: "; /* over the limit: 431 */
    CHECK(s == &srv && hs == in.last_s && peer && balancer && tls_version && conn == srv.h2_seq);
    CHECK(req && len >= 4);
    if (len != gen.cfg.max_request_bytes + 1 || memcmp(req, big, sizeof big - 1) != 0) {
        /* Lines end in CRLF, the blank one only at the end: nothing smuggled past the parser. */
        CHECK(memmem(req, len, "\r\n\r\n", 4) == req + len - 4);
        CHECK(memmem(req, len, " HTTP/1.1\r\nHost: ", 17) != NULL);
        size_t spaces = 0, lines = 0;
        for (size_t i = 0; i < len; i++) {
            CHECK(req[i] != '\0' && (req[i] != '\r' || req[i + 1] == '\n'));
            CHECK(req[i] != '\n' || (i > 0 && req[i - 1] == '\r'));
            lines += req[i] == '\n';
            spaces += lines == 0 && req[i] == ' ';
        }
        CHECK(spaces == 2);
    }
    unsigned fate = rnd() % 8;
    if (fate == 0) {
        h2_stream_detach(hs, false); /* out of memory: reset */
        return;
    }
    struct ft *f = calloc(1, sizeof *f);
    CHECK(f != NULL);
    f->s = hs;
    f->st = st_find(in.last_id, true);
    CHECK(!f->st || f->st->status == 0);
    f->t.srv = s;
    f->t.client.fd = f->t.upstream.fd = -1;
    f->t.client.t = &f->t;
    f->t.client.h2 = hs;
    ev_init(&f->t.client.rw, read_cb);
    ev_init(&f->t.client.ww, write_cb);
    if ((f->next = live))
        live->prev = f;
    live = f;
    h2_stream_attach(hs, &f->t.client);
    if (extended || fate <= 3)
        answer(f, extended ? 0 : fate - 1);
    else if (fate <= 5)
        start_relay(f);
    /* else pending (resolving, dialing) until tick() decides */
}

/* The tunnels act on their own: the dial ends, the destination sends, ends or fails. */
static void tick(void) {
    struct ft *v[64], *f;
    size_t n = 0;
    for (f = live; f && n < 64; f = f->next)
        v[n++] = f;
    for (size_t i = 0; i < n; i++) {
        if ((f = v[i])->state == FT_CLOSED || !chance(in.op_rate))
            continue;
        unsigned op = rnd() % 5;
        if (op == 0 && f->state == FT_PENDING)
            start_relay(f);
        else if (op == 1 && f->state == FT_PENDING)
            answer(f, rnd() % 3);
        else if (op == 2) {
            f->dest_failed = chance(2);
            tunnel_close(&f->t, f->dest_failed ? "upstream_reset" : "idle_timeout");
        } else if (f->state == FT_PENDING) {
            continue;
        } else if (op == 0) {
            f->owe += f->shut ? 0 : 1 + rnd() % 100000;
            relay_write(f);
        } else if (op == 1 && !f->shut) {
            h2_stream_shutdown_write(f->s); /* the destination's FIN */
            f->shut = true, f->owe = 0;
            relay_write(f);
        } else if (op == 3) {
            f->paused = !f->paused;
            h2_stream_watch_read(f->s, !f->paused && !f->rx_eof && f->owe < OWE_MAX);
        } else if (op == 4) {
            h2_stream_watch_write(f->s, true); /* spurious: the relay looks anyway */
        }
    }
}

static void reaper_cb(struct ev_loop *l, ev_prepare *w, int revents) {
    (void)revents;
    ev_prepare_stop(l, w);
    h2_reap(&srv);
    for (struct ft *f; (f = dead);)
        dead = f->next, free(f);
}

static void step(void) {
    clock_step();
    if (!in.quiet)
        tick();
    ev_run(loop, EVRUN_NOWAIT);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    static const size_t chunks[8] = {1, 3, 9, 32, 100, 512, 2048, 16384};
    static int sock = -1;
    if (sock == -1) { /* a socket that stays readable: every loop turn reads */
        int sv[2];
        loop = ev_loop_new(EVBACKEND_POLL);
        CHECK(loop && socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
        CHECK(write(sv[1], "x", 1) == 1);
        sock = sv[0];
        config_defaults(&gen.cfg);
    }
    uint8_t c[4] = {0};
    memcpy(c, data, size < 4 ? size : 4);
    size = size < 4 ? 0 : size - 4;
    size_t pre = c[0] & 1 ? 0 : sizeof preface - 1;
    uint8_t *buf = malloc(pre + size + 1);
    CHECK(buf != NULL);
    memcpy(buf, preface, pre);
    memcpy(buf + pre, data + 4 * (size > 0), size);

    memset(&in, 0, sizeof in);
    memset(&out, 0, sizeof out);
    memset(sts, 0, sizeof sts);
    in.strict = getenv("FUZZ_H2_STRICT") && strcmp(getenv("FUZZ_H2_STRICT"), "1") == 0;
    in.p = buf, in.len = pre + size;
    in.end = c[0] >> 1 & 3;
    in.chunk_max = chunks[c[0] >> 3 & 7];
    in.block = c[1] & 3, in.blocks = 4096;
    in.time_mode = c[1] >> 2 & 3;
    in.op_rate = (unsigned)(c[1] >> 5) * 4;
    in.rnd = ((uint32_t)c[2] << 8 | c[3]) * 2654435761u ^ 0x5bd1e995u; /* never 0 */
    in.now = 1000.0;
    in.tls = malloc(sizeof *in.tls);
    CHECK(in.tls && nghttp2_hd_inflate_new(&inflater) == 0);
    gen.refs = 1;
    gen.cfg.h2.max_streams = c[0] & 128 ? 1 + c[3] % 4 : 100;
    gen.cfg.h2.stream_window = c[0] & 64 ? 16384 : 256 * 1024;
    gen.cfg.h2.connection_window = c[0] & 64 ? 65535 : 4 * 1024 * 1024;
    memset(&srv, 0, sizeof srv);
    srv.loop = loop, srv.gen = &gen, srv.active = 1, srv.draining = c[1] & 16;
    ev_prepare_init(&srv.reaper, reaper_cb);

    union sockaddr_any peer = {.sin = {.sin_family = AF_INET, .sin_port = htons(40000)}};
    int fd = dup(sock);
    CHECK(fd >= 0);
    h2_conn_start(&srv, fd, in.tls, &peer, &peer, "TLSv1.3", true);
    for (size_t i = 0, idle = 0; i < 2 * in.len + 256 && srv.h2conns && idle < 64; i++) {
        step();
        idle += in.pos == in.len; /* the input is in: a few more turns for the tunnels */
    }
    in.quiet = true; /* writes flow from now on */
    if (in.end == END_DRAIN)
        h2_drain(&srv);
    for (int i = 0; i < 16 && srv.h2conns; i++)
        step();
    if (srv.h2conns) {
        CHECK(!in.unsent); /* records left in the TLS session, nobody flushing them */
        while (live)
            tunnel_close(&live->t, "shutdown");
        for (int i = 0; i < 16 && srv.h2conns; i++)
            step();
        if (srv.h2conns) /* every DATA byte h2.c was given is credited back to the client */
            CHECK(in.delivered == in.consumed);
    }
    h2_close_all(&srv);
    ev_run(loop, EVRUN_NOWAIT);
    reaper_cb(loop, &srv.reaper, 0);
    CHECK(!srv.h2conns && !srv.h2dead && !live && !dead && in.tls_freed && !in.timer);
    CHECK(in.bufs == 0 && gen.refs == 1 && srv.active == 0);
    CHECK(ev_run(loop, EVRUN_NOWAIT) == 0 && ev_pending_count(loop) == 0);
    CHECK(close(fd) == -1 && errno == EBADF); /* h2.c closed it */
    nghttp2_hd_inflate_del(inflater);
    free(buf);
    return 0;
}
