/* tunnel: the per-client state machine from accept to close.
 *
 *   READ_REQUEST -> [AUTHENTICATING] -> RESOLVING -> CONNECTING -> RELAY -> CLOSED
 *        \________________\__________________\____________\__> ERROR_REPLY -> LINGER -> CLOSED
 *
 * Each state arms exactly the watchers it needs, and the one timer carries that state's
 * deadline. Everything that ends a tunnel goes through tunnel_close(). */
#include "tunnel.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "addr.h"
#include "admin.h"
#include "auth_service.h"
#include "buf.h"
#include "clients.h"
#include "container.h"
#include "dns.h"
#include "http.h"
#include "log.h"
#include "loopguard.h"
#include "net.h"
#include "policy.h"
#include "proxy_proto.h"
#include "rules.h"
#include "stats.h"

#define LINGER_SECONDS    2.0  /* after a refusal, wait this long for the client to close */
#define REPLY_SECONDS     5.0  /* a refusal must be written within this */
#define REFUSING_MAX      1024 /* connections being refused at once; beyond, just close */
#define REPLY_MAX         1024
#define REQ_INITIAL       4096 /* a CONNECT plus a TLS ClientHello usually fits */
#define STALL_CHECK       1.0  /* seconds between socket checks while a relay direction waits */
#define HE_EXTRA          3    /* connect attempts at once beyond the first (Happy Eyeballs) */
#define PARENT_ANSWER_MAX 8192 /* a parent's answer to our CONNECT: status line and headers */

struct tunnel;

/* A connect attempt besides the one on t->upstream (RFC 8305: a new one starts every
 * [timeouts] happy_eyeballs while earlier ones are still under way; the first to connect wins). */
struct attempt {
    int fd; /* -1 when the slot is free */
    ev_io w;
    size_t idx; /* its address in hs->ans */
    struct tunnel *t;
};

struct handshake {
    char *req; /* the request as received; grown on demand up to reqmax */
    size_t reqlen, reqalloc, reqmax;
    struct http_parser parser;
    struct dns_query *dnsq;
    struct dns_answer ans;
    size_t next_addr;
    struct auth_wait *authw;       /* credentials being verified off the loop */
    bool auth_held;                /* already held back once for earlier failures */
    enum policy_target ini_target; /* proxy.ini's verdict on the name and port */
    const struct rule *rule;       /* the policy rule that allowed the request, or NULL */
    bool rules_pending;            /* rules from rule_from on depend on the address */
    size_t rule_from;
    bool loop_hit;          /* an address was one of our own listeners */
    bool name_allowed;      /* policy matched the name (not only a CIDR) */
    int dial_errno;         /* last connect failure, 0 if none */
    const char *deny_class; /* set when an address was refused as private */
    bool denied_host;       /* set when an address was refused by deny_hosts */
    ev_tstamp connect_deadline;
    ev_tstamp dns_started, dial_started; /* for the DNS and dial time histograms */
    /* Where the request goes (rule via or [access] via), and how far down that list we are. */
    const int *route;
    size_t nroute, route_pos;
    int via;    /* the current choice: a parent's index, or VIA_DIRECT */
    char *pbuf; /* through a parent: our CONNECT, then its answer */
    size_t plen, psent;
    /* the last parent failure, for the refusal when every choice has failed */
    int pfail_status;
    const char *pfail_error, *pfail_reason;
    char pfail_params[64], pfail_details[160];
    bool parent_ok;    /* the parent answered 2xx: relay */
    size_t up_idx;     /* the address of the attempt on t->upstream */
    unsigned inflight; /* connect attempts under way */
    ev_timer stagger;  /* Happy Eyeballs: starts the next attempt */
    struct attempt extra[HE_EXTRA];
    char *reply; /* REPLY_MAX bytes, allocated only for a refusal */
    size_t replylen, replyoff;
    const char *reason; /* close reason once the refusal is sent */
    char inline_req[];  /* the first REQ_INITIAL bytes of the request, in the same allocation */
};

static void client_request_cb(struct ev_loop *loop, ev_io *w, int revents);
static void handshake_free(struct handshake *hs);
static void client_watch_cb(struct ev_loop *loop, ev_io *w, int revents);
static void connect_cb(struct ev_loop *loop, ev_io *w, int revents);
static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void dial_next(struct tunnel *t);
static void dial_begin(struct tunnel *t);
static void dial_abort(struct tunnel *t);
static void close_extras(struct tunnel *t);
static void route_next(struct tunnel *t);
static void parent_failed(struct tunnel *t, int status, const char *error, const char *details,
                          const char *reason);
static void parent_send(struct tunnel *t);
static void connected(struct tunnel *t);
static bool relay_sockets_ok(struct tunnel *t);
static void proxy_header_failed(struct tunnel *t, const char *why, const char *reason);

char tunnel_via_name[40] = "connectd";

void tunnel_set_via_name(const char *id) {
    snprintf(tunnel_via_name, sizeof tunnel_via_name, "connectd-%s", id);
}

static void handshake_free(struct handshake *hs) {
    if (!hs)
        return;
    if (hs->req != hs->inline_req)
        free(hs->req);
    free(hs->pbuf);
    free(hs->reply);
    free(hs);
}

