"""Run inside test_fleet.py's balancer namespace: the destination (an echo server that notes
which connectd instance each tunnel came through), a warm-up, then a steady load of new
tunnels through HAProxy, each timed.

stdin:  line 1: JSON {"proxy": [host, port], "echo": [host, port], "servers": [addr, ...],
                      "rate": per second, "duration": seconds, "timeout": seconds,
                      "long_every": n, "long_hold": seconds}  (every nth tunnel is held open
                      that long between two echoes)
        line 2: "warmup" (once the balancer listens)
        line 3: "go" (after the warm-up report)
stdout: line 1: JSON {"echo": true} (the destination listens)
        line 2: JSON {"warmup": {server: tunnels}, "failed": n}  (every server has served)
        line 3: JSON {"t0": monotonic time the load started}
        line 4: JSON {"results": [{"i", "t" (start), "end", "ok", "err", "established" (the
                      200 arrived), "long", "server"}]}

time.monotonic() is CLOCK_MONOTONIC, the same clock in every network namespace, so the test
compares these times with its own. Every socket operation has a timeout."""

import json
import socket
import sys
import threading
import time

served = {}  # payload line -> the connectd address the tunnel came from
lock = threading.Lock()


def echo_conn(conn, peer):
    try:
        conn.settimeout(10)
        buf = b""
        while b"\n" not in buf:
            d = conn.recv(4096)
            if not d:
                return
            buf += d
        with lock:
            served[buf.split(b"\n", 1)[0].decode("latin-1")] = peer[0]
        conn.sendall(buf)
        while True:
            d = conn.recv(4096)
            if not d:
                break
            conn.sendall(d)
    except OSError:
        pass
    finally:
        conn.close()


def echo_server(host, port):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((host, port))
    ls.listen(512)

    def loop():
        while True:
            try:
                c, peer = ls.accept()
            except OSError:
                return
            threading.Thread(target=echo_conn, args=(c, peer), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return ls


def exchange(s, msg, got=b""):
    """Send msg, expect it echoed (got: bytes already received); returns an error or None."""
    s.sendall(msg)
    while len(got) < len(msg):
        d = s.recv(4096)
        if not d:
            return f"closed in the tunnel after {got!r}"
        got += d
    return None if got == msg else f"echo {got!r}"


def tunnel(spec, tag, hold=0.0):
    """One new tunnel through the balancer, held open for hold seconds between two echoes;
    returns (ok, error text, established)."""
    proxy, echo, timeout = tuple(spec["proxy"]), spec["echo"], spec["timeout"]
    target = f"{echo[0]}:{echo[1]}"
    try:
        s = socket.create_connection(proxy, timeout=timeout)
    except OSError as e:
        return False, f"connect: {e!r}", False
    established = False
    try:
        s.settimeout(timeout)
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            d = s.recv(4096)
            if not d:
                return False, f"closed before the answer ({head!r})", False
            head += d
        if not head.startswith(b"HTTP/1.1 200 "):
            return False, f"answer {head[:80]!r}", False
        established = True
        err = exchange(s, f"{tag}\n".encode(), head.split(b"\r\n\r\n", 1)[1])
        if err is None and hold > 0:
            time.sleep(hold)
            err = exchange(s, f"{tag} again\n".encode())
        return err is None, err, True
    except OSError as e:
        return False, repr(e), established
    finally:
        s.close()


def main():
    spec = json.loads(sys.stdin.readline())
    ls = echo_server(*spec["echo"])
    print(json.dumps({"echo": True}), flush=True)
    if sys.stdin.readline().strip() != "warmup":
        return

    # warm-up: one tunnel at a time until every instance has served two (bounded)
    counts = {a: 0 for a in spec["servers"]}
    failed = 0
    deadline = time.monotonic() + 15
    n = 0
    while min(counts.values()) < 2 and time.monotonic() < deadline:
        tag = f"warm-{n}"
        ok, _, _ = tunnel(spec, tag)
        n += 1
        if not ok:
            failed += 1
            time.sleep(0.1)
            continue
        with lock:
            who = served.get(tag)
        if who in counts:
            counts[who] += 1
        time.sleep(0.02)
    print(json.dumps({"warmup": counts, "failed": failed}), flush=True)
    if sys.stdin.readline().strip() != "go":
        return

    total = int(spec["rate"] * spec["duration"])
    results = [None] * total
    threads = []

    def one(i):
        long = spec["long_every"] > 0 and i % spec["long_every"] == 0
        rec = {"i": i, "t": time.monotonic(), "long": long}
        rec["ok"], rec["err"], rec["established"] = tunnel(
            spec, f"req-{i}", spec["long_hold"] if long else 0.0)
        rec["end"] = time.monotonic()
        results[i] = rec

    t0 = time.monotonic()
    print(json.dumps({"t0": t0}), flush=True)
    for i in range(total):
        wait = t0 + i / spec["rate"] - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        th = threading.Thread(target=one, args=(i,), daemon=True)
        th.start()
        threads.append(th)
    end = time.monotonic() + spec["timeout"] * 2 + spec["long_hold"] + 5
    for th in threads:
        th.join(max(0.0, end - time.monotonic()))
    with lock:
        for rec in results:
            if rec is not None:
                rec["server"] = served.get(f"req-{rec['i']}")
    out = [r if r is not None else {"i": i, "t": t0 + i / spec["rate"], "ok": False,
                                    "err": "unfinished", "established": False,
                                    "long": False, "server": None}
           for i, r in enumerate(results)]
    print(json.dumps({"results": out}), flush=True)
    ls.close()


if __name__ == "__main__":
    main()
