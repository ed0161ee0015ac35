#!/usr/bin/env python3
"""bench.py: run the connectd side-by-side benchmark (started by bench/run; stdlib only).

Starts, on loopback ports of its own (BENCH_PORT_BASE + n):
  target     build/bench/target: sink (+1), source (+2), echo (+3)
  connectd   (+48), tinyproxy (+49), squid (+50), each with a config written to a temp dir,
             and, when asked for, the ceiling relay build/bench/relay (+51)
and runs every figure for each system interleaved (direct, connectd, tinyproxy, squid, then
again), REPEATS times, then prints medians, min-max and connectd's ratios to each other system,
and the targets of issue 3 met or missed. Only processes this script started are stopped, by
their pid. Every load run is bounded in time by loadgen itself and by a timeout here.
See BENCHMARKS.md for what each figure means.
"""
import argparse
import datetime
import json
import os
import platform
import pwd
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
# FD_LIMIT: this machine's hard limit per process; never asked above the hard limit
from benchlib import (FD_LIMIT, Started, cmd_out, machine_busy_s, med, port_free,  # noqa: E402
                      wait_port, _child_setup)


def env_int(name, default):
    return int(os.environ.get(name, default))


def env_float(name, default):
    return float(os.environ.get(name, default))


REPEATS = env_int("REPEATS", 3)
SECONDS = env_float("BENCH_SECONDS", 5)
WARMUP = env_float("BENCH_WARMUP", 1)
LAT_COUNT = env_int("LATENCY_COUNT", 2000)
HS_CONC = env_int("HANDSHAKE_CONCURRENCY", 64)
IDLE_N = env_int("IDLE_TUNNELS", 9500)
IDLE_N_PEERS = env_int("IDLE_TUNNELS_PEERS", IDLE_N)
IDLE_HOLD = env_float("IDLE_HOLD", 3)
PORT_BASE = env_int("BENCH_PORT_BASE", 18080)
THREADS_MULTI = env_int("LOADGEN_THREADS_MULTI", 2)
OTHER_LOAD_WARN = env_float("BENCH_OTHER_LOAD", 0.25)  # cores of foreign work that spoil a run
NOISY_RETRIES = env_int("BENCH_NOISY_RETRIES", 1)  # runs again when others used more than that
QUIET_WAIT = env_float("BENCH_QUIET_WAIT", 120)  # seconds to wait for a quiet machine first
PROFILE = os.environ.get("BENCH_PROFILE", "0") == "1"
# "ceiling" (opt-in) is bench/relay.c: a bare splice relay, a thread per direction, no policy;
# it runs in the throughput figures only (its handshake path is a thread per connection).
SYSTEMS_ALL = ["direct", "connectd", "tinyproxy", "squid", "ceiling"]
SYSTEMS_DEFAULT = ["direct", "connectd", "tinyproxy", "squid"]
SYSTEMS = [s for s in os.environ.get("BENCH_SYSTEMS", ",".join(SYSTEMS_DEFAULT)).split(",") if s]
PROXIES = [s for s in SYSTEMS if s != "direct"]
# Handshakes and latency first: right after the throughput figures every proxy's handshake cost
# was 15-40% higher for half a minute or more (kernel aftermath of moving ~100 GB), which would
# fall on whoever runs first in the round.
FIGURES_ALL = ["handshakes", "latency", "idle", "tput_up_1", "tput_down_1", "tput_up_8",
               "tput_down_8"]
FIGURES = [f for f in os.environ.get("BENCH_FIGURES", ",".join(FIGURES_ALL)).split(",") if f]

P_SINK, P_SOURCE, P_ECHO = PORT_BASE + 1, PORT_BASE + 2, PORT_BASE + 3
PROXY_PORT = {"connectd": PORT_BASE + 48, "tinyproxy": PORT_BASE + 49, "squid": PORT_BASE + 50,
              "ceiling": PORT_BASE + 51}
WARMUP_ROUND = os.environ.get("BENCH_WARMUP_ROUND", "1") == "1"

for s in SYSTEMS:
    if s not in SYSTEMS_ALL:
        sys.exit(f"bench: unknown system {s!r} in BENCH_SYSTEMS")
for f in FIGURES:
    if f not in FIGURES_ALL:
        sys.exit(f"bench: unknown figure {f!r} in BENCH_FIGURES")


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---- child processes, CPU accounting: in benchlib.py ------------------------------------------

def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


# ---- configurations --------------------------------------------------------------------------

