"""Tunnels that succeed: curl over TLS, exact 200 reply, early data, half-close, idle timer,
resets, backpressure, the shipped defaults, and names resolved through the test's DNS."""

import hashlib
import os
import socket
import time

import pytest

from conftest import SHIPPED_CONFIG, both_transports
from netutil import SUCCESS_REPLY, check_refusal, have_ipv6, sha256
from servers import (
    Blackhole,
    echo_handler,
    greeting_echo_handler,
    hold_handler,
    reset_after_handler,
    send_then_shutdown_handler,
    sink_handler,
    slow_reader_source_handler,
)
from tlsfix import curl


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- curl + TLS ----------------------------------------------------------------------------


def test_curl_10mb_over_tls(start_proxy, tls_server, certs, docroot, tmp_path):
    srv = tls_server()
    p = start_proxy()
    out = tmp_path / "big.out"
    r = curl(["-sS", "--max-time", "60", "--cacert", certs.ca, "-x", f"http://127.0.0.1:{p.port}",
              f"https://localhost:{srv.port}/big.bin", "-o", str(out)])
    assert r.returncode == 0, f"curl failed ({r.returncode}): {r.stderr.decode()}"
    assert out.stat().st_size == docroot["big_size"]
    assert file_sha256(out) == docroot["big_sha256"]
    [line] = p.log_lines(1)
    assert line["status"] == "200" and line["target"] == f"localhost:{srv.port}"
    assert line["upstream"] == f"127.0.0.1:{srv.port}"
    # TLS overhead makes the counts larger than the file; the download dominates.
    assert int(line["down"]) > docroot["big_size"] and int(line["up"]) > 0
    assert int(line["up"]) < 1024 * 1024


def test_curl_small_file_verbose_reply(start_proxy, tls_server, certs):
    """curl's view of the CONNECT reply: exactly 'HTTP/1.1 200 Connection established' and no
    Content-Length / Transfer-Encoding in the proxy's response."""
    srv = tls_server()
    p = start_proxy()
    r = curl(["-sS", "-v", "--max-time", "20", "--cacert", certs.ca, "-x",
              f"http://127.0.0.1:{p.port}", f"https://localhost:{srv.port}/hello.txt"])
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"hello through the tunnel\n"
    err = r.stderr.decode(errors="replace")
    assert "< HTTP/1.1 200 Connection established" in err, err
    head = err.split("< HTTP/1.1 200 Connection established", 1)[1].split("* CONNECT phase completed")[0]
    assert "Content-Length" not in head and "Transfer-Encoding" not in head, head


def _shipped_text():
    if not os.path.exists(SHIPPED_CONFIG):
        pytest.fail(f"the shipped config {SHIPPED_CONFIG} does not exist")
    with open(SHIPPED_CONFIG) as f:
        return f.read()


def test_shipped_defaults_refuse_port(start_proxy, tcp_server, certs):
    """Shipped proxy.ini with only listen changed (and DNS pointed at the test responder so no
    query can leave the machine): port != 443 is refused with 403 and never dialed."""
    srv = tcp_server(hold_handler)
    p = start_proxy(base_text=_shipped_text())
    r = curl(["-sS", "--max-time", "10", "--cacert", certs.ca, "-x", f"http://127.0.0.1:{p.port}",
              f"https://localhost:{srv.port}/big.bin", "-o", os.devnull])
    assert r.returncode != 0
    assert b"403" in r.stderr, r.stderr
    c = p.client()
    c.connect_request(f"localhost:{srv.port}")
    check_refusal(c, 403, "http_request_denied")
    time.sleep(0.2)
    assert srv.accepts == 0


def test_shipped_defaults_refuse_private_destination(start_proxy, tcp_server, certs):
    """Shipped proxy.ini + allow_ports = the server's port: localhost is loopback, deny_private
    is yes, so 403 destination_ip_prohibited and the server never sees a connection."""
    srv = tcp_server(hold_handler)
    p = start_proxy(base_text=_shipped_text(), overrides={"access": {"allow_ports": str(srv.port)}})
    r = curl(["-sS", "--max-time", "10", "--cacert", certs.ca, "-x", f"http://127.0.0.1:{p.port}",
              f"https://localhost:{srv.port}/big.bin", "-o", os.devnull])
    assert r.returncode != 0
    assert b"403" in r.stderr, r.stderr
    c = p.client()
    c.connect_request(f"localhost:{srv.port}")
    check_refusal(c, 403, "destination_ip_prohibited")
    time.sleep(0.2)
    assert srv.accepts == 0