static void arm_timer(struct tunnel *t, ev_tstamp after) {
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
    if (shutdown(t->client.fd, SHUT_WR) == -1) {
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
        ssize_t n =
            send(t->client.fd, hs->reply + hs->replyoff, hs->replylen - hs->replyoff, MSG_NOSIGNAL);
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
static void send_reply(struct tunnel *t, int status) {
    t->hs->replyoff = 0;
    t->status = status;
    t->state = TUNNEL_ERROR_REPLY;
    ev_set_cb(&t->client.ww, reply_write_cb);
    arm_timer(t, REPLY_SECONDS);
    reply_flush(t);
}

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
    send_reply(t, status);
}

static void refuse(struct tunnel *t, int status, const char *proxy_error, const char *params,
                   const char *details, const char *reason) {
    refuse_with(t, status, proxy_error, params, details, reason, NULL);
}

/* 407 with the challenge that makes a browser ask for (or resend) credentials. */
static void refuse_auth(struct tunnel *t, const char *details, const char *reason) {
    char challenge[160];
    snprintf(challenge, sizeof challenge,
             "Proxy-Authenticate: Basic realm=\"%s\", charset=\"UTF-8\"\r\n", t->gen->cfg.realm);
    refuse_with(t, 407, "http_request_denied", NULL, details, reason, challenge);
}

/* ---- the request ---- */

/* Point t->target at room for cap bytes: the tunnel's own array when it fits (the usual
 * case: no allocation), else the heap. */
static char *target_room(struct tunnel *t, size_t cap) {
    t->target = cap <= sizeof t->target_short ? t->target_short : malloc(cap);
    return t->target;
}

static int set_target(struct tunnel *t, const struct http_request *req) {
    size_t cap = strlen(req->host) + 9; /* "[", "]", ":", 5 digits, NUL */
    if (!target_room(t, cap))
        return -1;
    if (req->host_kind == HTTP_HOST_IPV6)
        snprintf(t->target, cap, "[%s]:%u", req->host, (unsigned)req->port);
    else
        snprintf(t->target, cap, "%s:%u", req->host, (unsigned)req->port);
    return 0;
}

/* Copy the raw request line's target (up to the second space) for logging a bad request. */
static void set_raw_target(struct tunnel *t) {
    struct handshake *hs = t->hs;
    if (t->target)
        return;
    const char *sp = memchr(hs->req, ' ', hs->reqlen);
    if (!sp)
        return;
    sp++;
    size_t rest = hs->reqlen - (size_t)(sp - hs->req);
    size_t n = 0;
    while (n < rest && n < 300 && sp[n] != ' ' && sp[n] != '\r' && sp[n] != '\n')
        n++;
    if (!target_room(t, n + 1))
        return;
    memcpy(t->target, sp, n);
    t->target[n] = '\0';
}

static void dns_done(void *arg, enum dns_status status, const struct dns_answer *ans,
                     const char *rcode, const char *detail) {
    struct tunnel *t = arg;
    struct handshake *hs = t->hs;
    hs->dnsq = NULL;
    stats_observe(HIST_DNS, ev_now(t->srv->loop) - hs->dns_started);
    if (hs->via != VIA_DIRECT && status != DNS_OK) { /* the parent's own name */
        parent_failed(t, status == DNS_TIMEOUT ? 504 : 502,
                      status == DNS_TIMEOUT ? "dns_timeout" : "dns_error", detail, "parent_error");
        return;
    }
    if (status == DNS_TIMEOUT) {
        refuse(t, 504, "dns_timeout", NULL, detail, "dns_timeout");
        return;
    }
    if (status != DNS_OK) {
        char params[48] = "";
        if (rcode)
            snprintf(params, sizeof params, "rcode=\"%s\"", rcode);
        refuse(t, 502, "dns_error", rcode ? params : NULL, detail, "dns_error");
        return;
    }
    hs->ans = *ans;
    dial_begin(t);
}

static void rule_query(const struct tunnel *t, struct rule_query *q) {
    const struct http_request *req = &t->hs->parser.req;
    q->client = &t->peer.sa;
    q->user = t->user;
    q->host = req->host;
    q->is_ip = req->host_kind != HTTP_HOST_NAME;
    q->port = req->port;
}

/* Who may go where, for what can be decided before resolution: the policy rules first, then
 * proxy.ini's lists. Then dial an IP literal, or resolve a name. */
static void policy_step(struct tunnel *t) {
    struct handshake *hs = t->hs;
    const struct config *cfg = &t->gen->cfg;
    const struct http_request *req = &hs->parser.req;
    bool is_ip = req->host_kind != HTTP_HOST_NAME;
    struct rule_query q;
    size_t idx = 0;
    enum rule_match m = RULE_NO_MATCH;

    hs->ini_target = policy_check_target(&cfg->access, req->host, is_ip, req->port);
    hs->name_allowed = hs->ini_target == POLICY_TARGET_ALLOW;
    rule_query(t, &q);
    if (cfg->rules.n)
        m = rules_match(&cfg->rules, &q, 0, &idx);
    switch (m) {
    case RULE_MATCHED:
        t->rule = cfg->rules.v[idx].name;
        if (cfg->rules.v[idx].action == RULE_DENY) {
            refuse(t, 403, "http_request_denied", NULL, "denied by policy", "denied_rule");
            return;
        }
        hs->rule = &cfg->rules.v[idx];
        break;
    case RULE_NEEDS_ADDR:
        hs->rules_pending = true; /* the ini verdict applies to addresses no rule matches */
        hs->rule_from = idx;
        break;
    case RULE_NO_MATCH:
        if (hs->ini_target == POLICY_TARGET_DENY_PORT) {
            t->rule = "allow_ports";
            refuse(t, 403, "http_request_denied", NULL, "port not allowed", "denied_port");
            return;
        }
        if (hs->ini_target == POLICY_TARGET_DENY_HOST) {
            t->rule = "allow_hosts";
            refuse(t, 403, "http_request_denied", NULL, "host not allowed", "denied_host");
            return;
        }
        t->rule = "allow_hosts";
        break;
    }
    (void)is_ip;
    if (hs->rule && hs->rule->has_via) {
        hs->route = hs->rule->via_idx;
        hs->nroute = hs->rule->nvia;
    } else {
        hs->route = cfg->via;
        hs->nroute = cfg->nvia;
    }
    hs->route_pos = 0;
    route_next(t);
}

/* Look name up (the destination's, or a parent's) and dial what it resolves to; an IP literal
 * is dialed at once. */
static void resolve_and_dial(struct tunnel *t, const char *name, uint16_t port, bool is_ip) {
    struct handshake *hs = t->hs;
    if (is_ip) {
        struct sockaddr_storage ss;
        hs->ans.n = 0;
        if (addr_parse_ip(name, port, &ss, &hs->ans.len[0]) == -1) {
            refuse(t, 400, "http_request_error", NULL, "bad IP address", "bad_request");
            return;
        }
        memcpy(&hs->ans.addr[0], &ss, hs->ans.len[0]);
        hs->ans.n = 1;
        dial_begin(t);
        return;
    }
    t->state = TUNNEL_RESOLVING;
    arm_timer(t, t->gen->cfg.timeout_dns);
    hs->dns_started = ev_now(t->srv->loop);
    hs->dnsq = dns_lookup(t->gen->dns, name, port, dns_done, t);
    if (!hs->dnsq)
        refuse(t, 500, "proxy_internal_error", NULL, "out of memory", "out_of_memory");
}

/* ---- parents ---- */

enum verdict {
    VERDICT_ALLOW = 1,
    VERDICT_PRIVATE, /* reserved class and deny_private; *cls names the class */
    VERDICT_DENY,    /* a deny rule or proxy.ini's lists */
    VERDICT_LOOP,    /* one of our own listeners */
};

static enum verdict addr_verdict(struct tunnel *t, const struct sockaddr *sa, const char **cls);

/* An IP-literal target on its way to a parent: refused (false) as a direct dial would be. */
static bool target_ok_for_parent(struct tunnel *t) {
    struct handshake *hs = t->hs;
    const struct http_request *req = &hs->parser.req;
    union sockaddr_any ip;
    socklen_t len;
    const char *cls = NULL;
    struct sockaddr_storage ss;
    if (addr_parse_ip(req->host, req->port, &ss, &len) == -1) {
        refuse(t, 400, "http_request_error", NULL, "bad IP address", "bad_request");
        return false;
    }
    memcpy(&ip, &ss, len);
    int via = hs->via;
    hs->via = VIA_DIRECT;
    enum verdict v = addr_verdict(t, &ip.sa, &cls);
    hs->via = via;
    switch (v) {
    case VERDICT_ALLOW:
        return true;
    case VERDICT_PRIVATE: {
        char details[64];
        snprintf(details, sizeof details, "destination is %s", cls);
        refuse(t, 403, "destination_ip_prohibited", NULL, details, "denied_private");
        return false;
    }
    case VERDICT_LOOP:
        refuse(t, 502, "proxy_loop_detected", NULL, "destination is this proxy", "proxy_loop");
        return false;
    case VERDICT_DENY:
        break;
    }
    refuse(t, 403, "http_request_denied", NULL, "destination not allowed", "denied_host");
    return false;
}

/* A parent that failed is skipped until its back-off is over (passive health); the last
 * choice of a route is tried whatever its state, rather than refusing outright. */
static bool parent_usable(const struct tunnel *t, int idx, bool last) {
    return last || t->gen->parent_down[idx] <= ev_now(t->srv->loop);
}

/* The next choice of the route: direct, or a parent. With none left, the last parent failure
 * is the answer. */
static void route_next(struct tunnel *t) {
    struct handshake *hs = t->hs;
    const struct http_request *req = &hs->parser.req;
    while (hs->route_pos < hs->nroute) {
        int v = hs->route[hs->route_pos++];
        hs->via = v;
        hs->loop_hit = hs->denied_host = false; /* what the previous choice's dial found */
        hs->deny_class = NULL;
        if (v == VIA_DIRECT) {
            t->parent = NULL;
            resolve_and_dial(t, req->host, req->port, req->host_kind != HTTP_HOST_NAME);
            return;
        }
        if (!parent_usable(t, v, hs->route_pos == hs->nroute))
            continue;
        const struct parent *pa = &t->gen->cfg.parents[v];
        t->parent = pa;
        /* connectd does not resolve what a parent will: what needs the destination's address
         * (CIDR rules or allow_hosts entries) cannot let a name through a parent. */
        if (req->host_kind == HTTP_HOST_NAME && !hs->rule &&
            (hs->rules_pending || !hs->name_allowed)) {
            refuse(t, 403, "http_request_denied", NULL,
                   "destination cannot be judged without resolving it", "denied_host");
            return;
        }
        /* An IP-literal target is judged here as if dialed direct (deny_private, rules on
         * addresses, the loop guard): the parent would dial exactly it. */
        if (req->host_kind != HTTP_HOST_NAME && !target_ok_for_parent(t))
            return;
        struct sockaddr_storage ss;
        resolve_and_dial(t, pa->host, pa->port, policy_target_ip(pa->host, &ss));
        return;
    }
    refuse(t, hs->pfail_status, hs->pfail_error, hs->pfail_params, hs->pfail_details,
           hs->pfail_reason);
}

/* The current parent did not work out (its name, a connection, its answer): mark it down, say
 * so, and try the next choice. */
static void parent_failed(struct tunnel *t, int status, const char *error, const char *details,
                          const char *reason) {
    struct handshake *hs = t->hs;
    const struct parent *pa = t->parent;
    ev_tstamp now = ev_now(t->srv->loop);
    dial_abort(t);
    ev_io_stop(t->srv->loop, &t->upstream.rw);
    if (t->gen->parent_down[hs->via] <= now)
        log_warn("parent %s: %s; skipped for %.0fs", pa->name, details, pa->backoff);
    t->gen->parent_down[hs->via] = now + pa->backoff;
    hs->pfail_status = status;
    hs->pfail_error = error;
    hs->pfail_reason = reason;
    snprintf(hs->pfail_params, sizeof hs->pfail_params, "next-hop=\"%s\"", pa->name);
    snprintf(hs->pfail_details, sizeof hs->pfail_details, "parent %s: %s", pa->name, details);
    free(hs->pbuf);
    hs->pbuf = NULL;
    hs->plen = hs->psent = 0;
    hs->dial_started = 0;
    hs->dial_errno = 0;
    route_next(t);
}

/* The parent answered with a status other than 2xx: a decision about this destination, not a
 * sign of ill health. The client gets 502 (504 when the parent timed out), and Proxy-Status
 * names the parent and what it said (RFC 9209 next-hop, received-status). */
static void parent_refused(struct tunnel *t, int got) {
    char params[128], details[128];
    const struct parent *pa = t->parent;
    const char *error = got == 407   ? "proxy_configuration_error"
                        : got == 504 ? "connection_timeout"
                                     : "destination_unavailable";
    const char *reason = "parent_refused";
    /* A parent that saw our request come back (proxies chained in a circle) says so in its
     * Proxy-Status: keep that meaning for the client. */
    char ps[256];
    if (http_header_values(t->hs->pbuf, t->hs->plen, "proxy-status", ps, sizeof ps) &&
        strstr(ps, "error=proxy_loop_detected")) {
        error = "proxy_loop_detected";
        reason = "proxy_loop";
    }
    snprintf(params, sizeof params, "next-hop=\"%s\"; received-status=%d", pa->name, got);
    snprintf(details, sizeof details, "parent %s answered %d", pa->name, got);
    ev_io_stop(t->srv->loop, &t->upstream.rw);
    refuse(t, got == 504 ? 504 : 502, error, params, details, reason);
}

static void parent_answer(struct tunnel *t) {
    struct handshake *hs = t->hs;
    int status = 0;
    size_t head = 0;
    const char *why = NULL;
    switch (http_parse_response(hs->pbuf, hs->plen, PARENT_ANSWER_MAX, &status, &head, &why)) {
    case HTTP_PARSE_MORE:
        return;
    case HTTP_PARSE_ERROR:
        parent_failed(t, 502, "http_protocol_error", why, "parent_error");
        return;
    case HTTP_PARSE_DONE:
        break;
    }
    if (status < 200 || status > 299) {
        parent_refused(t, status);
        return;
    }
    /* Tunnel: bytes after the parent's answer are already the destination's. */
    ev_io_stop(t->srv->loop, &t->upstream.rw);
    hs->psent = head; /* connected() passes pbuf[head..plen) on after our own 200 */
    hs->parent_ok = true;
    connected(t);
}

static void parent_read_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    struct tunnel *t = container_of(w, struct tunnel, upstream.rw);
    struct handshake *hs = t->hs;
    ssize_t n = recv(t->upstream.fd, hs->pbuf + hs->plen, PARENT_ANSWER_MAX - hs->plen, 0);
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n <= 0) {
        parent_failed(t, 502, "http_response_incomplete",
                      n == 0 ? "closed without an answer" : strerror(errno), "parent_error");
        return;
    }
    hs->plen += (size_t)n;
    parent_answer(t);
}

