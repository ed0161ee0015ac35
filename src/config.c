/* config: proxy.ini (read with inih) into struct config, with defaults and validation.
 * No ev.h and no sockets: loading touches only the file it is given.
 *
 * inih is fed through ini_parse_stream() with our own line reader, which
 *   - counts lines, so every message carries FILE:LINE (the packaged inih does not pass line
 *     numbers to the handler);
 *   - refuses lines longer than inih's line buffer, which inih would otherwise split silently;
 *   - checks section headers as they come, so an unknown but empty section is reported too
 *     (inih only calls the handler for keys);
 *   - strips leading whitespace, so an indented "key = value" is an ordinary key instead of an
 *     inih multi-line continuation of the previous key, and a value-only line is a syntax error.
 * The first error stops parsing; nothing after it is applied. */
#include "config.h"
#include "addr.h"
#include "http.h"
#include "policy_yaml.h"
#include "text.h"

#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define DEFAULT_LISTEN        "127.0.0.1:3128"
#define DEFAULT_ALLOW_PORTS   "443"
#define DEFAULT_ALLOW_HOSTS   "*"
#define DEFAULT_ALLOW_CLIENTS "127.0.0.0/8, ::1"
#define DEFAULT_ACCESS_LOG    "stderr"
#define DEFAULT_REALM         "connectd"
#define DEFAULT_USER          "nobody" /* never stay root by accident */
#define DNS_DEFAULT_PORT      53
#define MAX_DURATION          (24.0 * 3600.0)
#define FILE_MAX              ((size_t)1024 * 1024)
#define TLS_FILE_MAX          ((size_t)256 * 1024) /* a long chain, or a large OCSP response */
/* inih's line buffer must hold the line plus '\r', '\n' and '\0' (ini.h); a longer line would be
 * cut in two and the second half parsed as a line of its own. */
#define LINE_MAX_LEN (INI_MAX_LINE - 3)
#define WHY_MAX      256
#define ITEM_MAX     256

enum key_id {
    K_LISTEN = 0,
    K_WORKERS,
    K_USER,
    K_PAC,
    K_RELAY,
    K_ALLOW_PORTS,
    K_ALLOW_HOSTS,
    K_DENY_HOSTS,
    K_ALLOW_CLIENTS,
    K_DENY_PRIVATE,
    K_POLICY,
    K_DNS_SERVERS,
    K_DNS_CACHE,
    K_AUTH_USERS_FILE,
    K_AUTH_REALM,
    K_TIMEOUT_HANDSHAKE,
    K_TIMEOUT_DNS,
    K_TIMEOUT_CONNECT,
    K_TIMEOUT_IDLE,
    K_TIMEOUT_SHUTDOWN,
    K_MAX_CONNECTIONS,
    K_PER_CLIENT_CONNECTIONS,
    K_PER_CLIENT_RATE,
    K_MAX_REQUEST_BYTES,
    K_LOG_LEVEL,
    K_ACCESS_LOG,
    K_ADMIN_LISTEN,
    K_ADMIN_ALLOW_CLIENTS,
    K_ADMIN_TOKEN_FILE,
    K_TIMEOUT_GRACE,
    K_PROXY_PROTOCOL_FROM,
    K_TIMEOUT_HAPPY_EYEBALLS,
    K_VIA,
    K_TLS_CERTIFICATE,
    K_TLS_KEY,
    K_TLS_MIN_VERSION,
    K_TLS_ALPN,
    K_TLS_OCSP_STAPLE,
    K_TLS_SESSION_TICKETS,
    K_H2_MAX_STREAMS,
    K_H2_STREAM_WINDOW,
    K_H2_CONNECTION_WINDOW,
    K_COUNT
};

static const struct key_def {
    const char *section;
    const char *name;
} keys[K_COUNT] = {
    [K_LISTEN] = {"server", "listen"},
    [K_WORKERS] = {"server", "workers"},
    [K_USER] = {"server", "user"},
    [K_PAC] = {"server", "pac"},
    [K_RELAY] = {"server", "relay"},
    [K_ALLOW_PORTS] = {"access", "allow_ports"},
    [K_ALLOW_HOSTS] = {"access", "allow_hosts"},
    [K_DENY_HOSTS] = {"access", "deny_hosts"},
    [K_ALLOW_CLIENTS] = {"access", "allow_clients"},
    [K_DENY_PRIVATE] = {"access", "deny_private"},
    [K_POLICY] = {"access", "policy"},
    [K_DNS_SERVERS] = {"dns", "servers"},
    [K_DNS_CACHE] = {"dns", "cache"},
    [K_AUTH_USERS_FILE] = {"auth", "users_file"},
    [K_AUTH_REALM] = {"auth", "realm"},
    [K_TIMEOUT_HANDSHAKE] = {"timeouts", "handshake"},
    [K_TIMEOUT_DNS] = {"timeouts", "dns"},
    [K_TIMEOUT_CONNECT] = {"timeouts", "connect"},
    [K_TIMEOUT_IDLE] = {"timeouts", "idle"},
    [K_TIMEOUT_SHUTDOWN] = {"timeouts", "shutdown"},
    [K_MAX_CONNECTIONS] = {"limits", "max_connections"},
    [K_PER_CLIENT_CONNECTIONS] = {"limits", "per_client_connections"},
    [K_PER_CLIENT_RATE] = {"limits", "per_client_rate"},
    [K_MAX_REQUEST_BYTES] = {"limits", "max_request_bytes"},
    [K_LOG_LEVEL] = {"log", "level"},
    [K_ACCESS_LOG] = {"log", "access_log"},
    [K_ADMIN_LISTEN] = {"admin", "listen"},
    [K_ADMIN_ALLOW_CLIENTS] = {"admin", "allow_clients"},
    [K_ADMIN_TOKEN_FILE] = {"admin", "token_file"},
    [K_TIMEOUT_GRACE] = {"timeouts", "grace"},
    [K_PROXY_PROTOCOL_FROM] = {"server", "proxy_protocol_from"},
    [K_TIMEOUT_HAPPY_EYEBALLS] = {"timeouts", "happy_eyeballs"},
    [K_VIA] = {"access", "via"},
    [K_TLS_CERTIFICATE] = {"tls", "certificate"},
    [K_TLS_KEY] = {"tls", "key"},
    [K_TLS_MIN_VERSION] = {"tls", "min_version"},
    [K_TLS_ALPN] = {"tls", "alpn"},
    [K_TLS_OCSP_STAPLE] = {"tls", "ocsp_staple"},
    [K_TLS_SESSION_TICKETS] = {"tls", "session_tickets"},
    [K_H2_MAX_STREAMS] = {"http2", "max_concurrent_streams"},
    [K_H2_STREAM_WINDOW] = {"http2", "stream_window"},
    [K_H2_CONNECTION_WINDOW] = {"http2", "connection_window"},
};

static const char *const sections[] = {"server", "access", "dns",   "timeouts", "limits",
                                       "log",    "auth",   "admin", "tls",      "http2"};

struct ctx {
    struct config *c;
    const char *name; /* file name for messages */
    const char *text; /* whole input, and the reader's position in it */
    size_t len, pos;
    int lineno;        /* line the reader handed to inih last */
    int seen[K_COUNT]; /* line where each key was set, 0 = not yet */
    bool failed;       /* first error recorded in err; stop */
    char *err;
    size_t errlen;
};

