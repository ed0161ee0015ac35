/* auth: proxy credentials. The users file, Basic credentials, crypt(3) verification, the cache
 * of verified credentials and the per-client failure record.
 *
 * Pure: no ev.h, no sockets, time passed in. Only auth_users_load() touches a file, and only
 * auth_verify() is slow (it is the whole point of a password hash): the service calls it on its
 * worker thread. */
#include "auth.h"

#include <crypt.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "text.h"

#define USERS_FILE_MAX ((size_t)16 * 1024 * 1024)
#define USERS_LINE_MAX 1024 /* bytes; a crypt hash is at most a few hundred */

#define HASH_HINT "make one with: connectd --hash-password"

/* For auth_dummy_hash() when there are no users at all: a yescrypt hash (default cost) of a
 * phrase nobody sends. */
#define DUMMY_HASH "$y$j9T$2fEeonU0Haalv0tW0Mx0H/$FRxvNDPDE9pZsxIVdPiaJb7mJUGYwAhEWqFGvXC40w4"

/* ---- users file ---------------------------------------------------------------------------- */

/* The alphabet of crypt(3) salts and checksums ("./0-9A-Za-z"). */
static bool is_crypt64(char ch) {
    return ch == '.' || ch == '/' || (ch >= '0' && ch <= '9') || (ch >= 'A' && ch <= 'Z') ||
           (ch >= 'a' && ch <= 'z');
}

static size_t crypt64_span(const char *s) {
    size_t n = 0;

    while (is_crypt64(s[n]))
        n++;
    return n;
}

static size_t digit_span(const char *s) {
    size_t n = 0;

    while (s[n] >= '0' && s[n] <= '9')
        n++;
    return n;
}

/* Structure of the hashes we accept, complete with their checksum: crypt_checksalt() only
 * looks at the setting, so "$6$salt" (no checksum) or a truncated copy would pass it. */
static bool sha512crypt_ok(const char *h) {
    size_t n;

    h += 3; /* "$6$" */
    if (strncmp(h, "rounds=", 7) == 0) {
        n = digit_span(h + 7);
        if (n < 1 || n > 9 || h[7 + n] != '$')
            return false;
        h += 7 + n + 1;
    }
    n = crypt64_span(h);
    if (n < 1 || n > 16 || h[n] != '$')
        return false;
    h += n + 1;
    return crypt64_span(h) == 86 && h[86] == '\0';
}

static bool bcrypt_ok(const char *h) {
    h += 4; /* "$2b$" or "$2y$" */
    if (digit_span(h) != 2 || h[2] != '$')
        return false;
    if (h[0] > '3' || (h[0] == '0' && h[1] < '4') || (h[0] == '3' && h[1] > '1'))
        return false; /* cost 04..31 */
    h += 3;
    return crypt64_span(h) == 53 && h[53] == '\0';
}

static bool yescrypt_ok(const char *h) {
    size_t n;

    h += 3;              /* "$y$" */
    n = crypt64_span(h); /* parameters */
    if (n < 1 || h[n] != '$')
        return false;
    h += n + 1;
    n = crypt64_span(h); /* salt */
    if (n < 1 || h[n] != '$')
        return false;
    h += n + 1;
    return crypt64_span(h) == 43 && h[43] == '\0'; /* 256-bit checksum */
}

/* NULL when hash is acceptable, else what is wrong (in buf or a constant). */
static const char *hash_problem(const char *h, char *buf, size_t buflen) {
    size_t n;

    if (h[0] == '\0')
        return "empty password hash";
    if (h[0] == '*' || h[0] == '!')
        return "account is locked (\"*\" or \"!\" instead of a hash); remove the line, or give a "
               "hash (" HASH_HINT ")";
    if (strchr(h, ':'))
        return "unexpected ':' after the hash (expected user:hash, not a shadow(5) line)";
    if (h[0] != '$') {
        n = strlen(h);
        if ((n == 13 && crypt64_span(h) == 13) ||
            (n == 20 && h[0] == '_' && crypt64_span(h + 1) == 19))
            return "password is a DES crypt hash or plaintext (both are refused; " HASH_HINT ")";
        return "password is not a crypt hash (plaintext passwords are refused; " HASH_HINT ")";
    }
    if (strncmp(h, "$y$", 3) == 0) {
        if (!yescrypt_ok(h))
            return "malformed yescrypt ($y$) hash (truncated or damaged?)";
    } else if (strncmp(h, "$6$", 3) == 0) {
        if (!sha512crypt_ok(h))
            return "malformed sha512-crypt ($6$) hash (truncated or damaged?)";
    } else if (strncmp(h, "$2b$", 4) == 0 || strncmp(h, "$2y$", 4) == 0) {
        if (!bcrypt_ok(h))
            return "malformed bcrypt ($2b$) hash (truncated or damaged?)";
    } else {
        const char *id = h + 1;

        /* Name the method only when it looks like one ($1$, $5$, $2a$, $md5 ...). */
        n = strcspn(id, "$");
        if (n < 1 || n > 8 || crypt64_span(id) < n)
            n = 0;
        text_seterr(buf, buflen,
                    "unsupported hash method%s%.*s%s (use yescrypt $y$, sha512-crypt $6$ or "
                    "bcrypt $2b$; " HASH_HINT ")",
                    n ? " $" : "", (int)n, id, n ? "$" : "");
        return buf;
    }
    if (crypt_checksalt(h) != CRYPT_SALT_OK)
        return "hash refused by libcrypt (crypt_checksalt)";
    return NULL;
}

