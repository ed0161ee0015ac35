"""Helpers for the parent-proxy tests (test_parents.py): [parent NAME] overrides, a scriptable
fake parent proxy, a Squid parent run in the foreground, and a way to see which local ports a
process's sockets use (to match a child connectd's outgoing connection with the parent's access
log). Loopback only; every wait is bounded; only processes started here are stopped, by PID."""

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from netutil import LOOPBACK4, free_port, wait_port
from servers import CONN_TIMEOUT, TCPServer

SQUID = "/usr/sbin/squid"
SQUID_NCSA = "/usr/lib/squid/basic_ncsa_auth"


def parent_section(name, address, **keys):
    """start_proxy overrides for one [parent NAME] section."""
    sec = {"address": address}
    sec.update(keys)
    return {f"parent {name}": sec}


def overrides(*parts):
    """Merge several override dicts (sections are disjoint or merged key by key)."""
    out = {}
    for p in parts:
        for s, kv in p.items():
            out.setdefault(s, {}).update(kv)
    return out


# ---- a fake parent proxy -------------------------------------------------------------------


def fake_parent_handler(answer=b"HTTP/1.1 200 Connection established\r\n\r\n", after="echo",
                        hold_answer=0.1, chunk=0):
    """A parent that reads one request head (recorded as rec["head"]), waits hold_answer seconds
    (anything connectd sends meanwhile is recorded as rec["before_answer"]: it should send
    nothing before the parent's answer), then sends answer (None: nothing) and:
      after="echo":  echoes everything (what came after the head first), as a tunnel would;
      after="hold":  reads to EOF without answering anything more (rec["after_bytes"]);
      after="close": closes at once.
    chunk: send the answer in pieces of this many bytes, 20 ms apart (0: one write)."""

    def h(conn, rec):
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = conn.recv(65536)
            if not d:
                rec["head"] = buf
                rec["eof_before_head"] = True
                return
            buf += d
            if len(buf) > 65536:
                rec["head"] = buf
                return
        i = buf.index(b"\r\n\r\n") + 4
        rec["head"], rest = buf[:i], buf[i:]
        if hold_answer:
            time.sleep(hold_answer)
            conn.setblocking(False)
            try:
                while True:
                    d = conn.recv(65536)
                    if not d:
                        break
                    rest += d
            except BlockingIOError:
                pass
            conn.settimeout(CONN_TIMEOUT)
        rec["before_answer"] = rest
        if answer is not None and chunk:
            for i in range(0, len(answer), chunk):
                conn.sendall(answer[i:i + chunk])
                time.sleep(0.02)
            rec["answered"] = time.monotonic()
        elif answer is not None:
            conn.sendall(answer)
            rec["answered"] = time.monotonic()
        if after == "close":
            return
        if after == "hold":
            n = 0
            while True:
                d = conn.recv(65536)
                if not d:
                    break
                n += len(d)
            rec["after_bytes"] = n
            rec["peer_closed"] = time.monotonic()
            return
        # echo
        n = len(rest)
        if rest:
            conn.sendall(rest)
        while True:
            d = conn.recv(262144)
            if not d:
                break
            n += len(d)
            conn.sendall(d)
        rec["echoed"] = n
        conn.shutdown(socket.SHUT_WR)

    return h


def parse_head(raw):
    """A request head -> (request line, [(name, value)]); asserts CRLF line ends."""
    assert raw.endswith(b"\r\n\r\n"), raw
    text = raw[:-4].decode("latin-1")
    assert "\n" not in text.replace("\r\n", ""), f"bare LF in {raw!r}"
    lines = text.split("\r\n")
    hdrs = []
    for line in lines[1:]:
        k, v = line.split(":", 1)
        hdrs.append((k, v.strip()))
    return lines[0], hdrs


class FakeParent(TCPServer):
    def __init__(self, **kw):
        super().__init__(fake_parent_handler(**kw))

    @property
    def address(self):
        return f"{self.host}:{self.port}"


# ---- which local ports does a process use --------------------------------------------------


