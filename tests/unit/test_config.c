/* Unit tests for src/config.c. Run from the repository root (conf/proxy.ini and
 * tests/unit/data/ are opened by relative path). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

#define N(a) (sizeof(a) / sizeof((a)[0]))

static bool all_zero(const void *p, size_t n) {
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

static void listen_text(const struct config *c, size_t i, char *out) {
    addr_format((const struct sockaddr *)&c->listen[i].ss, true, out, ADDR_TEXT_MAX);
}

/* Load text that must fail; every needle must be in the message; *c must be zeroed. */
static void expect_error(const char *text, const char *const *needles, size_t n) {
    struct config c;
    char err[CONFIG_ERR_MAX] = "";

    memset(&c, 0xa5, sizeof c);
    if (config_load_string(text, "t.ini", &c, err, sizeof err) == 0) {
        config_free(&c);
        fail_msg("accepted:\n%s", text);
    }
    for (size_t i = 0; i < n; i++)
        if (!strstr(err, needles[i]))
            fail_msg("expected '%s' in message '%s' for:\n%s", needles[i], err, text);
    if (!all_zero(&c, sizeof c))
        fail_msg("config not zeroed after error for:\n%s", text);
}

#define EXPECT_ERROR(text, ...)                                                                    \
    do {                                                                                           \
        const char *const needles_[] = {__VA_ARGS__};                                              \
        expect_error((text), needles_, N(needles_));                                               \
    } while (0)

/* Load text (as the file name) that must fail with exactly the message want; *c must be
 * zeroed. */
static void expect_exact(const char *text, const char *name, const char *want) {
    struct config c;
    char err[CONFIG_ERR_MAX] = "";

    memset(&c, 0xa5, sizeof c);
    if (config_load_string(text, name, &c, err, sizeof err) == 0) {
        config_free(&c);
        fail_msg("accepted:\n%s", text);
    }
    if (strcmp(err, want) != 0)
        fail_msg("expected message\n  '%s'\ngot\n  '%s'\nfor:\n%s", want, err, text);
    if (!all_zero(&c, sizeof c))
        fail_msg("config not zeroed after error for:\n%s", text);
}

#define EXPECT_EXACT(text, want) expect_exact((text), "t.ini", (want))

/* Load text that must succeed; fails the test with the message otherwise. */
static void load_ok(const char *text, const char *name, struct config *c) {
    char err[CONFIG_ERR_MAX] = "";

    if (config_load_string(text, name, c, err, sizeof err) != 0)
        fail_msg("rejected: %s\nfor:\n%s", err, text);
}

static void check_defaults(const struct config *c) {
    char text[ADDR_TEXT_MAX];

    assert_int_equal(c->nlisten, 1);
    listen_text(c, 0, text);
    assert_string_equal(text, "127.0.0.1:3128");
    assert_int_equal(c->listen[0].len, sizeof(struct sockaddr_in));
    assert_int_equal(c->access.allow_ports.n, 1);
    assert_int_equal(c->access.allow_ports.v[0].lo, 443);
    assert_int_equal(c->access.allow_ports.v[0].hi, 443);
    assert_int_equal(c->access.allow_hosts.n, 1);
    assert_int_equal(c->access.allow_hosts.v[0].kind, HOST_PAT_ANY);
    assert_int_equal(c->access.deny_hosts.n, 0);
    assert_int_equal(c->access.allow_clients.n, 2);
    assert_int_equal(c->access.allow_clients.v[0].family, AF_INET);
    assert_int_equal(c->access.allow_clients.v[0].prefix, 8);
    assert_int_equal(c->access.allow_clients.v[1].family, AF_INET6);
    assert_int_equal(c->access.allow_clients.v[1].prefix, 128);
    assert_true(c->access.deny_private);
    assert_true(c->dns_servers == NULL || c->dns_servers[0] == '\0');
    assert_int_equal(c->dns_cache, 10000);
    assert_true(c->timeout_handshake == 10);
    assert_true(c->timeout_dns == 5);
    assert_true(c->timeout_connect == 10);
    assert_true(c->timeout_idle == 300);
    assert_true(c->timeout_shutdown == 30);
    assert_int_equal(c->max_connections, 10000);
    assert_int_equal(c->per_client_connections, 0);
    assert_int_equal(c->per_client_rate, 0);
    assert_int_equal(c->max_request_bytes, 16384);
    assert_int_equal(c->log_level, LOG_LEVEL_INFO);
    assert_string_equal(c->access_log, "stderr");
    /* [tls]: no files, TLS 1.2 and up, HTTP/1.1, session tickets. */
    for (size_t i = 0; i < c->nlisten; i++)
        assert_false(c->listen[i].tls);
    assert_false(c->has_tls_listener);
    assert_null(c->tls.certificate);
    assert_null(c->tls.key);
    assert_null(c->tls.ocsp_staple);
    assert_null(c->tls.cert_pem);
    assert_null(c->tls.key_pem);
    assert_null(c->tls.ocsp_der);
    assert_false(c->tls.key_unreadable);
    assert_int_equal(c->tls.min_version, 12);
    assert_int_equal(c->tls.alpn_len, 9);
    assert_memory_equal(c->tls.alpn, "\x08http/1.1", 9);
    assert_true(c->tls.session_tickets);
}

static void test_defaults(void **state) {
    struct config c;

    (void)state;
    config_defaults(&c);
    check_defaults(&c);
    config_free(&c);
    assert_true(all_zero(&c, sizeof c));
    config_free(&c); /* twice is fine */
    config_free(NULL);
}

static void test_shipped_file(void **state) {
    struct config c;
    char err[CONFIG_ERR_MAX] = "";

    (void)state;
    if (config_load_file("conf/proxy.ini", &c, err, sizeof err) != 0)
        fail_msg("conf/proxy.ini: %s", err);
    /* The shipped file states the defaults. */
    check_defaults(&c);
    config_free(&c);
}

static void test_empty_text(void **state) {
    struct config c;
    char err[CONFIG_ERR_MAX] = "";

    (void)state;
    assert_int_equal(config_load_string("", "t.ini", &c, err, sizeof err), 0);
    check_defaults(&c);
    config_free(&c);
    assert_int_equal(
        config_load_string("; nothing\n\n[server]\n[auth]\n", "t.ini", &c, err, sizeof err), 0);
    check_defaults(&c);
    config_free(&c);
}

static void test_full_file(void **state) {
    static const char text[] =
        "\xEF\xBB\xBF; every key, none at its default\r\n"
        "[server]\r\n"
        "listen = 0.0.0.0:8080, [::]:8080 ,[::1]:3129 ; inline comment\n"
        "\n"
        "[access]\n"
        "  allow_ports = 443, 8443, 10000-10100\n"
        "\tallow_hosts = *.Example.com, example.org., 10.0.0.0/8, [::1]\n"
        "deny_hosts = bad.example.com, 10.1.0.0/16\n"
        "allow_clients = 192.168.0.0/16, 10.0.0.0/8, fd00::/8\n"
        "deny_private = Off\n"
        "[dns]\n"
        "servers = 192.0.2.53, 198.51.100.1:5353, [2001:db8::53], [::1]:5300\n"
        "cache: 0\n"
        "[timeouts]\n"
        "handshake = 250ms\n"
        "dns = 1.5s\n"
        "connect = 2m\n"
        "idle = 1h\n"
        "shutdown = 0\n"
        "[limits]\n"
        "max_connections = 1000000\n"
        "per_client_connections = 16\n"
        "per_client_rate = 5\n"
        "max_request_bytes = 1024\n"
        "[log]\n"
        "level = DEBUG\n"
        "access_log = /var/log/connectd/access.log\n"
        "[auth]\n"
        "# empty section of a later release: fine\n";
    struct config c;
    char err[CONFIG_ERR_MAX] = "", t[ADDR_TEXT_MAX];

    (void)state;
    if (config_load_string(text, "full.ini", &c, err, sizeof err) != 0)
        fail_msg("%s", err);
    assert_int_equal(c.nlisten, 3);
    listen_text(&c, 0, t);
    assert_string_equal(t, "0.0.0.0:8080");
    listen_text(&c, 1, t);
    assert_string_equal(t, "[::]:8080");
    assert_int_equal(c.listen[1].len, sizeof(struct sockaddr_in6));
    listen_text(&c, 2, t);
    assert_string_equal(t, "[::1]:3129");

    assert_int_equal(c.access.allow_ports.n, 3);
    assert_int_equal(c.access.allow_ports.v[2].lo, 10000);
    assert_int_equal(c.access.allow_ports.v[2].hi, 10100);
    assert_int_equal(c.access.allow_hosts.n, 4);
    assert_int_equal(c.access.allow_hosts.v[0].kind, HOST_PAT_SUFFIX);
    assert_string_equal(c.access.allow_hosts.v[0].name, ".example.com");
    assert_int_equal(c.access.allow_hosts.v[1].kind, HOST_PAT_EXACT);
    assert_string_equal(c.access.allow_hosts.v[1].name, "example.org");
    assert_int_equal(c.access.allow_hosts.v[2].kind, HOST_PAT_CIDR);
    assert_int_equal(c.access.allow_hosts.v[3].kind, HOST_PAT_CIDR);
    assert_int_equal(c.access.deny_hosts.n, 2);
    assert_int_equal(c.access.allow_clients.n, 3);
    assert_false(c.access.deny_private);

    assert_string_equal(c.dns_servers,
                        "192.0.2.53:53,198.51.100.1:5353,[2001:db8::53]:53,[::1]:5300");
    assert_int_equal(c.dns_cache, 0);

    assert_true(c.timeout_handshake == 0.25);
    assert_true(c.timeout_dns == 1.5);
    assert_true(c.timeout_connect == 120);
    assert_true(c.timeout_idle == 3600);
    assert_true(c.timeout_shutdown == 0);

    assert_int_equal(c.max_connections, 1000000);
    assert_int_equal(c.per_client_connections, 16);
    assert_int_equal(c.per_client_rate, 5);
    assert_int_equal(c.max_request_bytes, 1024);

    assert_int_equal(c.log_level, LOG_LEVEL_DEBUG);
    assert_string_equal(c.access_log, "/var/log/connectd/access.log");
    config_free(&c);
}

