/* addr: socket addresses and CIDR blocks: parse, print, match, classify.
 * Pure: no syscalls, no ev.h (inet_pton/inet_ntop are plain string conversions). */
#include "addr.h"
#include "text.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* An address reduced to its family and raw bytes (IPv4 uses the first 4). */
struct ipbytes {
    int family;
    uint8_t b[16];
};

static const uint8_t v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
/* ::ffff:0:0/96, IPv4-translated addresses (RFC 2765): ::ffff:0:a.b.c.d. */
static const uint8_t v4translated_prefix[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

static bool is_digit(char ch) {
    return ch >= '0' && ch <= '9';
}

/* Strict dotted quad: exactly four decimal parts 0-255, no leading zeros, nothing else.
 * inet_pton(AF_INET) is close, but its exact leniency is libc's business, not ours. */
static bool parse_v4(const char *s, uint8_t out[4]) {
    for (int i = 0; i < 4; i++) {
        unsigned v = 0;
        const char *start;

        if (i > 0) {
            if (*s != '.')
                return false;
            s++;
        }
        start = s;
        while (is_digit(*s)) {
            v = v * 10 + (unsigned)(*s - '0');
            s++;
            if (s - start > 3)
                return false;
        }
        if (s == start || v > 255 || (s - start > 1 && *start == '0'))
            return false;
        out[i] = (uint8_t)v;
    }
    return *s == '\0';
}

/* IPv6 text without brackets or zone id. */
static bool parse_v6(const char *s, uint8_t out[16]) {
    if (!strchr(s, ':') || strlen(s) >= INET6_ADDRSTRLEN)
        return false;
    return inet_pton(AF_INET6, s, out) == 1;
}

/* Port: 1-5 decimal digits, value 1-65535, nothing else. */
static bool parse_port(const char *s, uint16_t *port) {
    unsigned v = 0;
    size_t n = 0;

    for (; is_digit(s[n]); n++) {
        if (n >= 5)
            return false;
        v = v * 10 + (unsigned)(s[n] - '0');
    }
    if (n == 0 || s[n] != '\0' || v < 1 || v > 65535)
        return false;
    *port = (uint16_t)v;
    return true;
}

static bool sa_get(const struct sockaddr *sa, struct ipbytes *ip) {
    if (!sa)
        return false;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;

        memcpy(&sin, sa, sizeof sin);
        ip->family = AF_INET;
        memset(ip->b, 0, sizeof ip->b);
        memcpy(ip->b, &sin.sin_addr, 4);
        return true;
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;

        memcpy(&sin6, sa, sizeof sin6);
        ip->family = AF_INET6;
        memcpy(ip->b, &sin6.sin6_addr, 16);
        return true;
    }
    return false;
}

/* ::ffff:a.b.c.d is the IPv4 host a.b.c.d reached through a dual-stack socket: treat it as IPv4
 * everywhere, or a AAAA record like ::ffff:127.0.0.1 would slip past every IPv4 rule. */
static void unmap(struct ipbytes *ip) {
    if (ip->family == AF_INET6 && memcmp(ip->b, v4mapped_prefix, 12) == 0) {
        ip->family = AF_INET;
        memmove(ip->b, ip->b + 12, 4);
        memset(ip->b + 4, 0, 12);
    }
}

static void fill_sockaddr(struct sockaddr_storage *ss, socklen_t *len, int family, const uint8_t *b,
                          uint16_t port) {
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in sin;

        memset(&sin, 0, sizeof sin);
        sin.sin_family = AF_INET;
        sin.sin_port = htons(port);
        memcpy(&sin.sin_addr, b, 4);
        memcpy(ss, &sin, sizeof sin);
        if (len)
            *len = (socklen_t)sizeof sin;
    } else {
        struct sockaddr_in6 sin6;

        memset(&sin6, 0, sizeof sin6);
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons(port);
        memcpy(&sin6.sin6_addr, b, 16);
        memcpy(ss, &sin6, sizeof sin6);
        if (len)
            *len = (socklen_t)sizeof sin6;
    }
}

int addr_parse_ip(const char *s, uint16_t port, struct sockaddr_storage *ss, socklen_t *len) {
    uint8_t b[16];

    if (!s || !ss)
        return -1;
    if (parse_v4(s, b)) {
        fill_sockaddr(ss, len, AF_INET, b, port);
        return 0;
    }
    if (parse_v6(s, b)) {
        fill_sockaddr(ss, len, AF_INET6, b, port);
        return 0;
    }
    return -1;
}

