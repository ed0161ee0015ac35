/* relay: move bytes both ways once the tunnel is up.
 *
 * Each endpoint has a read watcher that takes bytes from its socket and a write watcher that
 * delivers the peer's bytes into it. Bytes in flight wait either in a user-space buffer (copy
 * path) or in a kernel pipe filled and drained with splice(2) (bulk path: the bytes never
 * enter user space). In "auto" mode a direction starts on the copy path, which costs the
 * fewest syscalls for small exchanges, and moves to splice once one read fills a large share of
 * a buffer. Only one of the two holds bytes of a direction at any time, so order is kept.
 *
 * Backpressure: while a buffer is full its reader is stopped; it restarts when the writer has
 * drained half of it. A pipe direction relays like a blocking splice relay: read, write all,
 * stop reading while the peer is full, and read again (straight from the write callback, not
 * via another epoll round) once the pipe drained; filling a pipe behind a full peer cost a
 * splice and an epoll_wait per few KiB. Half-close: EOF on one side becomes shutdown(SHUT_WR) on
 * the other once that direction is drained, while the other direction keeps flowing. Buffers and
 * pipes are taken from pools while bytes are in flight and given back as soon as they drain,
 * so idle tunnels hold neither. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "container.h"
#include "http.h"
#include "log.h"
#include "stats.h"
#include "transport.h"
#include "tunnel.h"

#define POOL_MAX       64            /* free buffers kept for reuse */
#define POOL_BIG_MAX   32            /* free big buffers kept for reuse (8 MiB) */
#define PIPE_POOL_MAX  64            /* free pipes kept for reuse */
#define PIPE_SIZE      (1024 * 1024) /* bytes a pipe may hold (F_SETPIPE_SZ; best effort) */
#define BULK_THRESHOLD (BUF_CAP / 4) /* a copy read this large moves the direction to splice */
#define RESUME_AT      (BUF_CAP / 2) /* restart a stalled copy reader at half a buffer */
#define SPLICE_ROUNDS  4             /* splice-in/out rounds per wake-up, for fairness */
#define SPLICE_MORE    (64 * 1024)   /* a splice-in this large suggests more is waiting */

/* ---- pools ---- */

static struct buf *pool_get(struct buf **pool, size_t *npool, size_t cap) {
    struct buf *b = *pool;
    if (b) {
        memcpy(pool, b->data, sizeof *pool);
        (*npool)--;
    } else if (!(b = malloc(sizeof *b + cap))) {
        return NULL;
    }
    b->start = b->end = 0;
    b->cap = cap;
    return b;
}

static void pool_free(struct buf **pool) {
    while (*pool) {
        struct buf *b = *pool;
        memcpy(pool, b->data, sizeof *pool);
        free(b);
    }
}

struct buf *relay_buf_get(struct server *srv) {
    return pool_get(&srv->pool, &srv->npool, BUF_CAP);
}

struct buf *relay_buf_get_big(struct server *srv) {
    return pool_get(&srv->pool_big, &srv->npool_big, BUF_CAP_BIG);
}

void relay_buf_put(struct server *srv, struct buf *b) {
    bool big = b->cap == BUF_CAP_BIG;
    struct buf **pool = big ? &srv->pool_big : &srv->pool;
    size_t *npool = big ? &srv->npool_big : &srv->npool;
    if (*npool >= (big ? POOL_BIG_MAX : POOL_MAX)) {
        free(b);
        return;
    }
    memcpy(b->data, pool, sizeof *pool);
    *pool = b;
    (*npool)++;
}

static int pipe_get(struct server *srv, int p[2]) {
    if (srv->npipes > 0) {
        srv->npipes--;
        p[0] = srv->pipes[srv->npipes][0];
        p[1] = srv->pipes[srv->npipes][1];
        return 0;
    }
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) == -1)
        return -1;
    /* A larger pipe means fewer splice calls per megabyte; the default (64 KiB) still works. */
    (void)fcntl(p[1], F_SETPIPE_SZ, PIPE_SIZE);
    return 0;
}

