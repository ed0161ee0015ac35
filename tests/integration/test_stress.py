"""Stress: a slow reader, 100,000 short tunnels, 2,000 concurrent tunnels with every byte checked.

Each test measures the proxy from the outside and asserts the figures: resident memory (VmRSS,
and its peak VmHWM, from /proc/PID/status), open file descriptors (/proc/PID/fd), CPU time
(utime + stime from /proc/PID/stat) and hashes of the bytes that crossed. Loopback only; every
count and every wait is bounded. The C tools (bench/loadgen.c, bench/target.c and
tests/tools/integrity.c) are built by the session fixture into build/stress/.

The thresholds are written for a noisy machine with 2 shared cores (the figures measured on it
are in the comments): memory, fd and CPU-time bounds have several times the measured value as
headroom, wall-clock bounds even more. Run alone: pytest -q tests/integration/test_stress.py -s
prints the measured figures.
"""

import hashlib
import json
import os
import random
import socket
import subprocess
import threading
import time

import pytest

from netutil import LOOPBACK4, free_port, wait_port
from procstat import fd_count, sanitized

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
TOOLS_DIR = os.path.join(REPO, "build", "stress")

MiB = 1024 * 1024


# ---- measuring the proxy -------------------------------------------------------------------


def proc_status_kb(pid, key):
    """A 'kB' field of /proc/PID/status: VmRSS (resident now) or VmHWM (resident at peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def rss_kb(pid):
    return proc_status_kb(pid, "VmRSS")


def hwm_kb(pid):
    return proc_status_kb(pid, "VmHWM")


def cpu_s(pid):
    """utime + stime of the process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def snapshot(pid):
    return {"rss_kb": rss_kb(pid), "fds": fd_count(pid), "cpu_s": cpu_s(pid)}


def settled_baseline(p):
    """The proxy's idle figures, once the readiness probe has been handled."""
    p.settle()
    time.sleep(0.2)
    return snapshot(p.pid)


def sysctl_int(name, field=-1):
    with open("/proc/sys/" + name.replace(".", "/")) as f:
        return int(f.read().split()[field])


# ---- the C tools ---------------------------------------------------------------------------

TOOLS = {
    # name: (source, compiler flags, libraries); loadgen/target as bench/run builds them
    "loadgen": ("bench/loadgen.c", ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                                    "-D_GNU_SOURCE", "-pthread"], ["-lssl", "-lcrypto", "-lnghttp2"]),
    "target": ("bench/target.c", ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                                  "-D_GNU_SOURCE", "-pthread"], []),
    "integrity": ("tests/tools/integrity.c", ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror",
                                              "-D_GNU_SOURCE"], ["-lm"]),
}


