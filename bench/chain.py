#!/usr/bin/env python3
"""bench/chain.py: connectd through a parent proxy, and the PROXY protocol (stdlib only).

    bench/chain.py [options]          (or: make bench-chain)

Builds connectd (`make` in the work tree; or --connectd-commit C: a clean build of commit C in a
temporary git worktree, e.g. HEAD while the work tree is mid-edit; or --connectd-bin: a given
binary) and the bench tools the way bench/run does (build/bench/target, build/bench/loadgen),
starts its own target on loopback ports of its own (BENCH_PORT_BASE + n, default 18400) and
runs two parts, judged against the issue ("Through a parent (connectd -> connectd): handshakes/s
and throughput next to Squid -> Squid. PROXY protocol on: handshake rate within 3% of off."):

  chain    four systems, interleaved (the order rotates each round), REPEATS rounds:
             connectd        one connectd (bench.py's fair config)
             connectd-chain  a child connectd with `[access] via = p` and `[parent p] address =`
                             a second connectd (the parent, same fair config); both on loopback
             squid           one Squid (bench.py's fair config)
             squid-chain     a child Squid with `cache_peer 127.0.0.1 parent PORT 0 no-query
                             default` and `never_direct allow all`, and a parent Squid (same
                             fair config; each its own visible_hostname and -n service name)
           Figures (loadgen, as bench.py runs them): handshakes/s at 64 concurrent (one untimed
           2 s round per system first) and 1-tunnel upload MB/s, with the CPU time of every
           proxy process of the system per handshake / per GB. Ratios (of the medians, and
           the per-round ratios): chain/alone for each, connectd-chain/squid-chain,
           connectd/squid.
  pp       one connectd with two listeners, plain and `proxy-protocol` (proxy_protocol_from =
           127.0.0.1); interleaved, --pp-repeats rounds: handshakes/s at 64 concurrent through
           the plain listener vs through the proxy-protocol listener with `loadgen --proxy-v2`
           (a PROXY v2 header naming loadgen's own address before every CONNECT, in the same
           send()), with connectd's CPU per handshake. Target: pp/plain >= 0.97, judged on
           the ratio of the medians and, beside it, on the median of the per-round ratios
           (both variants run in every round, so drift over the run cancels out of those).

Each system's proxies are started by a small holder process (this script, --hold), so that
loadgen's --pid sums the CPU time of every proxy of a chain (loadgen sums a process and its
descendants); the holder itself sleeps in sigtimedwait. The parent's share of a chain's CPU time
(over each whole loadgen run) is reported too.

Before measuring, each system is primed and checked with a few CONNECTs made here (Squid has
answered the first CONNECT through a just-started parent with 500): the tunnel must echo; for a
chain the parent must hold an established connection while the tunnel is open. The pp part
checks that a v2 header built here and loadgen's --proxy-v2 pass the proxy-protocol listener,
that this listener refuses a connection without the header, and the plain one a connection
with it.

Prints a table and writes it to build/bench/chain-results.txt (raw figures beside it, .json).
Every load run is bounded in time (loadgen's own bounds, plus timeouts here); only loopback
addresses are used; only processes this script started are signalled, by pid; temp dirs and the
worktree are removed at the end. Quiet-machine checks as bench.py/metrics.py: wait (at most
--quiet-wait s) for other work under --other-load cores before each part; a run during which
other work took more than that is run again once, and noted if still noisy.

Options (command line, or the environment variable in brackets): see --help.
"""
import argparse
import datetime
import json
import os
import platform
import pwd
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (add_connectd_args, refuse_busy_ports_and_trap_sigterm,  # noqa: E402
                      FD_LIMIT, ROOT, Started, add_noise_args, add_window_args,
                      build_tools, cell, cmd_out, connectd_binary, cpu_model, env, loadgen_checked,
                      loadgen_json, machine_busy_s, md_table, med, proc_cpu_s,
                      proc_tree, repo_state, retry_noisy, self_and_children_cpu_s, verdict,
                      wait_port, wait_quiet, _child_setup)

SYSTEMS_ALL = ["connectd", "connectd-chain", "squid", "squid-chain"]
FIGURES_ALL = ["handshakes", "tput_up_1"]
CHAINS = {"connectd-chain": "connectd", "squid-chain": "squid"}


def log(msg):
    print(f"chain-bench: {msg}", file=sys.stderr, flush=True)


# ---- loopback connections ----------------------------------------------------------------------

def established_on(port):
    """Established IPv4 TCP sockets whose local port is `port` (/proc/net/tcp): a server's
    accepted connections."""
    n = 0
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                v = line.split()
                if v[3] == "01" and int(v[1].rsplit(":", 1)[1], 16) == port:
                    n += 1
    except (OSError, IndexError, ValueError, StopIteration):
        return -1
    return n


# ---- the holder (run as a child: python3 chain.py --hold SPEC) ---------------------------------

