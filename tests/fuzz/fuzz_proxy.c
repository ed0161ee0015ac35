/* libFuzzer harness for src/proxy_proto.c: the PROXY protocol header (v1 text, v2 binary) a load
 * balancer sends before the client's bytes.
 *
 * Input: 1 control byte (missing: 0), then the payload. The low 4 bits of the control byte are
 * log2 of the largest read (0: one byte at a time), the high 4 bits seed the generator that
 * picks each read's size and the moves of the buffer (as a realloc would).
 *
 * The payload is parsed as proxy_proto.h says the caller does (one contiguous buffer that grows,
 * the whole buffer passed every time, the unreceived tail poisoned so ASan reports any look past
 * len), and the outcome must not depend on how the bytes were split: the first decided read
 * gives the outcome of one call with everything, and so do all longer prefixes. The shortest
 * decided prefix is found and one byte less must be undecided; a DONE is never decided before
 * its last header byte. Each outcome is checked against the contract: DONE has len <= input and
 * <= PROXY_HEADER_MAX, a v1 line that starts "PROXY " and ends with its only CR (then LF) within
 * PROXY_V1_MAX, a v2 header whose length field gives len; has_addr means both addresses are
 * AF_INET or both AF_INET6, and they read back from the header (the v1 text through inet_pton,
 * the v2 bytes as they are); ERROR has a non-empty reason; MORE never at PROXY_HEADER_MAX bytes.
 * Then the payload is tried as a v1 address and as a port, and proxy_parse must agree with
 * inet_pton and with a plain port reader. A broken invariant aborts with a message naming it. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <sanitizer/asan_interface.h>

#include "proxy_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_READS 64
#define MAX_MOVES 8

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            broken(__LINE__, #cond);                                                               \
    } while (0)

static void broken(int line, const char *what) {
    (void)fprintf(stderr, "fuzz_proxy.c:%d: invariant broken: %s\n", line, what);
    abort();
}

static const unsigned char v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                         0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

/* xorshift32: deterministic read sizes from the control byte. */
static uint32_t next_rand(uint32_t *s) {
    uint32_t x = *s;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

/* A copy of data[0..len) in a buffer of exactly len bytes, so ASan sees reads past the end. */
static unsigned char *exact_copy(const uint8_t *data, size_t len) {
    unsigned char *b = malloc(len ? len : 1);

    if (!b)
        abort();
    if (len)
        memcpy(b, data, len);
    return b;
}

static bool all_zero(const void *p, size_t n) {
    const unsigned char *b = p;

    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return false;
    return true;
}

static void same_outcome(enum proxy_parse ra, const struct proxy_header *a, enum proxy_parse rb,
                         const struct proxy_header *b) {
    CHECK(ra == rb);
    if (ra == PROXY_ERROR) {
        CHECK(a->reason != NULL && b->reason != NULL && strcmp(a->reason, b->reason) == 0);
    } else if (ra == PROXY_DONE) {
        CHECK(a->version == b->version && a->command == b->command);
        CHECK(a->has_addr == b->has_addr && a->len == b->len);
        CHECK(memcmp(&a->src, &b->src, sizeof(a->src)) == 0);
        CHECK(memcmp(&a->dst, &b->dst, sizeof(a->dst)) == 0);
    }
}

/* The port of an AF_INET/AF_INET6 address, host order. */
static unsigned port_of(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
}

static const void *addr_of(const struct sockaddr_storage *ss) {
    if (ss->ss_family == AF_INET)
        return &((const struct sockaddr_in *)ss)->sin_addr;
    return &((const struct sockaddr_in6 *)ss)->sin6_addr;
}

/* The v1 field b[*pos..) up to sep, as a NUL-terminated string in out; *pos moves past sep. */
static void v1_field(const unsigned char *b, size_t end, size_t *pos, char sep, char *out,
                     size_t cap) {
    size_t s = *pos;

    while (*pos < end && b[*pos] != (unsigned char)sep)
        (*pos)++;
    CHECK(*pos < end && *pos - s < cap);
    memcpy(out, b + s, *pos - s);
    out[*pos - s] = '\0';
    (*pos)++;
}

/* A plain port reader: "0", or 1-5 digits without a leading zero, at most 65535. */
static bool port_reference(const char *s, unsigned *out) {
    size_t n = strlen(s);
    unsigned long v = 0;

    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return false;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v > 65535)
        return false;
    *out = (unsigned)v;
    return true;
}

