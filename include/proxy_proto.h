/* proxy_proto: the PROXY protocol header (HAProxy's doc/proxy-protocol.txt, v1 and v2) that a
 * load balancer (HAProxy send-proxy / send-proxy-v2, AWS NLB, ...) sends before the client's
 * bytes. Pure: no syscalls, no ev.h, no allocation.
 *
 * Usage: the caller keeps all bytes received so far in one contiguous buffer and calls
 * proxy_parse() after every read with the whole buffer. The parser keeps no state between calls
 * (it rescans; PROXY_HEADER_MAX bounds the cost), and its outcome does not depend on how the
 * bytes were split across reads: once a prefix is decided, every longer one is decided the same
 * way. The spec forbids guessing whether a header is present: call this only on listeners
 * configured to expect one, and only for peers trusted to send one. */
#ifndef CONNECTD_PROXY_PROTO_H
#define CONNECTD_PROXY_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#define PROXY_V1_MAX 107          /* the longest v1 line, CRLF included (spec) */
#define PROXY_V2_MAX (16 + 65535) /* the longest v2 header the wire format can express */
/* What connectd accepts: v1, or v2 with up to 520 bytes of address + TLVs; more -> error. 536 is
 * the spec's "smallest TCP segment any host must support", which both formats are meant to fit. */
#define PROXY_HEADER_MAX 536

enum proxy_parse { PROXY_MORE = 1, PROXY_DONE, PROXY_ERROR };
enum proxy_command { PROXY_CMD_PROXY = 1, PROXY_CMD_LOCAL };

/* Every call zeroes *h first. On DONE version, command, has_addr, src/dst (when has_addr) and len
 * are set and reason is NULL; on ERROR only reason is; on MORE nothing is. */
struct proxy_header {
    int version;                /* 1 or 2 */
    enum proxy_command command; /* v1 is always PROXY */
    /* false for v1 UNKNOWN, v2 LOCAL, v2 AF_UNSPEC/AF_UNIX: use the connection's own addresses */
    bool has_addr;
    /* the client and the address it connected to (ports set), when has_addr: both AF_INET or
     * both AF_INET6 */
    struct sockaddr_storage src, dst;
    size_t len;         /* bytes of the header: the client's bytes start after them */
    const char *reason; /* on ERROR: short static text */
};

/* buf[0..len): the first bytes of the connection (all received so far; called again with more).
 * MORE: not enough bytes to decide (the caller bounds the wait with its handshake timeout; MORE
 * is never returned for len >= PROXY_HEADER_MAX). DONE: *h filled; bytes after h->len are not
 * looked at. ERROR: not a valid header (wrong signature: the balancer is not sending PROXY, or
 * garbage), malformed, unsupported version/command, or longer than PROXY_HEADER_MAX.
 *
 * Each error is decided at the byte that shows it, looking only at the bytes before it: a first
 * byte that is neither 'P' (v1) nor 0x0D (v2) at once; a v1 field at its first byte that no valid
 * field could have there (every prefix a field scanner accepts can still become a valid field);
 * a v2 version/command at byte 13, a family at byte 14, a length at byte 15 or 16, a TLV at its
 * third byte. The v1 line length is the exception: it is checked at the 106th byte, although a
 * TCP6 line with long addresses may be bound to overflow a little earlier.
 *
 * v1: "PROXY TCP4 <src> <dst> <sport> <dport>\r\n", "PROXY TCP6 ...", or "PROXY UNKNOWN" then
 * CRLF or a space and anything up to the CRLF. Exactly one space between fields. TCP4 addresses
 * are strict dotted quads (four decimal numbers 0-255, no leading zeros); TCP6 addresses are
 * inet_pton text (1-4 hex digits per group, upper or lower case, one "::" at most, an optional
 * dotted-quad tail as in "::ffff:192.0.2.1", which HAProxy sends when it mixes families; no zone
 * id, no brackets); ports 0-65535 in decimal, no leading zeros ("0" is a port). The line holds
 * printable ASCII (0x20-0x7e) and ends with the first CR, which must be followed by LF; a line
 * whose CRLF does not end within PROXY_V1_MAX bytes is an error when its 106th byte is not the CR.
 * A TCP6 line keeps IPv4-mapped addresses as AF_INET6.
 *
 * v2: the 12-byte signature, version 2, command LOCAL (0) or PROXY (1), then the family/transport
 * byte and a big-endian length; the header is 16 + length bytes and at most PROXY_HEADER_MAX.
 * LOCAL (a balancer's health check): the family byte and the whole block are ignored (the spec:
 * "discard the protocol block including the family"), has_addr false. PROXY: 0x11 (TCP over IPv4,
 * block >= 12 bytes) and 0x21 (TCP over IPv6, >= 36) give has_addr; 0x31 (UNIX stream, >= 216)
 * and 0x00 (UNSPEC) are accepted with has_addr false; DGRAM (0x12, 0x22, 0x32) is an error
 * (connectd relays TCP only), as are other family or transport values and the combinations the
 * spec does not list (0x01, 0x10, ...). After the addresses of 0x11, 0x21 and 0x31 the rest of
 * the block must be whole TLVs (type, 16-bit big-endian length, value) that end exactly at the
 * header's end; they are skipped, not interpreted (a CRC32C TLV is not verified). After 0x00 the
 * block is skipped unread, as its layout is unknown. */
enum proxy_parse proxy_parse(const unsigned char *buf, size_t len, struct proxy_header *h);

#endif
