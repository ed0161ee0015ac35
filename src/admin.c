/* admin: the admin listener's connections (see admin.h).
 *
 *   READ (request, under ADMIN_TIMEOUT) -> WRITE (response) -> LINGER (until the client closes)
 *
 * /metrics and /healthz are built whole, then written. /tunnels is streamed: each time the
 * socket can take more, at most TUNNELS_BATCH tunnels are turned into JSON (jansson), so a list
 * of 10,000 tunnels never holds the loop for long, and a cursor that tunnel_close() moves along
 * keeps the walk safe while tunnels come and go. Every connection gets exactly one response and
 * is then closed (Connection: close).
 *
 * With workers, each worker knows only its own tunnels. The worker that takes GET /tunnels lists
 * its own, then asks every other worker in turn over a private AF_UNIX socket (abstract name
 * "connectd-MASTERPID-WORKERPID", same user only): the peer streams its tunnels as one JSON object
 * a line, which are passed on as they come, under the same backpressure and limit. */
#include "admin.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "addr.h"
#include "admin_http.h"
#include "container.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "obuf.h"
#include "policy.h"
#include "stats.h"
#include "tunnel.h"

#define TUNNELS_BATCH   128         /* tunnels turned into JSON per wake-up */
#define TUNNELS_DEFAULT 1000        /* GET /tunnels without ?limit= */
#define OUT_HIGH        (64 * 1024) /* stop producing while this much waits to be sent */
#define LINGER_SECONDS  2.0
#define PEER_LINE_MAX   4096 /* one tunnel's JSON from a peer worker */

enum admin_state {
    ADMIN_READ = 1,
    ADMIN_WRITE,
    ADMIN_LINGER,
};

struct admin_conn {
    struct server *srv;
    int fd;
    ev_io rw, ww;
    ev_timer timer;
    enum admin_state state;
    union sockaddr_any peer;
    struct admin_conn *prev, *next; /* srv->admins */
    /* GET /tunnels: the next tunnel to list; on srv->cursors while streaming. */
    bool streaming;
    struct tunnel *cursor;
    struct admin_conn *cprev, *cnext;
    unsigned long limit, listed;
    double longest_batch; /* seconds: the longest stretch one batch held the loop */
    unsigned batches;
    bool internal;  /* a peer worker asking for our tunnels: "limit N\n", answered in lines */
    bool gathering; /* our own tunnels are listed; now the peers' */
    bool truncated;
    int peer_fd;        /* the peer being read, or -1 */
    uint32_t next_slot; /* the stats slot to ask next */
    ev_io pw;
    size_t plen;
    char pbuf[PEER_LINE_MAX];
    struct obuf out;
    size_t off; /* bytes of out already sent */
    int status;
    size_t reqlen;
    char req[ADMIN_REQ_MAX + 1];
};

static void admin_close(struct admin_conn *c);
static void write_cb(struct ev_loop *loop, ev_io *w, int revents);
static void read_cb(struct ev_loop *loop, ev_io *w, int revents);
static void internal_read_cb(struct ev_loop *loop, ev_io *w, int revents);
static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* ---- the cursor list ---- */

static void cursor_stop(struct admin_conn *c) {
    struct server *srv = c->srv;
    if (!c->streaming)
        return;
    c->streaming = false;
    if (c->cprev)
        c->cprev->cnext = c->cnext;
    else
        srv->cursors = c->cnext;
    if (c->cnext)
        c->cnext->cprev = c->cprev;
    c->cprev = c->cnext = NULL;
    c->cursor = NULL;
}

void admin_tunnel_gone(struct server *srv, struct tunnel *t) {
    for (struct admin_conn *c = srv->cursors; c; c = c->cnext)
        if (c->cursor == t)
            c->cursor = t->next;
}

/* ---- writing ---- */

static void linger_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    struct admin_conn *c = container_of(w, struct admin_conn, rw);
    char sink[1024];
    for (int i = 0; i < 8; i++) {
        ssize_t n = read(c->fd, sink, sizeof sink);
        if (n > 0)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        admin_close(c); /* EOF or error: the client has its answer */
        return;
    }
}

