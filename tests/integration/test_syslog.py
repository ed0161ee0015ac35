"""The access log on a syslog socket (`access_log = syslog[:PATH]`) and the journald form of
stderr (JOURNAL_STREAM): one datagram per line framed like glibc's syslog(), never blocking the
proxy when the reader stalls or goes away; "<N>" priority prefixes when stderr is journald's.

The syslog "daemon" is the test's own AF_UNIX datagram socket in tmp_path. Every wait is bounded.
"""

import os
import re
import resource
import signal
import socket
import subprocess
import time

import pytest

from conftest import BASE_CONFIG, SANITIZER_MARKERS, merge, render_ini
from netutil import LOOPBACK4, Client, closed_port, free_port, wait_port
from servers import echo_handler

# "<30>Nov 27 18:40:01 connectd[123]: client=..." (facility daemon, severity info)
SYSLOG_LINE = re.compile(r"^<(\d+)>([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d) "
                         r"connectd\[(\d+)\]: (.*)$", re.S)
ISO_TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class SyslogReader:
    """A bound AF_UNIX datagram socket standing in for /dev/log; reads only when asked."""

    def __init__(self, path):
        if len(os.fsencode(path)) >= 108:
            pytest.skip(f"socket path too long for AF_UNIX: {path}")
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.got = []  # decoded datagrams, in arrival order

    def read_for(self, seconds, until=None):
        """Collect datagrams for up to seconds, or until until(self.got) is true."""
        deadline = time.monotonic() + seconds
        while True:
            if until is not None and until(self.got):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(min(left, 0.2))
            try:
                self.got.append(self.sock.recv(65536).decode("latin-1"))
            except socket.timeout:
                pass

    def wait_line(self, pred, timeout=5.0):
        """The first datagram matching pred (bounded wait)."""
        self.read_for(timeout, until=lambda got: any(pred(d) for d in got))
        hits = [d for d in self.got if pred(d)]
        assert hits, f"no matching datagram on {self.path} within {timeout}s; got {self.got[-5:]}"
        return hits[0]

    def close(self, unlink=True):
        self.sock.close()
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


@pytest.fixture
def syslog_reader(tmp_path):
    made = []

    def make(name="log.sock"):
        r = SyslogReader(os.path.join(str(tmp_path), name))
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def split_syslog(datagram):
    """'<PRI>Mmm dd hh:mm:ss connectd[PID]: msg' -> (pri, pid, msg); asserts the framing."""
    m = SYSLOG_LINE.match(datagram)
    assert m, f"not an RFC 3164 datagram: {datagram!r}"
    assert not datagram.endswith("\n"), f"a datagram carries no newline: {datagram!r}"
    pri, mon, day, hh, mm, ss, pid, msg = m.groups()
    assert mon in MONTHS and 1 <= int(day) <= 31, datagram
    assert int(hh) < 24 and int(mm) < 60 and int(ss) < 61, datagram
    return int(pri), int(pid), msg


def fields(msg):
    out = {}
    for part in msg.split(" "):
        assert "=" in part, f"access field without '=': {part!r} in {msg!r}"
        k, v = part.split("=", 1)
        out[k] = v
    return out


def access_lines(reader):
    """Parsed access lines received so far (datagrams of severity info with key=value fields)."""
    out = []
    for d in reader.got:
        pri, _, msg = split_syslog(d)
        if pri == 30 and msg.startswith("client="):
            out.append(fields(msg))
    return out


def dropped_counts(reader):
    out = []
    for d in reader.got:
        m = re.search(r"connectd\[\d+\]: (\d+) access log lines dropped", d)
        if m:
            assert d.startswith("<28>"), f"the drop note is a warning (daemon.warning): {d!r}"
            out.append(int(m.group(1)))
    return out


def echo_round_trip(p, srv, payload=b"ping"):
    """One tunnel, one echo, closed; returns the client's local port (its access line's key)."""
    t = p.tunnel(srv.target())
    port = t.local_addr[1]
    t.send(payload)
    assert t.recv_exact(len(payload)) == payload
    t.close()
    p.clients.remove(t)
    return port


def syslog_proxy(start_proxy, reader, **kw):
    return start_proxy({"log": {"access_log": f"syslog:{reader.path}"}}, **kw)


# ---- the line ------------------------------------------------------------------------------