def build_tool(name):
    src, flags, libs = TOOLS[name]
    src = os.path.join(REPO, src)
    out = os.path.join(TOOLS_DIR, name)
    if os.path.exists(out) and os.path.getmtime(out) >= os.path.getmtime(src):
        return out
    os.makedirs(TOOLS_DIR, exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"  # then renamed: a concurrent run never sees half a file
    cc = os.environ.get("CC", "cc")
    r = subprocess.run([cc, *flags, "-o", tmp, src, *libs], capture_output=True, text=True,
                       timeout=120)
    if r.returncode != 0:
        pytest.fail(f"building {name}: {' '.join(r.args)}\n{r.stdout}{r.stderr}")
    os.replace(tmp, out)
    return out


@pytest.fixture(scope="session")
def tools():
    return {name: build_tool(name) for name in TOOLS}


@pytest.fixture
def echo_target(tools, tmp_path):
    """bench/target in echo mode on a free loopback port (echoes with backpressure, closes after
    the peer's EOF once everything is echoed). Returns 'host:port'. Stopped by its pid."""
    port = free_port(LOOPBACK4)
    err = open(tmp_path / "target.stderr", "wb")
    proc = subprocess.Popen([tools["target"], "--lifetime", "600", f"echo:{port}"],
                            stdin=subprocess.DEVNULL, stdout=err, stderr=err)
    try:
        assert wait_port(LOOPBACK4, port, 5.0, proc), "the echo target did not start"
        yield f"{LOOPBACK4}:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        err.close()


def run_tool(argv, timeout):
    """Run a tool that prints one JSON line on stdout; returns (returncode, parsed, stderr)."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    lines = [x for x in r.stdout.splitlines() if x.startswith("{")]
    assert lines, f"{argv[0]}: no JSON line (status {r.returncode})\n{r.stdout}\n{r.stderr}"
    return r.returncode, json.loads(lines[-1]), r.stderr


# ---- 1. slow reader ------------------------------------------------------------------------

SLOW_TOTAL = 200 * MiB   # what the upstream tries to push
SLOW_RATE = 64 * 1024    # bytes/s the client reads
SLOW_WINDOW = 8.0        # seconds of slow reading (200 MB at this rate would take ~53 min)
SAMPLE_EVERY = 0.5       # seconds between samples of the proxy
DRAIN_BYTES = 16 * MiB   # then read this much as fast as possible...
DRAIN_TIMEOUT = 15.0     # ...within this
STREAM_CHUNK = 64 * 1024


class Stream:
    """A deterministic byte stream: chunk k is 64 KiB of random.Random(seed, k) output. Any
    offset can be generated again to check what arrived."""

    def __init__(self, seed):
        self.seed = seed
        self._k = None
        self._chunk = b""

    def chunk(self, k):
        if k != self._k:
            self._k = k
            self._chunk = random.Random(self.seed * 1_000_003 + k).randbytes(STREAM_CHUNK)
        return self._chunk

    def at(self, off, n):
        out = bytearray()
        while n > 0:
            k, o = divmod(off, STREAM_CHUNK)
            piece = self.chunk(k)[o:o + n]
            out += piece
            off += len(piece)
            n -= len(piece)
        return bytes(out)


def stream_source(seed, stop, stats):
    """Upstream handler: push SLOW_TOTAL bytes of Stream(seed), counting what send() took."""

    def handler(conn, rec):
        s = Stream(seed)
        conn.settimeout(0.2)
        stats["sent"] = 0
        try:
            while stats["sent"] < SLOW_TOTAL and not stop.is_set():
                k, o = divmod(stats["sent"], STREAM_CHUNK)
                try:
                    n = conn.send(memoryview(s.chunk(k))[o:])
                except socket.timeout:
                    continue
                stats["sent"] += n
        except OSError as e:  # the proxy closed the tunnel: expected at the end
            stats["send_error"] = repr(e)
        stats["done"] = True

    return handler


class Checker:
    """Compares what the client receives with the stream, piece by piece, and hashes it."""

    def __init__(self, seed):
        self.stream = Stream(seed)
        self.got = 0
        self.sha = hashlib.sha256()
        self.bad_at = None

    def feed(self, data):
        if self.bad_at is None and data != self.stream.at(self.got, len(data)):
            want = self.stream.at(self.got, len(data))
            self.bad_at = self.got + next(i for i in range(len(data)) if data[i] != want[i])
        self.sha.update(data)
        self.got += len(data)

    def expected_digest(self):
        """SHA-256 of the stream's first self.got bytes, generated afresh."""
        h = hashlib.sha256()
        s = Stream(self.stream.seed)
        off = 0
        while off < self.got:
            n = min(STREAM_CHUNK, self.got - off)
            h.update(s.at(off, n))
            off += n
        return h.hexdigest()


@pytest.mark.parametrize("relay", ["auto", "copy"])
def test_slow_reader_backpressure(start_proxy, tcp_server, relay):
    """An upstream pushes 200 MB into a tunnel whose client reads 64 KiB/s. For 8 s: the
    proxy's RSS stays within a few MB of idle, the upstream gets only socket buffers' worth
    ahead of the reader, and the client gets exactly the stream's prefix. Then the client reads
    16 MiB fast and closes; memory and fds go back to idle."""
    seed = 0x51047 + (relay == "copy")
    stop = threading.Event()
    up = {"sent": 0}
    srv = tcp_server(stream_source(seed, stop, up))
    p = start_proxy({"server": {"relay": relay}, "timeouts": {"idle": "60s"}})
    base = settled_baseline(p)

    c = p.tunnel(srv.target(), timeout=5)
    chk = Checker(seed)
    try:
        if c.buf:
            chk.feed(c.buf)
            c.buf = b""
        sock = c.sock
        samples = []
        t0 = time.monotonic()
        next_sample = t0
        while True:
            now = time.monotonic()
            if now >= next_sample:
                samples.append((now - t0, rss_kb(p.pid), fd_count(p.pid), up["sent"], chk.got))
                next_sample += SAMPLE_EVERY
            if now - t0 >= SLOW_WINDOW:
                break
            allowed = int(SLOW_RATE * (now - t0)) - chk.got
            if allowed <= 0:
                time.sleep(0.01)
                continue
            sock.settimeout(0.05)
            try:
                d = sock.recv(min(allowed, 65536))
            except socket.timeout:
                continue
            assert d, f"tunnel closed after {chk.got} bytes"
            chk.feed(d)
        cpu_slow = cpu_s(p.pid) - base["cpu_s"]
        hwm_slow = hwm_kb(p.pid)
        slow_got, slow_sent = chk.got, up["sent"]
        slow_digest, slow_bad = chk.sha.hexdigest(), chk.bad_at
        slow_expected = chk.expected_digest()

        # Read fast now, a bounded amount, then close.
        t1 = time.monotonic()
        sock.settimeout(1.0)
        while chk.got < slow_got + DRAIN_BYTES and time.monotonic() - t1 < DRAIN_TIMEOUT:
            d = sock.recv(min(262144, slow_got + DRAIN_BYTES - chk.got))
            assert d, f"tunnel closed after {chk.got} bytes"
            chk.feed(d)
        drain_s = time.monotonic() - t1
        hwm_drain = hwm_kb(p.pid)
    finally:
        c.close()
        stop.set()
    srv.wait_results(1, timeout=10)
    time.sleep(1.0)  # settle
    end = snapshot(p.pid)

    got_total, drained = chk.got, chk.got - slow_got
    whole_digest, whole_expected = chk.sha.hexdigest(), chk.expected_digest()
    rss_max = max(s[1] for s in samples)
    fds_max = max(s[2] for s in samples)
    mid = next(s for s in samples if s[0] >= SLOW_WINDOW / 2)
    last = samples[-1]
    # What the kernel may hold between the upstream's send() and the client's recv(), at most:
    # the upstream's send buffer, the proxy's receive buffer, the proxy's own buffer (a 1 MiB
    # pipe on the splice path, a 64 KiB copy buffer), the proxy's send buffer and the client's
    # receive buffer (autotuned up to tcp_wmem/tcp_rmem max: 4 MiB / 32 MiB here, 73 MiB).
    wmem, rmem = sysctl_int("net.ipv4.tcp_wmem"), sysctl_int("net.ipv4.tcp_rmem")
    in_flight_max = 2 * wmem + 2 * rmem + MiB
    print(f"\nslow reader relay={relay}: idle RSS {base['rss_kb']} KiB, fds {base['fds']}; "
          f"{SLOW_WINDOW:.0f} s at {SLOW_RATE // 1024} KiB/s: RSS max {rss_max} KiB "
          f"(VmHWM {hwm_slow}), fds max {fds_max}, proxy CPU {cpu_slow:.3f} s; upstream sent "
          f"{slow_sent} B of {SLOW_TOTAL} (at {mid[0]:.1f} s: {mid[3]}), client read {slow_got} B,"
          f" in flight {slow_sent - slow_got} B (kernel bound {in_flight_max}); then "
          f"{drained} B read in {drain_s:.2f} s (VmHWM {hwm_drain}); after close + 1 s: RSS "
          f"{end['rss_kb']} KiB, fds {end['fds']}")

    # Bytes: exactly the stream's prefix, at the reader's pace, then the fast part too.
    assert slow_bad is None, f"byte {slow_bad} differs from the stream"
    assert slow_digest == slow_expected, "SHA-256 of the slowly read prefix != the stream's"
    assert chk.bad_at is None, f"byte {chk.bad_at} differs from the stream"
    assert whole_digest == whole_expected, "SHA-256 of all bytes read != the stream's"
    # The reader was never starved: it got >= 75% of what its rate allowed (measured ~100%),
    # and by construction never more than the rate allows plus one recv.
    assert 0.75 * SLOW_RATE * SLOW_WINDOW <= slow_got <= SLOW_RATE * SLOW_WINDOW + 65536, (
        f"client read {slow_got} B in {SLOW_WINDOW} s at {SLOW_RATE} B/s")
    assert drained == DRAIN_BYTES, f"only {drained} B of {DRAIN_BYTES} in {DRAIN_TIMEOUT} s"

    # Backpressure: the upstream got only buffers' worth ahead of the reader (measured: 16-30 MB
    # with splice, 8-17 MB with copy, all of it in kernel socket buffers and the pipe; 200 MB is
    # what it tried) and then no further: from the middle of the window on, it may send what
    # the reader took plus 2 MiB of window growth (measured: not one byte more).
    assert slow_sent - slow_got <= in_flight_max, (
        f"upstream {slow_sent - slow_got} B ahead of the reader, more than the kernel's buffers "
        f"({in_flight_max} B) can hold: the proxy buffers without bound")
    assert slow_sent <= SLOW_TOTAL // 2, f"upstream pushed {slow_sent} B into a stalled tunnel"
    assert last[3] - mid[3] <= (last[4] - mid[4]) + 2 * MiB, (
        f"upstream kept sending while the reader was slow: {mid[3]} -> {last[3]} B sent "
        f"between {mid[0]:.1f} and {last[0]:.1f} s, reader took {last[4] - mid[4]} B")

    # Memory: the proxy's part of one tunnel is at most a 64 KiB copy buffer per direction
    # (pipes are kernel memory, not RSS), so RSS may grow by ~128 KiB plus code and heap pages
    # touched for the first time: bound idle + 2 MiB for the whole test, peak included
    # (measured: +64 KiB with either relay; 200 MB buffered would be 100x over).
    rss_bound = base["rss_kb"] + 2048
    assert rss_max <= rss_bound, f"RSS {rss_max} KiB while slow (idle {base['rss_kb']} KiB)"
    assert max(hwm_slow, hwm_drain) <= rss_bound, (
        f"peak RSS {max(hwm_slow, hwm_drain)} KiB (idle {base['rss_kb']} KiB)")
    assert end["rss_kb"] <= rss_bound, f"RSS {end['rss_kb']} KiB after the tunnel closed"
    # A stalled direction costs no CPU: the reader is stopped, not polled (measured 0.00-0.01 s
    # over 8 s; a loop spinning on a full buffer would use most of the 8 s).
    assert cpu_slow <= 0.5, f"proxy used {cpu_slow:.2f} s CPU while the tunnel was stalled"
    # fds: 2 sockets, plus one pipe (2 fds) per direction on the splice path; after the close
    # none is left, except that an emptied pipe may stay pooled for reuse (measured: back to the
    # idle count).
    pipe_fds = 4 if relay == "auto" else 0
    assert fds_max <= base["fds"] + 2 + pipe_fds, f"{fds_max} fds open (idle {base['fds']})"
    assert end["fds"] <= base["fds"] + pipe_fds // 2, (
        f"{end['fds']} fds after the tunnel closed (idle {base['fds']})")
    line = p.log_lines(1, timeout=5)[-1]
    assert line["status"] == "200", line["_raw"]
    assert int(line["down"]) >= got_total, f"access log down={line['down']} < {got_total} read"