static bool name_byte_ok(unsigned char ch) {
    return ch > ' ' && ch < 0x7f && ch != ':';
}

/* Open-addressing set of user indices by name, for finding duplicates while loading. */
struct name_set {
    size_t *slot; /* index + 1; 0 = empty */
    size_t cap;   /* power of two */
};

static size_t name_hash(const char *s) {
    uint64_t h = 1469598103934665603ULL;

    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 32));
}

/* Index of the user with this name, or -1 after adding idx under it; -2 when out of memory. */
static long name_set_add(struct name_set *ns, const struct auth_user *v, size_t idx) {
    size_t i;

    if ((idx + 1) * 2 > ns->cap) {
        size_t ncap = ns->cap ? ns->cap * 2 : 64;
        size_t *ns_slot = calloc(ncap, sizeof *ns_slot);

        if (!ns_slot)
            return -2;
        for (size_t k = 0; k < ns->cap; k++) {
            if (!ns->slot[k])
                continue;
            i = name_hash(v[ns->slot[k] - 1].name) & (ncap - 1);
            while (ns_slot[i])
                i = (i + 1) & (ncap - 1);
            ns_slot[i] = ns->slot[k];
        }
        free(ns->slot);
        ns->slot = ns_slot;
        ns->cap = ncap;
    }
    i = name_hash(v[idx].name) & (ns->cap - 1);
    while (ns->slot[i]) {
        if (strcmp(v[ns->slot[i] - 1].name, v[idx].name) == 0)
            return (long)(ns->slot[i] - 1);
        i = (i + 1) & (ns->cap - 1);
    }
    ns->slot[i] = idx + 1;
    return -1;
}

struct loader {
    const char *name; /* of the file, for messages */
    struct auth_users *u;
    size_t cap;
    size_t *lineno; /* line of each user, for the duplicate message */
    struct name_set names;
    char *err;
    size_t errlen;
};