static void parent_write_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct tunnel *t = container_of(w, struct tunnel, upstream.ww);
    struct handshake *hs = t->hs;
    while (hs->psent < hs->plen) {
        ssize_t n = send(t->upstream.fd, hs->pbuf + hs->psent, hs->plen - hs->psent, MSG_NOSIGNAL);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ev_io_start(loop, w);
            return;
        }
        if (n == -1) {
            parent_failed(t, 502, "connection_terminated", strerror(errno), "parent_error");
            return;
        }
        hs->psent += (size_t)n;
    }
    /* Sent: the same buffer now collects the answer. */
    ev_io_stop(loop, w);
    hs->plen = hs->psent = 0;
    ev_io_set(&t->upstream.rw, t->upstream.fd, EV_READ);
    ev_set_cb(&t->upstream.rw, parent_read_cb);
    ev_io_start(loop, &t->upstream.rw);
}

/* Connected to the parent: our own CONNECT, with the parent's credentials (never the
 * client's), and Via with ours appended to the client's, so that a loop of proxies is seen. */
static void parent_send(struct tunnel *t) {
    struct handshake *hs = t->hs;
    const struct parent *pa = t->parent;
    const struct http_request *req = &hs->parser.req;
    char via[512];
    http_header_values(hs->req, req->header_len, "via", via, sizeof via);
    /* Room for the answer, and for our own 200 in front of what follows it (connected()). */
    hs->pbuf = malloc(PARENT_ANSWER_MAX + HTTP_CONNECT_OK_LEN);
    if (!hs->pbuf) {
        refuse(t, 500, "proxy_internal_error", NULL, "out of memory", "out_of_memory");
        return;
    }
    int n = snprintf(hs->pbuf, PARENT_ANSWER_MAX,
                     "CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s%s%sVia: %s%s1.1 %s\r\n\r\n", t->target,
                     t->target, pa->authorization ? "Proxy-Authorization: " : "",
                     pa->authorization ? pa->authorization : "", pa->authorization ? "\r\n" : "",
                     via, via[0] ? ", " : "", tunnel_via_name);
    if (n < 0 || n >= PARENT_ANSWER_MAX) {
        refuse(t, 500, "proxy_internal_error", NULL, "request too long", "out_of_memory");
        return;
    }
    hs->plen = (size_t)n;
    hs->psent = 0;
    t->state = TUNNEL_PARENT;
    arm_timer(t, pa->connect_timeout);
    ev_set_cb(&t->upstream.ww, parent_write_cb);
    parent_write_cb(t->srv->loop, &t->upstream.ww, EV_WRITE);
}

