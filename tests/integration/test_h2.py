"""HTTP/2 CONNECT (RFC 9113 section 8.5) on a TLS listener with `[tls] alpn = h2, http/1.1`: ALPN,
the SETTINGS connectd sends, many concurrent tunnels over one connection (python's h2 library
through h2client.py, and Node's http2 through node_h2_connect.js), backpressure per stream,
half-close both ways, refusals as HEADERS (never GOAWAY), resets both ways, the stream limit,
per-client limits, the access log and metrics per stream, and the drain on SIGTERM.

Every proxy listens on a plain port first (the fixture's readiness probe goes there) and a TLS
port; every client trusts only the session's test CA. Loopback only; every wait is bounded;
only processes started here are stopped, by PID.

H2_REF=1 runs the tests that need nothing connectd-specific (the success paths and resets)
against h2ref_proxy.js, a reference HTTP/2 CONNECT proxy on Node, to check the test clients
themselves; the others are skipped then."""

import hashlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time

import pytest

try:
    import h2  # noqa: F401
except ImportError:
    pytest.skip("python3-h2 is not installed (import h2 failed): no HTTP/2 client for these "
                "tests", allow_module_level=True)

from h2.errors import ErrorCodes  # noqa: E402
from h2.settings import SettingCodes  # noqa: E402

from authfix import basic, make_hash, write_users  # noqa: E402
from h2client import H2Client  # noqa: E402
from netutil import LOOPBACK4, Client, free_port, parse_proxy_status  # noqa: E402
from promutil import scrape  # noqa: E402
from servers import (  # noqa: E402
    echo_handler,
    hold_handler,
    no_read_handler,
    reset_after_handler,
    send_then_shutdown_handler,
    sink_handler,
)
import tlsfix  # noqa: E402
from tlsfix import TLSClient, client_context  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REF = os.environ.get("H2_REF") == "1"
# Under valgrind (make check-valgrind) connectd is 20-50x slower: smaller transfers, longer waits.
VALGRIND = bool(os.environ.get("CONNECTD_VALGRIND"))
STRETCH = 10 if VALGRIND else 1
ALPN = "h2, http/1.1"
MiB = 1024 * 1024
# The contract's defaults for [http2].
DEFAULT_MAX_STREAMS = 100
DEFAULT_STREAM_WINDOW = 262144
DEFAULT_CONNECTION_WINDOW = 4194304

_unsupported = []  # the reason, once a proxy refused alpn = h2 with "not supported"


# ---- proxies ---------------------------------------------------------------------------------


class RefProxy:
    """h2ref_proxy.js on a free port: just enough of a Proxy for the success-path tests."""

    def __init__(self, certs, tmp_path):
        self.tls_port = free_port()
        self.stderr_path = os.path.join(str(tmp_path), "h2ref.stderr")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(["node", os.path.join(HERE, "h2ref_proxy.js"),
                                      str(self.tls_port), certs.cert, certs.key],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._err)
        if not tlsfix.wait_listening(self.tls_port, 10.0, self.proc):
            raise AssertionError(f"h2ref_proxy.js did not start: {self.stderr_text()}")

    def stderr_text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._err.close()


@pytest.fixture
def h2proxy(request, certs, tmp_path):
    """Factory: h2proxy(http2={...}, extra={section: {...}}, tls={...}, ref_ok=False) -> a
    connectd with a plain listener (p.port) and a TLS one (p.tls_port) whose [tls] alpn is
    "h2, http/1.1" (tls= on top), [http2] http2, other sections from extra. Skips the test when
    the binary says h2 is not supported. With H2_REF=1: the reference proxy when ref_ok, else
    the test is skipped."""
    refs = []

    def make(http2=None, extra=None, tls=None, ref_ok=False):
        if REF:
            if not ref_ok:
                pytest.skip("H2_REF=1: this test needs connectd itself")
            r = RefProxy(certs, tmp_path)
            refs.append(r)
            return r
        if _unsupported:
            pytest.skip(_unsupported[0])
        start_proxy = request.getfixturevalue("start_proxy")
        ex = {k: dict(v) for k, v in (extra or {}).items()}
        if http2:
            ex.setdefault("http2", {}).update(http2)
        t = {"alpn": ALPN}
        t.update(tls or {})
        for attempt in range(3):
            p = tlsfix.start_tls_proxy(start_proxy, certs.cert, certs.key, tls=t, extra=ex,
                                       wait=False)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and p.proc.poll() is None:
                if tlsfix.wait_listening(p.tls_port, 0.1, p.proc):
                    break
            if p.proc.poll() is None or "Address already in use" not in p.stderr_text():
                break
            p.stopped = True  # a free port was taken before connectd bound it: new ports
        if p.proc.poll() is not None:
            text = p.stderr_text()
            p.stopped = True
            if "not supported" in text:
                line = next(x for x in text.splitlines() if "not supported" in x)
                _unsupported.append(f"this connectd does not support HTTP/2: {line.strip()}")
                pytest.skip(_unsupported[0])
            pytest.fail(f"connectd with alpn = {ALPN} did not start (status "
                        f"{p.proc.returncode}):\n{text[-3000:]}\n--- config ---\n{p.config_text}")
        p.wait_ready()
        assert tlsfix.wait_listening(p.tls_port, 5.0, p.proc), p.stderr_text()[-3000:]
        p.settle()
        return p

    yield make
    for r in refs:
        r.stop()


