"""Hostile input and faults: slowloris, file-descriptor exhaustion, resets and a stalled
upstream. Each test asserts measured figures of the proxy process (CPU seconds from
/proc/PID/stat, RSS from /proc/PID/status, open fds from /proc/PID/fd, where the bytes sit from
/proc/net/tcp) and byte hashes, not only that it is still alive. Loopback only, bounded in
count and time; the figures of a run are printed (pytest -s shows them).

Thresholds are for a noisy 2-core machine: each comment gives what was measured and why the
bound has the headroom it has."""

import fcntl
import hashlib
import os
import resource
import selectors
import socket
import struct
import termios
import threading
import time

import pytest

from netutil import SUCCESS_REPLY, Client, Response
from procstat import fd_count
from servers import Blackhole, echo_handler, no_read_handler, reset_mid_stream_handler

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PIPE_SLOTS = 1024 * 1024 // PAGE  # src/relay.c: F_SETPIPE_SZ 1 MiB = 256 page slots
SKB_FRAG_MAX = max(32 * 1024, PAGE)  # what one slot can hold when spliced from a TCP socket
BUF_CAP = 64 * 1024  # include/buf.h: one copy buffer


# ---- measuring the proxy -------------------------------------------------------------------


def cpu_seconds(pid):
    """utime + stime of pid, in seconds (resolution 1/CLK_TCK)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2:].split()  # fields[0] is field 3 (state)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_fds(pid, want, slack=0, timeout=5.0):
    """Poll (bounded) until pid has at most want + slack fds; returns (count, seconds)."""
    t0 = time.monotonic()
    while True:
        n = fd_count(pid)
        if n <= want + slack or time.monotonic() - t0 > timeout:
            return n, time.monotonic() - t0
        time.sleep(0.02)


def tcp_queues():
    """{(local_port, remote_port): (tx_queue, rx_queue)} for the IPv4 TCP sockets of this
    network namespace (/proc/net/tcp: tx = written and not yet acked, rx = received and not
    yet read)."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            lport = int(parts[1].split(":")[1], 16)
            rport = int(parts[2].split(":")[1], 16)
            tx, rx = (int(x, 16) for x in parts[4].split(":"))
            out[(lport, rport)] = (tx, rx)
    return out


def pipe_bytes(pid):
    """Bytes waiting in the pipes pid holds (each pipe counted once): FIONREAD on a second
    read end opened through /proc/PID/fd, which reads nothing."""
    seen, total = set(), 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            target = os.readlink(path)
        except OSError:
            continue
        if not target.startswith("pipe:") or target in seen:
            continue
        seen.add(target)
        try:
            r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            total += struct.unpack("i", fcntl.ioctl(r, termios.FIONREAD, b"\0" * 4))[0]
        finally:
            os.close(r)
    return total


def sysctl_int_list(name):
    with open("/proc/sys/" + name.replace(".", "/")) as f:
        return [int(x) for x in f.read().split()]


