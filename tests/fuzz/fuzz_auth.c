/* libFuzzer harness for src/auth.c (and its HMAC-SHA-256 cache keys): the users file loader
 * (auth_users_load_string()), the Proxy-Authorization decoder (auth_parse_basic()), the
 * credential cache and the failure record. auth_verify() is left out: it is slow by design.
 *
 * The whole input is a users file (NUL-terminated copy), a header value (as it is, in a buffer
 * of exactly its size, so ASan sees any read past its end) and, byte by byte, a sequence of
 * cache and failure-record operations.
 *
 * Checked: a users file that loads has unique, valid names that auth_users_find() finds, and
 * hashes of the accepted kinds; an error message starts with the name given, is printable ASCII
 * and leaves no users. Decoded credentials fit their buffers, hold no control bytes, and encode
 * back to the exact base64 that was sent (the decoder is strict). The tables stay bounded, a
 * cached value is the one put, one more failure never waits less, and an IPv4 client and its
 * IPv4-mapped form are one client. A broken invariant aborts, naming it. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "addr.h"
#include "auth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NAME "fuzz.users"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            broken(__LINE__, #cond);                                                               \
    } while (0)

static void broken(int line, const char *what) {
    fprintf(stderr, "fuzz_auth.c:%d: invariant broken: %s\n", line, what);
    abort();
}

static void fuzz_users(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    char err[512];
    struct auth_users u;
    int rc;

    if (!text)
        abort();
    if (size)
        memcpy(text, data, size);
    text[size] = '\0';
    memset(&u, 0xa5, sizeof u);
    memset(err, 0xa5, sizeof err);
    rc = auth_users_load_string(text, FUZZ_NAME, &u, err, sizeof err);
    CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        CHECK(u.n >= 1 && u.v != NULL);
        for (size_t i = 0; i < u.n; i++) {
            const char *name = u.v[i].name, *hash = u.v[i].hash;
            size_t n = strlen(name);

            CHECK(n >= 1 && n <= AUTH_USER_MAX);
            for (size_t k = 0; k < n; k++)
                CHECK(name[k] > ' ' && name[k] < 0x7f && name[k] != ':');
            CHECK(strncmp(hash, "$y$", 3) == 0 || strncmp(hash, "$6$", 3) == 0 ||
                  strncmp(hash, "$2b$", 4) == 0 || strncmp(hash, "$2y$", 4) == 0);
            CHECK(auth_users_find(&u, name) == &u.v[i]);
        }
        CHECK(auth_dummy_hash(&u) != NULL);
        auth_users_free(&u);
        CHECK(u.v == NULL && u.n == 0);
    } else {
        CHECK(memchr(err, '\0', sizeof err) != NULL);
        CHECK(strncmp(err, FUZZ_NAME, strlen(FUZZ_NAME)) == 0);
        /* Messages end up in logs and on terminals: no control bytes from the input. */
        for (const char *e = err; *e; e++)
            CHECK(*e >= 0x20 && *e <= 0x7e);
        CHECK(u.v == NULL && u.n == 0);
    }
    free(text);
}

static void base64(const uint8_t *in, size_t n, char *out) {
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;

    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;

        if (i + 1 < n)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < n)
            v |= in[i + 2];
        out[o++] = abc[v >> 18 & 63];
        out[o++] = abc[v >> 12 & 63];
        out[o++] = i + 1 < n ? abc[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? abc[v & 63] : '=';
    }
    out[o] = '\0';
}

static void fuzz_basic(const uint8_t *data, size_t size) {
    char *value = malloc(size ? size : 1);
    char user[AUTH_USER_MAX + 1], pass[AUTH_PASS_MAX + 1];
    int rc;

    if (!value)
        abort();
    if (size)
        memcpy(value, data, size);
    memset(user, 0xa5, sizeof user);
    memset(pass, 0xa5, sizeof pass);
    rc = auth_parse_basic(value, size, user, pass);
    CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        uint8_t plain[AUTH_USER_MAX + 1 + AUTH_PASS_MAX];
        char b64[(sizeof plain + 2) / 3 * 4 + 1];
        size_t ulen = strnlen(user, sizeof user), plen = strnlen(pass, sizeof pass);
        const char *p = value, *end = value + size;

        CHECK(ulen >= 1 && ulen <= AUTH_USER_MAX && plen <= AUTH_PASS_MAX);
        for (size_t i = 0; i < ulen; i++)
            CHECK((unsigned char)user[i] >= 0x20 && user[i] != 0x7f && user[i] != ':');
        for (size_t i = 0; i < plen; i++)
            CHECK((unsigned char)pass[i] >= 0x20 && pass[i] != 0x7f);
        /* Round trip: "Basic" and base64(user ":" pass) is exactly what was sent, between the
         * optional whitespace. */
        memcpy(plain, user, ulen);
        plain[ulen] = ':';
        memcpy(plain + ulen + 1, pass, plen);
        base64(plain, ulen + 1 + plen, b64);
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        CHECK(end - p > 6 && strncasecmp(p, "basic ", 6) == 0);
        p += 6;
        while (p < end && *p == ' ')
            p++;
        CHECK((size_t)(end - p) == strlen(b64) && memcmp(p, b64, strlen(b64)) == 0);
    }

    /* The credential cache keys any value, of any length. */
    {
        static const uint8_t secret[32] = {1, 2, 3};
        struct auth_cache *cache = auth_cache_new(4, 60.0, secret);
        uint8_t key[AUTH_KEY_LEN], key2[AUTH_KEY_LEN];

        CHECK(cache != NULL);
        auth_cache_key(cache, value, size, key);
        auth_cache_key(cache, value, size, key2);
        CHECK(memcmp(key, key2, sizeof key) == 0);
        CHECK(auth_cache_get(cache, key, 1.0) == -1);
        auth_cache_put(cache, key, 3, 1.0);
        CHECK(auth_cache_get(cache, key, 2.0) == 3);
        CHECK(auth_cache_size(cache) == 1);
        auth_cache_free(cache);
    }
    free(value);
}

