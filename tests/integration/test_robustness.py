"""Clients that vanish mid-handshake: a pending DNS query or connect must be cancelled cleanly
(these are the paths where a use-after-free would show under ASan)."""

import time

from netutil import check_refusal
from servers import Blackhole, echo_handler


def _alive_and_serving(p, tcp_server):
    assert p.proc.poll() is None, "connectd died"
    srv = tcp_server(echo_handler)
    c = p.tunnel(srv.target())
    c.send(b"alive")
    assert c.recv_exact(5) == b"alive"


def test_client_gone_while_resolving(start_proxy, dns, tcp_server):
    dns.set("late.test", ["127.0.0.1"])
    dns.delays["late.test"] = 0.7
    p = start_proxy({"timeouts": {"dns": "3s"}})
    for i in range(5):
        c = p.client()
        c.connect_request("late.test:443")
        if i % 2:
            c.abort()
        else:
            c.close()
    time.sleep(1.2)  # the answers arrive after every client has gone
    assert len(p.log_lines(5)) == 5
    _alive_and_serving(p, tcp_server)


def test_reset_client_not_dialed_after_dns(start_proxy, dns, tcp_server):
    """A client that reset its connection while its name was being resolved is gone: the
    proxy must not go on to open a connection to the destination for it."""
    srv = tcp_server(echo_handler)
    dns.set("late.test", ["127.0.0.1"])
    dns.delays["late.test"] = 0.7
    p = start_proxy({"timeouts": {"dns": "3s"}})
    for _ in range(3):
        c = p.client()
        c.connect_request(f"late.test:{srv.port}")
        time.sleep(0.05)
        c.abort()
    time.sleep(1.2)
    lines = p.log_lines(3)
    assert srv.accepts == 0, (
        f"upstream dialed {srv.accepts} times for clients that had already reset; log: "
        + " | ".join(x["_raw"].strip() for x in lines))


def test_client_gone_while_connecting(start_proxy, tcp_server):
    bh = Blackhole()
    try:
        p = start_proxy({"timeouts": {"connect": "1s"}})
        for i in range(5):
            c = p.client()
            c.connect_request(f"127.0.0.1:{bh.port}")
            time.sleep(0.05)
            if i % 2:
                c.abort()
            else:
                c.close()
        time.sleep(1.3)  # past the connect timeout of the abandoned attempts
        assert len(p.log_lines(5)) == 5
        _alive_and_serving(p, tcp_server)
    finally:
        bh.close()


def test_client_gone_with_dns_timeout_pending(start_proxy, dns, tcp_server):
    dns.drop.add("void.test")
    p = start_proxy({"timeouts": {"dns": "1s"}})
    c = p.client()
    c.connect_request("void.test:443")
    c.close()
    time.sleep(1.3)
    c = p.client()
    c.connect_request("void.test:443")
    check_refusal(c, 504, "dns_timeout", timeout=4)
    _alive_and_serving(p, tcp_server)


def test_many_pending_resolutions_answered_together(start_proxy, dns, tcp_server):
    """30 clients wait on one slow name, then all get their tunnel."""
    srv = tcp_server(echo_handler)
    dns.set("batch.test", ["127.0.0.1"])
    dns.delays["batch.test"] = 0.5
    p = start_proxy({"timeouts": {"dns": "3s"}})
    clients = []
    for _ in range(30):
        c = p.client(timeout=5)
        c.connect_request(f"batch.test:{srv.port}")
        clients.append(c)
    for i, c in enumerate(clients):
        c.expect_established(timeout=5)
        c.send(b"%d" % i)
        assert c.recv_exact(len(b"%d" % i)) == b"%d" % i