/* One line without its '\n'. Returns 0 or -1 with err set. */
static int load_line(struct loader *ld, const char *line, size_t len, size_t lineno) {
    char buf[USERS_LINE_MAX + 1], why[256];
    const char *problem;
    char *colon, *hash, *p;
    struct auth_user *nu;
    size_t ulen;
    long dup;

    if (memchr(line, '\0', len)) {
        text_seterr(ld->err, ld->errlen, "%s:%zu: NUL byte in line", ld->name, lineno);
        return -1;
    }
    /* Trailing whitespace goes, which also accepts CRLF line endings. */
    while (len > 0 && text_is_space(line[len - 1]))
        len--;
    if (len > USERS_LINE_MAX) {
        text_seterr(ld->err, ld->errlen, "%s:%zu: line longer than %d bytes", ld->name, lineno,
                    USERS_LINE_MAX);
        return -1;
    }
    memcpy(buf, line, len);
    buf[len] = '\0';
    for (p = buf; *p == ' ' || *p == '\t'; p++)
        ;
    if (*p == '\0' || *p == '#')
        return 0;

    colon = strchr(buf, ':');
    if (!colon) {
        text_seterr(ld->err, ld->errlen, "%s:%zu: missing ':' (expected user:hash)", ld->name,
                    lineno);
        return -1;
    }
    *colon = '\0';
    hash = colon + 1;
    ulen = (size_t)(colon - buf);
    if (ulen == 0) {
        text_seterr(ld->err, ld->errlen, "%s:%zu: empty user name", ld->name, lineno);
        return -1;
    }
    if (ulen > AUTH_USER_MAX) {
        text_seterr(ld->err, ld->errlen, "%s:%zu: user name longer than %d bytes", ld->name, lineno,
                    AUTH_USER_MAX);
        return -1;
    }
    for (p = buf; *p; p++) {
        if (!name_byte_ok((unsigned char)*p)) {
            text_seterr(ld->err, ld->errlen,
                        "%s:%zu: user name contains a space or a non-printable byte "
                        "(printable ASCII without ':' or space)",
                        ld->name, lineno);
            return -1;
        }
    }
    problem = hash_problem(hash, why, sizeof why);
    if (problem) {
        text_seterr(ld->err, ld->errlen, "%s:%zu: user %s: %s", ld->name, lineno, buf, problem);
        return -1;
    }

    if (ld->u->n == ld->cap) {
        size_t ncap = ld->cap ? ld->cap * 2 : 16;
        size_t *nl;

        nu = realloc(ld->u->v, ncap * sizeof *nu);
        if (!nu)
            goto oom;
        ld->u->v = nu;
        nl = realloc(ld->lineno, ncap * sizeof *nl);
        if (!nl)
            goto oom;
        ld->lineno = nl;
        ld->cap = ncap;
    }
    nu = &ld->u->v[ld->u->n];
    nu->name = strdup(buf);
    nu->hash = strdup(hash);
    if (!nu->name || !nu->hash) {
        free(nu->name);
        free(nu->hash);
        goto oom;
    }
    ld->lineno[ld->u->n] = lineno;
    dup = name_set_add(&ld->names, ld->u->v, ld->u->n);
    if (dup != -1) {
        free(nu->name);
        free(nu->hash);
        if (dup == -2)
            goto oom;
        text_seterr(ld->err, ld->errlen, "%s:%zu: user %s: duplicate (first on line %zu)", ld->name,
                    lineno, buf, ld->lineno[dup]);
        return -1;
    }
    ld->u->n++;
    return 0;
oom:
    text_seterr(ld->err, ld->errlen, "%s:%zu: out of memory", ld->name, lineno);
    return -1;
}

static int load_text(const char *text, size_t len, const char *name, struct auth_users *u,
                     char *err, size_t errlen) {
    struct loader ld = {.name = name, .u = u, .err = err, .errlen = errlen};
    const char *p = text, *end = text + len;
    size_t lineno = 0;
    int rc = 0;

    u->v = NULL;
    u->n = 0;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;

        if (load_line(&ld, p, (size_t)(eol - p), ++lineno) != 0) {
            rc = -1;
            break;
        }
        p = nl ? nl + 1 : end;
    }
    if (rc == 0 && u->n == 0) {
        text_seterr(err, errlen, "%s: no users", name);
        rc = -1;
    }
    free(ld.lineno);
    free(ld.names.slot);
    if (rc != 0)
        auth_users_free(u);
    return rc;
}

int auth_users_load_string(const char *text, const char *name, struct auth_users *u, char *err,
                           size_t errlen) {
    if (!name)
        name = "(string)";
    if (!text) {
        u->v = NULL;
        u->n = 0;
        text_seterr(err, errlen, "%s: no text", name);
        return -1;
    }
    return load_text(text, strlen(text), name, u, err, errlen);
}

int auth_users_load(const char *path, struct auth_users *u, char *err, size_t errlen) {
    char *buf;
    size_t n;
    int rc;

    u->v = NULL;
    u->n = 0;
    if (text_read_file(path, USERS_FILE_MAX, &buf, &n, err, errlen) != 0)
        return -1;
    rc = load_text(buf, n, path, u, err, errlen);
    free(buf);
    return rc;
}

void auth_users_free(struct auth_users *u) {
    if (!u)
        return;
    for (size_t i = 0; i < u->n; i++) {
        free(u->v[i].name);
        free(u->v[i].hash);
    }
    free(u->v);
    u->v = NULL;
    u->n = 0;
}

const struct auth_user *auth_users_find(const struct auth_users *u, const char *name) {
    for (size_t i = 0; i < u->n; i++) {
        if (strcmp(u->v[i].name, name) == 0)
            return &u->v[i];
    }
    return NULL;
}

/* ---- Basic credentials --------------------------------------------------------------------- */