/* A DONE v1 line: "PROXY ", printable bytes, its only CR just before the LF that ends it. */
static void check_v1(const struct proxy_header *h, const unsigned char *b) {
    size_t len = h->len, pos = 11;
    char src[64], dst[64], sport[16], dport[16];
    int fam;
    unsigned char bytes[16];
    unsigned p;

    CHECK(len >= 15 && len <= PROXY_V1_MAX);
    CHECK(memcmp(b, "PROXY ", 6) == 0);
    CHECK(b[len - 2] == '\r' && b[len - 1] == '\n');
    for (size_t i = 0; i < len - 2; i++)
        CHECK(b[i] >= 0x20 && b[i] <= 0x7e);
    CHECK(h->command == PROXY_CMD_PROXY);
    if (!h->has_addr) {
        CHECK(memcmp(b + 6, "UNKNOWN", 7) == 0 && (b[13] == ' ' || len == 15));
        return;
    }
    CHECK(memcmp(b + 6, "TCP4 ", 5) == 0 || memcmp(b + 6, "TCP6 ", 5) == 0);
    fam = b[9] == '4' ? AF_INET : AF_INET6;
    CHECK(h->src.ss_family == fam);
    v1_field(b, len, &pos, ' ', src, sizeof(src));
    v1_field(b, len, &pos, ' ', dst, sizeof(dst));
    v1_field(b, len, &pos, ' ', sport, sizeof(sport));
    v1_field(b, len, &pos, '\r', dport, sizeof(dport));
    CHECK(pos == len - 1);
    CHECK(inet_pton(fam, src, bytes) == 1);
    CHECK(memcmp(bytes, addr_of(&h->src), fam == AF_INET ? 4 : 16) == 0);
    CHECK(inet_pton(fam, dst, bytes) == 1);
    CHECK(memcmp(bytes, addr_of(&h->dst), fam == AF_INET ? 4 : 16) == 0);
    CHECK(port_reference(sport, &p) && p == port_of(&h->src));
    CHECK(port_reference(dport, &p) && p == port_of(&h->dst));
}

/* A DONE v2 header: signature, 0x20/0x21, len from the length field, addresses as sent. */
static void check_v2(const struct proxy_header *h, const unsigned char *b) {
    size_t body;

    CHECK(h->len >= 16 && memcmp(b, v2_sig, 12) == 0);
    body = (size_t)b[14] << 8 | b[15];
    CHECK(h->len == 16 + body);
    CHECK(b[12] == (h->command == PROXY_CMD_LOCAL ? 0x20 : 0x21));
    if (h->command == PROXY_CMD_LOCAL) {
        CHECK(!h->has_addr);
        return;
    }
    CHECK(b[13] == 0x00 || b[13] == 0x11 || b[13] == 0x21 || b[13] == 0x31);
    CHECK(h->has_addr == (b[13] == 0x11 || b[13] == 0x21));
    if (b[13] == 0x11) {
        CHECK(body >= 12 && h->src.ss_family == AF_INET);
        CHECK(memcmp(addr_of(&h->src), b + 16, 4) == 0 && memcmp(addr_of(&h->dst), b + 20, 4) == 0);
        CHECK(port_of(&h->src) == ((unsigned)b[24] << 8 | b[25]));
        CHECK(port_of(&h->dst) == ((unsigned)b[26] << 8 | b[27]));
    } else if (b[13] == 0x21) {
        CHECK(body >= 36 && h->src.ss_family == AF_INET6);
        CHECK(memcmp(addr_of(&h->src), b + 16, 16) == 0);
        CHECK(memcmp(addr_of(&h->dst), b + 32, 16) == 0);
        CHECK(port_of(&h->src) == ((unsigned)b[48] << 8 | b[49]));
        CHECK(port_of(&h->dst) == ((unsigned)b[50] << 8 | b[51]));
    } else if (b[13] == 0x31) {
        CHECK(body >= 216);
    }
    if (b[13] == 0x11 || b[13] == 0x21 || b[13] == 0x31) {
        /* The TLVs after the addresses tile the rest of the header exactly. */
        size_t pos = 16 + (b[13] == 0x11 ? 12 : b[13] == 0x21 ? 36 : 216);

        while (pos < h->len) {
            CHECK(h->len - pos >= 3);
            pos += 3 + ((size_t)b[pos + 1] << 8 | b[pos + 2]);
        }
        CHECK(pos == h->len);
    }
}

