/* h2: HTTP/2 client connections and their CONNECT streams (see h2.h). */
#include "h2.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "buf.h"
#include "config.h"
#include "log.h"
#include "server.h"
#include "stats.h"
#include "tls.h"
#include "tunnel.h"

#define STAGE_CAP   (BUF_CAP + 1024) /* frames gathered for one SSL_write (+ records per send) */
#define READ_CHUNK  16384            /* TLS bytes handed to nghttp2 at a time */
#define READ_ROUNDS 8                /* reads per wake-up before the other clients get a turn */
#define SEND_ROUNDS 16
/* While more of the connection's bytes are already waiting, a stream's bytes are handed to its
 * relay only once this many gathered: 100 uploads interleaved 16 KiB frame by frame would
 * otherwise reach their destinations 16 KiB per send. */
#define HOLD_BYTES (32 * 1024)
/* Frames that cost us work but carry no tunnel bytes (PING, SETTINGS, PRIORITY, empty DATA,
 * trailers, WINDOW_UPDATE beyond one per DATA frame we sent) a client may send per second. A
 * browser sends a handful; a flood (CVE-2019-9512/9515/9518 style) gets GOAWAY
 * ENHANCE_YOUR_CALM. */
#define CONTROL_PER_S 1000
#define WU_CREDIT_MAX 100000
/* Rapid reset (CVE-2023-44487): streams a client may cancel before their tunnel is up, at
 * once and then per second. Each costs us a request judged and perhaps a dial; a browser
 * cancels a few when it navigates away. Beyond: GOAWAY ENHANCE_YOUR_CALM, and no stream after
 * it is acted upon. (nghttp2's own limit, 1000 and 33/s on every reset, stays as well.) */
#define EARLY_RESETS_BURST 100
#define EARLY_RESETS_PER_S 10

struct h2conn {
    struct server *srv;
    struct gen *gen; /* the configuration the connection was accepted under (a reference) */
    int fd;
    struct tls_conn *tls;
    nghttp2_session *ng;
    ev_io rw, ww;
    ev_timer timer;
    union sockaddr_any peer, balancer;
    const char *tls_version;
    unsigned long id;         /* h2=N in the access log: which streams shared a connection */
    struct h2stream *streams; /* every stream object (with or without its tunnel) */
    unsigned nstreams;        /* of them */
    unsigned char *stage;     /* frames nghttp2 produced, not yet given to TLS */
    size_t stagelen;
    ev_tstamp started, last_active, headers_since;
    bool counted;          /* holds one of max_connections (the accepting tunnel's) */
    bool blocked;          /* TLS took all it could: wait for the socket */
    bool got_frame;        /* the client's preface and SETTINGS arrived */
    bool goaway;           /* GOAWAY submitted: no new streams */
    bool in_cb;            /* inside nghttp2 (mem_recv / send): no closing the session now */
    bool dead;             /* closing: finish the current callback, then free */
    bool read_wants_write; /* a TLS read must write first and the socket is full */
    bool reading;          /* inside conn_read_cb's reads: small arrivals may be held */
    struct h2stream *held; /* streams whose bytes wait for more (HOLD_BYTES) */
    ev_tstamp flood_since; /* the current second of the control-frame budget */
    unsigned flood_count;
    unsigned wu_credit;  /* WINDOW_UPDATEs earned by DATA frames we sent */
    double reset_tokens; /* EARLY_RESETS_BURST bucket */
    ev_tstamp reset_at;
    bool terminated;    /* we ended the session (flood, rapid reset): read and act on nothing */
    bool goaway_error;  /* a GOAWAY with an error code went out (ours or nghttp2's own) */
    bool partial;       /* the stage ends inside a frame of nghttp2's (send_cb took part of it) */
    bool settings_sent; /* our first SETTINGS went out (with the advertised stream limit) */
    unsigned open;      /* streams nghttp2 has open (begun, not yet closed) */
    const char *why;    /* the reason for closing, for the streams' tunnels */
    struct h2conn *prev, *next;
};

struct h2stream {
    struct h2conn *c;
    int32_t id;
    struct tunnel *t; /* NULL before the request is complete and after the tunnel closed */
    struct endpoint *e;
    /* the request, as its fields arrive */
    char method[32], scheme[8];
    char *authority, *path, *fields; /* fields: "name: value\r\n"... as HTTP/1.1 */
    size_t fieldslen;
    bool has_protocol, too_large;
    /* client -> destination: what the client sent and the relay has not taken */
    struct buf **rx;
    size_t nrx;
    size_t rxlen; /* bytes in rx */
    bool rx_eof;
    bool held; /* on c->held */
    struct h2stream *held_next;
    /* destination -> client */
    struct buf *tx;
    bool tx_eof, tx_deferred, responded;
    bool end_sent; /* our END_STREAM went out */
    /* a reply that ends the stream (refusal, PAC) */
    char *body;
    size_t bodylen, bodyoff;
    bool replied;
    bool want_read, want_write;
    bool closed; /* nghttp2 closed it */
    struct h2stream *prev, *next;
};

static void conn_close(struct h2conn *c, const char *why);
static void conn_flush(struct h2conn *c);
static void conn_check(struct h2conn *c);

/* ---- the output: nghttp2 -> stage -> TLS -> socket ---- */

/* Give the staged frames to TLS (one SSL_write: records gathered for one send). */
static int stage_push(struct h2conn *c) {
    if (c->stagelen == 0)
        return 0;
    ssize_t n = tls_conn_write(c->tls, c->stage, c->stagelen);
    if (n == TLS_WANT_WRITE) {
        c->blocked = true;
        return 0;
    }
    if (n < 0)
        return -1;
    if ((size_t)n < c->stagelen) {
        memmove(c->stage, c->stage + n, c->stagelen - (size_t)n);
        c->blocked = true;
    }
    c->stagelen -= (size_t)n;
    if (tls_conn_unsent(c->tls))
        c->blocked = true; /* TLS took it all but the socket did not: wait, then flush */
    return 0;
}

