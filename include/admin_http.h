/* admin_http: reads the one request of an admin-listener connection (GET /metrics, /healthz,
 * /tunnels) and checks its Bearer token. Pure: no syscalls, no ev.h.
 *
 * Usage: the caller keeps all bytes received so far in one contiguous buffer and calls
 * admin_http_parse() after every read with the whole buffer. The parser keeps no state between
 * calls (it rescans; ADMIN_REQ_MAX bounds the cost), and its outcome does not depend on how the
 * bytes were split across reads. */
#ifndef CONNECTD_ADMIN_HTTP_H
#define CONNECTD_ADMIN_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#define ADMIN_REQ_MAX     8192 /* request line + headers; beyond: 431 */
#define ADMIN_PATH_MAX    256  /* request target (path?query); beyond: 414 */
#define ADMIN_FIELDS_MAX  64   /* header fields; beyond: 431 */
#define ADMIN_METHOD_SIZE 16   /* a method is 1..15 tchars */

enum admin_parse { ADMIN_PARSE_MORE = 1, ADMIN_PARSE_DONE, ADMIN_PARSE_ERROR };

/* On DONE every field but status and reason is set; on ERROR status and reason are (the other
 * fields hold whatever was read before the error); on MORE the fields say nothing. */
struct admin_request {
    char method[ADMIN_METHOD_SIZE]; /* as sent, e.g. "GET" */
    char path[ADMIN_PATH_MAX + 1];  /* target up to '?', e.g. "/metrics" (no decoding) */
    char query[ADMIN_PATH_MAX + 1]; /* after the first '?', "" when none */
    int version_minor;              /* HTTP/1.<minor>: 0 or 1 (1.2-1.9 read as 1) */
    bool has_auth;                  /* an Authorization header was present */
    size_t auth_off, auth_len;      /* its value inside the caller's buffer, OWS trimmed */
    size_t header_len;              /* bytes of request line + headers + blank line */
    int status;                     /* on ERROR: 400, 414, 431 or 505 */
    const char *reason;             /* on ERROR: short static text ("bad request line", ...) */
};

/* Look at buf[0..len) (all bytes received so far; the caller calls again with the grown buffer).
 * Returns MORE until the header block ends (CRLF CRLF; a bare LF line ending is also accepted,
 * as RFC 9112 section 2.2 allows for robustness), DONE with *req filled, or ERROR with
 * req->status/reason. Bytes after header_len are not looked at.
 * Rules: request line `METHOD SP request-target SP HTTP/1.x` exactly (single spaces, method a
 * token of 1..15 tchars, target origin-form starting with '/', only visible ASCII (0x21-0x7e)
 * in it, HTTP/1.0 or 1.1; HTTP/1.2-1.9 read as 1.1; "HTTP/2.0" or other majors -> 505; anything
 * else malformed, an empty line before it included -> 400); target longer than ADMIN_PATH_MAX
 * -> 414; header block over ADMIN_REQ_MAX (or more than ADMIN_FIELDS_MAX header fields) -> 431
 * (decided as soon as len exceeds the limit without a complete block); header lines must be
 * `name: value` with a token name and no whitespace before the colon (400 otherwise), obs-fold
 * (a line starting with SP/HT) -> 400, NUL, bare CR or other control bytes (DEL included)
 * except HTAB in values -> 400; Content-Length other than exactly "0", or any
 * Transfer-Encoding -> 400 (the admin endpoints take no body); a second Authorization header
 * -> 400. Header names are case-insensitive; no header (Host included) is required.
 * Each error is decided at the byte that makes it certain: a bad method, a bad target byte or a
 * 257th target byte is refused before the request line ends, the other rules when their line
 * ends. */
enum admin_parse admin_http_parse(const char *buf, size_t len, struct admin_request *req);

/* ?limit=N style lookup in req->query ("a=1&limit=20"): 1 and *out set when name=digits is
 * present (1 to 9 digits), 0 when the name is absent (or name is empty), -1 when present but
 * not digits ("limit", "limit=", "limit=-1", 10 digits or more). Parameters are separated by
 * '&'; the first one with that exact name counts; no percent-decoding. */
int admin_http_query_uint(const char *query, const char *name, unsigned long *out);

/* True when the Authorization value buf[auth_off .. +auth_len) is "Bearer <token>" (scheme
 * case-insensitive, one or more spaces) and <token> equals token. The comparison takes the same
 * time whatever the bytes and lengths: it compares the SHA-256 digests of both. A missing header
 * (has_auth false), an empty presented token, and a NULL or empty configured token are false. */
bool admin_http_token_ok(const struct admin_request *req, const char *buf, const char *token);

#endif
