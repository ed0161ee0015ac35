/* libFuzzer harness for src/config.c: config_load_string() on proxy.ini text.
 *
 * Input: the ini text, then optionally a NUL byte and the text of a policy file, then another
 * NUL and the text of a users file. The loader reads the files an ini names with
 * text_read_file(), which this harness replaces (the link has -Wl,--wrap=text_read_file):
 * FUZZ_DIR "policy.yaml" and FUZZ_DIR "users" ("policy = policy.yaml" and "users_file = users",
 * taken relative to the ini's directory) are served from the input, and every other path does
 * not exist. So the harness never opens a file (an ini naming /dev/stdin or a FIFO would block,
 * /dev/zero would crawl) and never writes one, and the checks that join the three files (a rule's
 * users must be in the users file) are fuzzed too.
 *
 * Checked: an error message starts with the name given to the loader and *c is zeroed after it;
 * a shorter error buffer gets a prefix of the same message (and is never overrun); a loaded
 * config holds values inside the documented ranges, and its [access] lists decide a fixed set of
 * requests and addresses as policy.h says (deny_private never lets an unlisted reserved address
 * through). A broken invariant aborts, naming it. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "text.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int __wrap_text_read_file(const char *path, size_t max, char **buf, size_t *len, char *err,
                          size_t errlen);

#define FUZZ_DIR  "fuzz/"
#define FUZZ_NAME FUZZ_DIR "proxy.ini"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            broken(__LINE__, #cond);                                                               \
    } while (0)

static void broken(int line, const char *what) {
    fprintf(stderr, "fuzz_config.c:%d: invariant broken: %s\n", line, what);
    abort();
}

/* The files of the current input. */
struct vfile {
    const char *path;
    const uint8_t *text;
    size_t len;
    bool present;
};

static struct vfile vfiles[] = {
    {FUZZ_DIR "policy.yaml", NULL, 0, false},
    {FUZZ_DIR "users", NULL, 0, false},
};

/* text_read_file() with the same contract, on the files above only. */
int __wrap_text_read_file(const char *path, size_t max, char **buf, size_t *len, char *err,
                          size_t errlen) {
    *buf = NULL;
    *len = 0;
    for (size_t i = 0; i < sizeof vfiles / sizeof vfiles[0]; i++) {
        const struct vfile *f = &vfiles[i];
        char *b;

        if (!f->present || strcmp(path, f->path) != 0)
            continue;
        if (f->len > max) {
            text_seterr(err, errlen, "%s: larger than %zu bytes", path, max);
            return -1;
        }
        b = malloc(f->len + 1);
        if (!b) {
            text_seterr(err, errlen, "%s: out of memory", path);
            return -1;
        }
        if (f->len)
            memcpy(b, f->text, f->len);
        b[f->len] = '\0';
        *buf = b;
        *len = f->len;
        return 0;
    }
    text_seterr(err, errlen, "%s: cannot open: %s", path, strerror(ENOENT));
    return -1;
}

static bool all_zero(const void *p, size_t n) {
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

static bool cidr_listed(const struct host_list *l, const struct sockaddr *sa) {
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].kind == HOST_PAT_CIDR && cidr_match(&l->v[i].cidr, sa))
            return true;
    return false;
}

static bool port_listed(const struct port_list *l, uint16_t port) {
    for (size_t i = 0; i < l->n; i++)
        if (port >= l->v[i].lo && port <= l->v[i].hi)
            return true;
    return false;
}

/* The loaded [access] lists decide fixed requests as policy.h promises: a port outside
 * allow_ports is refused first, a deny_hosts CIDR always wins, and with deny_private a reserved
 * address is only dialed when an allow_hosts address/CIDR entry names it. */
static void check_decisions(const struct config *c) {
    static const struct {
        const char *host;
        bool is_ip;
    } targets[] = {
        {"example.com", false},  {"a.example.com", false},
        {"127.0.0.1", true},     {"10.1.2.3", true},
        {"::1", true},           {"169.254.169.254", true},
        {"93.184.216.34", true}, {"[::ffff:7f00:1]", true},
    };
    static const uint16_t ports[] = {443, 1, 8443, 65535, 3128};
    static const char *const addrs[] = {"127.0.0.1",    "10.30.0.9",        "93.184.216.34",
                                        "::1",          "::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe",
                                        "2002:a00:1::", "2606:4700::1111",  "169.254.169.254"};
    const struct access_config *a = &c->access;
    char text[ADDR_TEXT_MAX];

    for (size_t i = 0; i < c->nlisten; i++) {
        addr_format((const struct sockaddr *)&c->listen[i].ss, true, text, sizeof text);
        CHECK(text[0] != '\0' && strcmp(text, "(unknown)") != 0);
        CHECK(addr_port((const struct sockaddr *)&c->listen[i].ss) >= 1);
    }
    for (size_t t = 0; t < sizeof targets / sizeof targets[0]; t++) {
        for (size_t k = 0; k < sizeof ports / sizeof ports[0]; k++) {
            enum policy_target r =
                policy_check_target(a, targets[t].host, targets[t].is_ip, ports[k]);

            CHECK(r >= POLICY_TARGET_ALLOW && r <= POLICY_TARGET_DENY_HOST);
            CHECK((r == POLICY_TARGET_DENY_PORT) == !port_listed(&a->allow_ports, ports[k]));
            if (r == POLICY_TARGET_CHECK_ADDR)
                CHECK(!targets[t].is_ip);
        }
    }
    for (size_t i = 0; i < sizeof addrs / sizeof addrs[0]; i++) {
        struct sockaddr_storage ss;
        const struct sockaddr *sa = (const struct sockaddr *)&ss;

        CHECK(addr_parse_ip(addrs[i], 443, &ss, NULL) == 0);
        (void)policy_client_allowed(a, sa);
        for (int name_allowed = 0; name_allowed <= 1; name_allowed++) {
            const char *cls = NULL;
            enum policy_addr r = policy_check_addr(a, sa, name_allowed, &cls);
            const char *reserved = addr_reserved_class(sa);

            CHECK(r >= POLICY_ADDR_ALLOW && r <= POLICY_ADDR_PRIVATE);
            if (cidr_listed(&a->deny_hosts, sa))
                CHECK(r == POLICY_ADDR_DENY_HOST);
            if (r == POLICY_ADDR_PRIVATE)
                CHECK(a->deny_private && cls != NULL && reserved != NULL);
            else
                CHECK(cls == NULL);
            if (r == POLICY_ADDR_ALLOW && a->deny_private && reserved != NULL)
                CHECK(cidr_listed(&a->allow_hosts, sa));
            if (r == POLICY_ADDR_ALLOW && !name_allowed)
                CHECK(cidr_listed(&a->allow_hosts, sa));
        }
    }
}

