"""IPv6: listening on [::1], tunnels to [::1] literals and AAAA-only names."""

import pytest

from netutil import have_ipv6, wait_port
from servers import echo_handler
from tlsfix import curl

pytestmark = pytest.mark.skipif(not have_ipv6(), reason="no IPv6 loopback")


def test_ipv6_listener_to_ipv6_target(start_proxy, tcp_server):
    srv = tcp_server(echo_handler, host="::1")
    p = start_proxy(listen="[::1]")
    assert p.host == "::1"
    c = p.tunnel(f"[::1]:{srv.port}")
    client_port = c.local_addr[1]
    c.send(b"over six")
    assert c.recv_exact(8) == b"over six"
    c.close()
    [line] = p.log_lines(1)
    assert line["client"] == f"[::1]:{client_port}"
    assert line["target"] == f"[::1]:{srv.port}"
    assert line["upstream"] == f"[::1]:{srv.port}"
    assert line["up"] == "8" and line["down"] == "8"


def test_ipv4_listener_to_ipv6_target(proxy, tcp_server):
    srv = tcp_server(echo_handler, host="::1")
    c = proxy.tunnel(f"[::1]:{srv.port}")
    c.send(b"46")
    assert c.recv_exact(2) == b"46"


def test_ipv6_listener_to_ipv4_target(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy(listen="[::1]")
    c = p.tunnel(srv.target())
    c.send(b"64")
    assert c.recv_exact(2) == b"64"


def test_aaaa_only_name(proxy, dns, tcp_server):
    srv = tcp_server(echo_handler, host="::1")
    dns.set("six.test", ["::1"])
    c = proxy.tunnel(f"six.test:{srv.port}")
    c.send(b"aaaa")
    assert c.recv_exact(4) == b"aaaa"
    assert ("six.test", "AAAA") in dns.queried("six.test")


def test_ipv6_target_case_insensitive(proxy, tcp_server):
    srv = tcp_server(echo_handler, host="::1")
    c = proxy.tunnel(f"[0:0:0:0:0:0:0:1]:{srv.port}")
    c.send(b"z")
    assert c.recv_exact(1) == b"z"


def test_ipv6_client_acl(start_proxy, tcp_server):
    from netutil import check_refusal

    srv = tcp_server(echo_handler, host="::1")
    p = start_proxy({"access": {"allow_clients": "127.0.0.0/8"}}, listen="[::1]")
    c = p.client()
    c.connect_request(f"[::1]:{srv.port}")
    check_refusal(c, 403, "http_request_denied", allow_reset=True)


def test_curl_over_ipv6_proxy_to_ipv6_tls(start_proxy, tls_server, certs):
    srv = tls_server(host="::1")
    p = start_proxy(listen="[::1]")
    r = curl(["-sS", "--max-time", "20", "--cacert", certs.ca, "-x", f"http://[::1]:{p.port}",
              f"https://[::1]:{srv.port}/hello.txt"])
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"hello through the tunnel\n"


def test_dual_listeners(start_proxy, tcp_server):
    """listen takes a list: 127.0.0.1:P1, [::1]:P2 both accept."""
    from netutil import free_port

    srv = tcp_server(echo_handler)
    p4, p6 = free_port(), free_port("::1")
    p = start_proxy(listen=f"127.0.0.1:{p4}, [::1]:{p6}")
    assert wait_port("::1", p6, 3), "second listen address not accepting"
    for host, port in (("127.0.0.1", p4), ("::1", p6)):
        c = p.client(host=host, port=port)
        c.connect_request(srv.target())
        c.expect_established()
        c.send(b"d")
        assert c.recv_exact(1) == b"d"
