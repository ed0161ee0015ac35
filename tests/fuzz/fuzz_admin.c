/* libFuzzer harness for src/admin_http.c: the admin listener's request reader, the query lookup
 * and the Bearer token check.
 *
 * Input: 1 control byte (missing: 0), then the payload. The low 4 bits of the control byte are
 * log2 of the largest read (0: one byte at a time), the high 4 bits seed the generator that
 * picks each read's size and the moves of the buffer (as a realloc would).
 *
 * The payload is parsed as admin_http.h says the caller does (one contiguous buffer that grows,
 * the whole buffer passed every time, the unreceived tail poisoned so ASan reports any look past
 * len), and the outcome must not depend on how the bytes were split: the first decided read
 * gives the outcome of one call with everything, and so do all longer prefixes. The shortest
 * decided prefix is found and one byte less must be undecided. Each outcome is checked against
 * the contract (a DONE block is a well-formed header block of at most ADMIN_REQ_MAX bytes whose
 * request line reads back as method, path and query; an ERROR has a listed status and a reason;
 * MORE never beyond ADMIN_REQ_MAX). Then admin_http_query_uint() runs on the parsed query and on
 * the payload itself, and admin_http_token_ok() with a fixed token is compared with a plain
 * reference. A broken invariant aborts with a message naming it. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <sanitizer/asan_interface.h>

#include "admin_http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_READS 64
#define MAX_MOVES 8
#define TOKEN     "s3cret-Token_42"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            broken(__LINE__, #cond);                                                               \
    } while (0)

static void broken(int line, const char *what) {
    fprintf(stderr, "fuzz_admin.c:%d: invariant broken: %s\n", line, what);
    abort();
}

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
static char *exact_copy(const uint8_t *data, size_t len) {
    char *b = malloc(len ? len : 1);

    if (!b)
        abort();
    if (len)
        memcpy(b, data, len);
    return b;
}

static bool is_tchar(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static bool is_ows(char c) {
    return c == ' ' || c == '\t';
}

static bool nul_terminated(const char *s, size_t size) {
    return memchr(s, '\0', size) != NULL;
}

static void same_outcome(enum admin_parse ra, const struct admin_request *a, enum admin_parse rb,
                         const struct admin_request *b) {
    CHECK(ra == rb);
    if (ra == ADMIN_PARSE_ERROR) {
        CHECK(a->status == b->status);
        CHECK(a->reason != NULL && b->reason != NULL && strcmp(a->reason, b->reason) == 0);
    } else if (ra == ADMIN_PARSE_DONE) {
        CHECK(strcmp(a->method, b->method) == 0);
        CHECK(strcmp(a->path, b->path) == 0);
        CHECK(strcmp(a->query, b->query) == 0);
        CHECK(a->version_minor == b->version_minor);
        CHECK(a->has_auth == b->has_auth);
        CHECK(a->auth_off == b->auth_off && a->auth_len == b->auth_len);
        CHECK(a->header_len == b->header_len);
    }
}

/* A DONE block: printable bytes, HTAB or obs-text, CR only before LF; its only empty line is
 * the last; no line starts with SP/HT; at most 64 fields; the request line reads back. */
