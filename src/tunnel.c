/* tunnel: the per-client state machine from accept to close.
 *
 *   READ_REQUEST -> [AUTHENTICATING] -> RESOLVING -> CONNECTING -> RELAY -> CLOSED
 *        \________________\__________________\____________\__> ERROR_REPLY -> LINGER -> CLOSED
 *
 * Behind a load balancer READ_PROXY comes first; through a parent proxy, PARENT follows
 * CONNECTING. Each state arms exactly the watchers it needs, and the one timer carries that
 * state's deadline. Everything that ends a tunnel goes through tunnel_close().
 *
 * This file holds the tunnel's life: accept (and a balancer's PROXY header), the timer, the
 * refusals, and the one close. request.c reads and judges the request (READ_REQUEST,
 * AUTHENTICATING), dial.c finds the way to the destination (RESOLVING, CONNECTING, PARENT),
 * relay.c moves the bytes (RELAY). */
#include "tunnel.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "addr.h"
#include "admin.h"
#include "auth_service.h"
#include "clients.h"
#include "container.h"
#include "dns.h"
#include "h2.h"
#include "http.h"
#include "log.h"
#include "net.h"
#include "policy.h"
#include "proxy_proto.h"
#include "stats.h"
#include "tls.h"
#include "transport.h"
#include "tunnel_int.h"

static bool relay_sockets_ok(struct tunnel *t);
static void proxy_header_failed(struct tunnel *t, const char *why, const char *reason);

char tunnel_via_name[40] = "connectd";

void tunnel_set_via_name(const char *id) {
    snprintf(tunnel_via_name, sizeof tunnel_via_name, "connectd-%s", id);
}

void handshake_free(struct handshake *hs) {
    if (!hs)
        return;
    if (hs->req != hs->inline_req)
        free(hs->req);
    free(hs->pbuf);
    free(hs->reply);
    free(hs);
}

void arm_timer(struct tunnel *t, ev_tstamp after) {
    ev_timer_stop(t->srv->loop, &t->timer);
    ev_timer_set(&t->timer, after, 0.);
    ev_timer_start(t->srv->loop, &t->timer);
}

static void endpoint_init(struct tunnel *t, struct endpoint *e, struct endpoint *peer) {
    e->fd = -1;
    e->pipe[0] = e->pipe[1] = -1;
    e->t = t;
    e->peer = peer;
}

/* ---- refusals ---- */

static void reply_write_cb(struct ev_loop *loop, ev_io *w, int revents);

static void linger_read_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    struct tunnel *t = container_of(w, struct tunnel, client.rw);
    char sink[4096];
    for (int i = 0; i < 16; i++) {
        ssize_t n = read(t->client.fd, sink, sizeof sink);
        if (n > 0)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        tunnel_close(t, t->hs->reason); /* EOF or error: the client has our answer */
        return;
    }
}

static void reply_done(struct tunnel *t) {
    struct ev_loop *loop = t->srv->loop;
    ev_io_stop(loop, &t->client.ww);
    /* Half-close and drain what the client still sends, so closing does not turn into an RST
     * that could destroy the refusal before the client reads it. */
    if (tp_shutdown_write(&t->client, false) == -1) {
        tunnel_close(t, t->hs->reason);
        return;
    }
    t->state = TUNNEL_LINGER;
    ev_set_cb(&t->client.rw, linger_read_cb);
    ev_io_start(loop, &t->client.rw);
    arm_timer(t, LINGER_SECONDS);
}

static void reply_flush(struct tunnel *t) {
    struct handshake *hs = t->hs;
    while (hs->replyoff < hs->replylen) {
        ssize_t n = tp_send(&t->client, hs->reply + hs->replyoff, hs->replylen - hs->replyoff);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ev_io_start(t->srv->loop, &t->client.ww);
                return;
            }
            tunnel_close(t, hs->reason);
            return;
        }
        hs->replyoff += (size_t)n;
    }
    reply_done(t);
}

static void reply_write_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    reply_flush(container_of(w, struct tunnel, client.ww));
}

/* Write hs->reply[0..replylen) (a refusal or the PAC file), then linger and close. */
void send_reply(struct tunnel *t, int status) {
    t->hs->replyoff = 0;
    t->status = status;
    if (t->client.h2) { /* an HTTP/2 stream: the answer ends the stream, not a connection */
        if (h2_stream_reply(t->client.h2, t->hs->reply, t->hs->replylen) == -1)
            t->status = 0;
        tunnel_close(t, t->hs->reason);
        return;
    }
    t->state = TUNNEL_ERROR_REPLY;
    ev_set_cb(&t->client.ww, reply_write_cb);
    arm_timer(t, REPLY_SECONDS);
    reply_flush(t);
}

