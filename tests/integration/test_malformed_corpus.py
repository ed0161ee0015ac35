"""Hostile input: the malformed-request corpus in tests/data/requests (see its README).

One parametrized test, one case per file listed in tests/data/requests/EXPECTED. Every case is
sent raw, in one write, to one proxy shared by the whole module (started once; the per-case cost
is a connection). The target of most cases is a local echo server, written in the files as
`127.0.0.1:{PORT}` ({PORT} / {PORT5} are replaced with its port at run time); every name ending
in `.test` that appears in a file resolves to 127.0.0.1 through the test's own DNS responder.

For a refusal (4xx) the test checks the exact status line, the Proxy-Status error token,
Connection: close, a one-line body, that the proxy closes (netutil.check_refusal), Allow: CONNECT
on a 405, and then that the access log line for this client names no upstream, that the echo
server saw no connection and that the resolver saw no query.

For a 200 the test checks the exact success reply, that the bytes the client sent after the
header block (early data: a TLS ClientHello, a pipelined second request, ...) arrive at the
upstream verbatim and come back through the tunnel, that the tunnel then carries more bytes both
ways, and that the upstream received exactly early data + probe, over exactly one connection.

After every case the proxy must still be running; at the end of the module it must stop cleanly
on SIGTERM with no sanitizer report. Every wait is bounded. Loopback only.

The corpus runs twice: on a plain listener and inside TLS on an HTTPS-proxy listener (one proxy
per transport; conftest.TRANSPORTS).
"""

import os
import re
import signal
import socket
import time
from collections import namedtuple

import pytest

from conftest import BASE_CONFIG, REPO, TRANSPORTS, Proxy, merge, render_ini, tls_listener
from dnsserver import DNSServer
from netutil import LOOPBACK4, check_refusal, free_port
from servers import TCPServer

DATA = os.path.join(REPO, "tests", "data", "requests")
NOT_CASES = {"EXPECTED", "README", ".gitattributes"}
MIN_CASES = 60
WAIT = 5.0  # bound on every single wait
# Access-log reason for each refusal status the corpus expects.
LOG_REASON = {400: "bad_request", 405: "method_not_allowed", 408: "handshake_timeout",
              414: "too_large", 431: "too_large", 505: "bad_version"}
NAME_TOKEN = re.compile(rb"[A-Za-z0-9_.-]+")  # linear: no nested quantifiers

Case = namedtuple("Case", "name status error")


