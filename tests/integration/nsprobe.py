"""Run inside a test's network namespace (see test_shipped_defaults.py): trap listeners on the
addresses a CONNECT must never reach, a DNS responder, and the client side of the requests.

stdin:  line 1: JSON {"records": {name: [addr]}, "traps": [[host, port]], "requests": [target]}
        line 2: the proxy's port, once it runs
stdout: line 1: JSON {"dns": port}
        line 2: JSON {"responses": {target: head text}, "accepts": {"host:port": n}}
"""

import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dnsserver import DNSServer  # noqa: E402


def trap(host, port, counts, key):
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
            counts[key] += 1
            c.close()

    threading.Thread(target=loop, daemon=True).start()
    return s


def ask(port, target, deadline):
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                return "no proxy"
            time.sleep(0.05)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    data = b""
    s.settimeout(5)
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    s.close()
    return data.split(b"\r\n\r\n")[0].decode("latin-1")


def main():
    spec = json.loads(sys.stdin.readline())
    counts = {}
    socks = []
    for host, port in spec["traps"]:
        key = f"{host}:{port}"
        counts[key] = 0
        socks.append(trap(host, port, counts, key))
    dns = DNSServer(spec["records"], ttl=0)
    print(json.dumps({"dns": dns.port}), flush=True)
    port = int(sys.stdin.readline())
    deadline = time.monotonic() + 10
    responses = {t: ask(port, t, deadline) for t in spec["requests"]}
    time.sleep(0.3)  # a wrongful connect() would have arrived by now
    print(json.dumps({"responses": responses, "accepts": counts, "queries": dns.queries}),
          flush=True)


main()