static void tls_step(struct tunnel *t);
static void tls_begin(struct tunnel *t, const char *pre, size_t prelen);

/* Answer the client with a refusal from the response table, then close. */
static void refuse_with(struct tunnel *t, int status, const char *proxy_error, const char *params,
                        const char *details, const char *reason, const char *extra) {
    struct ev_loop *loop = t->srv->loop;
    struct handshake *hs = t->hs;
    if (hs->dnsq) {
        dns_cancel(hs->dnsq);
        hs->dnsq = NULL;
    }
    if (hs->authw) {
        auth_service_cancel(t->gen->auth, hs->authw);
        hs->authw = NULL;
    }
    dial_abort(t);
    ev_io_stop(loop, &t->upstream.rw); /* a parent's answer being read */
    ev_io_stop(loop, &t->client.rw);
    hs->reason = reason;
    if (t->tls && !t->tls_ready && t->state == TUNNEL_READ_PROXY) {
        /* Refused before the balancer's PROXY header was read (at capacity): the TLS
         * handshake is behind it, so there is no session to answer in. Close. */
        stats_refusal(status, proxy_error, reason);
        tunnel_close(t, reason);
        return;
    }
    if (!hs->reply)
        hs->reply = malloc(REPLY_MAX);
    if (!hs->reply) {
        tunnel_close(t, reason);
        return;
    }
    if (!extra && status == 405)
        extra = "Allow: CONNECT\r\n";
    hs->replylen =
        http_build_error(hs->reply, REPLY_MAX, status, proxy_error, params, details, extra);
    if (hs->replylen == 0) /* details too long for the buffer: drop them */
        hs->replylen =
            http_build_error(hs->reply, REPLY_MAX, status, proxy_error, params, NULL, extra);
    stats_refusal(status, proxy_error, reason);
    if (t->tls && !t->tls_ready) {
        /* Refused at accept (client, limits) or while shutting down mid-handshake: the
         * answer goes inside TLS like any other, once the handshake is done (tls_step). */
        hs->deferred_status = status;
        if (!t->client.tls) {
            arm_timer(t, t->gen->cfg.timeout_handshake);
            tls_begin(t, NULL, 0); /* says no to h2: the refusal is written as HTTP/1.1 */
        } else {
            tls_conn_no_h2(t->client.tls); /* unless the ClientHello was already answered */
            tls_step(t);
        }
        return;
    }
    send_reply(t, status);
}

void refuse(struct tunnel *t, int status, const char *proxy_error, const char *params,
            const char *details, const char *reason) {
    refuse_with(t, status, proxy_error, params, details, reason, NULL);
}

/* 407 with the challenge that makes a browser ask for (or resend) credentials. */
void refuse_auth(struct tunnel *t, const char *details, const char *reason) {
    char challenge[160];
    snprintf(challenge, sizeof challenge,
             "Proxy-Authenticate: Basic realm=\"%s\", charset=\"UTF-8\"\r\n", t->gen->cfg.realm);
    refuse_with(t, 407, "http_request_denied", NULL, details, reason, challenge);
}