# ---- the 200 reply and early data ----------------------------------------------------------


@both_transports
def test_success_reply_is_exact(proxy, tcp_server):
    """Everything before the upstream's first byte is exactly the 200 line + empty line."""
    srv = tcp_server(greeting_echo_handler(b"HELLO\n"))
    c = proxy.client()
    c.connect_request(srv.target())
    got = c.recv_exact(len(SUCCESS_REPLY) + 6)
    assert got == SUCCESS_REPLY + b"HELLO\n"
    c.send(b"ping")
    assert c.recv_exact(4) == b"ping"


@both_transports
def test_early_data_in_same_send(proxy, tcp_server):
    srv = tcp_server(echo_handler)
    payload = b"EARLY-" + os.urandom(1000)
    c = proxy.client()
    c.connect_request(srv.target(), early=payload)
    c.expect_established()
    assert c.recv_exact(len(payload)) == payload
    c.shutdown_write()
    assert c.read_until_close(5) == (b"", "eof")
    [r] = srv.wait_results(1)
    assert r["first_chunk"].startswith(b"EARLY-")
    assert r["bytes"] == len(payload)


@both_transports
def test_large_early_data(proxy, tcp_server):
    """200 KB sent in the same write as the request head: nothing lost, order kept."""
    srv = tcp_server(sink_handler(reply=b"done"))
    payload = os.urandom(200 * 1024)
    c = proxy.client()
    c.connect_request(srv.target(), early=payload)
    c.shutdown_write()
    c.expect_established()
    assert c.read_until_close(10) == (b"done", "eof")
    [r] = srv.wait_results(1)
    assert r["bytes"] == len(payload) and r["sha256"] == sha256(payload)


@both_transports
def test_payload_before_reading_200(proxy, tcp_server):
    srv = tcp_server(echo_handler)
    c = proxy.client()
    c.connect_request(srv.target())
    c.send(b"first")
    time.sleep(0.05)
    c.send(b"second")
    c.expect_established()
    assert c.recv_exact(11) == b"firstsecond"


@both_transports
def test_echo_many_round_trips(proxy, tcp_server):
    srv = tcp_server(echo_handler)
    c = proxy.tunnel(srv.target())
    for i in range(200):
        msg = f"msg-{i}-".encode() * (i % 7 + 1)
        c.send(msg)
        assert c.recv_exact(len(msg)) == msg


BUF_CAP, BUF_CAP_BIG = 64 * 1024, 256 * 1024  # include/buf.h: one read (towards a TLS client)
RESPONSE_SIZES = [BUF_CAP, BUF_CAP + 1, 4 * BUF_CAP, 5 * BUF_CAP + 100, BUF_CAP_BIG + 1,
                  2 * BUF_CAP_BIG, 3 * BUF_CAP_BIG, 1000000]


@both_transports
def test_responses_of_whole_buffers_arrive_without_waiting(proxy, tcp_server):
    """A request/response exchange whose responses are whole multiples of the relay buffer (64
    KiB; 256 KiB towards a TLS client) and more: the destination sends one, then waits for the
    client's next request. Each response must arrive in full at once. Over TLS the records of several buffers are gathered
    for one send while more waits upstream: a response whose end was gathered and never sent
    would hang here until the idle timeout."""
    responses = [os.urandom(n) for n in RESPONSE_SIZES]

    def handler(conn, rec):
        for r in responses:
            if conn.recv(1) != b"?":
                return
            conn.sendall(r)
        rec["done"] = True

    srv = tcp_server(handler)
    c = proxy.tunnel(srv.target())
    for r in responses:
        t0 = time.monotonic()
        c.send(b"?")
        got = c.recv_exact(len(r), timeout=5)
        took = time.monotonic() - t0
        assert got == r, f"response of {len(r)} B differs"
        assert took < 2, f"response of {len(r)} B took {took:.2f} s"
    assert srv.wait_results(1)[0]["done"]


