"""[server] workers = N: a master supervising N single-threaded workers that share the listen
address through SO_REUSEPORT."""

import os
import signal
import time

from servers import echo_handler


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(x) for x in f.read().split())


def wait_children(pid, n, timeout=5.0, exclude=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(pid)
        if len(kids) == n and not set(kids) & set(exclude):
            return kids
        time.sleep(0.05)
    raise AssertionError(f"want {n} workers (not {exclude}), have {children(pid)}")


def test_two_workers_serve_and_share_load(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"server": {"workers": "2"}})
    kids = wait_children(p.pid, 2)
    tunnels = [p.tunnel(srv.target()) for _ in range(40)]
    for i, t in enumerate(tunnels):
        msg = f"hello {i}".encode()
        t.send(msg)
        assert t.recv_exact(len(msg)) == msg
    # SO_REUSEPORT spreads connections by hash: with 40 clients both workers hold some.
    holders = 0
    for k in kids:
        socks = [os.readlink(f"/proc/{k}/fd/{fd}") for fd in os.listdir(f"/proc/{k}/fd")]
        if sum(s.startswith("socket:") for s in socks) > 2 + 1:  # listener + c-ares + tunnels
            holders += 1
    assert holders == 2, "one worker took every connection"


def test_master_restarts_a_dead_worker(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"server": {"workers": "2"}})
    kids = wait_children(p.pid, 2)
    os.kill(kids[0], signal.SIGKILL)
    new = wait_children(p.pid, 2, timeout=5.0, exclude=[kids[0]])
    assert kids[1] in new
    assert "killed by" in p.stderr_text()
    # Service goes on, through either worker.
    for i in range(20):
        t = p.tunnel(srv.target())
        t.send(b"ping")
        assert t.recv_exact(4) == b"ping"
        t.close()


def test_sigterm_stops_master_and_workers(start_proxy, tcp_server):
    p = start_proxy({"server": {"workers": "2"}})
    kids = wait_children(p.pid, 2)
    p.signal(signal.SIGTERM)
    rc = p.proc.wait(timeout=10)
    assert rc == 0
    for k in kids:
        assert not os.path.exists(f"/proc/{k}") or open(f"/proc/{k}/stat").read().split()[2] == "Z"
    p.stopped = True