static void check_outcome(enum proxy_parse r, const struct proxy_header *h,
                          const unsigned char *buf, size_t len) {
    if (r == PROXY_DONE) {
        CHECK(h->reason == NULL);
        CHECK(h->len >= 1 && h->len <= len && h->len <= PROXY_HEADER_MAX);
        CHECK(h->version == 1 || h->version == 2);
        CHECK(h->command == PROXY_CMD_PROXY || h->command == PROXY_CMD_LOCAL);
        if (h->has_addr) {
            CHECK(h->src.ss_family == AF_INET || h->src.ss_family == AF_INET6);
            CHECK(h->src.ss_family == h->dst.ss_family);
        } else {
            CHECK(all_zero(&h->src, sizeof(h->src)) && all_zero(&h->dst, sizeof(h->dst)));
        }
        if (h->version == 1)
            check_v1(h, buf);
        else
            check_v2(h, buf);
    } else if (r == PROXY_ERROR) {
        CHECK(h->reason != NULL && h->reason[0] != '\0');
        CHECK(!h->has_addr && h->len == 0);
    } else {
        CHECK(r == PROXY_MORE);
        CHECK(h->reason == NULL && h->len == 0);
        CHECK(len < PROXY_HEADER_MAX); /* the caller fails there: we must have decided */
        if (len > 0 && buf[0] == 'P')
            CHECK(len < PROXY_V1_MAX);
    }
}

/* Parses data[0..len) from an exact-size copy. */
static enum proxy_parse parse_copy(const uint8_t *data, size_t len, struct proxy_header *h) {
    unsigned char *b = exact_copy(data, len);
    enum proxy_parse r = proxy_parse(b, len, h);

    check_outcome(r, h, b, len);
    free(b);
    return r;
}

/* As the real caller: reads of the sizes c picks (at most about MAX_READS of them), into one
 * buffer whose unreceived tail is poisoned; the first decision must be the whole input's. */
static void parse_split(const uint8_t *data, size_t len, uint8_t c, enum proxy_parse r0,
                        const struct proxy_header *ref) {
    uint32_t seed = 0x9e3779b9u ^ ((uint32_t)c << 24 | (uint32_t)c << 8 | 1u);
    size_t max_read = (size_t)1 << (c & 15), min_read = len / MAX_READS + 1, have = 0;
    unsigned moves = 0;
    unsigned char *buf = exact_copy(data, len);
    struct proxy_header h;
    enum proxy_parse r = PROXY_MORE;

    ASAN_POISON_MEMORY_REGION(buf, len);
    while (have < len && r == PROXY_MORE) {
        uint32_t rnd = next_rand(&seed);
        size_t n = 1 + rnd % max_read;

        if ((rnd >> 20) % 8 == 0 && moves < MAX_MOVES) {
            /* The caller grew its buffer with realloc: the parser may not keep pointers. */
            unsigned char *nb = exact_copy(data, len);

            ASAN_POISON_MEMORY_REGION(nb + have, len - have);
            free(buf);
            buf = nb;
            moves++;
        }
        if (n < min_read)
            n = min_read;
        if (n > len - have)
            n = len - have;
        ASAN_UNPOISON_MEMORY_REGION(buf + have, n);
        have += n;
        r = proxy_parse(buf, have, &h);
        check_outcome(r, &h, buf, have);
        if ((rnd >> 16) % 16 == 0) {
            /* The same bytes again: no hidden state, the same outcome. */
            struct proxy_header again;

            same_outcome(r, &h, proxy_parse(buf, have, &again), &again);
        }
    }
    /* Undecided to the end, or decided early: either way, the whole input's outcome. */
    same_outcome(r0, ref, r, &h);
    ASAN_UNPOISON_MEMORY_REGION(buf, len);
    free(buf);
}

