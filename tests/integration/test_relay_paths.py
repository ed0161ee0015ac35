"""Both relay paths, copy (user-space buffer) and splice (kernel pipe), forced with
[server] relay = copy | splice, and the automatic choice: correctness of bulk transfers both
ways at once, half-close, bounded memory under a stalled reader, and which path carried the
bytes (seen from the pipes the proxy holds in /proc/PID/fd)."""

import hashlib
import os
import socket
import threading
import time

import pytest

from conftest import both_transports
from netutil import sha256
from servers import echo_handler, send_then_shutdown_handler, slow_reader_source_handler

MODES = ["copy", "splice", "auto"]


def and_tls(modes):
    """(mode, transport) parameters: modes on the plain listener, plus auto on a TLS listener: a
    TLS client connection cannot be spliced, so there the default must keep to the copy path."""
    return [pytest.param(m, "plain", id=m) for m in modes] + [pytest.param("auto", "tls",
                                                                          id="auto-tls")]


def pipe_fds(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:"):
                n += 1
        except OSError:
            pass  # closed meanwhile
    return n


@pytest.mark.parametrize("mode,transport", and_tls(MODES))
def test_bulk_both_ways_at_once(start_proxy, tcp_server, mode):
    down = os.urandom(8 * 1024 * 1024)
    up = os.urandom(6 * 1024 * 1024 + 123)
    srv = tcp_server(send_then_shutdown_handler(down))
    p = start_proxy({"server": {"relay": mode}})
    c = p.tunnel(srv.target(), timeout=30)
    got = hashlib.sha256(c.buf)
    n = len(c.buf)
    c.buf = b""

    def writer():
        c.send(up)
        c.shutdown_write()

    w = threading.Thread(target=writer)
    w.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        d = c.recv(1 << 20, timeout=30)
        if not d:
            break
        got.update(d)
        n += len(d)
    w.join(30)
    assert n == len(down) and got.hexdigest() == sha256(down)
    [rec] = srv.wait_results(1, timeout=30)
    assert rec["bytes"] == len(up) and rec["sha256"] == sha256(up)
    line = p.log_lines(1, where=lambda x: x["status"] == "200")[-1]
    assert line["up"] == str(len(up)) and line["down"] == str(len(down)), line["_raw"]
    assert line["reason"] == "done", line["_raw"]


@pytest.mark.parametrize("mode,transport", and_tls(MODES))
def test_stalled_reader_bounded_and_path(start_proxy, tcp_server, mode, transport):
    """The upstream pushes 32 MB to a client that stops reading: memory stays bounded, the
    bytes wait in a pipe on the splice path and in a buffer on the copy path, and all arrive
    once the client reads again."""
    payload = os.urandom(32 * 1024 * 1024)
    srv = tcp_server(slow_reader_source_handler(payload))
    p = start_proxy({"server": {"relay": mode}})
    pipes0 = pipe_fds(p.pid)
    rss0 = p.rss_kb()
    c = p.client(timeout=30)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    c.connect_request(srv.target())
    c.expect_established()
    time.sleep(1.0)
    held = pipe_fds(p.pid) - pipes0
    rss1 = p.rss_kb()
    if mode == "copy" or transport == "tls":
        assert held == 0, f"copy path opened a pipe ({transport})"
    else:
        assert held >= 2, f"{mode}: no pipe holds the stalled bytes"
    assert rss1 - rss0 < 8 * 1024, f"RSS grew {rss1 - rss0} kB under a stalled reader"
    h = hashlib.sha256(c.buf)
    n = len(c.buf)
    c.buf = b""
    deadline = time.monotonic() + 60
    while n < len(payload) and time.monotonic() < deadline:
        d = c.recv(1 << 20, timeout=10)
        if not d:
            break
        h.update(d)
        n += len(d)
    assert n == len(payload) and h.hexdigest() == sha256(payload)


@both_transports
def test_auto_keeps_small_exchanges_on_copy(start_proxy, tcp_server):
    """64-byte round trips never justify a pipe."""
    srv = tcp_server(echo_handler)
    p = start_proxy({"server": {"relay": "auto"}})
    pipes0 = pipe_fds(p.pid)
    c = p.tunnel(srv.target())
    for i in range(200):
        msg = os.urandom(64)
        c.send(msg)
        assert c.recv_exact(64) == msg
    assert pipe_fds(p.pid) == pipes0


@pytest.mark.parametrize("mode,transport", and_tls(["copy", "splice"]))
def test_half_close_each_path(start_proxy, tcp_server, mode):
    """Client EOF travels as FIN while the reply (1 MB) still flows back."""
    srv = tcp_server(echo_handler)
    p = start_proxy({"server": {"relay": mode}})
    c = p.tunnel(srv.target(), timeout=20)
    data = os.urandom(1024 * 1024)
    c.send(data)
    c.shutdown_write()
    body, how = c.read_until_close(timeout=20)
    assert how == "eof" and body == data
