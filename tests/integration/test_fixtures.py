"""Self-tests of the test fixtures (no connectd needed): the DNS responder, the TCP helper
servers, the connect blackhole, the TLS server and the ini editing."""

import os
import socket
import ssl
import threading
import time

import pytest

import dnsserver
from conftest import apply_ini_overrides
from netutil import Client, free_port, have_ipv6, parse_access_line, parse_proxy_status, sha256
from servers import Blackhole, TCPServer, echo_handler, send_then_shutdown_handler, sink_handler
from tlsfix import curl


# ---- DNS -----------------------------------------------------------------------------------


@pytest.fixture
def dnsd():
    d = dnsserver.DNSServer(records={"a.test": ["127.0.0.1", "::1"], "v4.test": ["127.0.0.2"],
                                     "empty.test": []})
    yield d
    d.stop()


def test_dns_a_and_aaaa(dnsd):
    r = dnsserver.query(dnsd.port, "a.test", 1)
    assert r["id"] == 0x4242 and r["flags"] & 0x8000 and r["rcode"] == 0
    assert [(a[1], a[3]) for a in r["answers"]] == [(1, "127.0.0.1")]
    r = dnsserver.query(dnsd.port, "A.Test.", 28)
    assert r["rcode"] == 0
    assert [(a[1], a[3]) for a in r["answers"]] == [(28, "::1")]
    assert dnsd.queried("a.test") == [("a.test", "A"), ("a.test", "AAAA")]


def test_dns_nodata_and_nxdomain(dnsd):
    r = dnsserver.query(dnsd.port, "v4.test", 28)
    assert r["rcode"] == 0 and r["answers"] == []
    r = dnsserver.query(dnsd.port, "empty.test", 1)
    assert r["rcode"] == 0 and r["answers"] == []
    r = dnsserver.query(dnsd.port, "nope.test", 1)
    assert r["rcode"] == 3 and r["answers"] == []
    dnsd.servfail.add("broken.test")
    r = dnsserver.query(dnsd.port, "broken.test", 1)
    assert r["rcode"] == 2


def test_dns_delay_does_not_block_other_queries(dnsd):
    dnsd.set("slow.test", ["127.0.0.1"])
    dnsd.delays["slow.test"] = 1.0
    out = {}

    def slow():
        out["slow"] = dnsserver.query(dnsd.port, "slow.test", 1, timeout=3, qid=1)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.1)
    fast = dnsserver.query(dnsd.port, "a.test", 1, qid=2)
    assert fast["elapsed"] < 0.3
    t.join(5)
    assert 0.9 <= out["slow"]["elapsed"] < 2.0
    assert out["slow"]["answers"][0][3] == "127.0.0.1"


def test_dns_drop(dnsd):
    dnsd.drop.add("drop.test")
    with pytest.raises(socket.timeout):
        dnsserver.query(dnsd.port, "drop.test", 1, timeout=0.5)
    assert dnsd.queried("drop.test") == [("drop.test", "A")]


def test_dns_handles_garbage(dnsd):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"\x00\x01garbage", ("127.0.0.1", dnsd.port))
    s.close()
    r = dnsserver.query(dnsd.port, "a.test", 1)
    assert r["rcode"] == 0 and len(dnsd.errors) == 1


# ---- TCP helpers ---------------------------------------------------------------------------


def test_echo_server_and_client():
    srv = TCPServer(echo_handler)
    try:
        c = Client("127.0.0.1", srv.port)
        data = b"x" * 300000
        c.send(data)
        c.shutdown_write()
        got, how = c.read_until_close(5)
        assert got == data and how == "eof"
        assert srv.wait_results(1)[0]["bytes"] == len(data)
        assert srv.accepts == 1
    finally:
        srv.stop()


def test_half_close_servers():
    payload = b"p" * 100000
    srv = TCPServer(send_then_shutdown_handler(payload))
    sink = TCPServer(sink_handler(reply=b"bye"))
    try:
        c = Client("127.0.0.1", srv.port)
        assert c.recv_exact(len(payload)) == payload
        assert c.read_until_close(2) == (b"", "eof")
        c.send(b"after")
        c.shutdown_write()
        r = srv.wait_results(1)[0]
        assert r["bytes"] == 5 and r["sha256"] == sha256(b"after")
        c = Client("127.0.0.1", sink.port)
        c.send(b"abc")
        c.shutdown_write()
        assert c.read_until_close(2) == (b"bye", "eof")
    finally:
        srv.stop()
        sink.stop()


