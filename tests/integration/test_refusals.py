"""Every row of the response table in ARCHITECTURE.md: status line, Proxy-Status error token,
Connection: close, a one-line body with a correct Content-Length, then the proxy closes; plus the
access-log reason where it is unambiguous and, for policy refusals, that nothing was dialed."""

import time

import pytest

from conftest import both_transports
from netutil import check_refusal, closed_port, have_ipv6, parse_proxy_status, refusal_for
from servers import Blackhole, echo_handler, hold_handler

pytestmark = both_transports  # every refusal also inside TLS, on an HTTPS-proxy listener


def logged(proxy, status, reason=None, n=1):
    lines = proxy.log_lines(n)
    line = lines[-1]
    assert line["status"] == str(status), line["_raw"]
    if reason is not None:
        assert line["reason"] == reason, line["_raw"]
    return line


# ---- 400 -----------------------------------------------------------------------------------

MALFORMED = {
    "port_out_of_range": b"CONNECT 127.0.0.1:99999 HTTP/1.1\r\nHost: 127.0.0.1:99999\r\n\r\n",
    "port_zero": b"CONNECT a.test:0 HTTP/1.1\r\nHost: a.test:0\r\n\r\n",
    "port_not_numeric": b"CONNECT a.test:https HTTP/1.1\r\nHost: a.test\r\n\r\n",
    "port_missing": b"CONNECT a.test HTTP/1.1\r\nHost: a.test\r\n\r\n",
    "port_empty": b"CONNECT a.test: HTTP/1.1\r\nHost: a.test\r\n\r\n",
    "ipv6_without_brackets": b"CONNECT ::1:443 HTTP/1.1\r\nHost: a.test\r\n\r\n",
    "userinfo_in_target": b"CONNECT user@a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
    "absolute_uri_target": b"CONNECT http://a.test:443/ HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
    "http11_without_host": b"CONNECT a.test:443 HTTP/1.1\r\n\r\n",
    "content_length_5": b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nContent-Length: 5\r\n\r\n",
    "transfer_encoding": b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n",
    "obs_fold": b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nX-Long: a\r\n  folded\r\n\r\n",
    "space_before_colon": b"CONNECT a.test:443 HTTP/1.1\r\nHost : a.test:443\r\n\r\n",
    "header_without_colon": b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nJunk\r\n\r\n",
    "nul_in_header": b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nX: a\x00b\r\n\r\n",
    "bad_version": b"CONNECT a.test:443 FOO/1.1\r\nHost: a.test:443\r\n\r\n",
    "missing_version": b"CONNECT a.test:443\r\nHost: a.test:443\r\n\r\n",
    "double_space": b"CONNECT  a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
    "garbage_text": b"hello there\r\n\r\n",
    "tls_client_hello": bytes.fromhex("160301020001000200030300") + b"\x00" * 40 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_400_malformed(proxy, dns, name):
    refusal_for(proxy.port, MALFORMED[name], 400, "http_request_error", tls=proxy.tls)
    logged(proxy, 400, "bad_request")
    assert dns.queries == [], "a malformed request reached the resolver"


def test_400_content_length_with_body(proxy, tcp_server):
    srv = tcp_server(hold_handler)
    req = (f"CONNECT {srv.target()} HTTP/1.1\r\nHost: {srv.target()}\r\nContent-Length: 5\r\n\r\n"
           "hello").encode()
    refusal_for(proxy.port, req, 400, "http_request_error", allow_reset=True, tls=proxy.tls)
    time.sleep(0.1)
    assert srv.accepts == 0


def test_content_length_zero_is_fine(proxy, tcp_server):
    srv = tcp_server(echo_handler)
    c = proxy.client()
    c.send(f"CONNECT {srv.target()} HTTP/1.1\r\nHost: {srv.target()}\r\n"
           "Content-Length: 0\r\n\r\n".encode())
    c.expect_established()


def test_http10_without_host_is_fine(proxy, tcp_server):
    srv = tcp_server(echo_handler)
    c = proxy.client()
    c.send(f"CONNECT {srv.target()} HTTP/1.0\r\n\r\n".encode())
    # The reply is always HTTP/1.1 per the contract.
    c.expect_established()
    c.send(b"ten")
    assert c.recv_exact(3) == b"ten"


def test_request_split_into_single_bytes(proxy, tcp_server):
    """The parser is incremental: a request arriving one byte at a time still works."""
    srv = tcp_server(echo_handler)
    c = proxy.client()
    req = f"CONNECT {srv.target()} HTTP/1.1\r\nHost: {srv.target()}\r\nUser-Agent: t\r\n\r\n"
    for ch in req.encode():
        c.send(bytes([ch]))
        time.sleep(0.002)
    c.expect_established()


# ---- 405 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("req", [
    b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
    b"GET /proxy.pac HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 0\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
], ids=["get_absolute", "get_pac", "post", "options"])
def test_405_non_connect(proxy, req):
    resp, body, _ = refusal_for(proxy.port, req, 405, "http_request_denied", tls=proxy.tls)
    allow = resp.header("Allow")
    assert allow is not None and allow.strip().upper() == "CONNECT", resp.raw_head
    logged(proxy, 405, "method_not_allowed")


