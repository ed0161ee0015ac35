/* relay: move bytes both ways once the tunnel is up.
 *
 * Each endpoint has a read watcher that fills its `in` buffer and a write watcher that drains
 * the peer's buffer into it. Backpressure: while a buffer is full its reader is stopped; it
 * restarts when the writer has made room. Half-close: EOF on one side becomes
 * shutdown(SHUT_WR) on the other once that direction's buffer is empty, while the other
 * direction keeps flowing. Buffers are taken from a pool while bytes are in flight and given
 * back as soon as they drain, so idle tunnels hold none. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "buf.h"
#include "container.h"
#include "log.h"
#include "tunnel.h"

#define POOL_MAX 64 /* free buffers kept for reuse */

struct buf *relay_buf_get(struct server *srv) {
    struct buf *b = srv->pool;
    if (b) {
        memcpy(&srv->pool, b->data, sizeof srv->pool);
        srv->npool--;
        b->start = b->end = 0;
        return b;
    }
    b = malloc(sizeof *b);
    if (b)
        b->start = b->end = 0;
    return b;
}

void relay_buf_put(struct server *srv, struct buf *b) {
    if (srv->npool >= POOL_MAX) {
        free(b);
        return;
    }
    memcpy(b->data, &srv->pool, sizeof srv->pool);
    srv->pool = b;
    srv->npool++;
}

void relay_pool_free(struct server *srv) {
    while (srv->pool) {
        struct buf *b = srv->pool;
        memcpy(&srv->pool, b->data, sizeof srv->pool);
        free(b);
    }
    srv->npool = 0;
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
    if (shutdown(dst->fd, SHUT_WR) == -1 && errno != ENOTCONN) {
        tunnel_close(t, reset_reason(t, dst));
        return -1;
    }
    check_done(t);
    return t->state == TUNNEL_CLOSED ? -1 : 0;
}

/* Resume reading a side whose buffer was full only once half of it has drained: fewer, larger
 * reads and no memmove per byte freed. */
#define RESUME_AT (BUF_CAP / 2)

/* Write src->in to dst, then decide whether src may read more. Returns -1 when the tunnel was
 * closed. */
static int flush(struct tunnel *t, struct endpoint *src) {
    struct endpoint *dst = src->peer;
    struct ev_loop *loop = t->srv->loop;
    struct buf *b = src->in;
    while (b && buf_len(b) > 0) {
        ssize_t n = send(dst->fd, buf_head(b), buf_len(b), MSG_NOSIGNAL);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            tunnel_close(t, reset_reason(t, dst));
            return -1;
        }
        buf_consume(b, (size_t)n);
        dst->sent += (uint64_t)n;
        t->last_active = ev_now(loop);
        if (buf_len(b) > 0)
            break; /* a short write means the socket buffer is full: skip the EAGAIN call */
    }
    if (b && buf_len(b) > 0) {
        ev_io_start(loop, &dst->ww);
        if (buf_len(b) == BUF_CAP || src->eof)
            ev_io_stop(loop, &src->rw);
        else if (buf_len(b) <= RESUME_AT)
            ev_io_start(loop, &src->rw);
        return 0;
    }
    ev_io_stop(loop, &dst->ww);
    if (b) {
        relay_buf_put(t->srv, b);
        src->in = NULL;
    }
    if (src->eof)
        return forward_eof(t, dst);
    ev_io_start(loop, &src->rw);
    return 0;
}

static void read_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct endpoint *src = container_of(w, struct endpoint, rw);
    struct tunnel *t = src->t;
    if (!src->in) {
        src->in = relay_buf_get(t->srv);
        if (!src->in) {
            log_error("out of memory for a relay buffer");
            tunnel_close(t, "out_of_memory");
            return;
        }
    }
    struct buf *b = src->in;
    if (buf_room(b) == 0)
        buf_compact(b);
    ssize_t n = recv(src->fd, buf_tail(b), buf_room(b), 0);
    if (n > 0) {
        buf_produce(b, (size_t)n);
        t->last_active = ev_now(loop);
        if (ev_is_active(&src->peer->ww)) {
            /* The peer is not writable yet: just stop reading when the buffer fills. */
            if (buf_room(b) == 0 && b->start == 0)
                ev_io_stop(loop, &src->rw);
            return;
        }
        flush(t, src);
        return;
    }
    if (n == 0) {
        src->eof = true;
        ev_io_stop(loop, &src->rw);
        flush(t, src);
        return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        if (buf_len(b) == 0) { /* spurious wake-up: an idle tunnel holds no buffer */
            relay_buf_put(t->srv, b);
            src->in = NULL;
        }
        return;
    }
    tunnel_close(t, reset_reason(t, src));
}

static void write_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    struct endpoint *dst = container_of(w, struct endpoint, ww);
    flush(dst->t, dst->peer);
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
    /* The 200 travels like bytes from upstream; early data like bytes from the client. */
    if (seed(t->srv, &t->upstream, reply, replylen) == -1 ||
        seed(t->srv, &t->client, early, earlylen) == -1)
        return -1;
    t->state = TUNNEL_RELAY;
    t->last_active = ev_now(loop);
    ev_io_set(&t->client.rw, t->client.fd, EV_READ);
    ev_io_set(&t->client.ww, t->client.fd, EV_WRITE);
    ev_io_set(&t->upstream.rw, t->upstream.fd, EV_READ);
    ev_io_set(&t->upstream.ww, t->upstream.fd, EV_WRITE);
    ev_set_cb(&t->client.rw, read_cb);
    ev_set_cb(&t->upstream.rw, read_cb);
    ev_set_cb(&t->client.ww, write_cb);
    ev_set_cb(&t->upstream.ww, write_cb);
    ev_timer_stop(loop, &t->timer);
    ev_timer_set(&t->timer, t->srv->cfg->timeout_idle, 0.);
    ev_timer_start(loop, &t->timer);
    /* Either flush may close the tunnel (the close reason then says why); the second must not
     * run on a closed tunnel. */
    if (flush(t, &t->upstream) == 0)
        flush(t, &t->client);
    return 0;
}
