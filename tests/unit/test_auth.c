/* Unit tests for src/auth.c: the users file, Basic credentials, crypt verification, the
 * credential cache and the failure record. Hashes are made here with libcrypt at the lowest
 * costs, so that the tests stay fast and need no fixtures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <crypt.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

#define PLAIN_MSG                                                                                  \
    "password is not a crypt hash (plaintext passwords are refused; make one with: connectd "      \
    "--hash-password)"

enum { Y, SHA512, BCRYPT, BCRYPT_Y, KINDS };

static const struct {
    const char *prefix;
    unsigned long count;
} kinds[KINDS] = {
    [Y] = {"$y$", 1},
    [SHA512] = {"$6$", 1000},
    [BCRYPT] = {"$2b$", 4},
    [BCRYPT_Y] = {"$2y$", 4},
};

/* hash[k]: crypt of "pw-<k>" with kind k, made once. */
static char hash[KINDS][CRYPT_OUTPUT_SIZE];
static const char *md5_hash = "$1$eU9EHHEL$0SYsMzexNof3MrO50DaOa/";

static void make_hash(int kind, const char *pass, char out[CRYPT_OUTPUT_SIZE]) {
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    struct crypt_data *cd = calloc(1, sizeof *cd);

    if (!cd ||
        !crypt_gensalt_rn(kinds[kind].prefix, kinds[kind].count, NULL, 0, setting, sizeof setting))
        fail_msg("test setup: crypt_gensalt_rn(%s) failed", kinds[kind].prefix);
    if (!crypt_rn(pass, setting, cd, (int)sizeof *cd))
        fail_msg("test setup: crypt_rn(%s) failed", setting);
    (void)snprintf(out, CRYPT_OUTPUT_SIZE, "%s", cd->output);
    free(cd);
}

static int setup_hashes(void **state) {
    char pass[16];

    (void)state;
    for (int k = 0; k < KINDS; k++) {
        (void)snprintf(pass, sizeof pass, "pw-%d", k);
        make_hash(k, pass, hash[k]);
    }
    return 0;
}

/* ---- users file ---------------------------------------------------------------------------- */

static void test_users_good(void **state) {
    struct auth_users u = {0};
    char text[4096], err[256] = "", longname[AUTH_USER_MAX + 1];

    (void)state;
    memset(longname, 'n', AUTH_USER_MAX);
    longname[AUTH_USER_MAX] = '\0';
    (void)snprintf(text, sizeof text,
                   "# connectd users\n"
                   "\n"
                   "   \n"
                   "  # indented comment\n"
                   "alice:%s\n"
                   "bob:%s\r\n"     /* CRLF is accepted */
                   "carol:%s  \t\n" /* trailing whitespace too */
                   "dave:%s\n"
                   "%s:%s\n"
                   "Mallory.O'Neil-1~!:%s", /* printable ASCII; no final newline */
                   hash[Y], hash[SHA512], hash[BCRYPT], hash[BCRYPT_Y], longname, hash[Y],
                   hash[SHA512]);
    if (auth_users_load_string(text, "users", &u, err, sizeof err) != 0)
        fail_msg("rejected: %s", err);
    assert_int_equal(u.n, 6);
    assert_string_equal(u.v[0].name, "alice");
    assert_string_equal(u.v[0].hash, hash[Y]);
    assert_string_equal(u.v[1].name, "bob");
    assert_string_equal(u.v[1].hash, hash[SHA512]);
    assert_string_equal(u.v[2].name, "carol");
    assert_string_equal(u.v[2].hash, hash[BCRYPT]);
    assert_string_equal(u.v[3].hash, hash[BCRYPT_Y]);
    assert_string_equal(u.v[4].name, longname);
    assert_string_equal(u.v[5].name, "Mallory.O'Neil-1~!");
    assert_ptr_equal(auth_users_find(&u, "bob"), &u.v[1]);
    assert_ptr_equal(auth_users_find(&u, "Mallory.O'Neil-1~!"), &u.v[5]);
    assert_null(auth_users_find(&u, "Bob"));
    assert_null(auth_users_find(&u, ""));
    assert_string_equal(auth_dummy_hash(&u), hash[Y]);
    auth_users_free(&u);
    assert_null(u.v);
    assert_int_equal(u.n, 0);
    auth_users_free(&u); /* twice is fine */
}