/* Record the first error only. */
__attribute__((format(printf, 2, 3))) static void fail(struct ctx *x, const char *fmt, ...) {
    va_list ap;

    if (x->failed)
        return;
    x->failed = true;
    if (!x->err || x->errlen == 0)
        return;
    va_start(ap, fmt);
    (void)vsnprintf(x->err, x->errlen, fmt, ap);
    va_end(ap);
}

static bool is_digit(char ch) {
    return ch >= '0' && ch <= '9';
}

static size_t count_items(const char *s) {
    size_t n = 1;

    for (; *s; s++)
        if (*s == ',')
            n++;
    return n;
}

/* ---- value parsers ---- */

/* Strictly decimal: digits only (no sign, no space, no 0x), no overflow, within [min, max]. */
static int parse_uint(const char *v, unsigned long min, unsigned long max, unsigned long *out) {
    unsigned long x;
    char *end;

    if (!is_digit(v[0]))
        return -1;
    errno = 0;
    x = strtoul(v, &end, 10);
    if (errno != 0 || *end != '\0' || x < min || x > max)
        return -1;
    *out = x;
    return 0;
}

static int parse_bool(const char *v, bool *out) {
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(v, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(v, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

int config_parse_duration(const char *s, double *seconds) {
    double ip = 0, frac = 0, scale = 1, v;
    size_t nd = 0, fd = 0;
    const char *p = s;

    if (!s)
        return -1;
    /* Digits are bounded so the value stays exact in a double; nobody needs more. */
    for (; is_digit(*p); p++, nd++) {
        if (nd >= 12)
            return -1;
        ip = ip * 10 + (*p - '0');
    }
    if (nd == 0)
        return -1;
    if (*p == '.') {
        for (p++; is_digit(*p); p++, fd++) {
            if (fd >= 9)
                return -1;
            frac = frac * 10 + (*p - '0');
            scale *= 10;
        }
        if (fd == 0)
            return -1;
    }
    v = ip + frac / scale;
    if (*p == '\0') {
        if (v != 0)
            return -1; /* only zero may omit the unit */
    } else if (strcmp(p, "ms") == 0) {
        v /= 1000;
    } else if (strcmp(p, "s") == 0) {
        /* seconds already */
    } else if (strcmp(p, "m") == 0) {
        v *= 60;
    } else if (strcmp(p, "h") == 0) {
        v *= 3600;
    } else {
        return -1;
    }
    if (seconds)
        *seconds = v;
    return 0;
}

/* ---- setters: value -> field, or -1 with a reason in why ---- */

/* The options after a listen address. [admin] addresses take none. */
static int parse_listen_options(char *opts, bool admin, struct listen_addr *la, char *why,
                                size_t whylen) {
    char *save = NULL;
    for (char *w = strtok_r(opts, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
        if (!admin && strcmp(w, "proxy-protocol") == 0 && !la->proxy_protocol) {
            la->proxy_protocol = true;
            continue;
        }
        if (!admin && strcmp(w, "tls") == 0 && !la->tls) {
            la->tls = true;
            continue;
        }
        if (strchr(w, ':') || (w[0] >= '0' && w[0] <= '9'))
            text_seterr(why, whylen, "'%s' after an address: separate items with commas", w);
        else if (admin)
            text_seterr(why, whylen, "'%s': an [admin] address takes no options", w);
        else if (strcmp(w, "proxy-protocol") == 0 || strcmp(w, "tls") == 0)
            text_seterr(why, whylen, "'%s' is given twice", w);
        else
            text_seterr(why, whylen, "unknown option '%s' (known: proxy-protocol, tls)", w);
        return -1;
    }
    return 0;
}

/* A listen list ([server] or [admin]) into *out / *nout; admin marks the addresses. */
static int set_listen(const char *v, bool admin, struct listen_addr **out, size_t *nout, char *why,
                      size_t whylen) {
    struct listen_addr *l = calloc(count_items(v), sizeof *l);
    char item[ITEM_MAX], e[160];
    size_t n = 0;
    int r;

    if (!l) {
        text_seterr(why, whylen, "out of memory");
        return -1;
    }
    while ((r = text_next_item(&v, item, sizeof item)) != 0) {
        if (r < 0) {
            text_seterr(why, whylen, "'%.40s...' is too long", item);
            goto fail;
        }
        if (item[0] == '\0')
            continue;
        /* "ADDRESS [OPTION ...]": options follow the address, separated by spaces. */
        char *opts = item + strcspn(item, " \t");
        if (*opts) {
            *opts++ = '\0';
            if (parse_listen_options(opts, admin, &l[n], why, whylen) != 0)
                goto fail;
        }
        if (addr_parse_hostport(item, &l[n].ss, &l[n].len, e, sizeof e) != 0) {
            text_seterr(why, whylen, "bad address '%s': %s", item, e);
            goto fail;
        }
        l[n].admin = admin;
        for (size_t i = 0; i < n; i++) {
            if (l[i].len == l[n].len && memcmp(&l[i].ss, &l[n].ss, l[n].len) == 0) {
                text_seterr(why, whylen, "'%s' is listed twice", item);
                goto fail;
            }
        }
        n++;
    }
    if (n == 0 && !admin) {
        text_seterr(why, whylen, "needs at least one host:port, e.g. " DEFAULT_LISTEN);
        goto fail;
    }
    free(*out);
    *out = l;
    *nout = n;
    return 0;
fail:
    free(l);
    return -1;
}

/* A DNS server: IPv4 or [IPv6] literal with an optional port (default 53). No names: the
 * resolver cannot resolve the address of its own servers. */
static int parse_dns_server(const char *item, struct sockaddr_storage *ss, char *why,
                            size_t whylen) {
    const char *colon = strchr(item, ':');
    size_t n = strlen(item);
    char e[160];

    if (item[0] == '[' && item[n - 1] == ']') {
        char inner[ITEM_MAX];

        memcpy(inner, item + 1, n - 2);
        inner[n - 2] = '\0';
        if (!strchr(inner, ':') || addr_parse_ip(inner, DNS_DEFAULT_PORT, ss, NULL) != 0) {
            text_seterr(why, whylen, "bad server '%s': not an IPv6 address", item);
            return -1;
        }
        return 0;
    }
    if (item[0] != '[' && !colon) {
        if (addr_parse_ip(item, DNS_DEFAULT_PORT, ss, NULL) != 0) {
            text_seterr(why, whylen,
                        "bad server '%s': not an IP address (names cannot be used: the resolver "
                        "cannot look up its own servers)",
                        item);
            return -1;
        }
        return 0;
    }
    if (item[0] != '[' && strchr(colon + 1, ':')) {
        text_seterr(why, whylen, "bad server '%s': an IPv6 address needs brackets, e.g. [::1]:53",
                    item);
        return -1;
    }
    if (addr_parse_hostport(item, ss, NULL, e, sizeof e) != 0) {
        text_seterr(why, whylen, "bad server '%s': %s", item, e);
        return -1;
    }
    return 0;
}

static int set_dns_servers(struct config *c, const char *v, char *why, size_t whylen) {
    size_t cap = count_items(v) * (ADDR_TEXT_MAX + 1) + 1, o = 0;
    char *csv = malloc(cap);
    char item[ITEM_MAX];
    int r;

    if (!csv) {
        text_seterr(why, whylen, "out of memory");
        return -1;
    }
    csv[0] = '\0';
    while ((r = text_next_item(&v, item, sizeof item)) != 0) {
        struct sockaddr_storage ss;
        char text[ADDR_TEXT_MAX];
        size_t tl;

        if (r < 0) {
            text_seterr(why, whylen, "bad server '%.40s...': too long", item);
            goto fail;
        }
        if (item[0] == '\0')
            continue;
        if (strpbrk(item, " \t")) {
            text_seterr(why, whylen, "bad server '%s': separate items with commas", item);
            goto fail;
        }
        if (parse_dns_server(item, &ss, why, whylen) != 0)
            goto fail;
        addr_format((const struct sockaddr *)&ss, true, text, sizeof text);
        tl = strlen(text);
        if (o > 0)
            csv[o++] = ',';
        memcpy(csv + o, text, tl + 1);
        o += tl;
    }
    free(c->dns_servers);
    c->dns_servers = NULL;
    if (o == 0)
        free(csv); /* empty: the system's resolv.conf */
    else
        c->dns_servers = csv;
    return 0;
fail:
    free(csv);
    return -1;
}

static int set_timeout(const char *v, double *dst, bool zero_ok, char *why, size_t whylen) {
    double s;

    if (config_parse_duration(v, &s) != 0) {
        size_t numeric = strspn(v, "0123456789.");

        if (numeric > 0 && v[numeric] == '\0')
            text_seterr(why, whylen, "needs a unit, e.g. 10s (ms, s, m or h)");
        else
            text_seterr(why, whylen,
                        "bad duration; use a number and a unit ms, s, m or h, "
                        "e.g. 250ms, 10s, 1.5m, 1h");
        return -1;
    }
    if (!zero_ok && s <= 0) {
        text_seterr(why, whylen, "must be greater than 0");
        return -1;
    }
    if (s > MAX_DURATION) {
        text_seterr(why, whylen, "must be at most 24h");
        return -1;
    }
    *dst = s;
    return 0;
}

static int set_uint(const char *v, unsigned long min, unsigned long max, unsigned long *out,
                    char *why, size_t whylen) {
    if (parse_uint(v, min, max, out) != 0) {
        text_seterr(why, whylen, "must be a whole number from %lu to %lu", min, max);
        return -1;
    }
    return 0;
}

static int set_access_log(struct config *c, const char *v, char *why, size_t whylen) {
    char *s;

    if (v[0] == '\0') {
        text_seterr(why, whylen, "is empty; use stderr, off or a file path");
        return -1;
    }
    if (strcasecmp(v, "syslog") == 0)
        s = strdup("syslog");
    else if (strcasecmp(v, "stderr") == 0)
        s = strdup("stderr");
    else if (strcasecmp(v, "off") == 0)
        s = strdup("off");
    else
        s = strdup(v);
    if (!s) {
        text_seterr(why, whylen, "out of memory");
        return -1;
    }
    free(c->access_log);
    c->access_log = s;
    return 0;
}

/* A user name as useradd accepts it (looked up when the daemon starts); empty = none. */
static int set_user(struct config *c, const char *v, char *why, size_t whylen) {
    size_t n = strlen(v);

    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (!(ch >= 'a' && ch <= 'z') && !(ch >= 'A' && ch <= 'Z') && !(ch >= '0' && ch <= '9') &&
            ch != '_' && ch != '-' && ch != '.' && !(ch == '$' && i == n - 1)) {
            text_seterr(why, whylen, "is not a valid user name");
            return -1;
        }
    }
    if (n > 32 || (n > 0 && v[0] == '-')) {
        text_seterr(why, whylen, "is not a valid user name");
        return -1;
    }
    free(c->user);
    c->user = NULL;
    if (n == 0)
        return 0;
    c->user = strdup(v);
    if (!c->user) {
        text_seterr(why, whylen, "out of memory");
        return -1;
    }
    return 0;
}

/* A file name; empty means none. Made absolute later, once the ini file's name is known. */
static int set_path(char **dst, const char *v, char *why, size_t whylen) {
    free(*dst);
    *dst = NULL;
    if (v[0] == '\0')
        return 0;
    *dst = strdup(v);
    if (!*dst) {
        text_seterr(why, whylen, "out of memory");
        return -1;
    }
    return 0;
}

/* [tls] alpn: a list of protocol names, in our order of preference, into ALPN wire format. */
static int set_alpn(struct tls_config *t, const char *v, char *why, size_t whylen) {
    char item[ITEM_MAX];
    size_t n = 0;
    int r;

    while ((r = text_next_item(&v, item, sizeof item)) != 0) {
        if (r < 0) {
            text_seterr(why, whylen, "a protocol name is too long");
            return -1;
        }
        if (item[0] == '\0')
            continue;
        if (strcmp(item, "http/1.1") != 0 && strcmp(item, "h2") != 0) {
            text_seterr(why, whylen, "unknown protocol '%s' (known: h2, http/1.1)", item);
            return -1;
        }
        size_t len = strlen(item);
        if (n + 1 + len > sizeof t->alpn) {
            text_seterr(why, whylen, "too many protocols");
            return -1;
        }
        for (size_t i = 0; i < n; i += 1 + (unsigned char)t->alpn[i]) {
            if ((unsigned char)t->alpn[i] == len && memcmp(t->alpn + i + 1, item, len) == 0) {
                text_seterr(why, whylen, "'%s' is listed twice", item);
                return -1;
            }
        }
        t->alpn[n] = (char)len;
        memcpy(t->alpn + n + 1, item, len);
        n += 1 + len;
    }
    if (n == 0) {
        text_seterr(why, whylen, "needs at least one protocol, e.g. http/1.1");
        return -1;
    }
    t->alpn_len = n;
    return 0;
}

/* The realm goes inside a quoted-string of Proxy-Authenticate: printable ASCII without '"'
 * or '\\', so that it never needs escaping. */
static int set_realm(struct config *c, const char *v, char *why, size_t whylen) {
    size_t n = strlen(v);

    if (n == 0 || n > 64) {
        text_seterr(why, whylen, "must be 1 to 64 characters");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\') {
            text_seterr(why, whylen, "must be printable ASCII without quotes or backslashes");
            return -1;
        }
    }
    char *s = strdup(v);
    if (!s) {
        text_seterr(why, whylen, "out of memory");
        return -1;
    }
    free(c->realm);
    c->realm = s;
    return 0;
}

static int apply(struct config *c, enum key_id id, const char *v, char *why, size_t whylen) {
    struct access_config *a = &c->access;
    unsigned long u;

    switch (id) {
    case K_LISTEN:
        return set_listen(v, false, &c->listen, &c->nlisten, why, whylen);
    case K_ADMIN_LISTEN:
        return set_listen(v, true, &c->admin.listen, &c->admin.nlisten, why, whylen);
    case K_ADMIN_ALLOW_CLIENTS: {
        struct cidr_list l;

        if (policy_parse_cidrs(v, &l, why, whylen) != 0)
            return -1;
        policy_free_cidrs(&c->admin.allow_clients);
        c->admin.allow_clients = l;
        return 0;
    }
    case K_ADMIN_TOKEN_FILE:
        return set_path(&c->admin.token_file, v, why, whylen);
    case K_PROXY_PROTOCOL_FROM: {
        struct cidr_list l;

        if (policy_parse_cidrs(v, &l, why, whylen) != 0)
            return -1;
        policy_free_cidrs(&c->proxy_protocol_from);
        c->proxy_protocol_from = l;
        return 0;
    }
    case K_VIA:
        free(c->via_text);
        c->via_text = strdup(v);
        if (!c->via_text) {
            text_seterr(why, whylen, "out of memory");
            return -1;
        }
        return 0;
    case K_TIMEOUT_HAPPY_EYEBALLS:
        /* RFC 8305 section 5: at least 10 ms (100 ms recommended), at most 2 s. */
        if (config_parse_duration(v, &c->timeout_happy_eyeballs) != 0 ||
            c->timeout_happy_eyeballs < 0.01 || c->timeout_happy_eyeballs > 2) {
            text_seterr(why, whylen, "must be a duration from 10ms to 2s");
            return -1;
        }
        return 0;
    case K_TIMEOUT_GRACE:
        return set_timeout(v, &c->timeout_grace, true, why, whylen);
    case K_ALLOW_PORTS: {
        struct port_list l;

        if (policy_parse_ports(v, &l, why, whylen) != 0)
            return -1;
        policy_free_ports(&a->allow_ports);
        a->allow_ports = l;
        return 0;
    }
    case K_ALLOW_HOSTS:
    case K_DENY_HOSTS: {
        struct host_list l, *dst = id == K_ALLOW_HOSTS ? &a->allow_hosts : &a->deny_hosts;

        if (policy_parse_hosts(v, &l, why, whylen) != 0)
            return -1;
        policy_free_hosts(dst);
        *dst = l;
        return 0;
    }
    case K_ALLOW_CLIENTS: {
        struct cidr_list l;

        if (policy_parse_cidrs(v, &l, why, whylen) != 0)
            return -1;
        policy_free_cidrs(&a->allow_clients);
        a->allow_clients = l;
        return 0;
    }
    case K_DENY_PRIVATE:
        if (parse_bool(v, &a->deny_private) != 0) {
            text_seterr(why, whylen, "must be yes or no");
            return -1;
        }
        return 0;
    case K_DNS_SERVERS:
        return set_dns_servers(c, v, why, whylen);
    case K_DNS_CACHE:
        if (set_uint(v, 0, 1000000, &u, why, whylen) != 0)
            return -1;
        c->dns_cache = (unsigned)u;
        return 0;
    case K_TIMEOUT_HANDSHAKE:
        return set_timeout(v, &c->timeout_handshake, false, why, whylen);
    case K_TIMEOUT_DNS:
        return set_timeout(v, &c->timeout_dns, false, why, whylen);
    case K_TIMEOUT_CONNECT:
        return set_timeout(v, &c->timeout_connect, false, why, whylen);
    case K_TIMEOUT_IDLE:
        return set_timeout(v, &c->timeout_idle, false, why, whylen);
    case K_TIMEOUT_SHUTDOWN:
        return set_timeout(v, &c->timeout_shutdown, true, why, whylen);
    case K_MAX_CONNECTIONS:
        if (set_uint(v, 1, 1000000, &u, why, whylen) != 0)
            return -1;
        c->max_connections = (unsigned)u;
        return 0;
    case K_PER_CLIENT_CONNECTIONS:
        if (set_uint(v, 0, 1000000, &u, why, whylen) != 0)
            return -1;
        c->per_client_connections = (unsigned)u;
        return 0;
    case K_PER_CLIENT_RATE:
        if (set_uint(v, 0, 1000000, &u, why, whylen) != 0)
            return -1;
        c->per_client_rate = (unsigned)u;
        return 0;
    case K_MAX_REQUEST_BYTES:
        if (set_uint(v, 1024, 65536, &u, why, whylen) != 0)
            return -1;
        c->max_request_bytes = (size_t)u;
        return 0;
    case K_H2_MAX_STREAMS:
        if (set_uint(v, 1, 10000, &u, why, whylen) != 0)
            return -1;
        c->h2.max_streams = (unsigned)u;
        return 0;
    case K_H2_STREAM_WINDOW: /* below 16 KiB a stream crawls; above 2^31-1 is not HTTP/2 */
        if (set_uint(v, 16384, 2147483647, &u, why, whylen) != 0)
            return -1;
        c->h2.stream_window = (unsigned)u;
        return 0;
    case K_H2_CONNECTION_WINDOW:
        if (set_uint(v, 65535, 2147483647, &u, why, whylen) != 0)
            return -1;
        c->h2.connection_window = (unsigned)u;
        return 0;
    case K_LOG_LEVEL: {
        static const char *const names[] = {[LOG_LEVEL_ERROR] = "error",
                                            [LOG_LEVEL_WARN] = "warn",
                                            [LOG_LEVEL_INFO] = "info",
                                            [LOG_LEVEL_DEBUG] = "debug"};

        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            if (strcasecmp(v, names[i]) == 0) {
                c->log_level = (enum log_level)i;
                return 0;
            }
        }
        text_seterr(why, whylen, "must be error, warn, info or debug");
        return -1;
    }
    case K_ACCESS_LOG:
        return set_access_log(c, v, why, whylen);
    case K_RELAY: {
        static const char *const names[] = {
            [RELAY_AUTO] = "auto", [RELAY_SPLICE] = "splice", [RELAY_COPY] = "copy"};

        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            if (strcasecmp(v, names[i]) == 0) {
                c->relay = (enum relay_mode)i;
                return 0;
            }
        }
        text_seterr(why, whylen, "must be auto, splice or copy");
        return -1;
    }
    case K_WORKERS:
        if (strcasecmp(v, "auto") == 0) {
            c->workers = 0;
            return 0;
        }
        if (set_uint(v, 1, 64, &u, why, whylen) != 0)
            return -1;
        c->workers = (unsigned)u;
        return 0;
    case K_POLICY:
        return set_path(&c->policy_file, v, why, whylen);
    case K_AUTH_USERS_FILE:
        return set_path(&c->users_file, v, why, whylen);
    case K_AUTH_REALM:
        return set_realm(c, v, why, whylen);
    case K_USER:
        return set_user(c, v, why, whylen);
    case K_PAC:
        if (parse_bool(v, &c->pac) != 0) {
            text_seterr(why, whylen, "must be yes or no");
            return -1;
        }
        return 0;
    case K_TLS_CERTIFICATE:
        return set_path(&c->tls.certificate, v, why, whylen);
    case K_TLS_KEY:
        return set_path(&c->tls.key, v, why, whylen);
    case K_TLS_OCSP_STAPLE:
        return set_path(&c->tls.ocsp_staple, v, why, whylen);
    case K_TLS_MIN_VERSION:
        if (strcmp(v, "1.2") == 0)
            c->tls.min_version = 12;
        else if (strcmp(v, "1.3") == 0)
            c->tls.min_version = 13;
        else {
            text_seterr(why, whylen, "must be 1.2 or 1.3 (older versions are not offered)");
            return -1;
        }
        return 0;
    case K_TLS_ALPN:
        return set_alpn(&c->tls, v, why, whylen);
    case K_TLS_SESSION_TICKETS:
        if (parse_bool(v, &c->tls.session_tickets) != 0) {
            text_seterr(why, whylen, "must be yes or no");
            return -1;
        }
        return 0;
    case K_COUNT:
        break;
    }
    text_seterr(why, whylen, "unknown key");
    return -1;
}