def hold_main(spec_json):
    """Start the processes of one system (a JSON list of [name, argv, stderr path]), print their
    pids as one JSON line, then sleep until SIGTERM/SIGINT (or until one of them exits): stop
    them, by pid, in reverse order. Being their parent, this process makes loadgen's --pid sum
    the CPU time of all of them."""
    spec = json.loads(spec_json)
    sigs = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)

    def setup():  # the proxies must not inherit the blocked signals
        _child_setup()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)

    procs = []
    for name, argv, errp in spec:
        err = open(errp, "ab")
        procs.append((name, subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err,
                                             stderr=err, preexec_fn=setup, close_fds=True)))
        err.close()
    print(json.dumps({name: p.pid for name, p in procs}), flush=True)
    rc = 0
    while True:
        si = signal.sigtimedwait(sigs, 5.0)
        if si is not None and si.si_signo in (signal.SIGTERM, signal.SIGINT):
            break
        gone = [name for name, p in procs if p.poll() is not None]
        if gone:
            print(f"hold: {', '.join(gone)} exited; stopping the others", file=sys.stderr)
            rc = 1
            break
    for name, p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for name, p in reversed(procs):
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    return rc


# ---- CPU accounting (the rest is in benchlib.py) ---------------------------------------------

def tree_cpu_s(pid):
    return sum(proc_cpu_s(p) for p in proc_tree(pid))


# ---- statistics (the rest is in benchlib.py) -------------------------------------------------

def spread(vals):
    """(max - min) / median: the run's noise; None with fewer than two values."""
    m = med(vals)
    return (max(vals) - min(vals)) / m if vals and len(vals) > 1 and m else None


# ---- a CONNECT made here (priming and checks) --------------------------------------------------

PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2_header(sock):
    """What loadgen --proxy-v2 sends: PROXY, TCP4, this socket's address as the source."""
    src, sport = sock.getsockname()[:2]
    dst, dport = sock.getpeername()[:2]
    return (PROXY_V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", 12) +
            socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport))