/* text with {Y}, {MD5}, {SHA}, {BCRYPT} and {LONG} replaced by hashes and a long line. */
static void expand(const char *in, const char *longline, char *out, size_t size) {
    const struct {
        const char *token, *with;
    } subst[] = {
        {"{Y}", hash[Y]},           {"{MD5}", md5_hash},  {"{SHA}", hash[SHA512]},
        {"{BCRYPT}", hash[BCRYPT]}, {"{LONG}", longline},
    };
    size_t o = 0;

    while (*in) {
        const char *with = NULL;
        size_t skip = 1, n;

        for (size_t k = 0; k < N(subst) && !with; k++) {
            if (strncmp(in, subst[k].token, strlen(subst[k].token)) == 0) {
                with = subst[k].with;
                skip = strlen(subst[k].token);
            }
        }
        n = with ? strlen(with) : 1;
        if (o + n >= size)
            fail_msg("test setup: expanded text too long");
        memcpy(out + o, with ? with : in, n);
        o += n;
        in += skip;
    }
    out[o] = '\0';
}

static void test_users_bad(void **state) {
    static const struct {
        const char *text; /* with {Y}, {MD5}, {SHA}, {BCRYPT}, {LONG} replaced */
        const char *msg;  /* the exact start of the error */
    } cases[] = {
        {"alice:secret", "u:1: user alice: " PLAIN_MSG},
        {"alice:correct horse battery staple", "u:1: user alice: " PLAIN_MSG},
        {"# users\n\nalice:{MD5}\n",
         "u:3: user alice: unsupported hash method $1$ (use yescrypt $y$, sha512-crypt $6$ or "
         "bcrypt $2b$; make one with: connectd --hash-password)"},
        {"alice:$5$abc$def", "u:1: user alice: unsupported hash method $5$"},
        {"alice:$2a$04$abc", "u:1: user alice: unsupported hash method $2a$"},
        {"alice:$$", "u:1: user alice: unsupported hash method (use"},
        {"alice:abJnggxhB/yWI",
         "u:1: user alice: password is a DES crypt hash or plaintext (both are refused; make one "
         "with: connectd --hash-password)"},
        {"alice:_J9..abcdefghijklmno", "u:1: user alice: password is a DES crypt hash"},
        {"alice:*", "u:1: user alice: account is locked (\"*\" or \"!\" instead of a hash)"},
        {"alice:!", "u:1: user alice: account is locked"},
        {"alice:!{SHA}", "u:1: user alice: account is locked"},
        {"alice:", "u:1: user alice: empty password hash"},
        {"alice:   ", "u:1: user alice: empty password hash"},
        {"alice", "u:1: missing ':' (expected user:hash)"},
        {"\nalice {Y}", "u:2: missing ':'"},
        {":{Y}", "u:1: empty user name"},
        {"alice:{Y}\nbob:{SHA}\nalice:{BCRYPT}\n", "u:3: user alice: duplicate (first on line 1)"},
        {"al ice:{Y}", "u:1: user name contains a space or a non-printable byte"},
        {" alice:{Y}", "u:1: user name contains a space"},
        {"al\tice:{Y}", "u:1: user name contains a space"},
        {"al\x7f"
         "ice:{Y}",
         "u:1: user name contains a space"},
        {"\xc3\xa9lise:{Y}", "u:1: user name contains a space"},
        {"a234567890123456789012345678901234567890123456789012345678901234x:{Y}",
         "u:1: user name longer than 64 bytes"},
        {"alice:{Y}:19000:0:99999:7:::", "u:1: user alice: unexpected ':' after the hash"},
        {"alice:$y$j75$oOozgkhxto0pqVzwu7rm3.",
         "u:1: user alice: malformed yescrypt ($y$) hash (truncated or damaged?)"},
        {"alice:$y$j75$oOozgkhxto0pqVzwu7rm3.$yl7cuU2e.HBtT2vos7LMue.qkNWpSy0ys1jjo/xh5K",
         "u:1: user alice: malformed yescrypt ($y$) hash"},
        {"alice:$y$$oOozgkhxto0pqVzwu7rm3.$yl7cuU2e.HBtT2vos7LMue.qkNWpSy0ys1jjo/xh5K9",
         "u:1: user alice: malformed yescrypt ($y$) hash"},
        {"alice:$6$rounds=1000$zpbfk2GzH9yFrARj",
         "u:1: user alice: malformed sha512-crypt ($6$) hash"},
        {"alice:$6$abc$xyz", "u:1: user alice: malformed sha512-crypt ($6$) hash"},
        {"alice:$6$rounds=$zpbfk2GzH9yFrARj$/MsMgerTvnng9HUT3c21jzYiuNi.qcRH/"
         "JfZTSMQe6mC62ynXHohlIkltxeMLOtE32H462mZ/WMkL0UxkCrS40",
         "u:1: user alice: malformed sha512-crypt ($6$) hash"},
        {"alice:$2b$04$PY3Txls4TnDas4Zj7U7o7O", "u:1: user alice: malformed bcrypt ($2b$) hash"},
        {"alice:$2b$99$PY3Txls4TnDas4Zj7U7o7Opmsw0JX/y5x7ZokT8Tv3DXU7E9P/lR2",
         "u:1: user alice: malformed bcrypt ($2b$) hash"},
        {"alice:$2b$04$PY3Txls4TnDas4Zj7U7o7Opmsw0JX/y5x7ZokT8Tv3DXU7E9P/lR2x",
         "u:1: user alice: malformed bcrypt ($2b$) hash"},
        {"", "u: no users"},
        {"# nobody\n\n", "u: no users"},
        {"alice:{Y}\n{LONG}\n", "u:2: line longer than 1024 bytes"},
    };
    char longline[1100];

    (void)state;
    memset(longline, 'x', sizeof longline - 1);
    longline[sizeof longline - 1] = '\0';
    for (size_t i = 0; i < N(cases); i++) {
        struct auth_users u = {(struct auth_user *)&u, 99}; /* must come back empty */
        char text[4096], err[512] = "";

        expand(cases[i].text, longline, text, sizeof text);
        if (auth_users_load_string(text, "u", &u, err, sizeof err) == 0)
            fail_msg("case %zu accepted: '%s'", i, text);
        if (strncmp(err, cases[i].msg, strlen(cases[i].msg)) != 0)
            fail_msg("case %zu '%s':\n  got      '%s'\n  expected '%s...'", i, cases[i].text, err,
                     cases[i].msg);
        assert_null(u.v);
        assert_int_equal(u.n, 0);
    }
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");

    if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0)
        fail_msg("test setup: cannot write %s", path);
}

