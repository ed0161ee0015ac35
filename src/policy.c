/* policy: who may use the proxy and where it may tunnel. Pure: no syscalls, no ev.h.
 *
 * Host patterns are matched in two steps (see policy.h): names and IP literals before
 * resolution, resolved addresses after. A name pattern never matches an address and a CIDR
 * pattern never matches a name, except "*", which matches any target in step 1 but is never an
 * exception to deny_private in step 2. */
#include "policy.h"
#include "text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Longest list item we accept: a 253-character name plus "*." and a trailing dot. */
#define ITEM_MAX      256
#define NAME_MAX_LEN  253
#define LABEL_MAX_LEN 63

static bool is_digit(char ch) {
    return ch >= '0' && ch <= '9';
}

static char to_lower(char ch) {
    return ch >= 'A' && ch <= 'Z' ? (char)(ch - 'A' + 'a') : ch;
}

/* An item with whitespace inside is most likely two items missing a comma. */
static bool inner_space(const char *item) {
    return strpbrk(item, " \t") != NULL;
}

/* Grow *v (of *cap elements of size sz) so that one more fits after n. */
static int grow(void **v, size_t *cap, size_t n, size_t sz) {
    void *nv;
    size_t ncap;

    if (n < *cap)
        return 0;
    ncap = *cap ? *cap * 2 : 4;
    nv = realloc(*v, ncap * sz);
    if (!nv)
        return -1;
    *v = nv;
    *cap = ncap;
    return 0;
}

/* ---- ports ---- */

/* Decimal digits only, no sign, value 0-65535 (range checked by the caller for a clear message).
 * Returns -1 for anything that is not a number. */
static long port_number(const char *s, size_t n) {
    long v = 0;

    if (n == 0 || n > 5)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v > 65535 ? -1 : v;
}

static int parse_port_item(const char *item, struct port_range *r, char *err, size_t errlen) {
    const char *dash = strchr(item, '-');
    long lo, hi;

    if (!dash) {
        lo = hi = port_number(item, strlen(item));
        if (lo < 0) {
            text_seterr(err, errlen, "bad port '%s': not a number 1-65535", item);
            return -1;
        }
    } else {
        const char *a = item, *aend = dash, *b = dash + 1, *bend = item + strlen(item);

        while (aend > a && text_is_space(aend[-1]))
            aend--;
        while (text_is_space(*b))
            b++;
        lo = port_number(a, (size_t)(aend - a));
        hi = port_number(b, (size_t)(bend - b));
        if (lo < 0 || hi < 0) {
            text_seterr(err, errlen, "bad port range '%s': expected LOW-HIGH, e.g. 10000-10100",
                        item);
            return -1;
        }
        if (lo > hi) {
            text_seterr(err, errlen, "bad port range '%s': %ld is above %ld", item, lo, hi);
            return -1;
        }
    }
    if (lo == 0) {
        text_seterr(err, errlen, "bad port '%s': port 0 is not allowed (1-65535)", item);
        return -1;
    }
    r->lo = (uint16_t)lo;
    r->hi = (uint16_t)hi;
    return 0;
}

void policy_free_ports(struct port_list *l) {
    if (!l)
        return;
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* ---- host patterns ---- */

/* A DNS name without trailing dot: 1-253 characters, labels of 1-63 letters, digits, '-', '_'. */
static int check_name(const char *item, const char *name, size_t n, char *err, size_t errlen) {
    size_t label = 0;

    if (n == 0) {
        text_seterr(err, errlen, "bad host '%s': empty name", item);
        return -1;
    }
    if (n > NAME_MAX_LEN) {
        text_seterr(err, errlen, "bad host '%s': name longer than %d characters", item,
                    NAME_MAX_LEN);
        return -1;
    }
    for (size_t i = 0; i <= n; i++) {
        char ch = i < n ? name[i] : '.';

        if (ch == '.') {
            if (label == 0) {
                text_seterr(err, errlen, "bad host '%s': empty label", item);
                return -1;
            }
            if (label > LABEL_MAX_LEN) {
                text_seterr(err, errlen, "bad host '%s': label longer than %d characters", item,
                            LABEL_MAX_LEN);
                return -1;
            }
            label = 0;
            continue;
        }
        if (ch == '*') {
            text_seterr(err, errlen,
                        "bad host '%s': '*' is only allowed as the whole first label, "
                        "e.g. *.example.com",
                        item);
            return -1;
        }
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || is_digit(ch) || ch == '-' ||
              ch == '_')) {
            text_seterr(err, errlen, "bad host '%s': character '%c' is not allowed in a name", item,
                        ch);
            return -1;
        }
        label++;
    }
    return 0;
}