static void pipe_put(struct server *srv, int p[2], bool empty) {
    if (!srv->pipes)
        srv->pipes = calloc(PIPE_POOL_MAX, sizeof *srv->pipes);
    if (empty && srv->pipes && srv->npipes < PIPE_POOL_MAX) {
        srv->pipes[srv->npipes][0] = p[0];
        srv->pipes[srv->npipes][1] = p[1];
        srv->npipes++;
    } else {
        close(p[0]);
        close(p[1]);
    }
    p[0] = p[1] = -1;
}

static void release_buf(struct server *srv, struct endpoint *e) {
    if (e->in) {
        relay_buf_put(srv, e->in);
        e->in = NULL;
    }
}

void relay_release(struct server *srv, struct endpoint *e) {
    release_buf(srv, e);
    if (e->pipe[0] != -1) {
        pipe_put(srv, e->pipe, e->piped == 0);
        e->piped = 0;
    }
}

void relay_pool_free(struct server *srv) {
    pool_free(&srv->pool);
    pool_free(&srv->pool_big);
    srv->npool = srv->npool_big = 0;
    for (size_t i = 0; i < srv->npipes; i++) {
        close(srv->pipes[i][0]);
        close(srv->pipes[i][1]);
    }
    free(srv->pipes);
    srv->pipes = NULL;
    srv->npipes = 0;
}

/* ---- moving bytes ---- */

/* n more bytes were written to dst: count them as they go, so a long download shows in the
 * metrics while it runs. Towards the client the 200 itself is not tunnel data. */
static inline void count_sent(struct tunnel *t, struct endpoint *dst, size_t n) {
    uint64_t before = dst->sent;
    dst->sent += (uint64_t)n;
    if (dst != &t->client) {
        STATS_ADD(c[C_BYTES_UP], n);
        return;
    }
    if (before >= HTTP_CONNECT_OK_LEN) {
        STATS_ADD(c[C_BYTES_DOWN], n);
        return;
    }
    if (dst->sent < HTTP_CONNECT_OK_LEN)
        return;
    tunnel_delivered(t); /* the last byte of the 200 went out just now */
    STATS_ADD(c[C_BYTES_DOWN], dst->sent - HTTP_CONNECT_OK_LEN);
}

static const char *reset_reason(const struct tunnel *t, const struct endpoint *e) {
    return e == &t->client ? "client_reset" : "upstream_reset";
}

static void check_done(struct tunnel *t) {
    if (t->client.eof && t->upstream.eof && t->client.shut && t->upstream.shut)
        tunnel_close(t, "done");
}

/* src has reached EOF and everything it sent has been delivered: pass the FIN on. */
static int forward_eof(struct tunnel *t, struct endpoint *dst) {
    if (dst->shut)
        return 0;
    dst->shut = true;
    /* When the other direction is finished too, the close that follows sends this FIN: save
     * the syscall. (dst has sent its EOF, so no unread data can turn that close into an RST.) */
    if (tp_shutdown_write(dst, dst->eof && dst->peer->shut) == -1) {
        tunnel_close(t, reset_reason(t, dst));
        return -1;
    }
    check_done(t);
    return t->state == TUNNEL_CLOSED ? -1 : 0;
}

/* Deliver what src->in holds. Returns bytes left, or -1 when the tunnel was closed. */
static ssize_t drain_buf(struct tunnel *t, struct endpoint *src, struct endpoint *dst) {
    struct buf *b = src->in;
    while (buf_len(b) > 0) {
        ssize_t n = tp_send(dst, buf_head(b), buf_len(b));
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            tunnel_close(t, reset_reason(t, dst));
            return -1;
        }
        buf_consume(b, (size_t)n);
        count_sent(t, dst, (size_t)n);
        if (buf_len(b) > 0)
            break; /* a short write means the socket buffer is full: skip the EAGAIN call */
    }
    return (ssize_t)buf_len(b);
}

/* Deliver what src's pipe holds. Returns bytes left, or -1 when the tunnel was closed. */
static ssize_t drain_pipe(struct tunnel *t, struct endpoint *src, struct endpoint *dst) {
    while (src->piped > 0) {
        ssize_t n = splice(src->pipe[0], NULL, dst->fd, NULL, src->piped,
                           SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            tunnel_close(t, reset_reason(t, dst));
            return -1;
        }
        src->piped -= (size_t)n;
        count_sent(t, dst, (size_t)n);
        if (src->piped > 0)
            break; /* a short splice means the socket buffer is full: skip the EAGAIN call */
    }
    return (ssize_t)src->piped;
}