static void test_users_file(void **state) {
    char path[] = "/tmp/test_auth_XXXXXX", text[1024], err[512] = "", want[600];
    struct auth_users u = {0};
    int fd, n;

    (void)state;
    fd = mkstemp(path);
    assert_true(fd != -1);
    (void)close(fd);

    n = snprintf(text, sizeof text, "# users\r\nalice:%s\r\nbob:%s\r\n", hash[Y], hash[BCRYPT]);
    write_file(path, text, (size_t)n);
    if (auth_users_load(path, &u, err, sizeof err) != 0)
        fail_msg("rejected: %s", err);
    assert_int_equal(u.n, 2);
    assert_string_equal(u.v[1].name, "bob");
    assert_string_equal(u.v[1].hash, hash[BCRYPT]);
    auth_users_free(&u);

    /* A NUL byte cannot come from a C string: only from a file. */
    n = snprintf(text, sizeof text, "alice:%s\nbob:x", hash[Y]);
    text[n++] = '\0';
    text[n++] = '\n';
    write_file(path, text, (size_t)n);
    assert_int_equal(auth_users_load(path, &u, err, sizeof err), -1);
    (void)snprintf(want, sizeof want, "%s:2: NUL byte in line", path);
    assert_string_equal(err, want);
    assert_int_equal(u.n, 0);

    write_file(path, "alice:secret\n", 13);
    assert_int_equal(auth_users_load(path, &u, err, sizeof err), -1);
    (void)snprintf(want, sizeof want, "%s:1: user alice: " PLAIN_MSG, path);
    assert_string_equal(err, want);

    (void)unlink(path);
    assert_int_equal(auth_users_load(path, &u, err, sizeof err), -1);
    (void)snprintf(want, sizeof want, "%s: cannot open: No such file or directory", path);
    assert_string_equal(err, want);
    assert_null(u.v);
    assert_int_equal(u.n, 0);
}

/* ---- Basic credentials --------------------------------------------------------------------- */

static void b64(const char *in, size_t n, char *out) {
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;

    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) |
                     (i + 2 < n ? p[i + 2] : 0);

        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        out[o++] = i + 1 < n ? a[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? a[v & 63] : '=';
    }
    out[o] = '\0';
}