def tunnel_once(port, target, pp=False, hold=None, timeout=5.0):
    """CONNECT target through 127.0.0.1:port, read the reply, echo 64 bytes; with hold, call
    hold() while the tunnel is open and return its result too. Returns (status or error text,
    hold result)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        req = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
        s.sendall((proxy_v2_header(s) if pp else b"") + req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            b = s.recv(4096)
            if not b:
                return "closed before a reply", None
            buf += b
            if len(buf) > 65536:
                return "reply too long", None
        status = buf.split(b"\r\n", 1)[0].decode("latin-1")
        if status.split(" ", 2)[1:2] != ["200"]:
            return status, None
        ping = os.urandom(32).hex().encode()
        s.sendall(ping)
        got = buf.split(b"\r\n\r\n", 1)[1]
        while len(got) < len(ping):
            b = s.recv(4096)
            if not b:
                return "closed before the echo", None
            got += b
        if got != ping:
            return "echo mismatch", None
        return "200", (hold() if hold else None)
    except OSError as e:
        return f"{type(e).__name__}: {e}", None
    finally:
        s.close()


# ---- the benchmark ---------------------------------------------------------------------------

class Bench:
    def __init__(self, a, tmp, bin_dir, binary, squid):
        self.a = a
        self.tmp = tmp
        self.lg = os.path.join(bin_dir, "loadgen")
        self.tg = os.path.join(bin_dir, "target")
        self.binary = binary
        self.squid = squid
        self.started = Started(grace=15.0)
        self.pids = {}  # system -> {"child"/"parent"/"proxy": pid}
        self.notes = []
        self.checks = []
        self.runs = []
        self.pp_refusals = 0  # connections the pp check sends without a header (each is logged)
        p = a.port_base
        self.P_SINK, self.P_ECHO = p + 1, p + 3
        # the port clients use (the child's for a chain), and a chain's parent port
        self.PORT = {"connectd": p + 10, "connectd-chain": p + 11, "squid": p + 20,
                     "squid-chain": p + 21, "plain": p + 30, "pp": p + 31}
        self.PARENT = {"connectd-chain": p + 12, "squid-chain": p + 22}
        self.HOLDER = {"plain": "pp-connectd", "pp": "pp-connectd"}

    def ports(self):
        return [self.P_SINK, self.P_ECHO] + list(self.PORT.values()) + list(self.PARENT.values())

    # ---- configurations ----

    def connectd_conf(self, name, listen, extra_server="", extra=""):
        """bench.py's fair connectd config (plus what a chain or the pp part needs)."""
        path = os.path.join(self.tmp, f"{name}.ini")
        with open(path, "w") as f:
            f.write(f"""; connectd ({name}): the target ports only, loopback destinations allowed,
; no logging (bench.py's fair configuration).
[server]
listen = {listen}
; as root the bench keeps root; otherwise this is ignored
user = root
{extra_server}[access]
allow_ports = {self.P_SINK}-{self.P_ECHO}
deny_private = no
{extra}[dns]
; the targets are IP literals; any query would stay on loopback
servers = 127.0.0.1
[limits]
max_connections = 10000
[log]
level = warn
access_log = off
""")
        return path

    def squid_conf(self, name, port, peer=None):
        """bench.py's fair Squid config; a child adds its parent as the only way out."""
        path = os.path.join(self.tmp, f"{name}.conf")
        slog = os.path.join(self.tmp, f"{name}-cache.log")
        with open(path, "w") as f:
            f.write(f"""# squid ({name}): CONNECT to the target ports from localhost, no cache,
# no access log (bench.py's fair configuration).
http_port 127.0.0.1:{port}
# each instance its own name: Squid refuses a request whose Via already holds its own
visible_hostname connectd-bench-{name}
acl bench_ports port {self.P_SINK}-{self.P_ECHO}
acl bench_connect method CONNECT
http_access allow localhost bench_connect bench_ports
http_access deny all
cache deny all
cache_mem 0 MB
access_log none
cache_store_log none
cache_log {slog}
pid_filename none
coredump_dir {self.tmp}
logfile_rotate 0
max_filedescriptors {FD_LIMIT}
workers 1
# the targets are IP literals; any query would stay on loopback
dns_nameservers 127.0.0.1
pinger_enable off
client_db off
shutdown_lifetime 1 seconds
""")
            if peer:
                f.write(f"""# the child: every request through the parent
cache_peer 127.0.0.1 parent {peer} 0 no-query default
never_direct allow all
""")
        open(slog, "a").close()
        if os.geteuid() == 0:  # squid writes its log after dropping to its own user
            try:
                pw = pwd.getpwnam("proxy")
                os.chown(slog, pw.pw_uid, pw.pw_gid)
            except KeyError:
                pass
        return path

    def squid_argv(self, name, conf):
        # -n: a service name of its own (Squid names its IPC after it), letters only
        return [self.squid, "-N", "-n", "chainbench" + name.replace("-", ""), "-f", conf]

    def system_spec(self, system):
        """[name, argv, stderr] of each process of a system, the parent first."""
        err = lambda n: os.path.join(self.tmp, f"{n}.err")  # noqa: E731
        p = self.PORT
        if system == "connectd":
            c = self.connectd_conf("connectd", f"127.0.0.1:{p[system]}")
            return [["proxy", [self.binary, "-c", c], err("connectd")]]
        if system == "connectd-chain":
            par = self.connectd_conf("connectd-parent", f"127.0.0.1:{self.PARENT[system]}")
            ch = self.connectd_conf("connectd-child", f"127.0.0.1:{p[system]}",
                                    extra=f"via = p\n[parent p]\naddress = "
                                          f"127.0.0.1:{self.PARENT[system]}\n")
            return [["parent", [self.binary, "-c", par], err("connectd-parent")],
                    ["child", [self.binary, "-c", ch], err("connectd-child")]]
        if system == "squid":
            c = self.squid_conf("squid", p[system])
            return [["proxy", self.squid_argv("squid", c), err("squid")]]
        if system == "squid-chain":
            par = self.squid_conf("squid-parent", self.PARENT[system])
            ch = self.squid_conf("squid-child", p[system], peer=self.PARENT[system])
            return [["parent", self.squid_argv("squid-parent", par), err("squid-parent")],
                    ["child", self.squid_argv("squid-child", ch), err("squid-child")]]
        if system == "pp-connectd":
            c = self.connectd_conf("pp-connectd", f"127.0.0.1:{p['plain']}, "
                                                  f"127.0.0.1:{p['pp']} proxy-protocol",
                                   extra_server="proxy_protocol_from = 127.0.0.1\n")
            return [["proxy", [self.binary, "-c", c], err("pp-connectd")]]
        raise ValueError(system)

    # ---- processes ----

    def start_target(self, lifetime):
        p = self.started.start("target", [self.tg, "--lifetime", str(int(lifetime)),
                                          f"sink:{self.P_SINK}", f"echo:{self.P_ECHO}"],
                               os.path.join(self.tmp, "target.err"))
        if not wait_port(self.P_ECHO, p, 10):
            raise SystemExit("chain-bench: the target did not start (see the notes)")

    def start_system(self, system):
        """The system's proxies under a holder (this script, --hold); wait for their ports."""
        spec = self.system_spec(system)
        os.chmod(self.tmp, 0o755)  # squid opens its log after dropping privileges
        argv = [sys.executable, os.path.abspath(__file__), "--hold", json.dumps(spec)]
        h = self.started.start(system, argv, os.path.join(self.tmp, f"holder-{system}.err"),
                               stdout=subprocess.PIPE)
        sel = selectors.DefaultSelector()
        sel.register(h.stdout, selectors.EVENT_READ)
        line = h.stdout.readline() if sel.select(20) else b""
        sel.close()
        h.stdout.close()
        try:
            self.pids[system] = json.loads(line)
        except ValueError:
            self.started.stop(system)
            raise SystemExit(f"chain-bench: {system}: the holder did not start its processes "
                             "(see the notes)")
        ports = ([self.PORT["plain"], self.PORT["pp"]] if system == "pp-connectd" else
                 [self.PARENT[system], self.PORT[system]] if system in self.PARENT else
                 [self.PORT[system]])
        for port in ports:
            if not wait_port(port, h, 30):
                raise SystemExit(f"chain-bench: {system} did not listen on {port} (see the "
                                 "notes)")
        time.sleep(0.3)
        return h

    def prime(self, system, port, parent_port=None, pp=False):
        """A few CONNECTs until one echoes (Squid answers the first CONNECT through a fresh peer
        with 500); for a chain, the parent must hold a connection while the tunnel is open."""
        target = f"127.0.0.1:{self.P_ECHO}"
        tries = []
        for _ in range(5):
            hold = (lambda: established_on(parent_port)) if parent_port else None
            st, held = tunnel_once(port, target, pp=pp, hold=hold)
            tries.append(st)
            if st == "200":
                break
            time.sleep(0.5)
        ok = tries[-1] == "200"
        if len(tries) > 1:
            self.notes.append(f"{system}: priming took {len(tries)} CONNECTs: {tries}")
        msg = f"{system}: a CONNECT through 127.0.0.1:{port} echoes: {'yes' if ok else 'NO'}"
        if parent_port and ok:
            msg += (f"; connections established on the parent (127.0.0.1:{parent_port}) while "
                    f"it is open: {held}")
            ok = held is not None and held >= 1
        self.checks.append(("OK " if ok else "FAILED ") + msg)
        log(("check OK: " if ok else "check FAILED: ") + msg)
        if not ok:
            raise SystemExit(f"chain-bench: {system} does not work (see the checks and the "
                             "notes)")

    def check_pp(self):
        """--proxy-v2 passes the proxy-protocol listener; without it that listener refuses; the
        plain listener refuses a PROXY header. Through loadgen itself, 20 handshakes each."""
        pid = self.pids["pp-connectd"]["proxy"]
        cases = [("pp", True, True), ("pp", False, False), ("plain", True, False)]
        for lst, v2, want_ok in cases:
            argv = [self.lg, "latency", "--count", "20", "--warmup-count", "0", "--target",
                    f"127.0.0.1:{self.P_ECHO}", "--proxy", f"127.0.0.1:{self.PORT[lst]}",
                    "--timeout", "20", "--label", f"check/{lst}/{'v2' if v2 else 'none'}"]
            if v2:
                argv.append("--proxy-v2")
            try:
                r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                   text=True, timeout=40, preexec_fn=_child_setup)
                res = json.loads(r.stdout.strip().splitlines()[-1])
            except (subprocess.TimeoutExpired, IndexError, ValueError) as e:
                res = {"errors": -1, "samples": 0, "first_error": str(e)}
            if lst == "pp" and not v2:
                self.pp_refusals += 20
            good = res.get("samples") == 20 and res.get("errors") == 0
            bad = res.get("samples") == 0 and res.get("errors") == 20
            ok = good if want_ok else bad
            msg = (f"pp: loadgen {'with' if v2 else 'without'} --proxy-v2 to the "
                   f"{'proxy-protocol' if lst == 'pp' else 'plain'} listener: "
                   f"{res.get('samples')}/20 handshakes, first error "
                   f"{res.get('first_error') or '-'!r} (expected: "
                   f"{'all pass' if want_ok else 'all refused'})")
            self.checks.append(("OK " if ok else "FAILED ") + msg)
            log(("check OK: " if ok else "check FAILED: ") + msg)
            if not ok:
                raise SystemExit("chain-bench: the PROXY protocol check failed")
        if not os.path.exists(f"/proc/{pid}"):
            raise SystemExit("chain-bench: pp connectd exited during the checks")

    def our_cpu_s(self):
        return self.started.cpu_s()

    # ---- one loadgen run, with the noise check of bench.py ----

    def loadgen(self, variant, figure, rep, args, timeout):
        return retry_noisy(lambda: self.loadgen_once(variant, figure, rep, args, timeout),
                           self.a.noisy_retries, self.a.other_load, self.notes, log, variant, 14,
                           figure, rep)

    def loadgen_once(self, variant, figure, rep, args, timeout):
        """variant: a system of the chain part, or plain/pp (the pp part's two listeners)."""
        system = self.HOLDER.get(variant, variant)
        h = self.started.procs.get(system)
        if h is None or h.poll() is not None:
            raise SystemExit(f"chain-bench: {system} is not running (rc="
                             f"{h.returncode if h else None}; see the notes)")
        argv = [self.lg] + args + ["--proxy", f"127.0.0.1:{self.PORT[variant]}", "--pid",
                                   str(h.pid), "--label", f"{variant}/{figure}/{rep}"]
        if variant == "pp":
            argv.append("--proxy-v2")
        pids = self.pids[system]
        t0, busy0, ours0, kids0 = time.monotonic(), machine_busy_s(), self.our_cpu_s(), \
            self_and_children_cpu_s()
        each0 = {k: tree_cpu_s(v) for k, v in pids.items()}
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=timeout, preexec_fn=_child_setup)
        except subprocess.TimeoutExpired:
            self.notes.append(f"{variant} {figure} #{rep}: loadgen timed out")
            log(f"{variant:14s} {figure} #{rep}: TIMEOUT")
            return None
        wall = time.monotonic() - t0
        each = {k: round(tree_cpu_s(v) - each0[k], 3) for k, v in pids.items()}
        other = ((machine_busy_s() - busy0) - (self.our_cpu_s() - ours0) -
                 (self_and_children_cpu_s() - kids0)) / wall
        human = " /".join(h.strip() for h in r.stderr.strip().splitlines())
        log(f"{variant:14s} {figure} #{rep}: {human or f'(no output, rc={r.returncode})'} "
            f"[other load {other:.2f} cores]")
        res = loadgen_json(r, self.notes, f"{variant} {figure} #{rep}")
        if res is None:
            return None
        res.update(variant=variant, figure=figure, repeat=rep, rc=r.returncode,
                   other_load_cores=round(other, 3), proxy_v2=variant == "pp",
                   cpu_s_whole_run=each)
        self.runs.append(res)
        return loadgen_checked(r, res, self.notes, f"{variant} {figure} #{rep}")

    # ---- the parts ----

    def hs_args(self, seconds, warmup):
        return ["handshakes", "--concurrency", str(self.a.concurrency), "--target",
                f"127.0.0.1:{self.P_ECHO}", "--seconds", str(seconds), "--warmup", str(warmup)]

    def tp_args(self):
        return ["throughput", "--tunnels", "1", "--dir", "up", "--target",
                f"127.0.0.1:{self.P_SINK}", "--seconds", str(self.a.seconds), "--warmup",
                str(self.a.warmup), "--threads", "1"]

    @staticmethod
    def add(v, rounds, row, variant, res, x):
        """One figure of one run: into the values and, by round, for the per-round ratios."""
        if x is None or x < 0:
            return
        v.setdefault(row, {}).setdefault(variant, []).append(x)
        rounds.setdefault(row, {}).setdefault(variant, {})[res["repeat"]] = x

    def interleaved(self, variants, repeats, figure, args, take):
        """REPEATS rounds of every variant, the order rotated each round."""
        timeout = self.a.warmup + self.a.seconds + 40
        for rep in range(1, repeats + 1):
            k = (rep - 1) % len(variants)
            for v in variants[k:] + variants[:k]:
                res = self.loadgen(v, figure, rep, args, timeout)
                if res:
                    take(v, res)

    def part_chain(self, systems, figures):
        a = self.a
        for s in systems:
            self.start_system(s)
            self.prime(s, self.PORT[s], self.PARENT.get(s))
        v, rounds = {}, {}
        hs, hs_cpu = f"handshakes/s at {a.concurrency} concurrent", \
            "proxy CPU us per handshake (all proxies of the system)"
        hs_share = "parent's share of the chain's CPU, handshakes (%)"
        tp, tp_cpu = "throughput 1 tunnel up (MB/s)", \
            "proxy CPU s per GB, 1 tunnel up (all proxies of the system)"
        tp_share = "parent's share of the chain's CPU, 1 tunnel up (%)"

        def share(res):
            c = res.get("cpu_s_whole_run", {})
            if "parent" not in c or c.get("parent", 0) + c.get("child", 0) <= 0:
                return None
            return 100 * c["parent"] / (c["parent"] + c["child"])

        if "handshakes" in figures:
            log("== chain: handshakes" + (" (one untimed 2 s round each first, as bench.py)"
                                          if a.warmup_round else ""))
            if a.warmup_round:
                for s in systems:
                    self.loadgen_once(s, "handshakes-warmup", 0, self.hs_args(2, 0.5), 40)

            def take_hs(s, res):
                self.add(v, rounds, hs, s, res, res["per_s"])
                self.add(v, rounds, hs_cpu, s, res, res["cpu_us_per_handshake"])
                self.add(v, rounds, hs_share, s, res, share(res))
            self.interleaved(systems, a.repeats, "handshakes",
                             self.hs_args(a.seconds, a.warmup), take_hs)
        if "tput_up_1" in figures:
            log("== chain: throughput, 1 tunnel up")

            def take_tp(s, res):
                self.add(v, rounds, tp, s, res, res["mb_per_s"])
                self.add(v, rounds, tp_cpu, s, res, res["cpu_s_per_gb"])
                self.add(v, rounds, tp_share, s, res, share(res))
            self.interleaved(systems, a.repeats, "tput_up_1", self.tp_args(), take_tp)
        for s in systems:
            self.started.stop(s)
        rows = [r for r in (hs, hs_cpu, hs_share, tp, tp_cpu, tp_share) if r in v]
        return {"systems": systems, "values": v, "rounds": rounds, "rows": rows,
                "higher_better": {hs: True, tp: True}}

    def part_pp(self):
        a = self.a
        self.start_system("pp-connectd")
        self.prime("pp-connectd (plain listener)", self.PORT["plain"])
        self.prime("pp-connectd (proxy-protocol listener, a v2 header built here)",
                   self.PORT["pp"], pp=True)
        self.check_pp()
        variants = ["plain", "pp"]
        v, rounds = {}, {}
        hs, hs_cpu = f"handshakes/s at {a.concurrency} concurrent", \
            "connectd CPU us per handshake"
        log("== pp: handshakes, plain listener vs proxy-protocol listener with --proxy-v2" +
            (" (one untimed 2 s round each first)" if a.warmup_round else ""))
        if a.warmup_round:
            for x in variants:
                self.loadgen_once(x, "handshakes-warmup", 0, self.hs_args(2, 0.5), 40)

        def take(x, res):
            self.add(v, rounds, hs, x, res, res["per_s"])
            self.add(v, rounds, hs_cpu, x, res, res["cpu_us_per_handshake"])
        self.interleaved(variants, a.pp_repeats, "pp-handshakes",
                         self.hs_args(a.seconds, a.warmup), take)
        self.started.stop("pp-connectd")
        return {"variants": variants, "values": v, "rounds": rounds, "rows": [hs, hs_cpu],
                "hs_row": hs}


