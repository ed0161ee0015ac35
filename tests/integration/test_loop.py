"""Loop protection: a CONNECT to connectd's own listening address is refused with 502
proxy_loop_detected (RFC 9209), even with deny_private = no, instead of a chain of tunnels."""

from netutil import check_refusal, have_ipv6
from nsutil import proxy_status_error, run_probe
from test_netns import _ip, netns  # noqa: F401  (fixture)


def test_connect_to_own_address_is_502(start_proxy, dns):
    p = start_proxy()  # test defaults: deny_private = no, every port allowed
    p.settle()
    dns.set("me.test", ["127.0.0.1"])
    for target in (f"127.0.0.1:{p.port}", f"me.test:{p.port}", f"[::ffff:127.0.0.1]:{p.port}",
                   f"0.0.0.0:{p.port}", f"2130706433:{p.port}"):
        c = p.client()
        c.connect_request(target)
        _, _, ps = check_refusal(c, 502, "proxy_loop_detected")
    lines = p.log_lines(5, where=lambda x: x["status"] in ("200", "502"))
    assert len(lines) == 5 and all(x["status"] == "502" for x in lines), lines
    assert all(x["reason"] == "proxy_loop" and x["upstream"] == "-" for x in lines), lines
    # Only our own port: another port on the same address is dialed as usual.
    c = p.client()
    c.connect_request(f"127.0.0.1:{p.port + 1 if p.port < 65535 else p.port - 1}")
    resp = c.read_head()
    assert resp.status != 502 or "proxy_loop_detected" not in (resp.header("Proxy-Status") or "")


def test_ipv6_listener_loop(start_proxy):
    if not have_ipv6():
        import pytest
        pytest.skip("no IPv6 loopback")
    p = start_proxy(listen="[::1]")
    c = p.client()
    c.connect_request(f"[::1]:{p.port}")
    check_refusal(c, 502, "proxy_loop_detected")


def test_wildcard_listener_refuses_every_local_address(netns, connectd_bin, tmp_path):  # noqa: F811
    """Listening on 0.0.0.0: the loopback, the unspecified address and an interface address of
    the host (10.0.0.1 on lo inside the test's namespace) are all the proxy itself."""
    _ip("-n", netns, "addr", "add", "10.0.0.1/32", "dev", "lo")
    targets = ["10.0.0.1:3128", "127.0.0.1:3128", "127.0.0.9:3128", "0.0.0.0:3128",
               "self.test:3128"]
    spec = {"records": {"self.test": ["10.0.0.1"]}, "traps": [], "requests": targets}

    def config_for(dns_port):
        return ("[server]\nlisten = 0.0.0.0:3128\nuser = root\n"
                "[access]\nallow_ports = 1-65535\ndeny_private = no\n"
                f"[dns]\nservers = 127.0.0.1:{dns_port}\n"
                f"[log]\naccess_log = {tmp_path / 'access.log'}\n")

    res = run_probe(netns, connectd_bin, tmp_path, spec, config_for)
    for t in targets:
        head = res["responses"][t]
        assert head.startswith("HTTP/1.1 502 "), (t, head)
        assert proxy_status_error(head) == "proxy_loop_detected", (t, head)
    log = (tmp_path / "access.log").read_text()
    assert "status=200" not in log, log
