"""Parent proxies: [parent NAME] sections (address, credentials_file, connect_timeout,
backoff), [access] via and the policy rules' via (ordered failover, direct), connectd's own
CONNECT to the parent (its credentials, never the client's; Via with connectd's pseudonym),
the parent's answers mapped to 502/504 with Proxy-Status next-hop / received-status, passive
back-off, Via loop detection, parent= in the access log and /tunnels.

Parents here: another connectd, Squid (/usr/sbin/squid in the foreground, skipped when not
installed) and a scriptable fake parent (parentfix.FakeParent) that records the exact request
head. Everything on loopback; every wait bounded."""

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from adminutil import admin_request, admin_section
from authfix import basic, make_hash, write_users
from netutil import (LOOPBACK4, SUCCESS_REPLY, check_refusal, closed_port, free_port,
                     have_ipv6, parse_proxy_status)
from parentfix import (SQUID, SQUID_NCSA, FakeParent, Squid, fake_parent_handler,
                       local_ports_towards, overrides, parent_section, parse_head)
from servers import Blackhole, echo_handler, greeting_echo_handler

VIA_RE = r"1\.1 connectd-[0-9a-f]{16}"


# ---- helpers -------------------------------------------------------------------------------------



def write_private(path, text):
    """A credentials file as connectd wants it: readable by its owner only."""
    path.write_text(text)
    path.chmod(0o600)


def pump(c, data, timeout=30.0, half_close=True, want=None):
    """Send data on the tunnel (from a thread, then shut down our write side) while reading
    until the far end closes (or, with want, until want bytes came); returns everything read
    (including what was already buffered). Squid ends a tunnel on the first EOF (no half-close),
    so with it: half_close=False, want=len(data)."""
    errors = []

    def send():
        try:
            c.sock.sendall(data)
            if half_close:
                c.sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(e)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    chunks = [c.buf]
    c.buf = b""
    deadline = time.monotonic() + timeout
    how = "timeout"
    have = len(chunks[0])
    while time.monotonic() < deadline:
        if want is not None and have >= want:
            how = "enough"
            break
        c.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            d = c.sock.recv(262144)
        except socket.timeout:
            break
        except ConnectionResetError:
            how = "reset"
            break
        if not d:
            how = "eof"
            break
        chunks.append(d)
        have += len(d)
    t.join(5)
    assert not errors, errors
    return b"".join(chunks), how


def sha(b):
    return hashlib.sha256(b).hexdigest()


def via_over(names):
    return {"access": {"via": names}}


def refusal(c, status, error, timeout=5.0):
    """check_refusal plus the Proxy-Status parameters (unquoted) and the body."""
    resp, body, raw = check_refusal(c, status, error, timeout=timeout)
    _, params, _ = parse_proxy_status(resp.header("Proxy-Status"))
    return resp, body, params, raw


def only_line(p, target, timeout=5.0):
    """The access line of target (asserts there is exactly one)."""
    lines = p.log_lines(1, timeout, where=lambda x: x.get("target") == target)
    time.sleep(0.05)
    lines = p.log_lines(1, timeout, where=lambda x: x.get("target") == target)
    assert len(lines) == 1, [x["_raw"] for x in lines]
    return lines[0]


def b64(s):
    return base64.b64encode(s.encode()).decode()


@pytest.fixture
def echo(tcp_server):
    return tcp_server(echo_handler)