# ---- 2. churn ------------------------------------------------------------------------------

CHURN_SEQ = 20_000   # tunnels one at a time (measured 7-13 s, the machine's load decides)
CHURN_PAR = 80_000   # tunnels 64 at a time (measured 15-20 s)
CHURN_CONC = 64


def test_churn_100k_short_tunnels(start_proxy, tools, echo_target):
    """100,000 short tunnels (connect, CONNECT, 200, 64-byte echo, close): 20,000 one at a
    time, then 80,000 with 64 in flight. Every one succeeds, the access log (a file) has every
    line, and afterwards the proxy holds the fds it held before and about the same memory."""
    p = start_proxy({"log": {"level": "info"}})
    base = settled_baseline(p)
    runs = []
    for conc, count in ((1, CHURN_SEQ), (CHURN_CONC, CHURN_PAR)):
        # loadgen's latency mode starts exactly --count handshakes (no warm-up ones) and counts
        # a sample per completed one: connect -> 200 -> 64 bytes out -> the same 64 back -> close.
        t = time.monotonic()
        rc, res, err = run_tool([tools["loadgen"], "latency", "--concurrency", str(conc),
                                 "--count", str(count), "--warmup-count", "0",
                                 "--target", echo_target, "--proxy", f"{LOOPBACK4}:{p.port}",
                                 "--timeout", "120"], timeout=150)
        runs.append((conc, count, rc, res, time.monotonic() - t, err))
        snap = snapshot(p.pid)
        print(f"\nchurn: {count} tunnels at concurrency {conc} in {time.monotonic() - t:.1f} s "
              f"(p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, errors {res['errors']}); "
              f"proxy now {snap}")
    after = snapshot(p.pid)
    time.sleep(1.0)
    settled = snapshot(p.pid)
    hwm = hwm_kb(p.pid)
    total = sum(r[3]["samples"] for r in runs)
    cpu_us = (settled["cpu_s"] - base["cpu_s"]) * 1e6 / max(total, 1)
    print(f"churn: {total} tunnels; proxy before {base}, right after {after}, after 1 s "
          f"{settled}, VmHWM {hwm} KiB; {cpu_us:.0f} us CPU per tunnel")

    for conc, count, rc, res, el, err in runs:
        assert rc == 0 and res["errors"] == 0 and res["samples"] == count, (
            f"concurrency {conc}: {res['samples']}/{count} tunnels, {res['errors']} errors "
            f"({res['first_error']}), status {rc}, timed out {res['timed_out']}\n{err}")
    assert total == CHURN_SEQ + CHURN_PAR == 100_000

    # Every tunnel left its complete access-log line: the log neither dropped lines nor held the
    # proxy back (a file sink is written directly; it never answers EAGAIN).
    with open(p.access_log) as f:
        lines = [x for x in f.read().split("\n") if x]
    tunnel_lines = [x for x in lines if " status=200 " in x]
    good = [x for x in tunnel_lines if " up=64 down=64 " in x and " reason=done " in x]
    assert len(tunnel_lines) == total and len(good) == total, (
        f"{len(lines)} access-log lines, {len(tunnel_lines)} tunnels, {len(good)} "
        f"'up=64 down=64 ... reason=done'; e.g. {[x for x in tunnel_lines if x not in good][:2]}")
    assert "dropped" not in p.stderr_text()

    # fds: back to exactly where they were (every tunnel's two sockets closed; the small echo
    # stays on the copy path, so no pipe is pooled). Measured: 8 -> 8. One either way allowed.
    assert abs(settled["fds"] - base["fds"]) <= 1, (
        f"fds {base['fds']} before, {settled['fds']} 1 s after 100,000 tunnels")
    # CPU: measured 95-181 us per tunnel (kernel TCP work included; the high end with the
    # machine's load at 4 on 2 cores); the bound catches a spinning watcher or a per-tunnel cost
    # that grows with the tunnels served so far. Under ASan: 222 us measured.
    asan = sanitized(p.pid)
    assert cpu_us <= (2000 if asan else 500), f"{cpu_us:.0f} us of proxy CPU per tunnel"
    if asan:
        return
    # RSS: relay buffers stay in a pool of at most 64 (x 64 KiB = 4 MiB, and only their touched
    # pages count), and the heap keeps what 64 concurrent tunnels used for reuse. Measured:
    # +430-460 KiB. Bound +8 MiB: a leak of 84 bytes per tunnel or more would cross it.
    assert settled["rss_kb"] <= base["rss_kb"] + 8192, (
        f"RSS {base['rss_kb']} KiB before, {settled['rss_kb']} KiB after 100,000 tunnels")
    assert hwm <= base["rss_kb"] + 8192, f"peak RSS {hwm} KiB (idle {base['rss_kb']} KiB)"


