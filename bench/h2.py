#!/usr/bin/env python3
"""bench/h2.py: tunnels as CONNECT streams over one HTTP/2 connection against the same tunnels
over HTTP/1.1 TLS connections, one each (stdlib only).

    bench/h2.py [options]          (or: make bench-h2; BENCH_H2_ARGS=--quick)

connectd alone, started by this script with one TLS listener (`listen = 127.0.0.1:P tls`,
`[tls] alpn = h2, http/1.1`, otherwise bench/tls.py's configuration, so bench.py's fair one;
[http2] left at its defaults: max_concurrent_streams 100, stream_window 262144,
connection_window 4194304), the test certificate of bench/tls.py, the bench target (sink, source,
echo). Every figure is run in two variants on the same listener, interleaved, the order rotated
each round, REPEATS rounds, medians:

  h2       build/bench/loadgen --tls --h2: ONE TLS connection (ALPN h2) per loadgen thread,
           each tunnel a CONNECT stream on it; the client's windows 1 MiB per stream and
           16 MiB for the connection, received DATA consumed as read
  http1    build/bench/loadgen --tls: one TLS connection (ALPN http/1.1) per tunnel, a full
           TLS handshake each
  (and for the set-up figure also http1 resumed: loadgen --tls-resume, each slot resuming
  its previous connection's session)

Figures:
  hs         tunnel set-ups per second, --concurrency (100) at a time: h2 streams opened over
             one connection (CONNECT -> 200 -> 64-byte echo -> END_STREAM both ways) against
             HTTP/1.1 TLS connections (TCP + TLS handshake + CONNECT -> 200 -> 64-byte echo ->
             close); with the proxy's CPU per set-up (one untimed 2 s round per variant first)
  idle_100   --tunnels (100) tunnels opened and proven with one echo each, held: RSS KiB (and
             fds) per tunnel as loadgen's idle mode computes it (VmRSS before and 1 s after the
             last one is up, over the tunnels); connectd restarted fresh before each run
  idle_1000  the same with 10 x that many: h2 on 10 connections (10 loadgen threads) of 100
             streams, against 1,000 TLS connections: the per-connection cost amortized the same
             way, and a delta ten times the size of RSS noise
  tput_up, tput_down
             --tunnels (100) tunnels on one loadgen thread (h2: one connection), up
             (client -> sink) and down (source -> client): aggregate MB/s (1 MB = 10^6 bytes),
             the spread between tunnels (min / median / max MB/s of the tunnels over the window,
             Jain's fairness index), proxy CPU s per GB, loadgen's own CPU

Targets (issue 14): per-tunnel memory over h2 no more than over HTTP/1.1 TLS; aggregate
throughput over h2 within 20% of HTTP/1.1 TLS (h2 / http1 >= 0.8), up and down.

Prints a table (medians, min-max, ratios h2 / HTTP/1.1 TLS), the targets MET or MISSED and a
Markdown block to paste into BENCHMARKS.md; writes them to build/bench/h2-results.txt (raw
runs in h2-results.json, the block alone in h2-results-block.md).

Time: about 3.5 minutes at the defaults (3 rounds, 5 s windows) on a quiet machine, more when
other work makes runs noisy (each is run again once) or the quiet waits; --quick (1 round, 2 s
windows) about 1.5. connectd: `make` in the work tree (a copy of the binary is used), --connectd-commit C
for a clean build of commit C in a temporary git worktree, or --connectd-bin. As root, missing
Debian packages (libssl-dev, libnghttp2-dev, openssl) are installed as bench/run does.

Every load run is bounded in time (loadgen's own bounds, plus timeouts here; --max-minutes for
the whole run); only loopback addresses are used; only processes this script started are
signalled, by pid; the temp dir is removed at the end. Options: see --help.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (add_connectd_args, refuse_busy_ports_and_trap_sigterm,  # noqa: E402
                      ROOT, add_noise_args, build_tools, cell, cmd_out,
                      connectd_binary, cpu_model, env, fmt, md_table, med, repo_state,
                      verdict, wait_quiet)
import tls  # noqa: E402  (its Bench: processes, the check, loadgen runs; its certificate)

VARIANTS = ["h2", "http1", "http1_resumed"]
LABEL = {"h2": "h2, 1 connection", "http1": "HTTP/1.1 TLS", "http1_resumed": "HTTP/1.1 TLS resumed"}
VARIANT_ARGS = {"h2": ["--h2"], "http1": [], "http1_resumed": ["--tls-resume"]}
FIGURES_ALL = ["hs", "idle_100", "idle_1000", "tput_up", "tput_down"]
TARGET_MEM = 1.0   # h2 / http1, RSS per idle tunnel: no more
TARGET_TPUT = 0.8  # h2 / http1, aggregate throughput: within 20%


def log(msg):
    print(f"h2-bench: {msg}", file=sys.stderr, flush=True)


tls.log = log  # tls.Bench's progress lines under this script's prefix


def ensure_packages():
    """bench/tls.py's packages (libssl-dev, openssl) and libnghttp2-dev (loadgen --h2), installed
    as root with apt-get when missing; otherwise the command is printed and the run stops."""
    tls.ensure_packages(["connectd"])
    if not shutil.which("dpkg-query") or tls.pkg_installed("libnghttp2-dev"):
        return
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "libnghttp2-dev"]
    if os.geteuid() != 0:
        sys.exit(f"h2-bench: libnghttp2-dev is missing; as root: apt-get update && {' '.join(cmd)}")
    log("installing libnghttp2-dev")
    envp = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(cmd, env=envp, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=envp, capture_output=True, timeout=600)
        r = subprocess.run(cmd, env=envp, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"h2-bench: {' '.join(cmd)} failed: {(r.stdout + r.stderr).strip()[-300:]}")


class H2Bench(tls.Bench):
    """bench/tls.py's Bench with connectd alone: one TLS listener offering h2 and http/1.1, and
    the variants as loadgen options on it."""

    def __init__(self, a, tmp, bin_dir, binary, cert, key):
        super().__init__(a, tmp, bin_dir, binary, None, cert, key)
        self.PORT = {"connectd": a.port_base + 10}
        self.AUX = {}  # no plain listener

    def connectd_conf(self):
        path = os.path.join(self.tmp, "connectd.ini")
        streams = max(100, self.a.tunnels)
        http2 = "" if streams == 100 else \
            f"[http2]\n; more tunnels than the default 100 streams a connection\n" \
            f"max_concurrent_streams = {streams}\n"
        with open(path, "w") as f:
            f.write(f"""; connectd: one TLS listener offering HTTP/2 and HTTP/1.1 (ALPN), the target