static void check_config(const struct config *c) {
    CHECK(c->nlisten >= 1 && c->listen != NULL);
    CHECK(c->workers <= 64);
    CHECK(c->relay == RELAY_AUTO || c->relay == RELAY_SPLICE || c->relay == RELAY_COPY);
    CHECK(c->log_level >= LOG_LEVEL_ERROR && c->log_level <= LOG_LEVEL_DEBUG);
    CHECK(c->realm != NULL && strlen(c->realm) >= 1 && strlen(c->realm) <= 64);
    CHECK(c->access_log != NULL && c->access_log[0] != '\0');
    CHECK(c->user == NULL || (c->user[0] != '\0' && strlen(c->user) <= 32));
    CHECK(c->timeout_handshake > 0 && c->timeout_handshake <= 86400);
    CHECK(c->timeout_dns > 0 && c->timeout_dns <= 86400);
    CHECK(c->timeout_connect > 0 && c->timeout_connect <= 86400);
    CHECK(c->timeout_idle > 0 && c->timeout_idle <= 86400);
    CHECK(c->timeout_shutdown >= 0 && c->timeout_shutdown <= 86400);
    CHECK(c->max_connections >= 1 && c->max_connections <= 1000000);
    CHECK(c->max_request_bytes >= 1024 && c->max_request_bytes <= 65536);
    CHECK(c->dns_cache <= 1000000);
    CHECK(c->dns_servers == NULL || c->dns_servers[0] != '\0');
    for (size_t i = 0; i < c->access.allow_ports.n; i++)
        CHECK(c->access.allow_ports.v[i].lo >= 1 &&
              c->access.allow_ports.v[i].lo <= c->access.allow_ports.v[i].hi);
    if (c->users_file)
        CHECK(c->users.n >= 1);
    else
        CHECK(c->users.n == 0);
    if (c->policy_file)
        CHECK(c->rules.n >= 1);
    else
        CHECK(c->rules.n == 0);
    for (size_t i = 0; i < c->rules.n; i++) {
        const struct rule *r = &c->rules.v[i];

        CHECK(r->name != NULL);
        CHECK(!r->has_users || c->users_file != NULL);
        for (size_t j = 0; j < r->nusers; j++)
            CHECK(auth_users_find(&c->users, r->users[j]) != NULL);
    }
    check_decisions(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    const uint8_t *p = data, *end = data + size;
    char err[CONFIG_ERR_MAX], *small;
    size_t small_len;
    struct config c, c2;
    int rc, rc2;

    if (!text)
        abort();
    if (size)
        memcpy(text, data, size);
    text[size] = '\0';
    /* The pieces after the ini text's NUL: the policy file, then the users file. */
    for (size_t i = 0; i < sizeof vfiles / sizeof vfiles[0]; i++)
        vfiles[i].present = false;
    for (size_t i = 0; i < sizeof vfiles / sizeof vfiles[0]; i++) {
        const uint8_t *nul = memchr(p, '\0', (size_t)(end - p));
        const uint8_t *next;

        if (!nul)
            break;
        p = nul + 1;
        next = memchr(p, '\0', (size_t)(end - p));
        vfiles[i].text = p;
        vfiles[i].len = next ? (size_t)(next - p) : (size_t)(end - p);
        vfiles[i].present = true;
    }

    memset(&c, 0xa5, sizeof c);
    memset(err, 0xa5, sizeof err);
    rc = config_load_string(text, FUZZ_NAME, &c, err, sizeof err);
    CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        check_config(&c);
        config_free(&c);
        CHECK(all_zero(&c, sizeof c));
    } else {
        CHECK(memchr(err, '\0', sizeof err) != NULL);
        CHECK(strncmp(err, FUZZ_NAME, strlen(FUZZ_NAME)) == 0);
        CHECK(all_zero(&c, sizeof c));
    }

    /* Again with a short error buffer of exactly its size: same result, the message cut. */
    small_len = 1 + size % 48;
    small = malloc(small_len);
    if (!small)
        abort();
    rc2 = config_load_string(text, FUZZ_NAME, &c2, small, small_len);
    CHECK(rc2 == rc);
    if (rc2 == 0)
        config_free(&c2);
    else
        CHECK(strlen(small) < small_len && strncmp(small, err, strlen(small)) == 0);
    free(small);
    free(text);
    return 0;
}
