"""Hostile names against deny_private (issue 4, item 1).

With deny_private = yes, no request may make connectd connect() to a loopback address, however
the destination is spelled or whatever the DNS says: DNS rebinding (answers that flip between an
allowed address and 127.0.0.1, or mix them), trailing dots and mixed case, IPv4 in odd
notations, IPv6 forms that embed 127.0.0.1, and AAAA answers that embed loopback.

Every loopback destination here is a TCPServer on 127.0.0.1 (and ::1 when available) listening
on the requested port, so a wrongful dial shows up as srv.accepts > 0.

Network rule: nothing here may make the proxy dial a non-loopback address, not even if the check
under test were broken: so no public addresses, and no NAT64 (64:ff9b::/96) or IPv4-compatible
(::a.b.c.d) forms, which would route off the machine (their classes are unit-tested in
test_addr.c); ::ffff:127.0.0.1 and ::1 stay on loopback. The "allowed" side of a rebinding flip is 127.0.0.2, explicitly allowed
by a CIDR in allow_hosts (the only exception deny_private knows), served by a second TCPServer.
DNS answers are given TTL 0 (connectd does not cache those), so every request asks again.
"""

import time

import pytest

from netutil import check_refusal, have_ipv6
from servers import echo_handler, hold_handler

LOOP2 = "127.0.0.2"  # the explicitly allowed loopback address
SETTLE = 0.2  # time for a wrongful connect() to reach the listener before accepts is read


@pytest.fixture
def loop_servers(tcp_server):
    """Listeners on 127.0.0.1 and (if possible) ::1 on the same port: the forbidden targets."""
    srv4 = tcp_server(hold_handler)
    srv6 = None
    if have_ipv6():
        try:
            srv6 = tcp_server(hold_handler, host="::1", port=srv4.port)
        except OSError:
            srv6 = None

    class S:
        port = srv4.port
        v4 = srv4
        v6 = srv6

        @staticmethod
        def assert_untouched(what):
            time.sleep(SETTLE)
            assert srv4.accepts == 0, f"{what}: connectd dialed 127.0.0.1"
            assert srv6 is None or srv6.accepts == 0, f"{what}: connectd dialed ::1"

    return S


def start_guarded(start_proxy, **access):
    """A proxy with deny_private = yes, every port allowed, allow_hosts = *."""
    acc = {"deny_private": "yes", "allow_ports": "1-65535", "allow_hosts": "*"}
    acc.update(access)
    return start_proxy({"access": acc})


def last_line(proxy, n):
    return proxy.log_lines(n)[-1]


def expect_refused(proxy, target, status, error, reason, nlines):
    """CONNECT target, check the exact refusal and its access-log line (the nlines-th)."""
    c = proxy.client()
    me = "%s:%d" % c.local_addr[:2]
    c.connect_request(target)
    check_refusal(c, status, error)
    # This connection's own line: an earlier tunnel's line may be written after it.
    line = proxy.log_lines(1, where=lambda x: x["client"] == me)[-1]
    assert line["status"] == str(status), line["_raw"]
    assert line["reason"] == reason, line["_raw"]
    assert line["upstream"] == "-", f"an upstream was dialed: {line['_raw']}"
    return line


def expect_echo_tunnel(proxy, target):
    c = proxy.tunnel(target)
    c.send(b"ping")
    assert c.recv_exact(4) == b"ping"
    c.close()


# ---- 1. DNS rebinding ----------------------------------------------------------------------


def test_rebinding_flip_allowed_then_loopback(start_proxy, dns, tcp_server, loop_servers):
    """The same name answers 127.0.0.2 (explicitly allowed), then 127.0.0.1, then back, over
    several rounds: every 127.0.0.1 round is refused with destination_ip_prohibited and never
    reaches the 127.0.0.1 listener; every 127.0.0.2 round tunnels (so the answers really are
    fresh, not served from a cache)."""
    dns.ttl = 0
    ok = tcp_server(echo_handler, host=LOOP2, port=loop_servers.port)
    p = start_guarded(start_proxy, allow_hosts=f"*, {LOOP2}/32")
    target = f"rebind.test:{loop_servers.port}"
    nlines = 0
    for rnd in range(3):
        dns.set("rebind.test", [LOOP2])
        expect_echo_tunnel(p, target)
        nlines += 1
        ok.wait_accepts(rnd + 1)  # raises when the allowed address was not dialed
        dns.set("rebind.test", ["127.0.0.1"])
        expect_refused(p, target, 403, "destination_ip_prohibited", "denied_private",
                       nlines + 1)
        nlines += 1
        loop_servers.assert_untouched(f"round {rnd}")
    assert ok.accepts == 3
    assert len([q for q in dns.queried("rebind.test") if q[1] == "A"]) >= 6, (
        f"answers were cached, the flip was not exercised: {dns.queried('rebind.test')}")