# ---- 3. integrity --------------------------------------------------------------------------

INTEGRITY_TUNNELS = 2000
INTEGRITY_MAX = 4 * MiB
# Sizes are log-uniform in 1 B .. 4 MiB, drawn from the seed: seed 1 plans 499,317,399 bytes
# each way (~1 GB through the proxy), seed 2 about as much. STRESS_SEED picks another pair.
INTEGRITY_SEED = int(os.environ.get("STRESS_SEED", "1"))


def integrity_run(tools, proxy_port, target, seed):
    t = time.monotonic()
    rc, res, err = run_tool([tools["integrity"], "--proxy", f"{LOOPBACK4}:{proxy_port}",
                             "--target", target, "--tunnels", str(INTEGRITY_TUNNELS),
                             "--max-bytes", str(INTEGRITY_MAX), "--seed", str(seed),
                             "--timeout", "60"], timeout=90)
    return rc, res, err, time.monotonic() - t


def test_integrity_2000_concurrent_tunnels(start_proxy, tools, echo_target):
    """2,000 tunnels open at once, each sending a pseudo-random stream of random length
    (log-uniform up to 4 MiB) to an echo server and checking every byte that comes back
    (tests/tools/integrity.c). Twice in a row on the same proxy: the second round must reuse
    the first round's memory, and afterwards the fds are back."""
    p = start_proxy({"log": {"level": "info"}})
    base = settled_baseline(p)
    rounds = []
    for seed in (INTEGRITY_SEED, INTEGRITY_SEED + 1):
        rc, res, err, el = integrity_run(tools, p.port, echo_target, seed)
        snap = snapshot(p.pid)
        rounds.append((rc, res, err, el, snap, hwm_kb(p.pid)))
        print(f"\nintegrity seed {seed}: {res['ok']}/{res['tunnels']} ok, {res['bytes_up']} B "
              f"up, {res['bytes_down']} B down (planned {res['planned_bytes']}), digests "
              f"{res['digest_sent']}/{res['digest_received']}, {res['seconds']:.2f} s; proxy "
              f"then {snap}, VmHWM {rounds[-1][5]} KiB")
        assert rc == 0, f"integrity failed (status {rc}): {res}\n{err}"
        assert res["ok"] == INTEGRITY_TUNNELS and res["failed"] == 0, res
        assert res["mismatches"] == 0 and res["hash_equal"] == INTEGRITY_TUNNELS, res
        assert res["bytes_up"] == res["bytes_down"] == res["planned_bytes"], res
        assert res["digest_sent"] == res["digest_received"], res
        assert res["max_open"] == INTEGRITY_TUNNELS, f"not all tunnels were open at once: {res}"
        # ~0.5 GB each way: measured 1.7-5.1 s (ASan build: 2.4-4.3 s); the tool's own bound is
        # 60 s.
        assert res["seconds"] < 60, res
    time.sleep(1.0)
    settled = snapshot(p.pid)
    print(f"integrity: proxy idle {base}, after both rounds + 1 s {settled}")

    # The access log accounts for every byte both ways.
    lines = p.log_lines(2 * INTEGRITY_TUNNELS, timeout=10)
    assert len(lines) == 2 * INTEGRITY_TUNNELS
    assert all(x["status"] == "200" and x["reason"] == "done" for x in lines), (
        [x["_raw"] for x in lines if x["status"] != "200" or x["reason"] != "done"][:3])
    planned = sum(r[1]["planned_bytes"] for r in rounds)
    assert sum(int(x["up"]) for x in lines) == planned
    assert sum(int(x["down"]) for x in lines) == planned

    # fds: every tunnel's two sockets are closed; emptied pipes may stay pooled, at most 64
    # pipes = 128 fds (measured: +2).
    assert base["fds"] <= settled["fds"] <= base["fds"] + 128, (
        f"fds {base['fds']} idle, {settled['fds']} after 4,000 tunnels")
    if sanitized(p.pid):
        return
    (_, _, _, _, snap1, hwm1), (_, _, _, _, snap2, hwm2) = rounds
    # Peak RSS with 2,000 tunnels moving bulk data: 2,000 handshakes at once (request buffers,
    # freed when the relay starts), the copy buffers in use at one moment (64 KiB each; bulk
    # directions move to splice pipes, which are kernel memory) and per-tunnel state. Measured
    # +6 to +12 MiB over idle, varying from round to round with the scheduling; bound +64 MiB,
    # about half of what one 64 KiB buffer per tunnel left allocated would take (125 MiB).
    for hwm in (hwm1, hwm2):
        assert hwm <= base["rss_kb"] + 64 * 1024, f"peak RSS {hwm} KiB (idle {base['rss_kb']})"
    # The second round reuses what the first one freed (buffer pool, heap): its peak may exceed
    # the first's by what the scheduling changes (measured 0 to +5.4 MiB), bound +16 MiB: one
    # 64 KiB buffer kept per 8 tunnels of round 1 would cross it.
    assert hwm2 <= hwm1 + 16 * 1024, f"peak RSS {hwm1} KiB in round 1, {hwm2} KiB in round 2"
    assert settled["rss_kb"] <= base["rss_kb"] + 64 * 1024, settled