/* Everything is sent: half-close and read until the client closes, so unread request bytes
 * cannot turn our close into a reset that destroys the response. */
static void finish(struct admin_conn *c) {
    struct ev_loop *loop = c->srv->loop;
    if (c->batches) /* GET /tunnels: how long the loop was held at a time */
        log_debug("admin: /tunnels%s: %lu tunnels in %u batches, longest %.3f ms",
                  c->internal ? " (for another worker)" : "", c->listed, c->batches,
                  c->longest_batch * 1e3);
    ev_io_stop(loop, &c->ww);
    if (shutdown(c->fd, SHUT_WR) == -1) {
        admin_close(c);
        return;
    }
    c->state = ADMIN_LINGER;
    ev_set_cb(&c->rw, linger_cb);
    ev_io_start(loop, &c->rw);
    ev_timer_stop(loop, &c->timer);
    ev_timer_set(&c->timer, LINGER_SECONDS, 0.);
    ev_timer_start(loop, &c->timer);
}

/* Send what is queued. Returns -1 when the connection was closed. */
static int flush_out(struct admin_conn *c) {
    while (c->off < c->out.len) {
        ssize_t n = send(c->fd, c->out.p + c->off, c->out.len - c->off, MSG_NOSIGNAL);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            admin_close(c);
            return -1;
        }
        c->off += (size_t)n;
        ev_timer_again(c->srv->loop, &c->timer); /* progress */
    }
    if (c->off == c->out.len) {
        c->out.len = c->off = 0;
    } else if (c->off > OUT_HIGH) {
        obuf_consume(&c->out, c->off);
        c->off = 0;
    }
    return 0;
}

static const char *state_name(enum tunnel_state s) {
    switch (s) {
    case TUNNEL_READ_REQUEST:
        return "request";
    case TUNNEL_AUTHENTICATING:
        return "authenticating";
    case TUNNEL_RESOLVING:
        return "resolving";
    case TUNNEL_CONNECTING:
        return "connecting";
    case TUNNEL_RELAY:
        return "relay";
    case TUNNEL_ERROR_REPLY:
        return "refusing";
    case TUNNEL_LINGER:
        return "closing";
    case TUNNEL_READ_PROXY:
        return "proxy-header";
    case TUNNEL_PARENT:
        return "parent";
    case TUNNEL_TLS_HANDSHAKE:
        return "tls-handshake";
    case TUNNEL_CLOSED:
        return "closed";
    }
    return "unknown";
}

/* A string for JSON: untrusted bytes escaped as the access log does (always ASCII). */
static json_t *jstr(const char *s) {
    if (!s)
        return json_null();
    char esc[1024];
    log_escape(esc, sizeof esc, s, strlen(s));
    return json_string(esc);
}

static json_t *tunnel_json(const struct tunnel *t, ev_tstamp now, unsigned worker) {
    char client[ADDR_TEXT_MAX], up[ADDR_TEXT_MAX];
    addr_format(&t->peer.sa, true, client, sizeof client);
    bool has_up =
        t->up_addr.sa.sa_family != 0 && (t->state == TUNNEL_CONNECTING || t->established != 0);
    if (has_up)
        addr_format(&t->up_addr.sa, true, up, sizeof up);
    uint64_t down = 0;
    if (t->established != 0 && t->client.sent > HTTP_CONNECT_OK_LEN)
        down = t->client.sent - HTTP_CONNECT_OK_LEN;
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "client", json_string(client));
    json_object_set_new(o, "user", jstr(t->user));
    json_object_set_new(o, "target", jstr(t->target));
    json_object_set_new(o, "upstream", has_up ? json_string(up) : json_null());
    json_object_set_new(o, "state", json_string(state_name(t->state)));
    json_object_set_new(o, "age_seconds", json_real(now - t->started));
    json_object_set_new(o, "bytes_up", json_integer((json_int_t)t->upstream.sent));
    json_object_set_new(o, "bytes_down", json_integer((json_int_t)down));
    json_object_set_new(o, "rule", jstr(t->rule));
    json_object_set_new(o, "parent", t->parent ? json_string(t->parent->name) : json_null());
    json_object_set_new(o, "tls", t->tls_version ? json_string(t->tls_version) : json_null());
    /* an HTTP/2 stream: the number of its client connection (h2=N in the access log) */
    json_object_set_new(o, "h2", t->h2_conn ? json_integer((json_int_t)t->h2_conn) : json_null());
    if (t->balancer.sa.sa_family != 0) {
        char lb[ADDR_TEXT_MAX];
        addr_format(&t->balancer.sa, true, lb, sizeof lb);
        json_object_set_new(o, "balancer", json_string(lb));
    }
    json_object_set_new(o, "worker", json_integer(worker));
    return o;
}

