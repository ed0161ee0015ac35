"""HTTPS-proxy listeners (`listen = ADDR tls`, the [tls] section): real clients speak TLS to
connectd, send CONNECT inside it, then run their own TLS to the origin through the tunnel (TLS
in TLS); and what is particular to TLS: versions, ALPN, resumption across workers, the OCSP
staple, `connectd -t` on bad certificates and keys, SIGHUP with a new or a broken certificate,
a root-only key with the privilege drop, the PAC file naming the HTTPS listener, PROXY header
then TLS.

Each daemon listens on a plain port first (the fixture's readiness probe goes there) and a TLS
port. Every certificate comes from the session's throwaway CA (tlsfix); each client trusts only
that CA, and verifies the proxy as well as the origins. Both origins have .test names that only
the proxy resolves (the test DNS responder), so a client that bypassed the proxy cannot fetch
anything; every tunnel must also show in the access log with its `tls=` field.
Loopback only; every wait is bounded; only processes started here are stopped, by PID."""

import functools
import gc
import http.server
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time

import pytest

from authfix import basic, make_hash, write_users
from clientproc import clean_env, describe, need, run
from conftest import BASE_CONFIG, merge, render_ini
from netutil import LOOPBACK4, Client, check_refusal, free_port
from promutil import scrape
from servers import echo_handler
import tlsfix
from tlsfix import TLSClient, client_context, start_tls_proxy

HERE = os.path.dirname(os.path.abspath(__file__))
HELLO = b"hello through the tunnel\n"
CHALLENGE = 'Basic realm="connectd", charset="UTF-8"'
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")
ORIGIN_NAMES = ("origin-a.test", "origin-b.test")


# ---- helpers ---------------------------------------------------------------------------------


def http_body(raw):
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw[:300]!r}"
    return head.split(b"\r\n", 1)[0], body


def tls_lines(p, target, n=1, user=None, version=None, timeout=5.0):
    """The access-log lines of successful tunnels to target (at least n, bounded wait): each
    must carry tls=TLSv1.2|TLSv1.3 (version when given), the upstream on loopback and bytes
    both ways. Returns them."""
    lines = p.log_lines(n, timeout=timeout,
                        where=lambda x: x.get("target") == target and x.get("status") == "200")
    port = target.rsplit(":", 1)[1]
    for line in lines:
        assert line.get("tls") in TLS_VERSIONS, f"no tls= field on a TLS tunnel: {line['_raw']}"
        assert line["_raw"].rstrip("\n").endswith(" tls=" + line["tls"]), (
            f"tls= is not the last field: {line['_raw']}")
        if version:
            assert line["tls"] == version, line["_raw"]
        assert line["upstream"] == f"127.0.0.1:{port}", line["_raw"]
        assert int(line["up"]) > 0 and int(line["down"]) > 0, line["_raw"]
        if user is not None:
            assert line["user"] == user, line["_raw"]
    return lines