static size_t stage_room(struct h2conn *c) {
    if (!c->stage) {
        c->stage = malloc(STAGE_CAP);
        if (!c->stage)
            return 0;
    }
    return STAGE_CAP - c->stagelen;
}

/* RFC 9113 section 5.1.2: a stream over the advertised limit is a stream error (we refuse it
 * with REFUSED_STREAM, the client may retry it). nghttp2 makes it a connection error, which
 * would cut every tunnel of a browser that overshoots by one. So nghttp2 is told a higher
 * limit (hard_limit) and our first SETTINGS frame says the configured one: it is patched on
 * its way out, and frame_recv_cb refuses the streams between the two. */
static uint32_t hard_limit(unsigned max) {
    return max > 1000000 ? 2 * max : 2 * max + 16;
}

static void advertise_limit(struct h2conn *c, unsigned char *f, size_t n) {
    if (n < 9 || f[3] != NGHTTP2_SETTINGS || (f[4] & NGHTTP2_FLAG_ACK))
        return;
    c->settings_sent = true;
    size_t len = (size_t)f[0] << 16 | (size_t)f[1] << 8 | f[2];
    uint32_t v = c->gen->cfg.h2.max_streams;
    for (size_t i = 9; i + 6 <= 9 + len && i + 6 <= n; i += 6) {
        if ((f[i] << 8 | f[i + 1]) != NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)
            continue;
        for (int k = 0; k < 4; k++)
            f[i + 2 + k] = (unsigned char)(v >> (24 - 8 * k));
    }
}

static ssize_t send_cb(nghttp2_session *ng, const uint8_t *data, size_t len, int flags,
                       void *user) {
    (void)ng;
    (void)flags;
    struct h2conn *c = user;
    if (stage_room(c) == 0 && !c->blocked && stage_push(c) == -1)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    size_t room = stage_room(c);
    if (room == 0)
        return NGHTTP2_ERR_WOULDBLOCK;
    size_t n = len < room ? len : room;
    memcpy(c->stage + c->stagelen, data, n);
    if (!c->settings_sent && n == len)
        advertise_limit(c, c->stage + c->stagelen, n);
    c->stagelen += n;
    c->partial = n < len; /* nghttp2 hands over one frame at a time */
    return (ssize_t)n;
}

static void feed(struct h2stream *s, bool write) {
    if (!s->e)
        return;
    if (write ? s->want_write : s->want_read)
        ev_feed_event(s->c->srv->loop, write ? &s->e->ww : &s->e->rw, write ? EV_WRITE : EV_READ);
}

/* DATA frames: nghttp2 asks how much (read_cb), then has us write the frame (send_data_cb),
 * straight from the stream's send buffer into the stage (no copy inside nghttp2). */