def h2c(p, certs, timeout=10.0, **kw):
    """An H2Client of p's TLS listener; closed at the end of the test (p.clients)."""
    c = H2Client(p.tls_port, certs.ca, timeout=timeout * STRETCH, **kw)
    if hasattr(p, "clients"):
        p.clients.append(c)
    return c


def echo_once(c, target, data=b"are you there?"):
    """A fresh CONNECT stream to target (an echo server): data, END_STREAM, the exact echo and
    the proxy's END_STREAM."""
    sid = c.tunnel(target)
    c.send(sid, data, end=True)
    got = c.read_to_end(sid)
    assert got == data, f"echo on stream {sid}: {got[:100]!r}"
    return sid


def no_goaway(c):
    c.pump(0.05)
    assert not c.goaways, f"GOAWAY on the connection: {c.goaways}"
    assert not c.eof, "the proxy closed the connection"


# ---- the access log (own parser: see test_access_log_h2_field_order) ------------------------


def access_lines(p, n, where=None, timeout=5.0):
    """The access-log lines (dicts of the k=v fields, '_raw' the line) of p, without the
    readiness probes; at least n matching where (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(p.access_log, "rb") as f:
                text = f.read().decode("latin-1")
        except FileNotFoundError:
            text = ""
        lines = []
        for raw in text.split("\n")[:-1]:
            parts = raw.split(" ")
            x = {"ts": parts[0], "_raw": raw}
            x.update(kv.split("=", 1) for kv in parts[1:] if "=" in kv)
            if x.get("client") in p.probes:
                continue
            lines.append(x)
        sel = [x for x in lines if where is None or where(x)]
        if len(sel) >= n:
            return sel
        if time.monotonic() > deadline:
            raise AssertionError(f"wanted {n} matching access-log lines within {timeout}s, "
                                 f"have {len(sel)}: {[x['_raw'] for x in lines[-8:]]}")
        time.sleep(0.02)


def h1_refusal(p, request):
    """The HTTP/1.1 answer of p's plain listener to request: (status, Response)."""
    c = Client(LOOPBACK4, p.port, timeout=5)
    try:
        c.send(request)
        r = c.read_head(5)
        return r.status, r
    finally:
        c.close()


def check_h2_refusal(c, sid, status, h1=None):
    """Stream sid was refused: HEADERS :status status with END_STREAM (no DATA), a
    proxy-status field naming connectd (equal to the HTTP/1.1 Proxy-Status of h1, a Response,
    when given), then RST_STREAM NO_ERROR (the client had not ended its side); no GOAWAY.
    Returns the stream."""
    st = c.wait_response(sid)
    assert st.status == status, f"stream {sid}: status {st.status}, want {status}: {st.headers}"
    ps = st.header("proxy-status")
    assert ps is not None, f"stream {sid}: no proxy-status field: {st.headers}"
    member, params, _ = parse_proxy_status(ps)
    assert member == "connectd" and params.get("error"), f"proxy-status {ps!r}"
    if h1 is not None:
        assert h1.status == status, f"HTTP/1.1 gives {h1.status}, HTTP/2 {status}"
        assert ps == h1.header("Proxy-Status"), (
            f"proxy-status {ps!r} differs from HTTP/1.1's {h1.header('Proxy-Status')!r}")
    assert st.end_on_headers, f"stream {sid}: END_STREAM not on the {status} HEADERS: {st!r}"
    c.wait(lambda: st.reset is not None, 5, f"RST_STREAM after the {status} on {sid}")
    assert st.data_frames == 0, f"stream {sid}: DATA after the refusal HEADERS: {st!r}"
    assert st.reset == ErrorCodes.NO_ERROR, (
        f"stream {sid}: RST_STREAM {ErrorCodes(st.reset)!r} after the refusal, want NO_ERROR")
    no_goaway(c)
    return st


