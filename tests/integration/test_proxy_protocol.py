"""PROXY protocol (HAProxy's doc/proxy-protocol.txt, v1 text and v2 binary) on a listener marked
'proxy-protocol', on loopback.

Every daemon here listens on two ports: a plain one (the fixture's readiness probe goes there)
and a 'proxy-protocol' one; [server] proxy_protocol_from = 127.0.0.1/32 and the admin listener
is on, so connectd_proxy_headers_total{result=...} can be read. The real HAProxy (a child of
the test, `haproxy -f CFG -db`, stopped by PID) sends v1 (send-proxy) and v2 (send-proxy-v2)
headers; hand-made headers cover what HAProxy does not send (TLVs, LOCAL, UNKNOWN, IPv6,
bounds) and the malformed ones, which must be dropped unanswered. Clients bind to 127.0.0.2
and up so that the client HAProxy names differs from the balancer (127.0.0.1). Every wait is
bounded."""

import json
import os
import signal
import socket
import struct
import textwrap
import time

import pytest

from adminutil import admin_request, admin_section, metric, parse_metrics
from haproxyutil import HAProxy, haproxy_bin
from netutil import LOOPBACK4, LOOPBACK6, check_refusal, free_port, have_ipv6
from servers import echo_handler

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
RESULTS = ("proxy", "local", "bad", "denied")
VALGRIND = bool(os.environ.get("CONNECTD_VALGRIND"))  # 20-50x slower
SLOW = 10.0 if VALGRIND else 1.0  # how long a close may take when it should be immediate


# ---- headers ---------------------------------------------------------------------------------


def v1(proto, src, dst, sport, dport):
    return f"PROXY {proto} {src} {dst} {sport} {dport}\r\n".encode()


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def v2(cmd=1, fam=0x11, src="192.0.2.1", dst="127.0.0.1", sport=40000, dport=3128, tlvs=b"",
       ver=2, body=None, length=None):
    """A v2 header. body replaces the address block + TLVs; length the length field."""
    if body is None:
        if fam == 0x11:
            body = (socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst)
                    + struct.pack("!HH", sport, dport))
        elif fam == 0x21:
            body = (socket.inet_pton(socket.AF_INET6, src)
                    + socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport))
        elif fam == 0x31:
            body = b"/run/lb.sock".ljust(108, b"\0") + b"/run/connectd.sock".ljust(108, b"\0")
        else:
            body = b""
        body += tlvs
    n = len(body) if length is None else length
    return V2_SIG + bytes([(ver << 4) | cmd, fam]) + struct.pack("!H", n) + body


# The TLVs of the spec (2.2.x): ALPN, AUTHORITY, CRC32C (not verified: any value), NOOP,
# UNIQUE_ID, SSL with its sub-TLVs, NETNS, and one from the custom range.
SSL_TLV = tlv(0x20, b"\x07" + struct.pack("!I", 0)
              + tlv(0x21, b"TLSv1.3") + tlv(0x22, b"client.example") + tlv(0x23, b"TLS_AES_128"))
ALL_TLVS = (tlv(0x01, b"h2") + tlv(0x02, b"proxy.example.com") + tlv(0x03, b"\xde\xad\xbe\xef")
            + tlv(0x04, b"\0" * 5) + tlv(0x05, b"req-0001") + SSL_TLV + tlv(0x30, b"blue")
            + tlv(0xE0, b"custom") + tlv(0x04, b""))


def v2_max():
    """The longest v2 header connectd takes: 536 bytes (an IPv4 block padded with a NOOP TLV)."""
    addr = 12
    pad = 520 - addr - 3
    return v2(fam=0x11, src="192.0.2.11", sport=40011, tlvs=tlv(0x04, b"\0" * pad))


FFFF6 = ":".join(["ffff"] * 8)


# ---- the daemon ------------------------------------------------------------------------------


class PP:
    """A connectd with a plain listener (p.port) and a proxy-protocol one (self.port)."""

    def __init__(self, p, port, admin_port):
        self.p = p
        self.port = port
        self.admin = admin_port

    def client(self, source=None, timeout=5.0):
        return self.p.client(source=source, timeout=timeout, host=LOOPBACK4, port=self.port)

    def headers(self):
        r = admin_request(self.admin, "/metrics")
        assert r.status == 200, r
        s = parse_metrics(r.body.decode())
        return {k: metric(s, "connectd_proxy_headers_total", result=k) for k in RESULTS}

    def delta(self, before):
        now = self.headers()
        return {k: now[k] - before[k] for k in RESULTS}

    def line_for(self, client, timeout=5.0):
        return self.p.log_lines(1, timeout=timeout, where=lambda x: x.get("client") == client)[-1]

    def tunnel(self, header, target, source=None):
        """header + CONNECT in one write; asserts the 200 and an echo; returns the client."""
        c = self.client(source=source)
        c.send(header + connect_bytes(target))
        c.expect_established()
        c.send(b"ping")
        assert c.recv_exact(4) == b"ping"
        return c