# ---- the report --------------------------------------------------------------------------------

def paired(rounds, row, a, b):
    """a/b within each round where both ran: drift over the run cancels out of these."""
    ra, rb = rounds.get(row, {}).get(a, {}), rounds.get(row, {}).get(b, {})
    return [ra[k] / rb[k] for k in sorted(ra) if k in rb and rb[k]]


def paired_text(q):
    if not q:
        return "per-round ratios: none"
    if len(q) == 1:
        return f"per-round ratio {q[0]:.3f}"
    return (f"per-round ratios: median {med(q):.3f} ({min(q):.3f}-{max(q):.3f}; "
            + ", ".join(f"{x:.2f}" for x in q) + ")")


def report_chain(r):
    if not r:
        return []
    systems, values = r["systems"], r["values"]
    pairs = [(a, b) for a, b in (("connectd-chain", "connectd"), ("squid-chain", "squid"),
                                 ("connectd-chain", "squid-chain"), ("connectd", "squid"))
             if a in systems and b in systems]
    heads = ["figure"] + systems + [f"{a}/{b}" for a, b in pairs]
    rows = []
    for row in r["rows"]:
        per = values[row]
        m = {s: med(per.get(s, [])) for s in systems}
        cells = [row] + [cell(per.get(s, [])) for s in systems]
        for a, b in pairs:
            share = "share" in row
            cells.append("-" if share or m[a] is None or not m[b] else f"{m[a] / m[b]:.2f}")
        rows.append(cells)
    out = ["## Through a parent: connectd -> connectd next to Squid -> Squid", "",
           md_table(heads, rows), ""]
    for row in r["rows"]:
        if not r["higher_better"].get(row):
            continue
        per = values[row]
        for a, b in pairs:
            ma, mb = med(per.get(a, [])), med(per.get(b, []))
            if ma is None or not mb:
                continue
            sp = [spread(per[x]) for x in (a, b) if per.get(x) and spread(per[x]) is not None]
            out.append(f"- {row}, {a}/{b}: {ma / mb:.3f}" +
                       (f" (spread up to {max(sp) * 100:.1f}%)" if sp else "") +
                       f"; {paired_text(paired(r.get('rounds', {}), row, a, b))}")
    out.append("- CPU rows sum every proxy process of the system over loadgen's window (the "
               "holder's tree); the parent's share is over each whole loadgen run")
    return out


