"""Fixtures for the connectd integration tests.

Everything here talks to loopback only: the proxy listens on 127.0.0.1 / ::1, its DNS servers
are the test's own responder on 127.0.0.1, upstream servers are Python threads or
`openssl s_server` on loopback. Every wait is bounded.

Environment: CONNECTD_BIN (default: ./connectd at the repository root).
"""

import os
import re
import resource
import signal
import ssl
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from dnsserver import DNSServer  # noqa: E402
from netutil import (  # noqa: E402
    LOOPBACK4,
    Client,
    fmt_hostport,
    free_port,
    have_ipv6,
    read_access_log,
    wait_port,
)
from servers import TCPServer  # noqa: E402
import tlsfix  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
SHIPPED_CONFIG = os.path.join(REPO, "conf", "proxy.ini")
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:")
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
READY_TIMEOUT = 5.0
if os.environ.get("CONNECTD_VALGRIND"):  # make check-valgrind: everything is 20-50x slower
    STOP_GRACE = READY_TIMEOUT = 60.0

# The config every test starts from; tests override single keys. Loopback upstreams need
# deny_private = no; DNS always goes to the test's own responder.
BASE_CONFIG = {
    "server": {"listen": None, "user": "root"},  # tests run as root; the drop has its own tests
    "access": {
        "allow_ports": "1-65535",
        "allow_hosts": "*",
        "deny_hosts": "",
        "allow_clients": "127.0.0.0/8, ::1",
        "deny_private": "no",
    },
    "dns": {"servers": None},
    "timeouts": {"handshake": "2s", "dns": "2s", "connect": "2s", "idle": "30s"},
    "limits": {"max_connections": "10000", "max_request_bytes": "16384"},
    "log": {"level": "debug", "access_log": None},
}


# The client transports a test can run on: "plain" TCP to a plain listener, "tls" to a listener
# with the `tls` option (HTTPS proxy). `@both_transports` on a test (or `pytestmark` on a module)
# runs it once per transport; every proxy start_proxy makes then serves that transport, and
# Proxy.client / tunnel / tls (for netutil.refusal_for) use it. Without it: "plain".
TRANSPORTS = ("plain", "tls")
both_transports = pytest.mark.parametrize("transport", TRANSPORTS)


# ---- the binary ----------------------------------------------------------------------------


def _find_bin():
    b = os.environ.get("CONNECTD_BIN")
    if b:
        return os.path.abspath(b), True
    return os.path.join(REPO, "connectd"), False


@pytest.fixture(scope="session")
def connectd_bin():
    path, explicit = _find_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        if explicit:
            pytest.fail(f"CONNECTD_BIN={path} is not an executable file")
        pytest.skip(f"no connectd binary at {path} (build with make, or set CONNECTD_BIN)")
    return path


# ---- ini editing ---------------------------------------------------------------------------


def apply_ini_overrides(text, overrides):
    """Return text with overrides {section: {key: value or None}} applied: an existing
    'key = ...' line in the section is replaced (None: removed), a missing key is added at the
    end of its section, a missing section is appended. Comments and other lines are kept."""
    lines = text.split("\n")
    for section, kv in overrides.items():
        for key, value in kv.items():
            sec = None
            sec_end = None  # index after the last line of the wanted section
            found = None
            for i, line in enumerate(lines):
                s = line.strip()
                m = re.match(r"^\[([^\]]+)\]", s)
                if m:
                    sec = m.group(1).strip()
                    continue
                if sec == section:
                    sec_end = i + 1
                    km = re.match(r"^([A-Za-z0-9_.-]+)\s*[=:]", s)
                    if km and km.group(1) == key and not s.startswith((";", "#")):
                        found = i
            if sec_end is None:
                # the section may exist but be empty
                for i, line in enumerate(lines):
                    if line.strip() == f"[{section}]":
                        sec_end = i + 1
            if found is not None:
                if value is None:
                    del lines[found]
                else:
                    lines[found] = f"{key} = {value}"
            elif value is not None:
                if sec_end is None:
                    lines += ["", f"[{section}]", f"{key} = {value}"]
                else:
                    lines.insert(sec_end, f"{key} = {value}")
    return "\n".join(lines)


def render_ini(cfg):
    out = []
    for section, kv in cfg.items():
        out.append(f"[{section}]")
        for k, v in kv.items():
            if v is not None:
                out.append(f"{k} = {v}")
        out.append("")
    return "\n".join(out)


def merge(base, overrides):
    cfg = {s: dict(kv) for s, kv in base.items()}
    for s, kv in (overrides or {}).items():
        cfg.setdefault(s, {})
        for k, v in kv.items():
            if v is None:
                cfg[s].pop(k, None)
            else:
                cfg[s][k] = v
    return cfg