def test_blackhole_connect_hangs():
    b = Blackhole()
    try:
        assert b.verify(0.5)
    finally:
        b.close()


def test_closed_port_refuses():
    p = free_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", p), timeout=2).close()


@pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")
def test_ipv6_echo():
    srv = TCPServer(echo_handler, host="::1")
    try:
        c = Client("::1", srv.port)
        c.send(b"six")
        assert c.recv_exact(3) == b"six"
        c.close()
    finally:
        srv.stop()


# ---- TLS -----------------------------------------------------------------------------------


def test_tls_server_direct(certs, docroot, tls_server, tmp_path):
    s = tls_server()
    out = tmp_path / "big.bin"
    r = curl(["-sS", "--cacert", certs.ca, f"https://localhost:{s.port}/big.bin", "-o", str(out)])
    assert r.returncode == 0, r.stderr
    import hashlib

    assert hashlib.sha256(out.read_bytes()).hexdigest() == docroot["big_sha256"]


class TLSPeer:
    """A TLS server on loopback for checks of netutil.Client(tls=...): accepts one connection
    and runs script(peer, rec) on a thread, peer being the server side as a Client
    (Client.accepted: it can half-close too)."""

    def __init__(self, certs, script):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certs.cert, certs.key)
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.lsock.settimeout(5)
        self.port = self.lsock.getsockname()[1]
        self.rec = {}
        self.done = threading.Event()

        def run():
            try:
                raw, _ = self.lsock.accept()
                peer = Client.accepted(raw, ctx)
                try:
                    script(peer, self.rec)
                finally:
                    peer.close()
            except Exception as e:  # the test asserts on rec
                self.rec["error"] = repr(e)
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()

    def wait(self):
        assert self.done.wait(5), "TLS peer did not finish"
        self.lsock.close()
        assert "error" not in self.rec, self.rec["error"]
        return self.rec


def test_tls_client_half_close_client_first(certs, client_tls):
    """shutdown_write() sends close_notify and no FIN: the peer reads EOF, its answer still
    arrives, then its close_notify reads as "eof"."""
    reply = os.urandom(300 * 1024)

    def script(peer, rec):
        rec["got"], rec["how"] = peer.read_until_close(5)
        peer.send(reply)
        peer.shutdown_write()

    peer = TLSPeer(certs, script)
    c = Client("127.0.0.1", peer.port, tls=client_tls)
    assert c.tls_version == "TLSv1.3"
    data = os.urandom(100 * 1024)
    c.send(data)
    c.shutdown_write()
    assert c.read_until_close(5) == (reply, "eof")
    c.close()
    rec = peer.wait()
    assert rec["how"] == "eof" and rec["got"] == data


def test_tls_client_half_close_peer_first(certs, client_tls):
    """The peer's close_notify reads as "eof"; the client still sends, then ends with its own."""
    first = os.urandom(50 * 1024)

    def script(peer, rec):
        peer.send(first)
        peer.shutdown_write()
        rec["got"], rec["how"] = peer.read_until_close(5)

    peer = TLSPeer(certs, script)
    c = Client("127.0.0.1", peer.port, tls=client_tls)
    assert c.recv_exact(len(first)) == first
    assert c.read_until_close(2) == (b"", "eof")
    later = os.urandom(400 * 1024)
    c.send(later, end=True)
    rec = peer.wait()
    c.close()
    assert rec["how"] == "eof" and rec["got"] == later


def test_tls_client_end_without_data(certs, client_tls):
    def script(peer, rec):
        rec["got"], rec["how"] = peer.read_until_close(5)

    peer = TLSPeer(certs, script)
    c = Client("127.0.0.1", peer.port, tls=client_tls)
    c.send(b"", end=True)
    assert peer.wait() == {"got": b"", "how": "eof"}
    c.close()


def test_tls_client_unclean_end_and_nowait(certs, client_tls):
    """A TCP close without close_notify reads as "unclean"; recv_nowait/send_nowait work on a
    non-blocking socket; abort() sends no close_notify."""

    def script(peer, rec):
        peer.send(peer.recv_exact(5).upper())
        rec["got"], rec["how"] = peer.read_until_close(5)
        peer.abort()  # no close_notify, RST

    peer = TLSPeer(certs, script)
    c = Client("127.0.0.1", peer.port, tls=client_tls)
    c.sock.setblocking(False)
    assert c.send_nowait(b"hello") == 5
    got = b""
    deadline = time.monotonic() + 5
    while got != b"HELLO" and time.monotonic() < deadline:
        try:
            got += c.recv_nowait()
        except BlockingIOError:
            time.sleep(0.01)
    assert got == b"HELLO"
    c.sock.setblocking(True)
    c.sock.shutdown(socket.SHUT_WR)  # a FIN without close_notify
    assert peer.wait() == {"got": b"", "how": "unclean"}
    assert c.read_until_close(3)[1] in ("reset", "unclean")
    c.close()


