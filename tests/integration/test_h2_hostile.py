"""Known HTTP/2 attacks on connectd's h2 listener (a tls listener with `[tls] alpn = h2,
http/1.1`): rapid reset (CVE-2023-44487), the CONTINUATION flood (2024) and a CONTINUATION
trickle, an oversized header list and an HPACK bomb, the control-frame floods of CVE-2019-9512 /
9515 / 9518 (SETTINGS, PING, WINDOW_UPDATE, PRIORITY, empty DATA and DATA that is all padding),
zero-window stalls (CVE-2019-9517 style), stream-count exhaustion, and broken or vanishing
clients (bad preface, garbage, silence, a TCP RST under 100 open streams).

The attacks are written as raw frames (RawH2: TLS with ALPN h2, hand-made frame headers and
HPACK, no state machine in the way), fast and on one connection. Each test is bounded in time
and in how much it sends, and after (or during) each attack checks that
  (a) a normal HTTP/2 client (h2client.H2Client) on a new connection still gets a CONNECT
      tunnel through to an echo server,
  (b) the daemon is alive, its RSS grew by less than the bound the test states (measured on a
      release build, with a margin; not checked under ASan/valgrind), and its fd count is back
      to the baseline taken after a warm-up client.

Where a defence is missing or behaves otherwise, the test still asserts the right behaviour and
is marked xfail(strict=True) with what happens instead (its reason), for h2.c's owner to fix.

Each daemon has a plain listener first (the fixture's readiness probe), a TLS one with ALPN h2,
an admin listener for the metrics (connectd_http2_*), one worker, and [timeouts] handshake 1s.
Loopback only; every wait and loop is bounded; only processes started here are stopped."""

import collections
import os
import select
import socket
import ssl
import struct
import threading
import time

import pytest

# python3-h2 (h2client.py's framing) and its hpack: no HTTP/2 client without them
pytest.importorskip("h2")
hpack = pytest.importorskip("hpack")

from adminutil import admin_section  # noqa: E402
from h2client import H2Client  # noqa: E402
from netutil import LOOPBACK4, parse_proxy_status  # noqa: E402
from procstat import fd_count, sanitized, wait_fds  # noqa: E402
from promutil import scrape  # noqa: E402
from servers import echo_handler  # noqa: E402
import tlsfix  # noqa: E402

VALGRIND = bool(os.environ.get("CONNECTD_VALGRIND"))
SLOW = 10.0 if VALGRIND else 1.0  # how long a reaction may take when it should be immediate
HANDSHAKE = 1.0  # [timeouts] handshake of this module's daemons
ALPN = "h2, http/1.1"
KiB = 1024
MiB = 1024 * 1024

# frame types, flags, error codes, settings (RFC 9113 sections 6, 7, 6.5.2)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, SETTINGS_TIMEOUT, STREAM_CLOSED, \
    FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, CONNECT_ERROR, \
    ENHANCE_YOUR_CALM = range(12)
ERRORS = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR",
          4: "SETTINGS_TIMEOUT", 5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM",
          8: "CANCEL", 9: "COMPRESSION_ERROR", 10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM"}
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, \
    S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = range(1, 7)
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def err_name(code):
    return ERRORS.get(code, str(code))


# ---- frames and HPACK by hand ------------------------------------------------------------------


def frame(ftype, flags, sid, payload=b""):
    """One HTTP/2 frame: the 9-byte header (RFC 9113 section 4.1) and payload."""
    return struct.pack("!I", len(payload))[1:] + struct.pack("!BBI", ftype, flags, sid) + payload


def settings_frame(settings=None, ack=False):
    body = b"".join(struct.pack("!HI", k, v) for k, v in (settings or {}).items())
    return frame(SETTINGS, ACK if ack else 0, 0, body)


def hp_int(value, prefix_bits, first=0):
    """An HPACK integer (RFC 7541 section 5.1) with prefix_bits, first byte's high bits first."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    out = [first | top]
    value -= top
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hp_str(s):
    s = s.encode() if isinstance(s, str) else s
    return hp_int(len(s), 7) + s  # no Huffman


def hp_literal(name, value, index=False):
    """A literal field with a literal name: with incremental indexing (it enters the dynamic
    table) or without (stateless)."""
    return (b"\x40" if index else b"\x00") + hp_str(name) + hp_str(value)


def hp_indexed_name(index, value):
    """A literal field without indexing whose name is static-table entry index (4-bit prefix):
    stateless, so one block can be sent any number of times."""
    return hp_int(index, 4) + hp_str(value)


def connect_block(authority, extra=()):
    """The header block of `CONNECT authority` (:method is static entry 2's name, :authority
    entry 1), without touching either side's dynamic table."""
    out = hp_indexed_name(2, "CONNECT") + hp_indexed_name(1, authority)
    for k, v in extra:
        out += hp_literal(k, v)
    return out


# ---- a raw HTTP/2 client -----------------------------------------------------------------------