def report_pp(r):
    if not r:
        return []
    values, hs = r["values"], r["hs_row"]
    rows = []
    for row in r["rows"]:
        per = values.get(row, {})
        mp, mq = med(per.get("plain", [])), med(per.get("pp", []))
        rows.append([row, cell(per.get("plain", [])), cell(per.get("pp", [])),
                     "-" if mp is None or mq is None or not mp else f"{mq / mp:.3f}"])
    out = ["## PROXY protocol: plain listener vs proxy-protocol listener (loadgen --proxy-v2)",
           "", md_table(["figure", "plain", "proxy-protocol + PROXY v2 header", "pp/plain"],
                        rows), ""]
    per = values.get(hs, {})
    mp, mq = med(per.get("plain", [])), med(per.get("pp", []))
    if mp and mq is not None:
        q = mq / mp
        sp = [spread(per[x]) for x in ("plain", "pp") if per.get(x)]
        sp = [x for x in sp if x is not None]
        out.append(f"- target: handshake rate with the PROXY protocol within 3% of without "
                   f"(pp/plain >= 0.97): {q:.3f} ({(q - 1) * 100:+.1f}%): {verdict(q >= 0.97)}"
                   + (f"; spread up to {max(sp) * 100:.1f}% (the run's noise)" if sp else ""))
        pq = paired(r.get("rounds", {}), hs, "pp", "plain")
        if len(pq) > 1:
            out.append(f"- the same from the rounds' pairs (each round runs both, so drift over "
                       f"the run cancels): {paired_text(pq)}: {verdict(med(pq) >= 0.97)}")
        cq = paired(r.get("rounds", {}), r["rows"][1], "pp", "plain")
        if cq:
            out.append(f"- connectd CPU per handshake, pp/plain: {paired_text(cq)}")
    else:
        out.append("- target: not measured")
    return out


