"""GET /metrics on the admin listener ([admin] listen): the Prometheus text format (0.0.4) that
promtool and a real Prometheus server accept, counters that never go backwards (across reloads
and retiring workers too), and numbers that agree exactly with what the clients did and with
the access log.

Loopback only: the proxy, its admin listener, the upstream servers, the test DNS server and the
Prometheus server all listen on 127.0.0.1. Every wait is bounded; only processes this module
starts are stopped (by their own Popen)."""

import collections
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.parse

import pytest

from authfix import basic, make_hash, write_users
from netutil import check_refusal, closed_port, free_port, parse_access_line, parse_proxy_status
from promutil import decreases, http_get, parse, scrape, scrape_text
from servers import echo_handler, greeting_echo_handler, reset_after_handler, sink_handler

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
MiB = 1024 * 1024


# ---- helpers -------------------------------------------------------------------------------


def children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return sorted(int(x) for x in f.read().split())


def wait_children(pid, n, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = children(pid)
        if len(kids) == n:
            return kids
        time.sleep(0.05)
    raise AssertionError(f"want {n} workers, have {children(pid)}")


def admin_proxy(start_proxy, overrides=None, workers=1):
    """A proxy with an admin listener on a free loopback port (p.admin_port); returns once a
    scrape succeeds (and, with workers > 1, every worker is running)."""
    aport = free_port()
    over = {"admin": {"listen": f"127.0.0.1:{aport}"}, "server": {"workers": str(workers)}}
    for s, kv in (overrides or {}).items():
        over.setdefault(s, {}).update(kv)
    p = start_proxy(over)
    p.admin_port = aport
    if workers > 1:
        wait_children(p.pid, workers)
        # Every worker has started serving (a readiness probe queued on a worker's socket is
        # accepted, and counted, only then).
        p.wait_log("info: ready (max_connections", count=workers)
        p.settle()
    deadline = time.monotonic() + 5
    while True:
        try:
            scrape(aport)
            break
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    return p


def wait_metric(port, pred, what, timeout=5.0):
    """Scrape until pred(exposition) is true (bounded); returns that exposition."""
    deadline = time.monotonic() + timeout
    while True:
        m = scrape(port)
        if pred(m):
            return m
        if time.monotonic() > deadline:
            nonzero = [x for x in m.text.split("\n")
                       if x.startswith("connectd_") and not x.endswith(" 0")]
            raise AssertionError(f"{what}: not reached within {timeout}s; last scrape's non-zero "
                                 "connectd_ samples:\n" + "\n".join(nonzero))
        time.sleep(0.05)


def outcome(m, o):
    return m.get("connectd_tunnels_total", outcome=o)


def raw_access_lines(p):
    """Every access-log line, the readiness probes' included (the metrics count those too)."""
    try:
        with open(p.access_log, "rb") as f:
            text = f.read().decode("latin-1")
    except FileNotFoundError:
        return []
    return [parse_access_line(x) for x in text.split("\n")[:-1] if x]


def wait_access_lines(p, n, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        lines = raw_access_lines(p)
        if len(lines) >= n:
            return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(lines)}/{n} access-log lines within {timeout}s: "
                                 f"{[x['_raw'] for x in lines[-5:]]}")
        time.sleep(0.05)


def settled(p, total_connections, timeout=10.0):
    """Wait until every one of total_connections client connections has its access-log line
    and the daemon holds none open; then scrape again, so that the counters bumped just after
    the line is written are in. Returns (lines, exposition)."""
    lines = wait_access_lines(p, total_connections, timeout)
    wait_metric(p.admin_port,
                lambda m: m.get("connectd_connections_open") == 0
                and sum(outcome(m, o) for o in ("established", "refused", "aborted", "pac"))
                == total_connections, "all connections decided and closed", timeout)
    time.sleep(0.1)
    m = scrape(p.admin_port)
    lines = raw_access_lines(p)
    assert len(lines) == total_connections, (
        f"{len(lines)} access-log lines for {total_connections} connections: "
        f"{[x['_raw'] for x in lines]}")
    return lines, m


class Streamer:
    """Echo rounds through every tunnel, one thread each, until stop(): send chunk, read it
    back exactly, short pause. Counts the bytes each way; stop() finishes the round in flight,
    so the counts are exact."""

    def __init__(self, clients, chunk=8192, pause=0.005):
        self.clients = clients
        self.chunk = chunk
        self.pause = pause
        self.up = [0] * len(clients)
        self.down = [0] * len(clients)
        self.errors = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(len(clients))]

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def _run(self, i):
        c = self.clients[i]
        payload = bytes([i % 251]) * self.chunk
        try:
            while not self._stop.is_set():
                c.send(payload)
                self.up[i] += len(payload)
                got = c.recv_exact(len(payload), timeout=10)
                if got != payload:
                    self.errors.append(f"tunnel {i}: echo mismatch")
                    return
                self.down[i] += len(got)
                time.sleep(self.pause)
        except Exception as e:  # recorded; the test asserts there is none
            self.errors.append(f"tunnel {i}: {e!r}")

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(15)
        assert not any(t.is_alive() for t in self._threads), "a streaming thread hung"
        assert not self.errors, self.errors
        return sum(self.up), sum(self.down)