@pytest.fixture
def fake_parent():
    made = []

    def make(**kw):
        s = FakeParent(**kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def squid(tmp_path):
    if not os.access(SQUID, os.X_OK):
        pytest.skip(f"{SQUID} is not installed (Debian: squid-openssl)")
    made = []

    def make(connect_ports, users=None):
        s = Squid(str(tmp_path), connect_ports, users=users)
        made.append(s)
        s.wait_ready()
        return s

    yield make
    for s in made:
        s.stop()


# ---- 1. connectd -> connectd -> destination ------------------------------------------------------


def test_chain_through_a_connectd_parent(start_proxy, tcp_server, echo):
    """Bytes both ways intact (4 MB each way, hashed), early data sent with the CONNECT, a
    destination that speaks first; the child's log names the parent, the parent's log shows the
    child's outgoing connection as its client."""
    parent = start_proxy()
    child = start_proxy(overrides(parent_section("up", f"{LOOPBACK4}:{parent.port}"),
                                  via_over("up")))
    parent.settle()
    child.settle()

    early = b"EARLY-DATA:" + os.urandom(300)
    c = child.client(timeout=10)
    c.connect_request(echo.target(), early=early)
    c.expect_established()
    assert c.recv_exact(len(early)) == early
    ports = local_ports_towards(child.pid, parent.port)
    assert len(ports) == 1, ports
    child_port = ports.pop()
    data = os.urandom(4 * 1024 * 1024)
    got, how = pump(c, data)
    assert how == "eof", how
    assert len(got) == len(data) and sha(got) == sha(data)
    c.close()
    echo.wait_results(1)
    assert echo.results[0]["bytes"] == len(early) + len(data)
    assert echo.results[0]["first_chunk"].startswith(b"EARLY-DATA:")

    line = only_line(child, echo.target())
    assert line["status"] == "200" and line["parent"] == "up", line["_raw"]
    assert line["upstream"] == f"{LOOPBACK4}:{parent.port}", line["_raw"]
    assert int(line["up"]) == len(early) + len(data), line["_raw"]
    assert int(line["down"]) == len(early) + len(data), line["_raw"]
    pline = only_line(parent, echo.target())
    assert pline["client"] == f"{LOOPBACK4}:{child_port}", (pline["_raw"], child_port)
    assert pline["status"] == "200" and "parent" not in pline, pline["_raw"]
    assert pline["upstream"] == f"{LOOPBACK4}:{echo.port}", pline["_raw"]
    assert int(pline["up"]) == int(pline["down"]) == len(early) + len(data), pline["_raw"]

    # A destination that speaks first: its greeting arrives right after our 200.
    greeting = b"220 hello from the destination\r\n"
    g = tcp_server(greeting_echo_handler(greeting))
    c = child.tunnel(g.target())
    assert c.recv_exact(len(greeting)) == greeting
    c.send(b"ping")
    assert c.recv_exact(4) == b"ping"
    c.close()
    gline = only_line(child, g.target())
    assert gline["status"] == "200" and gline["parent"] == "up", gline["_raw"]
    assert int(gline["down"]) == len(greeting) + 4 and int(gline["up"]) == 4, gline["_raw"]
    pline = only_line(parent, g.target())
    assert pline["status"] == "200", pline["_raw"]


def test_tunnels_names_the_parent(start_proxy, fake_parent, echo):
    fp = fake_parent()
    o, aport = admin_section()
    child = start_proxy(overrides(o, parent_section("fp", fp.address), via_over("fp")))
    child.settle()
    c = child.tunnel(echo.target())
    c.send(b"x")
    assert c.recv_exact(1) == b"x"
    r = admin_request(aport, "/tunnels")
    assert r.status == 200, r
    doc = json.loads(r.body)
    mine = [t for t in doc["tunnels"] if t["client"] == f"{LOOPBACK4}:{c.local_addr[1]}"]
    assert len(mine) == 1, doc
    assert mine[0]["parent"] == "fp" and mine[0]["target"] == echo.target(), mine
    assert mine[0]["upstream"] == fp.address, mine
    c.close()
    line = only_line(child, echo.target())
    assert line["parent"] == "fp" and line["status"] == "200", line["_raw"]


# ---- 2. credentials ------------------------------------------------------------------------------


def test_parent_credentials_accepted_and_refused(start_proxy, tmp_path, echo):
    users = write_users(tmp_path / "parent-users", {"pa": make_hash("pa-secret", "$6$")})
    parent = start_proxy({"auth": {"users_file": users}})
    write_private(tmp_path / "good.cred", "pa:pa-secret\n")
    write_private(tmp_path / "bad.cred", "pa:not-the-password\n")
    good = start_proxy(overrides(parent_section("up", f"{LOOPBACK4}:{parent.port}",
                                                credentials_file=str(tmp_path / "good.cred")),
                                 via_over("up")))
    bad = start_proxy(overrides(parent_section("up", f"{LOOPBACK4}:{parent.port}",
                                               credentials_file=str(tmp_path / "bad.cred")),
                                via_over("up")))
    for p in (parent, good, bad):
        p.settle()

    c = good.tunnel(echo.target())
    c.send(b"hello")
    assert c.recv_exact(5) == b"hello"
    good_port = local_ports_towards(good.pid, parent.port)
    c.close()
    line = only_line(good, echo.target())
    assert line["status"] == "200" and line["parent"] == "up", line["_raw"]
    assert line["user"] == "-", line["_raw"]
    pl = parent.log_lines(1, where=lambda x: x["status"] == "200")
    assert len(pl) == 1 and pl[0]["user"] == "pa", [x["_raw"] for x in pl]
    assert pl[0]["client"] in {f"{LOOPBACK4}:{p}" for p in good_port}, (pl[0]["_raw"], good_port)

    c = bad.client()
    c.connect_request(echo.target())
    resp, body, params, raw = refusal(c, 502, "proxy_configuration_error")
    assert params["next-hop"] == "up" and raw["next-hop"] == '"up"', raw
    assert raw["received-status"] == "407", raw
    assert params["details"] == "parent up answered 407", raw
    assert body == b"502 Bad Gateway: parent up answered 407\n"
    line = only_line(bad, echo.target())
    assert line["status"] == "502" and line["reason"] == "parent_refused", line["_raw"]
    assert line["parent"] == "up", line["_raw"]
    pl = parent.log_lines(1, where=lambda x: x["status"] == "407")
    assert len(pl) == 1 and pl[0]["reason"] == "auth_failed" and pl[0]["user"] == "-", pl
    assert "skipped for" not in bad.stderr_text(), "a 407 is not a failure of the parent"
    assert echo.accepts == 1
    for p in (good, bad):
        text = p.stderr_text() + open(p.access_log).read()
        for secret in ("pa-secret", "not-the-password", b64("pa:pa-secret"),
                       b64("pa:not-the-password")):
            assert secret not in text, f"{secret!r} in {p.stderr_path} or its access log"


def test_exact_request_sent_to_the_parent(start_proxy, tmp_path, fake_parent, dns):
    """The fake parent records the head connectd sends: CONNECT, Host, the credentials file's
    Basic value (never the client's Proxy-Authorization), Via with the client's Via first; the
    client's other headers and its early data are not part of it; early data follows the
    parent's 200. The name target is not resolved by connectd."""
    fp = fake_parent(hold_answer=0.3)
    users = write_users(tmp_path / "child-users", {"alice": make_hash("wonderland", "$6$")})
    cred = "corp-user:p4ss w:th colon"
    write_private(tmp_path / "corp.cred", cred + "\n")
    child = start_proxy(overrides(
        {"auth": {"users_file": users}},
        parent_section("corp", fp.address, credentials_file=str(tmp_path / "corp.cred")),
        via_over("corp")))
    child.settle()
    target = "dest.example.test:8443"
    early = b"client-hello-bytes"
    c = child.client()
    c.connect_request(target, extra_headers=basic("alice", "wonderland")
                      + b"Via: 1.0 fred, 1.1 squid.example\r\nUser-Agent: test/1.0\r\n"
                      + b"Proxy-Connection: keep-alive\r\n", early=early)
    c.expect_established()
    assert c.recv_exact(len(early)) == early  # echoed by the fake parent
    c.close()
    fp.wait_results(1)
    rec = fp.results[0]
    line, hdrs = parse_head(rec["head"])
    assert line == f"CONNECT {target} HTTP/1.1", rec["head"]
    names = [k for k, _ in hdrs]
    assert names == ["Host", "Proxy-Authorization", "Via"], rec["head"]
    h = dict(hdrs)
    assert h["Host"] == target
    assert h["Proxy-Authorization"] == "Basic " + b64(cred), rec["head"]
    assert re.fullmatch(r"1\.0 fred, 1\.1 squid\.example, " + VIA_RE, h["Via"]), h["Via"]
    assert rec["before_answer"] == b"", f"sent before the parent's answer: {rec['before_answer']!r}"
    assert dns.queries == [], f"connectd resolved what its parent will: {dns.queries}"
    pseudonym = h["Via"].rsplit(", ", 1)[1]

    # Without a Via from the client: just ours, the same pseudonym.
    c = child.client()
    c.connect_request(target, extra_headers=basic("alice", "wonderland"))
    c.expect_established()
    c.send(b"x")
    assert c.recv_exact(1) == b"x"
    c.close()
    fp.wait_results(2)
    _, hdrs = parse_head(fp.results[1]["head"])
    assert hdrs == [("Host", target), ("Proxy-Authorization", "Basic " + b64(cred)),
                    ("Via", pseudonym)], fp.results[1]["head"]

    lines = child.log_lines(2, where=lambda x: x["target"] == target)
    assert len(lines) == 2, [x["_raw"] for x in lines]
    for x in lines:
        assert x["status"] == "200" and x["user"] == "alice" and x["parent"] == "corp", x["_raw"]
        assert x["upstream"] == fp.address, x["_raw"]
    assert int(lines[0]["up"]) == len(early) and int(lines[0]["down"]) == len(early), lines[0]
    text = child.stderr_text() + open(child.access_log).read()
    for secret in ("p4ss w:th colon", b64(cred), b64("alice:wonderland"), "wonderland"):
        assert secret not in text, f"{secret!r} in connectd's stderr or access log"


def test_parent_without_credentials_sends_none(start_proxy, fake_parent):
    """No credentials_file: no Proxy-Authorization at all, even when the client sent one (and
    connectd itself has no [auth])."""
    fp = fake_parent()
    child = start_proxy(overrides(parent_section("plain", fp.address), via_over("plain")))
    child.settle()
    c = child.client()
    c.connect_request("a.test:443", extra_headers=basic("someone", "their-secret"))
    c.expect_established()
    c.close()
    fp.wait_results(1)
    line, hdrs = parse_head(fp.results[0]["head"])
    assert line == "CONNECT a.test:443 HTTP/1.1"
    assert [k for k, _ in hdrs] == ["Host", "Via"], fp.results[0]["head"]
    assert re.fullmatch(VIA_RE, dict(hdrs)["Via"]), hdrs
    x = only_line(child, "a.test:443")
    assert x["status"] == "200" and x["parent"] == "plain" and x["user"] == "-", x["_raw"]


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nX-Parent: yes\r\n\r\nSERVER-SPOKE-FIRST",
    b"HTTP/1.0 200 Connection established\r\nProxy-agent: fake/1\r\n\r\nSERVER-SPOKE-FIRST",
], ids=["http11_extra_header", "http10"])
def test_parent_200_with_destination_bytes(start_proxy, fake_parent, answer):
    """The parent's 200 (any reason phrase and headers) is replaced by connectd's own exact
    200; bytes that came after the parent's head (the destination spoke first) follow it."""
    fp = fake_parent(answer=answer, after="echo")
    child = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp")))
    child.settle()
    c = child.client()
    c.connect_request("speaks-first.test:25")
    c.expect_established()
    assert c.recv_exact(18) == b"SERVER-SPOKE-FIRST"
    c.send(b"EHLO")
    assert c.recv_exact(4) == b"EHLO"
    c.close()
    x = only_line(child, "speaks-first.test:25")
    assert x["status"] == "200" and x["parent"] == "fp", x["_raw"]
    assert int(x["down"]) == 22 and int(x["up"]) == 4, x["_raw"]


