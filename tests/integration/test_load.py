"""Concurrency: many tunnels at once, and a slow DNS answer must not stall other tunnels."""

import asyncio
import hashlib
import os
import threading
import time

from netutil import SUCCESS_REPLY

N_TUNNELS = 200
PER_TUNNEL = 1024 * 1024
LOAD_DEADLINE = 120.0


async def _echo(reader, writer):
    try:
        while True:
            d = await reader.read(65536)
            if not d:
                break
            writer.write(d)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _one_tunnel(i, proxy_port, target, payload, results):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readexactly(len(SUCCESS_REPLY))
        if head != SUCCESS_REPLY:
            rest = await asyncio.wait_for(reader.read(500), 2)
            raise AssertionError(f"tunnel {i}: reply {head + rest!r}")

        async def send():
            for off in range(0, len(payload), 32768):
                writer.write(payload[off:off + 32768])
                await writer.drain()
            writer.write_eof()

        async def recv():
            h = hashlib.sha256()
            n = 0
            while True:
                d = await reader.read(65536)
                if not d:
                    break
                h.update(d)
                n += len(d)
            return n, h.hexdigest()

        _, (n, digest) = await asyncio.gather(send(), recv())
        results[i] = (n, digest)
    finally:
        writer.close()


async def _load(proxy_port):
    server = await asyncio.start_server(_echo, "127.0.0.1", 0, backlog=512)
    port = server.sockets[0].getsockname()[1]
    target = f"127.0.0.1:{port}"
    payloads = [os.urandom(PER_TUNNEL) for _ in range(N_TUNNELS)]
    results = {}
    tasks = [asyncio.ensure_future(_one_tunnel(i, proxy_port, target, payloads[i], results))
             for i in range(N_TUNNELS)]
    try:
        done, pending = await asyncio.wait(tasks, timeout=LOAD_DEADLINE)
        for t in pending:
            t.cancel()
        errors = [repr(t.exception()) for t in done if t.exception() is not None]
    finally:
        server.close()
    return payloads, results, errors, len(pending)


def test_200_concurrent_tunnels_1mb_each_way(proxy):
    t0 = time.monotonic()
    payloads, results, errors, npending = asyncio.run(_load(proxy.port))
    el = time.monotonic() - t0
    assert npending == 0, f"{npending} tunnels unfinished after {LOAD_DEADLINE}s"
    assert not errors, f"{len(errors)} tunnels failed, e.g. {errors[:3]}"
    assert len(results) == N_TUNNELS
    bad = [i for i in range(N_TUNNELS)
           if results[i] != (PER_TUNNEL, hashlib.sha256(payloads[i]).hexdigest())]
    assert not bad, f"{len(bad)} tunnels returned wrong bytes, e.g. #{bad[0]}: {results[bad[0]][0]} bytes"
    lines = proxy.log_lines(N_TUNNELS, timeout=10)
    assert len(lines) == N_TUNNELS
    for x in lines:
        assert x["status"] == "200" and x["reason"] == "done", x["_raw"]
        assert x["up"] == str(PER_TUNNEL) and x["down"] == str(PER_TUNNEL), x["_raw"]
    print(f"{N_TUNNELS} tunnels x {PER_TUNNEL} B each way in {el:.1f}s")


def test_slow_dns_does_not_block_other_tunnels(start_proxy, dns, tcp_server):
    """slow.test is answered after 3 s. Meanwhile an established tunnel does an echo round trip
    every 50 ms: none may take 500 ms or more; then the slow CONNECT succeeds."""
    from servers import echo_handler

    srv = tcp_server(echo_handler)
    dns.set("slow.test", ["127.0.0.1"])
    dns.delays["slow.test"] = 3.0
    p = start_proxy({"timeouts": {"dns": "6s"}})
    fast = p.tunnel(srv.target())
    slow = p.client(timeout=10)
    t0 = time.monotonic()
    slow.connect_request(f"slow.test:{srv.port}")

    rtts = []
    while time.monotonic() - t0 < 3.0:
        a = time.monotonic()
        fast.send(b"p")
        assert fast.recv_exact(1, timeout=5) == b"p"
        rtts.append(time.monotonic() - a)
        time.sleep(0.05)
    assert dns.queried("slow.test"), "slow name was never asked"
    slow.expect_established(timeout=5)
    el = time.monotonic() - t0
    slow.send(b"late")
    assert slow.recv_exact(4) == b"late"
    assert len(rtts) >= 20
    assert max(rtts) < 0.5, f"echo round trip took {max(rtts) * 1000:.0f} ms during the DNS wait"
    assert 2.7 <= el <= 6.0, f"slow CONNECT answered after {el:.2f}s (DNS delay 3 s)"


def test_many_refusals_interleaved_with_tunnels(start_proxy, dns, tcp_server):
    """NXDOMAIN, refused and successful CONNECTs from 10 threads at once, 10 each."""
    from netutil import Client, check_refusal, closed_port
    from servers import echo_handler

    srv = tcp_server(echo_handler)
    p = start_proxy()
    dead = closed_port()
    errors = []

    def worker(k):
        try:
            for j in range(10):
                c = Client("127.0.0.1", p.port)
                try:
                    kind = (k + j) % 3
                    if kind == 0:
                        c.connect_request(srv.target())
                        c.expect_established()
                        c.send(b"%d" % j)
                        assert c.recv_exact(len(b"%d" % j)) == b"%d" % j
                    elif kind == 1:
                        c.connect_request(f"nx{k}-{j}.test:443")
                        check_refusal(c, 502, "dns_error")
                    else:
                        c.connect_request(f"127.0.0.1:{dead}")
                        check_refusal(c, 502, "connection_refused")
                finally:
                    c.close()
        except Exception as e:  # reported below
            errors.append(f"worker {k}: {e!r}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "workers did not finish in 60 s"
    assert not errors, errors[:3]
    p.log_lines(100, timeout=10)