/* ---- timer ---- */

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)revents;
    struct tunnel *t = container_of(w, struct tunnel, timer);
    switch (t->state) {
    case TUNNEL_READ_PROXY:
        proxy_header_failed(t, "header not received in time", "proxy_header_timeout");
        return;
    case TUNNEL_TLS_HANDSHAKE:
        STATS_INC(c[C_TLS_FAILED]);
        tunnel_close(t, "tls_handshake_timeout");
        return;
    case TUNNEL_READ_REQUEST:
        set_raw_target(t);
        refuse(t, 408, "http_request_error", NULL, "request headers not received in time",
               "handshake_timeout");
        return;
    case TUNNEL_AUTHENTICATING:
        if (t->hs->authw) {
            STATS_INC(c[C_AUTH_TIMEOUT]);
            refuse(t, 503, "proxy_internal_response", NULL, "credentials not verified in time",
                   "auth_timeout");
            return;
        }
        auth_step(t); /* held back long enough */
        return;
    case TUNNEL_RESOLVING:
        if (t->hs->via != VIA_DIRECT) { /* the parent's own name */
            dns_cancel(t->hs->dnsq);
            t->hs->dnsq = NULL;
            parent_failed(t, 504, "dns_timeout", "name resolution timed out", "parent_error");
            return;
        }
        refuse(t, 504, "dns_timeout", NULL, "name resolution timed out", "dns_timeout");
        return;
    case TUNNEL_PARENT:
        parent_failed(t, 504, "http_response_timeout", "no answer in time", "parent_error");
        return;
    case TUNNEL_CONNECTING:
        dial_abort(t); /* the whole connect budget is spent */
        t->hs->dial_errno = ETIMEDOUT;
        dial_failed(t);
        return;
    case TUNNEL_RELAY: {
        /* The timer is not pushed back on every byte; on expiry, check real inactivity. */
        ev_tstamp idle = t->gen->cfg.timeout_idle;
        ev_tstamp due = t->last_active + idle;
        ev_tstamp now = ev_now(loop);
        if (due <= now) {
            tunnel_close(t, "idle_timeout");
            return;
        }
        t->stall_watch = false;
        if (tp_watching_write(&t->client) || ev_is_active(&t->upstream.ww)) {
            if (!relay_sockets_ok(t))
                return; /* closed */
            t->stall_watch = true;
            arm_timer(t, due - now < STALL_CHECK ? due - now : STALL_CHECK);
            return;
        }
        arm_timer(t, due - now);
        return;
    }
    case TUNNEL_ERROR_REPLY:
    case TUNNEL_LINGER:
        tunnel_close(t, t->hs->reason);
        return;
    case TUNNEL_CLOSED:
        return;
    }
}

void tunnel_delivered(struct tunnel *t) {
    struct server *srv = t->srv;
    srv->tunnels++;
    STATS_INC(outcome[OUTCOME_ESTABLISHED]);
    stats_observe(HIST_CONNECT, ev_now(srv->loop) - t->started);
    stats_set(&stats_me->g.tunnels_open, srv->tunnels);
}

void tunnel_watch_stall(struct tunnel *t) {
    if (t->stall_watch)
        return;
    t->stall_watch = true;
    if (ev_timer_remaining(t->srv->loop, &t->timer) > STALL_CHECK)
        arm_timer(t, STALL_CHECK);
}

/* A paused reader cannot see its peer reset; the socket's pending error can. False when the
 * tunnel was closed. */
