/* transport: the TLS and HTTP/2 sides of transport.h (the plain side is inline there). */
#include "transport.h"

#include <errno.h>
#include <unistd.h>

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

void tp_tls_read_on(struct ev_loop *loop, struct endpoint *e) {
    if (!e->read_wants_write && tls_conn_pending(e->tls))
        ev_feed_event(loop, &e->rw, EV_READ);
}

bool tp_tls_unsent(const struct endpoint *e) {
    return tls_conn_unsent(e->tls);
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
    if (e->h2) {
        h2_stream_detach(e->h2, destination_failed);
        e->h2 = NULL;
    }
    tls_conn_free(e->tls);
    e->tls = NULL;
}
