"""[server] user: started as root, connectd binds, then becomes that user for good; without a
user it refuses to run as root."""

import os
import pwd
import time

import pytest

from servers import echo_handler

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def ids(pid):
    """(uids, gids, groups) from /proc/PID/status."""
    uids = gids = groups = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uids = [int(x) for x in line.split()[1:]]
            elif line.startswith("Gid:"):
                gids = [int(x) for x in line.split()[1:]]
            elif line.startswith("Groups:"):
                groups = [int(x) for x in line.split()[1:]]
    return uids, gids, groups


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


@pytest.mark.parametrize("workers", ["1", "2"])
def test_drops_to_user(start_proxy, tcp_server, workers):
    nobody = pwd.getpwnam("nobody")
    srv = tcp_server(echo_handler)
    p = start_proxy({"server": {"user": "nobody", "workers": workers}})
    t = p.tunnel(srv.target())
    t.send(b"x")
    assert t.recv_exact(1) == b"x"
    procs = [p.pid]
    if workers == "2":
        deadline = time.monotonic() + 5
        while len(children(p.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        procs += children(p.pid)
        assert len(procs) == 3, procs
    for pid in procs:
        uids, gids, groups = ids(pid)
        assert uids == [nobody.pw_uid] * 4, (pid, uids)
        assert gids == [nobody.pw_gid] * 4, (pid, gids)
        assert 0 not in groups, (pid, groups)
    p.wait_log("running as user nobody")


def test_refuses_root_without_user(start_proxy):
    p = start_proxy({"server": {"user": ""}}, wait=False)
    rc = p.proc.wait(10)
    p.stopped = True
    assert rc == 1
    assert "refusing to run as root: set [server] user" in p.stderr_text()


def test_user_root_is_explicit(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"server": {"user": "root"}})
    p.tunnel(srv.target())
    p.wait_log("running as root ([server] user = root)")
    assert ids(p.pid)[0] == [0, 0, 0, 0]


def test_unknown_user_fails_check(cli, tmp_path):
    ini = tmp_path / "p.ini"
    ini.write_text("[server]\nuser = no-such-user-here\n")
    r = cli("-t", "-c", str(ini))
    assert r.returncode == 1
    assert "[server] user no-such-user-here: no such user" in r.err, r.err