static void check_done(const struct admin_request *req, const char *buf, size_t len) {
    size_t hl = req->header_len, mlen, plen, qlen, ls = 0, lines = 0;
    const char *t;

    CHECK(hl >= 1 && hl <= len && hl <= ADMIN_REQ_MAX);
    CHECK(buf[hl - 1] == '\n');
    CHECK(nul_terminated(req->method, sizeof(req->method)));
    CHECK(nul_terminated(req->path, sizeof(req->path)));
    CHECK(nul_terminated(req->query, sizeof(req->query)));
    CHECK(req->path[0] == '/' && strchr(req->path, '?') == NULL);
    CHECK(req->version_minor == 0 || req->version_minor == 1);
    CHECK(req->status == 0 && req->reason == NULL);
    for (size_t i = 0; i < hl; i++) {
        unsigned char c = (unsigned char)buf[i];

        CHECK(c == '\t' || c == '\n' || (c == '\r' && buf[i + 1] == '\n') ||
              (c >= 0x20 && c != 0x7f));
        if (c != '\n')
            continue;
        size_t e = (i > ls && buf[i - 1] == '\r') ? i - 1 : i;

        CHECK((e == ls) == (i + 1 == hl)); /* the empty line ends the block, and only it */
        CHECK(e == ls || !is_ows(buf[ls]));
        lines++;
        ls = i + 1;
    }
    CHECK(lines >= 2 && lines - 2 <= ADMIN_FIELDS_MAX);

    /* "METHOD SP path[?query] SP HTTP/1.d" */
    mlen = strlen(req->method);
    plen = strlen(req->path);
    qlen = strlen(req->query);
    CHECK(mlen >= 1 && mlen <= 15 && plen + qlen <= ADMIN_PATH_MAX);
    for (size_t i = 0; i < mlen; i++)
        CHECK(is_tchar((unsigned char)req->method[i]));
    CHECK(memcmp(buf, req->method, mlen) == 0 && buf[mlen] == ' ');
    t = buf + mlen + 1;
    CHECK(memcmp(t, req->path, plen) == 0);
    t += plen;
    if (*t == '?') {
        CHECK(memcmp(t + 1, req->query, qlen) == 0);
        t += 1 + qlen;
    } else {
        CHECK(qlen == 0);
    }
    CHECK(memcmp(t, " HTTP/1.", 8) == 0 && t[8] >= '0' && t[8] <= '9');
    CHECK(req->version_minor == (t[8] == '0' ? 0 : 1));
    CHECK(t[9] == '\n' || (t[9] == '\r' && t[10] == '\n'));
    for (const char *p = buf + mlen + 1; p < t; p++)
        CHECK(*p >= 0x21 && *p <= 0x7e);

    if (req->has_auth) {
        const char *v = buf + req->auth_off;

        CHECK(req->auth_off > 0 && req->auth_off + req->auth_len <= hl);
        CHECK(memchr(v, '\n', req->auth_len) == NULL && memchr(v, '\r', req->auth_len) == NULL);
        if (req->auth_len > 0)
            CHECK(!is_ows(v[0]) && !is_ows(v[req->auth_len - 1]));
    } else {
        CHECK(req->auth_off == 0 && req->auth_len == 0);
    }
}

static void check_outcome(enum admin_parse r, const struct admin_request *req, const char *buf,
                          size_t len) {
    if (r == ADMIN_PARSE_DONE) {
        check_done(req, buf, len);
    } else if (r == ADMIN_PARSE_ERROR) {
        CHECK(req->status == 400 || req->status == 414 || req->status == 431 || req->status == 505);
        CHECK(req->reason != NULL && req->reason[0] != '\0');
        if (strcmp(req->reason, "request header block too large") == 0)
            CHECK(len > ADMIN_REQ_MAX);
    } else {
        CHECK(r == ADMIN_PARSE_MORE);
        CHECK(len <= ADMIN_REQ_MAX); /* beyond, it is decided */
    }
}

/* Parses data[0..len) from an exact-size copy. */
static enum admin_parse parse_copy(const uint8_t *data, size_t len, struct admin_request *req) {
    char *b = exact_copy(data, len);
    enum admin_parse r = admin_http_parse(b, len, req);

    check_outcome(r, req, b, len);
    free(b);
    return r;
}

/* As the real caller: reads of the sizes c picks (at most about MAX_READS of them), into one
 * buffer whose unreceived tail is poisoned; the first decision must be the whole input's. */