def _descendants(pid):
    kids = {}
    for st in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(st) as f:
                data = f.read()
        except OSError:
            continue
        rp = data.rindex(")")
        fields = data[rp + 2:].split()
        kids.setdefault(int(fields[1]), []).append(int(data[: data.index(" ")]))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def local_ports_towards(pid, remote_port, remote_host=LOOPBACK4):
    """The local ports of pid's (and its descendants') TCP sockets connected to
    remote_host:remote_port (IPv4, from /proc/net/tcp)."""
    inodes = set()
    for p in _descendants(pid):
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    link = os.readlink(f"/proc/{p}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(int(link[8:-1]))
        except OSError:
            continue
    want_ip = socket.inet_aton(remote_host)[::-1].hex().upper()
    ports = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fl = line.split()
            rip, rport = fl[2].split(":")
            if int(fl[9]) in inodes and rip == want_ip and int(rport, 16) == remote_port:
                ports.add(int(fl[1].split(":")[1], 16))
    return ports


# ---- Squid -----------------------------------------------------------------------------------


class Squid:
    """/usr/sbin/squid -N (no daemon) on 127.0.0.1:<free port>, allowing CONNECT from loopback to
    connect_ports. Squid drops to the 'proxy' user and cannot reach pytest's 0700 tmp_path, so
    its files live in a proxy-owned directory of its own (copied to keep_dir at stop, then
    removed). users: {name: crypt hash} turns on Basic auth (basic_ncsa_auth)."""

    def __init__(self, keep_dir, connect_ports, users=None):
        self.keep_dir = keep_dir
        self.port = free_port()
        self.name = "ctdtest" + secrets.token_hex(4)  # -n: its own shm segment names
        pw = pwd.getpwnam("proxy")
        self.dir = tempfile.mkdtemp(prefix="connectd-squid-")
        os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        lines = [
            f"http_port {LOOPBACK4}:{self.port}",
            "visible_hostname squid-parent.test",
            "acl local src 127.0.0.0/8",
            "acl CONNECT method CONNECT",
            "acl test_ports port " + " ".join(str(p) for p in connect_ports),
        ]
        if users:
            pwfile = os.path.join(self.dir, "passwd")
            with open(pwfile, "w") as f:
                for u, h in users.items():
                    f.write(f"{u}:{h}\n")
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            lines += [
                f"auth_param basic program {SQUID_NCSA} {pwfile}",
                "auth_param basic children 1 startup=1 idle=1",
                "auth_param basic realm squid-test",
                "acl authed proxy_auth REQUIRED",
                "http_access allow local CONNECT test_ports authed",
            ]
        else:
            lines.append("http_access allow local CONNECT test_ports")
        lines += [
            "http_access deny all",
            "cache deny all",
            f"coredump_dir {self.dir}",
            "pid_filename none",
            f"cache_log stdio:{self.dir}/cache.log",
            f"access_log stdio:{self.dir}/access.log",
            "shutdown_lifetime 0 seconds",
            "dns_nameservers 127.0.0.1",
        ]
        self.conf = os.path.join(self.dir, "squid.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.out_path = os.path.join(keep_dir, f"{self.name}.out")
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen([SQUID, "-N", "-n", self.name, "-f", self.conf],
                                     stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    @property
    def address(self):
        return f"{LOOPBACK4}:{self.port}"

    def wait_ready(self, timeout=10.0):
        if not wait_port(LOOPBACK4, self.port, timeout, self.proc):
            raise AssertionError(f"squid not listening on {self.address} within {timeout}s "
                                 f"(exit {self.proc.poll()}):\n{self.text()}")

    def access_lines(self, n=1, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(os.path.join(self.dir, "access.log")) as f:
                    lines = [x for x in f.read().split("\n") if x]
            except OSError:
                lines = []
            if len(lines) >= n or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def text(self):
        out = ""
        for p in (self.out_path, os.path.join(self.dir, "cache.log")):
            try:
                with open(p, errors="replace") as f:
                    out += f"--- {p} ---\n" + f.read()[-4000:]
            except OSError:
                pass
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        for p in glob.glob(f"/dev/shm/{self.name}-*"):  # left behind when it was killed
            try:
                os.unlink(p)
            except OSError:
                pass
        for fn in ("cache.log", "access.log", "squid.conf"):
            try:
                shutil.copy(os.path.join(self.dir, fn),
                            os.path.join(self.keep_dir, f"{self.name}.{fn}"))
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
