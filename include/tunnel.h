/* tunnel: one client connection from accept to close, and the relay that moves its bytes.
 * tunnel.c: its life (accept, TLS and PROXY header, timer, refusals, the one close); request.c:
 * reading and judging the request; dial.c: the way to the destination (DNS, Happy Eyeballs,
 * parents); relay.c: bytes both ways once it is up; transport.h: what the client side is. */
#ifndef CONNECTD_TUNNEL_H
#define CONNECTD_TUNNEL_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <ev.h>

#include "addr.h"
#include "server.h"

struct client_entry;

enum tunnel_state {
    TUNNEL_READ_REQUEST = 1, /* reading the CONNECT header block */
    TUNNEL_AUTHENTICATING,   /* credentials being verified, or a failing client held back */
    TUNNEL_RESOLVING,        /* waiting for DNS */
    TUNNEL_CONNECTING,       /* non-blocking connect to one address after another */
    TUNNEL_RELAY,            /* 200 queued, bytes flow both ways */
    TUNNEL_ERROR_REPLY,      /* writing a refusal */
    TUNNEL_LINGER,           /* refusal sent; reading and discarding until the client closes */
    TUNNEL_READ_PROXY,       /* reading the load balancer's PROXY header ("proxy-protocol") */
    TUNNEL_PARENT,           /* our CONNECT sent to a parent proxy; waiting for its answer */
    TUNNEL_TLS_HANDSHAKE,    /* a "tls" listener's client: TLS handshake before the request */
    TUNNEL_CLOSED,
};

/* One side of the tunnel. Bytes read from this side wait in `in` until written to the peer. */
struct endpoint {
    int fd;
    ev_io rw, ww;
    struct buf *in; /* NULL while nothing is in flight: an idle tunnel holds no buffer */
    int pipe[2];    /* splice path: bytes from this side in a kernel pipe; -1 when none held */
    size_t piped;   /* bytes in that pipe */
    uint64_t sent;  /* bytes written to this side */
    bool eof;       /* read returned 0: nothing more will come from this side */
    bool shut;      /* we called shutdown(SHUT_WR) on this side */
    bool bulk;      /* bytes from this side go through splice(2) */
    bool copy_only; /* bytes from this side may not be spliced (one end is a TLS session) */
    /* The transport (transport.h): both NULL is a plain socket; tls: a TLS session on fd;
     * h2: a stream of an HTTP/2 connection (fd is -1, the watchers are fed, never started). */
    struct tls_conn *tls;
    struct h2stream *h2;
    bool ktls_tx;          /* the kernel encrypts what we send on fd: write plain bytes */
    bool read_wants_write; /* a TLS read is waiting for fd to be writable */
    bool read_later;       /* on the server's read_later list (tp_tls_read_on) */
    struct endpoint *read_later_next;
    struct endpoint *peer;
    struct tunnel *t;
};

struct handshake;

struct tunnel {
    struct server *srv;
    struct gen *gen; /* the configuration this tunnel was accepted under (a reference) */
    enum tunnel_state state;
    struct endpoint client, upstream;
    ev_timer timer; /* handshake, dns, connect, idle, linger: one timer per tunnel */
    ev_tstamp started, last_active;
    ev_tstamp established; /* when the 200 was queued; 0 before */
    struct tunnel *prev, *next;
    union sockaddr_any peer, up_addr;
    union sockaddr_any balancer; /* with a PROXY header: who sent it (peer is the client it
                                    names); family 0 otherwise */
    struct handshake *hs;        /* request, parser, DNS answers: freed once the relay starts */
    char *target;          /* "host:port" as requested, for the access log: target_short or heap */
    char target_short[48]; /* holds most targets without an allocation */
    const char *user;      /* authenticated user (owned by the config), NULL if none */
    const char *rule;      /* what decided: a policy rule's name or a proxy.ini list, or NULL */
    const struct parent *parent; /* the parent proxy it goes through (config), NULL: direct */
    int status;                  /* HTTP status sent, 0 if none */
    bool counted;                /* counts against max_connections */
    bool pac;                    /* answered GET /proxy.pac instead of tunnelling */
    bool stall_watch;            /* the timer is checking a stalled relay every STALL_CHECK s */
    bool tls;                    /* from a "tls" listener: the client speaks TLS */
    bool tls_ready;              /* its TLS handshake is done: answers go inside TLS */
    const char *tls_version;     /* "TLSv1.3" (a static string) once tls_ready */
    unsigned long h2_conn;       /* an HTTP/2 stream: its connection's number (h2=N); else 0 */
    struct client_entry *ce;     /* per-client accounting, NULL when not limited */
};

/* The Via pseudonym this proxy adds to its CONNECTs to parents and looks for in requests
 * ("connectd-ID"; ID random per start, shared by the workers). */
extern char tunnel_via_name[40];
void tunnel_set_via_name(const char *id);

/* Take ownership of a freshly accepted, non-blocking client socket. proxy_protocol: it comes
 * from a "proxy-protocol" listener, so a PROXY header precedes the request; tls: from a "tls"
 * listener, so the client speaks TLS (after the PROXY header, if any). */
void tunnel_accept(struct server *srv, int fd, const struct sockaddr *peer, bool proxy_protocol,
                   bool tls);

struct h2stream;
/* An HTTP/2 CONNECT stream (h2.c) becomes a tunnel whose client side is the stream: counted
 * and limited like a connection, its request (written as HTTP/1.1 by h2.c) judged like any
 * other. extended: the stream carried :protocol (extended CONNECT), refused with 501. */
void tunnel_open_stream(struct server *srv, struct h2stream *s, const union sockaddr_any *peer,
                        const union sockaddr_any *balancer, const char *tls_version,
                        unsigned long conn, const char *req, size_t reqlen, bool extended);

/* The one way a tunnel ends: stop watchers, cancel DNS, close fds, write the access-log line,
 * unlink and queue the object for freeing after the current callbacks return. */
void tunnel_close(struct tunnel *t, const char *reason);

/* A direction is waiting for its writer (backpressure): its reader is paused, so nothing would
 * notice the other end resetting until the idle timeout. Check both sockets for errors about
 * once a second until the stall ends. Cheap: only the first call of a stall re-arms the
 * timer. */
void tunnel_watch_stall(struct tunnel *t);

/* relay.c: the client has received the whole 200: the tunnel counts as established now. */
void tunnel_delivered(struct tunnel *t);

/* Free tunnels queued by tunnel_close(). */
void tunnel_reap(struct server *srv);

/* Refuse every tunnel still in its handshake with 503 (used when draining). */
void tunnel_refuse_handshakes(struct server *srv);

/* relay.c: enter TUNNEL_RELAY. reply/early are queued towards the client/upstream. Returns 0,
 * or -1 when out of memory (the caller closes). */
int relay_start(struct tunnel *t, const char *reply, size_t replylen, const char *early,
                size_t earlylen);
/* Buffers and pipes for the relay come from small per-server pools. Give back an endpoint's
 * buffer and pipe (a pipe still holding bytes is closed, not pooled). */
void relay_release(struct server *srv, struct endpoint *e);
struct buf *relay_buf_get(struct server *srv);     /* BUF_CAP */
struct buf *relay_buf_get_big(struct server *srv); /* BUF_CAP_BIG */
void relay_buf_put(struct server *srv, struct buf *b);
void relay_pool_free(struct server *srv);

#endif