static void append_json(struct obuf *b, const json_t *o) {
    size_t room = 512;
    for (int tries = 0; tries < 2; tries++) {
        char *dst = obuf_reserve(b, room);
        if (!dst)
            return;
        size_t n = json_dumpb(o, dst, room, JSON_COMPACT);
        if (n == 0) {
            b->failed = true;
            return;
        }
        if (n <= room) {
            b->len += n;
            return;
        }
        room = n;
    }
}

static void end_list(struct admin_conn *c) {
    c->gathering = false;
    if (!c->internal)
        obuf_printf(&c->out, "\n],\"count\":%lu,\"truncated\":%s}\n", c->listed,
                    c->truncated ? "true" : "false");
}

/* Between objects: a comma in the HTTP answer; a peer's answer is one object a line. */
static void object_start(struct admin_conn *c) {
    if (!c->internal)
        obuf_puts(&c->out, c->listed ? ",\n" : "\n");
}

static void object_end(struct admin_conn *c) {
    if (c->internal)
        obuf_puts(&c->out, "\n");
    c->listed++;
}

static void ask_next_peer(struct admin_conn *c);

/* Turn the next batch of tunnels into JSON; then the peers' tunnels, or the end. */
static void produce_tunnels(struct admin_conn *c) {
    struct server *srv = c->srv;
    ev_tstamp now = ev_time();
    c->batches++;
    for (int n = 0; n < TUNNELS_BATCH && c->out.len - c->off < OUT_HIGH; n++) {
        struct tunnel *t = c->cursor;
        if (!t || c->listed >= c->limit) {
            c->truncated = t != NULL;
            cursor_stop(c);
            if (c->internal || c->truncated || !srv->has_master) {
                end_list(c);
                return;
            }
            c->gathering = true;
            c->next_slot = 0;
            ask_next_peer(c);
            return;
        }
        c->cursor = t->next;
        json_t *o = tunnel_json(t, now, srv->worker);
        if (!o) {
            c->out.failed = true;
            return;
        }
        object_start(c);
        append_json(&c->out, o);
        json_decref(o);
        object_end(c);
    }
}

/* ---- the other workers' tunnels ---- */

static void peer_name(struct sockaddr_un *sun, socklen_t *len, pid_t master, pid_t worker) {
    memset(sun, 0, sizeof *sun);
    sun->sun_family = AF_UNIX;
    int n = snprintf(sun->sun_path + 1, sizeof sun->sun_path - 1, "connectd-%ld-%ld", (long)master,
                     (long)worker);
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

static void peer_done(struct admin_conn *c) {
    if (c->peer_fd == -1)
        return;
    ev_io_stop(c->srv->loop, &c->pw);
    close(c->peer_fd);
    c->peer_fd = -1;
    c->plen = 0;
}

/* Pass complete lines (one tunnel each) on to the client. */
static void take_lines(struct admin_conn *c) {
    size_t start = 0;
    for (size_t i = 0; i < c->plen; i++) {
        if (c->pbuf[i] != '\n')
            continue;
        if (i > start) {
            if (c->listed >= c->limit) {
                c->truncated = true;
                break;
            }
            object_start(c);
            obuf_append(&c->out, c->pbuf + start, i - start);
            object_end(c);
        }
        start = i + 1;
    }
    memmove(c->pbuf, c->pbuf + start, c->plen - start);
    c->plen -= start;
}

static void peer_read_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct admin_conn *c = container_of(w, struct admin_conn, pw);
    if (c->out.len - c->off >= OUT_HIGH) { /* the client is slow: wait for it */
        ev_io_stop(loop, w);
        return;
    }
    ssize_t n = recv(c->peer_fd, c->pbuf + c->plen, sizeof c->pbuf - c->plen, 0);
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n > 0) {
        c->plen += (size_t)n;
        take_lines(c);
        if (c->plen == sizeof c->pbuf) {
            log_warn("admin: a worker sent a tunnel longer than %d bytes", PEER_LINE_MAX);
            n = -1;
        }
    }
    if (n <= 0 || c->truncated) {
        peer_done(c);
        if (c->truncated)
            end_list(c);
        else
            ask_next_peer(c);
    }
    ev_io_start(loop, &c->ww);
}

