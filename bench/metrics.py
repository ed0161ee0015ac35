#!/usr/bin/env python3
"""bench/metrics.py: what the metrics and the admin listener cost connectd (stdlib only).

    bench/metrics.py [options]          (or: make bench-metrics)

Builds connectd (`make` in the work tree; or --connectd-commit C: a clean build of commit C in
a temporary git worktree, e.g. HEAD while the work tree is mid-edit; or --connectd-bin: a given
binary) and the bench tools the way bench/run does (build/bench/target, build/bench/loadgen),
then starts its own target on loopback ports of its
own (BENCH_PORT_BASE + n, default 18300) and runs three parts, judged against the issue:

  onoff    connectd in three variants, interleaved (the order rotates each round), REPEATS
           rounds: "off" (no [admin] section), "on" ([admin] listen and a scraper thread here
           doing GET /metrics every second during the run, as Prometheus would) and "base" (the
           binary of git commit BASE_COMMIT, the last one before metrics, built in a temporary
           `git worktree` that is removed afterwards; skipped with a message if that fails).
           Figures: handshakes/s at 64 concurrent and 1-tunnel upload MB/s (loadgen, as
           bench.py runs them, with bench.py's fair connectd config), plus connectd's CPU per
           handshake / per GB. Target: on/off and on/base within 2% (ratio >= 0.98).
  scrape   workers = 2, TUNNELS (10,000) idle tunnels opened by `loadgen idle` to the echo
           port; connectd_tunnels_open checked on /metrics; then SCRAPES (50) GET /metrics, a
           new connection each: median, p99, max ms and the size. Also with 0 tunnels (same
           daemon, before opening) and with workers = 1 and TUNNELS_W1 (9,000) tunnels.
           Target: < 5 ms.
  tunnels  with those tunnels open, a probe process (this script, --probe; SCHED_FIFO when
           root) opens PROBES extra tunnels to the echo port plus one control connection
           straight to it, and pings 1 byte on each every 1 ms, recording every round trip;
           first a BASELINE_S period without fetches, then FETCHES (5) GET /tunnels?limit=ALL
           (read whole, JSON parsed, count checked). The "worker" field of each listed tunnel
           tells which worker each probe is on; the first listed tunnel tells which worker
           answered (it lists its own first). Loop block = worst probe round trip during a
           fetch minus the baseline median, for the answering worker and for the other one;
           "corrected" does the same on (tunnel - control) round trips of the same ping round,
           which removes the probe's and the target's own scheduling delays. Each fetch also
           shows connectd's CPU time and run-queue wait (/proc/PID/task/*/schedstat): time it
           was runnable without a CPU, which no probe can tell apart from a busy loop. Target
           < 5 ms. Run with workers = 2 (10,000 tunnels) and workers = 1 (9,000: fits one
           process's fd limit, so the probe is surely on the answering worker).

Prints a table and writes it to build/bench/metrics-results.txt (raw figures beside it, .json).
Every load run is bounded in time (loadgen's own bounds, plus timeouts here); only loopback
addresses are used; only processes this script started are signalled, by pid; temp dirs and the
worktree are removed at the end.

Options (command line, or the environment variable in brackets): see --help.
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (add_connectd_args, refuse_busy_ports_and_trap_sigterm,  # noqa: E402
                      ROOT, Started, add_noise_args, add_window_args, build_commit,
                      build_tools, cell, cmd_out, connectd_binary, cpu_model, env, fmt,
                      loadgen_checked, loadgen_json, machine_busy_s, md_table, med,
                      proc_tree, repo_state, retry_noisy, self_and_children_cpu_s, verdict,
                      wait_port, wait_quiet, _child_setup)


def log(msg):
    print(f"metrics-bench: {msg}", file=sys.stderr, flush=True)


# ---- CPU accounting (the rest is in benchlib.py) ---------------------------------------------

def schedstat(pids):
    """{pid: (ns on a CPU, ns waiting on a run queue)} summed over each process's threads."""
    out = {}
    for pid in pids:
        run = wait = 0
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    v = f.read().split()
                run += int(v[0])
                wait += int(v[1])
        except (OSError, IndexError, ValueError):
            continue
        out[pid] = (run, wait)
    return out


# ---- small HTTP client (a new connection each, as Prometheus without keep-alive) --------------

def http_get(port, path, timeout=10.0):
    """GET on 127.0.0.1:port, read to EOF. Returns (status, head, body, seconds, ttfb_s), the
    time from before connect() to the server's FIN."""
    t0 = time.perf_counter()
    deadline = t0 + timeout
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    ttfb = None
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  "Connection: close\r\n\r\n".encode())
        chunks = []
        while True:
            b = s.recv(262144)
            if not b:
                break
            if ttfb is None:
                ttfb = time.perf_counter() - t0
            chunks.append(b)
            if time.perf_counter() > deadline:
                raise TimeoutError(f"GET {path}: no end after {timeout:g} s")
    finally:
        s.close()
    took = time.perf_counter() - t0
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    return status, head, body, took, ttfb or took


def metric_value(body, name):
    m = re.search(rb"^" + re.escape(name.encode()) + rb" (\S+)$", body, re.M)
    return float(m.group(1)) if m else None


def metric_labelled(body, name):
    return {k.decode(): float(v) for k, v in
            re.findall(rb"^" + re.escape(name.encode()) + rb"\{[a-z_]+=\"([^\"]*)\"\} (\S+)$",
                       body, re.M)}


class Scraper(threading.Thread):
    """GET /metrics every interval seconds until stopped (or max_s, whichever first)."""

    def __init__(self, port, interval=1.0, max_s=600.0):
        super().__init__(daemon=True)
        self.port, self.interval = port, interval
        self.deadline = time.monotonic() + max_s
        self.stop_ev = threading.Event()
        self.ms, self.ok, self.bad = [], 0, 0

    def run(self):
        while not self.stop_ev.is_set() and time.monotonic() < self.deadline:
            t = time.monotonic()
            try:
                st, _, _, took, _ = http_get(self.port, "/metrics", timeout=5)
                self.ok += st == 200
                self.bad += st != 200
                self.ms.append(took * 1e3)
            except OSError:
                self.bad += 1
            self.stop_ev.wait(max(0.0, t + self.interval - time.monotonic()))

    def finish(self):
        self.stop_ev.set()
        self.join(timeout=15)


