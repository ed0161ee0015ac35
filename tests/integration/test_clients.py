"""Real clients through connectd: curl (-x, --proxy-user, https_proxy), ncat, socat, OpenBSD
nc, Python http.client and urllib, Node.js, git over smart HTTPS, and ssh through
`nc -X connect` as its ProxyCommand.

Each test checks the bytes that arrive (TLS verified against the throwaway CA wherever TLS is
involved) and the tunnel's line in the proxy's access log, so a client that bypassed the proxy
fails the test. Child processes get an environment without any *_proxy variable unless the
test sets one on purpose. Everything is on loopback; every wait is bounded; only processes
started here are stopped here."""

import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

import pytest

from authfix import make_hash, write_users
from clientproc import PROXY_VARS, clean_env, describe, need, run
from netutil import LOOPBACK4, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
HELLO = b"hello through the tunnel\n"
HELLO_REQUEST = b"GET /hello.txt HTTP/1.0\r\n\r\n"
def tunnel_line(p, target, user=None, n=1):
    """The access-log line(s) of successful tunnels to target (bounded wait); asserts there is
    at least n and returns the last one."""
    lines = p.log_lines(n, where=lambda x: x.get("target") == target and x.get("status") == "200")
    line = lines[-1]
    port = target.rsplit(":", 1)[1]
    assert line["upstream"] == f"127.0.0.1:{port}", line
    assert int(line["up"]) > 0 and int(line["down"]) > 0, line
    if user is not None:
        assert line["user"] == user, line
    return line


def http_body(raw):
    """Split an HTTP/1.0 response from s_server -WWW: (status line, body)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {raw[:300]!r}"
    return head.split(b"\r\n", 1)[0], body


@pytest.fixture
def no_proxy_env(monkeypatch):
    """For in-process clients: no proxy variables in this process while the test runs."""
    for k in list(os.environ):
        if k.lower() in PROXY_VARS:
            monkeypatch.delenv(k)


# ---- curl ----------------------------------------------------------------------------------


def test_curl_proxy_user(start_proxy, tls_server, certs, tmp_path):
    need("curl")
    users = write_users(tmp_path / "users", {"alice": make_hash("wonderland")})
    srv = tls_server()
    p = start_proxy({"auth": {"users_file": users}})
    url = f"https://localhost:{srv.port}/hello.txt"
    proxy = f"http://127.0.0.1:{p.port}"
    # Without credentials: the proxy's 407, nothing fetched.
    r = run(["curl", "-sS", "--max-time", "20", "--cacert", certs.ca, "-x", proxy, url])
    assert r.returncode != 0 and r.stdout == b"", describe(r)
    assert b"407" in r.stderr, describe(r)
    r = run(["curl", "-sS", "--fail", "--max-time", "20", "--cacert", certs.ca, "-x", proxy,
             "--proxy-user", "alice:wonderland", url])
    assert r.returncode == 0, describe(r)
    assert r.stdout == HELLO
    tunnel_line(p, f"localhost:{srv.port}", user="alice")
    assert p.log_lines(1, where=lambda x: x["status"] == "407")


def test_curl_https_proxy_env(start_proxy, tls_server, certs):
    need("curl")
    srv = tls_server()
    p = start_proxy()
    env = clean_env(https_proxy=f"http://127.0.0.1:{p.port}")
    r = run(["curl", "-sS", "--fail", "--max-time", "20", "--cacert", certs.ca,
             f"https://localhost:{srv.port}/hello.txt"], env=env)
    assert r.returncode == 0, describe(r)
    assert r.stdout == HELLO
    tunnel_line(p, f"localhost:{srv.port}")


# ---- ncat, socat, nc -----------------------------------------------------------------------


def test_ncat_ssl_through_http_proxy(start_proxy, tls_server, certs):
    """ncat --proxy-type http opens the tunnel, --ssl --ssl-verify runs TLS over it against
    the test CA; the HTTP request goes in on stdin."""
    need("ncat")
    srv = tls_server()
    p = start_proxy()
    r = run(["ncat", "--ssl", "--ssl-verify", "--ssl-trustfile", certs.ca,
             "--proxy", f"127.0.0.1:{p.port}", "--proxy-type", "http",
             "localhost", str(srv.port)], input=HELLO_REQUEST)
    assert r.returncode == 0, describe(r)
    status, body = http_body(r.stdout)
    assert status == b"HTTP/1.0 200 ok" and body == HELLO, describe(r)
    tunnel_line(p, f"localhost:{srv.port}")


def tls_over_stdio_client(cmd, ca, timeout=20.0):
    """Run cmd (a client whose stdin/stdout carry the tunnel: socat -, nc) with both ends on a
    socketpair, speak TLS (verified: the test CA, name 'localhost') over the other end, send
    the HTTP request and read the response to the end. Returns (raw response, exit status,
    stderr)."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(cmd, stdin=theirs, stdout=theirs, stderr=subprocess.PIPE,
                            env=clean_env())
    theirs.close()
    try:
        ours.settimeout(timeout)
        ctx = ssl.create_default_context(cafile=ca)
        with ctx.wrap_socket(ours, server_hostname="localhost") as s:
            s.sendall(HELLO_REQUEST)
            data = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                d = s.recv(65536)
                if not d:
                    break
                data += d
        rc = proc.wait(timeout)
        return data, rc, proc.stderr.read().decode(errors="replace")
    finally:
        ours.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        proc.stderr.close()


