"""Loop protection: a CONNECT to connectd's own listening address is refused with 502
proxy_loop_detected (RFC 9209), even with deny_private = no, instead of a chain of tunnels."""

import json
import os
import subprocess
import sys

from netutil import check_refusal, have_ipv6, parse_proxy_status
from test_netns import _ip, netns  # noqa: F401  (fixture)

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nsprobe.py")


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
    ns = netns
    _ip("-n", ns, "addr", "add", "10.0.0.1/32", "dev", "lo")
    targets = ["10.0.0.1:3128", "127.0.0.1:3128", "127.0.0.9:3128", "0.0.0.0:3128",
               "self.test:3128"]
    spec = {"records": {"self.test": ["10.0.0.1"]}, "traps": [], "requests": targets}
    probe = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PROBE],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proxy = None
    try:
        probe.stdin.write(json.dumps(spec) + "\n")
        probe.stdin.flush()
        dns_port = json.loads(probe.stdout.readline())["dns"]
        cfg = tmp_path / "wild.ini"
        cfg.write_text("[server]\nlisten = 0.0.0.0:3128\n"
                       "[access]\nallow_ports = 1-65535\ndeny_private = no\n"
                       f"[dns]\nservers = 127.0.0.1:{dns_port}\n"
                       f"[log]\naccess_log = {tmp_path / 'access.log'}\n")
        err = open(tmp_path / "stderr", "w+")
        proxy = subprocess.Popen(["ip", "netns", "exec", ns, connectd_bin, "-c", str(cfg)],
                                 stdout=err, stderr=err)
        probe.stdin.write("3128\n")
        probe.stdin.flush()
        res = json.loads(probe.stdout.readline())
    finally:
        if proxy:
            proxy.terminate()
            proxy.wait(10)
        probe.kill()
        probe.wait(10)
    for t in targets:
        head = res["responses"][t]
        assert head.startswith("HTTP/1.1 502 "), (t, head)
        ps = [x for x in head.split("\r\n") if x.startswith("Proxy-Status:")][0]
        assert parse_proxy_status(ps.split(":", 1)[1].strip())[1]["error"] == \
            "proxy_loop_detected", (t, head)
    log = (tmp_path / "access.log").read_text()
    assert "status=200" not in log, log
