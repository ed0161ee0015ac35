"""Helpers for talking to connectd's admin listener ([admin] listen): one raw HTTP/1.1 request
per connection, the whole response read and checked for shape, a Prometheus text parser, and
a helper that appends an [admin] section to a proxy's config. Loopback only; every read is
bounded."""

import re
import socket
import time

from netutil import LOOPBACK4, Response, free_port, parse_proxy_status

# Reason phrases the admin listener may send (src/http.c http_status_text; 200 is "OK" there).
ADMIN_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class AdminReply:
    """One whole admin response: resp (netutil.Response), body (bytes), how the connection
    ended after it (eof / reset / timeout) and the time it took (seconds, connect to close)."""

    def __init__(self, resp, body, how, elapsed):
        self.resp = resp
        self.status = resp.status
        self.body = body
        self.how = how
        self.elapsed = elapsed

    def header(self, name):
        return self.resp.header(name)

    def __repr__(self):
        return (f"<AdminReply {self.resp.status_line!r} {self.resp.headers} "
                f"body={self.body[:200]!r} {self.how}>")


def _recv_until(sock, buf, deadline, pred):
    """recv into buf (a bytearray) until pred(buf), EOF, RST or the deadline; returns ok, eof,
    reset or timeout."""
    while not pred(buf):
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return "timeout"
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        if not d:
            return "eof"
        buf += d
    return "ok"


def read_reply(sock, timeout=5.0, head_only=False, t0=None):
    """Read one admin response from sock (bounded by timeout overall): the head, then the body
    (Content-Length bytes, or up to the close when there is no Content-Length), then wait for the
    close. Asserts a complete head arrived; returns an AdminReply."""
    t0 = time.monotonic() if t0 is None else t0
    deadline = time.monotonic() + timeout
    buf = bytearray()
    how = _recv_until(sock, buf, deadline, lambda b: b"\r\n\r\n" in b)
    if b"\r\n\r\n" not in buf:
        raise AssertionError(
            f"no complete response head within {timeout}s ({how}); got {bytes(buf)!r}")
    i = buf.index(b"\r\n\r\n") + 4
    resp = Response(bytes(buf[:i]), bytes(buf[i:]))
    body = bytearray(buf[i:])
    cl = resp.header("Content-Length")
    if head_only:
        how = _recv_until(sock, body, deadline, lambda b: False)
    elif cl is not None:
        assert cl.isdigit(), f"Content-Length {cl!r}: {resp.raw_head!r}"
        how = _recv_until(sock, body, deadline, lambda b: len(b) >= int(cl))
        if how == "ok":
            how = _recv_until(sock, body, deadline, lambda b: len(b) > int(cl))
            if how == "ok":
                raise AssertionError(f"bytes after the {cl}-byte body: {bytes(body)[:300]!r}")
    else:
        how = _recv_until(sock, body, deadline, lambda b: False)
    return AdminReply(resp, bytes(body), how, time.monotonic() - t0)


def admin_request(port, path="/healthz", method="GET", headers=(), host=LOOPBACK4, source=None,
                  timeout=5.0, raw=None):
    """Send one request (or the raw bytes) on a fresh connection and read the whole response.
    headers: iterable of 'Name: value' strings."""
    t0 = time.monotonic()
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        if source is not None:
            s.bind((source, 0))
        s.connect((host, port))
        if raw is None:
            req = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            req += "".join(h + "\r\n" for h in headers) + "\r\n"
            raw = req.encode("latin-1")
        s.sendall(raw)
        return read_reply(s, timeout, head_only=(method == "HEAD"), t0=t0)
    finally:
        s.close()


def check_shape(r, status):
    """Assert what every admin response has: the exact status line, Connection: close, no
    Transfer-Encoding, the close after the response (EOF), and Content-Length equal to the body
    (except GET /tunnels, whose body ends at the close)."""
    want = f"HTTP/1.1 {status} {ADMIN_REASONS[status]}"
    assert r.resp.status_line == want, f"status line {r.resp.status_line!r}, want {want!r}: {r!r}"
    conn = r.header("Connection")
    assert conn is not None and conn.lower() == "close", f"Connection {conn!r}: {r!r}"
    assert r.header("Transfer-Encoding") is None, f"Transfer-Encoding: {r!r}"
    assert r.how == "eof", f"connection not closed cleanly after the response ({r.how}): {r!r}"


def check_refusal(r, status, error):
    """An admin refusal: check_shape, Proxy-Status 'connectd; error=<error>' (error may be a
    tuple of accepted tokens), a Content-Type, a one-line body of Content-Length bytes."""
    check_shape(r, status)
    ps = r.header("Proxy-Status")
    assert ps is not None, f"no Proxy-Status on a {status}: {r!r}"
    member, params, _ = parse_proxy_status(ps)
    assert member == "connectd", f"Proxy-Status member {member!r}: {ps!r}"
    errors = error if isinstance(error, tuple) else (error,)
    assert params.get("error") in errors, (
        f"Proxy-Status error {params.get('error')!r}, want {error!r}")
    assert r.header("Content-Type") is not None, f"no Content-Type: {r!r}"
    cl = r.header("Content-Length")
    assert cl is not None and int(cl) == len(r.body), f"Content-Length {cl!r}, body {r.body!r}"
    assert r.body.endswith(b"\n") and r.body.count(b"\n") == 1 and len(r.body) > 1, (
        f"body is not one line: {r.body!r}")
    return params


def healthz(port, **kw):
    return admin_request(port, "/healthz", **kw)


# ---- Prometheus text format 0.0.4 ------------------------------------------------------------

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)( -?\d+)?$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text -> {(name, frozenset(labels.items())): float}. Asserts every line is a
    comment (# HELP / # TYPE) or a well-formed sample, and that each sample's family has a TYPE."""
    out = {}
    types = {}
    for line in text.split("\n"):
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            assert parts[1] in ("HELP", "TYPE"), f"bad comment line {line!r}"
            if parts[1] == "TYPE":
                assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), line
                types[parts[2]] = parts[3]
            continue
        m = SAMPLE.match(line)
        assert m, f"bad sample line {line!r}"
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        fam = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or fam in types, f"sample {name} has no # TYPE"
        lab = dict(LABEL.findall(labels))
        v = float(value)  # accepts NaN, +Inf
        key = (name, frozenset(lab.items()))
        assert key not in out, f"sample repeated: {line!r}"
        out[key] = v
    return out


def metric(samples, name, **labels):
    """The value of one sample (None when absent)."""
    return samples.get((name, frozenset(labels.items())))


# ---- config ----------------------------------------------------------------------------------


def admin_section(port=None, **extra):
    """Overrides for start_proxy: {'admin': {'listen': '127.0.0.1:<port>', ...}}; returns
    (overrides, port)."""
    port = port or free_port()
    sec = {"listen": f"{LOOPBACK4}:{port}"}
    sec.update(extra)
    return {"admin": sec}, port