static ssize_t data_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t len,
                            uint32_t *flags, nghttp2_data_source *src, void *user) {
    (void)ng;
    (void)id;
    (void)buf;
    (void)user;
    struct h2stream *s = src->ptr;
    size_t have = s->replied ? s->bodylen - s->bodyoff : s->tx ? buf_len(s->tx) : 0;
    bool eof = s->replied || s->tx_eof;
    if (have == 0 && !eof) {
        s->tx_deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    size_t n = have < len ? have : len;
    *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (n == have && eof)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int send_data_cb(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *hd, size_t len,
                        nghttp2_data_source *src, void *user) {
    (void)ng;
    struct h2conn *c = user;
    struct h2stream *s = src->ptr;
    size_t pad = frame->data.padlen;
    size_t need = 9 + len + pad;
    if (stage_room(c) < need && !c->blocked && stage_push(c) == -1)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (stage_room(c) < need)
        return NGHTTP2_ERR_WOULDBLOCK;
    unsigned char *p = c->stage + c->stagelen;
    memcpy(p, hd, 9);
    p += 9;
    if (pad > 0)
        *p++ = (unsigned char)(pad - 1);
    if (s->replied) {
        memcpy(p, s->body + s->bodyoff, len);
        s->bodyoff += len;
    } else if (len > 0) {
        memcpy(p, buf_head(s->tx), len);
        buf_consume(s->tx, len);
    }
    p += len;
    if (pad > 1)
        memset(p, 0, pad - 1);
    c->stagelen += need;
    if (c->wu_credit < WU_CREDIT_MAX)
        c->wu_credit++;
    if (!s->replied && len > 0)
        feed(s, true); /* room in the send buffer: the relay may go on */
    return 0;
}

static void conn_write_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct h2conn *c = w->data;
    if (c->read_wants_write) {
        c->read_wants_write = false;
        ev_io_start(loop, &c->rw);
        ev_feed_event(loop, &c->rw, EV_READ);
    }
    if (c->blocked) {
        int r = tls_conn_flush(c->tls);
        if (r == TLS_WANT_WRITE)
            return;
        if (r != 0) {
            conn_close(c, "client_reset");
            return;
        }
        c->blocked = false;
        if (stage_push(c) == -1) {
            conn_close(c, "client_reset");
            return;
        }
        if (c->blocked)
            return;
    }
    ev_io_stop(c->srv->loop, &c->ww);
    conn_flush(c);
}

/* Everything nghttp2 wants to send, until TLS (the socket) is full. */
static void conn_flush(struct h2conn *c) {
    if (c->dead)
        return;
    if (c->in_cb)
        return; /* conn_read_cb flushes once nghttp2 returns */
    for (int round = 0; round < SEND_ROUNDS && !c->blocked; round++) {
        c->in_cb = true;
        int r = nghttp2_session_send(c->ng);
        c->in_cb = false;
        if (r != 0) {
            log_debug("h2 connection %lu: %s", c->id, nghttp2_strerror(r));
            conn_close(c, "client_reset");
            return;
        }
        if (stage_push(c) == -1) {
            conn_close(c, "client_reset");
            return;
        }
        if (!nghttp2_session_want_write(c->ng))
            break;
    }
    if (c->blocked)
        ev_io_start(c->srv->loop, &c->ww);
    else if (nghttp2_session_want_write(c->ng))
        ev_feed_event(c->srv->loop, &c->ww, EV_WRITE); /* more than a turn's worth: later */
    if (!c->blocked && c->stagelen == 0) {
        free(c->stage);
        c->stage = NULL;
    }
    conn_check(c);
}

/* Output submitted from a stream's callbacks (the relay): send it on the next loop turn, with
 * whatever else accumulates by then. */
static void conn_kick(struct h2conn *c) {
    if (!c->dead && !c->blocked)
        ev_feed_event(c->srv->loop, &c->ww, EV_WRITE);
}

/* ---- streams ---- */

static struct h2stream *stream_of(struct h2conn *c, int32_t id) {
    return nghttp2_session_get_stream_user_data(c->ng, id);
}

static void rx_free(struct h2stream *s) {
    for (size_t i = 0; i < s->nrx; i++)
        relay_buf_put(s->c->srv, s->rx[i]);
    free(s->rx);
    s->rx = NULL;
    s->nrx = 0;
    s->rxlen = 0;
}

static void unhold(struct h2stream *s) {
    if (!s->held)
        return;
    for (struct h2stream **p = &s->c->held; *p; p = &(*p)->held_next)
        if (*p == s) {
            *p = s->held_next;
            break;
        }
    s->held = false;
}

/* The held streams' bytes go to their relays now. */
static void release_held(struct h2conn *c) {
    while (c->held) {
        struct h2stream *s = c->held;
        c->held = s->held_next;
        s->held = false;
        feed(s, false);
    }
}

static void stream_free(struct h2stream *s) {
    struct h2conn *c = s->c;
    unhold(s);
    rx_free(s);
    if (s->tx)
        relay_buf_put(c->srv, s->tx);
    free(s->authority);
    free(s->path);
    free(s->fields);
    free(s->body);
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    c->nstreams--;
    if (!s->closed)
        nghttp2_session_set_stream_user_data(c->ng, s->id, NULL);
    free(s);
}

/* Credit the client's window for n bytes taken off the stream (or dropped). */
static void consumed(struct h2stream *s, size_t n) {
    struct h2conn *c = s->c;
    if (n == 0 || c->dead)
        return;
    if (s->closed)
        (void)nghttp2_session_consume_connection(c->ng, n);
    else
        (void)nghttp2_session_consume(c->ng, s->id, n);
    conn_kick(c);
}

void h2_stream_attach(struct h2stream *s, struct endpoint *e) {
    s->e = e;
    s->t = e->t;
}

/* The oldest received buffer leaves the stream's list (the caller frees or keeps it). */
static struct buf *rx_shift(struct h2stream *s) {
    struct buf *b = s->rx[0];
    memmove(s->rx, s->rx + 1, (s->nrx - 1) * sizeof *s->rx);
    s->nrx--;
    return b;
}

/* n bytes left the stream for the relay: credit the window, and stay readable while more is
 * there (level-triggered, as a socket would be). */
static void rx_taken(struct h2stream *s, size_t n) {
    s->rxlen -= n;
    consumed(s, n);
    if (s->nrx > 0 || s->rx_eof)
        feed(s, false);
}

ssize_t h2_stream_recv(struct h2stream *s, void *buf, size_t n) {
    size_t got = 0;
    while (got < n && s->nrx > 0) {
        struct buf *b = s->rx[0];
        size_t k = buf_len(b) < n - got ? buf_len(b) : n - got;
        memcpy((char *)buf + got, buf_head(b), k);
        buf_consume(b, k);
        got += k;
        if (buf_len(b) == 0)
            relay_buf_put(s->c->srv, rx_shift(s));
    }
    if (got > 0) {
        rx_taken(s, got);
        return (ssize_t)got;
    }
    if (s->rx_eof)
        return 0;
    errno = EAGAIN;
    return -1;
}

struct buf *h2_stream_take(struct h2stream *s) {
    if (s->nrx == 0)
        return NULL;
    struct buf *b = rx_shift(s);
    rx_taken(s, buf_len(b));
    return b;
}

static int rx_append(struct h2stream *s, const uint8_t *p, size_t len) {
    while (len > 0) {
        struct buf *b = s->nrx ? s->rx[s->nrx - 1] : NULL;
        if (!b || buf_room(b) == 0) {
            struct buf **v = realloc(s->rx, (s->nrx + 1) * sizeof *v);
            if (!v)
                return -1;
            s->rx = v;
            b = relay_buf_get(s->c->srv);
            if (!b)
                return -1;
            s->rx[s->nrx++] = b;
        }
        size_t k = buf_append(b, p, len);
        p += k;
        len -= k;
        s->rxlen += k;
    }
    return 0;
}

ssize_t h2_stream_send(struct h2stream *s, const void *buf, size_t n) {
    struct h2conn *c = s->c;
    if (s->closed || s->tx_eof || c->dead) {
        errno = EPIPE;
        return -1;
    }
    if (!s->tx) {
        s->tx = relay_buf_get(c->srv);
        if (!s->tx) {
            errno = ENOMEM;
            return -1;
        }
    }
    if (buf_room(s->tx) == 0)
        buf_compact(s->tx);
    size_t k = buf_append(s->tx, buf, n);
    if (k == 0) {
        errno = EAGAIN;
        return -1;
    }
    if (s->tx_deferred) {
        s->tx_deferred = false;
        (void)nghttp2_session_resume_data(c->ng, s->id);
    }
    conn_kick(c);
    return (ssize_t)k;
}

bool h2_stream_unsent(const struct h2stream *s) {
    return s->tx && buf_len(s->tx) > 0 && !s->closed;
}

void h2_stream_watch_read(struct h2stream *s, bool on) {
    s->want_read = on;
    if (on && (s->nrx > 0 || s->rx_eof))
        feed(s, false);
}

void h2_stream_watch_write(struct h2stream *s, bool on) {
    s->want_write = on;
    /* Room appears as nghttp2 frames the bytes (send_data_cb feeds then); an empty buffer has
     * room now. */
    if (on && (s->closed || !s->tx || buf_len(s->tx) == 0))
        feed(s, true);
}

bool h2_stream_watching_write(const struct h2stream *s) {
    return s->want_write;
}

void h2_stream_shutdown_write(struct h2stream *s) {
    if (s->tx_eof || s->closed)
        return;
    s->tx_eof = true;
    if (s->tx_deferred) {
        s->tx_deferred = false;
        (void)nghttp2_session_resume_data(s->c->ng, s->id);
    }
    conn_kick(s->c);
}

void h2_stream_detach(struct h2stream *s, bool destination_failed) {
    struct h2conn *c = s->c;
    s->t = NULL;
    s->e = NULL;
    s->want_read = s->want_write = false;
    size_t dropped = 0;
    for (size_t i = 0; i < s->nrx; i++)
        dropped += buf_len(s->rx[i]);
    rx_free(s);
    consumed(s, dropped);
    if (s->closed || c->dead) {
        stream_free(s);
        if (!c->dead)
            conn_check(c);
        return;
    }
    if (s->replied)
        return; /* the reply ends the stream; freed when nghttp2 closes it */
    if (s->tx_eof && s->rx_eof && (!s->tx || buf_len(s->tx) == 0))
        return; /* a clean end both ways: our END_STREAM is on its way */
    (void)nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id,
                                    destination_failed ? NGHTTP2_CONNECT_ERROR : NGHTTP2_CANCEL);
    if (s->tx)
        s->tx->start = s->tx->end = 0;
    conn_kick(c);
}

