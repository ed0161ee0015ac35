"""SIGHUP: the configuration is read again; valid -> new tunnels follow it at once and
established tunnels are untouched; invalid -> the old one keeps serving and the error is logged
with file:line. Listen addresses added or removed take effect."""

import selectors
import signal
import socket
import time

from conftest import both_transports
from netutil import check_refusal, free_port
from servers import echo_handler


def stream_all(clients, rounds, chunk, during=None):
    """Echo `rounds` chunks through every client (netutil.Client) at once (one selector loop);
    call during() once, after the first round. Returns the number of clients that completed
    every round with the exact bytes back."""
    sel = selectors.DefaultSelector()
    state = {}
    for i, s in enumerate(clients):
        s.sock.setblocking(False)
        payload = bytes([i % 251]) * chunk
        state[s] = {"round": 0, "got": b"", "payload": payload, "ok": True, "done": False}
        s.send_nowait(payload)
        sel.register(s.sock, selectors.EVENT_READ, s)
    called = False
    deadline = time.monotonic() + 60
    while any(not st["done"] for st in state.values()) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1.0):
            s = key.data
            st = state[s]
            try:
                data = s.recv_nowait(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                st["ok"] = False
                st["done"] = True
                sel.unregister(s.sock)
                continue
            st["got"] += data
            if len(st["got"]) < chunk:
                continue
            if st["got"] != st["payload"]:
                st["ok"] = False
            st["got"] = b""
            st["round"] += 1
            if st["round"] >= rounds:
                st["done"] = True
                sel.unregister(s.sock)
                continue
            s.send_nowait(st["payload"])
        if not called and during and all(st["round"] >= 1 or st["done"] for st in state.values()):
            during()
            called = True
    sel.close()
    return sum(1 for st in state.values() if st["ok"] and st["round"] >= rounds)


@both_transports
def test_reload_with_200_tunnels_streaming(start_proxy, tcp_server):
    allowed = tcp_server(echo_handler)
    later = tcp_server(echo_handler)
    p = start_proxy({"access": {"allow_ports": str(allowed.port)}})
    socks = []
    for _ in range(200):
        socks.append(p.tunnel(allowed.target()))
    c = p.client()
    c.connect_request(later.target())
    check_refusal(c, 403, "http_request_denied")

    def reload():
        p.rewrite_config({"access": {"allow_ports": str(later.port)}})
        p.signal(signal.SIGHUP)
        p.wait_log("reloaded")

    ok = stream_all(socks, rounds=20, chunk=4096, during=reload)
    assert ok == 200, f"{200 - ok} tunnels broke across the reload"
    # New tunnels follow the new allowlist.
    t = p.tunnel(later.target())
    t.send(b"new")
    assert t.recv_exact(3) == b"new"
    c = p.client()
    c.connect_request(allowed.target())
    check_refusal(c, 403, "http_request_denied")
    assert p.proc.poll() is None


@both_transports
def test_reload_with_broken_config_keeps_serving(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"access": {"allow_ports": str(srv.port)}})
    before = p.tunnel(srv.target())
    good_text = p.config_text
    p.rewrite_config(text=good_text + "\n[access]\nbogus_key = 1\n")
    bad_line = len(good_text.split("\n")) + 2
    p.signal(signal.SIGHUP)
    text = p.wait_log("still serving the previous configuration")
    assert f"{p.config_path}:{bad_line}: [access] bogus_key: unknown key" in text, text[-2000:]
    # Old rules still apply and old tunnels still work.
    before.send(b"a")
    assert before.recv_exact(1) == b"a"
    t = p.tunnel(srv.target())
    t.send(b"b")
    assert t.recv_exact(1) == b"b"
    # A broken policy file is refused the same way.
    p.rewrite_config(text=good_text)
    pol = p.config_path + ".policy.yaml"
    with open(pol, "w") as f:
        f.write("rules:\n  - action: perhaps\n")
    p.rewrite_config({"access": {"policy": pol}})
    p.signal(signal.SIGHUP)
    text = p.wait_log("still serving the previous configuration", count=2)
    assert f"{pol}:2:13:" in text, text[-2000:]
    t = p.tunnel(srv.target())
    assert p.proc.poll() is None