/* Deliver src's bytes to dst, then decide who waits for what. Returns -1 when the tunnel was
 * closed. */
static int flush(struct tunnel *t, struct endpoint *src) {
    struct endpoint *dst = src->peer;
    struct ev_loop *loop = t->srv->loop;
    ssize_t left = 0;
    size_t cap = 0;
    /* Records the transport still holds go first. When src has bytes for dst they go along in
     * the same send (the session ticket with the 200): the transport keeps the order. */
    bool more = src->in && buf_len(src->in) > 0;
    if (tp_unsent(dst) && !more && tp_flush(dst) == -1 && errno != EAGAIN) {
        tunnel_close(t, reset_reason(t, dst));
        return -1;
    }
    if (src->in) {
        cap = src->in->cap;
        left = drain_buf(t, src, dst);
    } else if (src->piped > 0) {
        left = drain_pipe(t, src, dst);
    }
    if (left == -1)
        return -1;
    if (left > 0) {
        t->last_active = ev_now(loop);
        tp_watch_write(loop, dst);
        tunnel_watch_stall(t);
        if (!src->in || (size_t)left == cap)
            tp_unwatch_read(loop, src); /* a pipe drains first; a full buffer has no room */
        else if (!src->eof && (size_t)left <= cap / 2 && (size_t)left <= RESUME_AT)
            tp_read_on(loop, src);
        return 0;
    }
    if (tp_unsent(dst)) {
        /* Our buffer is empty, but the transport still holds records for dst: wait for
         * writability before calling the direction drained (and before passing an end on). */
        relay_release(t->srv, src);
        t->last_active = ev_now(loop);
        tp_watch_write(loop, dst);
        tunnel_watch_stall(t);
        if (!src->eof)
            tp_read_on(loop, src);
        return 0;
    }
    /* Drained: give the buffer or pipe back, so an idle direction holds nothing. */
    relay_release(t->srv, src);
    tp_unwatch_write(loop, dst);
    if (src->eof)
        return forward_eof(t, dst);
    tp_read_on(loop, src);
    return 0;
}

/* One copy read into src's buffer. Returns the bytes read (> 0), 0 at EOF, -1 with errno, or
 * -2 when there was nothing to do (out of room: reading stopped; or the tunnel closed). */
static ssize_t copy_in(struct ev_loop *loop, struct tunnel *t, struct endpoint *src) {
    if (!src->in) {
        /* Towards a TLS client whose records OpenSSL builds here, read in big gulps. */
        bool big = !src->tls && !src->h2 && tp_user_records(src->peer);
        src->in = big ? relay_buf_get_big(t->srv) : relay_buf_get(t->srv);
        if (!src->in) {
            log_error("out of memory for a relay buffer");
            tunnel_close(t, "out_of_memory");
            return -2;
        }
    }
    struct buf *b = src->in;
    if (buf_room(b) == 0)
        buf_compact(b);
    if (buf_room(b) == 0) { /* full: wait for the writer (a zero-length read would mean EOF) */
        tp_unwatch_read(loop, src);
        return -2;
    }
    struct buf *taken = src->h2 && buf_len(b) == 0 ? h2_stream_take(src->h2) : NULL;
    if (taken) { /* an HTTP/2 stream's bytes already sit in a relay buffer: swap, no copy */
        relay_buf_put(t->srv, b);
        src->in = taken;
        return (ssize_t)buf_len(taken);
    }
    ssize_t n = tp_recv(loop, src, buf_tail(b), buf_room(b));
    if (n > 0)
        buf_produce(b, (size_t)n);
    return n;
}

/* Whether more bytes wait on src's socket: its read watcher fires again next turn. */
static bool more_waiting(const struct endpoint *src) {
    int n = 0;
    return ioctl(src->fd, FIONREAD, &n) == 0 && n > 0;
}