@pytest.mark.parametrize("order", ["loopback_first", "allowed_first"])
def test_name_answering_allowed_and_loopback(start_proxy, dns, tcp_server, loop_servers, order):
    """One answer set holding 127.0.0.1 and an allowed address: the loopback address is skipped
    whatever its position, the allowed one is dialed."""
    dns.ttl = 0
    ok = tcp_server(echo_handler, host=LOOP2, port=loop_servers.port)
    addrs = ["127.0.0.1", LOOP2] if order == "loopback_first" else [LOOP2, "127.0.0.1"]
    dns.set("both.test", addrs)
    p = start_guarded(start_proxy, allow_hosts=f"*, {LOOP2}/32")
    expect_echo_tunnel(p, f"both.test:{loop_servers.port}")
    line = last_line(p, 1)
    assert line["status"] == "200", line["_raw"]
    assert line["upstream"] == f"{LOOP2}:{loop_servers.port}", line["_raw"]
    assert ok.accepts == 1
    loop_servers.assert_untouched(order)


def test_rebinding_only_loopback_answers_all_refused(start_proxy, dns, loop_servers):
    """Answers 127.0.0.1, 127.0.0.53 and ::1 together (and the IPv4 ones twice): every one is
    refused, nothing is dialed."""
    dns.ttl = 0
    dns.set("many.test", ["127.0.0.1", "127.0.0.53", "127.0.0.1", "::1"])
    p = start_guarded(start_proxy)
    expect_refused(p, f"many.test:{loop_servers.port}", 403, "destination_ip_prohibited",
                   "denied_private", 1)
    loop_servers.assert_untouched("many.test")


def test_deny_private_default_is_yes(start_proxy, dns, loop_servers):
    """Without a deny_private line at all, a name resolving to 127.0.0.1 is still refused."""
    dns.ttl = 0
    dns.set("default.test", ["127.0.0.1"])
    p = start_proxy({"access": {"deny_private": None, "allow_hosts": "*",
                                "allow_ports": "1-65535"}})
    assert not [ln for ln in p.config_text.splitlines() if ln.strip().startswith("deny_private")]
    expect_refused(p, f"default.test:{loop_servers.port}", 403, "destination_ip_prohibited",
                   "denied_private", 1)
    loop_servers.assert_untouched("default.test")


# ---- 2. trailing dots and mixed case -------------------------------------------------------

CASE_DOT_NAMES = ["priv.test", "priv.test.", "PRIV.TEST", "PRIV.TEST.", "PrIv.TeSt.",
                  "Sub.Priv.Test.", "LocalHost", "localhost."]


@pytest.mark.parametrize("name", CASE_DOT_NAMES)
def test_case_and_trailing_dot_names_refused(start_proxy, dns, loop_servers, name):
    dns.ttl = 0
    dns.set("priv.test", ["127.0.0.1"])
    dns.set("sub.priv.test", ["127.0.0.1"])
    dns.set("localhost", ["127.0.0.1"])  # in case c-ares asks the server rather than /etc/hosts
    p = start_guarded(start_proxy)
    expect_refused(p, f"{name}:{loop_servers.port}", 403, "destination_ip_prohibited",
                   "denied_private", 1)
    loop_servers.assert_untouched(name)
    if not name.lower().startswith("localhost"):
        assert dns.queried(name), f"{name} never reached the resolver: refused for another reason"


@pytest.mark.parametrize("name", ["priv.test..", ".priv.test", "priv..test"])
def test_malformed_dots_are_400(start_proxy, dns, loop_servers, name):
    """Empty labels (also two trailing dots) are a parse error, not a lookup."""
    dns.set("priv.test", ["127.0.0.1"])
    p = start_guarded(start_proxy)
    expect_refused(p, f"{name}:{loop_servers.port}", 400, "http_request_error", "bad_request", 1)
    loop_servers.assert_untouched(name)
    assert dns.queries == [], f"{name} reached the resolver"


