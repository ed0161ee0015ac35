/* transport: how bytes cross a tunnel's endpoint. A plain socket (recv/send, and splice when
 * both ends of a direction are plain), or a TLS session over the socket (SSL_read/SSL_write;
 * with kTLS transmit, plain writes again). The request reader, the refusal writer and the relay
 * use these instead of touching the socket, so a new transport (an HTTP/2 stream) changes this
 * file, not them. The plain case is inline: the hot path pays one predictable branch. */
#ifndef CONNECTD_TRANSPORT_H
#define CONNECTD_TRANSPORT_H

#include <errno.h>
#include <stdbool.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <ev.h>

#include "h2.h"
#include "tunnel.h"

ssize_t tp_tls_recv(struct ev_loop *loop, struct endpoint *e, void *buf, size_t n);
ssize_t tp_tls_send(struct endpoint *e, const void *buf, size_t n);
void tp_tls_read_on(struct ev_loop *loop, struct endpoint *e);

/* Like recv(2): > 0 bytes, 0 at the end of the peer's data, -1 with errno (EAGAIN: wait for
 * the read watcher; a TLS read that must write first arranges that itself). */
static inline ssize_t tp_recv(struct ev_loop *loop, struct endpoint *e, void *buf, size_t n) {
    if (!e->tls)
        return !e->h2 ? recv(e->fd, buf, n, 0) : h2_stream_recv(e->h2, buf, n);
    return tp_tls_recv(loop, e, buf, n);
}

/* Whether bytes sent to e become TLS records here, in user space (not the kernel's kTLS). */
static inline bool tp_user_records(const struct endpoint *e) {
    return e->tls && !e->ktls_tx;
}

/* Like send(2) without SIGPIPE: > 0 bytes accepted, -1 with errno (EAGAIN: wait for the write
 * watcher). */
static inline ssize_t tp_send(struct endpoint *e, const void *buf, size_t n) {
    if (!tp_user_records(e))
        return !e->h2 ? send(e->fd, buf, n, MSG_NOSIGNAL) : h2_stream_send(e->h2, buf, n);
    return tp_tls_send(e, buf, n);
}

bool tp_tls_unsent(const struct endpoint *e);
int tp_tls_flush(struct endpoint *e);

/* Bytes the transport took from us (tp_send returned them) but the socket has not: a TLS
 * session sends its records in batches. The relay waits for writability until this is false,
 * before it passes an end on or calls a direction drained. */
static inline bool tp_unsent(const struct endpoint *e) {
    return (e->tls && tp_tls_unsent(e)) || (e->h2 && h2_stream_unsent(e->h2));
}

/* Push those bytes on: 0 when none are left, -1 with errno (EAGAIN: wait for writability). */
static inline int tp_flush(struct endpoint *e) {
    if (e->h2) { /* the HTTP/2 connection sends on its own: wait for the stream's room */
        errno = EAGAIN;
        return h2_stream_unsent(e->h2) ? -1 : 0;
    }
    return e->tls ? tp_tls_flush(e) : 0;
}

/* A download towards a TLS client gathers the records of several relay buffers (one read per
 * loop turn) for one send(2): fewer sends, and fewer wake-ups of the reader. on: true when e
 * gathers (a TLS session with nothing unsent, or already gathering); off: the caller then
 * flushes. tp_gather_room: whether another buffer's records fit. */
bool tp_tls_gather(struct endpoint *e, bool on);
static inline bool tp_gather(struct endpoint *e, bool on) {
    return e->tls && tp_tls_gather(e, on);
}
bool tp_gather_room(const struct endpoint *e);
/* The endpoint's read and write watchers. A stream has no socket of its own: its watchers are
 * never started; h2.c feeds them while they are "on". */
static inline void tp_watch_read(struct ev_loop *loop, struct endpoint *e) {
    if (e->h2)
        h2_stream_watch_read(e->h2, true);
    else
        ev_io_start(loop, &e->rw);
}

static inline void tp_unwatch_read(struct ev_loop *loop, struct endpoint *e) {
    ev_io_stop(loop, &e->rw); /* also drops a fed event still pending */
    if (e->h2)
        h2_stream_watch_read(e->h2, false);
}

static inline void tp_watch_write(struct ev_loop *loop, struct endpoint *e) {
    if (e->h2)
        h2_stream_watch_write(e->h2, true);
    else
        ev_io_start(loop, &e->ww);
}

static inline void tp_unwatch_write(struct ev_loop *loop, struct endpoint *e) {
    ev_io_stop(loop, &e->ww);
    if (e->h2)
        h2_stream_watch_write(e->h2, false);
}

static inline bool tp_watching_write(const struct endpoint *e) {
    return e->h2 ? h2_stream_watching_write(e->h2) : ev_is_active(&e->ww);
}

/* The server's watcher that reads, next loop turn, the TLS sessions tp_tls_read_on put off. */
void tp_later_init(struct server *srv);
/* e leaves that list (its tunnel is closing: it must not be fed once freed). */
void tp_later_forget(struct endpoint *e);

/* Start reading e. A TLS session may hold bytes it already took from the socket: then its read
 * watcher is fed next loop turn (tp_tls_read_on), since the socket itself may never become
 * readable again. */
static inline void tp_read_on(struct ev_loop *loop, struct endpoint *e) {
    tp_watch_read(loop, e);
    if (e->tls)
        tp_tls_read_on(loop, e);
}

/* The end of our bytes towards e: close_notify first on TLS, then the TCP FIN unless skip_fin
 * (the close that follows sends it). -1 with errno when the socket refuses. */
int tp_shutdown_write(struct endpoint *e, bool skip_fin);

/* Free e's transport state (the caller closes the socket). A TLS session is dropped without
 * close_notify: either tp_shutdown_write sent it, or the tunnel ended abnormally. A stream
 * that did not end cleanly is reset (CONNECT_ERROR when destination_failed). */
void tp_free(struct endpoint *e, bool destination_failed);

#endif