int h2_stream_ok(struct h2stream *s) {
    static const nghttp2_nv status[] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE}};
    nghttp2_data_provider dp = {.source.ptr = s, .read_callback = data_read_cb};
    if (nghttp2_submit_response(s->c->ng, s->id, status, 1, &dp) != 0)
        return -1;
    s->responded = true;
    conn_kick(s->c);
    return 0;
}

/* Fields of our own HTTP/1.1 answer that mean nothing (or are forbidden) in HTTP/2. */
static bool hop_field(const char *name, size_t len) {
    static const char *const skip[] = {"connection", "content-length", "keep-alive",
                                       "transfer-encoding", "proxy-connection"};
    for (size_t i = 0; i < sizeof skip / sizeof skip[0]; i++)
        if (strlen(skip[i]) == len && strncasecmp(skip[i], name, len) == 0)
            return true;
    return false;
}

int h2_stream_reply(struct h2stream *s, const char *http1, size_t len) {
    enum { MAX_FIELDS = 16 };
    nghttp2_nv nv[MAX_FIELDS + 1];
    char status[4], names[MAX_FIELDS][40];
    size_t n = 0;
    const char *end = http1 + len;
    const char *hdr_end = NULL;
    for (const char *p = http1; p + 3 < end; p++)
        if (memcmp(p, "\r\n\r\n", 4) == 0) {
            hdr_end = p + 2;
            break;
        }
    if (!hdr_end || len < 12 || s->closed || s->responded)
        return -1;
    memcpy(status, http1 + 9, 3); /* "HTTP/1.1 NNN " */
    status[3] = '\0';
    /* A refusal's text body is for people reading a terminal; over HTTP/2 the status and
     * proxy-status say it. The PAC file is the body. */
    size_t bodylen = (size_t)(end - (hdr_end + 2));
    bool keep_body = bodylen > 0 && status[0] == '2';
    nv[n++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
    const char *line = (const char *)memchr(http1, '\n', len) + 1; /* hdr_end says it is there */
    while (line < hdr_end && n <= MAX_FIELDS) {
        const char *eol = memchr(line, '\r', (size_t)(hdr_end - line));
        if (!eol)
            break;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        size_t nl = colon ? (size_t)(colon - line) : 0;
        bool typ = nl == 12 && strncasecmp(line, "content-type", 12) == 0;
        if (colon && nl < sizeof names[0] && !hop_field(line, nl) && (keep_body || !typ)) {
            char *name = names[n - 1];
            for (size_t i = 0; i < nl; i++)
                name[i] = (char)(line[i] >= 'A' && line[i] <= 'Z' ? line[i] + 32 : line[i]);
            const char *v = colon + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            nv[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)v, nl, (size_t)(eol - v),
                                   NGHTTP2_NV_FLAG_NONE};
        }
        line = eol + 2;
    }
    if (keep_body) {
        s->body = malloc(bodylen);
        if (!s->body)
            keep_body = false;
        else
            memcpy(s->body, hdr_end + 2, bodylen), s->bodylen = bodylen;
    }
    nghttp2_data_provider dp = {.source.ptr = s, .read_callback = data_read_cb};
    s->replied = true;
    s->responded = true;
    if (nghttp2_submit_response(s->c->ng, s->id, nv, n, keep_body ? &dp : NULL) != 0) {
        s->replied = false;
        return -1;
    }
    conn_kick(s->c);
    return 0;
}

/* ---- the request, as its fields arrive ---- */