# ---- 3. IPv4 / IPv6 literals in odd notations ----------------------------------------------

# Browsers (the WHATWG URL parser) and inet_aton read these as 127.0.0.1; connectd reads them
# the same way, so deny_private sees the address they stand for.
ODD_IPV4 = ["0x7f.1", "2130706433", "127.1", "0177.0.0.1", "127.0.0.01", "0x7f000001",
            "0X7F.0.0.1", "127.0.1", "0x7f.0x0.0x0.0x1", "017700000001", "0x7f.1.",
            "2130706433."]
# Not an address to that parser either, yet ending in a number: refused before any lookup.
BAD_IPV4 = ["127.0.0.1.0", "a.0x7f", "localhost.127", "0x7f.08", "4294967296", "127.256.0.1"]


@pytest.mark.parametrize("host", ODD_IPV4)
def test_odd_ipv4_notation_is_403(start_proxy, dns, loop_servers, host):
    p = start_guarded(start_proxy)
    expect_refused(p, f"{host}:{loop_servers.port}", 403, "destination_ip_prohibited",
                   "denied_private", 1)
    loop_servers.assert_untouched(host)
    assert dns.queries == [], f"{host} reached the resolver"


@pytest.mark.parametrize("host", BAD_IPV4)
def test_bad_ipv4_notation_is_400(start_proxy, dns, loop_servers, host):
    p = start_guarded(start_proxy)
    expect_refused(p, f"{host}:{loop_servers.port}", 400, "http_request_error", "bad_request", 1)
    loop_servers.assert_untouched(host)
    assert dns.queries == [], f"{host} reached the resolver"


IP_LITERALS_403 = ["127.0.0.1", "127.0.0.1.", "127.255.255.254", "[::ffff:127.0.0.1]",
                   "[::FFFF:7F00:1]", "[::1]", "[0:0:0:0:0:0:0:1]",
                   "[::ffff:0:7f00:1]", "[::ffff:0:127.0.0.1]"]  # IPv4-translated (RFC 2765)


@pytest.mark.parametrize("host", IP_LITERALS_403)
def test_loopback_ip_literals_are_403(start_proxy, dns, loop_servers, host):
    p = start_guarded(start_proxy)
    expect_refused(p, f"{host}:{loop_servers.port}", 403, "destination_ip_prohibited",
                   "denied_private", 1)
    loop_servers.assert_untouched(host)
    assert dns.queries == [], f"IP literal {host} was sent to the resolver"


# ---- 4. AAAA answers embedding loopback ----------------------------------------------------

EMBEDDED = {
    "mapped.test": ["::ffff:127.0.0.1"],
    "v6loop.test": ["::1"],
    "all-embedded.test": ["::ffff:127.0.0.1", "::1"],
    "a-and-mapped.test": ["127.0.0.1", "::ffff:127.0.0.1"],
    "translated.test": ["::ffff:0:7f00:1"],
}


@pytest.mark.parametrize("name", sorted(EMBEDDED))
def test_aaaa_embedding_loopback_refused(start_proxy, dns, loop_servers, name):
    dns.ttl = 0
    dns.set(name, EMBEDDED[name])
    p = start_guarded(start_proxy)
    expect_refused(p, f"{name}:{loop_servers.port}", 403, "destination_ip_prohibited",
                   "denied_private", 1)
    loop_servers.assert_untouched(name)
    assert ("AAAA" in [q[1] for q in dns.queried(name)]), (
        f"no AAAA query for {name}: {dns.queried(name)}")


def test_aaaa_rebinding_flip(start_proxy, dns, tcp_server, loop_servers):
    """A name whose AAAA answer flips to ::ffff:127.0.0.1 while its allowed A answer goes away:
    the mapped address is refused, never dialed."""
    dns.ttl = 0
    ok = tcp_server(echo_handler, host=LOOP2, port=loop_servers.port)
    p = start_guarded(start_proxy, allow_hosts=f"*, {LOOP2}/32")
    target = f"v6flip.test:{loop_servers.port}"
    dns.set("v6flip.test", [LOOP2])
    expect_echo_tunnel(p, target)
    ok.wait_accepts(1)
    dns.set("v6flip.test", ["::ffff:127.0.0.1"])
    expect_refused(p, target, 403, "destination_ip_prohibited", "denied_private", 2)
    loop_servers.assert_untouched("v6flip.test")
    assert ok.accepts == 1