def connect_bytes(target):
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


def free_ports(n, host=LOOPBACK4):
    """n distinct ports that were free a moment ago (held together while chosen, so that the
    kernel cannot hand out one of them twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_pp(start_proxy, allow_clients="127.0.0.0/8", pp_from="127.0.0.1/32", more=None):
    pp_port, plain, admin = free_ports(3)
    ov, admin_port = admin_section(port=admin)
    ov["server"] = {"proxy_protocol_from": pp_from}
    ov["access"] = {"allow_clients": allow_clients}
    for s, kv in (more or {}).items():
        ov.setdefault(s, {}).update(kv)
    p = start_proxy(ov, listen=f"{LOOPBACK4}:{plain}, {LOOPBACK4}:{pp_port} proxy-protocol")
    p.wait_log(f"listening on {LOOPBACK4}:{pp_port} (proxy-protocol)")
    p.wait_log("ready")
    return PP(p, pp_port, admin_port)


def me(c):
    host, port = c.local_addr[:2]
    return f"{host}:{port}"


def need_haproxy():
    if not haproxy_bin():
        pytest.skip("haproxy is not installed (scripts/install-deps test)")


# ---- 1. behind the real HAProxy --------------------------------------------------------------

HAPROXY_LOOPBACK = """\
global
    maxconn 200

defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend fe
    bind 127.0.0.1:{fe}
    default_backend be

backend be
    server c1 127.0.0.1:{pp} {server_opts}
"""


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_haproxy_names_the_real_client(start_proxy, tcp_server, tmp_path, send):
    """Through HAProxy: the client is the address HAProxy saw (127.0.0.2:port), the balancer
    (127.0.0.1, not in allow_clients) is only logged; allow_clients decides on the client."""
    need_haproxy()
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, allow_clients="127.0.0.2/32")
    fe = free_port()
    hap = HAProxy(HAPROXY_LOOPBACK.format(fe=fe, pp=pp.port, server_opts=send), tmp_path)
    try:
        hap.wait_listening([fe])
        before = pp.headers()

        c = pp.p.client(source="127.0.0.2", port=fe)
        who = me(c)
        c.connect_request(echo.target())
        c.expect_established()
        c.send(b"through haproxy")
        assert c.recv_exact(15) == b"through haproxy"
        # /tunnels names the client and the balancer while the tunnel is open
        r = admin_request(pp.admin, "/tunnels")
        assert r.status == 200, r
        mine = [t for t in json.loads(r.body)["tunnels"] if t["client"] == who]
        assert len(mine) == 1, r.body
        assert mine[0]["state"] == "relay", mine
        balancer = mine[0]["balancer"]
        assert balancer.startswith("127.0.0.1:") and balancer != f"127.0.0.1:{fe}", mine
        c.close()
        line = pp.line_for(who)
        assert line["status"] == "200" and line["reason"] == "done", line["_raw"]
        assert line["target"] == echo.target() and line["up"] == "15", line["_raw"]
        assert line["balancer"] == balancer, line["_raw"]
        assert line["_raw"].rstrip("\n").endswith(f" balancer={balancer}"), line["_raw"]

        # 127.0.0.3 is not in allow_clients: 403, although the balancer's connection came
        # from 127.0.0.1 like the one above.
        d = pp.p.client(source="127.0.0.3", port=fe)
        who3 = me(d)
        d.connect_request(echo.target())
        check_refusal(d, 403, "http_request_denied", allow_reset=True)
        line = pp.line_for(who3)
        assert line["reason"] == "denied_client" and line["status"] == "403", line["_raw"]
        assert line["balancer"].startswith("127.0.0.1:"), line["_raw"]

        assert echo.accepts == 1
        assert pp.delta(before) == {"proxy": 2, "local": 0, "bad": 0, "denied": 0}
    finally:
        hap.stop()


HAPROXY_V6_FRONT = """\
global
    maxconn 200

defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend fe
    bind [::1]:{fe}
    default_backend be