# ---- main --------------------------------------------------------------------------------------

def parse_args():
    ap = argparse.ArgumentParser(
        description="connectd through a parent, and the PROXY protocol (see the docstring).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--repeats", type=int, default=int(env("REPEATS", 5)),
                    help="interleaved rounds of the chain part [REPEATS]")
    ap.add_argument("--pp-repeats", type=int, default=int(env("CHAIN_PP_REPEATS", 0)),
                    help="interleaved rounds of the pp part; 0 = --repeats [CHAIN_PP_REPEATS]")
    add_window_args(ap)  # --seconds, --warmup, --concurrency
    ap.add_argument("--no-warmup-round", dest="warmup_round", action="store_false",
                    default=env("BENCH_WARMUP_ROUND", "1") == "1",
                    help="skip the untimed 2 s handshake round per system [BENCH_WARMUP_ROUND=0]")
    ap.add_argument("--parts", default=env("CHAIN_PARTS", "chain,pp"),
                    help="what to run, of chain,pp [CHAIN_PARTS]")
    ap.add_argument("--systems", default=env("CHAIN_SYSTEMS", ",".join(SYSTEMS_ALL)),
                    help="chain part: systems, of " + ",".join(SYSTEMS_ALL) + " [CHAIN_SYSTEMS]")
    ap.add_argument("--figures", default=env("CHAIN_FIGURES", ",".join(FIGURES_ALL)),
                    help="chain part: figures, of " + ",".join(FIGURES_ALL) + " [CHAIN_FIGURES]")
    ap.add_argument("--port-base", type=int, default=int(env("BENCH_PORT_BASE", 18400)),
                    help="loopback ports used: base+1, +3, +10..12, +20..22, +30, +31 "
                         "[BENCH_PORT_BASE]")
    add_noise_args(ap)  # --other-load, --noisy-retries, --quiet-wait
    ap.add_argument("--results", default=env("CHAIN_RESULTS", ""),
                    help="output file (default build/bench/chain-results.txt) [CHAIN_RESULTS]")
    ap.add_argument("--squid", default=env("SQUID", ""),
                    help="the squid binary (default: squid on PATH, /usr/sbin, /sbin) [SQUID]")
    add_connectd_args(ap, "CHAIN_CONNECTD_COMMIT")
    ap.add_argument("--hold", help=argparse.SUPPRESS)  # the holder child
    return ap.parse_args()