/* "Basic " + base64 of n bytes of cred. */
static void basic(const char *cred, size_t n, char *out) {
    memcpy(out, "Basic ", 6);
    b64(cred, n, out + 6);
}

static int parse(const char *value, char *user, char *pass) {
    return auth_parse_basic(value, strlen(value), user, pass);
}

static void test_basic_good(void **state) {
    static const struct {
        const char *in, *user, *pass;
    } cases[] = {
        {"Basic YWxpY2U6c2VjcmV0", "alice", "secret"},
        {"basic YWxpY2U6c2VjcmV0", "alice", "secret"},
        {"BASIC YWxpY2U6c2VjcmV0", "alice", "secret"},
        {"bAsIc    YWxpY2U6c2VjcmV0", "alice", "secret"},
        {" \tBasic YWxpY2U6c2VjcmV0 \t", "alice", "secret"}, /* OWS around the value */
        {"Basic YWxpY2U6", "alice", ""},                     /* empty password */
        {"Basic YTpiOmM=", "a", "b:c"},                      /* split at the first ':' */
        {"Basic YWI6Yw==", "ab", "c"},
        {"Basic w6lsaXNlOnDDpHNz", "\xc3\xa9lise", "p\xc3\xa4ss"}, /* UTF-8 is not control */
        {"Basic dTogc3BhY2UgfiA=", "u", " space ~ "},
    };
    char user[AUTH_USER_MAX + 1], pass[AUTH_PASS_MAX + 1];

    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        if (parse(cases[i].in, user, pass) != 0)
            fail_msg("'%s' rejected", cases[i].in);
        assert_string_equal(user, cases[i].user);
        assert_string_equal(pass, cases[i].pass);
    }

    /* len is respected: the value need not be NUL-terminated. */
    assert_int_equal(auth_parse_basic("Basic YWxpY2U6c2VjcmV0trailing", 22, user, pass), 0);
    assert_string_equal(pass, "secret");
}

static void test_basic_lengths(void **state) {
    char cred[AUTH_USER_MAX + AUTH_PASS_MAX + 8], value[600];
    char user[AUTH_USER_MAX + 1], pass[AUTH_PASS_MAX + 1];
    size_t n;

    (void)state;
    /* longest user and password */
    memset(cred, 'u', AUTH_USER_MAX);
    cred[AUTH_USER_MAX] = ':';
    memset(cred + AUTH_USER_MAX + 1, 'p', AUTH_PASS_MAX);
    n = AUTH_USER_MAX + 1 + AUTH_PASS_MAX;
    basic(cred, n, value);
    assert_int_equal(parse(value, user, pass), 0);
    assert_int_equal(strlen(user), AUTH_USER_MAX);
    assert_int_equal(strlen(pass), AUTH_PASS_MAX);

    /* one more password byte */
    cred[n] = 'p';
    basic(cred, n + 1, value);
    assert_int_equal(parse(value, user, pass), -1);

    /* one more user byte */
    memset(cred, 'u', AUTH_USER_MAX + 1);
    cred[AUTH_USER_MAX + 1] = ':';
    memcpy(cred + AUTH_USER_MAX + 2, "pw", 2);
    basic(cred, AUTH_USER_MAX + 4, value);
    assert_int_equal(parse(value, user, pass), -1);
}