static void auth_step(struct tunnel *t);

static void auth_result(struct tunnel *t, enum auth_result res, const char *user) {
    char client[ADDR_TEXT_MAX], name[3 * AUTH_USER_MAX + 1];
    const struct auth_user *u;

    switch (res) {
    case AUTH_OK:
        u = auth_users_find(&t->gen->cfg.users, user);
        if (!u) { /* cannot happen: the service only knows the config's users */
            refuse(t, 500, "proxy_internal_error", NULL, "unknown user", "auth_error");
            return;
        }
        t->user = u->name;
        STATS_INC(c[C_AUTH_OK]);
        auth_service_succeeded(t->gen->auth, &t->peer.sa);
        policy_step(t);
        return;
    case AUTH_MISSING:
        STATS_INC(c[C_AUTH_MISSING]);
        refuse_auth(t, "proxy credentials required", "auth_required");
        return;
    case AUTH_BAD:
        STATS_INC(c[C_AUTH_BAD]);
        auth_service_failed(t->gen->auth, &t->peer.sa);
        addr_format(&t->peer.sa, false, client, sizeof client);
        log_escape(name, sizeof name, user ? user : "", user ? strlen(user) : 0);
        log_warn("auth: wrong credentials for user '%s' from %s", name, client);
        refuse_auth(t, "wrong proxy credentials", "auth_failed");
        return;
    case AUTH_BUSY:
        STATS_INC(c[C_AUTH_BUSY]);
        refuse(t, 503, "proxy_internal_response", NULL, "too many logins waiting", "auth_busy");
        return;
    case AUTH_PENDING:
        t->state = TUNNEL_AUTHENTICATING;
        arm_timer(t, t->gen->cfg.timeout_handshake);
        return;
    }
}