/* True when the last label of name[0..n) is all digits: such a name can only be meant as an
 * IPv4 address (no top-level domain is numeric). */
static bool last_label_numeric(const char *name, size_t n) {
    size_t i = n;

    while (i > 0 && name[i - 1] != '.')
        i--;
    if (i == n)
        return false;
    for (; i < n; i++)
        if (!is_digit(name[i]))
            return false;
    return true;
}

/* "[::1]" -> cidr ::1/128, else the text as a CIDR or bare address. */
static int parse_cidr_item(const char *item, struct cidr *c, char *err, size_t errlen) {
    char inner[ITEM_MAX];
    char why[160];
    size_t n = strlen(item);

    if (item[0] == '[') {
        if (n < 3 || item[n - 1] != ']') {
            text_seterr(err, errlen, "bad address '%s': expected [IPv6], e.g. [::1]", item);
            return -1;
        }
        memcpy(inner, item + 1, n - 2);
        inner[n - 2] = '\0';
        if (!strchr(inner, ':') || strchr(inner, '/') || cidr_parse(inner, c, why, sizeof why)) {
            text_seterr(err, errlen, "bad address '%s': brackets hold one IPv6 address, e.g. [::1]",
                        item);
            return -1;
        }
        return 0;
    }
    if (cidr_parse(item, c, why, sizeof why) != 0) {
        text_seterr(err, errlen, "bad address '%s': %s", item, why);
        return -1;
    }
    return 0;
}

static int parse_host_item(const char *item, struct host_pattern *p, char *err, size_t errlen) {
    const char *name = item;
    size_t n = strlen(item);
    bool suffix = false;

    memset(p, 0, sizeof *p);
    if (strcmp(item, "*") == 0) {
        p->kind = HOST_PAT_ANY;
        return 0;
    }
    if (item[0] == '[' || strchr(item, '/') || strchr(item, ':')) {
        p->kind = HOST_PAT_CIDR;
        return parse_cidr_item(item, &p->cidr, err, errlen);
    }
    if (n >= 2 && item[0] == '*' && item[1] == '.') {
        suffix = true;
        name += 2;
        n -= 2;
    }
    if (n > 0 && name[n - 1] == '.')
        n--; /* "example.com." is the same name */
    if (n > 0 && last_label_numeric(name, n)) {
        if (suffix) {
            text_seterr(err, errlen, "bad host '%s': a wildcard cannot cover an IP address", item);
            return -1;
        }
        p->kind = HOST_PAT_CIDR;
        return parse_cidr_item(item, &p->cidr, err, errlen);
    }
    if (check_name(item, name, n, err, errlen) != 0)
        return -1;
    /* SUFFIX keeps the leading dot so that matching is a plain ends-with. */
    p->kind = suffix ? HOST_PAT_SUFFIX : HOST_PAT_EXACT;
    p->name = malloc(n + 2);
    if (!p->name) {
        text_seterr(err, errlen, "out of memory");
        return -1;
    }
    {
        size_t o = 0;

        if (suffix)
            p->name[o++] = '.';
        for (size_t i = 0; i < n; i++)
            p->name[o++] = to_lower(name[i]);
        p->name[o] = '\0';
    }
    return 0;
}

void policy_free_hosts(struct host_list *l) {
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].name);
        l->v[i].name = NULL;
    }
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