class RawH2:
    """One TLS connection with ALPN h2, driven frame by frame. write() sends bytes while it
    reads (so the proxy's own output never stalls it) unless told not to read; whatever arrives
    is parsed: the proxy's SETTINGS (acknowledged unless ack_settings is false), GOAWAY,
    RST_STREAM, response HEADERS (decoded by an HPACK decoder), DATA byte counts, PING ACKs,
    WINDOW_UPDATEs. eof / how say whether and how the connection ended."""

    def __init__(self, port, ca, preface=True, settings=None, ack_settings=True, timeout=5.0):
        ctx = ssl.create_default_context(cafile=ca)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection((LOOPBACK4, port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname="localhost")
        assert self.sock.selected_alpn_protocol() == "h2", self.sock.selected_alpn_protocol()
        self.sock.setblocking(False)
        self.dec = hpack.Decoder()
        self.ack_settings = ack_settings
        self.inbuf = bytearray()
        self.outq = bytearray()  # our automatic answers (SETTINGS ACK), sent first
        self.counts = collections.Counter()  # frames received, by type
        self.server_settings = {}
        self.settings_acks = 0  # ACKs of our SETTINGS
        self.goaway = None  # (last stream id, error code, debug data) of the first GOAWAY
        self.goaways = 0
        self.rst = {}  # stream id -> error code of the proxy's RST_STREAM
        self.responses = {}  # stream id -> [(name, value)] of the response HEADERS
        self.ended = set()  # streams the proxy ended (END_STREAM)
        self.data = collections.Counter()  # stream id -> DATA payload bytes received
        self.window_updates = collections.Counter()  # stream id -> increments received
        self.ping_acks = 0
        self.received = 0  # bytes of frames received
        self.eof = False
        self.how = None  # eof / reset / error: how the connection ended
        self.sent = 0
        self.write_failed = False
        self._block = None  # (stream id, bytes) of a header block awaiting CONTINUATION
        if preface:  # before anything else: our SETTINGS ACK may not precede it
            self.sock.settimeout(timeout)
            self.sock.sendall(PREFACE + settings_frame(settings))
            self.sock.setblocking(False)
            self.sent += len(PREFACE) + 9 + 6 * len(settings or {})

    # ---- output ----

    def write(self, data, read=True, timeout=5.0):
        """Send data (whole or until the connection ends or timeout); returns the bytes sent.
        read: take in what the proxy sends meanwhile (else leave it in the socket)."""
        view = memoryview(bytes(data))
        total = len(view)
        deadline = time.monotonic() + timeout
        while ((len(view) or self.outq) and not self.eof and not self.write_failed
               and time.monotonic() < deadline):
            if read:
                self._read_some()
                if self.eof:
                    break
            # our answers go between whole frames: before the data or after it
            if self.outq and (len(view) == total or not len(view)):
                cur, is_q = memoryview(bytes(self.outq[:65536])), True
            else:
                cur, is_q = view[:16384], False  # one TLS record: sent counts what went out
            _, w, _ = select.select([], [self.sock], [], 0.05)
            if not w:
                continue
            try:
                n = self.sock.send(cur)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                continue
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
                self.write_failed = True  # the proxy closed: what it sent is still to be read
                break
            self.sent += n
            if is_q:
                del self.outq[:n]
            else:
                view = view[n:]
        return total - len(view)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Close with a TCP RST (SO_LINGER 0), no close_notify."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    # ---- input ----

    def _end(self, how):
        if not self.eof:
            self.eof = True
            self.how = how

    def _read_some(self):
        for _ in range(256):  # bounded batch
            try:
                d = self.sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return
            except ConnectionResetError:
                self._end("reset")
                return
            except (ssl.SSLError, OSError):
                self._end("error")
                return
            if not d:
                self._end("eof")
                return
            self.received += len(d)
            self.inbuf += d
            self._parse()

    def _parse(self):
        buf = self.inbuf
        while len(buf) >= 9:
            n = int.from_bytes(buf[0:3], "big")
            if len(buf) < 9 + n:
                break
            ftype, flags = buf[3], buf[4]
            sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload = bytes(buf[9:9 + n])
            del buf[:9 + n]
            self.counts[ftype] += 1
            self._frame(ftype, flags, sid, payload)

    def _frame(self, ftype, flags, sid, p):
        if ftype == SETTINGS:
            if flags & ACK:
                self.settings_acks += 1
                return
            for i in range(0, len(p) - 5, 6):
                k, v = struct.unpack("!HI", p[i:i + 6])
                self.server_settings[k] = v
            if self.ack_settings:
                self.outq += settings_frame(ack=True)
        elif ftype == GOAWAY:
            last, code = struct.unpack("!II", p[:8])
            self.goaways += 1
            if self.goaway is None:
                self.goaway = (last & 0x7FFFFFFF, code, p[8:])
        elif ftype == RST_STREAM:
            self.rst[sid] = struct.unpack("!I", p[:4])[0]
        elif ftype == PING:
            if flags & ACK:
                self.ping_acks += 1
        elif ftype == WINDOW_UPDATE:
            self.window_updates[sid] += struct.unpack("!I", p[:4])[0] & 0x7FFFFFFF
        elif ftype == DATA:
            pad = p[0] + 1 if flags & PADDED else 0
            self.data[sid] += len(p) - pad
            if flags & END_STREAM:
                self.ended.add(sid)
        elif ftype in (HEADERS, CONTINUATION):
            if ftype == HEADERS:
                if flags & PADDED:
                    p = p[1:len(p) - p[0]]
                if flags & PRIORITY_FLAG:
                    p = p[5:]
                self._block = (sid, bytes(p))
                if flags & END_STREAM:
                    self.ended.add(sid)
            elif self._block is not None:
                self._block = (sid, self._block[1] + p)
            if flags & END_HEADERS and self._block is not None:
                fields = self.dec.decode(self._block[1])
                self.responses.setdefault(sid, fields)
                self._block = None

    def pump(self, timeout=0.05):
        """Send our queued answers, wait up to timeout for input and take it in."""
        if self.outq and not self.eof and not self.write_failed:
            self.write(b"", timeout=1.0)
        if self.eof:
            time.sleep(min(timeout, 0.01))
            return
        if not self.sock.pending():
            select.select([self.sock], [], [], timeout)
        self._read_some()

    def wait(self, pred, timeout=5.0):
        """pump() until pred() or the end of the connection or timeout; returns pred()."""
        deadline = time.monotonic() + timeout
        while not pred() and not self.eof and time.monotonic() < deadline:
            self.pump()
        return pred()

    def wait_closed(self, timeout):
        """Read until the proxy closes the connection; the seconds it took (None: still open
        after timeout)."""
        t0 = time.monotonic()
        self.wait(lambda: self.eof, timeout)
        return time.monotonic() - t0 if self.eof else None

    def status(self, sid):
        return int(dict(self.responses[sid])[":status"]) if sid in self.responses else None

    def describe(self):
        g = self.goaway and (self.goaway[0], err_name(self.goaway[1]), self.goaway[2][:60])
        return (f"eof={self.eof} ({self.how}) goaway={g} frames={dict(self.counts)} "
                f"rst={len(self.rst)} "
                f"responses={len(self.responses)} sent={self.sent}")


# ---- the daemon, its measurements, the normal client --------------------------------------------


def h2_proxy(start_proxy, certs, http2=None, timeouts=None, extra=None):
    """A connectd with a plain listener (p.port), a TLS listener offering h2 (p.tls_port), an
    admin listener (p.admin_port), one worker, [timeouts] handshake 1s (+ timeouts),
    [http2] http2."""
    adm, admin_port = admin_section()
    over = {"timeouts": {"handshake": f"{HANDSHAKE:g}s"}, "server": {"workers": "1"}}
    over.update(adm)
    over["timeouts"].update(timeouts or {})
    if http2:
        over["http2"] = dict(http2)
    for k, v in (extra or {}).items():
        over.setdefault(k, {}).update(v)
    p = tlsfix.start_tls_proxy(start_proxy, certs.cert, certs.key, tls={"alpn": ALPN}, extra=over)
    p.admin_port = admin_port
    p.settle()
    return p


def metric(p, name):
    return scrape(p.admin_port).get(name)


def raw_h2(p, certs, **kw):
    c = RawH2(p.tls_port, certs.ca, **kw)
    p.clients.append(c)
    return c


def serves(p, certs, srv, payload=b"still served"):
    """A normal HTTP/2 client on a new connection: a CONNECT tunnel to srv (echo), one round
    trip, END_STREAM both ways. Returns the seconds it took."""
    t0 = time.monotonic()
    c = H2Client(p.tls_port, certs.ca, timeout=5)
    try:
        sid = c.tunnel(srv.target())
        c.send(sid, payload, end=True)
        got = c.read_to_end(sid)
        assert got == payload, f"echo: {got!r}"
    finally:
        c.close()
    return time.monotonic() - t0


class Baseline:
    """The daemon after a warm-up (two normal clients): fds and RSS to compare with."""

    def __init__(self, p, certs, srv):
        self.p, self.certs, self.srv = p, certs, srv
        n0 = len(srv.results)
        for _ in range(2):
            serves(p, certs, srv)
        srv.wait_results(n0 + 2)
        time.sleep(0.2)
        self.fds = fd_count(p.pid)
        self.rss = p.rss_kb()
        self.asan = sanitized(p.pid)

    def growth(self):
        return self.p.rss_kb() - self.rss

    def check_rss(self, bound_kb, what):
        g = self.growth()
        print(f"{what}: RSS {self.rss} -> {self.rss + g} KiB (+{g} KiB; bound {bound_kb} KiB)")
        if not (self.asan or VALGRIND):
            assert g <= bound_kb, f"{what}: RSS grew by {g} KiB, bound {bound_kb} KiB"
        return g

    def check_after(self, rss_bound_kb, what):
        """Alive, a normal client served, fds back to the baseline, RSS growth bounded."""
        p = self.p
        assert p.proc.poll() is None, f"connectd died: {p.proc.returncode}"
        took = serves(p, self.certs, self.srv)
        assert took < 2 * SLOW, f"the normal client took {took:.2f}s"
        n = wait_fds(p.pid, self.fds)
        assert n == self.fds, f"{what}: {n} fds, {self.fds} before: leak"
        self.check_rss(rss_bound_kb, what)


def settled(get, quiet=0.3, timeout=3.0):
    """get() once it stopped changing for quiet seconds (bounded by timeout)."""
    deadline = time.monotonic() + timeout
    last, since = get(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = get()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def settings_seen(c):
    assert c.wait(lambda: c.server_settings), f"no SETTINGS from the proxy: {c.describe()}"


# ---- rapid reset (CVE-2023-44487) ---------------------------------------------------------------

RESET_BURST = 1000  # nghttp2_option_set_stream_reset_rate_limit(opt, 1000, 33) in h2.c
RAPID_N = 10000  # HEADERS + RST_STREAM pairs sent back to back: 480 KB


def rst_close(conn, rec):
    """Close with RST: thousands of connections leave no TIME_WAIT behind on either side (which
    could take the port a later test's free_port() picked)."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def counting_server(tcp_server):
    """A destination that counts its connections (accepts) and resets each at once."""
    return tcp_server(rst_close, backlog=4096)


def rapid_reset(p, certs, target):
    """HEADERS (CONNECT target, END_HEADERS) + RST_STREAM (CANCEL) for streams 1, 3, 5, ...,
    RAPID_N pairs in one burst on one connection; then read until the proxy closes it.
    Returns (client, seconds from the burst to the close or None, upstream accepts,
    connectd_http2_streams_total increase)."""
    streams0 = metric(p, "connectd_http2_streams_total")
    accepts0 = target.accepts
    c = raw_h2(p, certs)
    settings_seen(c)
    block = connect_block(target.target())
    rst = struct.pack("!I", CANCEL)
    burst = b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, block) +
                     frame(RST_STREAM, 0, 2 * i + 1, rst) for i in range(RAPID_N))
    t0 = time.monotonic()
    c.write(burst, timeout=10)
    c.wait_closed(3 * SLOW)
    took = time.monotonic() - t0 if c.eof else None
    c.close()
    accepts = settled(lambda: target.accepts) - accepts0
    streams = settled(lambda: metric(p, "connectd_http2_streams_total")) - streams0
    print(f"rapid reset: {RAPID_N} pairs ({len(burst)} bytes), {c.sent} bytes sent in all; "
          f"closed after {took}; {c.describe()}; upstream accepts {accepts}, "
          f"streams counted {streams:g}")
    return c, took, accepts, streams


@pytest.mark.timing
def test_rapid_reset(start_proxy, certs, tcp_server):
    """10000 x (HEADERS CONNECT + RST_STREAM CANCEL) back to back on one connection: a stream
    reset rate limit answers GOAWAY (ENHANCE_YOUR_CALM from connectd's own limit on streams
    cancelled before their tunnel is up, or INTERNAL_ERROR from nghttp2's, burst 1000 and
    33/s) naming a last stream within the burst, and the connection is closed promptly. No
    stream above the GOAWAY's last stream id is acted upon (RFC 9113 section 6.8): the
    destination saw at most one connection per stream up to it (measured: GOAWAY
    ENHANCE_YOUR_CALM, last stream 201, 101 connections, 101 streams counted; before
    connectd's own limit it was INTERNAL_ERROR at 2001, yet 2730 dials). RSS: measured
    +0.7 MiB; bound 4 MiB."""
    echo = tcp_server(echo_handler)
    target = counting_server(tcp_server)
    p = h2_proxy(start_proxy, certs)
    base = Baseline(p, certs, echo)
    c, took, accepts, streams = rapid_reset(p, certs, target)
    assert c.goaway is not None, f"no GOAWAY: {c.describe()}"
    last, code, _ = c.goaway
    assert code in (ENHANCE_YOUR_CALM, INTERNAL_ERROR), f"GOAWAY {err_name(code)}"
    assert last <= 2 * (RESET_BURST + 50) + 1, f"GOAWAY last stream {last}: past the burst"
    assert took is not None and took <= 2 * SLOW, f"connection open {took}s after the burst"
    allowed = (last + 1) // 2
    assert accepts <= allowed, (f"{accepts} upstream connections; the GOAWAY's last stream "
                                f"{last} allows {allowed}")
    assert streams <= allowed, f"{streams:g} streams taken, {allowed} allowed"
    base.check_after(4 * 1024, "rapid reset")


# ---- CONTINUATION flood (CVE-2024-27316 / 28182 family) and trickle ------------------------------

MAX_CONTINUATIONS = 8  # nghttp2_option_set_max_continuations(opt, 8) in h2.c


def continuation(i=0, end=False, size=100):
    return frame(CONTINUATION, END_HEADERS if end else 0, 1, hp_literal(f"x-pad{i}", "a" * size))


def endless_headers(c, target, continuations):
    """HEADERS (CONNECT target, no END_HEADERS) and that many CONTINUATIONs, none ending the
    header block."""
    c.write(frame(HEADERS, 0, 1, connect_block(target)) +
            b"".join(continuation(i) for i in range(continuations)))


def test_continuation_flood(start_proxy, certs, tcp_server):
    """A header block that never ends: 8 CONTINUATIONs are tolerated (the connection stays
    open), the 9th is a connection error, announced (RFC 9113 section 5.4.1): GOAWAY
    PROTOCOL_ERROR or ENHANCE_YOUR_CALM, then the close, at once; a flood of 100000 x 1 KiB
    CONTINUATIONs is cut off just as fast: the proxy stops reading after a few MB at most
    (socket buffers), nothing is dialed. RSS: measured +0.03 MiB; bound 2 MiB."""
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs)
    base = Baseline(p, certs, echo)
    accepts0 = echo.accepts
    c = raw_h2(p, certs)
    settings_seen(c)
    endless_headers(c, echo.target(), MAX_CONTINUATIONS)
    assert c.wait_closed(0.5) is None, f"closed after {MAX_CONTINUATIONS}: {c.describe()}"
    c.write(continuation(MAX_CONTINUATIONS))
    took = c.wait_closed(SLOW)
    assert took is not None, f"open after {MAX_CONTINUATIONS + 1} CONTINUATIONs: {c.describe()}"
    print(f"closed {took:.3f}s after CONTINUATION #{MAX_CONTINUATIONS + 1}: {c.describe()}")
    assert c.goaway is not None and c.goaway[1] in (PROTOCOL_ERROR, ENHANCE_YOUR_CALM), \
        f"no GOAWAY (PROTOCOL_ERROR or ENHANCE_YOUR_CALM) before the close: {c.describe()}"
    c.close()

    f = raw_h2(p, certs)
    settings_seen(f)
    f.write(frame(HEADERS, 0, 1, connect_block(echo.target())))
    one = continuation(size=1000)
    flood = one * 100000
    t0 = time.monotonic()
    f.write(flood, timeout=5)
    took = f.wait_closed(SLOW)
    elapsed = time.monotonic() - t0
    print(f"flood: {f.sent} of {len(flood)} bytes went out, closed after {elapsed:.2f}s: "
          f"{f.describe()}")
    assert took is not None, f"still open {elapsed:.1f}s into the flood: {f.describe()}"
    assert f.goaway is not None and f.goaway[1] in (PROTOCOL_ERROR, ENHANCE_YOUR_CALM), \
        f"no GOAWAY before the close: {f.describe()}"
    assert f.sent < 32 * MiB, f"the proxy took {f.sent} bytes of CONTINUATIONs"
    f.close()
    assert echo.accepts == accepts0, "a never-ending header block was dialed"
    base.check_after(2 * 1024, "CONTINUATION flood")


@pytest.mark.timing
def test_continuation_trickle(start_proxy, certs, tcp_server):
    """HEADERS without END_HEADERS, then one CONTINUATION every 0.45 s (never 8 of them in the
    time): the header block is subject to [timeouts] handshake (1 s), so the connection is
    closed about then (measured: at 2.0 s, the timer ticks each second), not kept open by the
    trickle; a normal client is served meanwhile. RSS: measured +0.03 MiB; bound 2 MiB."""
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs)
    base = Baseline(p, certs, echo)
    c = raw_h2(p, certs)
    settings_seen(c)
    t0 = time.monotonic()
    c.write(frame(HEADERS, 0, 1, connect_block(echo.target())))
    sent = 0
    while sent < MAX_CONTINUATIONS and not c.eof:
        c.write(continuation(sent))
        sent += 1
        if sent == 1:
            serves(p, certs, echo)  # while the block trickles
        c.wait_closed(0.45)
    took = time.monotonic() - t0
    print(f"trickle: closed after {took:.2f}s and {sent} CONTINUATIONs: {c.describe()}")
    assert c.eof, f"still open after {took:.1f}s of trickling"
    assert sent < MAX_CONTINUATIONS, "closed by the CONTINUATION count, not by the timeout"
    assert HANDSHAKE - 0.1 <= took <= HANDSHAKE + 1.0 + SLOW, f"closed after {took:.2f}s"
    assert "closed: handshake_timeout" in p.stderr_text()
    c.close()
    base.check_after(2 * 1024, "CONTINUATION trickle")


# ---- HPACK: an oversized header list, an HPACK bomb ----------------------------------------------


def check_431(headers):
    st = dict(headers)
    assert st.get(":status") == "431", headers
    ps = st.get("proxy-status")
    assert ps is not None, f"no proxy-status field: {headers}"
    member, params, _ = parse_proxy_status(ps)
    assert member == "connectd" and params.get("error") == "http_request_error", ps


def test_oversized_header_list(start_proxy, certs, tcp_server):
    """A CONNECT whose header list is 48 KiB ([limits] max_request_bytes is 16 KiB; HEADERS +
    CONTINUATIONs): that stream is answered 431 with a proxy-status field (and ended), never
    dialed; the connection stays usable: a CONNECT on it then gets its tunnel. RSS: measured
    +0.05 MiB; bound 2 MiB."""
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs)
    base = Baseline(p, certs, echo)
    accepts0 = echo.accepts
    c = H2Client(p.tls_port, certs.ca, timeout=5)
    p.clients.append(c)
    big = [(f"x-big-{i}", "v" * 1000) for i in range(48)]
    sid = c.connect(echo.target(), headers=big)
    st = c.wait_response(sid, 2 * SLOW)
    check_431(st.headers)
    assert st.end_on_headers, st
    assert not c.goaways and not c.eof, c.describe()
    assert echo.accepts == accepts0, "the oversized request was dialed"
    sid = c.tunnel(echo.target())
    c.send(sid, b"same connection", end=True)
    assert c.read_to_end(sid) == b"same connection"
    c.close()
    base.check_after(2 * 1024, "oversized header list")


def test_hpack_bomb(start_proxy, certs, tcp_server):
    """A 4 KiB dynamic-table entry referenced 12000 times in one 16 KiB HEADERS (47 MiB of
    header list), then 131072 times over HEADERS + 8 CONTINUATIONs (512 MiB): each stream is
    answered 431 (proxy-status) within a second, the decoded size costs no memory, and a CONNECT
    on the same connection then gets its 200. RSS: measured +0.1 MiB; bound 2 MiB."""
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs)
    base = Baseline(p, certs, echo)
    c = raw_h2(p, certs)
    settings_seen(c)
    name, value = "x-bomb", "b" * (4096 - 32 - 6)  # fills the 4096-byte table exactly
    entry = hp_literal(name, value, index=True)  # becomes dynamic index 62
    ref = hp_int(62, 7, 0x80)  # one byte: indexed field 62
    assert ref == b"\xbe"
    t0 = time.monotonic()
    c.write(frame(HEADERS, END_HEADERS, 1, connect_block(echo.target()) + entry + ref * 12000))
    assert c.wait(lambda: 1 in c.responses or c.eof, 2 * SLOW), c.describe()
    t1 = time.monotonic() - t0
    check_431(c.responses[1])
    c.write(frame(HEADERS, 0, 3, connect_block(echo.target()) + entry) +
            b"".join(frame(CONTINUATION, END_HEADERS if i == MAX_CONTINUATIONS - 1 else 0, 3,
                           ref * 16384) for i in range(MAX_CONTINUATIONS)))
    t0 = time.monotonic()
    assert c.wait(lambda: 3 in c.responses or c.eof, 2 * SLOW), c.describe()
    t3 = time.monotonic() - t0
    check_431(c.responses[3])
    print(f"HPACK bomb: 431 after {t1:.3f}s and {t3:.3f}s; {c.describe()}")
    assert max(t1, t3) <= SLOW
    c.write(frame(HEADERS, END_HEADERS, 5, connect_block(echo.target())))
    assert c.wait(lambda: 5 in c.responses or c.eof, 2 * SLOW), c.describe()
    assert c.status(5) == 200, c.responses.get(5)
    assert c.goaway is None and not c.eof, c.describe()
    c.close()
    base.check_after(2 * 1024, "HPACK bomb")


# ---- control-frame floods (CVE-2019-9512, 9515, 9518 and kin) --------------------------------

FLOOD_N = 5000  # frames in one burst: 5x the budget of 1000 a second (CONTROL_PER_S in h2.c)
FLOODS = {
    # name: (needs an open stream 1, the i-th frame, read the proxy's answers while sending)
    "settings": (False, lambda i: settings_frame({S_ENABLE_PUSH: 0}), True),
    "ping_reading_acks": (False, lambda i: frame(PING, 0, 0, struct.pack("!Q", i)), True),
    "ping_not_reading_acks": (False, lambda i: frame(PING, 0, 0, struct.pack("!Q", i)), False),
    "window_update_connection": (
        False, lambda i: frame(WINDOW_UPDATE, 0, 0, struct.pack("!I", 1)), True),
    "window_update_stream": (
        True, lambda i: frame(WINDOW_UPDATE, 0, 1, struct.pack("!I", 1)), True),
    # PRIORITY for ever new idle streams (the dependency-tree variant), then on the open one
    "priority": (True, lambda i: frame(PRIORITY, 0, 1 if i % 2 else 3 + 2 * (i // 2),
                                       struct.pack("!IB", 0, 15)), True),
    "empty_data": (True, lambda i: frame(DATA, 0, 1, b""), True),
    "padded_empty_data": (True, lambda i: frame(DATA, PADDED, 1, b"\x00"), True),
}


@pytest.mark.timing
@pytest.mark.parametrize("kind", sorted(FLOODS))
def test_control_frame_flood(start_proxy, certs, tcp_server, kind):
    """5000 frames of one kind in one burst (SETTINGS, PING with and without reading the ACKs,
    WINDOW_UPDATE on stream 0 and on an open stream, PRIORITY, empty DATA, DATA that is all
    padding): GOAWAY ENHANCE_YOUR_CALM and the connection closed at once (connectd allows 1000 such
    frames a second), connectd_http2_floods_total + 1, the open stream's tunnel closed. RSS:
    measured +0.1 MiB; bound 2 MiB."""
    needs_stream, make, read = FLOODS[kind]
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs)
    base = Baseline(p, certs, echo)
    floods0 = metric(p, "connectd_http2_floods_total")
    c = raw_h2(p, certs)
    settings_seen(c)
    if needs_stream:
        c.write(frame(HEADERS, END_HEADERS, 1, connect_block(echo.target())))
        assert c.wait(lambda: 1 in c.responses), c.describe()
        assert c.status(1) == 200, c.responses[1]
    burst = b"".join(make(i) for i in range(FLOOD_N))
    t0 = time.monotonic()
    c.write(burst, read=read, timeout=5)
    took = c.wait_closed(SLOW)
    elapsed = time.monotonic() - t0
    print(f"{kind}: {c.sent} bytes sent; closed {elapsed:.3f}s after the burst began: "
          f"{c.describe()}")
    assert c.goaway is not None and c.goaway[1] == ENHANCE_YOUR_CALM, \
        f"no GOAWAY ENHANCE_YOUR_CALM: {c.describe()}"
    assert took is not None, f"still open {elapsed:.1f}s after the burst: {c.describe()}"
    c.close()
    assert settled(lambda: metric(p, "connectd_http2_floods_total")) == floods0 + 1
    if needs_stream:
        echo.wait_results(3)  # the warm-up's two and the flooded stream's tunnel
        # the flooded stream's tunnel says why it ended
        p.log_lines(1, 5.0, where=lambda x: x.get("reason") == "h2_flood")
    base.check_after(2 * 1024, kind)


def test_protocol_error_by_nghttp2(start_proxy, certs, tcp_server):
    """A connection error nghttp2 handles itself (DATA on stream 0, RFC 9113 section 6.1): GOAWAY
    PROTOCOL_ERROR, the connection closed, and the open stream's tunnel logged with
    reason=h2_protocol_error (it was logged client_eof before connectd looked at the GOAWAY
    nghttp2 sent)."""
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs)
    c = raw_h2(p, certs)
    settings_seen(c)
    c.write(frame(HEADERS, END_HEADERS, 1, connect_block(echo.target())))
    assert c.wait(lambda: 1 in c.responses), c.describe()
    assert c.status(1) == 200, c.responses[1]
    c.write(frame(DATA, 0, 0, b"x"))
    took = c.wait_closed(5 * SLOW)
    assert c.goaway is not None and c.goaway[1] == PROTOCOL_ERROR, c.describe()
    assert took is not None, f"still open: {c.describe()}"
    c.close()
    [line] = p.log_lines(1, 5.0, where=lambda x: x.get("h2") is not None)
    assert line["reason"] == "h2_protocol_error" and line["status"] == "200", line["_raw"]


# ---- zero-window stall ---------------------------------------------------------------------------


class Source:
    """A destination that writes as fast as the proxy takes it (up to limit bytes a
    connection), counting what it got rid of; it stops at the first error (the proxy's close)."""

    def __init__(self, tcp_server, limit=64 * MiB):
        self.sent = collections.Counter()
        self.lock = threading.Lock()
        self.limit = limit
        self.srv = tcp_server(self.handler, backlog=1024)

    def handler(self, conn, rec):
        chunk = b"s" * 65536
        key = conn.getpeername()
        n = 0
        try:
            while n < self.limit:
                k = conn.send(chunk)
                n += k
                with self.lock:
                    self.sent[key] += k
        except OSError as e:
            rec["end"] = repr(e)

    def total(self):
        with self.lock:
            return sum(self.sent.values())


def stall_100(p, certs, src, base):
    """100 streams to src from a client whose SETTINGS_INITIAL_WINDOW_SIZE is 0 and which never
    opens a window; returns (client, monotonic time of the HEADERS, RSS growth once stalled)."""
    c = raw_h2(p, certs, settings={S_INITIAL_WINDOW_SIZE: 0})
    settings_seen(c)
    t0 = time.monotonic()
    c.write(b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, connect_block(src.srv.target()))
                     for i in range(100)))
    assert c.wait(lambda: len(c.responses) == 100, 5), c.describe()
    assert all(c.status(s) == 200 for s in c.responses), c.responses
    total0 = src.total()
    settled(src.total, quiet=0.3, timeout=1.5)
    pushed = src.total() - total0
    grown = base.growth()
    print(f"100 stalled streams: destinations pushed {pushed / MiB:.0f} MiB, proxy RSS "
          f"+{grown} KiB ({grown / 100:.1f} KiB a stream)")
    assert pushed >= 100 * 256 * KiB, f"the destinations sent only {pushed} bytes"
    assert sum(c.data.values()) == 0, f"DATA past a zero window: {c.describe()}"
    return c, t0, grown


def idle_reset(c, t0, idle=2.0):
    """Wait for the proxy to reset the 100 stalled streams at [timeouts] idle."""
    assert c.wait(lambda: len(c.rst) == 100, idle + 1 + 2 * SLOW), (
        f"{len(c.rst)} of 100 stalled streams reset after {time.monotonic() - t0:.1f}s")
    took = time.monotonic() - t0
    print(f"reset after {took:.2f}s: {collections.Counter(map(err_name, c.rst.values()))}")
    assert set(c.rst.values()) == {CANCEL}, c.rst
    assert took >= idle - 0.2, f"reset after {took:.2f}s, before [timeouts] idle"
    c.close()


@pytest.mark.timing
def test_zero_window_stall(start_proxy, certs, tcp_server):
    """100 streams (the default max_concurrent_streams) from a client whose
    SETTINGS_INITIAL_WINDOW_SIZE is 0 and which never opens a window (nor the connection's),
    each to a destination writing as fast as it can: the proxy reads a destination only while
    the stream has room, so it holds about two 64 KiB buffers a stream (measured +13.0 MiB for
    the 100, 132-136 KiB a stream; bound 160 KiB a stream) while the destinations have pushed
    hundreds of MB into the socket buffers, and no DATA is sent; a normal client is served
    meanwhile. With [timeouts] idle = 2s the stalled streams are reset (RST_STREAM CANCEL) at
    about 2 s, every tunnel is closed, and the memory comes back: a second round of 100 stalled
    streams costs no more (RSS after it at most 1 MiB over the first round's; measured +0.15)."""
    echo = tcp_server(echo_handler)
    src = Source(tcp_server)
    p = h2_proxy(start_proxy, certs, timeouts={"idle": "2s"})
    base = Baseline(p, certs, echo)
    c, t0, grown = stall_100(p, certs, src, base)
    base.check_rss(100 * 160, "100 zero-window streams")
    took = serves(p, certs, echo)
    assert took < 2 * SLOW, f"a normal client took {took:.2f}s during the stall"
    idle_reset(c, t0)
    assert wait_fds(p.pid, base.fds) == base.fds, "the reset tunnels' fds are still open"
    first = p.rss_kb()
    c, t0, _ = stall_100(p, certs, src, base)
    again = p.rss_kb()
    print(f"RSS after the first round's reset {first} KiB, with the second 100 stalled "
          f"{again} KiB")
    if not (base.asan or VALGRIND):
        assert again <= first + 1024, f"the second round grew RSS {first} -> {again} KiB"
    idle_reset(c, t0)
    base.check_after(100 * 160, "after the idle resets")


# ---- stream-count exhaustion ---------------------------------------------------------------------


def echo_stream(c, sid, data=b"ping"):
    """DATA on an open raw stream; True when the echo comes back."""
    before = c.data[sid]
    c.write(frame(DATA, 0, sid, data))
    return c.wait(lambda: c.data[sid] >= before + len(data), 2 * SLOW)


def test_stream_limit(start_proxy, certs, tcp_server):
    """max_concurrent_streams = 4: SETTINGS says 4; 4 tunnels are open and a 5th concurrent
    stream is refused as a stream error (RST_STREAM REFUSED_STREAM, what nghttp2 sends for a
    stream over the limit, RFC 9113 section 5.1.2), not dialed; the 4 open ones keep working,
    no GOAWAY; ending one lets a new one in."""
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs, http2={"max_concurrent_streams": "4"})
    base = Baseline(p, certs, echo)
    c = H2Client(p.tls_port, certs.ca, timeout=5)
    p.clients.append(c)
    assert c.remote_settings.get(S_MAX_CONCURRENT_STREAMS) == 4, c.remote_settings
    sids = [c.tunnel(echo.target()) for _ in range(4)]
    for sid in sids:  # every destination accepted (its count is bumped by a server thread)
        c.send(sid, b"up")
        assert c.read_exact(sid, 2, 2 * SLOW) == b"up"
    accepts = echo.accepts
    fifth = c.connect(echo.target(), ignore_limit=True)
    st = c.streams[fifth]
    c.wait(lambda: st.reset is not None or st.headers is not None or c.goaways, 2 * SLOW,
           "an answer to the 5th stream")
    print(f"5th stream: {st!r}; goaways {c.goaways}; eof {c.eof}")
    assert st.reset == REFUSED_STREAM and st.headers is None, st
    assert not c.goaways, c.goaways
    for sid in sids:
        c.send(sid, b"four")
        assert c.read_exact(sid, 4, 2 * SLOW) == b"four"
    assert echo.accepts == accepts, "the refused stream was dialed"
    c.end(sids[0])
    assert c.read_to_end(sids[0]) == b""
    sid = c.tunnel(echo.target())
    c.send(sid, b"room again", end=True)
    assert c.read_to_end(sid) == b"room again"
    c.close()
    base.check_after(2 * 1024, "stream limit")


def test_stream_limit_before_settings_ack(start_proxy, certs, tcp_server):
    """max_concurrent_streams = 4 and a client that never acknowledges the proxy's SETTINGS:
    nghttp2 enforces the pending limit as a stream error: the 5th concurrent stream gets
    RST_STREAM REFUSED_STREAM (no HEADERS, not dialed), the 4 open tunnels keep echoing, no
    GOAWAY; once one of them has ended both ways a new stream gets its 200. RSS: measured
    +0.09 MiB; bound 2 MiB."""
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs, http2={"max_concurrent_streams": "4"})
    base = Baseline(p, certs, echo)
    c = raw_h2(p, certs, ack_settings=False)
    settings_seen(c)
    assert c.server_settings.get(S_MAX_CONCURRENT_STREAMS) == 4, c.server_settings
    block = connect_block(echo.target())
    c.write(b"".join(frame(HEADERS, END_HEADERS, sid, block) for sid in (1, 3, 5, 7)))
    assert c.wait(lambda: len(c.responses) == 4), c.describe()
    accepts = settled(lambda: echo.accepts)
    c.write(frame(HEADERS, END_HEADERS, 9, block))
    assert c.wait(lambda: 9 in c.rst or 9 in c.responses), c.describe()
    assert c.rst.get(9) == REFUSED_STREAM and 9 not in c.responses, c.describe()
    for sid in (1, 3, 5, 7):
        assert echo_stream(c, sid), f"stream {sid} stopped echoing: {c.describe()}"
    assert c.goaway is None and not c.eof, c.describe()
    assert echo.accepts == accepts, "the refused stream was dialed"
    c.write(frame(DATA, END_STREAM, 1, b""))
    assert c.wait(lambda: 1 in c.ended), c.describe()
    c.write(frame(HEADERS, END_HEADERS, 11, block))
    assert c.wait(lambda: 11 in c.responses or 11 in c.rst), c.describe()
    assert c.status(11) == 200, c.describe()
    assert echo_stream(c, 11)
    c.close()
    base.check_after(2 * 1024, "stream limit")


