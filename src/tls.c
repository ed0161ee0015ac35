/* tls: OpenSSL contexts from [tls], and client sessions on non-blocking sockets. */
#include "tls.h"

#include "buf.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ocsp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <ev.h>

#include "log.h"
#include "text.h"

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

#define SESSION_CACHE 10000 /* server-side sessions per worker when tickets are off */

struct tls_ctx {
    SSL_CTX *ssl;
    bool ktls; /* sessions write through a socket BIO, so OpenSSL may hand them to the kernel */
    unsigned char *ocsp;
    size_t ocsp_len;
    time_t ocsp_until; /* its nextUpdate: not stapled from then on; 0 = none given */
    unsigned char alpn[64];
    size_t alpn_len;
    char summary[320]; /* subject 128 + serial 80 + date 64 + words */
};

struct tls_conn {
    SSL *ssl;
    BIO *pre; /* bytes read before the session existed; the socket's turn comes after */
    int fd;
    struct ev_loop *loop;
    bool dry; /* the socket ran dry in loop turn dry_turn (the in BIO) */
    unsigned dry_turn;
    bool truncated;
    bool broken;   /* a protocol error or reset: the session must not be resumed */
    bool deferred; /* a read returned data, then met the end or an error: next call says so */
    /* Records waiting for the socket (the out BIO): several go out in one send(2) instead
     * of a write per 16 KiB record. Allocated while bytes wait, so idle sessions hold none. */
    unsigned char *out;
    size_t outlen, outoff, outcap;
    bool gather;  /* tls_conn_gather: records wait for more, up to OUT_GATHER */
    bool own_out; /* writes go to the out BIO, reads to the in BIO (else socket BIOs: kTLS) */
    bool no_h2;   /* already refused: the answer goes as HTTP/1.1, so do not pick h2 */
    int deferred_ret, deferred_errno;
    char err[120];
};

/* ---- ticket keys ---- */

static unsigned char ticket_secret[32];
static bool ticket_secret_set;

struct ticket_key {
    uint64_t epoch;
    unsigned char name[16], aes[32], mac[32];
    bool set;
};

static struct ticket_key ticket_keys[2]; /* by epoch parity: the current and the previous */

int tls_global_init(char *err, size_t errlen) {
    if (RAND_bytes(ticket_secret, sizeof ticket_secret) != 1) {
        text_seterr(err, errlen, "TLS: no random bytes for the session ticket secret");
        return -1;
    }
    ticket_secret_set = true;
    return 0;
}

/* Key material for an epoch: HMAC-SHA-256(secret, label || epoch). Every worker derives the
 * same keys from the secret it inherited, without talking to the others. */
static int derive(const char *label, uint64_t epoch, unsigned char out[32]) {
    unsigned char msg[16];
    size_t ll = strlen(label);
    unsigned int n = 0;
    memcpy(msg, label, ll);
    for (int i = 0; i < 8; i++)
        msg[ll + (size_t)i] = (unsigned char)(epoch >> (56 - 8 * i));
    return HMAC(EVP_sha256(), ticket_secret, (int)sizeof ticket_secret, msg, ll + 8, out, &n) &&
                   n == 32
               ? 0
               : -1;
}

static const struct ticket_key *ticket_key(uint64_t epoch) {
    struct ticket_key *k = &ticket_keys[epoch & 1];
    if (k->set && k->epoch == epoch)
        return k;
    unsigned char name[32];
    k->set = false;
    if (derive("name", epoch, name) != 0 || derive("aes", epoch, k->aes) != 0 ||
        derive("mac", epoch, k->mac) != 0)
        return NULL;
    memcpy(k->name, name, sizeof k->name);
    k->epoch = epoch;
    k->set = true;
    return k;
}

static int ticket_keys_use(const struct ticket_key *k, unsigned char *iv, EVP_CIPHER_CTX *cctx,
                           EVP_MAC_CTX *hctx, int enc) {
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, (void *)k->mac, sizeof k->mac),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)"SHA256", 0),
        OSSL_PARAM_construct_end()};
    if (!EVP_MAC_CTX_set_params(hctx, params))
        return -1;
    if (enc)
        return EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) ? 0 : -1;
    return EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, k->aes, iv) ? 0 : -1;
}

/* OpenSSL asks for the keys to seal a new ticket (enc) or to open one a client presents:
 * 1 = use, 2 = use and issue a fresh ticket (sealed under an older key), 0 = unknown (full
 * handshake), -1 = error. */