static int begin_headers_cb(nghttp2_session *ng, const nghttp2_frame *frame, void *user) {
    struct h2conn *c = user;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct h2stream *s = calloc(1, sizeof *s);
    if (!s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    s->c = c;
    s->id = frame->hd.stream_id;
    s->next = c->streams;
    if (c->streams)
        c->streams->prev = s;
    c->streams = s;
    c->nstreams++;
    c->open++;
    c->headers_since = ev_now(c->srv->loop);
    nghttp2_session_set_stream_user_data(ng, s->id, s);
    STATS_INC(c[C_H2_STREAMS]);
    return 0;
}

static int add_field(struct h2stream *s, const uint8_t *name, size_t nl, const uint8_t *value,
                     size_t vl, size_t max) {
    size_t need = nl + 2 + vl + 2;
    if (s->fieldslen + need > max) {
        s->too_large = true;
        return 0;
    }
    char *p = realloc(s->fields, s->fieldslen + need);
    if (!p)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    s->fields = p;
    p += s->fieldslen;
    memcpy(p, name, nl);
    memcpy(p + nl, ": ", 2);
    memcpy(p + nl + 2, value, vl);
    memcpy(p + nl + 2 + vl, "\r\n", 2);
    s->fieldslen += need;
    return 0;
}

static char *dup_field(const uint8_t *v, size_t len) {
    char *p = malloc(len + 1);
    if (p) {
        memcpy(p, v, len);
        p[len] = '\0';
    }
    return p;
}

static int header_cb(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name,
                     size_t nl, const uint8_t *value, size_t vl, uint8_t flags, void *user) {
    (void)ng;
    (void)flags;
    struct h2conn *c = user;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct h2stream *s = stream_of(c, frame->hd.stream_id);
    size_t max = c->gen->cfg.max_request_bytes;
    if (!s || s->too_large)
        return 0;
    if (nl > 0 && name[0] == ':') {
        if (nl == 7 && memcmp(name, ":method", 7) == 0) {
            if (vl >= sizeof s->method) {
                s->too_large = true;
                return 0;
            }
            memcpy(s->method, value, vl);
            s->method[vl] = '\0';
        } else if (nl == 10 && memcmp(name, ":authority", 10) == 0) {
            free(s->authority);
            if (vl > max || !(s->authority = dup_field(value, vl)))
                s->too_large = true;
        } else if (nl == 5 && memcmp(name, ":path", 5) == 0) {
            free(s->path);
            if (vl > max || !(s->path = dup_field(value, vl)))
                s->too_large = true;
        } else if (nl == 7 && memcmp(name, ":scheme", 7) == 0) {
            size_t k = vl < sizeof s->scheme - 1 ? vl : sizeof s->scheme - 1;
            memcpy(s->scheme, value, k);
            s->scheme[k] = '\0';
        } else if (nl == 9 && memcmp(name, ":protocol", 9) == 0) {
            s->has_protocol = true;
        }
        return 0;
    }
    if (nl == 4 && memcmp(name, "host", 4) == 0)
        return 0; /* :authority is the target; a second Host would make the request invalid */
    return add_field(s, name, nl, value, vl, max);
}

/* The stream's request, written as HTTP/1.1 for the same parser and rules as everyone else's:
 * "METHOD TARGET HTTP/1.1", Host (the authority), the client's fields, the empty line. */
/* The target as an HTTP/1.1 client would write it: the authority for CONNECT; for other
 * methods the absolute form a proxy sees (scheme://authority/path, so the log names the site),
 * except for the PAC file, which is asked of connectd itself (origin form). */
static bool pac_path(const char *path) {
    return strncmp(path, "/proxy.pac", 10) == 0 && (path[10] == '\0' || path[10] == '?');
}

static char *request_text(const struct h2stream *s, size_t max, size_t *len) {
    bool connect = strcmp(s->method, "CONNECT") == 0 || !s->path;
    bool origin = !connect && (pac_path(s->path) || !s->authority || !s->scheme[0]);
    const char *host = s->authority ? s->authority : "";
    const char *scheme = connect || origin ? "" : s->scheme;
    const char *sep = connect || origin ? "" : "://";
    const char *auth = connect ? host : origin ? "" : host;
    const char *path = connect ? "" : s->path;
    size_t n = strlen(s->method) + 1 + strlen(scheme) + 3 + strlen(auth) + strlen(path) + 11 + 6 +
               strlen(host) + 2 + s->fieldslen + 2;
    if (s->too_large)
        n = max + 1; /* the parser refuses it with 431 */
    char *p = malloc(n + 1);
    if (!p)
        return NULL;
    if (s->too_large) { /* a header block over the limit: the parser answers 431 */
        memset(p, 'x', n);
        static const char head[] = "CONNECT a:1 HTTP/1.1\r\nx: ";
        memcpy(p, head, sizeof head - 1);
    } else {
        int k = snprintf(p, n + 1, "%s %s%s%s%s HTTP/1.1\r\nHost: %s\r\n", s->method, scheme, sep,
                         auth, path, host);
        memcpy(p + k, s->fields ? s->fields : "", s->fieldslen);
        memcpy(p + (size_t)k + s->fieldslen, "\r\n", 2);
        n = (size_t)k + s->fieldslen + 2;
    }
    *len = n;
    return p;
}

static int stream_begin(struct h2conn *c, struct h2stream *s) {
    size_t len = 0;
    char *req = request_text(s, c->gen->cfg.max_request_bytes, &len);
    if (!req)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    free(s->fields);
    s->fields = NULL;
    s->fieldslen = 0;
    c->last_active = ev_now(c->srv->loop);
    tunnel_open_stream(c->srv, s, &c->peer, &c->balancer, c->tls_version, c->id, req, len,
                       s->has_protocol);
    free(req);
    return 0;
}

/* ---- frames ---- */

/* Does this frame count against CONTROL_PER_S? */
static bool control_frame(struct h2conn *c, const nghttp2_frame *frame) {
    bool ack = frame->hd.flags & NGHTTP2_FLAG_ACK;
    switch (frame->hd.type) {
    case NGHTTP2_PING:
    case NGHTTP2_SETTINGS:
        return !ack;
    case NGHTTP2_PRIORITY:
        return true;
    case NGHTTP2_DATA: /* no payload (padding aside) and no end: nothing but cost */
        return frame->hd.length <= frame->data.padlen &&
               !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM);
    case NGHTTP2_HEADERS:
        return frame->headers.cat == NGHTTP2_HCAT_HEADERS; /* trailers */
    case NGHTTP2_WINDOW_UPDATE:
        if (c->wu_credit > 0) {
            c->wu_credit--;
            return false;
        }
        return true;
    default:
        return false;
    }
}