def load_manifest():
    """The cases of EXPECTED, checked against the directory: every file is listed exactly once,
    every listed file exists, statuses and error tokens are well formed."""
    cases = []
    with open(os.path.join(DATA, "EXPECTED"), encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            where = f"EXPECTED:{lineno}: {line!r}"
            if len(parts) not in (2, 3) or not parts[1].isdigit():
                raise ValueError(f"{where}: want 'filename status [proxy-status-error]'")
            status = int(parts[1])
            if (status == 200) != (len(parts) == 2):
                raise ValueError(f"{where}: 200 takes no error token, a refusal needs one")
            if status != 200 and status not in LOG_REASON:
                raise ValueError(f"{where}: no access-log reason known for status {status}")
            cases.append(Case(parts[0], status, parts[2] if len(parts) == 3 else None))
    listed = [c.name for c in cases]
    dups = sorted({n for n in listed if listed.count(n) > 1})
    files = set(os.listdir(DATA)) - NOT_CASES
    missing = sorted(set(listed) - files)
    unlisted = sorted(files - set(listed))
    if dups or missing or unlisted:
        raise ValueError(f"{DATA}/EXPECTED out of step with the files: listed twice {dups}, "
                         f"listed but missing {missing}, not listed {unlisted}")
    if len(cases) < MIN_CASES:
        raise ValueError(f"only {len(cases)} cases in {DATA}/EXPECTED, want >= {MIN_CASES}")
    return cases


CASES = load_manifest()


def raw_case(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read()


def substitute(data, port):
    return data.replace(b"{PORT5}", b"%05d" % port).replace(b"{PORT}", b"%d" % port)


def header_end(data):
    """Offset just past the empty line that ends the header block, read as the parser's
    contract reads it: a line ends at LF (a CR before it is dropped), empty lines before the
    request line are skipped. Bytes from here on are early tunnel data."""
    pos, in_headers = 0, False
    while True:
        lf = data.index(b"\n", pos)
        line = data[pos:lf].removesuffix(b"\r")
        pos = lf + 1
        if in_headers and not line:
            return pos
        if line:
            in_headers = True


def dot_test_names(data):
    """Names ending in .test (any case, one trailing dot allowed) in data, lowercased."""
    out = set()
    for tok in NAME_TOKEN.findall(data):
        name = tok.decode("ascii").lower().removesuffix(".")
        if name.endswith(".test") and not name.startswith("."):
            out.add(name)
    return out


def recording_echo(conn, rec):
    """Echo everything and keep all of it in rec["data"]; on EOF shut down the write side."""
    data = bytearray()
    while True:
        d = conn.recv(65536)
        if not d:
            break
        data += d
        conn.sendall(d)
    rec["data"] = bytes(data)
    conn.shutdown(socket.SHUT_WR)


class Corpus:
    def __init__(self, proxy, dns, upstream):
        self.proxy = proxy
        self.dns = dns
        self.upstream = upstream

    def upstream_record(self, probe, timeout=WAIT):
        """The finished upstream connection whose bytes end with probe (bounded wait)."""
        deadline = time.monotonic() + timeout
        while True:
            recs = [r for r in list(self.upstream.results) if r.get("data", b"").endswith(probe)]
            if recs:
                assert len(recs) == 1, f"{len(recs)} upstream connections ended with {probe!r}"
                return recs[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no finished upstream connection ending with {probe!r} "
                                     f"within {timeout}s (errors {self.upstream.errors})")
            time.sleep(0.01)


@pytest.fixture(scope="module", params=TRANSPORTS)
def corpus(request, connectd_bin, tmp_path_factory):
    """One proxy (conftest's BASE_CONFIG, handshake 1s for the 408 case) for the whole module
    and transport, with its own DNS responder and a recording echo server. Teardown: SIGTERM,
    bounded wait; fails when the proxy died, did not stop, exited with an error or printed a
    sanitizer report."""
    dns = DNSServer()
    upstream = TCPServer(recording_echo)
    for case in CASES:
        for name in dot_test_names(raw_case(case.name)):
            dns.set(name, ["127.0.0.1"])
    workdir = str(tmp_path_factory.mktemp("corpus"))
    port = free_port(LOOPBACK4)
    listen, tls_port, tls_cfg = f"{LOOPBACK4}:{port}", None, {}
    if request.param == "tls":
        entry, tls_port, tls_cfg = tls_listener(LOOPBACK4, request.getfixturevalue("certs"))
        listen += ", " + entry
    cfg = merge(BASE_CONFIG, {
        "server": {"listen": listen},
        "dns": {"servers": dns.server_spec},
        "timeouts": {"handshake": "1s"},
        "log": {"access_log": os.path.join(workdir, "corpus.access.log")},
        **tls_cfg,
    })
    proxy = Proxy(connectd_bin, workdir, "corpus", render_ini(cfg), LOOPBACK4, port, [])
    if tls_port is not None:
        proxy.use_tls(tls_port, request.getfixturevalue("client_tls"))
    problems = []
    try:
        proxy.wait_ready()
        proxy.settle()
        yield Corpus(proxy, dns, upstream)
    finally:
        for c in proxy.clients:
            c.close()
        time.sleep(0.1)  # let the daemon see the closes before SIGTERM
        rc_before = proxy.proc.poll()
        if rc_before is not None:
            problems.append(f"connectd exited during the corpus with status {rc_before}")
        else:
            rc, killed = proxy.terminate()
            if killed:
                problems.append("connectd did not exit after SIGTERM; killed")
            elif rc not in (0, -signal.SIGTERM):
                problems.append(f"connectd exited with status {rc} after SIGTERM")
        proxy._stderr.close()
        hits, text = proxy.sanitizer_report()
        if hits:
            problems.append(f"sanitizer report in connectd stderr ({', '.join(hits)})")
        upstream.stop()
        dns.stop()
    if problems:
        pytest.fail("\n".join(problems) + "\n--- connectd stderr ---\n" + text[-6000:],
                    pytrace=False)


@pytest.fixture(autouse=True)
def _alive(request, corpus):
    """Attach the proxy's stderr to failure reports; after each case it must still run."""
    request.node._connectd_proxies = [corpus.proxy]
    yield
    rc = corpus.proxy.proc.poll()
    assert rc is None, f"connectd exited (status {rc}) on this input"


def expect_tunnel(corpus, client, raw, name):
    """Check a 200 and the tunnel behind it; returns the bytes the client sent upstream."""
    client.expect_established(WAIT)
    early = raw[header_end(raw):]
    if early:
        got = client.recv_exact(len(early), WAIT)
        assert got == early, f"early data came back altered: {got[:200]!r} != {early[:200]!r}"
    probe = b"\x00probe " + name.encode() + b"\xff\r\n"
    client.send(probe)
    assert client.recv_exact(len(probe), WAIT) == probe
    client.shutdown_write()
    rest, how = client.read_until_close(WAIT)
    assert (rest, how) == (b"", "eof"), f"after the tunnel's end: {rest[:200]!r}, {how}"
    rec = corpus.upstream_record(probe)
    assert rec["data"] == early + probe, (
        f"upstream received {rec['data'][:300]!r}, want early data {early[:300]!r} + probe")
    return len(early) + len(probe)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_request(corpus, case):
    p, up, dns = corpus.proxy, corpus.upstream, corpus.dns
    raw = substitute(raw_case(case.name), up.port)
    accepts0, queries0 = up.accepts, len(dns.queries)
    c = p.client(timeout=WAIT)
    me = f"{LOOPBACK4}:{c.local_addr[1]}"
    c.send(raw)

    if case.status == 200:
        nbytes = expect_tunnel(corpus, c, raw, case.name)
        c.close()
        line = p.log_lines(1, WAIT, where=lambda x: x.get("client") == me)[0]
        assert line["status"] == "200", line["_raw"]
        assert line["upstream"] == f"{LOOPBACK4}:{up.port}", line["_raw"]
        assert line["up"] == str(nbytes), f"up= should count early data + probe: {line['_raw']}"
        assert up.accepts == accepts0 + 1, f"{up.accepts - accepts0} upstream connections"
        return

    resp, _, _ = check_refusal(c, case.status, case.error, timeout=WAIT)
    allow = resp.header("Allow")
    if case.status == 405:
        assert allow is not None and allow == "CONNECT", f"Allow {allow!r}: {resp.raw_head!r}"
    else:
        assert allow is None, f"Allow on a {case.status}: {resp.raw_head!r}"
    # The log line is written when the connection is done: nothing can be dialed after it.
    line = p.log_lines(1, WAIT, where=lambda x: x.get("client") == me)[0]
    assert line["status"] == str(case.status), line["_raw"]
    assert line["reason"] == LOG_REASON[case.status], line["_raw"]
    assert line["upstream"] == "-", f"an upstream was dialed: {line['_raw']}"
    assert up.accepts == accepts0, "the echo server saw a connection for a refused request"
    assert dns.queries[queries0:] == [], f"refused request reached the resolver: {dns.queries}"