# ---- 403 -----------------------------------------------------------------------------------


def test_403_client_not_allowed(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"access": {"allow_clients": "127.0.0.2/32"}})
    req = f"CONNECT {srv.target()} HTTP/1.1\r\nHost: {srv.target()}\r\n\r\n".encode()
    refusal_for(p.port, req, 403, "http_request_denied", allow_reset=True, tls=p.tls)
    refusal_for(p.port, req, 403, "http_request_denied", source="127.0.0.3", allow_reset=True,
                tls=p.tls)
    lines = p.log_lines(2)
    assert sorted(x["client"].rsplit(":", 1)[0] for x in lines) == ["127.0.0.1", "127.0.0.3"]
    for line in lines:
        assert line["status"] == "403" and line["reason"] == "denied_client", line["_raw"]
        assert line["upstream"] == "-"
    # control: the allowed address gets through
    c = p.client(source="127.0.0.2")
    c.send(req)
    c.expect_established()
    c.send(b"ok")
    assert c.recv_exact(2) == b"ok"
    assert srv.accepts == 1


def test_403_port_not_allowed(start_proxy, tcp_server, dns):
    srv = tcp_server(hold_handler)
    dns.set("p.test", ["127.0.0.1"])
    p = start_proxy({"access": {"allow_ports": "443, 8000-8010"}})
    for target in (srv.target(), f"p.test:{srv.port}"):
        c = p.client()
        c.connect_request(target)
        check_refusal(c, 403, "http_request_denied")
    logged(p, 403, "denied_port", n=2)
    time.sleep(0.1)
    assert srv.accepts == 0
    assert dns.queries == [], "port check must come before DNS"


def test_port_ranges_allow(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"access": {"allow_ports": f"443, {srv.port - 1}-{srv.port + 1}"}})
    c = p.tunnel(srv.target())
    c.send(b"r")
    assert c.recv_exact(1) == b"r"


def test_403_host_denied(start_proxy, tcp_server, dns):
    srv = tcp_server(hold_handler)
    dns.set("blocked.test", ["127.0.0.1"])
    p = start_proxy({"access": {"deny_hosts": "blocked.test"}})
    c = p.client()
    c.connect_request(f"blocked.test:{srv.port}")
    check_refusal(c, 403, "http_request_denied")
    c = p.client()
    c.connect_request(f"BLOCKED.test.:{srv.port}")  # case and trailing dot do not bypass it
    check_refusal(c, 403, "http_request_denied")
    logged(p, 403, "denied_host", n=2)
    assert dns.queries == [], "denied name must not be resolved"
    time.sleep(0.1)
    assert srv.accepts == 0