# ---- broken prefaces, silence, a client that vanishes ------------------------------------------


@pytest.mark.parametrize("garbage", [b"\xff" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
                         ids=["ff_bytes", "http1_request"])
def test_garbage_after_preface(start_proxy, certs, tcp_server, garbage):
    """A good preface and SETTINGS, then bytes that are no frame (their 'length' is far over
    SETTINGS_MAX_FRAME_SIZE): GOAWAY FRAME_SIZE_ERROR and the close, at once; nothing dialed.
    RSS: measured +0.02 MiB; bound 2 MiB."""
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs)
    base = Baseline(p, certs, echo)
    accepts = echo.accepts
    c = raw_h2(p, certs)
    settings_seen(c)
    c.write(garbage)
    took = c.wait_closed(SLOW)
    print(f"garbage after the preface: closed after {took}: {c.describe()}")
    assert took is not None, c.describe()
    assert c.goaway is not None and c.goaway[1] == FRAME_SIZE_ERROR, c.describe()
    assert echo.accepts == accepts
    c.close()
    base.check_after(2 * 1024, "garbage after the preface")


@pytest.mark.parametrize("first", [
    b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + settings_frame(),
    b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
], ids=["corrupt_magic", "http1_connect"])
def test_bad_preface(start_proxy, certs, tcp_server, first):
    """After ALPN h2, a preface that is not the client magic (a corrupted one, or an HTTP/1.1
    CONNECT): the connection is closed at once (RFC 9113 section 3.4 lets the GOAWAY be
    omitted), nothing dialed, no HTTP/1.1 answer. RSS: measured +0.02 MiB; bound 2 MiB."""
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs)
    base = Baseline(p, certs, echo)
    accepts = echo.accepts
    c = raw_h2(p, certs, preface=False, ack_settings=False)
    c.write(first)
    took = c.wait_closed(SLOW)
    print(f"bad preface: closed after {took}: {c.describe()}")
    assert took is not None, c.describe()
    assert c.counts[HEADERS] == 0 and b"HTTP/1.1" not in c.inbuf, c.describe()
    assert echo.accepts == accepts
    c.close()
    base.check_after(2 * 1024, "bad preface")