backend be
    server c1 127.0.0.1:{pp} {server_opts}
"""


@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_haproxy_ipv6_client_to_an_ipv4_instance(start_proxy, tcp_server, tmp_path, send):
    """Mixed families: HAProxy takes the client on ::1 and connects to connectd over IPv4; the
    header (TCP6 / AF_INET6) names the IPv6 client, allowed by allow_clients = ::1 alone."""
    need_haproxy()
    if not have_ipv6():
        pytest.skip("no IPv6 loopback")
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, allow_clients="::1")
    fe = free_port(LOOPBACK6)
    hap = HAProxy(HAPROXY_V6_FRONT.format(fe=fe, pp=pp.port, server_opts=send), tmp_path)
    try:
        hap.wait_listening([fe])
        c = pp.p.client(host=LOOPBACK6, port=fe)
        who = f"[::1]:{c.local_addr[1]}"
        c.connect_request(echo.target())
        c.expect_established()
        c.send(b"six")
        assert c.recv_exact(3) == b"six"
        c.close()
        line = pp.line_for(who)
        assert line["status"] == "200" and line["balancer"].startswith("127.0.0.1:"), line["_raw"]
    finally:
        hap.stop()


def test_haproxy_health_checks_send_local(start_proxy, tmp_path):
    """check-send-proxy with send-proxy-v2: HAProxy's own TCP checks carry a v2 LOCAL header,
    counted result="local" and logged under the balancer's own address (no balancer= field)."""
    need_haproxy()
    pp = start_pp(start_proxy)
    fe = free_port()
    hap = HAProxy(HAPROXY_LOOPBACK.format(
        fe=fe, pp=pp.port, server_opts="send-proxy-v2 check check-send-proxy inter 200ms"),
        tmp_path)
    try:
        hap.wait_listening([fe])
        deadline = time.monotonic() + 5
        while pp.headers()["local"] < 3:
            assert time.monotonic() < deadline, (pp.headers(), hap.stderr_text())
            time.sleep(0.1)
        h = pp.headers()
        assert h["bad"] == 0 and h["denied"] == 0 and h["proxy"] == 0, h
        lines = pp.p.log_lines(2, where=lambda x: x["client"].startswith("127.0.0.1:"))
        for x in lines:
            assert "balancer" not in x, x["_raw"]
    finally:
        hap.stop()


# ---- 2. hand-made valid headers --------------------------------------------------------------

# (id, header, the client the access log must name: None = the sender itself, result)
VALID = [
    ("v1-tcp4", v1("TCP4", "192.0.2.7", "127.0.0.1", 40001, 3128), "192.0.2.7:40001", "proxy"),
    ("v1-tcp4-port-0", v1("TCP4", "192.0.2.8", "127.0.0.1", 0, 3128), "192.0.2.8:0", "proxy"),
    ("v1-tcp6", v1("TCP6", "2001:db8::7", "::1", 40002, 3128), "[2001:db8::7]:40002", "proxy"),
    ("v1-tcp6-uppercase", v1("TCP6", "2001:DB8:0:0:0:0:0:A", "::1", 40003, 3128),
     "[2001:db8::a]:40003", "proxy"),
    ("v1-tcp6-longest", v1("TCP6", FFFF6, FFFF6, 65535, 65535), f"[{FFFF6}]:65535", "proxy"),
    # HAProxy's dual-stack form: IPv4-mapped clients are IPv4 clients (allow_clients, log)
    ("v1-tcp6-v4-mapped", v1("TCP6", "::ffff:192.0.2.60", "::ffff:127.0.0.1", 40080, 3128),
     "192.0.2.60:40080", "proxy"),
    ("v1-unknown", b"PROXY UNKNOWN\r\n", None, "proxy"),
    # the spec's worst case: 107 bytes
    ("v1-unknown-107-bytes", f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(), None,
     "proxy"),
    ("v2-ipv4", v2(fam=0x11, src="192.0.2.9", sport=40004), "192.0.2.9:40004", "proxy"),
    ("v2-ipv4-tlvs", v2(fam=0x11, src="192.0.2.9", sport=40005, tlvs=ALL_TLVS),
     "192.0.2.9:40005", "proxy"),
    ("v2-ipv6-tlvs", v2(fam=0x21, src="2001:db8::9", dst="::1", sport=40006, tlvs=ALL_TLVS),
     "[2001:db8::9]:40006", "proxy"),
    ("v2-ipv6-v4-mapped", v2(fam=0x21, src="::ffff:192.0.2.61", dst="::1", sport=40081),
     "192.0.2.61:40081", "proxy"),
    ("v2-536-bytes", v2_max(), "192.0.2.11:40011", "proxy"),
    ("v2-local", v2(cmd=0, fam=0x00, body=b""), None, "local"),
    ("v2-local-with-addresses", v2(cmd=0, fam=0x11, src="192.0.2.10", sport=40007), None,
     "local"),
    ("v2-unspec", v2(cmd=1, fam=0x00, body=b""), None, "proxy"),
    ("v2-unix", v2(cmd=1, fam=0x31), None, "proxy"),
]
HEADER_CLIENTS = "127.0.0.0/8, 192.0.2.0/24, 2001:db8::/32, ffff::/16"