class Scraper:
    """Scrape every `interval` seconds on a thread; keep every exposition, and note each scrape
    that failed and each monotonic sample that went down between consecutive scrapes."""

    def __init__(self, port, interval=0.1):
        self.port = port
        self.interval = interval
        self.scrapes = []
        self.errors = []
        self.decreases = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._t.start()
        return self

    def _run(self):
        prev = None
        while not self._stop.is_set():
            try:
                m = scrape(self.port)
            except Exception as e:
                self.errors.append(repr(e))
                self._stop.wait(self.interval)
                continue
            if prev is not None:
                for k, old, new in decreases(prev, m):
                    self.decreases.append((len(self.scrapes), k, old, new))
            self.scrapes.append(m)
            prev = m
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self._t.join(10)
        assert not self._t.is_alive(), "scraper thread hung"


def promtool_check(text):
    if not os.access(PROMTOOL, os.X_OK):
        pytest.skip("promtool not installed (Debian package prometheus)")
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True,
                       timeout=30)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 0 and out.strip() == "", (
        f"promtool check metrics: exit {r.returncode}\n{out}")


# ---- 1. promtool on a live scrape under load --------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_promtool_accepts_live_scrape_under_load(start_proxy, tcp_server, dns, workers):
    srv = tcp_server(echo_handler)
    p = admin_proxy(start_proxy, workers=workers)
    # A few refusals first, so their series carry non-zero values too.
    c = p.client()
    c.connect_request("nx.test:443")
    check_refusal(c, 502, "dns_error")
    c = p.client()
    c.send(b"hello there\r\n\r\n")
    check_refusal(c, 400, "http_request_error")
    clients = [p.tunnel(srv.target()) for _ in range(20)]
    st = Streamer(clients).start()
    try:
        texts = []
        deadline = time.monotonic() + 10
        while len(texts) < 3:
            time.sleep(0.2)
            text = scrape_text(p.admin_port)
            m = parse(text)  # strict parse of our own
            if m.get("connectd_tunnels_open") == 20 and m.get(
                    "connectd_bytes_total", direction="upstream") > 0:
                texts.append(text)
            assert time.monotonic() < deadline, "no scrape showed the 20 tunnels streaming"
        for text in texts:
            promtool_check(text)
        # Scrapes taken while bytes flow: the byte counters moved between them.
        ups = [parse(t).get("connectd_bytes_total", direction="upstream") for t in texts]
        assert ups[0] < ups[-1], ups
    finally:
        up, down = st.stop()
    for c in clients:
        c.close()
    m = wait_metric(p.admin_port, lambda m: m.get("connectd_tunnels_open") == 0, "tunnels closed")
    m = wait_metric(p.admin_port,
                    lambda m: m.get("connectd_bytes_total", direction="upstream") == up
                    and m.get("connectd_bytes_total", direction="downstream") == down,
                    f"bytes_total == streamed ({up} up, {down} down)")
    promtool_check(m.text)
    assert m.get("connectd_workers", state="live") == workers
    assert list(m.series("connectd_build_info", "version").values()) == [1]


# ---- 2. a real Prometheus server scrapes it ---------------------------------------------------


