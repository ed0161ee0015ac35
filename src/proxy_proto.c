/* proxy_proto: the PROXY protocol header, v1 (text) and v2 (binary), as HAProxy's
 * doc/proxy-protocol.txt specifies it. Pure: no syscalls, no ev.h, no allocation.
 *
 * How it works: every call walks buf from the start and stops at the first decision. Each check
 * runs at the byte that decides it and looks only at the bytes before it, so a decided prefix of
 * the input is decided the same way as the whole input: the outcome does not depend on how the
 * bytes were split. v1 fields are checked byte by byte as they arrive (an address or port is fed
 * to a small scanner that refuses the first byte no valid field could contain), so a bad line is
 * refused before its CRLF; the addresses are only used once the CRLF is there, as the spec asks.
 * v2 is decided from its fixed 16 bytes, then its TLVs are walked as far as they have arrived. */
#include "proxy_proto.h"

#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

static const unsigned char v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                         0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};
static const char v1_proxy[] = "PROXY ";

#define V2_HDR       16                          /* signature, ver/cmd, family, length */
#define V2_BODY_MAX  (PROXY_HEADER_MAX - V2_HDR) /* 520 */
#define V2_LEN_INET  12                          /* 2 * 4 + 2 * 2 */
#define V2_LEN_INET6 36                          /* 2 * 16 + 2 * 2 */
#define V2_LEN_UNIX  216                         /* 2 * 108 */
#define TLV_HDR      3                           /* type, length_hi, length_lo */

static enum proxy_parse fail(struct proxy_header *h, const char *reason) {
    h->reason = reason;
    return PROXY_ERROR;
}

static bool is_digit(unsigned char c) {
    return c >= '0' && c <= '9';
}