static int b64_value(char ch) {
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/* Strict RFC 4648 base64: padded, no whitespace, canonical (unused bits zero). Returns the
 * decoded length, or -1. out holds at least n / 4 * 3 bytes. */
static long b64_decode(const char *s, size_t n, uint8_t *out) {
    size_t o = 0;

    if (n == 0 || n % 4 != 0)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        bool last = i + 4 == n;
        int a = b64_value(s[i]), b = b64_value(s[i + 1]), c, d;

        if (a < 0 || b < 0)
            return -1;
        out[o++] = (uint8_t)(a << 2 | b >> 4);
        if (last && s[i + 2] == '=') {
            if (s[i + 3] != '=' || (b & 0x0f))
                return -1;
            break;
        }
        c = b64_value(s[i + 2]);
        if (c < 0)
            return -1;
        out[o++] = (uint8_t)((b & 0x0f) << 4 | c >> 2);
        if (last && s[i + 3] == '=') {
            if (c & 0x03)
                return -1;
            break;
        }
        d = b64_value(s[i + 3]);
        if (d < 0)
            return -1;
        out[o++] = (uint8_t)((c & 0x03) << 6 | d);
    }
    return (long)o;
}

static bool cred_bytes_ok(const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (p[i] < 0x20 || p[i] == 0x7f)
            return false;
    }
    return true;
}

int auth_parse_basic(const char *value, size_t len, char user[AUTH_USER_MAX + 1],
                     char pass[AUTH_PASS_MAX + 1]) {
    /* user ':' pass at their longest, rounded up to whole base64 quanta */
    uint8_t buf[(AUTH_USER_MAX + 1 + AUTH_PASS_MAX + 2) / 3 * 3];
    const char *p, *end;
    const uint8_t *colon;
    size_t ulen, plen;
    long n;
    int rc = -1;

    user[0] = pass[0] = '\0';
    if (!value || len == 0)
        return -1;
    p = value;
    end = value + len;
    /* Surrounding optional whitespace is not part of the field value. */
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    if (end - p < 6 || strncasecmp(p, "basic", 5) != 0 || p[5] != ' ')
        return -1;
    p += 5;
    while (p < end && *p == ' ')
        p++;
    if ((size_t)(end - p) / 4 * 3 > sizeof buf)
        return -1;
    n = b64_decode(p, (size_t)(end - p), buf);
    if (n < 0)
        goto out;
    colon = memchr(buf, ':', (size_t)n);
    if (!colon)
        goto out;
    ulen = (size_t)(colon - buf);
    plen = (size_t)n - ulen - 1;
    if (ulen == 0 || ulen > AUTH_USER_MAX || plen > AUTH_PASS_MAX)
        goto out;
    if (!cred_bytes_ok(buf, ulen) || !cred_bytes_ok(colon + 1, plen))
        goto out;
    memcpy(user, buf, ulen);
    user[ulen] = '\0';
    memcpy(pass, colon + 1, plen);
    pass[plen] = '\0';
    rc = 0;
out:
    explicit_bzero(buf, sizeof buf);
    return rc;
}

/* ---- verification -------------------------------------------------------------------------- */

bool auth_ct_equal(const void *a, const void *b, size_t n) {
    const volatile uint8_t *x = a, *y = b;
    uint8_t d = 0;

    for (size_t i = 0; i < n; i++)
        d |= x[i] ^ y[i];
    return d == 0;
}

/* scratch: a struct crypt_data, zeroed before its first use (libcrypt keeps state in it). */
bool auth_verify(const char *pass, const char *hash, void *scratch) {
    struct crypt_data *cd = scratch;
    size_t n = strlen(hash);
    const char *out;

    out = crypt_rn(pass, hash, cd, (int)sizeof *cd);
    /* NULL on failure; some crypt implementations return "*0"/"*1" instead. */
    if (!out || out[0] == '*' || strlen(out) != n)
        return false;
    return auth_ct_equal(out, hash, n);
}

const char *auth_dummy_hash(const struct auth_users *u) {
    return u && u->n > 0 ? u->v[0].hash : DUMMY_HASH;
}

/* ---- bounded tables: the cache and the failure record -------------------------------------- */

/* Fixed-size key -> (value, time) table with hash chains and an age list (oldest first), both
 * through indices into one array allocated up front: bounded memory, no allocation per entry.
 * Keys are compared in constant time (cache keys are secrets' digests). */
#define NIL UINT32_MAX