static void parse_split(const uint8_t *data, size_t len, uint8_t c, enum admin_parse r0,
                        const struct admin_request *ref) {
    uint32_t seed = 0x9e3779b9u ^ ((uint32_t)c << 24 | (uint32_t)c << 8 | 1u);
    size_t max_read = (size_t)1 << (c & 15), min_read = len / MAX_READS + 1, have = 0;
    unsigned moves = 0;
    char *buf = exact_copy(data, len);
    struct admin_request req;
    enum admin_parse r = ADMIN_PARSE_MORE;

    ASAN_POISON_MEMORY_REGION(buf, len);
    while (have < len && r == ADMIN_PARSE_MORE) {
        uint32_t rnd = next_rand(&seed);
        size_t n = 1 + rnd % max_read;

        if ((rnd >> 20) % 8 == 0 && moves < MAX_MOVES) {
            /* The caller grew its buffer with realloc: the parser may not keep pointers. */
            char *nb = exact_copy(data, len);

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
        r = admin_http_parse(buf, have, &req);
        check_outcome(r, &req, buf, have);
        if ((rnd >> 16) % 16 == 0) {
            /* The same bytes again: no hidden state, the same outcome. */
            struct admin_request again;

            same_outcome(r, &req, admin_http_parse(buf, have, &again), &again);
        }
    }
    /* Undecided to the end, or decided early: either way, the whole input's outcome. */
    same_outcome(r0, ref, r, &req);
    ASAN_UNPOISON_MEMORY_REGION(buf, len);
    free(buf);
}

/* The reference for admin_http_token_ok(): "Bearer" (any case), 1+ SP, then exactly TOKEN. */
static bool token_reference(const struct admin_request *req, const char *buf) {
    const char *v = buf + req->auth_off;
    size_t n = req->auth_len, i = 6;

    if (!req->has_auth || n <= i || strncasecmp(v, "bearer", 6) != 0 || v[i] != ' ')
        return false;
    while (i < n && v[i] == ' ')
        i++;
    return n - i == strlen(TOKEN) && memcmp(v + i, TOKEN, n - i) == 0;
}

static void check_query(const char *query, const char *name) {
    unsigned long v = 12345678901UL;
    int rc = admin_http_query_uint(query, name, &v);

    CHECK(rc == -1 || rc == 0 || rc == 1);
    if (rc == 1) {
        char text[32];
        int n = snprintf(text, sizeof(text), "%s=", name);

        CHECK(v <= 999999999UL);
        CHECK(n > 0 && strstr(query, text) != NULL);
    } else {
        CHECK(v == 12345678901UL); /* untouched */
    }
    if (rc != 0)
        CHECK(name[0] != '\0' && strstr(query, name) != NULL);
}

static void fuzz_parser(uint8_t c, const uint8_t *payload, size_t plen) {
    struct admin_request ref, req;
    enum admin_parse r0 = parse_copy(payload, plen, &ref);

    parse_split(payload, plen, c, r0, &ref);
    parse_split(payload, plen, (uint8_t)(c ^ 0x5a), r0, &ref);

    /* Decided prefixes stay decided: find the shortest one; it and every longer prefix give the
     * whole input's outcome, one byte less is undecided. */
    if (r0 != ADMIN_PARSE_MORE) {
        size_t lo = 0, hi = plen; /* parse(lo) is MORE, parse(hi) is decided */

        while (hi - lo > 1) {
            size_t mid = lo + (hi - lo) / 2;

            if (parse_copy(payload, mid, &req) == ADMIN_PARSE_MORE)
                lo = mid;
            else
                hi = mid;
        }
        same_outcome(r0, &ref, parse_copy(payload, hi, &req), &req);
        CHECK(parse_copy(payload, hi - 1, &req) == ADMIN_PARSE_MORE);
        if (hi < plen)
            same_outcome(r0, &ref, parse_copy(payload, hi + (plen - hi) / 2, &req), &req);
    }

    if (r0 == ADMIN_PARSE_DONE) {
        char *buf = exact_copy(payload, plen);

        check_query(ref.query, "limit");
        check_query(ref.query, "a");
        CHECK(admin_http_token_ok(&ref, buf, TOKEN) == token_reference(&ref, buf));
        CHECK(!admin_http_token_ok(&ref, buf, ""));
        free(buf);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t c = size > 0 ? data[0] : 0;
    char query[ADMIN_PATH_MAX + 1];
    size_t qlen;

    if (size > 0) {
        data++;
        size--;
    }
    fuzz_parser(c, data, size);

    /* The payload as a query string, cut at its first NUL or at the longest query. */
    qlen = strnlen((const char *)data, size < ADMIN_PATH_MAX ? size : ADMIN_PATH_MAX);
    memcpy(query, data, qlen);
    query[qlen] = '\0';
    check_query(query, "limit");
    check_query(query, "");
    return 0;
}
