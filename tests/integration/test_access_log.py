"""The access log: one line per tunnel when it ends, key=value fields."""

import os
import time

from conftest import both_transports
from netutil import ACCESS_TS, check_refusal
from servers import echo_handler, sink_handler


@both_transports
def test_access_log_tunnel_fields(proxy, tcp_server, transport):
    reply = os.urandom(7777)
    srv = tcp_server(sink_handler(reply=reply))
    c = proxy.tunnel(srv.target())
    client_port = c.local_addr[1]
    data = os.urandom(12345)
    c.send(data)
    c.shutdown_write()
    assert c.read_until_close(5) == (reply, "eof")
    t_close = time.monotonic()
    [line] = proxy.log_lines(1)
    assert ACCESS_TS.match(line["ts"]), line["_raw"]
    assert line["client"] == f"127.0.0.1:{client_port}"
    assert line["target"] == srv.target()
    assert line["upstream"] == srv.target()
    assert line["status"] == "200"
    assert line["up"] == str(len(data)), "up must count tunnel payload client->upstream only"
    assert line["down"] == str(len(reply)), "down must count tunnel payload upstream->client only"
    assert line["reason"] == "done"
    assert line.get("tls") == {"plain": None, "tls": "TLSv1.3"}[transport], line["_raw"]
    d = float(line["duration"])
    assert 0 <= d < 5
    assert time.monotonic() - t_close < 5


@both_transports
def test_access_log_counts_early_data(proxy, tcp_server):
    srv = tcp_server(echo_handler)
    early = b"E" * 1000
    c = proxy.client()
    c.connect_request(srv.target(), early=early)
    c.expect_established()
    assert c.recv_exact(1000) == early
    c.send(b"12345")
    assert c.recv_exact(5) == b"12345"
    c.close()
    [line] = proxy.log_lines(1)
    assert line["up"] == "1005" and line["down"] == "1005", line["_raw"]


def test_access_log_one_line_per_tunnel(proxy, tcp_server):
    srv = tcp_server(echo_handler)
    ports = []
    for i in range(5):
        c = proxy.tunnel(srv.target())
        ports.append(c.local_addr[1])
        c.send(b"x" * (i + 1))
        assert c.recv_exact(i + 1) == b"x" * (i + 1)
        c.close()
    lines = proxy.log_lines(5)
    time.sleep(0.2)
    lines = proxy.log_lines(5)
    assert len(lines) == 5, [x["_raw"] for x in lines]
    by_port = {int(x["client"].rsplit(":", 1)[1]): x for x in lines}
    for i, port in enumerate(ports):
        assert by_port[port]["up"] == str(i + 1)
        assert by_port[port]["down"] == str(i + 1)


def test_access_log_refusal(proxy):
    c = proxy.client()
    c.connect_request("nx.test:443")
    check_refusal(c, 502, "dns_error")
    [line] = proxy.log_lines(1)
    assert line["target"] == "nx.test:443"
    assert line["upstream"] == "-"
    assert line["up"] == "0" and line["down"] == "0"
    assert line["reason"] == "dns_error"


def test_access_log_status_zero_when_nothing_sent(proxy):
    """A client that connects and goes away before a full request: status=0, no upstream."""
    c = proxy.client()
    c.send(b"CONN")
    time.sleep(0.1)
    c.close()
    [line] = proxy.log_lines(1)
    assert line["status"] == "0", line["_raw"]
    assert line["upstream"] == "-"
    assert line["up"] == "0" and line["down"] == "0"


def test_access_log_escapes_target(proxy):
    """Bytes from the client never reach the log raw: the line stays one line of printable
    ASCII, key=value fields separated by single spaces."""
    c = proxy.client()
    c.send(b'CONNECT a\x01b"c\\d\x7f\xff:443 HTTP/1.1\r\nHost: x\r\n\r\n')
    check_refusal(c, 400, "http_request_error")
    proxy.log_lines(1)  # wait (bounded) until the line is there
    with open(proxy.access_log, "rb") as f:
        data = f.read()
    lines = [x for x in data.split(b"\n")[:-1] if b" status=400 " in x]
    assert len(lines) == 1, data
    raw = lines[0]
    assert all(0x20 <= b < 0x7f for b in raw), f"raw unprintable byte in {raw!r}"
    assert b'"' not in raw.split(b" target=", 1)[1].split(b" ")[0]
    [line] = proxy.log_lines(1)
    tgt = line["target"]
    if tgt != "-":
        assert "\\x01" in tgt and "\\x22" in tgt.lower() and "\\x5c" in tgt.lower(), tgt
        assert "\\x7f" in tgt.lower() and "\\xff" in tgt.lower(), tgt
    assert line["status"] == "400"


def test_access_log_off(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"log": {"access_log": "off"}})
    c = p.tunnel(srv.target())
    c.send(b"q")
    assert c.recv_exact(1) == b"q"
    c.close()
    time.sleep(0.3)
    assert not os.path.exists(p.access_log)
    assert "target=" not in p.stderr_text()


def test_access_log_stderr(start_proxy, tcp_server):
    srv = tcp_server(echo_handler)
    p = start_proxy({"log": {"access_log": "stderr"}})
    c = p.tunnel(srv.target())
    c.send(b"q")
    assert c.recv_exact(1) == b"q"
    c.close()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and f"target={srv.target()}" not in p.stderr_text():
        time.sleep(0.05)
    lines = [x for x in p.stderr_text().splitlines() if f"target={srv.target()}" in x]
    assert len(lines) == 1, p.stderr_text()
    assert "status=200" in lines[0] and "up=1" in lines[0] and "down=1" in lines[0]