struct slot {
    uint8_t key[AUTH_KEY_LEN];
    double t;
    size_t val;
    uint32_t hnext;        /* hash chain; free list when unused */
    uint32_t older, newer; /* age list */
};

struct table {
    struct slot *s;
    uint32_t *bucket;
    size_t max, count, keylen, mask;
    uint32_t oldest, newest, free;
};

static int table_init(struct table *t, size_t max, size_t keylen) {
    size_t nb = 16;

    if (max < 1)
        max = 1;
    if (max > UINT32_MAX / 4)
        max = UINT32_MAX / 4;
    while (nb < max)
        nb *= 2;
    t->s = calloc(max, sizeof *t->s);
    t->bucket = malloc(nb * sizeof *t->bucket);
    if (!t->s || !t->bucket) {
        free(t->s);
        free(t->bucket);
        return -1;
    }
    for (size_t i = 0; i < nb; i++)
        t->bucket[i] = NIL;
    for (size_t i = 0; i < max; i++)
        t->s[i].hnext = i + 1 < max ? (uint32_t)(i + 1) : NIL;
    t->max = max;
    t->count = 0;
    t->keylen = keylen;
    t->mask = nb - 1;
    t->oldest = t->newest = NIL;
    t->free = 0;
    return 0;
}

static void table_fini(struct table *t) {
    if (t->s)
        explicit_bzero(t->s, t->max * sizeof *t->s);
    free(t->s);
    free(t->bucket);
    t->s = NULL;
    t->bucket = NULL;
}

static size_t table_hash(const struct table *t, const uint8_t *key) {
    uint64_t h = 1469598103934665603ULL;

    for (size_t i = 0; i < t->keylen; i++)
        h = (h ^ key[i]) * 1099511628211ULL;
    return (size_t)(h ^ (h >> 29)) & t->mask;
}

static uint32_t table_find(const struct table *t, const uint8_t *key) {
    for (uint32_t i = t->bucket[table_hash(t, key)]; i != NIL; i = t->s[i].hnext) {
        if (auth_ct_equal(t->s[i].key, key, t->keylen))
            return i;
    }
    return NIL;
}

static void age_unlink(struct table *t, uint32_t i) {
    struct slot *e = &t->s[i];

    if (e->older != NIL)
        t->s[e->older].newer = e->newer;
    else
        t->oldest = e->newer;
    if (e->newer != NIL)
        t->s[e->newer].older = e->older;
    else
        t->newest = e->older;
}

static void age_append(struct table *t, uint32_t i) {
    t->s[i].older = t->newest;
    t->s[i].newer = NIL;
    if (t->newest != NIL)
        t->s[t->newest].newer = i;
    else
        t->oldest = i;
    t->newest = i;
}

static void table_remove(struct table *t, uint32_t i) {
    uint32_t *pp = &t->bucket[table_hash(t, t->s[i].key)];

    while (*pp != i)
        pp = &t->s[*pp].hnext;
    *pp = t->s[i].hnext;
    age_unlink(t, i);
    explicit_bzero(&t->s[i], sizeof t->s[i]);
    t->s[i].hnext = t->free;
    t->free = i;
    t->count--;
}

/* A new entry for key (not present), as the newest; the oldest goes when the table is full. */
static uint32_t table_add(struct table *t, const uint8_t *key) {
    uint32_t i;
    size_t b;

    if (t->free == NIL)
        table_remove(t, t->oldest);
    i = t->free;
    t->free = t->s[i].hnext;
    memcpy(t->s[i].key, key, t->keylen);
    b = table_hash(t, key);
    t->s[i].hnext = t->bucket[b];
    t->bucket[b] = i;
    age_append(t, i);
    t->count++;
    return i;
}

static void table_touch(struct table *t, uint32_t i) {
    age_unlink(t, i);
    age_append(t, i);
}

/* Drop the oldest entries while they are at least age seconds old. */
static void table_prune(struct table *t, double now, double age) {
    while (t->oldest != NIL && now - t->s[t->oldest].t >= age)
        table_remove(t, t->oldest);
}

/* ---- cache of verified credentials --------------------------------------------------------- */

struct auth_cache {
    struct table t;
    double ttl;
    uint8_t secret[32];
};

struct auth_cache *auth_cache_new(size_t max, double ttl, const uint8_t secret[32]) {
    struct auth_cache *c = calloc(1, sizeof *c);