static void fuzz_parser(uint8_t c, const uint8_t *payload, size_t plen) {
    struct proxy_header ref, h;
    enum proxy_parse r0 = parse_copy(payload, plen, &ref);

    parse_split(payload, plen, c, r0, &ref);
    parse_split(payload, plen, (uint8_t)(c ^ 0x5a), r0, &ref);

    /* Decided prefixes stay decided: find the shortest one; it and every longer prefix give the
     * whole input's outcome, one byte less is undecided. A DONE needs all of its header. */
    if (r0 != PROXY_MORE) {
        size_t lo = 0, hi = plen; /* parse(lo) is MORE, parse(hi) is decided */

        while (hi - lo > 1) {
            size_t mid = lo + (hi - lo) / 2;

            if (parse_copy(payload, mid, &h) == PROXY_MORE)
                lo = mid;
            else
                hi = mid;
        }
        same_outcome(r0, &ref, parse_copy(payload, hi, &h), &h);
        CHECK(parse_copy(payload, hi - 1, &h) == PROXY_MORE);
        if (r0 == PROXY_DONE)
            CHECK(hi == ref.len);
        if (hi < plen)
            same_outcome(r0, &ref, parse_copy(payload, hi + (plen - hi) / 2, &h), &h);
    }
}

/* The payload as a v1 field: the source address of a TCP4 and of a TCP6 line, compared with
 * inet_pton, and the source port, compared with port_reference. Only payloads that are one field
 * (no space, CR, LF or NUL) of at most 45 bytes, so that every line fits in PROXY_V1_MAX. */
static void fuzz_fields(const uint8_t *p, size_t n) {
    char text[64], line[160];
    unsigned char want[16];
    struct proxy_header h;
    unsigned port;
    int len;

    if (n > 45)
        return;
    for (size_t i = 0; i < n; i++)
        if (p[i] == ' ' || p[i] == '\r' || p[i] == '\n' || p[i] == '\0')
            return;
    memcpy(text, p, n);
    text[n] = '\0';

    for (int v6 = 0; v6 < 2; v6++) {
        int fam = v6 ? AF_INET6 : AF_INET;
        int ok = inet_pton(fam, text, want);
        enum proxy_parse r;

        len = snprintf(line, sizeof(line), "PROXY %s %s %s 1 2\r\n", v6 ? "TCP6" : "TCP4", text,
                       v6 ? "::1" : "127.0.0.1");
        CHECK(len > 0 && (size_t)len < sizeof(line));
        r = parse_copy((const uint8_t *)line, (size_t)len, &h);
        if (ok == 1) {
            CHECK(r == PROXY_DONE);
            CHECK(memcmp(addr_of(&h.src), want, v6 ? 16 : 4) == 0);
        } else {
            CHECK(r == PROXY_ERROR);
            CHECK(strcmp(h.reason, "v1: bad source address") == 0);
        }
    }

    len = snprintf(line, sizeof(line), "PROXY TCP4 1.2.3.4 5.6.7.8 %s 2\r\n", text);
    CHECK(len > 0 && (size_t)len < sizeof(line));
    if (port_reference(text, &port)) {
        CHECK(parse_copy((const uint8_t *)line, (size_t)len, &h) == PROXY_DONE);
        CHECK(port_of(&h.src) == port);
    } else {
        CHECK(parse_copy((const uint8_t *)line, (size_t)len, &h) == PROXY_ERROR);
        CHECK(strcmp(h.reason, "v1: bad source port") == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t c = size > 0 ? data[0] : 0;

    if (size > 0) {
        data++;
        size--;
    }
    fuzz_parser(c, data, size);
    fuzz_fields(data, size);
    return 0;
}
