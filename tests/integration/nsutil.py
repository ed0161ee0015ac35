"""Drive nsprobe.py and a connectd inside a test's network namespace (the netns fixture of
test_netns.py)."""

import json
import os
import subprocess
import sys

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nsprobe.py")


def run_probe(ns, connectd_bin, tmp_path, spec, config_for, port=3128):
    """Start nsprobe.py in ns with spec (records, traps, requests), then connectd with the text
    config_for(dns_port) returns, listening on port; return the probe's result: responses per
    target, accepts per trap, DNS queries."""
    probe = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PROBE],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proxy = None
    try:
        probe.stdin.write(json.dumps(spec) + "\n")
        probe.stdin.flush()
        dns_port = json.loads(probe.stdout.readline())["dns"]
        cfg = tmp_path / "ns.ini"
        cfg.write_text(config_for(dns_port))
        err = open(tmp_path / "ns.stderr", "w+")
        proxy = subprocess.Popen(["ip", "netns", "exec", ns, connectd_bin, "-c", str(cfg)],
                                 stdout=err, stderr=err)
        probe.stdin.write(f"{port}\n")
        probe.stdin.flush()
        out = probe.stdout.readline()
        assert out, f"probe gave no result; connectd stderr: {(tmp_path / 'ns.stderr').read_text()}"
        return json.loads(out)
    finally:
        if proxy:
            proxy.terminate()
            proxy.wait(10)
        probe.kill()
        probe.wait(10)


def proxy_status_error(head):
    """The error parameter of the Proxy-Status header in a response head, or None."""
    from netutil import parse_proxy_status
    for line in head.split("\r\n"):
        if line.lower().startswith("proxy-status:"):
            return parse_proxy_status(line.split(":", 1)[1].strip())[1].get("error")
    return None
