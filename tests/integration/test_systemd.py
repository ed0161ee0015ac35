"""systemd integration without systemd: readiness and state through a NOTIFY_SOCKET the test
listens on, and socket activation through systemd-socket-activate."""

import os
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

from conftest import BASE_CONFIG, merge, render_ini
from netutil import free_port, wait_port
from servers import echo_handler


class Notify:
    """An AF_UNIX datagram socket standing in for systemd's notify socket; records each
    message with the sender's pid (SO_PASSCRED)."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.msgs = []  # (pid, {key: value})

    def wait_for(self, key, value=None, timeout=5.0):
        """Bounded wait for a message holding key (=value); returns (pid, fields)."""
        for pid, fields in self.msgs:
            if key in fields and (value is None or fields[key] == value):
                self.msgs.remove((pid, fields))
                return pid, fields
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value} notification; got {self.msgs}")
            self.sock.settimeout(left)
            try:
                data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
            except socket.timeout:
                continue
            pid = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("iII", cdata[:12])[0]
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            if key in fields and (value is None or fields[key] == value):
                return pid, fields
            self.msgs.append((pid, fields))

    def close(self):
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    n = Notify(tmp_path / "notify.sock")
    yield n
    n.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_notify_ready_reload_stopping(start_proxy, tcp_server, notify, workers):
    srv = tcp_server(echo_handler)
    p = start_proxy({"server": {"workers": workers}}, env={"NOTIFY_SOCKET": notify.path},
                    wait=False)
    pid, fields = notify.wait_for("READY", "1")
    assert pid == p.pid, "READY must come from the main process"
    assert "tunnels open" in fields.get("STATUS", ""), fields
    # READY=1 means serving: a tunnel works right away, with no wait for the port.
    t = p.tunnel(srv.target())
    # STATUS is refreshed with the count of open tunnels (every 2 s).
    deadline = time.monotonic() + 8
    while True:
        pid, fields = notify.wait_for("STATUS", timeout=5)
        if fields["STATUS"].startswith("1 tunnels open"):
            break
        assert time.monotonic() < deadline, fields
    t.close()
    p.signal(signal.SIGHUP)
    pid, _ = notify.wait_for("RELOADING", "1")
    assert pid == p.pid
    notify.wait_for("READY", "1")
    p.signal(signal.SIGTERM)
    pid, _ = notify.wait_for("STOPPING", "1")
    assert pid == p.pid
    assert p.proc.wait(10) == 0
    p.stopped = True
    # Workers leave systemd to the master.
    senders = {pid for pid, _ in notify.msgs}
    assert senders <= {p.pid}, senders


def test_socket_activation(connectd_bin, tmp_path, tcp_server, dns):
    if not shutil.which("systemd-socket-activate"):
        pytest.skip("systemd-socket-activate not installed")
    srv = tcp_server(echo_handler)
    port = free_port()
    unused = free_port()
    cfg = merge(BASE_CONFIG, {"server": {"listen": f"127.0.0.1:{unused}"},
                              "dns": {"servers": dns.server_spec}})
    cfg["log"]["access_log"] = str(tmp_path / "access.log")
    ini = tmp_path / "sa.ini"
    ini.write_text(render_ini(cfg))
    err = open(tmp_path / "sa.stderr", "wb")
    proc = subprocess.Popen(["systemd-socket-activate", "-l", f"127.0.0.1:{port}",
                             connectd_bin, "-c", str(ini)], stdout=err, stderr=err)
    try:
        assert wait_port("127.0.0.1", port, 5.0, proc), "socket not listening"
        # The first connection starts connectd on the passed socket; it is the tunnel itself.
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(f"CONNECT {srv.target()} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200 "), head
        s.sendall(b"ping")
        assert s.recv(4) == b"ping"
        s.close()
        text = open(tmp_path / "sa.stderr", "rb").read().decode()
        assert "socket activation: 1 listening sockets from systemd" in text, text
        # [server] listen was not bound.
        probe = socket.socket()
        assert probe.connect_ex(("127.0.0.1", unused)) != 0
        probe.close()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        err.close()
