/* http: bounded, incremental parser for a proxy's CONNECT request, and the builder of the
 * proxy's own responses. Pure: no syscalls, no ev.h.
 *
 * Usage: the caller keeps all bytes received so far in one contiguous buffer and calls
 * http_parse() after every read with the whole buffer; the parser resumes where it stopped, so
 * total work is linear in the request size. */
#ifndef CONNECTD_HTTP_H
#define CONNECTD_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest host name kept (DNS limit is 253 characters plus a trailing dot). */
#define HTTP_HOST_MAX   255
#define HTTP_METHOD_MAX 32

enum http_host_kind {
    HTTP_HOST_NAME = 1, /* reg-name, lowercased, trailing dot removed */
    HTTP_HOST_IPV4,     /* canonical dotted quad */
    HTTP_HOST_IPV6,     /* from "[...]", stored without brackets */
};

struct http_limits {
    size_t max_line;    /* request line longer than this -> 414 */
    size_t max_headers; /* more header fields than this -> 431 */
    size_t max_total;   /* request line + headers + blank line longer than this -> 431 */
};

/* What a completed parse yields. Strings are NUL-terminated copies. */
struct http_request {
    char method[HTTP_METHOD_MAX + 1];
    char host[HTTP_HOST_MAX + 1];
    enum http_host_kind host_kind;
    uint16_t port;
    int version_minor; /* HTTP/1.<minor>: 0 or 1 */
    /* Offset and length of the first Proxy-Authorization value inside the caller's buffer
     * (len 0 when absent); whitespace around the value is excluded. */
    size_t proxy_auth_off, proxy_auth_len;
    /* Bytes of the header block including its final empty line; bytes after it in the caller's
     * buffer were sent early by the client (e.g. a TLS ClientHello) and belong to the tunnel. */
    size_t header_len;
};

enum http_parse_result {
    HTTP_PARSE_MORE = 1, /* need more bytes */
    HTTP_PARSE_DONE,     /* req is filled */
    HTTP_PARSE_ERROR,    /* status and reason are set */
};

/* Parser state. Zero it with http_parser_init() before the first call. */
struct http_parser {
    struct http_limits limits;
    int state;  /* internal */
    size_t pos; /* bytes examined so far */
    size_t line_start;
    size_t nheaders;
    int host_count;
    /* Outcome. */
    struct http_request req;
    int status;         /* on error: 400, 405, 414, 431 or 505 */
    const char *reason; /* on error: short human text, e.g. "port out of range" (static) */
};

void http_parser_init(struct http_parser *p, const struct http_limits *limits);

/* Examine buf[0..len) (which must begin with the bytes passed before and may have grown).
 * Returns HTTP_PARSE_MORE, HTTP_PARSE_DONE or HTTP_PARSE_ERROR. After DONE or ERROR further
 * calls return the same result. */
enum http_parse_result http_parse(struct http_parser *p, const char *buf, size_t len);

/* Parse an authority "host:port", "[v6]:port" into req->host, host_kind and port, with the same
 * rules as the request target. Returns 0, or -1 with *reason set. Used for the target and the
 * Host header (where the port is optional when port_optional is true). */
int http_parse_authority(const char *s, size_t len, bool port_optional, struct http_request *req,
                         const char **reason);

/* Standard reason phrase for a status code ("Forbidden"); "Unknown" for others. */
const char *http_status_text(int status);

/* Write a complete refusal into out:
 *   HTTP/1.1 <status> <text>\r\n
 *   Proxy-Status: connectd; error=<proxy_error>[; <params>][; details="<details>"]\r\n
 *   [extra header lines, each ending in \r\n]
 *   Content-Type: text/plain\r\n Content-Length: N\r\n Connection: close\r\n\r\n
 *   <status> <text>: <details or text>\n
 * (RFC 9209: proxy name and error are sf-tokens, details is an sf-string.) params is a
 * caller-built, already valid parameter list such as `rcode="NXDOMAIN"`, or NULL. details may be
 * NULL; it is sanitised (quotes, backslashes and control bytes replaced) before it is placed in
 * the header and body. extra may be NULL. Returns the length written, or 0 if out is too small
 * (callers use a 1 KiB buffer). */
size_t http_build_error(char *out, size_t outlen, int status, const char *proxy_error,
                        const char *params, const char *details, const char *extra);

/* A parent proxy's answer to connectd's CONNECT: buf[0..len) is what arrived so far. MORE until
 * the header block ends (within max bytes), then DONE with *status and *head_len (bytes after it
 * are already tunnel data), or ERROR with *reason (not "HTTP/1.x NNN", or too large). */
enum http_parse_result http_parse_response(const char *buf, size_t len, size_t max, int *status,
                                           size_t *head_len, const char **reason);

/* Every value of the header fields called name (case-insensitive) in a request's header block
 * buf[0..header_len), joined by ", " into out (NUL-terminated; values that do not fit whole are
 * left out). Returns the length written. */
size_t http_header_values(const char *buf, size_t header_len, const char *name, char *out,
                          size_t outlen);

/* The 2xx reply that switches the connection to tunnel mode. */
extern const char HTTP_CONNECT_OK[];
extern const size_t HTTP_CONNECT_OK_LEN;

#endif
