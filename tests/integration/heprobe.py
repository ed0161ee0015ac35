"""Run inside test_happy_eyeballs.py's network namespace: a DNS responder, listeners on the
reachable addresses, and the client side of the requests (timed).

stdin:  line 1: JSON {"records": {name: [addr]}, "listen": [[host, port]], "requests": [target]}
        line 2: the proxy's port, once it runs
stdout: line 1: JSON {"dns": port}
        line 2: JSON {"results": {target: {"head": text, "seconds": t}}, "accepts": {"host": n}}
"""

import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dnsserver import DNSServer  # noqa: E402


def listener(host, port, counts):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(64)

    def loop():
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            counts[host] += 1
            c.close()

    threading.Thread(target=loop, daemon=True).start()
    return s


def request(port, target):
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    took = time.monotonic() - t0
    s.close()
    return {"head": head.decode("latin-1"), "seconds": took}


def main():
    spec = json.loads(sys.stdin.readline())
    dns = DNSServer(records=spec["records"], ttl=60)
    counts = {h: 0 for h, _ in spec["listen"]}
    socks = [listener(h, p, counts) for h, p in spec["listen"]]
    print(json.dumps({"dns": dns.port}), flush=True)
    port = int(sys.stdin.readline())
    for _ in range(100):  # bounded wait for the proxy
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    results = {t: request(port, t) for t in spec["requests"]}
    time.sleep(0.2)
    print(json.dumps({"results": results, "accepts": counts}), flush=True)
    for s in socks:
        s.close()
    dns.stop()


if __name__ == "__main__":
    main()