@pytest.fixture(autouse=True, scope="module")
def _many_fds():
    """1,000 slowloris sockets and a burst of 500 need more fds than a default soft limit of
    1024 leaves: raise ours to the hard limit for this module."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"hard RLIMIT_NOFILE {hard} too low for these tests")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _warm_up(p, target, n=2):
    """Open and close n echo tunnels, so what the daemon allocates on first use (buffer pool,
    log queues, heap) exists before the baseline is taken."""
    ports = []
    for i in range(n):
        c = p.tunnel(target)
        c.send(b"warm%d" % i)
        assert c.recv_exact(5) == b"warm%d" % i
        ports.append(c.local_addr[1])
        c.close()
    p.log_lines(n, where=lambda x: int(x["client"].rsplit(":", 1)[1]) in ports)


def _closes(sock):
    """Read what is left on sock until EOF/RST (bounded by the socket's timeout)."""
    data = b""
    try:
        while True:
            d = sock.recv(65536)
            if not d:
                return data, "eof"
            data += d
    except ConnectionResetError:
        return data, "reset"
    except socket.timeout:
        return data, "timeout"


# ---- 1. slowloris --------------------------------------------------------------------------

N_SLOW = 1000
HANDSHAKE = 2.0


def _probe_loop(p, target, stop, out):
    """A well-behaved client: every 100 ms a new tunnel (time to its 200) and three echo round
    trips on it."""
    while not stop.is_set():
        try:
            t = time.monotonic()
            c = Client(p.host, p.port, timeout=5)
            c.connect_request(target)
            c.expect_established(5)
            out["ttfb"].append(time.monotonic() - t)
            for k in range(3):
                msg = b"probe-%d-%d" % (len(out["ttfb"]), k)
                a = time.monotonic()
                c.send(msg)
                assert c.recv_exact(len(msg), timeout=5) == msg
                out["rtt"].append(time.monotonic() - a)
            out["ports"].append(c.local_addr[1])
            c.close()
        except Exception as e:  # reported by the test
            out["errors"].append(repr(e))
        stop.wait(0.1)


def test_slowloris_1000_clients_timed_out_while_others_served(start_proxy, tcp_server):
    """1,000 clients send a partial header and then one byte a second (less than the handshake
    timeout apart, so only a deadline on the whole header block stops them). Each must get a
    408 and EOF at [timeouts] handshake = 2 s, logged reason=handshake_timeout, while a normal
    client keeps getting its tunnels and echoes promptly, for little CPU."""
    srv = tcp_server(echo_handler)
    p = start_proxy({"timeouts": {"handshake": "2s"}, "log": {"level": "info"}})
    p.settle()
    _warm_up(p, srv.target())
    fd0, rss0 = fd_count(p.pid), p.rss_kb()
    head = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\nX-Slow: " % ((srv.target().encode(),) * 2)

    sel = selectors.DefaultSelector()
    slow = {}  # local port -> state
    cpu0 = cpu_seconds(p.pid)
    t0 = time.monotonic()
    for _ in range(N_SLOW):
        s = socket.create_connection((p.host, p.port), timeout=5)
        s.setblocking(False)
        st = {"sock": s, "t": time.monotonic(), "buf": b"", "how": None, "t_end": None}
        s.send(head)
        slow[s.getsockname()[1]] = st
        sel.register(s, selectors.EVENT_READ, st)
    t_opened = time.monotonic() - t0

    probe = {"ttfb": [], "rtt": [], "ports": [], "errors": []}
    stop = threading.Event()
    th = threading.Thread(target=_probe_loop, args=(p, srv.target(), stop, probe), daemon=True)
    th.start()

    open_n = N_SLOW
    rss_peak = p.rss_kb()
    fd_peak = fd_count(p.pid)
    next_tick = t0 + 1.0
    deadline = t0 + HANDSHAKE + 6.0
    trickled = 0
    while open_n and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, min(next_tick, deadline) - time.monotonic())):
            st = key.data
            try:
                d = st["sock"].recv(4096)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                d, st["how"] = None, "reset"
            if d:
                st["buf"] += d
                continue
            st["how"] = st["how"] or "eof"
            st["t_end"] = time.monotonic()
            sel.unregister(st["sock"])
            st["sock"].close()
            open_n -= 1
        if time.monotonic() >= next_tick:
            rss_peak = max(rss_peak, p.rss_kb())
            fd_peak = max(fd_peak, fd_count(p.pid))
            for st in slow.values():
                if st["how"] is None:
                    try:
                        trickled += st["sock"].send(b"a")
                    except OSError:
                        pass  # the proxy has answered and shut down: read it next round
            next_tick += 1.0
    t_all_closed = time.monotonic() - t0
    stop.set()
    th.join(10)
    for st in slow.values():
        if st["how"] is None:
            st["sock"].close()

    lines = p.log_lines(N_SLOW, timeout=10, where=lambda x: int(x["client"].rsplit(":", 1)[1])
                        in slow)
    cpu = cpu_seconds(p.pid) - cpu0
    fd1, fd_wait = wait_fds(p.pid, fd0, timeout=5)
    rss1 = p.rss_kb()

    ends = sorted(st["t_end"] - st["t"] for st in slow.values() if st["t_end"])
    print(f"\nslowloris: {N_SLOW} opened in {t_opened:.2f}s, {trickled} trickled bytes, all closed "
          f"after {t_all_closed:.2f}s; closed at {ends[0]:.2f}..{ends[-1]:.2f}s after connect; "
          f"probe tunnels {len(probe['ttfb'])}, max time-to-200 "
          f"{max(probe['ttfb'] or [0]) * 1000:.0f} ms, max echo RTT "
          f"{max(probe['rtt'] or [0]) * 1000:.0f} ms; proxy CPU {cpu:.2f}s; RSS {rss0} -> peak "
          f"{rss_peak} -> {rss1} kB; fds {fd0} -> peak {fd_peak} -> {fd1} ({fd_wait:.2f}s)")

    # Every slow client: the proxy answered 408 and closed (EOF, after its half-close and
    # linger), at the handshake deadline. Each had trickled bytes under the deadline, so this
    # is the whole-header deadline at work, not an idle timer.
    not_closed = [port for port, st in slow.items() if st["how"] is None]
    assert not not_closed, f"{len(not_closed)} slow clients not closed after {deadline - t0}s"
    bad = {port: (st["how"], st["buf"][:80]) for port, st in slow.items()
           if st["how"] != "eof" or not st["buf"].startswith(b"HTTP/1.1 408 Request Timeout\r\n")}
    assert not bad, f"{len(bad)} slow clients without 408 + EOF, e.g. {list(bad.items())[:3]}"
    for port in sorted(slow)[:: N_SLOW // 20]:  # a sample: the whole refusal is well formed
        raw = slow[port]["buf"]
        resp = Response(raw[: raw.index(b"\r\n\r\n") + 4], b"")
        assert resp.status == 408 and resp.header("Connection") == "close", resp
        assert resp.header("Proxy-Status").startswith("connectd; error=http_request_error"), resp
        assert len(raw) == raw.index(b"\r\n\r\n") + 4 + int(resp.header("Content-Length"))
    # Deadline 2 s. Measured 1.99-2.10 s after our connect() returned. The timer starts from
    # libev's clock of the loop iteration that accepted, which may predate our connect by one
    # iteration (an accept batch, longer on a loaded core): 1.75 s still tells the 2 s deadline
    # from anything shorter. The latest (1,000 timers and replies in one go, our own select loop
    # reading them) gets 1.5 s of slack for a slow, shared core.
    assert ends[0] >= HANDSHAKE - 0.25, f"a slow client was closed after {ends[0]:.2f}s"
    assert ends[-1] <= HANDSHAKE + 1.5, f"a slow client was closed only after {ends[-1]:.2f}s"
    assert trickled >= N_SLOW, f"only {trickled} trickled bytes: the slow clients were not slow"
    assert len(lines) == N_SLOW
    wrong = [x["_raw"] for x in lines
             if x["reason"] != "handshake_timeout" or x["status"] != "408"]
    assert not wrong, f"{len(wrong)} slow clients logged otherwise, e.g. {wrong[:2]}"

    # The normal client: measured max time-to-200 3-51 ms and max echo RTT 2-81 ms over ~20
    # tunnels in the phase, including the moment 1,000 timeouts fire. 0.5 s is 6x the worst
    # seen: a proxy that stalled its loop on the slow clients would blow it.
    assert not probe["errors"], probe["errors"][:3]
    plines = p.log_lines(len(probe["ports"]), where=lambda x: int(x["client"].rsplit(":", 1)[1])
                         in probe["ports"])
    assert {(x["status"], x["reason"]) for x in plines} == {("200", "done")}, plines[:3]
    assert len(probe["ttfb"]) >= 10, f"only {len(probe['ttfb'])} probe tunnels in the phase"
    assert max(probe["ttfb"]) < 0.5, f"time to 200 up to {max(probe['ttfb']):.3f}s"
    assert max(probe["rtt"]) < 0.5, f"echo round trip up to {max(probe['rtt']):.3f}s"

    # CPU for the whole phase (1,000 accepts, ~3,000 reads, 1,000 timers, 408s and access
    # lines, ~20 probe tunnels): measured 0.08-0.13 s. 1.5 s is >10x that; a proxy that spun
    # or polled while the slow clients dribble would spend whole seconds in these ~2.2 s.
    assert cpu < 1.5, f"proxy used {cpu:.2f} CPU-seconds for the slowloris phase"
    # Memory: 1,000 handshakes (4 KiB inline request each) measured +5.7 MB at the peak and
    # +6 MB after (glibc keeps the freed heap). Bounds: +24 MB peak, +16 MB after: a leak of
    # the handshakes' request buffers alone would be ~4 MB per 1,000, so this is "roughly".
    assert rss_peak - rss0 < 24 * 1024, f"RSS {rss0} -> peak {rss_peak} kB"
    assert rss1 - rss0 < 16 * 1024, f"RSS {rss0} -> {rss1} kB after the phase"
    assert fd1 <= fd0, f"fds {fd0} before, {fd1} after the slowloris phase"


# ---- 2. file-descriptor exhaustion -----------------------------------------------------------

NOFILE = 128
N_BURST = 500
FD_RESERVE = 64  # src/server.c: fds kept back for listeners, resolver, logs, the spare fd


def _read_heads(socks, state, until):
    """Read from the sockets in socks until `until` (monotonic): their answer, then EOF or RST.
    state[port] = {"buf", "how"}; a socket that got a 200 is left alone (the test
    talks on it), one that closed has "how" set."""
    sel = selectors.DefaultSelector()
    for port, s in socks.items():
        if state[port]["how"] is None:
            sel.register(s, selectors.EVENT_READ, port)
    while sel.get_map() and time.monotonic() < until:
        for key, _ in sel.select(max(0.0, until - time.monotonic())):
            port, st = key.data, state[key.data]
            try:
                d = key.fileobj.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                d, st["how"] = None, "reset"
            if d:
                st["buf"] += d
                if st["buf"].startswith(SUCCESS_REPLY):
                    sel.unregister(key.fileobj)  # a tunnel: held open, the test talks on it
                continue
            st["how"] = st["how"] or "eof"
            sel.unregister(key.fileobj)
    sel.close()


def test_fd_exhaustion_burst_refused_cleanly_no_spin(start_proxy, tcp_server):
    """With RLIMIT_NOFILE = 128 the proxy serves at most (128 - 64) / 2 = 32 tunnels. A burst of
    500 CONNECTs at once: the ones it can carry tunnel (and echo), the rest are refused with a
    503 or closed (or wait in the listen queue); the proxy does not spin while the burst is
    held; once it is closed, a normal tunnel works again within 1 s and every fd is given
    back."""
    srv = tcp_server(echo_handler, backlog=512)
    p = start_proxy({"log": {"level": "info"}}, rlimit_nofile=NOFILE)
    cap = (NOFILE - FD_RESERVE) // 2
    assert f"serving at most {cap}" in p.wait_log("serving at most"), "max_connections not fitted"
    with open(f"/proc/{p.pid}/limits") as f:
        lim = [x for x in f if x.startswith("Max open files")][0].split()
    assert lim[3:5] == [str(NOFILE), str(NOFILE)], lim
    p.settle()
    _warm_up(p, srv.target())
    fd0, rss0 = fd_count(p.pid), p.rss_kb()

    req = b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % ((srv.target().encode(),) * 2)
    socks, state = {}, {}
    t0 = time.monotonic()
    for _ in range(N_BURST):
        s = socket.create_connection((p.host, p.port), timeout=5)
        s.setblocking(False)
        s.send(req)
        port = s.getsockname()[1]
        socks[port] = s
        state[port] = {"buf": b"", "how": None}
    t_open = time.monotonic() - t0
    _read_heads(socks, state, time.monotonic() + 1.0)
    tunnels = {port: s for port, s in socks.items() if state[port]["buf"].startswith(SUCCESS_REPLY)}
    fd_burst = fd_count(p.pid)

    # The tunnels that were established carry bytes while the burst is held: the proxy is not
    # hung. Each echoes 64 KiB of its own random bytes, checked by hash.
    t_echo = time.monotonic()
    for port, s in tunnels.items():
        s.setblocking(True)
        s.settimeout(5)
        data = os.urandom(65536)
        state[port]["buf"] = state[port]["buf"][len(SUCCESS_REPLY):]
        s.sendall(data)
        got = state[port]["buf"]
        while len(got) < len(data):
            d = s.recv(65536)
            assert d, f"tunnel {port} closed during its echo"
            got += d
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), port
    t_echo = time.monotonic() - t_echo

    # Spin check: CPU over a 2 s window with the whole burst still open (listeners paused
    # on EMFILE, refusals lingering, tunnels idle). Keep reading what the others get meanwhile.
    cpu_a = cpu_seconds(p.pid)
    w0 = time.monotonic()
    _read_heads(socks, state, w0 + 2.0)
    cpu_window = cpu_seconds(p.pid) - cpu_a
    w = time.monotonic() - w0

    kinds = {}
    for port, st in state.items():
        if port in tunnels:
            k = "200"
        elif st["buf"]:
            k = st["buf"][:12].decode("latin-1")
        else:
            k = st["how"] or "waiting"
        kinds[k] = kinds.get(k, 0) + 1
    print(f"\nfd exhaustion: {N_BURST} opened in {t_open:.2f}s; outcomes {kinds}; proxy fds "
          f"{fd0} -> {fd_burst} (limit {NOFILE}); {len(tunnels)} echoes in {t_echo:.2f}s; CPU "
          f"{cpu_window:.3f}s over a {w:.1f}s window")

    # Outcomes: at most `cap` tunnels at once; everyone else a 503 (overload) or a close (shed
    # at EMFILE), or still waiting in the listen queue. Nothing else, no half answers.
    assert 1 <= len(tunnels) <= cap, kinds
    odd = {k: n for k, n in kinds.items()
           if k not in ("200", "HTTP/1.1 503", "eof", "reset", "waiting")}
    assert not odd, kinds
    for port, st in state.items():
        if st["buf"].startswith(b"HTTP/1.1 503"):
            assert b"\r\nProxy-Status: connectd; error=proxy_internal_" in st["buf"], st["buf"]
    assert kinds.get("HTTP/1.1 503", 0) + kinds.get("eof", 0) + kinds.get("reset", 0) >= 1, kinds
    # The burst did fill the fd table (else this test proves nothing): measured 128 of 128.
    assert fd_burst >= NOFILE - 4, f"only {fd_burst} of {NOFILE} fds in use during the burst"
    # Measured 0.00-0.03 CPU-seconds in the window (a paused listener wakes 10 times a second).
    # A proxy spinning on a full fd table (accept -> EMFILE -> accept ...) burns ~2 s here.
    assert cpu_window < 0.5, f"proxy used {cpu_window:.2f} CPU-seconds in {w:.1f}s"

    # Close the burst: the proxy must serve a normal tunnel again within 1 s.
    for s in socks.values():
        s.close()
    t_close = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        c = None
        try:
            c = Client(p.host, p.port, timeout=1)
            c.connect_request(srv.target())
            c.expect_established(1)
            c.send(b"back")
            assert c.recv_exact(4, timeout=1) == b"back"
            break
        except (AssertionError, OSError):
            if time.monotonic() - t_close > 3:
                raise
            time.sleep(0.05)
        finally:
            if c is not None:
                c.close()
    t_back = time.monotonic() - t_close
    fd1, fd_wait = wait_fds(p.pid, fd0, slack=2, timeout=5)
    rss1 = p.rss_kb()
    lines = p.log_lines(1)
    reasons = {}
    for x in lines:
        reasons[x["reason"]] = reasons.get(x["reason"], 0) + 1
    print(f"fd exhaustion: normal tunnel again {t_back * 1000:.0f} ms after the close "
          f"({attempts} attempts); fds {fd0} -> {fd1} after {fd_wait:.2f}s; RSS {rss0} -> {rss1} "
          f"kB; access log reasons {reasons}")
    assert t_back < 1.0, f"no working tunnel until {t_back:.2f}s after the burst closed"
    # Every connection the proxy took ended in one of these; anything else (out_of_memory,
    # connect_failed, ...) would be a half-failure at the fd limit.
    assert set(reasons) <= {"done", "overload", "client_eof", "client_reset"}, reasons
    # Within a few fds of the start (the splice pipe pool may keep a pipe: 2 fds).
    assert fd1 <= fd0 + 2, f"fds {fd0} before the burst, {fd1} after"
    assert rss1 - rss0 < 8 * 1024, f"RSS {rss0} -> {rss1} kB"


