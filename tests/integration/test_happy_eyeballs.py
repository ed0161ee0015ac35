"""Happy Eyeballs v2 (RFC 8305) for direct dials, in a network namespace the test creates.

Inside it: 10.9.0.1 and 2001:db8:3::1 are local addresses with listeners; 2001:db8:2::2 is a
black hole: its route leads out of a veth whose neighbour entry names a MAC nobody has, so the
SYN is sent and silently dropped (no error comes back, as with a firewall that drops). A name
with both a black-holed AAAA and a working A must be reached over IPv4 one attempt delay
(250 ms by default) after the IPv6 attempt started, not after the connect timeout; with both
families working, IPv6 wins. Needs root and iproute2; skipped otherwise."""

import json
import os
import subprocess
import sys

import pytest

from test_netns import _ip, netns  # noqa: F401  (fixture)

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "heprobe.py")
PORT = 8443
SLOW = bool(os.environ.get("CONNECTD_VALGRIND"))


def blackhole(ns):
    """2001:db8:2::/64 leads into a veth pair whose far end drops every frame (wrong MAC)."""
    _ip("-n", ns, "link", "add", "heA", "type", "veth", "peer", "name", "heB")
    _ip("-n", ns, "link", "set", "heA", "up")
    _ip("-n", ns, "link", "set", "heB", "up")
    _ip("-n", ns, "-6", "addr", "add", "2001:db8:1::1/64", "dev", "heA", "nodad")
    _ip("-n", ns, "-6", "route", "add", "2001:db8:2::/64", "via", "2001:db8:1::99", "dev", "heA")
    _ip("-n", ns, "-6", "neigh", "add", "2001:db8:1::99", "lladdr", "02:00:00:00:00:99",
        "dev", "heA", "nud", "permanent")
    _ip("-n", ns, "addr", "add", "10.9.0.1/32", "dev", "lo")
    _ip("-n", ns, "-6", "addr", "add", "2001:db8:3::1/128", "dev", "lo", "nodad")


def run(ns, connectd_bin, tmp_path, spec, extra=""):
    probe = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PROBE],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proxy = None
    try:
        probe.stdin.write(json.dumps(spec) + "\n")
        probe.stdin.flush()
        dns_port = json.loads(probe.stdout.readline())["dns"]
        cfg = tmp_path / "he.ini"
        log = tmp_path / "he.access.log"
        cfg.write_text(
            "[server]\nlisten = 127.0.0.1:3128\nuser = root\n"
            f"[access]\nallow_ports = {PORT}\ndeny_private = no\n"
            f"[dns]\nservers = 127.0.0.1:{dns_port}\n"
            f"[timeouts]\nconnect = 5s\n{extra}"
            f"[log]\nlevel = debug\naccess_log = {log}\n")
        err = open(tmp_path / "he.stderr", "w+")
        proxy = subprocess.Popen(["ip", "netns", "exec", ns, connectd_bin, "-c", str(cfg)],
                                 stdout=err, stderr=err)
        probe.stdin.write("3128\n")
        probe.stdin.flush()
        out = probe.stdout.readline()
        assert out, f"no result; connectd stderr: {(tmp_path / 'he.stderr').read_text()[-3000:]}"
        return json.loads(out)
    finally:
        if proxy:
            proxy.terminate()
            proxy.wait(10)
        probe.kill()
        probe.wait(10)


SPEC = {
    "records": {"dual.test": ["2001:db8:2::2", "10.9.0.1"],
                "both.test": ["2001:db8:3::1", "10.9.0.1"],
                "v6only-dead.test": ["2001:db8:2::2"]},
    "listen": [["10.9.0.1", PORT], ["2001:db8:3::1", PORT]],
}


def test_blackholed_ipv6_falls_back_to_ipv4_quickly(netns, connectd_bin, tmp_path):  # noqa: F811
    blackhole(netns)
    spec = dict(SPEC, requests=[f"dual.test:{PORT}", f"both.test:{PORT}"])
    r = run(netns, connectd_bin, tmp_path, spec)
    dual = r["results"][f"dual.test:{PORT}"]
    both = r["results"][f"both.test:{PORT}"]
    print(f"dual.test (IPv6 black-holed): 200 after {dual['seconds'] * 1000:.0f} ms; "
          f"both.test: 200 after {both['seconds'] * 1000:.0f} ms")
    assert dual["head"].startswith("HTTP/1.1 200 "), dual
    assert both["head"].startswith("HTTP/1.1 200 "), both
    if not SLOW:
        assert dual["seconds"] < 0.3, f"IPv4 fallback took {dual['seconds']:.3f}s"
        assert dual["seconds"] >= 0.2, "IPv4 was dialed before the attempt delay"
    # dual.test went to IPv4, both.test to IPv6 (the v6 listener saw exactly one connection).
    assert r["accepts"] == {"10.9.0.1": 1, "2001:db8:3::1": 1}, r["accepts"]
    lines = (tmp_path / "he.access.log").read_text().splitlines()
    assert any("target=dual.test:8443 upstream=10.9.0.1:8443 status=200" in ln for ln in lines)
    assert any("target=both.test:8443 upstream=[2001:db8:3::1]:8443 status=200" in ln
               for ln in lines)


def test_attempt_delay_is_configurable_and_connect_bounds_the_dial(netns, connectd_bin,  # noqa: F811
                                                                  tmp_path):
    blackhole(netns)
    spec = dict(SPEC, requests=[f"dual.test:{PORT}", f"v6only-dead.test:{PORT}"])
    r = run(netns, connectd_bin, tmp_path, spec, extra="happy_eyeballs = 1s\n")
    dual = r["results"][f"dual.test:{PORT}"]
    dead = r["results"][f"v6only-dead.test:{PORT}"]
    assert dual["head"].startswith("HTTP/1.1 200 "), dual
    assert 1.0 <= dual["seconds"] < 2.0, dual["seconds"]
    # Nothing but the black hole: the whole [timeouts] connect budget (5 s), then 504.
    assert dead["head"].startswith("HTTP/1.1 504 "), dead
    assert "error=connection_timeout" in dead["head"]
    assert 4.5 <= dead["seconds"] < 7, dead["seconds"]