static int ticket_cb(SSL *s, unsigned char key_name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx,
                     EVP_MAC_CTX *hctx, int enc) {
    (void)s;
    uint64_t epoch = (uint64_t)time(NULL) / TLS_TICKET_PERIOD;
    if (enc) {
        const struct ticket_key *k = ticket_key(epoch);
        if (!k || RAND_bytes(iv, EVP_CIPHER_get_iv_length(EVP_aes_256_cbc())) != 1)
            return -1;
        memcpy(key_name, k->name, sizeof k->name);
        return ticket_keys_use(k, iv, cctx, hctx, 1) == 0 ? 1 : -1;
    }
    for (uint64_t age = 0; age < 2; age++) {
        const struct ticket_key *k = ticket_key(epoch - age);
        if (k && memcmp(key_name, k->name, sizeof k->name) == 0) {
            if (ticket_keys_use(k, iv, cctx, hctx, 0) != 0)
                return -1;
            return age == 0 ? 1 : 2;
        }
    }
    return 0;
}

/* ---- contexts ---- */

static void ssl_why(char *out, size_t outlen) {
    unsigned long e = ERR_peek_last_error();
    if (e == 0) {
        text_seterr(out, outlen, "unknown OpenSSL error");
        return;
    }
    ERR_error_string_n(e, out, outlen);
    /* "error:0A00018F:SSL routines::ee key too small": keep the words after the last ':' */
    const char *words = strrchr(out, ':');
    if (words && words[1])
        memmove(out, words + 1, strlen(words + 1) + 1);
    ERR_clear_error();
}

static void time_text(const ASN1_TIME *t, char *out, size_t outlen) {
    BIO *b = BIO_new(BIO_s_mem());
    out[0] = '\0';
    if (b && ASN1_TIME_print(b, t)) {
        int n = BIO_read(b, out, (int)outlen - 1);
        out[n > 0 ? n : 0] = '\0';
    }
    BIO_free(b);
}

/* An encrypted key would need a passphrase at every start: say so instead of prompting. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
    (void)buf;
    (void)size;
    (void)rwflag;
    *(bool *)u = true;
    return -1;
}

static int load_chain(struct tls_ctx *c, const struct tls_config *tc, X509 **leaf, char *err,
                      size_t errlen) {
    char why[160];
    BIO *b = BIO_new_mem_buf(tc->cert_pem, (int)tc->cert_pem_len);
    if (!b) {
        text_seterr(err, errlen, "[tls] certificate: %s: out of memory", tc->certificate);
        return -1;
    }
    *leaf = PEM_read_bio_X509_AUX(b, NULL, NULL, NULL);
    if (!*leaf) {
        ERR_clear_error();
        text_seterr(err, errlen, "[tls] certificate: %s: no PEM certificate in it",
                    tc->certificate);
        BIO_free(b);
        return -1;
    }
    if (SSL_CTX_use_certificate(c->ssl, *leaf) != 1) {
        ssl_why(why, sizeof why);
        text_seterr(err, errlen, "[tls] certificate: %s: %s", tc->certificate, why);
        BIO_free(b);
        return -1;
    }
    X509 *x;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL) {
        if (SSL_CTX_add0_chain_cert(c->ssl, x) != 1) {
            X509_free(x);
            ssl_why(why, sizeof why);
            text_seterr(err, errlen, "[tls] certificate: %s: %s", tc->certificate, why);
            BIO_free(b);
            return -1;
        }
    }
    unsigned long e = ERR_peek_last_error();
    BIO_free(b);
    if (e && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE)) {
        ssl_why(why, sizeof why);
        text_seterr(err, errlen, "[tls] certificate: %s: a chain certificate: %s", tc->certificate,
                    why);
        return -1;
    }
    ERR_clear_error();
    return 0;
}

static int check_dates(const struct tls_config *tc, X509 *leaf, char *err, size_t errlen) {
    char when[64];
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
        time_text(X509_get0_notAfter(leaf), when, sizeof when);
        text_seterr(err, errlen, "[tls] certificate: %s: expired on %s", tc->certificate, when);
        return -1;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(leaf)) > 0) {
        time_text(X509_get0_notBefore(leaf), when, sizeof when);
        text_seterr(err, errlen, "[tls] certificate: %s: not valid before %s", tc->certificate,
                    when);
        return -1;
    }
    return 0;
}

static int load_key(struct tls_ctx *c, const struct tls_config *tc, X509 *leaf, char *err,
                    size_t errlen) {
    bool wanted_pass = false;
    if (tc->key_unreadable) {
        text_seterr(err, errlen,
                    "[tls] key: %s: cannot open: Permission denied (a key file that only root "
                    "may read is read at start: a new one takes a restart)",
                    tc->key);
        return -1;
    }
    BIO *b = BIO_new_mem_buf(tc->key_pem, (int)tc->key_pem_len);
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, no_passphrase, &wanted_pass) : NULL;
    BIO_free(b);
    if (!k) {
        ERR_clear_error();
        text_seterr(err, errlen, "[tls] key: %s: %s", tc->key,
                    wanted_pass ? "the key is encrypted (connectd cannot ask for a passphrase)"
                                : "no PEM private key in it");
        return -1;
    }
    int rc = -1;
    if (X509_check_private_key(leaf, k) != 1) {
        ERR_clear_error();
        text_seterr(err, errlen, "[tls] certificate: %s does not match the key %s", tc->certificate,
                    tc->key);
    } else if (SSL_CTX_use_PrivateKey(c->ssl, k) != 1) {
        char why[160];
        ssl_why(why, sizeof why);
        text_seterr(err, errlen, "[tls] key: %s: %s", tc->key, why);
    } else {
        rc = 0;
    }
    EVP_PKEY_free(k);
    return rc;
}

/* The staple must be a successful OCSP response. One past its nextUpdate is not stapled (a
 * client would reject it), now or once it expires while we run: an optional extra must not
 * stop the proxy, so that is a warning, not an error. */
