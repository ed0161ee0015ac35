"""A tiny authoritative DNS responder on loopback UDP (stdlib only), for pointing the proxy's
c-ares at instead of the system resolver.

    dns = DNSServer(records={"a.test": ["127.0.0.1", "::1"]})
    dns.delays["slow.test"] = 3.0     # answer after 3 s (other queries are not held up)
    dns.drop.add("drop.test")         # never answer
    dns.servfail.add("broken.test")   # SERVFAIL
    dns.port, dns.queries             # [(name, qtype_name), ...] in arrival order

Answers A/AAAA from records; a known name without records of the asked type gets NODATA
(NOERROR, no answers); an unknown name gets NXDOMAIN. Names are matched lowercased without the
trailing dot.
"""

import ipaddress
import select
import socket
import struct
import threading
import time

QTYPES = {1: "A", 28: "AAAA", 5: "CNAME", 15: "MX", 16: "TXT", 33: "SRV", 255: "ANY", 65: "HTTPS"}
RCODE_NOERROR, RCODE_SERVFAIL, RCODE_NXDOMAIN = 0, 2, 3


class DNSParseError(Exception):
    pass


def parse_name(msg, off):
    """Decode a (possibly compressed) name at off; returns (name, offset after it)."""
    labels = []
    jumps = 0
    end = None
    while True:
        if off >= len(msg):
            raise DNSParseError("name runs past the message")
        ln = msg[off]
        if ln & 0xC0 == 0xC0:
            if off + 1 >= len(msg):
                raise DNSParseError("truncated pointer")
            if end is None:
                end = off + 2
            off = ((ln & 0x3F) << 8) | msg[off + 1]
            jumps += 1
            if jumps > 16:
                raise DNSParseError("pointer loop")
            continue
        if ln & 0xC0:
            raise DNSParseError("bad label type")
        off += 1
        if ln == 0:
            break
        labels.append(msg[off : off + ln].decode("latin-1"))
        off += ln
    return ".".join(labels), (end if end is not None else off)


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            b = label.encode("latin-1")
            out += bytes([len(b)]) + b
    return out + b"\x00"


def parse_query(msg):
    """-> (id, flags, [(name, qtype, qclass)], offset after the question section)."""
    if len(msg) < 12:
        raise DNSParseError("short header")
    qid, flags, qd, an, ns, ar = struct.unpack("!6H", msg[:12])
    off = 12
    qs = []
    for _ in range(qd):
        name, off = parse_name(msg, off)
        if off + 4 > len(msg):
            raise DNSParseError("truncated question")
        qtype, qclass = struct.unpack("!HH", msg[off : off + 4])
        off += 4
        qs.append((name, qtype, qclass))
    return qid, flags, qs, off


def build_query(name, qtype=1, qid=0x1234, rd=True):
    """A plain query message, for self-tests."""
    flags = 0x0100 if rd else 0
    return struct.pack("!6H", qid, flags, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, 1)


def parse_response(msg):
    """-> dict(id, rcode, flags, answers=[(name, type, ttl, rdata_text)]) for self-tests."""
    qid, flags, qd, an, ns, ar = struct.unpack("!6H", msg[:12])
    off = 12
    for _ in range(qd):
        _, off = parse_name(msg, off)
        off += 4
    answers = []
    for _ in range(an):
        name, off = parse_name(msg, off)
        rtype, rclass, ttl, rdlen = struct.unpack("!HHIH", msg[off : off + 10])
        off += 10
        rdata = msg[off : off + rdlen]
        off += rdlen
        if rtype == 1:
            txt = str(ipaddress.IPv4Address(rdata))
        elif rtype == 28:
            txt = str(ipaddress.IPv6Address(rdata))
        else:
            txt = rdata.hex()
        answers.append((name, rtype, ttl, txt))
    return {"id": qid, "flags": flags, "rcode": flags & 0xF, "answers": answers}


class DNSServer:
    def __init__(self, records=None, host="127.0.0.1", ttl=1):
        self.records = {k.lower().rstrip("."): list(v) for k, v in (records or {}).items()}
        self.delays = {}
        self.drop = set()
        self.servfail = set()
        self.ttl = ttl
        self.queries = []  # (name, qtype name), in arrival order
        self.errors = []
        self._lock = threading.Lock()
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.host = host
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._timers = []
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    @property
    def server_spec(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def set(self, name, addrs):
        self.records[name.lower().rstrip(".")] = list(addrs)

    def queried(self, name):
        n = name.lower().rstrip(".")
        with self._lock:
            return [q for q in self.queries if q[0] == n]

    def _loop(self):
        while not self._stop.is_set():
            r, _, _ = select.select([self.sock], [], [], 0.1)
            if not r:
                continue
            try:
                msg, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                self._handle(msg, peer)
            except Exception as e:  # never let one bad packet stop the server
                with self._lock:
                    self.errors.append(repr(e))

    def _handle(self, msg, peer):
        qid, flags, qs, qend = parse_query(msg)
        if flags & 0x8000 or len(qs) != 1:
            return  # a response, or a query shape we do not serve
        name, qtype, qclass = qs[0]
        lname = name.lower().rstrip(".")
        with self._lock:
            self.queries.append((lname, QTYPES.get(qtype, str(qtype))))
        if lname in self.drop:
            return
        resp = self._answer(msg[:qend], qid, flags, lname, qtype, qclass)
        delay = self.delays.get(lname, 0)
        if delay > 0:
            t = threading.Timer(delay, self._send, args=(resp, peer))
            t.daemon = True
            with self._lock:
                self._timers.append(t)
            t.start()
        else:
            self._send(resp, peer)

    def _send(self, resp, peer):
        if self._stop.is_set():
            return
        try:
            self.sock.sendto(resp, peer)
        except OSError:
            pass

    def _answer(self, question_msg, qid, qflags, lname, qtype, qclass):
        question = question_msg[12:]
        opcode = qflags & 0x7800
        rd = qflags & 0x0100
        answers = []
        if lname in self.servfail:
            rcode = RCODE_SERVFAIL
        elif lname not in self.records:
            rcode = RCODE_NXDOMAIN
        else:
            rcode = RCODE_NOERROR
            if qclass == 1:
                for a in self.records[lname]:
                    ip = ipaddress.ip_address(a)
                    if qtype in (1, 255) and ip.version == 4:
                        answers.append((1, ip.packed))
                    if qtype in (28, 255) and ip.version == 6:
                        answers.append((28, ip.packed))
        flags = 0x8000 | opcode | 0x0400 | rd | 0x0080 | rcode  # QR AA RD RA
        out = struct.pack("!6H", qid, flags, 1, len(answers), 0, 0) + question
        for rtype, rdata in answers:
            out += struct.pack("!HHHIH", 0xC00C, rtype, 1, self.ttl, len(rdata)) + rdata
        return out

    def stop(self):
        self._stop.set()
        with self._lock:
            timers = list(self._timers)
        for t in timers:
            t.cancel()
        self._t.join(2)
        self.sock.close()


def query(port, name, qtype=1, host="127.0.0.1", timeout=2.0, qid=0x4242):
    """Send one hand-built query to host:port and return the parsed response (self-tests)."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        t0 = time.monotonic()
        s.sendto(build_query(name, qtype, qid), (host, port))
        data, _ = s.recvfrom(4096)
        r = parse_response(data)
        r["elapsed"] = time.monotonic() - t0
        return r
    finally:
        s.close()