int addr_parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *len, char *err,
                        size_t errlen) {
    char host[INET6_ADDRSTRLEN];
    const char *portstr;
    uint8_t b[16];
    int family;
    uint16_t port;
    size_t hl;

    if (!s || !*s) {
        text_seterr(err, errlen, "empty address; expected host:port, e.g. 127.0.0.1:3128");
        return -1;
    }
    if (strpbrk(s, " \t")) {
        text_seterr(err, errlen, "unexpected whitespace");
        return -1;
    }
    if (s[0] == '[') {
        const char *close = strchr(s, ']');

        if (!close) {
            text_seterr(err, errlen, "missing ']' after the IPv6 address in '%s'", s);
            return -1;
        }
        hl = (size_t)(close - s - 1);
        if (hl >= sizeof host) {
            text_seterr(err, errlen, "'%.*s' is not an IPv6 address", (int)hl, s + 1);
            return -1;
        }
        memcpy(host, s + 1, hl);
        host[hl] = '\0';
        if (strchr(host, '%')) {
            text_seterr(err, errlen, "zone ids ('%s') are not supported", host);
            return -1;
        }
        if (!parse_v6(host, b)) {
            text_seterr(err, errlen, "'%s' is not an IPv6 address", host);
            return -1;
        }
        if (close[1] == '\0') {
            text_seterr(err, errlen, "missing port, e.g. [%s]:3128", host);
            return -1;
        }
        if (close[1] != ':') {
            text_seterr(err, errlen, "unexpected '%s' after ']'; expected :port", close + 1);
            return -1;
        }
        family = AF_INET6;
        portstr = close + 2;
    } else {
        const char *colon = strrchr(s, ':');

        if (!colon) {
            text_seterr(err, errlen, "missing port, e.g. %s:3128", s);
            return -1;
        }
        if (memchr(s, ':', (size_t)(colon - s))) {
            text_seterr(err, errlen, "an IPv6 address needs brackets, e.g. [::1]:3128");
            return -1;
        }
        hl = (size_t)(colon - s);
        if (hl == 0) {
            text_seterr(err, errlen, "missing address before ':' (use 0.0.0.0 or [::] for all)");
            return -1;
        }
        if (hl >= sizeof host) {
            text_seterr(err, errlen, "'%.*s' is not an IPv4 address", (int)hl, s);
            return -1;
        }
        memcpy(host, s, hl);
        host[hl] = '\0';
        if (!parse_v4(host, b)) {
            text_seterr(err, errlen, "'%s' is not an IPv4 address (host names are not allowed)",
                        host);
            return -1;
        }
        family = AF_INET;
        portstr = colon + 1;
    }
    if (*portstr == '\0') {
        text_seterr(err, errlen, "missing port after ':'");
        return -1;
    }
    if (!parse_port(portstr, &port)) {
        text_seterr(err, errlen, "bad port '%s' (must be 1-65535)", portstr);
        return -1;
    }
    if (ss)
        fill_sockaddr(ss, len, family, b, port);
    return 0;
}