# ---- the proxy -----------------------------------------------------------------------------


class Proxy:
    def __init__(self, binary, workdir, name, config_text, listen_host, port, extra_ports,
                 env=None, rlimit_nofile=None):
        self.binary = binary
        self.host = listen_host
        self.port = port
        self.extra_ports = extra_ports
        self.dir = workdir
        self.config_path = os.path.join(workdir, f"{name}.ini")
        self.stderr_path = os.path.join(workdir, f"{name}.stderr")
        self.access_log = os.path.join(workdir, f"{name}.access.log")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.config_text = config_text
        self._stderr = open(self.stderr_path, "wb")
        penv = None
        if env:
            penv = dict(os.environ)
            penv.update(env)
        preexec = None
        if rlimit_nofile is not None:
            # Soft and hard both: the daemon raises its soft limit to the hard one at start.
            soft, hard = (rlimit_nofile if isinstance(rlimit_nofile, tuple)
                          else (rlimit_nofile, rlimit_nofile))

            def preexec():
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        self.tls = None  # ssl.SSLContext of this proxy's clients when port is a TLS listener
        self.plain_port = port  # where the readiness probe connects (plain TCP)
        self.proc = subprocess.Popen([binary, "-c", self.config_path], stdin=subprocess.DEVNULL,
                                     stdout=self._stderr, stderr=self._stderr, env=penv,
                                     preexec_fn=preexec)
        self.pid = self.proc.pid
        self.clients = []
        self.probes = []  # local addresses of readiness probes, left out of log_lines()
        self.stopped = False  # the test stopped it on purpose
        self.t_start = time.monotonic()

    def rewrite_config(self, overrides=None, text=None):
        """Change the config file on disk (for SIGHUP): overrides applied to the current text,
        or a whole new text."""
        self.config_text = text if text is not None else apply_ini_overrides(self.config_text,
                                                                             overrides or {})
        tmp = self.config_path + ".new"
        with open(tmp, "w") as f:
            f.write(self.config_text)
        os.replace(tmp, self.config_path)

    def wait_log(self, needle, count=1, timeout=5.0):
        """Wait (bounded) until stderr holds needle at least count times; returns the text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr_text()
            if text.count(needle) >= count:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} x{count} not in stderr:\n{text[-3000:]}")
            time.sleep(0.05)

    def use_tls(self, port, ctx):
        """From now on clients connect with TLS (ctx) to the TLS listener on port (self.port);
        the readiness probe keeps the plain listener (self.plain_port)."""
        self.port = port
        self.tls = ctx

    def wait_ready(self, timeout=READY_TIMEOUT):
        if not wait_port(self.host, self.plain_port, timeout, self.proc, self.probes):
            self.fail_not_ready(timeout)

    def fail_not_ready(self, timeout):
        rc = self.proc.poll()
        pytest.fail(f"connectd not accepting on {self.host}:{self.plain_port} within "
                    f"{timeout}s (exit status {rc})\n--- config ---\n{self.config_text}\n"
                    f"--- stderr ---\n{self.stderr_text()}")

    def lost_port_race(self):
        """connectd exited because a port probed free was taken before it bound it."""
        return self.proc.poll() is not None and "Address already in use" in self.stderr_text()

    def stderr_text(self):
        try:
            self._stderr.flush()
        except ValueError:
            pass
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def log_lines(self, n=1, timeout=5.0, where=None):
        """Parsed access-log lines (at least n, bounded wait), without the readiness probes.
        With TLS clients (use_tls), a line with a status (a request was read, over TLS) must
        end in tls=TLSv1.3."""
        lines = read_access_log(self.access_log, n, timeout, where, exclude_clients=self.probes)
        if self.tls is not None:
            for x in lines:
                if x["status"] != "0":
                    assert x.get("tls") == "TLSv1.3", f"no tls=TLSv1.3 in {x['_raw']}"
        return lines

    def settle(self, timeout=2.0):
        """Wait until the daemon has finished with the readiness probe connection (its access
        line is written), so it no longer counts towards max_connections. Bounded; falls back
        to a short sleep when the probe is not logged."""
        try:
            read_access_log(self.access_log, 1, timeout,
                            where=lambda x: x.get("client") in self.probes)
        except AssertionError:
            time.sleep(0.2)

    def client(self, source=None, timeout=5.0, host=None, port=None):
        """A Client of this proxy: TLS (self.tls) when it connects to self.port, a TLS listener."""
        tls = self.tls if port in (None, self.port) else None
        c = Client(host or self.host, port or self.port, source=source, timeout=timeout, tls=tls)
        self.clients.append(c)
        return c

    def tunnel(self, target, timeout=5.0, source=None):
        """A connected tunnel to target (asserts the exact 200 reply)."""
        c = self.client(source=source, timeout=timeout)
        c.connect_request(target)
        c.expect_established(timeout)
        return c

    def rss_kb(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def signal(self, sig):
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self, grace=STOP_GRACE):
        """SIGTERM, wait up to grace, then SIGKILL. Returns (returncode, killed)."""
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                killed = True
        return self.proc.returncode, killed

    def sanitizer_report(self):
        text = self.stderr_text()
        hits = [m for m in SANITIZER_MARKERS if m in text]
        return hits, text


def _tail(text, n=150):
    lines = text.splitlines()
    return "\n".join(lines[-n:])


# Under valgrind (make check-valgrind) the daemon runs 20-50x slower: tests whose point is a
# performance or timing figure say nothing there, and their bounds would fail for that reason.
VALGRIND_SKIP_MODULES = {"test_stress", "test_faults", "test_load"}


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("CONNECTD_VALGRIND"):
        return
    skip = pytest.mark.skip(reason="timing/performance test: meaningless under valgrind")
    for item in items:
        if item.module.__name__ in VALGRIND_SKIP_MODULES or item.get_closest_marker("timing"):
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "timing: asserts time bounds; skipped under valgrind")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for p in getattr(item, "_connectd_proxies", []):
            try:
                rep.sections.append((f"connectd stderr ({p.stderr_path})", _tail(p.stderr_text())))
            except OSError:
                pass


@pytest.fixture
def dns():
    """The test's own DNS responder; every proxy started by start_proxy points at it."""
    d = DNSServer()
    yield d
    d.stop()