# ---- parsing helpers -----------------------------------------------------------------------


def test_proxy_status_parse():
    m, p, raw = parse_proxy_status('connectd; error=dns_error; rcode="NXDOMAIN"')
    assert m == "connectd" and p == {"error": "dns_error", "rcode": "NXDOMAIN"}
    assert raw["rcode"] == '"NXDOMAIN"'


def test_access_line_parse():
    d = parse_access_line("2026-11-27T16:40:01.123Z client=127.0.0.1:50234 target=a\\x20b:443 "
                          "upstream=- status=0 up=0 down=0 duration=0.001 reason=client_reset\n")
    assert d["client"] == "127.0.0.1:50234" and d["target"] == "a\\x20b:443"
    assert d["status"] == "0" and d["upstream"] == "-"


def test_access_line_tls_field():
    d = parse_access_line("2026-11-27T16:40:01.123Z client=127.0.0.1:5 user=- target=a:443 "
                          "upstream=- status=200 up=0 down=0 duration=0.001 reason=done rule=- "
                          "tls=TLSv1.3\n")
    assert d["tls"] == "TLSv1.3" and d["reason"] == "done"
    assert "tls" not in parse_access_line("2026-11-27T16:40:01Z client=127.0.0.1:5 status=0")
    for bad in ("tls=TLSv1.3 status=200", "status=200 tls=SSLv3", "status=200 tls="):
        with pytest.raises(AssertionError):
            parse_access_line("2026-11-27T16:40:01Z client=127.0.0.1:5 " + bad)


def test_ini_overrides():
    text = "[server]\n; comment\nlisten = 127.0.0.1:3128\n\n[access]\nallow_ports = 443\n"
    out = apply_ini_overrides(text, {"server": {"listen": "127.0.0.1:1"},
                                     "access": {"deny_private": "no", "allow_ports": None},
                                     "dns": {"servers": "127.0.0.1:5"}})
    assert "listen = 127.0.0.1:1" in out and "3128" not in out
    assert "allow_ports" not in out
    assert out.index("deny_private = no") > out.index("[access]")
    assert out.rstrip().endswith("[dns]\nservers = 127.0.0.1:5")


# ---- start_proxy ---------------------------------------------------------------------------


def test_start_proxy_starts_again_when_a_probed_port_was_taken(start_proxy, monkeypatch):
    """The first port start_proxy probes free is bound by another socket before connectd binds
    it (the race CI once lost; a socket bound, not listening, as a client's is): connectd exits
    with "Address already in use", and the fixture starts it again on a new port instead of
    failing the test. (A port taken by another listener cannot be told apart this way: the
    readiness probe would reach that listener.)"""
    import conftest

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    real = conftest.free_port
    handed = []

    def first_one_taken(host="127.0.0.1", kind=socket.SOCK_STREAM, exclude=()):
        handed.append(port if not handed else real(host, kind, exclude))
        return handed[-1]

    monkeypatch.setattr(conftest, "free_port", first_one_taken)
    try:
        p = start_proxy()
        assert handed[0] == port and p.port != port, handed
        c = p.client()
        c.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert c.recv(64, timeout=5).startswith(b"HTTP/1.1 ")
    finally:
        taken.close()


def test_free_port_does_not_hand_out_a_port_twice(monkeypatch):
    """The kernel may give the port it just freed to the next bind(0): free_port must not return
    it again (CI once got an admin listener on the plain listener's port that way)."""
    import netutil

    given = iter([40001, 40001, 40001, 40002])

    class FakeSocket:
        def __init__(self, *args):
            self.port = next(given)

        def bind(self, addr):
            pass

        def getsockname(self):
            return ("127.0.0.1", self.port)

        def close(self):
            pass

    monkeypatch.setattr(netutil.socket, "socket", FakeSocket)
    netutil._handed.clear()
    assert netutil.free_port() == 40001
    assert netutil.free_port() == 40002
