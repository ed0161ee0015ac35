"""Small socket helpers for the connectd integration tests: free ports, readiness polling, a raw
CONNECT client and an HTTP response-head parser. Loopback only; every wait is bounded."""

import hashlib
import os
import re
import socket
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


def free_port(host=LOOPBACK4, kind=socket.SOCK_STREAM):
    """A port that was free a moment ago on host (racy by nature, good enough on loopback)."""
    s = socket.socket(family_of(host), kind)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


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
    """A raw TCP client for talking CONNECT to the proxy. All reads are bounded."""

    def __init__(self, host, port, source=None, timeout=5.0):
        fam = family_of(host)
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""  # received, not yet consumed
        self.eof = False
        self.reset = False

    @property
    def local_addr(self):
        return self.sock.getsockname()

    def send(self, data):
        self.sock.sendall(data)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def abort(self):
        """Close with RST (SO_LINGER 0)."""
        import struct

        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def _recv_some(self, deadline):
        """One recv bounded by deadline; returns False on EOF/reset/timeout."""
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

    def read_head(self, timeout=5.0, limit=65536):
        """Read up to the end of a response head; returns a Response. Raises AssertionError
        on timeout or close before a complete head."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > limit:
                raise AssertionError(f"response head exceeds {limit} bytes: {self.buf[:200]!r}")
            if not self._recv_some(deadline):
                why = "reset" if self.reset else ("EOF" if self.eof else "timeout")
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
                why = "reset" if self.reset else ("EOF" if self.eof else "timeout")
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
        if self.reset:
            return out, "reset"
        if self.eof:
            return out, "eof"
        return out, "timeout"

    def wait_closed(self, timeout=5.0):
        """True when the peer closes (EOF or RST) within timeout, discarding any data."""
        _, how = self.read_until_close(timeout)
        return how in ("eof", "reset")

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


def open_tunnel(proxy_port, target, proxy_host=LOOPBACK4, timeout=5.0, source=None):
    c = Client(proxy_host, proxy_port, source=source, timeout=timeout)
    c.connect_request(target)
    c.expect_established(timeout)
    return c


def check_refusal(client, status, error, timeout=5.0, allow_reset=False, sent_all=True):
    """Read a whole refusal from client and assert its shape:
    status line with the RFC reason, Proxy-Status 'connectd; error=<error>', Connection: close,
    Content-Type, Content-Length equal to the one-line body, no Transfer-Encoding, then the
    proxy closes (EOF; RST also accepted when allow_reset, for requests the proxy did not read
    to the end). Returns (Response, body, proxy-status params)."""
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
                timeout=5.0, allow_reset=False):
    """Send raw_request on a fresh connection and check the refusal."""
    c = Client(proxy_host, proxy_port, source=source, timeout=timeout)
    try:
        c.send(raw_request)
        return check_refusal(c, status, error, timeout=timeout, allow_reset=allow_reset)
    finally:
        c.close()


# ---- access log ----------------------------------------------------------------------------

ACCESS_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def parse_access_line(line):
    """'TS k=v k=v ...' -> dict with 'ts' plus each key. The one place that knows the format."""
    parts = line.rstrip("\n").split(" ")
    out = {"ts": parts[0], "_raw": line}
    for p in parts[1:]:
        if "=" not in p:
            raise AssertionError(f"access log field without '=': {p!r} in {line!r}")
        k, v = p.split("=", 1)
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