# ---- 3. Squid as the parent ----------------------------------------------------------------------


def test_squid_parent(start_proxy, squid, echo):
    sq = squid([echo.port])
    child = start_proxy(overrides(parent_section("sq", sq.address), via_over("sq")))
    child.settle()
    early = b"early-through-squid"
    c = child.client(timeout=10)
    c.connect_request(echo.target(), early=early)
    c.expect_established()
    assert c.recv_exact(len(early)) == early
    data = os.urandom(2 * 1024 * 1024)
    got, how = pump(c, data, half_close=False, want=len(data))
    assert how == "enough" and sha(got) == sha(data), (how, len(got))
    c.close()
    x = only_line(child, echo.target())
    assert x["status"] == "200" and x["parent"] == "sq", x["_raw"]
    assert x["upstream"] == sq.address, x["_raw"]
    assert int(x["up"]) == int(x["down"]) == len(early) + len(data), x["_raw"]
    lines = sq.access_lines(1)
    assert any("TCP_TUNNEL/200" in s and f"CONNECT {echo.target()}" in s for s in lines), lines

    # Squid refuses a port it does not allow: 403 -> 502 with received-status.
    other = closed_port()
    c = child.client()
    c.connect_request(f"{LOOPBACK4}:{other}")
    _, _, params, raw = refusal(c, 502, "destination_unavailable")
    assert raw["next-hop"] == '"sq"' and raw["received-status"] == "403", raw
    x = only_line(child, f"{LOOPBACK4}:{other}")
    assert x["status"] == "502" and x["reason"] == "parent_refused" and x["parent"] == "sq", x


def test_squid_parent_with_basic_auth(start_proxy, squid, echo, tmp_path):
    if not os.access(SQUID_NCSA, os.X_OK):
        pytest.skip(f"{SQUID_NCSA} missing")
    sq = squid([echo.port], users={"sq-user": make_hash("sq-pass", "$6$")})
    write_private(tmp_path / "sq.cred", "sq-user:sq-pass\n")
    write_private(tmp_path / "sq-bad.cred", "sq-user:wrong\n")
    good = start_proxy(overrides(parent_section("sq", sq.address,
                                                credentials_file=str(tmp_path / "sq.cred")),
                                 via_over("sq")))
    bad = start_proxy(overrides(parent_section("sq", sq.address,
                                               credentials_file=str(tmp_path / "sq-bad.cred")),
                                via_over("sq")))
    c = good.tunnel(echo.target(), timeout=10)
    c.send(b"authed")
    assert c.recv_exact(6) == b"authed"
    c.close()
    x = only_line(good, echo.target())
    assert x["status"] == "200" and x["parent"] == "sq", x["_raw"]
    c = bad.client()
    c.connect_request(echo.target())
    _, _, params, raw = refusal(c, 502, "proxy_configuration_error")
    assert raw["next-hop"] == '"sq"' and raw["received-status"] == "407", raw
    x = only_line(bad, echo.target())
    assert x["status"] == "502" and x["reason"] == "parent_refused" and x["parent"] == "sq", x
    assert any("sq-user" in s and "TCP_TUNNEL/200" in s for s in sq.access_lines(2)), \
        sq.access_lines(2)


# ---- 4. failover and back-off --------------------------------------------------------------------


def connect_lines(p, port):
    """Debug lines for one refused connect attempt to 127.0.0.1:port."""
    return len(re.findall(rf"connect {re.escape(LOOPBACK4)}:{port} for \S+: Connection refused",
                          p.stderr_text()))


@pytest.mark.timing
def test_failover_refused_parent_then_backoff(start_proxy, fake_parent):
    dead = closed_port()
    live = fake_parent(hold_answer=0)
    p = start_proxy(overrides(parent_section("dead", f"{LOOPBACK4}:{dead}", backoff="1s"),
                              parent_section("live", live.address, backoff="1s"),
                              via_over("dead, live")))
    p.settle()
    warn = "parent dead: connection refused; skipped for 1s"

    def through(target):
        c = p.client()
        c.connect_request(target)
        c.expect_established()
        c.send(b"ok")
        assert c.recv_exact(2) == b"ok"
        c.close()
        x = only_line(p, target)
        assert x["status"] == "200" and x["parent"] == "live", x["_raw"]
        assert x["upstream"] == live.address, x["_raw"]

    t0 = time.monotonic()
    through("one.test:443")
    p.wait_log(warn)
    assert connect_lines(p, dead) == 1 and live.accepts == 1

    through("two.test:443")  # within the back-off: dead is not tried
    assert time.monotonic() - t0 < 0.9, "too slow to test within a 1 s back-off"
    assert connect_lines(p, dead) == 1, p.stderr_text()[-2000:]
    assert live.accepts == 2

    time.sleep(max(0, t0 + 1.3 - time.monotonic()))
    through("three.test:443")  # back-off over: dead is tried again, fails, live serves
    assert connect_lines(p, dead) == 2
    p.wait_log(warn, count=2)
    assert live.accepts == 3
    assert "parent live:" not in p.stderr_text()


@pytest.mark.timing
def test_failover_counts_attempts_on_a_failing_parent(start_proxy, fake_parent):
    """A parent that accepts and closes without answering: accepts counted exactly."""
    flaky = fake_parent(answer=None, after="close", hold_answer=0)
    live = fake_parent(hold_answer=0)
    p = start_proxy(overrides(parent_section("flaky", flaky.address, backoff="1s"),
                              parent_section("live", live.address),
                              via_over("flaky, live")))
    p.settle()
    t0 = time.monotonic()
    for i, (want_flaky, want_live) in enumerate([(1, 1), (1, 2)]):
        c = p.tunnel(f"n{i}.test:443")
        c.close()
        assert (flaky.accepts, live.accepts) == (want_flaky, want_live), i
    assert time.monotonic() - t0 < 0.9
    p.wait_log("parent flaky: closed without an answer; skipped for 1s")
    time.sleep(max(0, t0 + 1.3 - time.monotonic()))
    c = p.tunnel("n2.test:443")
    c.close()
    assert (flaky.accepts, live.accepts) == (2, 3)
    for i in range(3):
        x = only_line(p, f"n{i}.test:443")
        assert x["status"] == "200" and x["parent"] == "live", x["_raw"]
    assert len(flaky.results) == 2 and all(r["head"].startswith(b"CONNECT n") for r in
                                           flaky.results), flaky.results


