/* tunnel internals: what tunnel.c (life and close), request.c (reading and judging the request)
 * and dial.c (the way to the destination) share, and nobody else needs. */
#ifndef CONNECTD_TUNNEL_INT_H
#define CONNECTD_TUNNEL_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ev.h>

#include "dns.h"
#include "http.h"
#include "policy.h"
#include "tunnel.h"

struct auth_wait;
struct rule;
struct rule_query;

#define LINGER_SECONDS    2.0  /* after a refusal, wait this long for the client to close */
#define REPLY_SECONDS     5.0  /* a refusal must be written within this */
#define REFUSING_MAX      1024 /* connections being refused at once; beyond, just close */
#define REPLY_MAX         1024
#define REQ_INITIAL       4096 /* a CONNECT plus a TLS ClientHello usually fits */
#define STALL_CHECK       1.0  /* seconds between socket checks while a relay direction waits */
#define HE_EXTRA          3    /* connect attempts at once beyond the first (Happy Eyeballs) */
#define PARENT_ANSWER_MAX 8192 /* a parent's answer to our CONNECT: status line and headers */

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
    bool loop_hit;                       /* an address was one of our own listeners */
    bool name_allowed;                   /* policy matched the name (not only a CIDR) */
    int dial_errno;                      /* last connect failure, 0 if none */
    const char *deny_class;              /* set when an address was refused as private */
    bool denied_host;                    /* set when an address was refused by deny_hosts */
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
    const char *reason;  /* close reason once the refusal is sent */
    int deferred_status; /* a refusal built before the TLS handshake ended: sent after it */
    char inline_req[];   /* the first REQ_INITIAL bytes of the request, in the same allocation */
};

/* ---- tunnel.c ---- */

void handshake_free(struct handshake *hs);
/* (Re)start the tunnel's one timer: the current state's deadline, `after` seconds from now. */
void arm_timer(struct tunnel *t, ev_tstamp after);
/* Write hs->reply[0..replylen) (a refusal or the PAC file), then linger and close. */
void send_reply(struct tunnel *t, int status);
/* Stop the handshake (DNS, credentials, dials) and answer the client with an error from the
 * response table (http_build_error), then linger and close. */
void refuse(struct tunnel *t, int status, const char *proxy_error, const char *params,
            const char *details, const char *reason);
/* refuse() with 407 and the challenge that makes a browser ask for (or resend) credentials. */
void refuse_auth(struct tunnel *t, const char *details, const char *reason);

/* ---- request.c ---- */

/* The reader of the client's request (TUNNEL_READ_REQUEST). */
void client_request_cb(struct ev_loop *loop, ev_io *w, int revents);
/* Look at the request bytes received so far: wait, refuse, or go on to credentials. */
void request_progress(struct tunnel *t);
/* Copy the raw request line's target (up to the second space) for logging a bad request. */
void set_raw_target(struct tunnel *t);
/* Credentials (when [auth] is on), then policy: a held-back client comes back here. */
void auth_step(struct tunnel *t);
/* Fill a policy-rule query with the client, the user and the requested host and port. */
void rule_query(const struct tunnel *t, struct rule_query *q);

/* ---- dial.c ---- */

/* The next choice of the request's route: direct, or a parent; refuses when none is left. */
void route_next(struct tunnel *t);
/* The current parent did not work out: mark it down and try the route's next choice. */
void parent_failed(struct tunnel *t, int status, const char *error, const char *details,
                   const char *reason);
/* No attempt connected (or the connect budget is spent): refuse, or fail over to the next
 * choice of the route, according to hs->dial_errno and what policy refused. */
void dial_failed(struct tunnel *t);
/* Close every connect attempt under way, t->upstream's too. */
void dial_abort(struct tunnel *t);
/* Close the attempts beyond t->upstream's and stop the attempt timer (only while CONNECTING). */
void close_extras(struct tunnel *t);

#endif