static void auth_done(void *arg, enum auth_result res, const char *user) {
    struct tunnel *t = arg;
    t->hs->authw = NULL;
    auth_result(t, res, user);
}

/* Credentials first (when [auth] is on): policy rules may name users. A client with recent
 * failures is held back before its attempt is even looked at. */
static void auth_step(struct tunnel *t) {
    struct handshake *hs = t->hs;
    const struct http_request *req = &hs->parser.req;
    const char *user = NULL;

    if (!t->gen->auth) {
        policy_step(t);
        return;
    }
    if (!hs->auth_held) {
        double hold = auth_service_penalty(t->gen->auth, &t->peer.sa);
        if (hold > 0) {
            hs->auth_held = true;
            t->state = TUNNEL_AUTHENTICATING;
            arm_timer(t, hold);
            return;
        }
    }
    enum auth_result res = auth_service_check(t->gen->auth, hs->req + req->proxy_auth_off,
                                              req->proxy_auth_len, &user, auth_done, t, &hs->authw);
    auth_result(t, res, user);
}

static void request_complete(struct tunnel *t) {
    struct handshake *hs = t->hs;
    ev_set_cb(&t->client.rw, client_watch_cb); /* still active: now only watches for a hang-up */
    if (set_target(t, &hs->parser.req) == -1) {
        refuse(t, 500, "proxy_internal_error", NULL, "out of memory", "out_of_memory");
        return;
    }
    /* A request that already came through this proxy (proxies chained in a circle). */
    char via[512];
    if (http_header_values(hs->req, hs->parser.req.header_len, "via", via, sizeof via) &&
        strstr(via, tunnel_via_name)) {
        t->rule = "loop";
        refuse(t, 502, "proxy_loop_detected", NULL, "request already passed this proxy (Via)",
               "proxy_loop");
        return;
    }
    auth_step(t);
}

/* [server] pac: is this "GET /proxy.pac HTTP/1.x" (or HEAD, or with a query string)? */
static bool is_pac_request(const struct tunnel *t) {
    const struct handshake *hs = t->hs;
    const struct http_parser *p = &hs->parser;
    bool head = strcmp(p->req.method, "HEAD") == 0;
    if (!t->gen->cfg.pac || p->status != 405 || (strcmp(p->req.method, "GET") != 0 && !head))
        return false;
    const char *line = hs->req + p->line_start;
    size_t n = p->pos - p->line_start, m = strlen(p->req.method) + 1;
    static const char path[] = "/proxy.pac";
    if (n < m + sizeof path - 1 || memcmp(line + m, path, sizeof path - 1) != 0)
        return false;
    char next = n > m + sizeof path - 1 ? line[m + sizeof path - 1] : '\0';
    return next == ' ' || next == '?';
}

/* The PAC file: https and wss through this proxy at the address the client reached it by,
 * everything else direct (connectd only tunnels). Sent like a refusal: then close. */
static void serve_pac(struct tunnel *t) {
    struct handshake *hs = t->hs;
    union sockaddr_any self;
    socklen_t len = sizeof self;
    char addr[ADDR_TEXT_MAX], body[512];
    if (getsockname(t->client.fd, &self.sa, &len) == -1) {
        refuse(t, 500, "proxy_internal_error", NULL, "getsockname failed", "pac_error");
        return;
    }
    addr_format(&self.sa, true, addr, sizeof addr);
    int bl =
        snprintf(body, sizeof body,
                 "function FindProxyForURL(url, host) {\n"
                 "    if (url.substring(0, 6) == \"https:\" || url.substring(0, 4) == \"wss:\")\n"
                 "        return \"PROXY %s\";\n"
                 "    return \"DIRECT\";\n"
                 "}\n",
                 addr);
    bool head = strcmp(hs->parser.req.method, "HEAD") == 0;
    ev_io_stop(t->srv->loop, &t->client.rw);
    hs->reason = "pac";
    if (!hs->reply)
        hs->reply = malloc(REPLY_MAX);
    if (!hs->reply || bl < 0 || (size_t)bl >= sizeof body) {
        tunnel_close(t, "out_of_memory");
        return;
    }
    int n = snprintf(hs->reply, REPLY_MAX,
                     "HTTP/1.1 200 OK\r\nContent-Type: application/x-ns-proxy-autoconfig\r\n"
                     "Content-Length: %d\r\nCache-Control: max-age=300\r\n"
                     "Connection: close\r\n\r\n%s",
                     bl, head ? "" : body);
    if (n < 0 || n >= REPLY_MAX) {
        tunnel_close(t, "out_of_memory");
        return;
    }
    hs->replylen = (size_t)n;
    t->pac = true;
    STATS_INC(outcome[OUTCOME_PAC]);
    send_reply(t, 200);
}

static void parse_error(struct tunnel *t) {
    const struct http_parser *p = &t->hs->parser;
    if (is_pac_request(t)) {
        set_raw_target(t);
        serve_pac(t);
        return;
    }
    const char *reason = "bad_request";
    if (p->status == 405)
        reason = "method_not_allowed";
    else if (p->status == 414 || p->status == 431)
        reason = "too_large";
    else if (p->status == 505)
        reason = "bad_version";
    set_raw_target(t);
    refuse(t, p->status, p->status == 405 ? "http_request_denied" : "http_request_error", NULL,
           p->reason, reason);
}