def test_last_choice_is_always_tried(start_proxy):
    a, b = closed_port(), closed_port()
    p = start_proxy(overrides(parent_section("a", f"{LOOPBACK4}:{a}"),
                              parent_section("b", f"{LOOPBACK4}:{b}"),
                              via_over("a, b")))
    p.settle()
    for i in range(2):
        target = f"t{i}.test:443"
        c = p.client()
        c.connect_request(target)
        _, body, params, raw = refusal(c, 502, "connection_refused")
        assert raw["next-hop"] == '"b"', raw
        assert params["details"] == "parent b: connection refused", raw
        assert "received-status" not in raw, raw
        x = only_line(p, target)
        assert x["status"] == "502" and x["reason"] == "parent_error" and x["parent"] == "b", x
    # a was tried once (then in back-off), b, the last choice, both times
    assert connect_lines(p, a) == 1 and connect_lines(p, b) == 2, p.stderr_text()[-2000:]
    text = p.stderr_text()
    assert text.count("parent a: connection refused; skipped for 30s") == 1
    assert text.count("parent b: connection refused; skipped for 30s") == 1


def test_failover_to_direct(start_proxy, echo):
    dead = closed_port()
    p = start_proxy(overrides(parent_section("dead", f"{LOOPBACK4}:{dead}"),
                              via_over("dead, direct")))
    p.settle()
    for i in range(2):
        c = p.tunnel(echo.target())
        c.send(b"direct")
        assert c.recv_exact(6) == b"direct"
        c.close()
        lines = p.log_lines(i + 1, where=lambda x: x["target"] == echo.target())
        x = lines[-1]
        assert x["status"] == "200" and "parent" not in x, x["_raw"]
        assert x["upstream"] == f"{LOOPBACK4}:{echo.port}", x["_raw"]
    assert connect_lines(p, dead) == 1
    assert p.stderr_text().count("parent dead: connection refused; skipped for 30s") == 1


# ---- 5. what a parent may answer -----------------------------------------------------------------

