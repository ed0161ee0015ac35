/* tls: the server side of an HTTPS proxy listener, on OpenSSL 3.
 *
 * A tls_ctx is built from [tls] with each configuration generation (so SIGHUP swaps
 * certificates all-or-nothing while open sessions keep theirs); a tls_conn is one client's
 * session on a non-blocking socket. Session tickets are sealed with keys derived from a secret
 * made once before the workers fork: every worker opens every other's tickets, and the keys
 * change every TLS_TICKET_PERIOD seconds. */
#ifndef CONNECTD_TLS_H
#define CONNECTD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "config.h"

struct ev_loop;

#define TLS_TICKET_PERIOD 3600 /* a ticket opens for one to two periods */

struct tls_ctx;
struct tls_conn;

/* Once per daemon, before forking: the ticket secret. 0, or -1 with err. */
int tls_global_init(char *err, size_t errlen);

/* Does this kernel offer kTLS (the "tls" TCP upper-layer protocol)? Probed once on a loopback
 * connection; why says what was found, for the log. */
bool tls_ktls_available(char *why, size_t whylen);

/* An OpenSSL context from tc: certificate chain, key (checked against the certificate), dates,
 * versions, ALPN, OCSP staple, tickets. NULL with err naming the file on any error. */
struct tls_ctx *tls_ctx_new(const struct tls_config *tc, char *err, size_t errlen);
/* Build and drop a context: what `connectd -t`, the start and the master's reload check. 0 when
 * there is no [tls] certificate or it is usable; -1 with err. */
int tls_check(const struct tls_config *tc, char *err, size_t errlen);

/* A reload after the privilege drop may no longer read a root-only key: keep the one read at
 * start (config_keep_tls_key), and say so. 0, or -1 (logged) when out of memory. */
int tls_keep_key(struct config *nc, const struct config *old);

/* Sessions made from c must be gone first (a generation outlives its tunnels). */
void tls_ctx_free(struct tls_ctx *c);

/* One certificate's summary for the log: subject, serial and expiry. */
void tls_ctx_describe(const struct tls_ctx *c, char *out, size_t outlen);

/* A server session on fd (non-blocking, already accepted, watched by loop: a read that found
 * the socket empty is not repeated before loop polls again). pre: bytes of the client's first
 * flight already read from fd (after a PROXY header), taken before fd's. NULL when out of
 * memory. */
struct tls_conn *tls_conn_new(struct tls_ctx *c, struct ev_loop *loop, int fd, const void *pre,
                              size_t prelen);
void tls_conn_free(struct tls_conn *s);

/* Results of the calls below that may have to wait. */
enum tls_io {
    TLS_DONE = 0,       /* finished (handshake) */
    TLS_WANT_READ = -2, /* call again when the socket is readable */
    TLS_WANT_WRITE = -3 /* call again when the socket is writable */
};

/* Drive the handshake: TLS_DONE, TLS_WANT_READ/WRITE, or -1 (failed: see tls_conn_error). */
int tls_conn_handshake(struct tls_conn *s);

/* Like recv(2): bytes read (> 0), 0 at the end of the client's data (close_notify, or the TCP
 * connection ended without one: tls_conn_truncated tells), TLS_WANT_READ/WRITE, or -1 (a
 * protocol error or reset). Reads as many records as fit, so that the socket is drained. */
ssize_t tls_conn_read(struct tls_conn *s, void *buf, size_t n);

/* Like send(2): bytes accepted (> 0; a partial write is normal), TLS_WANT_WRITE/READ, or -1.
 * After a WANT, call again with at least the same bytes (the buffer may move). */
ssize_t tls_conn_write(struct tls_conn *s, const void *buf, size_t n);

/* Records taken by tls_conn_write (or the handshake) that the socket has not taken yet: they
 * are sent in batches, several records per send(2). Wait for writability and flush. */
bool tls_conn_unsent(const struct tls_conn *s);

/* Send what waits: 0 when nothing is left, TLS_WANT_WRITE, or -1 (errno). */
int tls_conn_flush(struct tls_conn *s);

/* Relay buffers (BUF_CAP_BIG: 256 KiB reads) whose records a download gathers for one send
 * (tls_conn_gather). Two: with 64 KiB reads four gathered were worth it; with 256 KiB reads
 * a third and fourth saved little (BENCHMARKS.md, 2026-12-04, night) and cost 512 KiB each. */
#define TLS_GATHER_ROUNDS 2

/* With on, tls_conn_write keeps its records instead of sending them: later writes (the relay's
 * next reads, one per loop turn) add theirs, up to TLS_GATHER_ROUNDS relay buffers' worth
 * (tls_conn_gather_room), and the caller sends them all with tls_conn_flush after turning it
 * off. Turning it on is refused (false) while records already wait outside a gathering (the
 * socket is slow). A slow reader's backlog is then at most what one gathering left (about
 * 520 KiB): writes outside a gathering fill the out buffer only up to one buffer's records. */
bool tls_conn_gather(struct tls_conn *s, bool on);
/* Whether another relay buffer's records fit while gathering. */
bool tls_conn_gather_room(const struct tls_conn *s);

/* Send close_notify (best effort, non-blocking): the TLS end of our direction. */
void tls_conn_close_notify(struct tls_conn *s);

/* Decrypted or raw bytes held inside OpenSSL: read again without waiting for the socket. */
bool tls_conn_pending(const struct tls_conn *s);

/* The client's TCP connection ended without close_notify. */
bool tls_conn_truncated(const struct tls_conn *s);

/* Why the last call failed, for the debug log ("tlsv1 alert protocol version", ...). */
const char *tls_conn_error(const struct tls_conn *s);

/* "TLSv1.3", "TLSv1.2" once the handshake is done. */
const char *tls_conn_version(const struct tls_conn *s);

/* The handshake resumed a session (ticket). */
bool tls_conn_resumed(const struct tls_conn *s);
/* The handshake chose ALPN "h2": the client speaks HTTP/2 (h2.c takes over). */
bool tls_conn_h2(const struct tls_conn *s);
/* Do not choose h2 for this client (it is being refused: the answer is HTTP/1.1). */
void tls_conn_no_h2(struct tls_conn *s);

/* The kernel encrypts what we send on this socket (kTLS transmit): plain bytes may be written
 * to the fd directly, with send(2) or splice(2). */
bool tls_conn_ktls_send(const struct tls_conn *s);

#endif
