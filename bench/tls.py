#!/usr/bin/env python3
"""bench/tls.py: connectd's HTTPS-proxy listener next to Squid and stunnel+tinyproxy (stdlib only).

    bench/tls.py [options]          (or: make bench-tls)

TLS between client and proxy, the CONNECT inside it. Three systems, each started by this
script on loopback ports of its own (BENCH_PORT_BASE + n, default 18500), all with the same
test certificate (ECDSA P-256, self-signed for 127.0.0.1 / localhost, made with the openssl CLI
into the run's temp dir), TLS 1.2 at least:

  connectd   `listen = 127.0.0.1:P, 127.0.0.1:T tls` with a [tls] section (certificate, key,
             min_version = 1.2, alpn = http/1.1, session_tickets = yes), otherwise bench.py's
             fair configuration; measured on the tls listener T
  squid      `https_port 127.0.0.1:T tls-cert=... tls-key=... tls-min-version=1.2`, otherwise
             bench.py's fair configuration (one process, -N)
  stunnel    stunnel4 (foreground, debug = err, sslVersionMin = TLSv1.2, its defaults otherwise)
             terminating TLS in front of tinyproxy (bench.py's fair configuration); both
             processes are counted (CPU, RSS)

Each system's processes run under a small holder process (chain.py's, `--hold`), so that
loadgen's --pid sums the CPU time and RSS of every process of the system.

Figures (build/bench/loadgen --tls, the order of the systems rotated each round, REPEATS
rounds; medians; a quiet-machine wait before each figure, a noisy run is run again once):
  hs_full      TLS handshakes/s at 64 concurrent, each a new TLS session: TCP connect, TLS
               handshake, CONNECT, 200, a 64-byte echo, close_notify + close; with the proxy's
               CPU per handshake (one untimed 2 s round per system first, as bench.py); 2
               loadgen threads (--threads-hs): one thread of an OpenSSL client spends about as
               much per full handshake as the proxy, and alone it ran at 0.95-0.98 of a core,
               so the client set the pace
  hs_resumed   the same, each connection slot resuming the session of its previous connection
               (loadgen --tls-resume); the share actually resumed is reported
  latency      one at a time, --latency-count timed (after a tenth, at most 100, untimed):
               connect() -> 200 with the full TLS handshake, and CONNECT written -> 200 read
               alone (p50 and p99)
  idle         the system restarted fresh; --idle-tunnels TLS tunnels opened and proven with
               one echo each; RSS (all processes of the system) before and 1 s after: KiB per
               idle TLS tunnel
  tput_*       1 and 8 tunnels, up (client->target) and down, MB/s (1 MB = 10^6 bytes) with
               the proxy's CPU seconds per GB (8 tunnels: 2 loadgen threads, as bench.py)

Prints a table (medians, min-max, ratios connectd/squid and connectd/stunnel+tinyproxy), the
targets (connectd >= 1.5 x Squid on handshakes and throughput, <= 1/2 of its memory per idle
TLS tunnel) and a Markdown block to paste into BENCHMARKS.md; writes them to
build/bench/tls-results.txt (raw runs beside it, .json; the block alone, tls-results-block.md).

A system that cannot be started or does not pass the check (a CONNECT over TLS, the
certificate verified, an echo through the tunnel) is skipped with the reason in the report,
and the run goes on with the others; the exit status is then 2. So, while connectd has no TLS
listener, this measures the peers alone and says why connectd is missing.

Time: about 11 minutes at the defaults (3 rounds, 5 s windows, 1000 latency samples, 1000 idle
tunnels; more when the machine is busy: noisy runs are run again); --quick (1 round, 2 s
windows, 300 samples, 300 tunnels) about 4. connectd: `make` in the work tree (a copy of the
binary is used, so a rebuild during the run does not change it), --connectd-commit C for a clean
build of commit C in a temporary git worktree, or --connectd-bin. As root, missing Debian
packages are installed as bench/run does (squid-openssl, stunnel4, tinyproxy, libssl-dev).

Things to know: on 2 cores the handshake rates are bounded by loadgen's own TLS work too
(OpenSSL 3.0 costs the client about 0.4-0.5 ms of CPU per full handshake; see the loadgen CPU
rows): the proxy CPU per handshake is the cleaner comparison. Each proxy picks its TLS 1.3 suite
from loadgen's default offer (the report says which); --suites holds it equal.

Every load run is bounded in time (loadgen's own bounds, plus timeouts here; --max-minutes for
the whole run); only loopback addresses are used; only processes this script started are
signalled, by pid; the temp dir is removed at the end. Options: see --help.
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
import socket
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (add_connectd_args, refuse_busy_ports_and_trap_sigterm,  # noqa: E402
                      FD_LIMIT, ROOT, Started, add_noise_args, build_tools, cell,
                      cmd_out, connectd_binary, cpu_model, env, fmt, loadgen_checked,
                      loadgen_json, machine_busy_s, md_table, med, repo_state,
                      retry_noisy, self_and_children_cpu_s, verdict, wait_port, wait_quiet,
                      _child_setup)
from chain import hold_main  # noqa: E402  (the holder: one process tree per system)

SYSTEMS_ALL = ["connectd", "squid", "stunnel"]
LABEL = {"connectd": "connectd", "squid": "squid", "stunnel": "stunnel+tinyproxy"}
FIGURES_ALL = ["hs_full", "hs_resumed", "latency", "idle", "tput_up_1", "tput_down_1",
               "tput_up_8", "tput_down_8"]
TARGET_RATIO = 1.5  # connectd / squid, handshakes and throughput
TARGET_MEM = 0.5    # connectd / squid, RSS per idle TLS tunnel


def log(msg):
    print(f"tls-bench: {msg}", file=sys.stderr, flush=True)


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def which(prog):
    return shutil.which(prog, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin")


# ---- packages ----------------------------------------------------------------------------------

def pkg_installed(name):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True,
                       text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


def ensure_packages(systems):
    """The Debian packages this run needs, installed when missing as bench/run does (as root with
    apt-get; otherwise the command is printed and the run stops): libssl-dev (loadgen --tls),
    squid-openssl (https_port needs Squid's OpenSSL flavour: the GnuTLS one, package "squid",
    conflicts with it and is replaced), stunnel4 and tinyproxy. A service that the install
    started is stopped through the service manager; no process is killed."""
    if not shutil.which("dpkg-query"):
        return
    want = ["libssl-dev", "openssl"]
    if "squid" in systems and not pkg_installed("squid-openssl"):
        want.append("squid-openssl")
    if "stunnel" in systems:
        want += ["stunnel4", "tinyproxy"]
    missing = [p for p in want if not pkg_installed(p)]
    if not missing:
        return
    cmd = ["apt-get", "install", "-y", "--no-install-recommends"] + missing
    if os.geteuid() != 0:
        sys.exit(f"tls-bench: missing Debian packages: {' '.join(missing)}; as root: "
                 f"apt-get update && {' '.join(cmd)}")
    log(f"installing {' '.join(missing)}")
    envp = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = subprocess.run(cmd, env=envp, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-q"], env=envp, capture_output=True, timeout=600)
        r = subprocess.run(cmd, env=envp, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"tls-bench: {' '.join(cmd)} failed: {(r.stdout + r.stderr).strip()[-300:]}")
    for svc, pkg in (("squid", "squid-openssl"), ("stunnel4", "stunnel4"),
                     ("tinyproxy", "tinyproxy")):
        if pkg in missing:  # the distro's own service, if the install started it
            if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
                subprocess.run(["systemctl", "stop", svc], capture_output=True, timeout=60)
            elif shutil.which("service"):
                subprocess.run(["service", svc, "stop"], capture_output=True, timeout=60)


def squid_flavour(squid):
    """"openssl", "gnutls" or "?" from `squid -v`."""
    v = subprocess.run([squid, "-v"], capture_output=True, text=True).stdout
    return "openssl" if "--with-openssl" in v else "gnutls" if "--with-gnutls" in v else "?"


# ---- the test certificate ----------------------------------------------------------------------

def make_cert(tmp):
    """ECDSA P-256, self-signed, SAN IP:127.0.0.1 and DNS:localhost, 2 days; with the openssl
    CLI. The key is readable by the proxy user's group (Squid drops privileges)."""
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise SystemExit(f"tls-bench: openssl req failed: {r.stderr.strip()[-300:]}")
    os.chmod(key, 0o640)
    if os.geteuid() == 0:
        try:
            os.chown(key, 0, pwd.getpwnam("proxy").pw_gid)
        except KeyError:
            os.chmod(key, 0o644)
    fp = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256"],
                        capture_output=True, text=True).stdout.strip().split("=", 1)[-1]
    return cert, key, fp