/* The clients of the failure record: 10.0.0.k for k < 4, the same four as ::ffff:10.0.0.k
 * (which must share their entries), 2001:db8::1 and an AF_UNIX peer. */
static void client_addr(unsigned k, struct sockaddr_storage *ss) {
    char text[32];

    memset(ss, 0, sizeof *ss);
    if (k < 4)
        (void)snprintf(text, sizeof text, "10.0.0.%u", k);
    else if (k < 8)
        (void)snprintf(text, sizeof text, "::ffff:10.0.0.%u", k - 4);
    else if (k == 8)
        (void)snprintf(text, sizeof text, "2001:db8::1");
    else {
        ss->ss_family = AF_UNIX;
        return;
    }
    CHECK(addr_parse_ip(text, 1234, ss, NULL) == 0);
}

/* The bounded tables behind the credential cache and the failure record, driven by the input:
 * each byte is an operation on one of a few keys at a clock that moves on (or steps back). */
static void fuzz_tables(const uint8_t *data, size_t size) {
    static const uint8_t secret[32] = {9};
    struct auth_cache *cache = auth_cache_new(4, 60.0, secret);
    struct auth_failures *fails = auth_failures_new(3);
    static struct sockaddr_storage clients[10];
    static bool clients_set;
    uint8_t keys[8][AUTH_KEY_LEN];
    double now = 1000.0;

    CHECK(cache != NULL && fails != NULL);
    if (!clients_set) {
        for (unsigned k = 0; k < 10; k++)
            client_addr(k, &clients[k]);
        clients_set = true;
    }
    for (unsigned k = 0; k < 8; k++) {
        char name[8];

        (void)snprintf(name, sizeof name, "k%u", k);
        auth_cache_key(cache, name, strlen(name), keys[k]);
    }
    for (size_t i = 0; i < size && i < 96; i++) {
        unsigned b = data[i], op = b & 3, dt = b >> 5, k = (b >> 2) & 7;
        const uint8_t *key = keys[k];
        long v;

        now += dt == 7 ? -90.0 : dt * (dt > 4 ? 100.0 : 7.0);
        switch (op) {
        case 0:
            auth_cache_put(cache, key, 100 + k, now);
            CHECK(auth_cache_get(cache, key, now) == (long)(100 + k));
            break;
        case 1:
            v = auth_cache_get(cache, key, now);
            CHECK(v == -1 || v == (long)(100 + k));
            break;
        case 2: {
            const struct sockaddr *sa = (const struct sockaddr *)&clients[k + (b & 0x80 ? 2 : 0)];
            double before = auth_failures_delay(fails, sa, now), after;

            auth_failures_add(fails, sa, now);
            after = auth_failures_delay(fails, sa, now);
            CHECK(after >= 0.0 && after <= AUTH_FAIL_MAX_DELAY);
            CHECK(after >= before); /* one more failure never waits less */
            break;
        }
        default: {
            const struct sockaddr *sa = (const struct sockaddr *)&clients[k + 2];

            auth_failures_clear(fails, sa);
            CHECK(auth_failures_delay(fails, sa, now) == 0.0);
            break;
        }
        }
        CHECK(auth_cache_size(cache) <= 4);
        /* An IPv4 client and its IPv4-mapped form are one client. */
        CHECK(auth_failures_delay(fails, (const struct sockaddr *)&clients[k & 3], now) ==
              auth_failures_delay(fails, (const struct sockaddr *)&clients[(k & 3) + 4], now));
    }
    auth_cache_free(cache);
    auth_failures_free(fails);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_users(data, size);
    fuzz_basic(data, size);
    fuzz_tables(data, size);
    return 0;
}