def test_syslog_tunnel_line(start_proxy, tcp_server, syslog_reader):
    reader = syslog_reader()
    srv = tcp_server(echo_handler)
    p = syslog_proxy(start_proxy, reader)
    c = p.tunnel(srv.target())
    port = c.local_addr[1]
    c.send(b"hello")
    assert c.recv_exact(5) == b"hello"
    c.close()
    d = reader.wait_line(lambda x: f"client=127.0.0.1:{port} " in x)
    assert d.startswith("<30>"), d
    assert f" connectd[{p.pid}]: client=127.0.0.1:{port} " in d, d
    pri, pid, msg = split_syslog(d)
    assert (pri, pid) == (30, p.pid)
    f = fields(msg)
    assert f["target"] == srv.target() and f["upstream"] == srv.target(), d
    assert f["status"] == "200" and f["up"] == "5" and f["down"] == "5", d
    # One datagram per line: the readiness probe's line came separately, nothing is glued.
    assert all(x.count("client=") == 1 for x in reader.got if "client=" in x), reader.got
    # Nothing of the access log leaked into the file or stderr.
    assert not os.path.exists(p.access_log)
    assert "client=" not in p.stderr_text()


def test_syslog_workers_name_themselves(start_proxy, tcp_server, syslog_reader):
    """With workers, each line carries the PID of the worker that served the tunnel."""
    reader = syslog_reader()
    srv = tcp_server(echo_handler)
    p = start_proxy({"server": {"workers": "2"},
                     "log": {"access_log": f"syslog:{reader.path}"}})
    ports = [echo_round_trip(p, srv) for _ in range(6)]
    for port in ports:
        reader.wait_line(lambda x, port=port: f"client=127.0.0.1:{port} " in x)
    pids = {split_syslog(d)[1] for d in reader.got if "client=" in d}
    assert p.pid not in pids, "the master does not serve tunnels"
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            ppid = [x for x in f if x.startswith("PPid:")][0].split()[1]
        assert int(ppid) == p.pid, f"pid {pid} in the line is not a worker of {p.pid}"


@pytest.mark.parametrize("how", ["missing", "refused"])
def test_syslog_socket_absent_fails_start(start_proxy, tmp_path, how):
    path = os.path.join(str(tmp_path), "nolog.sock")
    if how == "refused":  # a socket file nobody reads from any more
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(path)
        s.close()
    p = start_proxy({"log": {"access_log": f"syslog:{path}"}}, wait=False)
    try:
        rc = p.proc.wait(5)
    except subprocess.TimeoutExpired:
        pytest.fail("connectd kept running without its syslog socket")
    p.stopped = True
    assert rc != 0
    why = "No such file or directory" if how == "missing" else "Connection refused"
    assert f"access log syslog:{path}: connect: {why}" in p.stderr_text()


@pytest.mark.skipif(os.path.exists("/dev/log"), reason="/dev/log exists on this host")
def test_syslog_default_path_is_dev_log(start_proxy):
    p = start_proxy({"log": {"access_log": "syslog"}}, wait=False)
    try:
        rc = p.proc.wait(5)
    except subprocess.TimeoutExpired:
        pytest.fail("connectd kept running without /dev/log")
    p.stopped = True
    assert rc != 0
    assert "access log syslog:/dev/log: connect: No such file or directory" in p.stderr_text()


# ---- a reader that stalls or goes away ------------------------------------------------------


def test_syslog_stalled_reader_drops_not_blocks(start_proxy, tcp_server, syslog_reader):
    """The reader stops reading: the socket fills, lines wait in the bounded queue, then are
    dropped and counted; tunnels stay prompt. Once the reader reads again the queue drains and a
    note gives the count, so every line is either delivered or counted."""
    reader = syslog_reader()
    srv = tcp_server(echo_handler)
    p = syslog_proxy(start_proxy, reader)
    expected = len(p.probes)
    slowest = 0.0
    t0 = time.monotonic()
    for _ in range(300):
        t = time.monotonic()
        echo_round_trip(p, srv)
        slowest = max(slowest, time.monotonic() - t)
        expected += 1
    assert slowest < 1.0, f"a tunnel round trip took {slowest:.3f}s with syslog stalled"
    # Refusals are cheap lines: enough of them to overflow the proxy's queue (256 KiB).
    req = b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n"
    for _ in range(2500):
        s = socket.create_connection((p.host, p.port), timeout=5)
        s.sendall(req)
        while s.recv(4096):
            pass
        s.close()
        expected += 1
        assert time.monotonic() - t0 < 60, "the proxy slowed down with syslog stalled"
    t = time.monotonic()
    echo_round_trip(p, srv)
    expected += 1
    assert time.monotonic() - t < 1.0
    assert p.proc.poll() is None

    def accounted(_got):
        return len(access_lines(reader)) + sum(dropped_counts(reader)) >= expected

    reader.read_for(15, until=accounted)
    got, dropped = len(access_lines(reader)), dropped_counts(reader)
    assert dropped and sum(dropped) > 0, f"nothing dropped: {got} of {expected} lines delivered"
    assert got + sum(dropped) == expected, (got, dropped, expected)
    assert got > 300, "lines queued while the reader stalled were not delivered"


