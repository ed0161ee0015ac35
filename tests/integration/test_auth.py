"""Proxy authentication ([auth] users_file): Basic credentials checked against crypt(3) hashes
on a worker thread, a cache so that one browser's many tunnels cost one hash, 407 with the
challenge, slowed-down repeated failures, the user in the access log."""

import socket
import subprocess
import threading
import time

import pytest

from authfix import basic, make_hash, write_users
from conftest import both_transports
from netutil import check_refusal
from servers import echo_handler
from tlsfix import curl

CHALLENGE = 'Basic realm="connectd", charset="UTF-8"'


@pytest.fixture(scope="module")
def hashes():
    return {
        "alice": make_hash("wonderland", "$y$"),
        "bob": make_hash("builder", "$6$"),
        "carol": make_hash("s3cret:with:colons", "$2b$", 5),
    }


@pytest.fixture
def auth_proxy(start_proxy, tmp_path, hashes):
    def make(users=None, **sections):
        path = write_users(tmp_path / "users", users or hashes)
        over = {"auth": {"users_file": path}}
        over.update(sections)
        return start_proxy(over)

    return make


def hashed_count(p):
    return p.stderr_text().count("auth: hashed credentials")


@both_transports
@pytest.mark.parametrize("user,pw", [("alice", "wonderland"), ("bob", "builder"),
                                     ("carol", "s3cret:with:colons")])
def test_right_credentials_tunnel(auth_proxy, tcp_server, user, pw):
    srv = tcp_server(echo_handler)
    p = auth_proxy()
    c = p.client()
    c.connect_request(srv.target(), extra_headers=basic(user, pw))
    c.expect_established()
    c.send(b"ping")
    assert c.recv_exact(4) == b"ping"
    c.close()
    line = p.log_lines(1, where=lambda x: x["status"] == "200")[-1]
    assert line["user"] == user


@both_transports
@pytest.mark.parametrize("headers,why", [
    (b"", "missing"),
    (basic("alice", "wrong"), "wrong password"),
    (basic("mallory", "wonderland"), "unknown user"),
    (b"Proxy-Authorization: Bearer abc\r\n", "not Basic"),
    (b"Proxy-Authorization: Basic !!!notbase64\r\n", "bad base64"),
    (b"Proxy-Authorization: Basic YWxpY2U=\r\n", "no colon"),
    (b"Proxy-Authorization:\r\n", "empty"),
])
def test_missing_or_wrong_credentials_get_407(auth_proxy, tcp_server, headers, why):
    srv = tcp_server(echo_handler)
    p = auth_proxy()
    c = p.client()
    c.connect_request(srv.target(), extra_headers=headers)
    resp, _, _ = check_refusal(c, 407, "http_request_denied")
    assert resp.header("Proxy-Authenticate") == CHALLENGE, why
    time.sleep(0.1)
    assert srv.accepts == 0, f"{why}: upstream dialed"
    line = p.log_lines(1, where=lambda x: x["status"] == "407")[-1]
    assert line["user"] == "-"
    assert line["reason"] in ("auth_required", "auth_failed")