/* Make room for more request bytes: start small, double up to max_request_bytes + 1 (one byte
 * over the limit lets the parser see that it was exceeded). */
static int grow_request(struct handshake *hs) {
    if (hs->reqlen < hs->reqalloc)
        return 0;
    size_t n = hs->reqalloc * 2;
    if (n > hs->reqmax)
        n = hs->reqmax;
    if (n <= hs->reqalloc)
        return -1;
    char *p;
    if (hs->req == hs->inline_req) {
        p = malloc(n);
        if (p)
            memcpy(p, hs->req, hs->reqlen);
    } else {
        p = realloc(hs->req, n);
    }
    if (!p)
        return -1;
    hs->req = p;
    hs->reqalloc = n;
    return 0;
}

/* Look at the request bytes received so far. */
static void request_progress(struct tunnel *t) {
    struct handshake *hs = t->hs;
    switch (http_parse(&hs->parser, hs->req, hs->reqlen)) {
    case HTTP_PARSE_MORE:
        return;
    case HTTP_PARSE_ERROR:
        parse_error(t);
        return;
    case HTTP_PARSE_DONE:
        request_complete(t);
        return;
    }
}

static void client_request_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)loop;
    (void)revents;
    struct tunnel *t = container_of(w, struct tunnel, client.rw);
    struct handshake *hs = t->hs;
    if (grow_request(hs) == -1) {
        /* Only reachable when out of memory: the parser refuses before reqmax is full. */
        refuse(t, 500, "proxy_internal_error", NULL, "out of memory", "out_of_memory");
        return;
    }
    ssize_t n = recv(t->client.fd, hs->req + hs->reqlen, hs->reqalloc - hs->reqlen, 0);
    if (n == -1) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        tunnel_close(t, "client_reset");
        return;
    }
    if (n == 0) {
        tunnel_close(t, hs->reqlen ? "client_eof_in_request" : "client_eof");
        return;
    }
    hs->reqlen += (size_t)n;
    request_progress(t);
}

/* While resolving and dialing, notice a client that gives up: peek, so that early data stays
 * in the socket for the relay. Once data is waiting, stop watching (level-triggered). */
static void client_watch_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct tunnel *t = container_of(w, struct tunnel, client.rw);
    char c;
    ssize_t n = recv(t->client.fd, &c, 1, MSG_PEEK);
    if (n == 0) {
        tunnel_close(t, "client_eof");
        return;
    }
    if (n == -1) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        tunnel_close(t, "client_reset");
        return;
    }
    ev_io_stop(loop, w);
}

/* ---- dialing ---- */

static void connected(struct tunnel *t) {
    struct handshake *hs = t->hs;
    if (hs->via != VIA_DIRECT && !hs->parent_ok) {
        ev_io_stop(t->srv->loop, &t->upstream.ww);
        parent_send(t); /* connected to the parent: now ask it for the destination */
        return;
    }
    ev_io_stop(t->srv->loop, &t->upstream.ww);
    ev_io_stop(t->srv->loop, &t->client.rw);
    ev_timer_stop(t->srv->loop, &t->timer);
    t->status = 200;
    /* Set before the relay starts: its first flush may already deliver the 200 (then
     * tunnel_delivered() counts the tunnel) or close it. */
    ev_tstamp now = ev_now(t->srv->loop);
    t->established = now;
    stats_observe(HIST_DIAL, now - hs->dial_started);
    size_t early = hs->reqlen - hs->parser.req.header_len;
    const char *reply = HTTP_CONNECT_OK;
    size_t replylen = HTTP_CONNECT_OK_LEN;
    if (hs->parent_ok && hs->plen > hs->psent) {
        /* The destination spoke first, and its bytes came with the parent's answer: they
         * follow our own 200 (both fit one relay buffer: PARENT_ANSWER_MAX is smaller). */
        size_t extra = hs->plen - hs->psent;
        memmove(hs->pbuf + HTTP_CONNECT_OK_LEN, hs->pbuf + hs->psent, extra);
        memcpy(hs->pbuf, HTTP_CONNECT_OK, HTTP_CONNECT_OK_LEN);
        reply = hs->pbuf;
        replylen = HTTP_CONNECT_OK_LEN + extra;
    }
    if (relay_start(t, reply, replylen, hs->req + hs->parser.req.header_len, early) == -1) {
        t->status = 0;
        tunnel_close(t, "out_of_memory");
        return;
    }
    handshake_free(hs);
    t->hs = NULL;
}

/* An attempt failed: the next address is tried at once (RFC 8305 section 5), not after the
 * attempt delay. */
static void attempt_failed(struct tunnel *t, size_t idx, int err) {
    struct handshake *hs = t->hs;
    char a[ADDR_TEXT_MAX];
    addr_format(&hs->ans.addr[idx].sa, true, a, sizeof a);
    log_debug("connect %s for %s: %s", a, t->target, strerror(err));
    hs->dial_errno = err;
    hs->inflight--;
    ev_timer_stop(t->srv->loop, &hs->stagger);
    dial_next(t);
}

/* The first attempt to connect wins; the others are closed. a is NULL when it is the one on
 * t->upstream. */
static void attempt_won(struct tunnel *t, struct attempt *a) {
    struct handshake *hs = t->hs;
    size_t idx = hs->up_idx;
    if (a) {
        ev_io_stop(t->srv->loop, &a->w);
        if (t->upstream.fd != -1) {
            ev_io_stop(t->srv->loop, &t->upstream.ww);
            close(t->upstream.fd);
        }
        t->upstream.fd = a->fd;
        a->fd = -1;
        idx = a->idx;
        ev_io_set(&t->upstream.ww, t->upstream.fd, EV_WRITE); /* inactive: the relay's */
    }
    memcpy(&t->up_addr, &hs->ans.addr[idx], hs->ans.len[idx]);
    close_extras(t);
    connected(t);
}

static void connect_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct tunnel *t = container_of(w, struct tunnel, upstream.ww);
    int err = net_connect_result(t->upstream.fd);
    if (err == 0) {
        attempt_won(t, NULL);
        return;
    }
    ev_io_stop(loop, w);
    close(t->upstream.fd);
    t->upstream.fd = -1;
    attempt_failed(t, t->hs->up_idx, err);
}