# ---- half-close ----------------------------------------------------------------------------


@both_transports
def test_half_close_client_first(proxy, tcp_server):
    """Client sends then SHUT_WR; the server sees EOF, then still answers in full."""
    reply = os.urandom(300 * 1024)
    srv = tcp_server(sink_handler(reply=reply))
    data = os.urandom(100 * 1024)
    c = proxy.tunnel(srv.target())
    c.send(data, end=True)  # over TLS: the close_notify comes with the last record
    got, how = c.read_until_close(10)
    assert how == "eof"
    assert len(got) == len(reply) and got == reply
    [r] = srv.wait_results(1)
    assert r["bytes"] == len(data) and r["sha256"] == sha256(data)
    [line] = proxy.log_lines(1)
    assert line["status"] == "200" and line["reason"] == "done"
    assert int(line["up"]) == len(data) and int(line["down"]) == len(reply)


@both_transports
def test_half_close_server_first(proxy, tcp_server):
    """Server sends then SHUT_WR; the client gets all + EOF, keeps sending, server receives."""
    first = os.urandom(50 * 1024)
    srv = tcp_server(send_then_shutdown_handler(first))
    c = proxy.tunnel(srv.target())
    assert c.recv_exact(len(first), timeout=5) == first
    rest, how = c.read_until_close(2)
    assert (rest, how) == (b"", "eof"), "client should see EOF after the server's SHUT_WR"
    later = os.urandom(400 * 1024)
    c.send(later)  # the tunnel must still carry client -> server
    c.shutdown_write()
    [r] = srv.wait_results(1)
    assert r["bytes"] == len(later) and r["sha256"] == sha256(later)
    line = proxy.log_lines(1)[0]
    assert line["reason"] == "done"
    assert int(line["up"]) == len(later) and int(line["down"]) == len(first)


# ---- resets and timers ---------------------------------------------------------------------


@both_transports
def test_upstream_reset_closes_client(proxy, tcp_server):
    srv = tcp_server(reset_after_handler(nbytes_first=3))
    c = proxy.tunnel(srv.target())
    c.send(b"abc")
    assert c.wait_closed(5), "client not closed after the upstream reset"
    [line] = proxy.log_lines(1)
    assert line["reason"] == "upstream_reset", line
    assert line["up"] == "3"


def test_client_reset_closes_upstream(proxy, tcp_server):
    srv = tcp_server(hold_handler)
    c = proxy.tunnel(srv.target())
    c.send(b"12345")
    time.sleep(0.1)
    c.abort()
    [r] = srv.wait_results(1, timeout=5)
    assert r["bytes"] == 5
    [line] = proxy.log_lines(1)
    assert line["reason"] == "client_reset", line
    assert line["up"] == "5"


@both_transports
def test_idle_timeout(start_proxy, tcp_server):
    p = start_proxy({"timeouts": {"idle": "1s"}})
    srv = tcp_server(hold_handler)
    c = p.tunnel(srv.target())
    t0 = time.monotonic()
    assert c.wait_closed(4), "idle tunnel not closed"
    el = time.monotonic() - t0
    assert 0.8 <= el <= 3.0, f"closed after {el:.2f}s with idle = 1s"
    srv.wait_results(1, timeout=3)  # the upstream side is closed too
    [line] = p.log_lines(1)
    assert line["reason"] == "idle_timeout" and line["status"] == "200"


@both_transports
def test_activity_defers_idle_timeout(start_proxy, tcp_server):
    p = start_proxy({"timeouts": {"idle": "1s"}})
    srv = tcp_server(echo_handler)
    c = p.tunnel(srv.target())
    t_end = time.monotonic() + 2.5
    n = 0
    while time.monotonic() < t_end:
        c.send(b"k")
        assert c.recv_exact(1, timeout=2) == b"k", "tunnel closed despite activity"
        n += 1
        time.sleep(0.3)
    assert n >= 6