    if (!c)
        return NULL;
    if (table_init(&c->t, max, AUTH_KEY_LEN) != 0) {
        free(c);
        return NULL;
    }
    c->ttl = ttl;
    memcpy(c->secret, secret, sizeof c->secret);
    return c;
}

void auth_cache_free(struct auth_cache *c) {
    if (!c)
        return;
    table_fini(&c->t);
    explicit_bzero(c, sizeof *c);
    free(c);
}

int auth_cache_key(const struct auth_cache *c, const char *value, size_t len,
                   uint8_t key[AUTH_KEY_LEN]) {
    unsigned int n = 0;

    if (!HMAC(EVP_sha256(), c->secret, (int)sizeof c->secret, (const unsigned char *)value, len,
              key, &n) ||
        n != AUTH_KEY_LEN)
        return -1;
    return 0;
}

long auth_cache_get(struct auth_cache *c, const uint8_t key[AUTH_KEY_LEN], double now) {
    uint32_t i = table_find(&c->t, key);

    if (i == NIL)
        return -1;
    /* A clock stepped back also ends the entry: re-verifying is cheap, trusting long is not. */
    if (now - c->t.s[i].t >= c->ttl || now < c->t.s[i].t) {
        table_remove(&c->t, i);
        return -1;
    }
    return (long)c->t.s[i].val;
}

void auth_cache_put(struct auth_cache *c, const uint8_t key[AUTH_KEY_LEN], size_t user,
                    double now) {
    uint32_t i;

    table_prune(&c->t, now, c->ttl);
    i = table_find(&c->t, key);
    if (i == NIL)
        i = table_add(&c->t, key);
    else
        table_touch(&c->t, i);
    c->t.s[i].val = user;
    c->t.s[i].t = now;
}

size_t auth_cache_size(const struct auth_cache *c) {
    return c->t.count;
}

/* ---- failed attempts per client ------------------------------------------------------------ */

struct auth_failures {
    struct table t; /* val: failures; t: time of the last one */
};

/* IPv6 address, or IPv4 as ::ffff:a.b.c.d so that mapped clients share an entry. Other
 * families (AF_UNIX) all share the zero key. */
static void client_key(const struct sockaddr *sa, uint8_t key[16]) {
    memset(key, 0, 16);
    if (!sa)
        return;
    if (sa->sa_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
    }
}

struct auth_failures *auth_failures_new(size_t max) {
    struct auth_failures *f = calloc(1, sizeof *f);

    if (!f)
        return NULL;
    if (table_init(&f->t, max, 16) != 0) {
        free(f);
        return NULL;
    }
    return f;
}

void auth_failures_free(struct auth_failures *f) {
    if (!f)
        return;
    table_fini(&f->t);
    free(f);
}

void auth_failures_add(struct auth_failures *f, const struct sockaddr *client, double now) {
    uint8_t key[16];
    uint32_t i;

    client_key(client, key);
    table_prune(&f->t, now, AUTH_FAIL_FORGET);
    i = table_find(&f->t, key);
    if (i == NIL) {
        i = table_add(&f->t, key);
        f->t.s[i].val = 0;
    } else {
        table_touch(&f->t, i);
        if (now - f->t.s[i].t >= AUTH_FAIL_FORGET)
            f->t.s[i].val = 0;
    }
    if (f->t.s[i].val < SIZE_MAX)
        f->t.s[i].val++;
    f->t.s[i].t = now;
}

void auth_failures_clear(struct auth_failures *f, const struct sockaddr *client) {
    uint8_t key[16];
    uint32_t i;

    client_key(client, key);
    i = table_find(&f->t, key);
    if (i != NIL)
        table_remove(&f->t, i);
}

double auth_failures_delay(struct auth_failures *f, const struct sockaddr *client, double now) {
    uint8_t key[16];
    double d = 1.0;
    uint32_t i;

    client_key(client, key);
    i = table_find(&f->t, key);
    if (i == NIL)
        return 0.0;
    if (now - f->t.s[i].t >= AUTH_FAIL_FORGET) {
        table_remove(&f->t, i);
        return 0.0;
    }
    if (f->t.s[i].val <= AUTH_FAIL_FREE)
        return 0.0;
    for (size_t k = f->t.s[i].val - AUTH_FAIL_FREE; k > 1 && d < AUTH_FAIL_MAX_DELAY; k--)
        d *= 2;
    return d < AUTH_FAIL_MAX_DELAY ? d : AUTH_FAIL_MAX_DELAY;
}