/* End the session for abuse: GOAWAY ENHANCE_YOUR_CALM; from here on nothing the client sends
 * is read or acted upon. */
static void terminate(struct h2conn *c, const char *what) {
    if (c->terminated)
        return;
    char from[ADDR_TEXT_MAX];
    addr_format(&c->peer.sa, true, from, sizeof from);
    log_warn("h2: %s %s; GOAWAY", from, what);
    STATS_INC(c[C_H2_FLOODS]);
    c->terminated = c->goaway = true;
    (void)nghttp2_session_terminate_session(c->ng, NGHTTP2_ENHANCE_YOUR_CALM);
}

/* A client cancelled a stream before its tunnel was up: one token of the rapid-reset bucket. */
static void early_reset(struct h2conn *c) {
    ev_tstamp now = ev_now(c->srv->loop);
    c->reset_tokens += (now - c->reset_at) * EARLY_RESETS_PER_S;
    if (c->reset_tokens > EARLY_RESETS_BURST)
        c->reset_tokens = EARLY_RESETS_BURST;
    c->reset_at = now;
    if (c->reset_tokens >= 1)
        c->reset_tokens -= 1;
    else
        terminate(c, "cancels streams faster than they can be set up (rapid reset)");
}

static bool flooding(struct h2conn *c, const nghttp2_frame *frame) {
    if (!control_frame(c, frame))
        return false;
    ev_tstamp now = ev_now(c->srv->loop);
    if (now - c->flood_since >= 1.0) {
        c->flood_since = now;
        c->flood_count = 0;
    }
    return ++c->flood_count > CONTROL_PER_S;
}

static int frame_recv_cb(nghttp2_session *ng, const nghttp2_frame *frame, void *user) {
    struct h2conn *c = user;
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        struct h2stream *r = stream_of(c, frame->hd.stream_id);
        if (r && !r->responded)
            early_reset(c);
    }
    if (c->dead)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    c->got_frame = true;
    (void)ng;
    if (flooding(c, frame))
        terminate(c, "sends more than 1000 control frames a second");
    if (c->terminated)
        return 0; /* after our GOAWAY: nothing is acted upon */
    struct h2stream *s = frame->hd.stream_id ? stream_of(c, frame->hd.stream_id) : NULL;
    if (!s)
        return 0;
    bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        if (frame->headers.cat != NGHTTP2_HCAT_REQUEST || s->t || s->responded)
            break; /* trailers: nothing to do for a tunnel */
        c->headers_since = 0;
        s->rx_eof = end;
        if (c->open > c->gen->cfg.h2.max_streams) { /* see advertise_limit() */
            s->responded = true;                    /* nothing to act on; its DATA is dropped */
            (void)nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_REFUSED_STREAM);
            return 0;
        }
        return stream_begin(c, s);
    case NGHTTP2_DATA:
        if (end) {
            s->rx_eof = true;
            feed(s, false);
        }
        break;
    default:
        break;
    }
    return 0;
}

static int data_chunk_cb(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user) {
    (void)ng;
    (void)flags;
    struct h2conn *c = user;
    struct h2stream *s = stream_of(c, id);
    c->last_active = ev_now(c->srv->loop);
    if (c->dead)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (!s || (s->responded && !s->t)) { /* refused or gone: drop, keep the window open */
        if (nghttp2_session_consume(c->ng, id, len) != 0)
            (void)nghttp2_session_consume_connection(c->ng, len);
        return 0;
    }
    if (rx_append(s, data, len) == -1)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (c->reading && s->rxlen < HOLD_BYTES && s->want_read) {
        if (!s->held) { /* conn_read_cb hands it over once the socket has no more */
            s->held = true;
            s->held_next = c->held;
            c->held = s;
        }
        return 0;
    }
    unhold(s);
    feed(s, false);
    return 0;
}

static int frame_send_cb(nghttp2_session *ng, const nghttp2_frame *frame, void *user) {
    struct h2conn *c = user;
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR)
        c->goaway_error = true;
    if (!(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    struct h2stream *s = stream_of(c, frame->hd.stream_id);
    if (s)
        s->end_sent = true;
    /* A reply is complete while the client may still be sending: RFC 9113 section 8.1 lets us
     * ask it to stop, without error. */
    if (s && s->replied && !nghttp2_session_get_stream_remote_close(ng, s->id))
        (void)nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    return 0;
}

static int stream_close_cb(nghttp2_session *ng, int32_t id, uint32_t code, void *user) {
    (void)ng;
    struct h2conn *c = user;
    struct h2stream *s = stream_of(c, id);
    if (!s)
        return 0;
    c->open--;
    s->closed = true;
    if (s->t) {
        /* Chromium ends a tunnel whose destination has finished (our END_STREAM is out) with
         * RST_STREAM CANCEL rather than an END_STREAM of its own: an end, not an abort. */
        bool ended = code == NGHTTP2_NO_ERROR || (code == NGHTTP2_CANCEL && s->end_sent);
        if (!ended || (code == NGHTTP2_NO_ERROR && !s->rx_eof)) {
            tunnel_close(s->t, "client_reset"); /* detaches (and frees) s */
            return 0;
        }
        s->rx_eof = true;
        feed(s, false); /* the relay reads what is left, then the end */
        return 0;
    }
    stream_free(s);
    return 0;
}

/* ---- the connection ---- */

static void conn_check(struct h2conn *c) {
    if (c->dead || c->in_cb)
        return;
    if (c->blocked || c->stagelen > 0 || tls_conn_unsent(c->tls))
        return;
    if ((c->goaway && c->nstreams == 0) ||
        (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng)))
        conn_close(c, c->terminated     ? "h2_flood"
                      : c->goaway_error ? "h2_protocol_error" /* nghttp2 ended it */
                      : c->goaway       ? "shutdown"
                                        : "client_eof");
}