# ---- 3. resets and a stalled upstream --------------------------------------------------------


def _port_of(line):
    return int(line["client"].rsplit(":", 1)[1])


def test_client_reset_while_dialing_or_resolving(start_proxy, tcp_server, dns):
    """Clients that reset (SO_LINGER 0) or close while the proxy dials a destination that never
    answers, or while their name is being resolved: each is logged at once (client_reset or
    client_eof, not at the connect/DNS timeout), the dial socket and the client's fd are closed
    (fd count back to the baseline), no upstream is dialed after a late DNS answer, and memory
    does not grow."""
    srv = tcp_server(echo_handler)
    dns.set("fast.test", ["127.0.0.1"])
    dns.set("late.test", ["127.0.0.1"])
    dns.delays["late.test"] = 1.5
    bh = Blackhole()
    try:
        assert bh.verify(), "blackhole does not hold connects"
        p = start_proxy({"timeouts": {"connect": "10s", "dns": "5s"}})
        p.settle()
        _warm_up(p, srv.target())
        _warm_up(p, f"fast.test:{srv.port}", n=1)  # the resolving path has run once
        fd0, rss0 = fd_count(p.pid), p.rss_kb()
        accepts0 = srv.accepts
        n = 10

        # While dialing: each client and its pending dial hold one fd each.
        clients = []
        for i in range(n):
            c = p.client()
            c.connect_request(f"127.0.0.1:{bh.port}")
            clients.append(c)
        deadline = time.monotonic() + 3
        while fd_count(p.pid) < fd0 + 2 * n and time.monotonic() < deadline:
            time.sleep(0.02)
        fd_dialing = fd_count(p.pid)
        assert fd_dialing == fd0 + 2 * n, f"fds {fd0} -> {fd_dialing}: not all {n} dialing"
        expect = {}
        t_gone = time.monotonic()
        for i, c in enumerate(clients):
            expect[c.local_addr[1]] = "client_reset" if i % 2 == 0 else "client_eof"
            if i % 2 == 0:
                c.abort()
            else:
                c.close()
        lines = p.log_lines(n, where=lambda x: _port_of(x) in expect)
        t_logged = time.monotonic() - t_gone
        fd1, fd1_wait = wait_fds(p.pid, fd0, timeout=3)
        got = {_port_of(x): x["reason"] for x in lines}
        assert got == expect, lines
        durations = [float(x["duration"]) for x in lines]
        print(f"\nreset while dialing: {n} clients (5 RST, 5 FIN) logged within "
              f"{t_logged * 1000:.0f} ms, durations up to {max(durations):.3f}s; fds {fd0} -> "
              f"{fd_dialing} dialing -> {fd1} ({fd1_wait:.2f}s)")
        # Measured: logged within ~10-50 ms of the reset. The connect timeout is 10 s: anything
        # near it means the reset was only noticed when the dial gave up.
        assert t_logged < 1.0 and max(durations) < 2.0, (t_logged, durations)
        assert fd1 == fd0, f"fds {fd0} before, {fd1} after the dialing clients went away"

        # While resolving: the client's fd only (the query is on the shared resolver socket).
        clients, expect = [], {}
        for i in range(n):
            c = p.client()
            c.connect_request(f"late.test:{srv.port}")
            clients.append(c)
        deadline = time.monotonic() + 3
        while (fd_count(p.pid) < fd0 + n or not dns.queried("late.test")) and \
                time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        fd_resolving = fd_count(p.pid)
        # + the resolver's UDP socket, which c-ares opens while a query is pending
        assert fd0 + n <= fd_resolving <= fd0 + n + 1, \
            f"fds {fd0} -> {fd_resolving}: not all {n} resolving"
        t_gone = time.monotonic()
        for c in clients:
            expect[c.local_addr[1]] = "client_reset"
            c.abort()
        lines = p.log_lines(n, where=lambda x: _port_of(x) in expect)
        t_logged = time.monotonic() - t_gone
        assert {_port_of(x): x["reason"] for x in lines} == expect, lines
        time.sleep(max(0.0, 1.5 + 0.4 - (time.monotonic() - t_gone)))  # past the late answer
        fd2, fd2_wait = wait_fds(p.pid, fd0, timeout=3)
        rss1 = p.rss_kb()
        print(f"reset while resolving: {n} clients logged within {t_logged * 1000:.0f} ms; fds "
              f"{fd0} -> {fd_resolving} -> {fd2}; upstream accepts {srv.accepts - accepts0}; "
              f"RSS {rss0} -> {rss1} kB")
        assert t_logged < 1.0, t_logged
        assert srv.accepts == accepts0, "a reset client's destination was dialed after DNS"
        assert fd2 == fd0, f"fds {fd0} before, {fd2} after the resolving clients went away"
        # 20 handshakes are a few dozen kB at most; 1 MB allows for allocator noise.
        assert rss1 - rss0 < 1024, f"RSS {rss0} -> {rss1} kB"
    finally:
        bh.close()


