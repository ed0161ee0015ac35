"""A fleet: HAProxy (TCP mode) in front of three connectd instances, each in its own network
namespace, under a steady load of new tunnels; one instance is stopped with SIGTERM (a drain:
no new tunnel may fail), another is killed with SIGKILL (new tunnels may fail only until
HAProxy's health checks notice).

Layout (all namespaces created by the test, deleted at the end):

    balancer ns: lo 10.77.0.1 (HAProxy's frontend :3128, the echo destination :7000, the load
                 generator fleetprobe.py), vb1 10.77.1.1/24, vb2 10.77.2.1/24, vb3 10.77.3.1/24
    cN ns:       vcN 10.77.N.2/24 (the veth peer of vbN), default route via 10.77.N.1;
                 connectd N: proxy 10.77.N.2:3128 proxy-protocol, admin 10.77.N.2:9128

HAProxy runs tests/integration/data/haproxy-fleet.cfg as is (README "Running a fleet" quotes
it): send-proxy-v2, GET /healthz on port 9128 every 500 ms, down after 2 failures, option
redispatch, retries 3. connectd has grace = 3s, longer than inter x fall = 1 s.

Needs root, iproute2 with veth, and haproxy; skipped otherwise. About 25 s."""

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from haproxyutil import HAProxy, _listening_ports, haproxy_bin
from netutil import parse_access_line
from test_netns import _ip

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
PROBE = os.path.join(HERE, "fleetprobe.py")
FLEET_CFG = os.path.join(HERE, "data", "haproxy-fleet.cfg")
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")
SLOW = bool(os.environ.get("CONNECTD_VALGRIND"))

INTER, FALL = 0.5, 2          # haproxy-fleet.cfg: inter 500ms fall 2
DETECT = INTER * FALL         # how long HAProxy needs to see an instance gone
MARGIN = 1.0                  # for the check phase and scheduling
GRACE, SHUTDOWN = 3.0, 5.0    # connectd [timeouts]
RATE, DURATION = 20, 12.0     # new tunnels per second, for how long
T_TERM, T_KILL = 2.0, 6.025   # seconds into the load: SIGTERM c1, SIGKILL c2 (between starts)
LONG_EVERY, LONG_HOLD = 5, 4.0  # every 5th tunnel stays open 4 s (some straddle c1's drain)
ECHO_PORT = 7000

# One instance's proxy.ini; README "Running a fleet" shows it for n=1 with user = nobody and
# access_log = /var/log/connectd/access.log (test_readme_quotes_the_tested_configs).
FLEET_INI = """\
[server]
listen = 10.77.{n}.2:3128 proxy-protocol
proxy_protocol_from = 10.77.{n}.1/32
user = {user}

[access]
allow_clients = 10.77.0.0/24
allow_ports = 7000
allow_hosts = 10.77.0.1

[timeouts]
grace = 3s
shutdown = 5s

[admin]
listen = 10.77.{n}.2:9128
allow_clients = 10.77.{n}.1/32

[log]
access_log = {access_log}
"""


def fleet_ini(n, user, access_log):
    return FLEET_INI.format(n=n, user=user, access_log=access_log)


# ---- namespaces ------------------------------------------------------------------------------