void policy_free_cidrs(struct cidr_list *l) {
    if (!l)
        return;
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* ---- lists ---- */

/* One kind of list item: how to parse it into an element, and what to call it in messages. */
struct item_kind {
    const char *what;     /* "port", "host", "address" */
    size_t size;          /* bytes per element */
    bool space_in_ranges; /* "10000 - 10100" is one port range, not two items */
    int (*parse)(const char *item, void *elem, char *err, size_t errlen);
    void (*release)(void *elem); /* frees what an element owns; NULL when nothing */
};

/* Parse a comma-separated list into a new array *v of *n elements. On error nothing is kept. */
static int parse_list(const char *s, const struct item_kind *k, void **v, size_t *n, char *err,
                      size_t errlen) {
    char item[ITEM_MAX];
    union {
        struct port_range port;
        struct host_pattern host;
        struct cidr cidr;
    } elem; /* room, suitably aligned, for any kind */
    size_t cap = 0;
    int r;

    *v = NULL;
    *n = 0;
    while ((r = text_next_item(&s, item, sizeof item)) != 0) {
        if (r < 0) {
            text_seterr(err, errlen, "bad %s '%.40s...': too long", k->what, item);
            goto fail;
        }
        if (item[0] == '\0')
            continue;
        if (inner_space(item) && !(k->space_in_ranges && strchr(item, '-'))) {
            text_seterr(err, errlen, "bad %s '%s': separate items with commas", k->what, item);
            goto fail;
        }
        if (k->parse(item, &elem, err, errlen) != 0)
            goto fail;
        if (grow(v, &cap, *n, k->size) != 0) {
            if (k->release)
                k->release(&elem);
            text_seterr(err, errlen, "out of memory");
            goto fail;
        }
        memcpy((unsigned char *)*v + *n * k->size, &elem, k->size);
        (*n)++;
    }
    return 0;
fail:
    for (size_t i = 0; k->release && i < *n; i++)
        k->release((unsigned char *)*v + i * k->size);
    free(*v);
    *v = NULL;
    *n = 0;
    return -1;
}

static int parse_port_elem(const char *item, void *elem, char *err, size_t errlen) {
    return parse_port_item(item, elem, err, errlen);
}

static int parse_host_elem(const char *item, void *elem, char *err, size_t errlen) {
    return parse_host_item(item, elem, err, errlen);
}

static int parse_cidr_elem(const char *item, void *elem, char *err, size_t errlen) {
    return parse_cidr_item(item, elem, err, errlen);
}

static void release_host(void *elem) {
    struct host_pattern *p = elem;
    free(p->name);
    p->name = NULL;
}

static const struct item_kind port_kind = {"port", sizeof(struct port_range), true, parse_port_elem,
                                           NULL};
static const struct item_kind host_kind = {"host", sizeof(struct host_pattern), false,
                                           parse_host_elem, release_host};
static const struct item_kind cidr_kind = {"address", sizeof(struct cidr), false, parse_cidr_elem,
                                           NULL};

int policy_parse_ports(const char *s, struct port_list *out, char *err, size_t errlen) {
    return parse_list(s, &port_kind, (void **)&out->v, &out->n, err, errlen);
}

int policy_parse_hosts(const char *s, struct host_list *out, char *err, size_t errlen) {
    return parse_list(s, &host_kind, (void **)&out->v, &out->n, err, errlen);
}

int policy_parse_cidrs(const char *s, struct cidr_list *out, char *err, size_t errlen) {
    return parse_list(s, &cidr_kind, (void **)&out->v, &out->n, err, errlen);
}

void policy_free_access(struct access_config *a) {
    if (!a)
        return;
    policy_free_ports(&a->allow_ports);
    policy_free_hosts(&a->allow_hosts);
    policy_free_hosts(&a->deny_hosts);
    policy_free_cidrs(&a->allow_clients);
}

/* ---- decisions ---- */

bool policy_cidrs_contain(const struct cidr_list *l, const struct sockaddr *sa) {
    if (!l || !sa)
        return false;
    /* An empty list contains nothing: there is no implicit "everyone". */
    for (size_t i = 0; i < l->n; i++)
        if (cidr_match(&l->v[i], sa))
            return true;
    return false;
}

bool policy_client_allowed(const struct access_config *a, const struct sockaddr *client) {
    return a && policy_cidrs_contain(&a->allow_clients, client);
}

static bool port_allowed(const struct port_list *l, uint16_t port) {
    for (size_t i = 0; i < l->n; i++)
        if (port >= l->v[i].lo && port <= l->v[i].hi)
            return true;
    return false;
}

/* Length of host without one trailing dot (the caller should already have removed it). */
static size_t host_len(const char *host) {
    size_t n = strlen(host);

    return n > 0 && host[n - 1] == '.' ? n - 1 : n;
}

static bool pattern_matches(const struct host_pattern *p, const char *host, size_t hlen, bool is_ip,
                            const struct sockaddr *ip) {
    size_t plen;

    switch (p->kind) {
    case HOST_PAT_ANY:
        return true;
    case HOST_PAT_EXACT:
        if (is_ip)
            return false;
        plen = strlen(p->name);
        return hlen == plen && strncasecmp(host, p->name, plen) == 0;
    case HOST_PAT_SUFFIX:
        if (is_ip)
            return false;
        plen = strlen(p->name);
        /* ".example.com" matches "a.example.com" but neither "example.com" nor
         * "badexample.com": the leading dot anchors the label boundary. */
        return hlen > plen && strncasecmp(host + hlen - plen, p->name, plen) == 0;
    case HOST_PAT_CIDR:
        return is_ip && ip && cidr_match(&p->cidr, ip);
    }
    return false;
}

static bool list_matches(const struct host_list *l, const char *host, size_t hlen, bool is_ip,
                         const struct sockaddr *ip) {
    for (size_t i = 0; i < l->n; i++)
        if (pattern_matches(&l->v[i], host, hlen, is_ip, ip))
            return true;
    return false;
}

static bool list_has_cidr(const struct host_list *l) {
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].kind == HOST_PAT_CIDR)
            return true;
    return false;
}