def main():
    a = parse_args()
    if a.hold:
        return hold_main(a.hold)
    parts = [p for p in a.parts.split(",") if p]
    systems = [s for s in a.systems.split(",") if s]
    figures = [f for f in a.figures.split(",") if f]
    for p in parts:
        if p not in ("chain", "pp"):
            sys.exit(f"chain-bench: unknown part {p!r}")
    for s in systems:
        if s not in SYSTEMS_ALL:
            sys.exit(f"chain-bench: unknown system {s!r}")
    for f in figures:
        if f not in FIGURES_ALL:
            sys.exit(f"chain-bench: unknown figure {f!r}")
    if a.pp_repeats == 0:
        a.pp_repeats = a.repeats
    if not (0 < a.repeats <= 100 and 0 < a.pp_repeats <= 100 and 0 < a.seconds <= 600 and
            0 <= a.warmup <= 60 and 0 < a.concurrency <= 10000 and
            1024 < a.port_base <= 65400 and 0 <= a.quiet_wait <= 3600 and
            0 <= a.noisy_retries <= 5):
        sys.exit("chain-bench: an option is out of range")
    squid = None
    if "chain" in parts and any(s.startswith("squid") for s in systems):
        squid = a.squid or shutil.which("squid", path=os.environ.get("PATH", "") +
                                        ":/usr/sbin:/sbin")
        if not squid:
            sys.exit("chain-bench: squid is not installed (as root: apt-get install squid), or "
                     "leave it out: --systems connectd,connectd-chain")
    bin_dir = os.path.join(ROOT, "build", "bench")
    results = a.results or os.path.join(bin_dir, "chain-results.txt")

    # Build first (the ports are checked after: make can take a while).
    tmp = tempfile.mkdtemp(prefix="connectd-chain-bench-")
    binary, built = connectd_binary(a.connectd_bin, a.connectd_commit, tmp, "chain-bench", log)
    binary = os.path.abspath(binary)
    build_tools(bin_dir, log, beside="chain")
    b = Bench(a, tmp, bin_dir, binary, squid)
    stop_req = refuse_busy_ports_and_trap_sigterm(b.ports(), tmp, "chain-bench")
    t_start = time.monotonic()
    commit, dirty = repo_state()
    chain = pp = None
    quiet = {}
    fatal = None
    try:
        b.start_target(lifetime=3600)
        if "chain" in parts and systems:
            log(f"== part 1: chain ({', '.join(systems)})")
            quiet["chain"] = wait_quiet(a.other_load, a.quiet_wait, log)
            chain = b.part_chain(systems, figures)
        if "pp" in parts:
            log("== part 2: PROXY protocol on vs off")
            quiet["pp"] = wait_quiet(a.other_load, a.quiet_wait, log)
            pp = b.part_pp()
    except KeyboardInterrupt:
        log("interrupted: stopping what this run started")
    except SystemExit as e:  # a proxy that does not work or died: report what there is
        fatal = str(e)
        log(f"{fatal}; stopping what this run started")
        b.notes.append(f"STOPPED EARLY: {fatal} (the daemons' last words are below; the temp "
                       "dir is removed)")
    finally:
        b.started.stop_all()
    took = time.monotonic() - t_start

    model = cpu_model()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [f"# connectd through a parent, and the PROXY protocol, {now}", "",
            f"- connectd: {cmd_out([binary, '-V'])} ({built}; the repository's HEAD is {commit}"
            + (f"; src/include modified in the work tree: {', '.join(dirty)}" if dirty else "")
            + ")"]
    if squid:
        text.append(f"- squid: {cmd_out([squid, '-v'])} ({squid})")
    text += [f"- machine: {os.cpu_count()} x {model}, kernel {platform.release()}, hard "
             f"open-file limit {hard}",
             f"- method: chain part {a.repeats} rounds, pp part {a.pp_repeats} rounds, "
             f"interleaved (the order rotates each round); {a.seconds:g} s windows after "
             f"{a.warmup:g} s warm-up; {a.concurrency} handshakes in flight; 1 MB = 10^6 bytes; "
             f"cells are median (min-max); ratios are of medians; took {took:.0f} s",
             "- other work on the machine before each part (cores): " +
             (", ".join(f"{k} {v:.2f}" for k, v in quiet.items()) or "-"), ""]
    text += report_chain(chain)
    if chain:
        text.append("")
    text += report_pp(pp)
    if b.checks:
        text += ["", "Checks:"] + [f"- {c}" for c in b.checks]
    for name in sorted(os.listdir(tmp)):  # what the daemons said, before the dir goes
        squid_log = name.endswith("-cache.log")
        if not (name.endswith(".err") and not name.startswith("target")) and not squid_log:
            continue
        try:
            with open(os.path.join(tmp, name), errors="replace") as f:
                said = [ln.rstrip() for ln in f if ln.strip()]
        except OSError:
            said = []
        if squid_log:
            said = [ln for ln in said if any(x in ln for x in ("ERROR", "FATAL", "WARNING"))]
        else:
            said = [ln for ln in said if not any(x in ln for x in ("carries only",
                                                                  "running as root"))]
        if name == "pp-connectd.err":  # the refusal check's own connections, expected
            refused = [ln for ln in said if "not a PROXY protocol header" in ln]
            if len(refused) == b.pp_refusals:
                said = [ln for ln in said if ln not in refused]
        if said:
            b.notes.append(f"{name.rsplit('.', 1)[0]} wrote {len(said)} line(s) "
                           f"{'of warnings' if squid_log else 'on stderr'}, the last: "
                           f"{said[-1][-300:]}")
    if b.notes:
        text += ["", "Notes:"] + [f"- {n}" for n in b.notes]
    report = "\n".join(text) + "\n"
    print(report)
    os.makedirs(os.path.dirname(os.path.abspath(results)), exist_ok=True)
    with open(results, "w") as f:
        f.write(report)
    with open(os.path.splitext(results)[0] + ".json", "w") as f:
        json.dump({"args": vars(a), "connectd": binary, "built": built, "commit": commit,
                   "chain": chain, "pp": pp, "runs": b.runs, "checks": b.checks,
                   "notes": b.notes}, f, indent=1, default=str)
    log(f"results written to {results} (raw: {os.path.splitext(results)[0]}.json)")
    shutil.rmtree(tmp, ignore_errors=True)
    return 130 if stop_req else 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