def payloads(n, size):
    """n distinct payloads of size bytes (views into one random block, shifted per stream)."""
    base = os.urandom(size + 251 * n)
    return [memoryview(base)[251 * i:251 * i + size] for i in range(n)]


def sha(b):
    return hashlib.sha256(b).hexdigest()


# ---- ALPN and SETTINGS -----------------------------------------------------------------------


def alpn_of(port, certs, offer):
    """(ALPN chosen, TLSClient) for a client offering offer (None: no ALPN extension)."""
    c = TLSClient(LOOPBACK4, port, client_context(certs.ca, alpn=offer), timeout=5)
    return c.sock.selected_alpn_protocol(), c


def test_alpn_h2_chosen_when_configured(h2proxy, certs, tcp_server):
    """alpn = h2, http/1.1: h2 is chosen when offered (in either client order: the server's
    preference decides), http/1.1 for a client offering only it (and CONNECT over HTTP/1.1
    works there), none without ALPN; the plain listener is unaffected. With alpn = http/1.1, h2
    (server preference: http/1.1 first) the same h2+http/1.1 client gets http/1.1."""
    srv = tcp_server(echo_handler)
    p = h2proxy()
    for offer in (["h2", "http/1.1"], ["http/1.1", "h2"], ["h2"]):
        got, c = alpn_of(p.tls_port, certs, offer)
        c.close()
        assert got == "h2", f"offer {offer}: ALPN chose {got!r}"
    for offer, want in ((["http/1.1"], "http/1.1"), (None, None)):
        got, c = alpn_of(p.tls_port, certs, offer)
        assert got == want, f"offer {offer}: ALPN chose {got!r}, want {want!r}"
        c.connect_request(srv.target())
        c.expect_established()
        c.send(b"h1 over tls")
        assert c.recv_exact(11) == b"h1 over tls"
        c.close()
    plain = p.tunnel(srv.target())  # p.client() is plain TCP to the first listener
    plain.send(b"plain")
    assert plain.recv_exact(5) == b"plain"
    plain.close()
    c = h2c(p, certs)
    echo_once(c, srv.target())
    q = h2proxy(tls={"alpn": "http/1.1, h2"})
    got, c = alpn_of(q.tls_port, certs, ["h2", "http/1.1"])
    c.close()
    assert got == "http/1.1", f"alpn = http/1.1, h2 and a client offering h2, http/1.1: {got!r}"


def test_alpn_default_never_h2(start_proxy, certs, tcp_server):
    """Without an alpn key ([tls] default http/1.1) h2 is never chosen: h2+http/1.1 gets
    http/1.1; h2 alone gets no protocol or a no_application_protocol alert."""
    if REF:
        pytest.skip("H2_REF=1: this test needs connectd itself")
    srv = tcp_server(echo_handler)
    p = tlsfix.start_tls_proxy(start_proxy, certs.cert, certs.key)
    got, c = alpn_of(p.tls_port, certs, ["h2", "http/1.1"])
    assert got == "http/1.1", got
    c.connect_request(srv.target())
    c.expect_established()
    c.close()
    try:
        got, c = alpn_of(p.tls_port, certs, ["h2"])
        c.close()
        assert got is None, f"offer h2 only with the default alpn: chose {got!r}"
    except ssl.SSLError as e:
        assert "NO APPLICATION PROTOCOL" in str(e).upper().replace("_", " "), str(e)


def wait_conn_window(c, want, timeout=2.0):
    """The connection-level send window the proxy granted (after its WINDOW_UPDATE)."""
    try:
        c.wait(lambda: c.conn.outbound_flow_control_window >= want, timeout,
               f"connection window {want}")
    except AssertionError:
        pass
    return c.conn.outbound_flow_control_window


def test_settings_defaults(h2proxy, certs):
    """Default [http2]: SETTINGS_MAX_CONCURRENT_STREAMS 100, SETTINGS_INITIAL_WINDOW_SIZE
    262144 (stream_window), SETTINGS_ENABLE_CONNECT_PROTOCOL 1, connection window 4194304."""
    p = h2proxy()
    c = h2c(p, certs)
    s = c.remote_settings
    got = {
        "max_concurrent_streams": s.get(SettingCodes.MAX_CONCURRENT_STREAMS),
        "initial_window_size": s.get(SettingCodes.INITIAL_WINDOW_SIZE, 65535),
        "enable_connect_protocol": s.get(SettingCodes.ENABLE_CONNECT_PROTOCOL, 0),
        "connection_window": wait_conn_window(c, DEFAULT_CONNECTION_WINDOW),
    }
    want = {
        "max_concurrent_streams": DEFAULT_MAX_STREAMS,
        "initial_window_size": DEFAULT_STREAM_WINDOW,
        "enable_connect_protocol": 1,
        "connection_window": DEFAULT_CONNECTION_WINDOW,
    }
    assert got == want, f"SETTINGS / window of connectd: {got}, contract: {want}"


