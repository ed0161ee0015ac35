"""The admin listener ([admin] listen): GET/HEAD /metrics, /healthz, /tunnels; allow_clients and
the Bearer token; hostile and slow clients on the admin port; /healthz during the SIGTERM drain
and [timeouts] grace; the loop guard; reload, workers, privilege drop and socket activation.

Every admin exchange is one request on a fresh connection, read whole (adminutil.read_reply) and
checked for its exact status line, Connection: close and the close after it. Loopback only; every
wait is bounded; only processes this file starts are signalled.
"""

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time

import pytest

from adminutil import (admin_request, admin_section, check_refusal, check_shape, healthz, metric,
                       parse_metrics, read_reply)
from conftest import BASE_CONFIG, REPO, merge, render_ini
from netutil import LOOPBACK4, check_refusal as check_proxy_refusal, free_port, wait_port
from servers import echo_handler

TOKEN = "s3cr3t-T0ken.for_connectd~ok"  # 28 visible ASCII characters
CORPUS = os.path.join(REPO, "tests", "data", "requests")
NOT_CASES = {"EXPECTED", "README", ".gitattributes"}


def ov(*dicts):
    """Merge override dicts {section: {key: value}} left to right."""
    out = {}
    for d in dicts:
        out = merge(out, d)
    return out


def refused(port, host=LOOPBACK4):
    """True when nothing accepts TCP on host:port."""
    s = socket.socket()
    s.settimeout(2)
    try:
        return s.connect_ex((host, port)) != 0
    finally:
        s.close()


def echo_ok(c, data=b"ping"):
    c.send(data)
    assert c.recv_exact(len(data), timeout=5) == data


def get_metrics(port, **kw):
    r = admin_request(port, "/metrics", **kw)
    check_shape(r, 200)
    return parse_metrics(r.body.decode("utf-8"))


def get_tunnels(port, query="", **kw):
    r = admin_request(port, "/tunnels" + query, **kw)
    check_shape(r, 200)
    assert r.header("Content-Type") == "application/json", r
    assert r.header("Content-Length") is None, f"/tunnels is streamed to the close: {r!r}"
    doc = json.loads(r.body.decode("utf-8"))
    assert set(doc) == {"tunnels", "count", "truncated"}, doc
    assert doc["count"] == len(doc["tunnels"]), doc
    return doc


# ---- 1. the endpoints ------------------------------------------------------------------------