/* Close the connection's socket and session; the object itself is freed by h2_reap() once the
 * current callbacks have returned (a caller up the stack may still look at c->dead). */
static void conn_teardown(struct h2conn *c) {
    struct server *srv = c->srv;
    log_debug("h2 connection %lu closed: %s", c->id, c->why);
    ev_io_stop(srv->loop, &c->rw);
    ev_io_stop(srv->loop, &c->ww);
    ev_timer_stop(srv->loop, &c->timer);
    if (c->tls) {
        tls_conn_close_notify(c->tls);
        tls_conn_free(c->tls);
    }
    if (c->fd != -1)
        close(c->fd);
    nghttp2_session_del(c->ng);
    free(c->stage);
    c->tls = NULL;
    c->fd = -1;
    c->ng = NULL;
    c->stage = NULL;
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->h2conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->counted)
        srv->active--;
    stats_set(&stats_me->g.connections_open, srv->active + srv->refusing);
    c->next = srv->h2dead;
    srv->h2dead = c;
    if (!ev_is_active(&srv->reaper))
        ev_prepare_start(srv->loop, &srv->reaper);
}

void h2_reap(struct server *srv) {
    while (srv->h2dead) {
        struct h2conn *c = srv->h2dead;
        srv->h2dead = c->next;
        gen_unref(c->gen);
        free(c);
    }
}

static void conn_close(struct h2conn *c, const char *why) {
    if (c->dead)
        return;
    c->dead = true;
    c->why = why;
    /* Every stream's tunnel ends with the connection; detach frees the stream objects. */
    while (c->streams) {
        struct h2stream *s = c->streams;
        if (s->t)
            tunnel_close(s->t, why);
        else
            stream_free(s);
    }
    if (c->in_cb)
        return; /* torn down once nghttp2 returns (conn_after) */
    conn_teardown(c);
}

/* After nghttp2 returned: a close decided inside it happens now. */
static bool conn_after(struct h2conn *c) {
    if (c->dead) {
        conn_teardown(c);
        return false;
    }
    return true;
}

/* nghttp2 gave up on the session (a fatal error: it sends nothing more): say why in a GOAWAY
 * of our own, written after the frames already handed over, then the caller closes. */
static void goaway_now(struct h2conn *c, uint32_t code) {
    if (c->partial || stage_room(c) < 17)
        return; /* a frame of nghttp2's is cut, or no room: just close */
    uint32_t last = (uint32_t)nghttp2_session_get_last_proc_stream_id(c->ng);
    unsigned char *p = c->stage + c->stagelen;
    static const unsigned char hd[9] = {0, 0, 8, NGHTTP2_GOAWAY, 0, 0, 0, 0, 0};
    memcpy(p, hd, 9);
    for (int i = 0; i < 4; i++) {
        p[9 + i] = (unsigned char)(last >> (24 - 8 * i));
        p[13 + i] = (unsigned char)(code >> (24 - 8 * i));
    }
    c->stagelen += 17;
    if (stage_push(c) == 0)
        (void)tls_conn_flush(c->tls);
}

static void conn_read_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct h2conn *c = w->data;
    unsigned char buf[READ_CHUNK];
    if (c->terminated) { /* GOAWAY for abuse: the rest goes unread; closed once it is sent */
        ev_io_stop(loop, &c->rw);
        conn_flush(c);
        return;
    }
    bool more = false; /* stopped with bytes still waiting: held streams may wait for them */
    for (int round = 0; round < READ_ROUNDS; round++) {
        ssize_t n = tls_conn_read(c->tls, buf, sizeof buf);
        if (n == TLS_WANT_READ)
            break;
        if (n == TLS_WANT_WRITE) { /* a read that must write first: the write side resumes us */
            c->read_wants_write = true;
            ev_io_stop(loop, &c->rw);
            ev_io_start(loop, &c->ww);
            break;
        }
        if (n <= 0) {
            conn_close(c, n == 0 ? "client_eof" : "client_reset");
            return;
        }
        c->last_active = ev_now(loop);
        c->in_cb = c->reading = true;
        ssize_t r = nghttp2_session_mem_recv(c->ng, buf, (size_t)n);
        c->in_cb = c->reading = false;
        if (!conn_after(c))
            return;
        if (r < 0) {
            log_debug("h2 connection %lu: %s", c->id, nghttp2_strerror((int)r));
            bool calm = r == NGHTTP2_ERR_FLOODED || r == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS;
            if (calm) /* nghttp2's own flood checks (e.g. ACKs a client never reads) count too */
                STATS_INC(c[C_H2_FLOODS]);
            goaway_now(c, calm ? NGHTTP2_ENHANCE_YOUR_CALM : NGHTTP2_PROTOCOL_ERROR);
            conn_close(c, calm ? "h2_flood" : "h2_protocol_error");
            return;
        }
        if (c->terminated)
            break; /* the GOAWAY is queued: read nothing more */
        if (round == READ_ROUNDS - 1) {
            int queued = 0;
            if (tls_conn_pending(c->tls)) {
                ev_feed_event(loop, &c->rw, EV_READ);
                more = true;
            } else if (c->held && ioctl(c->fd, FIONREAD, &queued) == 0 && queued > 0) {
                more = true; /* the socket wakes us again */
            }
        }
    }
    if (!more)
        release_held(c);
    conn_flush(c);
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)revents;
    struct h2conn *c = w->data;
    const struct config *cfg = &c->gen->cfg;
    ev_tstamp now = ev_now(loop);
    if (!c->got_frame && now - c->started >= cfg->timeout_handshake) {
        conn_close(c, "handshake_timeout");
        return;
    }
    /* A header block that never ends (CONTINUATION frames trickling in). */
    if (c->headers_since != 0 && now - c->headers_since >= cfg->timeout_handshake) {
        conn_close(c, "handshake_timeout");
        return;
    }
    if (c->nstreams == 0 && now - c->last_active >= cfg->timeout_idle) {
        if (!c->goaway) {
            c->goaway = true;
            (void)nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE,
                                        nghttp2_session_get_last_proc_stream_id(c->ng),
                                        NGHTTP2_NO_ERROR, NULL, 0);
            c->why = "idle_timeout";
            conn_flush(c); /* closes it once the GOAWAY is out (conn_check) */
            if (c->dead)
                return;
            ev_timer_set(w, 1.0, 0.); /* or at the next tick, sent or not */
            ev_timer_start(loop, w);
            return;
        }
        conn_close(c, "idle_timeout");
        return;
    }
    ev_timer_set(w, 1.0, 0.);
    ev_timer_start(loop, w);
}