def test_settings_configured(h2proxy, certs):
    """[http2] max_concurrent_streams / stream_window / connection_window are what SETTINGS
    and the connection's WINDOW_UPDATE say."""
    p = h2proxy(http2={"max_concurrent_streams": "7", "stream_window": "100000",
                       "connection_window": "2000000"})
    c = h2c(p, certs)
    s = c.remote_settings
    got = (s.get(SettingCodes.MAX_CONCURRENT_STREAMS), s.get(SettingCodes.INITIAL_WINDOW_SIZE),
           wait_conn_window(c, 2000000))
    assert got == (7, 100000, 2000000), got


# ---- many streams ----------------------------------------------------------------------------


N_STREAMS = 100
STREAM_BYTES = MiB // 8 if VALGRIND else 2 * MiB
SLOW_BYTES = 16 * MiB
SLOW_WINDOW = 256 * 1024


def test_100_streams_echo_with_slow_reader(h2proxy, certs, tcp_server):
    """One connection, 100 concurrent CONNECT streams to an echo server, 2 MiB each way per
    stream, byte-exact, with half-close: the client ends each stream after its data (the echo
    server reads EOF, finishes echoing, shuts down) and reads the echo up to connectd's
    END_STREAM. Meanwhile one more stream is a slow reader: its destination sends 16 MiB, the
    client acknowledges none of it until the 100 are done, so connectd may send it no more
    than the stream window (256 KiB); the 100 still finish. Then the slow one is read to the
    end, byte-exact, and its destination sees the client's END_STREAM as EOF."""
    srv = tcp_server(echo_handler)
    slow_data = os.urandom(SLOW_BYTES)
    slow_srv = tcp_server(send_then_shutdown_handler(slow_data))
    p = h2proxy(http2={"max_concurrent_streams": "200"}, ref_ok=True)
    c = h2c(p, certs, timeout=90, stream_window=SLOW_WINDOW)
    slow = c.tunnel(slow_srv.target())
    slow_st = c.streams[slow]
    data = payloads(N_STREAMS, STREAM_BYTES)
    ids = [c.connect(srv.target()) for _ in range(N_STREAMS)]
    c.wait(lambda: all(c.streams[s].headers is not None or c.streams[s].reset is not None
                       for s in ids), 20 * STRETCH, "100 responses")
    bad = [c.streams[s] for s in ids if c.streams[s].status != 200]
    assert not bad, f"{len(bad)} streams not 200: {bad[:3]}"
    want = {s: sha(d) for s, d in zip(ids, data)}
    got = {s: hashlib.sha256() for s in ids}
    size = {s: 0 for s in ids}
    for s, d in zip(ids, data):
        c.send(s, d, end=True)
    t0 = time.monotonic()

    def all_done():
        for s in ids:
            b = c.read(s)
            got[s].update(b)
            size[s] += len(b)
        return all(c.streams[s].ended or c.streams[s].reset is not None for s in ids)

    c.wait(all_done, 120 * STRETCH, "END_STREAM on the 100 streams")
    elapsed = time.monotonic() - t0
    reset = [c.streams[s] for s in ids if c.streams[s].reset is not None]
    assert not reset, f"{len(reset)} streams reset: {reset[:3]}"
    wrong = [(s, size[s]) for s in ids if got[s].hexdigest() != want[s]]
    assert not wrong, f"{len(wrong)} echoes not byte-exact (stream, bytes): {wrong[:5]}"
    # The slow reader: nothing acknowledged, so no more than its window arrived.
    assert 0 < slow_st.received <= SLOW_WINDOW, (
        f"slow stream received {slow_st.received} bytes with a {SLOW_WINDOW} window unacked")
    assert not slow_st.ended and slow_st.reset is None, slow_st
    print(f"100 x {STREAM_BYTES} B echoed in {elapsed:.1f}s; slow stream held at "
          f"{slow_st.received} B")
    res = srv.wait_results(N_STREAMS, 10 * STRETCH)
    assert sorted(r.get("bytes") for r in res) == [STREAM_BYTES] * N_STREAMS, (
        [r for r in res if r.get("bytes") != STREAM_BYTES][:3])
    got_slow = c.read_to_end(slow, 60 * STRETCH)
    assert len(got_slow) == SLOW_BYTES and got_slow == slow_data, (
        f"slow stream: {len(got_slow)} bytes, exact={got_slow == slow_data}")
    c.end(slow)
    c.drain()
    [r] = slow_srv.wait_results(1, 10)
    assert r.get("bytes") == 0 and "error" not in r, r
    no_goaway(c)