def test_host_patterns_suffix_and_deny_wins(start_proxy, tcp_server, dns):
    srv = tcp_server(echo_handler)
    for n in ("good.test", "a.good.test", "bad.good.test", "other.test"):
        dns.set(n, ["127.0.0.1"])
    p = start_proxy({"access": {"allow_hosts": "*.good.test", "deny_hosts": "bad.good.test"}})
    c = p.tunnel(f"a.good.test:{srv.port}")
    c.send(b"y")
    assert c.recv_exact(1) == b"y"
    c.close()
    for name in ("good.test", "bad.good.test", "other.test"):
        c = p.client()
        c.connect_request(f"{name}:{srv.port}")
        check_refusal(c, 403, "http_request_denied")
    assert srv.accepts == 1


def test_403_ip_literal_denied(start_proxy, tcp_server):
    srv = tcp_server(hold_handler)
    p = start_proxy({"access": {"deny_hosts": "127.0.0.1"}})
    c = p.client()
    c.connect_request(srv.target())
    check_refusal(c, 403, "http_request_denied")
    time.sleep(0.1)
    assert srv.accepts == 0


def test_403_cidr_denied_after_resolution(start_proxy, tcp_server, dns):
    srv = tcp_server(hold_handler)
    dns.set("inside.test", ["127.0.0.1"])
    p = start_proxy({"access": {"deny_hosts": "127.0.0.0/8"}})
    c = p.client()
    c.connect_request(f"inside.test:{srv.port}")
    check_refusal(c, 403, ("http_request_denied", "destination_ip_prohibited"))
    time.sleep(0.1)
    assert srv.accepts == 0


PRIVATE_TARGETS = ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost", "priv.test", "mixed.test",
                   "0.0.0.0", "[::1]", "v6priv.test"]


@pytest.mark.parametrize("host", PRIVATE_TARGETS)
def test_403_private_destination(start_proxy, tcp_server, dns, host):
    if ("::" in host or host == "v6priv.test") and not have_ipv6():
        pytest.skip("no IPv6 loopback")
    srv4 = tcp_server(hold_handler)
    srv6 = None
    if have_ipv6():
        try:
            srv6 = tcp_server(hold_handler, host="::1", port=srv4.port)
        except OSError:
            pass
    dns.set("priv.test", ["127.0.0.1"])
    dns.set("mixed.test", ["127.0.0.1", "::1"])
    dns.set("v6priv.test", ["::1"])
    p = start_proxy({"access": {"deny_private": "yes"}})
    c = p.client()
    c.connect_request(f"{host}:{srv4.port}")
    check_refusal(c, 403, "destination_ip_prohibited")
    logged(p, 403, "denied_private")
    time.sleep(0.2)
    assert srv4.accepts == 0, "private destination was dialed"
    assert srv6 is None or srv6.accepts == 0, "private destination was dialed"


def test_private_destination_explicitly_allowed(start_proxy, tcp_server):
    """deny_private = yes, but allow_hosts lists the loopback CIDR: explicitly allowed."""
    srv = tcp_server(echo_handler)
    p = start_proxy({"access": {"deny_private": "yes", "allow_hosts": "127.0.0.1/32"}})
    c = p.tunnel(srv.target())
    c.send(b"e")
    assert c.recv_exact(1) == b"e"


# ---- 408 / 414 / 431 -----------------------------------------------------------------------


def test_408_handshake_timeout(start_proxy):
    p = start_proxy({"timeouts": {"handshake": "1s"}})
    c = p.client()
    t0 = time.monotonic()
    c.send(b"CONNECT a.test:443 HTTP/1.1\r\n")
    check_refusal(c, 408, "http_request_error", timeout=5)
    el = time.monotonic() - t0
    assert 0.8 <= el <= 3.0, f"408 after {el:.2f}s with handshake = 1s"
    logged(p, 408, "handshake_timeout")