def test_upstream_reset_mid_transfer(start_proxy, tcp_server):
    """The destination starts a 4 MiB download when the client's upload begins and resets
    (SO_LINGER 0) after 512 KiB, while the client is uploading 1 MiB it never reads. The client
    sees the tunnel close (EOF or RST) promptly, after an intact prefix of the stream; the
    access log says upstream_reset; 8 rounds leak no fd and no memory."""
    stream = os.urandom(4 * 1024 * 1024)
    reset_at = 512 * 1024
    upload = os.urandom(1024 * 1024)
    srv = tcp_server(reset_mid_stream_handler(stream, reset_at))
    echo = tcp_server(echo_handler)
    p = start_proxy()
    p.settle()
    _warm_up(p, echo.target())
    done = [0]

    def one_round():
        c = p.tunnel(srv.target())
        port = c.local_addr[1]

        def send_upload():
            try:
                c.sock.sendall(upload)
            except OSError:
                pass  # the tunnel was closed under it: expected

        th = threading.Thread(target=send_upload, daemon=True)
        th.start()
        data, how = _closes(c.sock)
        t_closed = time.monotonic()
        data = c.buf + data  # what arrived with the 200
        th.join(5)
        c.close()
        done[0] += 1
        rec = srv.wait_results(done[0], timeout=5)[-1]
        line = p.log_lines(1, where=lambda x: _port_of(x) == port)[0]
        return data, how, t_closed - rec["t_done"], line

    one_round()  # warm-up: the splice pipes this kind of transfer uses are in the pool now
    fd0, rss0 = fd_count(p.pid), p.rss_kb()
    results, fds = [], []
    for _ in range(8):
        results.append(one_round())
        fds.append(wait_fds(p.pid, fd0, timeout=2)[0])
    rss1 = p.rss_kb()
    print(f"\nupstream reset: client got {[len(r[0]) // 1024 for r in results]} KiB of the "
          f"stream then {sorted({r[1] for r in results})}, closed "
          f"{max(r[2] for r in results) * 1000:.0f} ms after the RST at most; logged up "
          f"{[int(r[3]['up']) // 1024 for r in results]} KiB; fds {fd0} -> {fds}; RSS {rss0} -> "
          f"{rss1} kB")
    for data, how, lag, line in results:
        assert how in ("eof", "reset"), f"tunnel not closed after the upstream reset ({how})"
        # Measured: the close reaches the client within ~1-10 ms of the upstream's RST.
        assert lag < 1.0, f"client saw the close {lag:.2f}s after the upstream reset"
        # An intact prefix of what was sent before the reset (what the proxy still held when
        # the RST came is dropped with the tunnel), never bytes from after it.
        assert len(data) <= reset_at, len(data)
        assert hashlib.sha256(data).digest() == hashlib.sha256(stream[:len(data)]).digest(), \
            "the bytes before the reset are not intact"
        assert line["reason"] == "upstream_reset" and line["status"] == "200", line["_raw"]
        assert len(data) <= int(line["down"]) <= reset_at, (len(data), line["_raw"])
    # The pool keeps drained pipes (2 fds each, at most one per direction here); a leak of one
    # fd per round would show as 8.
    assert max(fds) <= fd0 + 4, f"fds {fd0} before, {fds} after each round"
    assert rss1 - rss0 < 2048, f"RSS {rss0} -> {rss1} kB after 8 rounds"