def test_node_100_streams(h2proxy, certs, tcp_server):
    """Node's http2 client: 100 concurrent CONNECT streams over one session, 2 MiB each way,
    byte-exact, each ended by the client after its data and by connectd after the echo."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    srv = tcp_server(echo_handler)
    p = h2proxy(ref_ok=True)
    r = subprocess.run([node, os.path.join(HERE, "node_h2_connect.js"), str(p.tls_port), certs.ca,
                        srv.target(), str(N_STREAMS), str(STREAM_BYTES), str(90000 * STRETCH)],
                       capture_output=True, timeout=120 * STRETCH)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, f"exit {r.returncode}: {out[-2000:]}\n{r.stderr[-2000:]!r}"
    res = json.loads(out.strip().splitlines()[-1])
    assert res["alpn"] == "h2" and res["exact"] == N_STREAMS and not res["failures"], res
    print(f"node: {N_STREAMS} x {STREAM_BYTES} B in {res['ms']} ms")
    done = srv.wait_results(N_STREAMS, 10 * STRETCH)
    assert [x.get("bytes") for x in done] == [STREAM_BYTES] * N_STREAMS


def test_upload_backpressure_stalled_destination(h2proxy, certs, tcp_server):
    """A destination that never reads: the client can send it only what the stream window
    and the socket buffers hold (connectd opens the stream's window only as the destination
    takes bytes), far from the 64 MiB it has queued; meanwhile another stream on the
    connection echoes 1 MiB."""
    stalled = tcp_server(no_read_handler)
    srv = tcp_server(echo_handler)
    p = h2proxy(ref_ok=True)
    c = h2c(p, certs, timeout=30)
    a = c.tunnel(stalled.target())
    total = 64 * MiB
    c.send(a, bytes(total))
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until the upload has not moved for 1 s
        c.pump(0.05)
        sent = total - c.queued(a)
        if sent != last:
            last, since = sent, time.monotonic()
        elif time.monotonic() - since > 1.0:
            break
    assert time.monotonic() < deadline, f"upload still moving after 20s ({last} bytes)"
    print(f"stalled destination: the client could send {last} bytes")
    assert 0 < last <= 24 * MiB, f"the client sent {last} bytes to a destination that reads none"
    b = c.tunnel(srv.target())
    data = os.urandom(MiB)
    c.send(b, data, end=True)
    assert c.read_to_end(b, 20) == data
    c.reset(a)
    c.drain()
    no_goaway(c)


# ---- half-close ------------------------------------------------------------------------------


def test_half_close_both_ways(h2proxy, certs, tcp_server):
    """Client END_STREAM first: the destination reads EOF after exactly the client's bytes and
    can still send (its reply arrives, then END_STREAM). Destination FIN first: its bytes then
    END_STREAM arrive, and the client can still send: the destination reads them to EOF."""
    reply = os.urandom(300000)
    sink = tcp_server(sink_handler(reply=reply))  # replies after EOF
    source_data = os.urandom(500000)
    source = tcp_server(send_then_shutdown_handler(source_data))
    p = h2proxy(ref_ok=True)
    c = h2c(p, certs)
    up = os.urandom(400000)
    a = c.tunnel(sink.target())
    c.send(a, up, end=True)
    assert c.read_to_end(a, 10) == reply
    [r] = sink.wait_results(1)
    assert r["bytes"] == len(up) and r["sha256"] == sha(up), r
    b = c.tunnel(source.target())
    assert c.read_to_end(b) == source_data  # the destination's FIN -> END_STREAM
    late = os.urandom(200000)
    c.send(b, late, end=True)  # our side is still open
    c.drain()
    [r] = source.wait_results(1)
    assert r["bytes"] == len(late) and r["sha256"] == sha(late), r
    no_goaway(c)


# ---- refusals --------------------------------------------------------------------------------


def test_refusals_are_stream_answers(h2proxy, certs, tcp_server):
    """On one connection: a port not allowed -> 403, a GET (with :scheme/:path) -> 405 with
    allow: CONNECT, an extended CONNECT (:protocol) -> 501, an authority without a port ->
    400. Each: HEADERS with END_STREAM and no DATA, proxy-status as HTTP/1.1 gives for the same
    request, then RST_STREAM NO_ERROR; never GOAWAY; then a good stream still echoes."""
    srv = tcp_server(echo_handler)
    denied = free_port()
    p = h2proxy(extra={"access": {"allow_ports": str(srv.port)}})
    c = h2c(p, certs)
    assert c.remote_settings.get(SettingCodes.ENABLE_CONNECT_PROTOCOL) == 1, c.remote_settings

    t = f"127.0.0.1:{denied}"
    _, h1 = h1_refusal(p, f"CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n".encode())
    st = check_h2_refusal(c, c.connect(t), 403, h1)
    print("403 proxy-status:", st.header("proxy-status"))

    t = srv.target()
    _, h1 = h1_refusal(p, f"GET https://{t}/ HTTP/1.1\r\nHost: {t}\r\n\r\n".encode())
    sid = c.request([(":method", "GET"), (":scheme", "https"), (":authority", t),
                     (":path", "/")])
    st = check_h2_refusal(c, sid, 405, h1)
    assert st.header("allow") == "CONNECT", st.headers

    sid = c.request([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                     (":authority", t), (":path", "/chat")])
    check_h2_refusal(c, sid, 501)

    _, h1 = h1_refusal(p, b"CONNECT no-port-here HTTP/1.1\r\nHost: no-port-here\r\n\r\n")
    check_h2_refusal(c, c.connect("no-port-here"), 400, h1)

    echo_once(c, srv.target())
    assert srv.accepts == 1, f"a refused stream was dialed ({srv.accepts} accepts)"


def test_auth_407_then_200(h2proxy, certs, tcp_server, tmp_path):
    """[auth] users_file: a CONNECT stream without credentials gets 407 with
    proxy-authenticate (as HTTP/1.1's Proxy-Authenticate) and the proxy-status of HTTP/1.1;
    one with proxy-authorization: Basic (right password) on the same connection gets 200 and
    echoes; the access log names the user."""
    srv = tcp_server(echo_handler)
    users = write_users(tmp_path / "users", {"alice": make_hash("wonderland")})
    p = h2proxy(extra={"auth": {"users_file": users}})
    c = h2c(p, certs)
    t = srv.target()
    _, h1 = h1_refusal(p, f"CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n".encode())
    st = check_h2_refusal(c, c.connect(t), 407, h1)
    assert st.header("proxy-authenticate") == h1.header("Proxy-Authenticate"), (
        st.headers, h1.headers)
    wrong = basic("alice", "nope").decode().split(": ", 1)[1].strip()
    check_h2_refusal(c, c.connect(t, [("proxy-authorization", wrong)]), 407)
    right = basic("alice", "wonderland").decode().split(": ", 1)[1].strip()
    sid = c.connect(t, [("proxy-authorization", right)])
    st = c.wait_response(sid)
    assert st.status == 200, st.headers
    c.send(sid, b"authenticated", end=True)
    assert c.read_to_end(sid) == b"authenticated"
    lines = access_lines(p, 1, where=lambda x: x.get("status") == "200")
    assert lines[0].get("user") == "alice", lines[0]["_raw"]


def test_per_client_limit_counts_streams(h2proxy, certs, tcp_server):
    """[limits] per_client_connections = 3: three streams of one connection are three tunnels;
    the fourth is refused 503 (as a fourth HTTP/1.1 tunnel would be); once one ends, a new
    stream gets 200."""
    srv = tcp_server(echo_handler)
    p = h2proxy(extra={"limits": {"per_client_connections": "3"}})
    c = h2c(p, certs)
    ids = [c.tunnel(srv.target()) for _ in range(3)]
    check_h2_refusal(c, c.connect(srv.target()), 503)
    c.send(ids[0], b"x", end=True)
    assert c.read_to_end(ids[0]) == b"x"
    deadline = time.monotonic() + 3
    while True:
        sid = c.connect(srv.target())
        st = c.wait_response(sid)
        if st.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert st.status == 200, st.headers
    for s in ids[1:] + [sid]:
        c.send(s, b"ok", end=True)
        assert c.read_to_end(s) == b"ok"


# ---- resets ----------------------------------------------------------------------------------


def test_client_reset_closes_only_that_tunnel(h2proxy, certs, tcp_server):
    """RST_STREAM (CANCEL) from the client: that tunnel's destination sees the close; a
    second stream on the connection goes on echoing; no GOAWAY."""
    hold = tcp_server(hold_handler)
    srv = tcp_server(echo_handler)
    p = h2proxy(ref_ok=True)
    c = h2c(p, certs)
    a = c.tunnel(hold.target())
    b = c.tunnel(srv.target())
    c.send(a, b"to be cut")
    c.send(b, b"before")
    assert c.read_exact(b, 6) == b"before"
    hold.wait_accepts(1)
    c.reset(a, ErrorCodes.CANCEL)
    c.drain()
    hold.wait_results(1, 5)  # its handler returns when the proxy closes the destination
    c.send(b, b"after", end=True)
    assert c.read_to_end(b) == b"after"
    no_goaway(c)
    echo_once(c, srv.target())


def test_destination_reset_is_connect_error(h2proxy, certs, tcp_server):
    """The destination resets (SO_LINGER 0) its connection: that stream gets RST_STREAM
    CONNECT_ERROR; another stream on the connection is unaffected; no GOAWAY."""
    rst = tcp_server(reset_after_handler(nbytes_first=5))
    srv = tcp_server(echo_handler)
    p = h2proxy(ref_ok=True)
    c = h2c(p, certs)
    b = c.tunnel(srv.target())
    a = c.tunnel(rst.target())
    c.send(a, b"12345")
    st = c.streams[a]
    c.wait(lambda: st.reset is not None, 5, f"RST_STREAM on stream {a}")
    assert st.reset == ErrorCodes.CONNECT_ERROR, (
        f"destination reset -> {st!r}, want RST_STREAM CONNECT_ERROR (0xa)")
    if not REF:  # Node's http2 (the reference proxy) sends END_STREAM before its RST_STREAM
        assert not st.ended, f"END_STREAM (a clean end) before the RST_STREAM: {st!r}"
    c.send(b, b"still here", end=True)
    assert c.read_to_end(b) == b"still here"
    no_goaway(c)


# ---- the stream limit ------------------------------------------------------------------------


def test_max_concurrent_streams(h2proxy, certs, tcp_server):
    """max_concurrent_streams = 4: SETTINGS says 4; with 4 tunnels open a 5th stream is
    refused with RST_STREAM REFUSED_STREAM (a stream error, RFC 9113 section 5.1.2; no GOAWAY),
    not dialed, the 4 go on; once one has ended both ways, a new stream gets 200."""
    srv = tcp_server(echo_handler)
    p = h2proxy(http2={"max_concurrent_streams": "4"})
    c = h2c(p, certs)
    assert c.remote_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS) == 4, c.remote_settings
    ids = [c.tunnel(srv.target()) for _ in range(4)]
    fifth = c.connect(srv.target(), ignore_limit=True)
    st = c.streams[fifth]
    c.wait(lambda: st.reset is not None or st.headers is not None, 5, "an answer to the 5th")
    assert st.headers is None and st.reset == ErrorCodes.REFUSED_STREAM, (
        f"5th stream: {st!r} headers {st.headers}; want RST_STREAM REFUSED_STREAM (0x7)")
    no_goaway(c)
    assert srv.accepts == 4, f"the refused stream was dialed ({srv.accepts} accepts)"
    for s in ids:
        c.send(s, b"one of four")
        assert c.read_exact(s, 11) == b"one of four"
    c.end(ids[0])
    assert c.read_to_end(ids[0]) == b""
    sid = c.tunnel(srv.target())
    for s in ids[1:] + [sid]:
        c.send(s, b"bye", end=True)
        assert c.read_to_end(s) == b"bye"


# ---- access log and metrics ------------------------------------------------------------------


def test_access_log_and_metrics(h2proxy, certs, tcp_server):
    """One access-log line per stream (tunnels and a refusal): client = the connection's
    address, exact up/down, tls=TLSv1.3, h2=N equal for the streams of one connection and
    different between connections. connectd_http2_connections_total +2,
    connectd_http2_streams_total +5."""
    srv = tcp_server(echo_handler)
    aport = free_port()
    p = h2proxy(extra={"admin": {"listen": f"127.0.0.1:{aport}"},
                       "access": {"allow_ports": str(srv.port)}})
    m0 = scrape(aport)
    conns0 = m0.get("connectd_http2_connections_total")
    streams0 = m0.get("connectd_http2_streams_total")
    a, b = h2c(p, certs), h2c(p, certs)
    sizes = {}
    for cl, ns in ((a, (1000, 2000)), (b, (3000,))):
        for n in ns:
            echo_once(cl, srv.target(), os.urandom(n))
            sizes[n] = cl
    refused = a.connect(f"127.0.0.1:{free_port()}")
    check_h2_refusal(a, refused, 403)
    echo_once(b, srv.target(), os.urandom(4000))
    sizes[4000] = b
    lines = access_lines(p, 5)
    assert len(lines) == 5, [x["_raw"] for x in lines]
    addr = {a: f"127.0.0.1:{a.local_addr[1]}", b: f"127.0.0.1:{b.local_addr[1]}"}
    by_client = {}
    for x in lines:
        assert x.get("tls") == "TLSv1.3", f"tls= {x.get('tls')!r}: {x['_raw']}"
        assert x.get("h2", "").isdigit(), f"no h2=N field: {x['_raw']}"
        by_client.setdefault(x["client"], []).append(x)
    assert set(by_client) == set(addr.values()), (by_client.keys(), addr)
    ns = {cl: {x["h2"] for x in by_client[addr[cl]]} for cl in (a, b)}
    assert len(ns[a]) == 1 and len(ns[b]) == 1 and ns[a] != ns[b], (
        f"h2= per connection: a {ns[a]}, b {ns[b]}")
    ok = [x for x in lines if x["status"] == "200"]
    assert sorted(int(x["up"]) for x in ok) == [1000, 2000, 3000, 4000], [x["_raw"] for x in ok]
    for x in ok:
        n = int(x["up"])
        assert x["down"] == x["up"] and x["client"] == addr[sizes[n]], x["_raw"]
    [ref] = [x for x in lines if x["status"] != "200"]
    assert ref["status"] == "403" and ref["client"] == addr[a], ref["_raw"]

    def counted(m):
        return (m.get("connectd_http2_connections_total") - conns0,
                m.get("connectd_http2_streams_total") - streams0)

    deadline = time.monotonic() + 3
    while counted(scrape(aport)) != (2, 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert counted(scrape(aport)) == (2, 5), counted(scrape(aport))


def test_access_log_h2_field_order(h2proxy, certs, tcp_server):
    """The line of a stream ends with ` h2=N tls=TLSv1.3`: tls= stays the last field, as
    netutil's parse_access_line (and log readers) expect."""
    srv = tcp_server(echo_handler)
    p = h2proxy()
    c = h2c(p, certs)
    echo_once(c, srv.target())
    [x] = access_lines(p, 1)
    tail = " ".join(x["_raw"].rstrip("\n").split(" ")[-2:])
    assert tail == f"h2={x.get('h2')} tls=TLSv1.3", f"line ends with {tail!r}: {x['_raw']}"


# ---- SIGTERM ---------------------------------------------------------------------------------


@pytest.mark.timing
def test_sigterm_goaway_then_drain(h2proxy, certs, tcp_server):
    """SIGTERM with two streams open: GOAWAY NO_ERROR whose last stream id is the highest
    stream connectd accepted; both streams still echo; once they have ended, connectd closes
    the connection and exits 0, well before [timeouts] shutdown (20s)."""
    srv = tcp_server(echo_handler)
    p = h2proxy(extra={"timeouts": {"shutdown": "20s"}})
    c = h2c(p, certs)
    a = c.tunnel(srv.target())
    b = c.tunnel(srv.target())
    p.signal(signal.SIGTERM)
    c.wait(lambda: c.goaways, 5, "GOAWAY after SIGTERM")
    c.pump(0.2)
    print("GOAWAYs after SIGTERM:", c.goaways)
    codes = [g[0] for g in c.goaways]
    assert all(x == ErrorCodes.NO_ERROR for x in codes), c.goaways
    assert c.goaways[-1][1] == b, f"GOAWAY last stream id {c.goaways[-1][1]}, want {b}: {c.goaways}"
    for s in (a, b):
        c.send(s, b"drain")
        assert c.read_exact(s, 5) == b"drain"
    t0 = time.monotonic()
    for s in (a, b):
        c.end(s)
        assert c.read_to_end(s) == b""
    c.wait(lambda: c.eof, 5, "the proxy closing the connection after its last stream")
    rc = p.proc.wait(5)
    p.stopped = True
    assert rc == 0, rc
    assert time.monotonic() - t0 < 5
    lines = access_lines(p, 2)
    assert [x["status"] for x in lines] == ["200", "200"], [x["_raw"] for x in lines]


def test_sigterm_shutdown_timeout_cuts_open_stream(h2proxy, certs, tcp_server):
    """SIGTERM with a stream that never ends and [timeouts] shutdown = 1s: GOAWAY at once, the
    stream relays during the drain, then connectd ends it (the connection closes) and exits 0
    within a few seconds."""
    srv = tcp_server(echo_handler)
    p = h2proxy(extra={"timeouts": {"shutdown": "1s"}})
    c = h2c(p, certs)
    a = c.tunnel(srv.target())
    p.signal(signal.SIGTERM)
    c.wait(lambda: c.goaways, 5, "GOAWAY after SIGTERM")
    c.send(a, b"still")
    assert c.read_exact(a, 5) == b"still"
    c.wait(lambda: c.eof or c.streams[a].reset is not None, 5, "the end after the timeout")
    rc = p.proc.wait(5)
    p.stopped = True
    assert rc == 0, rc
    [x] = access_lines(p, 1)
    assert x["reason"] == "shutdown", x["_raw"]
