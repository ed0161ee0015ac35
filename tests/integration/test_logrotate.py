"""SIGUSR1 reopens the access log (logrotate's postrotate), in one process and with workers."""

import os
import signal
import time

import pytest

from servers import echo_handler


def wait_for(path, text, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(path) and text in open(path).read():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigusr1_reopens_access_log(start_proxy, tcp_server, workers):
    srv = tcp_server(echo_handler)
    p = start_proxy({"server": {"workers": workers}})
    p.settle()
    t = p.tunnel(srv.target())
    t.send(b"one")
    assert t.recv_exact(3) == b"one"
    t.close()
    assert wait_for(p.access_log, "status=200")
    rotated = p.access_log + ".1"
    os.rename(p.access_log, rotated)
    p.signal(signal.SIGUSR1)
    # Every process reopens on its own: wait (bounded) until each one has said so.
    deadline = time.monotonic() + 5
    while (time.monotonic() < deadline
           and p.stderr_text().count("access log reopened") < int(workers)):
        time.sleep(0.05)
    assert p.stderr_text().count("access log reopened") == int(workers)
    for i in range(4):  # with 2 workers, make sure each likely served one
        t = p.tunnel(srv.target())
        t.send(b"two")
        assert t.recv_exact(3) == b"two"
        t.close()
    assert wait_for(p.access_log, "status=200"), "no line in the reopened access log"
    old = open(rotated).read()
    assert old.count("status=200") == 1, "lines after the reopen went to the rotated file"
    assert p.proc.poll() is None, "SIGUSR1 killed the daemon"
    if workers == "2":
        assert "killed by" not in p.stderr_text()