def test_syslog_reconnects_after_daemon_restart(start_proxy, tcp_server, syslog_reader):
    reader = syslog_reader()
    srv = tcp_server(echo_handler)
    p = syslog_proxy(start_proxy, reader)
    reader.wait_line(lambda x: "status=0" in x)  # the readiness probe
    reader.close()  # the daemon stops: the next line finds nobody
    t = time.monotonic()
    echo_round_trip(p, srv)
    assert time.monotonic() - t < 1.0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "send: Connection refused" not in p.stderr_text():
        time.sleep(0.05)
    assert f"access log syslog:{reader.path}: send: Connection refused" in p.stderr_text()
    reader2 = syslog_reader()  # the daemon is back, same path
    time.sleep(1.2)  # reconnect attempts are at most once a second
    port = echo_round_trip(p, srv)
    d = reader2.wait_line(lambda x: f"client=127.0.0.1:{port} " in x)
    assert d.startswith("<30>")
    assert dropped_counts(reader2) == [1], reader2.got
    assert "reconnected" in p.stderr_text()


def test_syslog_sigusr1_reconnects(start_proxy, tcp_server, syslog_reader):
    reader = syslog_reader()
    srv = tcp_server(echo_handler)
    p = syslog_proxy(start_proxy, reader)
    port = echo_round_trip(p, srv)
    reader.wait_line(lambda x: f"client=127.0.0.1:{port} " in x)
    p.signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "access log reopened" not in p.stderr_text():
        time.sleep(0.05)
    assert "access log reopened" in p.stderr_text()
    port = echo_round_trip(p, srv)
    reader.wait_line(lambda x: f"client=127.0.0.1:{port} " in x)
    # The daemon restarted on a new socket at the same path: SIGUSR1 moves over at once.
    reader.close()
    reader2 = syslog_reader()
    p.signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and p.stderr_text().count("access log reopened") < 2:
        time.sleep(0.05)
    assert p.stderr_text().count("access log reopened") == 2
    port = echo_round_trip(p, srv)
    d = reader2.wait_line(lambda x: f"client=127.0.0.1:{port} " in x)
    assert split_syslog(d)[:2] == (30, p.pid)
    # With nobody at the path, SIGUSR1 fails cleanly and the daemon carries on.
    reader2.close()
    p.signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "keeping the old socket" not in p.stderr_text():
        time.sleep(0.05)
    assert "keeping the old socket" in p.stderr_text()
    echo_round_trip(p, srv)
    assert p.proc.poll() is None


# ---- stderr on journald ----------------------------------------------------------------------