static void read_copy(struct ev_loop *loop, struct tunnel *t, struct endpoint *src) {
    struct endpoint *dst = src->peer;
    /* Towards a TLS client that keeps up, the session gathers the records of up to
     * TLS_GATHER_ROUNDS buffers for one send while more keeps waiting upstream (tp_gather): a
     * bulk download costs half the sends and of the client's wake-ups. One read per
     * loop turn, as without gathering, so that every tunnel gets the same share (reading 4
     * buffers in one turn gave a tunnel with more queued upstream 2-3 x the others' rate). */
    bool gather = !src->tls && !src->h2 && !tp_watching_write(dst) && tp_gather(dst, true);
    ssize_t n = copy_in(loop, t, src);
    if (n == -2) {
        if (gather && t->state != TUNNEL_CLOSED) {
            tp_gather(dst, false);
            if (tp_unsent(dst))
                flush(t, src); /* what earlier turns gathered */
        }
        return;
    }
    if (n > 0) {
        t->last_active = ev_now(loop);
        if (n >= BULK_THRESHOLD && t->gen->cfg.relay == RELAY_AUTO && !src->copy_only)
            src->bulk = true; /* later reads, once this buffer drains, use splice */
        if (!gather && tp_watching_write(dst)) {
            /* The peer is not writable yet: keep filling, stop when full. */
            if (buf_len(src->in) == src->in->cap)
                tp_unwatch_read(loop, src);
            return;
        }
        /* A read that did not fill the buffer emptied the socket: no need to ask. */
        if (gather && buf_room(src->in) == 0 && more_waiting(src)) {
            ssize_t left = drain_buf(t, src, dst); /* into the session's records, not sent */
            if (left == -1)
                return;
            if (left == 0 && tp_gather_room(dst)) {
                release_buf(t->srv, src);
                return; /* the next turn reads on */
            }
        }
        if (gather)
            tp_gather(dst, false);
        flush(t, src);
        return;
    }
    if (gather)
        tp_gather(dst, false);
    if (n == 0) {
        src->eof = true;
        tp_unwatch_read(loop, src);
        flush(t, src);
        return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        if (gather && tp_unsent(dst))
            flush(t, src);              /* what earlier turns gathered */
        else if (buf_len(src->in) == 0) /* spurious wake-up: an idle tunnel holds no buffer */
            release_buf(t->srv, src);
        return;
    }
    tunnel_close(t, reset_reason(t, src));
}

static void read_splice(struct ev_loop *loop, struct tunnel *t, struct endpoint *src) {
    /* Keep moving while the socket has more and the peer takes it all, up to a cap: fewer
     * trips through epoll for a bulk stream, and no starving the other tunnels. A drained pipe
     * goes back to the pool after each round (flush), so take one each time. */
    ssize_t n;
    for (int round = 0;; round++) {
        if (src->pipe[0] == -1 && pipe_get(t->srv, src->pipe) == -1) {
            /* Out of fds or memory for a pipe: this direction stays on the copy path. */
            src->bulk = false;
            if (round == 0)
                read_copy(loop, t, src);
            return;
        }
        n = splice(src->fd, NULL, src->pipe[1], NULL, PIPE_SIZE, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n <= 0)
            break;
        src->piped += (size_t)n;
        t->last_active = ev_now(loop);
        if (tp_watching_write(src->peer)) {
            tp_unwatch_read(loop, src);
            return;
        }
        if (flush(t, src) == -1 || src->piped > 0 || round + 1 >= SPLICE_ROUNDS ||
            (size_t)n < SPLICE_MORE)
            return; /* closed, peer full, fair share used, or a short read drained the socket */
    }
    if (n == 0) {
        src->eof = true;
        tp_unwatch_read(loop, src);
        flush(t, src);
        return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        /* Either the socket had nothing (spurious wake-up) or the pipe is full: in the second
         * case stop reading, or the level-triggered loop would spin; flush restarts us. */
        if (src->piped == 0)
            relay_release(t->srv, src);
        else
            tp_unwatch_read(loop, src);
        return;
    }
    if (errno == EINTR)
        return;
    if (errno == EINVAL && src->piped == 0) {
        /* splice is not supported for this socket: copy from now on. */
        relay_release(t->srv, src);
        src->bulk = false;
        return;
    }
    tunnel_close(t, reset_reason(t, src));
}