def _corrupting_echo(mode):
    """A stand-in proxy for the tool's self-test: answers the CONNECT with 200, then echoes
    what it gets back, spoiled: 'flip' changes the first byte, 'short' drops the last one."""

    def h(conn, rec):
        head = b""
        while b"\r\n\r\n" not in head:
            d = conn.recv(1)
            if not d:
                return
            head += d
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        data = bytearray()
        while True:
            d = conn.recv(65536)
            if not d:
                break
            data += d
        if mode == "flip":
            data[0] ^= 0x40
        elif mode == "short":
            del data[-1]
        conn.sendall(bytes(data))
        conn.shutdown(socket.SHUT_WR)

    return h


@pytest.mark.parametrize("mode", ["flip", "short", "none"])
def test_integrity_tool_catches_corruption(tools, tcp_server, mode):
    """The checker itself: a relay that changes one byte or loses one is caught; an exact
    one passes."""
    srv = tcp_server(_corrupting_echo(mode))
    rc, res, err = run_tool([tools["integrity"], "--proxy", srv.target(), "--target",
                             "127.0.0.1:9", "--tunnels", "8", "--max-bytes", "65536",
                             "--seed", "7", "--timeout", "20"], timeout=40)
    if mode == "none":
        assert rc == 0 and res["ok"] == 8 and res["digest_sent"] == res["digest_received"], res
        return
    assert rc == 1 and res["ok"] == 0 and res["failed"] == 8, res
    if mode == "flip":
        assert res["mismatches"] == 8 and "byte 0 of" in res["first_error"], res
        assert res["digest_sent"] != res["digest_received"], res
    else:
        assert "EOF after" in res["first_error"], res