@both_transports
def test_backpressure_bounded_memory(proxy, tcp_server):
    """The server pushes 48 MB while the client does not read for 1.5 s: the proxy must stop
    reading upstream (RSS stays bounded), then deliver every byte once the client reads."""
    payload = os.urandom(48 * 1024 * 1024)
    srv = tcp_server(slow_reader_source_handler(payload))
    c = proxy.client(timeout=30)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    c.connect_request(srv.target())
    c.expect_established()
    rss0 = proxy.rss_kb()
    time.sleep(1.5)
    rss1 = proxy.rss_kb()
    assert not srv.results, "server finished sending although nobody read: no backpressure?"
    h = hashlib.sha256(c.buf)
    n = len(c.buf)
    c.buf = b""
    deadline = time.monotonic() + 30
    while n < len(payload) and time.monotonic() < deadline:
        d = c.recv(1 << 20, timeout=10)
        if not d:
            break
        h.update(d)
        n += len(d)
    assert n == len(payload)
    assert h.hexdigest() == sha256(payload)
    print(f"rss0={rss0} kB rss1={rss1} kB")
    assert rss1 - rss0 < 16 * 1024, f"proxy RSS grew {rss1 - rss0} kB while the client stalled"


# ---- names through the test's DNS ----------------------------------------------------------


def test_name_resolved_via_configured_dns(proxy, dns, tcp_server):
    srv = tcp_server(echo_handler)
    dns.set("echo.test", ["127.0.0.1"])
    c = proxy.tunnel(f"echo.test:{srv.port}")
    c.send(b"hi")
    assert c.recv_exact(2) == b"hi"
    assert dns.queried("echo.test"), "proxy did not ask the configured DNS server"
    c.close()
    [line] = proxy.log_lines(1)
    assert line["target"] == f"echo.test:{srv.port}"
    assert line["upstream"] == f"127.0.0.1:{srv.port}"


def test_ip_literal_not_resolved(proxy, dns, tcp_server):
    srv = tcp_server(echo_handler)
    c = proxy.tunnel(srv.target())
    c.send(b"x")
    assert c.recv_exact(1) == b"x"
    assert dns.queries == [], f"IP literal was looked up in DNS: {dns.queries}"


def test_name_case_and_trailing_dot(proxy, dns, tcp_server):
    srv = tcp_server(echo_handler)
    dns.set("mixed.test", ["127.0.0.1"])
    c = proxy.tunnel(f"MiXeD.TeSt.:{srv.port}")
    c.send(b"ok")
    assert c.recv_exact(2) == b"ok"


def test_fallback_to_next_address_on_refused(proxy, dns, tcp_server):
    """A name with two addresses where one refuses: the proxy must try the other."""
    if not have_ipv6():
        pytest.skip("no IPv6 loopback")
    srv = tcp_server(echo_handler)  # 127.0.0.1:P only; [::1]:P refuses
    dns.set("dual.test", ["::1", "127.0.0.1"])
    c = proxy.tunnel(f"dual.test:{srv.port}")
    c.send(b"dual")
    assert c.recv_exact(4) == b"dual"


def test_happy_eyeballs_skips_blackholed_address(start_proxy, dns, tcp_server):
    """A -> a blackhole (connects hang), AAAA -> a live server on the same port: with Happy
    Eyeballs the tunnel is up long before the 5 s connect timeout."""
    if not have_ipv6():
        pytest.skip("no IPv6 loopback")
    srv = None
    bh = None
    for _ in range(20):
        srv = tcp_server(echo_handler, host="::1")
        try:
            bh = Blackhole(port=srv.port)
            break
        except OSError:
            srv.stop()
    assert bh is not None, "could not get the same port on 127.0.0.1 and ::1"
    try:
        p = start_proxy({"timeouts": {"connect": "5s"}})
        dns.set("he.test", ["127.0.0.1", "::1"])
        t0 = time.monotonic()
        c = p.client(timeout=8)
        c.connect_request(f"he.test:{srv.port}")
        c.expect_established(timeout=8)
        el = time.monotonic() - t0
        c.send(b"he")
        assert c.recv_exact(2) == b"he"
        assert el < 2.0, f"tunnel took {el:.2f}s: no Happy Eyeballs fallback"
    finally:
        bh.close()