def test_socat_proxy_address(start_proxy, tls_server, certs):
    """socat's PROXY: address opens the tunnel; its STDIO end is a socketpair, and the test
    runs TLS over it to the TLS server (socat 1.7 cannot stack OPENSSL on PROXY itself)."""
    need("socat")
    srv = tls_server()
    p = start_proxy()
    data, rc, err = tls_over_stdio_client(
        ["socat", "-", f"PROXY:127.0.0.1:localhost:{srv.port},proxyport={p.port}"], certs.ca)
    status, body = http_body(data)
    assert status == b"HTTP/1.0 200 ok" and body == HELLO, (data, err)
    assert rc == 0, err
    tunnel_line(p, f"localhost:{srv.port}")


def test_openbsd_nc_connect(start_proxy, tls_server, certs):
    """OpenBSD nc -X connect -x PROXY opens the tunnel; TLS runs over its stdin/stdout."""
    nc = need("nc")
    h = subprocess.run([nc, "-h"], capture_output=True, timeout=10)
    if b"-X proxy_protocol" not in h.stdout + h.stderr:
        pytest.skip(f"{nc} is not OpenBSD netcat (no -X); install netcat-openbsd")
    srv = tls_server()
    p = start_proxy()
    data, rc, err = tls_over_stdio_client(
        [nc, "-X", "connect", "-x", f"127.0.0.1:{p.port}", "localhost", str(srv.port)],
        certs.ca)
    status, body = http_body(data)
    assert status == b"HTTP/1.0 200 ok" and body == HELLO, (data, err)
    assert rc == 0, err
    tunnel_line(p, f"localhost:{srv.port}")


# ---- Python --------------------------------------------------------------------------------


def test_python_http_client_set_tunnel(start_proxy, tls_server, certs, no_proxy_env):
    srv = tls_server()
    p = start_proxy()
    ctx = ssl.create_default_context(cafile=certs.ca)
    conn = http.client.HTTPSConnection("127.0.0.1", p.port, timeout=20, context=ctx)
    conn.set_tunnel("localhost", srv.port)
    try:
        conn.connect()
        # TCP went to the proxy; TLS (verified for 'localhost') runs through the tunnel.
        assert conn.sock.getpeername() == ("127.0.0.1", p.port)
        assert conn.sock.version() is not None
        conn.request("GET", "/hello.txt")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == HELLO
    finally:
        conn.close()
    tunnel_line(p, f"localhost:{srv.port}")


def test_python_urllib_proxy_handler(start_proxy, tls_server, certs, no_proxy_env):
    srv = tls_server()
    p = start_proxy()
    ctx = ssl.create_default_context(cafile=certs.ca)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": f"http://127.0.0.1:{p.port}"}),
        urllib.request.HTTPSHandler(context=ctx))
    with opener.open(f"https://localhost:{srv.port}/hello.txt", timeout=20) as resp:
        assert resp.status == 200
        assert resp.read() == HELLO
    tunnel_line(p, f"localhost:{srv.port}")


# ---- Node.js -------------------------------------------------------------------------------


def test_node_connect_then_tls(start_proxy, tls_server, certs):
    need("node")
    srv = tls_server()
    p = start_proxy()
    r = run(["node", os.path.join(HERE, "node_connect.js"), "127.0.0.1", str(p.port),
             "localhost", str(srv.port), certs.ca, "/hello.txt", "20000"])
    assert r.returncode == 0, describe(r)
    assert b"proxy answered 200 Connection established" in r.stderr, describe(r)
    status, body = http_body(r.stdout)
    assert status == b"HTTP/1.0 200 ok" and body == HELLO, describe(r)
    tunnel_line(p, f"localhost:{srv.port}")


# ---- git over smart HTTPS ------------------------------------------------------------------