REFUSED = {
    # name: (answer, client status, error, received-status)
    "403": (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", 502,
            "destination_unavailable", 403),
    "407": (b"HTTP/1.1 407 Proxy Authentication Required\r\n"
            b"Proxy-Authenticate: Basic realm=\"x\"\r\nContent-Length: 0\r\n\r\n", 502,
            "proxy_configuration_error", 407),
    "500": (b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n", 502,
            "destination_unavailable", 500),
    "502": (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n", 502,
            "destination_unavailable", 502),
    "504": (b"HTTP/1.1 504 Gateway Timeout\r\nContent-Length: 0\r\n\r\n", 504,
            "connection_timeout", 504),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_parent_refusal_is_passed_on_without_failover(start_proxy, fake_parent, tcp_server,
                                                      name):
    """A non-2xx answer is the parent's decision about this destination: no failover (direct is
    not tried, though it is next in via), no back-off."""
    answer, status, error, got = REFUSED[name]
    fp = fake_parent(answer=answer, after="hold", hold_answer=0)
    direct = tcp_server(echo_handler)
    p = start_proxy(overrides(parent_section("p", fp.address), via_over("p, direct")))
    p.settle()
    for i in range(2):
        c = p.client()
        c.connect_request(direct.target())
        resp, body, params, raw = refusal(c, status, error)
        assert raw["next-hop"] == '"p"' and raw["received-status"] == str(got), raw
        assert params["details"] == f"parent p answered {got}", raw
        lines = p.log_lines(i + 1, where=lambda x: x["target"] == direct.target())
        x = lines[-1]
        assert x["status"] == str(status) and x["reason"] == "parent_refused", x["_raw"]
        assert x["parent"] == "p", x["_raw"]
    assert fp.accepts == 2, "a refusal put the parent in back-off"
    assert direct.accepts == 0, "failed over after a refusal"
    assert "skipped for" not in p.stderr_text()
    res = fp.wait_results(2)
    assert all("peer_closed" in r for r in res), res  # connectd closed its parent connection


FAILURES = {
    # name: (how to set up the parent, client status, error, details after "parent p: ")
    "garbage": ("answer", b"hello\r\n\r\n", 502, "http_protocol_error", None),
    "not_http": ("answer", b"SSH-2.0-OpenSSH_9.2\r\n\r\n", 502, "http_protocol_error", None),
    "closes_without_answer": ("answer", None, 502, "http_response_incomplete",
                              "closed without an answer"),
    "closes_mid_answer": ("answer", b"HTTP/1.1 200 Connection established\r\n", 502,
                          "http_response_incomplete", "closed without an answer"),
    "head_too_long": ("answer", b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 9000 + b"\r\n\r\n",
                      502, "http_protocol_error", None),
    "never_answers": ("silent", None, 504, "http_response_timeout", "no answer in time"),
    "refused": ("refused", None, 502, "connection_refused", "connection refused"),
    "connect_hangs": ("blackhole", None, 504, "connection_timeout", "connect timed out"),
    "name_nxdomain": ("nxdomain", None, 502, "dns_error", None),
}


@pytest.mark.parametrize("name", sorted(FAILURES))
def test_parent_failure_single_route(start_proxy, fake_parent, name):
    """Via one parent only: each failure is the final answer, with next-hop and the details."""
    kind, answer, status, error, details = FAILURES[name]
    bh = None
    fp = None
    if kind == "answer":
        fp = fake_parent(answer=answer, after="close" if answer is None or b"\r\n\r\n" not in
                         answer else "hold", hold_answer=0)
        address = fp.address
    elif kind == "silent":
        fp = fake_parent(answer=None, after="hold", hold_answer=0)
        address = fp.address
    elif kind == "refused":
        address = f"{LOOPBACK4}:{closed_port()}"
    elif kind == "blackhole":
        bh = Blackhole()
        if not bh.verify():
            bh.close()
            pytest.skip("could not make a hanging connect on loopback")
        address = f"{LOOPBACK4}:{bh.port}"
    else:
        address = "nx.test:3128"
    try:
        p = start_proxy(overrides(parent_section("p", address, connect_timeout="1s"),
                                  via_over("p")))
        p.settle()
        target = "dest.test:443"
        c = p.client(timeout=6)
        t0 = time.monotonic()
        c.connect_request(target)
        resp, body, params, raw = refusal(c, status, error, timeout=6)
        elapsed = time.monotonic() - t0
    finally:
        if bh:
            bh.close()
    assert raw["next-hop"] == '"p"', raw
    assert "received-status" not in raw, raw
    d = params["details"]
    assert d.startswith("parent p: "), raw
    if details is not None:
        assert d == f"parent p: {details}", raw
    assert body == f"{status} {resp.reason}: {d}\n".encode(), body
    if status == 504:
        assert 0.8 < elapsed < 3.0, elapsed
    else:
        assert elapsed < 1.0, elapsed
    x = only_line(p, target)
    assert x["status"] == str(status) and x["reason"] == "parent_error", x["_raw"]
    assert x["parent"] == "p", x["_raw"]
    p.wait_log(f"{d}; skipped for 30s")
    if fp is not None:
        fp.wait_results(1)
        assert fp.results[0]["head"].startswith(b"CONNECT dest.test:443 HTTP/1.1\r\n")


# ---- 6. loops ------------------------------------------------------------------------------------


@pytest.mark.timing
def test_two_connectd_parents_of_each_other(start_proxy, echo):
    """A -> B -> A: A sees its own pseudonym in Via and refuses (proxy_loop); the refusal comes
    back down the chain at once, without a hang."""
    pa, pb = free_port(), free_port()
    a = start_proxy(overrides(parent_section("b", f"{LOOPBACK4}:{pb}"), via_over("b")),
                    listen=f"{LOOPBACK4}:{pa}")
    b = start_proxy(overrides(parent_section("a", f"{LOOPBACK4}:{pa}"), via_over("a")),
                    listen=f"{LOOPBACK4}:{pb}")
    a.settle()
    b.settle()
    c = a.client()
    t0 = time.monotonic()
    c.connect_request(echo.target())
    resp = c.read_head(3)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, elapsed
    assert resp.status == 502, resp
    _, params, raw = parse_proxy_status(resp.header("Proxy-Status"))
    c.close()
    assert echo.accepts == 0
    # B's request, as seen by A, carried A's pseudonym: refused there as a loop
    loop = a.log_lines(1, where=lambda x: x["reason"] == "proxy_loop" and x["rule"] == "loop")
    assert len(loop) == 1 and loop[0]["status"] == "502", loop
    assert not b.log_lines(0, where=lambda x: x["rule"] == "loop"), "B saw its own Via"
    assert loop[0]["target"] == echo.target() and "parent" not in loop[0], loop[0]["_raw"]
    # B got A's loop refusal (Proxy-Status error=proxy_loop_detected) from its parent and kept
    # that meaning; so did A, from B: the client is told it is a loop, and where it broke.
    bl = only_line(b, echo.target())
    assert bl["status"] == "502" and bl["reason"] == "proxy_loop", bl["_raw"]
    assert bl["parent"] == "a", bl["_raw"]
    outer = a.log_lines(2, where=lambda x: x["target"] == echo.target())
    outer = [x for x in outer if "parent" in x]
    assert len(outer) == 1 and outer[0]["parent"] == "b", outer
    assert outer[0]["status"] == "502" and outer[0]["reason"] == "proxy_loop", outer[0]["_raw"]
    assert params["error"] == "proxy_loop_detected", raw
    assert raw["next-hop"] == '"b"' and raw["received-status"] == "502", raw
    assert params["details"] == "parent b answered 502", raw


def test_parent_that_is_this_proxy(start_proxy):
    port = free_port()
    a = start_proxy(overrides(parent_section("self", f"{LOOPBACK4}:{port}"), via_over("self")),
                    listen=f"{LOOPBACK4}:{port}")
    a.settle()
    c = a.client()
    c.connect_request("x.test:443")
    _, _, params, raw = refusal(c, 502, "proxy_loop_detected")
    assert raw["next-hop"] == '"self"', raw
    x = a.log_lines(1, where=lambda x: x["target"] == "x.test:443")
    assert x[-1]["status"] == "502" and x[-1]["reason"] == "proxy_loop", x[-1]["_raw"]


# ---- 7. policy rules' via, deny_private and CIDR lists through a parent --------------------------


def test_policy_rule_via(start_proxy, fake_parent, tmp_path, dns, echo):
    p1 = fake_parent()
    dead = closed_port()
    dns.set("other.test", [LOOPBACK4])
    (tmp_path / "policy.yaml").write_text(f"""rules:
  - name: corp-via-p1
    hosts: ["*.corp.test"]
    via: [p1]
    action: allow
  - name: lab-fallback
    hosts: ["*.lab.test", "other.test"]
    ports: [{echo.port}]
    via: [dead, direct]
    action: allow
""")
    dns.set("box.lab.test", [LOOPBACK4])
    p = start_proxy(overrides(parent_section("p1", p1.address),
                              parent_section("dead", f"{LOOPBACK4}:{dead}"),
                              {"access": {"policy": str(tmp_path / "policy.yaml"),
                                          "via": "direct"}}))
    p.settle()

    c = p.tunnel("app.corp.test:443")
    c.send(b"corp")
    assert c.recv_exact(4) == b"corp"
    c.close()
    p1.wait_results(1)
    assert p1.results[0]["head"].startswith(b"CONNECT app.corp.test:443 HTTP/1.1\r\n")
    assert dns.queried("app.corp.test") == [], "connectd resolved a name its parent resolves"
    x = only_line(p, "app.corp.test:443")
    assert x["status"] == "200" and x["parent"] == "p1" and x["rule"] == "corp-via-p1", x

    # no rule: proxy.ini's via (direct)
    t = f"127.0.0.1:{echo.port}"
    c = p.tunnel(t)
    c.close()
    x = only_line(p, t)
    assert x["status"] == "200" and "parent" not in x and x["rule"] == "allow_hosts", x["_raw"]

    # a rule whose parent is dead falls back to direct
    t = f"box.lab.test:{echo.port}"
    c = p.tunnel(t)
    c.send(b"lab")
    assert c.recv_exact(3) == b"lab"
    c.close()
    x = only_line(p, t)
    assert x["status"] == "200" and "parent" not in x and x["rule"] == "lab-fallback", x["_raw"]
    assert x["upstream"] == f"{LOOPBACK4}:{echo.port}", x["_raw"]
    assert p1.accepts == 1
    p.wait_log("parent dead: connection refused; skipped for 30s")


def test_deny_private_with_a_parent_name_target(start_proxy, fake_parent, dns):
    """Routed to a parent, a name is not resolved here, so deny_private cannot apply to it."""
    fp = fake_parent()
    dns.set("intranet.test", ["10.1.2.3"])
    p = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp"),
                              {"access": {"deny_private": "yes"}}))
    p.settle()
    c = p.tunnel("intranet.test:443")
    c.close()
    x = only_line(p, "intranet.test:443")
    assert x["status"] == "200" and x["parent"] == "fp", x["_raw"]
    assert dns.queried("intranet.test") == []
    assert fp.accepts == 1


@pytest.mark.parametrize("target", ["10.1.2.3:443", "127.0.0.1:443", "[::1]:443",
                                    "169.254.169.254:443"])
def test_deny_private_with_a_parent_ip_literal(start_proxy, fake_parent, target):
    """An IP-literal target through a parent still gets deny_private (README: "deny_private
    applies to IP-literal targets only"); the parent is not asked."""
    fp = fake_parent()
    p = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp"),
                              {"access": {"deny_private": "yes"}}))
    p.settle()
    c = p.client()
    c.connect_request(target)
    check_refusal(c, 403, "destination_ip_prohibited")
    x = only_line(p, target)
    assert x["status"] == "403" and x["reason"] == "denied_private", x["_raw"]
    time.sleep(0.1)
    assert fp.accepts == 0, "the parent was asked for a private IP literal"