/* Ask the next live worker for its tunnels; end the list when there is none left. */
static void ask_next_peer(struct admin_conn *c) {
    pid_t self = getpid(), master = getppid();
    while (stats_shm && c->next_slot < stats_shm->nslots) {
        const struct stats_slot *sl = &stats_shm->slots[c->next_slot++];
        pid_t pid = (pid_t)__atomic_load_n(&sl->pid, __ATOMIC_RELAXED);
        if (__atomic_load_n(&sl->state, __ATOMIC_ACQUIRE) == SLOT_FREE || pid <= 0 || pid == self)
            continue;
        struct sockaddr_un sun;
        socklen_t len;
        peer_name(&sun, &len, master, pid);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1)
            break;
        char req[32];
        /* One more than fits: if it comes, the list was cut (truncated). */
        int rl = snprintf(req, sizeof req, "limit %lu\n", c->limit - c->listed + 1);
        /* A local stream socket connects at once (or fails: the worker is gone or starting);
         * the request fits any socket buffer. */
        if (connect(fd, (struct sockaddr *)&sun, len) == -1 ||
            send(fd, req, (size_t)rl, MSG_NOSIGNAL) != rl) {
            log_debug("admin: worker pid %ld did not answer for /tunnels: %s", (long)pid,
                      strerror(errno));
            close(fd);
            continue;
        }
        c->peer_fd = fd;
        ev_io_init(&c->pw, peer_read_cb, fd, EV_READ);
        ev_io_start(c->srv->loop, &c->pw);
        return;
    }
    end_list(c);
}

static void write_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    struct admin_conn *c = container_of(w, struct admin_conn, ww);
    if (c->streaming) {
        ev_tstamp t0 = ev_time();
        produce_tunnels(c);
        ev_tstamp took = ev_time() - t0;
        if (took > c->longest_batch)
            c->longest_batch = took;
    }
    if (c->out.failed) {
        log_warn("admin: out of memory building a response");
        admin_close(c);
        return;
    }
    if (flush_out(c) == -1)
        return;
    if (c->gathering) {
        /* The peer's reader fills out; this watcher only runs while there is something to
         * send (a level-triggered write watcher on an empty buffer would spin). */
        if (c->out.len < OUT_HIGH && c->peer_fd != -1)
            ev_io_start(c->srv->loop, &c->pw);
        if (c->out.len == 0)
            ev_io_stop(c->srv->loop, &c->ww);
        return;
    }
    if (!c->streaming && c->out.len == 0)
        finish(c);
    /* else: the write watcher stays on; the next round sends or produces more */
}

/* Queue a complete response and start writing it. */
static void respond(struct admin_conn *c, int status, const char *head, const char *body,
                    size_t bodylen, bool head_only) {
    c->status = status;
    stats_admin_request(status);
    obuf_printf(&c->out,
                "HTTP/1.1 %d %s\r\n%sContent-Length: %zu\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n",
                status, status == 200 ? "OK" : http_status_text(status), head, bodylen);
    if (!head_only && bodylen)
        obuf_append(&c->out, body, bodylen);
    c->state = ADMIN_WRITE;
    ev_io_stop(c->srv->loop, &c->rw);
    ev_io_start(c->srv->loop, &c->ww);
}