def _push_until_stalled(sock, cap=96 * 1024 * 1024, quiet=1.0, limit=15.0):
    """Send from a non-blocking sock until it has not been writable for quiet seconds (or cap
    bytes, or limit seconds). Returns (bytes pushed, seconds until the last send, stalled)."""
    sock.setblocking(False)
    chunk = os.urandom(65536)
    pushed = 0
    t0 = time.monotonic()
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_WRITE)
    stalled = False
    while pushed < cap and time.monotonic() - t0 < limit:
        if not sel.select(quiet):
            stalled = True
            break
        try:
            n = sock.send(chunk)
        except BlockingIOError:
            continue
        pushed += n
    sel.close()
    return pushed, time.monotonic() - t0 - (quiet if stalled else 0), stalled


def test_stalled_upstream_backpressure_bounded(start_proxy, tcp_server):
    """The upstream accepts and never reads while the client pushes. The proxy stops reading
    the client (backpressure): the client's sends block after a bounded amount, the proxy holds
    at most one pipe + one buffer of it (the rest sits in kernel socket buffers, accounted for
    byte by byte from /proc/net/tcp), its RSS does not grow, it does not spin; when the client
    goes away everything is freed."""
    srv = tcp_server(no_read_handler)
    echo = tcp_server(echo_handler)
    # Long enough for the stall and its measurements (~3 s) to end before the idle timer does.
    idle = 5.0
    p = start_proxy({"timeouts": {"idle": "5s"}})
    p.settle()
    _warm_up(p, echo.target())
    fd0, rss0 = fd_count(p.pid), p.rss_kb()

    c = p.tunnel(srv.target())
    srv.wait_accepts(1)
    cport = c.local_addr[1]
    proxy_up_port = srv.peers[0][1]  # the proxy's end of its upstream connection
    pushed, t_push, stalled = _push_until_stalled(c.sock)
    q = tcp_queues()
    client_tx = q[(cport, p.port)][0]
    proxy_rx = q[(p.port, cport)][1]
    proxy_tx = q[(proxy_up_port, srv.port)][0]
    upstream_rx = q[(srv.port, proxy_up_port)][1]
    in_proxy = pushed - client_tx - proxy_rx - proxy_tx - upstream_rx
    in_pipes = pipe_bytes(p.pid)
    rss_stalled = p.rss_kb()
    fd_stalled = fd_count(p.pid)
    cpu_a = cpu_seconds(p.pid)
    time.sleep(1.0)
    cpu_stalled = cpu_seconds(p.pid) - cpu_a
    sel = selectors.DefaultSelector()
    sel.register(c.sock, selectors.EVENT_WRITE)
    still = not sel.select(0)
    sel.close()
    tcp_rmem, tcp_wmem = sysctl_int_list("net.ipv4.tcp_rmem"), sysctl_int_list("net.ipv4.tcp_wmem")
    kernel_max = 2 * tcp_wmem[2] + 2 * tcp_rmem[2]  # two send and two receive buffers
    print(f"\nstalled upstream: pushed {pushed / 1e6:.1f} MB in {t_push:.2f}s, then blocked; "
          f"client send queue {client_tx / 1e6:.1f} MB, proxy receive queue {proxy_rx / 1e6:.1f} "
          f"MB, proxy send queue {proxy_tx / 1e6:.1f} MB, upstream receive queue "
          f"{upstream_rx / 1e6:.2f} MB, held inside the proxy {in_proxy / 1e6:.2f} MB (in its "
          f"pipes {in_pipes / 1e6:.2f} MB); RSS "
          f"{rss0} -> {rss_stalled} kB; fds {fd0} -> {fd_stalled}; CPU {cpu_stalled:.2f}s in 1 s "
          f"stalled; kernel buffer ceiling {kernel_max / 1e6:.0f} MB")
    assert stalled and still, f"sends never blocked: {pushed / 1e6:.0f} MB pushed"
    # Where every pushed byte is: in the four sockets' queues, or inside the proxy: its pipe
    # (or one 64 KiB copy buffer, never both with bytes). Measured: the difference is exactly
    # what FIONREAD finds in the proxy's pipes, 5.5-8.1 MB. That is more than the 1 MiB the
    # relay asks for (F_SETPIPE_SZ sets 256 page slots, but splice from a loopback socket puts
    # one skb fragment of up to 32 KiB in each slot), so the bound is 256 x 32 KiB + a buffer.
    # It is kernel memory, not the proxy's RSS (checked below).
    assert abs(in_proxy - in_pipes) <= BUF_CAP, (in_proxy, in_pipes)
    assert 0 <= in_proxy <= PIPE_SLOTS * SKB_FRAG_MAX + BUF_CAP, f"proxy holds {in_proxy} bytes"
    # What the client can push at all is what the kernel buffers take: two send buffers (client,
    # proxy->upstream, autotuned up to tcp_wmem max, 4 MB here) and two receive buffers (proxy,
    # upstream; up to tcp_rmem max, 32 MB here), plus the proxy's pipe. Measured 17-36 MB (the
    # proxy's receive queue alone 4-22 MB): the 16 MB one might expect does not hold with a
    # 32 MB tcp_rmem, so the ceiling (~84 MB here) is computed from this host's sysctls.
    assert pushed <= kernel_max + PIPE_SLOTS * SKB_FRAG_MAX + BUF_CAP, pushed
    # The proxy's memory: user-space holds at most a 64 KiB buffer (pipe pages are not RSS).
    # Measured +60 kB; 2 MB for allocator noise.
    assert rss_stalled - rss0 < 2048, f"RSS {rss0} -> {rss_stalled} kB while stalled"
    # Measured 0.00 s: with reads stopped and nothing writable, the proxy sleeps. A spin on a
    # full pipe or buffer (level-triggered read watcher left on) would be ~1 s.
    assert cpu_stalled < 0.2, f"{cpu_stalled:.2f} CPU-seconds in 1 s of backpressure"

    # The client goes away (RST). Everything is freed: with no read watcher on the client while
    # its direction is backpressured, the proxy only notices at [timeouts] idle (5 s here), see
    # test_client_reset_noticed_while_backpressured.
    c.abort()
    t_gone = time.monotonic()
    line = p.log_lines(1, timeout=idle + 3, where=lambda x: _port_of(x) == cport)[0]
    t_logged = time.monotonic() - t_gone
    fd1, _ = wait_fds(p.pid, fd0 + 2, timeout=2)  # + one pooled pipe
    rss1 = p.rss_kb()
    print(f"stalled upstream: client reset; tunnel closed after {t_logged:.2f}s "
          f"(reason={line['reason']}, up={line['up']}); fds {fd_stalled} -> {fd1}; RSS {rss1} kB")
    assert line["reason"] in ("client_reset", "idle_timeout"), line["_raw"]
    assert int(line["up"]) == proxy_tx + upstream_rx, (line["_raw"], proxy_tx, upstream_rx)
    assert t_logged < idle + 1.5, f"tunnel of a reset client held {t_logged:.1f}s"
    assert fd1 <= fd0 + 2, f"fds {fd0} before, {fd1} after the stalled tunnel ended"
    assert rss1 - rss0 < 2048, f"RSS {rss0} -> {rss1} kB"


def test_client_reset_noticed_while_backpressured(start_proxy, tcp_server):
    """Same stall as above with the default test idle timeout (30 s): a client that resets
    has its tunnel closed (reason client_reset) within about a second (the stall check runs
    every second), not after the idle timeout; otherwise it would hold 2 fds, a pipe and its
    socket buffers (tens of MB of kernel memory)."""
    srv = tcp_server(no_read_handler)
    p = start_proxy()
    p.settle()
    c = p.tunnel(srv.target())
    srv.wait_accepts(1)
    cport = c.local_addr[1]
    pushed, _, stalled = _push_until_stalled(c.sock)
    if not stalled:  # not the expected failure: fail for real
        pytest.fail(f"sends never blocked ({pushed} bytes)")
    c.abort()
    line = p.log_lines(1, timeout=3.0, where=lambda x: _port_of(x) == cport)[0]
    assert line["reason"] == "client_reset", line["_raw"]