def write_configs(d):
    root = os.geteuid() == 0
    paths = {}
    paths["connectd"] = os.path.join(d, "connectd.ini")
    # Default (key absent) is one worker; CONNECTD_WORKERS=2 measures the SO_REUSEPORT workers
    # (loadgen sums the master and its workers).
    w = os.environ.get("CONNECTD_WORKERS", "")
    workers = f"workers = {w}\n" if w else ""
    with open(paths["connectd"], "w") as f:
        f.write(f"""; connectd: the target ports only, loopback destinations allowed, no logging.
[server]
listen = 127.0.0.1:{PROXY_PORT['connectd']}
; as root the bench keeps root (the other proxies get the same); otherwise this is ignored
user = root
{workers}[access]
allow_ports = {P_SINK}-{P_ECHO}
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
    tlog = os.path.join(d, "tinyproxy.log")
    paths["tinyproxy"] = os.path.join(d, "tinyproxy.conf")
    with open(paths["tinyproxy"], "w") as f:
        if root:  # tinyproxy drops privileges; as root it wants a user to drop to
            f.write("User nobody\nGroup nogroup\n")
        f.write(f"""Listen 127.0.0.1
Port {PROXY_PORT['tinyproxy']}
Timeout 600
MaxClients 10000
LogLevel Critical
LogFile "{tlog}"
Allow 127.0.0.0/8
ConnectPort {P_SINK}
ConnectPort {P_SOURCE}
ConnectPort {P_ECHO}
DisableViaHeader Yes
""")
    slog = os.path.join(d, "squid-cache.log")
    paths["squid"] = os.path.join(d, "squid.conf")
    with open(paths["squid"], "w") as f:
        f.write(f"""# squid: CONNECT to the target ports from localhost, no cache, no access log.
http_port 127.0.0.1:{PROXY_PORT['squid']}
visible_hostname connectd-bench
acl bench_ports port {P_SINK}-{P_ECHO}
acl bench_connect method CONNECT
http_access allow localhost bench_connect bench_ports
http_access deny all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log {slog}
pid_filename none
coredump_dir {d}
logfile_rotate 0
max_filedescriptors {FD_LIMIT}
workers 1
# the targets are IP literals; any query would stay on loopback
dns_nameservers 127.0.0.1
pinger_enable off
client_db off
shutdown_lifetime 1 seconds
""")
    # The daemons write their logs after dropping to their own user.
    for path, user in ((tlog, "nobody"), (slog, "proxy")):
        open(path, "a").close()
        if root:
            try:
                pw = pwd.getpwnam(user)
                os.chown(path, pw.pw_uid, pw.pw_gid)
            except KeyError:
                pass
    os.chmod(d, 0o755)
    return paths


def which(prog):
    return shutil.which(prog, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def proxy_argv(name, conf, bin_dir):
    if name == "ceiling":
        return [os.path.join(bin_dir, "relay"), "--lifetime", "3600", str(PROXY_PORT[name])]
    if name == "connectd":
        return [os.environ["CONNECTD_BIN"], "-c", conf]
    if name == "tinyproxy":
        return [which("tinyproxy"), "-d", "-c", conf]
    return [which("squid"), "-N", "-f", conf]


# ---- runs ------------------------------------------------------------------------------------

class Bench:
    def __init__(self, bin_dir, tmp):
        self.bin_dir = bin_dir
        self.lg = os.path.join(bin_dir, "loadgen")
        self.tg = os.path.join(bin_dir, "target")
        self.tmp = tmp
        self.started = Started()
        self.confs = write_configs(tmp)
        self.runs = []  # every loadgen JSON line, with system, figure and repeat
        self.values = {}  # row -> system -> [values]
        self.notes = []

    def our_cpu_s(self):
        """CPU seconds of the target and the proxies this script runs (with their children)."""
        return self.started.cpu_s()

    def start_target(self, lifetime):
        p = self.started.start("target", [self.tg, "--lifetime", str(int(lifetime)),
                                          f"sink:{P_SINK}", f"source:{P_SOURCE}",
                                          f"echo:{P_ECHO}"],
                               os.path.join(self.tmp, "target.err"))
        if not wait_port(P_ECHO, p, 10):
            raise SystemExit("bench: the target did not start; see " + self.tmp)

    def start_proxy(self, name):
        p = self.started.start(name, proxy_argv(name, self.confs.get(name), self.bin_dir),
                               os.path.join(self.tmp, f"{name}.err"))
        if not wait_port(PROXY_PORT[name], p, 30):
            raise SystemExit(f"bench: {name} did not start; see {self.tmp}/{name}.err")
        time.sleep(0.3)
        return p

    def restart_proxy(self, name):
        self.started.stop(name)
        return self.start_proxy(name)

    def pid(self, name):
        return self.started.procs[name].pid

    def loadgen(self, system, figure, rep, args, timeout):
        """One loadgen run; run again (up to NOISY_RETRIES times) when other work on the machine
        took more than OTHER_LOAD_WARN cores meanwhile. Returns the result, or None."""
        for attempt in range(NOISY_RETRIES + 1):
            res = self.loadgen_once(system, figure, rep, args, timeout)
            if res is None or res["other_load_cores"] <= OTHER_LOAD_WARN:
                break
            if attempt < NOISY_RETRIES:
                log(f"{system:9s} #{rep}: other work took {res['other_load_cores']:.2f} cores; "
                    "running it again")
                if figure == "idle":
                    self.restart_proxy(system)
        if res is not None and res["other_load_cores"] > OTHER_LOAD_WARN:
            self.notes.append(f"{system} {figure} #{rep}: the machine was busy with other work "
                              f"({res['other_load_cores']:.2f} cores on average)")
        return res

    def loadgen_once(self, system, figure, rep, args, timeout):
        argv = [self.lg] + args + ["--label", f"{system}/{figure}/{rep}"]
        if system == "direct":
            argv.append("--direct")
        else:
            proc = self.started.procs.get(system)
            if proc is None or proc.poll() is not None:
                self.notes.append(f"{system} was not running for {figure} #{rep}: restarted")
                self.restart_proxy(system)
            argv += ["--proxy", f"127.0.0.1:{PROXY_PORT[system]}", "--pid", str(self.pid(system))]
        t0, busy0, ours0, kids0 = time.monotonic(), machine_busy_s(), self.our_cpu_s(), \
            children_cpu_s()
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=timeout, preexec_fn=_child_setup)
        except subprocess.TimeoutExpired:
            self.notes.append(f"{system} {figure} #{rep}: loadgen timed out")
            log(f"{system:9s} {figure} #{rep}: TIMEOUT")
            return None
        wall = time.monotonic() - t0
        # Whatever the machine did beyond the target, the proxies and this loadgen, in cores.
        other = ((machine_busy_s() - busy0) - (self.our_cpu_s() - ours0) -
                 (children_cpu_s() - kids0)) / wall
        human = r.stderr.strip().splitlines()
        log(f"{system:9s} #{rep}: " + (" /".join(h.strip() for h in human) if human
                                       else f"(no output, rc={r.returncode})") +
            f" [other load {other:.2f} cores]")
        res = benchlib.loadgen_json(r, self.notes, f"{system} {figure} #{rep}")
        if res is None:
            return None
        res.update(system=system, figure=figure, repeat=rep, rc=r.returncode,
                   other_load_cores=round(other, 3))
        self.runs.append(res)
        return benchlib.loadgen_checked(r, res, self.notes, f"{system} {figure} #{rep}")

    def add(self, row, system, value):
        if value is None or value < 0:
            return
        self.values.setdefault(row, {}).setdefault(system, []).append(value)

    # ---- figures ----

    def fig_throughput(self, fig, tunnels, up):
        t = "" if tunnels == 1 else "s"
        row = f"throughput {tunnels} tunnel{t} {'up' if up else 'down'} (MB/s)"
        cpurow = f"proxy CPU s per GB, {tunnels} tunnel{t} {'up' if up else 'down'}"
        self.values.setdefault(row, {})
        self.values.setdefault(cpurow, {})
        args = ["throughput", "--tunnels", str(tunnels), "--dir", "up" if up else "down",
                "--target", f"127.0.0.1:{P_SINK if up else P_SOURCE}", "--seconds", str(SECONDS),
                "--warmup", str(WARMUP), "--threads", str(min(tunnels, THREADS_MULTI))]
        for rep in range(1, REPEATS + 1):
            for s in SYSTEMS:
                res = self.loadgen(s, fig, rep, args, WARMUP + SECONDS + 40)
                if res:
                    self.add(row, s, res["mb_per_s"])
                    if s != "direct":
                        self.add(cpurow, s, res["cpu_s_per_gb"])

    def fig_handshakes(self):
        row = f"handshakes/s at {HS_CONC} concurrent"
        cpurow = "proxy CPU us per handshake"
        self.values.setdefault(row, {})
        self.values.setdefault(cpurow, {})
        args = ["handshakes", "--concurrency", str(HS_CONC), "--target", f"127.0.0.1:{P_ECHO}",
                "--seconds", str(SECONDS), "--warmup", str(WARMUP)]
        systems = [s for s in SYSTEMS if s != "ceiling"]
        if WARMUP_ROUND:
            # The first handshake-heavy run after a pause was up to 30% slower and costlier per
            # handshake, whoever ran it (kernel socket caches growing, it seems): one short
            # untimed round for every system first, so that repeat 1 does not pay for it.
            for s in systems:
                self.loadgen_once(s, "handshakes-warmup", 0,
                                  ["handshakes", "--concurrency", str(HS_CONC), "--target",
                                   f"127.0.0.1:{P_ECHO}", "--seconds", "2", "--warmup", "0.5"],
                                  40)
        for rep in range(1, REPEATS + 1):
            for s in systems:
                res = self.loadgen(s, "handshakes", rep, args, WARMUP + SECONDS + 40)
                if res:
                    self.add(row, s, res["per_s"])
                    if s != "direct":
                        self.add(cpurow, s, res["cpu_us_per_handshake"])

    def fig_latency(self):
        r50, r99 = "latency p50, 1 at a time (ms)", "latency p99, 1 at a time (ms)"
        self.values.setdefault(r50, {})
        self.values.setdefault(r99, {})
        args = ["latency", "--concurrency", "1", "--count", str(LAT_COUNT),
                "--target", f"127.0.0.1:{P_ECHO}", "--timeout", "120"]
        for rep in range(1, REPEATS + 1):
            for s in SYSTEMS:
                if s == "ceiling":
                    continue
                res = self.loadgen(s, "latency", rep, args, 150)
                if res:
                    self.add(r50, s, res["p50_ms"])
                    self.add(r99, s, res["p99_ms"])

    def fig_idle(self):
        rows = {"kib": "idle: RSS KiB per tunnel", "fds": "idle: fds per tunnel",
                "cpu": f"idle: proxy CPU s over {IDLE_HOLD:g} s hold", "held": "idle: tunnels held"}
        for r in rows.values():
            self.values.setdefault(r, {})
        for rep in range(1, REPEATS + 1):
            for s in PROXIES:
                if s == "ceiling":
                    continue
                n = IDLE_N if s == "connectd" else IDLE_N_PEERS
                # A fresh process for each run, so the RSS baseline is not a previous run's heap.
                self.restart_proxy(s)
                args = ["idle", "--tunnels", str(n), "--target", f"127.0.0.1:{P_ECHO}",
                        "--hold", str(IDLE_HOLD)]
                res = self.loadgen(s, "idle", rep, args, 60 + IDLE_HOLD + 60)
                if res is None:
                    continue
                self.add(rows["kib"], s, res["kib_per_tunnel"])
                self.add(rows["fds"], s, res["fds_per_tunnel"])
                self.add(rows["cpu"], s, res["idle_cpu_s"])
                self.add(rows["held"], s, res["established"])
                if res["established"] < n:
                    self.notes.append(f"{s} held only {res['established']} of {n} idle tunnels")
        for s in PROXIES:  # leave each proxy fresh for whatever runs next
            self.restart_proxy(s)

    def profile(self):
        """strace -c -f over 10,000 handshakes through connectd (64 at a time): syscalls per
        tunnel. (The proxy CPU per handshake, without strace, is a row of the table.)"""
        out = {}
        n = 10000
        p = self.restart_proxy("connectd")
        sfile = os.path.join(self.tmp, "strace-c.txt")
        st = subprocess.Popen(["strace", "-c", "-f", "-o", sfile, "-p", str(p.pid)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, preexec_fn=_child_setup)
        time.sleep(1.0)
        subprocess.run([self.lg, "latency", "--concurrency", str(HS_CONC), "--count", str(n),
                        "--warmup-count", "0", "--target", f"127.0.0.1:{P_ECHO}",
                        "--proxy", f"127.0.0.1:{PROXY_PORT['connectd']}", "--timeout", "300"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=330,
                       preexec_fn=_child_setup)
        time.sleep(0.5)
        st.send_signal(signal.SIGINT)
        try:
            st.wait(timeout=20)
        except subprocess.TimeoutExpired:
            st.kill()
            st.wait()
        calls = {}
        try:
            with open(sfile) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 5 and parts[0][0].isdigit() and not line.startswith("-"):
                        name = parts[-1]
                        ncalls = int(parts[3])
                        calls[name] = ncalls
        except OSError:
            pass
        total = calls.pop("total", sum(calls.values()))
        out["strace_total_per_tunnel"] = total / n
        out["strace_per_tunnel"] = {k: round(v / n, 2) for k, v in
                                    sorted(calls.items(), key=lambda kv: -kv[1])}
        self.restart_proxy("connectd")
        return out


# ---- report ----------------------------------------------------------------------------------

def fmt(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def cell(vals):
    if not vals:
        return "-"
    if len(vals) == 1:
        return fmt(vals[0])
    return f"{fmt(med(vals))} ({fmt(min(vals))}-{fmt(max(vals))})"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(values):
    heads = ["figure"] + SYSTEMS + [f"connectd/{s}" for s in SYSTEMS if s != "connectd"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]

    def order(row):  # the table reads throughput first, whatever order the figures ran in
        for i, key in enumerate(("1 tunnel up", "1 tunnel down", "8 tunnels up", "8 tunnels down",
                                 "handshake", "latency", "idle")):
            if key in row:
                return i
        return 99

    for row, per in sorted(values.items(), key=lambda kv: order(kv[0])):
        c = med(per.get("connectd", []))
        cells = [row] + [cell(per.get(s, [])) for s in SYSTEMS]
        for s in SYSTEMS:
            if s == "connectd":
                continue
            r = ratio(c, med(per.get(s, [])))
            cells.append("-" if r is None else f"{r:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(values):
    """Issue 3's targets, judged from the medians of this run."""
    out = []

    def m(row, s):
        return med(values.get(row, {}).get(s, []))

    def judge(name, value, goal, higher_better=True, unit=""):
        if value is None:
            out.append(f"- {name}: not measured")
            return
        ok = value >= goal if higher_better else value <= goal
        head = f"- {name}: {fmt(value)}{unit} (target {'>=' if higher_better else '<='} {goal:g}{unit})"
        if ok:
            out.append(f"{head}: MET")
        elif goal == 0:
            out.append(f"{head}: MISSED")
        else:
            by = (goal - value) / goal * 100 if higher_better else (value - goal) / goal * 100
            out.append(f"{head}: MISSED by {by:.1f}%")

    for tun, goal in ((1, 0.55), (8, 0.65)):
        for d in ("up", "down"):
            row = f"throughput {tun} tunnel{'' if tun == 1 else 's'} {d} (MB/s)"
            judge(f"throughput {tun} {d}, connectd/direct", ratio(m(row, "connectd"),
                                                                  m(row, "direct")), goal)
    hs = f"handshakes/s at {HS_CONC} concurrent"
    judge("handshakes/s, connectd/direct", ratio(m(hs, "connectd"), m(hs, "direct")), 0.45)
    judge("handshakes/s, connectd/tinyproxy", ratio(m(hs, "connectd"), m(hs, "tinyproxy")), 1.4)
    judge("CONNECT->200 p99, 1 at a time", m("latency p99, 1 at a time (ms)", "connectd"), 0.3,
          False, " ms")
    judge("idle RSS per tunnel", m("idle: RSS KiB per tunnel", "connectd"), 1.0, False, " KiB")
    judge("idle fds per tunnel", m("idle: fds per tunnel", "connectd"), 2.0, False)
    judge("idle tunnels held", m("idle: tunnels held", "connectd"), 9500)
    judge(f"idle CPU over {IDLE_HOLD:g} s", m(f"idle: proxy CPU s over {IDLE_HOLD:g} s hold",
                                              "connectd"), 0.0, False, " s")
    for tun in (1, 8):
        for d in ("up", "down"):
            row = f"proxy CPU s per GB, {tun} tunnel{'' if tun == 1 else 's'} {d}"
            judge(f"CPU per GB {tun} {d}, connectd/squid", ratio(m(row, "connectd"),
                                                                 m(row, "squid")), 0.2, False)
    return "\n".join(out)


def connectd_label(commit, dirty):
    binary = os.environ["CONNECTD_BIN"]
    version = cmd_out([binary, "-V"])
    if os.environ.get("CONNECTD_WORKERS"):
        version += f" with workers = {os.environ['CONNECTD_WORKERS']}"
    if os.environ.get("CONNECTD_BUILT") == "1":
        mod = ", src/include modified" if dirty else ""
        return f"{version} (built by this run at commit {commit}{mod})"
    named = os.environ.get("CONNECTD_COMMIT")
    named = f", commit {named}" if named else ""
    return f"{version} ({binary}{named}; the repository's HEAD is {commit})"


def machine():
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) // 1024} MiB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        deb = open("/etc/debian_version").read().strip()
    except OSError:
        deb = "?"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = cmd_out(["git", "-C", repo, "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no",
                            "src", "include"], capture_output=True, text=True).stdout.strip()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": f"{os.cpu_count()} x {model}", "memory": mem,
        "kernel": platform.release(), "debian": deb,
        "connectd": connectd_label(commit, dirty),
        "tinyproxy": cmd_out([which("tinyproxy") or "tinyproxy", "-v"]),
        "squid": cmd_out([which("squid") or "squid", "-v"]),
    }