/* A refusal in the proxy's own style: status, Proxy-Status, a one-line text body. */
static void refuse(struct admin_conn *c, int status, const char *details, const char *extra) {
    char reply[1024];
    const char *error = status == 401 || status == 403 || status == 405 ? "http_request_denied"
                        : status == 503                                 ? "proxy_internal_response"
                                                                        : "http_request_error";
    size_t n = http_build_error(reply, sizeof reply, status, error, NULL, details, extra);
    if (n == 0) {
        admin_close(c);
        return;
    }
    c->status = status;
    stats_admin_request(status);
    obuf_append(&c->out, reply, n);
    c->state = ADMIN_WRITE;
    ev_io_stop(c->srv->loop, &c->rw);
    ev_io_start(c->srv->loop, &c->ww);
}

static void serve_metrics(struct admin_conn *c, bool head_only) {
    struct obuf body = {0};
    admin_publish(c->srv);
    metrics_render(stats_shm, c->srv->unhealthy, &body);
    if (body.failed) {
        obuf_free(&body);
        refuse(c, 503, "out of memory", NULL);
        return;
    }
    respond(c, 200, "Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n", body.p, body.len,
            head_only);
    obuf_free(&body);
}

static void serve_healthz(struct admin_conn *c, bool head_only) {
    struct server *srv = c->srv;
    const char *body = "ok\n";
    int status = 200;
    if (!srv->ready) {
        status = 503;
        body = "starting\n";
    } else if (srv->unhealthy) {
        status = 503;
        body = "draining\n";
    }
    respond(c, status, "Content-Type: text/plain; charset=utf-8\r\n", body, strlen(body),
            head_only);
}

/* Walk the live tunnels from the newest, as the socket takes them (write_cb). */
static void start_list(struct admin_conn *c, unsigned long limit) {
    struct server *srv = c->srv;
    c->state = ADMIN_WRITE;
    c->limit = limit;
    c->listed = 0;
    c->cursor = srv->live;
    c->streaming = true;
    c->cnext = srv->cursors;
    if (srv->cursors)
        srv->cursors->cprev = c;
    srv->cursors = c;
    ev_io_stop(srv->loop, &c->rw);
    ev_io_start(srv->loop, &c->ww);
}

static void serve_tunnels(struct admin_conn *c, const struct admin_request *r, bool head_only) {
    struct server *srv = c->srv;
    unsigned long limit = TUNNELS_DEFAULT;
    int q = admin_http_query_uint(r->query, "limit", &limit);
    if (q < 0) {
        refuse(c, 400, "limit must be a number", NULL);
        return;
    }
    c->status = 200;
    stats_admin_request(200);
    /* The length is not known in advance: the body ends when the connection closes. */
    obuf_puts(&c->out, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                       "Cache-Control: no-store\r\nConnection: close\r\n\r\n");
    c->state = ADMIN_WRITE;
    if (!head_only) {
        obuf_puts(&c->out, "{\"tunnels\":[");
        start_list(c, limit);
        return;
    }
    ev_io_stop(srv->loop, &c->rw);
    ev_io_start(srv->loop, &c->ww);
}

static void dispatch(struct admin_conn *c, const struct admin_request *r) {
    const struct config *cfg = &c->srv->gen->cfg;
    bool head_only = strcmp(r->method, "HEAD") == 0;
    if (!head_only && strcmp(r->method, "GET") != 0) {
        refuse(c, 405, "only GET and HEAD", "Allow: GET, HEAD\r\n");
        return;
    }
    /* /healthz tells only "serving or not": load balancers may ask without the token. */
    bool healthz = strcmp(r->path, "/healthz") == 0;
    if (cfg->admin.token && !healthz && !admin_http_token_ok(r, c->req, cfg->admin.token)) {
        char client[ADDR_TEXT_MAX];
        addr_format(&c->peer.sa, true, client, sizeof client);
        log_warn("admin: %s token from %s", r->has_auth ? "wrong" : "no", client);
        refuse(c, 401, r->has_auth ? "wrong token" : "token required",
               "WWW-Authenticate: Bearer realm=\"connectd\"\r\n");
        return;
    }
    if (strcmp(r->path, "/metrics") == 0)
        serve_metrics(c, head_only);
    else if (strcmp(r->path, "/healthz") == 0)
        serve_healthz(c, head_only);
    else if (strcmp(r->path, "/tunnels") == 0)
        serve_tunnels(c, r, head_only);
    else
        refuse(c, 404, "try /metrics, /healthz or /tunnels", NULL);
}