# ---- a CONNECT over TLS made here (the check before measuring) ---------------------------------

def client_context(cafile):
    """The check's client: the certificate verified against cafile (for the IP address dialled),
    TLS 1.2 at least, ALPN http/1.1. One context per check: a session resumes only within it.
    (It offers Python's default suites; what loadgen negotiated is taken from its runs.)"""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def tls_tunnel_once(ctx, port, target, session=None, timeout=5.0):
    """TLS to 127.0.0.1:port, CONNECT target, read the reply, echo 32 bytes. Returns (status or
    error text, info dict)."""
    info = {}
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError as e:
        return f"connect: {e}", info
    try:
        s = ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session)
    except (OSError, ssl.SSLError) as e:
        raw.close()
        if "WRONG_VERSION_NUMBER" in str(e):
            return f"TLS handshake: {e}: the port does not speak TLS", info
        return f"TLS handshake: {e}", info
    try:
        info.update(version=s.version(), cipher=s.cipher()[0], alpn=s.selected_alpn_protocol(),
                    resumed=s.session_reused)
        req = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            b = s.recv(4096)
            if not b:
                return "closed before a reply", info
            buf += b
            if len(buf) > 65536:
                return "reply too long", info
        status = buf.split(b"\r\n", 1)[0].decode("latin-1")
        if status.split(" ", 2)[1:2] != ["200"]:
            return status, info
        ping = os.urandom(16).hex().encode()
        s.sendall(ping)
        got = buf.split(b"\r\n\r\n", 1)[1]
        while len(got) < len(ping):
            b = s.recv(4096)
            if not b:
                return "closed before the echo", info
            got += b
        if got != ping:
            return "echo mismatch", info
        info["session"] = s.session
        return "200", info
    except (OSError, ssl.SSLError) as e:
        return f"{type(e).__name__}: {e}", info
    finally:
        try:
            s.close()
        except OSError:
            pass


# ---- the benchmark ---------------------------------------------------------------------------

class Skip(Exception):
    """A system that cannot be measured: skipped, with the reason."""


