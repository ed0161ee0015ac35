"""[limits] per_client_connections and per_client_rate (503), and that refused clients do not
hold max_connections slots."""

import time

from netutil import check_refusal
from servers import echo_handler


def test_503_per_client_connections(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"limits": {"per_client_connections": "2"}})
    p.settle()
    a = p.tunnel(srv.target())
    b = p.tunnel(srv.target())
    c = p.client()
    c.connect_request(srv.target())
    check_refusal(c, 503, "http_request_denied", allow_reset=True)
    srv.wait_accepts(2)
    time.sleep(0.1)
    assert srv.accepts == 2, "the refused client was dialed"
    # Another client address is not affected by this one's count.
    d = p.tunnel(srv.target(), source="127.0.0.5")
    d.send(b"x")
    assert d.recv_exact(1) == b"x"
    lines = p.log_lines(1, where=lambda x: x["status"] == "503")
    assert lines[-1]["reason"] == "client_limit"
    # Closing one of the first client's tunnels frees its slot.
    a.close()
    deadline = time.monotonic() + 3
    while True:
        e = p.client()
        e.connect_request(srv.target())
        resp = e.read_head()
        if resp.status == 200 or time.monotonic() > deadline:
            break
        e.close()
        time.sleep(0.1)
    assert resp.status == 200
    for t in (b, d):
        t.send(b"ok")
        assert t.recv_exact(2) == b"ok"


def test_503_per_client_rate(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    rate = 5
    p = start_proxy({"limits": {"per_client_rate": str(rate)}})
    p.settle()
    statuses = []
    t0 = time.monotonic()
    for _ in range(15):
        c = p.client(source="127.0.0.6")
        c.connect_request(srv.target())
        statuses.append(c.read_head().status)
        c.close()
    elapsed = time.monotonic() - t0
    assert set(statuses) <= {200, 503}, statuses
    # Burst = rate: the first `rate` are admitted; after that only what refilled meanwhile
    # (rate per second), however slow this machine is.
    assert statuses[:rate] == [200] * rate, statuses
    allowed = rate + int(elapsed * rate) + 1
    assert statuses.count(200) <= allowed, (statuses, elapsed)
    assert 503 in statuses, statuses
    lines = p.log_lines(statuses.count(503), where=lambda x: x["status"] == "503")
    assert {x["reason"] for x in lines} == {"client_rate"}
    # Tokens come back at the configured rate.
    time.sleep(1.1)
    c = p.client(source="127.0.0.6")
    c.connect_request(srv.target())
    assert c.read_head().status == 200
    # Other clients have their own bucket.
    c = p.client(source="127.0.0.7")
    c.connect_request(srv.target())
    assert c.read_head().status == 200


def test_refused_clients_do_not_hold_slots(start_proxy, tcp_server):
    """Clients outside allow_clients get 403 and, while their refusal lingers, must not use up
    max_connections: an allowed client still gets through."""
    srv = tcp_server(echo_handler)
    p = start_proxy({"limits": {"max_connections": "2"},
                     "access": {"allow_clients": "127.0.0.1/32"}})
    p.settle()
    outsiders = []
    for _ in range(4):
        c = p.client(source="127.0.0.9")  # never sends a request, never closes
        outsiders.append(c)
    resp = outsiders[0].read_head()
    assert resp.status == 403
    t = p.tunnel(srv.target())
    t.send(b"in")
    assert t.recv_exact(2) == b"in"