def test_cidr_lists_with_a_parent(start_proxy, fake_parent, dns):
    """allow_hosts with CIDR only: an IP literal inside passes to the parent, one outside is
    refused, and a name (which only the parent resolves) cannot be judged: 403."""
    fp = fake_parent()
    dns.set("inside.test", ["192.0.2.7"])
    p = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp"),
                              {"access": {"allow_hosts": "192.0.2.0/24"}}))
    p.settle()
    c = p.tunnel("192.0.2.7:443")
    c.close()
    x = only_line(p, "192.0.2.7:443")
    assert x["status"] == "200" and x["parent"] == "fp", x["_raw"]
    for target in ("198.51.100.1:443", "inside.test:443"):
        c = p.client()
        c.connect_request(target)
        check_refusal(c, 403, "http_request_denied")
        x = only_line(p, target)
        assert x["status"] == "403" and x["reason"] == "denied_host", x["_raw"]
    assert dns.queried("inside.test") == []
    assert fp.accepts == 1


# ---- more edges of the parent's answer -----------------------------------------------------------


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.0 200 \r\n\r\n",
    b"HTTP/1.1 200 Connection established\r\n\r\n",
    b"HTTP/1.1 200 Connection established\r\nVia: 1.1 parent\r\nX-Pad: " + b"p" * 3000
    + b"\r\n\r\n",
], ids=["short_head", "shortest_head", "same_length_as_ours", "long_head"])
def test_parent_200_followed_by_much_destination_data(start_proxy, fake_parent, head):
    """The parent sends its 200 and, in the same write, 64 KiB the destination sent first
    (more than fits with the answer in connectd's 8 KiB answer buffer): the client gets
    connectd's 200, then every byte, in order."""
    first = os.urandom(65536)
    fp = fake_parent(answer=head + first, after="echo")
    child = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp")))
    child.settle()
    c = child.client()
    c.connect_request("banner.test:443")
    c.expect_established()
    got = c.recv_exact(len(first))
    assert sha(got) == sha(first), "the destination's first bytes were damaged"
    c.send(b"after")
    assert c.recv_exact(5) == b"after"
    c.close()
    x = only_line(child, "banner.test:443")
    assert x["status"] == "200" and x["parent"] == "fp", x["_raw"]
    assert int(x["down"]) == len(first) + 5 and int(x["up"]) == 5, x["_raw"]


def test_parent_answer_in_single_bytes(start_proxy, fake_parent):
    """An answer that trickles in a byte at a time is still one answer."""
    answer = b"HTTP/1.1 200 Connection established\r\nX-Slow: 1\r\n\r\nHI"
    fp = fake_parent(answer=answer, after="echo", chunk=1)
    child = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp")))
    child.settle()
    c = child.client()
    c.connect_request("slow.test:443")
    c.expect_established()
    assert c.recv_exact(2) == b"HI"
    c.close()
    x = only_line(child, "slow.test:443")
    assert x["status"] == "200" and x["parent"] == "fp", x["_raw"]


def test_client_gone_while_the_parent_thinks(start_proxy, fake_parent):
    """The client hangs up before the parent answers: connectd closes its parent connection at
    once, logs the attempt with the parent, and the parent is not put in back-off."""
    fp = fake_parent(answer=None, after="hold", hold_answer=0)
    child = start_proxy(overrides(parent_section("fp", fp.address, connect_timeout="5s"),
                                  via_over("fp")))
    child.settle()
    c = child.client()
    c.connect_request("gone.test:443")
    fp.wait_accepts(1)
    time.sleep(0.2)
    t0 = time.monotonic()
    c.close()
    res = fp.wait_results(1, timeout=3)
    assert "peer_closed" in res[0] and res[0]["peer_closed"] - t0 < 1.0, res
    x = only_line(child, "gone.test:443")
    assert x["parent"] == "fp" and x["status"] == "0", x["_raw"]
    assert "skipped for" not in child.stderr_text()


def test_client_data_while_the_parent_thinks(start_proxy, fake_parent):
    """Bytes the client sends after its CONNECT, in separate writes while the parent has not
    answered yet, are held back and follow the parent's 200, in order."""
    fp = fake_parent(hold_answer=0.5)
    child = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp")))
    child.settle()
    c = child.client()
    c.connect_request("held.test:443", early=b"one,")
    time.sleep(0.1)
    c.send(b"two,")
    time.sleep(0.1)
    c.send(b"three")
    c.expect_established()
    assert c.recv_exact(13) == b"one,two,three"
    c.close()
    res = fp.wait_results(1)
    assert res[0]["before_answer"] == b"", res[0]
    assert res[0]["echoed"] == 13, res[0]


def test_parent_200_bytes_then_close(start_proxy, fake_parent):
    """The parent's 200, the destination's last words and the close all arrive together: the
    client gets connectd's 200, the bytes, then EOF."""
    fp = fake_parent(answer=b"HTTP/1.1 200 Connection established\r\n\r\nBYE\r\n", after="close",
                     hold_answer=0)
    p = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp")))
    p.settle()
    c = p.client()
    c.connect_request("short.test:443")
    c.expect_established()
    data, how = c.read_until_close(5)
    assert data == b"BYE\r\n" and how == "eof", (data, how)
    c.close()
    x = only_line(p, "short.test:443")
    assert x["status"] == "200" and x["parent"] == "fp" and x["down"] == "5", x["_raw"]


def test_reload_replaces_parents(start_proxy, fake_parent):
    """SIGHUP with a new set of parents: new tunnels use the new one; a tunnel opened through a
    parent that the new config no longer has keeps working and is logged with its parent."""
    old = fake_parent()
    new = fake_parent()
    child = start_proxy(overrides(parent_section("old", old.address), via_over("old")))
    child.settle()
    t1 = child.tunnel("kept.test:443")
    t1.send(b"before")
    assert t1.recv_exact(6) == b"before"
    text = child.config_text.replace("[parent old]", "[parent new]")
    text = text.replace(f"address = {old.address}", f"address = {new.address}")
    text = text.replace("via = old", "via = new")
    assert "[parent new]" in text and "via = new" in text, text
    child.rewrite_config(text=text)
    child.signal(signal.SIGHUP)
    child.wait_log("reloaded")
    t2 = child.tunnel("fresh.test:443")
    t2.send(b"fresh")
    assert t2.recv_exact(5) == b"fresh"
    t1.send(b"after")
    assert t1.recv_exact(5) == b"after"
    t1.close()
    t2.close()
    assert old.accepts == 1 and new.accepts == 1
    x = only_line(child, "kept.test:443")
    assert x["status"] == "200" and x["parent"] == "old", x["_raw"]
    x = only_line(child, "fresh.test:443")
    assert x["status"] == "200" and x["parent"] == "new", x["_raw"]


# ---- the parent's own name and addresses ---------------------------------------------------------


# connectd's own [timeouts] dns timer is the hard limit of a lookup; c-ares' retries (at least
# 100 ms + 200 ms) normally end at about the same time, so either may report the timeout first.
# With dns = 150ms the tunnel's timer always fires first (c-ares would need 300 ms); with 400ms
# it is a race. Both must make the parent count as failed.
UNANSWERED_TRIES = 3