static void read_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    struct admin_conn *c = container_of(w, struct admin_conn, rw);
    if (c->reqlen >= sizeof c->req) { /* cannot happen: the parser decides at ADMIN_REQ_MAX */
        refuse(c, 431, "request too large", NULL);
        return;
    }
    ssize_t n = recv(c->fd, c->req + c->reqlen, sizeof c->req - c->reqlen, 0);
    if (n == -1) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        admin_close(c);
        return;
    }
    if (n == 0) {
        admin_close(c);
        return;
    }
    c->reqlen += (size_t)n;
    struct admin_request r;
    switch (admin_http_parse(c->req, c->reqlen, &r)) {
    case ADMIN_PARSE_MORE:
        return;
    case ADMIN_PARSE_ERROR:
        refuse(c, r.status, r.reason, NULL);
        return;
    case ADMIN_PARSE_DONE:
        dispatch(c, &r);
        return;
    }
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    struct admin_conn *c = container_of(w, struct admin_conn, timer);
    if (c->state == ADMIN_READ && !c->internal)
        refuse(c, 408, "request not received in time", NULL);
    else
        admin_close(c); /* no write progress, or the linger is over */
}

static void admin_close(struct admin_conn *c) {
    struct server *srv = c->srv;
    cursor_stop(c);
    peer_done(c);
    ev_io_stop(srv->loop, &c->rw);
    ev_io_stop(srv->loop, &c->ww);
    ev_timer_stop(srv->loop, &c->timer);
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->admins = c->next;
    if (c->next)
        c->next->prev = c->prev;
    srv->nadmins--;
    obuf_free(&c->out);
    free(c);
}

/* A connection reading its request (an HTTP one, or a peer worker's line), on srv->admins. */
static struct admin_conn *conn_new(struct server *srv, int fd, bool internal) {
    struct admin_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->srv = srv;
    c->fd = fd;
    c->peer_fd = -1;
    c->internal = internal;
    c->out.max = 64 * 1024 * 1024;
    c->state = ADMIN_READ;
    ev_io_init(&c->rw, internal ? internal_read_cb : read_cb, fd, EV_READ);
    ev_io_init(&c->ww, write_cb, fd, EV_WRITE);
    ev_timer_init(&c->timer, timer_cb, ADMIN_TIMEOUT, ADMIN_TIMEOUT);
    c->next = srv->admins;
    if (srv->admins)
        srv->admins->prev = c;
    srv->admins = c;
    srv->nadmins++;
    ev_timer_start(srv->loop, &c->timer);
    return c;
}

/* At the connection cap: make room by dropping the connection that has been sending its request
 * the longest (a slow client, or a slowloris), as a 408. A scraper sends its request at once,
 * so it always gets through; a flood of slow clients only evicts itself. False when every
 * connection is already answering. */
static bool evict_slowest(struct server *srv) {
    struct admin_conn *oldest = NULL;
    for (struct admin_conn *c = srv->admins; c; c = c->next)
        if (c->state == ADMIN_READ && !c->internal)
            oldest = c; /* the list is newest first */
    if (!oldest)
        return false;
    stats_admin_request(408);
    admin_close(oldest);
    return true;
}

/* Refuse without allocating anything or holding a slot: neither a flood at the cap nor clients
 * outside allow_clients can keep allowed ones out. What the client sent already is read first,
 * so that the close does not turn into a reset that destroys the answer. */
