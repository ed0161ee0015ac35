/* transport: the TLS and HTTP/2 sides of transport.h (the plain side is inline there). */
#include "transport.h"

#include <errno.h>
#include <unistd.h>

#include "container.h"
#include "server.h"
#include "tls.h"

ssize_t tp_tls_recv(struct ev_loop *loop, struct endpoint *e, void *buf, size_t n) {
    ssize_t r = tls_conn_read(e->tls, buf, n);
    if (r >= 0)
        return r;
    if (r == TLS_WANT_WRITE) {
        /* OpenSSL must send something first (a key update answer) and the socket is full:
         * reading waits for writability, or the level-triggered read watcher would spin. The
         * write watcher's callback restarts the read (see tunnel.c and relay.c). */
        e->read_wants_write = true;
        ev_io_stop(loop, &e->rw);
        ev_io_start(loop, &e->ww);
    }
    if (r == TLS_WANT_READ || r == TLS_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    return -1; /* errno set by tls_conn_read */
}

ssize_t tp_tls_send(struct endpoint *e, const void *buf, size_t n) {
    ssize_t r = tls_conn_write(e->tls, buf, n);
    if (r > 0)
        return r;
    if (r == TLS_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    /* A write that must read first would be renegotiation, which we refuse: a protocol error,
     * not something to wait for (the writable socket would wake us forever). */
    if (r == TLS_WANT_READ)
        errno = EPROTO;
    return -1;
}

/* Not fed at once: libev runs the newest pending event first, so a session whose client keeps
 * sending would be read again and again, 64 KiB at a time, before any other client had a turn
 * (one HTTP/1.1 TLS upload took half the bandwidth of 100). An idle watcher of the highest
 * priority feeds it next turn: while one is active the loop polls without blocking, and it runs
 * every turn however busy the loop is. */
void tp_tls_read_on(struct ev_loop *loop, struct endpoint *e) {
    if (e->read_wants_write || e->read_later || !tls_conn_pending(e->tls))
        return;
    struct server *srv = e->t->srv;
    e->read_later = true;
    e->read_later_next = srv->read_later;
    srv->read_later = e;
    ev_idle_start(loop, &srv->read_later_idle);
}

static void read_later_cb(struct ev_loop *loop, ev_idle *w, int revents) {
    (void)revents;
    struct server *srv = container_of(w, struct server, read_later_idle);
    ev_idle_stop(loop, w);
    struct endpoint *e = srv->read_later;
    srv->read_later = NULL;
    while (e) {
        struct endpoint *next = e->read_later_next;
        e->read_later = false;
        if (ev_is_active(&e->rw) && !e->read_wants_write)
            ev_feed_event(loop, &e->rw, EV_READ);
        e = next;
    }
}

void tp_later_init(struct server *srv) {
    ev_idle_init(&srv->read_later_idle, read_later_cb);
    ev_set_priority(&srv->read_later_idle, EV_MAXPRI);
}

void tp_later_forget(struct endpoint *e) {
    if (!e->read_later)
        return;
    for (struct endpoint **p = &e->t->srv->read_later; *p; p = &(*p)->read_later_next)
        if (*p == e) {
            *p = e->read_later_next;
            break;
        }
    e->read_later = false;
}

bool tp_tls_unsent(const struct endpoint *e) {
    return tls_conn_unsent(e->tls);
}

bool tp_tls_gather(struct endpoint *e, bool on) {
    return !e->ktls_tx && tls_conn_gather(e->tls, on);
}

bool tp_gather_room(const struct endpoint *e) {
    return tls_conn_gather_room(e->tls);
}

int tp_tls_flush(struct endpoint *e) {
    int r = tls_conn_flush(e->tls);
    if (r == TLS_WANT_WRITE) {
        errno = EAGAIN;
        return -1;
    }
    return r;
}

int tp_shutdown_write(struct endpoint *e, bool skip_fin) {
    if (e->h2) {
        h2_stream_shutdown_write(e->h2); /* END_STREAM after what the stream holds */
        return 0;
    }
    if (e->tls)
        tls_conn_close_notify(e->tls);
    /* A FIN now would cut records still waiting for the socket (it was full): the close
     * sends the FIN after them. */
    if (skip_fin || tp_unsent(e))
        return 0;
    if (shutdown(e->fd, SHUT_WR) == -1 && errno != ENOTCONN)
        return -1;
    return 0;
}

void tp_free(struct endpoint *e, bool destination_failed) {
    tp_later_forget(e);
    if (e->h2) {
        h2_stream_detach(e->h2, destination_failed);
        e->h2 = NULL;
    }
    tls_conn_free(e->tls);
    e->tls = NULL;
}