; ports only, loopback destinations allowed, no logging (bench.py's fair configuration).
[server]
listen = 127.0.0.1:{self.PORT['connectd']} tls
; as root the bench keeps root; otherwise this is ignored
user = root
[tls]
certificate = {self.cert}
key = {self.key}
min_version = 1.2
alpn = h2, http/1.1
session_tickets = yes
{http2}[access]
allow_ports = {self.P_SINK}-{self.P_ECHO}
deny_private = no
[dns]
; the targets are IP literals; any query would stay on loopback
servers = 127.0.0.1
[limits]
max_connections = 10000
[log]
level = warn
access_log = off
""")
        return path

    def check_h2(self):
        """ALPN: offered h2 and http/1.1, connectd picks h2; then 20 CONNECT streams over one
        connection with loadgen --h2, the certificate verified, each echoing 64 bytes. Raises
        tls.Skip when either fails."""
        port = self.PORT["connectd"]
        ctx = ssl.create_default_context(cafile=self.cert)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    alpn = s.selected_alpn_protocol()
        except (OSError, ssl.SSLError) as e:
            alpn = f"error: {e}"
        if alpn != "h2":
            self.checks.append(f"FAILED connectd: offered h2 and http/1.1, it selected {alpn}")
            raise tls.Skip(f"ALPN h2 not selected ({alpn}); {self.last_words('connectd')}")
        argv = [self.lg, "latency", "--tls", "--h2", "--cacert", self.cert, "--count", "20",
                "--warmup-count", "0", "--proxy", f"127.0.0.1:{port}", "--target",
                f"127.0.0.1:{self.P_ECHO}", "--timeout", "20"]
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=40)
        try:
            res = json.loads(r.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            res = {}
        if r.returncode != 0 or res.get("errors") or res.get("samples") != 20:
            said = res.get("first_error") or r.stderr.strip()[-200:]
            msg = f"h2 check: rc={r.returncode} {said}"
            self.checks.append(f"FAILED connectd: {msg}")
            raise tls.Skip(f"{msg}; {self.last_words('connectd')}")
        msg = (f"connectd: offered h2 and http/1.1, selects h2; 20 CONNECT streams over one h2 "
               f"connection, certificate verified, 64-byte echo each: yes (p50 "
               f"{res['p50_ms']:.3f} ms stream -> 200; the proxy allows "
               f"{res.get('h2_max_concurrent_streams')} concurrent streams)")
        self.checks.append("OK " + msg)
        log("check OK: " + msg)

    def run(self, variant, figure, rep, args, timeout, fresh=False):
        """One loadgen run of a variant (bench/tls.py's noise check and rerun included)."""
        res = self.loadgen("connectd", f"{figure}/{variant}", rep, args + VARIANT_ARGS[variant],
                           timeout, fresh)
        if res is not None:
            res["variant"] = variant  # the same dict as in self.runs
        return res

    def interleaved_variants(self, variants, figure, args_of, timeout, take, fresh=False):
        for rep in range(1, self.a.repeats + 1):
            k = (rep - 1) % len(variants)
            for v in variants[k:] + variants[:k]:
                res = self.run(v, figure, rep, args_of(v), timeout, fresh)
                if res:
                    take(v, res)

    def run_figures(self, figures, v):
        a = self.a
        c, n = a.concurrency, a.tunnels
        for fig in figures:
            log(f"== {fig}")
            wait_quiet(a.other_load, min(a.quiet_wait, a.figure_quiet_wait), log)
            if fig == "hs":
                variants = ["h2", "http1", "http1_resumed"]
                base = ["handshakes", "--concurrency", str(c), "--target",
                        f"127.0.0.1:{self.P_ECHO}"]
                if a.warmup_round:  # untimed, as bench/tls.py
                    for var in variants:
                        self.loadgen_once("connectd", f"hs-warmup/{var}", 0,
                                          base + ["--seconds", "2", "--warmup", "0.5"] +
                                          VARIANT_ARGS[var], 40)

                def take(var, res):
                    self.add(v, f"tunnel set-ups/s at {c} concurrent", var, res["per_s"])
                    self.add(v, "proxy CPU us per tunnel set-up", var,
                             res["cpu_us_per_handshake"])
                    self.add(v, "set-up p50 under load (ms)", var, res["lat_p50_ms"])
                    self.add(v, "set-up p99 under load (ms)", var, res["lat_p99_ms"])
                    self.add(v, "loadgen CPU during set-ups (cores)", var, res["loadgen_cores"])
                self.interleaved_variants(
                    variants, fig, lambda var: base + ["--seconds", str(a.seconds), "--warmup",
                                                       str(a.warmup)],
                    a.warmup + a.seconds + 40, take)
            elif fig.startswith("idle_"):
                k = 1 if fig == "idle_100" else 10
                total = n * k

                def args_of(var, total=total, k=k):
                    return ["idle", "--tunnels", str(total), "--threads", str(k), "--target",
                            f"127.0.0.1:{self.P_ECHO}", "--hold", str(a.idle_hold),
                            "--open-timeout", "60"]

                def take(var, res, total=total):
                    self.add(v, f"idle: RSS KiB per tunnel, {total} tunnels", var,
                             res["kib_per_tunnel"])
                    self.add(v, f"idle: fds per tunnel, {total} tunnels", var,
                             res["fds_per_tunnel"])
                    if res["established"] < total:
                        self.notes.append(f"{LABEL[var]} held only {res['established']} of "
                                          f"{total} idle tunnels")
                # A fresh process for each run, so the RSS baseline is not a previous run's heap.
                self.interleaved_variants(["h2", "http1"], fig, args_of, 60 + a.idle_hold + 60,
                                          take, fresh=True)
                try:  # leave it fresh for whatever runs next
                    self.restart("connectd")
                except tls.Skip as e:
                    self.notes.append(f"connectd: restart after {fig}: {e}")
            elif fig.startswith("tput_"):
                d = fig.split("_")[1]

                def args_of(var, d=d):
                    return ["throughput", "--tunnels", str(n), "--dir", d, "--target",
                            f"127.0.0.1:{self.P_SINK if d == 'up' else self.P_SOURCE}",
                            "--seconds", str(a.seconds), "--warmup", str(a.warmup), "--threads",
                            "1"]

                def take(var, res, d=d):
                    self.add(v, f"throughput {n} tunnels {d} (MB/s)", var, res["mb_per_s"])
                    self.add(v, f"{d}: slowest tunnel (MB/s)", var,
                             res.get("tunnel_mb_per_s_min"))
                    self.add(v, f"{d}: median tunnel (MB/s)", var,
                             res.get("tunnel_mb_per_s_median"))
                    self.add(v, f"{d}: fastest tunnel (MB/s)", var,
                             res.get("tunnel_mb_per_s_max"))
                    self.add(v, f"{d}: Jain's fairness index", var, res.get("jain_fairness"))
                    self.add(v, f"proxy CPU s per GB, {d}", var, res["cpu_s_per_gb"])
                    self.add(v, f"loadgen CPU, {d} (cores)", var, res["loadgen_cores"])
                self.interleaved_variants(["h2", "http1"], fig, args_of,
                                          a.warmup + a.seconds + 40, take)


# ---- the report --------------------------------------------------------------------------------

ROW_ORDER = ["tunnel set-ups", "proxy CPU us per tunnel", "set-up p50", "set-up p99",
             "loadgen CPU during", "idle: RSS", "idle: fds"]


def row_key(row):
    """The set-up rows, the idle rows, then per direction: throughput, the spread, CPU."""
    for i, k in enumerate(ROW_ORDER):
        if row.startswith(k):
            return (i, 0, row)
    for j, d in enumerate(("up", "down")):
        detail = [f"{d}: slowest", f"{d}: median", f"{d}: fastest", f"{d}: Jain",
                  f"proxy CPU s per GB, {d}", f"loadgen CPU, {d}"]
        if row.startswith("throughput") and row.endswith(f" {d} (MB/s)"):
            return (len(ROW_ORDER) + j, 0, row)
        for i, k in enumerate(detail):
            if row.startswith(k):
                return (len(ROW_ORDER) + j, i + 1, row)
    return (99, 0, row)


def ratio(x, y):
    return None if x is None or not y else x / y


def report_table(values):
    present = [var for var in VARIANTS if any(var in per for per in values.values())]
    heads = ["figure"] + [LABEL[var] for var in present]
    if "h2" in present and "http1" in present:
        heads.append(f"{LABEL['h2']} / {LABEL['http1']}")
    if "h2" in present and "http1_resumed" in present:
        heads.append(f"{LABEL['h2']} / {LABEL['http1_resumed']}")
    rows = []
    for row in sorted(values, key=row_key):
        per = values[row]
        cells = [row] + [cell(per.get(var, [])) for var in present]
        mh = med(per.get("h2", []))
        for other in ("http1", "http1_resumed"):
            if "h2" in present and other in present:
                q = ratio(mh, med(per.get(other, [])))
                cells.append("-" if q is None or "loadgen" in row or "Jain" in row
                             else f"{q:.2f}")
        rows.append(cells)
    return md_table(heads, rows)


def targets(values, tunnels):
    """Per-tunnel memory over h2 <= over HTTP/1.1 TLS; aggregate throughput h2 / HTTP/1.1 TLS
    >= 0.8, up and down."""
    out = []

    def m(row, var):
        return med(values.get(row, {}).get(var, []))

    for row in sorted((r for r in values if r.startswith("idle: RSS")), key=row_key):
        h, t = m(row, "h2"), m(row, "http1")
        q = ratio(h, t)
        if q is None:
            out.append(f"- {row}: not measured")
            continue
        out.append(f"- {row}: h2 {fmt(h)} KiB vs HTTP/1.1 TLS {fmt(t)} KiB = {q:.2f} (target "
                   f"<= {TARGET_MEM:g}): {verdict(h <= t)}")
    for d in ("up", "down"):
        row = f"throughput {tunnels} tunnels {d} (MB/s)"
        h, t = m(row, "h2"), m(row, "http1")
        q = ratio(h, t)
        if q is None:
            out.append(f"- {row}: not measured")
            continue
        cpu = ratio(m(f"proxy CPU s per GB, {d}", "h2"), m(f"proxy CPU s per GB, {d}", "http1"))
        jh, jt = m(f"{d}: Jain's fairness index", "h2"), m(f"{d}: Jain's fairness index", "http1")
        out.append(f"- {row}: h2 {fmt(h)} vs HTTP/1.1 TLS {fmt(t)} = {q:.2f} (target >= "
                   f"{TARGET_TPUT:g}): {verdict(q >= TARGET_TPUT)}" +
                   (f"; proxy CPU per GB h2/HTTP/1.1 {cpu:.2f}" if cpu is not None else "") +
                   (f"; Jain's index h2 {jh:.3f}, HTTP/1.1 {jt:.3f}"
                    if jh is not None and jt is not None else ""))
    return out or ["- nothing measured"]


# ---- main --------------------------------------------------------------------------------------

QUICK = {"repeats": 1, "seconds": 2.0, "warmup": 0.5, "idle_hold": 1.0, "quiet_wait": 30.0}
NORMAL = {"repeats": 3, "seconds": 5.0, "warmup": 1.0, "idle_hold": 1.0, "quiet_wait": 120.0}
ENV = {"repeats": "REPEATS", "seconds": "BENCH_SECONDS", "warmup": "BENCH_WARMUP",
       "idle_hold": "H2_IDLE_HOLD", "quiet_wait": "BENCH_QUIET_WAIT"}


def parse_args():
    ap = argparse.ArgumentParser(
        description="Tunnels as CONNECT streams over one HTTP/2 connection against HTTP/1.1 TLS "
                    "connections, connectd alone (see the docstring). Defaults: 3 rounds, 5 s "
                    "windows; --quick: 1 round, 2 s windows.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 round, 2 s windows after 0.5 s, 30 s quiet wait (explicit options "
                         "still win)")
    ap.add_argument("--repeats", type=int, help="interleaved rounds [REPEATS] (3)")
    ap.add_argument("--seconds", type=float, help="measured window [BENCH_SECONDS] (5)")
    ap.add_argument("--warmup", type=float, help="warm-up before the window [BENCH_WARMUP] (1)")
    ap.add_argument("--tunnels", type=int, default=int(env("H2_TUNNELS", 100)),
                    help="tunnels of the throughput and idle figures (h2: streams on one "
                         "connection; over 100 raises connectd's max_concurrent_streams to it) "
                         "[H2_TUNNELS]")
    ap.add_argument("--concurrency", type=int, default=int(env("H2_CONCURRENCY", 100)),
                    help="tunnel set-ups in flight [H2_CONCURRENCY]")
    ap.add_argument("--idle-hold", type=float, help="seconds the idle tunnels are held "
                                                    "[H2_IDLE_HOLD] (1)")
    ap.add_argument("--no-warmup-round", dest="warmup_round", action="store_false",
                    default=env("BENCH_WARMUP_ROUND", "1") == "1",
                    help="skip the untimed 2 s set-up round per variant [BENCH_WARMUP_ROUND=0]")
    ap.add_argument("--figures", default=env("H2_FIGURES", ",".join(FIGURES_ALL)),
                    help="of " + ",".join(FIGURES_ALL) + ", in the order they run [H2_FIGURES]")
    ap.add_argument("--verify", action="store_true", default=env("H2_VERIFY", "0") == "1",
                    help="loadgen verifies the certificate on every handshake (--cacert); the "
                         "checks before measuring always do [H2_VERIFY=1]")
    ap.add_argument("--suites", default=env("TLS_SUITES", ""),
                    help="loadgen offers only these TLS 1.3 suites [TLS_SUITES]")
    ap.add_argument("--port-base", type=int, default=int(env("BENCH_PORT_BASE", 18600)),
                    help="loopback ports used: base+1..3 (target), base+10 (connectd) "
                         "[BENCH_PORT_BASE]")
    add_noise_args(ap)  # --other-load, --noisy-retries, --quiet-wait
    ap.set_defaults(quiet_wait=None)
    ap.add_argument("--figure-quiet-wait", type=float,
                    default=float(env("H2_FIGURE_QUIET_WAIT", 30)),
                    help="before each figure, wait at most this long for a quiet machine (the "
                         "wait before the first is --quiet-wait) [H2_FIGURE_QUIET_WAIT]")
    ap.add_argument("--max-minutes", type=float, default=float(env("H2_MAX_MINUTES", 30)),
                    help="no loadgen run starts after this many minutes [H2_MAX_MINUTES]")
    ap.add_argument("--results", default=env("H2_RESULTS", ""),
                    help="output file (default build/bench/h2-results.txt) [H2_RESULTS]")
    add_connectd_args(ap, "H2_CONNECTD_COMMIT")
    a = ap.parse_args()
    base = QUICK if a.quick else NORMAL
    for k, d in base.items():
        if getattr(a, k) is None:
            e = os.environ.get(ENV[k])
            setattr(a, k, type(d)(e) if e else d)
    return a


def main():
    a = parse_args()
    figures = [f for f in a.figures.split(",") if f]
    for f in figures:
        if f not in FIGURES_ALL:
            sys.exit(f"h2-bench: unknown figure {f!r}")
    if not (0 < a.repeats <= 100 and 0 < a.seconds <= 600 and 0 <= a.warmup <= 60 and
            0 < a.concurrency <= 10000 and 0 < a.tunnels <= 900 and 0 <= a.idle_hold <= 60 and
            1024 < a.port_base <= 65400 and 0 <= a.quiet_wait <= 3600 and
            0 <= a.noisy_retries <= 5 and 0 < a.max_minutes <= 600):
        sys.exit("h2-bench: an option is out of range")
    ensure_packages()
    bin_dir = os.path.join(ROOT, "build", "bench")
    results = a.results or os.path.join(bin_dir, "h2-results.txt")

    tmp = tempfile.mkdtemp(prefix="connectd-h2-bench-")
    binary, built = connectd_binary(a.connectd_bin, a.connectd_commit, tmp, "h2-bench", log)
    binary = os.path.abspath(binary)
    if built.startswith("make"):
        # A snapshot: the work tree may be rebuilt while this runs (and connectd is restarted
        # for the idle figures).
        snap = os.path.join(tmp, "connectd-worktree")
        shutil.copy2(binary, snap)
        built += f" at {time.strftime('%H:%M:%S')}, copied to the temp dir"
        binary = snap
    build_tools(bin_dir, log, beside="h2")
    cert, key, fingerprint = tls.make_cert(tmp)
    b = H2Bench(a, tmp, bin_dir, binary, cert, key)
    stop_req = refuse_busy_ports_and_trap_sigterm(b.ports(), tmp, "h2-bench")
    t_start = time.monotonic()
    commit, dirty = repo_state()
    values = {}
    quiet = None
    fatal = None
    try:
        quiet = wait_quiet(a.other_load, a.quiet_wait, log)
        b.start_target(lifetime=min(3600, a.max_minutes * 60 + 600))
        try:
            b.start_system("connectd")
            b.check("connectd")  # HTTP/1.1 over TLS (ALPN http/1.1 offered), and resumption
            b.check_h2()
        except tls.Skip as e:
            raise SystemExit(f"h2-bench: connectd cannot be measured: {e}")
        log(f"{a.repeats} rounds, {a.seconds:g} s windows after {a.warmup:g} s; configs and "
            f"logs in {tmp}")
        b.run_figures(figures, values)
    except KeyboardInterrupt:
        log("interrupted: stopping what this run started")
    except SystemExit as e:
        fatal = str(e)
        log(f"{fatal}; stopping what this run started")
        b.notes.append(f"STOPPED EARLY: {fatal}")
    finally:
        b.started.stop_all()
    took = time.monotonic() - t_start

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    ver = cmd_out([binary, "-V"])
    ver = ver if ver.startswith("connectd") else f"connectd {ver}"
    wt = dirty and built.startswith("make")  # a build of the work tree as it stands
    versions = [f"{ver} ({built}; HEAD {commit}" +
                (f"; src/include modified in the work tree: {', '.join(dirty)}" if wt else "") +
                ")", cmd_out(["openssl", "version"])]
    ng = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libnghttp2-14"],
                        capture_output=True, text=True).stdout.strip()
    versions.append(f"loadgen's HTTP/2: libnghttp2 {ng or '?'}")
    short = f"{ver} ({'work tree at ' if wt else ''}{commit}), " \
            f"{' '.join(versions[1].split()[:2])}, libnghttp2 {ng or '?'}"
    neg = sorted({f"{r.get('tls_version')} {r.get('tls_cipher')} {r.get('tls_group')}"
                  for r in b.runs if r.get("tls_cipher")})
    peer_max = sorted({r.get("h2_max_concurrent_streams") for r in b.runs if r.get("h2")})
    method = (f"{a.repeats} interleaved round(s) (the order rotated each round); {a.seconds:g} s "
              f"windows after {a.warmup:g} s warm-up; {a.tunnels} tunnels (h2: streams of one "
              f"connection, connectd allows {'/'.join(str(p) for p in peer_max) or '?'} at once; "
              f"HTTP/1.1: one TLS connection each), one loadgen thread; set-ups {a.concurrency} "
              f"at a time; loadgen's h2 windows 1 MiB per stream, 16 MiB per connection; "
              f"negotiated {' / '.join(neg) or '-'}; 1 MB = 10^6 bytes; cells are median "
              f"(min-max), ratios are of medians; took {took:.0f} s")
    text = [f"# connectd: tunnels over one HTTP/2 connection against HTTP/1.1 TLS connections, "
            f"{now}", ""]
    text += [f"- {v}" for v in versions]
    text += [f"- machine: {os.cpu_count()} x {cpu_model()}, kernel {platform.release()}, hard "
             f"open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}",
             f"- certificate: ECDSA P-256, self-signed (SHA-256 {fingerprint[:23]}...)",
             f"- method: {method}",
             f"- other work on the machine at the start: "
             f"{'-' if quiet is None else f'{quiet:.2f} cores'}", ""]
    table = report_table(values) if values else "(nothing measured)"
    tg = targets(values, a.tunnels)
    text += [table, "", "Targets (h2 against HTTP/1.1 TLS, medians of this run):"] + tg
    if b.checks:
        text += ["", "Checks:"] + [f"- {c}" for c in b.checks]
    try:  # what connectd said, before the dir goes
        with open(os.path.join(tmp, "connectd.err"), errors="replace") as f:
            said = [ln.rstrip() for ln in f if ln.strip() and not any(
                x in ln for x in ("carries only", "running as root"))]
    except OSError:
        said = []
    if said:
        b.notes.append(f"connectd.err has {len(said)} line(s), the last: {said[-1][-300:]}")
    errs = [r for r in b.runs if r.get("errors") or r.get("rc")]
    if errs:
        b.notes.append(f"{len(errs)} loadgen run(s) counted errors or failed, e.g. "
                       f"{errs[0].get('label')}: errors={errs[0].get('errors')} "
                       f"first_error={errs[0].get('first_error')!r}")
    if b.notes:
        text += ["", "Notes:"] + [f"- {n}" for n in b.notes]

    block = [f"### HTTP/2 CONNECT: {a.tunnels} tunnels over one h2 connection against "
             f"{a.tunnels} HTTP/1.1 TLS connections (`make bench-h2` = bench/h2.py, "
             f"{a.repeats} round{'s' if a.repeats != 1 else ''})", "",
             f"Run {now}: {short}. {method}.", "", table, "",
             "Targets (h2 against HTTP/1.1 TLS):", ""] + tg
    block_text = "\n".join(block) + "\n"
    report = "\n".join(text) + "\n"
    print(report)
    print("---- Markdown block for BENCHMARKS.md ----")
    print(block_text)
    print("---- end of block ----")
    os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
    with open(results, "w") as f:
        f.write(report)
    stem = os.path.splitext(results)[0]
    with open(stem + "-block.md", "w") as f:
        f.write(block_text)
    with open(stem + ".json", "w") as f:
        json.dump({"args": vars(a), "connectd": binary, "built": built, "commit": commit,
                   "values": values, "runs": b.runs, "checks": b.checks, "notes": b.notes,
                   "took_s": round(took, 1)}, f, indent=1, default=str)
    log(f"results written to {results} (block: {stem}-block.md, raw: {stem}.json); "
        f"took {took:.0f} s")
    shutil.rmtree(tmp, ignore_errors=True)
    if stop_req:
        return 130
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
