"""Process behaviour: SIGTERM with and without open tunnels, SIGPIPE ignored."""

import signal
import socket
import time

from conftest import both_transports
from netutil import wait_port
from servers import echo_handler, hold_handler


def test_sigterm_idle_exits_zero(proxy):
    rc, killed = proxy.terminate(grace=5)
    proxy.stopped = True
    assert not killed, "connectd did not exit within 5 s of SIGTERM"
    assert rc == 0, f"exit status {rc} after SIGTERM"


@both_transports
def test_sigterm_drains_open_tunnel(start_proxy, tcp_server):
    """With shutdown = 1s: after SIGTERM the listener stops accepting, the open tunnel keeps
    working during the drain, then is closed (reason=shutdown) and the process exits 0."""
    srv = tcp_server(echo_handler)
    p = start_proxy({"timeouts": {"shutdown": "1s"}})
    c = p.tunnel(srv.target())
    t0 = time.monotonic()
    p.signal(signal.SIGTERM)
    time.sleep(0.2)
    # no new clients
    s = socket.socket()
    s.settimeout(1)
    try:
        refused = s.connect_ex(("127.0.0.1", p.port)) != 0
    finally:
        s.close()
    assert refused, "listener still accepting after SIGTERM"
    # the tunnel still relays during the drain (unless the proxy already closed it)
    c.send(b"drain")
    assert c.recv_exact(5, timeout=2) == b"drain"
    assert c.wait_closed(4), "tunnel not closed after the shutdown timeout"
    try:
        rc = p.proc.wait(4)
    except Exception:
        rc = None
    el = time.monotonic() - t0
    p.stopped = p.proc.poll() is not None
    assert rc == 0, f"exit status {rc} after SIGTERM drain"
    assert el < 4.5, f"drain took {el:.1f}s with shutdown = 1s"
    [line] = p.log_lines(1)
    assert line["reason"] == "shutdown" and line["up"] == "5" and line["down"] == "5"


@both_transports
def test_sigterm_drain_ends_early_when_tunnels_close(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"timeouts": {"shutdown": "10s"}})
    c = p.tunnel(srv.target())
    p.signal(signal.SIGTERM)
    time.sleep(0.2)
    c.send(b"x")
    assert c.recv_exact(1) == b"x"
    c.shutdown_write()
    assert c.read_until_close(3) == (b"", "eof")
    t0 = time.monotonic()
    try:
        rc = p.proc.wait(3)
    except Exception:
        rc = None
    p.stopped = p.proc.poll() is not None
    assert rc == 0, "connectd kept draining after the last tunnel closed"
    assert time.monotonic() - t0 < 3


@both_transports
def test_sigpipe_ignored(proxy, tcp_server):
    """Upstream keeps writing into a client that vanished: the daemon must survive (EPIPE)."""
    import os

    payload = os.urandom(8 * 1024 * 1024)

    def h(conn, rec):
        try:
            conn.sendall(payload)
        except OSError:
            pass

    srv = tcp_server(h)
    for _ in range(3):
        c = proxy.tunnel(srv.target())
        c.recv_exact(1000, timeout=5)
        c.abort()
    time.sleep(0.5)
    assert proxy.proc.poll() is None, "connectd died (SIGPIPE?)"
    assert wait_port("127.0.0.1", proxy.port, 2)


@both_transports
def test_survives_client_flood_of_resets(proxy, tcp_server):
    srv = tcp_server(hold_handler)
    for i in range(50):
        c = proxy.client()
        if i % 2:
            c.connect_request(srv.target())
        c.abort()
    time.sleep(0.5)
    assert proxy.proc.poll() is None
    c = proxy.client()
    c.connect_request("nx.test:443")
    from netutil import check_refusal

    check_refusal(c, 502, "dns_error")