@pytest.mark.timing
@pytest.mark.parametrize("sent", [b"", PREFACE[:10], PREFACE],
                         ids=["nothing", "half_preface", "preface_without_settings"])
def test_no_preface_closed_at_handshake_timeout(start_proxy, certs, tcp_server, sent):
    """TLS with ALPN h2, then nothing / half the client magic / the magic but no SETTINGS: no
    frame ever arrives, and the proxy closes the connection at [timeouts] handshake (1 s), not
    before and not much after; a normal client is served meanwhile. RSS: measured +0.06 MiB;
    bound 2 MiB."""
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs)
    base = Baseline(p, certs, echo)
    t0 = time.monotonic()
    c = raw_h2(p, certs, preface=False, ack_settings=False)
    if sent:
        c.write(sent)
    serves(p, certs, echo)
    c.wait_closed(HANDSHAKE + 2 * SLOW)
    took = time.monotonic() - t0
    print(f"no preface ({sent!r}): closed after {took:.2f}s: {c.describe()}")
    assert c.eof, f"still open after {took:.1f}s"
    assert HANDSHAKE - 0.15 <= took <= HANDSHAKE + SLOW, f"closed after {took:.2f}s"
    c.close()
    base.check_after(2 * 1024, "no preface")


def test_vanish_under_100_streams(start_proxy, certs, tcp_server):
    """A client opens 100 CONNECT streams (tunnels up, 1 KiB echoed on half of them, more in
    flight), then vanishes with a TCP RST: every tunnel is closed (each destination connection
    ends), the fds return to the baseline, and a normal client is served. RSS: measured
    +1 MiB; bound 4 MiB."""
    echo = tcp_server(echo_handler)
    p = h2_proxy(start_proxy, certs)
    base = Baseline(p, certs, echo)
    done0 = len(echo.results)
    c = raw_h2(p, certs)
    settings_seen(c)
    block = connect_block(echo.target())
    c.write(b"".join(frame(HEADERS, END_HEADERS, 2 * i + 1, block) for i in range(100)))
    assert c.wait(lambda: len(c.responses) == 100), c.describe()
    assert all(c.status(s) == 200 for s in c.responses), c.responses
    half = [2 * i + 1 for i in range(0, 100, 2)]
    c.write(b"".join(frame(DATA, 0, sid, b"e" * 1024) for sid in half))
    assert c.wait(lambda: all(c.data[s] >= 1024 for s in half)), c.describe()
    assert fd_count(p.pid) >= base.fds + 100
    c.write(b"".join(frame(DATA, 0, sid, b"f" * 500) for sid in half), read=False)
    c.abort()
    echo.wait_results(done0 + 100, timeout=5 * SLOW)
    base.check_after(4 * 1024, "vanished client")
