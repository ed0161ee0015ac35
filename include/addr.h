/* addr: socket addresses and CIDR blocks: parse, print, match, classify.
 * Pure: no syscalls, no ev.h. */
#ifndef CONNECTD_ADDR_H
#define CONNECTD_ADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* Longest text addr_format() writes: "[ffff:...:255.255.255.255]:65535". */
#define ADDR_TEXT_MAX 64

/* An IPv4 or IPv6 socket address in the space it needs (sockaddr_storage is 128 bytes). */
union sockaddr_any {
    struct sockaddr sa;
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
};

/* An IPv4 or IPv6 network. IPv4 is kept as family AF_INET with 4 bytes used. */
struct cidr {
    int family;        /* AF_INET or AF_INET6 */
    uint8_t bytes[16]; /* network address, host bits zeroed */
    unsigned prefix;   /* 0-32 or 0-128 */
};

/* Parse "1.2.3.4:80" or "[::1]:80" (port mandatory, 1-65535) into *ss.
 * Returns 0, or -1 with a reason in err. */
int addr_parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *len, char *err,
                        size_t errlen);

/* Parse a literal IPv4 (dotted quad, decimal, no leading zeros) or IPv6 (no brackets, no
 * zone id) address with the given port. Returns 0 or -1. */
int addr_parse_ip(const char *s, uint16_t port, struct sockaddr_storage *ss, socklen_t *len);

/* Parse "10.0.0.0/8", "::1", "fe80::/10" or a bare address (full-length prefix).
 * Host bits set below the prefix are an error ("10.0.0.1/8"). Returns 0 or -1 with err. */
int cidr_parse(const char *s, struct cidr *out, char *err, size_t errlen);

/* True when sa is inside c. An IPv4-mapped IPv6 address (::ffff:a.b.c.d) matches as IPv4. */
bool cidr_match(const struct cidr *c, const struct sockaddr *sa);

/* NULL when sa is a public unicast address; otherwise the name of the reserved class it is in
 * ("loopback", "private", "link-local", "cgnat", "multicast", "unspecified", "reserved",
 * "unique-local", "documentation", "benchmarking", "broadcast", "this-network", ...).
 * Looks through IPv4-mapped (::ffff:0:0/96), IPv4-compatible, NAT64 (64:ff9b::/96) and
 * 6to4/Teredo-embedded IPv4 where relevant. */
const char *addr_reserved_class(const struct sockaddr *sa);

/* "1.2.3.4:443" or "[::1]:443" (with_port) or "1.2.3.4" / "::1" (without). IPv4-mapped IPv6
 * addresses are printed as IPv4. Always NUL-terminates; out should be ADDR_TEXT_MAX bytes. */
void addr_format(const struct sockaddr *sa, bool with_port, char *out, size_t outlen);

/* Port of an AF_INET/AF_INET6 address, host byte order. */
uint16_t addr_port(const struct sockaddr *sa);

#endif
