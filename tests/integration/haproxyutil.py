"""Run the real HAProxy (Debian's haproxy package, 2.6 here) as a child of a test: the config is
written to the test's tmp_path, checked with `haproxy -c`, then run in the foreground
(`haproxy -f CFG -db`), optionally inside a network namespace the test created
(`ip netns exec NS haproxy ...`: ip execs haproxy, so the PID is HAProxy's own). Stopped by PID
(SIGTERM, bounded wait, SIGKILL). Readiness is read from /proc/PID/net/tcp (the listening
sockets of HAProxy's own namespace), so no probe connection reaches the backends. Every wait
is bounded."""

import os
import shutil
import signal
import subprocess
import time


def haproxy_bin():
    """The haproxy executable, or None when it is not installed (/usr/sbin may be off PATH)."""
    b = shutil.which("haproxy")
    if b:
        return b
    for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy"):
        if os.access(p, os.X_OK):
            return p
    return None


def _listening_ports(pid):
    """Ports in LISTEN state in the network namespace of pid (IPv4 and IPv6)."""
    ports = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except (OSError, StopIteration):
            pass
    return ports


class HAProxy:
    def __init__(self, cfg_text, workdir, name="haproxy", netns=None):
        self.bin = haproxy_bin()
        assert self.bin, "haproxy is not installed"
        self.cfg_path = os.path.join(str(workdir), f"{name}.cfg")
        self.stderr_path = os.path.join(str(workdir), f"{name}.stderr")
        with open(self.cfg_path, "w") as f:
            f.write(cfg_text)
        self.cfg_text = cfg_text
        prefix = ["ip", "netns", "exec", netns] if netns else []
        r = subprocess.run(prefix + [self.bin, "-c", "-f", self.cfg_path], capture_output=True,
                           text=True, timeout=15, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, (f"haproxy -c rejects the config:\n{r.stdout}{r.stderr}\n"
                                   f"--- config ---\n{cfg_text}")
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(prefix + [self.bin, "-f", self.cfg_path, "-db"],
                                     stdin=subprocess.DEVNULL, stdout=self._err,
                                     stderr=self._err)
        self.pid = self.proc.pid

    def stderr_text(self):
        try:
            self._err.flush()
        except ValueError:
            pass
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")

    def wait_listening(self, ports, timeout=10.0):
        """Wait (bounded) until HAProxy listens on every port in ports."""
        want = set(ports)
        deadline = time.monotonic() + timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise AssertionError(f"haproxy exited with status {rc}:\n{self.stderr_text()}")
            if want <= _listening_ports(self.pid):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy not listening on {sorted(want)} within {timeout}s:"
                                     f"\n{self.stderr_text()}")
            time.sleep(0.05)

    def wait_stderr(self, needle, timeout=10.0):
        """Wait (bounded) until HAProxy's stderr holds needle; returns the time it was seen."""
        deadline = time.monotonic() + timeout
        while True:
            if needle in self.stderr_text():
                return time.monotonic()
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in haproxy stderr within {timeout}s:\n"
                                     f"{self.stderr_text()[-3000:]}")
            time.sleep(0.02)

    def stop(self):
        """SIGTERM by PID, bounded wait, SIGKILL. Returns the exit status."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        try:
            self._err.close()
        except OSError:
            pass
        return self.proc.returncode