# ---- statistics and formatting -----------------------------------------------------------------

def pct(vals, p):
    """Nearest-rank percentile."""
    if not vals:
        return None
    s = sorted(vals)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))]


# ---- the probe (run as a child: python3 metrics.py --probe ...) --------------------------------

def probe_main(a):
    """Open a.probe_conns tunnels through the proxy to the echo port, and one control connection
    straight to the echo port; every a.probe_interval s send 1 byte on each and time each echo,
    until stdin reaches EOF or a.probe_max s pass. The control shares the probe's (and the
    target's) scheduling delays but not connectd's: the difference isolates connectd. With
    a.probe_fifo the probe runs SCHED_FIFO (needs root), so its own wake-ups are not delayed.
    Prints "ready PORT,PORT..." (the tunnels' local ports) once everything is up; writes the
    rounds [send time (CLOCK_MONOTONIC), [round trip s of each tunnel..., of the control]] as
    JSON to a.probe_out."""
    rt = False
    if a.probe_fifo:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            rt = True
        except (OSError, AttributeError) as e:
            print(f"probe: SCHED_FIFO refused ({e}); running as a normal process",
                  file=sys.stderr)
    tgt = f"127.0.0.1:{a.probe_echo}"
    socks = []
    for _ in range(a.probe_conns):
        s = socket.create_connection(("127.0.0.1", a.probe_proxy), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(f"CONNECT {tgt} HTTP/1.1\r\nHost: {tgt}\r\n\r\n".encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                sys.exit("probe: the proxy closed the CONNECT")
            buf += chunk
        if buf.split(b" ", 2)[1] != b"200":
            sys.exit(f"probe: CONNECT answered {buf.splitlines()[0]!r}")
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    ctrl = socket.create_connection(("127.0.0.1", a.probe_echo), timeout=10)
    ctrl.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    socks.append(ctrl)
    for s in socks:
        s.setblocking(False)
    print("ready " + ",".join(map(str, ports)), flush=True)
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    sel.register(sys.stdin, selectors.EVENT_READ, -1)
    rounds, lost, stop = [], 0, False
    n = len(socks)
    t_end = time.monotonic() + a.probe_max
    nxt = time.monotonic()
    while not stop and time.monotonic() < t_end:
        sent = [0.0] * n
        rtt = [None] * n
        for i, s in enumerate(socks):
            sent[i] = time.monotonic()
            s.send(b"p")
        pending = n
        limit = time.monotonic() + 10.0  # a round trip this long is a failure: stop
        while pending:
            left = limit - time.monotonic()
            if left <= 0:
                lost += pending
                stop = True
                break
            for key, _ in sel.select(left):
                i = key.data
                if i == -1:
                    try:
                        os.read(0, 4096)
                    except OSError:
                        pass
                    sel.unregister(sys.stdin)
                    stop = True  # finish this round, then end
                    continue
                try:
                    d = key.fileobj.recv(64)
                except BlockingIOError:
                    continue
                now = time.monotonic()
                if not d:
                    lost += 1
                    sel.unregister(key.fileobj)
                    pending -= 1
                    stop = True
                    continue
                if rtt[i] is None:
                    rtt[i] = now - sent[i]
                    pending -= 1
        rounds.append((sent[0], rtt))
        nxt += a.probe_interval
        now = time.monotonic()
        if nxt > now:
            time.sleep(nxt - now)
        else:
            nxt = now
    with open(a.probe_out, "w") as f:
        json.dump({"ports": ports, "rounds": rounds, "lost": lost, "rt": rt}, f)
    for s in socks:
        s.close()
    return 0


# ---- the benchmark ---------------------------------------------------------------------------

class Bench:
    def __init__(self, a, tmp, bin_dir):
        self.a = a
        self.tmp = tmp
        self.lg = os.path.join(bin_dir, "loadgen")
        self.tg = os.path.join(bin_dir, "target")
        self.started = Started()
        self.notes = []
        self.raw = {"onoff": [], "scrape": [], "tunnels": []}
        p = a.port_base
        self.P_SINK, self.P_ECHO = p + 1, p + 3
        self.PORTS = {"off": p + 10, "on": p + 11, "base": p + 12, "w2": p + 30, "w1": p + 40}
        self.ADMIN = {"on": p + 21, "w2": p + 31, "w1": p + 41}

    # ---- processes ----

    def conf(self, name, port, admin=None, workers=None, max_conn=10000):
        """bench.py's fair connectd config, plus [admin] and workers when asked."""
        path = os.path.join(self.tmp, f"{name}.ini")
        with open(path, "w") as f:
            f.write(f"""; connectd ({name}): the target ports only, loopback destinations allowed,
; no logging (bench.py's fair configuration).
[server]
listen = 127.0.0.1:{port}
; as root the bench keeps root; otherwise this is ignored
user = root
""" + (f"workers = {workers}\n" if workers else "") + f"""[access]
allow_ports = {self.P_SINK}-{self.P_ECHO}
deny_private = no
[dns]
; the targets are IP literals; any query would stay on loopback
servers = 127.0.0.1
[limits]
max_connections = {max_conn}
[log]
level = warn
access_log = off
""" + (f"[admin]\nlisten = 127.0.0.1:{admin}\n" if admin else ""))
        return path

    def start_target(self, lifetime):
        p = self.started.start("target", [self.tg, "--lifetime", str(int(lifetime)),
                                          f"sink:{self.P_SINK}", f"echo:{self.P_ECHO}"],
                               os.path.join(self.tmp, "target.err"))
        if not wait_port(self.P_ECHO, p, 10):
            raise SystemExit("metrics-bench: the target did not start; see " + self.tmp)

    def start_connectd(self, name, binary, conf, port, admin=None):
        p = self.started.start(name, [binary, "-c", conf], os.path.join(self.tmp, f"{name}.err"))
        if not wait_port(port, p, 30):
            raise SystemExit(f"metrics-bench: connectd {name} did not start; see "
                             f"{self.tmp}/{name}.err")
        if admin:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if http_get(admin, "/healthz", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline or p.poll() is not None:
                    raise SystemExit(f"metrics-bench: connectd {name}: /healthz never said 200; "
                                     f"see {self.tmp}/{name}.err")
                time.sleep(0.1)
        time.sleep(0.3)
        return p

    def our_cpu_s(self):
        return self.started.cpu_s()

    # ---- one loadgen run, with the noise check of bench.py ----

    def loadgen(self, variant, figure, rep, args, timeout, scrape_port=None):
        return retry_noisy(lambda: self.loadgen_once(variant, figure, rep, args, timeout,
                                                     scrape_port),
                           self.a.noisy_retries, self.a.other_load, self.notes, log, variant, 4,
                           figure, rep)

    def loadgen_once(self, variant, figure, rep, args, timeout, scrape_port):
        proc = self.started.procs[variant]
        if proc.poll() is not None:
            raise SystemExit(f"metrics-bench: connectd {variant} exited (rc={proc.returncode}); "
                             f"see {self.tmp}/{variant}.err")
        argv = [self.lg] + args + ["--proxy", f"127.0.0.1:{self.PORTS[variant]}",
                                   "--pid", str(proc.pid), "--label", f"{variant}/{figure}/{rep}"]
        scraper = None
        if scrape_port:
            scraper = Scraper(scrape_port, 1.0, max_s=timeout)
            scraper.start()
        t0, busy0, ours0, kids0 = time.monotonic(), machine_busy_s(), self.our_cpu_s(), \
            self_and_children_cpu_s()
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=timeout, preexec_fn=_child_setup)
        except subprocess.TimeoutExpired:
            self.notes.append(f"{variant} {figure} #{rep}: loadgen timed out")
            return None
        finally:
            if scraper:
                scraper.finish()
        wall = time.monotonic() - t0
        other = ((machine_busy_s() - busy0) - (self.our_cpu_s() - ours0) -
                 (self_and_children_cpu_s() - kids0)) / wall
        human = " /".join(h.strip() for h in r.stderr.strip().splitlines())
        extra = ""
        if scraper:
            extra = (f" [scrapes {scraper.ok} ok, {scraper.bad} failed, "
                     f"median {fmt(med(scraper.ms))} ms]")
        log(f"{variant:4s} {figure} #{rep}: {human or f'(no output, rc={r.returncode})'} "
            f"[other load {other:.2f} cores]{extra}")
        res = loadgen_json(r, self.notes, f"{variant} {figure} #{rep}")
        if res is None:
            return None
        res.update(variant=variant, figure=figure, repeat=rep, rc=r.returncode,
                   other_load_cores=round(other, 3))
        if scraper:
            res.update(scrapes_ok=scraper.ok, scrapes_failed=scraper.bad,
                       scrape_ms=[round(x, 3) for x in scraper.ms])
            if scraper.bad or scraper.ok == 0:
                self.notes.append(f"on {figure} #{rep}: scrapes {scraper.ok} ok, "
                                  f"{scraper.bad} failed")
        self.raw["onoff"].append(res)
        return loadgen_checked(r, res, self.notes, f"{variant} {figure} #{rep}")

    # ---- part 1: on vs off (vs base) ----

    def part_onoff(self, binary, base_bin):
        a = self.a
        variants = ["off", "on"] + (["base"] if base_bin else [])
        self.start_connectd("off", binary, self.conf("off", self.PORTS["off"]), self.PORTS["off"])
        self.start_connectd("on", binary, self.conf("on", self.PORTS["on"], self.ADMIN["on"]),
                            self.PORTS["on"], self.ADMIN["on"])
        if base_bin:
            self.start_connectd("base", base_bin, self.conf("base", self.PORTS["base"]),
                                self.PORTS["base"])
        values = {}
        hs_row = f"handshakes/s at {a.concurrency} concurrent"
        hs_cpu = "connectd CPU us per handshake"
        tp_row = "throughput 1 tunnel up (MB/s)"
        tp_cpu = "connectd CPU s per GB, 1 tunnel up"
        for r in (hs_row, hs_cpu, tp_row, tp_cpu):
            values[r] = {v: [] for v in variants}
        scrape = {"on": self.ADMIN["on"]}
        hs_args = ["handshakes", "--concurrency", str(a.concurrency), "--target",
                   f"127.0.0.1:{self.P_ECHO}", "--seconds", str(a.seconds), "--warmup",
                   str(a.warmup)]
        tp_args = ["throughput", "--tunnels", "1", "--dir", "up", "--target",
                   f"127.0.0.1:{self.P_SINK}", "--seconds", str(a.seconds), "--warmup",
                   str(a.warmup), "--threads", "1"]
        timeout = a.warmup + a.seconds + 40
        log("== onoff: handshakes (one untimed 2 s round each first, as bench.py)")
        for v in variants:
            self.loadgen_once(v, "handshakes-warmup", 0,
                              ["handshakes", "--concurrency", str(a.concurrency), "--target",
                               f"127.0.0.1:{self.P_ECHO}", "--seconds", "2", "--warmup", "0.5"],
                              40, scrape.get(v))
        for rep in range(1, a.repeats + 1):
            k = (rep - 1) % len(variants)
            for v in variants[k:] + variants[:k]:
                res = self.loadgen(v, "handshakes", rep, hs_args, timeout, scrape.get(v))
                if res:
                    values[hs_row][v].append(res["per_s"])
                    values[hs_cpu][v].append(res["cpu_us_per_handshake"])
        log("== onoff: throughput, 1 tunnel up")
        for rep in range(1, a.repeats + 1):
            k = (rep - 1) % len(variants)
            for v in variants[k:] + variants[:k]:
                res = self.loadgen(v, "tput_up_1", rep, tp_args, timeout, scrape.get(v))
                if res:
                    values[tp_row][v].append(res["mb_per_s"])
                    values[tp_cpu][v].append(res["cpu_s_per_gb"])
        for v in variants:
            self.started.stop(v)
        return {"variants": variants, "values": values, "rows": [hs_row, hs_cpu, tp_row, tp_cpu],
                "higher_better": {hs_row: True, tp_row: True, hs_cpu: False, tp_cpu: False}}

    # ---- parts 2 and 3: idle tunnels, scrapes, /tunnels ----

    def open_idle(self, name, n):
        """loadgen idle: n tunnels to the echo port, held until we stop it (by pid)."""
        proxy = self.started.procs[name]
        argv = [self.lg, "idle", "--tunnels", str(n), "--target", f"127.0.0.1:{self.P_ECHO}",
                "--proxy", f"127.0.0.1:{self.PORTS[name]}", "--pid", str(proxy.pid),
                "--hold", "600", "--open-timeout", "120", "--label", f"{name}/idle"]
        outp = os.path.join(self.tmp, f"idle-{name}.out")
        lg = self.started.start(f"idle-{name}", argv, os.path.join(self.tmp, f"idle-{name}.err"),
                                stdout=open(outp, "wb"))
        admin = self.ADMIN[name]
        t0 = time.monotonic()
        seen = -1
        while time.monotonic() - t0 < 150:
            if lg.poll() is not None:
                break
            try:
                st, _, body, _, _ = http_get(admin, "/metrics", timeout=5)
                seen = metric_value(body, "connectd_tunnels_open") or 0
            except OSError:
                pass
            if seen >= n:
                break
            time.sleep(0.5)
        log(f"{name}: {int(seen)} tunnels open after {time.monotonic() - t0:.1f} s")
        time.sleep(1.0)  # let the proxy settle after the last open
        return lg, outp

    def close_idle(self, name, outp):
        self.started.stop(f"idle-{name}", grace=60, sig=signal.SIGTERM)
        try:
            with open(outp) as f:
                return json.loads(f.read().strip().splitlines()[-1])
        except (OSError, IndexError, ValueError):
            return None

    def scrapes(self, name, label, n_expected):
        a = self.a
        admin = self.ADMIN[name]
        st, _, body, _, _ = http_get(admin, "/metrics", timeout=10)
        open_now = metric_value(body, "connectd_tunnels_open")
        per_worker = metric_labelled(body, "connectd_worker_tunnels_open")
        fds = metric_value(body, "process_open_fds")
        b0, ours0, self0, t0 = machine_busy_s(), self.our_cpu_s(), self_and_children_cpu_s(), \
            time.monotonic()
        ms, sizes, bad = [], [], 0
        for _ in range(a.scrapes):
            try:
                st, _, body, took, _ = http_get(admin, "/metrics", timeout=10)
            except OSError:
                bad += 1
                continue
            if st != 200:
                bad += 1
                continue
            ms.append(took * 1e3)
            sizes.append(len(body))
            time.sleep(0.02)
        wall = time.monotonic() - t0
        other = ((machine_busy_s() - b0) - (self.our_cpu_s() - ours0) -
                 (self_and_children_cpu_s() - self0)) / wall
        res = {"label": label, "tunnels_expected": n_expected, "tunnels_open": open_now,
               "per_worker": per_worker, "open_fds": fds, "ms": [round(x, 4) for x in ms],
               "median": med(ms), "p99": pct(ms, 99), "max": max(ms) if ms else None,
               "bytes": med(sizes), "failed": bad, "other_load_cores": round(other, 3)}
        log(f"scrape {label}: tunnels_open {open_now} {per_worker}; {len(ms)} scrapes: median "
            f"{fmt(res['median'])} ms, p99 {fmt(res['p99'])} ms, max {fmt(res['max'])} ms, "
            f"{fmt(res['bytes'])} bytes [other load {other:.2f} cores]")
        if n_expected and open_now != n_expected:
            self.notes.append(f"scrape {label}: connectd_tunnels_open was {open_now}, not "
                              f"{n_expected}")
        if bad:
            self.notes.append(f"scrape {label}: {bad} scrapes failed")
        if other > self.a.other_load:
            self.notes.append(f"scrape {label}: the machine was busy with other work "
                              f"({other:.2f} cores on average)")
        self.raw["scrape"].append(res)
        return res

    def tunnels_probe(self, name, label, n_open, nprobes):
        """Ping-pong probes while GET /tunnels is fetched; see the module docstring."""
        a = self.a
        admin = self.ADMIN[name]
        outp = os.path.join(self.tmp, f"probe-{name}.json")
        argv = [sys.executable, os.path.abspath(__file__), "--probe", "--probe-proxy",
                str(self.PORTS[name]), "--probe-echo", str(self.P_ECHO), "--probe-conns",
                str(nprobes), "--probe-interval", str(a.probe_interval), "--probe-out", outp,
                "--probe-max", str(a.baseline + a.fetches * 30 + 30)]
        if a.probe_rt:
            argv.append("--probe-fifo")
        pr = self.started.start(f"probe-{name}", argv, os.path.join(self.tmp, f"probe-{name}.err"),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        sel = selectors.DefaultSelector()
        sel.register(pr.stdout, selectors.EVENT_READ)
        line = b""
        if sel.select(20):
            line = pr.stdout.readline()
        sel.close()
        if not line.startswith(b"ready "):
            self.started.stop(f"probe-{name}")
            self.notes.append(f"tunnels {label}: the probe did not start (see "
                              f"{self.tmp}/probe-{name}.err)")
            return None
        ports = [int(x) for x in line.split()[1].split(b",")]
        time.sleep(0.3)
        tb0 = time.monotonic()
        time.sleep(a.baseline)
        tb1 = time.monotonic()
        limit = n_open + nprobes
        fetches = []
        b0, ours0, self0, t0all = machine_busy_s(), self.our_cpu_s(), self_and_children_cpu_s(), \
            time.monotonic()
        cpids = proc_tree(self.started.procs[name].pid)
        for k in range(a.fetches):
            ss0 = schedstat(cpids)
            t0 = time.monotonic()
            try:
                st, _, body, took, ttfb = http_get(admin, f"/tunnels?limit={limit}", timeout=60)
            except OSError as e:
                self.notes.append(f"tunnels {label} fetch {k + 1}: {e}")
                continue
            t1 = time.monotonic()
            ss1 = schedstat(cpids)
            f = {"t0": t0, "t1": t1, "ms": took * 1e3, "ttfb_ms": ttfb * 1e3, "bytes": len(body),
                 "status": st,
                 # connectd's CPU time and run-queue wait (runnable, but no CPU free) meanwhile
                 "cpu_ms": sum(ss1[p][0] - ss0[p][0] for p in ss1 if p in ss0) / 1e6,
                 "runq_ms_max": max((ss1[p][1] - ss0[p][1] for p in ss1 if p in ss0),
                                    default=0) / 1e6}
            try:
                doc = json.loads(body)
                tl = doc["tunnels"]
                f.update(count=doc.get("count"), listed=len(tl), truncated=doc.get("truncated"),
                         answering=tl[0]["worker"] if tl else None,
                         workers=sorted({t["worker"] for t in tl}))
                where = {}
                for t in tl:
                    port = int(t["client"].rsplit(":", 1)[1])
                    if port in ports:
                        where[ports.index(port)] = t["worker"]
                f["probe_worker"] = where
            except (ValueError, KeyError, IndexError, TypeError) as e:
                f["parse_error"] = str(e)
                self.notes.append(f"tunnels {label} fetch {k + 1}: bad JSON ({e}), status {st}")
            fetches.append(f)
            log(f"tunnels {label} fetch {k + 1}: {f['ms']:.1f} ms, {f['bytes']} bytes, count "
                f"{f.get('count')}, answered by worker {f.get('answering')}, probes on "
                f"{f.get('probe_worker')}")
            time.sleep(0.5)
        wall = time.monotonic() - t0all
        other = ((machine_busy_s() - b0) - (self.our_cpu_s() - ours0) -
                 (self_and_children_cpu_s() - self0)) / wall
        pr.stdin.close()
        try:
            pr.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.started.stop(f"probe-{name}")
        try:
            with open(outp) as fh:
                pdoc = json.load(fh)
        except (OSError, ValueError):
            self.notes.append(f"tunnels {label}: no probe samples")
            return None
        rounds = pdoc["rounds"]
        if pdoc.get("lost"):
            self.notes.append(f"tunnels {label}: the probe lost {pdoc['lost']} round trips")
        if not pdoc.get("rt"):
            self.notes.append(f"tunnels {label}: the probe ran without SCHED_FIFO (not root?): "
                              "its own wake-up delays are in the raw round trips")
        # Each probe's worker, from any fetch that listed it.
        pw = {}
        for f in fetches:
            for i, w in f.get("probe_worker", {}).items():
                pw[int(i)] = w

        def collect(sel_rounds):
            """{group: {"rtt": [...], "excess": [...]}} in ms; "control": direct round trips."""
            g = {}
            for (ts, rtt), grp_fn in sel_rounds:
                c = rtt[-1]
                if c is not None:
                    g.setdefault("control", {"rtt": []})["rtt"].append(c * 1e3)
                for i, r in enumerate(rtt[:-1]):
                    grp = grp_fn(i)
                    if r is None or grp is None:
                        continue
                    d = g.setdefault(grp, {"rtt": [], "excess": []})
                    d["rtt"].append(r * 1e3)
                    if c is not None:
                        d["excess"].append((r - c) * 1e3)
            return g

        base = collect([(r, lambda i: "all") for r in rounds if tb0 <= r[0] <= tb1])
        during_sel = []
        for f in fetches:
            ans = f.get("answering")
            for r in rounds:
                span = max((x for x in r[1] if x is not None), default=0)
                if r[0] <= f["t1"] and r[0] + span >= f["t0"]:
                    during_sel.append((r, lambda i, ans=ans: None if i not in pw or ans is None
                                       else ("answering" if pw[i] == ans else "other")))
        during = collect(during_sel)
        b_all = base.get("all", {"rtt": [], "excess": []})
        b_med, bx_med = med(b_all["rtt"]), med(b_all["excess"])
        expect = n_open + nprobes
        for k, f in enumerate(fetches):
            if f.get("count") != expect or f.get("listed") != expect:
                self.notes.append(f"tunnels {label} fetch {k + 1}: count {f.get('count')}, "
                                  f"listed {f.get('listed')}, expected {expect} ({n_open} idle "
                                  f"+ {nprobes} probes)")
        res = {"label": label, "tunnels": n_open, "probes": nprobes, "probe_ports": ports,
               "probe_workers": pw, "rt": pdoc.get("rt"), "fetches": fetches,
               "fetch_ms": [f["ms"] for f in fetches], "bytes": med([f["bytes"] for f in fetches]),
               "counts": [f.get("count") for f in fetches],
               "answering": [f.get("answering") for f in fetches],
               "rounds": len(rounds), "base_rounds": sum(1 for r in rounds if tb0 <= r[0] <= tb1),
               "base": {"n": len(b_all["rtt"]), "med": b_med, "p99": pct(b_all["rtt"], 99),
                        "max": max(b_all["rtt"], default=None), "excess_med": bx_med,
                        "control_med": med(base.get("control", {}).get("rtt", [])),
                        "control_max": max(base.get("control", {}).get("rtt", []),
                                           default=None)},
               "control_during_max": max(during.get("control", {}).get("rtt", []), default=None),
               "control_during_p99": pct(during.get("control", {}).get("rtt", []), 99),
               "other_load_cores": round(other, 3), "groups": {}}
        for grp in ("answering", "other"):
            d = during.get(grp)
            if not d or not d["rtt"]:
                continue
            mx, xmx = max(d["rtt"]), max(d["excess"], default=None)
            res["groups"][grp] = {
                "n": len(d["rtt"]), "p99": pct(d["rtt"], 99), "max": mx,
                "over5": sum(1 for x in d["excess"] if x - (bx_med or 0) >= 5),
                "block": mx - b_med if b_med is not None else None,
                "excess_p99": pct(d["excess"], 99), "excess_max": xmx,
                "block_corrected": (xmx - bx_med if xmx is not None and bx_med is not None
                                    else None)}
        gtxt = "; ".join(f"{k}: max {fmt(v['max'], 3)} ms, block {fmt(v['block'], 3)}, "
                         f"corrected {fmt(v['block_corrected'], 3)}"
                         for k, v in res["groups"].items())
        log(f"tunnels {label}: probe before median {fmt(b_med, 3)} ms p99 "
            f"{fmt(res['base']['p99'], 3)} max {fmt(res['base']['max'], 3)}; during fetches "
            f"{gtxt}; control max {fmt(res['control_during_max'], 3)} "
            f"[other load {other:.2f} cores]")
        if other > self.a.other_load:
            self.notes.append(f"tunnels {label}: the machine was busy with other work "
                              f"({other:.2f} cores on average during the fetches)")
        self.raw["tunnels"].append(res)
        return res

    def part_load(self, binary, name, workers, n, parts):
        """connectd with `workers`, n idle tunnels; the scrape and/or /tunnels parts."""
        out = {"scrape": [], "tunnels": []}
        # max_connections is shared out among the workers: give each room for n tunnels (the
        # open-file limit caps it anyway), as the kernel does not spread them exactly evenly.
        conf = self.conf(name, self.PORTS[name], self.ADMIN[name],
                         workers=workers if workers > 1 else None,
                         max_conn=max(10000, n * workers))
        self.start_connectd(name, binary, conf, self.PORTS[name], self.ADMIN[name])
        if "scrape" in parts:
            out["scrape"].append(self.scrapes(name, f"workers={workers}, 0 tunnels", 0))
        lg, outp = self.open_idle(name, n)
        try:
            if "scrape" in parts:
                out["scrape"].append(self.scrapes(name, f"workers={workers}, {n:,} tunnels", n))
            if "tunnels" in parts:
                nprobes = self.a.probes if workers > 1 else 1
                out["tunnels"].append(self.tunnels_probe(name, f"workers={workers}, {n:,} tunnels",
                                                         n, nprobes))
        finally:
            idle = self.close_idle(name, outp)
            if idle:
                out["idle"] = idle
                self.raw.setdefault("idle", []).append(idle)
                if idle.get("established", 0) < n:
                    self.notes.append(f"{name}: loadgen held only {idle.get('established')} of "
                                      f"{n} tunnels (errors {idle.get('errors')}, first "
                                      f"{idle.get('first_error')!r})")
            self.started.stop(name)
        return out


# ---- the report --------------------------------------------------------------------------------

def report_onoff(r, base_desc):
    if not r:
        return []
    variants, values = r["variants"], r["values"]
    heads = ["figure"] + variants + ["on/off"] + (["on/base", "off/base"] if "base" in variants
                                                  else [])
    rows = []
    for row in r["rows"]:
        per = values[row]
        m = {v: med(per[v]) for v in variants}
        cells = [row] + [cell(per[v]) for v in variants]

        def ratio(x, y):
            return "-" if m.get(x) is None or not m.get(y) else f"{m[x] / m[y]:.3f}"
        cells.append(ratio("on", "off"))
        if "base" in variants:
            cells += [ratio("on", "base"), ratio("off", "base")]
        rows.append(cells)
    out = ["## 1. Metrics on vs off" + (" vs base" if "base" in variants else ""), "",
           md_table(heads, rows), ""]
    out.append("Targets (issue: metrics on vs off within 2%; a ratio of medians >= 0.98 meets "
               "it; spread = (max-min)/median of the same variant, the run's noise):")
    for row in r["rows"]:
        if not r["higher_better"].get(row):
            continue
        per = values[row]
        for x, y in (("on", "off"), ("on", "base")):
            if y not in variants:
                continue
            mx, my = med(per[x]), med(per[y])
            if mx is None or not my:
                out.append(f"- {row}, {x}/{y}: not measured")
                continue
            q = mx / my
            spread = max((max(per[v]) - min(per[v])) / med(per[v]) for v in (x, y)
                         if per[v] and med(per[v]))
            out.append(f"- {row}, {x}/{y}: {q:.3f} ({(q - 1) * 100:+.1f}%; target >= 0.98): "
                       f"{verdict(q >= 0.98)}; spread up to {spread * 100:.1f}%")
    if "base" not in variants:
        out.append("- base: not measured (see the notes)")
    else:
        out.append(f"- base = {base_desc}, built by this run in a temporary git worktree")
    return out


def report_scrape(rows_in):
    rows_in = [x for x in rows_in if x]
    if not rows_in:
        return []
    rows = []
    for x in rows_in:
        pw = ", ".join(f"{k}:{int(v)}" for k, v in sorted(x["per_worker"].items())) or "-"
        rows.append([x["label"], "-" if x["tunnels_open"] is None else f"{int(x['tunnels_open']):,}",
                     pw, "-" if x["open_fds"] is None else f"{int(x['open_fds']):,}",
                     len(x["ms"]), fmt(x["median"], 3), fmt(x["p99"], 3), fmt(x["max"], 3),
                     fmt(x["bytes"])])
    out = ["## 2. GET /metrics under load (a new connection each; ms from connect() to the "
           "server's FIN)", "",
           md_table(["connectd", "tunnels_open", "per worker", "process_open_fds", "scrapes",
                     "median ms", "p99 ms", "max ms", "bytes"], rows), ""]
    for x in rows_in:
        if x["tunnels_expected"]:
            out.append(f"- {x['label']}: p99 {fmt(x['p99'], 3)} ms, max {fmt(x['max'], 3)} ms "
                       f"(target < 5 ms): p99 {verdict(x['p99'] is not None and x['p99'] < 5)}, "
                       f"max {verdict(x['max'] is not None and x['max'] < 5)}")
    return out


def report_tunnels(rows_in):
    rows_in = [x for x in rows_in if x]
    if not rows_in:
        return []
    rows = []
    for x in rows_in:
        fm = x["fetch_ms"]
        rq = [f["runq_ms_max"] for f in x["fetches"]]
        rows.append([x["label"], len(fm),
                     f"{fmt(med(fm))} ({fmt(min(fm, default=None))}-{fmt(max(fm, default=None))})",
                     fmt(med([f["ttfb_ms"] for f in x["fetches"]])),
                     fmt(x["bytes"]), ",".join(str(c) for c in x["counts"]),
                     ",".join(str(w) for w in x["answering"]),
                     fmt(med([f["cpu_ms"] for f in x["fetches"]])),
                     f"{fmt(med(rq))} ({fmt(max(rq, default=None))})"])
    out = ["## 3. GET /tunnels?limit=ALL, streamed (read whole, JSON parsed)", "",
           md_table(["connectd", "fetches", "fetch ms median (min-max)",
                     "first byte ms (median)", "body bytes", "count", "answered by worker",
                     "connectd CPU ms per fetch (median)",
                     "run-queue wait ms per fetch, worst process: median (max)"], rows), "",
           "(Run-queue wait: time a connectd process was runnable but had no CPU during the "
           "fetch, from /proc/PID/task/*/schedstat: CPU contention on this machine, which the "
           "probe below cannot tell apart from a busy loop.)", "",
           "Probe: 1-byte ping-pong every 1 ms on extra tunnels through connectd to the echo "
           "port, and on a control connection straight to the echo port (the same probe and "
           "target, no connectd). Before = the baseline period without fetches; during = pings "
           "in flight during a fetch, by whether the probe's worker is the one answering the "
           "fetch. Loop block = max during - median before; corrected = the same on (tunnel "
           "round trip - control round trip of the same ping round), which removes the probe's "
           "and the target's own scheduling delays.", ""]
    rows = []
    for x in rows_in:
        b = x["base"]
        for grp, g in x["groups"].items():
            rows.append([x["label"], f"{grp} worker", g["n"],
                         f"{fmt(b['med'], 3)} / {fmt(b['p99'], 3)} / {fmt(b['max'], 3)}",
                         f"{fmt(g['p99'], 3)} / {fmt(g['max'], 3)}", g["over5"],
                         f"{fmt(b['control_max'], 3)} / {fmt(x['control_during_max'], 3)}",
                         fmt(g["block"], 3), fmt(g["block_corrected"], 3)])
    out += [md_table(["connectd", "probe on", "pings during", "RTT before: median / p99 / max ms",
                      "RTT during: p99 / max ms", "pings corrected >= 5 ms",
                      "control RTT max before / during ms",
                      "loop block ms", "loop block, corrected ms"], rows), ""]
    for x in rows_in:
        for grp in ("answering", "other"):
            g = x["groups"].get(grp)
            if not g:
                if grp == "answering" or x["probes"] > 1:
                    out.append(f"- {x['label']}: no probe on the {grp} worker during any fetch")
                continue
            blk, cor = g["block"], g["block_corrected"]
            out.append(f"- {x['label']}, {grp} worker: loop block {fmt(blk, 3)} ms (target < 5 "
                       f"ms): {verdict(blk is not None and blk < 5)}; corrected "
                       f"{fmt(cor, 3)} ms: {verdict(cor is not None and cor < 5)}")
        out.append(f"  (probes on workers {x['probe_workers']}; probe SCHED_FIFO: "
                   f"{'yes' if x['rt'] else 'no'})")
    return out


# ---- main --------------------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(
        description="connectd: what metrics and the admin listener cost (see the docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--repeats", type=int, default=int(env("REPEATS", 5)),
                    help="onoff: interleaved rounds [REPEATS]")
    add_window_args(ap)  # --seconds, --warmup, --concurrency
    ap.add_argument("--tunnels", type=int, default=int(env("METRICS_TUNNELS", 10000)),
                    help="idle tunnels with workers = 2 [METRICS_TUNNELS]")
    ap.add_argument("--tunnels-w1", type=int, default=int(env("METRICS_TUNNELS_W1", 9000)),
                    help="idle tunnels with workers = 1; 0 skips that run [METRICS_TUNNELS_W1]")
    ap.add_argument("--scrapes", type=int, default=int(env("METRICS_SCRAPES", 50)),
                    help="timed GET /metrics per figure [METRICS_SCRAPES]")
    ap.add_argument("--fetches", type=int, default=int(env("METRICS_FETCHES", 5)),
                    help="timed GET /tunnels per run [METRICS_FETCHES]")
    ap.add_argument("--probes", type=int, default=int(env("METRICS_PROBES", 4)),
                    help="probe tunnels with workers = 2 (1 with workers = 1) [METRICS_PROBES]")
    ap.add_argument("--probe-interval", type=float,
                    default=float(env("METRICS_PROBE_INTERVAL", 0.001)),
                    help="seconds between probe pings [METRICS_PROBE_INTERVAL]")
    ap.add_argument("--no-probe-rt", dest="probe_rt", action="store_false",
                    default=env("METRICS_PROBE_RT", "1") == "1",
                    help="run the probe as a normal process (by default it asks for "
                         "SCHED_FIFO, which needs root) [METRICS_PROBE_RT=0]")
    ap.add_argument("--baseline", type=float, default=float(env("METRICS_BASELINE", 3)),
                    help="seconds of probe pings before the first fetch [METRICS_BASELINE]")
    ap.add_argument("--parts", default=env("METRICS_PARTS", "onoff,scrape,tunnels"),
                    help="what to run, of onoff,scrape,tunnels [METRICS_PARTS]")
    ap.add_argument("--base-commit", default=env("METRICS_BASE_COMMIT", "40973f2"),
                    help="commit for the base column; empty skips it [METRICS_BASE_COMMIT]")
    ap.add_argument("--port-base", type=int, default=int(env("BENCH_PORT_BASE", 18300)),
                    help="loopback ports used: base+1, +3, +10..12, +21, +30, +31, +40, +41 "
                         "[BENCH_PORT_BASE]")
    add_noise_args(ap)  # --other-load, --noisy-retries, --quiet-wait
    ap.add_argument("--results", default=env("METRICS_RESULTS", ""),
                    help="output file (default build/bench/metrics-results.txt) "
                         "[METRICS_RESULTS]")
    add_connectd_args(ap, "METRICS_CONNECTD_COMMIT")
    # the probe child
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe-proxy", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--probe-echo", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--probe-conns", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--probe-out", help=argparse.SUPPRESS)
    ap.add_argument("--probe-max", type=float, default=120, help=argparse.SUPPRESS)
    ap.add_argument("--probe-fifo", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args()


def main():
    a = parse_args()
    if a.probe:
        return probe_main(a)
    parts = [p for p in a.parts.split(",") if p]
    for p in parts:
        if p not in ("onoff", "scrape", "tunnels"):
            sys.exit(f"metrics-bench: unknown part {p!r}")
    if not (0 < a.repeats <= 100 and 0 < a.seconds <= 600 and 0 <= a.warmup <= 60 and
            0 <= a.tunnels <= 20000 and 0 <= a.tunnels_w1 <= 20000 and 0 < a.scrapes <= 10000 and
            0 < a.fetches <= 100 and 1 <= a.probes <= 32 and 0.0001 <= a.probe_interval <= 1 and
            0 < a.baseline <= 60):
        sys.exit("metrics-bench: an option is out of range")
    bin_dir = os.path.join(ROOT, "build", "bench")
    results = a.results or os.path.join(bin_dir, "metrics-results.txt")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        if hard < a.tunnels + 200:
            log(f"warning: the hard open-file limit {hard} is below what {a.tunnels} client "
                "sockets (loadgen) or target sockets need")
        if a.tunnels_w1 and hard < 2 * a.tunnels_w1 + 100:
            log(f"warning: one connectd process cannot hold {a.tunnels_w1} tunnels under the "
                f"hard open-file limit {hard}")

    # Build first (the ports are checked after: make can take a while).
    tmp = tempfile.mkdtemp(prefix="connectd-metrics-bench-")
    binary, built = connectd_binary(a.connectd_bin, a.connectd_commit, tmp, "metrics-bench", log)
    build_tools(bin_dir, log)
    b = Bench(a, tmp, bin_dir)
    ports = [b.P_SINK, b.P_ECHO] + list(b.PORTS.values()) + list(b.ADMIN.values())
    stop_req = refuse_busy_ports_and_trap_sigterm(ports, tmp, "metrics-bench")
    t_start = time.monotonic()
    commit, dirty = repo_state()
    base_bin = base_desc = None
    onoff = None
    scr, tun = [], []
    try:
        if "onoff" in parts and a.base_commit:
            base_bin, base_desc = build_commit(a.base_commit, tmp, "base", log)
            if not base_bin:
                log("skipping the base column")
                b.notes.append(f"base ({a.base_commit}): could not be built; column skipped")
        b.start_target(lifetime=3600)
        if "onoff" in parts:
            log("== part 1: on vs off" + (" vs base" if base_bin else ""))
            wait_quiet(a.other_load, a.quiet_wait, log)
            onoff = b.part_onoff(binary, base_bin)
        load_parts = [p for p in parts if p in ("scrape", "tunnels")]
        if load_parts and a.tunnels:
            log(f"== parts 2-3: workers = 2, {a.tunnels} idle tunnels")
            wait_quiet(a.other_load, a.quiet_wait, log)
            r = b.part_load(binary, "w2", 2, a.tunnels, load_parts)
            scr += r["scrape"]
            tun += r["tunnels"]
        if load_parts and a.tunnels_w1:
            log(f"== parts 2-3: workers = 1, {a.tunnels_w1} idle tunnels")
            wait_quiet(a.other_load, a.quiet_wait, log)
            r = b.part_load(binary, "w1", 1, a.tunnels_w1, load_parts)
            scr += [x for x in r["scrape"] if x["tunnels_expected"]]
            tun += r["tunnels"]
    except KeyboardInterrupt:
        log("interrupted: stopping what this run started")
    finally:
        b.started.stop_all()
    took = time.monotonic() - t_start

    model = cpu_model()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [f"# connectd metrics benchmark, {now}", "",
            f"- connectd: {cmd_out([binary, '-V'])} ({built}; the repository's HEAD is {commit}"
            + (f"; src/include modified in the work tree: {', '.join(dirty)}" if dirty else "")
            + ")",
            f"- machine: {os.cpu_count()} x {model}, kernel {platform.release()}, hard "
            f"open-file limit {hard}",
            f"- parts: {', '.join(parts)}; idle tunnels: {a.tunnels:,} with workers = 2, "
            f"{a.tunnels_w1:,} with workers = 1; took {took:.0f} s"]
    if onoff:
        text.append(f"- on vs off: {a.repeats} interleaved rounds (order rotated each round), "
                    f"{a.seconds:g} s windows after {a.warmup:g} s warm-up, {a.concurrency} "
                    f"handshakes in flight; 1 MB = 10^6 bytes; cells are median (min-max); "
                    f"ratios are of medians")
    text.append("")
    text += report_onoff(onoff, base_desc)
    if onoff:
        sc = [x for r in b.raw["onoff"] if r["variant"] == "on" for x in r.get("scrape_ms", [])]
        ok = sum(r.get("scrapes_ok", 0) for r in b.raw["onoff"] if r["variant"] == "on")
        bad = sum(r.get("scrapes_failed", 0) for r in b.raw["onoff"] if r["variant"] == "on")
        text.append(f"- scrapes of 'on' during its runs: {ok} answered 200, {bad} failed; "
                    f"median {fmt(med(sc), 3)} ms, max {fmt(max(sc) if sc else None, 3)} ms")
        text.append("")
    if scr:
        text += report_scrape(scr) + [""]
    if tun:
        text += report_tunnels(tun)
    for name in sorted(os.listdir(tmp)):  # what the daemons said, before the dir goes
        if name.endswith(".err") and not name.startswith(("idle-", "target")):
            try:
                with open(os.path.join(tmp, name), errors="replace") as f:
                    said = [ln.rstrip() for ln in f if ln.strip() and not re.search(
                        r"carries only \d+ of the|running as root", ln)]
            except OSError:
                said = []
            if said:
                b.notes.append(f"{name[:-4]} wrote {len(said)} line(s) on stderr, the last: "
                               f"{said[-1][-300:]}")
    if b.notes:
        text += ["", "Notes:"] + [f"- {n}" for n in b.notes]
    report = "\n".join(text) + "\n"
    print(report)
    os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
    with open(results, "w") as f:
        f.write(report)
    with open(os.path.splitext(results)[0] + ".json", "w") as f:
        json.dump({"args": vars(a), "onoff": onoff, "raw": b.raw, "notes": b.notes}, f,
                  indent=1, default=str)
    log(f"results written to {results} (raw: {os.path.splitext(results)[0]}.json)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 130 if stop_req else 0


if __name__ == "__main__":
    sys.exit(main())