static void test_basic_bad(void **state) {
    static const struct {
        const char *cred; /* encoded with b64() when not NULL */
        size_t n;
        const char *in; /* else the literal value */
    } cases[] = {
        {NULL, 0, ""},
        {NULL, 0, "Basic"},
        {NULL, 0, "Basic "},
        {NULL, 0, "Basic    "},
        {NULL, 0, "Bearer YWxpY2U6c2VjcmV0"},
        {NULL, 0, "Basicx YWxpY2U6c2VjcmV0"},
        {NULL, 0, "BasicYWxpY2U6c2VjcmV0"},
        {NULL, 0, "Basic\tYWxpY2U6c2VjcmV0"},
        {NULL, 0, "Basic YWxpY2U="},              /* "alice": no ':' */
        {NULL, 0, "Basic YWxp!2U6c2VjcmV0"},      /* bad character */
        {NULL, 0, "Basic YWxpY2U6c2 VjcmV0"},     /* whitespace inside */
        {NULL, 0, "Basic YWxpY2U6c2VjcmV0 x"},    /* two tokens */
        {NULL, 0, "Basic YWxpY2U6c2VjcmV0MQ"},    /* padding missing */
        {NULL, 0, "Basic YWxpY2U6c2VjcmV0MQ="},   /* padding short */
        {NULL, 0, "Basic YWxpY2U6c2VjcmV0MQ==="}, /* padding long */
        {NULL, 0, "Basic YWxpY2U6c2VjcmV0M==="},  /* padding where data must be */
        {NULL, 0, "Basic YW==Y2U6c2VjcmV0"},      /* padding inside */
        {NULL, 0, "Basic YWxpY2U6c2VjcmV0MR=="},  /* non-canonical: unused bits set */
        {NULL, 0, "Basic YWI6Yx=="},              /* same */
        {NULL, 0, "Basic YWI6YzF="},              /* same, one '=' */
        {NULL, 0, "Basic YWxpY2U6c2VjcmV0-_"},    /* base64url is not base64 */
        {":secret", 7, NULL},                     /* empty user */
        {"alice:se\x01"
         "cret",
         13, NULL}, /* control byte in the password */
        {"alice:secret\r\n", 14, NULL},
        {"alice:sec\x7fret", 13, NULL}, /* DEL */
        {"al\nice:secret", 13, NULL},   /* control byte in the user */
        {"al\0ice:secret", 13, NULL},   /* NUL in the user */
        {"alice:sec\0ret", 13, NULL},   /* NUL in the password */
    };
    char user[AUTH_USER_MAX + 1], pass[AUTH_PASS_MAX + 1], value[128];

    (void)state;
    for (size_t i = 0; i < N(cases); i++) {
        const char *in = cases[i].in;

        if (cases[i].cred) {
            basic(cases[i].cred, cases[i].n, value);
            in = value;
        }
        if (parse(in, user, pass) != -1)
            fail_msg("case %zu '%s' accepted: user '%s' pass '%s'", i, in, user, pass);
    }
    assert_int_equal(auth_parse_basic(NULL, 0, user, pass), -1);
    /* a valid value cut short by len */
    assert_int_equal(auth_parse_basic("Basic YWxpY2U6c2VjcmV0", 21, user, pass), -1);
}

/* ---- verification -------------------------------------------------------------------------- */

static void test_ct_equal(void **state) {
    uint8_t a[32], b[32];

    (void)state;
    for (int i = 0; i < 32; i++)
        a[i] = b[i] = (uint8_t)(i * 7);
    assert_true(auth_ct_equal(a, b, sizeof a));
    assert_true(auth_ct_equal(a, b, 0));
    b[0] ^= 1;
    assert_false(auth_ct_equal(a, b, sizeof a));
    assert_true(auth_ct_equal(a + 1, b + 1, sizeof a - 1));
    b[0] ^= 1;
    b[31] ^= 0x80;
    assert_false(auth_ct_equal(a, b, sizeof a));
    assert_true(auth_ct_equal(a, b, sizeof a - 1));
}

static void test_verify(void **state) {
    struct crypt_data *cd = calloc(1, sizeof *cd);
    char pass[16], wrong[16];

    (void)state;
    assert_non_null(cd);
    for (int k = 0; k < KINDS; k++) {
        (void)snprintf(pass, sizeof pass, "pw-%d", k);
        (void)snprintf(wrong, sizeof wrong, "pw-%d", k + 1);
        if (!auth_verify(pass, hash[k], cd))
            fail_msg("%s: right password refused", kinds[k].prefix);
        assert_false(auth_verify(wrong, hash[k], cd));
        assert_false(auth_verify("", hash[k], cd));
        assert_false(auth_verify("PW-0", hash[k], cd));
        assert_true(auth_verify(pass, hash[k], cd)); /* scratch reusable */
    }
    /* a hash that crypt refuses, or that crypt completes to something longer */
    assert_false(auth_verify("x", "*", cd));
    assert_false(auth_verify("x", "!", cd));
    assert_false(auth_verify("x", "", cd));
    assert_false(auth_verify("x", "$6$abc", cd));
    assert_false(auth_verify("pw-1", "$6$rounds=1000$zpbfk2GzH9yFrARj", cd));
    free(cd);
}