static void read_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct endpoint *src = container_of(w, struct endpoint, rw);
    /* Bytes already waiting in the copy buffer go first; splice only into an empty direction
     * or onto bytes already in the pipe. */
    if (src->piped > 0 || (src->bulk && (!src->in || buf_len(src->in) == 0))) {
        release_buf(src->t->srv, src); /* if any, it is empty */
        read_splice(loop, src->t, src);
    } else {
        read_copy(loop, src->t, src);
    }
}

static void write_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct endpoint *dst = container_of(w, struct endpoint, ww);
    if (dst->read_wants_write) { /* a TLS read waited for this: let it go on */
        dst->read_wants_write = false;
        tp_read_on(loop, dst);
    }
    struct endpoint *src = dst->peer;
    bool was_piped = src->piped > 0;
    if (flush(dst->t, src) == -1)
        return;
    /* The pipe drained and reading resumed: src's socket filled while dst was full, so read
     * now instead of after another trip through epoll. */
    if (was_piped && src->piped == 0 && ev_is_active(&src->rw))
        read_cb(loop, &src->rw, EV_READ);
}

static int seed(struct server *srv, struct endpoint *e, const char *p, size_t n) {
    if (n == 0)
        return 0;
    if (n > BUF_CAP) /* max_request_bytes is capped below BUF_CAP by config validation */
        return -1;
    e->in = relay_buf_get(srv);
    if (!e->in)
        return -1;
    buf_append(e->in, p, n);
    return 0;
}

int relay_start(struct tunnel *t, const char *reply, size_t replylen, const char *early,
                size_t earlylen) {
    struct ev_loop *loop = t->srv->loop;
    if (t->client.h2) {
        /* An HTTP/2 stream says 200 in a HEADERS frame; what followed it (a parent's early
         * bytes from the destination) is tunnel data. */
        if (h2_stream_ok(t->client.h2) == -1)
            return -1;
        reply += HTTP_CONNECT_OK_LEN;
        replylen -= HTTP_CONNECT_OK_LEN;
        t->client.sent = HTTP_CONNECT_OK_LEN;
        tunnel_delivered(t);
    }
    /* The 200 travels like bytes from upstream; early data like bytes from the client. */
    if (seed(t->srv, &t->upstream, reply, replylen) == -1 ||
        seed(t->srv, &t->client, early, earlylen) == -1)
        return -1;
    /* splice(2) moves bytes between plain sockets only: what a TLS client sends comes out of
     * SSL_read, and what it receives goes into SSL_write unless the kernel encrypts (kTLS). */
    t->client.copy_only = t->client.tls != NULL || t->client.h2 != NULL;
    t->upstream.copy_only = t->client.copy_only && !t->client.ktls_tx;
    bool bulk = t->gen->cfg.relay == RELAY_SPLICE;
    t->client.bulk = bulk && !t->client.copy_only;
    t->upstream.bulk = bulk && !t->upstream.copy_only;
    t->state = TUNNEL_RELAY;
    t->last_active = ev_now(loop);
    /* The client's watchers and upstream.ww already carry their fd (set at accept and dial);
     * ev_io_set on them again would make libev re-add the fd to epoll (EEXIST, then MOD). */
    ev_io_set(&t->upstream.rw, t->upstream.fd, EV_READ);
    ev_set_cb(&t->client.rw, read_cb);
    ev_set_cb(&t->upstream.rw, read_cb);
    ev_set_cb(&t->client.ww, write_cb);
    ev_set_cb(&t->upstream.ww, write_cb);
    ev_timer_stop(loop, &t->timer);
    ev_timer_set(&t->timer, t->gen->cfg.timeout_idle, 0.);
    ev_timer_start(loop, &t->timer);
    /* Either flush may close the tunnel (the close reason then says why); the second must not
     * run on a closed tunnel. */
    if (flush(t, &t->upstream) == 0)
        flush(t, &t->client);
    return 0;
}