static int load_ocsp(struct tls_ctx *c, const struct tls_config *tc, char *err, size_t errlen) {
    const unsigned char *p = (const unsigned char *)tc->ocsp_der;
    OCSP_RESPONSE *r = d2i_OCSP_RESPONSE(NULL, &p, (long)tc->ocsp_der_len);
    OCSP_BASICRESP *bs = NULL;
    int rc = -1;
    if (!r) {
        ERR_clear_error();
        text_seterr(err, errlen, "[tls] ocsp_staple: %s: not a DER OCSP response", tc->ocsp_staple);
        return -1;
    }
    if (OCSP_response_status(r) != OCSP_RESPONSE_STATUS_SUCCESSFUL) {
        text_seterr(err, errlen, "[tls] ocsp_staple: %s: the response is not successful (%s)",
                    tc->ocsp_staple, OCSP_response_status_str(OCSP_response_status(r)));
        goto out;
    }
    bs = OCSP_response_get1_basic(r);
    OCSP_SINGLERESP *one = bs ? OCSP_resp_get0(bs, 0) : NULL;
    ASN1_GENERALIZEDTIME *next = NULL;
    if (!one || OCSP_single_get0_status(one, NULL, NULL, NULL, &next) < 0) {
        ERR_clear_error();
        text_seterr(err, errlen, "[tls] ocsp_staple: %s: no certificate status in it",
                    tc->ocsp_staple);
        goto out;
    }
    struct tm until;
    if (next && ASN1_TIME_to_tm(next, &until) == 1)
        c->ocsp_until = timegm(&until);
    if (next && X509_cmp_current_time(next) <= 0) {
        char when[64];
        time_text(next, when, sizeof when);
        log_warn("tls: [tls] ocsp_staple %s expired on %s: not stapling it", tc->ocsp_staple, when);
        rc = 0;
        goto out;
    }
    c->ocsp = malloc(tc->ocsp_der_len);
    if (!c->ocsp) {
        text_seterr(err, errlen, "[tls] ocsp_staple: out of memory");
        goto out;
    }
    memcpy(c->ocsp, tc->ocsp_der, tc->ocsp_der_len);
    c->ocsp_len = tc->ocsp_der_len;
    rc = 0;
out:
    OCSP_BASICRESP_free(bs);
    OCSP_RESPONSE_free(r);
    return rc;
}