@pytest.mark.timing
@pytest.mark.parametrize("dns_timeout", ["150ms", "400ms"])
def test_parent_name_unanswered_fails_over(start_proxy, dns, echo, dns_timeout):
    """The parent's name gets no DNS answer: within [timeouts] dns the parent counts as failed
    (logged, back-off) and the next choice (direct) serves the request."""
    dns.drop.add("hang.test")
    dns.set("dest.test", [LOOPBACK4])
    p = start_proxy(overrides(parent_section("h", "hang.test:3128", backoff="1ms"),
                              via_over("h, direct"), {"timeouts": {"dns": dns_timeout}}))
    p.settle()
    target = f"dest.test:{echo.port}"
    got = []
    for i in range(UNANSWERED_TRIES):
        c = p.client(timeout=6)
        t0 = time.monotonic()
        c.connect_request(target)
        head = c.read_head(6)
        elapsed = time.monotonic() - t0
        got.append((head.status, head.header("Proxy-Status")))
        if head.status == 200:
            assert head.raw_head == SUCCESS_REPLY
            c.send(b"dns")
            assert c.recv_exact(3) == b"dns"
            assert 0.1 < elapsed < 2.0, elapsed
        c.close()
        p.log_lines(i + 1, where=lambda x: x["target"] == target)
    assert all(s == 200 for s, _ in got), got
    for x in p.log_lines(UNANSWERED_TRIES, where=lambda x: x["target"] == target):
        assert x["status"] == "200" and "parent" not in x, x["_raw"]
        assert x["upstream"] == f"{LOOPBACK4}:{echo.port}", x["_raw"]
    p.wait_log("parent h: ")
    assert "; skipped for 0s" in p.stderr_text()


@pytest.mark.timing
@pytest.mark.parametrize("dns_timeout", ["150ms", "400ms"])
def test_parent_name_unanswered_single_route(start_proxy, dns, dns_timeout):
    """Via that parent only: 504 dns_timeout naming the parent (next-hop), every time."""
    dns.drop.add("hang.test")
    p = start_proxy(overrides(parent_section("h", "hang.test:3128"), via_over("h"),
                              {"timeouts": {"dns": dns_timeout}}))
    p.settle()
    got = []
    for i in range(UNANSWERED_TRIES):
        target = f"dest{i}.test:443"
        c = p.client(timeout=6)
        c.connect_request(target)
        resp, _, _, raw = refusal(c, 504, "dns_timeout", timeout=6)
        x = only_line(p, target)
        got.append((raw.get("next-hop"), raw.get("details"), x["reason"], x.get("parent")))
    want = ('"h"', None, "parent_error", "h")
    assert all(g[0] == want[0] and g[1].startswith('"parent h: ') and g[2:] == want[2:]
               for g in got), got


@pytest.mark.parametrize("form", ["ipv4", "ipv6", "name", "name_two_addresses"])
def test_parent_address_forms(start_proxy, dns, tcp_server, form):
    """address = IPv4 literal, [IPv6] literal, a name (resolved by connectd through [dns]), a
    name with two addresses of which the first refuses (the next address is dialed)."""
    if form == "ipv6" and not have_ipv6():
        pytest.skip("no IPv6 loopback")
    host = "::1" if form == "ipv6" else LOOPBACK4
    fp = tcp_server(fake_parent_handler(hold_answer=0), host=host)
    if form == "ipv4":
        address = f"{LOOPBACK4}:{fp.port}"
    elif form == "ipv6":
        address = f"[::1]:{fp.port}"
    elif form == "name":
        dns.set("parent.test", [LOOPBACK4])
        address = f"parent.test:{fp.port}"
    else:
        dns.set("parent.test", ["127.0.0.9", LOOPBACK4])  # nothing listens on 127.0.0.9
        address = f"parent.test:{fp.port}"
    p = start_proxy(overrides(parent_section("fp", address), via_over("fp")))
    p.settle()
    c = p.tunnel("dest.test:443")
    c.send(b"form")
    assert c.recv_exact(4) == b"form"
    c.close()
    x = only_line(p, "dest.test:443")
    assert x["status"] == "200" and x["parent"] == "fp", x["_raw"]
    want = f"[::1]:{fp.port}" if form == "ipv6" else f"{LOOPBACK4}:{fp.port}"
    assert x["upstream"] == want, x["_raw"]
    assert "skipped for" not in p.stderr_text()
    assert dns.queried("dest.test") == []


def test_ipv6_literal_target_through_parent(start_proxy, fake_parent):
    fp = fake_parent()
    p = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp")))
    p.settle()
    c = p.tunnel("[2001:db8::1]:8443")
    c.close()
    fp.wait_results(1)
    line, hdrs = parse_head(fp.results[0]["head"])
    assert line == "CONNECT [2001:db8::1]:8443 HTTP/1.1", line
    assert hdrs[0] == ("Host", "[2001:db8::1]:8443"), hdrs
    x = only_line(p, "[2001:db8::1]:8443")
    assert x["status"] == "200" and x["parent"] == "fp", x["_raw"]


def test_credentials_file_with_crlf(start_proxy, tmp_path, fake_parent):
    fp = fake_parent()
    (tmp_path / "crlf.cred").write_bytes(b"win-user:win-pass\r\n")
    (tmp_path / "crlf.cred").chmod(0o600)
    p = start_proxy(overrides(parent_section("fp", fp.address,
                                             credentials_file=str(tmp_path / "crlf.cred")),
                              via_over("fp")))
    p.settle()
    c = p.tunnel("a.test:443")
    c.close()
    fp.wait_results(1)
    _, hdrs = parse_head(fp.results[0]["head"])
    assert dict(hdrs)["Proxy-Authorization"] == "Basic " + b64("win-user:win-pass"), hdrs


def test_much_early_data_through_parent(start_proxy, fake_parent):
    """100 KiB sent right behind the CONNECT (far more than the request buffer): nothing reaches
    the parent before its 200, then all of it, in order."""
    fp = fake_parent(hold_answer=0.3)
    p = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp")))
    p.settle()
    early = os.urandom(100 * 1024)
    c = p.client(timeout=10)
    c.connect_request("bulk.test:443", early=early)
    c.expect_established()
    got = c.recv_exact(len(early), timeout=10)
    assert sha(got) == sha(early)
    c.close()
    res = fp.wait_results(1)
    assert res[0]["before_answer"] == b"", len(res[0]["before_answer"])
    assert res[0]["echoed"] == len(early)


# ---- Via loop detection on one instance ----------------------------------------------------------


def learn_pseudonym(p, fp, target="learn.test:443"):
    c = p.tunnel(target)
    c.close()
    fp.wait_results(1)
    _, hdrs = parse_head(fp.results[0]["head"])
    via = dict(hdrs)["Via"]
    assert re.fullmatch(VIA_RE, via), via
    return via[4:]  # "connectd-<hex>"


@pytest.mark.parametrize("via_lines", [
    "Via: 1.1 {me}\r\n",
    "Via: 1.0 a, 1.1 {me}, 1.1 b\r\n",
    "via: HTTP/1.1 {me}\r\n",
    "Via: 1.1 other\r\nVIA: 1.1 {me}\r\n",
], ids=["alone", "in_the_middle", "lowercase_name", "second_line"])
def test_own_pseudonym_in_via_is_a_loop(start_proxy, fake_parent, via_lines):
    fp = fake_parent()
    p = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp")))
    p.settle()
    me = learn_pseudonym(p, fp)
    c = p.client()
    c.connect_request("loop.test:443", extra_headers=via_lines.format(me=me).encode())
    _, body, params, raw = refusal(c, 502, "proxy_loop_detected")
    assert "next-hop" not in raw, raw
    x = only_line(p, "loop.test:443")
    assert x["status"] == "502" and x["reason"] == "proxy_loop" and x["rule"] == "loop", x
    assert "parent" not in x, x["_raw"]
    assert fp.accepts == 1, "the loop went on to the parent"