class Launched:
    """connectd started by hand, for what start_proxy does not control (environment, rlimits).
    stderr goes to a file; stopped with SIGTERM (SIGKILL after 5 s) by its PID."""

    def __init__(self, connectd_bin, tmp_path, dns, log, journal_stream=None, nofile=None):
        self.port = free_port()
        cfg = merge(BASE_CONFIG, {
            "server": {"listen": f"{LOOPBACK4}:{self.port}"},
            "dns": {"servers": dns.server_spec},
            "log": log,
        })
        self.config = os.path.join(str(tmp_path), "journal.ini")
        with open(self.config, "w") as f:
            f.write(render_ini(cfg))
        self.stderr_path = os.path.join(str(tmp_path), "journal.stderr")
        self.err = open(self.stderr_path, "wb")
        st = os.fstat(self.err.fileno())
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        if journal_stream == "match":
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream

        def limits():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([connectd_bin, "-c", self.config], stdin=subprocess.DEVNULL,
                                     stdout=self.err, stderr=self.err, env=env,
                                     preexec_fn=limits)
        self.pid = self.proc.pid
        if not wait_port(LOOPBACK4, self.port, 5.0, self.proc):
            self.stop()
            pytest.fail(f"connectd did not start: {self.text()}")

    def text(self):
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def wait_text(self, what, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and what not in self.text():
            time.sleep(0.05)
        return what in self.text()

    def stop(self):
        """SIGTERM by PID, bounded wait, SIGKILL; returns the exit status. Idempotent."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        if not self.err.closed:
            self.err.close()
        return self.proc.returncode


@pytest.fixture
def launch(connectd_bin, tmp_path, dns):
    made = []

    def make(**kw):
        lp = Launched(connectd_bin, tmp_path, dns, **kw)
        made.append(lp)
        return lp

    yield make
    reports = []
    for lp in made:
        lp.stop()
        hits = [m for m in SANITIZER_MARKERS if m in lp.text()]
        if hits:
            reports.append(f"sanitizer report in connectd stderr ({', '.join(hits)}):\n{lp.text()}")
    if reports:
        pytest.fail("\n\n".join(reports), pytrace=False)


def tunnel_once(port, srv):
    c = Client(LOOPBACK4, port)
    try:
        c.connect_request(srv.target())
        c.expect_established()
        c.send(b"abc")
        assert c.recv_exact(3) == b"abc"
    finally:
        c.close()


def test_journald_stderr_has_priority_prefixes(launch, tcp_server):
    srv = tcp_server(echo_handler)
    # A low open-file limit makes the daemon warn at start.
    lp = launch(log={"level": "debug", "access_log": "stderr"}, journal_stream="match",
                nofile=128)
    tunnel_once(lp.port, srv)
    c = Client(LOOPBACK4, lp.port)  # a refused upstream connect is logged at debug
    c.connect_request(f"{LOOPBACK4}:{closed_port()}")
    c.read_head()
    c.close()
    assert lp.wait_text("status=200") and lp.wait_text("status=502")
    assert lp.stop() == 0
    lines = [x for x in lp.text().split("\n") if x]
    pid = lp.pid
    for x in lines:
        assert re.match(r"^<[3467]>", x), f"line without a priority prefix: {x!r}"
        assert not ISO_TS.match(x[3:]), f"our timestamp in journald mode: {x!r}"
    assert any(x.startswith(f"<6>connectd[{pid}]: info: ") for x in lines), lines
    assert any(x.startswith(f"<7>connectd[{pid}]: debug: ") for x in lines), lines
    assert any(x.startswith(f"<4>connectd[{pid}]: warn: ") for x in lines), lines
    access = [x for x in lines if x.startswith("<6>client=")]
    assert any(" status=200 " in x for x in access), lines


def test_journald_error_prefix(launch, tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    lp = launch(log={"level": "info", "access_log": str(logdir / "access.log")},
                journal_stream="match")
    os.rename(logdir, tmp_path / "gone")  # the reopen on SIGUSR1 cannot create the file
    os.kill(lp.pid, signal.SIGUSR1)
    assert lp.wait_text("reopen"), lp.text()
    assert lp.stop() == 0
    lines = [x for x in lp.text().split("\n") if x]
    assert any(x.startswith(f"<3>connectd[{lp.pid}]: error: access log ") for x in lines), lines


@pytest.mark.parametrize("value", ["other_file", "1:2", "garbage", ""])
def test_journald_prefix_only_when_stream_matches(launch, tcp_server, tmp_path, value):
    srv = tcp_server(echo_handler)
    if value == "other_file":
        other = tmp_path / "other"
        other.write_bytes(b"")
        st = os.stat(other)
        value = f"{st.st_dev}:{st.st_ino}"
    lp = launch(log={"level": "debug", "access_log": "stderr"}, journal_stream=value)
    tunnel_once(lp.port, srv)
    assert lp.wait_text("status=200")
    assert lp.stop() == 0
    lines = [x for x in lp.text().split("\n") if x]
    assert lines
    for x in lines:
        assert ISO_TS.match(x), f"line without our timestamp: {x!r}"
    assert any(f" connectd[{lp.pid}]: info: " in x for x in lines), lines