static bool relay_sockets_ok(struct tunnel *t) {
    struct endpoint *e[2] = {&t->client, &t->upstream};
    for (int i = 0; i < 2; i++) {
        int err = 0;
        socklen_t len = sizeof err;
        if (e[i]->fd == -1) /* an HTTP/2 stream: its connection notices a reset itself */
            continue;
        if (getsockopt(e[i]->fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0)
            continue;
        log_debug("tunnel %s: %s side: %s while stalled", t->target ? t->target : "-",
                  i == 0 ? "client" : "upstream", strerror(err));
        tunnel_close(t, i == 0 ? "client_reset" : "upstream_reset");
        return false;
    }
    return true;
}

/* ---- accept and close ---- */

/* Why a new client is refused before its request is read, or NULL to serve it. */
struct refusal {
    int status;
    const char *proxy_error, *details, *reason;
};

static bool capacity_ok(struct server *srv, struct refusal *r) {
    if (srv->active < srv->max_active)
        return true;
    STATS_INC(c[C_LIMIT_MAX_CONNECTIONS]);
    *r = (struct refusal){503, "proxy_internal_response", "too many connections", "overload"};
    return false;
}

/* allow_clients and the per-client limits, for the client's address (behind a load balancer:
 * the one its PROXY header names). */
static bool client_ok(struct server *srv, const struct sockaddr *peer, struct client_entry **ce,
                      struct refusal *r) {
    const struct config *cfg = &srv->gen->cfg;
    *ce = NULL;
    if (!policy_client_allowed(&cfg->access, peer)) {
        *r = (struct refusal){403, "http_request_denied", "client not allowed", "denied_client"};
        return false;
    }
    if (!srv->clients)
        return true;
    switch (clients_admit(srv->clients, peer, ev_now(srv->loop), ce)) {
    case CLIENT_OK:
        return true;
    case CLIENT_TOO_MANY:
        STATS_INC(c[C_LIMIT_PER_CLIENT]);
        *r = (struct refusal){503, "http_request_denied", "too many connections from this client",
                              "client_limit"};
        return false;
    case CLIENT_TOO_FAST:
        STATS_INC(c[C_LIMIT_PER_CLIENT_RATE]);
        *r = (struct refusal){503, "http_request_denied", "connection rate limit exceeded",
                              "client_rate"};
        return false;
    }
    return true;
}

/* ---- TLS (a "tls" listener): the handshake before the request ---- */

static void tunnel_forget(struct tunnel *t);

/* ALPN chose h2: the connection becomes an HTTP/2 connection (h2.c), which keeps this
 * tunnel's place in max_connections. The tunnel only carried the handshake: it goes without an
 * access-log line (each stream gets its own). A refusal decided during the handshake (the
 * drain) reaches the client as a GOAWAY: h2.c sees the server draining. */
static void handoff_h2(struct tunnel *t) {
    struct endpoint *c = &t->client;
    int fd = c->fd;
    struct tls_conn *tls = c->tls;
    bool counted = t->counted;
    ev_io_stop(t->srv->loop, &c->rw);
    ev_io_stop(t->srv->loop, &c->ww);
    c->fd = -1;
    c->tls = NULL;
    t->counted = false;
    tunnel_forget(t);
    if (!counted)
        t->srv->refusing--, t->srv->active++; /* refused at accept: h2.c refuses it by GOAWAY */
    h2_conn_start(t->srv, fd, tls, &t->peer, &t->balancer, t->tls_version, true);
}

static void tls_step(struct tunnel *t) {
    struct ev_loop *loop = t->srv->loop;
    struct endpoint *c = &t->client;
    int r = tls_conn_handshake(c->tls);
    if (r == TLS_WANT_READ) {
        ev_io_stop(loop, &c->ww);
        ev_io_start(loop, &c->rw);
        return;
    }
    if (r == TLS_WANT_WRITE) {
        ev_io_stop(loop, &c->rw);
        ev_io_start(loop, &c->ww);
        return;
    }
    if (r != TLS_DONE) {
        char from[ADDR_TEXT_MAX];
        addr_format(&t->peer.sa, true, from, sizeof from);
        log_debug("TLS handshake with %s failed: %s", from, tls_conn_error(c->tls));
        STATS_INC(c[C_TLS_FAILED]);
        tunnel_close(t, "tls_handshake_failed"); /* no session to answer in */
        return;
    }
    STATS_INC(c[tls_conn_resumed(c->tls) ? C_TLS_RESUMED : C_TLS_FULL]);
    c->ktls_tx = tls_conn_ktls_send(c->tls);
    t->tls_ready = true;
    t->tls_version = tls_conn_version(c->tls);
    if (t->hs->deferred_status && !tls_conn_h2(c->tls)) {
        /* refused before the handshake: now it can be said */
        ev_io_stop(loop, &c->rw);
        ev_io_stop(loop, &c->ww);
        send_reply(t, t->hs->deferred_status);
        return;
    }
    if (tls_conn_h2(c->tls)) {
        handoff_h2(t);
        return;
    }
    t->state = TUNNEL_READ_REQUEST;
    ev_io_stop(loop, &c->ww);
    ev_set_cb(&c->rw, client_request_cb);
    ev_io_start(loop, &c->rw);
    /* The request often comes in the same flight as the client's Finished. */
    client_request_cb(loop, &c->rw, EV_READ);
}

static void tls_read_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    tls_step(container_of(w, struct tunnel, client.rw));
}

/* The client's write watcher until a refusal or the relay takes it: the handshake's writes,
 * then a TLS read of the request that had to write first (transport.c). */
static void tls_write_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct tunnel *t = container_of(w, struct tunnel, client.ww);
    if (t->state == TUNNEL_TLS_HANDSHAKE) {
        tls_step(t);
        return;
    }
    ev_io_stop(loop, w);
    if (t->client.read_wants_write) {
        t->client.read_wants_write = false;
        tp_read_on(loop, &t->client);
    }
}

/* Start the TLS handshake; pre holds bytes of it already read (after a PROXY header). */
static void tls_begin(struct tunnel *t, const char *pre, size_t prelen) {
    struct ev_loop *loop = t->srv->loop;
    if (!t->gen->tls) { /* cannot happen: a tls listener needs [tls] */
        tunnel_close(t, "tls_handshake_failed");
        return;
    }
    t->client.tls = tls_conn_new(t->gen->tls, loop, t->client.fd, pre, prelen);
    if (!t->client.tls) {
        log_error("out of memory for a TLS session");
        tunnel_close(t, "out_of_memory");
        return;
    }
    if (t->hs->deferred_status)
        tls_conn_no_h2(t->client.tls);
    t->state = TUNNEL_TLS_HANDSHAKE;
    t->hs->reqlen = 0;
    ev_set_cb(&t->client.rw, tls_read_cb);
    ev_set_cb(&t->client.ww, tls_write_cb);
    ev_io_start(loop, &t->client.rw);
    tls_step(t);
}