static void test_values_ok(void **state) {
    static const struct {
        const char *text;
    } cases[] = {
        {"[access]\ndeny_private = yes\n"},
        {"[access]\ndeny_private = TRUE\n"},
        {"[access]\ndeny_private = on\n"},
        {"[access]\ndeny_private = 1\n"},
        {"[access]\ndeny_private = No\n"},
        {"[access]\ndeny_private = false\n"},
        {"[access]\ndeny_private = 0\n"},
        {"[access]\nallow_clients =\n"},
        {"[access]\nallow_hosts =\n"},
        {"[access]\ndeny_hosts = *\n"},
        {"[dns]\nservers =\n"},
        {"[dns]\ncache = 1000000\n"},
        {"[timeouts]\nidle = 24h\n"},
        {"[timeouts]\nconnect = 1ms\n"},
        {"[timeouts]\nshutdown = 0s\n"},
        {"[limits]\nmax_connections = 1\n"},
        {"[limits]\nmax_request_bytes = 65536\n"},
        {"[limits]\nper_client_rate = 1000000\n"},
        {"[log]\naccess_log = off\n"},
        {"[log]\naccess_log = relative.log\n"},
        {"[log]\nlevel = error\n"},
        {"[log]\nlevel = warn\n"},
        {"[server]\nlisten = 127.0.0.1:3128,\n"},
        {"[server]\n\n[server]\nlisten = [::1]:1\n"},
        {"[server]\nworkers = 1\n"},
        {"[server]\nworkers = 64\n"},
        {"[server]\nworkers = auto\n"},
        {"[server]\nrelay = splice\n"},
        {"[server]\nrelay = COPY\n"},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        struct config c;
        char err[CONFIG_ERR_MAX] = "";

        if (config_load_string(cases[i].text, "t.ini", &c, err, sizeof err) != 0)
            fail_msg("rejected: %s\n%s", err, cases[i].text);
        config_free(&c);
    }
}

/* One bad value per case; the key is always on line 3 after a comment line. */
static void test_bad_values(void **state) {
    static const struct {
        const char *section, *key, *value;
        const char *why; /* expected in the message besides FILE:LINE and [section] key */
    } cases[] = {
        {"server", "listen", "", "at least one"},
        {"server", "workers", "0", "1 to 64"},
        {"server", "workers", "65", "1 to 64"},
        {"server", "workers", "two", "1 to 64"},
        {"server", "relay", "fast", "auto, splice or copy"},
        {"server", "listen", ",", "at least one"},
        {"server", "listen", "127.0.0.1", "missing port"},
        {"server", "listen", "localhost:3128", "not an IPv4 address"},
        {"server", "listen", "127.0.0.1:0", "bad port"},
        {"server", "listen", "127.0.0.1:65536", "bad port"},
        {"server", "listen", "::1:3128", "brackets"},
        {"server", "listen", "127.0.0.1:3128, 127.0.0.1:3128", "listed twice"},
        {"server", "listen", "127.0.0.1:3128 127.0.0.1:3129", "separate items with commas"},
        {"dns", "servers", "192.0.2.1 192.0.2.2", "separate items with commas"},
        {"access", "allow_clients", "10.0.0.0/8 ::1", "separate items with commas"},
        {"access", "allow_ports", "0", "'0'"},
        {"access", "allow_ports", "443, 99999", "'99999'"},
        {"access", "allow_ports", "443-", "'443-'"},
        {"access", "allow_ports", "500-400", "'500-400'"},
        {"access", "allow_ports", "https", "'https'"},
        {"access", "allow_hosts", "a*.example.com", "'a*.example.com'"},
        {"access", "allow_hosts", "*.*.example.com", "'*.*.example.com'"},
        {"access", "allow_hosts", "10.0.0.1/8", "did you mean 10.0.0.0/8"},
        {"access", "deny_hosts", "exa_mple.com, bad host", "'bad host'"},
        {"access", "allow_clients", "localhost", "'localhost'"},
        {"access", "allow_clients", "10.0.0.0/33", "out of range"},
        {"access", "deny_private", "maybe", "yes or no"},
        {"access", "deny_private", "", "yes or no"},
        {"dns", "servers", "dns.google", "not an IP address"},
        {"dns", "servers", "dns.google:53", "not an IPv4 address"},
        {"dns", "servers", "2001:db8::53", "brackets"},
        {"dns", "servers", "[2001:db8::53", "missing ']'"},
        {"dns", "servers", "[192.0.2.1]", "not an IPv6 address"},
        {"dns", "servers", "192.0.2.1:0", "bad port"},
        {"dns", "servers", "192.0.2.1, 1.2.3", "'1.2.3'"},
        {"dns", "cache", "-1", "0 to 1000000"},
        {"dns", "cache", "1000001", "0 to 1000000"},
        {"dns", "cache", "+5", "0 to 1000000"},
        {"dns", "cache", "0x10", "0 to 1000000"},
        {"dns", "cache", "10k", "0 to 1000000"},
        {"dns", "cache", "99999999999999999999999", "0 to 1000000"},
        {"dns", "cache", "", "0 to 1000000"},
        {"timeouts", "handshake", "10", "needs a unit, e.g. 10s"},
        {"timeouts", "handshake", "1.5", "needs a unit"},
        {"timeouts", "handshake", "0", "greater than 0"},
        {"timeouts", "handshake", "0s", "greater than 0"},
        {"timeouts", "dns", "5 s", "bad duration"},
        {"timeouts", "dns", "5sec", "bad duration"},
        {"timeouts", "dns", "5S", "bad duration"},
        {"timeouts", "dns", "-5s", "bad duration"},
        {"timeouts", "connect", "", "bad duration"},
        {"timeouts", "connect", "25h", "at most 24h"},
        {"timeouts", "idle", "1441m", "at most 24h"},
        {"timeouts", "idle", "0ms", "greater than 0"},
        {"timeouts", "shutdown", "1d", "bad duration"},
        {"timeouts", "shutdown", "2h30m", "bad duration"},
        {"limits", "max_connections", "0", "1 to 1000000"},
        {"limits", "max_connections", "1000001", "1 to 1000000"},
        {"limits", "per_client_connections", "1e3", "0 to 1000000"},
        {"limits", "per_client_rate", " -0", "0 to 1000000"},
        {"limits", "max_request_bytes", "1023", "1024 to 65536"},
        {"limits", "max_request_bytes", "65537", "1024 to 65536"},
        {"log", "level", "verbose", "error, warn, info or debug"},
        {"log", "access_log", "", "empty"},
    };
    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        char text[512], key[96];

        (void)snprintf(text, sizeof text, "[%s]\n; line 2\n%s = %s\n", cases[i].section,
                       cases[i].key, cases[i].value);
        (void)snprintf(key, sizeof key, "[%s] %s: ", cases[i].section, cases[i].key);
        EXPECT_ERROR(text, "t.ini:3: ", key, cases[i].why);
        /* The value is quoted back, except when it is empty. */
        if (cases[i].value[0] != ' ') {
            char got[256];

            (void)snprintf(got, sizeof got, "(got '%s')", cases[i].value);
            EXPECT_ERROR(text, got);
        }
    }
}

static void test_unknown_keys_and_sections(void **state) {
    (void)state;
    EXPECT_ERROR("[server]\nlisten = 127.0.0.1:1\nlistne = 1.2.3.4:5\n",
                 "t.ini:3: [server] listne: unknown key", "known: listen");
    EXPECT_ERROR("[timeouts]\nread = 5s\n", "t.ini:2: [timeouts] read: unknown key",
                 "handshake, dns, connect, idle, shutdown");
    EXPECT_ERROR("[server]\nLISTEN = 127.0.0.1:1\n", "t.ini:2: [server] LISTEN: unknown key");
    EXPECT_ERROR("[auth]\nfoo = bar\n", "t.ini:2: [auth] foo: unknown key");
    /* A key of another section. */
    EXPECT_ERROR("[dns]\n\nlisten = 127.0.0.1:1\n", "t.ini:3: [dns] listen: unknown key");
    /* Unknown section with keys, and empty (inih alone would never tell us). */
    EXPECT_ERROR("[server]\n[proxy]\nlisten = 127.0.0.1:1\n", "t.ini:2: [proxy]: unknown section");
    EXPECT_ERROR("; c\n\n\n[logging]\n", "t.ini:4: [logging]: unknown section",
                 "[server] [access]");
    EXPECT_ERROR("[log]\n[Log]\n", "t.ini:2: [Log]: unknown section");
    EXPECT_ERROR("[server]\n  [ server ]\n", "t.ini:2: [ server ]: unknown section");
    EXPECT_ERROR("[]\n", "t.ini:1: []: unknown section");
    /* Keys outside any section. */
    EXPECT_ERROR("listen = 127.0.0.1:1\n", "t.ini:1: listen: key before any [section]");
}

static void test_syntax(void **state) {
    (void)state;
    EXPECT_ERROR("[server\nlisten = 127.0.0.1:1\n", "t.ini:1: ", "without closing ']'");
    EXPECT_ERROR("[server] junk\n", "t.ini:1: [server]: unexpected text after ']'");
    EXPECT_ERROR("[access]\njust words\n", "t.ini:2: expected 'key = value'");
    EXPECT_ERROR("[access]\n= 443\n", "t.ini:2: missing key name");
    EXPECT_ERROR("[access]\nallow_ports ; = 443\n", "t.ini:2: expected 'key = value'");
    /* An inih-style continuation line is a syntax error, not a silent second value. */
    EXPECT_ERROR("[access]\nallow_hosts = a.com,\n    b.com\n",
                 "t.ini:3: ", "cannot continue on the next line");
    /* Comments of both kinds and a section comment are fine. */
    {
        struct config c;
        char err[CONFIG_ERR_MAX] = "";

        assert_int_equal(config_load_string("# a\n; b\n[log] ; c\n  ; d\nlevel = warn ; e\n",
                                            "t.ini", &c, err, sizeof err),
                         0);
        assert_int_equal(c.log_level, LOG_LEVEL_WARN);
        config_free(&c);
    }
}