static void test_dummy_hash(void **state) {
    struct auth_users none = {0};
    const char *d = auth_dummy_hash(&none);
    struct crypt_data *cd = calloc(1, sizeof *cd);

    (void)state;
    assert_non_null(cd);
    assert_non_null(d);
    assert_int_equal(strncmp(d, "$y$", 3), 0);
    assert_int_equal(crypt_checksalt(d), CRYPT_SALT_OK);
    assert_string_equal(auth_dummy_hash(NULL), d);
    /* crypt completes it: it really costs a verification */
    assert_non_null(crypt_rn("guess", d, cd, (int)sizeof *cd));
    assert_int_equal(strlen(cd->output), strlen(d));
    assert_false(auth_verify("guess", d, cd));
    free(cd);
}

/* ---- cache --------------------------------------------------------------------------------- */

static const uint8_t secret1[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                                    17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
static const uint8_t secret2[32] = {42};

static void key_of(const struct auth_cache *c, int i, uint8_t key[AUTH_KEY_LEN]) {
    char v[32];
    int n = snprintf(v, sizeof v, "Basic value-%d", i);

    auth_cache_key(c, v, (size_t)n, key);
}

static void test_cache_key(void **state) {
    struct auth_cache *c1 = auth_cache_new(4, 300, secret1);
    struct auth_cache *c1b = auth_cache_new(4, 300, secret1);
    struct auth_cache *c2 = auth_cache_new(4, 300, secret2);
    uint8_t k1[AUTH_KEY_LEN], k1b[AUTH_KEY_LEN], k2[AUTH_KEY_LEN], want[AUTH_KEY_LEN];
    unsigned int wl = 0;

    (void)state;
    assert_non_null(c1);
    assert_non_null(c1b);
    assert_non_null(c2);
    assert_int_equal(auth_cache_key(c1, "Basic YWI6Yw==", 14, k1), 0);
    assert_int_equal(auth_cache_key(c1b, "Basic YWI6Yw==", 14, k1b), 0);
    assert_int_equal(auth_cache_key(c2, "Basic YWI6Yw==", 14, k2), 0);
    assert_memory_equal(k1, k1b, AUTH_KEY_LEN);
    assert_memory_not_equal(k1, k2, AUTH_KEY_LEN);
    /* only len bytes count */
    auth_cache_key(c1, "Basic YWI6Yw==", 13, k1b);
    assert_memory_not_equal(k1, k1b, AUTH_KEY_LEN);
    auth_cache_key(c1, "Basic YWI6Yw=x", 13, k2);
    assert_memory_equal(k1b, k2, AUTH_KEY_LEN);

    /* HMAC-SHA-256(secret, value), as libcrypto computes it */
    assert_non_null(HMAC(EVP_sha256(), secret1, (int)sizeof secret1,
                         (const unsigned char *)"Basic YWI6Yw==", 14, want, &wl));
    assert_int_equal(wl, AUTH_KEY_LEN);
    assert_memory_equal(k1, want, AUTH_KEY_LEN);
    auth_cache_free(c1);
    auth_cache_free(c1b);
    auth_cache_free(c2);
    auth_cache_free(NULL);
}

static void test_cache_put_get_expire(void **state) {
    struct auth_cache *c = auth_cache_new(8, 300, secret1);
    uint8_t k0[AUTH_KEY_LEN], k1[AUTH_KEY_LEN];

    (void)state;
    assert_non_null(c);
    key_of(c, 0, k0);
    key_of(c, 1, k1);
    assert_int_equal(auth_cache_get(c, k0, 1000), -1);
    auth_cache_put(c, k0, 7, 1000);
    auth_cache_put(c, k1, 0, 1100);
    assert_int_equal(auth_cache_size(c), 2);
    assert_int_equal(auth_cache_get(c, k0, 1000), 7);
    assert_int_equal(auth_cache_get(c, k0, 1299.9), 7);
    assert_int_equal(auth_cache_get(c, k1, 1299.9), 0);
    /* expired at exactly ttl; the entry goes */
    assert_int_equal(auth_cache_get(c, k0, 1300), -1);
    assert_int_equal(auth_cache_size(c), 1);
    assert_int_equal(auth_cache_get(c, k0, 1000), -1);
    /* a clock stepped back ends an entry too */
    assert_int_equal(auth_cache_get(c, k1, 1099), -1);
    assert_int_equal(auth_cache_size(c), 0);

    /* put again: new value, new time */
    auth_cache_put(c, k0, 3, 2000);
    auth_cache_put(c, k0, 4, 2200);
    assert_int_equal(auth_cache_size(c), 1);
    assert_int_equal(auth_cache_get(c, k0, 2450), 4);
    /* a put drops what has expired */
    auth_cache_put(c, k1, 1, 3000);
    assert_int_equal(auth_cache_size(c), 1);
    assert_int_equal(auth_cache_get(c, k1, 3000), 1);
    auth_cache_free(c);
}

static void test_cache_eviction(void **state) {
    struct auth_cache *c = auth_cache_new(4, 300, secret1);
    uint8_t k[1000][AUTH_KEY_LEN];

    (void)state;
    assert_non_null(c);
    for (int i = 0; i < 1000; i++)
        key_of(c, i, k[i]);
    for (int i = 0; i < 4; i++)
        auth_cache_put(c, k[i], (size_t)i, 10 + i);
    assert_int_equal(auth_cache_size(c), 4);
    /* full: the oldest (k0) goes */
    auth_cache_put(c, k[4], 4, 20);
    assert_int_equal(auth_cache_size(c), 4);
    assert_int_equal(auth_cache_get(c, k[0], 21), -1);
    for (int i = 1; i <= 4; i++)
        assert_int_equal(auth_cache_get(c, k[i], 21), i);
    /* put again makes k1 the newest: k2 is now the oldest */
    auth_cache_put(c, k[1], 1, 22);
    auth_cache_put(c, k[5], 5, 23);
    assert_int_equal(auth_cache_get(c, k[2], 24), -1);
    assert_int_equal(auth_cache_get(c, k[1], 24), 1);
    assert_int_equal(auth_cache_get(c, k[5], 24), 5);

    /* never more than max, the newest kept */
    for (int i = 0; i < 1000; i++) {
        auth_cache_put(c, k[i], (size_t)i, 100 + i * 0.01);
        assert_true(auth_cache_size(c) <= 4);
    }
    assert_int_equal(auth_cache_size(c), 4);
    for (int i = 0; i < 996; i++)
        assert_int_equal(auth_cache_get(c, k[i], 200), -1);
    for (int i = 996; i < 1000; i++)
        assert_int_equal(auth_cache_get(c, k[i], 200), i);
    auth_cache_free(c);

    /* a table of one */
    c = auth_cache_new(1, 300, secret1);
    assert_non_null(c);
    auth_cache_put(c, k[0], 0, 1);
    auth_cache_put(c, k[1], 1, 2);
    assert_int_equal(auth_cache_size(c), 1);
    assert_int_equal(auth_cache_get(c, k[0], 3), -1);
    assert_int_equal(auth_cache_get(c, k[1], 3), 1);
    auth_cache_free(c);
}

/* ---- failures ------------------------------------------------------------------------------ */

static struct sockaddr_storage ip(const char *s) {
    struct sockaddr_storage ss;

    memset(&ss, 0, sizeof ss);
    if (strchr(s, ':')) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;

        a->sin6_family = AF_INET6;
        if (inet_pton(AF_INET6, s, &a->sin6_addr) != 1)
            fail_msg("test setup: '%s'", s);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;

        a->sin_family = AF_INET;
        if (inet_pton(AF_INET, s, &a->sin_addr) != 1)
            fail_msg("test setup: '%s'", s);
    }
    return ss;
}