def git_env(home):
    # GIT_SSL_CAINFO / GIT_SSL_CAPATH / GIT_SSL_NO_VERIFY in the caller's environment would
    # override http.sslCAInfo: the test CA must be the only trust anchor.
    env = {k: v for k, v in clean_env().items() if not k.startswith("GIT_")}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid",
               GIT_AUTHOR_DATE="2024-01-01T00:00:00Z", GIT_COMMITTER_DATE="2024-01-01T00:00:00Z")
    return env


def git(args, env, cwd=None):
    r = run(["git"] + args, env=env, cwd=cwd)
    assert r.returncode == 0, f"git {' '.join(args)}: " + describe(r)
    return r.stdout.decode().strip()


@pytest.fixture
def git_server(certs, tmp_path):
    need("git")
    from gitserver import GitHTTPSServer, http_backend

    if http_backend() is None:
        pytest.skip("git http-backend is not installed")
    made = []

    def make(root):
        s = GitHTTPSServer(str(root), certs.cert, certs.key)
        made.append(s)
        return s

    yield make
    for s in made:
        s.stop()


def test_git_clone_over_https(start_proxy, git_server, certs, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = git_env(home)
    work = tmp_path / "work"
    git(["init", "-q", "-b", "main", str(work)], env)
    content = b"cloned through connectd\n" + os.urandom(16).hex().encode() + b"\n"
    (work / "README").write_bytes(content)
    git(["add", "README"], env, cwd=work)
    git(["commit", "-q", "-m", "first"], env, cwd=work)
    commit = git(["rev-parse", "HEAD"], env, cwd=work)
    served = tmp_path / "served"
    served.mkdir()
    git(["clone", "-q", "--bare", str(work), str(served / "repo.git")], env)

    srv = git_server(served)
    p = start_proxy()
    dest = tmp_path / "clone"
    r = run(["git", "-c", f"http.proxy=http://127.0.0.1:{p.port}", "-c",
             f"http.sslCAInfo={certs.ca}", "-c", "http.lowSpeedLimit=1", "-c",
             "http.lowSpeedTime=20", "clone", "-q", f"https://localhost:{srv.port}/repo.git",
             str(dest)], env=env)
    assert r.returncode == 0, describe(r) + f"\nserver: {srv.requests}\n{srv.cgi_stderr}"
    assert (dest / "README").read_bytes() == content
    assert git(["rev-parse", "HEAD"], env, cwd=dest) == commit
    assert any("git-upload-pack" in x for x in srv.requests), srv.requests
    tunnel_line(p, f"localhost:{srv.port}")


# ---- ssh through nc -X connect -------------------------------------------------------------


@pytest.fixture
def sshd(tmp_path):
    """A throwaway sshd on a free loopback port: its own host key, root's authorized key in
    tmp_path, no PAM, no passwords. Yields (port, client key path); stopped by its PID."""
    sshd_bin = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if sshd_bin is None:
        pytest.skip("sshd is not installed (openssh-server)")
    need("ssh")
    need("ssh-keygen")
    d = tmp_path / "sshd"
    d.mkdir()
    for name in ("host_key", "client_key"):
        r = run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(d / name)])
        assert r.returncode == 0, describe(r)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation directory
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        f"ListenAddress {LOOPBACK4}:{port}\n"
        f"HostKey {d / 'host_key'}\n"
        f"PidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "X11Forwarding no\n"
        "AllowTcpForwarding no\n"
        "PrintMotd no\n"
        "LogLevel VERBOSE\n")
    log_path = d / "sshd.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, env=clean_env())
    try:
        deadline = time.monotonic() + 10
        while b"Server listening on" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start (status {proc.poll()}): "
                            f"{log_path.read_bytes().decode(errors='replace')}")
            time.sleep(0.05)
        yield {"port": port, "key": str(d / "client_key"), "log": log_path}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()


def test_ssh_through_nc_proxycommand(start_proxy, sshd):
    need("nc")
    port = sshd["port"]
    p = start_proxy({"access": {"allow_ports": f"443, {port}"}})
    r = run(["ssh", "-F", "/dev/null",
             "-o", f"ProxyCommand=nc -X connect -x 127.0.0.1:{p.port} %h %p",
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=20",
             "-o", "LogLevel=ERROR", "-i", sshd["key"], "-p", str(port), "root@127.0.0.1",
             "echo hello-through-tunnel"])
    assert r.returncode == 0, describe(r) + "\n--- sshd ---\n" + sshd["log"].read_text()
    assert r.stdout == b"hello-through-tunnel\n", describe(r)
    tunnel_line(p, f"127.0.0.1:{port}")
    assert "Accepted publickey for root from 127.0.0.1" in sshd["log"].read_text()