def test_other_pseudonym_in_via_is_not_a_loop(start_proxy, fake_parent):
    fp = fake_parent()
    p = start_proxy(overrides(parent_section("fp", fp.address), via_over("fp")))
    p.settle()
    me = learn_pseudonym(p, fp)
    other = "connectd-" + ("0123456789abcdef" if me[-16:] != "0123456789abcdef"
                           else "fedcba9876543210")
    c = p.client()
    c.connect_request("noloop.test:443", extra_headers=f"Via: 1.1 {other}\r\n".encode())
    c.expect_established()
    c.close()
    fp.wait_results(2)
    _, hdrs = parse_head(fp.results[1]["head"])
    assert dict(hdrs)["Via"] == f"1.1 {other}, 1.1 {me}", hdrs


# ---- config errors -------------------------------------------------------------------------------

BASE_INI = """[server]
listen = 127.0.0.1:3128
user = root

[dns]
servers = 127.0.0.1:53

[log]
access_log = off
"""


def check_config(cli, tmp_path, text):
    path = tmp_path / "proxy.ini"
    path.write_text(text)
    r = cli("-t", "-c", str(path))
    return r, str(path)


def line_of(text, needle, nth=1):
    n = 0
    for i, line in enumerate(text.split("\n")):
        if line.strip() == needle:
            n += 1
            if n == nth:
                return i + 1
    raise AssertionError(f"{needle!r} not in config")


def test_config_with_parents_is_valid(cli, tmp_path):
    write_private(tmp_path / "c.cred", "u:p\n")
    text = BASE_INI + f"""
[parent corp]
address = proxy.corp.test:3128
credentials_file = {tmp_path}/c.cred
connect_timeout = 2s
backoff = 10s

[parent backup]
address = 127.0.0.1:8080

[access]
via = corp, backup, direct
"""
    r, _ = check_config(cli, tmp_path, text)
    assert r.returncode == 0, r.err


@pytest.mark.parametrize("case", [
    "unknown_via", "no_address", "duplicate", "named_direct", "unknown_key", "bad_address",
    "bad_backoff", "missing_credentials", "credentials_without_colon", "empty_via"])
def test_config_errors(cli, tmp_path, case):
    write_private(tmp_path / "nocolon.cred", "justauser\n")
    parts = {
        "unknown_via": ("[parent corp]\naddress = 127.0.0.1:3129\n\n[access]\nvia = corp, nope\n",
                        "via = corp, nope", 1,
                        "[access] via: 'nope' is neither direct nor a [parent NAME] section"),
        "no_address": ("[parent corp]\nbackoff = 5s\n\n[access]\nvia = corp\n",
                       "[parent corp]", 1, "[parent corp]: needs an address"),
        "duplicate": ("[parent corp]\naddress = 127.0.0.1:1\n\n[parent corp]\naddress = "
                      "127.0.0.1:2\n", "[parent corp]", 2,
                      "[parent corp]: already defined on line"),
        "named_direct": ("[parent direct]\naddress = 127.0.0.1:1\n", "[parent direct]", 1,
                         "[parent direct]: a parent's name"),
        "unknown_key": ("[parent corp]\naddress = 127.0.0.1:1\npasword = x\n", "pasword = x", 1,
                        "[parent corp] pasword: unknown key"),
        "bad_address": ("[parent corp]\naddress = 127.0.0.1\n", "address = 127.0.0.1", 1,
                        "[parent corp] address: must be host:port"),
        "bad_backoff": ("[parent corp]\naddress = 127.0.0.1:1\nbackoff = soon\n", "backoff = soon",
                        1, "[parent corp] backoff:"),
        "missing_credentials": (f"[parent corp]\naddress = 127.0.0.1:1\ncredentials_file = "
                                f"{tmp_path}/absent.cred\n",
                                f"credentials_file = {tmp_path}/absent.cred", 1,
                                "[parent corp] credentials_file:"),
        "credentials_without_colon": (f"[parent corp]\naddress = 127.0.0.1:1\ncredentials_file ="
                                      f" {tmp_path}/nocolon.cred\n",
                                      f"credentials_file = {tmp_path}/nocolon.cred", 1,
                                      "expected one line 'user:password'"),
        "empty_via": ("[access]\nvia = ,\n", "via = ,", 1, "[access] via:"),
    }
    extra, needle, nth, msg = parts[case]
    text = BASE_INI + "\n" + extra
    r, path = check_config(cli, tmp_path, text)
    assert r.returncode == 1, (r.returncode, r.err, text)
    line = line_of(text, needle, nth)
    assert f"{path}:{line}: " in r.err, (line, r.err, text)
    assert msg in r.err, r.err


@pytest.mark.parametrize("policy,msg", [
    ("rules:\n  - name: r1\n    hosts: [a.test]\n    via: [corp]\n    action: deny\n",
     ":2:5: a deny rule has no via"),
    ("rules:\n  - name: r1\n    hosts: [a.test]\n    via: [ghost]\n    action: allow\n",
     "rule r1: via: 'ghost' is neither direct nor a [parent NAME] section"),
    ("rules:\n  - name: r1\n    hosts: [a.test]\n    via: [\"bad name\"]\n    action: allow\n",
     ":4:11: via: bad name 'bad name'"),
], ids=["via_on_deny", "unknown_parent", "bad_name"])
def test_policy_via_errors(cli, tmp_path, policy, msg):
    pf = tmp_path / "policy.yaml"
    pf.write_text(policy)
    text = BASE_INI + f"\n[parent corp]\naddress = 127.0.0.1:1\n\n[access]\npolicy = {pf}\n"
    r, path = check_config(cli, tmp_path, text)
    assert r.returncode == 1, r.err
    assert msg in r.err, r.err
    if msg.startswith(":"):
        assert f"{pf}{msg}" in r.err, r.err
    else:
        assert f"{path}:{line_of(text, f'policy = {pf}')}: [access] policy: {pf}: " in r.err, r.err


def test_credentials_file_readable_by_others_is_refused(connectd_bin, tmp_path):
    """The parent's password must not be readable by other users: connectd -t names the file."""
    cred = tmp_path / "open.cred"
    cred.write_text("u:p\n")
    cred.chmod(0o644)
    ini = tmp_path / "p.ini"
    ini.write_text("[parent p]\naddress = 127.0.0.1:3128\ncredentials_file = open.cred\n")
    r = subprocess.run([connectd_bin, "-t", "-c", str(ini)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 1, r
    assert (f"{ini}:3: [parent p] credentials_file: {cred}: other users may read it (mode 0644): "
            "chmod o-rwx") in r.stderr, r.stderr
    cred.chmod(0o600)
    r = subprocess.run([connectd_bin, "-t", "-c", str(ini)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0, r
