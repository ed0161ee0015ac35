"""[server] pac = yes: GET /proxy.pac answers a proxy auto-config file that sends https and wss
through this proxy (at the address the client used) and everything else direct."""

import shutil
import subprocess

import pytest

from netutil import check_refusal


def fetch(p, request):
    c = p.client()
    c.send(request)
    resp = c.read_head()
    cl = int(resp.header("Content-Length"))
    body = c.recv_exact(cl) if cl and not request.startswith(b"HEAD") else b""
    rest, how = c.read_until_close(3)
    assert rest == b"" and how == "eof", (rest, how)
    return resp, body, cl


def test_pac_served(start_proxy):
    p = start_proxy({"server": {"pac": "yes"}})
    resp, body, cl = fetch(p, b"GET /proxy.pac HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status_line == "HTTP/1.1 200 OK"
    assert resp.header("Content-Type") == "application/x-ns-proxy-autoconfig"
    assert resp.header("Connection") == "close"
    assert cl == len(body)
    text = body.decode()
    assert f'return "PROXY 127.0.0.1:{p.port}";' in text, text
    line = p.log_lines(1, where=lambda x: x.get("reason") == "pac")[-1]
    assert line["status"] == "200" and line["upstream"] == "-" and line["target"] == "/proxy.pac"
    # HEAD: same headers, no body.
    resp, body, cl2 = fetch(p, b"HEAD /proxy.pac HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.status == 200 and cl2 == cl and body == b""
    # A query string is fine; other paths and methods are still 405.
    resp, _, _ = fetch(p, b"GET /proxy.pac?v=2 HTTP/1.0\r\n\r\n")
    assert resp.status == 200
    c = p.client()
    c.send(b"GET /proxy.pacx HTTP/1.1\r\nHost: x\r\n\r\n")
    resp, _, _ = check_refusal(c, 405, "http_request_denied")
    c = p.client()
    c.send(b"POST /proxy.pac HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    check_refusal(c, 405, "http_request_denied")


def test_pac_off_by_default(start_proxy):
    p = start_proxy()
    c = p.client()
    c.send(b"GET /proxy.pac HTTP/1.1\r\nHost: x\r\n\r\n")
    resp, _, _ = check_refusal(c, 405, "http_request_denied")
    assert resp.header("Allow") == "CONNECT"


def test_pac_logic_evaluated(start_proxy):
    """Run the served FindProxyForURL in Node.js: https and wss go through the proxy."""
    node = shutil.which("node") or shutil.which("nodejs")
    if not node:
        pytest.skip("node not installed")
    p = start_proxy({"server": {"pac": "yes"}})
    _, body, _ = fetch(p, b"GET /proxy.pac HTTP/1.1\r\nHost: x\r\n\r\n")
    script = body.decode() + """
for (const u of ["https://example.com/", "wss://example.com/s", "http://example.com/",
                 "ftp://example.com/"])
    console.log(u + " " + FindProxyForURL(u, "example.com"));
"""
    r = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    got = dict(line.split(" ", 1) for line in r.stdout.strip().split("\n"))
    want = f"PROXY 127.0.0.1:{p.port}"
    assert got == {"https://example.com/": want, "wss://example.com/s": want,
                   "http://example.com/": "DIRECT", "ftp://example.com/": "DIRECT"}, got