class Bench:
    def __init__(self, a, tmp, bin_dir, binary, squid, cert, key):
        self.a = a
        self.tmp = tmp
        self.lg = os.path.join(bin_dir, "loadgen")
        self.tg = os.path.join(bin_dir, "target")
        self.binary = binary
        self.squid = squid
        self.cert, self.key = cert, key
        self.started = Started(grace=15.0)
        self.pids = {}
        self.notes = []
        self.checks = []
        self.runs = []
        self.skipped = {}  # system -> reason
        self.tls_info = {}  # system -> what the check negotiated
        p = a.port_base
        self.P_SINK, self.P_SOURCE, self.P_ECHO = p + 1, p + 2, p + 3
        self.PORT = {"connectd": p + 10, "squid": p + 20, "stunnel": p + 30}
        self.AUX = {"connectd": p + 11, "stunnel": p + 31}  # connectd's plain one, tinyproxy
        self.deadline = time.monotonic() + a.max_minutes * 60

    def ports(self):
        return [self.P_SINK, self.P_SOURCE, self.P_ECHO] + list(self.PORT.values()) + \
            list(self.AUX.values())

    # ---- configurations ----

    def connectd_conf(self):
        path = os.path.join(self.tmp, "connectd.ini")
        with open(path, "w") as f:
            f.write(f"""; connectd: a plain and a TLS listener (the HTTPS-proxy contract), the
; target ports only, loopback destinations allowed, no logging (bench.py's fair configuration).
[server]
listen = 127.0.0.1:{self.AUX['connectd']}, 127.0.0.1:{self.PORT['connectd']} tls
; as root the bench keeps root; otherwise this is ignored
user = root
[tls]
certificate = {self.cert}
key = {self.key}
min_version = 1.2
alpn = http/1.1
session_tickets = yes
[access]
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

    def squid_conf(self):
        path = os.path.join(self.tmp, "squid.conf")
        slog = os.path.join(self.tmp, "squid-cache.log")
        with open(path, "w") as f:
            f.write(f"""# squid: an HTTPS proxy port (TLS from the client), CONNECT to the target
# ports from localhost, no cache, no access log (bench.py's fair configuration otherwise).
https_port 127.0.0.1:{self.PORT['squid']} tls-cert={self.cert} tls-key={self.key} \
    tls-min-version=1.2
visible_hostname connectd-bench-tls
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
        self.chown_log(slog, "proxy")
        return path

    def stunnel_conf(self):
        path = os.path.join(self.tmp, "stunnel.conf")
        with open(path, "w") as f:
            f.write(f"""; stunnel: TLS from the client, plain TCP on to tinyproxy. Its defaults
; otherwise (TCP_NODELAY both sides, session cache and tickets on); nothing logged per connection.
foreground = yes
pid =
syslog = no
debug = err
[https-proxy]
accept = 127.0.0.1:{self.PORT['stunnel']}
connect = 127.0.0.1:{self.AUX['stunnel']}
cert = {self.cert}
key = {self.key}
sslVersionMin = TLSv1.2
""")
        return path

    def tinyproxy_conf(self):
        path = os.path.join(self.tmp, "tinyproxy.conf")
        tlog = os.path.join(self.tmp, "tinyproxy.log")
        with open(path, "w") as f:
            if os.geteuid() == 0:  # tinyproxy drops privileges; as root it wants a user
                f.write("User nobody\nGroup nogroup\n")
            f.write(f"""Listen 127.0.0.1
Port {self.AUX['stunnel']}
Timeout 600
MaxClients 10000
LogLevel Critical
LogFile "{tlog}"
Allow 127.0.0.0/8
ConnectPort {self.P_SINK}
ConnectPort {self.P_SOURCE}
ConnectPort {self.P_ECHO}
DisableViaHeader Yes
""")
        self.chown_log(tlog, "nobody")
        return path

    @staticmethod
    def chown_log(path, user):
        open(path, "a").close()
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(user)
                os.chown(path, pw.pw_uid, pw.pw_gid)
            except KeyError:
                pass

    def system_spec(self, system):
        err = lambda n: os.path.join(self.tmp, f"{n}.err")  # noqa: E731
        if system == "connectd":
            return [["connectd", [self.binary, "-c", self.connectd_conf()], err("connectd")]]
        if system == "squid":
            return [["squid", [self.squid, "-N", "-n", "tlsbench", "-f", self.squid_conf()],
                     err("squid")]]
        if system == "stunnel":
            return [["tinyproxy", [which("tinyproxy"), "-d", "-c", self.tinyproxy_conf()],
                     err("tinyproxy")],
                    ["stunnel", [which("stunnel4") or which("stunnel"), self.stunnel_conf()],
                     err("stunnel")]]
        raise ValueError(system)

    # ---- processes ----

    def start_target(self, lifetime):
        p = self.started.start("target", [self.tg, "--lifetime", str(int(lifetime)),
                                          f"sink:{self.P_SINK}", f"source:{self.P_SOURCE}",
                                          f"echo:{self.P_ECHO}"],
                               os.path.join(self.tmp, "target.err"))
        if not wait_port(self.P_ECHO, p, 10):
            raise SystemExit("tls-bench: the target did not start")

    def last_words(self, system):
        """The last lines a system's processes wrote on stderr (or Squid's cache.log)."""
        out = []
        names = {"connectd": ["connectd.err"], "squid": ["squid.err", "squid-cache.log"],
                 "stunnel": ["stunnel.err", "tinyproxy.err"]}[system]
        for name in names:
            try:
                with open(os.path.join(self.tmp, name), errors="replace") as f:
                    lines = [ln.strip() for ln in f if ln.strip()]
            except OSError:
                continue
            if name.endswith("cache.log"):
                lines = [ln for ln in lines if any(x in ln for x in ("ERROR", "FATAL",
                                                                     "WARNING"))]
            elif name == "squid.err":  # its resource summary at exit says nothing
                lines = [ln for ln in lines if ":" not in ln[:40] or "|" in ln[:40]]
            out += [f"{name}: {ln[-240:]}" for ln in lines[-2:]]
        return "; ".join(out) or "(nothing on stderr)"

    def start_system(self, system):
        """The system's processes under a holder; wait for their ports. Raises Skip."""
        spec = self.system_spec(system)
        os.chmod(self.tmp, 0o755)  # squid and tinyproxy open their logs after dropping privileges
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
            raise Skip("its holder did not start its processes")
        ports = [self.PORT[system]] + ([self.AUX[system]] if system in self.AUX else [])
        for port in ports:
            if not wait_port(port, h, 30):
                self.started.stop(system)
                raise Skip(f"it did not listen on 127.0.0.1:{port}: {self.last_words(system)}")
        time.sleep(0.3)
        return h

    def check(self, system):
        """A CONNECT over TLS with the certificate verified, and an echo; then one resuming the
        first's session. Raises Skip when the first does not pass."""
        target = f"127.0.0.1:{self.P_ECHO}"
        ctx = client_context(self.cert)
        tries = []
        for _ in range(3):
            st, info = tls_tunnel_once(ctx, self.PORT[system], target)
            tries.append(st)
            if st == "200":
                break
            time.sleep(0.5)
        if tries[-1] != "200":
            msg = (f"{LABEL[system]}: CONNECT over TLS to 127.0.0.1:{self.PORT[system]} failed: "
                   f"{tries[-1]}")
            self.checks.append("FAILED " + msg)
            raise Skip(f"the TLS check failed ({tries[-1]}); {self.last_words(system)}")
        st2, info2 = tls_tunnel_once(ctx, self.PORT[system], target, session=info.get("session"))
        info.pop("session", None)
        info["resumes"] = bool(st2 == "200" and info2.get("resumed"))
        self.tls_info[system] = info
        msg = (f"{LABEL[system]}: CONNECT over TLS, certificate verified, echo through the "
               f"tunnel: yes ({info['version']}, {info['cipher']}, ALPN "
               f"{info['alpn'] or 'none'}); a second connection resumes the first's session: "
               f"{'yes' if info['resumes'] else 'NO (' + st2 + ')'}")
        self.checks.append("OK " + msg)
        log("check OK: " + msg)

    def restart(self, system):
        self.started.stop(system)
        self.start_system(system)

    # ---- one loadgen run, with the noise check of bench.py ----

    def loadgen(self, system, figure, rep, args, timeout, fresh=False):
        """fresh: restart the system before the run (and before a noisy run's rerun), so that
        the idle figure's RSS baseline is a new process's, not a previous run's heap."""
        def once():
            if fresh:
                try:
                    self.restart(system)
                except Skip as e:
                    self.notes.append(f"{LABEL[system]} {figure} #{rep}: {e}")
                    return None
            return self.loadgen_once(system, figure, rep, args, timeout)
        return retry_noisy(once, self.a.noisy_retries, self.a.other_load, self.notes, log,
                           LABEL[system], 17, figure, rep)

    def loadgen_once(self, system, figure, rep, args, timeout):
        if time.monotonic() > self.deadline:
            self.notes.append(f"{LABEL[system]} {figure} #{rep}: not run (--max-minutes)")
            return None
        h = self.started.procs.get(system)
        if h is None or h.poll() is not None:
            self.notes.append(f"{LABEL[system]} was not running for {figure} #{rep} (rc="
                              f"{h.returncode if h else None}): restarted; "
                              f"{self.last_words(system)}")
            try:
                self.restart(system)
            except Skip as e:
                self.notes.append(f"{LABEL[system]}: could not restart it: {e}")
                return None
            h = self.started.procs[system]
        argv = [self.lg] + args + ["--tls", "--proxy", f"127.0.0.1:{self.PORT[system]}",
                                   "--pid", str(h.pid), "--label", f"{system}/{figure}/{rep}"]
        if self.a.verify:
            argv += ["--cacert", self.cert]
        if self.a.suites:
            argv += ["--tls-suites", self.a.suites]
        t0, busy0, ours0, kids0 = time.monotonic(), machine_busy_s(), self.started.cpu_s(), \
            self_and_children_cpu_s()
        lg0 = children_cpu_s()
        try:
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=timeout, preexec_fn=_child_setup)
        except subprocess.TimeoutExpired:
            self.notes.append(f"{LABEL[system]} {figure} #{rep}: loadgen timed out")
            log(f"{LABEL[system]:17s} {figure} #{rep}: TIMEOUT")
            return None
        wall = time.monotonic() - t0
        lg_cpu = children_cpu_s() - lg0
        other = ((machine_busy_s() - busy0) - (self.started.cpu_s() - ours0) -
                 (self_and_children_cpu_s() - kids0)) / wall
        human = " /".join(x.strip() for x in r.stderr.strip().splitlines())
        log(f"{LABEL[system]:17s} {figure} #{rep}: {human or f'(no output, rc={r.returncode})'} "
            f"[other load {other:.2f} cores]")
        res = loadgen_json(r, self.notes, f"{LABEL[system]} {figure} #{rep}")
        if res is None:
            return None
        res.update(system=system, figure=figure, repeat=rep, rc=r.returncode,
                   other_load_cores=round(other, 3), loadgen_cpu_s=round(lg_cpu, 3),
                   loadgen_cores=round(lg_cpu / wall, 3), wall_s=round(wall, 3))
        self.runs.append(res)
        return loadgen_checked(r, res, self.notes, f"{LABEL[system]} {figure} #{rep}")

    # ---- the figures ----

    def hs_args(self, seconds, warmup, resume):
        return ["handshakes", "--concurrency", str(self.a.concurrency), "--target",
                f"127.0.0.1:{self.P_ECHO}", "--seconds", str(seconds), "--warmup",
                str(warmup), "--threads", str(self.a.threads_hs)] + (["--tls-resume"] if resume else [])

    @staticmethod
    def add(v, row, system, x):
        if x is None or x < 0:
            return
        v.setdefault(row, {}).setdefault(system, []).append(x)

    def interleaved(self, systems, figure, args, timeout, take, fresh=False):
        """REPEATS rounds of every system, the order rotated each round."""
        for rep in range(1, self.a.repeats + 1):
            k = (rep - 1) % len(systems)
            for s in systems[k:] + systems[:k]:
                res = self.loadgen(s, figure, rep, args, timeout, fresh)
                if res:
                    take(s, res)

    def run_figures(self, systems, figures, v):
        a = self.a
        c = a.concurrency
        hs_timeout = a.warmup + a.seconds + 40
        for fig in figures:
            log(f"== {fig}")
            wait_quiet(a.other_load, min(a.quiet_wait, a.figure_quiet_wait), log)
            if fig in ("hs_full", "hs_resumed"):
                resume = fig == "hs_resumed"
                kind = "resumed" if resume else "full"
                row = f"TLS handshakes/s at {c} concurrent, {kind}"
                cpu = f"proxy CPU us per {kind} handshake"
                lgc = f"loadgen CPU during {kind} handshakes (cores)"
                share = "resumed share of the handshakes (%)"
                if a.warmup_round:
                    for s in systems:
                        self.loadgen_once(s, f"{fig}-warmup", 0, self.hs_args(2, 0.5, resume), 40)

                def take(s, res, row=row, cpu=cpu, lgc=lgc, share=share, resume=resume):
                    self.add(v, row, s, res["per_s"])
                    self.add(v, cpu, s, res["cpu_us_per_handshake"])
                    self.add(v, lgc, s, res["loadgen_cores"])
                    if resume and res.get("tls_handshakes"):
                        self.add(v, share, s, 100.0 * res["tls_resumed"] / res["tls_handshakes"])
                self.interleaved(systems, fig, self.hs_args(a.seconds, a.warmup, resume),
                                 hs_timeout, take)
            elif fig == "latency":
                args = ["latency", "--concurrency", "1", "--count", str(a.latency_count),
                        "--target", f"127.0.0.1:{self.P_ECHO}", "--timeout", "150"]

                def take(s, res):
                    self.add(v, "latency p50, TLS handshake + CONNECT->200, 1 at a time (ms)", s,
                             res["p50_ms"])
                    self.add(v, "latency p99, TLS handshake + CONNECT->200, 1 at a time (ms)", s,
                             res["p99_ms"])
                    self.add(v, "latency p50, CONNECT->200 alone (ms)", s, res.get("req_p50_ms"))
                    self.add(v, "latency p99, CONNECT->200 alone (ms)", s, res.get("req_p99_ms"))
                self.interleaved(systems, fig, args, 180, take)
            elif fig == "idle":
                args = ["idle", "--tunnels", str(a.idle_tunnels), "--target",
                        f"127.0.0.1:{self.P_ECHO}", "--hold", str(a.idle_hold),
                        "--open-timeout", "60"]

                def take(s, res):
                    self.add(v, "idle: RSS KiB per TLS tunnel", s, res["kib_per_tunnel"])
                    self.add(v, "idle: fds per TLS tunnel", s, res["fds_per_tunnel"])
                    self.add(v, "idle: tunnels held", s, res["established"])
                    if res["established"] < a.idle_tunnels:
                        self.notes.append(f"{LABEL[s]} held only {res['established']} of "
                                          f"{a.idle_tunnels} idle TLS tunnels")
                # A fresh process for each run, so the RSS baseline is not a previous run's heap.
                self.interleaved(systems, fig, args, 60 + a.idle_hold + 60, take, fresh=True)
                for s in systems:  # leave each fresh for whatever runs next
                    try:
                        self.restart(s)
                    except Skip as e:
                        self.notes.append(f"{LABEL[s]}: restart after idle: {e}")
            elif fig.startswith("tput_"):
                _, d, n = fig.split("_")
                n = int(n)
                t = "" if n == 1 else "s"
                row = f"throughput {n} tunnel{t} {d} (MB/s)"
                cpu = f"proxy CPU s per GB, {n} tunnel{t} {d}"
                args = ["throughput", "--tunnels", str(n), "--dir", d, "--target",
                        f"127.0.0.1:{self.P_SINK if d == 'up' else self.P_SOURCE}", "--seconds",
                        str(a.seconds), "--warmup", str(a.warmup), "--threads",
                        str(min(n, a.threads_multi))]

                def take(s, res, row=row, cpu=cpu):
                    self.add(v, row, s, res["mb_per_s"])
                    self.add(v, cpu, s, res["cpu_s_per_gb"])
                self.interleaved(systems, fig, args, a.warmup + a.seconds + 40, take)