static int hex_value(unsigned char c) {
    if (is_digit(c))
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* ---- v1 field scanners --------------------------------------------------------------------- */

/* A v1 field read one byte at a time: feed() refuses the first byte that no valid field could
 * contain at that point (every prefix it accepts can still be completed into a valid field), and
 * end() says whether what was fed is a whole field. */

/* Decimal port 0-65535, no leading zeros. */
struct port_scan {
    unsigned len, value;
};

static bool port_feed(struct port_scan *s, unsigned char c) {
    if (!is_digit(c) || (s->len == 1 && s->value == 0))
        return false;
    s->value = s->value * 10 + (unsigned)(c - '0');
    s->len++;
    return s->value <= 65535;
}

static bool port_end(const struct port_scan *s) {
    return s->len > 0;
}

/* Dotted quad: exactly four decimal numbers 0-255 without leading zeros, the spec's IPv4 form
 * (and inet_pton's, and the tail of an IPv6 address). */
struct quad_scan {
    unsigned dots, part_len, part;
    uint8_t b[4];
};

static bool quad_feed(struct quad_scan *s, unsigned char c) {
    if (c == '.') {
        if (s->part_len == 0 || s->dots == 3)
            return false;
        s->b[s->dots++] = (uint8_t)s->part;
        s->part_len = 0;
        s->part = 0;
        return true;
    }
    if (!is_digit(c) || (s->part_len == 1 && s->part == 0))
        return false;
    s->part = s->part * 10 + (unsigned)(c - '0');
    s->part_len++;
    return s->part <= 255;
}

static bool quad_end(struct quad_scan *s) {
    if (s->dots != 3 || s->part_len == 0)
        return false;
    s->b[3] = (uint8_t)s->part;
    return true;
}

/* IPv6 text as inet_pton(AF_INET6) reads it: groups of 1-4 hex digits separated by ':', at most
 * one "::" standing for one or more zero groups, 8 groups without it (7 at most with it), and
 * optionally a dotted quad in place of the last two groups. */
struct six_scan {
    uint16_t group[8];
    unsigned ngroups;   /* groups completed (ended by ':') or, after end(), all explicit ones */
    int gap;            /* index in group[] where "::" stands, -1 when none */
    unsigned tok_len;   /* hex digits of the group being read */
    unsigned tok_hex;   /* its value as hex */
    unsigned tok_dec;   /* its value as decimal, while it has only decimal digits */
    bool tok_decimal;   /* it has only decimal digits so far (it may turn into a quad) */
    bool tok_zero;      /* it starts with '0' (a quad number may not have leading zeros) */
    bool colon;         /* the last byte was ':' */
    bool lead;          /* a single ':' opened the field: only ':' may follow */
    bool quad;          /* reading the dotted-quad tail */
    struct quad_scan q; /* the tail */
    unsigned nbytes;    /* bytes fed */
};

static void six_init(struct six_scan *s) {
    memset(s, 0, sizeof(*s));
    s->gap = -1;
}

/* The most explicit groups the address may have: 8, or 7 with a "::". */
static unsigned six_room(const struct six_scan *s) {
    return s->gap >= 0 ? 7 : 8;
}

static bool six_feed(struct six_scan *s, unsigned char c) {
    int x = hex_value(c);

    s->nbytes++;
    if (s->quad)
        return quad_feed(&s->q, c);
    if (c == ':') {
        if (s->tok_len > 0) {
            s->group[s->ngroups++] = (uint16_t)s->tok_hex;
            s->tok_len = 0;
            s->colon = true;
            /* A single ':' promises another group: there must be room for it. */
            return s->ngroups < six_room(s);
        }
        if (!s->colon) { /* the field's first byte: "::" must follow */
            s->colon = true;
            s->lead = true;
            return true;
        }
        if (s->gap >= 0) /* a second "::", or ":::" */
            return false;
        s->gap = (int)s->ngroups;
        s->lead = false;
        return true;
    }
    if (c == '.') {
        /* The group being read was the quad's first number: it takes the last two groups. */
        if (s->lead || s->tok_len == 0 || !s->tok_decimal || s->tok_len > 3 || s->tok_dec > 255 ||
            (s->tok_len > 1 && s->tok_zero))
            return false;
        if (s->gap >= 0 ? s->ngroups + 2 > 7 : s->ngroups + 2 != 8)
            return false;
        s->quad = true;
        s->q.b[0] = (uint8_t)s->tok_dec;
        s->q.dots = 1;
        return true;
    }
    if (x < 0 || s->lead || s->tok_len == 4)
        return false;
    if (s->tok_len == 0) {
        if (s->ngroups + 1 > six_room(s))
            return false;
        s->tok_hex = 0;
        s->tok_dec = 0;
        s->tok_decimal = true;
        s->tok_zero = c == '0';
    }
    s->tok_hex = s->tok_hex * 16 + (unsigned)x;
    if (is_digit(c))
        s->tok_dec = s->tok_dec * 10 + (unsigned)(c - '0');
    else
        s->tok_decimal = false;
    s->tok_len++;
    s->colon = false;
    return true;
}

/* Whole address: its 16 bytes in out. */
static bool six_end(struct six_scan *s, uint8_t out[16]) {
    unsigned n;

    if (s->nbytes == 0 || s->lead)
        return false;
    if (s->quad) {
        if (!quad_end(&s->q))
            return false;
    } else if (s->tok_len > 0) {
        s->group[s->ngroups++] = (uint16_t)s->tok_hex;
    } else if (s->gap != (int)s->ngroups) { /* ends with a single ':' */
        return false;
    }
    n = s->ngroups + (s->quad ? 2 : 0); /* explicit groups */
    if (s->gap >= 0 ? n > 7 : n != 8)
        return false;

    /* The groups before "::" from the start, those after it up against the end (or the quad). */
    memset(out, 0, 16);
    for (size_t i = 0, pos = 0; i < s->ngroups; i++) {
        if ((int)i == s->gap)
            pos = 16 - (s->quad ? 4 : 0) - 2 * (s->ngroups - i);
        out[pos++] = (uint8_t)(s->group[i] >> 8);
        out[pos++] = (uint8_t)s->group[i];
    }
    if (s->quad)
        memcpy(out + 12, s->q.b, 4);
    return true;
}

/* ---- v1 ------------------------------------------------------------------------------------- */

/* The fields of a TCP4/TCP6 line, in order, each ended by the byte in v1_ends. */
enum v1_field { F_SRC, F_DST, F_SPORT, F_DPORT, F_COUNT };
static const char v1_ends[F_COUNT] = {' ', ' ', ' ', '\r'};
static const char *const v1_bad[F_COUNT] = {"v1: bad source address", "v1: bad destination address",
                                            "v1: bad source port", "v1: bad destination port"};

static void set_in(struct sockaddr_storage *ss, const uint8_t a[4], unsigned port) {
    struct sockaddr_in sin;

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    memcpy(&sin.sin_addr, a, 4);
    memcpy(ss, &sin, sizeof(sin));
}

static void set_in6(struct sockaddr_storage *ss, const uint8_t a[16], unsigned port) {
    struct sockaddr_in6 sin6;

    memset(&sin6, 0, sizeof(sin6));
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons((uint16_t)port);
    memcpy(&sin6.sin6_addr, a, 16);
    memcpy(ss, &sin6, sizeof(sin6));
}

/* The 107-byte limit, byte by byte: the CR may be the 106th byte at the latest (then the LF is
 * the 107th); any other byte there or later makes the line too long. */
static bool v1_too_long(size_t pos, unsigned char c) {
    return pos >= PROXY_V1_MAX - 1 || (pos == PROXY_V1_MAX - 2 && c != '\r');
}

/* The line's end at b[pos] == '\r' (already checked): MORE until the LF, then DONE. */
static enum proxy_parse v1_crlf(const unsigned char *b, size_t len, size_t pos,
                                struct proxy_header *h) {
    if (pos + 1 == len)
        return PROXY_MORE;
    if (b[pos + 1] != '\n')
        return fail(h, "v1: CR without LF");
    h->len = pos + 2;
    return PROXY_DONE;
}

/* "PROXY UNKNOWN" then CRLF, or a space and printable bytes up to the CRLF (ignored). */
static enum proxy_parse v1_unknown(const unsigned char *b, size_t len, size_t pos,
                                   struct proxy_header *h) {
    if (pos == len)
        return PROXY_MORE;
    if (b[pos] != '\r') {
        if (b[pos] != ' ')
            return fail(h, "v1: unsupported protocol");
        for (pos++; pos < len && b[pos] != '\r'; pos++) {
            if (v1_too_long(pos, b[pos]))
                return fail(h, "v1: line too long");
            if (b[pos] < 0x20 || b[pos] > 0x7e)
                return fail(h, "v1: bad byte in line");
        }
        if (pos == len)
            return PROXY_MORE;
    }
    return v1_crlf(b, len, pos, h);
}

static enum proxy_parse parse_v1(const unsigned char *b, size_t len, struct proxy_header *h) {
    static const char *const protos[] = {"TCP4 ", "TCP6 ", "UNKNOWN"};
    struct six_scan six[2];
    struct quad_scan quad[2];
    struct port_scan port[2];
    uint8_t a[2][16];
    enum v1_field f = F_SRC;
    enum proxy_parse r;
    size_t pos, proto = 3;
    bool v6, live = false;

    for (pos = 0; pos < sizeof(v1_proxy) - 1; pos++) {
        if (pos == len)
            return PROXY_MORE;
        if (b[pos] != (unsigned char)v1_proxy[pos])
            return fail(h, pos < 5 ? "not a PROXY protocol header" : "v1: bad separator");
    }

    /* Which protocol name it is, or whether one is still possible with more bytes. */
    for (size_t i = 0; i < 3 && proto == 3; i++) {
        size_t n = strlen(protos[i]), k = 0;

        while (k < n && pos + k < len && b[pos + k] == (unsigned char)protos[i][k])
            k++;
        if (k == n)
            proto = i;
        else if (pos + k == len)
            live = true;
    }
    if (proto == 3)
        return live ? PROXY_MORE : fail(h, "v1: unsupported protocol");
    h->version = 1;
    h->command = PROXY_CMD_PROXY;
    if (proto == 2)
        return v1_unknown(b, len, pos + 7, h);

    v6 = proto == 1;
    memset(quad, 0, sizeof(quad));
    memset(port, 0, sizeof(port));
    six_init(&six[0]);
    six_init(&six[1]);
    for (pos += 5; pos < len; pos++) {
        unsigned char c = b[pos];
        bool ok;

        if (v1_too_long(pos, c))
            return fail(h, "v1: line too long");
        if (c != (unsigned char)v1_ends[f]) {
            if (f <= F_DST)
                ok = v6 ? six_feed(&six[f], c) : quad_feed(&quad[f], c);
            else
                ok = port_feed(&port[f - F_SPORT], c);
            if (!ok)
                return fail(h, v1_bad[f]);
            continue;
        }
        if (f <= F_DST)
            ok = v6 ? six_end(&six[f], a[f]) : quad_end(&quad[f]);
        else
            ok = port_end(&port[f - F_SPORT]);
        if (!ok)
            return fail(h, v1_bad[f]);
        if (f != F_DPORT) {
            f++;
            continue;
        }
        r = v1_crlf(b, len, pos, h);
        if (r != PROXY_DONE)
            return r;
        h->has_addr = true;
        if (v6) {
            set_in6(&h->src, a[0], port[0].value);
            set_in6(&h->dst, a[1], port[1].value);
        } else {
            set_in(&h->src, quad[0].b, port[0].value);
            set_in(&h->dst, quad[1].b, port[1].value);
        }
        return PROXY_DONE;
    }
    return PROXY_MORE;
}

/* ---- v2 ------------------------------------------------------------------------------------- */

/* The TLVs in b[pos..end), as far as len has them: each must fit whole before end. */
static enum proxy_parse v2_tlvs(const unsigned char *b, size_t len, size_t pos, size_t end,
                                struct proxy_header *h) {
    while (pos < end) {
        size_t vlen;

        if (end - pos < TLV_HDR)
            return fail(h, "v2: truncated TLV");
        if (len < pos + TLV_HDR)
            return PROXY_MORE;
        vlen = (size_t)b[pos + 1] << 8 | b[pos + 2];
        if (vlen > end - pos - TLV_HDR)
            return fail(h, "v2: TLV longer than the header");
        pos += TLV_HDR + vlen;
    }
    return len < end ? PROXY_MORE : PROXY_DONE;
}

static enum proxy_parse parse_v2(const unsigned char *b, size_t len, struct proxy_header *h) {
    size_t body, need = 0, end;
    unsigned fam = 0;
    bool local;
    enum proxy_parse r;

    for (size_t i = 0; i < sizeof(v2_sig); i++) {
        if (i == len)
            return PROXY_MORE;
        if (b[i] != v2_sig[i])
            return fail(h, "not a PROXY protocol header");
    }
    if (len == 12)
        return PROXY_MORE;
    if (b[12] >> 4 != 2)
        return fail(h, "v2: unsupported version");
    if ((b[12] & 0x0f) > 1)
        return fail(h, "v2: unsupported command");
    local = (b[12] & 0x0f) == 0;
    if (len == 13)
        return PROXY_MORE;
    if (!local) {
        fam = b[13];
        switch (fam) {
        case 0x00:
            need = 0;
            break;
        case 0x11:
            need = V2_LEN_INET;
            break;
        case 0x21:
            need = V2_LEN_INET6;
            break;
        case 0x31:
            need = V2_LEN_UNIX;
            break;
        case 0x12:
        case 0x22:
        case 0x32:
            return fail(h, "v2: datagram transport not supported");
        default:
            return fail(h, "v2: bad address family or transport");
        }
    }
    if (len == 14)
        return PROXY_MORE;
    if ((size_t)b[14] << 8 > V2_BODY_MAX) /* whatever the low byte */
        return fail(h, "v2: header too long");
    if (len == 15)
        return PROXY_MORE;
    body = (size_t)b[14] << 8 | b[15];
    if (body > V2_BODY_MAX)
        return fail(h, "v2: header too long");
    if (body < need)
        return fail(h, "v2: address block too short");
    end = V2_HDR + body;

    /* LOCAL and UNSPEC: the block is skipped unread. */
    r = local || fam == 0x00 ? (len < end ? PROXY_MORE : PROXY_DONE)
                             : v2_tlvs(b, len, V2_HDR + need, end, h);
    if (r != PROXY_DONE)
        return r;

    h->version = 2;
    h->command = local ? PROXY_CMD_LOCAL : PROXY_CMD_PROXY;
    h->len = end;
    if (fam == 0x11) {
        set_in(&h->src, b + 16, (unsigned)b[24] << 8 | b[25]);
        set_in(&h->dst, b + 20, (unsigned)b[26] << 8 | b[27]);
        h->has_addr = true;
    } else if (fam == 0x21) {
        set_in6(&h->src, b + 16, (unsigned)b[48] << 8 | b[49]);
        set_in6(&h->dst, b + 32, (unsigned)b[50] << 8 | b[51]);
        h->has_addr = true;
    }
    return PROXY_DONE;
}

enum proxy_parse proxy_parse(const unsigned char *buf, size_t len, struct proxy_header *h) {
    enum proxy_parse r;

    memset(h, 0, sizeof(*h));
    if (len == 0)
        return PROXY_MORE;
    if (buf[0] == 'P')
        r = parse_v1(buf, len, h);
    else if (buf[0] == v2_sig[0])
        r = parse_v2(buf, len, h);
    else
        r = fail(h, "not a PROXY protocol header");
    if (r != PROXY_DONE) {
        /* Only the reason survives an undecided or failed call. */
        const char *reason = h->reason;

        memset(h, 0, sizeof(*h));
        h->reason = r == PROXY_ERROR ? reason : NULL;
    }
    return r;
}