/* ---- inih glue ---- */

static bool known_section(const char *s, size_t n) {
    for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++)
        if (strlen(sections[i]) == n && memcmp(sections[i], s, n) == 0)
            return true;
    return false;
}

/* "[parent NAME]": a new parent, with its defaults. Names are 1-32 of [A-Za-z0-9_-], unique,
 * and not "direct" (which means no parent). */
static int new_parent(struct ctx *x, const char *name, size_t n) {
    struct config *c = x->c;
    static const char ok[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
    size_t good = 0;

    while (good < n && name[good] && strchr(ok, name[good]))
        good++;
    if (n == 0 || n > 32 || good != n || (n == 6 && memcmp(name, "direct", 6) == 0)) {
        fail(x,
             "%s:%d: [parent %.*s]: a parent's name is 1-32 letters, digits, '-' or '_', and "
             "not 'direct'",
             x->name, x->lineno, (int)(n > 40 ? 40 : n), name);
        return -1;
    }
    for (size_t i = 0; i < c->nparents; i++) {
        if (strlen(c->parents[i].name) == n && memcmp(c->parents[i].name, name, n) == 0) {
            fail(x, "%s:%d: [parent %.*s]: already defined on line %d", x->name, x->lineno, (int)n,
                 name, c->parents[i].line);
            return -1;
        }
    }
    struct parent *v = realloc(c->parents, (c->nparents + 1) * sizeof *v);
    if (!v) {
        fail(x, "%s: out of memory", x->name);
        return -1;
    }
    c->parents = v;
    struct parent *pa = &v[c->nparents];
    memset(pa, 0, sizeof *pa);
    pa->name = strndup(name, n);
    if (!pa->name) {
        fail(x, "%s: out of memory", x->name);
        return -1;
    }
    pa->connect_timeout = 5;
    pa->backoff = 30;
    pa->line = x->lineno;
    c->nparents++;
    return 0;
}

/* A key of [parent NAME] (the section was created by new_parent()). */
static int parent_key(struct ctx *x, struct parent *pa, const char *name, const char *v) {
    static const char *const names[] = {"address", "credentials_file", "connect_timeout",
                                        "backoff"};
    char why[WHY_MAX] = "";
    size_t k;
    int rc = -1;

    for (k = 0; k < 4; k++)
        if (strcmp(names[k], name) == 0)
            break;
    if (k == 4) {
        fail(x,
             "%s:%d: [parent %s] %s: unknown key (known: address, credentials_file, "
             "connect_timeout, backoff)",
             x->name, x->lineno, pa->name, name);
        return -1;
    }
    if (pa->seen[k]) {
        fail(x, "%s:%d: [parent %s] %s: duplicate key (already set on line %d)", x->name, x->lineno,
             pa->name, name, pa->seen[k]);
        return -1;
    }
    pa->seen[k] = x->lineno;
    switch (k) {
    case 0: {
        struct http_request req;
        const char *reason = NULL;
        if (http_parse_authority(v, strlen(v), false, &req, &reason) != 0) {
            text_seterr(why, sizeof why, "must be host:port (%s)", reason ? reason : "bad");
            break;
        }
        free(pa->host);
        pa->host = strdup(req.host);
        pa->port = req.port;
        rc = pa->host ? 0 : -1;
        if (rc)
            text_seterr(why, sizeof why, "out of memory");
        break;
    }
    case 1:
        rc = set_path(&pa->credentials_file, v, why, sizeof why);
        break;
    case 2:
    case 3:
        rc = set_timeout(v, k == 2 ? &pa->connect_timeout : &pa->backoff, false, why, sizeof why);
        break;
    }
    if (rc != 0)
        fail(x, "%s:%d: [parent %s] %s: %s (got '%s')", x->name, x->lineno, pa->name, name, why, v);
    return rc;
}

/* Validate one line (leading whitespace already removed) the way inih will read it, so that
 * what inih would skip, split or reject is reported here, in line order. 0 or -1 (failed). */
static int check_line(struct ctx *x, const char *p, size_t n) {
    bool was_space = false;
    size_t i;

    if (n == 0 || p[0] == ';' || p[0] == '#')
        return 0;
    if (p[0] == '[') {
        const char *close = memchr(p, ']', n);
        size_t sl, rest;

        if (!close) {
            fail(x, "%s:%d: section header without closing ']'", x->name, x->lineno);
            return -1;
        }
        sl = (size_t)(close - p - 1);
        if (sl > 7 && memcmp(p + 1, "parent ", 7) == 0) {
            if (new_parent(x, p + 8, sl - 7) != 0)
                return -1;
        } else if (!known_section(p + 1, sl)) {
            fail(x,
                 "%s:%d: [%.*s]: unknown section (known: [server] [access] [dns] [timeouts] "
                 "[limits] [log] [auth] [admin] [tls] [http2] [parent NAME])",
                 x->name, x->lineno, (int)sl, p + 1);
            return -1;
        }
        rest = (size_t)(close + 1 - p);
        while (rest < n && text_is_space(p[rest]))
            rest++;
        if (rest < n && p[rest] != ';' && p[rest] != '#') {
            fail(x, "%s:%d: [%.*s]: unexpected text after ']'", x->name, x->lineno, (int)sl, p + 1);
            return -1;
        }
        return 0;
    }
    /* inih splits at the first '=' or ':' unless a ';' after whitespace starts a comment. */
    for (i = 0; i < n; i++) {
        if (p[i] == '=' || p[i] == ':' || (was_space && p[i] == ';'))
            break;
        was_space = text_is_space(p[i]);
    }
    if (i == n || p[i] == ';') {
        fail(x,
             "%s:%d: expected 'key = value', '[section]' or a comment (a value cannot "
             "continue on the next line) (got '%.*s')",
             x->name, x->lineno, (int)n, p);
        return -1;
    }
    while (i > 0 && text_is_space(p[i - 1]))
        i--;
    if (i == 0) {
        fail(x, "%s:%d: missing key name before '%c'", x->name, x->lineno, p[0]);
        return -1;
    }
    return 0;
}

/* ini_reader: hand inih one line per call, checked and counted. */
static char *reader(char *buf, int num, void *stream) {
    struct ctx *x = stream;
    const char *p, *nl;
    size_t n, max = LINE_MAX_LEN;

    if (x->failed || x->pos >= x->len)
        return NULL;
    if (num < 3) {
        fail(x, "%s:%d: inih line buffer too small", x->name, x->lineno + 1);
        return NULL;
    }
    p = x->text + x->pos;
    nl = memchr(p, '\n', x->len - x->pos);
    n = nl ? (size_t)(nl - p) : x->len - x->pos;
    x->pos += n + (nl ? 1 : 0);
    x->lineno++;
    if (n > 0 && p[n - 1] == '\r')
        n--;
    if (x->lineno == 1 && n >= 3 && memcmp(p, "\xEF\xBB\xBF", 3) == 0) {
        p += 3; /* UTF-8 byte order mark */
        n -= 3;
    }
    if ((size_t)num - 2 < max)
        max = (size_t)num - 2; /* the library's own buffer, if built smaller */
    if (n > max) {
        fail(x, "%s:%d: line too long (%zu bytes; at most %zu)", x->name, x->lineno, n, max);
        return NULL;
    }
    while (n > 0 && (*p == ' ' || *p == '\t')) {
        p++;
        n--;
    }
    if (check_line(x, p, n) != 0)
        return NULL;
    memcpy(buf, p, n);
    buf[n] = '\n';
    buf[n + 1] = '\0';
    return buf;
}

/* "listen, ..." for an unknown-key message. */
static void valid_keys(const char *section, char *out, size_t outlen) {
    size_t o = 0;

    out[0] = '\0';
    for (size_t i = 0; i < K_COUNT; i++) {
        int w;

        if (strcmp(keys[i].section, section) != 0)
            continue;
        w = snprintf(out + o, outlen - o, "%s%s", o ? ", " : "", keys[i].name);
        if (w < 0 || (size_t)w >= outlen - o)
            break;
        o += (size_t)w;
    }
}

static int handler(void *user, const char *section, const char *name, const char *value) {
    struct ctx *x = user;
    char why[WHY_MAX];
    int id;

    if (x->failed)
        return 1;
    if (section[0] == '\0') {
        fail(x, "%s:%d: %s: key before any [section]", x->name, x->lineno, name);
        return 0;
    }
    if (strncmp(section, "parent ", 7) == 0) {
        for (size_t i = 0; i < x->c->nparents; i++)
            if (strcmp(x->c->parents[i].name, section + 7) == 0)
                return parent_key(x, &x->c->parents[i], name, value) == 0;
        return 0; /* cannot happen: check_line() made it */
    }
    for (id = 0; id < K_COUNT; id++)
        if (strcmp(keys[id].section, section) == 0 && strcmp(keys[id].name, name) == 0)
            break;
    if (id == K_COUNT) {
        char list[WHY_MAX];

        valid_keys(section, list, sizeof list);
        if (list[0])
            fail(x, "%s:%d: [%s] %s: unknown key (known: %s)", x->name, x->lineno, section, name,
                 list);
        else
            fail(x, "%s:%d: [%s] %s: unknown key", x->name, x->lineno, section, name);
        return 0;
    }
    if (x->seen[id]) {
        fail(x, "%s:%d: [%s] %s: duplicate key (already set on line %d)", x->name, x->lineno,
             section, name, x->seen[id]);
        return 0;
    }
    x->seen[id] = x->lineno;
    if (apply(x->c, (enum key_id)id, value, why, sizeof why) != 0) {
        fail(x, "%s:%d: [%s] %s: %s (got '%s')", x->name, x->lineno, section, name, why, value);
        return 0;
    }
    return 1;
}

/* Defaults; -1 when an allocation failed (the struct is still safe to config_free()). */
static int set_defaults(struct config *c) {
    int bad = 0;

    memset(c, 0, sizeof *c);
    c->workers = 1;
    c->listen = calloc(1, sizeof *c->listen);
    if (c->listen &&
        addr_parse_hostport(DEFAULT_LISTEN, &c->listen[0].ss, &c->listen[0].len, NULL, 0) == 0)
        c->nlisten = 1;
    else
        bad = 1;
    bad |= policy_parse_ports(DEFAULT_ALLOW_PORTS, &c->access.allow_ports, NULL, 0) != 0;
    bad |= policy_parse_hosts(DEFAULT_ALLOW_HOSTS, &c->access.allow_hosts, NULL, 0) != 0;
    bad |= policy_parse_cidrs(DEFAULT_ALLOW_CLIENTS, &c->access.allow_clients, NULL, 0) != 0;
    bad |= policy_parse_cidrs(DEFAULT_ALLOW_CLIENTS, &c->admin.allow_clients, NULL, 0) != 0;
    c->access.deny_private = true;
    c->dns_servers = NULL;
    c->dns_cache = 10000;
    c->timeout_handshake = 10;
    c->timeout_dns = 5;
    c->timeout_connect = 10;
    c->timeout_idle = 5 * 60;
    c->timeout_shutdown = 30;
    c->timeout_happy_eyeballs = 0.25;
    c->max_connections = 10000;
    c->per_client_connections = 0;
    c->per_client_rate = 0;
    c->max_request_bytes = 16384;
    c->log_level = LOG_LEVEL_INFO;
    c->access_log = strdup(DEFAULT_ACCESS_LOG);
    bad |= c->access_log == NULL;
    c->realm = strdup(DEFAULT_REALM);
    bad |= c->realm == NULL;
    c->user = strdup(DEFAULT_USER);
    bad |= c->user == NULL;
    c->tls.min_version = 12;
    c->tls.alpn_len = 9;
    memcpy(c->tls.alpn, "\x08http/1.1", 9);
    c->tls.session_tickets = true;
    c->h2.max_streams = 100;
    c->h2.stream_window = 256 * 1024;
    c->h2.connection_window = 4 * 1024 * 1024;
    return bad ? -1 : 0;
}

void config_defaults(struct config *c) {
    (void)set_defaults(c);
}

/* A path from the ini file, relative to that file's directory (as an operator reading the file
 * expects), not to wherever the daemon was started. */
static int resolve_path(struct ctx *x, char **path, int line, const char *key) {
    const char *slash = strrchr(x->name, '/');

    if (!*path || (*path)[0] == '/' || !slash)
        return 0;
    size_t dirlen = (size_t)(slash - x->name) + 1;
    size_t n = dirlen + strlen(*path) + 1;
    char *full = malloc(n);
    if (!full) {
        fail(x, "%s:%d: %s: out of memory", x->name, line, key);
        return -1;
    }
    memcpy(full, x->name, dirlen);
    memcpy(full + dirlen, *path, n - dirlen);
    free(*path);
    *path = full;
    return 0;
}

/* The admin token: the file's first line without surrounding whitespace, 16-256 visible ASCII
 * characters (a Bearer token is compared whole, so anything shorter is guessable). */
static int load_token(struct config *c, char *why, size_t whylen) {
    char *buf;
    size_t n;
    const char *path = c->admin.token_file;

    if (text_read_file(path, 4096, &buf, &n, why, whylen) != 0)
        return -1;
    char *p = buf, *end;
    while (text_is_space(*p))
        p++;
    end = p;
    while (*end && *end != '\n' && *end != '\r')
        end++;
    while (end > p && text_is_space(end[-1]))
        end--;
    *end = '\0';
    size_t len = (size_t)(end - p);
    for (const char *q = p; *q; q++) {
        if (*q < 0x21 || *q > 0x7e) {
            text_seterr(why, whylen, "%s: the token may hold only visible ASCII characters", path);
            free(buf);
            return -1;
        }
    }
    if (len < 16 || len > 256) {
        text_seterr(why, whylen, "%s: the token must be 16 to 256 characters long (has %zu)", path,
                    len);
        free(buf);
        return -1;
    }
    c->admin.token = strdup(p);
    explicit_bzero(buf, n);
    free(buf);
    if (!c->admin.token) {
        text_seterr(why, whylen, "out of memory");
        return -1;
    }
    return 0;
}

/* [admin] listen joins [server] listen in one list (marked admin), so binding, socket
 * activation, reload and the loop guard treat both alike. An address can serve only one. */
static int merge_admin_listen(struct ctx *x) {
    struct config *c = x->c;
    size_t n = c->nlisten + c->admin.nlisten;
    char name[64];

    for (size_t i = 0; i < c->nlisten; i++) {
        if (c->listen[i].proxy_protocol && c->proxy_protocol_from.n == 0) {
            addr_format((const struct sockaddr *)&c->listen[i].ss, true, name, sizeof name);
            fail(x,
                 "%s:%d: [server] listen: %s proxy-protocol: set [server] proxy_protocol_from to "
                 "the load balancers' addresses",
                 x->name, x->seen[K_LISTEN], name);
            return -1;
        }
    }

    for (size_t i = 0; i < c->admin.nlisten; i++) {
        for (size_t j = 0; j < c->nlisten; j++) {
            const struct listen_addr *a = &c->admin.listen[i], *b = &c->listen[j];
            if (a->len == b->len && memcmp(&a->ss, &b->ss, a->len) == 0) {
                addr_format((const struct sockaddr *)&a->ss, true, name, sizeof name);
                fail(x, "%s:%d: [admin] listen: %s is also in [server] listen", x->name,
                     x->seen[K_ADMIN_LISTEN], name);
                return -1;
            }
        }
    }
    if (c->admin.nlisten == 0)
        return 0;
    struct listen_addr *l = realloc(c->listen, n * sizeof *l);
    if (!l) {
        fail(x, "%s: out of memory", x->name);
        return -1;
    }
    memcpy(l + c->nlisten, c->admin.listen, c->admin.nlisten * sizeof *l);
    c->listen = l;
    c->nlisten = n;
    free(c->admin.listen);
    c->admin.listen = NULL;
    return 0;
}

/* One via name: a parent's index, or VIA_DIRECT; -1 with a message when unknown. */
static int via_index(const struct config *c, const char *name, int *idx, char *why, size_t whylen) {
    if (strcmp(name, "direct") == 0) {
        *idx = VIA_DIRECT;
        return 0;
    }
    for (size_t i = 0; i < c->nparents; i++) {
        if (strcmp(c->parents[i].name, name) == 0) {
            *idx = (int)i;
            return 0;
        }
    }
    text_seterr(why, whylen, "'%s' is neither direct nor a [parent NAME] section", name);
    return -1;
}

/* A parent's credentials file: one "user:password" line, kept as the Basic header value. */
static int load_credentials(struct parent *pa, char *why, size_t whylen) {
    char *buf;
    size_t n;

    if (text_read_file(pa->credentials_file, 4096, &buf, &n, why, whylen) != 0 ||
        text_file_private(pa->credentials_file, why, whylen) != 0) {
        free(buf);
        return -1;
    }
    size_t len = strcspn(buf, "\r\n");
    buf[len] = '\0';
    const char *colon = strchr(buf, ':');
    int rc = -1;
    if (!colon || colon == buf) {
        text_seterr(why, whylen, "%s: expected one line 'user:password'", pa->credentials_file);
    } else if (!(pa->authorization = malloc(6 + 4 * ((len + 2) / 3) + 1))) {
        text_seterr(why, whylen, "out of memory");
    } else {
        memcpy(pa->authorization, "Basic ", 6);
        text_base64(buf, len, pa->authorization + 6);
        rc = 0;
    }
    explicit_bzero(buf, n);
    free(buf);
    return rc;
}

/* Parents: each needs an address; their credentials files; [access] via and the rules' via. */
static int link_parents(struct ctx *x) {
    struct config *c = x->c;
    char why[CONFIG_ERR_MAX], item[64];
    const char *s;
    int rc;

    for (size_t i = 0; i < c->nparents; i++) {
        struct parent *pa = &c->parents[i];
        if (!pa->host) {
            fail(x, "%s:%d: [parent %s]: needs an address (address = host:port)", x->name, pa->line,
                 pa->name);
            return -1;
        }
        if (resolve_path(x, &pa->credentials_file, pa->seen[1], "credentials_file") != 0)
            return -1;
        if (pa->credentials_file && load_credentials(pa, why, sizeof why) != 0) {
            fail(x, "%s:%d: [parent %s] credentials_file: %s", x->name, pa->seen[1], pa->name, why);
            return -1;
        }
    }
    s = c->via_text ? c->via_text : "direct";
    c->nvia = count_items(s);
    c->via = calloc(c->nvia, sizeof *c->via);
    if (!c->via) {
        fail(x, "%s: out of memory", x->name);
        return -1;
    }
    c->nvia = 0;
    while ((rc = text_next_item(&s, item, sizeof item)) != 0) {
        if (rc > 0 && item[0] == '\0')
            continue;
        if (rc < 0 || via_index(c, item, &c->via[c->nvia], why, sizeof why) != 0) {
            fail(x, "%s:%d: [access] via: %s", x->name, x->seen[K_VIA],
                 rc < 0 ? "a name is too long" : why);
            return -1;
        }
        c->nvia++;
    }
    if (c->nvia == 0) {
        fail(x, "%s:%d: [access] via: needs direct or a parent's name", x->name, x->seen[K_VIA]);
        return -1;
    }
    for (size_t i = 0; i < c->rules.n; i++) {
        struct rule *r = &c->rules.v[i];
        if (!r->has_via)
            continue;
        r->via_idx = calloc(r->nvia, sizeof *r->via_idx);
        if (!r->via_idx) {
            fail(x, "%s: out of memory", x->name);
            return -1;
        }
        for (size_t j = 0; j < r->nvia; j++) {
            if (via_index(c, r->via[j], &r->via_idx[j], why, sizeof why) != 0) {
                fail(x, "%s:%d: [access] policy: %s: rule %s: via: %s", x->name, x->seen[K_POLICY],
                     c->policy_file, r->name, why);
                return -1;
            }
        }
    }
    return 0;
}

/* The files [tls] names: read now, so a key readable by root only is read before the privilege
 * drop. A reload that may no longer read the key marks it unreadable; tls.c then keeps the key
 * it has, if the certificate still matches it. Whether the files belong together (key matches
 * certificate, dates) is tls.c's check: it needs OpenSSL. */
static int load_tls_files(struct ctx *x) {
    struct config *c = x->c;
    struct tls_config *t = &c->tls;
    int cline = x->seen[K_TLS_CERTIFICATE], kline = x->seen[K_TLS_KEY];
    int oline = x->seen[K_TLS_OCSP_STAPLE];
    char why[CONFIG_ERR_MAX];

    for (size_t i = 0; i < c->nlisten; i++)
        c->has_tls_listener |= c->listen[i].tls;
    if (c->has_tls_listener && (!t->certificate || !t->key)) {
        fail(x, "%s:%d: [server] listen: a tls listener needs [tls] certificate and key", x->name,
             x->seen[K_LISTEN]);
        return -1;
    }
    if (!t->certificate != !t->key) {
        fail(x, "%s:%d: [tls] %s: needs [tls] %s too", x->name, t->certificate ? cline : kline,
             t->certificate ? "certificate" : "key", t->certificate ? "key" : "certificate");
        return -1;
    }
    if (t->ocsp_staple && !t->certificate) {
        fail(x, "%s:%d: [tls] ocsp_staple: needs [tls] certificate and key", x->name, oline);
        return -1;
    }
    if (resolve_path(x, &t->certificate, cline, "[tls] certificate") != 0 ||
        resolve_path(x, &t->key, kline, "[tls] key") != 0 ||
        resolve_path(x, &t->ocsp_staple, oline, "[tls] ocsp_staple") != 0)
        return -1;
    if (!t->certificate)
        return 0;
    if (text_read_file(t->certificate, TLS_FILE_MAX, &t->cert_pem, &t->cert_pem_len, why,
                       sizeof why) != 0) {
        fail(x, "%s:%d: [tls] certificate: %s", x->name, cline, why);
        return -1;
    }
    int fd = open(t->key, O_RDONLY | O_CLOEXEC);
    if (fd == -1 && errno == EACCES) {
        t->key_unreadable = true;
    } else {
        if (fd != -1)
            close(fd);
        if (text_read_file(t->key, TLS_FILE_MAX, &t->key_pem, &t->key_pem_len, why, sizeof why) !=
                0 ||
            text_file_private(t->key, why, sizeof why) != 0) {
            fail(x, "%s:%d: [tls] key: %s", x->name, kline, why);
            return -1;
        }
    }
    if (t->ocsp_staple && text_read_file(t->ocsp_staple, TLS_FILE_MAX, &t->ocsp_der,
                                         &t->ocsp_der_len, why, sizeof why) != 0) {
        fail(x, "%s:%d: [tls] ocsp_staple: %s", x->name, oline, why);
        return -1;
    }
    return 0;
}

/* The policy and users files, and the names that must agree between them. */
static int load_linked_files(struct ctx *x) {
    struct config *c = x->c;
    int pline = x->seen[K_POLICY], uline = x->seen[K_AUTH_USERS_FILE];
    char why[CONFIG_ERR_MAX];

    int tline = x->seen[K_ADMIN_TOKEN_FILE];
    if (resolve_path(x, &c->users_file, uline, "[auth] users_file") != 0 ||
        resolve_path(x, &c->policy_file, pline, "[access] policy") != 0 ||
        resolve_path(x, &c->admin.token_file, tline, "[admin] token_file") != 0)
        return -1;
    if (c->admin.token_file && load_token(c, why, sizeof why) != 0) {
        fail(x, "%s:%d: [admin] token_file: %s", x->name, tline, why);
        return -1;
    }
    if (c->users_file && auth_users_load(c->users_file, &c->users, why, sizeof why) != 0) {
        fail(x, "%s:%d: [auth] users_file: %s", x->name, uline, why);
        return -1;
    }
    if (c->policy_file && policy_yaml_load(c->policy_file, &c->rules, why, sizeof why) != 0) {
        fail(x, "%s:%d: [access] policy: %s", x->name, pline, why);
        return -1;
    }
    /* Like every other error, these start with the ini file's FILE:LINE (of its policy key). */
    for (size_t i = 0; i < c->rules.n; i++) {
        const struct rule *r = &c->rules.v[i];

        if (r->has_users && !c->users_file) {
            fail(x,
                 "%s:%d: [access] policy: %s: rule %s: has users, but [auth] users_file is not "
                 "set",
                 x->name, pline, c->policy_file, r->name);
            return -1;
        }
        for (size_t j = 0; j < r->nusers; j++) {
            if (!auth_users_find(&c->users, r->users[j])) {
                fail(x, "%s:%d: [access] policy: %s: rule %s: user '%s' is not in %s", x->name,
                     pline, c->policy_file, r->name, r->users[j], c->users_file);
                return -1;
            }
        }
    }
    return 0;
}

static int load_text(const char *text, size_t len, const char *name, struct config *c, char *err,
                     size_t errlen) {
    struct ctx x;
    const char *nul;
    int rc;

    memset(&x, 0, sizeof x);
    x.c = c;
    x.name = name;
    x.text = text;
    x.len = len;
    x.err = err;
    x.errlen = errlen;
    if (set_defaults(c) != 0) {
        fail(&x, "%s: out of memory", name);
        goto fail;
    }
    nul = memchr(text, '\0', len);
    if (nul) {
        int line = 1;

        for (const char *p = text; p < nul; p++)
            line += *p == '\n';
        fail(&x, "%s:%d: NUL byte in the file", name, line);
        goto fail;
    }
    rc = ini_parse_stream(reader, &x, handler, &x);
    if (!x.failed && rc > 0)
        fail(&x, "%s:%d: syntax error", name, rc);
    else if (!x.failed && rc != 0)
        fail(&x, "%s: out of memory", name);
    if (x.failed)
        goto fail;
    if (merge_admin_listen(&x) != 0 || load_linked_files(&x) != 0 || link_parents(&x) != 0 ||
        load_tls_files(&x) != 0)
        goto fail;
    return 0;
fail:
    config_free(c);
    return -1;
}

int config_load_string(const char *text, const char *name, struct config *c, char *err,
                       size_t errlen) {
    if (!name)
        name = "(string)";
    if (!text) {
        memset(c, 0, sizeof *c);
        text_seterr(err, errlen, "%s: no text", name);
        return -1;
    }
    return load_text(text, strlen(text), name, c, err, errlen);
}

int config_load_file(const char *path, struct config *c, char *err, size_t errlen) {
    char *buf;
    size_t n;
    int rc;

    memset(c, 0, sizeof *c);
    if (text_read_file(path, FILE_MAX, &buf, &n, err, errlen) != 0)
        return -1;
    rc = load_text(buf, n, path, c, err, errlen);
    free(buf);
    return rc;
}

int config_keep_tls_key(struct config *c, const struct config *old) {
    struct tls_config *t = &c->tls;
    const struct tls_config *o = &old->tls;
    if (!t->key_unreadable || !o->key_pem || strcmp(t->key, o->key) != 0)
        return 0;
    t->key_pem = malloc(o->key_pem_len + 1);
    if (!t->key_pem)
        return -1;
    memcpy(t->key_pem, o->key_pem, o->key_pem_len + 1);
    t->key_pem_len = o->key_pem_len;
    t->key_unreadable = false;
    return 1;
}

void config_free(struct config *c) {
    if (!c)
        return;
    free(c->listen);
    policy_free_access(&c->access);
    free(c->dns_servers);
    free(c->access_log);
    free(c->policy_file);
    rules_free(&c->rules);
    free(c->users_file);
    auth_users_free(&c->users);
    free(c->realm);
    free(c->user);
    for (size_t i = 0; i < c->nparents; i++) {
        struct parent *pa = &c->parents[i];
        free(pa->name);
        free(pa->host);
        free(pa->credentials_file);
        if (pa->authorization)
            explicit_bzero(pa->authorization, strlen(pa->authorization));
        free(pa->authorization);
    }
    free(c->parents);
    free(c->via);
    free(c->via_text);
    free(c->admin.listen);
    policy_free_cidrs(&c->proxy_protocol_from);
    policy_free_cidrs(&c->admin.allow_clients);
    free(c->admin.token_file);
    if (c->admin.token)
        explicit_bzero(c->admin.token, strlen(c->admin.token));
    free(c->admin.token);
    free(c->tls.certificate);
    free(c->tls.key);
    free(c->tls.ocsp_staple);
    free(c->tls.cert_pem);
    if (c->tls.key_pem)
        explicit_bzero(c->tls.key_pem, c->tls.key_pem_len);
    free(c->tls.key_pem);
    free(c->tls.ocsp_der);
    memset(c, 0, sizeof *c);
}
