/* config: proxy.ini (read with inih) into struct config, with defaults and validation.
 * No ev.h and no sockets: loading touches only the file it is given. */
#ifndef CONNECTD_CONFIG_H
#define CONNECTD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "auth.h"
#include "policy.h"
#include "rules.h"

#define CONFIG_ERR_MAX 512

enum log_level {
    LOG_LEVEL_ERROR = 0,
    LOG_LEVEL_WARN,
    LOG_LEVEL_INFO,
    LOG_LEVEL_DEBUG,
};

/* How the relay moves bytes: auto = copy through a user-space buffer at first, splice(2)
 * through a pipe once a direction carries bulk; splice / copy force one path. */
enum relay_mode {
    RELAY_AUTO = 0,
    RELAY_SPLICE,
    RELAY_COPY,
};

struct listen_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    bool admin; /* an [admin] listen address: metrics, health, live tunnels; never tunnels */
    bool proxy_protocol; /* "proxy-protocol": clients arrive behind a PROXY v1/v2 header */
    bool tls;            /* "tls": clients speak TLS to us first (an HTTPS proxy) */
};

/* [tls]: what a "tls" listener presents. The files are read with the config (before the
 * privilege drop); tls.c turns them into an OpenSSL context and checks they belong together. */
struct tls_config {
    char *certificate;                   /* PEM: the certificate, then its intermediates */
    char *key;                           /* PEM private key */
    char *ocsp_staple;                   /* DER OCSP response to staple; NULL = none */
    char *cert_pem, *key_pem, *ocsp_der; /* their contents */
    size_t cert_pem_len, key_pem_len, ocsp_der_len;
    bool key_unreadable; /* key exists but we may not read it (a reload after the drop) */
    int min_version;     /* 12 or 13 */
    char alpn[64];       /* wire format: length-prefixed protocol names */
    size_t alpn_len;
    bool session_tickets; /* stateless resumption */
};

/* [http2]: HTTP/2 clients (ALPN h2 on a tls listener). A window is what a client may send
 * before connectd has passed it on: the bound on what one stream (or one connection) holds. */
struct h2_config {
    unsigned max_streams;       /* SETTINGS_MAX_CONCURRENT_STREAMS */
    unsigned stream_window;     /* SETTINGS_INITIAL_WINDOW_SIZE, bytes */
    unsigned connection_window; /* the connection's receive window, bytes */
};

/* [parent NAME]: a proxy to send tunnels through (it gets connectd's own CONNECT). */
struct parent {
    char *name;
    char *host; /* a name (resolved when dialed) or an IP literal */
    unsigned short port;
    char *credentials_file; /* "user:password"; NULL = none */
    char *authorization;    /* "Basic base64(user:password)", made from it; NULL = none */
    double connect_timeout; /* connect and the parent's answer, seconds */
    double backoff;         /* a parent that failed is skipped for this long */
    int line;               /* of its [parent NAME] header, for messages */
    int seen[4];            /* lines where its keys were set */
};

/* Where an allowed request goes: parents' indexes in struct config, DIRECT for no parent. */
#define VIA_DIRECT (-1)

/* [admin]: while parsing, its own listen list; after loading, its addresses are appended to
 * struct config's listen (marked admin) and admin.listen is NULL. */
struct admin_config {
    struct listen_addr *listen;
    size_t nlisten;
    struct cidr_list allow_clients; /* who may use it; loopback by default */
    char *token_file;               /* NULL = no token required */
    char *token;                    /* its content, loaded with the config */
};

struct config {
    /* [server] */
    struct listen_addr *listen;
    size_t nlisten;
    enum relay_mode relay;
    unsigned workers; /* processes; 0 = auto (one per online CPU) */
    char *user;       /* drop to this user after binding when started as root; NULL = none */
    bool pac;         /* answer GET /proxy.pac with a PAC file naming this proxy */
    struct cidr_list proxy_protocol_from; /* who may send a PROXY header (load balancers) */
    /* [access] */
    struct access_config access;
    char *policy_file;     /* [access] policy, resolved against the ini file's directory */
    struct rule_set rules; /* loaded from policy_file; empty without one */
    /* [dns] */
    char *dns_servers; /* NULL or "" = system resolv.conf; else c-ares CSV "1.2.3.4:53,[::1]:53" */
    unsigned dns_cache;
    /* [timeouts], seconds */
    double timeout_handshake, timeout_dns, timeout_connect, timeout_idle, timeout_shutdown;
    double timeout_grace; /* after SIGTERM: /healthz says 503 but new clients are still served */
    double timeout_happy_eyeballs; /* RFC 8305 connection attempt delay */
    /* [auth] */
    char *users_file;        /* NULL = no authentication */
    struct auth_users users; /* loaded from users_file */
    char *realm;             /* Basic realm, "connectd" by default */
    /* [limits] */
    unsigned max_connections;
    unsigned per_client_connections;
    unsigned per_client_rate;
    size_t max_request_bytes;
    /* [log] */
    enum log_level log_level;
    char *access_log; /* "stderr", "off", or a path */
    /* [admin] */
    struct admin_config admin;
    /* [tls] */
    struct tls_config tls;
    struct h2_config h2;
    bool has_tls_listener; /* some [server] listen address has the "tls" option */
    /* [parent NAME] sections, and [access] via: the default route (VIA_DIRECT or indexes) */
    struct parent *parents;
    size_t nparents;
    int *via;
    size_t nvia;
    char *via_text; /* [access] via as written, resolved once every parent is read */
};

/* Fill every field with the documented default (listen 127.0.0.1:3128, allow_ports 443,
 * allow_hosts *, allow_clients 127.0.0.0/8 + ::1, deny_private yes, ...). */
void config_defaults(struct config *c);

/* Start from config_defaults() and apply the file. The policy file and users file it names
 * (relative paths are taken from the ini file's directory) are loaded too; their errors carry
 * their own FILE:LINE[:COLUMN]. On error returns -1 and writes "FILE:LINE:
 * [section] key: what is wrong" into err (or "FILE: cannot open: <strerror>"); *c is then freed and
 * zeroed. */
int config_load_file(const char *path, struct config *c, char *err, size_t errlen);

/* Same, from a string; name is used in messages in place of a file name. */
int config_load_string(const char *text, const char *name, struct config *c, char *err,
                       size_t errlen);

void config_free(struct config *c);

/* A reload running without the rights to read [tls] key (the daemon dropped root): when the
 * path is the one old was loaded from, take old's copy of the key. Returns 1 when it did, 0 when
 * there was nothing to do, -1 when out of memory. */
int config_keep_tls_key(struct config *c, const struct config *old);

/* Parse "250ms", "10s", "5m", "1h" (a unit is required; "0" alone is allowed and means zero).
 * Returns 0 and sets *seconds, or -1. */
int config_parse_duration(const char *s, double *seconds);

#endif