@pytest.mark.parametrize("case", VALID, ids=[c[0] for c in VALID])
def test_valid_header(start_proxy, tcp_server, case):
    """header + CONNECT + early data in one write -> 200, the early data and an echo arrive; the
    access log names the header's client (balancer = the sender), or the sender itself for
    UNKNOWN / LOCAL / UNSPEC / UNIX."""
    _, header, client, result = case
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, allow_clients=HEADER_CLIENTS)
    before = pp.headers()
    c = pp.client()
    sender = me(c)
    c.send(header + connect_bytes(echo.target()) + b"early")
    c.expect_established()
    assert c.recv_exact(5) == b"early"
    c.send(b"ping")
    assert c.recv_exact(4) == b"ping"
    c.close()
    line = pp.line_for(client or sender)
    assert line["status"] == "200" and line["reason"] == "done", line["_raw"]
    assert line["up"] == "9", line["_raw"]
    if client:
        assert line["balancer"] == sender, line["_raw"]
    else:
        assert "balancer" not in line, line["_raw"]
    want = {k: 0 for k in RESULTS}
    want[result] = 1
    assert pp.delta(before) == want


@pytest.mark.parametrize("header", [v1("TCP4", "192.0.2.12", "127.0.0.1", 40012, 3128),
                                    v2(fam=0x21, src="2001:db8::12", dst="::1", sport=40012,
                                       tlvs=ALL_TLVS)], ids=["v1", "v2"])
def test_header_dribbled_then_request_later(start_proxy, tcp_server, header):
    """The header one byte per write, then a pause, then the CONNECT: the outcome does not
    depend on how the bytes were split."""
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, allow_clients=HEADER_CLIENTS)
    c = pp.client()
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(len(header)):
        c.send(header[i:i + 1])
        time.sleep(0.002)
    time.sleep(0.2)
    c.send(connect_bytes(echo.target()))
    c.expect_established()
    c.send(b"ping")
    assert c.recv_exact(4) == b"ping"
    sender = me(c)
    c.close()
    client = "192.0.2.12:40012" if header.startswith(b"PROXY") else "[2001:db8::12]:40012"
    line = pp.line_for(client)
    assert line["status"] == "200" and line["balancer"] == sender, line["_raw"]


def test_request_split_and_large_after_the_header(start_proxy, tcp_server):
    """What follows the header is an ordinary request: half of it in the header's segment and
    the rest later; a large header block (about 12 KB) in the same write as the header; 256 KB
    of early data behind the request, all echoed."""
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, allow_clients=HEADER_CLIENTS)
    req = connect_bytes(echo.target())
    c = pp.client()
    c.send(v1("TCP4", "192.0.2.70", "127.0.0.1", 40090, 3128) + req[:10])
    time.sleep(0.2)
    c.send(req[10:])
    c.expect_established()
    c.close()
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 300) for i in range(40))
    target = echo.target().encode()
    big = b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n" + filler + b"\r\n"
    assert 12000 < len(big) < 16384
    c = pp.client()
    c.send(v2(src="192.0.2.71", sport=40091, tlvs=ALL_TLVS) + big)
    c.expect_established()
    c.close()
    data = bytes(range(256)) * 1024
    c = pp.client()
    c.send(v1("TCP4", "192.0.2.72", "127.0.0.1", 40092, 3128) + req + data)
    c.expect_established()
    assert c.recv_exact(len(data), timeout=10) == data
    c.close()
    for who in ("192.0.2.70:40090", "192.0.2.71:40091", "192.0.2.72:40092"):
        assert pp.line_for(who)["status"] == "200"