@pytest.fixture
def tcp_server():
    """Factory: tcp_server(handler, host='127.0.0.1', ...) -> TCPServer, stopped at teardown."""
    made = []

    def make(handler, host=LOOPBACK4, **kw):
        s = TCPServer(handler, host=host, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


@pytest.fixture
def transport():
    """The client transport of the proxies start_proxy makes (see TRANSPORTS): "plain" unless
    the test is parametrized with both_transports."""
    return "plain"


def tls_client_context(certs):
    """What a client of an HTTPS proxy uses: verifies against the test CA, offers http/1.1."""
    ctx = ssl.create_default_context(cafile=certs.ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@pytest.fixture(scope="session")
def client_tls(certs):
    """The ssl.SSLContext of TLS clients of the test proxies (Proxy.tls)."""
    return tls_client_context(certs)


def tls_listener(host, certs, taken=()):
    """A TLS listener for a test proxy: (listen entry "ADDR:PORT tls", PORT, the [tls]
    overrides: the test server certificate and key), on a port other than those taken."""
    port = free_port(host, exclude=taken)
    return (f"{fmt_hostport(host, port)} tls", port,
            {"tls": {"certificate": certs.cert, "key": certs.key}})


@pytest.fixture
def start_proxy(connectd_bin, tmp_path, dns, request, transport):
    """Factory: start_proxy(overrides={section: {key: value}}, base_text=None, listen=None,
    wait=True, rlimit_nofile=None) -> Proxy.

    overrides are applied to BASE_CONFIG (or to base_text, e.g. the shipped proxy.ini);
    value None removes a key. listen defaults to 127.0.0.1:<free port>; pass "[::1]" to listen
    on a free port of ::1, or a full list "127.0.0.1:P1, [::1]:P2" (tests connect to the first).
    rlimit_nofile: N or (soft, hard), the daemon's RLIMIT_NOFILE, set before exec (None: the
    test process's own). At teardown: clients closed, SIGTERM, bounded wait, SIGKILL after 5 s;
    the test errors when the daemon had died before teardown, did not stop on SIGTERM, exited
    with a failure status, or printed a sanitizer report.
    transport "tls" (both_transports): a TLS listener on the same host is added after the
    listen list, and the Proxy's clients use it (Proxy.use_tls); the probe keeps the first."""
    procs = []
    request.node._connectd_proxies = procs

    def make(overrides=None, base_text=None, listen=None, wait=True, dns_servers=None, env=None,
             rlimit_nofile=None):
        # Ports probed free may be taken by another process before connectd binds them (CI saw
        # "bind: Address already in use"): then start again on new ports, twice at most.
        explicit = listen is not None and re.search(r":\d+$", listen.split(",")[0].strip())
        for attempt in range(3):
            p = start_once(overrides, base_text, listen, dns_servers, env, rlimit_nofile)
            if not wait:
                return p
            if wait_port(p.host, p.plain_port, READY_TIMEOUT, p.proc, p.probes):
                return p
            if explicit or attempt == 2 or not p.lost_port_race():
                p.fail_not_ready(READY_TIMEOUT)
            p.stopped = True

    def start_once(overrides, base_text, listen, dns_servers, env, rlimit_nofile):
        n = len(procs)
        host = LOOPBACK4
        if listen is not None and listen.startswith("["):
            host = listen[1:listen.index("]")]
        if host == "::1" and not have_ipv6():
            pytest.skip("no IPv6 loopback")
        if listen is not None and re.search(r":\d+$", listen.split(",")[0].strip()):
            # a full listen list: the first entry is where the tests connect
            listen_spec = listen
            first = listen.split(",")[0].strip()
            hp, port = first.rsplit(":", 1)
            host, port = hp.strip("[]"), int(port)
        else:
            port = free_port(host)
            listen_spec = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        name = f"connectd{n}"
        access = os.path.join(str(tmp_path), f"{name}.access.log")
        tls_port = None
        forced = {}
        if transport == "tls":
            entry, tls_port, forced = tls_listener(host, request.getfixturevalue("certs"),
                                                   taken=(port,))
            listen_spec = f"{listen_spec}, {entry}"
        forced.update({
            "server": {"listen": listen_spec},
            "dns": {"servers": dns_servers or dns.server_spec},
        })
        if base_text is None:
            cfg = merge(BASE_CONFIG, forced)
            cfg["log"]["access_log"] = access
            cfg = merge(cfg, overrides)
            text = render_ini(cfg)
        else:
            text = apply_ini_overrides(base_text, forced)
            text = apply_ini_overrides(text, overrides or {})
        p = Proxy(connectd_bin, str(tmp_path), name, text, host, port, [], env=env,
                  rlimit_nofile=rlimit_nofile)
        procs.append(p)
        if tls_port is not None:
            p.use_tls(tls_port, request.getfixturevalue("client_tls"))
        return p

    yield make

    report = []
    for p in procs:
        for c in p.clients:
            c.close()
    if procs:
        # Let the daemon see the closes before SIGTERM, so that teardown normally finds no
        # tunnel open (test_signals.py checks the drain itself).
        time.sleep(0.1)
    for p in procs:
        problems = []
        if p.stopped:
            rc = p.proc.returncode
        else:
            rc_before = p.proc.poll()
            if rc_before is not None:
                problems.append(f"connectd (pid {p.pid}) exited during the test with status "
                                f"{rc_before}")
            else:
                rc, killed = p.terminate()
                if killed:
                    problems.append(f"connectd (pid {p.pid}) did not exit within {STOP_GRACE}s "
                                    "of SIGTERM; killed")
                elif rc not in (0, -signal.SIGTERM):
                    problems.append(f"connectd (pid {p.pid}) exited with status {rc} after "
                                    "SIGTERM")
        p._stderr.close()
        hits, text = p.sanitizer_report()
        if hits:
            problems.append(f"sanitizer report in connectd stderr ({', '.join(hits)})")
        if problems:
            report.append("\n".join(problems) + f"\n--- connectd stderr ({p.stderr_path}) ---\n"
                          + _tail(text, 200))
    if report:
        pytest.fail("\n\n".join(report), pytrace=False)


@pytest.fixture
def proxy(start_proxy):
    """A proxy with the test defaults."""
    return start_proxy()


# ---- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return tlsfix.make_certs(str(tmp_path_factory.mktemp("certs")))


BIG_SIZE = 10 * 1024 * 1024


@pytest.fixture(scope="session")
def docroot(tmp_path_factory):
    d = tmp_path_factory.mktemp("www")
    data = os.urandom(BIG_SIZE)
    (d / "big.bin").write_bytes(data)
    (d / "hello.txt").write_bytes(b"hello through the tunnel\n")
    import hashlib

    return {"dir": str(d), "big_sha256": hashlib.sha256(data).hexdigest(), "big_size": len(data)}


@pytest.fixture
def tls_server(certs, docroot, tmp_path):
    """Factory: tls_server(host='127.0.0.1') -> TLSFileServer serving docroot."""
    made = []

    def make(host=LOOPBACK4):
        if ":" in host and not have_ipv6():
            pytest.skip("no IPv6 loopback")
        s = tlsfix.TLSFileServer(certs, docroot["dir"], str(tmp_path), host=host)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def run_cli(binary, args, timeout=10):
    r = subprocess.run([binary] + args, capture_output=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    r.out = r.stdout.decode("utf-8", errors="replace")
    r.err = r.stderr.decode("utf-8", errors="replace")
    return r


@pytest.fixture
def cli(connectd_bin):
    def run(*args, timeout=10):
        return run_cli(connectd_bin, list(args), timeout)

    return run