static void test_duplicate_key(void **state) {
    (void)state;
    EXPECT_ERROR("[access]\nallow_ports = 443\n; x\nallow_ports = 8443\n",
                 "t.ini:4: [access] allow_ports: duplicate key", "line 2");
    /* Also across two headers of the same section. */
    EXPECT_ERROR("[log]\nlevel = info\n[server]\n[log]\nlevel = debug\n",
                 "t.ini:5: [log] level: duplicate key", "line 2");
    /* Indented keys are ordinary keys (not inih continuations), so this is a duplicate too. */
    EXPECT_ERROR("[log]\n  level = info\n  level = debug\n", "t.ini:3: [log] level: duplicate key");
    /* Same name in different sections is not a duplicate. */
    {
        struct config c;
        char err[CONFIG_ERR_MAX] = "";

        assert_int_equal(config_load_string("[dns]\ncache = 5\n[timeouts]\ndns = 2s\n", "t.ini", &c,
                                            err, sizeof err),
                         0);
        config_free(&c);
    }
}

static void test_long_line(void **state) {
    char text[1024];
    struct config c;
    char err[CONFIG_ERR_MAX] = "";
    size_t o;

    (void)state;
    /* 197 bytes (inih's 200-byte buffer minus "\r\n\0") is the longest line. */
    o = (size_t)snprintf(text, sizeof text, "[log]\n;");
    memset(text + o, 'x', 196);
    o += 196;
    o += (size_t)snprintf(text + o, sizeof text - o, "\r\nlevel = warn\n");
    assert_int_equal(config_load_string(text, "t.ini", &c, err, sizeof err), 0);
    assert_int_equal(c.log_level, LOG_LEVEL_WARN);
    config_free(&c);

    /* 198 bytes: an error with the line number, not a silently split line. */
    o = (size_t)snprintf(text, sizeof text, "[log]\nlevel = warn\n;");
    memset(text + o, 'x', 197);
    o += 197;
    (void)snprintf(text + o, sizeof text - o, "\n");
    EXPECT_ERROR(text, "t.ini:3: line too long (198 bytes; at most 197)");

    /* A long value, the case that matters: a list cut in two would parse as something else. */
    o = (size_t)snprintf(text, sizeof text, "[access]\nallow_hosts = ");
    while (o < 400)
        o += (size_t)snprintf(text + o, sizeof text - o, "host%zu.example.com, ", o);
    (void)snprintf(text + o, sizeof text - o, "\n");
    EXPECT_ERROR(text, "t.ini:2: line too long");

    /* Last line without a newline. */
    o = (size_t)snprintf(text, sizeof text, "[log]\n#");
    memset(text + o, 'y', 300);
    text[o + 300] = '\0';
    EXPECT_ERROR(text, "t.ini:2: line too long (301 bytes");
}

/* [auth] and [access] policy: linked files, their paths, and the names they must share. */
static void test_linked_files(void **state) {
    struct config c;
    char err[CONFIG_ERR_MAX] = "";
    (void)state;

    /* Empty values: no policy, no authentication; the realm has a default. */
    assert_int_equal(config_load_string("[access]\npolicy =\n[auth]\nusers_file =\n", "t.ini", &c,
                                        err, sizeof err),
                     0);
    assert_null(c.policy_file);
    assert_null(c.users_file);
    assert_int_equal(c.rules.n, 0);
    assert_string_equal(c.realm, "connectd");
    assert_string_equal(c.user, "nobody");
    config_free(&c);

    assert_int_equal(
        config_load_string("[auth]\nrealm = Corp Proxy\n", "t.ini", &c, err, sizeof err), 0);
    assert_string_equal(c.realm, "Corp Proxy");
    config_free(&c);

    assert_int_equal(config_load_string("[auth]\nrealm = a\"b\n", "t.ini", &c, err, sizeof err),
                     -1);
    assert_string_equal(err, "t.ini:2: [auth] realm: must be printable ASCII without quotes or "
                             "backslashes (got 'a\"b')");

    /* A missing file is named, resolved against the ini file's directory. */
    assert_int_equal(config_load_string("[access]\npolicy = nope.yaml\n", "/no/such/dir/t.ini", &c,
                                        err, sizeof err),
                     -1);
    assert_string_equal(err, "/no/such/dir/t.ini:2: [access] policy: /no/such/dir/nope.yaml: "
                             "cannot open: No such file or directory");
    assert_int_equal(
        config_load_string("[auth]\nusers_file = /no/users\n", "t.ini", &c, err, sizeof err), -1);
    assert_string_equal(
        err, "t.ini:2: [auth] users_file: /no/users: cannot open: No such file or directory");
}

