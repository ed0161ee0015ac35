/* h2: HTTP/2 clients (RFC 9113) on a tls listener that negotiated ALPN "h2". One client
 * connection carries many CONNECT streams (section 8.5); each stream is a tunnel of its own
 * (tunnel_open_stream), judged by the same rules as an HTTP/1.1 CONNECT, whose client side is
 * the stream (transport.h). Framing, HPACK and flow control are nghttp2's; this file maps a
 * stream's flow-control window onto the relay's backpressure: a window opens only as the
 * destination takes the bytes, and a destination is read only while the client's window and
 * the stream's small send buffer have room. */
#ifndef CONNECTD_H2_H
#define CONNECTD_H2_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <ev.h>

#include "addr.h"

struct server;
struct gen;
struct tls_conn;
struct h2conn;
struct h2stream;
struct endpoint;

/* Take over a client whose TLS handshake chose h2: its socket, its session and its place in
 * max_connections (counted). */
void h2_conn_start(struct server *srv, int fd, struct tls_conn *tls, const union sockaddr_any *peer,
                   const union sockaddr_any *balancer, const char *tls_version, bool counted);

/* Draining: GOAWAY to every connection; each closes once its streams are done. */
void h2_drain(struct server *srv);
/* The shutdown timeout: close every connection now (their tunnels first). */
void h2_close_all(struct server *srv);
/* Free the connections closed since the last call (from the server's reaper). */
void h2_reap(struct server *srv);

/* ---- a stream as a tunnel's client side (transport.h) ---- */

/* tunnel_open_stream: the stream's tunnel, through its client endpoint. */
void h2_stream_attach(struct h2stream *s, struct endpoint *e);

/* Like recv(2): bytes the client sent on the stream, 0 after its END_STREAM, -1 EAGAIN. */
ssize_t h2_stream_recv(struct h2stream *s, void *buf, size_t n);
/* The oldest buffer of bytes the client sent on the stream (a relay buffer: the caller owns
 * it now and puts it back in the pool), NULL when none waits: the relay takes the bytes
 * without copying them. */
struct buf *h2_stream_take(struct h2stream *s);
/* Like send(2): bytes taken into the stream's send buffer, -1 EAGAIN when it is full (or
 * EPIPE when the stream is gone). */
ssize_t h2_stream_send(struct h2stream *s, const void *buf, size_t n);
/* Bytes taken by h2_stream_send but not yet framed: the relay waits for them. */
bool h2_stream_unsent(const struct h2stream *s);
/* The relay's read and write "watchers" for the stream: while on, the endpoint's rw / ww is
 * fed (ev_feed_event) whenever there is something to read / room to write. */
void h2_stream_watch_read(struct h2stream *s, bool on);
void h2_stream_watch_write(struct h2stream *s, bool on);
bool h2_stream_watching_write(const struct h2stream *s);
/* Our end of the stream: END_STREAM after the bytes already taken. */
void h2_stream_shutdown_write(struct h2stream *s);
/* The tunnel is closing: forget it. Unless the stream ended cleanly both ways (or a reply is
 * on its way), reset it: CONNECT_ERROR when the destination failed, else CANCEL. */
void h2_stream_detach(struct h2stream *s, bool destination_failed);

/* The tunnel is up: HEADERS :status 200, then DATA both ways. */
int h2_stream_ok(struct h2stream *s);
/* Answer with a complete HTTP/1.1 response as tunnel.c writes it for a plain client (a refusal
 * or the PAC file): sent as HEADERS (status, fields) and DATA, ending the stream; a client
 * still sending is then told to stop with RST_STREAM NO_ERROR. -1 when it cannot be sent. */
int h2_stream_reply(struct h2stream *s, const char *http1, size_t len);

#endif