/* True when the first prefix bits of a and b are equal. */
static bool prefix_equal(const uint8_t *a, const uint8_t *b, unsigned prefix) {
    unsigned full = prefix / 8, rest = prefix % 8;

    if (memcmp(a, b, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xffu << (8 - rest));
    return (a[full] & mask) == (b[full] & mask);
}

static void mask_host_bits(uint8_t *b, unsigned nbytes, unsigned prefix) {
    for (unsigned i = 0; i < nbytes; i++) {
        unsigned bit = i * 8;

        if (bit >= prefix)
            b[i] = 0;
        else if (prefix - bit < 8)
            b[i] &= (uint8_t)(0xffu << (8 - (prefix - bit)));
    }
}

int cidr_parse(const char *s, struct cidr *out, char *err, size_t errlen) {
    char addr[INET6_ADDRSTRLEN];
    const char *slash;
    struct cidr c;
    unsigned maxp;
    size_t al;

    memset(&c, 0, sizeof c);
    if (out)
        memset(out, 0, sizeof *out);
    if (!s || !*s) {
        text_seterr(err, errlen, "empty address");
        return -1;
    }
    slash = strchr(s, '/');
    al = slash ? (size_t)(slash - s) : strlen(s);
    if (al == 0) {
        text_seterr(err, errlen, "missing address before '/'");
        return -1;
    }
    if (al >= sizeof addr) {
        text_seterr(err, errlen, "'%.*s' is not an IP address", (int)al, s);
        return -1;
    }
    memcpy(addr, s, al);
    addr[al] = '\0';
    if (parse_v4(addr, c.bytes)) {
        c.family = AF_INET;
        maxp = 32;
    } else if (parse_v6(addr, c.bytes)) {
        c.family = AF_INET6;
        maxp = 128;
    } else {
        text_seterr(err, errlen, "'%s' is not an IP address", addr);
        return -1;
    }
    c.prefix = maxp;
    if (slash) {
        const char *p = slash + 1;
        unsigned v = 0;
        size_t n = 0;

        for (; n < 4 && is_digit(p[n]); n++)
            v = v * 10 + (unsigned)(p[n] - '0');
        if (n == 0 || p[n] != '\0' || (n > 1 && p[0] == '0')) {
            text_seterr(err, errlen, "bad prefix length '/%s'", p);
            return -1;
        }
        if (v > maxp) {
            text_seterr(err, errlen, "prefix length /%u is out of range (0-%u)", v, maxp);
            return -1;
        }
        c.prefix = v;
    }
    {
        uint8_t net[16];
        char text[INET6_ADDRSTRLEN];

        memcpy(net, c.bytes, sizeof net);
        mask_host_bits(net, maxp / 8, c.prefix);
        if (memcmp(net, c.bytes, maxp / 8) != 0) {
            if (!inet_ntop(c.family, net, text, sizeof text))
                text[0] = '\0';
            text_seterr(err, errlen, "host bits are set below the /%u prefix; did you mean %s/%u?",
                        c.prefix, text, c.prefix);
            return -1;
        }
    }
    if (out)
        *out = c;
    return 0;
}

bool cidr_match(const struct cidr *c, const struct sockaddr *sa) {
    struct ipbytes ip;
    uint8_t net[16];
    unsigned prefix;
    int family;

    if (!c || !sa_get(sa, &ip))
        return false;
    unmap(&ip);
    family = c->family;
    prefix = c->prefix;
    memcpy(net, c->bytes, sizeof net);
    /* A block written inside ::ffff:0:0/96 ("::ffff:10.0.0.0/104") is the IPv4 block it spells. */
    if (family == AF_INET6 && prefix >= 96 && memcmp(net, v4mapped_prefix, 12) == 0) {
        family = AF_INET;
        memmove(net, net + 12, 4);
        prefix -= 96;
    }
    if (family != ip.family || prefix > (family == AF_INET ? 32u : 128u))
        return false;
    return prefix_equal(net, ip.b, prefix);
}

static const char *class_v4(const uint8_t b[4]) {
    static const struct {
        uint32_t net;
        unsigned prefix;
        const char *cls;
    } tab[] = {
        {0x00000000u, 8, "this-network"},   /* 0.0.0.0/8 */
        {0x0a000000u, 8, "private"},        /* 10.0.0.0/8 */
        {0x64400000u, 10, "cgnat"},         /* 100.64.0.0/10 */
        {0x7f000000u, 8, "loopback"},       /* 127.0.0.0/8 */
        {0xa9fe0000u, 16, "link-local"},    /* 169.254.0.0/16, incl. 169.254.169.254 metadata */
        {0xac100000u, 12, "private"},       /* 172.16.0.0/12 */
        {0xc0000000u, 24, "reserved"},      /* 192.0.0.0/24 IETF protocol assignments */
        {0xc0000200u, 24, "documentation"}, /* 192.0.2.0/24 */
        {0xc0586300u, 24, "reserved"},      /* 192.88.99.0/24 6to4 relay anycast */
        {0xc0a80000u, 16, "private"},       /* 192.168.0.0/16 */
        {0xc6120000u, 15, "benchmarking"},  /* 198.18.0.0/15 */
        {0xc6336400u, 24, "documentation"}, /* 198.51.100.0/24 */
        {0xcb007100u, 24, "documentation"}, /* 203.0.113.0/24 */
        {0xe0000000u, 4, "multicast"},      /* 224.0.0.0/4 */
        {0xffffffffu, 32, "broadcast"},     /* before 240/4, which contains it */
        {0xf0000000u, 4, "reserved"},       /* 240.0.0.0/4 */
    };
    uint32_t a = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];

    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++) {
        uint32_t mask = 0xffffffffu << (32 - tab[i].prefix);

        if ((a & mask) == tab[i].net)
            return tab[i].cls;
    }
    return NULL;
}