static int status_cb(SSL *s, void *arg) {
    const struct tls_ctx *c = arg;
    if (!c->ocsp || (c->ocsp_until && time(NULL) >= c->ocsp_until))
        return SSL_TLSEXT_ERR_NOACK;
    unsigned char *copy = OPENSSL_memdup(c->ocsp, c->ocsp_len);
    if (!copy || SSL_set_tlsext_status_ocsp_resp(s, copy, (long)c->ocsp_len) != 1) {
        OPENSSL_free(copy);
        return SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* Our order of preference; no protocol in common is fatal (RFC 7301 section 3.2). */
static int alpn_cb(SSL *s, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg) {
    const struct tls_ctx *c = arg;
    const struct tls_conn *conn = SSL_get_app_data(s);
    const unsigned char *ours = c->alpn;
    unsigned ourlen = (unsigned)c->alpn_len;
    unsigned char *sel = NULL;
    if (conn && conn->no_h2) {
        ours = (const unsigned char *)"\x08http/1.1";
        ourlen = 9;
    }
    if (SSL_select_next_proto(&sel, outlen, ours, ourlen, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static void describe(struct tls_ctx *c, X509 *leaf) {
    char subject[128] = "?", serial[80] = "?", until[64] = "?";
    X509_NAME_oneline(X509_get_subject_name(leaf), subject, sizeof subject);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    if (hex)
        snprintf(serial, sizeof serial, "%.70s", hex);
    OPENSSL_free(hex);
    BN_free(bn);
    time_text(X509_get0_notAfter(leaf), until, sizeof until);
    snprintf(c->summary, sizeof c->summary, "%s, serial %s, valid until %s", subject, serial,
             until);
}

struct tls_ctx *tls_ctx_new(const struct tls_config *tc, char *err, size_t errlen) {
    struct tls_ctx *c = calloc(1, sizeof *c);
    X509 *leaf = NULL;
    ERR_clear_error();
    if (!c || !(c->ssl = SSL_CTX_new(TLS_server_method()))) {
        text_seterr(err, errlen, "[tls]: out of memory");
        goto fail;
    }
    SSL_CTX *s = c->ssl;
    SSL_CTX_set_min_proto_version(s, tc->min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
    uint64_t opts = SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                    SSL_OP_NO_COMPRESSION | SSL_OP_PRIORITIZE_CHACHA;
    if (!tc->session_tickets)
        opts |= SSL_OP_NO_TICKET;
    char why[80];
    if (tls_ktls_available(why, sizeof why))
        opts |= SSL_OP_ENABLE_KTLS, c->ktls = true;
    SSL_CTX_set_options(s, opts);
    /* Mozilla's "intermediate" choice: AEAD suites with forward secrecy only. AES-128-GCM
     * first: as safe in practice and the cheapest per byte with AES-NI, which matters to a
     * relay; a client that puts ChaCha20 first (no AES-NI) gets it (PRIORITIZE_CHACHA). */
    static const char suites13[] =
        "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
    static const char suites12[] =
        "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
        "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
    if (SSL_CTX_set_ciphersuites(s, suites13) != 1 || SSL_CTX_set_cipher_list(s, suites12) != 1) {
        text_seterr(err, errlen, "[tls]: OpenSSL refuses the cipher list");
        goto fail;
    }
    /* Partial writes and a moving buffer: the relay hands over what its buffer holds and
     * retries with the same bytes at another address after a compaction. Idle sessions give
     * their record buffers back. */
    SSL_CTX_set_mode(s, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                            SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(s, 1); /* one read(2) may carry many records */
    if (tc->session_tickets) {
        if (!ticket_secret_set && tls_global_init(err, errlen) != 0)
            goto fail;
        SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_OFF);
        SSL_CTX_set_num_tickets(s, 1);
        SSL_CTX_set_tlsext_ticket_key_evp_cb(s, ticket_cb);
    } else {
        SSL_CTX_set_session_cache_mode(s, SSL_SESS_CACHE_SERVER);
        SSL_CTX_sess_set_cache_size(s, SESSION_CACHE);
    }
    SSL_CTX_set_timeout(s, 2 * TLS_TICKET_PERIOD);
    static const unsigned char sid_ctx[] = "connectd";
    SSL_CTX_set_session_id_context(s, sid_ctx, sizeof sid_ctx - 1);
    memcpy(c->alpn, tc->alpn, tc->alpn_len);
    c->alpn_len = tc->alpn_len;
    SSL_CTX_set_alpn_select_cb(s, alpn_cb, c);
    if (load_chain(c, tc, &leaf, err, errlen) != 0 || check_dates(tc, leaf, err, errlen) != 0 ||
        load_key(c, tc, leaf, err, errlen) != 0)
        goto fail;
    if (tc->ocsp_der) {
        if (load_ocsp(c, tc, err, errlen) != 0)
            goto fail;
        SSL_CTX_set_tlsext_status_cb(s, status_cb);
        SSL_CTX_set_tlsext_status_arg(s, c);
    }
    describe(c, leaf);
    X509_free(leaf);
    return c;
fail:
    X509_free(leaf);
    tls_ctx_free(c);
    ERR_clear_error();
    return NULL;
}

int tls_check(const struct tls_config *tc, char *err, size_t errlen) {
    if (!tc->certificate)
        return 0;
    struct tls_ctx *c = tls_ctx_new(tc, err, errlen);
    tls_ctx_free(c);
    return c ? 0 : -1;
}

int tls_keep_key(struct config *nc, const struct config *old) {
    int r = config_keep_tls_key(nc, old);
    if (r == 1)
        log_warn("reload: [tls] key %s is not readable by this user any more: using the key read "
                 "at start (a new key takes a restart)",
                 nc->tls.key);
    else if (r == -1)
        log_error("reload: out of memory for the [tls] key; still serving the previous "
                  "configuration");
    return r == -1 ? -1 : 0;
}

void tls_ctx_free(struct tls_ctx *c) {
    if (!c)
        return;
    SSL_CTX_free(c->ssl);
    free(c->ocsp);
    free(c);
}

void tls_ctx_describe(const struct tls_ctx *c, char *out, size_t outlen) {
    snprintf(out, outlen, "%s", c->summary);
}

/* ---- kTLS ---- */

bool tls_ktls_available(char *why, size_t whylen) {
    static int known = -1; /* the kernel does not change under us: probe once */
    static char said[80];
    if (known >= 0) {
        snprintf(why, whylen, "%s", said);
        return known == 1;
    }
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), c = -1, a = -1;
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sin;
    known = 0;
    if (l == -1 || bind(l, (struct sockaddr *)&sin, sizeof sin) == -1 || listen(l, 1) == -1 ||
        getsockname(l, (struct sockaddr *)&sin, &len) == -1 ||
        (c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
        connect(c, (struct sockaddr *)&sin, sizeof sin) == -1) {
        snprintf(said, sizeof said, "cannot probe: %s", strerror(errno));
    } else if (setsockopt(c, IPPROTO_TCP, TCP_ULP, "tls", 3) == -1) {
        snprintf(said, sizeof said, "the kernel has no TLS ULP (%s)", strerror(errno));
    } else {
        known = 1;
        snprintf(said, sizeof said, "the kernel offers kTLS");
    }
    a = l != -1 ? accept(l, NULL, NULL) : -1;
    if (a != -1)
        close(a);
    if (c != -1)
        close(c);
    if (l != -1)
        close(l);
    snprintf(why, whylen, "%s", said);
    return known == 1;
}

/* ---- sessions ---- */

/* ---- the out BIO: records gathered for one send(2) ---- */

/* OUT_CAP: the records of a full (big) relay buffer, overhead and all; OUT_GATHER: what a
 * gathering download holds at most. Empty buffers are kept for reuse (per process: 8 MiB of
 * each kind at most). */
#define OUT_CAP             (BUF_CAP_BIG + 16 * 256)
#define OUT_GATHER          (TLS_GATHER_ROUNDS * OUT_CAP)
#define OUT_POOL_MAX        32
#define OUT_GATHER_POOL_MAX 16

/* A bulk download empties and refills its out buffer on every round: reuse buffers rather
 * than asking malloc for a relay buffer's records each time. Idle sessions still hold none.
 * Gathering buffers (TLS_GATHER_ROUNDS x the size) have their own, smaller pool. */
static unsigned char *out_pool[OUT_POOL_MAX], *out_gather_pool[OUT_GATHER_POOL_MAX];
static size_t out_npool, out_gather_npool;

static unsigned char *out_get(size_t cap) {
    if (cap == OUT_GATHER)
        return out_gather_npool > 0 ? out_gather_pool[--out_gather_npool] : malloc(cap);
    return out_npool > 0 ? out_pool[--out_npool] : malloc(cap);
}

static void out_put(struct tls_conn *s) {
    if (s->out && s->outcap == OUT_GATHER && out_gather_npool < OUT_GATHER_POOL_MAX)
        out_gather_pool[out_gather_npool++] = s->out;
    else if (s->out && s->outcap == OUT_CAP && out_npool < OUT_POOL_MAX)
        out_pool[out_npool++] = s->out;
    else
        free(s->out);
    s->out = NULL;
    s->outlen = s->outoff = s->outcap = 0;
}

static int out_write(BIO *b, const char *data, int len) {
    struct tls_conn *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (!s->out) {
        size_t cap = s->gather ? OUT_GATHER : OUT_CAP;
        s->out = out_get(cap);
        if (!s->out)
            return -1;
        s->outlen = s->outoff = 0;
        s->outcap = cap;
    }
    /* Outside a gathering round a buffer holds one relay buffer's records, whatever its size:
     * a slow reader's backlog stays bounded. */
    size_t cap = s->gather ? s->outcap : OUT_CAP;
    if (s->outoff > 0 && s->outlen + (size_t)len > cap) { /* make room at the front */
        memmove(s->out, s->out + s->outoff, s->outlen - s->outoff);
        s->outlen -= s->outoff;
        s->outoff = 0;
    }
    size_t room = cap > s->outlen ? cap - s->outlen : 0,
           n = (size_t)len < room ? (size_t)len : room;
    if (n == 0) {
        BIO_set_retry_write(b); /* full: SSL_write says WANT_WRITE, the caller flushes */
        return -1;
    }
    memcpy(s->out + s->outlen, data, n);
    s->outlen += n;
    return (int)n;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr) {
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0; /* we flush ourselves, at the right moments */
}

/* A BIO method with a read or a write function and a ctrl; NULL when out of memory. */
static BIO_METHOD *bio_method(const char *name, int (*rd)(BIO *, char *, int),
                              int (*wr)(BIO *, const char *, int),
                              long (*ctrl)(BIO *, int, long, void *)) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, name);
    if (m && ((rd && !BIO_meth_set_read(m, rd)) || (wr && !BIO_meth_set_write(m, wr)) ||
              !BIO_meth_set_ctrl(m, ctrl))) {
        BIO_meth_free(m);
        m = NULL;
    }
    return m;
}

static BIO_METHOD *out_method(void) {
    static BIO_METHOD *m;
    if (!m)
        m = bio_method("connectd-out", NULL, out_write, out_ctrl);
    return m;
}

/* Send what the out BIO holds: 0 when all went, TLS_WANT_WRITE when the socket is full, -1
 * (errno) when it failed. The buffer goes back once empty. */
static int out_flush(struct tls_conn *s) {
    while (s->outoff < s->outlen) {
        ssize_t n = send(s->fd, s->out + s->outoff, s->outlen - s->outoff, MSG_NOSIGNAL);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return TLS_WANT_WRITE;
            s->broken = true;
            return -1;
        }
        s->outoff += (size_t)n;
    }
    out_put(s);
    return 0;
}

/* ---- the in BIO: the socket, not read again in a turn it ran dry ---- */

/* OpenSSL reads again after every flight of the handshake and every record it completes, and
 * that read usually finds nothing: a read that returned less than it asked for (or EAGAIN) has
 * emptied the socket, so until the loop polls again the answer is "try again" without the
 * syscall (three fewer per handshake, one per upload event). Bytes that arrive meanwhile are
 * not missed: the caller waits for the level-triggered read watcher, which reports them at the
 * next poll. */
static int in_read(BIO *b, char *buf, int len) {
    struct tls_conn *s = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    unsigned turn = ev_iteration(s->loop);
    if (s->dry && s->dry_turn == turn) {
        BIO_set_retry_read(b);
        errno = EAGAIN;
        return -1;
    }
    ssize_t n;
    do
        n = recv(s->fd, buf, (size_t)len, 0);
    while (n == -1 && errno == EINTR);
    if (n == 0) {
        BIO_set_flags(b, BIO_FLAGS_IN_EOF); /* what libssl asks (BIO_eof) to tell EOF apart */
        return 0;
    }
    if (n == -1 && errno != EAGAIN && errno != EWOULDBLOCK)
        return -1;
    if (n == -1)
        BIO_set_retry_read(b);
    if (n < len) {
        s->dry = true;
        s->dry_turn = turn;
    }
    return (int)n;
}

static long in_ctrl(BIO *b, int cmd, long num, void *ptr) {
    (void)num;
    (void)ptr;
    if (cmd == BIO_CTRL_EOF)
        return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static BIO_METHOD *in_method(void) {
    static BIO_METHOD *m;
    if (!m)
        m = bio_method("connectd-in", in_read, NULL, in_ctrl);
    return m;
}

/* The BIO OpenSSL reads s's socket with: the in BIO, or a socket BIO when the kernel may take
 * the session over (kTLS wants one). */
static BIO *socket_reader(struct tls_conn *s) {
    if (!s->own_out)
        return BIO_new_socket(s->fd, BIO_NOCLOSE);
    BIO_METHOD *m = in_method();
    BIO *r = m ? BIO_new(m) : NULL;
    if (r) {
        BIO_set_data(r, s);
        BIO_set_init(r, 1);
    }
    return r;
}

bool tls_conn_unsent(const struct tls_conn *s) {
    return s->outoff < s->outlen;
}

int tls_conn_flush(struct tls_conn *s) {
    return out_flush(s);
}

bool tls_conn_gather(struct tls_conn *s, bool on) {
    if (on && !s->gather && (s->out || !s->own_out))
        return false; /* records already wait (the socket is slow), or the kernel encrypts */
    s->gather = on;
    return on;
}

bool tls_conn_gather_room(const struct tls_conn *s) {
    return !s->out || s->outcap - s->outlen >= OUT_CAP;
}

struct tls_conn *tls_conn_new(struct tls_ctx *c, struct ev_loop *loop, int fd, const void *pre,
                              size_t prelen) {
    struct tls_conn *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->fd = fd;
    s->loop = loop;
    s->own_out = !c->ktls;
    s->ssl = SSL_new(c->ssl);
    if (!s->ssl)
        goto fail;
    /* Writes gather in the out BIO, unless the kernel may take over the encryption (kTLS
     * needs OpenSSL to own a socket BIO). */
    BIO_METHOD *om = s->own_out ? out_method() : NULL;
    BIO *w = !s->own_out ? BIO_new_socket(fd, BIO_NOCLOSE) : om ? BIO_new(om) : NULL;
    BIO *r = prelen == 0 ? socket_reader(s) : BIO_new(BIO_s_mem());
    if (!w || !r || (prelen > 0 && BIO_write(r, pre, (int)prelen) != (int)prelen)) {
        BIO_free(w);
        BIO_free(r);
        goto fail;
    }
    if (s->own_out) {
        BIO_set_data(w, s);
        BIO_set_init(w, 1);
    }
    if (prelen > 0) {
        BIO_set_mem_eof_return(r, -1); /* empty is "try again", not the end */
        s->pre = r;
    }
    SSL_set_bio(s->ssl, r, w);
    SSL_set_app_data(s->ssl, s);
    SSL_set_accept_state(s->ssl);
    return s;
fail:
    ERR_clear_error();
    SSL_free(s->ssl);
    free(s->out);
    free(s);
    return NULL;
}

/* Once OpenSSL has taken every byte read before it existed, it reads the socket. Returns true
 * when it switched just now (the caller retries what waited for more bytes). */
static bool pre_drained(struct tls_conn *s) {
    if (!s->pre || BIO_ctrl_pending(s->pre) > 0)
        return false;
    BIO *sock = socket_reader(s);
    if (!sock)
        return false;            /* out of memory: try again at the next event */
    SSL_set0_rbio(s->ssl, sock); /* frees the memory BIO */
    s->pre = NULL;
    return true;
}

void tls_conn_free(struct tls_conn *s) {
    if (!s)
        return;
    ERR_clear_error();
    int sd = SSL_get_shutdown(s->ssl);
    if (!s->broken && SSL_is_init_finished(s->ssl)) {
        /* The client said goodbye and we have not: answer its close_notify (RFC 8446 6.1
         * wants one each way; best effort, the socket closes next). */
        if ((sd & SSL_RECEIVED_SHUTDOWN) && !(sd & SSL_SENT_SHUTDOWN))
            (void)SSL_shutdown(s->ssl);
        (void)out_flush(s);
        /* An ordinary end keeps the session resumable (without this OpenSSL drops it from
         * the session cache, as after an error). */
        SSL_set_shutdown(s->ssl, SSL_get_shutdown(s->ssl) | SSL_SENT_SHUTDOWN);
    }
    ERR_clear_error();
    SSL_free(s->ssl);
    free(s->out); /* still holding records the socket never took */
    free(s);
}

/* Map a failed call (ret: its return value): a WANT, 0 for the end of the client's data, or -1
 * with errno and s->err set. */
static int failed(struct tls_conn *s, int ret) {
    int saved = errno, e = SSL_get_error(s->ssl, ret);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        return TLS_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return TLS_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0) {
            if (saved == 0) { /* the peer's TCP ended in the middle of a record */
                s->truncated = true;
                snprintf(s->err, sizeof s->err, "connection closed without close_notify");
                errno = ECONNRESET;
                return -1;
            }
            snprintf(s->err, sizeof s->err, "%s", strerror(saved));
            s->broken = true;
            errno = saved;
            return -1;
        }
        break;
    case SSL_ERROR_SSL: {
        unsigned long le = ERR_peek_last_error();
        if (ERR_GET_LIB(le) == ERR_LIB_SSL &&
            ERR_GET_REASON(le) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
            ERR_clear_error();
            s->truncated = true;
            snprintf(s->err, sizeof s->err, "connection closed without close_notify");
            return 0; /* the client is gone without saying so: its data has ended all the same */
        }
        break;
    }
    default:
        break;
    }
    ssl_why(s->err, sizeof s->err);
    s->broken = true;
    errno = EPROTO;
    return -1;
}

int tls_conn_handshake(struct tls_conn *s) {
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r = SSL_do_handshake(s->ssl);
        if (r == 1 && s->own_out && SSL_version(s->ssl) == TLS1_3_VERSION) {
            /* TLS 1.3: our Finished left with the first flight; what the last step wrote (the
             * session ticket) waits for our first answer and leaves in the same send. */
            (void)pre_drained(s);
            return TLS_DONE;
        }
        int fl = out_flush(s); /* our flight, in one send */
        if (fl == -1) {
            snprintf(s->err, sizeof s->err, "%s", strerror(errno));
            return -1;
        }
        if (r == 1) {
            (void)pre_drained(s);
            return TLS_DONE; /* what did not fit the socket goes with the next write */
        }
        r = failed(s, r);
        if (r == TLS_WANT_READ && pre_drained(s))
            continue;
        if (r == TLS_WANT_WRITE && fl == 0 && s->own_out)
            continue; /* the out BIO was full and is empty now */
        if (r == TLS_WANT_READ && fl == TLS_WANT_WRITE)
            return TLS_WANT_WRITE; /* our flight must go out before the client can answer */
        return r == 0 ? -1 : r;    /* close_notify before the handshake ended: a failure too */
    }
}

static ssize_t read_records(struct tls_conn *s, void *buf, size_t n) {
    size_t got = 0;
    if (s->deferred) { /* the end (or error) met behind the data returned last time */
        s->deferred = false;
        errno = s->deferred_errno;
        return s->deferred_ret;
    }
    while (got < n) {
        ERR_clear_error();
        size_t r = 0;
        errno = 0;
        int ok = SSL_read_ex(s->ssl, (char *)buf + got, n - got, &r);
        if (ok) {
            got += r;
            continue;
        }
        int f = failed(s, 0);
        if (f == TLS_WANT_READ && pre_drained(s))
            continue;
        if (got > 0 && f != TLS_WANT_READ && f != TLS_WANT_WRITE) {
            /* The close_notify (or an error) came in the same read as data: OpenSSL has taken
             * it off the socket, which may never be readable again. Keep it for the next call,
             * and tls_conn_pending() says there is something to read. */
            s->deferred = true;
            s->deferred_ret = f;
            s->deferred_errno = errno;
        }
        if (got > 0)
            return (ssize_t)got;
        return f;
    }
    return (ssize_t)got;
}

static size_t out_held(const struct tls_conn *s) {
    return s->outlen - s->outoff;
}

ssize_t tls_conn_read(struct tls_conn *s, void *buf, size_t n) {
    size_t held = out_held(s); /* a session ticket may wait for our first answer */
    ssize_t r = read_records(s, buf, n);
    if (out_held(s) > held) { /* a read that wrote (a key update, an alert): send it along */
        int saved = errno;
        (void)out_flush(s);
        errno = saved;
    }
    return r;
}

ssize_t tls_conn_write(struct tls_conn *s, const void *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        ERR_clear_error();
        size_t w = 0;
        errno = 0;
        if (SSL_write_ex(s->ssl, (const char *)buf + done, n - done, &w)) {
            done += w;
            continue;
        }
        int f = failed(s, 0);
        if (f == TLS_WANT_WRITE && tls_conn_unsent(s)) { /* the out BIO is full: send it */
            int fl = out_flush(s);
            if (fl == 0)
                continue;
            if (fl == -1)
                return -1;
        }
        if (done > 0 && (f == TLS_WANT_WRITE || f == TLS_WANT_READ))
            return (ssize_t)done;
        if (f == 0) { /* cannot happen when writing; treat as a reset */
            errno = EPIPE;
            return -1;
        }
        return f;
    }
    /* Everything is taken: send the records now, in as few calls as the socket allows (unless
     * gathering: then tls_conn_gather's caller flushes). What does not fit waits in the out
     * BIO (tls_conn_unsent; the relay keeps watching). */
    if (!s->gather && out_flush(s) == -1)
        return -1;
    return (ssize_t)done;
}