def test_endpoints(start_proxy):
    o, aport = admin_section()
    p = start_proxy(o)
    p.wait_log(f"listening on 127.0.0.1:{aport} (admin)")

    r = healthz(aport)
    check_shape(r, 200)
    assert r.body == b"ok\n", r
    assert r.header("Content-Type").startswith("text/plain"), r
    assert r.header("Content-Length") == "3", r
    assert r.header("Proxy-Status") is None, r

    r = admin_request(aport, "/metrics")
    check_shape(r, 200)
    assert r.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8", r
    assert int(r.header("Content-Length")) == len(r.body) > 0, r
    m = parse_metrics(r.body.decode("utf-8"))
    assert metric(m, "connectd_build_info", version=_version(p)) == 1, "no build_info"
    assert metric(m, "connectd_draining") == 0
    assert metric(m, "connectd_tunnels_open") == 0
    assert metric(m, "connectd_workers", state="live") == 1
    assert metric(m, "connectd_admin_requests_total", code="200") == 1  # the /healthz above

    # HEAD: the same head, no body.
    for path, ctype in (("/metrics", "text/plain; version=0.0.4; charset=utf-8"),
                        ("/healthz", "text/plain; charset=utf-8")):
        r = admin_request(aport, path, method="HEAD")
        check_shape(r, 200)
        assert r.body == b"", f"HEAD {path} sent a body: {r!r}"
        assert r.header("Content-Type") == ctype, r
        assert int(r.header("Content-Length")) > 0, r
    r = admin_request(aport, "/tunnels", method="HEAD")
    check_shape(r, 200)
    assert r.body == b"", r

    for path in ("/", "/nope", "/metrics/", "/Metrics", "/healthz/x", "/proxy.pac"):
        r = admin_request(aport, path)
        check_refusal(r, 404, "http_request_error")
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "CONNECT"):
        r = admin_request(aport, "/metrics", method=method)
        check_refusal(r, 405, ("http_request_error", "http_request_denied"))
        assert r.header("Allow") == "GET, HEAD", r
    for raw in (b"garbage\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
                b"GET healthz HTTP/1.1\r\n\r\n", b"GET /healthz HTTP/1.1 x\r\n\r\n",
                f"CONNECT 127.0.0.1:{p.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()):
        r = admin_request(aport, raw=raw)
        check_refusal(r, 400, "http_request_error")

    m = get_metrics(aport)
    assert metric(m, "connectd_admin_requests_total", code="200") == 5, m
    assert metric(m, "connectd_admin_requests_total", code="404") == 6
    assert metric(m, "connectd_admin_requests_total", code="405") == 5
    assert metric(m, "connectd_admin_requests_total", code="400") == 5
    # The proxy port is not the admin port.
    c = p.client()
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    check_proxy_refusal(c, 405, "http_request_denied")


def _version(p):
    r = subprocess.run([p.binary, "-V"], capture_output=True, timeout=10)
    return r.stdout.decode().split()[-1]


# Exact answers of the request reader (include/admin_http.h); one proxy for all.
PARSE_CASES = [
    (b"GET /healthz HTTP/1.1\r\n\r\n", 200),
    (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
    (b"GET /healthz HTTP/1.9\r\n\r\n", 200),
    (b"GET /healthz HTTP/1.1\n\n", 200),
    (b"GET /healthz?x=1 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 200),
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
    (b"GET /healthz HTTP/3.0\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1x\r\n\r\n", 400),
    (b"GET /healthz  HTTP/1.1\r\n\r\n", 400),
    (b"\r\nGET /healthz HTTP/1.1\r\n\r\n", 400),
    (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 65 + b"\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    (b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
    (b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\n folded\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nNoColon\r\n\r\n", 400),
    (b"GET /he\x80lthz HTTP/1.1\r\n\r\n", 400),
    (b"G\xc3\x89T /healthz HTTP/1.1\r\n\r\n", 400),
    (b"GETTTTTTTTTTTTTTT /healthz HTTP/1.1\r\n\r\n", 400),
    (b"GET /tunnels?limit=abc HTTP/1.1\r\n\r\n", 400),
    (b"GET /tunnels?limit= HTTP/1.1\r\n\r\n", 400),
    (b"GET /tunnels?limit=-1 HTTP/1.1\r\n\r\n", 400),
    (b"GET /tunnels?limit=1234567890 HTTP/1.1\r\n\r\n", 400),
    (b"GET /tunnels?limit=5&limit=x HTTP/1.1\r\n\r\n", 200),
    (b"GET /tunnels?limit=0 HTTP/1.1\r\n\r\n", 200),
]


def test_request_reader_exact_statuses(start_proxy):
    o, aport = admin_section()
    start_proxy(o)
    bad = []
    for raw, status in PARSE_CASES:
        try:
            r = admin_request(aport, raw=raw)
            if status == 200:
                check_shape(r, 200)
            else:
                check_refusal(r, status, "http_request_error")
        except AssertionError as e:
            bad.append(f"{raw[:80]!r}: want {status}: {e}")
    assert not bad, "\n".join(bad)


def test_pipelined_and_split_requests(start_proxy):
    """One request per connection: bytes after the first request are ignored (one response,
    then the close); a request dribbled in byte by byte is answered like one sent at once."""
    o, aport = admin_section()
    start_proxy(o)
    r = admin_request(aport, raw=b"GET /healthz HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")
    check_shape(r, 200)
    assert r.body == b"ok\n", r
    r = admin_request(aport, raw=b"GET /healthz HTTP/1.1\r\n\r\nGARBAGE\x00\x01\r\n\r\n" * 50)
    check_shape(r, 200)
    assert r.body == b"ok\n", r
    s = socket.create_connection((LOOPBACK4, aport), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n":
            s.send(bytes([b]))
            time.sleep(0.003)
        r = read_reply(s, timeout=5)
    finally:
        s.close()
    check_shape(r, 200)
    assert r.body == b"ok\n", r
    # A client that half-closes right after its request still gets the answer.
    s = socket.create_connection((LOOPBACK4, aport), timeout=5)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        r = read_reply(s, timeout=5)
    finally:
        s.close()
    check_shape(r, 200)
    assert r.body == b"ok\n", r


def test_admin_connections_not_in_max_connections(start_proxy, tcp_server):
    """The admin listener has its own budget: a proxy at max_connections still answers it, and
    admin connections do not take proxy slots."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(ov(o, {"limits": {"max_connections": "1"}}))
    p.settle()
    t = p.tunnel(srv.target())
    c = p.client()
    c.connect_request(srv.target())
    check_proxy_refusal(c, 503, "proxy_internal_response")
    for path in ("/healthz", "/metrics", "/tunnels"):
        check_shape(admin_request(aport, path), 200)
    t.close()
    held = [socket.create_connection((LOOPBACK4, aport), timeout=5) for _ in range(5)]
    try:
        deadline = time.monotonic() + 3
        while True:
            try:
                t = p.tunnel(srv.target())
                break
            except AssertionError:  # the closed tunnel's slot is freed when its close is seen
                assert time.monotonic() < deadline, "no proxy slot while admin connections are open"
                time.sleep(0.05)
        echo_ok(t)
    finally:
        for s in held:
            s.close()


def test_admin_ipv6(start_proxy):
    from netutil import have_ipv6
    if not have_ipv6():
        pytest.skip("no IPv6 loopback")
    aport = free_port("::1")
    p = start_proxy({"admin": {"listen": f"[::1]:{aport}"}})
    p.wait_log(f"listening on [::1]:{aport} (admin)")
    r = healthz(aport, host="::1")
    check_shape(r, 200)
    assert r.body == b"ok\n"
    p.rewrite_config({"admin": {"allow_clients": "127.0.0.0/8"}})
    p.signal(signal.SIGHUP)
    p.wait_log("reloaded")
    check_refusal(healthz(aport, host="::1"), 403, "http_request_denied")


def test_connection_cap(start_proxy):
    """At most 32 admin connections per process: with 32 connections that have their answer but
    keep the connection open, the next ones are refused 503 at once (none waits); once those
    close, the listener answers again."""
    o, aport = admin_section()
    start_proxy(o)
    held, answers = [], []
    try:
        for _ in range(40):
            s = socket.create_connection((LOOPBACK4, aport), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            held.append(s)
            time.sleep(0.005)
        for s in held:
            s.settimeout(3)
            d = b""
            while b"\r\n\r\n" not in d:
                chunk = s.recv(4096)
                if not chunk:
                    break
                d += chunk
            answers.append(d.split(b"\r\n")[0])
    finally:
        for s in held:
            s.close()
    assert answers.count(b"HTTP/1.1 200 OK") == 32, answers
    assert answers.count(b"HTTP/1.1 503 Service Unavailable") == 8, answers
    deadline = time.monotonic() + 3
    while True:
        r = healthz(aport)
        if r.status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    check_shape(r, 200)


def test_refused_clients_do_not_starve_allowed(start_proxy):
    """Clients outside [admin] allow_clients must not be able to keep an allowed client out:
    40 connections from 127.0.0.1 (not allowed; each gets its 403 and then simply stays
    connected), then a scraper from 127.0.0.2 (allowed) asks for /metrics: it gets 200."""
    o, aport = admin_section(allow_clients="127.0.0.2/32")
    start_proxy(o)
    held = []
    try:
        for _ in range(40):
            held.append(socket.create_connection((LOOPBACK4, aport), timeout=5))
        time.sleep(0.2)
        r = admin_request(aport, "/metrics", source="127.0.0.2", timeout=2)
        assert r.status == 200, (
            f"allowed scraper refused while refused clients hold connections: {r!r}")
        check_shape(r, 200)
    finally:
        for s in held:
            s.close()


# ---- 2. allow_clients ------------------------------------------------------------------------


def test_allow_clients(start_proxy):
    o, aport = admin_section(allow_clients="127.0.0.2/32")
    p = start_proxy(o)
    r = healthz(aport)  # from 127.0.0.1
    params = check_refusal(r, 403, "http_request_denied")
    assert params.get("details") == "client not allowed", params
    r = admin_request(aport, "/metrics", source="127.0.0.2")
    check_shape(r, 200)
    assert b"connectd_build_info" in r.body
    r = healthz(aport, source="127.0.0.2")
    check_shape(r, 200)
    assert r.body == b"ok\n"
    p.wait_log("admin: refused 127.0.0.1:")
    # [access] allow_clients is the proxy's own: 127.0.0.1 still tunnels.
    c = p.client()
    c.connect_request("nx.test:443")
    check_proxy_refusal(c, 502, "dns_error")


def test_allow_clients_default_is_loopback(start_proxy):
    o, aport = admin_section()
    start_proxy(o)
    for src in ("127.0.0.1", "127.0.0.2", "127.255.255.254"):
        r = healthz(aport, source=src)
        check_shape(r, 200)


# ---- 3. token_file ---------------------------------------------------------------------------


def test_token(start_proxy, tmp_path):
    tf = tmp_path / "admin.token"
    tf.write_text(f"  {TOKEN}  \nsecond line is ignored\n")
    o, aport = admin_section(token_file=str(tf))
    p = start_proxy(o)

    # /healthz answers without the token (a load balancer's check says nothing secret).
    r = admin_request(aport, "/healthz")
    check_shape(r, 200)
    assert r.body == b"ok\n"
    for path in ("/metrics", "/tunnels", "/nope"):
        r = admin_request(aport, path)
        params = check_refusal(r, 401, "http_request_denied")
        assert r.header("WWW-Authenticate") == 'Bearer realm="connectd"', r
        assert params.get("details") == "token required", params
    for auth in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", "Bearer ", f"{TOKEN}",
                 f"Basic {TOKEN}", f"Bearer{TOKEN}", f"Bearer {TOKEN.upper()}",
                 f"Bearer {TOKEN} extra", f"Token {TOKEN}"):
        r = admin_request(aport, "/metrics", headers=[f"Authorization: {auth}"])
        check_refusal(r, 401, "http_request_denied")
        assert r.header("WWW-Authenticate") == 'Bearer realm="connectd"', (auth, r)
        assert b"connectd_" not in r.body
    p.wait_log("admin: no token from 127.0.0.1:")
    p.wait_log("admin: wrong token from 127.0.0.1:")
    assert TOKEN not in p.stderr_text(), "the token was logged"

    for auth in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer   {TOKEN}",
                 f"Bearer {TOKEN}  "):
        r = admin_request(aport, "/metrics", headers=[f"Authorization: {auth}"])
        check_shape(r, 200)
        assert b"connectd_build_info" in r.body, (auth, r)
    r = admin_request(aport, "/healthz", headers=[f"authorization: Bearer {TOKEN}"])
    check_shape(r, 200)
    assert r.body == b"ok\n"
    r = admin_request(aport, "/tunnels", headers=[f"Authorization: Bearer {TOKEN}"])
    check_shape(r, 200)
    assert json.loads(r.body)["count"] == 0
    m = get_metrics(aport, headers=[f"Authorization: Bearer {TOKEN}"])
    assert metric(m, "connectd_admin_requests_total", code="401") == 13, m


def _ini_with_admin(tmp_path, admin):
    """A proxy.ini for `connectd -t`: BASE_CONFIG plus admin; returns (path, {key: line})."""
    cfg = merge(BASE_CONFIG, {"server": {"listen": f"127.0.0.1:{free_port()}"},
                              "dns": {"servers": "127.0.0.1:53"}})
    cfg["admin"] = dict(admin)
    text = render_ini(cfg)
    ini = tmp_path / "check.ini"
    ini.write_text(text)
    lines = {}
    sec = None
    for n, line in enumerate(text.split("\n"), 1):
        if line.startswith("["):
            sec = line.strip("[]")
        elif sec == "admin" and "=" in line:
            lines[line.split("=")[0].strip()] = n
    return ini, lines


@pytest.mark.parametrize("case,content,why", [
    ("short", "0123456789abcde\n", "the token must be 16 to 256 characters long (has 15)"),
    ("long", "a" * 257 + "\n", "the token must be 16 to 256 characters long (has 257)"),
    ("empty", "", "the token must be 16 to 256 characters long (has 0)"),
    ("blank-first-line", "\n" + TOKEN + "\n", None),
    ("inner-space", "abcdefgh ijklmnopq\n", "only visible ASCII"),
    ("non-ascii", "abcdefghijklmnop\u00e9\n", "only visible ASCII"),
    ("missing", None, None),
])
def test_token_file_errors(cli, tmp_path, case, content, why):
    tf = tmp_path / "tok"
    if content is not None:
        tf.write_bytes(content.encode("utf-8"))
    ini, lines = _ini_with_admin(tmp_path, {"listen": f"127.0.0.1:{free_port()}",
                                            "token_file": str(tf)})
    r = cli("-t", "-c", str(ini))
    if case == "blank-first-line":
        # Leading whitespace (the empty first line included) is skipped: the token is read.
        assert r.returncode == 0, r.err
        return
    assert r.returncode == 1, (r.returncode, r.out, r.err)
    prefix = f"{ini}:{lines['token_file']}: [admin] token_file: "
    assert prefix in r.err, r.err
    if why:
        assert why in r.err, r.err
    else:
        assert str(tf) in r.err, r.err
    assert TOKEN not in r.err


def test_token_file_relative_and_valid(cli, tmp_path):
    (tmp_path / "t").write_text("0123456789abcdef")  # exactly 16, no newline
    ini, _ = _ini_with_admin(tmp_path, {"listen": f"127.0.0.1:{free_port()}", "token_file": "t"})
    r = cli("-t", "-c", str(ini))
    assert r.returncode == 0, r.err


def test_admin_listen_config_errors(cli, tmp_path):
    port = free_port()
    cfg = merge(BASE_CONFIG, {"server": {"listen": f"127.0.0.1:{port}"},
                              "dns": {"servers": "127.0.0.1:53"}})
    cfg["admin"] = {"listen": f"127.0.0.1:{port}"}
    ini = tmp_path / "dup.ini"
    ini.write_text(render_ini(cfg))
    r = cli("-t", "-c", str(ini))
    assert r.returncode == 1
    assert f"[admin] listen: 127.0.0.1:{port} is also in [server] listen" in r.err, r.err
    cfg["admin"] = {"listen": "127.0.0.1"}
    ini.write_text(render_ini(cfg))
    r = cli("-t", "-c", str(ini))
    assert r.returncode == 1 and "[admin] listen" in r.err, r.err
    cfg["admin"] = {"listen": "", "allow_clients": "10.0.0.0/33"}
    ini.write_text(render_ini(cfg))
    r = cli("-t", "-c", str(ini))
    assert r.returncode == 1 and "[admin] allow_clients" in r.err, r.err
    cfg["admin"] = {"listen": ""}
    cfg["timeouts"]["grace"] = "2"
    ini.write_text(render_ini(cfg))
    r = cli("-t", "-c", str(ini))
    assert r.returncode == 1 and "[timeouts] grace" in r.err, r.err


# ---- 4. /tunnels -----------------------------------------------------------------------------


def test_tunnels_json(start_proxy, tcp_server):
    """Three tunnels with known byte counts: /tunnels lists each with its client, target,
    upstream, state relay and the bytes each way; ?limit= cuts the list and says so."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(o)
    p.settle()
    assert get_tunnels(aport) == {"tunnels": [], "count": 0, "truncated": False}
    sizes = [1000, 2345, 7001]
    tunnels = []
    for n in sizes:
        c = p.tunnel(srv.target())
        data = os.urandom(n)
        c.send(data)
        assert c.recv_exact(n) == data
        tunnels.append(c)
    want = {f"127.0.0.1:{c.local_addr[1]}": n for c, n in zip(tunnels, sizes)}

    deadline = time.monotonic() + 3
    while True:
        doc = get_tunnels(aport)
        got = {t["client"]: (t["bytes_up"], t["bytes_down"]) for t in doc["tunnels"]}
        if got == {k: (n, n) for k, n in want.items()} or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert doc["count"] == 3 and doc["truncated"] is False, doc
    assert got == {k: (n, n) for k, n in want.items()}, doc
    for t in doc["tunnels"]:
        assert set(t) == {"client", "user", "target", "upstream", "state", "age_seconds",
                          "bytes_up", "bytes_down", "rule", "worker", "parent", "tls", "h2"}, t
        assert t["parent"] is None, t
        assert t["tls"] is None, t  # a plain listener
        assert t["h2"] is None, t  # not an HTTP/2 stream
        assert t["target"] == srv.target(), t
        assert t["upstream"] == f"127.0.0.1:{srv.port}", t
        assert t["state"] == "relay", t
        assert t["user"] is None, t
        assert t["worker"] == 0, t
        assert isinstance(t["age_seconds"], (int, float)) and 0 <= t["age_seconds"] < 30, t
    entries = {t["client"]: t for t in doc["tunnels"]}
    ages = {t["client"]: t["age_seconds"] for t in doc["tunnels"]}
    oldest = f"127.0.0.1:{tunnels[0].local_addr[1]}"
    assert ages[oldest] == max(ages.values()), ages

    doc = get_tunnels(aport, "?limit=2")
    assert doc["count"] == 2 and len(doc["tunnels"]) == 2 and doc["truncated"] is True, doc
    assert {t["client"] for t in doc["tunnels"]} <= set(want), doc
    doc = get_tunnels(aport, "?limit=3")
    assert doc["count"] == 3 and doc["truncated"] is False, doc
    doc = get_tunnels(aport, "?limit=0")
    assert doc == {"tunnels": [], "count": 0, "truncated": True}, doc
    r = admin_request(aport, "/tunnels?limit=abc")
    check_refusal(r, 400, "http_request_error")

    # A tunnel that ends leaves the list; its access line carries the rule /tunnels showed.
    tunnels[0].close()
    line = p.log_lines(1, where=lambda x: x.get("client") == oldest)[0]
    match = [t for t in get_tunnels(aport)["tunnels"] if t["client"] == oldest]
    assert match == [], match
    want_rule = None if line["rule"] == "-" else line["rule"]
    assert entries[oldest]["rule"] == want_rule, (entries[oldest], line["_raw"])
    deadline = time.monotonic() + 3
    while get_tunnels(aport)["count"] != 2:
        assert time.monotonic() < deadline, get_tunnels(aport)
        time.sleep(0.05)
    m = get_metrics(aport)
    assert metric(m, "connectd_tunnels_open") == 2, m


def test_tunnels_user_and_rule(start_proxy, tcp_server, tmp_path):
    """/tunnels names the authenticated user and the policy rule that allowed the tunnel, as the
    access log does."""
    from authfix import basic, make_hash, write_users
    srv = tcp_server(echo_handler)
    users = write_users(tmp_path / "users", {"alice": make_hash("pw-alice", "$6$")})
    pol = tmp_path / "policy.yaml"
    pol.write_text("rules:\n  - name: lab-echo\n    hosts: [127.0.0.1]\n"
                   f"    ports: [{srv.port}]\n    action: allow\n")
    o, aport = admin_section()
    p = start_proxy(ov(o, {"auth": {"users_file": users}, "access": {"policy": str(pol)}}))
    c = p.client()
    c.connect_request(srv.target(), extra_headers=basic("alice", "pw-alice"))
    c.expect_established()
    echo_ok(c, b"abc")
    deadline = time.monotonic() + 3
    while True:
        doc = get_tunnels(aport)
        relay = [t for t in doc["tunnels"] if t["state"] == "relay"]
        if (relay and relay[0]["bytes_down"] == 3) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    [t] = relay
    assert t["user"] == "alice" and t["rule"] == "lab-echo", t
    assert (t["bytes_up"], t["bytes_down"]) == (3, 3), t
    me = f"127.0.0.1:{c.local_addr[1]}"
    c.close()
    line = p.log_lines(1, where=lambda x: x.get("client") == me)[0]
    assert (line["user"], line["rule"]) == ("alice", "lab-echo"), line["_raw"]


def test_tunnels_lists_handshakes_in_progress(start_proxy, tcp_server):
    """A client that has not finished its request is listed in state 'request' with no target
    yet; many tunnels stream over several batches (128 per batch) without loss."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(o)
    p.settle()
    half = p.client()
    half.send(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n")
    many = [p.tunnel(srv.target()) for _ in range(300)]
    deadline = time.monotonic() + 3
    while True:
        doc = get_tunnels(aport)
        if doc["count"] == 301 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert doc["count"] == 301 and doc["truncated"] is False, (doc["count"], doc["truncated"])
    states = sorted(t["state"] for t in doc["tunnels"])
    assert states == ["relay"] * 300 + ["request"], set(states)
    [h] = [t for t in doc["tunnels"] if t["state"] == "request"]
    assert h["client"] == f"127.0.0.1:{half.local_addr[1]}", h
    assert h["upstream"] is None and h["bytes_up"] == 0 and h["bytes_down"] == 0, h
    clients = [t["client"] for t in doc["tunnels"]]
    assert len(set(clients)) == 301, "a tunnel listed twice"
    doc = get_tunnels(aport, "?limit=200")
    assert doc["count"] == 200 and doc["truncated"] is True
    for c in many:
        c.close()


def test_tunnels_stream_while_tunnels_close(start_proxy, tcp_server):
    """GET /tunnels over 600 tunnels, read slowly through a small receive window while half of
    the tunnels close: the JSON stays valid, no tunnel is listed twice, every listed one was
    opened by the test, and every tunnel that stayed open the whole time is listed."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(o)
    p.settle()
    tunnels = [p.tunnel(srv.target()) for _ in range(600)]
    name = {f"127.0.0.1:{c.local_addr[1]}": c for c in tunnels}
    closing = tunnels[1::2]
    staying = {f"127.0.0.1:{c.local_addr[1]}" for c in tunnels[0::2]}
    for round_ in range(3):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.settimeout(5)
        s.connect((LOOPBACK4, aport))
        s.sendall(b"GET /tunnels HTTP/1.1\r\n\r\n")
        data = bytearray()
        deadline = time.monotonic() + 20
        part = closing[round_ * 100:(round_ + 1) * 100]
        while time.monotonic() < deadline:
            d = s.recv(1024)
            if not d:
                break
            data += d
            if part and len(data) > 2048:
                # The walk is under way and, with this client not reading, soon stalls on
                # full buffers: close the oldest tunnels (listed last) meanwhile.
                for c in part:
                    c.abort()
                part = []
                time.sleep(0.3)
        s.close()
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
        doc = json.loads(body)
        clients = [t["client"] for t in doc["tunnels"]]
        assert doc["count"] == len(clients) and doc["truncated"] is False, doc["count"]
        assert len(set(clients)) == len(clients), "a tunnel listed twice"
        assert set(clients) <= set(name), set(clients) - set(name)
        assert staying <= set(clients), f"{len(staying - set(clients))} open tunnels not listed"
    for c in tunnels[0::2][:20]:
        echo_ok(c)
    check_shape(healthz(aport), 200)


def test_tunnels_client_that_never_reads(start_proxy, tcp_server):
    """A /tunnels client that stops reading does not hold the loop: other admin requests and
    tunnels are served meanwhile."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(o)
    tunnels = [p.tunnel(srv.target()) for _ in range(300)]
    stuck = []
    for _ in range(4):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        s.settimeout(5)
        s.connect((LOOPBACK4, aport))
        s.sendall(b"GET /tunnels?limit=100000 HTTP/1.1\r\n\r\n")
        stuck.append(s)
    try:
        t0 = time.monotonic()
        r = admin_request(aport, "/metrics")
        check_shape(r, 200)
        assert time.monotonic() - t0 < 1.0
        echo_ok(tunnels[0])
        echo_ok(p.tunnel(srv.target()))
    finally:
        for s in stuck:
            s.close()
    check_shape(healthz(aport), 200)


# ---- 5. hostile input ------------------------------------------------------------------------


def _corpus_files():
    return sorted(f for f in os.listdir(CORPUS) if f not in NOT_CASES)


def test_malformed_corpus_on_admin_port(start_proxy, tcp_server):
    """Every file of the malformed-request corpus, sent in one write to the admin port, gets a
    complete 4xx/5xx response (exact shape) followed by a close, or a plain close; those that
    wait for more bytes get 408 at ADMIN_TIMEOUT (10 s). The daemon serves on afterwards."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(o)
    files = _corpus_files()
    assert len(files) >= 60, files
    answered, pending, bad = {}, [], []
    for name in files:
        with open(os.path.join(CORPUS, name), "rb") as f:
            raw = f.read().replace(b"{PORT5}", b"%05d" % srv.port).replace(
                b"{PORT}", b"%d" % srv.port)
        s = socket.create_connection((LOOPBACK4, aport), timeout=5)
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before all of it was read
        s.settimeout(1.0)
        try:
            first = s.recv(65536, socket.MSG_PEEK)
        except socket.timeout:
            pending.append((name, s, time.monotonic()))
            continue
        except ConnectionResetError:
            first = b""
        try:
            r = read_reply(s, timeout=3)
            if not (400 <= r.status <= 599):
                bad.append(f"{name}: status {r.status}: {r!r}")
            else:
                check_refusal(r, r.status, ("http_request_error", "http_request_denied"))
                answered[name] = r.status
        except AssertionError as e:
            if first == b"":
                answered[name] = "close"
            else:
                bad.append(f"{name}: {e}")
        finally:
            s.close()
    for name, s, t0 in pending:
        try:
            r = read_reply(s, timeout=max(0.5, t0 + 12 - time.monotonic()))
            check_refusal(r, 408, "http_request_error")
            answered[name] = 408
            assert time.monotonic() - t0 > 8, f"{name}: 408 before ADMIN_TIMEOUT"
        except AssertionError as e:
            bad.append(f"{name}: waited for more bytes, then: {e}")
        finally:
            s.close()
    assert not bad, "\n".join(bad)
    assert len(answered) == len(files)
    statuses = set(answered.values())
    assert statuses <= {400, 404, 405, 408, 414, 431, 505, "close"}, answered
    assert 400 in statuses, answered
    # Still healthy, still a proxy.
    r = healthz(aport)
    check_shape(r, 200)
    assert r.body == b"ok\n"
    t = p.tunnel(srv.target())
    echo_ok(t)
    m = get_metrics(aport)
    total = sum(v for (n, _), v in m.items() if n == "connectd_admin_requests_total")
    assert total == len(files) - list(answered.values()).count("close") + 1, (total, answered)


def test_slowloris(start_proxy, tcp_server):
    """200 connections dribble one byte every 0.5 s into the admin port. Meanwhile a scraper's
    GET /metrics is answered within 1 s and a tunnel works; every slow connection ends (408 or a
    close) within ADMIN_TIMEOUT plus a margin."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(o)
    stream = b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 64
    slow = []
    t_start = time.monotonic()
    for _ in range(200):
        s = socket.create_connection((LOOPBACK4, aport), timeout=5)
        s.setblocking(False)
        slow.append({"s": s, "i": 0, "data": b"", "end": None, "t0": time.monotonic()})

    def poll():
        for st in slow:
            if st["end"]:
                continue
            try:
                d = st["s"].recv(65536)
                if d:
                    st["data"] += d
                    continue
                st["end"] = ("eof", time.monotonic())
            except BlockingIOError:
                pass
            except OSError:
                st["end"] = ("reset", time.monotonic())

    def dribble():
        for st in slow:
            if st["end"]:
                continue
            try:
                st["s"].send(stream[st["i"] % len(stream):][:1])
                st["i"] += 1
            except BlockingIOError:
                pass
            except OSError:
                st["end"] = ("reset", time.monotonic())

    scraped = tunneled = False
    metrics_elapsed = None
    try:
        next_tick = time.monotonic()
        while time.monotonic() - t_start < 14:
            now = time.monotonic()
            if now >= next_tick:
                dribble()
                next_tick = now + 0.5
            poll()
            if not scraped and now - t_start > 1.0:
                r = admin_request(aport, "/metrics", timeout=5)
                metrics_elapsed = r.elapsed
                check_shape(r, 200)
                assert b"connectd_build_info" in r.body
                scraped = True
            if not tunneled and now - t_start > 1.5:
                t = p.tunnel(srv.target())
                echo_ok(t, b"through the slowloris")
                t.close()
                r = healthz(aport)
                check_shape(r, 200)
                tunneled = True
            if scraped and tunneled and all(st["end"] for st in slow):
                break
            time.sleep(0.02)
        open_left = [st for st in slow if not st["end"]]
        assert not open_left, (f"{len(open_left)} slow connections still open "
                               f"{time.monotonic() - t_start:.1f}s after the first")
        assert metrics_elapsed is not None and metrics_elapsed < 1.0, (
            f"GET /metrics took {metrics_elapsed}s among slow clients")
        got408 = 0
        for st in slow:
            if st["data"]:
                assert st["data"].startswith(b"HTTP/1.1 408 Request Timeout\r\n"), st["data"][:200]
                got408 += 1
                assert st["end"][1] - st["t0"] > 9.0, "408 before ADMIN_TIMEOUT"
            lasted = st["end"][1] - st["t0"]
            assert lasted < 12.5, f"a slow connection lasted {lasted:.1f}s"
        print(f"slowloris: {got408} got 408, {len(slow) - got408} closed without a response")
    finally:
        for st in slow:
            st["s"].close()
    r = healthz(aport)
    check_shape(r, 200)
    assert p.proc.poll() is None


# ---- 6. drain and grace ----------------------------------------------------------------------


@contextlib.contextmanager
def stopping(p):
    """For a test that sends SIGTERM itself: at the end (or on a failure) close its clients and
    wait (bounded) for the exit; then the fixture is told the stop was on purpose. A clean end of
    the block also asserts exit status 0."""
    ok = False
    try:
        yield
        ok = True
    finally:
        for c in p.clients:
            c.close()
        try:
            p.proc.wait(8)
        except subprocess.TimeoutExpired:
            pass  # still running: the fixture's teardown stops it and reports
        if p.proc.poll() is not None:
            p.stopped = True
    if ok:
        assert p.proc.returncode == 0, f"exit status {p.proc.returncode} after the drain"


def proxy_port_closed_to_new_clients(port, target, tries=8):
    """After the drain began, every new client of the proxy port is refused at connect, or gets
    a 503 / a close within 1.5 s; none is left hanging. Returns the list of outcomes."""
    out = []
    for _ in range(tries):
        s = socket.socket()
        s.settimeout(1.5)
        try:
            if s.connect_ex((LOOPBACK4, port)) != 0:
                out.append("refused")
                continue
            try:
                s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
                d = s.recv(100)
                out.append("closed" if d == b"" else d.split(b"\r\n")[0].decode("latin-1"))
            except socket.timeout:
                out.append("hang")
            except OSError:
                out.append("reset")
        finally:
            s.close()
    bad = [o for o in out if o not in ("refused", "closed", "reset",
                                       "HTTP/1.1 503 Service Unavailable")]
    assert not bad, f"new proxy clients while draining: {out}"
    return out


def healthz_all(aport, status, body, tries=6):
    """tries fresh /healthz requests (any worker may answer): every one is answered, with status
    and body, within 1.5 s."""
    got = []
    for _ in range(tries):
        try:
            r = healthz(aport, timeout=1.5)
            got.append((r.status, r.body))
        except (AssertionError, OSError) as e:
            got.append(("no answer", str(e)[:80]))
    assert got == [(status, body)] * tries, f"/healthz answers: {got}"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_healthz_draining(start_proxy, tcp_server, workers):
    """SIGTERM with a tunnel open (the process stays for [timeouts] shutdown): /healthz answers
    503 'draining' on every try, the admin listener answers everything else too, the proxy port
    takes no new client, the tunnel relays on; when it ends the process exits 0."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(ov(o, {"timeouts": {"shutdown": "20s"}, "server": {"workers": workers}}))
    kept = p.tunnel(srv.target())
    healthz_all(aport, 200, b"ok\n", tries=4)
    p.signal(signal.SIGTERM)
    with stopping(p):
        p.wait_log("shutting down: 1 tunnels open")
        # Every try is answered (with workers: also after the idle worker has exited).
        healthz_all(aport, 503, b"draining\n")
        proxy_port_closed_to_new_clients(p.port, srv.target())
        r = healthz(aport)
        check_shape(r, 503)
        assert r.body == b"draining\n", r
        assert r.header("Content-Type") == "text/plain; charset=utf-8", r
        r = admin_request(aport, "/healthz", method="HEAD")
        check_shape(r, 503)
        assert r.body == b""
        m = get_metrics(aport)
        assert metric(m, "connectd_draining") == 1
        assert metric(m, "connectd_tunnels_open") == 1
        doc = get_tunnels(aport)
        assert doc["count"] == 1 and doc["tunnels"][0]["state"] == "relay", doc
        echo_ok(kept, b"during the drain")
        kept.shutdown_write()
        assert kept.read_until_close(3) == (b"", "eof")
        p.proc.wait(5)
    assert refused(aport), "the admin port outlived the process"


@pytest.mark.timing
@pytest.mark.parametrize("workers", ["1", "2"])
def test_grace_keeps_serving_then_drains(start_proxy, tcp_server, workers):
    """grace = 2s: SIGTERM turns /healthz 503 at once while new proxy clients are still served;
    2 s later the normal drain: the proxy port takes no new client, tunnels opened during the
    grace relay on, /healthz stays 503."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(ov(o, {"timeouts": {"grace": "2s", "shutdown": "10s"},
                           "server": {"workers": workers}}))
    kept = p.tunnel(srv.target())
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    with stopping(p):
        p.wait_log("still accepting for 2s (grace)", timeout=1)
        r = healthz(aport)
        check_shape(r, 503)
        assert r.body == b"draining\n"
        assert time.monotonic() - t0 < 1.0, "/healthz did not turn 503 at once"
        healthz_all(aport, 503, b"draining\n", tries=3)
        m = get_metrics(aport)
        assert metric(m, "connectd_draining") == 1
        # Still a proxy during the grace: new clients get their tunnels.
        during = [p.tunnel(srv.target()) for _ in range(4)]
        for c in during:
            echo_ok(c, b"in the grace")
        el = time.monotonic() - t0
        assert el < 1.8, f"too slow to test the grace ({el:.1f}s)"
        assert "shutting down" not in p.stderr_text()
        # After the grace: the normal drain.
        text = p.wait_log("shutting down:", count=int(workers), timeout=4)
        el = time.monotonic() - t0
        assert 1.9 <= el < 3.5, f"drain began {el:.2f}s after SIGTERM with grace = 2s"
        assert "shutting down: 5 tunnels open" in text or workers == "2", text[-2000:]
        proxy_port_closed_to_new_clients(p.port, srv.target(), tries=4)
        healthz_all(aport, 503, b"draining\n", tries=3)
        echo_ok(kept, b"kept")
        for c in during:
            echo_ok(c, b"during")
            c.close()
        kept.close()
        p.proc.wait(5)


def test_grace_handshake_in_progress_then_drain(start_proxy, tcp_server):
    """A client that connected during the grace but had not finished its request when the drain
    began is answered 503, as handshakes in progress are on any drain."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(ov(o, {"timeouts": {"grace": "1s", "shutdown": "3s", "handshake": "5s"}}))
    kept = p.tunnel(srv.target())
    p.signal(signal.SIGTERM)
    with stopping(p):
        p.wait_log("(grace)", timeout=1)
        slow = p.client()
        slow.send(b"CONNECT " + srv.target().encode())
        p.wait_log("shutting down", timeout=3)
        check_proxy_refusal(slow, 503, "proxy_internal_response")
        check_shape(healthz(aport), 503)
        kept.close()
        p.proc.wait(5)


def test_second_sigterm_during_grace_drains_at_once(start_proxy):
    o, aport = admin_section()
    p = start_proxy(ov(o, {"timeouts": {"grace": "10s"}}))
    p.signal(signal.SIGTERM)
    with stopping(p):
        p.wait_log("(grace)", timeout=2)
        check_shape(healthz(aport), 503)
        assert not refused(p.port), "the proxy port closed during the grace"
        t0 = time.monotonic()
        p.signal(signal.SIGTERM)
        p.proc.wait(3)  # no tunnel open: the drain ends at once
        assert time.monotonic() - t0 < 2.5
        assert "shutting down: 0 tunnels open" in p.stderr_text()


def test_sighup_during_grace(start_proxy, tcp_server):
    """A reload during the grace: /healthz stays 503, new clients are still served, and the
    drain still begins when the grace ends."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(ov(o, {"timeouts": {"grace": "1500ms", "shutdown": "10s"}}))
    kept = p.tunnel(srv.target())
    p.signal(signal.SIGTERM)
    with stopping(p):
        p.wait_log("(grace)", timeout=1)
        p.signal(signal.SIGHUP)
        p.wait_log("reloaded")
        r = healthz(aport)
        check_shape(r, 503)
        assert r.body == b"draining\n"
        during = p.tunnel(srv.target())
        echo_ok(during)
        p.wait_log("shutting down: 2 tunnels open", timeout=3)
        proxy_port_closed_to_new_clients(p.port, srv.target(), tries=2)
        echo_ok(kept)
        echo_ok(during)
        kept.close()
        during.close()
        p.proc.wait(5)


def test_sighup_during_drain(start_proxy, tcp_server):
    """A reload during the drain: the daemon keeps draining (no crash), /healthz stays 503, the
    proxy port does not come back (neither refusing nor, worse, accepting into a queue nobody
    reads), the open tunnel relays on."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(ov(o, {"timeouts": {"shutdown": "10s"}}))
    kept = p.tunnel(srv.target())
    p.signal(signal.SIGTERM)
    with stopping(p):
        p.wait_log("shutting down: 1 tunnels open")
        p.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "reloaded" not in p.stderr_text():
            rc = p.proc.poll()
            assert rc is None, f"connectd died on SIGHUP while draining: exit status {rc}"
            assert time.monotonic() < deadline, "no 'reloaded' within 5 s of SIGHUP"
            time.sleep(0.05)
        r = healthz(aport)
        check_shape(r, 503)
        assert r.body == b"draining\n"
        proxy_port_closed_to_new_clients(p.port, srv.target(), tries=3)
        echo_ok(kept)
        kept.close()
        p.proc.wait(5)


# ---- 7. the loop guard -----------------------------------------------------------------------


def test_connect_to_admin_is_a_loop(start_proxy, dns):
    o, aport = admin_section()
    p = start_proxy(o)
    dns.set("admin.test", ["127.0.0.1"])
    for target in (f"127.0.0.1:{aport}", f"admin.test:{aport}", f"127.1:{aport}",
                   f"2130706433:{aport}"):
        c = p.client()
        me = f"127.0.0.1:{c.local_addr[1]}"
        c.connect_request(target)
        check_proxy_refusal(c, 502, "proxy_loop_detected")
        line = p.log_lines(1, where=lambda x, me=me: x.get("client") == me)[0]
        assert line["reason"] == "proxy_loop" and line["rule"] == "loop", line["_raw"]
        assert line["status"] == "502", line["_raw"]
    # The admin listener never saw those: only the /metrics below is counted.
    m = get_metrics(aport)
    assert sum(v for (n, _), v in m.items() if n == "connectd_admin_requests_total") == 0, m


# ---- 8. reload and workers -------------------------------------------------------------------


def test_reload_adds_and_removes_admin(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"server": {"workers": "1"}})
    kept = p.tunnel(srv.target())
    aport = free_port()
    assert refused(aport)
    p.rewrite_config({"admin": {"listen": f"127.0.0.1:{aport}"}})
    p.signal(signal.SIGHUP)
    p.wait_log(f"listening on 127.0.0.1:{aport} (admin)")
    p.wait_log("reloaded")
    r = healthz(aport)
    check_shape(r, 200)
    assert r.body == b"ok\n"
    m = get_metrics(aport)
    assert metric(m, "connectd_tunnels_open") == 1
    assert metric(m, "connectd_config_generation") == 2
    assert metric(m, "connectd_reloads_total", result="success") == 1
    # The new address is admin only: it does not tunnel.
    r = admin_request(aport, raw=f"CONNECT {srv.target()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    check_refusal(r, 400, "http_request_error")
    # And the proxy port is not admin.
    c = p.client()
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    check_proxy_refusal(c, 405, "http_request_denied")
    # A token added by reload applies at once.
    tok = os.path.join(p.dir, "reload.token")
    with open(tok, "w") as f:
        f.write(TOKEN + "\n")
    p.rewrite_config({"admin": {"token_file": tok}})
    p.signal(signal.SIGHUP)
    p.wait_log("reloaded", count=2)
    check_refusal(admin_request(aport, "/metrics"), 401, "http_request_denied")
    check_shape(admin_request(aport, "/metrics", headers=[f"Authorization: Bearer {TOKEN}"]), 200)
    # Removed: the address closes; the proxy and its old tunnel go on.
    p.rewrite_config({"admin": {"listen": None, "token_file": None}})
    p.signal(signal.SIGHUP)
    p.wait_log("reloaded", count=3)
    assert refused(aport), "the admin address still open after it was removed"
    echo_ok(kept, b"kept across")
    t = p.tunnel(srv.target())
    echo_ok(t)
    # A broken [admin] in a reload keeps the running one.
    p.rewrite_config({"admin": {"listen": f"127.0.0.1:{aport}", "token_file": "/nonexistent/t"}})
    p.signal(signal.SIGHUP)
    text = p.wait_log("still serving the previous configuration")
    assert "[admin] token_file" in text
    assert refused(aport)


def test_reload_moves_admin_to_another_port(start_proxy):
    a1 = free_port()
    p = start_proxy({"admin": {"listen": f"127.0.0.1:{a1}"}})
    check_shape(healthz(a1), 200)
    a2 = free_port()
    p.rewrite_config({"admin": {"listen": f"127.0.0.1:{a2}"}})
    p.signal(signal.SIGHUP)
    p.wait_log(f"listening on 127.0.0.1:{a2} (admin)")
    p.wait_log("reloaded")
    check_shape(healthz(a2), 200)
    assert refused(a1)


def test_reload_adds_admin_with_workers(start_proxy, tcp_server):
    """workers = 2: adding [admin] listen by SIGHUP starts new workers that serve it; the old
    workers' tunnels go on."""
    srv = tcp_server(echo_handler)
    p = start_proxy({"server": {"workers": "2"}})
    kept = [p.tunnel(srv.target()) for _ in range(4)]
    aport = free_port()
    p.rewrite_config({"admin": {"listen": f"127.0.0.1:{aport}"}})
    p.signal(signal.SIGHUP)
    p.wait_log(f"listening on 127.0.0.1:{aport} (admin)", count=2)
    for _ in range(6):
        r = healthz(aport, timeout=2)
        check_shape(r, 200)
        assert r.body == b"ok\n"
    m = get_metrics(aport)
    assert metric(m, "connectd_workers", state="live") == 2, m
    for c in kept:
        echo_ok(c)
        c.close()
    echo_ok(p.tunnel(srv.target()))


def _children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


def test_workers_2(start_proxy, tcp_server):
    """workers = 2: /healthz and /metrics answer whichever worker takes the connection;
    /metrics sums both; /tunnels from either worker lists every worker's tunnels."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(ov(o, {"server": {"workers": "2"}}))
    p.wait_log(f"listening on 127.0.0.1:{aport} (admin)", count=2)
    p.settle()
    tunnels = [p.tunnel(srv.target()) for _ in range(16)]
    for c in tunnels:
        echo_ok(c)
    want = {f"127.0.0.1:{c.local_addr[1]}" for c in tunnels}
    for _ in range(8):
        r = healthz(aport)
        check_shape(r, 200)
        assert r.body == b"ok\n"
        m = get_metrics(aport)
        assert metric(m, "connectd_workers", state="live") == 2, m
        assert metric(m, "connectd_tunnels_open") == 16, "tunnels_open is summed over workers"
        doc = get_tunnels(aport)
        got = [t["client"] for t in doc["tunnels"]]
        assert sorted(got) == sorted(want) and doc["truncated"] is False, doc
        assert {t["worker"] for t in doc["tunnels"]} == {0, 1}, doc
        assert all(t["bytes_up"] == 4 and t["bytes_down"] == 4 for t in doc["tunnels"]), doc
    # A limit below the total: exactly that many, and truncated, wherever the cut falls (in
    # the answering worker's own tunnels or in the other's).
    bad = []
    for limit in (0, 1, 5, 8, 10, 15, 16, 17):
        for _ in range(4):
            doc = get_tunnels(aport, f"?limit={limit}")
            clients = {t["client"] for t in doc["tunnels"]}
            ok = (doc["count"] == min(limit, 16) and len(clients) == doc["count"]
                  and clients <= want and doc["truncated"] is (limit < 16))
            if not ok:
                bad.append(f"limit={limit}: count {doc['count']} truncated {doc['truncated']}, "
                           f"workers {sorted(t['worker'] for t in doc['tunnels'])}")
    assert not bad, "\n".join(bad)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_worker_peer_socket_refuses_other_users(start_proxy, tcp_server):
    """The workers' private socket for /tunnels (abstract "connectd-MASTER-WORKER") answers only
    the daemon's other workers (their pids are in the shared stats): any other process, of
    another user or of the same one, gets nothing."""
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(ov(o, {"server": {"workers": "2", "user": "root"}}))
    t = p.tunnel(srv.target())
    echo_ok(t)
    deadline = time.monotonic() + 5
    while len(_children(p.pid)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    code = (
        "import socket,sys\n"
        "out=[]\n"
        "for w in sys.argv[2:]:\n"
        "    s=socket.socket(socket.AF_UNIX)\n"
        "    s.settimeout(2)\n"
        "    try:\n"
        "        s.connect('\\0connectd-'+sys.argv[1]+'-'+w)\n"
        "        s.sendall(b'limit 10\\n')\n"
        "        d=b''\n"
        "        while True:\n"
        "            c=s.recv(4096)\n"
        "            if not c: break\n"
        "            d+=c\n"
        "        out.append(repr(d))\n"
        "    except OSError as e:\n"
        "        out.append('err '+type(e).__name__)\n"
        "print('|'.join(out))\n")
    args = [str(p.pid)] + [str(w) for w in _children(p.pid)]
    # Even as root (the daemon's user), a process that is not one of its workers gets nothing.
    r = subprocess.run(["/usr/bin/python3", "-c", code] + args, capture_output=True, timeout=10)
    assert r.returncode == 0, r
    assert b"client" not in r.stdout and b"127.0.0.1" not in r.stdout, r.stdout
    nobody = pwd.getpwnam("nobody")

    def as_nobody():
        os.setgid(nobody.pw_gid)
        os.setgroups([])
        os.setuid(nobody.pw_uid)

    r = subprocess.run(["/usr/bin/python3", "-c", code] + args, capture_output=True, timeout=10,
                       preexec_fn=as_nobody)
    assert r.returncode == 0, r
    assert b"client" not in r.stdout and b"127.0.0.1" not in r.stdout, r.stdout


# ---- 9. privilege drop -----------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_admin_after_privilege_drop(start_proxy, tcp_server, workers):
    srv = tcp_server(echo_handler)
    o, aport = admin_section()
    p = start_proxy(ov(o, {"server": {"user": "nobody", "workers": workers}}))
    p.wait_log("running as user nobody")
    r = admin_request(aport, "/metrics")
    check_shape(r, 200)
    assert b"connectd_build_info" in r.body
    check_shape(healthz(aport), 200)
    nobody = pwd.getpwnam("nobody").pw_uid
    with open(f"/proc/{p.pid}/status") as f:
        uids = [line.split()[1:] for line in f if line.startswith("Uid:")][0]
    assert uids == [str(nobody)] * 4, uids
    t = p.tunnel(srv.target())
    echo_ok(t)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_only_token_file_read_before_drop(start_proxy, tmp_path):
    tf = tmp_path / "root-only.token"
    tf.write_text(TOKEN + "\n")
    os.chmod(tf, 0o600)
    o, aport = admin_section(token_file=str(tf))
    p = start_proxy(ov(o, {"server": {"user": "nobody"}}))
    p.wait_log("running as user nobody")
    check_refusal(admin_request(aport, "/metrics"), 401, "http_request_denied")
    r = admin_request(aport, "/metrics", headers=[f"Authorization: Bearer {TOKEN}"])
    check_shape(r, 200)
    assert b"connectd_build_info" in r.body


# ---- 10. socket activation -------------------------------------------------------------------


def test_socket_activation_admin(connectd_bin, tmp_path, tcp_server, dns):
    if not shutil.which("systemd-socket-activate"):
        pytest.skip("systemd-socket-activate not installed")
    srv = tcp_server(echo_handler)
    pport, aport, unused = free_port(), free_port(), free_port()
    cfg = merge(BASE_CONFIG, {"server": {"listen": f"127.0.0.1:{unused}"},
                              "dns": {"servers": dns.server_spec}})
    cfg["log"]["access_log"] = str(tmp_path / "access.log")
    cfg["admin"] = {"listen": f"127.0.0.1:{aport}"}
    ini = tmp_path / "sa.ini"
    ini.write_text(render_ini(cfg))
    errpath = tmp_path / "sa.stderr"
    err = open(errpath, "wb")
    # The admin socket first: it is recognised by its address, not by its position.
    proc = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{aport}",
                             "-l", f"127.0.0.1:{pport}", connectd_bin, "-c", str(ini)],
                            stdout=err, stderr=err)
    try:
        assert wait_port("127.0.0.1", aport, 5.0, proc), "admin socket not listening"
        assert wait_port("127.0.0.1", pport, 5.0, proc), "proxy socket not listening"
        # The first connection starts connectd on the passed sockets.
        r = healthz(aport, timeout=10)
        check_shape(r, 200)
        assert r.body == b"ok\n"
        r = admin_request(aport, "/metrics")
        check_shape(r, 200)
        s = socket.create_connection(("127.0.0.1", pport), timeout=10)
        s.sendall(f"CONNECT {srv.target()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = b""
        deadline = time.monotonic() + 5
        while b"\r\n\r\n" not in head and time.monotonic() < deadline:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
        assert head == b"HTTP/1.1 200 Connection established\r\n\r\n", head
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
        s.close()
        # The proxy socket is not admin, the admin socket does not tunnel.
        s = socket.create_connection(("127.0.0.1", pport), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        r = read_reply(s, timeout=5)
        s.close()
        assert r.status == 405, r
        text = errpath.read_bytes().decode()
        assert "socket activation: 2 listening sockets from systemd" in text, text
        assert f"listening on 127.0.0.1:{aport} (admin)" in text, text
        assert refused(unused)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        err.close()
    text = errpath.read_bytes().decode()
    assert not any(m in text for m in ("AddressSanitizer", "runtime error:")), text[-3000:]