/* ---- the PROXY protocol header ("proxy-protocol" listeners) ---- */

/* The balancer's header has arrived: from now on the client is the address it names. */
static void proxy_header_done(struct tunnel *t, const struct proxy_header *h) {
    struct handshake *hs = t->hs;
    struct refusal r;
    if (h->has_addr) {
        t->balancer = t->peer;
        memcpy(&t->peer, &h->src,
               h->src.ss_family == AF_INET6 ? sizeof t->peer.sin6 : sizeof t->peer.sin);
    }
    STATS_INC(c[h->command == PROXY_CMD_LOCAL ? C_PROXY_LOCAL : C_PROXY_OK]);
    hs->reqlen -= h->len;
    memmove(hs->req, hs->req + h->len, hs->reqlen);
    t->state = TUNNEL_READ_REQUEST;
    ev_set_cb(&t->client.rw, client_request_cb);
    if (!client_ok(t->srv, &t->peer.sa, &t->ce, &r)) {
        refuse(t, r.status, r.proxy_error, NULL, r.details, r.reason);
        return;
    }
    if (t->tls) /* what followed the header is the start of the TLS handshake */
        tls_begin(t, hs->req, hs->reqlen);
    else if (hs->reqlen > 0)
        request_progress(t);
}

static void proxy_header_failed(struct tunnel *t, const char *why, const char *reason) {
    char from[ADDR_TEXT_MAX];
    STATS_INC(c[C_PROXY_BAD]);
    addr_format(&t->peer.sa, true, from, sizeof from);
    log_warn("PROXY header from %s: %s; closing", from, why);
    tunnel_close(t, reason); /* the spec: drop the connection, answer nothing */
}

static void client_proxy_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    struct tunnel *t = container_of(w, struct tunnel, client.rw);
    struct handshake *hs = t->hs;
    /* Read no further than a header can be: the request behind it stays in the socket until
     * the header is judged (REQ_INITIAL holds PROXY_HEADER_MAX). */
    ssize_t n = recv(t->client.fd, hs->req + hs->reqlen, PROXY_HEADER_MAX - hs->reqlen, 0);
    if (n == -1) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        tunnel_close(t, "client_reset");
        return;
    }
    if (n == 0) {
        if (hs->reqlen)
            proxy_header_failed(t, "connection closed inside the header", "bad_proxy_header");
        else
            tunnel_close(t, "client_eof");
        return;
    }
    hs->reqlen += (size_t)n;
    struct proxy_header h;
    switch (proxy_parse((const unsigned char *)hs->req, hs->reqlen, &h)) {
    case PROXY_MORE:
        if (hs->reqlen >= PROXY_HEADER_MAX)
            proxy_header_failed(t, "header too long", "bad_proxy_header");
        return;
    case PROXY_ERROR:
        proxy_header_failed(t, h.reason, "bad_proxy_header");
        return;
    case PROXY_DONE:
        proxy_header_done(t, &h);
        return;
    }
}

