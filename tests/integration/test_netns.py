"""Destination unreachable -> 502 destination_unavailable.

The proxy and its client run inside a network namespace that this test creates, with only a
loopback interface: a connect to any other address fails at once with ENETUNREACH (or
EHOSTUNREACH for the 'unreachable' route added below), and no packet can leave the namespace.
Needs root and iproute2; skipped otherwise."""

import os
import shutil
import signal
import subprocess
import sys
import uuid

import pytest

from netutil import parse_proxy_status

CLIENT = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(sys.argv[2].encode() + b"\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
sys.stdout.buffer.write(data)
"""


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=check)


@pytest.fixture
def netns():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for a network namespace")
    name = f"connectd-t{uuid.uuid4().hex[:8]}"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        # Inside the namespace only: 198.51.100.0/24 (documentation) is explicitly unreachable.
        _ip("-n", name, "route", "add", "unreachable", "198.51.100.0/24")
        yield name
    finally:
        _ip("netns", "del", name, check=False)


def _run_in(ns, connectd_bin, tmp_path, target):
    port = 3128
    cfg = tmp_path / "ns.ini"
    cfg.write_text(
        "[server]\nlisten = 127.0.0.1:%d\nuser = root\n"
        "[access]\nallow_ports = 1-65535\ndeny_private = no\n"
        "[dns]\nservers = 127.0.0.1:53\n"
        "[timeouts]\nconnect = 3s\n"
        "[log]\nlevel = debug\naccess_log = %s\n" % (port, tmp_path / "ns.access.log"))
    err = open(tmp_path / "ns.stderr", "w+")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, connectd_bin, "-c", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=err)
    try:
        out = None
        for _ in range(50):  # bounded wait for the listener inside the namespace
            r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT,
                                str(port), f"CONNECT {target} HTTP/1.1\r\nHost: {target}"],
                               capture_output=True, timeout=15)
            if r.returncode == 0:
                out = r.stdout.decode("latin-1")  # bytes: keep the CRLFs as sent
                break
            if proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.1"])
        assert out is not None, "could not reach the proxy inside the namespace"
        return out
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        err.seek(0)
        text = err.read()
        err.close()
        assert rc == 0, text
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert marker not in text, text


@pytest.mark.parametrize("target", ["192.0.2.1:443", "198.51.100.1:443"])
def test_502_destination_unavailable(netns, connectd_bin, tmp_path, target):
    out = _run_in(netns, connectd_bin, tmp_path, target)
    head = out.split("\r\n\r\n", 1)[0].split("\r\n")
    assert head[0] == "HTTP/1.1 502 Bad Gateway", out
    ps = [h.split(":", 1)[1].strip() for h in head if h.lower().startswith("proxy-status:")]
    assert len(ps) == 1, out
    member, params, _ = parse_proxy_status(ps[0])
    assert member == "connectd" and params["error"] == "destination_unavailable", out
    assert "Connection: close" in head, out
    log = (tmp_path / "ns.access.log").read_text()
    assert f"target={target}" in log and "status=502" in log and "reason=connect_failed" in log