@pytest.fixture
def fleet_ns():
    """{'lb': balancer ns, 1: c1 ns, 2: ..., 3: ...}, linked by veth pairs; deleted at the end."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("needs root and iproute2 for network namespaces")
    if not haproxy_bin():
        pytest.skip("haproxy is not installed (scripts/install-deps test)")
    tag = uuid.uuid4().hex[:6]
    names = {"lb": f"cdfleet-{tag}-lb", 1: f"cdfleet-{tag}-c1", 2: f"cdfleet-{tag}-c2",
             3: f"cdfleet-{tag}-c3"}
    made = []
    try:
        for ns in names.values():
            r = _ip("netns", "add", ns, check=False)
            if r.returncode != 0:
                pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
            made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        lb = names["lb"]
        _ip("-n", lb, "addr", "add", "10.77.0.1/32", "dev", "lo")
        for n in (1, 2, 3):
            r = _ip("-n", lb, "link", "add", f"vb{n}", "type", "veth", "peer", "name", f"vc{n}",
                    "netns", names[n], check=False)
            if r.returncode != 0:
                pytest.skip(f"cannot create a veth pair: {r.stderr.strip()}")
            _ip("-n", lb, "addr", "add", f"10.77.{n}.1/24", "dev", f"vb{n}")
            _ip("-n", lb, "link", "set", f"vb{n}", "up")
            _ip("-n", names[n], "addr", "add", f"10.77.{n}.2/24", "dev", f"vc{n}")
            _ip("-n", names[n], "link", "set", f"vc{n}", "up")
            _ip("-n", names[n], "route", "add", "default", "via", f"10.77.{n}.1")
        yield names
    finally:
        for ns in made:
            _ip("netns", "del", ns, check=False)


# ---- processes -------------------------------------------------------------------------------


class Instance:
    """connectd n in its namespace (ip netns exec execs it: the PID is connectd's)."""

    def __init__(self, n, ns, binary, tmp_path):
        self.n = n
        self.addr = f"10.77.{n}.2"
        self.access_log = str(tmp_path / f"c{n}.access.log")
        self.stderr_path = str(tmp_path / f"c{n}.stderr")
        cfg = tmp_path / f"c{n}.ini"
        # user = root: the tests run as root and keep it (privilege drop has its own tests)
        cfg.write_text(fleet_ini(n, "root", self.access_log))
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, binary, "-c", str(cfg)],
                                     stdin=subprocess.DEVNULL, stdout=self._err,
                                     stderr=self._err)
        self.pid = self.proc.pid
        self.exited_at = None
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self):
        try:
            self.proc.wait(120)
            self.exited_at = time.monotonic()
        except subprocess.TimeoutExpired:
            pass

    def wait_ready(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not {3128, 9128} <= _listening_ports(self.pid):
            assert self.proc.poll() is None, f"c{self.n} exited:\n{self.stderr_text()}"
            assert time.monotonic() < deadline, f"c{self.n} not listening:\n{self.stderr_text()}"
            time.sleep(0.05)

    def stderr_text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def stop(self):
        """SIGTERM twice (the second skips the rest of the grace), bounded wait, SIGKILL."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            time.sleep(0.2)
            if self.proc.poll() is None:
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(SHUTDOWN + 5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._err.close()
        return self.proc.returncode


class Probe:
    """fleetprobe.py in the balancer namespace; its stdout lines come through a queue."""

    def __init__(self, ns, spec):
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PROBE],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(json.dumps(spec))

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"fleetprobe said nothing within {timeout}s")
        assert line is not None, "fleetprobe exited"
        return json.loads(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


class Watch:
    """Polls files for needles (every 20 ms, in a thread); notes when each first appeared."""

    def __init__(self, needles):
        self.needles = needles  # {key: (path or callable returning text, needle)}
        self.seen = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            for key, (src, needle) in self.needles.items():
                if key in self.seen:
                    continue
                try:
                    text = src()
                except OSError:
                    continue
                if needle in text:
                    self.seen[key] = time.monotonic()
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        self._t.join(2)


def sleep_until(t):
    left = t - time.monotonic()
    if left > 0:
        time.sleep(left)


def ms(x):
    return f"{x * 1000:.0f} ms"


# ---- the test --------------------------------------------------------------------------------


@pytest.mark.timing
def test_fleet_drain_is_lossless_and_a_crash_is_bounded(fleet_ns, connectd_bin, tmp_path,
                                                        capsys):
    with open(FLEET_CFG) as f:
        hap_cfg = f.read()
    instances, hap, probe, watch = [], None, None, None
    passed = False
    try:
        for n in (1, 2, 3):
            instances.append(Instance(n, fleet_ns[n], connectd_bin, tmp_path))
        for inst in instances:
            inst.wait_ready()
        c1, c2, c3 = instances
        spec = {"proxy": ["10.77.0.1", 3128], "echo": ["10.77.0.1", ECHO_PORT],
                "servers": [i.addr for i in instances], "rate": RATE, "duration": DURATION,
                "timeout": 5, "long_every": LONG_EVERY, "long_hold": LONG_HOLD}
        probe = Probe(fleet_ns["lb"], spec)
        assert probe.recv(timeout=10)["echo"]
        hap = HAProxy(hap_cfg, tmp_path, name="haproxy-fleet", netns=fleet_ns["lb"])
        hap.wait_listening([3128])
        probe.send("warmup")
        warm = probe.recv(timeout=20)
        assert min(warm["warmup"].values()) >= 2 and warm["failed"] == 0, (
            warm, hap.stderr_text())
        assert "DOWN" not in hap.stderr_text(), hap.stderr_text()

        watch = Watch({
            "c1_down": (hap.stderr_text, "Server connectd/c1 is DOWN"),
            "c2_down": (hap.stderr_text, "Server connectd/c2 is DOWN"),
            "c1_drain": (c1.stderr_text, "shutting down"),
        })
        probe.send("go")
        t0 = probe.recv(timeout=5)["t0"]
        sleep_until(t0 + T_TERM)
        os.kill(c1.pid, signal.SIGTERM)
        t_term = time.monotonic()
        sleep_until(t0 + T_KILL)
        os.kill(c2.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        res = probe.recv(timeout=DURATION + LONG_HOLD + 20)["results"]
        time.sleep(0.1)
        watch.stop()
        seen = watch.seen
        nan = float("nan")

        # ---- figures ----
        # A failure is either a new tunnel that did not get its 200 and echo ("new"), or an
        # established one that broke later. The only tunnels allowed to break are those open
        # on c2 when it was killed; a new one still in its handshake at that instant (it may
        # have been on c2: the echo server never saw it) counts as a new failure of (b).
        def lost_to_kill(r):
            return (not r["ok"] and r["established"] and r["server"] == c2.addr
                    and r["t"] < t_kill <= r["end"])

        def new_failure_b(r):  # (a handshake takes a few ms: 200 ms is plenty)
            return (not r["ok"] and not r["established"] and r.get("end", r["t"]) >= t_kill
                    and r["t"] > t_kill - 0.2)

        before_kill = [r for r in res if r["t"] < t_kill]
        after = [r for r in res if r["t"] >= t_kill]
        # every other failure, whenever it began, is one the fleet should not have had
        bad = [r for r in res if not r["ok"] and not lost_to_kill(r) and not new_failure_b(r)]
        lost = [r for r in res if lost_to_kill(r)]
        new_after = [r for r in res if new_failure_b(r)]
        window = max([r["t"] - t_kill for r in new_after] + [0.0])
        slow_after = [r for r in after if r["ok"] and not r["long"] and r["end"] - r["t"] > 1.0]
        disrupted = new_after + slow_after
        disrupted_window = max([r["t"] - t_kill for r in disrupted] + [0.0])
        by_server = {}
        for r in res:
            by_server[r["server"]] = by_server.get(r["server"], 0) + 1
        c1_grace = [r for r in res if r["server"] == c1.addr and r["t"] >= t_term]
        c1_drained = [r for r in res if r["server"] == c1.addr and r["long"]
                      and r["end"] > seen.get("c1_drain", nan)]
        m = re.search(r"shutting down: (\d+) tunnels? open", c1.stderr_text())
        open_at_drain = int(m.group(1)) if m else None
        lat = sorted(r["end"] - r["t"] for r in res if r["ok"] and not r["long"])
        report = [
            f"fleet: {len(res)} new tunnels at {RATE}/s for {DURATION:.0f} s through HAProxy "
            f"(every {LONG_EVERY}th held open {LONG_HOLD:.0f} s); per instance {by_server}; "
            f"short ones: median {ms(lat[len(lat) // 2])}, max {ms(lat[-1])}",
            f"  (a) SIGTERM c1 at +{T_TERM:.0f} s: HAProxy marked it DOWN after "
            f"{ms(seen.get('c1_down', nan) - t_term)}; c1 served {len(c1_grace)} new tunnels "
            f"after the signal, stopped accepting after {ms(seen.get('c1_drain', nan) - t_term)} "
            f"(grace {GRACE:.0f} s) with {open_at_drain} tunnels open, which finished "
            f"({len(c1_drained)} of ours, all ok: {all(r['ok'] for r in c1_drained)}), exited "
            f"after {ms((c1.exited_at or nan) - t_term)}; failed before the SIGKILL: "
            f"{len([r for r in bad if r['t'] < t_kill])} of {len(before_kill)}",
            f"  (b) SIGKILL c2 at +{T_KILL:.3f} s: HAProxy marked it DOWN after "
            f"{ms(seen.get('c2_down', nan) - t_kill)}; {len(lost)} tunnels open on c2 "
            f"broke; new tunnels after: {len(after)}, {len(new_after)} failed, failure window "
            f"{ms(window)}; {len(slow_after)} took > 1 s, disrupted window "
            f"{ms(disrupted_window)}",
        ]
        for r in res:
            if not r["ok"]:
                what = "lost to the kill (open on c2)" if lost_to_kill(r) else "FAILED"
                report.append(f"  {what}: start +{ms(r['t'] - t0)} (kill {ms(r['t'] - t_kill)})"
                              f" via {r['server']}, established {r['established']}: {r['err']}")
        for r in slow_after:
            report.append(f"  slow: start +{ms(r['t'] - t0)} (kill {ms(r['t'] - t_kill)}): "
                          f"{ms(r['end'] - r['t'])} via {r['server']}")
        with capsys.disabled():  # the figures show in every run, not only with -s
            print("\n" + "\n".join(report))

        # ---- assertions ----
        assert len(res) == int(RATE * DURATION)
        # (a) the drain loses nothing: /healthz 503 took c1 out before it stopped accepting,
        # and the tunnels still open on it when it did finished
        assert not bad, bad
        assert "c1_down" in seen and "c1_drain" in seen, (seen, hap.stderr_text())
        assert seen["c1_down"] < seen["c1_drain"], seen
        if not SLOW:
            assert seen["c1_down"] - t_term <= DETECT + MARGIN, seen["c1_down"] - t_term
            assert GRACE - 0.1 <= seen["c1_drain"] - t_term < GRACE + 1.0
        assert not [r for r in res if r["server"] == c1.addr and r["t"] > seen["c1_drain"]]
        assert open_at_drain is not None and open_at_drain >= 1, c1.stderr_text()
        assert c1_drained and all(r["ok"] for r in c1_drained), c1_drained
        assert c1.exited_at is not None and c1.exited_at - t_term < GRACE + SHUTDOWN + 2
        assert c1.proc.returncode == 0, c1.stderr_text()
        # (b) a crash: new tunnels fail at most until the health checks notice, then the
        # survivor serves all
        assert "c2_down" in seen, hap.stderr_text()
        if not SLOW:
            assert seen["c2_down"] - t_kill <= DETECT + MARGIN, seen["c2_down"] - t_kill
            assert window <= DETECT + MARGIN, f"new tunnels failed for {ms(window)}"
            assert disrupted_window <= DETECT + MARGIN, f"disrupted for {ms(disrupted_window)}"
        late = [r for r in after if r["t"] >= t_kill + DETECT + MARGIN]
        assert late and all(r["ok"] and r["server"] == c3.addr for r in late), [
            r for r in late if not (r["ok"] and r["server"] == c3.addr)]
        assert c2.proc.poll() == -signal.SIGKILL

        # the access log: the client as HAProxy saw it, the balancer as the instance saw it
        lines = [parse_access_line(x) for x in open(c3.access_log).read().splitlines() if x]
        tunnels = [x for x in lines if x["target"] == f"10.77.0.1:{ECHO_PORT}"]
        assert len(tunnels) >= len(late)
        for x in tunnels:
            assert x["status"] == "200" and x["reason"] == "done", x["_raw"]
            assert re.fullmatch(r"10\.77\.0\.1:\d+", x["client"]), x["_raw"]
            assert re.fullmatch(r"10\.77\.3\.1:\d+", x["balancer"]), x["_raw"]
        passed = True
    finally:
        if watch:
            watch.stop()
        if probe:
            probe.stop()
        if hap:
            hap.stop()
        problems = []
        for inst in instances:
            rc = inst.stop()
            text = inst.stderr_text()
            if inst.n != 2 and rc != 0:
                problems.append(f"c{inst.n} exited with status {rc}:\n{text[-2000:]}")
            hits = [m for m in SANITIZER_MARKERS if m in text]
            if hits:
                problems.append(f"c{inst.n}: sanitizer report {hits}:\n{text[-4000:]}")
        if problems:
            if passed:
                pytest.fail("\n".join(problems))
            print("\n".join(problems))


def test_readme_quotes_the_tested_configs(connectd_bin, tmp_path):
    """README "Running a fleet" shows haproxy-fleet.cfg verbatim and FLEET_INI for n=1, which
    connectd -t accepts as it stands there; haproxy -c accepts the HAProxy file."""
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    with open(FLEET_CFG) as f:
        cfg = f.read()
    assert "## Running a fleet" in readme
    section = readme.split("## Running a fleet", 1)[1].split("\n## ", 1)[0]
    assert "```\n" + cfg + "```\n" in section, "README does not quote haproxy-fleet.cfg verbatim"
    ini = fleet_ini(1, "nobody", "/var/log/connectd/access.log")
    assert "```ini\n" + ini + "```\n" in section, "README does not show the tested proxy.ini"
    (tmp_path / "proxy.ini").write_text(ini)
    r = subprocess.run([connectd_bin, "-t", "-c", str(tmp_path / "proxy.ini")],
                       capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout + r.stderr
    if haproxy_bin():
        r = subprocess.run([haproxy_bin(), "-c", "-f", FLEET_CFG], capture_output=True,
                           text=True, timeout=10, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stdout + r.stderr