#define SA(ss) ((const struct sockaddr *)&(ss))

static void test_failures_sequence(void **state) {
    static const double expect[] = {0, 0, 0, 1, 2, 4, 8, 8, 8, 8};
    struct auth_failures *f = auth_failures_new(16);
    struct sockaddr_storage a = ip("192.0.2.1"), b = ip("192.0.2.2");
    double now = 1000;

    (void)state;
    assert_non_null(f);
    assert_true(auth_failures_delay(f, SA(a), now) == 0.0);
    for (size_t i = 0; i < N(expect); i++) {
        auth_failures_add(f, SA(a), now);
        now += 1;
        if (auth_failures_delay(f, SA(a), now) != expect[i])
            fail_msg("after %zu failures: delay %g, expected %g", i + 1,
                     auth_failures_delay(f, SA(a), now), expect[i]);
    }
    assert_true(auth_failures_delay(f, SA(b), now) == 0.0);

    /* remembered until AUTH_FAIL_FORGET after the last failure */
    now += AUTH_FAIL_FORGET - 2;
    assert_true(auth_failures_delay(f, SA(a), now) == 8.0);
    now += 1;
    assert_true(auth_failures_delay(f, SA(a), now) == 0.0);
    auth_failures_add(f, SA(a), now); /* counting starts again */
    assert_true(auth_failures_delay(f, SA(a), now) == 0.0);

    /* forgotten also when the next failure comes late, without a delay() in between */
    for (int i = 0; i < 4; i++)
        auth_failures_add(f, SA(b), now);
    assert_true(auth_failures_delay(f, SA(b), now) == 1.0);
    now += AUTH_FAIL_FORGET;
    auth_failures_add(f, SA(b), now);
    assert_true(auth_failures_delay(f, SA(b), now) == 0.0);

    /* clear: a success forgets */
    for (int i = 0; i < 5; i++)
        auth_failures_add(f, SA(a), now);
    assert_true(auth_failures_delay(f, SA(a), now) == 2.0);
    auth_failures_clear(f, SA(a));
    assert_true(auth_failures_delay(f, SA(a), now) == 0.0);
    auth_failures_clear(f, SA(a)); /* absent: fine */
    auth_failures_add(f, SA(a), now);
    assert_true(auth_failures_delay(f, SA(a), now) == 0.0);
    auth_failures_free(f);
    auth_failures_free(NULL);
}