static void extra_connect_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct attempt *a = container_of(w, struct attempt, w);
    int err = net_connect_result(a->fd);
    if (err == 0) {
        attempt_won(a->t, a);
        return;
    }
    ev_io_stop(loop, w);
    close(a->fd);
    a->fd = -1;
    attempt_failed(a->t, a->idx, err);
}

static void stagger_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)loop;
    (void)revents;
    struct handshake *hs = container_of(w, struct handshake, stagger);
    dial_next(hs->extra[0].t);
}

/* Close the attempts beyond t->upstream's and stop the attempt timer. They exist only while
 * CONNECTING (before, the slots are not even initialised). */
static void close_extras(struct tunnel *t) {
    struct handshake *hs = t->hs;
    struct ev_loop *loop = t->srv->loop;
    if (!hs || t->state != TUNNEL_CONNECTING)
        return;
    for (size_t k = 0; k < HE_EXTRA; k++) {
        struct attempt *a = &hs->extra[k];
        if (a->fd != -1) {
            ev_io_stop(loop, &a->w);
            close(a->fd);
            a->fd = -1;
        }
    }
    hs->inflight = 0;
    ev_timer_stop(loop, &hs->stagger);
}

/* Close every attempt under way, t->upstream's too. */
static void dial_abort(struct tunnel *t) {
    if (t->upstream.fd != -1) {
        ev_io_stop(t->srv->loop, &t->upstream.ww);
        close(t->upstream.fd);
        t->upstream.fd = -1;
    }
    close_extras(t);
}

/* Interleave the address families, starting with the resolver's first choice (RFC 8305
 * section 4: c-ares has sorted them by RFC 6724), keeping each family's order. */
static void interleave(struct dns_answer *ans) {
    struct dns_answer out;
    size_t n = ans->n, i[2] = {0, 0}, k = 0;
    int first = n ? ans->addr[0].sa.sa_family : AF_INET6;
    out.n = n;
    while (k < n) {
        for (int f = 0; f < 2 && k < n; f++) {
            int fam = f == 0 ? first : (first == AF_INET6 ? AF_INET : AF_INET6);
            while (i[f] < n && ans->addr[i[f]].sa.sa_family != fam)
                i[f]++;
            if (i[f] < n) {
                out.addr[k] = ans->addr[i[f]];
                out.len[k] = ans->len[i[f]];
                k++;
                i[f]++;
            }
        }
    }
    *ans = out;
}

/* The addresses are known: dial them within [timeouts] connect, all attempts together. */
static void dial_begin(struct tunnel *t) {
    struct handshake *hs = t->hs;
    ev_tstamp budget = t->parent ? t->parent->connect_timeout : t->gen->cfg.timeout_connect;
    interleave(&hs->ans);
    hs->next_addr = 0;
    hs->connect_deadline = ev_now(t->srv->loop) + budget;
    for (size_t k = 0; k < HE_EXTRA; k++) {
        hs->extra[k].fd = -1;
        hs->extra[k].t = t;
    }
    ev_init(&hs->stagger, stagger_cb);
    t->state = TUNNEL_CONNECTING;
    arm_timer(t, budget);
    dial_next(t);
}

static void dial_failed(struct tunnel *t) {
    struct handshake *hs = t->hs;
    if (hs->via != VIA_DIRECT) {
        int e = hs->dial_errno;
        if (e == 0 && hs->loop_hit)
            parent_failed(t, 502, "proxy_loop_detected", "its address is this proxy", "proxy_loop");
        else if (e == ETIMEDOUT || e == 0)
            parent_failed(t, 504, "connection_timeout", "connect timed out", "parent_error");
        else if (e == ECONNREFUSED)
            parent_failed(t, 502, "connection_refused", "connection refused", "parent_error");
        else
            parent_failed(t, 502, "destination_unavailable", strerror(e), "parent_error");
        return;
    }
    switch (hs->dial_errno) {
    case 0:
        break;
    case ETIMEDOUT:
        refuse(t, 504, "connection_timeout", NULL, "upstream did not answer in time",
               "connect_timeout");
        return;
    case ECONNREFUSED:
        refuse(t, 502, "connection_refused", NULL, "connection refused", "connect_refused");
        return;
    default:
        refuse(t, 502, "destination_unavailable", NULL, strerror(hs->dial_errno), "connect_failed");
        return;
    }
    /* No address was dialed: every one was refused by policy. */
    if (hs->loop_hit) {
        refuse(t, 502, "proxy_loop_detected", NULL, "destination is this proxy", "proxy_loop");
        return;
    }
    if (hs->deny_class && !hs->denied_host) {
        char details[64];
        snprintf(details, sizeof details, "destination is %s", hs->deny_class);
        refuse(t, 403, "destination_ip_prohibited", NULL, details, "denied_private");
        return;
    }
    refuse(t, 403, "http_request_denied", NULL, "destination not allowed", "denied_host");
}

/* The checks on the exact address about to be dialed (so DNS rebinding cannot slip past):
 * our own listeners first (whatever deny_private says), then the rule that allowed the name,
 * or the rules that needed an address, or proxy.ini's lists. */
static enum verdict addr_verdict(struct tunnel *t, const struct sockaddr *sa, const char **cls) {
    struct handshake *hs = t->hs;
    const struct config *cfg = &t->gen->cfg;
    const struct rule *r = hs->rule;