@both_transports
def test_failed_attempt_logged_with_client_address(auth_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = auth_proxy()
    c = p.client(source="127.0.0.21")
    c.connect_request(srv.target(), extra_headers=basic("alice", "nope"))
    check_refusal(c, 407, "http_request_denied")
    deadline = time.monotonic() + 3
    while "wrong credentials for user 'alice' from 127.0.0.21" not in p.stderr_text():
        assert time.monotonic() < deadline, p.stderr_text()[-2000:]
        time.sleep(0.05)


def test_realm_in_challenge(start_proxy, tmp_path, hashes, tcp_server):
    srv = tcp_server(echo_handler)
    path = write_users(tmp_path / "users", hashes)
    p = start_proxy({"auth": {"users_file": path, "realm": "Corp Proxy"}})
    c = p.client()
    c.connect_request(srv.target())
    resp, _, _ = check_refusal(c, 407, "http_request_denied")
    assert resp.header("Proxy-Authenticate") == 'Basic realm="Corp Proxy", charset="UTF-8"'


def test_500_tunnels_cost_one_hash(auth_proxy, tcp_server):
    """A browser opens many tunnels with the same credentials at once: the first verification
    is shared by those in flight, later ones hit the cache."""
    srv = tcp_server(echo_handler)
    p = auth_proxy()
    hdr = basic("alice", "wonderland")
    before = hashed_count(p)
    total, wave = 500, 125
    ok = 0
    for _ in range(total // wave):
        socks = []
        for _ in range(wave):
            s = socket.create_connection((p.host, p.port), timeout=10)
            s.sendall(b"CONNECT " + srv.target().encode() + b" HTTP/1.1\r\nHost: x\r\n" + hdr +
                      b"\r\n")
            socks.append(s)
        for s in socks:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    break
                head += chunk
            ok += head.startswith(b"HTTP/1.1 200 ")
            s.close()
    assert ok == total
    time.sleep(0.2)
    assert hashed_count(p) - before == 1, p.stderr_text()[-3000:]
    lines = p.log_lines(total, where=lambda x: x["status"] == "200", timeout=10)
    assert all(x["user"] == "alice" for x in lines)


@pytest.mark.timing
def test_slow_hash_does_not_stall_other_tunnels(auth_proxy, tcp_server, hashes):
    """While a costly yescrypt verification runs (~0.7 s here), an open tunnel keeps relaying
    with round trips far below the hash time."""
    slow = make_hash("tortoise", "$y$", 8)
    t0 = time.monotonic()
    make_hash("x", "$y$", 8)
    hash_time = time.monotonic() - t0
    srv = tcp_server(echo_handler)
    users = dict(hashes)
    users["slow"] = slow
    p = auth_proxy(users)
    fast = p.client()
    fast.connect_request(srv.target(), extra_headers=basic("alice", "wonderland"))
    fast.expect_established()
    result = {}

    def slow_login():
        c = p.client(timeout=15)
        t = time.monotonic()
        c.connect_request(srv.target(), extra_headers=basic("slow", "tortoise"))
        c.expect_established(timeout=15)
        result["elapsed"] = time.monotonic() - t

    th = threading.Thread(target=slow_login)
    th.start()
    time.sleep(0.05)
    worst = 0.0
    rounds = 0
    while th.is_alive() and rounds < 2000:
        t = time.monotonic()
        fast.send(b"x")
        assert fast.recv_exact(1) == b"x"
        worst = max(worst, time.monotonic() - t)
        rounds += 1
    th.join(20)
    assert "elapsed" in result, "slow login did not complete"
    assert rounds >= 10, f"only {rounds} round trips while hashing ({result})"
    assert worst < max(0.2, hash_time / 3), (worst, hash_time, rounds)


@pytest.mark.timing
def test_repeated_failures_are_slowed_down(auth_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = auth_proxy()
    times = []
    for _ in range(6):
        c = p.client(source="127.0.0.22", timeout=15)
        t = time.monotonic()
        c.connect_request(srv.target(), extra_headers=basic("bob", "guess"))
        check_refusal(c, 407, "http_request_denied", timeout=15)
        times.append(time.monotonic() - t)
    # AUTH_FAIL_FREE (3) failures cost nothing; after the 4th the next attempt waits 1 s, then
    # 2 s.
    assert max(times[:4]) < 0.8, times
    assert times[4] >= 0.9, times
    assert times[5] >= 1.9, times
    # Another client is not held back.
    c = p.client(source="127.0.0.23")
    t = time.monotonic()
    c.connect_request(srv.target(), extra_headers=basic("bob", "builder"))
    c.expect_established()
    assert time.monotonic() - t < 0.8


def test_curl_with_proxy_user(auth_proxy, tls_server, certs):
    s = tls_server()
    p = auth_proxy()
    base = ["-sS", "--max-time", "10", "--cacert", certs.ca, "-x", f"http://127.0.0.1:{p.port}"]
    url = f"https://localhost:{s.port}/hello.txt"
    r = curl(base + ["--proxy-user", "alice:wonderland", url])
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello through the tunnel\n"
    r = curl(base + ["--proxy-user", "alice:nope", url])
    assert r.returncode != 0
    assert b"407" in r.stderr, r.stderr
    r = curl(base + [url])
    assert r.returncode != 0
    assert b"407" in r.stderr, r.stderr


@pytest.mark.parametrize("line,msg", [
    ("alice:wonderland", "plaintext"),
    ("alice:$1$abc$0123456789abcdef012345", "md5"),
    ("alice:abJnggxhB/yWI", "DES"),
    ("alice:*", "locked"),
    ("alice", "no colon"),
])
def test_bad_users_file_is_a_config_error(cli, tmp_path, line, msg):
    users = tmp_path / "users"
    users.write_text("# users\n" + line + "\n")
    ini = tmp_path / "proxy.ini"
    ini.write_text(f"[auth]\nusers_file = {users}\n")
    r = cli("-t", "-c", str(ini))
    assert r.returncode != 0, msg
    assert f"{users}:2:" in r.err, (msg, r.err)


def test_users_file_relative_to_ini(cli, tmp_path, hashes):
    write_users(tmp_path / "users.txt", hashes)
    ini = tmp_path / "proxy.ini"
    ini.write_text("[auth]\nusers_file = users.txt\n")
    r = cli("-t", "-c", str(ini))
    assert r.returncode == 0, r.err


def test_hash_password_tool(connectd_bin, tmp_path, tcp_server, start_proxy):
    r = subprocess.run([connectd_bin, "-H"], input=b"hunter2\n", capture_output=True, timeout=10)
    assert r.returncode == 0, r.stderr
    h = r.stdout.decode().strip()
    assert h.startswith("$y$"), h
    srv = tcp_server(echo_handler)
    path = write_users(tmp_path / "users", {"dave": h})
    p = start_proxy({"auth": {"users_file": path}})
    c = p.client()
    c.connect_request(srv.target(), extra_headers=basic("dave", "hunter2"))
    c.expect_established()


@both_transports
def test_auth_with_two_workers(auth_proxy, tcp_server):
    """Each worker process has its own verification thread and cache."""
    srv = tcp_server(echo_handler)
    p = auth_proxy(server={"workers": "2"})
    for i in range(20):
        c = p.client()
        c.connect_request(srv.target(), extra_headers=basic("alice", "wonderland"))
        c.expect_established()
        c.send(b"%d" % i)
        assert c.recv_exact(len(b"%d" % i)) == b"%d" % i
        c.close()
    c = p.client()
    c.connect_request(srv.target(), extra_headers=basic("alice", "nope"))
    check_refusal(c, 407, "http_request_denied")
    # One or two hashes for the right password (one per worker that served it), one wrong.
    assert 2 <= hashed_count(p) <= 3, p.stderr_text()[-2000:]