# ---- the report --------------------------------------------------------------------------------

ROW_ORDER = ["TLS handshakes/s", "proxy CPU us per full", "resumed share", "proxy CPU us per res",
             "loadgen CPU during full", "loadgen CPU during res", "latency p50, TLS",
             "latency p99, TLS", "latency p50, CONNECT", "latency p99, CONNECT", "throughput 1",
             "proxy CPU s per GB, 1", "throughput 8", "proxy CPU s per GB, 8", "idle: RSS",
             "idle: fds", "idle: tunnels"]


def row_key(row):
    for i, k in enumerate(ROW_ORDER):
        if row.startswith(k):
            sub = 0 if "full" in row else 1
            sub += 2 * (" down" in row)
            return (i, sub, row)
    return (99, 0, row)


def ratio(a, b):
    return None if a is None or not b else a / b


def report_table(values, systems):
    peers = [s for s in systems if s != "connectd"]
    heads = ["figure"] + [LABEL[s] for s in systems]
    if "connectd" in systems:
        heads += [f"connectd/{LABEL[s]}" for s in peers]
    rows = []
    for row in sorted(values, key=row_key):
        per = values[row]
        cells = [row] + [cell(per.get(s, [])) for s in systems]
        if "connectd" in systems:
            mc = med(per.get("connectd", []))
            for s in peers:
                q = ratio(mc, med(per.get(s, [])))
                cells.append("-" if q is None or "share" in row or "loadgen" in row
                             else f"{q:.2f}")
        rows.append(cells)
    return md_table(heads, rows)