    if (loopguard_hits(t->srv->loopguard, sa, ev_now(t->srv->loop))) {
        t->rule = "loop";
        return VERDICT_LOOP;
    }
    if (hs->via != VIA_DIRECT)
        return VERDICT_ALLOW; /* a parent's address: the operator chose it */
    if (!r && hs->rules_pending) {
        struct rule_query q;
        size_t idx;
        rule_query(t, &q);
        if (rules_match_addr(&cfg->rules, &q, sa, hs->rule_from, &idx)) {
            r = &cfg->rules.v[idx];
            t->rule = r->name;
            if (r->action == RULE_DENY)
                return VERDICT_DENY;
        } else if (hs->ini_target == POLICY_TARGET_DENY_PORT) {
            t->rule = "allow_ports";
            return VERDICT_DENY;
        } else if (hs->ini_target == POLICY_TARGET_DENY_HOST) {
            t->rule = "allow_hosts";
            return VERDICT_DENY;
        }
    }
    if (r) {
        const char *c = cfg->access.deny_private ? addr_reserved_class(sa) : NULL;
        if (c && !rules_names_addr(r, sa)) {
            *cls = c;
            t->rule = "deny_private";
            return VERDICT_PRIVATE;
        }
        t->rule = r->name;
        return VERDICT_ALLOW;
    }
    switch (policy_check_addr(&cfg->access, sa, hs->name_allowed, cls)) {
    case POLICY_ADDR_ALLOW:
        t->rule = "allow_hosts";
        return VERDICT_ALLOW;
    case POLICY_ADDR_PRIVATE:
        t->rule = "deny_private";
        return VERDICT_PRIVATE;
    case POLICY_ADDR_DENY_HOST:
        t->rule = "deny_hosts";
        return VERDICT_DENY;
    }
    return VERDICT_DENY;
}

/* Start an attempt on the next address policy allows, in a free slot; then, while addresses
 * remain, the next one follows after [timeouts] happy_eyeballs unless this one fails first. With
 * nothing left to try and nothing under way, the dial has failed. */
static void dial_next(struct tunnel *t) {
    struct handshake *hs = t->hs;
    ev_tstamp now = ev_now(t->srv->loop);
    struct attempt *slot = NULL;
    if (t->upstream.fd != -1) {
        for (size_t k = 0; k < HE_EXTRA && !slot; k++)
            if (hs->extra[k].fd == -1)
                slot = &hs->extra[k];
        if (!slot)
            return; /* all slots busy: the next failure or the deadline decides */
    }
    while (hs->next_addr < hs->ans.n) {
        size_t i = hs->next_addr++;
        const struct sockaddr *sa = &hs->ans.addr[i].sa;
        const char *cls = NULL;
        switch (addr_verdict(t, sa, &cls)) {
        case VERDICT_ALLOW:
            break;
        case VERDICT_PRIVATE:
            hs->deny_class = cls;
            continue;
        case VERDICT_DENY:
            hs->denied_host = true;
            continue;
        case VERDICT_LOOP:
            hs->loop_hit = true;
            continue;
        }
        int fd = net_connect_start(sa, hs->ans.len[i]);
        if (fd == -1) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM ||
                errno == EADDRNOTAVAIL) {
                log_warn("connect for %s: %s", t->target, strerror(errno));
                refuse(t, 503, "proxy_internal_error", NULL, "proxy out of resources", "overload");
                return;
            }
            hs->dial_errno = errno;
            continue;
        }
        if (hs->dial_started == 0)
            hs->dial_started = now;
        hs->inflight++;
        if (!slot) {
            t->upstream.fd = fd;
            hs->up_idx = i;
            ev_io_set(&t->upstream.ww, fd, EV_WRITE);
            ev_set_cb(&t->upstream.ww, connect_cb);
            ev_io_start(t->srv->loop, &t->upstream.ww);
        } else {
            slot->fd = fd;
            slot->idx = i;
            ev_io_init(&slot->w, extra_connect_cb, fd, EV_WRITE);
            ev_io_start(t->srv->loop, &slot->w);
        }
        if (hs->next_addr < hs->ans.n) {
            ev_timer_set(&hs->stagger, t->gen->cfg.timeout_happy_eyeballs, 0.);
            ev_timer_start(t->srv->loop, &hs->stagger);
        }
        return;
    }
    if (hs->inflight == 0)
        dial_failed(t);
}

/* ---- timer ---- */

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
    (void)revents;
    struct tunnel *t = container_of(w, struct tunnel, timer);
    switch (t->state) {
    case TUNNEL_READ_PROXY:
        proxy_header_failed(t, "header not received in time", "proxy_header_timeout");
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
        if (ev_is_active(&t->client.ww) || ev_is_active(&t->upstream.ww)) {
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
    if (hs->reqlen > 0)
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

void tunnel_accept(struct server *srv, int fd, const struct sockaddr *peer, bool proxy_protocol) {
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
    ev_init(&t->upstream.ww, connect_cb);
    ev_init(&t->timer, timer_cb);
    t->next = srv->live;
    if (srv->live)
        srv->live->prev = t;
    srv->live = t;
    t->state = proxy_protocol ? TUNNEL_READ_PROXY : TUNNEL_READ_REQUEST;
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
    client_request_cb(srv->loop, &t->client.rw, EV_READ);
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
    char line[1900], lb[ADDR_TEXT_MAX + 10] = "", parent[48] = "";
    if (t->balancer.sa.sa_family != 0) {
        memcpy(lb, " balancer=", 10);
        addr_format(&t->balancer.sa, true, lb + 10, sizeof lb - 10);
    }
    if (t->parent)
        snprintf(parent, sizeof parent, " parent=%s", t->parent->name);
    int n = snprintf(line, sizeof line,
                     "client=%s user=%s target=%s upstream=%s status=%d up=%llu down=%llu "
                     "duration=%.3f reason=%s rule=%s%s%s",
                     client, user, target, up, status, (unsigned long long)t->upstream.sent,
                     (unsigned long long)down, ev_now(t->srv->loop) - t->started, reason, rule, lb,
                     parent);
    if (n > 0)
        log_access(line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static void endpoint_close(struct server *srv, struct endpoint *e) {
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
    endpoint_close(srv, &t->client);
    endpoint_close(srv, &t->upstream);
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
            t->state == TUNNEL_AUTHENTICATING || t->state == TUNNEL_RESOLVING ||
            t->state == TUNNEL_CONNECTING || t->state == TUNNEL_PARENT)
            refuse(t, 503, "proxy_internal_response", NULL, "proxy is shutting down", "shutdown");
    }
}