static const char *class_v6(const uint8_t b[16]) {
    static const uint8_t zero[16];
    static const uint8_t nat64[16] = {0x00, 0x64, 0xff, 0x9b};
    static const uint8_t nat64_local[16] = {0x00, 0x64, 0xff, 0x9b, 0x00, 0x01};
    static const uint8_t discard[16] = {0x01, 0x00};
    static const uint8_t teredo[16] = {0x20, 0x01};
    static const uint8_t bench[16] = {0x20, 0x01, 0x00, 0x02};
    static const uint8_t doc[16] = {0x20, 0x01, 0x0d, 0xb8};
    static const uint8_t doc2[16] = {0x3f, 0xff};
    static const uint8_t sixtofour[16] = {0x20, 0x02};
    static const uint8_t ula[16] = {0xfc};
    static const uint8_t linklocal[16] = {0xfe, 0x80};
    static const uint8_t sitelocal[16] = {0xfe, 0xc0};
    static const uint8_t mcast[16] = {0xff};
    const char *cls;

    if (memcmp(b, zero, 16) == 0)
        return "unspecified";
    if (memcmp(b, zero, 15) == 0 && b[15] == 1)
        return "loopback";
    if (memcmp(b, v4mapped_prefix, 12) == 0)
        return class_v4(b + 12);
    if (prefix_equal(b, zero, 96)) {
        /* IPv4-compatible (deprecated): never a legitimate public destination. */
        cls = class_v4(b + 12);
        return cls ? cls : "reserved";
    }
    if (prefix_equal(b, nat64, 96))
        return class_v4(b + 12); /* the translator would dial the embedded IPv4 */
    if (prefix_equal(b, v4translated_prefix, 96))
        return class_v4(b + 12); /* IPv4-translated (RFC 2765 SIIT): the same */
    if (prefix_equal(b, nat64_local, 48))
        return "private";
    if (prefix_equal(b, discard, 64))
        return "reserved";
    if (prefix_equal(b, teredo, 32))
        return "reserved";
    if (prefix_equal(b, bench, 48))
        return "benchmarking";
    if (prefix_equal(b, doc, 32) || prefix_equal(b, doc2, 20))
        return "documentation";
    if (prefix_equal(b, sixtofour, 16))
        return class_v4(b + 2); /* 2002:AABB:CCDD::/48 carries IPv4 A.B.C.D in bits 16-47 */
    if (prefix_equal(b, ula, 7))
        return "unique-local";
    if (prefix_equal(b, linklocal, 10))
        return "link-local";
    if (prefix_equal(b, sitelocal, 10))
        return "reserved"; /* site-local, deprecated */
    if (prefix_equal(b, mcast, 8))
        return "multicast";
    return NULL;
}

const char *addr_reserved_class(const struct sockaddr *sa) {
    struct ipbytes ip;

    if (!sa_get(sa, &ip))
        return "reserved"; /* not IP at all: never a public destination */
    return ip.family == AF_INET ? class_v4(ip.b) : class_v6(ip.b);
}

void addr_format(const struct sockaddr *sa, bool with_port, char *out, size_t outlen) {
    char text[INET6_ADDRSTRLEN];
    struct ipbytes ip;

    if (!out || outlen == 0)
        return;
    if (!sa_get(sa, &ip)) {
        (void)snprintf(out, outlen, "(unknown)");
        return;
    }
    unmap(&ip);
    if (!inet_ntop(ip.family, ip.b, text, sizeof text)) {
        (void)snprintf(out, outlen, "(unknown)");
        return;
    }
    if (!with_port)
        (void)snprintf(out, outlen, "%s", text);
    else if (ip.family == AF_INET)
        (void)snprintf(out, outlen, "%s:%u", text, (unsigned)addr_port(sa));
    else
        (void)snprintf(out, outlen, "[%s]:%u", text, (unsigned)addr_port(sa));
}

uint16_t addr_port(const struct sockaddr *sa) {
    if (!sa)
        return 0;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in sin;

        memcpy(&sin, sa, sizeof sin);
        return ntohs(sin.sin_port);
    }
    if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 sin6;

        memcpy(&sin6, sa, sizeof sin6);
        return ntohs(sin6.sin6_port);
    }
    return 0;
}