static void write_file(const char *dir, const char *name, const char *body) {
    char path[256];
    FILE *f;

    (void)snprintf(path, sizeof path, "%s/%s", dir, name);
    f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(body, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(chmod(path, 0600), 0); /* credentials files must be private */
}

static void remove_file(const char *dir, const char *name) {
    char path[256];

    (void)snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(unlink(path), 0);
}

/* A rule's users checked against the users file: the message starts with the ini file's
 * FILE:LINE like every other one (it started with the policy file's name; fuzz_config found
 * it). */
static void test_linked_rule_users(void **state) {
    char dir[] = "/tmp/connectd-test-XXXXXX";
    char ini[128], name[160], want[CONFIG_ERR_MAX], err[CONFIG_ERR_MAX] = "";
    struct config c;

    (void)state;
    assert_non_null(mkdtemp(dir));
    write_file(dir, "policy.yaml", "rules:\n  - name: r1\n    users: [alice]\n    action: allow\n");
    write_file(dir, "users",
               "bob:$y$j9T$2fEeonU0Haalv0tW0Mx0H/$FRxvNDPDE9pZsxIVdPiaJb7mJUGYwAhEWqFGvXC40w4\n");
    (void)snprintf(name, sizeof name, "%s/proxy.ini", dir);

    (void)snprintf(ini, sizeof ini, "[access]\npolicy = policy.yaml\n");
    memset(&c, 0xa5, sizeof c);
    assert_int_equal(config_load_string(ini, name, &c, err, sizeof err), -1);
    (void)snprintf(want, sizeof want,
                   "%s:2: [access] policy: %s/policy.yaml: rule r1: has users, but [auth] "
                   "users_file is not set",
                   name, dir);
    assert_string_equal(err, want);
    assert_true(all_zero(&c, sizeof c));

    (void)snprintf(ini, sizeof ini, "[auth]\nusers_file = users\n[access]\npolicy = policy.yaml\n");
    assert_int_equal(config_load_string(ini, name, &c, err, sizeof err), -1);
    (void)snprintf(
        want, sizeof want,
        "%s:4: [access] policy: %s/policy.yaml: rule r1: user 'alice' is not in %s/users", name,
        dir, dir);
    assert_string_equal(err, want);
    assert_true(all_zero(&c, sizeof c));

    remove_file(dir, "policy.yaml");
    remove_file(dir, "users");
    assert_int_equal(rmdir(dir), 0);
}

/* "ADDRESS proxy-protocol" in [server] listen, and who may send the header. Every message with
 * its exact text. */
static void test_listen_options(void **state) {
    struct config c;
    char err[CONFIG_ERR_MAX] = "", text[ADDR_TEXT_MAX];
    (void)state;

    /* Off by default, for every address; nobody may send a PROXY header. */
    load_ok("[server]\nlisten = 127.0.0.1:3128, [::1]:3128\n", "t.ini", &c);
    assert_false(c.listen[0].proxy_protocol);
    assert_false(c.listen[1].proxy_protocol);
    assert_int_equal(c.proxy_protocol_from.n, 0);
    config_free(&c);

    assert_int_equal(config_load_string("[server]\nlisten = 0.0.0.0:3128 proxy-protocol, "
                                        "127.0.0.1:3128\nproxy_protocol_from = 10.0.0.0/24\n",
                                        "t.ini", &c, err, sizeof err),
                     0);
    assert_int_equal(c.nlisten, 2);
    assert_true(c.listen[0].proxy_protocol);
    assert_false(c.listen[1].proxy_protocol);
    assert_int_equal(c.proxy_protocol_from.n, 1);
    config_free(&c);

    /* Spaces or tabs between the address and its option, IPv6, the key before listen. */
    load_ok("[server]\nproxy_protocol_from = ::1, 10.0.0.0/8\n"
            "listen = [::1]:3128\tproxy-protocol, 127.0.0.1:1   proxy-protocol ,127.0.0.1:2\n",
            "t.ini", &c);
    assert_int_equal(c.nlisten, 3);
    listen_text(&c, 0, text);
    assert_string_equal(text, "[::1]:3128");
    assert_true(c.listen[0].proxy_protocol);
    listen_text(&c, 1, text);
    assert_string_equal(text, "127.0.0.1:1");
    assert_true(c.listen[1].proxy_protocol);
    assert_false(c.listen[2].proxy_protocol);
    assert_int_equal(c.proxy_protocol_from.n, 2);
    config_free(&c);

    EXPECT_EXACT("[server]\nlisten = 0.0.0.0:3128 proxy-protocol\n",
                 "t.ini:2: [server] listen: 0.0.0.0:3128 proxy-protocol: set [server] "
                 "proxy_protocol_from to the load balancers' addresses");
    /* An empty proxy_protocol_from is nobody. */
    EXPECT_EXACT("[server]\nproxy_protocol_from =\n\nlisten = [::1]:1 proxy-protocol\n",
                 "t.ini:4: [server] listen: [::1]:1 proxy-protocol: set [server] "
                 "proxy_protocol_from to the load balancers' addresses");
    EXPECT_EXACT("[server]\nlisten = 0.0.0.0:3128 proxy-protocol proxy-protocol\n"
                 "proxy_protocol_from = 10.0.0.1\n",
                 "t.ini:2: [server] listen: 'proxy-protocol' is given twice (got '0.0.0.0:3128 "
                 "proxy-protocol proxy-protocol')");
    EXPECT_EXACT("[server]\nlisten = 0.0.0.0:3128 tcp\n",
                 "t.ini:2: [server] listen: unknown option 'tcp' (known: proxy-protocol, tls) (got "
                 "'0.0.0.0:3128 tcp')");
    EXPECT_EXACT("[server]\nlisten = 0.0.0.0:3128 Proxy-Protocol\n",
                 "t.ini:2: [server] listen: unknown option 'Proxy-Protocol' (known: "
                 "proxy-protocol, tls) (got '0.0.0.0:3128 Proxy-Protocol')");
    EXPECT_EXACT("[server]\nlisten = 127.0.0.1:1 proxy-protocol 127.0.0.1:2\n",
                 "t.ini:2: [server] listen: '127.0.0.1:2' after an address: separate items with "
                 "commas (got '127.0.0.1:1 proxy-protocol 127.0.0.1:2')");
    EXPECT_EXACT("[server]\nlisten = 127.0.0.1:1 proxy-protocol, 127.0.0.1:1\n",
                 "t.ini:2: [server] listen: '127.0.0.1:1' is listed twice (got '127.0.0.1:1 "
                 "proxy-protocol, 127.0.0.1:1')");
    EXPECT_EXACT("[admin]\nlisten = 127.0.0.1:9128 proxy-protocol\n",
                 "t.ini:2: [admin] listen: 'proxy-protocol': an [admin] address takes no options "
                 "(got '127.0.0.1:9128 proxy-protocol')");
    EXPECT_EXACT("[server]\nproxy_protocol_from = 10.0.0.0/99\n",
                 "t.ini:2: [server] proxy_protocol_from: bad address '10.0.0.0/99': prefix length "
                 "/99 is out of range (0-32) (got '10.0.0.0/99')");
    EXPECT_EXACT("[server]\nproxy_protocol_from = lb.example\n",
                 "t.ini:2: [server] proxy_protocol_from: bad address 'lb.example': 'lb.example' is "
                 "not an IP address (got 'lb.example')");
    EXPECT_EXACT("[server]\nproxy_protocol_from = 10.0.0.1\nproxy_protocol_from = 10.0.0.2\n",
                 "t.ini:3: [server] proxy_protocol_from: duplicate key (already set on line 2)");
}

/* [admin]: its addresses join listen marked admin; token file rules; [timeouts] grace. */
static void test_admin(void **state) {
    struct config c;
    char err[CONFIG_ERR_MAX] = "", text[ADDR_TEXT_MAX], dir[] = "/tmp/connectd-test-XXXXXX";
    (void)state;

    /* Off by default; loopback only. */
    assert_int_equal(config_load_string("", "t.ini", &c, err, sizeof err), 0);
    assert_int_equal(c.nlisten, 1);
    assert_false(c.listen[0].admin);
    assert_int_equal(c.admin.allow_clients.n, 2);
    assert_null(c.admin.token);
    assert_true(c.timeout_grace == 0);
    config_free(&c);

    assert_int_equal(config_load_string("[admin]\nlisten = 127.0.0.1:9128, [::1]:9128\n"
                                        "allow_clients = 10.0.0.0/8\n[server]\n"
                                        "listen = 127.0.0.1:3128\n[timeouts]\ngrace = 5s\n",
                                        "t.ini", &c, err, sizeof err),
                     0);
    assert_int_equal(c.nlisten, 3);
    listen_text(&c, 0, text);
    assert_string_equal(text, "127.0.0.1:3128");
    assert_false(c.listen[0].admin);
    listen_text(&c, 1, text);
    assert_string_equal(text, "127.0.0.1:9128");
    assert_true(c.listen[1].admin);
    listen_text(&c, 2, text);
    assert_string_equal(text, "[::1]:9128");
    assert_true(c.listen[2].admin);
    assert_int_equal(c.admin.allow_clients.n, 1);
    assert_true(c.timeout_grace == 5);
    config_free(&c);

    /* An empty admin listen is "off"; a proxy address cannot be the admin one too. */
    assert_int_equal(config_load_string("[admin]\nlisten =\n", "t.ini", &c, err, sizeof err), 0);
    assert_int_equal(c.nlisten, 1);
    config_free(&c);
    EXPECT_ERROR("[admin]\nlisten = 127.0.0.1:3128\n",
                 "t.ini:2: [admin] listen: 127.0.0.1:3128 is also in [server] listen");
    EXPECT_ERROR("[admin]\nlisten = localhost:9128\n", "t.ini:2: [admin] listen: bad address");
    EXPECT_ERROR("[admin]\nallow_clients = 10.0.0.0/33\n", "t.ini:2: [admin] allow_clients");
    EXPECT_ERROR("[admin]\nport = 1\n", "t.ini:2: [admin] port: unknown key");
    EXPECT_ERROR("[timeouts]\ngrace = 5\n", "t.ini:2: [timeouts] grace");

    /* The token: first line, trimmed, 16-256 visible characters. */
    assert_non_null(mkdtemp(dir));
    write_file(dir, "token", "  0123456789abcdef-XYZ \nsecond line\n");
    write_file(dir, "short", "0123456789\n");
    write_file(dir, "spaced", "0123456789 abcdef-XYZ\n");
    char ini[512], path[300];
    (void)snprintf(path, sizeof path, "%s/t.ini", dir);
    assert_int_equal(config_load_string("[admin]\ntoken_file = token\n", path, &c, err, sizeof err),
                     0);
    assert_string_equal(c.admin.token, "0123456789abcdef-XYZ");
    config_free(&c);
    assert_int_equal(config_load_string("[admin]\ntoken_file = short\n", path, &c, err, sizeof err),
                     -1);
    (void)snprintf(ini, sizeof ini,
                   "%s:2: [admin] token_file: %s/short: the token must be 16 to 256 characters "
                   "long (has 10)",
                   path, dir);
    assert_string_equal(err, ini);
    assert_int_equal(
        config_load_string("[admin]\ntoken_file = spaced\n", path, &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "only visible ASCII"));
    assert_int_equal(config_load_string("[admin]\ntoken_file = nope\n", path, &c, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, ":2: [admin] token_file: "));
    assert_non_null(strstr(err, "nope: cannot open: No such file or directory"));
    remove_file(dir, "token");
    remove_file(dir, "short");
    remove_file(dir, "spaced");
    assert_int_equal(rmdir(dir), 0);
}

/* ---- [tls] and "tls" listeners ---- */

/* load_tls_files only reads the files [tls] names (whether they hold a certificate and its key
 * is tls.c's check, with OpenSSL), so any text will do here. The key is private like parent
 * credentials; open.pem is a key others may read. */
static void tls_files_make(char *dir, char *ini, size_t inilen) {
    assert_non_null(mkdtemp(dir));
    write_file(dir, "cert.pem", "CERTIFICATE\n");
    write_file(dir, "key.pem", "KEY A\n");
    write_file(dir, "key2.pem", "KEY B\n");
    write_file(dir, "group.pem", "KEY G\n");
    write_file(dir, "open.pem", "KEY O\n");
    write_file(dir, "ocsp.der", "OCSP");
    (void)snprintf(ini, inilen, "%s/cert.pem", dir);
    assert_int_equal(chmod(ini, 0644), 0); /* a certificate is public */
    (void)snprintf(ini, inilen, "%s/group.pem", dir);
    assert_int_equal(chmod(ini, 0640), 0);
    (void)snprintf(ini, inilen, "%s/open.pem", dir);
    assert_int_equal(chmod(ini, 0644), 0);
    (void)snprintf(ini, inilen, "%s/t.ini", dir);
}

static void tls_files_remove(const char *dir) {
    static const char *const files[] = {"cert.pem",  "key.pem",  "key2.pem",
                                        "group.pem", "open.pem", "ocsp.der"};

    for (size_t i = 0; i < N(files); i++)
        remove_file(dir, files[i]);
    assert_int_equal(rmdir(dir), 0);
}

/* Every [tls] key set, relative paths taken from the ini's directory, the files read. */
static void test_tls_keys(void **state) {
    char dir[] = "/tmp/connectd-test-XXXXXX", ini[128], path[160], text[512];
    struct config c;
    (void)state;

    tls_files_make(dir, ini, sizeof ini);
    load_ok("[server]\nlisten = 127.0.0.1:3128, 127.0.0.1:3129 tls\n"
            "[tls]\n"
            "certificate = cert.pem\n"
            "key = key.pem\n"
            "min_version = 1.3\n"
            "alpn = http/1.1\n"
            "ocsp_staple = ocsp.der\n"
            "session_tickets = no\n",
            ini, &c);
    assert_int_equal(c.nlisten, 2);
    assert_false(c.listen[0].tls);
    assert_true(c.listen[1].tls);
    assert_false(c.listen[1].proxy_protocol);
    assert_true(c.has_tls_listener);
    (void)snprintf(path, sizeof path, "%s/cert.pem", dir);
    assert_string_equal(c.tls.certificate, path);
    (void)snprintf(path, sizeof path, "%s/key.pem", dir);
    assert_string_equal(c.tls.key, path);
    (void)snprintf(path, sizeof path, "%s/ocsp.der", dir);
    assert_string_equal(c.tls.ocsp_staple, path);
    assert_int_equal(c.tls.cert_pem_len, 12);
    assert_string_equal(c.tls.cert_pem, "CERTIFICATE\n");
    assert_int_equal(c.tls.key_pem_len, 6);
    assert_string_equal(c.tls.key_pem, "KEY A\n");
    assert_false(c.tls.key_unreadable);
    assert_int_equal(c.tls.ocsp_der_len, 4);
    assert_memory_equal(c.tls.ocsp_der, "OCSP", 4);
    assert_int_equal(c.tls.min_version, 13);
    assert_int_equal(c.tls.alpn_len, 9);
    assert_memory_equal(c.tls.alpn, "\x08http/1.1", 9);
    assert_false(c.tls.session_tickets);
    config_free(&c);

    /* The other spellings: 1.2, booleans, an empty item in the list; absolute paths; no
     * ocsp_staple; a key readable by its group (only others are refused). */
    (void)snprintf(text, sizeof text,
                   "[tls]\nmin_version = 1.2\nalpn = , http/1.1,\nsession_tickets = on\n"
                   "certificate = %s/cert.pem\nkey = %s/group.pem\n",
                   dir, dir);
    load_ok(text, "t.ini", &c);
    assert_int_equal(c.tls.min_version, 12);
    assert_int_equal(c.tls.alpn_len, 9);
    assert_memory_equal(c.tls.alpn, "\x08http/1.1", 9);
    assert_true(c.tls.session_tickets);
    (void)snprintf(path, sizeof path, "%s/group.pem", dir);
    assert_string_equal(c.tls.key, path);
    assert_string_equal(c.tls.key_pem, "KEY G\n");
    assert_null(c.tls.ocsp_staple);
    assert_null(c.tls.ocsp_der);
    assert_int_equal(c.tls.ocsp_der_len, 0);
    /* [tls] without a tls listener: read and checked all the same, but nothing listens. */
    assert_false(c.has_tls_listener);
    assert_int_equal(c.nlisten, 1);
    assert_false(c.listen[0].tls);
    config_free(&c);

    /* An empty section, or settings without files: the defaults, no files. */
    load_ok("[tls]\n", "t.ini", &c);
    check_defaults(&c);
    config_free(&c);
    load_ok("[tls]\nmin_version = 1.3\nsession_tickets = no\n", "t.ini", &c);
    assert_int_equal(c.tls.min_version, 13);
    assert_false(c.tls.session_tickets);
    assert_null(c.tls.certificate);
    assert_null(c.tls.cert_pem);
    config_free(&c);

    /* "tls" and "proxy-protocol" on one address, in either order: both flags. */
    load_ok("[server]\nproxy_protocol_from = 10.0.0.1\n"
            "listen = 0.0.0.0:3129 tls proxy-protocol, [::1]:3130\tproxy-protocol  tls, "
            "127.0.0.1:3128\n"
            "[tls]\ncertificate = cert.pem\nkey = key.pem\n",
            ini, &c);
    assert_int_equal(c.nlisten, 3);
    listen_text(&c, 0, text);
    assert_string_equal(text, "0.0.0.0:3129");
    assert_true(c.listen[0].tls);
    assert_true(c.listen[0].proxy_protocol);
    listen_text(&c, 1, text);
    assert_string_equal(text, "[::1]:3130");
    assert_true(c.listen[1].tls);
    assert_true(c.listen[1].proxy_protocol);
    assert_false(c.listen[2].tls);
    assert_false(c.listen[2].proxy_protocol);
    assert_true(c.has_tls_listener);
    config_free(&c);
    tls_files_remove(dir);
}

/* [http2] and ALPN h2: the defaults a browser never hits, values, and exact messages. */
static void test_http2(void **state) {
    (void)state;
    struct config c;
    load_ok("", "t.ini", &c);
    assert_int_equal(c.h2.max_streams, 100);
    assert_int_equal(c.h2.stream_window, 262144);
    assert_int_equal(c.h2.connection_window, 4194304);
    config_free(&c);

    load_ok("[tls]\nalpn = h2, http/1.1\n[http2]\nmax_concurrent_streams = 4\n"
            "stream_window = 16384\nconnection_window = 2147483647\n",
            "t.ini", &c);
    assert_int_equal(c.tls.alpn_len, 12);
    assert_memory_equal(c.tls.alpn, "\x02h2\x08http/1.1", 12);
    assert_int_equal(c.h2.max_streams, 4);
    assert_int_equal(c.h2.stream_window, 16384);
    assert_int_equal(c.h2.connection_window, 2147483647u);
    config_free(&c);

    load_ok("[tls]\nalpn = http/1.1, h2\n", "t.ini", &c); /* our order of preference */
    assert_memory_equal(c.tls.alpn, "\x08http/1.1\x02h2", 12);
    config_free(&c);

    static const struct {
        const char *text, *want;
    } cases[] = {
        {"[http2]\nmax_concurrent_streams = 0\n",
         "t.ini:2: [http2] max_concurrent_streams: must be a whole number from 1 to 10000 (got "
         "'0')"},
        {"[http2]\nstream_window = 16383\n",
         "t.ini:2: [http2] stream_window: must be a whole number from 16384 to 2147483647 (got "
         "'16383')"},
        {"[http2]\nconnection_window = 2147483648\n",
         "t.ini:2: [http2] connection_window: must be a whole number from 65535 to 2147483647 "
         "(got '2147483648')"},
        {"[http2]\nwindow = 1\n", "t.ini:2: [http2] window: unknown key (known: "
                                  "max_concurrent_streams, stream_window, connection_window)"},
    };
    for (size_t i = 0; i < N(cases); i++)
        EXPECT_EXACT(cases[i].text, cases[i].want);
}

/* Every [tls] message that needs no file, with its exact text. */
static void test_tls_errors(void **state) {
    static const struct {
        const char *text, *want;
    } cases[] = {
        /* Values. */
        {"[tls]\nmin_version = 1.1\n", "t.ini:2: [tls] min_version: must be 1.2 or 1.3 (older "
                                       "versions are not offered) (got '1.1')"},
        {"[tls]\nmin_version = 1.0\n", "t.ini:2: [tls] min_version: must be 1.2 or 1.3 (older "
                                       "versions are not offered) (got '1.0')"},
        {"[tls]\nmin_version = TLSv1.3\n", "t.ini:2: [tls] min_version: must be 1.2 or 1.3 "
                                           "(older versions are not offered) (got 'TLSv1.3')"},
        {"[tls]\nmin_version =\n", "t.ini:2: [tls] min_version: must be 1.2 or 1.3 (older "
                                   "versions are not offered) (got '')"},
        {"[tls]\nalpn = h2, h2\n", "t.ini:2: [tls] alpn: 'h2' is listed twice (got 'h2, h2')"},
        {"[tls]\nalpn = h2c\n",
         "t.ini:2: [tls] alpn: unknown protocol 'h2c' (known: h2, http/1.1) (got 'h2c')"},
        {"[tls]\nalpn = spdy/3.1\n",
         "t.ini:2: [tls] alpn: unknown protocol 'spdy/3.1' (known: h2, http/1.1) (got 'spdy/3.1')"},
        /* ALPN protocol IDs are compared byte for byte (RFC 7301). */
        {"[tls]\nalpn = HTTP/1.1\n",
         "t.ini:2: [tls] alpn: unknown protocol 'HTTP/1.1' (known: h2, http/1.1) (got 'HTTP/1.1')"},
        {"[tls]\nalpn = http/1.1, http/1.1\n",
         "t.ini:2: [tls] alpn: 'http/1.1' is listed twice (got 'http/1.1, http/1.1')"},
        {"[tls]\nalpn =\n",
         "t.ini:2: [tls] alpn: needs at least one protocol, e.g. http/1.1 (got '')"},
        {"[tls]\nalpn = ,\n",
         "t.ini:2: [tls] alpn: needs at least one protocol, e.g. http/1.1 (got ',')"},
        {"[tls]\nsession_tickets = maybe\n",
         "t.ini:2: [tls] session_tickets: must be yes or no (got 'maybe')"},
        /* Keys. */
        {"[tls]\ncert = cert.pem\n", "t.ini:2: [tls] cert: unknown key (known: certificate, "
                                     "key, min_version, alpn, ocsp_staple, session_tickets)"},
        {"[tls]\nmin_version = 1.2\n[server]\n[tls]\nmin_version = 1.3\n",
         "t.ini:5: [tls] min_version: duplicate key (already set on line 2)"},
        /* Files that go together; checked before any is opened. */
        {"[tls]\ncertificate = cert.pem\n", "t.ini:2: [tls] certificate: needs [tls] key too"},
        {"[tls]\nmin_version = 1.3\nkey = key.pem\n",
         "t.ini:3: [tls] key: needs [tls] certificate too"},
        {"[tls]\nocsp_staple = ocsp.der\n",
         "t.ini:2: [tls] ocsp_staple: needs [tls] certificate and key"},
        {"[tls]\nocsp_staple = ocsp.der\nkey = key.pem\n",
         "t.ini:3: [tls] key: needs [tls] certificate too"},
        /* A tls listener: the message is at the listen line, wherever [tls] is. */
        {"[server]\nlisten = 127.0.0.1:3129 tls\n",
         "t.ini:2: [server] listen: a tls listener needs [tls] certificate and key"},
        {"[tls]\nmin_version = 1.3\n[server]\nworkers = 1\nlisten = 127.0.0.1:3128, "
         "127.0.0.1:3129 tls\n",
         "t.ini:5: [server] listen: a tls listener needs [tls] certificate and key"},
        {"[server]\nlisten = 127.0.0.1:3129 tls\n[tls]\ncertificate = cert.pem\n",
         "t.ini:2: [server] listen: a tls listener needs [tls] certificate and key"},
        {"[server]\nlisten = 127.0.0.1:3129 tls\n[tls]\nkey = key.pem\n",
         "t.ini:2: [server] listen: a tls listener needs [tls] certificate and key"},
        /* The option itself. */
        {"[server]\nlisten = 127.0.0.1:3129 tls tls\n",
         "t.ini:2: [server] listen: 'tls' is given twice (got '127.0.0.1:3129 tls tls')"},
        {"[server]\nlisten = 127.0.0.1:3129 tls proxy-protocol tls\nproxy_protocol_from = ::1\n",
         "t.ini:2: [server] listen: 'tls' is given twice (got '127.0.0.1:3129 tls proxy-protocol "
         "tls')"},
        {"[server]\nlisten = 127.0.0.1:3129 TLS\n",
         "t.ini:2: [server] listen: unknown option 'TLS' (known: proxy-protocol, tls) (got "
         "'127.0.0.1:3129 TLS')"},
        {"[server]\nlisten = 127.0.0.1:3129 https\n",
         "t.ini:2: [server] listen: unknown option 'https' (known: proxy-protocol, tls) (got "
         "'127.0.0.1:3129 https')"},
        {"[admin]\nlisten = 127.0.0.1:9128 tls\n",
         "t.ini:2: [admin] listen: 'tls': an [admin] address takes no options (got "
         "'127.0.0.1:9128 tls')"},
    };
    (void)state;

    for (size_t i = 0; i < N(cases); i++)
        EXPECT_EXACT(cases[i].text, cases[i].want);
}

/* The files: each named with its resolved path, after the ini's FILE:LINE. */
static void test_tls_files(void **state) {
    char dir[] = "/tmp/connectd-test-XXXXXX", ini[128], want[CONFIG_ERR_MAX];
    (void)state;

    tls_files_make(dir, ini, sizeof ini);
    (void)snprintf(want, sizeof want,
                   "%s:5: [tls] certificate: %s/nope.pem: cannot open: No such file or directory",
                   ini, dir);
    expect_exact("[server]\nlisten = 127.0.0.1:3129 tls\n[tls]\nkey = key.pem\n"
                 "certificate = nope.pem\n",
                 ini, want);
    (void)snprintf(want, sizeof want,
                   "%s:3: [tls] key: %s/nope.pem: cannot open: No such file or directory", ini,
                   dir);
    expect_exact("[tls]\ncertificate = cert.pem\nkey = nope.pem\n", ini, want);
    (void)snprintf(want, sizeof want,
                   "%s:4: [tls] ocsp_staple: %s/nope.der: cannot open: No such file or directory",
                   ini, dir);
    expect_exact("[tls]\ncertificate = cert.pem\nkey = key.pem\nocsp_staple = nope.der\n", ini,
                 want);
    /* An absolute path is taken as it is. */
    (void)snprintf(want, sizeof want,
                   "%s:3: [tls] certificate: /no/such/cert.pem: cannot open: No such file or "
                   "directory",
                   ini);
    expect_exact("[tls]\nkey = key.pem\ncertificate = /no/such/cert.pem\n", ini, want);

    /* The key must not be readable by others, like a parent's credentials (the message is
     * text_file_private's). */
    (void)snprintf(want, sizeof want,
                   "%s:3: [tls] key: %s/open.pem: other users may read it (mode 0644): chmod "
                   "o-rwx",
                   ini, dir);
    expect_exact("[tls]\ncertificate = cert.pem\nkey = open.pem\n", ini, want);

    /* At most 256 KiB each: a long chain or a large OCSP response fits, more is refused. */
    {
        size_t max = (size_t)256 * 1024;
        char *big = malloc(max + 2);
        struct config c;

        assert_non_null(big);
        memset(big, 'x', max + 1);
        big[max] = '\0';
        write_file(dir, "max.pem", big);
        big[max] = 'x';
        big[max + 1] = '\0';
        write_file(dir, "big.pem", big);
        free(big);
        load_ok("[tls]\ncertificate = max.pem\nkey = key.pem\nocsp_staple = max.pem\n", ini, &c);
        assert_int_equal(c.tls.cert_pem_len, max);
        assert_int_equal(c.tls.ocsp_der_len, max);
        config_free(&c);
        (void)snprintf(want, sizeof want,
                       "%s:2: [tls] certificate: %s/big.pem: larger than 262144 bytes", ini, dir);
        expect_exact("[tls]\ncertificate = big.pem\nkey = key.pem\n", ini, want);
        (void)snprintf(want, sizeof want,
                       "%s:4: [tls] ocsp_staple: %s/big.pem: larger than 262144 bytes", ini, dir);
        expect_exact("[tls]\ncertificate = cert.pem\nkey = key.pem\nocsp_staple = big.pem\n", ini,
                     want);
        remove_file(dir, "max.pem");
        remove_file(dir, "big.pem");
    }
    tls_files_remove(dir);
}

/* A reload after the privilege drop cannot read a root-only key: load_tls_files then marks it
 * unreadable (open fails EACCES; the tests run as root, where it never does, so the flag is
 * set by hand). config_keep_tls_key takes the key read at start when the path is the same. */
static void test_tls_keep_key(void **state) {
    char dir[] = "/tmp/connectd-test-XXXXXX", ini[128];
    static const char same[] = "[tls]\ncertificate = cert.pem\nkey = key.pem\n";
    struct config old, c;
    (void)state;

    tls_files_make(dir, ini, sizeof ini);
    load_ok(same, ini, &old);

    /* Same path: a copy of the old key, and the flag cleared. */
    load_ok(same, ini, &c);
    free(c.tls.key_pem);
    c.tls.key_pem = NULL;
    c.tls.key_pem_len = 0;
    c.tls.key_unreadable = true;
    assert_int_equal(config_keep_tls_key(&c, &old), 1);
    assert_false(c.tls.key_unreadable);
    assert_non_null(c.tls.key_pem);
    assert_ptr_not_equal(c.tls.key_pem, old.tls.key_pem);
    assert_int_equal(c.tls.key_pem_len, 6);
    assert_string_equal(c.tls.key_pem, "KEY A\n");
    config_free(&c);
    assert_string_equal(old.tls.key_pem, "KEY A\n"); /* old keeps its own */

    /* Another path: nothing to take; the flag stays, so tls.c refuses the reload. */
    load_ok("[tls]\ncertificate = cert.pem\nkey = key2.pem\n", ini, &c);
    free(c.tls.key_pem);
    c.tls.key_pem = NULL;
    c.tls.key_pem_len = 0;
    c.tls.key_unreadable = true;
    assert_int_equal(config_keep_tls_key(&c, &old), 0);
    assert_true(c.tls.key_unreadable);
    assert_null(c.tls.key_pem);
    config_free(&c);

    /* Nothing unreadable: the key just read stays. */
    load_ok(same, ini, &c);
    const char *mine = c.tls.key_pem;
    assert_int_equal(config_keep_tls_key(&c, &old), 0);
    assert_ptr_equal(c.tls.key_pem, mine);
    assert_false(c.tls.key_unreadable);
    config_free(&c);

    /* An old configuration without a key (no [tls], or its key unreadable too): nothing. */
    {
        struct config none;

        load_ok("", ini, &none);
        load_ok(same, ini, &c);
        free(c.tls.key_pem);
        c.tls.key_pem = NULL;
        c.tls.key_pem_len = 0;
        c.tls.key_unreadable = true;
        assert_int_equal(config_keep_tls_key(&c, &none), 0);
        assert_true(c.tls.key_unreadable);
        assert_null(c.tls.key_pem);
        config_free(&c);
        config_free(&none);
    }
    /* A configuration without [tls] at all: nothing to do. */
    load_ok("", ini, &c);
    assert_int_equal(config_keep_tls_key(&c, &old), 0);
    assert_null(c.tls.key_pem);
    config_free(&c);

    config_free(&old);
    tls_files_remove(dir);
}

/* ---- [parent NAME], [access] via, a rule's via ---- */

/* Fixtures (credentials files, policies) are found through the ini's directory. */
#define DATA_INI "tests/unit/data/t.ini"

/* Three parents with every key form, and [access] via naming them in order. */
/* Credentials files must not be readable by others (config.c refuses them); git checks files
 * out 0644, so the tests make theirs private first. */
static void private_credentials(void) {
    static const char *const files[] = {
        "parent_credentials",
        "parent_credentials_crlf",
        "parent_credentials_empty",
        "parent_credentials_empty_password",
        "parent_credentials_no_colon",
        "parent_credentials_no_user",
        "parent_credentials_second_line",
    };
    char path[128];

    for (size_t i = 0; i < N(files); i++) {
        (void)snprintf(path, sizeof path, "tests/unit/data/%s", files[i]);
        assert_int_equal(chmod(path, 0600), 0);
    }
}

static void test_parents(void **state) {
    private_credentials();
    struct config c;
    (void)state;

    /* None: no parents, and via is direct. */
    load_ok("", "t.ini", &c);
    assert_int_equal(c.nparents, 0);
    assert_null(c.parents);
    assert_int_equal(c.nvia, 1);
    assert_int_equal(c.via[0], VIA_DIRECT);
    assert_null(c.via_text);
    config_free(&c);

    load_ok("; parents\n"
            "[parent up1]\n"
            "address = Proxy1.Example.COM:3128\n"
            "\n"
            "[parent Up-2_b]\n"
            "  address = [2001:db8::1]:8080 ; inline comment\n"
            "connect_timeout = 2s\n"
            "backoff = 1m\n"
            "credentials_file = parent_credentials\n"
            "[access]\n"
            "via = up1, Up-2_b ,direct\n"
            "[parent abcdefghijklmnopqrstuvwxyz012345]\n"
            "address = 192.0.2.1:1\n"
            "backoff = 250ms\n"
            "connect_timeout = 24h\n",
            DATA_INI, &c);
    assert_int_equal(c.nparents, 3);

    const struct parent *p = &c.parents[0];
    assert_string_equal(p->name, "up1");
    assert_string_equal(p->host, "proxy1.example.com"); /* as the request target: lowercased */
    assert_int_equal(p->port, 3128);
    assert_null(p->credentials_file);
    assert_null(p->authorization);
    assert_true(p->connect_timeout == 5); /* defaults */
    assert_true(p->backoff == 30);
    assert_int_equal(p->line, 2);

    p = &c.parents[1];
    assert_string_equal(p->name, "Up-2_b");
    assert_string_equal(p->host, "2001:db8::1"); /* without the brackets */
    assert_int_equal(p->port, 8080);
    assert_true(p->connect_timeout == 2);
    assert_true(p->backoff == 60);
    assert_string_equal(p->credentials_file, "tests/unit/data/parent_credentials");
    assert_string_equal(p->authorization, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="); /* RFC 7617 */
    assert_int_equal(p->line, 5);

    p = &c.parents[2];
    assert_int_equal(strlen(p->name), 32); /* the longest name */
    assert_string_equal(p->host, "192.0.2.1");
    assert_int_equal(p->port, 1);
    assert_true(p->backoff == 0.25);
    assert_true(p->connect_timeout == 86400);
    assert_int_equal(p->line, 12);

    /* via as written, and resolved to indexes in order. */
    assert_string_equal(c.via_text, "up1, Up-2_b ,direct");
    assert_int_equal(c.nvia, 3);
    assert_int_equal(c.via[0], 0);
    assert_int_equal(c.via[1], 1);
    assert_int_equal(c.via[2], VIA_DIRECT);
    config_free(&c);
    assert_true(all_zero(&c, sizeof c));

    /* A parent need not be used; via may name a parent defined after [access]; empty items
     * are skipped; an empty credentials_file is none. */
    load_ok("[access]\nvia = , b,\n[parent a]\naddress = a.test:1\n[parent b]\n"
            "address = 10.0.0.1:3128\ncredentials_file =\n",
            "t.ini", &c);
    assert_int_equal(c.nparents, 2);
    assert_null(c.parents[1].credentials_file);
    assert_null(c.parents[1].authorization);
    assert_int_equal(c.nvia, 1);
    assert_int_equal(c.via[0], 1);
    config_free(&c);
}

/* The credentials file: its first line "user:password" as a Basic header value. */
static void test_parents_credentials(void **state) {
    private_credentials();
    static const struct {
        const char *file, *authorization;
    } good[] = {
        {"parent_credentials", "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="},
        /* CR LF ends the line; the password may hold ':'; later lines are not read. */
        {"parent_credentials_crlf", "Basic YWxpY2U6czNjcmV0OndpdGg6Y29sb25z"},
        /* An empty password, and no newline at the end. */
        {"parent_credentials_empty_password", "Basic Ym9iOg=="},
    };
    static const char *const bad[] = {
        "parent_credentials_no_colon",
        "parent_credentials_no_user",
        "parent_credentials_empty",
        "parent_credentials_second_line",
    };
    char ini[256], want[CONFIG_ERR_MAX];
    struct config c;
    (void)state;

    for (size_t i = 0; i < N(good); i++) {
        (void)snprintf(ini, sizeof ini,
                       "[parent p]\naddress = p.test:3128\ncredentials_file = %s\n", good[i].file);
        load_ok(ini, DATA_INI, &c);
        assert_string_equal(c.parents[0].authorization, good[i].authorization);
        config_free(&c);
    }
    for (size_t i = 0; i < N(bad); i++) {
        (void)snprintf(ini, sizeof ini,
                       "[parent p]\ncredentials_file = %s\naddress = p.test:3128\n", bad[i]);
        (void)snprintf(want, sizeof want,
                       DATA_INI ":2: [parent p] credentials_file: tests/unit/data/%s: expected one "
                                "line 'user:password'",
                       bad[i]);
        expect_exact(ini, DATA_INI, want);
    }
    /* A relative path is taken from the ini's directory, an absolute one as it is. */
    expect_exact("[parent p]\naddress = p.test:3128\ncredentials_file = /no/such/file\n", DATA_INI,
                 DATA_INI ":3: [parent p] credentials_file: /no/such/file: cannot open: No such "
                          "file or directory");
    expect_exact("[parent p]\naddress = p.test:3128\n\ncredentials_file = nope\n", DATA_INI,
                 DATA_INI ":4: [parent p] credentials_file: tests/unit/data/nope: cannot open: No "
                          "such file or directory");

    /* At most 4096 bytes. */
    {
        char dir[] = "/tmp/connectd-test-XXXXXX", big[4100], name[300];

        assert_non_null(mkdtemp(dir));
        memset(big, 'x', sizeof big - 1);
        big[0] = 'u';
        big[1] = ':';
        big[sizeof big - 1] = '\0';
        write_file(dir, "big", big);
        big[4096] = '\0';
        write_file(dir, "max", big);
        (void)snprintf(name, sizeof name, "%s/t.ini", dir);
        load_ok("[parent p]\naddress = p.test:3128\ncredentials_file = max\n", name, &c);
        assert_int_equal(strlen(c.parents[0].authorization), 6 + 4 * ((4096 + 2) / 3));
        config_free(&c);
        (void)snprintf(want, sizeof want,
                       "%s:3: [parent p] credentials_file: %s/big: larger than 4096 bytes", name,
                       dir);
        expect_exact("[parent p]\naddress = p.test:3128\ncredentials_file = big\n", name, want);
        remove_file(dir, "big");
        remove_file(dir, "max");
        assert_int_equal(rmdir(dir), 0);
    }
}

/* Every message of a [parent NAME] section, with its exact text. */
static void test_parents_errors(void **state) {
    private_credentials();
    {
        struct config c;
        char err[CONFIG_ERR_MAX] = "";
        assert_int_equal(chmod("tests/unit/data/parent_credentials", 0644), 0);
        assert_int_equal(config_load_string("[parent p]\naddress = 192.0.2.1:3128\n"
                                            "credentials_file = parent_credentials\n",
                                            "tests/unit/data/t.ini", &c, err, sizeof err),
                         -1);
        assert_string_equal(err, "tests/unit/data/t.ini:3: [parent p] credentials_file: "
                                 "tests/unit/data/parent_credentials: other users may read it "
                                 "(mode 0644): chmod o-rwx");
        private_credentials();
    }
    static const struct {
        const char *text, *want;
    } cases[] = {
        /* Names: 1-32 of [A-Za-z0-9_-], not "direct", unique. */
        {"[parent a.b]\n", "t.ini:1: [parent a.b]: a parent's name is 1-32 letters, digits, '-' "
                           "or '_', and not 'direct'"},
        {"[server]\n[parent direct]\naddress = a.test:1\n",
         "t.ini:2: [parent direct]: a parent's name is 1-32 letters, digits, '-' or '_', and not "
         "'direct'"},
        {"[parent a b]\n", "t.ini:1: [parent a b]: a parent's name is 1-32 letters, digits, '-' "
                           "or '_', and not 'direct'"},
        {"[parent  a]\n", "t.ini:1: [parent  a]: a parent's name is 1-32 letters, digits, '-' "
                          "or '_', and not 'direct'"},
        {"[parent abcdefghijklmnopqrstuvwxyz0123456]\n",
         "t.ini:1: [parent abcdefghijklmnopqrstuvwxyz0123456]: a parent's name is 1-32 letters, "
         "digits, '-' or '_', and not 'direct'"},
        /* A long name is quoted back cut to 40 bytes. */
        {"[parent aaaaaaaaaabbbbbbbbbbccccccccccddddddddddeeeeeeeeee]\n",
         "t.ini:1: [parent aaaaaaaaaabbbbbbbbbbccccccccccdddddddddd]: a parent's name is 1-32 "
         "letters, digits, '-' or '_', and not 'direct'"},
        {"[parent a]\naddress = a.test:1\n\n[parent a]\n",
         "t.ini:4: [parent a]: already defined on line 1"},
        /* "[parent]" and "[parent ]" name no parent: they are unknown sections. */
        {"[parent]\n", "t.ini:1: [parent]: unknown section (known: [server] [access] [dns] "
                       "[timeouts] [limits] [log] [auth] [admin] [tls] [http2] [parent NAME])"},
        {"[parent ]\n", "t.ini:1: [parent ]: unknown section (known: [server] [access] [dns] "
                        "[timeouts] [limits] [log] [auth] [admin] [tls] [http2] [parent NAME])"},
        {"[parent a] x\n", "t.ini:1: [parent a]: unexpected text after ']'"},
        /* Keys. */
        {"[parent a]\nport = 3128\n", "t.ini:2: [parent a] port: unknown key (known: address, "
                                      "credentials_file, connect_timeout, backoff)"},
        {"[parent a]\naddress = a.test:1\n[server]\n[parent b]\naddress = b.test:1\n"
         "address = c.test:1\n",
         "t.ini:6: [parent b] address: duplicate key (already set on line 5)"},
        {"[parent a]\nbackoff = 1s\n", "t.ini:1: [parent a]: needs an address (address = "
                                       "host:port)"},
        /* Values. */
        {"[parent a]\naddress = a.test\n",
         "t.ini:2: [parent a] address: must be host:port (missing port) (got 'a.test')"},
        {"[parent a]\naddress =\n",
         "t.ini:2: [parent a] address: must be host:port (empty authority) (got '')"},
        {"[parent a]\naddress = 2001:db8::1:3128\n",
         "t.ini:2: [parent a] address: must be host:port (IPv6 address must be in brackets) (got "
         "'2001:db8::1:3128')"},
        {"[parent a]\naddress = user@a.test:3128\n",
         "t.ini:2: [parent a] address: must be host:port (userinfo not allowed) (got "
         "'user@a.test:3128')"},
        {"[parent a]\naddress = http://a.test:3128\n",
         "t.ini:2: [parent a] address: must be host:port (request target must be host:port) (got "
         "'http://a.test:3128')"},
        {"[parent a]\naddress = a.test:65536\n",
         "t.ini:2: [parent a] address: must be host:port (port out of range) (got "
         "'a.test:65536')"},
        {"[parent a]\naddress = a_b!.test:1\n",
         "t.ini:2: [parent a] address: must be host:port (bad character in host) (got "
         "'a_b!.test:1')"},
        {"[parent a]\nconnect_timeout = 5\n",
         "t.ini:2: [parent a] connect_timeout: needs a unit, e.g. 10s (ms, s, m or h) (got '5')"},
        {"[parent a]\nconnect_timeout = 0s\n",
         "t.ini:2: [parent a] connect_timeout: must be greater than 0 (got '0s')"},
        {"[parent a]\nbackoff = 25h\n", "t.ini:2: [parent a] backoff: must be at most 24h (got "
                                        "'25h')"},
        {"[parent a]\nbackoff = soon\n",
         "t.ini:2: [parent a] backoff: bad duration; use a number and a unit ms, s, m or h, e.g. "
         "250ms, 10s, 1.5m, 1h (got 'soon')"},
    };
    (void)state;

    for (size_t i = 0; i < N(cases); i++)
        EXPECT_EXACT(cases[i].text, cases[i].want);
}

/* [access] via: names resolved once every section is read. */
static void test_parents_via(void **state) {
    private_credentials();
    char text[256];
    (void)state;

    EXPECT_EXACT("[access]\nvia = up1\n",
                 "t.ini:2: [access] via: 'up1' is neither direct nor a [parent NAME] section");
    EXPECT_EXACT("[parent up1]\naddress = a.test:1\n[access]\nvia = up1, up2, direct\n",
                 "t.ini:4: [access] via: 'up2' is neither direct nor a [parent NAME] section");
    EXPECT_EXACT("[access]\nvia = ,\n", "t.ini:2: [access] via: needs direct or a parent's name");
    EXPECT_EXACT("[access]\n\nvia =\n", "t.ini:3: [access] via: needs direct or a parent's name");
    EXPECT_EXACT("[access]\nvia = direct\nvia = direct\n",
                 "t.ini:3: [access] via: duplicate key (already set on line 2)");
    (void)snprintf(text, sizeof text, "[access]\nvia = direct, %064d\n", 0);
    EXPECT_EXACT(text, "t.ini:2: [access] via: a name is too long");
    /* A parent's error is reported before via's. */
    EXPECT_EXACT("[access]\nvia = nope\n[parent a]\n",
                 "t.ini:3: [parent a]: needs an address (address = host:port)");
}

/* A rule's via: the names resolved against the ini's parents; an unknown one is reported with
 * the ini's FILE:LINE of [access] policy, the policy file and the rule. */
static void test_parents_policy_via(void **state) {
    private_credentials();
    struct config c;
    (void)state;

    load_ok("[parent up1]\naddress = a.test:3128\n[parent up2]\naddress = b.test:3128\n"
            "[access]\npolicy = parent_policy.yaml\nvia = up2\n",
            DATA_INI, &c);
    assert_int_equal(c.rules.n, 4);
    assert_int_equal(c.nvia, 1);
    assert_int_equal(c.via[0], 1);

    const struct rule *r = &c.rules.v[0];
    assert_string_equal(r->name, "via-list");
    assert_true(r->has_via);
    assert_int_equal(r->nvia, 2);
    assert_string_equal(r->via[0], "up1");
    assert_string_equal(r->via[1], "direct");
    assert_non_null(r->via_idx);
    assert_int_equal(r->via_idx[0], 0);
    assert_int_equal(r->via_idx[1], VIA_DIRECT);

    r = &c.rules.v[1];
    assert_string_equal(r->name, "via-string");
    assert_int_equal(r->nvia, 2);
    assert_int_equal(r->via_idx[0], 1);
    assert_int_equal(r->via_idx[1], 0);

    for (size_t i = 2; i < 4; i++) { /* without via: [access] via applies */
        r = &c.rules.v[i];
        assert_false(r->has_via);
        assert_int_equal(r->nvia, 0);
        assert_null(r->via);
        assert_null(r->via_idx);
    }
    config_free(&c);

    /* Rule by rule, in order: "via-list" is fine, "via-string" names up2. */
    expect_exact("[parent up1]\naddress = a.test:3128\n[access]\n\npolicy = parent_policy.yaml\n",
                 DATA_INI,
                 DATA_INI ":5: [access] policy: tests/unit/data/parent_policy.yaml: rule "
                          "via-string: via: 'up2' is neither direct nor a [parent NAME] section");
    /* No parents at all: the first rule's up1. */
    expect_exact("[access]\npolicy = parent_policy.yaml\n", DATA_INI,
                 DATA_INI ":2: [access] policy: tests/unit/data/parent_policy.yaml: rule "
                          "via-list: via: 'up1' is neither direct nor a [parent NAME] section");
    /* An unnamed rule is called FILE:LINE. */
    expect_exact("[access]\npolicy = parent_policy_unknown.yaml\n[parent up1]\naddress = a:1\n",
                 DATA_INI,
                 DATA_INI ":2: [access] policy: tests/unit/data/parent_policy_unknown.yaml: rule "
                          "tests/unit/data/parent_policy_unknown.yaml:5: via: 'nope' is neither "
                          "direct nor a [parent NAME] section");
}

/* [timeouts] happy_eyeballs: RFC 8305's connection attempt delay, 10ms to 2s. */
static void test_happy_eyeballs(void **state) {
    static const struct {
        const char *value;
        double s;
    } good[] = {
        {"10ms", 0.01}, {"0.01s", 0.01}, {"100ms", 0.1}, {"250ms", 0.25},
        {"1.5s", 1.5},  {"2s", 2},       {"2000ms", 2},  {"0.02m", 1.2},
    };
    static const char *const bad[] = {"9ms", "0.009s", "2001ms", "2.001s", "3s",
                                      "1m",  "1h",     "0",      "0ms",    "100",
                                      "0.5", "",       "fast",   "-10ms",  "1 s"};
    struct config c;
    char text[128], want[CONFIG_ERR_MAX];
    (void)state;

    load_ok("", "t.ini", &c);
    assert_true(c.timeout_happy_eyeballs == 0.25); /* the default */
    config_free(&c);
    for (size_t i = 0; i < N(good); i++) {
        (void)snprintf(text, sizeof text, "[timeouts]\nhappy_eyeballs = %s\n", good[i].value);
        load_ok(text, "t.ini", &c);
        if (c.timeout_happy_eyeballs - good[i].s > 1e-12 ||
            good[i].s - c.timeout_happy_eyeballs > 1e-12)
            fail_msg("'%s': expected %g, got %g", good[i].value, good[i].s,
                     c.timeout_happy_eyeballs);
        config_free(&c);
    }
    for (size_t i = 0; i < N(bad); i++) {
        (void)snprintf(text, sizeof text, "[timeouts]\nhappy_eyeballs = %s\n", bad[i]);
        (void)snprintf(want, sizeof want,
                       "t.ini:2: [timeouts] happy_eyeballs: must be a duration from 10ms to 2s "
                       "(got '%s')",
                       bad[i]);
        EXPECT_EXACT(text, want);
    }
    EXPECT_EXACT("[timeouts]\nhappy_eyeballs = 1s\n[timeouts]\nhappy_eyeballs = 1s\n",
                 "t.ini:4: [timeouts] happy_eyeballs: duplicate key (already set on line 2)");
}

static void test_durations(void **state) {
    static const struct {
        const char *in;
        double s;
    } good[] = {
        {"0", 0},     {"0s", 0},      {"0.0", 0},     {"250ms", 0.25}, {"1ms", 0.001},
        {"10s", 10},  {"1.5s", 1.5},  {"0.3s", 0.3},  {"5m", 300},     {"1.5m", 90},
        {"1h", 3600}, {"24h", 86400}, {"0.5h", 1800}, {"010s", 10},    {"1000ms", 1},
    };
    static const char *const bad[] = {"",
                                      "10",
                                      "1.5",
                                      "s",
                                      "ms",
                                      "-1s",
                                      "+1s",
                                      "1.s",
                                      ".5s",
                                      "1..5s",
                                      "1.5.s",
                                      "5 s",
                                      " 5s",
                                      "5s ",
                                      "5S",
                                      "5sec",
                                      "1d",
                                      "1w",
                                      "2h30m",
                                      "1e3s",
                                      "0x10s",
                                      "inf",
                                      "nan",
                                      "10m5",
                                      "1,5s",
                                      "9999999999999s",
                                      "1.0000000001s"};

    (void)state;
    for (size_t i = 0; i < N(good); i++) {
        double s = -1;

        if (config_parse_duration(good[i].in, &s) != 0)
            fail_msg("'%s' rejected", good[i].in);
        if (s - good[i].s > 1e-12 || good[i].s - s > 1e-12)
            fail_msg("'%s': expected %.12g, got %.12g", good[i].in, good[i].s, s);
    }
    for (size_t i = 0; i < N(bad); i++) {
        double s = -1;

        if (config_parse_duration(bad[i], &s) == 0)
            fail_msg("'%s' accepted as %g", bad[i], s);
    }
    assert_int_equal(config_parse_duration(NULL, NULL), -1);
}

static void test_missing_file(void **state) {
    struct config c;
    char err[CONFIG_ERR_MAX] = "";

    (void)state;
    memset(&c, 0xa5, sizeof c);
    assert_int_equal(config_load_file("tests/unit/data/no-such-file.ini", &c, err, sizeof err), -1);
    assert_string_equal(err,
                        "tests/unit/data/no-such-file.ini: cannot open: No such file or directory");
    assert_true(all_zero(&c, sizeof c));
}

static void test_file_errors(void **state) {
    struct config c;
    char err[CONFIG_ERR_MAX] = "";

    (void)state;
    /* The file loader reports the path and line like the string loader. */
    memset(&c, 0xa5, sizeof c);
    assert_int_equal(config_load_file("tests/unit/data/bad_section.ini", &c, err, sizeof err), -1);
    assert_string_equal(err, "tests/unit/data/bad_section.ini:7: [acess]: unknown section "
                             "(known: [server] [access] [dns] [timeouts] [limits] [log] [auth] "
                             "[admin] [tls] [http2] [parent NAME])");
    assert_true(all_zero(&c, sizeof c));

    /* A NUL byte cannot be represented by the string API, so only a file can have it. */
    {
        char path[] = "/tmp/connectd-test-XXXXXX";
        static const char body[] = "[log]\nlevel = info\n\0\n";
        int fd = mkstemp(path);

        assert_true(fd >= 0);
        assert_int_equal(write(fd, body, sizeof body - 1), (ssize_t)(sizeof body - 1));
        assert_int_equal(close(fd), 0);
        assert_int_equal(config_load_file(path, &c, err, sizeof err), -1);
        assert_non_null(strstr(err, ":3: NUL byte"));
        assert_int_equal(unlink(path), 0);
    }
    /* A directory opens but does not read. */
    assert_int_equal(config_load_file("tests/unit/data", &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "tests/unit/data: "));
    assert_true(all_zero(&c, sizeof c));
}

static void test_error_buffer(void **state) {
    struct config c;
    char small[16];

    (void)state;
    /* A short buffer is truncated and terminated; NULL is allowed. */
    assert_int_equal(config_load_string("[nope]\n", "t.ini", &c, small, sizeof small), -1);
    assert_string_equal(small, "t.ini:1: [nope]");
    assert_int_equal(config_load_string("[nope]\n", "t.ini", &c, NULL, 0), -1);
    assert_int_equal(config_load_string(NULL, "t.ini", &c, NULL, 0), -1);
    assert_true(all_zero(&c, sizeof c));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_shipped_file),
        cmocka_unit_test(test_empty_text),
        cmocka_unit_test(test_full_file),
        cmocka_unit_test(test_values_ok),
        cmocka_unit_test(test_bad_values),
        cmocka_unit_test(test_unknown_keys_and_sections),
        cmocka_unit_test(test_syntax),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_long_line),
        cmocka_unit_test(test_linked_files),
        cmocka_unit_test(test_linked_rule_users),
        cmocka_unit_test(test_admin),
        cmocka_unit_test(test_listen_options),
        cmocka_unit_test(test_tls_keys),
        cmocka_unit_test(test_tls_errors),
        cmocka_unit_test(test_http2),
        cmocka_unit_test(test_tls_files),
        cmocka_unit_test(test_tls_keep_key),
        cmocka_unit_test(test_parents),
        cmocka_unit_test(test_parents_credentials),
        cmocka_unit_test(test_parents_errors),
        cmocka_unit_test(test_parents_via),
        cmocka_unit_test(test_parents_policy_via),
        cmocka_unit_test(test_happy_eyeballs),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_error_buffer),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
