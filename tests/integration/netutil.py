"""Small socket helpers for the connectd integration tests: free ports, readiness polling, a raw
CONNECT client (plain TCP, or TLS to an HTTPS-proxy listener) and an HTTP response-head parser.
Loopback only; every wait is bounded."""

import collections
import hashlib
import os
import random
import re
import socket
import ssl
import threading
import time

LOOPBACK4 = "127.0.0.1"
LOOPBACK6 = "::1"

SUCCESS_REPLY = b"HTTP/1.1 200 Connection established\r\n\r\n"

# RFC 9110 reason phrases for every status the proxy may send.
REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


def have_ipv6():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.bind((LOOPBACK6, 0))
        finally:
            s.close()
        return True
    except OSError:
        return False


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# Ports free_port handed out lately (in this process): the kernel may give a port it just freed
# to the next bind(0), so two calls in a row could return the same one (CI once put a plain and a
# tls listener on one port, and once an admin listener on the plain one).
_handed = collections.deque(maxlen=1024)


# Ports are taken below the kernel's ephemeral range (ip_local_port_range) when it leaves room:
# a port bind(0) hands out is one the kernel may give any outgoing connection as its local port
# before the daemon binds it (CI lost that race: "[admin] listen ...: Address already in use").
# Below the range only an explicit bind takes a port.
PORT_FLOOR = 10000


def ephemeral_floor():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port(host=LOOPBACK4, kind=socket.SOCK_STREAM, exclude=()):
    """A port that was free a moment ago on host (racy by nature, good enough on loopback),
    other than those in exclude and than the last 1,024 this function returned; below the
    ephemeral range when there is room (PORT_FLOOR up to it), else one bind(0) gives."""
    top = ephemeral_floor()
    for _ in range(200):
        want = random.randrange(PORT_FLOOR, top) if top > PORT_FLOOR + 2048 else 0
        s = socket.socket(family_of(host), kind)
        try:
            s.bind((host, want))
            port = s.getsockname()[1]
        except OSError:
            continue  # in use: another one
        finally:
            s.close()
        if port not in exclude and port not in _handed:
            _handed.append(port)
            return port
    raise RuntimeError(f"no free port on {host} outside {sorted(exclude)}")


def closed_port(host=LOOPBACK4):
    """A TCP port on host that nothing listens on: bound, then closed without listen()."""
    return free_port(host)