def test_408_slowloris_trickle(start_proxy):
    """The handshake timer covers the whole request: a byte every 200 ms does not extend it."""
    p = start_proxy({"timeouts": {"handshake": "1s"}})
    c = p.client()
    t0 = time.monotonic()
    req = b"CONNECT a.test:443 HTTP/1.1\r\nX-Slow: " + b"a" * 40
    for i, ch in enumerate(req[:20]):
        c.send(bytes([ch]))
    for ch in req[20:]:
        if time.monotonic() - t0 > 3:
            break
        try:
            c.send(bytes([ch]))
        except OSError:
            break
        time.sleep(0.2)
        if c._recv_some(time.monotonic() + 0.001) or c.eof:
            break
    check_refusal(c, 408, "http_request_error", timeout=3)
    el = time.monotonic() - t0
    assert el <= 3.0, f"408 after {el:.2f}s with handshake = 1s"


def test_414_request_line_too_long(proxy):
    req = b"CONNECT " + b"a" * 20000 + b".test:443 HTTP/1.1\r\nHost: a.test\r\n\r\n"
    refusal_for(proxy.port, req, 414, "http_request_error", allow_reset=True, tls=proxy.tls)
    logged(proxy, 414, "too_large")


def test_414_without_line_end(proxy):
    """A long request line still arriving (no CRLF yet) is refused as soon as it is too long."""
    c = proxy.client()
    c.send(b"CONNECT " + b"b" * 20000)
    check_refusal(c, 414, "http_request_error", allow_reset=True)


def test_431_too_many_headers(proxy):
    req = b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n" + b"a: b\r\n" * 2000 + b"\r\n"
    assert len(req) < 16384
    refusal_for(proxy.port, req, 431, "http_request_error", allow_reset=True, tls=proxy.tls)
    logged(proxy, 431, "too_large")


def test_431_headers_too_large(proxy):
    req = (b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n"
           + b"".join(b"X-Pad-%d: " % i + b"v" * 1000 + b"\r\n" for i in range(20)) + b"\r\n")
    refusal_for(proxy.port, req, 431, "http_request_error", allow_reset=True, tls=proxy.tls)


def test_431_respects_max_request_bytes(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"limits": {"max_request_bytes": "1024"}})
    req = (f"CONNECT {srv.target()} HTTP/1.1\r\nHost: {srv.target()}\r\n".encode()
           + b"X-A: " + b"v" * 600 + b"\r\nX-B: " + b"v" * 600 + b"\r\n\r\n")
    refusal_for(p.port, req, 431, "http_request_error", allow_reset=True, tls=p.tls)
    # a request well under the limit still works
    c = p.client()
    c.send(f"CONNECT {srv.target()} HTTP/1.1\r\nHost: {srv.target()}\r\nX-A: {'v' * 300}\r\n\r\n"
           .encode())
    c.expect_established()


# ---- DNS -----------------------------------------------------------------------------------


def test_502_nxdomain(proxy, dns):
    c = proxy.client()
    c.connect_request("nx.test:443")
    resp, body, raw = check_refusal(c, 502, "dns_error")
    assert raw.get("rcode") == '"NXDOMAIN"', resp.header("Proxy-Status")
    logged(proxy, 502, "dns_error")
    assert dns.queried("nx.test"), "the configured DNS server was not asked"


def test_502_nodata(proxy, dns):
    dns.set("empty.test", [])
    c = proxy.client()
    c.connect_request("empty.test:443")
    check_refusal(c, 502, "dns_error")
    types = {t for _, t in dns.queried("empty.test")}
    assert types == {"A", "AAAA"}, f"expected A and AAAA queries, saw {dns.queried('empty.test')}"


def test_502_servfail(proxy, dns):
    dns.servfail.add("broken.test")
    c = proxy.client()
    c.connect_request("broken.test:443")
    check_refusal(c, 502, "dns_error")