@pytest.fixture
def prometheus(tmp_path):
    """Factory: prometheus(targets) -> base URL of a Prometheus server on a free loopback port,
    scraping targets every second. Stopped at teardown (SIGTERM, then SIGKILL)."""
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip("prometheus not installed (Debian package prometheus)")
    procs = []

    def start(targets):
        port = free_port()
        d = tmp_path / f"prom{len(procs)}"
        d.mkdir()
        cfg = d / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: connectd\n    static_configs:\n"
            f"      - targets: [{', '.join(repr(t) for t in targets)}]\n")
        log = open(d / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={d / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=str(d))
        procs.append((proc, log, d))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (
                f"prometheus exited ({proc.returncode}):\n{(d / 'prometheus.log').read_text()}")
            try:
                status, _, _ = http_get(port, "/-/ready", timeout=1)
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus not ready within 20 s"
            time.sleep(0.1)
        return url, port

    yield start
    for proc, log, _ in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def prom_query(port, q):
    status, _, body = http_get(port, "/api/v1/query?" + urllib.parse.urlencode({"query": q}))
    assert status == 200, body[:500]
    doc = json.loads(body)
    assert doc["status"] == "success", doc
    return [(r["metric"], float(r["value"][1])) for r in doc["data"]["result"]]


def test_prometheus_server_scrapes_exact_counts(start_proxy, tcp_server, prometheus):
    srv = tcp_server(echo_handler)
    p = admin_proxy(start_proxy)
    _, pport = prometheus([f"127.0.0.1:{p.admin_port}"])
    n = 7
    up = down = 0
    for i in range(n):
        c = p.tunnel(srv.target())
        data = os.urandom(1000 * (i + 1) + i)
        c.send(data)
        assert c.recv_exact(len(data)) == data
        up += len(data)
        down += len(data)
        c.shutdown_write()
        assert c.read_until_close(5) == (b"", "eof")
        c.close()
    wait_metric(p.admin_port, lambda m: m.get("connectd_tunnels_open") == 0
                and m.get("connectd_bytes_total", direction="downstream") == down, "closed")
    want_est, want_bytes = n, up + down
    deadline = time.monotonic() + 20
    last = None
    while True:
        est = prom_query(pport, 'connectd_tunnels_total{outcome="established"}')
        tot = prom_query(pport, "sum(connectd_bytes_total)")
        last = (est, tot)
        if (len(est) == 1 and est[0][1] == want_est and len(tot) == 1
                and tot[0][1] == want_bytes):
            break
        assert time.monotonic() < deadline, (
            f"prometheus did not see established={want_est}, bytes={want_bytes} within 20 s; "
            f"last answers {last}")
        time.sleep(0.25)
    assert est[0][0]["job"] == "connectd" and est[0][0]["instance"] == f"127.0.0.1:{p.admin_port}"
    # The scrape itself was healthy: up == 1, and the target reports no error.
    assert [v for _, v in prom_query(pport, 'up{job="connectd"}')] == [1.0]
    status, _, body = http_get(pport, "/api/v1/targets")
    targets = json.loads(body)["data"]["activeTargets"]
    assert len(targets) == 1 and targets[0]["health"] == "up", targets
    assert targets[0]["lastError"] == "", targets
    # Histograms arrive as histograms: a quantile over the buckets is computable.
    r = prom_query(pport, "histogram_quantile(0.5, connectd_connect_duration_seconds_bucket)")
    assert len(r) == 1 and 0 <= r[0][1] < 5, r
    r = prom_query(pport, "connectd_connect_duration_seconds_count")
    assert [v for _, v in r] == [float(n)]


# ---- 3. counters never go backwards across reloads -------------------------------------------


def test_counters_monotonic_across_reloads_with_two_workers(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = admin_proxy(start_proxy, workers=2)
    p.settle()
    m0 = scrape(p.admin_port)
    assert m0.get("connectd_config_generation") == 1
    clients = [p.tunnel(srv.target()) for _ in range(20)]
    st = Streamer(clients, chunk=4096).start()
    sc = Scraper(p.admin_port, 0.1).start()
    extra_up = extra_down = 0
    extra_tunnels = 0
    try:
        time.sleep(0.8)
        # (a) in place: same sockets, each worker reads the file again
        p.rewrite_config({"timeouts": {"idle": "31s"}})
        p.signal(signal.SIGHUP)
        p.wait_log("reloaded " + p.config_path, count=3)  # the master and both workers
        time.sleep(0.8)
        # (b) a listen address added: new workers, the old ones retire with the 20 tunnels
        new_port = free_port()
        p.rewrite_config({"server": {"listen": f"127.0.0.1:{p.port}, 127.0.0.1:{new_port}"}})
        p.signal(signal.SIGHUP)
        p.wait_log("new workers, 2 retiring")
        p.wait_log("retiring: no longer accepting", count=2)
        for port in (p.port, new_port):  # the new workers serve both addresses
            c = p.client(port=port)
            c.connect_request(srv.target())
            c.expect_established()
            c.send(b"fresh")
            assert c.recv_exact(5) == b"fresh"
            c.shutdown_write()
            assert c.read_until_close(5) == (b"", "eof")
            c.close()
            extra_up += 5
            extra_down += 5
            extra_tunnels += 1
        mid = wait_metric(p.admin_port,
                          lambda m: m.get("connectd_workers", state="retiring") == 2
                          and m.get("connectd_tunnels_open") == 20,
                          "two retiring workers with the 20 tunnels")
        assert mid.get("connectd_workers", state="live") == 2
        assert mid.get("connectd_worker_tunnels_open", worker="retiring") == 20, mid.text
        assert mid.get("connectd_tunnels_open") == 20
        time.sleep(0.8)
    finally:
        up, down = st.stop()
    for c in clients:
        c.close()
    p.wait_log("retired worker", count=2, timeout=10)
    time.sleep(0.5)
    sc.stop()
    assert not sc.errors, f"scrapes failed: {sc.errors[:5]}"
    assert len(sc.scrapes) >= 15, f"only {len(sc.scrapes)} scrapes"
    assert not sc.decreases, "counter samples went down between consecutive scrapes:\n" + "\n".join(
        f"scrape #{i}: {k[0]}{dict(k[1])}: {old} -> {new}" for i, k, old, new in sc.decreases[:30])
    assert any(s.get("connectd_workers", state="retiring") == 2 for s in sc.scrapes)

    m = scrape(p.admin_port)
    # The retired workers are gone, their numbers are not.
    assert m.get("connectd_workers", state="retiring") == 0
    assert m.get("connectd_workers", state="live") == 2
    assert not m.has("connectd_worker_tunnels_open", worker="retiring")
    assert m.get("connectd_tunnels_open") == 0
    assert m.get("connectd_connections_open") == 0
    assert outcome(m, "established") == 20 + extra_tunnels
    assert m.get("connectd_bytes_total", direction="upstream") == up + extra_up
    assert m.get("connectd_bytes_total", direction="downstream") == down + extra_down
    assert sum(m.series("connectd_tunnels_closed_total", "reason").values()) == 20 + extra_tunnels
    assert m.get("connectd_tunnel_duration_seconds_count") == 20 + extra_tunnels
    assert m.get("connectd_connect_duration_seconds_count") == 20 + extra_tunnels
    assert m.get("connectd_reloads_total", result="success") == (
        m0.get("connectd_reloads_total", result="success") + 2)
    assert m.get("connectd_reloads_total", result="failure") == 0
    assert m.get("connectd_config_generation") == m0.get("connectd_config_generation") + 2
    assert m.get("connectd_last_reload_successful") == 1
    assert m.get("connectd_last_reload_timestamp_seconds") > m0.get(
        "connectd_last_reload_timestamp_seconds")
    assert m.get("connectd_worker_restarts_total") == 0
    # The access log agrees (every line, the readiness probe's included).
    lines = raw_access_lines(p)
    ok = [x for x in lines if x["status"] == "200"]
    assert len(ok) == 20 + extra_tunnels
    assert sum(int(x["up"]) for x in ok) == up + extra_up
    assert sum(int(x["down"]) for x in ok) == down + extra_down

    # A broken configuration: failure counted, generation unchanged.
    t_before = m.get("connectd_last_reload_timestamp_seconds")
    p.rewrite_config(text=p.config_text + "\n[access]\nbogus_key = 1\n")
    p.signal(signal.SIGHUP)
    p.wait_log("still serving the previous configuration")
    m2 = wait_metric(p.admin_port,
                     lambda x: x.get("connectd_reloads_total", result="failure") == 1,
                     "reload failure counted")
    assert m2.get("connectd_reloads_total", result="success") == m.get(
        "connectd_reloads_total", result="success")
    assert m2.get("connectd_config_generation") == m.get("connectd_config_generation")
    assert m2.get("connectd_last_reload_successful") == 0
    assert m2.get("connectd_last_reload_timestamp_seconds") > t_before
    assert not decreases(m, m2)


def test_counters_survive_a_killed_worker(start_proxy, tcp_server):
    """A worker killed (SIGKILL) with tunnels open: the master restarts it; what it had counted
    stays in the totals, and no counter goes down."""
    srv = tcp_server(echo_handler)
    p = admin_proxy(start_proxy, workers=2)
    kids = wait_children(p.pid, 2)
    clients = [p.tunnel(srv.target()) for _ in range(10)]
    st = Streamer(clients, chunk=2048).start()
    time.sleep(0.3)
    up, down = st.stop()
    m0 = wait_metric(p.admin_port,
                     lambda m: m.get("connectd_bytes_total", direction="downstream") == down,
                     "streamed bytes counted")
    sc = Scraper(p.admin_port, 0.05).start()
    try:
        time.sleep(0.2)
        os.kill(kids[0], signal.SIGKILL)
        p.wait_log("killed by")
        deadline = time.monotonic() + 5
        while not (len(children(p.pid)) == 2 and kids[0] not in children(p.pid)):
            assert time.monotonic() < deadline, "the killed worker was not restarted"
            time.sleep(0.05)
        wait_metric(p.admin_port, lambda m: m.get("connectd_worker_restarts_total") == 1,
                    "restart counted")
        time.sleep(0.3)
    finally:
        sc.stop()
    assert not sc.errors, sc.errors[:5]
    assert not sc.decreases, "\n".join(
        f"scrape #{i}: {k[0]}{dict(k[1])}: {old} -> {new}" for i, k, old, new in sc.decreases[:30])
    m = scrape(p.admin_port)
    assert outcome(m, "established") == 10
    assert m.get("connectd_bytes_total", direction="upstream") == up
    assert m.get("connectd_bytes_total", direction="downstream") == down
    assert m.get("connectd_workers", state="live") == 2
    # The killed worker's tunnels are gone (no close counted for them); the survivor's stay.
    survivors = m.get("connectd_tunnels_open")
    assert sum(m.series("connectd_worker_tunnels_open", "worker").values()) == survivors <= 10
    assert sum(m.series("connectd_tunnels_closed_total", "reason").values()) == 0
    assert not decreases(m0, m)


def test_reload_counts_without_workers(start_proxy, tcp_server):
    """workers = 1 (no master): the process counts its own reloads (in place, then with a new
    listen address) and keeps its counters."""
    p = admin_proxy(start_proxy)
    m0 = scrape(p.admin_port)
    srv = tcp_server(echo_handler)
    kept = p.tunnel(srv.target())
    kept.send(b"12345")
    assert kept.recv_exact(5) == b"12345"
    p.rewrite_config({"timeouts": {"idle": "31s"}})
    p.signal(signal.SIGHUP)
    p.wait_log("reloaded " + p.config_path)
    new_port = free_port()  # the listen address changes: the process listens anew
    p.rewrite_config({"server": {"listen": f"127.0.0.1:{p.port}, 127.0.0.1:{new_port}"}})
    p.signal(signal.SIGHUP)
    p.wait_log(f"listening on 127.0.0.1:{new_port}")
    p.wait_log("reloaded " + p.config_path, count=2)
    c = p.client(port=new_port)
    c.connect_request(srv.target())
    c.expect_established()
    c.send(b"67")
    assert c.recv_exact(2) == b"67"
    kept.send(b"8")
    assert kept.recv_exact(1) == b"8"
    good = p.config_text
    p.rewrite_config(text=good + "\n[access]\nbogus_key = 1\n")
    p.signal(signal.SIGHUP)
    p.wait_log("still serving the previous configuration")
    m = wait_metric(p.admin_port,
                    lambda x: x.get("connectd_reloads_total", result="failure") == 1, "failure")
    assert m.get("connectd_reloads_total", result="success") == 2
    assert m.get("connectd_config_generation") == m0.get("connectd_config_generation") + 2 == 3
    assert m.get("connectd_last_reload_successful") == 0
    assert outcome(m, "established") == 2
    assert m.get("connectd_bytes_total", direction="upstream") == 8
    assert m.get("connectd_bytes_total", direction="downstream") == 8
    assert m.get("connectd_tunnels_open") == 2
    assert not decreases(m0, m)


# ---- 4. the access log and the metrics tell the same story -----------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_access_log_and_metrics_agree(start_proxy, tcp_server, dns, tmp_path, workers):
    """A known mix of tunnels and refusals of every kind; then every access-log line (the
    readiness probe's included) against the metrics, and both against what the clients did.
    workers = 2: the same without the per-client limit (each worker counts its own clients)."""
    echo = tcp_server(echo_handler)
    greeting = os.urandom(1234)  # sent by the destination at once: may share a write with the 200
    greeter = tcp_server(greeting_echo_handler(greeting))
    reply = os.urandom(77777)
    sink = tcp_server(sink_handler(reply=reply))
    users = write_users(tmp_path / "users", {"alice": make_hash("wonderland", "$6$")})
    good, wrong = basic("alice", "wonderland"), basic("alice", "nope")
    over = {
        "auth": {"users_file": users},
        "access": {"allow_ports": "1024-65535", "deny_private": "yes",
                   "allow_hosts": "*, 127.0.0.1/32"},  # of loopback, only 127.0.0.1, explicitly
        "timeouts": {"handshake": "1s"},
    }
    if workers == 1:
        over["limits"] = {"per_client_connections": "2"}
    p = admin_proxy(start_proxy, over, workers=workers)
    p.settle()
    m0 = scrape(p.admin_port)
    srcs = iter([f"127.0.{1 + i // 200}.{10 + i % 200}" for i in range(2000)])  # one per client

    got = collections.Counter()  # (status, Proxy-Status error) the refused clients received
    sent = collections.Counter()  # credentials sent: ok / missing / bad
    count = {"conns": 0, "up": 0, "down": 0, "established": 0}

    def client(source=None):
        count["conns"] += 1
        return p.client(source=source or next(srcs))

    def refused(c, status, error, allow_reset=False):
        resp, _, _ = check_refusal(c, status, error, allow_reset=allow_reset)
        _, params, _ = parse_proxy_status(resp.header("Proxy-Status"))
        got[(status, params["error"])] += 1

    def connect(target, auth=good, early=b"", source=None):
        c = client(source)
        c.connect_request(target, extra_headers=auth, early=early)
        sent["ok" if auth == good else "bad" if auth == wrong else "missing"] += 1
        return c

    def tunnel(target, **kw):
        c = connect(target, **kw)
        c.expect_established()
        count["established"] += 1
        return c

    # Established: echo (the same bytes both ways), some with early data; one ends with a RST.
    for i in range(6):
        early = b"E" * (37 * i)
        c = tunnel(echo.target(), early=early)
        data = os.urandom(5000 * i + 11)
        c.send(data)
        assert c.recv_exact(len(early) + len(data)) == early + data
        count["up"] += len(early) + len(data)
        count["down"] += len(early) + len(data)
        if i == 5:
            c.abort()
        else:
            c.shutdown_write()
            assert c.read_until_close(5) == (b"", "eof")
            c.close()
    # A destination that answers with more than it was sent.
    c = tunnel(sink.target())
    c.send(b"q" * 3333)
    c.shutdown_write()
    assert c.read_until_close(5) == (reply, "eof")
    c.close()
    count["up"] += 3333
    count["down"] += len(reply)
    # A destination that speaks first.
    c = tunnel(greeter.target())
    assert c.recv_exact(len(greeting)) == greeting
    c.send(b"hi")
    assert c.recv_exact(2) == b"hi"
    c.shutdown_write()
    assert c.read_until_close(5) == (b"", "eof")
    c.close()
    count["up"] += 2
    count["down"] += len(greeting) + 2
    # A destination that resets once it has read 100 bytes.
    resetter = tcp_server(reset_after_handler(nbytes_first=100))
    c = tunnel(resetter.target())
    c.send(b"r" * 100)
    assert c.read_until_close(5)[0] == b""
    c.close()
    resetter.wait_results(1)
    count["up"] += 100

    # Refusals of every kind.
    refused(connect("127.0.0.1:25"), 403, "http_request_denied")  # port not allowed
    refused(connect(f"127.0.0.2:{echo.port}"), 403, "destination_ip_prohibited")
    refused(connect("nx.test:8443"), 502, "dns_error")  # NXDOMAIN from the test DNS server
    refused(connect(f"127.0.0.1:{closed_port()}"), 502, "connection_refused")
    for _ in range(2):
        refused(connect(echo.target(), auth=b""), 407, "http_request_denied")
    for _ in range(3):
        refused(connect(echo.target(), auth=wrong), 407, "http_request_denied")
    for _ in range(2):
        c = client()
        c.send(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n")
        refused(c, 405, "http_request_denied")
    c = client()
    c.send(b"hello there\r\n\r\n")
    refused(c, 400, "http_request_error")
    c = client()
    c.send(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n" + b"a: b\r\n" * 2000
           + b"\r\n")
    refused(c, 431, "http_request_error", allow_reset=True)
    slow = [client() for _ in range(2)]  # partial requests: 408 once handshake = 1s is over
    for c in slow:
        c.send(b"CONNECT a.test:443 HTTP/1.1\r\n")
    want_reasons = {"denied_port": 1, "denied_private": 1, "dns_error": 1, "connect_refused": 1,
                    "auth_required": 2, "auth_failed": 3, "method_not_allowed": 2,
                    "bad_request": 1, "too_large": 1, "handshake_timeout": 2}
    if workers == 1:
        # Per-client limit: two tunnels held from one address, the third refused on accept.
        src = next(srcs)
        held = [tunnel(echo.target(), source=src) for _ in range(2)]
        refused(client(source=src), 503, "http_request_denied", allow_reset=True)
        for c in held:
            c.send(b"held")
            assert c.recv_exact(4) == b"held"
            count["up"] += 4
            count["down"] += 4
            c.close()
        want_reasons["client_limit"] = 1
    # Aborted: connected, then gone without a request.
    for _ in range(2):
        client().close()
    for c in slow:
        refused(c, 408, "http_request_error")

    probes = len(p.probes)
    lines, m = settled(p, count["conns"] + probes)
    detail = "\n".join(x["_raw"].rstrip() for x in lines)

    # Outcomes, by the access log's status.
    refusal_lines = [x for x in lines if int(x["status"]) >= 400]
    ok_lines = [x for x in lines if x["status"] == "200"]
    zero_lines = [x for x in lines if x["status"] == "0"]
    assert len(refusal_lines) + len(ok_lines) + len(zero_lines) == len(lines), detail
    assert outcome(m, "refused") == len(refusal_lines) == sum(got.values()), detail
    assert outcome(m, "established") == len(ok_lines) == count["established"], detail
    assert outcome(m, "aborted") == len(zero_lines) == 2 + probes, detail
    assert outcome(m, "pac") == 0
    assert m.get("connectd_connections_accepted_total") == len(lines)
    # Reasons of refusals and of closes: every label value, zeros included.
    by_reason = collections.Counter(x["reason"] for x in refusal_lines)
    closed = collections.Counter(x["reason"] for x in ok_lines)
    metric_refusals = m.series("connectd_refusals_by_reason_total", "reason")
    metric_closed = m.series("connectd_tunnels_closed_total", "reason")
    assert set(by_reason) <= set(metric_refusals), (by_reason, metric_refusals)
    assert set(closed) <= set(metric_closed), (closed, metric_closed)
    for r, v in metric_refusals.items():
        assert v == by_reason.get(r, 0), (
            f"refusals_by_reason_total{{reason={r}}} = {v}, access log: {by_reason.get(r, 0)}"
            f"\n{detail}")
    for r, v in metric_closed.items():
        assert v == closed.get(r, 0), (
            f"tunnels_closed_total{{reason={r}}} = {v}, access log: {closed.get(r, 0)}\n{detail}")
    assert by_reason == want_reasons, by_reason
    assert closed["client_reset"] == 1 and closed["upstream_reset"] == 1, closed
    # (status, error) pairs: what the clients received, against every series of the family.
    refusals = {}
    for lbls, v in m.series_by("connectd_refusals_total").items():
        d = dict(lbls)
        refusals[(int(d["code"]) if d["code"] != "other" else 0, d["error"])] = v
    assert set(got) <= set(refusals), (got, refusals)
    for pair, v in refusals.items():
        assert v == got.get(pair, 0), (
            f"refusals_total{pair} = {v}, clients received {got.get(pair, 0)}; all: {dict(got)}")
    by_status = collections.Counter()
    for (status, _), n in got.items():
        by_status[status] += n
    assert collections.Counter(int(x["status"]) for x in refusal_lines) == by_status
    # Bytes: the clients' own count, the access log's, the metrics'.
    assert sum(int(x["up"]) for x in lines) == count["up"] == m.get(
        "connectd_bytes_total", direction="upstream"), detail
    assert sum(int(x["down"]) for x in lines) == count["down"] == m.get(
        "connectd_bytes_total", direction="downstream"), detail
    assert all(x["up"] == "0" and x["down"] == "0" for x in refusal_lines), detail
    # Authentication: what was sent.
    assert m.get("connectd_auth_total", result="ok") == sent["ok"]
    assert m.get("connectd_auth_total", result="missing") == sent["missing"] == 2
    assert m.get("connectd_auth_total", result="bad") == sent["bad"] == 3
    assert m.get("connectd_auth_total", result="busy") == 0
    assert m.get("connectd_auth_total", result="timeout") == 0
    assert m.series("connectd_limit_refusals_total", "limit") == {
        "max_connections": 0, "per_client_connections": 1 if workers == 1 else 0,
        "per_client_rate": 0, "refusing": 0, "fds": 0}
    # One name was looked up (nx.test); IP literals are not.
    assert sum(m.series("connectd_dns_cache_lookups_total", "result").values()) == 1
    assert m.get("connectd_dns_duration_seconds_count") == 1
    assert m.get("connectd_tunnel_duration_seconds_count") == count["established"]
    assert m.get("connectd_connect_duration_seconds_count") == count["established"]
    assert m.get("connectd_tunnels_open") == 0
    assert not decreases(m0, m)
    promtool_check(m.text)


def test_client_gone_before_the_200(start_proxy, tcp_server):
    """Clients that reset right after their CONNECT, while the proxy dials (a browser dropping
    a speculative connection): whatever each access-log line says, the metrics must say the
    same: established == status=200 lines, aborted == status=0 lines, closes by reason."""
    srv = tcp_server(greeting_echo_handler(b"G" * 5000))
    p = admin_proxy(start_proxy)
    p.settle()
    n = 150
    for i in range(n):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", p.port))
            s.sendall(f"CONNECT {srv.target()} HTTP/1.1\r\nHost: {srv.target()}\r\n\r\n"
                      .encode())
            if i % 3:
                time.sleep(0.0003 * (i % 5))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            s.close()
    lines, m = settled(p, n + len(p.probes), timeout=20)
    by = collections.Counter((x["status"], x["reason"]) for x in lines)
    ok_lines = [x for x in lines if x["status"] == "200"]
    zero_lines = [x for x in lines if x["status"] == "0"]
    closed = collections.Counter(x["reason"] for x in ok_lines)
    closed_m = {k: v for k, v in m.series("connectd_tunnels_closed_total", "reason").items() if v}
    msg = (f"access log (status, reason): {dict(by)}; metrics: "
           f"tunnels_total {m.series('connectd_tunnels_total', 'outcome')}, tunnels_closed_total "
           f"{closed_m}, tunnel_duration_seconds_count "
           f"{m.get('connectd_tunnel_duration_seconds_count')}")
    assert sum(int(x["down"]) for x in lines) == m.get(
        "connectd_bytes_total", direction="downstream"), msg
    assert sum(int(x["up"]) for x in lines) == m.get(
        "connectd_bytes_total", direction="upstream"), msg
    assert outcome(m, "established") == len(ok_lines), msg
    assert outcome(m, "aborted") == len(zero_lines), msg
    for r, v in m.series("connectd_tunnels_closed_total", "reason").items():
        assert v == closed.get(r, 0), msg
    assert m.get("connectd_tunnel_duration_seconds_count") == len(ok_lines), msg


# ---- 5. bytes show while a tunnel is still open ----------------------------------------------


def test_bytes_counted_while_tunnel_open(start_proxy, tcp_server):
    got = {"n": 0}

    def counting_sink(conn, rec):
        while True:
            d = conn.recv(262144)
            if not d:
                break
            got["n"] += len(d)
        rec["bytes"] = got["n"]
        conn.shutdown(socket.SHUT_WR)

    srv = tcp_server(counting_sink)
    p = admin_proxy(start_proxy)
    c = p.tunnel(srv.target(), timeout=10)
    chunk = os.urandom(MiB)
    for _ in range(25):
        c.send(chunk)
        time.sleep(0.04)
    m = wait_metric(p.admin_port,
                    lambda m: m.get("connectd_bytes_total", direction="upstream") > 10 * MiB,
                    "over 10 MiB counted mid-stream")
    assert m.get("connectd_tunnels_open") == 1, "the tunnel closed early"
    assert m.get("connectd_connections_open") == 1
    assert m.get("connectd_worker_tunnels_open", worker="0") == 1
    assert outcome(m, "established") == 1
    assert m.get("connectd_tunnel_duration_seconds_count") == 0  # not closed yet
    mid = m.get("connectd_bytes_total", direction="upstream")
    assert mid <= 25 * MiB
    for _ in range(25):
        c.send(chunk)
        time.sleep(0.04)
    m2 = scrape(p.admin_port)
    assert m2.get("connectd_tunnels_open") == 1
    assert m2.get("connectd_bytes_total", direction="upstream") > mid
    c.shutdown_write()
    assert c.read_until_close(10) == (b"", "eof")
    c.close()
    srv.wait_results(1)
    assert got["n"] == 50 * MiB
    m3 = wait_metric(p.admin_port, lambda m: m.get("connectd_tunnels_open") == 0, "closed")
    assert m3.get("connectd_bytes_total", direction="upstream") == 50 * MiB
    assert m3.get("connectd_bytes_total", direction="downstream") == 0
    assert m3.get("connectd_tunnels_closed_total", reason="done") == 1
    line = p.log_lines(1, where=lambda x: x["status"] == "200")[-1]
    assert line["up"] == str(50 * MiB) and line["down"] == "0", line["_raw"]


# ---- 6. histograms ---------------------------------------------------------------------------


def check_histogram(m, name, count):
    buckets, n, total = m.histogram(name)
    assert n == count, f"{name}_count = {n}, want {count}"
    les = [le for le, _ in buckets]
    assert les == sorted(les) and len(set(les)) == len(les), les
    assert les[-1] == float("inf"), f"{name}: last bucket is not +Inf"
    vals = [v for _, v in buckets]
    assert vals == sorted(vals), f"{name}: buckets not cumulative {buckets}"
    assert vals[-1] == n, f"{name}: +Inf bucket {vals[-1]} != count {n}"
    assert total >= 0
    if count == 0:
        assert total == 0
    return buckets, n, total


def test_histograms_count_each_tunnel(start_proxy, tcp_server, dns):
    srv = tcp_server(echo_handler)
    dns.set("echo.test", ["127.0.0.1"])
    p = admin_proxy(start_proxy)
    m0 = scrape(p.admin_port)
    for h in ("connect", "dns", "dial", "tunnel"):
        check_histogram(m0, f"connectd_{h}_duration_seconds", 0)
    k = 5
    clients = []
    t0 = time.monotonic()
    for i in range(k):
        c = p.tunnel(f"echo.test:{srv.port}")
        c.send(b"x")
        assert c.recv_exact(1) == b"x"
        clients.append(c)
    time.sleep(0.3)
    m = scrape(p.admin_port)
    elapsed = time.monotonic() - t0
    check_histogram(m, "connectd_connect_duration_seconds", k)
    check_histogram(m, "connectd_dial_duration_seconds", k)
    check_histogram(m, "connectd_dns_duration_seconds", k)  # cache hits included
    assert sum(m.series("connectd_dns_cache_lookups_total", "result").values()) == k
    assert m.get("connectd_dns_cache_lookups_total", result="miss") >= 1
    check_histogram(m, "connectd_tunnel_duration_seconds", 0)
    _, _, csum = m.histogram("connectd_connect_duration_seconds")
    assert csum < elapsed + 1, f"connect durations sum to {csum}s in {elapsed:.1f}s"
    for c in clients:
        c.shutdown_write()
        assert c.read_until_close(5) == (b"", "eof")
        c.close()
    m2 = wait_metric(p.admin_port,
                     lambda x: x.get("connectd_tunnel_duration_seconds_count") == k, "closed")
    buckets, _, tsum = check_histogram(m2, "connectd_tunnel_duration_seconds", k)
    # Each tunnel lived at least the 0.3 s pause, and under a minute.
    assert tsum >= k * 0.3 and dict(buckets)[60.0] == k, (tsum, buckets)
    check_histogram(m2, "connectd_connect_duration_seconds", k)
    check_histogram(m2, "connectd_dial_duration_seconds", k)
    # Latency buckets: a loopback connect takes well under 2.5 s.
    assert dict(m2.histogram("connectd_connect_duration_seconds")[0])[2.5] == k
    assert not decreases(m, m2)


# ---- 7. gauges -------------------------------------------------------------------------------


def test_open_gauges_follow_tunnels_with_two_workers(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = admin_proxy(start_proxy, workers=2)
    p.settle()

    def gauges(m):
        return (m.get("connectd_tunnels_open"), m.get("connectd_connections_open"))

    def per_worker(m, name):
        s = m.series(name, "worker")
        assert set(s) == {"0", "1"}, s
        return sum(s.values())

    m = wait_metric(p.admin_port, lambda m: gauges(m) == (0, 0), "nothing open at start")
    clients = []
    for i in range(5):
        clients.append(p.tunnel(srv.target()))
        # A tunnel counts once its 200 has gone out, a moment after the client may read it.
        m = wait_metric(p.admin_port, lambda m, n=i + 1: gauges(m) == (n, n),
                        f"{i + 1} tunnels open")
        assert per_worker(m, "connectd_worker_tunnels_open") == i + 1
        assert per_worker(m, "connectd_worker_connections_open") == i + 1
    # Several scrapes (answered by either worker) all show the same figures.
    for _ in range(10):
        m = scrape(p.admin_port)
        assert gauges(m) == (5, 5)
        assert per_worker(m, "connectd_worker_tunnels_open") == 5
    # A connection still in its handshake is open but is not a tunnel.
    h = p.client()
    h.send(b"CONNECT ")
    m = wait_metric(p.admin_port, lambda m: gauges(m) == (5, 6), "handshake counted as open")
    assert per_worker(m, "connectd_worker_connections_open") == 6
    h.close()
    for c in clients:
        c.close()
    m = wait_metric(p.admin_port, lambda m: gauges(m) == (0, 0), "all closed")
    assert per_worker(m, "connectd_worker_tunnels_open") == 0
    assert per_worker(m, "connectd_worker_connections_open") == 0
    assert outcome(m, "established") == 5


# ---- the process, the build, the admin listener itself ------------------------------------------


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def proc_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_process_metrics_cover_master_and_workers(start_proxy, tcp_server, cli):
    """process_* describe the daemon as a whole: the master and both workers."""
    t0 = time.time()
    p = admin_proxy(start_proxy, workers=2)
    pids = [p.pid] + wait_children(p.pid, 2)
    time.sleep(1.2)  # every process has published its figures (about once a second)
    m = scrape(p.admin_port)
    assert t0 - 1 <= m.get("process_start_time_seconds") <= time.time()
    assert m.get("process_start_time_seconds") <= m.get("connectd_last_reload_timestamp_seconds")
    fds = sum(proc_fds(x) for x in pids)
    # The answering worker counts the scrape's own connection; allow for it and a probe.
    assert fds - 2 <= m.get("process_open_fds") <= fds + 2, (m.get("process_open_fds"), fds)
    workers_fds = sum(m.series("connectd_worker_open_fds", "worker").values())
    assert abs(m.get("process_open_fds") - workers_fds - proc_fds(p.pid)) <= 2
    with open(f"/proc/{pids[1]}/limits") as f:
        soft = next(int(x.split()[3]) for x in f if x.startswith("Max open files"))
    assert m.get("process_max_fds") == soft
    rss = sum(proc_rss(x) for x in pids)
    assert 0.5 * rss <= m.get("process_resident_memory_bytes") <= 2 * rss, (
        m.get("process_resident_memory_bytes"), rss)
    assert m.get("process_virtual_memory_bytes") >= m.get("process_resident_memory_bytes")
    cpu = sum(proc_cpu_seconds(x) for x in pids)
    # rusage (the daemon) and /proc/PID/stat (clock ticks, read later) differ by a tick or so.
    assert m.get("process_cpu_seconds_total") <= cpu + 0.1, (m.get("process_cpu_seconds_total"),
                                                                cpu)
    assert m.get("process_cpu_seconds_total") >= cpu - 1.0
    # The version is the binary's own.
    r = cli("-V")
    assert r.returncode == 0
    version = r.out.split()[-1]
    assert m.series("connectd_build_info", "version") == {version: 1}, r.out
    assert m.get("connectd_draining") == 0
    assert m.get("connectd_workers", state="live") == 2


def test_admin_requests_are_counted(start_proxy):
    p = admin_proxy(start_proxy, workers=2)
    a = scrape(p.admin_port)
    for _ in range(3):
        scrape(p.admin_port)
    status, _, _ = http_get(p.admin_port, "/nope")
    assert status == 404
    b = scrape(p.admin_port)
    # A scrape counts itself after it is rendered: a's own, three more, then b.
    assert b.get("connectd_admin_requests_total", code="200") == (
        a.get("connectd_admin_requests_total", code="200") + 4)
    assert b.get("connectd_admin_requests_total", code="404") == (
        a.get("connectd_admin_requests_total", code="404") + 1)
    # The admin listener is not the proxy: none of this is a client connection.
    assert b.get("connectd_connections_accepted_total") == a.get(
        "connectd_connections_accepted_total")