def test_reload_changes_the_option_and_the_trusted_senders(start_proxy, tcp_server):
    """SIGHUP: proxy_protocol_from and the listen option move with the config; a config with a
    proxy-protocol listener but no proxy_protocol_from is refused and the old one stays."""
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, allow_clients=HEADER_CLIENTS, pp_from="127.0.0.2/32")
    plain = pp.p.port
    hdr = v1("TCP4", "192.0.2.80", "127.0.0.1", 40100, 3128)

    def outcome(port, header, source=None):
        """'200', another status line, or 'closed' (dropped unanswered)."""
        c = pp.p.client(source=source, host=LOOPBACK4, port=port)
        c.send(header + connect_bytes(echo.target()))
        try:
            return c.read_head(timeout=SLOW + 2.0).status_line[9:12]
        except AssertionError:
            assert c.buf == b"" and c.eof, (c.buf, c.eof)
            return "closed"
        finally:
            c.close()

    assert outcome(pp.port, hdr) == "closed"                    # 127.0.0.1 is not trusted
    assert outcome(pp.port, hdr, source="127.0.0.2") == "200"
    pp.p.rewrite_config({"server": {"proxy_protocol_from": "127.0.0.1/32"}})
    pp.p.signal(signal.SIGHUP)
    pp.p.wait_log("reloaded")
    assert outcome(pp.port, hdr) == "200"
    assert outcome(pp.port, hdr, source="127.0.0.2") == "closed"
    # swap the option between the two addresses
    pp.p.rewrite_config({"server": {
        "listen": f"{LOOPBACK4}:{plain} proxy-protocol, {LOOPBACK4}:{pp.port}"}})
    pp.p.signal(signal.SIGHUP)
    pp.p.wait_log("reloaded", count=2)
    assert outcome(plain, hdr) == "200"
    assert outcome(plain, b"") == "closed"
    assert outcome(pp.port, b"") == "200"
    assert outcome(pp.port, hdr) == "400"
    # a proxy-protocol listener without proxy_protocol_from: refused, the previous one stays
    pp.p.rewrite_config({"server": {"proxy_protocol_from": None}})
    pp.p.signal(signal.SIGHUP)
    pp.p.wait_log("still serving the previous configuration")
    assert outcome(plain, hdr) == "200"
    assert outcome(pp.port, b"") == "200"


def test_two_workers(start_proxy, tcp_server):
    """workers = 2 (SO_REUSEPORT): every worker's copy of the listener keeps its option; the
    counters add up over the workers; /tunnels lists the balancer for tunnels of both."""
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, allow_clients=HEADER_CLIENTS, more={"server": {"workers": "2"}})
    before = pp.headers()
    named = [pp.tunnel(v1("TCP4", f"192.0.2.{100 + i}", "127.0.0.1", 41000 + i, 3128),
                       echo.target()) for i in range(30)]
    plain = [pp.p.tunnel(echo.target()) for _ in range(10)]
    r = admin_request(pp.admin, "/tunnels")
    listed = {t["client"]: t for t in json.loads(r.body)["tunnels"]}
    workers = set()
    for i, c in enumerate(named):
        t = listed[f"192.0.2.{100 + i}:{41000 + i}"]
        assert t["balancer"] == me(c), t
        workers.add(t["worker"])
    assert workers == {0, 1}, f"all 30 on worker(s) {workers}"
    for c in plain:
        assert listed[me(c)].get("balancer") is None, listed[me(c)]
    for c in named + plain:
        c.close()
    assert pp.delta(before) == {"proxy": 30, "local": 0, "bad": 0, "denied": 0}


def test_local_and_unknown_are_judged_as_the_balancer(start_proxy, tcp_server):
    """LOCAL / UNKNOWN keep the sender's address as the client: with allow_clients not naming
    the balancer they get 403 denied_client, while a header naming an allowed client gets 200."""
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, allow_clients="192.0.2.0/24")
    before = pp.headers()
    for header in (v2(cmd=0, fam=0x00, body=b""), b"PROXY UNKNOWN\r\n"):
        c = pp.client()
        sender = me(c)
        c.send(header + connect_bytes(echo.target()))
        check_refusal(c, 403, "http_request_denied")
        line = pp.line_for(sender)
        assert line["reason"] == "denied_client" and "balancer" not in line, line["_raw"]
    c = pp.tunnel(v1("TCP4", "192.0.2.13", "127.0.0.1", 40013, 3128), echo.target())
    c.close()
    assert pp.delta(before) == {"proxy": 2, "local": 1, "bad": 0, "denied": 0}


