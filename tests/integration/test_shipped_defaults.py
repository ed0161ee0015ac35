"""The shipped conf/proxy.ini refuses what an open relay would allow (issue 4 acceptance).

The proxy runs inside a network namespace the test creates, where 10.0.0.1 and
169.254.169.254 are local addresses with listeners on port 443 (as are 127.0.0.1:443,
127.0.0.1:25 and [::1]:443): so "no connect() was made" is proven by those listeners seeing no
connection, and nothing can leave the namespace whatever happens. Needs root and iproute2."""

import os

from conftest import REPO, apply_ini_overrides
from nsutil import proxy_status_error, run_probe
from test_netns import _ip, netns  # noqa: F401  (fixture)

PRIVATE_TARGETS = ["127.0.0.1:443", "0x7f.1:443", "2130706433:443", "internal.test:443",
                   "169.254.169.254:443", "[::ffff:127.0.0.1]:443", "127.1:443",
                   "[::1]:443", "0:443", "[::ffff:0:7f00:1]:443"]


def test_shipped_config_refuses_private_and_port_25(netns, connectd_bin, tmp_path):  # noqa: F811
    _ip("-n", netns, "addr", "add", "10.0.0.1/32", "dev", "lo")
    _ip("-n", netns, "addr", "add", "169.254.169.254/32", "dev", "lo")
    traps = [["127.0.0.1", 443], ["10.0.0.1", 443], ["169.254.169.254", 443], ["127.0.0.1", 25]]
    if "::1" in _ip("-n", netns, "-6", "addr", "show", "dev", "lo").stdout:
        traps.append(["::1", 443])
    spec = {"records": {"internal.test": ["10.0.0.1"], "mail.test": ["127.0.0.1"]},
            "traps": traps, "requests": PRIVATE_TARGETS + ["mail.test:25", "127.0.0.1:25"]}
    with open(os.path.join(REPO, "conf", "proxy.ini")) as f:
        shipped = f.read()

    # Only what a test must change: which resolver, where the access log goes.
    def config_for(dns_port):
        return apply_ini_overrides(shipped, {
            "dns": {"servers": f"127.0.0.1:{dns_port}"},
            "log": {"access_log": str(tmp_path / "access.log")},
        })

    res = run_probe(netns, connectd_bin, tmp_path, spec, config_for)
    for target in PRIVATE_TARGETS:
        head = res["responses"][target]
        assert head.startswith("HTTP/1.1 403 Forbidden"), (target, head)
        assert proxy_status_error(head) == "destination_ip_prohibited", (target, head)
    for target in ("mail.test:25", "127.0.0.1:25"):
        head = res["responses"][target]
        assert head.startswith("HTTP/1.1 403 Forbidden"), (target, head)
        assert proxy_status_error(head) == "http_request_denied", (target, head)
    assert all(n == 0 for n in res["accepts"].values()), res["accepts"]
    # Port 25 is refused before any lookup; internal.test was looked up (its answer was refused).
    assert not [q for q in res["queries"] if q[0] == "mail.test"], res["queries"]
    assert [q for q in res["queries"] if q[0] == "internal.test"], res["queries"]