void tunnel_accept(struct server *srv, int fd, const struct sockaddr *peer, bool proxy_protocol,
                   bool tls) {
    const struct config *cfg = &srv->gen->cfg;
    struct client_entry *ce = NULL;
    struct refusal r;
    STATS_INC(c[C_ACCEPTED]);
    if (proxy_protocol && !policy_cidrs_contain(&cfg->proxy_protocol_from, peer)) {
        /* Only a trusted balancer may name another client: anyone else is dropped unheard. */
        char from[ADDR_TEXT_MAX];
        STATS_INC(c[C_PROXY_DENIED]);
        STATS_INC(outcome[OUTCOME_ABORTED]);
        addr_format(peer, true, from, sizeof from);
        log_warn("PROXY listener: %s is not in [server] proxy_protocol_from; closed", from);
        close(fd);
        return;
    }
    /* Decide before counting: a refused client must not hold one of max_connections' slots.
     * Behind a balancer, who the client is is known only once its header has arrived. */
    bool ok = capacity_ok(srv, &r) && (proxy_protocol || client_ok(srv, peer, &ce, &r));
    if (!ok && srv->refusing >= REFUSING_MAX) {
        STATS_INC(c[C_LIMIT_REFUSING]);
        STATS_INC(outcome[OUTCOME_ABORTED]);
        close(fd);
        return;
    }
    /* Two allocations per tunnel: the tunnel, and its handshake state with the first
     * REQ_INITIAL request bytes inline (only the struct part is zeroed). */
    struct tunnel *t = calloc(1, sizeof *t);
    struct handshake *hs = malloc(sizeof *hs + REQ_INITIAL);
    if (hs)
        memset(hs, 0, sizeof *hs);
    if (!t || !hs) {
        log_error("out of memory accepting a client");
        free(t);
        free(hs);
        if (ce)
            clients_release(srv->clients, ce, ev_now(srv->loop));
        STATS_INC(outcome[OUTCOME_ABORTED]);
        close(fd);
        return;
    }
    t->srv = srv;
    t->gen = srv->gen;
    gen_ref(t->gen);
    t->hs = hs;
    t->ce = ce;
    hs->req = hs->inline_req;
    hs->via = VIA_DIRECT;
    hs->reqalloc = REQ_INITIAL;
    hs->reqmax = cfg->max_request_bytes + 1;
    struct http_limits lim = {.max_total = cfg->max_request_bytes};
    http_parser_init(&hs->parser, &lim);
    endpoint_init(t, &t->client, &t->upstream);
    endpoint_init(t, &t->upstream, &t->client);
    t->client.fd = fd;
    memcpy(&t->peer, peer, peer->sa_family == AF_INET6 ? sizeof t->peer.sin6 : sizeof t->peer.sin);
    t->started = t->last_active = ev_now(srv->loop);
    ev_io_init(&t->client.rw, client_request_cb, fd, EV_READ);
    ev_io_init(&t->client.ww, reply_write_cb, fd, EV_WRITE);
    ev_init(&t->upstream.rw, NULL);
    ev_init(&t->upstream.ww, NULL); /* dialing sets its callback */
    ev_init(&t->timer, timer_cb);
    t->next = srv->live;
    if (srv->live)
        srv->live->prev = t;
    srv->live = t;
    t->state = proxy_protocol ? TUNNEL_READ_PROXY : TUNNEL_READ_REQUEST;
    t->tls = tls;
    if (!ok) {
        srv->refusing++;
        stats_set(&stats_me->g.connections_open, srv->active + srv->refusing);
        refuse(t, r.status, r.proxy_error, NULL, r.details, r.reason);
        return;
    }
    t->counted = true;
    srv->active++;
    stats_set(&stats_me->g.connections_open, srv->active + srv->refusing);
    net_tune(fd);
    ev_io_start(srv->loop, &t->client.rw);
    arm_timer(t, cfg->timeout_handshake);
    /* The request usually arrives with or right after the handshake: read now rather than after
     * another trip through epoll (an EAGAIN here costs one cheap syscall). */
    if (proxy_protocol) {
        ev_set_cb(&t->client.rw, client_proxy_cb);
        client_proxy_cb(srv->loop, &t->client.rw, EV_READ);
        return;
    }
    if (tls) {
        tls_begin(t, NULL, 0);
        return;
    }
    client_request_cb(srv->loop, &t->client.rw, EV_READ);
}

