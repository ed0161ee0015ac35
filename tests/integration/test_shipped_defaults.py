"""The shipped conf/proxy.ini refuses what an open relay would allow (issue 4 acceptance).

The proxy runs inside a network namespace the test creates, where 10.0.0.1 and
169.254.169.254 are local addresses with listeners on port 443 (as are 127.0.0.1:443,
127.0.0.1:25 and [::1]:443): so "no connect() was made" is proven by those listeners seeing no
connection, and nothing can leave the namespace whatever happens. Needs root and iproute2."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, apply_ini_overrides
from netutil import parse_proxy_status
from test_netns import _ip, netns  # noqa: F401  (fixture)

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nsprobe.py")

PRIVATE_TARGETS = ["127.0.0.1:443", "0x7f.1:443", "2130706433:443", "internal.test:443",
                   "169.254.169.254:443", "[::ffff:127.0.0.1]:443", "127.1:443",
                   "[::1]:443", "0:443"]


def test_shipped_config_refuses_private_and_port_25(netns, connectd_bin, tmp_path):  # noqa: F811
    ns = netns
    _ip("-n", ns, "addr", "add", "10.0.0.1/32", "dev", "lo")
    _ip("-n", ns, "addr", "add", "169.254.169.254/32", "dev", "lo")
    ipv6 = _ip("-n", ns, "-6", "addr", "show", "dev", "lo").stdout.find("::1") >= 0
    traps = [["127.0.0.1", 443], ["10.0.0.1", 443], ["169.254.169.254", 443], ["127.0.0.1", 25]]
    if ipv6:
        traps.append(["::1", 443])
    requests = PRIVATE_TARGETS + ["mail.test:25", "127.0.0.1:25"]
    spec = {"records": {"internal.test": ["10.0.0.1"], "mail.test": ["127.0.0.1"]},
            "traps": traps, "requests": requests}
    probe = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PROBE],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proxy = None
    try:
        probe.stdin.write(json.dumps(spec) + "\n")
        probe.stdin.flush()
        dns_port = json.loads(probe.stdout.readline())["dns"]
        with open(os.path.join(REPO, "conf", "proxy.ini")) as f:
            shipped = f.read()
        # Only what a test must change: where to listen (unchanged default), which resolver,
        # where the access log goes.
        text = apply_ini_overrides(shipped, {
            "dns": {"servers": f"127.0.0.1:{dns_port}"},
            "log": {"access_log": str(tmp_path / "access.log")},
        })
        cfg = tmp_path / "shipped.ini"
        cfg.write_text(text)
        err = open(tmp_path / "stderr", "w+")
        proxy = subprocess.Popen(["ip", "netns", "exec", ns, connectd_bin, "-c", str(cfg)],
                                 stdout=err, stderr=err)
        probe.stdin.write("3128\n")
        probe.stdin.flush()
        out = probe.stdout.readline()
        assert out, "probe gave no result"
        res = json.loads(out)
    finally:
        if proxy:
            proxy.terminate()
            proxy.wait(10)
        probe.kill()
        probe.wait(10)
    for target in PRIVATE_TARGETS:
        head = res["responses"][target]
        assert head.startswith("HTTP/1.1 403 Forbidden"), (target, head)
        ps = [line for line in head.split("\r\n") if line.startswith("Proxy-Status:")][0]
        _, params, _ = parse_proxy_status(ps.split(":", 1)[1].strip())
        assert params["error"] == "destination_ip_prohibited", (target, head)
    for target in ("mail.test:25", "127.0.0.1:25"):
        head = res["responses"][target]
        assert head.startswith("HTTP/1.1 403 Forbidden"), (target, head)
        assert "error=http_request_denied" in head, (target, head)
    assert all(n == 0 for n in res["accepts"].values()), res["accepts"]
    # Port 25 is refused before any lookup.
    assert not [q for q in res["queries"] if q[0] == "mail.test"], res["queries"]
    # internal.test was looked up (its answer is what got refused).
    assert [q for q in res["queries"] if q[0] == "internal.test"], res["queries"]