def test_per_client_limit_counts_the_named_client(start_proxy, tcp_server):
    """per_client_connections = 1 applies to the header's client, not to the balancer: two
    clients through one balancer connection source both get tunnels, a second connection of
    the same named client gets 503 client_limit."""
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, allow_clients=HEADER_CLIENTS,
                  more={"limits": {"per_client_connections": "1"}})
    a = pp.tunnel(v1("TCP4", "192.0.2.20", "127.0.0.1", 40020, 3128), echo.target())
    b = pp.tunnel(v2(src="192.0.2.21", sport=40021), echo.target())
    c = pp.client()
    sender = me(c)
    c.send(v1("TCP4", "192.0.2.20", "127.0.0.1", 40022, 3128) + connect_bytes(echo.target()))
    check_refusal(c, 503, "http_request_denied")
    line = pp.line_for("192.0.2.20:40022")
    assert line["reason"] == "client_limit" and line["balancer"] == sender, line["_raw"]
    a.close()
    b.close()


def test_policy_rule_matches_the_named_client(start_proxy, tcp_server, tmp_path):
    """A policy rule's clients condition is matched against the header's client."""
    echo = tcp_server(echo_handler)
    (tmp_path / "policy.yaml").write_text(textwrap.dedent("""\
        rules:
          - name: lb-blocked-net
            clients: [198.51.100.0/24]
            action: deny
        """))
    pp = start_pp(start_proxy, allow_clients="192.0.2.0/24, 198.51.100.0/24",
                  more={"access": {"policy": str(tmp_path / "policy.yaml")}})
    c = pp.client()
    c.send(v1("TCP4", "198.51.100.5", "127.0.0.1", 40030, 3128) + connect_bytes(echo.target()))
    check_refusal(c, 403, "http_request_denied")
    line = pp.line_for("198.51.100.5:40030")
    assert line["rule"] == "lb-blocked-net" and line["status"] == "403", line["_raw"]
    pp.tunnel(v1("TCP4", "192.0.2.5", "127.0.0.1", 40031, 3128), echo.target()).close()
    line = pp.line_for("192.0.2.5:40031")
    assert line["status"] == "200" and line["rule"] != "lb-blocked-net", line["_raw"]


# ---- 3. malformed, truncated, late -----------------------------------------------------------

GOOD_V2 = v2(fam=0x11, src="192.0.2.40", sport=40040)