void tunnel_open_stream(struct server *srv, struct h2stream *s, const union sockaddr_any *peer,
                        const union sockaddr_any *balancer, const char *tls_version,
                        unsigned long conn, const char *req, size_t reqlen, bool extended) {
    const struct config *cfg = &srv->gen->cfg;
    struct client_entry *ce = NULL;
    struct refusal r;
    bool ok = capacity_ok(srv, &r) && client_ok(srv, &peer->sa, &ce, &r);
    size_t room = reqlen > cfg->max_request_bytes + 1 ? cfg->max_request_bytes + 1 : reqlen;
    struct tunnel *t = calloc(1, sizeof *t);
    struct handshake *hs = malloc(sizeof *hs + REQ_INITIAL);
    char *big = room > REQ_INITIAL ? malloc(room) : NULL;
    if (hs)
        memset(hs, 0, sizeof *hs);
    if (!t || !hs || (room > REQ_INITIAL && !big)) {
        log_error("out of memory for an HTTP/2 stream");
        free(t);
        free(hs);
        free(big);
        if (ce)
            clients_release(srv->clients, ce, ev_now(srv->loop));
        h2_stream_detach(s, false); /* reset: the client may try again */
        return;
    }
    t->srv = srv;
    t->gen = srv->gen;
    gen_ref(t->gen);
    t->hs = hs;
    t->ce = ce;
    hs->req = big ? big : hs->inline_req;
    hs->reqalloc = big ? room : REQ_INITIAL;
    hs->reqmax = cfg->max_request_bytes + 1;
    hs->via = VIA_DIRECT;
    memcpy(hs->req, req, room);
    hs->reqlen = room;
    struct http_limits lim = {.max_total = cfg->max_request_bytes};
    http_parser_init(&hs->parser, &lim);
    endpoint_init(t, &t->client, &t->upstream);
    endpoint_init(t, &t->upstream, &t->client);
    t->client.h2 = s;
    h2_stream_attach(s, &t->client);
    t->peer = *peer;
    t->balancer = *balancer;
    t->tls = t->tls_ready = true;
    t->tls_version = tls_version;
    t->h2_conn = conn;
    t->started = t->last_active = ev_now(srv->loop);
    /* No socket: the watchers are only ever fed (transport.h), never started. */
    ev_init(&t->client.rw, NULL);
    ev_init(&t->client.ww, NULL);
    ev_init(&t->upstream.rw, NULL);
    ev_init(&t->upstream.ww, NULL);
    ev_init(&t->timer, timer_cb);
    t->next = srv->live;
    if (srv->live)
        srv->live->prev = t;
    srv->live = t;
    t->state = TUNNEL_READ_REQUEST;
    if (!ok) {
        srv->refusing++;
        stats_set(&stats_me->g.connections_open, srv->active + srv->refusing);
        set_raw_target(t);
        refuse(t, r.status, r.proxy_error, NULL, r.details, r.reason);
        return;
    }
    t->counted = true;
    srv->active++;
    stats_set(&stats_me->g.connections_open, srv->active + srv->refusing);
    arm_timer(t, cfg->timeout_handshake);
    if (extended) {
        set_raw_target(t);
        refuse(t, 501, "http_request_denied", NULL, "extended CONNECT (:protocol) is not supported",
               "extended_connect");
        return;
    }
    request_progress(t);
}

/* Move a tunnel from the live list to the dead one: tunnel_reap frees it once the loop has
 * left every callback that may still hold it. */
static void tunnel_bury(struct tunnel *t) {
    struct server *srv = t->srv;
    if (srv->cursors)
        admin_tunnel_gone(srv, t);
    if (t->prev)
        t->prev->next = t->next;
    else
        srv->live = t->next;
    if (t->next)
        t->next->prev = t->prev;
    t->next = srv->dead;
    srv->dead = t;
    if (!ev_is_active(&srv->reaper))
        ev_prepare_start(srv->loop, &srv->reaper);
}

/* Unlink a tunnel that leaves without a close: its client became something else (h2.c). */
static void tunnel_forget(struct tunnel *t) {
    struct server *srv = t->srv;
    ev_timer_stop(srv->loop, &t->timer);
    tp_later_forget(&t->client);
    tp_later_forget(&t->upstream);
    t->state = TUNNEL_CLOSED;
    if (t->ce)
        clients_release(srv->clients, t->ce, ev_now(srv->loop));
    t->ce = NULL;
    tunnel_bury(t);
}