static void refuse_now(int fd, int status, const char *error, const char *details) {
    char reply[512], sink[4096];
    size_t n = http_build_error(reply, sizeof reply, status, error, NULL, details, NULL);
    stats_admin_request(status);
    for (int i = 0; i < 4 && recv(fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++)
        ;
    if (n)
        (void)send(fd, reply, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)shutdown(fd, SHUT_WR);
    close(fd);
}

void admin_accept(struct server *srv, int fd, const struct sockaddr *peer) {
    if (srv->nadmins >= ADMIN_MAX_CONNS && !evict_slowest(srv)) {
        refuse_now(fd, 503, "proxy_internal_response", "too many admin connections");
        return;
    }
    const struct config *cfg = &srv->gen->cfg;
    if (!policy_cidrs_contain(&cfg->admin.allow_clients, peer)) {
        char client[ADDR_TEXT_MAX];
        addr_format(peer, true, client, sizeof client);
        log_warn("admin: refused %s (not in [admin] allow_clients)", client);
        refuse_now(fd, 403, "http_request_denied", "client not allowed");
        return;
    }
    struct admin_conn *c = conn_new(srv, fd, false);
    if (!c) {
        log_error("admin: out of memory accepting a connection");
        close(fd);
        return;
    }
    memcpy(&c->peer, peer, peer->sa_family == AF_INET6 ? sizeof c->peer.sin6 : sizeof c->peer.sin);
    ev_io_start(srv->loop, &c->rw);
    read_cb(srv->loop, &c->rw, EV_READ); /* the request usually came with the handshake */
}

/* ---- answering another worker's GET /tunnels ---- */

static void internal_read_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    struct admin_conn *c = container_of(w, struct admin_conn, rw);
    ssize_t n = recv(c->fd, c->req + c->reqlen, 64 - c->reqlen, 0);
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        admin_close(c);
        return;
    }
    c->reqlen += (size_t)n;
    char *nl = memchr(c->req, '\n', c->reqlen);
    unsigned long limit;
    char *end;
    if (!nl) {
        if (c->reqlen >= 64)
            admin_close(c);
        return;
    }
    *nl = '\0';
    if (strncmp(c->req, "limit ", 6) != 0 || c->req[6] < '0' || c->req[6] > '9' ||
        (limit = strtoul(c->req + 6, &end, 10), *end != '\0')) {
        admin_close(c);
        return;
    }
    start_list(c, limit);
}

/* Only another worker of this daemon may ask: its pid is in a stats slot. */
static bool is_worker_pid(pid_t pid) {
    for (uint32_t i = 0; stats_shm && i < stats_shm->nslots; i++) {
        const struct stats_slot *sl = &stats_shm->slots[i];
        if (__atomic_load_n(&sl->state, __ATOMIC_ACQUIRE) != SLOT_FREE &&
            __atomic_load_n(&sl->pid, __ATOMIC_RELAXED) == (int32_t)pid)
            return true;
    }
    return false;
}

static void peer_accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    struct server *srv = container_of(w, struct server, peer_w);
    for (int i = 0; i < 8; i++) {
        int fd = accept4(srv->peer_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1)
            return;
        /* Abstract sockets are open to the whole network namespace: only our own user. */
        struct ucred cred;
        socklen_t len = sizeof cred;
        struct admin_conn *c = NULL;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1 || cred.uid != geteuid() ||
            !is_worker_pid(cred.pid) || !(c = conn_new(srv, fd, true))) {
            close(fd);
            continue;
        }
        ev_io_start(srv->loop, &c->rw);
    }
}

int admin_peer_listen(struct server *srv) {
    struct sockaddr_un sun;
    socklen_t len;
    srv->peer_fd = -1;
    peer_name(&sun, &len, getppid(), getpid());
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -1;
    if (bind(fd, (struct sockaddr *)&sun, len) == -1 || listen(fd, 16) == -1) {
        close(fd);
        return -1;
    }
    srv->peer_fd = fd;
    ev_io_init(&srv->peer_w, peer_accept_cb, fd, EV_READ);
    ev_io_start(srv->loop, &srv->peer_w);
    return 0;
}

void admin_close_all(struct server *srv) {
    if (srv->peer_fd != -1) {
        ev_io_stop(srv->loop, &srv->peer_w);
        close(srv->peer_fd);
        srv->peer_fd = -1;
    }
    while (srv->admins)
        admin_close(srv->admins);
}

void admin_publish(struct server *srv) {
    stats_set(&stats_me->g.pipes_pooled, (int64_t)srv->npipes);
    stats_set(&stats_me->g.buffers_pooled, (int64_t)(srv->npool + srv->npool_big));
    stats_read_process(&stats_me->g);
}
