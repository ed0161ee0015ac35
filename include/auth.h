/* auth: proxy credentials. The users file, Basic credentials, crypt(3) verification, the cache
 * of verified credentials and the per-client failure record. Pure: no ev.h, no sockets; only
 * auth_users_load() reads a file. auth_verify() is slow by design: call it off the loop
 * (auth_service.c). */
#ifndef CONNECTD_AUTH_H
#define CONNECTD_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define AUTH_KEY_LEN 32 /* bytes of a credential cache key (HMAC-SHA-256) */

#define AUTH_USER_MAX 64  /* bytes of a user name */
#define AUTH_PASS_MAX 256 /* bytes of a password */

struct auth_user {
    char *name;
    char *hash; /* "$y$...", "$6$...", "$2b$..." */
};

struct auth_users {
    struct auth_user *v;
    size_t n;
};

/* Load "user:hash" lines ('#' comments and blank lines allowed). A hash must be a yescrypt
 * ($y$), sha512-crypt ($6$) or bcrypt ($2b$/$2y$) string that libcrypt accepts; anything else
 * (plaintext, DES, MD5, "*", "!") is an error. User names: 1-AUTH_USER_MAX bytes, printable
 * ASCII without ':' or space; duplicates are errors. Returns 0, or -1 with "FILE:LINE: what is
 * wrong" (or "FILE: cannot open: <strerror>") in err; *u is then empty. An empty file is an
 * error ("no users"). */
int auth_users_load(const char *path, struct auth_users *u, char *err, size_t errlen);
int auth_users_load_string(const char *text, const char *name, struct auth_users *u, char *err,
                           size_t errlen);
void auth_users_free(struct auth_users *u);
const struct auth_user *auth_users_find(const struct auth_users *u, const char *name);

/* Decode a Proxy-Authorization value "Basic <base64(user:pass)>" (scheme case-insensitive,
 * one or more spaces). user and pass are NUL-terminated, each at most AUTH_USER_MAX /
 * AUTH_PASS_MAX bytes. Returns 0, or -1 when malformed, too long, not Basic, or user/pass
 * contain NUL or control bytes. */
int auth_parse_basic(const char *value, size_t len, char user[AUTH_USER_MAX + 1],
                     char pass[AUTH_PASS_MAX + 1]);

/* Constant-time equality of n bytes. */
bool auth_ct_equal(const void *a, const void *b, size_t n);

/* crypt(pass, hash) == hash, compared in constant time. scratch is the caller's (per-thread)
 * struct crypt_data, passed as void * so that this header does not need <crypt.h>. */
bool auth_verify(const char *pass, const char *hash, void *scratch);

/* A hash of the same kind and cost as the users' own, for verifying unknown user names so that
 * they cost as much as known ones (no user enumeration by timing). */
const char *auth_dummy_hash(const struct auth_users *u);

/* Cache of verified credentials: key is SHA-256(secret || Proxy-Authorization value), value
 * the user's index. Bounded (oldest dropped), entries expire after ttl seconds. */
struct auth_cache;
struct auth_cache *auth_cache_new(size_t max, double ttl, const uint8_t secret[32]);
void auth_cache_free(struct auth_cache *c);
/* The cache key of a Proxy-Authorization value: HMAC-SHA-256 under the cache's secret, so the
 * cache never holds a credential. 0, or -1 when libcrypto fails (then do not use the cache). */
int auth_cache_key(const struct auth_cache *c, const char *value, size_t len,
                   uint8_t key[AUTH_KEY_LEN]);
/* Returns the user index, or -1 when absent or expired. */
long auth_cache_get(struct auth_cache *c, const uint8_t key[AUTH_KEY_LEN], double now);
void auth_cache_put(struct auth_cache *c, const uint8_t key[AUTH_KEY_LEN], size_t user, double now);
size_t auth_cache_size(const struct auth_cache *c);

/* Failed attempts per client address (IPv4-mapped as IPv4), bounded, forgotten after
 * AUTH_FAIL_FORGET seconds without a failure. The first AUTH_FAIL_FREE failures cost
 * nothing; then each further one doubles the wait from 1 s up to AUTH_FAIL_MAX_DELAY. */
#define AUTH_FAIL_FREE      3
#define AUTH_FAIL_MAX_DELAY 8.0
#define AUTH_FAIL_FORGET    600.0
struct auth_failures;
struct auth_failures *auth_failures_new(size_t max);
void auth_failures_free(struct auth_failures *f);
void auth_failures_add(struct auth_failures *f, const struct sockaddr *client, double now);
void auth_failures_clear(struct auth_failures *f, const struct sockaddr *client);
/* Seconds to wait before serving this client's next attempt (0 when none). */
double auth_failures_delay(struct auth_failures *f, const struct sockaddr *client, double now);

#endif