def fmt_hostport(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wait_port(host, port, timeout=5.0, proc=None, probes=None):
    """Poll-connect until host:port accepts TCP, bounded by timeout. Returns True when ready.
    Stops early (False) when proc (a Popen) has exited. The local address of the successful
    probe connection is appended to probes (a list) as "ip:port" / "[ip]:port"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            s = socket.create_connection((host, port), timeout=0.5)
            if probes is not None:
                la = s.getsockname()
                probes.append(fmt_hostport(la[0], la[1]))
            s.close()
            return True
        except OSError:
            time.sleep(0.02)
    return False


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def random_bytes(n):
    return os.urandom(n)


class Response:
    """A parsed HTTP/1.x response head."""

    def __init__(self, raw_head, rest):
        self.raw_head = raw_head  # bytes including the final CRLFCRLF
        self.rest = rest  # bytes received after the head
        text = raw_head.decode("latin-1")
        lines = text.split("\r\n")
        self.status_line = lines[0]
        m = re.match(r"^HTTP/(\d)\.(\d) (\d{3}) ?(.*)$", self.status_line)
        if not m:
            raise AssertionError(f"bad status line: {self.status_line!r} (head {raw_head!r})")
        self.version = f"{m.group(1)}.{m.group(2)}"
        self.status = int(m.group(3))
        self.reason = m.group(4)
        self.headers = []  # list of (name, value), in order
        for line in lines[1:]:
            if line == "":
                continue
            if ":" not in line:
                raise AssertionError(f"bad header line {line!r} in {raw_head!r}")
            k, v = line.split(":", 1)
            if k != k.strip():
                raise AssertionError(f"whitespace around header name {k!r} in {raw_head!r}")
            self.headers.append((k, v.strip(" \t")))

    def header(self, name):
        """The single value of header name (case-insensitive); None when absent; asserts it is
        not repeated."""
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(vals) <= 1, f"header {name} repeated: {vals}"
        return vals[0] if vals else None

    def has_header(self, name):
        return any(k.lower() == name.lower() for k, _ in self.headers)

    def __repr__(self):
        return f"<Response {self.status} {self.headers} rest={self.rest[:80]!r}>"


def parse_proxy_status(value):
    """'connectd; error=dns_error; rcode="NXDOMAIN"' -> ("connectd", {"error": "dns_error",
    "rcode": "NXDOMAIN"}, {"rcode": '"NXDOMAIN"'}) : (member, unquoted params, raw params)."""
    parts = [p.strip() for p in value.split(";")]
    member = parts[0]
    params, raw = {}, {}
    for p in parts[1:]:
        if "=" not in p:
            params[p] = True
            raw[p] = True
            continue
        k, v = p.split("=", 1)
        raw[k.strip()] = v.strip()
        v = v.strip()
        if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
            v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[k.strip()] = v
    return member, params, raw


class Client:
    """A raw client for talking CONNECT to the proxy. All reads are bounded.

    tls: None (plain TCP), or an ssl.SSLContext: the connection to the proxy is TLS (an
    HTTPS-proxy listener), handshake done in the constructor (handshake=False: call handshake()).
    The TLS layer is an ssl.SSLObject over memory BIOs on the TCP socket, because ssl.SSLSocket
    cannot half-close: here shutdown_write() sends close_notify and the read side stays open
    (TLS 1.3 allows it). self.sock stays the TCP socket either way (socket options, addresses,
    selectors); read and write through the methods, not self.sock, for a test to run on both.
    Over TLS, `how` (read_until_close) also says "unclean" (TCP EOF without close_notify) and
    "alert" (a TLS error; self.alert has it); "eof" means close_notify. The SSLObject is locked,
    so one thread may send while another reads."""

    def __init__(self, host, port, source=None, timeout=5.0, tls=None, server_hostname="localhost",
                 handshake=True):
        fam = family_of(host)
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""  # received, not yet consumed
        self.eof = False
        self.reset = False
        self._tls = None
        if tls is not None:
            self._tls_start(tls, server_hostname, timeout, handshake)

    @classmethod
    def accepted(cls, sock, tls, timeout=5.0):
        """The TLS server side of an accepted socket, with this class's methods (the peer of a
        TLS Client in the fixture self-tests)."""
        self = cls.__new__(cls)
        sock.settimeout(timeout)
        self.sock, self.buf, self.eof, self.reset = sock, b"", False, False
        self._tls = None
        self._tls_start(tls, None, timeout, True, server_side=True)
        return self

    @property
    def local_addr(self):
        return self.sock.getsockname()

    def send(self, data, end=False):
        """Send all of data; end: then end the client's direction (shutdown_write), over TLS in
        the same write as the data: the close_notify arrives with the last record."""
        if self._tls is not None:
            self._tls_send(data, end)
            return
        self.sock.sendall(data)
        if end:
            self.shutdown_write()

    def shutdown_write(self):
        """End the client's direction: FIN, or over TLS close_notify (no FIN: TLS-level EOF)."""
        if self._tls is not None:
            self._tls_shutdown()
            return
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        if self._tls is not None:
            self._tls_close()
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Close with RST (SO_LINGER 0); over TLS without close_notify."""
        import struct

        self._abort = True
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def recv(self, n=65536, timeout=5.0):
        """Up to n bytes (buffered ones first), waiting at most timeout for some; b'' at EOF or
        reset; raises socket.timeout when nothing came. Like sock.recv, on either transport."""
        if not self.buf:
            self._recv_some(time.monotonic() + timeout)
        if not self.buf:
            if self.eof:
                return b""
            raise socket.timeout(f"nothing received within {timeout}s")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_nowait(self, n=65536):
        """For a non-blocking self.sock (selectors): sock.recv(n) on plain TCP; over TLS, the
        application bytes decrypted from one recv (all of them: nothing stays pending while the
        socket reads as empty), b'' at EOF, BlockingIOError when none are there yet."""
        if self._tls is None:
            return self.sock.recv(n)
        data = self._tls_drain()
        if data or self.eof:
            return data
        try:
            raw = self.sock.recv(65536)
        except ConnectionResetError:
            self.reset = True
            raw = b""
        self._tls_feed(raw)
        data = self._tls_drain()
        if data or self.eof:
            return data
        raise BlockingIOError("no complete TLS record yet")

    def send_nowait(self, data):
        """For a non-blocking self.sock: sock.send(data) on plain TCP; over TLS all of data,
        the socket blocking (5 s at most) for the time of the send."""
        if self._tls is None:
            return self.sock.send(data)
        self.sock.settimeout(5.0)
        try:
            self._tls_send(data)
        finally:
            self.sock.setblocking(False)
        return len(data)

    def _recv_some(self, deadline):
        """One recv bounded by deadline; returns False on EOF/reset/timeout. Over TLS: True once
        application bytes were added to buf, reading as many TLS records as that takes."""
        if self._tls is not None:
            return self._tls_recv_some(deadline)
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            self.reset = True
            self.eof = True
            return False
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    # ---- TLS (ssl.SSLObject over memory BIOs) --------------------------------------------

    def _tls_start(self, ctx, server_hostname, timeout, handshake, server_side=False):
        self._tls_in = ssl.MemoryBIO()
        self._tls_out = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._tls_in, self._tls_out, server_side=server_side,
                                 server_hostname=server_hostname)
        self._tls_lock = threading.Lock()  # the SSLObject and its BIOs
        self._send_lock = threading.Lock()  # encrypt + send: records leave in order
        self._tcp_eof = False  # EOF (or reset) passed to the TLS layer
        self._notify_sent = False
        self._abort = False
        self.unclean = False  # the proxy's side ended without close_notify
        self.alert = None  # the TLS error that ended the connection
        self.tls_version = None
        if handshake:
            try:
                self.handshake(timeout)
            except AssertionError:
                self.sock.close()
                raise

    def handshake(self, timeout=5.0):
        """Complete the TLS handshake (bounded); AssertionError says why it did not."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with self._tls_lock:
                    self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._tls_flush()
                if not self._tls_fill(deadline):
                    raise AssertionError(f"TLS handshake with the peer: no answer within "
                                         f"{timeout}s") from None
                continue
            except ssl.SSLError as e:
                self._tls_flush()  # our alert, if any
                why = "reset" if self.reset else ("TCP EOF" if self._tcp_eof else "error")
                raise AssertionError(f"TLS handshake with the peer failed ({why}): {e}") from None
            self._tls_flush()
            self.tls_version = self._tls.version()
            return

    def _tls_flush(self):
        """Send what the TLS layer has queued (handshake records, alerts)."""
        with self._send_lock:
            with self._tls_lock:
                out = self._tls_out.read()
            if out:
                self.sock.sendall(out)

    def _tls_feed(self, raw):
        with self._tls_lock:
            if raw:
                self._tls_in.write(raw)
            else:
                self._tcp_eof = True
                self._tls_in.write_eof()

    def _tls_fill(self, deadline):
        """One recv from the socket into the TLS layer, bounded by deadline. False on timeout or
        when EOF was already passed on."""
        if self._tcp_eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            raw = self.sock.recv(65536)
        except socket.timeout:
            return False
        except ConnectionResetError:
            self.reset = True
            raw = b""
        self._tls_feed(raw)
        return True

    def _tls_drain(self):
        """All application bytes the TLS layer can decrypt from what it was fed; sets eof (and
        unclean / alert) when the stream ended. The end is close_notify only when the TLS layer
        reports it before it was told of the TCP EOF: contexts with OP_IGNORE_UNEXPECTED_EOF
        (Python's default) report a bare TCP EOF as a clean end too, and every feed is drained
        at once, so a close_notify is always seen before the EOF fed after it."""
        out = []
        with self._tls_lock:
            while not self.eof:
                try:
                    d = self._tls.read(65536)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:  # the end (read after our close_notify)
                    d = b""
                except ssl.SSLEOFError:  # TCP EOF without close_notify
                    self.unclean = self.eof = True
                    break
                except ssl.SSLError as e:
                    self.alert = str(e)
                    self.eof = True
                    break
                if not d:
                    self.unclean = self._tcp_eof
                    self.eof = True
                    break
                out.append(d)
        return b"".join(out)

    def _tls_recv_some(self, deadline):
        if self.eof:
            return False
        while True:
            d = self._tls_drain()
            if d:
                self.buf += d
                return True
            if self.eof or not self._tls_fill(deadline):
                return False

    def _tls_send(self, data, end=False):
        view = memoryview(data)
        with self._send_lock:
            i = 0
            while i < len(view) or end:
                with self._tls_lock:
                    if i < len(view):
                        i += self._tls.write(view[i:i + 65536])
                    if end and i >= len(view):
                        self._tls_notify()
                        end = False
                    out = self._tls_out.read()
                self.sock.sendall(out)

    def _tls_notify(self):
        """Queue close_notify (the caller holds _tls_lock)."""
        try:
            self._tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # close_notify is queued; the proxy's is not awaited: reading goes on
        self._notify_sent = True

    def _tls_shutdown(self):
        with self._send_lock:
            with self._tls_lock:
                self._tls_notify()
                out = self._tls_out.read()
            self.sock.sendall(out)

    def _tls_close(self):
        """Before the socket closes: close_notify, as real clients send, unless aborting, already
        sent, or the connection is broken. Never waits."""
        if self._abort or self._notify_sent or self.reset or self.alert:
            return
        self._notify_sent = True
        try:
            with self._tls_lock:
                try:
                    self._tls.unwrap()
                except ssl.SSLError:
                    pass
                out = self._tls_out.read()
            self.sock.setblocking(False)
            self.sock.send(out)
        except OSError:
            pass

    def _how_ended(self):
        """reset / alert / unclean / eof (over TLS: close_notify) / timeout."""
        if self.reset:
            return "reset"
        if self.eof:
            if self._tls is not None and self.alert:
                return "alert"
            if self._tls is not None and self.unclean:
                return "unclean"
            return "eof"
        return "timeout"

    def read_head(self, timeout=5.0, limit=65536):
        """Read up to the end of a response head; returns a Response. Raises AssertionError
        on timeout or close before a complete head."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > limit:
                raise AssertionError(f"response head exceeds {limit} bytes: {self.buf[:200]!r}")
            if not self._recv_some(deadline):
                why = self._why()
                raise AssertionError(
                    f"no complete response head within {timeout}s ({why}); got {self.buf!r}"
                )
        i = self.buf.index(b"\r\n\r\n") + 4
        head, self.buf = self.buf[:i], self.buf[i:]
        return Response(head, self.buf)

    def recv_exact(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while len(self.buf) < n:
            if not self._recv_some(deadline):
                why = self._why()
                raise AssertionError(
                    f"wanted {n} bytes, got {len(self.buf)} ({why}) within {timeout}s"
                )
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until_close(self, timeout=5.0):
        """Read until EOF/RST or timeout. Returns (data, how) with how in eof/reset/timeout."""
        deadline = time.monotonic() + timeout
        while self._recv_some(deadline):
            pass
        out, self.buf = self.buf, b""
        return out, self._how_ended()

    def _why(self):
        if self._tls is None:
            return "reset" if self.reset else ("EOF" if self.eof else "timeout")
        return {"reset": "reset", "alert": f"TLS alert: {self.alert}",
                "unclean": "TCP EOF without close_notify", "eof": "close_notify",
                "timeout": "timeout"}[self._how_ended()]

    def wait_closed(self, timeout=5.0):
        """True when the peer closes (EOF or RST; over TLS also without close_notify, or with an
        alert) within timeout, discarding any data."""
        _, how = self.read_until_close(timeout)
        return how in ("eof", "reset", "unclean", "alert")

    # ---- CONNECT conveniences -------------------------------------------------------------
    def connect_request(self, target, extra_headers=b"", host_header=True, early=b""):
        req = b"CONNECT " + target.encode() + b" HTTP/1.1\r\n"
        if host_header:
            req += b"Host: " + target.encode() + b"\r\n"
        req += extra_headers + b"\r\n"
        self.send(req + early)

    def expect_established(self, timeout=5.0):
        """Read exactly the success reply; assert its bytes."""
        got = b""
        deadline = time.monotonic() + timeout
        while len(self.buf) < len(SUCCESS_REPLY):
            if not self._recv_some(deadline):
                break
        got = self.buf[: len(SUCCESS_REPLY)]
        if got != SUCCESS_REPLY:
            # Give a useful message: read what else there is.
            everything, how = self.read_until_close(1.0)
            raise AssertionError(
                f"expected {SUCCESS_REPLY!r}, got {everything[:600]!r} (then {how})"
            )
        self.buf = self.buf[len(SUCCESS_REPLY):]


def open_tunnel(proxy_port, target, proxy_host=LOOPBACK4, timeout=5.0, source=None, tls=None):
    c = Client(proxy_host, proxy_port, source=source, timeout=timeout, tls=tls)
    c.connect_request(target)
    c.expect_established(timeout)
    return c


def check_refusal(client, status, error, timeout=5.0, allow_reset=False, sent_all=True):
    """Read a whole refusal from client and assert its shape:
    status line with the RFC reason, Proxy-Status 'connectd; error=<error>', Connection: close,
    Content-Type, Content-Length equal to the one-line body, no Transfer-Encoding, then the
    proxy closes (EOF; RST also accepted when allow_reset, for requests the proxy did not read
    to the end). Over TLS "EOF" means close_notify. Returns (Response, body, proxy-status
    params)."""
    resp = client.read_head(timeout)
    assert resp.status_line == f"HTTP/1.1 {status} {REASONS[status]}", (
        f"status line {resp.status_line!r}, want 'HTTP/1.1 {status} {REASONS[status]}'; {resp!r}"
    )
    ps = resp.header("Proxy-Status")
    assert ps is not None, f"no Proxy-Status header: {resp.raw_head!r}"
    member, params, raw = parse_proxy_status(ps)
    assert member == "connectd", f"Proxy-Status member {member!r} in {ps!r}"
    errors = error if isinstance(error, tuple) else (error,)
    assert params.get("error") in errors, f"Proxy-Status error {params.get('error')!r} != {error!r}: {ps!r}"
    conn = resp.header("Connection")
    assert conn is not None and conn.lower() == "close", f"Connection header {conn!r}: {resp.raw_head!r}"
    assert resp.header("Content-Type") is not None, f"no Content-Type: {resp.raw_head!r}"
    assert resp.header("Transfer-Encoding") is None, f"Transfer-Encoding on a refusal: {resp.raw_head!r}"
    cl = resp.header("Content-Length")
    assert cl is not None and cl.isdigit(), f"Content-Length {cl!r}: {resp.raw_head!r}"
    cl = int(cl)
    body = client.recv_exact(cl, timeout) if cl else b""
    assert body.endswith(b"\n") and body.count(b"\n") == 1 and len(body) > 1, (
        f"body is not one line: {body!r}"
    )
    rest, how = client.read_until_close(timeout)
    assert rest == b"", f"bytes after the refusal body: {rest[:200]!r}"
    if allow_reset:
        assert how in ("eof", "reset"), f"proxy did not close after the refusal ({how})"
    else:
        assert how == "eof", f"proxy did not close cleanly after the refusal ({how})"
    client.close()  # as a real client would; the proxy may linger until then
    return resp, body, raw


def refusal_for(proxy_port, raw_request, status, error, proxy_host=LOOPBACK4, source=None,
                timeout=5.0, allow_reset=False, tls=None):
    """Send raw_request on a fresh connection (TLS when tls, an ssl.SSLContext, is given: pass
    the proxy's Proxy.tls) and check the refusal."""
    c = Client(proxy_host, proxy_port, source=source, timeout=timeout, tls=tls)
    try:
        c.send(raw_request)
        return check_refusal(c, status, error, timeout=timeout, allow_reset=allow_reset)
    finally:
        c.close()


# ---- access log ----------------------------------------------------------------------------

ACCESS_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
# The client connection's TLS version, on lines of connections to a TLS listener: last field.
ACCESS_TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


def parse_access_line(line):
    """'TS k=v k=v ...' -> dict with 'ts' plus each key. The one place that knows the format.
    A `tls=` field (connections to a TLS listener) must be the last one and name a version of
    ACCESS_TLS_VERSIONS; absent, the line has no 'tls' key."""
    parts = line.rstrip("\n").split(" ")
    out = {"ts": parts[0], "_raw": line}
    for i, p in enumerate(parts[1:], 1):
        if "=" not in p:
            raise AssertionError(f"access log field without '=': {p!r} in {line!r}")
        k, v = p.split("=", 1)
        if k == "tls":
            if i != len(parts) - 1:
                raise AssertionError(f"access log field tls= is not the last one: {line!r}")
            if v not in ACCESS_TLS_VERSIONS:
                raise AssertionError(f"access log tls={v!r}, want one of "
                                     f"{ACCESS_TLS_VERSIONS}: {line!r}")
        out[k] = v
    return out


def drop_probe_lines(lines, probes):
    """Leave out the one line each readiness probe connection produced (the first line with
    that client address: a later client may reuse the port)."""
    left = list(probes)
    out = []
    for x in lines:
        if x.get("client") in left:
            left.remove(x.get("client"))
            continue
        out.append(x)
    return out


def read_access_log(path, n=1, timeout=5.0, where=None, exclude_clients=()):
    """Poll path (bounded) until it has at least n complete lines (matching where, a predicate on
    the parsed dict, when given); returns the parsed lines (all, or the matching ones). Lines
    whose client is in exclude_clients (the fixture's readiness probes) are left out."""
    deadline = time.monotonic() + timeout
    lines = []
    while True:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        text = data.decode("latin-1")
        complete = text.split("\n")[:-1]
        lines = [parse_access_line(x) for x in complete if x]
        lines = drop_probe_lines(lines, exclude_clients)
        sel = [x for x in lines if where(x)] if where else lines
        if len(sel) >= n:
            return sel
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"access log {path}: wanted {n} matching lines within {timeout}s, have "
                f"{len(sel)} matching of {len(complete)}; last lines: {complete[-8:]}"
            )
        time.sleep(0.02)