static void access_line(struct tunnel *t, const char *reason) {
    char client[ADDR_TEXT_MAX], up[ADDR_TEXT_MAX] = "-", target[1024] = "-";
    addr_format(&t->peer.sa, true, client, sizeof client);
    if (t->up_addr.sa.sa_family != 0 && t->status == 200)
        addr_format(&t->up_addr.sa, true, up, sizeof up);
    if (t->target)
        log_escape(target, sizeof target, t->target, strlen(t->target));
    int status = t->status;
    uint64_t down = 0;
    if (t->pac)
        ; /* a PAC file, not a tunnel: no upstream, no tunnel bytes */
    else if (status == 200 && t->client.sent < HTTP_CONNECT_OK_LEN)
        status = 0; /* the client went away before the 200 was delivered */
    else if (status == 200)
        down = t->client.sent - HTTP_CONNECT_OK_LEN;
    char user[3 * AUTH_USER_MAX + 1] = "-", rule[200] = "-";
    if (t->user)
        log_escape(user, sizeof user, t->user, strlen(t->user));
    if (t->rule)
        log_escape(rule, sizeof rule, t->rule, strlen(t->rule));
    char line[1900], lb[ADDR_TEXT_MAX + 10] = "", parent[48] = "", tls[48] = "";
    if (t->balancer.sa.sa_family != 0) {
        memcpy(lb, " balancer=", 10);
        addr_format(&t->balancer.sa, true, lb + 10, sizeof lb - 10);
    }
    if (t->parent)
        snprintf(parent, sizeof parent, " parent=%s", t->parent->name);
    if (t->tls_version && t->h2_conn)
        snprintf(tls, sizeof tls, " h2=%lu tls=%s", t->h2_conn, t->tls_version);
    else if (t->tls_version)
        snprintf(tls, sizeof tls, " tls=%s", t->tls_version);
    int n = snprintf(line, sizeof line,
                     "client=%s user=%s target=%s upstream=%s status=%d up=%llu down=%llu "
                     "duration=%.3f reason=%s rule=%s%s%s%s",
                     client, user, target, up, status, (unsigned long long)t->upstream.sent,
                     (unsigned long long)down, ev_now(t->srv->loop) - t->started, reason, rule, lb,
                     parent, tls);
    if (n > 0)
        log_access(line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static void endpoint_close(struct server *srv, struct endpoint *e, const char *reason) {
    /* Bytes still waiting for a peer that stopped reading can never be delivered now: reset
     * instead of a FIN behind them, or the kernel would hold them for minutes while it probes
     * the peer's zero window. */
    if (ev_is_active(&e->ww) && e->fd != -1 && e->t->state == TUNNEL_CLOSED &&
        e->t->status == 200) {
        struct linger lg = {1, 0};
        (void)setsockopt(e->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    ev_io_stop(srv->loop, &e->rw);
    ev_io_stop(srv->loop, &e->ww);
    tp_free(e, strncmp(reason, "upstream", 8) == 0);
    if (e->fd != -1) {
        close(e->fd);
        e->fd = -1;
    }
    relay_release(srv, e);
}

void tunnel_close(struct tunnel *t, const char *reason) {
    struct server *srv = t->srv;
    if (t->state == TUNNEL_CLOSED)
        return;
    close_extras(t); /* attempts beyond t->upstream, while CONNECTING */
    t->state = TUNNEL_CLOSED;
    ev_timer_stop(srv->loop, &t->timer);
    if (t->hs && t->hs->dnsq) {
        dns_cancel(t->hs->dnsq);
        t->hs->dnsq = NULL;
    }
    if (t->hs && t->hs->authw) {
        auth_service_cancel(t->gen->auth, t->hs->authw);
        t->hs->authw = NULL;
    }
    if (t->client.h2 && t->upstream.fd != -1 &&
        (strncmp(reason, "client_", 7) == 0 || strncmp(reason, "h2_", 3) == 0)) {
        /* RFC 9113 section 8.5: the stream (or its connection) failed, so the destination's
         * TCP connection is reset, not closed as if the client had finished. */
        struct linger lg = {1, 0};
        (void)setsockopt(t->upstream.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    endpoint_close(srv, &t->client, reason);
    endpoint_close(srv, &t->upstream, reason);
    if (log_access_enabled())
        access_line(t, reason);
    if (t->ce)
        clients_release(srv->clients, t->ce, ev_now(srv->loop));
    if (t->counted)
        srv->active--;
    else
        srv->refusing--;
    stats_set(&stats_me->g.connections_open, srv->active + srv->refusing);
    if (t->established != 0 && t->client.sent >= HTTP_CONNECT_OK_LEN) {
        srv->tunnels--;
        stats_set(&stats_me->g.tunnels_open, srv->tunnels);
        stats_closed(reason);
        stats_observe(HIST_TUNNEL, ev_now(srv->loop) - t->established);
    } else if (t->status == 0 || t->established != 0) {
        /* No answer, or a 200 the client never got (the access log says status=0 then). */
        STATS_INC(outcome[OUTCOME_ABORTED]);
    }
    tunnel_bury(t);
}

void tunnel_reap(struct server *srv) {
    while (srv->dead) {
        struct tunnel *t = srv->dead;
        srv->dead = t->next;
        handshake_free(t->hs);
        if (t->target != t->target_short)
            free(t->target);
        gen_unref(t->gen); /* after the handshake: it may hold a DNS query of that generation */
        free(t);
    }
    ev_prepare_stop(srv->loop, &srv->reaper);
}

void tunnel_refuse_handshakes(struct server *srv) {
    struct tunnel *t = srv->live, *next;
    for (; t; t = next) {
        next = t->next;
        if (t->state == TUNNEL_READ_REQUEST || t->state == TUNNEL_READ_PROXY ||
            t->state == TUNNEL_TLS_HANDSHAKE || t->state == TUNNEL_AUTHENTICATING ||
            t->state == TUNNEL_RESOLVING || t->state == TUNNEL_CONNECTING ||
            t->state == TUNNEL_PARENT)
            refuse(t, 503, "proxy_internal_response", NULL, "proxy is shutting down", "shutdown");
    }
}