def wait_quiet():
    """Before starting: wait (at most QUIET_WAIT s) until the machine's other work stays under
    OTHER_LOAD_WARN cores for 3 s; then go on regardless, saying so."""
    benchlib.wait_quiet(OTHER_LOAD_WARN, QUIET_WAIT, log)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin-dir", required=True)
    a = ap.parse_args()
    ports = [P_SINK, P_SOURCE, P_ECHO] + [PROXY_PORT[s] for s in PROXIES]
    busy = [p for p in ports if not port_free(p)]
    if busy:
        sys.exit(f"bench: loopback ports {busy} are in use; set BENCH_PORT_BASE to another base")
    for s in PROXIES:
        if s in ("tinyproxy", "squid") and not which(s):
            sys.exit(f"bench: {s} is not installed (bench/run installs it as root)")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * IDLE_N + 100:
        log(f"warning: the hard open-file limit {hard} is below what {IDLE_N} idle tunnels need")

    wait_quiet()
    tmp = tempfile.mkdtemp(prefix="connectd-bench-")
    b = Bench(a.bin_dir, tmp)
    stop_req = []

    def on_term(sig, frame):
        stop_req.append(sig)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    info = machine()
    prof = None
    try:
        b.start_target(lifetime=3600)
        for s in PROXIES:
            b.start_proxy(s)
        log(f"systems {SYSTEMS}, repeats {REPEATS}, {SECONDS:g} s windows after {WARMUP:g} s "
            f"warm-up; configs and logs in {tmp}")
        for fig in FIGURES:
            log(f"== {fig}")
            if fig.startswith("tput_"):
                _, d, n = fig.split("_")
                b.fig_throughput(fig, int(n), d == "up")
            elif fig == "handshakes":
                b.fig_handshakes()
            elif fig == "latency":
                b.fig_latency()
            elif fig == "idle" and PROXIES:
                b.fig_idle()
        if PROFILE and "connectd" in PROXIES:
            log("== profile of connectd (strace -c -f, 10,000 handshakes)")
            prof = b.profile()
    except KeyboardInterrupt:
        log("interrupted: stopping what this run started")
    finally:
        b.started.stop_all()
    took = time.monotonic() - t0

    text = [f"# connectd benchmark, {info['date']}", ""]
    text += [f"- {k}: {v}" for k, v in info.items() if k != "date"]
    text += [f"- method: {REPEATS} interleaved repeats ({', '.join(SYSTEMS)}), "
             f"{SECONDS:g} s windows after {WARMUP:g} s warm-up; 1 MB = 10^6 bytes; "
             f"cells are median (min-max); ratios are of medians; took {took:.0f} s", ""]
    text.append(table(b.values))
    text += ["", "Targets of issue 3 (connectd, medians of this run):", targets(b.values)]
    if prof:
        text += ["", "Profile of connectd (strace -c -f over 10,000 handshakes, 64 at a time):",
                 f"- syscalls per tunnel: {prof['strace_total_per_tunnel']:.1f}: " +
                 ", ".join(f"{k} {v}" for k, v in list(prof["strace_per_tunnel"].items())[:14])]
    if b.notes:
        text += ["", "Notes:"] + [f"- {n}" for n in b.notes]
    report = "\n".join(text) + "\n"
    print(report)
    res_path = os.environ.get("BENCH_RESULTS") or os.path.join(
        a.bin_dir, "results-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S") + ".md")
    with open(res_path, "w") as f:
        f.write(report)
    with open(os.path.splitext(res_path)[0] + ".json", "w") as f:
        json.dump({"machine": info, "values": b.values, "runs": b.runs, "notes": b.notes,
                   "profile": prof}, f, indent=1)
    log(f"results written to {res_path} (raw runs: {os.path.splitext(res_path)[0]}.json)")
    return 130 if stop_req else 0


if __name__ == "__main__":
    sys.exit(main())