static nghttp2_session_callbacks *callbacks(void) {
    static nghttp2_session_callbacks *cb;
    if (cb || nghttp2_session_callbacks_new(&cb) != 0)
        return cb;
    nghttp2_session_callbacks_set_send_callback(cb, send_cb);
    nghttp2_session_callbacks_set_send_data_callback(cb, send_data_cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, begin_headers_cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, header_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, frame_recv_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, data_chunk_cb);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, frame_send_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, stream_close_cb);
    return cb;
}

static nghttp2_session *session_new(struct h2conn *c, const struct h2_config *h) {
    nghttp2_session_callbacks *cb = callbacks();
    nghttp2_option *opt = NULL;
    nghttp2_session *ng = NULL;
    if (!cb || nghttp2_option_new(&opt) != 0)
        return NULL;
    /* Windows open as the destination takes the bytes (h2_stream_recv), not as they arrive. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* Rapid reset (CVE-2023-44487): a client that cancels streams faster than this gets a
     * GOAWAY; the figures are nghttp2 1.57's defaults. */
    nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 33);
    nghttp2_option_set_max_continuations(opt, 8);
    int r = nghttp2_session_server_new2(&ng, cb, c, opt);
    nghttp2_option_del(opt);
    if (r != 0)
        return NULL;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, hard_limit(h->max_streams)},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, h->stream_window},
        {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
    };
    if (nghttp2_submit_settings(ng, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(ng, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)h->connection_window) != 0) {
        nghttp2_session_del(ng);
        return NULL;
    }
    return ng;
}

void h2_conn_start(struct server *srv, int fd, struct tls_conn *tls, const union sockaddr_any *peer,
                   const union sockaddr_any *balancer, const char *tls_version, bool counted) {
    struct h2conn *c = calloc(1, sizeof *c);
    if (!c || !(c->ng = session_new(c, &srv->gen->cfg.h2))) {
        log_error("out of memory for an HTTP/2 connection");
        free(c);
        tls_conn_free(tls);
        close(fd);
        if (counted)
            srv->active--;
        return;
    }
    c->srv = srv;
    c->gen = srv->gen;
    gen_ref(c->gen);
    c->fd = fd;
    c->tls = tls;
    c->peer = *peer;
    c->balancer = *balancer;
    c->tls_version = tls_version;
    c->counted = counted;
    c->id = ++srv->h2_seq;
    c->started = c->last_active = ev_now(srv->loop);
    c->next = srv->h2conns;
    if (srv->h2conns)
        srv->h2conns->prev = c;
    srv->h2conns = c;
    STATS_INC(c[C_H2_CONNECTIONS]);
    ev_io_init(&c->rw, conn_read_cb, fd, EV_READ);
    ev_io_init(&c->ww, conn_write_cb, fd, EV_WRITE);
    /* Kicks (conn_kick) feed ww; libev runs the newest pending event of a priority first, so at
     * the default priority every WINDOW_UPDATE a relay's read earns would leave in its own
     * record and send. One notch lower, ww runs after this turn's relays: one flush for all. */
    ev_set_priority(&c->ww, -1);
    c->rw.data = c->ww.data = c;
    ev_timer_init(&c->timer, conn_timer_cb, 1.0, 0.);
    c->timer.data = c;
    ev_timer_start(srv->loop, &c->timer);
    ev_io_start(srv->loop, &c->rw);
    if (srv->draining)
        c->goaway = true,
        (void)nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
    conn_flush(c); /* our SETTINGS */
    if (!c->dead && tls_conn_pending(c->tls))
        ev_feed_event(srv->loop, &c->rw, EV_READ); /* the preface came with the Finished */
}

void h2_drain(struct server *srv) {
    for (struct h2conn *c = srv->h2conns, *next; c; c = next) {
        next = c->next;
        if (c->goaway)
            continue;
        c->goaway = true;
        (void)nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE,
                                    nghttp2_session_get_last_proc_stream_id(c->ng),
                                    NGHTTP2_NO_ERROR, NULL, 0);
        conn_flush(c);
    }
}

void h2_close_all(struct server *srv) {
    while (srv->h2conns)
        conn_close(srv->h2conns, "shutdown");
}
