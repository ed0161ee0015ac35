"""Plain TCP upstream servers for the tests, each in Python threads on loopback.

TCPServer accepts on a thread and runs handler(conn, record) per connection on its own thread;
record is a dict the handler fills (bytes received, hash, ...) and that is appended to
server.results when the handler returns. Every socket has a timeout, so nothing hangs forever.
"""

import hashlib
import socket
import struct
import threading
import time

from netutil import LOOPBACK4, family_of

CONN_TIMEOUT = 30.0  # per recv/send on an accepted connection


class TCPServer:
    def __init__(self, handler, host=LOOPBACK4, port=0, backlog=128, v6only=True):
        self.handler = handler
        self.host = host
        self.lsock = socket.socket(family_of(host), socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family_of(host) == socket.AF_INET6 and v6only:
            self.lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(backlog)
        self.lsock.settimeout(0.1)
        self.port = self.lsock.getsockname()[1]
        self.accepts = 0
        self.peers = []
        self.results = []
        self.errors = []
        self._conns = []
        self._threads = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._accept_loop, daemon=True)
        self._t.start()

    @property
    def addr(self):
        return (self.host, self.port)

    def target(self):
        """The CONNECT target for this server, e.g. '127.0.0.1:4242' or '[::1]:4242'."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, peer = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(CONN_TIMEOUT)
            with self._lock:
                self.accepts += 1
                self.peers.append(peer)
                self._conns.append(conn)
                self._cond.notify_all()
            t = threading.Thread(target=self._run, args=(conn, peer), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, conn, peer):
        rec = {"peer": peer, "t_accept": time.monotonic()}
        try:
            self.handler(conn, rec)
        except Exception as e:  # recorded, the test decides whether it matters
            rec["error"] = repr(e)
            with self._lock:
                self.errors.append(repr(e))
        finally:
            try:
                conn.close()
            except OSError:
                pass
            rec["t_done"] = time.monotonic()
            with self._lock:
                self.results.append(rec)
                self._cond.notify_all()

    def wait_results(self, n, timeout=10.0):
        """Wait (bounded) until n handlers have finished; returns the results list."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.results) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"server {self.target()}: {len(self.results)}/{n} connections finished "
                        f"within {timeout}s (accepts={self.accepts}, errors={self.errors})"
                    )
                self._cond.wait(left)
            return list(self.results)

    def wait_accepts(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.accepts < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"server {self.target()}: {self.accepts}/{n} accepts")
                self._cond.wait(left)

    def stop(self):
        self._stop.set()
        try:
            self.lsock.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._t.join(2)
        for t in self._threads:
            t.join(2)


# ---- handlers ------------------------------------------------------------------------------


def read_to_eof(conn, rec, key=""):
    h = hashlib.sha256()
    n = 0
    while True:
        d = conn.recv(262144)
        if not d:
            break
        h.update(d)
        n += len(d)
    rec[key + "bytes"] = n
    rec[key + "sha256"] = h.hexdigest()
    return n


def echo_handler(conn, rec):
    """Echo everything; on EOF shut down the write side and finish."""
    n = 0
    first = None
    while True:
        d = conn.recv(262144)
        if not d:
            break
        if first is None:
            first = d
        n += len(d)
        conn.sendall(d)
    rec["bytes"] = n
    rec["first_chunk"] = first
    conn.shutdown(socket.SHUT_WR)


def greeting_echo_handler(greeting):
    def h(conn, rec):
        conn.sendall(greeting)
        echo_handler(conn, rec)

    return h


def sink_handler(reply=b""):
    """Read to EOF (count + SHA-256), then send reply and close."""

    def h(conn, rec):
        read_to_eof(conn, rec)
        rec["t_eof"] = time.monotonic()
        if reply:
            conn.sendall(reply)
        conn.shutdown(socket.SHUT_WR)

    return h


def send_then_shutdown_handler(payload):
    """Send payload, shut down the write side, then read to EOF (count + SHA-256)."""

    def h(conn, rec):
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        rec["t_shutdown"] = time.monotonic()
        read_to_eof(conn, rec)

    return h


def hold_handler(conn, rec):
    """Do nothing until the peer closes (bounded by CONN_TIMEOUT)."""
    read_to_eof(conn, rec)


def reset_after_handler(nbytes_first=0, payload=b""):
    """Send payload, wait until nbytes_first bytes arrive, then close with RST."""

    def h(conn, rec):
        if payload:
            conn.sendall(payload)
        got = 0
        while got < nbytes_first:
            d = conn.recv(65536)
            if not d:
                break
            got += len(d)
        rec["bytes"] = got
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    return h


def slow_reader_source_handler(payload):
    """Send payload as fast as the socket takes it, record when done, then read to EOF."""

    def h(conn, rec):
        conn.sendall(payload)
        rec["t_sent"] = time.monotonic()
        conn.shutdown(socket.SHUT_WR)
        read_to_eof(conn, rec)

    return h


class Blackhole:
    """A loopback address:port where TCP connects hang: listen(0) and fill the accept queue with
    connections that are never accepted; further SYNs are dropped by the kernel, so a connect to
    it neither succeeds nor fails until the caller's timeout."""

    def __init__(self, host=LOOPBACK4, port=0):
        self.lsock = socket.socket(family_of(host), socket.SOCK_STREAM)
        if family_of(host) == socket.AF_INET6:
            self.lsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        self.lsock.bind((host, port))
        self.lsock.listen(0)
        self.host = host
        self.port = self.lsock.getsockname()[1]
        self.fillers = []
        # Fill the queue: connect non-blocking until one connect does not complete in 0.3 s.
        for _ in range(8):
            s = socket.socket(family_of(host), socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((host, self.port))
            self.fillers.append(s)
            import select

            _, w, _ = select.select([], [s], [], 0.3)
            if not w:
                break
        else:
            raise RuntimeError("could not fill the listen backlog")

    def verify(self, timeout=0.5):
        """True when a fresh connect hangs (does not complete within timeout)."""
        s = socket.socket(family_of(self.host), socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((self.host, self.port))
            return False
        except socket.timeout:
            return True
        except OSError:
            return False
        finally:
            s.close()

    def close(self):
        for s in self.fillers:
            s.close()
        self.lsock.close()


def no_read_handler(conn, rec):
    """A stalled upstream: accept, never read, never send. Waits (without reading) until the
    peer hangs up or resets, or CONN_TIMEOUT, then closes; rec["hangup"]: the peer went away
    (False: the wait timed out)."""
    import select

    p = select.poll()
    p.register(conn, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    rec["hangup"] = bool(p.poll(CONN_TIMEOUT * 1000))


def reset_mid_stream_handler(payload, reset_at):
    """Once the client's first byte arrives (the tunnel is up), start sending payload, and after
    reset_at bytes of it close with RST (SO_LINGER 0), reading nothing more: a destination
    that dies in the middle of a download."""

    def h(conn, rec):
        rec["first"] = conn.recv(1)
        conn.sendall(payload[:reset_at])
        rec["bytes_sent"] = reset_at
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    return h