def worker_pids(master, n, timeout=5.0):
    """The n worker processes of master (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{master}/task/{master}/children") as f:
            kids = sorted(int(x) for x in f.read().split())
        if len(kids) >= n or time.monotonic() > deadline:
            assert len(kids) == n, f"workers of {master}: {kids}"
            return kids
        time.sleep(0.05)


def accepted_on(pid, port):
    """How many established TCP connections to 127.0.0.1:port process pid holds (its socket
    inodes matched against /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    want = "0100007F:%04X" % port
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[1] == want and parts[3] == "01" and parts[9] in inodes:
                n += 1
    return n


def scrape_handshakes(port):
    m = scrape(port)
    return {r: m.get("connectd_tls_handshakes_total", result=r)
            for r in ("full", "resumed", "failed")}


def head_without_date(raw):
    return b"\r\n".join(x for x in raw.split(b"\r\n") if not x.lower().startswith(b"date:"))


@pytest.fixture(scope="module")
def leafs(certs, tmp_path_factory):
    """Certificates from the session CA: 'origin' for both origin names; 'proxy2' a second
    certificate for the proxy (localhost, 127.0.0.1: a new key and serial, for reloads);
    'expired' (valid 2020-01-01..02)."""
    d = str(tmp_path_factory.mktemp("tls-leafs"))

    class L:
        origin = tlsfix.make_leaf(certs, d, "origins",
                                  sans=[f"DNS:{n}" for n in ORIGIN_NAMES])
        proxy2 = tlsfix.make_leaf(certs, d, "proxy2")
        expired = tlsfix.make_leaf(certs, d, "expired", startdate="20200101000000Z",
                                   enddate="20200102000000Z")
    return L


@pytest.fixture
def origins(leafs, docroot, tmp_path, dns):
    """Two `openssl s_server -WWW` origins (origin-a.test, origin-b.test -> 127.0.0.1 through
    the test DNS responder) serving docroot with the 'origin' certificate."""
    made = [tlsfix.TLSFileServer(leafs.origin, docroot["dir"], str(tmp_path))
            for _ in ORIGIN_NAMES]
    for name in ORIGIN_NAMES:
        dns.set(name, ["127.0.0.1"])

    class O:
        servers = made
        targets = [f"{n}:{s.port}" for n, s in zip(ORIGIN_NAMES, made)]
        urls = [f"https://{n}:{s.port}/hello.txt" for n, s in zip(ORIGIN_NAMES, made)]

    yield O
    for s in made:
        s.stop()


@pytest.fixture
def users(tmp_path):
    return write_users(tmp_path / "users", {"alice": make_hash("wonderland")})


def tls_proxy(start_proxy, certs, tls=None, extra=None, **kw):
    return start_tls_proxy(start_proxy, certs.cert, certs.key, tls=tls, extra=extra, **kw)


def fetch_through(p, certs, target, ctx=None, auth=None, port=None, path=b"/hello.txt"):
    """Python stdlib: TLS to the proxy's TLS port, CONNECT (auth: header line), TLS to the
    origin inside the tunnel (ssl.SSLObject on memory BIOs), GET path, read to the end.
    Returns (outer TLSClient, inner InnerTLS, raw response)."""
    ctx = ctx or client_context(certs.ca, alpn=["http/1.1"])
    c = TLSClient(LOOPBACK4, port or p.tls_port, ctx, server_hostname="localhost", timeout=10)
    p.clients.append(c)
    c.connect_request(target, extra_headers=auth or b"")
    c.expect_established(10)
    inner = c.inner(client_context(certs.ca), target.rsplit(":", 1)[0], timeout=10)
    inner.sendall(b"GET " + path + b" HTTP/1.0\r\nHost: " + target.encode() + b"\r\n\r\n")
    raw = inner.read_all()
    return c, inner, raw


# ---- curl ------------------------------------------------------------------------------------


def test_curl_https_proxy_with_auth(start_proxy, certs, origins, users):
    """curl --proxy https://127.0.0.1:P --proxy-cacert CA: without credentials the proxy's 407
    (with Proxy-Authenticate, over TLS) and nothing fetched; with --proxy-user both origins."""
    need("curl")
    p = tls_proxy(start_proxy, certs, extra={"auth": {"users_file": users}})
    base = ["curl", "-sS", "--max-time", "20", "--proxy", f"https://127.0.0.1:{p.tls_port}",
            "--proxy-cacert", certs.ca, "--cacert", certs.ca]
    r = run(base + ["-v", origins.urls[0]])
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0 and r.stdout == b"", describe(r)
    assert "407" in err, describe(r)
    assert re.search(r"< Proxy-Authenticate: " + re.escape(CHALLENGE), err), describe(r)
    line = p.log_lines(1, where=lambda x: x["status"] == "407")[-1]
    assert line.get("tls") in TLS_VERSIONS, f"407 line without tls= (contract reading): {line}"
    r = run(base + ["--fail", "--proxy-user", "alice:wonderland"] + origins.urls)
    assert r.returncode == 0, describe(r)
    assert r.stdout == HELLO * 2, describe(r)
    for t in origins.targets:
        tls_lines(p, t, user="alice", version="TLSv1.3")


def test_curl_https_proxy_by_name(start_proxy, certs, origins):
    """--proxy https://localhost:P (the name in the proxy's certificate), no auth configured;
    the TLS 1.2 ceiling to the proxy through --proxy-ciphers with only TLS 1.2 suites is not
    possible in curl 7.88, so 1.2 is covered by the Python and openssl clients."""
    need("curl")
    p = tls_proxy(start_proxy, certs)
    r = run(["curl", "-sS", "--fail", "--max-time", "20", "-v",
             "--proxy", f"https://localhost:{p.tls_port}", "--proxy-cacert", certs.ca,
             "--cacert", certs.ca] + origins.urls)
    assert r.returncode == 0, describe(r)
    assert r.stdout == HELLO * 2, describe(r)
    for t in origins.targets:
        tls_lines(p, t)


def test_curl_rejects_proxy_cert_from_other_ca(start_proxy, certs, origins, tmp_path):
    """A client that trusts a different CA refuses the proxy: curl really verifies the proxy's
    certificate in these tests (and nothing reaches an origin)."""
    need("curl")
    other = tlsfix.make_certs(str(tmp_path / "other-ca"))
    p = tls_proxy(start_proxy, certs)
    r = run(["curl", "-sS", "--max-time", "20", "--proxy", f"https://127.0.0.1:{p.tls_port}",
             "--proxy-cacert", other.ca, "--cacert", certs.ca, origins.urls[0]])
    assert r.returncode == 60, describe(r)  # CURLE_PEER_FAILED_VERIFICATION
    time.sleep(0.2)
    assert not p.log_lines(0, where=lambda x: x.get("status") == "200"), "a tunnel was opened"


# ---- Python ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_python_tls_in_tls(start_proxy, certs, origins, version):
    """stdlib ssl: TLS 1.2 / 1.3 to the proxy (ALPN http/1.1 offered and chosen), CONNECT,
    TLS 1.3 to each origin through the tunnel, GET; the access line says the outer version."""
    p = tls_proxy(start_proxy, certs)
    v = getattr(ssl.TLSVersion, version)
    want = version.replace("_", ".")
    for target in origins.targets:
        ctx = client_context(certs.ca, min_version=v, max_version=v, alpn=["http/1.1"])
        c, inner, raw = fetch_through(p, certs, target, ctx=ctx)
        assert c.sock.version() == want
        assert c.sock.selected_alpn_protocol() == "http/1.1"
        assert inner.version() == "TLSv1.3"
        assert ("DNS", target.split(":")[0]) in inner.getpeercert()["subjectAltName"]
        status, body = http_body(raw)
        assert status == b"HTTP/1.0 200 ok" and body == HELLO, raw[:300]
        c.close()
        tls_lines(p, target, version=want)


def hash_n_handler(n):
    """Upstream: read exactly n bytes, answer their SHA-256 (hex), close."""
    import hashlib

    def h(conn, rec):
        d = hashlib.sha256()
        got = 0
        while got < n:
            b = conn.recv(min(262144, n - got))
            if not b:
                break
            d.update(b)
            got += len(b)
        rec["bytes"] = got
        conn.sendall(d.hexdigest().encode())

    return h


def test_bulk_integrity_both_directions(start_proxy, certs, origins, docroot, tcp_server,
                                        tmp_path):
    """10 MiB down (curl, TLS to the proxy and TLS to the origin through it) and 8 MiB up
    (Python over the TLS listener to a hashing upstream): every byte arrives, in order; the
    access line counts them."""
    import hashlib

    need("curl")
    up_n = 8 * 1024 * 1024
    sink = tcp_server(hash_n_handler(up_n))
    p = tls_proxy(start_proxy, certs)
    out = tmp_path / "big.out"
    url = origins.urls[0].replace("hello.txt", "big.bin")
    r = run(["curl", "-sS", "--fail", "--max-time", "60", "--proxy",
             f"https://127.0.0.1:{p.tls_port}", "--proxy-cacert", certs.ca, "--cacert", certs.ca,
             "-o", str(out), url])
    assert r.returncode == 0, describe(r)
    assert out.stat().st_size == docroot["big_size"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == docroot["big_sha256"]
    [line] = tls_lines(p, origins.targets[0])
    assert int(line["down"]) > docroot["big_size"], line["_raw"]
    data = os.urandom(up_n)
    c = TLSClient(LOOPBACK4, p.tls_port, client_context(certs.ca), timeout=30)
    p.clients.append(c)
    c.connect_request(sink.target())
    c.expect_established()
    c.send(data)
    assert c.recv_exact(64, timeout=30).decode() == hashlib.sha256(data).hexdigest()
    c.close()
    [line] = tls_lines(p, sink.target())
    assert int(line["up"]) == up_n and int(line["down"]) == 64, line["_raw"]


def test_upstream_eof_becomes_close_notify(start_proxy, certs, tcp_server):
    """The upstream sends its bytes and shuts down its write side: the client reads them, then
    a close_notify (a clean TLS end, not a bare FIN); over TLS 1.3 the client's direction
    stays open (half-close) and what it sends after still reaches the upstream."""
    from servers import send_then_shutdown_handler

    srv = tcp_server(send_then_shutdown_handler(b"bye"))
    p = tls_proxy(start_proxy, certs)
    c = TLSClient(LOOPBACK4, p.tls_port, client_context(certs.ca), timeout=5)
    p.clients.append(c)
    c.connect_request(srv.target())
    c.expect_established()
    data, how = c.read_until_close(3)
    assert data == b"bye" and how == "eof", (data, how)
    assert not c.unclean, "the proxy ended the TLS stream without close_notify"
    c.sock.sendall(b"after the upstream's EOF")
    c.close()
    [rec] = srv.wait_results(1, timeout=5)
    assert rec["bytes"] == len(b"after the upstream's EOF"), rec
    [line] = tls_lines(p, srv.target())


def test_python_407_same_as_plain_listener(start_proxy, certs, origins, users):
    """Auth on the TLS listener: CONNECT without credentials gets the very 407 the plain
    listener sends (Proxy-Authenticate, Proxy-Status, one-line body; Date aside), then the
    proxy closes; with credentials the tunnel works and the access line names the user."""
    p = tls_proxy(start_proxy, certs, extra={"auth": {"users_file": users}})
    target = origins.targets[0]
    plain = p.client()
    plain.connect_request(target)
    presp, pbody, _ = check_refusal(plain, 407, "http_request_denied")
    c = TLSClient(LOOPBACK4, p.tls_port, client_context(certs.ca), timeout=5)
    p.clients.append(c)
    c.connect_request(target)
    resp, body, _ = check_refusal(c, 407, "http_request_denied")
    assert resp.header("Proxy-Authenticate") == CHALLENGE
    assert head_without_date(resp.raw_head) == head_without_date(presp.raw_head), (
        resp.raw_head, presp.raw_head)
    assert body == pbody
    if c.unclean:
        print("note: the proxy closed the TLS connection after the 407 without close_notify")
    c2, _, raw = fetch_through(p, certs, target, auth=basic("alice", "wonderland"))
    assert http_body(raw) == (b"HTTP/1.0 200 ok", HELLO)
    c2.close()
    tls_lines(p, target, user="alice")
    lines = p.log_lines(2, where=lambda x: x["status"] == "407")
    assert sorted(x.get("tls") is not None for x in lines) == [False, True], (
        "exactly the TLS listener's 407 line has tls=: " + str([x["_raw"] for x in lines]))


def test_python_policy_refusal_over_tls(start_proxy, certs, origins):
    """Policy on the TLS listener: a port outside allow_ports gets 403 with Proxy-Status,
    Connection: close, then the close; the origin is never dialed."""
    p = tls_proxy(start_proxy, certs, extra={"access": {"allow_ports": "443"}})
    c = TLSClient(LOOPBACK4, p.tls_port, client_context(certs.ca), timeout=5)
    p.clients.append(c)
    c.connect_request(origins.targets[0])
    check_refusal(c, 403, "http_request_denied")
    line = p.log_lines(1, where=lambda x: x["status"] == "403")[-1]
    assert line.get("tls") in TLS_VERSIONS, line["_raw"]


def refused_inside_tls(p, ctx, target, status, source=None):
    """A client the proxy refuses on accept: the contract wants the refusal inside TLS as on
    the plain listener, so the handshake must complete and the refusal (with Proxy-Status)
    must come through it."""
    try:
        c = TLSClient(LOOPBACK4, p.tls_port, ctx, source=source, timeout=5)
    except (ssl.SSLError, OSError) as e:
        raise AssertionError(
            f"refused on accept without a TLS handshake ({e!r}): no {status} with Proxy-Status "
            "inside TLS, unlike the plain listener (contract: limits and Proxy-Status on "
            "refusals as on the plain listener, inside TLS)")
    p.clients.append(c)
    c.connect_request(target)
    check_refusal(c, status, "http_request_denied", allow_reset=True)


def test_per_client_limit_over_tls(start_proxy, certs, tcp_server):
    """[limits] per_client_connections on the TLS listener: the refused client gets the 503
    (Proxy-Status) inside TLS, as on the plain listener; the upstream is not dialed for it; a
    freed slot lets the next one through."""
    srv = tcp_server(echo_handler)
    p = tls_proxy(start_proxy, certs, extra={"limits": {"per_client_connections": "2"}})
    p.settle()
    ctx = client_context(certs.ca)
    held = []
    for _ in range(2):
        c = TLSClient(LOOPBACK4, p.tls_port, ctx, timeout=5)
        p.clients.append(c)
        c.connect_request(srv.target())
        c.expect_established()
        held.append(c)
    try:
        refused_inside_tls(p, ctx, srv.target(), 503)
        assert p.log_lines(1, where=lambda x: x["reason"] == "client_limit")[-1]["status"] == "503"
    finally:
        time.sleep(0.1)
        assert srv.accepts == 2, "the refused client was dialed"
        p.log_lines(1, where=lambda x: x["reason"] == "client_limit")
    held[0].close()
    deadline = time.monotonic() + 3
    while True:
        e = TLSClient(LOOPBACK4, p.tls_port, ctx, timeout=5)
        p.clients.append(e)
        e.connect_request(srv.target())
        resp = e.read_head()
        if resp.status == 200 or time.monotonic() > deadline:
            break
        e.close()
        time.sleep(0.1)
    assert resp.status == 200


def test_client_not_allowed_over_tls(start_proxy, certs, tcp_server):
    """allow_clients on the TLS listener: a client outside it gets the 403 (Proxy-Status)
    inside TLS, as on the plain listener; nothing is dialed."""
    srv = tcp_server(echo_handler)
    p = tls_proxy(start_proxy, certs, extra={"access": {"allow_clients": "127.0.0.1/32"}})
    ctx = client_context(certs.ca)
    try:
        refused_inside_tls(p, ctx, srv.target(), 403, source="127.0.0.9")
    finally:
        p.log_lines(1, where=lambda x: x["reason"] == "denied_client")
        assert srv.accepts == 0
    assert p.log_lines(1, where=lambda x: x["reason"] == "denied_client")[-1]["status"] == "403"


def test_python_urllib3_https_proxy(start_proxy, certs, origins, users):
    """urllib3 (Debian's python3-urllib3 1.26) ProxyManager with an https:// proxy: its own TLS
    in TLS, both origins, proxy credentials through proxy_headers."""
    urllib3 = pytest.importorskip("urllib3")
    p = tls_proxy(start_proxy, certs, extra={"auth": {"users_file": users}})
    pctx = client_context(certs.ca)
    pm = urllib3.ProxyManager(
        f"https://localhost:{p.tls_port}", proxy_ssl_context=pctx, cert_reqs="CERT_REQUIRED",
        ca_certs=certs.ca,
        proxy_headers=urllib3.make_headers(proxy_basic_auth="alice:wonderland"))
    try:
        for url in origins.urls:
            r = pm.request("GET", url, retries=False, timeout=urllib3.Timeout(10, 10))
            assert r.status == 200 and r.data == HELLO, (r.status, r.data[:200])
    finally:
        pm.clear()
    for t in origins.targets:
        tls_lines(p, t, user="alice")
    # and without credentials: urllib3 reports the proxy's 407
    pm = urllib3.ProxyManager(f"https://localhost:{p.tls_port}", proxy_ssl_context=pctx,
                              cert_reqs="CERT_REQUIRED", ca_certs=certs.ca)
    try:
        with pytest.raises(urllib3.exceptions.ProxyError) as ei:
            pm.request("GET", origins.urls[0], retries=False, timeout=urllib3.Timeout(10, 10))
        assert "407" in str(ei.value), str(ei.value)
    finally:
        pm.clear()
    # the refused connection lives in the exception's traceback: let it go now, not at the
    # proxy's linger timeout during teardown
    del ei
    gc.collect()


# ---- Node.js ---------------------------------------------------------------------------------


def node_fetch(p, certs, targets, auth="-", proxy_name="localhost"):
    need("node")
    r = run(["node", os.path.join(HERE, "node_https_proxy.js"), "127.0.0.1", str(p.tls_port),
             proxy_name, certs.ca, "20000", auth] + [f"{t}/hello.txt" for t in targets])
    try:
        out = json.loads(r.stdout.decode())
    except ValueError:
        raise AssertionError(describe(r))
    return r, out["results"]


def test_node_https_proxy(start_proxy, certs, origins, users):
    """Node: tls.connect to the proxy, CONNECT, tls.connect({socket}) to each origin; first
    without credentials (407 + Proxy-Authenticate), then with."""
    p = tls_proxy(start_proxy, certs, extra={"auth": {"users_file": users}})
    r, res = node_fetch(p, certs, origins.targets[:1])
    assert res[0].get("status") == 407, describe(r)
    assert f"Proxy-Authenticate: {CHALLENGE}" in res[0]["head"], res[0]
    assert res[0]["proxyTLS"] in TLS_VERSIONS and res[0]["alpn"] == "http/1.1", res[0]
    r, res = node_fetch(p, certs, origins.targets, auth="alice:wonderland")
    assert r.returncode == 0, describe(r)
    for x in res:
        assert x["status"] == 200 and x["proxyTLS"] == "TLSv1.3" and x["alpn"] == "http/1.1", x
        assert x["originTLS"] == "TLSv1.3", x
        status, body = http_body(x["body"].encode("latin-1"))
        assert status == b"HTTP/1.0 200 ok" and body == HELLO, x
    for t in origins.targets:
        tls_lines(p, t, user="alice", version="TLSv1.3")


# ---- Chromium --------------------------------------------------------------------------------

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a3c5b1b50000000049454e44ae426082")


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class HTTPSFiles:
    """A threaded HTTPS file server on 127.0.0.1 for Chromium (s_server -WWW answers one
    connection at a time, and a browser's idle preconnect would block it)."""

    def __init__(self, root, leaf):
        self.port = free_port()
        handler = functools.partial(Quiet, directory=root)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(leaf.chain, leaf.key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def web(tmp_path, leafs, dns):
    """origin-a.test serves a page whose scripts and image come from origin-b.test too."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    a, b = HTTPSFiles(str(a_dir), leafs.origin), HTTPSFiles(str(b_dir), leafs.origin)
    b_base = f"https://origin-b.test:{b.port}"
    (b_dir / "b.js").write_text('window.B = "b";\n')
    (b_dir / "pixel.png").write_bytes(PNG_1x1)
    (a_dir / "a.js").write_text('window.A = "a";\n')
    (a_dir / "index.html").write_text(f"""<!doctype html>
<html><head><title>through connectd over TLS</title>
<script src="/a.js"></script>
<script src="{b_base}/b.js"></script>
</head><body><div id="out">waiting</div>
<img id="px" src="{b_base}/pixel.png">
<script>
window.addEventListener("load", function () {{
  document.getElementById("out").textContent =
    "loaded:" + [window.A, window.B].join(",") + ":img=" +
    document.getElementById("px").naturalWidth;
}});
</script></body></html>
""")
    for name in ORIGIN_NAMES:
        dns.set(name, ["127.0.0.1"])

    class W:
        url = f"https://origin-a.test:{a.port}/index.html"
        targets = [f"origin-a.test:{a.port}", f"origin-b.test:{b.port}"]

    yield W
    a.stop()
    b.stop()


def run_chromium(url, proxy_args, trust_ca=None):
    """Headless Chromium under a temporary HOME; trust_ca (PEM) goes into that HOME's NSS
    database (~/.pki/nssdb, certutil) as a trusted CA: the only way it trusts the proxy and the
    origins, no --ignore-certificate-errors of any kind. Returns (dom, stderr)."""
    exe = None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = exe or shutil.which(name)
    if not exe:
        pytest.skip("chromium not installed (scripts/install-deps test installs it)")
    home = tempfile.mkdtemp(prefix="connectd-chromium-")
    try:
        if trust_ca:
            need("certutil")
            db = os.path.join(home, ".pki", "nssdb")
            os.makedirs(db)
            for args in (["-N", "--empty-password"],
                         ["-A", "-n", "connectd test CA", "-t", "C,,", "-i", trust_ca]):
                r = run(["certutil", "-d", f"sql:{db}"] + args)
                assert r.returncode == 0, describe(r)
        r = run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 "--no-default-browser-check", f"--user-data-dir={home}/profile",
                 "--virtual-time-budget=15000", *proxy_args, "--dump-dom", url],
                timeout=90, env=clean_env(HOME=home))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


def test_chromium_https_proxy_server(start_proxy, certs, web):
    p = tls_proxy(start_proxy, certs)
    dom, err = run_chromium(web.url, [f"--proxy-server=https://localhost:{p.tls_port}"],
                            trust_ca=certs.ca)
    assert "loaded:a,b:img=1" in dom, (dom[-2000:], err[-3000:])
    for t in web.targets:
        tls_lines(p, t, timeout=10)


def test_chromium_https_proxy_from_pac(start_proxy, certs, web):
    """The PAC file (fetched over the plain listener by the name localhost) names the HTTPS
    listener; Chromium follows it, TLS to the proxy included."""
    p = tls_proxy(start_proxy, certs, extra={"server": {"pac": "yes"}})
    dom, err = run_chromium(web.url, [f"--proxy-pac-url=http://localhost:{p.port}/proxy.pac"],
                            trust_ca=certs.ca)
    assert "loaded:a,b:img=1" in dom, (dom[-2000:], err[-3000:])
    p.log_lines(1, where=lambda x: x.get("reason") == "pac")
    for t in web.targets:
        tls_lines(p, t, timeout=10)


def test_chromium_untrusted_proxy_certificate(start_proxy, certs, web):
    """Control for the two tests above: without the test CA in its NSS database Chromium gets
    nowhere through the HTTPS proxy (it verifies the proxy's certificate; no tunnel opens)."""
    p = tls_proxy(start_proxy, certs)
    dom, err = run_chromium(web.url, [f"--proxy-server=https://localhost:{p.tls_port}"])
    assert "loaded:" not in dom, dom[-2000:]
    time.sleep(0.2)
    assert not p.log_lines(0, where=lambda x: x.get("status") == "200"), "a tunnel was opened"


# ---- versions, ALPN, resumption, OCSP --------------------------------------------------------


def handshake(p, certs, port=None, **ctxkw):
    """A TLS handshake with the proxy's TLS port; returns the TLSClient (ssl errors raise)."""
    c = TLSClient(LOOPBACK4, port or p.tls_port, client_context(certs.ca, **ctxkw), timeout=5)
    p.clients.append(c)
    return c


def still_serves(p, certs, srv):
    """A fresh TLS client gets a working tunnel through the TLS listener; returns (its TLS
    version, the serial of the proxy's certificate)."""
    c = handshake(p, certs)
    got = (c.sock.version(), peer_serial(c))
    c.connect_request(srv.target())
    c.expect_established()
    c.send(b"alive?")
    assert c.recv_exact(6) == b"alive?"
    c.close()
    return got


def test_min_version_13_refuses_tls12_client(start_proxy, certs, tcp_server):
    srv = tcp_server(echo_handler)
    p = tls_proxy(start_proxy, certs, tls={"min_version": "1.3"})
    with pytest.raises(ssl.SSLError) as ei:
        handshake(p, certs, max_version=ssl.TLSVersion.TLSv1_2)
    assert "PROTOCOL_VERSION" in str(ei.value).upper() or "ALERT" in str(ei.value).upper(), (
        str(ei.value))
    assert still_serves(p, certs, srv)[0] == "TLSv1.3"
    tls_lines(p, srv.target(), version="TLSv1.3")


def test_default_min_version_refuses_tls10_tls11(start_proxy, certs, tcp_server):
    """TLS 1.0 and 1.1 are refused (default min_version 1.2): hand-made TLS 1.0 / 1.1
    ClientHellos get no ServerHello, only an alert and/or the close; `openssl s_client -tls1_1`
    (security level 0, so that the client itself may offer 1.1) fails; TLS 1.2 works."""
    srv = tcp_server(echo_handler)
    p = tls_proxy(start_proxy, certs)
    for version in (0x0301, 0x0302):
        s = Client(LOOPBACK4, p.tls_port).sock
        s.sendall(tlsfix.client_hello(version=version, tls13=False))
        data, how = tlsfix.read_records(s, timeout=3)
        s.close()
        recs = tlsfix.parse_records(data)
        assert how in ("eof", "reset"), (how, data[:100])
        assert all(ct == 21 for ct, _, _ in recs), f"not only alerts: {recs}"  # 22 = handshake
        print(f"ClientHello {version:#06x}: {how}, alerts {[r.hex() for _, _, r in recs]} "
              "(0246 = fatal protocol_version)")
    r = run(["openssl", "s_client", "-connect", f"127.0.0.1:{p.tls_port}", "-tls1_1",
             "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", certs.ca, "-servername", "localhost"],
            input=b"", timeout=20)
    assert r.returncode != 0, describe(r)
    assert b"Cipher is (NONE)" in r.stdout, describe(r)  # no TLS 1.1 session came about
    c = handshake(p, certs, max_version=ssl.TLSVersion.TLSv1_2)
    assert c.sock.version() == "TLSv1.2"
    still_serves(p, certs, srv)


def test_alpn(start_proxy, certs):
    """http/1.1 is chosen when offered (alone or after h2); a client offering only h2 gets no
    protocol or a no_application_protocol alert, never h2; without ALPN the handshake works."""
    p = tls_proxy(start_proxy, certs, tls={"alpn": "http/1.1"})
    assert handshake(p, certs, alpn=["http/1.1"]).sock.selected_alpn_protocol() == "http/1.1"
    assert handshake(p, certs, alpn=["h2", "http/1.1"]).sock.selected_alpn_protocol() == (
        "http/1.1")
    assert handshake(p, certs).sock.selected_alpn_protocol() is None
    try:
        got = handshake(p, certs, alpn=["h2"]).sock.selected_alpn_protocol()
        assert got is None, got
    except ssl.SSLError as e:
        assert "NO APPLICATION PROTOCOL" in str(e).upper().replace("_", " "), str(e)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_session_resumption(start_proxy, certs, tcp_server, workers):
    """session_tickets = yes: a client that presents the session of its previous connection
    resumes (TLS 1.3 and 1.2), with one worker and with two (the ticket keys are shared, so
    wherever SO_REUSEPORT sends the next connection it resumes). Each resumed connection then
    carries a tunnel; the handshake counters agree."""
    from adminutil import admin_section

    srv = tcp_server(echo_handler)
    adm, admin_port = admin_section()
    adm["server"] = {"workers": workers}
    p = tls_proxy(start_proxy, certs, tls={"session_tickets": "yes"}, extra=adm)
    procs = [p.pid] if workers == "1" else worker_pids(p.pid, 2)
    before = scrape_handshakes(admin_port)
    rounds = 8
    resumed = 0
    held = []  # kept open until every worker's share is counted
    for v in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        ctx = client_context(certs.ca, max_version=v)
        session = None
        for i in range(rounds + 1):
            c = TLSClient(LOOPBACK4, p.tls_port, ctx, session=session, timeout=5)
            p.clients.append(c)
            held.append(c)
            c.connect_request(srv.target())
            c.expect_established()  # (TLS 1.3: the tickets arrive with or before this read)
            c.send(b"r%d" % i)
            assert c.recv_exact(2) == b"r%d" % i
            if i:
                assert c.sock.session_reused, f"{v.name} connection {i} was not resumed"
                resumed += 1
            session = c.sock.session
            assert session is not None and session.has_ticket, f"{v.name}: no ticket"
    share = {pid: accepted_on(pid, p.tls_port) for pid in procs}
    print(f"workers={workers}: TLS connections per process {share}")
    assert sum(share.values()) >= len(held), share
    assert all(share.values()), f"one worker took every connection: {share}"
    for c in held:
        c.close()
    deadline = time.monotonic() + 3  # (workers' counters may reach the scrape a bit later)
    after = scrape_handshakes(admin_port)
    while after["resumed"] - before["resumed"] < resumed and time.monotonic() < deadline:
        time.sleep(0.1)
        after = scrape_handshakes(admin_port)
    assert after["resumed"] - before["resumed"] == resumed, (before, after)
    assert after["full"] - before["full"] == 2, (before, after)
    assert after["failed"] == before["failed"], (before, after)
    lines = tls_lines(p, srv.target(), n=2 * (rounds + 1))
    assert {x["tls"] for x in lines} == {"TLSv1.2", "TLSv1.3"}, [x["_raw"] for x in lines]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_resumption_across_reload(start_proxy, certs, tcp_server, workers):
    """A ticket issued before a SIGHUP still resumes after it (my reading of "all workers share
    the ticket keys": also the workers a reload starts). With two workers the reload changes
    [server] listen, so that the master starts new workers and retires the old ones."""
    srv = tcp_server(echo_handler)
    p = tls_proxy(start_proxy, certs, tls={"session_tickets": "yes"},
                  extra={"server": {"workers": workers}})
    ctx = client_context(certs.ca)
    c = TLSClient(LOOPBACK4, p.tls_port, ctx, timeout=5)
    p.clients.append(c)
    c.connect_request(srv.target())
    c.expect_established()
    session = c.sock.session
    c.close()
    assert session.has_ticket
    since = len(p.stderr_text())
    if workers == "2":
        extra_port = free_port()
        p.rewrite_config(text=p.config_text.replace(
            "listen = ", f"listen = 127.0.0.1:{extra_port}, ", 1))
    hup_and_wait(p, ["reloaded"], since)
    if workers == "2":
        assert tlsfix.wait_listening(extra_port, 5, p.proc)
        said = [x for x in p.stderr_text()[since:].splitlines() if "reloaded" in x]
        print("reload: " + " | ".join(said))
    for i in range(6):
        c = TLSClient(LOOPBACK4, p.tls_port, ctx, session=session, timeout=5)
        p.clients.append(c)
        c.connect_request(srv.target())
        c.expect_established()
        assert c.sock.session_reused, f"connection {i} after the reload was not resumed"
        c.close()


def test_session_tickets_no(start_proxy, certs, tcp_server):
    """session_tickets = no is accepted and serves; whether a client may still resume (a
    stateful session cache) is not in the contract, so it is reported, not asserted."""
    srv = tcp_server(echo_handler)
    p = tls_proxy(start_proxy, certs, tls={"session_tickets": "no"})
    ctx = client_context(certs.ca, max_version=ssl.TLSVersion.TLSv1_2)
    c = TLSClient(LOOPBACK4, p.tls_port, ctx, timeout=5)
    p.clients.append(c)
    c.connect_request(srv.target())
    c.expect_established()
    sess = c.sock.session
    c.close()
    c2 = TLSClient(LOOPBACK4, p.tls_port, ctx, session=sess, timeout=5)
    p.clients.append(c2)
    print(f"session_tickets = no: TLS 1.2 ticket={sess.has_ticket}, "
          f"resumed={c2.sock.session_reused}")
    assert not sess.has_ticket, "a session ticket was issued with session_tickets = no"
    still_serves(p, certs, srv)


def s_client_status(port, certs):
    return run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername",
                "localhost", "-CAfile", certs.ca, "-status", "-verify_return_error"],
               input=b"", timeout=20)


def test_ocsp_staple(start_proxy, certs, leafs, tmp_path, tcp_server):
    """ocsp_staple = DER response: a client asking (status_request) gets it, 'good' for the
    proxy's certificate; without ocsp_staple none is sent."""
    srv = tcp_server(echo_handler)
    leaf = leafs.proxy2
    staple = tlsfix.make_ocsp_staple(certs, leaf, str(tmp_path / "staple.der"))
    p = start_tls_proxy(start_proxy, leaf.chain, leaf.key, tls={"ocsp_staple": staple})
    r = s_client_status(p.tls_port, certs)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, describe(r)
    assert "OCSP Response Status: successful" in out, out[:3000]
    assert "Cert Status: good" in out, out[:3000]
    assert re.search(r"Serial Number: 0*%X\b" % leaf.serial, out), out[:3000]
    still_serves(p, certs, srv)
    q = tls_proxy(start_proxy, certs)
    r = s_client_status(q.tls_port, certs)
    assert r.returncode == 0, describe(r)
    assert "OCSP response: no response sent" in r.stdout.decode(errors="replace"), describe(r)


# ---- connectd -t -----------------------------------------------------------------------------


def check_ini(tmp_path, tls, listen_opts="tls", name="t.ini"):
    cfg = merge(BASE_CONFIG, {"server": {"listen": f"127.0.0.1:3128, 127.0.0.1:3129 {listen_opts}",
                                         "proxy_protocol_from": "127.0.0.1/32"},
                              "dns": {"servers": "127.0.0.1:53"}, "log": {"access_log": "off"}})
    if tls is not None:
        cfg["tls"] = tls
    path = tmp_path / name
    path.write_text(render_ini(cfg))
    return str(path)


def test_check_good_tls_config(cli, certs, tmp_path, leafs):
    """Positive control for the error cases: the full [tls] section passes -t, relative paths
    are taken against the ini's directory (checked from another working directory)."""
    staple = tlsfix.make_ocsp_staple(certs, leafs.proxy2, str(tmp_path / "staple.der"))
    shutil.copy(leafs.proxy2.chain, tmp_path / "chain.pem")
    shutil.copy(leafs.proxy2.key, tmp_path / "chain.key")
    ini = check_ini(tmp_path, {"certificate": "chain.pem", "key": "chain.key",
                               "min_version": "1.3", "alpn": "http/1.1",
                               "ocsp_staple": os.path.basename(staple),
                               "session_tickets": "no"},
                    listen_opts="tls proxy-protocol")
    r = cli("-t", "-c", ini)
    assert r.returncode == 0, r.err
    r = cli("-t", "-c", check_ini(tmp_path, {"certificate": certs.cert, "key": certs.key,
                                             "min_version": "1.2", "session_tickets": "yes"},
                                  listen_opts="proxy-protocol tls", name="abs.ini"))
    assert r.returncode == 0, r.err


def _mkdir(path):
    path.mkdir()
    return str(path)


def _write(path, data):
    path.write_bytes(data)
    return str(path)


def bad_tls_files(case, c, leafs, t):
    """[tls] with one bad file: (the section, the paths of which the message must name one)."""
    garbage_pem = b"-----BEGIN CERTIFICATE-----\nnot base64 at all!!\n-----END CERTIFICATE-----\n"
    garbage_key = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    if case == "key_mismatch":
        return {"certificate": c.cert, "key": leafs.origin.key}, (c.cert, leafs.origin.key)
    if case == "expired":
        return {"certificate": leafs.expired.cert, "key": leafs.expired.key}, (leafs.expired.cert,)
    if case == "missing_cert":
        return {"certificate": str(t / "nope.pem"), "key": c.key}, (str(t / "nope.pem"),)
    if case == "missing_key":
        return {"certificate": c.cert, "key": str(t / "nope.key")}, (str(t / "nope.key"),)
    if case == "garbage_cert":
        return {"certificate": _write(t / "g.pem", garbage_pem), "key": c.key}, (str(t / "g.pem"),)
    if case == "binary_cert":
        return ({"certificate": _write(t / "r.pem", os.urandom(700)), "key": c.key},
                (str(t / "r.pem"),))
    if case == "empty_cert":
        return {"certificate": _write(t / "e.pem", b""), "key": c.key}, (str(t / "e.pem"),)
    if case == "garbage_key":
        return {"certificate": c.cert, "key": _write(t / "g.key", garbage_key)}, (str(t / "g.key"),)
    if case == "key_is_cert":
        return {"certificate": c.cert, "key": c.cert}, (c.cert,)
    if case == "cert_is_directory":
        return {"certificate": _mkdir(t / "certdir"), "key": c.key}, (str(t / "certdir"),)
    if case == "missing_ocsp_staple":
        return ({"certificate": c.cert, "key": c.key, "ocsp_staple": str(t / "nope.der")},
                (str(t / "nope.der"),))
    raise AssertionError(case)


BAD_TLS = ["key_mismatch", "expired", "missing_cert", "missing_key", "garbage_cert",
           "binary_cert", "empty_cert", "garbage_key", "key_is_cert", "cert_is_directory",
           "missing_ocsp_staple"]


@pytest.mark.parametrize("case", sorted(BAD_TLS))
def test_check_rejects_bad_tls_files(cli, certs, leafs, tmp_path, case):
    tls, named = bad_tls_files(case, certs, leafs, tmp_path)
    ini = check_ini(tmp_path, tls)
    r = cli("-t", "-c", ini)
    assert r.returncode == 1, f"{case}: exit {r.returncode}\n{r.err}"
    assert any(n in r.err for n in named), f"{case}: message does not name {named}:\n{r.err}"


@pytest.mark.parametrize("case,tls", [
    ("no_tls_section", None),
    ("no_key", {"certificate": "CERT"}),
    ("no_certificate", {"key": "KEY"}),
    ("alpn_h2c", {"certificate": "CERT", "key": "KEY", "alpn": "h2c"}),
    ("min_version_1_1", {"certificate": "CERT", "key": "KEY", "min_version": "1.1"}),
    ("min_version_garbage", {"certificate": "CERT", "key": "KEY", "min_version": "tls13"}),
    ("session_tickets_garbage", {"certificate": "CERT", "key": "KEY", "session_tickets": "maybe"}),
])
def test_check_rejects_bad_tls_config(cli, certs, tmp_path, case, tls):
    """Config errors (not file errors): exit 1, the message names the ini file."""
    if tls is not None:
        tls = {k: v.replace("CERT", certs.cert).replace("KEY", certs.key) for k, v in tls.items()}
    ini = check_ini(tmp_path, tls)
    r = cli("-t", "-c", ini)
    assert r.returncode == 1, f"{case}: exit {r.returncode}\n{r.err}"
    assert ini in r.err, f"{case}: message does not name {ini}:\n{r.err}"


# ---- SIGHUP ----------------------------------------------------------------------------------


def peer_serial(c):
    return int(c.sock.getpeercert()["serialNumber"], 16)


def install(src_cert, src_key, cert, key):
    """Put new files at the configured paths (each replaced atomically)."""
    for src, dst in ((src_cert, cert), (src_key, key)):
        shutil.copy(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)


def hup_and_wait(p, needle_any, since):
    """SIGHUP, then wait (bounded) until stderr after offset since holds one of needle_any;
    returns the new stderr text."""
    p.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while True:
        new = p.stderr_text()[since:]
        if any(n in new for n in needle_any):
            return new
        assert time.monotonic() < deadline, f"no {needle_any} after SIGHUP:\n{new[-3000:]}"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_new_certificate(start_proxy, certs, leafs, tcp_server, tmp_path, workers):
    """A new certificate + key and SIGHUP: new connections (to every worker) see the new
    serial; a TLS tunnel opened before keeps flowing both ways."""
    srv = tcp_server(echo_handler)
    cert, key = str(tmp_path / "proxy.pem"), str(tmp_path / "proxy.key")
    install(certs.cert, certs.key, cert, key)
    old_serial = tlsfix.cert_serial(certs.cert)
    p = start_tls_proxy(start_proxy, cert, key, extra={"server": {"workers": workers}})
    old = handshake(p, certs)
    assert peer_serial(old) == old_serial
    old.connect_request(srv.target())
    old.expect_established()
    old.send(b"before")
    assert old.recv_exact(6) == b"before"
    install(leafs.proxy2.chain, leafs.proxy2.key, cert, key)
    since = len(p.stderr_text())
    hup_and_wait(p, ["reloaded"], since)
    deadline = time.monotonic() + 3  # (two workers: until the master has passed it on)
    while peer_serial(handshake(p, certs)) != leafs.proxy2.serial:
        assert time.monotonic() < deadline, "the new certificate is not served"
        time.sleep(0.1)
    time.sleep(0.3)
    for _ in range(8):
        assert peer_serial(handshake(p, certs)) == leafs.proxy2.serial
    new = handshake(p, certs)
    assert peer_serial(new) == leafs.proxy2.serial
    old.send(b"after-reload" * 1000)
    assert old.recv_exact(12000, timeout=5) == b"after-reload" * 1000
    old.close()
    new.connect_request(srv.target())
    new.expect_established()
    new.send(b"x")
    assert new.recv_exact(1) == b"x"
    new.close()
    lines = tls_lines(p, srv.target(), n=2)
    assert any(int(x["up"]) == 12006 for x in lines), [x["_raw"] for x in lines]


def test_relative_paths_start_and_reload(start_proxy, certs, leafs, tcp_server, tmp_path):
    """certificate/key relative to the ini's directory (connectd runs from another working
    directory): it serves, and a SIGHUP with new files there takes them."""
    srv = tcp_server(echo_handler)
    install(certs.cert, certs.key, str(tmp_path / "rel.pem"), str(tmp_path / "rel.key"))
    assert os.getcwd() != str(tmp_path)
    p = start_tls_proxy(start_proxy, "rel.pem", "rel.key")
    assert still_serves(p, certs, srv)[1] == tlsfix.cert_serial(certs.cert)
    install(leafs.proxy2.chain, leafs.proxy2.key, str(tmp_path / "rel.pem"),
            str(tmp_path / "rel.key"))
    hup_and_wait(p, ["reloaded"], len(p.stderr_text()))
    assert still_serves(p, certs, srv)[1] == leafs.proxy2.serial


@pytest.mark.parametrize("case", ["garbage_cert", "key_mismatch", "missing_key", "expired"])
def test_sighup_broken_certificate(start_proxy, certs, leafs, tcp_server, tmp_path, case):
    """A bad new certificate/key and SIGHUP: the error is logged naming the file, the old
    certificate keeps serving new connections (all or nothing: never the new cert with the old
    key), an open tunnel keeps flowing; once fixed, the next SIGHUP takes the new pair."""
    srv = tcp_server(echo_handler)
    cert, key = str(tmp_path / "proxy.pem"), str(tmp_path / "proxy.key")
    install(certs.cert, certs.key, cert, key)
    old_serial = tlsfix.cert_serial(certs.cert)
    p = start_tls_proxy(start_proxy, cert, key)
    t = handshake(p, certs)
    t.connect_request(srv.target())
    t.expect_established()
    if case == "garbage_cert":
        _write(tmp_path / "g.pem",
               b"-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n")
        install(str(tmp_path / "g.pem"), certs.key, cert, key)
        named = cert
    elif case == "key_mismatch":  # the new certificate, the old key left in place
        install(leafs.proxy2.chain, certs.key, cert, key)
        named = cert
    elif case == "expired":
        install(leafs.expired.cert, leafs.expired.key, cert, key)
        named = cert
    else:
        os.unlink(key)
        named = key
    since = len(p.stderr_text())
    new = hup_and_wait(p, [named, "still serving the previous"], since)
    assert named in new or (case == "key_mismatch" and key in new), (
        f"the error does not name {named}:\n{new}")
    assert p.proc.poll() is None, "connectd exited"
    c = handshake(p, certs)
    assert peer_serial(c) == old_serial
    t.send(b"still")
    assert t.recv_exact(5) == b"still"
    c.connect_request(srv.target())
    c.expect_established()
    # fixed: the next reload takes the good pair
    install(leafs.proxy2.chain, leafs.proxy2.key, cert, key)
    since = len(p.stderr_text())
    hup_and_wait(p, ["reloaded"], since)
    assert peer_serial(handshake(p, certs)) == leafs.proxy2.serial
    t.send(b"again")
    assert t.recv_exact(5) == b"again"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_only_key_with_privilege_drop(connectd_bin, certs, leafs, dns, tcp_server):
    """The key is 0600 root:root and [server] user = nobody: connectd reads it before the drop
    and serves. The config and certificate live in a directory nobody can read (pytest's own
    tmp dir is 0700 root, where any reload as nobody fails on the ini first), so a SIGHUP gets
    as far as the key: it cannot read it again, and serving must not break: the same
    certificate keeps serving. Then a new certificate + new root-only key and SIGHUP: still
    serving, with a certificate whose handshake verifies (never the new certificate with the
    old key). What the log said each time is printed."""
    from conftest import Proxy

    srv = tcp_server(echo_handler)
    d = tempfile.mkdtemp(prefix="connectd-tls-privdrop-")
    os.chmod(d, 0o755)
    cert, key = os.path.join(d, "proxy.pem"), os.path.join(d, "proxy.key")
    install(certs.cert, certs.key, cert, key)
    os.chmod(cert, 0o644)
    os.chmod(key, 0o600)
    plain, tls_port = free_port(), free_port()
    cfg = merge(BASE_CONFIG, {
        "server": {"listen": f"127.0.0.1:{plain}, 127.0.0.1:{tls_port} tls", "user": "nobody"},
        "dns": {"servers": dns.server_spec},
        "log": {"access_log": os.path.join(d, "access.log")},
        "tls": {"certificate": cert, "key": key}})
    p = Proxy(connectd_bin, d, "privdrop", render_ini(cfg), LOOPBACK4, plain, [])
    try:
        os.chmod(p.config_path, 0o644)
        p.wait_ready()
        assert tlsfix.wait_listening(tls_port, 5, p.proc)
        p.tls_port = tls_port
        deadline = time.monotonic() + 5  # (the listeners may accept just before the drop)
        while True:
            with open(f"/proc/{p.pid}/status") as f:
                uid = [x for x in f if x.startswith("Uid:")][0].split()[1]
            if uid != "0" or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert uid != "0", "did not drop privileges"
        serial = tlsfix.cert_serial(certs.cert)
        assert still_serves(p, certs, srv)[1] == serial
        for step in ("same files", "new certificate and root-only key"):
            if step != "same files":
                install(leafs.proxy2.chain, leafs.proxy2.key, cert, key)
                os.chmod(cert, 0o644)
                os.chmod(key, 0o600)
            since = len(p.stderr_text())
            p.signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while "reload" not in p.stderr_text()[since:] and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
            said = [x for x in p.stderr_text()[since:].splitlines() if "reload" in x or key in x]
            assert said, "nothing logged after SIGHUP"
            print(f"SIGHUP as nobody ({step}):\n  " + "\n  ".join(said))
            assert p.proc.poll() is None, "connectd exited on SIGHUP"
            got = still_serves(p, certs, srv)[1]
            print(f"  -> serving serial {got:X} (old {serial:X}, new {leafs.proxy2.serial:X})")
            assert got == serial  # the new key cannot be read as nobody: all or nothing
    finally:
        for c in p.clients:
            c.close()
        rc, killed = p.terminate()
        p._stderr.close()
        hits, text = p.sanitizer_report()
        shutil.rmtree(d, ignore_errors=True)
    assert not killed and rc in (0, -signal.SIGTERM), f"exit {rc}, killed {killed}\n{text[-3000:]}"
    assert not hits, text[-3000:]


# ---- PAC, PROXY header -----------------------------------------------------------------------


def pac_fetch(c, request):
    c.send(request)
    resp = c.read_head()
    cl = int(resp.header("Content-Length"))
    body = c.recv_exact(cl)
    c.close()
    return resp, body.decode()


def pac_eval(cases):
    """Run each served PAC text's FindProxyForURL in Node.js (one process): cases is a list of
    (pac text, url); returns the answers in order."""
    node = need("node")
    script = "const out = [];\n"
    for text, url in cases:
        script += ("out.push((function () {\n" + text +
                   f"\nreturn FindProxyForURL({json.dumps(url)}, 'example.com');\n}})());\n")
    script += "console.log(JSON.stringify(out));\n"
    r = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_pac_names_https_listener(start_proxy, certs):
    """With a TLS listener the PAC file says HTTPS host:TLS_PORT: the host from the request's
    Host header (its port dropped), else the address the client connected to; served on the
    plain listener and on the TLS one alike."""
    p = tls_proxy(start_proxy, certs, extra={"server": {"pac": "yes"}})
    resp, by_name = pac_fetch(p.client(), f"GET /proxy.pac HTTP/1.1\r\nHost: localhost:{p.port}"
                              "\r\n\r\n".encode())
    assert resp.status == 200, resp
    _, no_host = pac_fetch(p.client(), b"GET /proxy.pac HTTP/1.0\r\n\r\n")
    c = handshake(p, certs)
    resp, over_tls = pac_fetch(c, f"GET /proxy.pac HTTP/1.1\r\nHost: localhost:{p.tls_port}"
                               "\r\n\r\n".encode())
    assert resp.status == 200, resp
    got = pac_eval([(by_name, "https://example.com/"), (by_name, "http://example.com/"),
                    (no_host, "https://example.com/"), (over_tls, "wss://example.com/")])
    assert got == [f"HTTPS localhost:{p.tls_port}", "DIRECT", f"HTTPS 127.0.0.1:{p.tls_port}",
                   f"HTTPS localhost:{p.tls_port}"], (got, by_name)
    lines = p.log_lines(3, where=lambda x: x.get("reason") == "pac")
    assert [x.get("tls") is not None for x in lines].count(True) == 1, [x["_raw"] for x in lines]


def test_ipv6_tls_listener(start_proxy, certs, tcp_server):
    """A TLS listener on [::1] (the test certificate names ::1): handshake verified for the
    address, tunnel, access line with tls= and the IPv6 client."""
    from netutil import have_ipv6

    if not have_ipv6():
        pytest.skip("no IPv6 loopback")
    srv = tcp_server(echo_handler)
    port = free_port("::1")
    p = start_proxy({"tls": {"certificate": certs.cert, "key": certs.key}},
                    listen=f"127.0.0.1:{free_port()}, [::1]:{port} tls")
    c = TLSClient("::1", port, client_context(certs.ca), server_hostname="::1", timeout=5)
    p.clients.append(c)
    c.connect_request(srv.target())
    c.expect_established()
    c.send(b"six")
    assert c.recv_exact(3) == b"six"
    c.close()
    [line] = tls_lines(p, srv.target())
    assert line["client"].startswith("[::1]:"), line["_raw"]


def test_proxy_protocol_then_tls(start_proxy, certs, tcp_server):
    """`tls proxy-protocol`: the PROXY v1 header in clear, then the TLS handshake; the access
    line names the client from the header, the balancer, and tls=."""
    srv = tcp_server(echo_handler)
    p = tls_proxy(start_proxy, certs, tls_opts="tls proxy-protocol",
                  extra={"server": {"proxy_protocol_from": "127.0.0.1/32"},
                         "access": {"allow_clients": "127.0.0.0/8, 192.0.2.0/24"}})
    hdr = f"PROXY TCP4 192.0.2.7 127.0.0.1 40000 {p.tls_port}\r\n".encode()
    c = TLSClient(LOOPBACK4, p.tls_port, client_context(certs.ca), preamble=hdr, timeout=5)
    p.clients.append(c)
    c.connect_request(srv.target())
    c.expect_established()
    c.send(b"pp")
    assert c.recv_exact(2) == b"pp"
    c.close()
    [line] = tls_lines(p, srv.target())
    assert line["client"] == "192.0.2.7:40000", line["_raw"]
    assert line["balancer"].startswith("127.0.0.1:"), line["_raw"]
    # without the header the TLS handshake does not start: the ClientHello is not a PROXY line
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(p, certs)


def test_sigterm_drains_tls_tunnel(start_proxy, certs, tcp_server):
    """SIGTERM with a TLS tunnel open: it keeps relaying during the drain, then ends
    (reason=shutdown, tls=) and connectd exits 0."""
    srv = tcp_server(echo_handler)
    p = tls_proxy(start_proxy, certs, extra={"timeouts": {"shutdown": "1s"}})
    c = handshake(p, certs)
    c.connect_request(srv.target())
    c.expect_established()
    p.signal(signal.SIGTERM)
    time.sleep(0.2)
    c.send(b"drain")
    assert c.recv_exact(5, timeout=2) == b"drain"
    assert c.wait_closed(4), "TLS tunnel not closed after the shutdown timeout"
    rc = p.proc.wait(5)
    p.stopped = True
    assert rc == 0
    [line] = tls_lines(p, srv.target())
    assert line["reason"] == "shutdown", line["_raw"]