def test_reload_changes_listen_addresses(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy()
    old_port = p.port
    kept = p.tunnel(srv.target())
    new_port = free_port()
    p.rewrite_config({"server": {"listen": f"127.0.0.1:{new_port}"}})
    p.signal(signal.SIGHUP)
    p.wait_log(f"listening on 127.0.0.1:{new_port}")
    p.wait_log("reloaded")
    # The new address serves; the old one is closed; the tunnel made through it lives on.
    t = p.client(port=new_port)
    t.connect_request(srv.target())
    t.expect_established()
    t.send(b"x")
    assert t.recv_exact(1) == b"x"
    s = socket.socket()
    s.settimeout(2)
    try:
        assert s.connect_ex(("127.0.0.1", old_port)) != 0, "old listen address still open"
    finally:
        s.close()
    kept.send(b"still")
    assert kept.recv_exact(5) == b"still"
    # A listen address that cannot be bound: the reload is refused as a whole.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    taken = blocker.getsockname()[1]
    p.rewrite_config({"server": {"listen": f"127.0.0.1:{new_port}, 127.0.0.1:{taken}"},
                      "access": {"allow_ports": "1"}})
    p.signal(signal.SIGHUP)
    text = p.wait_log("still serving the previous configuration")
    assert f"listen 127.0.0.1:{taken}" in text
    blocker.close()
    t = p.client(port=new_port)
    t.connect_request(srv.target())
    t.expect_established()  # allow_ports = 1 did not take effect


def test_reload_reaches_every_worker(start_proxy, tcp_server):
    """workers = 2: a reload with the same sockets reloads each worker in place; a reload that
    changes the listen addresses starts new workers and retires the old ones, whose tunnels
    keep running."""
    a = tcp_server(echo_handler)
    b = tcp_server(echo_handler)
    p = start_proxy({"server": {"workers": "2"}, "access": {"allow_ports": str(a.port)}})
    tunnels = [p.tunnel(a.target()) for _ in range(10)]
    p.rewrite_config({"access": {"allow_ports": str(b.port)}})
    p.signal(signal.SIGHUP)
    p.wait_log("reloaded " + p.config_path, count=3)  # the master and both workers
    for _ in range(20):  # SO_REUSEPORT spreads these over both workers
        c = p.client()
        c.connect_request(a.target())
        check_refusal(c, 403, "http_request_denied")
        t = p.tunnel(b.target())
        t.close()
    for t in tunnels:
        t.send(b"1")
        assert t.recv_exact(1) == b"1"
    # New sockets: workers are replaced; old tunnels are served by the retiring workers.
    new_port = free_port()
    p.rewrite_config({"server": {"listen": f"127.0.0.1:{new_port}"}})
    p.signal(signal.SIGHUP)
    p.wait_log("retiring", count=2)
    fresh = p.client(port=new_port)
    fresh.connect_request(b.target())
    fresh.expect_established()
    fresh.close()
    for t in tunnels:
        t.send(b"2")
        assert t.recv_exact(1) == b"2"
        t.close()
    p.wait_log("retired worker", count=2, timeout=10)
    # Stop reaches the new workers.
    rc, killed = p.terminate()
    p.stopped = True
    assert not killed and rc == 0, rc


def test_reload_switches_access_log_and_level(start_proxy, tcp_server, tmp_path):
    srv = tcp_server(echo_handler)
    p = start_proxy()
    t = p.tunnel(srv.target())
    t.close()
    p.log_lines(1)
    new_log = tmp_path / "switched.log"
    p.rewrite_config({"log": {"access_log": str(new_log), "level": "warn"}})
    p.signal(signal.SIGHUP)
    p.wait_log("reloaded")
    before = p.stderr_text()
    t = p.tunnel(srv.target())
    t.close()
    deadline = time.monotonic() + 5
    while not (new_log.exists() and "status=200" in new_log.read_text()):
        assert time.monotonic() < deadline, "no access line in the new file"
        time.sleep(0.05)
    time.sleep(0.2)
    # level = warn: no more info/debug lines.
    after = p.stderr_text()[len(before):]
    assert "info:" not in after and "debug:" not in after, after


def test_reload_keeps_the_dns_cache(start_proxy, tcp_server, dns):
    """A reload carries cached answers over (their TTLs still count down); a change of [dns]
    servers starts the cache empty."""
    srv = tcp_server(echo_handler)
    dns.ttl = 60
    dns.set("cached.test", ["127.0.0.1"])
    p = start_proxy({"access": {"allow_ports": str(srv.port)}})
    target = f"cached.test:{srv.port}"
    p.tunnel(target).close()
    asked = len(dns.queried("cached.test"))
    assert asked >= 1
    p.signal(signal.SIGHUP)
    p.wait_log(f"reloaded {p.config_path}")
    t = p.tunnel(target)
    t.send(b"x")
    assert t.recv_exact(1) == b"x"
    assert len(dns.queried("cached.test")) == asked, "the reload dropped the DNS cache"
    # Same servers written differently are other servers: the cache starts empty.
    p.rewrite_config({"dns": {"servers": f"{dns.server_spec}, 127.0.0.1:9"}})
    p.signal(signal.SIGHUP)
    p.wait_log("the DNS cache starts empty")
    p.tunnel(target).close()
    assert len(dns.queried("cached.test")) > asked