static void test_failures_addresses(void **state) {
    struct auth_failures *f = auth_failures_new(16);
    struct sockaddr_storage v4 = ip("198.51.100.7"), mapped = ip("::ffff:198.51.100.7");
    struct sockaddr_storage v6 = ip("2001:db8::1"), v6b = ip("2001:db8::2");

    (void)state;
    assert_non_null(f);
    /* IPv4 and IPv4-mapped IPv6 are one client */
    for (int i = 0; i < 2; i++)
        auth_failures_add(f, SA(v4), 10);
    for (int i = 0; i < 2; i++)
        auth_failures_add(f, SA(mapped), 10);
    assert_true(auth_failures_delay(f, SA(v4), 10) == 1.0);
    assert_true(auth_failures_delay(f, SA(mapped), 10) == 1.0);
    auth_failures_clear(f, SA(mapped));
    assert_true(auth_failures_delay(f, SA(v4), 10) == 0.0);

    /* IPv6: per address */
    for (int i = 0; i < 4; i++)
        auth_failures_add(f, SA(v6), 10);
    assert_true(auth_failures_delay(f, SA(v6), 10) == 1.0);
    assert_true(auth_failures_delay(f, SA(v6b), 10) == 0.0);
    assert_true(auth_failures_delay(f, SA(v4), 10) == 0.0);
    auth_failures_free(f);
}

static void test_failures_bounded(void **state) {
    struct auth_failures *f = auth_failures_new(2);
    struct sockaddr_storage a = ip("10.0.0.1"), b = ip("10.0.0.2"), c = ip("10.0.0.3");

    (void)state;
    assert_non_null(f);
    for (int i = 0; i < 4; i++)
        auth_failures_add(f, SA(a), 10);
    auth_failures_add(f, SA(b), 11);
    auth_failures_add(f, SA(a), 12); /* a: 5 failures, and now the most recent */
    for (int i = 0; i < 4; i++)
        auth_failures_add(f, SA(c), 13); /* full: b, the least recent, goes */
    assert_true(auth_failures_delay(f, SA(a), 14) == 2.0);
    assert_true(auth_failures_delay(f, SA(c), 14) == 1.0);
    for (int i = 0; i < 4; i++)
        auth_failures_add(f, SA(b), 14); /* b starts again from 1 (else 5: 2 s); a goes */
    assert_true(auth_failures_delay(f, SA(b), 14) == 1.0);
    assert_true(auth_failures_delay(f, SA(a), 14) == 0.0);
    assert_true(auth_failures_delay(f, SA(c), 14) == 1.0);
    auth_failures_free(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_users_good),
        cmocka_unit_test(test_users_bad),
        cmocka_unit_test(test_users_file),
        cmocka_unit_test(test_basic_good),
        cmocka_unit_test(test_basic_lengths),
        cmocka_unit_test(test_basic_bad),
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_verify),
        cmocka_unit_test(test_dummy_hash),
        cmocka_unit_test(test_cache_key),
        cmocka_unit_test(test_cache_put_get_expire),
        cmocka_unit_test(test_cache_eviction),
        cmocka_unit_test(test_failures_sequence),
        cmocka_unit_test(test_failures_addresses),
        cmocka_unit_test(test_failures_bounded),
    };

    return cmocka_run_group_tests(tests, setup_hashes, NULL);
}