def targets(values, systems, concurrency):
    """connectd >= 1.5 x Squid on handshakes and throughput, <= 1/2 its memory per tunnel."""
    out = []
    if "connectd" not in systems or "squid" not in systems:
        return ["- not judged: " + ("connectd" if "connectd" not in systems else "Squid") +
                " was not measured"]

    def m(row, s):
        return med(values.get(row, {}).get(s, []))

    rows = [f"TLS handshakes/s at {concurrency} concurrent, full",
            f"TLS handshakes/s at {concurrency} concurrent, resumed"]
    rows += [f"throughput {n} tunnel{'' if n == 1 else 's'} {d} (MB/s)" for n in (1, 8)
             for d in ("up", "down")]
    # Beside each rate, what the proxy spent on it: on 2 shared cores the rate is also bounded
    # by loadgen's own TLS work (its row in the table), the CPU figure is not.
    cpu_rows = {rows[0]: "proxy CPU us per full handshake",
                rows[1]: "proxy CPU us per resumed handshake"}
    for row in rows:
        q = ratio(m(row, "connectd"), m(row, "squid"))
        if q is None:
            out.append(f"- {row}: connectd/squid not measured")
            continue
        cpu_row = cpu_rows.get(row) or row.replace("throughput", "proxy CPU s per GB,") \
            .replace(" (MB/s)", "")
        c = ratio(m(cpu_row, "connectd"), m(cpu_row, "squid"))
        out.append(f"- {row}: connectd/squid {q:.2f} (target >= {TARGET_RATIO:g}): "
                   f"{verdict(q >= TARGET_RATIO)}" +
                   (f"; proxy CPU per {'handshake' if 'handshake' in row else 'GB'} "
                    f"connectd/squid {c:.2f}" if c is not None else ""))
    row = "idle: RSS KiB per TLS tunnel"
    q = ratio(m(row, "connectd"), m(row, "squid"))
    if q is None:
        out.append(f"- {row}: connectd/squid not measured")
    else:
        out.append(f"- {row}: connectd {fmt(m(row, 'connectd'))} KiB vs squid "
                   f"{fmt(m(row, 'squid'))} KiB = {q:.2f} (target <= {TARGET_MEM:g}): "
                   f"{verdict(q <= TARGET_MEM)}")
    return out