static bool list_cidr_matches(const struct host_list *l, const struct sockaddr *sa) {
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].kind == HOST_PAT_CIDR && cidr_match(&l->v[i].cidr, sa))
            return true;
    return false;
}

bool policy_target_ip(const char *host, struct sockaddr_storage *ss) {
    char buf[64];
    size_t n = strlen(host);

    if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
        if (n - 2 >= sizeof buf)
            return false;
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = '\0';
        return addr_parse_ip(buf, 0, ss, NULL) == 0;
    }
    return addr_parse_ip(host, 0, ss, NULL) == 0;
}

bool policy_hosts_match(const struct host_list *l, const char *host, bool is_ip,
                        const struct sockaddr *ip) {
    return l && host && list_matches(l, host, host_len(host), is_ip, ip);
}

enum policy_target policy_check_target(const struct access_config *a, const char *host, bool is_ip,
                                       uint16_t port) {
    struct sockaddr_storage ss;
    const struct sockaddr *ip = NULL;
    size_t hlen;

    if (!a || !host)
        return POLICY_TARGET_DENY_HOST;
    if (!port_allowed(&a->allow_ports, port))
        return POLICY_TARGET_DENY_PORT;
    /* An IP literal that does not parse matches no CIDR pattern (only "*"): fail closed. */
    if (is_ip && policy_target_ip(host, &ss))
        ip = (const struct sockaddr *)&ss;
    hlen = host_len(host);
    if (list_matches(&a->deny_hosts, host, hlen, is_ip, ip))
        return POLICY_TARGET_DENY_HOST;
    if (list_matches(&a->allow_hosts, host, hlen, is_ip, ip))
        return POLICY_TARGET_ALLOW;
    if (!is_ip && list_has_cidr(&a->allow_hosts))
        return POLICY_TARGET_CHECK_ADDR;
    return POLICY_TARGET_DENY_HOST;
}

enum policy_addr policy_check_addr(const struct access_config *a, const struct sockaddr *sa,
                                   bool name_allowed, const char **cls) {
    const char *c;
    bool allow_cidr;

    if (cls)
        *cls = NULL;
    if (!a || !sa)
        return POLICY_ADDR_DENY_HOST;
    if (list_cidr_matches(&a->deny_hosts, sa))
        return POLICY_ADDR_DENY_HOST;
    allow_cidr = list_cidr_matches(&a->allow_hosts, sa);
    if (!name_allowed && !allow_cidr)
        return POLICY_ADDR_DENY_HOST;
    /* Only an explicit address/CIDR entry is an exception: "*" or a name pattern says nothing
     * about where a name may point (DNS rebinding to 127.0.0.1, 169.254.169.254, ...). */
    if (a->deny_private && !allow_cidr && (c = addr_reserved_class(sa)) != NULL) {
        if (cls)
            *cls = c;
        return POLICY_ADDR_PRIVATE;
    }
    return POLICY_ADDR_ALLOW;
}