# (id, bytes, then: "wait" (keep the connection open) / "close" (shut down our write side) /
#  "silence" (a partial header, then nothing: the handshake timeout), the error-log reason)
MALFORMED = [
    ("v1-wrong-signature", b"PROXZ TCP4 192.0.2.1 127.0.0.1 1 2\r\n", "wait",
     "not a PROXY protocol header"),
    ("v1-lowercase", b"proxy TCP4 192.0.2.1 127.0.0.1 1 2\r\n", "wait",
     "not a PROXY protocol header"),
    ("v1-bad-separator", b"PROXY\tTCP4 192.0.2.1 127.0.0.1 1 2\r\n", "wait", "v1: bad separator"),
    ("v1-udp", b"PROXY UDP4 192.0.2.1 127.0.0.1 1 2\r\n", "wait", "v1: unsupported protocol"),
    ("v1-octet-256", v1("TCP4", "192.0.2.256", "127.0.0.1", 1, 2), "wait",
     "v1: bad source address"),
    ("v1-three-octets", v1("TCP4", "192.0.2", "127.0.0.1", 1, 2), "wait",
     "v1: bad source address"),
    ("v1-leading-zero-octet", v1("TCP4", "192.0.2.01", "127.0.0.1", 1, 2), "wait",
     "v1: bad source address"),
    ("v1-ipv6-in-tcp4", v1("TCP4", "2001:db8::1", "127.0.0.1", 1, 2), "wait",
     "v1: bad source address"),
    ("v1-tcp6-two-gaps", v1("TCP6", "2001:db8::1::2", "::1", 1, 2), "wait",
     "v1: bad source address"),
    ("v1-tcp6-zone-id", v1("TCP6", "fe80::1%eth0", "::1", 1, 2), "wait",
     "v1: bad source address"),
    ("v1-bad-destination", v1("TCP4", "192.0.2.1", "127.0.0.x", 1, 2), "wait",
     "v1: bad destination address"),
    ("v1-port-65536", v1("TCP4", "192.0.2.1", "127.0.0.1", 65536, 443), "wait",
     "v1: bad source port"),
    ("v1-port-leading-zero", v1("TCP4", "192.0.2.1", "127.0.0.1", 1, "0443"), "wait",
     "v1: bad destination port"),
    ("v1-two-spaces", b"PROXY TCP4  192.0.2.1 127.0.0.1 1 2\r\n", "wait",
     "v1: bad source address"),
    ("v1-lf-without-cr", b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\n", "wait",
     "v1: bad destination port"),
    ("v1-cr-without-lf", b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\rX", "wait", "v1: CR without LF"),
    ("v1-too-long", b"PROXY UNKNOWN " + b"a" * 100 + b"\r\n", "wait", "v1: line too long"),
    ("v1-108-bytes", b"PROXY UNKNOWN " + b"a" * 92 + b"\r\n", "wait", "v1: line too long"),
    ("v1-control-byte", b"PROXY UNKNOWN abc\x01def\r\n", "wait", "v1: bad byte in line"),
    ("v2-wrong-signature", b"\r\n\r\n\x00\r\nQUIX\n" + GOOD_V2[12:], "wait",
     "not a PROXY protocol header"),
    ("v2-version-1", v2(ver=1, fam=0x11), "wait", "v2: unsupported version"),
    ("v2-version-3", v2(ver=3, fam=0x11), "wait", "v2: unsupported version"),
    ("v2-command-2", v2(cmd=2, fam=0x11), "wait", "v2: unsupported command"),
    ("v2-command-15", v2(cmd=15, fam=0x11), "wait", "v2: unsupported command"),
    ("v2-udp", v2(fam=0x12, body=b"\0" * 12), "wait", "v2: datagram transport not supported"),
    ("v2-family-4", v2(fam=0x41, body=b"\0" * 12), "wait",
     "v2: bad address family or transport"),
    ("v2-length-537", v2(fam=0x11, body=b"", length=521), "wait", "v2: header too long"),
    ("v2-length-65535", v2(fam=0x11, body=b"", length=0xFFFF), "wait", "v2: header too long"),
    ("v2-short-block", v2(fam=0x11, body=b"\0" * 8), "wait", "v2: address block too short"),
    ("v2-tlv-too-long", v2(fam=0x11, tlvs=b"\x04\x00\x10abc"), "wait",
     "v2: TLV longer than the header"),
    ("v2-tlv-truncated", v2(fam=0x11, tlvs=b"\x04\x00"), "wait", "v2: truncated TLV"),
    ("v2-truncated-then-close", GOOD_V2[:20], "close", "connection closed inside the header"),
    ("v1-truncated-then-close", b"PROXY TCP4 192.0.2.1 ", "close",
     "connection closed inside the header"),
    ("v1-partial-then-silence", b"PROXY TCP4 192.0.2.1 ", "silence",
     "header not received in time"),
    ("v2-signature-then-silence", V2_SIG, "silence", "header not received in time"),
    ("garbage-tls-hello", bytes.fromhex("160301020001000200fc0303") + b"\x5a" * 40, "wait",
     "not a PROXY protocol header"),
    ("garbage-binary", bytes(range(0xC0, 0x100)), "wait", "not a PROXY protocol header"),
    ("plain-connect", connect_bytes("127.0.0.1:9"), "wait", "not a PROXY protocol header"),
    ("http-get", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "wait", "not a PROXY protocol header"),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_header_is_dropped_unanswered(start_proxy, tcp_server, case):
    """The connection is closed (EOF, no RST) without a byte sent back, at once (or at the 1 s
    handshake timeout for a header that stops arriving); logged with its reason, counted
    result="bad"; the daemon serves the next client."""
    name, data, then, reason = case
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, more={"timeouts": {"handshake": "1s"}})
    before = pp.headers()
    c = pp.client()
    who = me(c)
    t0 = time.monotonic()
    c.send(data)
    if then == "close":
        c.shutdown_write()
    got, how = c.read_until_close(timeout=SLOW + 3.0)
    took = time.monotonic() - t0
    assert got == b"", f"{name}: the proxy answered {got[:200]!r}"
    assert how == "eof", f"{name}: connection not closed cleanly ({how}) within {SLOW + 3} s"
    if then == "silence":
        assert 0.8 <= took < SLOW + 1.5, f"{name}: closed after {took:.2f}s with handshake = 1s"
    else:
        assert took < SLOW, f"{name}: closed after {took:.2f}s"
    pp.p.wait_log(f"PROXY header from {who}: {reason}; closing")
    line = pp.line_for(who)
    want = "proxy_header_timeout" if then == "silence" else "bad_proxy_header"
    assert line["reason"] == want and "balancer" not in line, line["_raw"]
    assert echo.accepts == 0
    # the next client is served
    pp.tunnel(v1("TCP4", "127.0.0.9", "127.0.0.1", 40050, 3128), echo.target()).close()
    assert pp.delta(before) == {"proxy": 1, "local": 0, "bad": 1, "denied": 0}


def test_malformed_headers_on_one_daemon(start_proxy, tcp_server):
    """All of the table in a row on one daemon (each on its own connection, several at once):
    every one is dropped unanswered, result="bad" counts each, and the daemon still serves."""
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, more={"timeouts": {"handshake": "1s"}})
    before = pp.headers()
    conns = []
    for name, data, then, _ in MALFORMED:
        c = pp.client()
        c.send(data)
        if then == "close":
            c.shutdown_write()
        conns.append((name, c))
    for name, c in conns:
        got, how = c.read_until_close(timeout=SLOW + 3.0)
        assert got == b"" and how == "eof", f"{name}: {how}, got {got[:100]!r}"
    pp.tunnel(v2(src="127.0.0.41", sport=40041), echo.target()).close()
    assert pp.delta(before) == {"proxy": 1, "local": 0, "bad": len(MALFORMED), "denied": 0}