# ---- main --------------------------------------------------------------------------------------

QUICK = {"repeats": 1, "seconds": 2.0, "warmup": 0.5, "latency_count": 300,
         "idle_tunnels": 300, "idle_hold": 1.0, "quiet_wait": 30.0}
NORMAL = {"repeats": 3, "seconds": 5.0, "warmup": 1.0, "latency_count": 1000,
          "idle_tunnels": 1000, "idle_hold": 1.0, "quiet_wait": 120.0}
ENV = {"repeats": "REPEATS", "seconds": "BENCH_SECONDS", "warmup": "BENCH_WARMUP",
       "latency_count": "TLS_LATENCY_COUNT", "idle_tunnels": "TLS_IDLE_TUNNELS",
       "idle_hold": "TLS_IDLE_HOLD", "quiet_wait": "BENCH_QUIET_WAIT"}


def parse_args():
    ap = argparse.ArgumentParser(
        description="connectd's HTTPS-proxy (TLS) listener next to Squid https_port and "
                    "stunnel+tinyproxy (see the docstring). Defaults: 3 rounds, 5 s windows; "
                    "--quick: 1 round, 2 s windows, smaller counts.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="1 round, 2 s windows after 0.5 s, 300 latency samples, 300 idle "
                         "tunnels, 30 s quiet wait (explicit options still win)")
    ap.add_argument("--repeats", type=int, help="interleaved rounds [REPEATS] (3)")
    ap.add_argument("--seconds", type=float, help="measured window [BENCH_SECONDS] (5)")
    ap.add_argument("--warmup", type=float, help="warm-up before the window [BENCH_WARMUP] (1)")
    ap.add_argument("--concurrency", type=int, default=int(env("HANDSHAKE_CONCURRENCY", 64)),
                    help="handshakes in flight [HANDSHAKE_CONCURRENCY]")
    ap.add_argument("--latency-count", type=int,
                    help="handshakes timed one at a time [TLS_LATENCY_COUNT] (1000)")
    ap.add_argument("--idle-tunnels", type=int,
                    help="idle TLS tunnels opened [TLS_IDLE_TUNNELS] (1000)")
    ap.add_argument("--idle-hold", type=float, help="seconds they are held [TLS_IDLE_HOLD] (1)")
    ap.add_argument("--threads-hs", type=int, default=int(env("LOADGEN_THREADS_HS", 2)),
                    help="loadgen threads for the handshake runs [LOADGEN_THREADS_HS]")
    ap.add_argument("--threads-multi", type=int, default=int(env("LOADGEN_THREADS_MULTI", 2)),
                    help="loadgen threads for the 8-tunnel runs [LOADGEN_THREADS_MULTI]")
    ap.add_argument("--no-warmup-round", dest="warmup_round", action="store_false",
                    default=env("BENCH_WARMUP_ROUND", "1") == "1",
                    help="skip the untimed 2 s handshake round per system [BENCH_WARMUP_ROUND=0]")
    ap.add_argument("--systems", default=env("TLS_SYSTEMS", ",".join(SYSTEMS_ALL)),
                    help="of " + ",".join(SYSTEMS_ALL) + " (stunnel = stunnel+tinyproxy) "
                         "[TLS_SYSTEMS]")
    ap.add_argument("--figures", default=env("TLS_FIGURES", ",".join(FIGURES_ALL)),
                    help="of " + ",".join(FIGURES_ALL) + ", in the order they run [TLS_FIGURES]")
    ap.add_argument("--verify", action="store_true", default=env("TLS_VERIFY", "0") == "1",
                    help="loadgen verifies the certificate on every handshake (--cacert); the "
                         "check before measuring always does [TLS_VERIFY=1]")
    ap.add_argument("--suites", default=env("TLS_SUITES", ""),
                    help="loadgen offers only these TLS 1.3 suites (e.g. TLS_AES_128_GCM_SHA256), "
                         "so that every proxy runs the same one; default: OpenSSL's offer, each "
                         "proxy picks [TLS_SUITES]")
    ap.add_argument("--port-base", type=int, default=int(env("BENCH_PORT_BASE", 18500)),
                    help="loopback ports used: base+1..3, +10, +11, +20, +30, +31 "
                         "[BENCH_PORT_BASE]")
    add_noise_args(ap)  # --other-load, --noisy-retries, --quiet-wait
    ap.set_defaults(quiet_wait=None)
    ap.add_argument("--figure-quiet-wait", type=float,
                    default=float(env("TLS_FIGURE_QUIET_WAIT", 30)),
                    help="before each figure, wait at most this long for a quiet machine (the "
                         "wait before the first is --quiet-wait) [TLS_FIGURE_QUIET_WAIT]")
    ap.add_argument("--max-minutes", type=float, default=float(env("TLS_MAX_MINUTES", 45)),
                    help="no loadgen run starts after this many minutes [TLS_MAX_MINUTES]")
    ap.add_argument("--results", default=env("TLS_RESULTS", ""),
                    help="output file (default build/bench/tls-results.txt) [TLS_RESULTS]")
    ap.add_argument("--squid", default=env("SQUID", ""),
                    help="the squid binary (default: squid on PATH, /usr/sbin) [SQUID]")
    add_connectd_args(ap, "TLS_CONNECTD_COMMIT")
    ap.add_argument("--hold", help=argparse.SUPPRESS)  # the holder child
    a = ap.parse_args()
    if a.hold:
        return a
    base = QUICK if a.quick else NORMAL
    for k, d in base.items():
        if getattr(a, k) is None:
            e = os.environ.get(ENV[k])
            setattr(a, k, type(d)(e) if e else d)
    return a


