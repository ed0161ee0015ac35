/* request: reading the client's request and judging it (READ_REQUEST, AUTHENTICATING).
 * Bytes are read until the header block parses; a bad request is refused (or, for
 * GET /proxy.pac, answered with the PAC file); a good one is checked against Via (loops),
 * credentials and policy, and handed to route_next() (dial.c) to find its way. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "addr.h"
#include "auth.h"
#include "auth_service.h"
#include "container.h"
#include "http.h"
#include "log.h"
#include "policy.h"
#include "rules.h"
#include "stats.h"
#include "tunnel.h"
#include "transport.h"
#include "tunnel_int.h"

/* ---- the target, as the access log names it ---- */

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
void set_raw_target(struct tunnel *t) {
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

/* ---- policy and credentials ---- */

void rule_query(const struct tunnel *t, struct rule_query *q) {
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
void auth_step(struct tunnel *t) {
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

/* ---- reading ---- */

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

/* The host part of the PAC request's Host header, if it is a plain name or IP literal (it goes
 * into JavaScript: nothing else passes). */
static bool pac_host_header(const struct tunnel *t, char *out, size_t outlen) {
    char v[256];
    const struct handshake *hs = t->hs;
    /* The parser stopped at the method (not CONNECT): find the header block's end here. It
     * normally came in the same segment; if not, the address will do. */
    const char *end = memmem(hs->req, hs->reqlen, "\r\n\r\n", 4);
    if (!end || !http_header_values(hs->req, (size_t)(end - hs->req) + 4, "host", v, sizeof v))
        return false;
    size_t n = 0;
    if (v[0] == '[') { /* [v6]:port */
        const char *close = strchr(v, ']');
        if (!close)
            return false;
        n = (size_t)(close - v) + 1;
        for (size_t i = 1; i + 1 < n; i++)
            if (!strchr("0123456789abcdefABCDEF:.", v[i]))
                return false;
    } else {
        while (v[n] && (isalnum((unsigned char)v[n]) || v[n] == '.' || v[n] == '-'))
            n++;
        if (v[n] != '\0' && v[n] != ':')
            return false;
    }
    if (n == 0 || n >= outlen)
        return false;
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

/* What the PAC file names: with a tls listener, "HTTPS host:port" (the TLS port; the host the
 * client used, so that it matches the certificate), else "PROXY" and the address this client
 * reached. Credentials never go to a plain port when a TLS one exists: no plain fallback. */
static int pac_proxy(struct tunnel *t, char *out, size_t outlen) {
    const struct config *cfg = &t->gen->cfg;
    union sockaddr_any self;
    socklen_t len = sizeof self;
    char addr[ADDR_TEXT_MAX], host[256];
    if (getsockname(t->client.fd, &self.sa, &len) == -1)
        return -1;
    const struct listen_addr *tls = NULL;
    for (size_t i = 0; i < cfg->nlisten && !tls; i++)
        if (cfg->listen[i].tls && !cfg->listen[i].proxy_protocol)
            tls = &cfg->listen[i];
    if (!tls) {
        addr_format(&self.sa, true, addr, sizeof addr);
        snprintf(out, outlen, "PROXY %s", addr);
        return 0;
    }
    const struct sockaddr *where = (const struct sockaddr *)&tls->ss;
    const struct sockaddr_in6 *w6 = (const struct sockaddr_in6 *)where;
    const struct sockaddr_in *w4 = (const struct sockaddr_in *)where;
    bool any = where->sa_family == AF_INET6 ? IN6_IS_ADDR_UNSPECIFIED(&w6->sin6_addr)
                                            : w4->sin_addr.s_addr == htonl(INADDR_ANY);
    if (!pac_host_header(t, host, sizeof host)) {
        /* No usable Host: the TLS listener's own address, or this connection's when it
         * listens on every address. */
        addr_format(any ? &self.sa : where, false, addr, sizeof addr);
        snprintf(host, sizeof host, strchr(addr, ':') ? "[%s]" : "%s", addr);
    }
    snprintf(out, outlen, "HTTPS %s:%u", host, (unsigned)addr_port(where));
    return 0;
}

/* The PAC file: https and wss through this proxy, everything else direct (connectd only
 * tunnels). Sent like a refusal: then close. */
static void serve_pac(struct tunnel *t) {
    struct handshake *hs = t->hs;
    char proxy[300], body[700];
    if (pac_proxy(t, proxy, sizeof proxy) != 0) {
        refuse(t, 500, "proxy_internal_error", NULL, "getsockname failed", "pac_error");
        return;
    }
    int bl =
        snprintf(body, sizeof body,
                 "function FindProxyForURL(url, host) {\n"
                 "    if (url.substring(0, 6) == \"https:\" || url.substring(0, 4) == \"wss:\")\n"
                 "        return \"%s\";\n"
                 "    return \"DIRECT\";\n"
                 "}\n",
                 proxy);
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
void request_progress(struct tunnel *t) {
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

void client_request_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct tunnel *t = container_of(w, struct tunnel, client.rw);
    struct handshake *hs = t->hs;
    if (grow_request(hs) == -1) {
        /* Only reachable when out of memory: the parser refuses before reqmax is full. */
        refuse(t, 500, "proxy_internal_error", NULL, "out of memory", "out_of_memory");
        return;
    }
    ssize_t n = tp_recv(loop, &t->client, hs->req + hs->reqlen, hs->reqalloc - hs->reqlen);
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
    /* A TLS session may hold more of the request than the buffer took: come back for it. */
    if (t->state == TUNNEL_READ_REQUEST && t->client.tls)
        tp_read_on(loop, &t->client);
}