def test_504_dns_timeout(start_proxy, dns):
    dns.drop.add("drop.test")
    p = start_proxy({"timeouts": {"dns": "1s"}})
    c = p.client()
    t0 = time.monotonic()
    c.connect_request("drop.test:443")
    check_refusal(c, 504, "dns_timeout", timeout=6)
    el = time.monotonic() - t0
    assert 0.8 <= el <= 3.0, f"504 after {el:.2f}s with dns = 1s"
    logged(p, 504, "dns_timeout")


# ---- connect -------------------------------------------------------------------------------


def test_502_connection_refused(proxy):
    port = closed_port()
    c = proxy.client()
    c.connect_request(f"127.0.0.1:{port}")
    check_refusal(c, 502, "connection_refused")
    line = logged(proxy, 502, "connect_refused")
    assert line["upstream"] in ("-", f"127.0.0.1:{port}")


def test_502_connection_refused_name(proxy, dns):
    port = closed_port()
    dns.set("closed.test", ["127.0.0.1"])
    c = proxy.client()
    c.connect_request(f"closed.test:{port}")
    check_refusal(c, 502, "connection_refused")


def test_504_connection_timeout(start_proxy):
    bh = Blackhole()
    try:
        assert bh.verify(0.3), "blackhole does not hold connects"
        p = start_proxy({"timeouts": {"connect": "1s"}})
        c = p.client()
        t0 = time.monotonic()
        c.connect_request(f"127.0.0.1:{bh.port}")
        check_refusal(c, 504, "connection_timeout", timeout=6)
        el = time.monotonic() - t0
        assert 0.8 <= el <= 3.0, f"504 after {el:.2f}s with connect = 1s"
        logged(p, 504, "connect_timeout")
    finally:
        bh.close()


# ---- 503 -----------------------------------------------------------------------------------


def test_503_at_max_connections(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"limits": {"max_connections": "2"}})
    p.settle()
    a = p.tunnel(srv.target())
    b = p.tunnel(srv.target())
    c = p.client()
    c.connect_request(srv.target())
    check_refusal(c, 503, "proxy_internal_response", allow_reset=True)
    srv.wait_accepts(2)
    time.sleep(0.1)
    assert srv.accepts == 2, "the refused client was dialed"
    # the held tunnels still work
    for t in (a, b):
        t.send(b"still")
        assert t.recv_exact(5) == b"still"
    line = logged(p, 503, "overload")
    assert line["upstream"] == "-"
    # closing one frees a slot (bounded retry: the close is noticed asynchronously)
    a.close()
    deadline = time.monotonic() + 3
    while True:
        d = p.client()
        d.connect_request(srv.target())
        resp = d.read_head()
        if resp.status == 200 or time.monotonic() > deadline:
            break
        d.close()
        time.sleep(0.1)
    assert resp.status == 200, "a freed slot was not reusable"


def test_503_idle_connections_count(start_proxy):
    """Connections still sending their request count towards max_connections too."""
    p = start_proxy({"limits": {"max_connections": "2"}, "timeouts": {"handshake": "10s"}})
    p.settle()
    a = p.client()
    b = p.client()
    a.send(b"CONNECT ")
    b.send(b"CONNECT ")
    time.sleep(0.2)
    c = p.client()
    c.connect_request("a.test:443")
    check_refusal(c, 503, "proxy_internal_response", allow_reset=True)


def test_refusal_body_is_text_and_status_header_single(proxy):
    """Shape details common to every refusal, on one example."""
    resp, body, raw = refusal_for(proxy.port, MALFORMED["port_missing"], 400, "http_request_error",
                                  tls=proxy.tls)
    assert resp.version == "1.1"
    assert resp.header("Content-Type").split(";")[0].strip().lower() == "text/plain"
    member, params, _ = parse_proxy_status(resp.header("Proxy-Status"))
    assert member == "connectd"
    assert b"\r" not in body[:-1]