def main():
    a = parse_args()
    if a.hold:
        return hold_main(a.hold)
    systems = [s for s in a.systems.split(",") if s]
    figures = [f for f in a.figures.split(",") if f]
    for s in systems:
        if s not in SYSTEMS_ALL:
            sys.exit(f"tls-bench: unknown system {s!r}")
    for f in figures:
        if f not in FIGURES_ALL:
            sys.exit(f"tls-bench: unknown figure {f!r}")
    if not (0 < a.repeats <= 100 and 0 < a.seconds <= 600 and 0 <= a.warmup <= 60 and
            0 < a.concurrency <= 10000 and 0 < a.latency_count <= 1000000 and
            0 < a.idle_tunnels <= 9000 and 0 <= a.idle_hold <= 60 and
            1 <= a.threads_multi <= 16 and 1 <= a.threads_hs <= 16 and
            1024 < a.port_base <= 65400 and
            0 <= a.quiet_wait <= 3600 and 0 <= a.noisy_retries <= 5 and
            0 < a.max_minutes <= 600):
        sys.exit("tls-bench: an option is out of range")
    ensure_packages(systems)
    squid = None
    if "squid" in systems:
        squid = a.squid or which("squid")
        if not squid:
            sys.exit("tls-bench: squid is not installed (as root: apt-get install "
                     "squid-openssl), or leave it out: --systems connectd,stunnel")
    if "stunnel" in systems and not ((which("stunnel4") or which("stunnel")) and
                                     which("tinyproxy")):
        sys.exit("tls-bench: stunnel4 or tinyproxy is not installed (as root: apt-get install "
                 "--no-install-recommends stunnel4 tinyproxy), or leave them out: "
                 "--systems connectd,squid")
    bin_dir = os.path.join(ROOT, "build", "bench")
    results = a.results or os.path.join(bin_dir, "tls-results.txt")

    tmp = tempfile.mkdtemp(prefix="connectd-tls-bench-")
    binary, built = None, "-"
    early_skip = {}
    if "connectd" in systems:
        try:
            binary, built = connectd_binary(a.connectd_bin, a.connectd_commit, tmp,
                                            "tls-bench", log)
            binary = os.path.abspath(binary)
            if built.startswith("make"):
                # A snapshot: the work tree may be rebuilt while this runs (and the proxies
                # are restarted for the idle figure).
                snap = os.path.join(tmp, "connectd-worktree")
                shutil.copy2(binary, snap)
                built += f" at {time.strftime('%H:%M:%S')}, copied to the temp dir"
                binary = snap
        except SystemExit as e:  # make failed (a work tree mid-edit): measure the peers
            os.makedirs(tmp, exist_ok=True)  # connectd_binary removed it
            early_skip["connectd"] = f"no binary: {e}"
            systems = [s for s in systems if s != "connectd"]
            log(f"connectd: SKIPPED: {e}")
    build_tools(bin_dir, log, beside="tls")
    cert, key, fingerprint = make_cert(tmp)
    b = Bench(a, tmp, bin_dir, binary, squid, cert, key)
    b.skipped.update(early_skip)
    if squid and squid_flavour(squid) != "openssl":
        b.skipped["squid"] = (f"{squid} is not Squid's OpenSSL flavour (Debian package "
                              "squid-openssl; the GnuTLS one, package squid, is installed: "
                              "apt-get install squid-openssl)")
        systems = [s for s in systems if s != "squid"]
    stop_req = refuse_busy_ports_and_trap_sigterm(b.ports(), tmp, "tls-bench")
    t_start = time.monotonic()
    commit, dirty = repo_state()
    values = {}
    quiet = None
    fatal = None
    measured = []
    try:
        quiet = wait_quiet(a.other_load, a.quiet_wait, log)
        b.start_target(lifetime=min(3600, a.max_minutes * 60 + 600))
        for s in systems:
            try:
                b.start_system(s)
                b.check(s)
                measured.append(s)
            except Skip as e:
                b.skipped[s] = str(e)
                b.started.stop(s)
                log(f"{LABEL[s]}: SKIPPED: {e}")
        if not measured:
            raise SystemExit("tls-bench: no system could be measured")
        log(f"systems {[LABEL[s] for s in measured]}, {a.repeats} rounds, {a.seconds:g} s "
            f"windows after {a.warmup:g} s; configs and logs in {tmp}")
        b.run_figures(measured, figures, values)
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
    versions = []
    short = []  # the same, shorter, for the BENCHMARKS.md block
    if binary:
        ver = cmd_out([binary, '-V'])
        ver = ver if ver.startswith("connectd") else f"connectd {ver}"
        wt = dirty and built.startswith("make")  # a build of the work tree as it stands
        versions.append(f"{ver} ({built}; HEAD {commit}" +
                        (f"; src/include modified in the work tree: {', '.join(dirty)}"
                         if wt else "") + ")")
        short.append(f"{ver} ({'work tree at ' if wt else ''}{commit})")
    if squid:
        versions.append(f"{cmd_out([squid, '-v'])}")
        short.append(versions[-1].replace("Squid Cache: Version", "Squid"))
    if "stunnel" in systems:
        st = subprocess.run([which("stunnel4") or "stunnel4", "-version"], capture_output=True,
                            text=True).stderr.splitlines()
        stv = next((ln.strip() for ln in st if ln.startswith("stunnel")), "stunnel ?")
        tpv = cmd_out([which("tinyproxy") or "tinyproxy", "-v"])
        versions.append(f"{stv} + {tpv}")
        short.append(f"{' '.join(stv.split()[:2])} + {tpv}")
    versions.append(cmd_out(["openssl", "version"]))
    short.append(" ".join(versions[-1].split()[:2]))
    def negotiated(s, i):
        """What loadgen's runs negotiated (the check's own client offers other suites)."""
        seen = sorted({f"{r.get('tls_version')} {r.get('tls_cipher')} {r.get('tls_group')}"
                       for r in b.runs if r.get("system") == s and r.get("tls_cipher")})
        return (f"{LABEL[s]} {' / '.join(seen) or i['version'] + ' ' + i['cipher']}, ALPN "
                f"{i['alpn'] or 'none'}, resumption {'yes' if i['resumes'] else 'no'}")
    tls_desc = "; ".join(negotiated(s, i) for s, i in b.tls_info.items())
    method = (f"{a.repeats} interleaved round(s) (the order rotated each round); "
              f"{a.seconds:g} s windows after {a.warmup:g} s warm-up; {a.concurrency} handshakes "
              f"in flight over {a.threads_hs} loadgen thread(s); latency over {a.latency_count} handshakes one at a time; "
              f"{a.idle_tunnels} idle TLS tunnels; loadgen offers "
              f"{a.suites or 'OpenSSL default TLS 1.3 suites'}; 1 MB = 10^6 bytes; cells are median "
              f"(min-max), "
              f"ratios are of medians; loadgen " +
              ("verifies the certificate (--cacert)" if a.verify else
               "does not verify the certificate (the check before does)") +
              f"; took {took:.0f} s")
    text = [f"# connectd HTTPS-proxy (TLS) listener next to Squid https_port and "
            f"stunnel+tinyproxy, {now}", ""]
    text += [f"- {v}" for v in versions]
    text += [f"- machine: {os.cpu_count()} x {cpu_model()}, kernel {platform.release()}, hard "
             f"open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]}",
             f"- certificate: ECDSA P-256, self-signed (SHA-256 {fingerprint[:23]}...), the "
             f"same for all; negotiated: {tls_desc or '-'}",
             f"- method: {method}",
             f"- other work on the machine at the start: "
             f"{'-' if quiet is None else f'{quiet:.2f} cores'}"]
    for s, why in b.skipped.items():
        text.append(f"- **{LABEL[s]}: SKIPPED**: {why}")
    text.append("")
    table = report_table(values, measured) if values else "(nothing measured)"
    tg = targets(values, measured, a.concurrency)
    text += [table, "", "Targets (connectd against Squid https_port, medians of this run):"]
    text += tg
    if b.checks:
        text += ["", "Checks:"] + [f"- {c}" for c in b.checks]
    for name in sorted(os.listdir(tmp)):  # what the daemons said, before the dir goes
        if not (name.endswith(".err") or name.endswith("cache.log")) or \
                name.startswith(("target", "holder")):
            continue
        try:
            with open(os.path.join(tmp, name), errors="replace") as f:
                said = [ln.rstrip() for ln in f if ln.strip()]
        except OSError:
            said = []
        if name.endswith("cache.log"):
            said = [ln for ln in said if any(x in ln for x in ("ERROR", "FATAL", "WARNING"))]
        else:
            said = [ln for ln in said if not any(x in ln for x in (
                "carries only", "running as root", "No trusted certificates"))]
        # Each loadgen run ends by exiting with connections in flight: mid-handshake (Squid:
        # "system call failure while accepting a TLS connection") or mid-stream (stunnel:
        # "... unsent byte(s)", "Connection reset by peer"). Counted apart from the rest.
        expected = [ln for ln in said if any(x in ln for x in (
            "system call failure while accepting a TLS connection", "unsent byte",
            "Connection reset by peer", "SSL_ERROR_SYSCALL", "Broken pipe",
            "unexpected eof while reading"))]
        other = [ln for ln in said if ln not in expected]
        if expected:
            b.notes.append(f"{name}: {len(expected)} line(s) about connections that loadgen "
                           f"left in flight when a run ended (expected), e.g. "
                           f"{expected[-1][-200:]}")
        if other:
            b.notes.append(f"{name} has {len(other)} other line(s) "
                           f"{'of warnings' if name.endswith('.log') else 'on stderr'}, the last: "
                           f"{other[-1][-300:]}")
    if b.notes:
        text += ["", "Notes:"] + [f"- {n}" for n in b.notes]

    block = [f"### HTTPS-proxy listener: TLS from the client (`make bench-tls` = bench/tls.py, "
             f"{a.repeats} round{'s' if a.repeats != 1 else ''})", "",
             f"Run {now}: {', '.join(short)}. Same ECDSA P-256 certificate for all; negotiated "
             f"{tls_desc or '-'}. {method}.", ""]
    block += [f"**{LABEL[s]} skipped**: {why}" for s, why in b.skipped.items()]
    if b.skipped:
        block.append("")
    block += [table, "", "Targets (connectd against Squid https_port):", ""] + tg
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
                   "systems": measured, "skipped": b.skipped, "values": values,
                   "tls": b.tls_info, "runs": b.runs, "checks": b.checks, "notes": b.notes,
                   "took_s": round(took, 1)}, f, indent=1, default=str)
    log(f"results written to {results} (block: {stem}-block.md, raw: {stem}.json); "
        f"took {took:.0f} s")
    shutil.rmtree(tmp, ignore_errors=True)
    if stop_req:
        return 130
    if fatal:
        return 1
    return 2 if b.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