void tls_conn_close_notify(struct tls_conn *s) {
    ERR_clear_error();
    if (!(SSL_get_shutdown(s->ssl) & SSL_SENT_SHUTDOWN))
        (void)SSL_shutdown(s->ssl);
    ERR_clear_error();
    (void)out_flush(s);
}

bool tls_conn_pending(const struct tls_conn *s) {
    return s->deferred || SSL_has_pending(s->ssl) == 1;
}

bool tls_conn_truncated(const struct tls_conn *s) {
    return s->truncated;
}

const char *tls_conn_error(const struct tls_conn *s) {
    return s->err[0] ? s->err : "no error";
}

const char *tls_conn_version(const struct tls_conn *s) {
    return SSL_get_version(s->ssl);
}

bool tls_conn_h2(const struct tls_conn *s) {
    const unsigned char *p = NULL;
    unsigned n = 0;
    SSL_get0_alpn_selected(s->ssl, &p, &n);
    return n == 2 && memcmp(p, "h2", 2) == 0;
}

void tls_conn_no_h2(struct tls_conn *s) {
    s->no_h2 = true;
}

bool tls_conn_resumed(const struct tls_conn *s) {
    return SSL_session_reused(s->ssl) == 1;
}

bool tls_conn_ktls_send(const struct tls_conn *s) {
    return BIO_get_ktls_send(SSL_get_wbio(s->ssl)) == 1;
}
