/* dial: the way to the destination (RESOLVING, CONNECTING, PARENT). The request's route is
 * tried choice by choice (direct, or a parent proxy): resolve the name, judge each address,
 * dial them Happy-Eyeballs style, and through a parent send our own CONNECT and read its
 * answer. The first success starts the relay (connected()); when every choice fails, the last
 * failure is the refusal. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "addr.h"
#include "container.h"
#include "dns.h"
#include "http.h"
#include "log.h"
#include "loopguard.h"
#include "net.h"
#include "policy.h"
#include "rules.h"
#include "stats.h"
#include "tunnel.h"
#include "tunnel_int.h"

static void dial_begin(struct tunnel *t);
static void dial_next(struct tunnel *t);
static void connected(struct tunnel *t);

/* ---- resolving ---- */

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
void route_next(struct tunnel *t) {
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
void parent_failed(struct tunnel *t, int status, const char *error, const char *details,
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
void close_extras(struct tunnel *t) {
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
void dial_abort(struct tunnel *t) {
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
    for (size_t k = 0; k < HE_EXTRA; k++) {
        hs->extra[k].fd = -1;
        hs->extra[k].t = t;
    }
    ev_init(&hs->stagger, stagger_cb);
    t->state = TUNNEL_CONNECTING;
    arm_timer(t, budget);
    dial_next(t);
}

void dial_failed(struct tunnel *t) {
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