# ---- 4. senders outside proxy_protocol_from ----------------------------------------------------


def test_sender_outside_proxy_protocol_from_is_closed_unheard(start_proxy, tcp_server):
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, pp_from="127.0.0.1/32")
    before = pp.headers()
    # connects and says nothing: closed at once
    c = pp.client(source="127.0.0.4")
    who_c = me(c)
    t0 = time.monotonic()
    got, how = c.read_until_close(timeout=SLOW + 2.0)
    assert got == b"" and how == "eof", (got, how)
    assert time.monotonic() - t0 < SLOW
    pp.p.wait_log(f"PROXY listener: {who_c} is not in [server] proxy_protocol_from; closed")
    # sends a valid header and a request: nothing comes back, nothing is dialed
    d = pp.client(source="127.0.0.4")
    who_d = me(d)
    d.send(v1("TCP4", "127.0.0.2", "127.0.0.1", 40060, 3128) + connect_bytes(echo.target()))
    got, how = d.read_until_close(timeout=SLOW + 2.0)
    assert got == b"" and how in ("eof", "reset"), (got, how)
    pp.p.wait_log(f"PROXY listener: {who_d} is not in [server] proxy_protocol_from; closed")
    assert echo.accepts == 0
    # the trusted sender is still served, and 127.0.0.4 is an ordinary client on the plain port
    pp.tunnel(v1("TCP4", "127.0.0.2", "127.0.0.1", 40061, 3128), echo.target()).close()
    pp.p.tunnel(echo.target(), source="127.0.0.4").close()
    assert pp.delta(before) == {"proxy": 1, "local": 0, "bad": 0, "denied": 2}


# ---- 5. the plain listener next to it ----------------------------------------------------------


def test_plain_listener_next_to_it(start_proxy, tcp_server):
    """On the plain listener clients are who they connect from: an ordinary CONNECT works, a
    PROXY line is not trusted (400, logged under the real address), allow_clients applies to
    the connection's own address."""
    echo = tcp_server(echo_handler)
    pp = start_pp(start_proxy, allow_clients="127.0.0.2/32")
    before = pp.headers()
    c = pp.p.tunnel(echo.target(), source="127.0.0.2")
    who = me(c)
    c.send(b"plain")
    assert c.recv_exact(5) == b"plain"
    c.close()
    line = pp.line_for(who)
    assert line["status"] == "200" and "balancer" not in line, line["_raw"]

    d = pp.p.client(source="127.0.0.2")
    who = me(d)
    d.send(v1("TCP4", "192.0.2.50", "127.0.0.1", 40070, 3128) + connect_bytes(echo.target()))
    check_refusal(d, 400, "http_request_error", allow_reset=True)
    line = pp.line_for(who)
    assert line["status"] == "400" and "balancer" not in line, line["_raw"]

    e = pp.p.client(source="127.0.0.3")
    who = me(e)
    e.connect_request(echo.target())
    check_refusal(e, 403, "http_request_denied")
    assert pp.line_for(who)["reason"] == "denied_client"
    assert echo.accepts == 1
    assert pp.delta(before) == {k: 0 for k in RESULTS}
