"""A real browser over HTTP/2 to connectd: headless Chromium uses connectd's TLS listener
(`[tls] alpn = h2, http/1.1`) as its HTTPS proxy and loads a page whose scripts and images
come from four HTTPS origins (three names, four loopback ports); connectd's own access log and
metrics show that every tunnel was a stream of ONE client connection: one h2=N and one client
address on every line of a stream, connectd_http2_streams_total equal to the number of those
lines (so no stream ran on any other connection), connectd_http2_connections_total fewer than
the origins (1 unless Chromium raced a spare connection, see below). The control runs the same
page with `alpn = http/1.1`: it loads too, no line has h2=, no HTTP/2 connection or stream is
counted, and every tunnel has a client connection of its own.

Chromium-specific parts come from test_tls_clients.py: run_chromium (a temporary HOME whose NSS
database trusts the session's test CA, no --ignore-certificate-errors), HTTPSFiles (a threaded
HTTPS file server), tls_lines (the checks on a TLS tunnel's access line). Chromium also writes a
net-log (--log-net-log): its summary is part of every failure message, and its count of TLS
connections to the proxy (with the ALPN protocol of each) is checked against connectd's
counter. The origins have .test names only the proxy resolves (the test DNS responder), so
nothing loads unless it went through connectd.

What Chromium 156 does on its own, seen in its net-log, and why the test allows it:
- Background requests (network time from clients2.google.com, a component update to
  update.googleapis.com, accounts.google.com/ListAccounts) in spite of
  --disable-background-networking and --disable-component-update. They belong to other network
  partitions (network isolation key / privacy mode) than the page, so Chromium gives them HTTP/2
  connections of their own to the same proxy. The PAC script (pac_arg) sends only the .test
  origins to the TLS listener and the rest to connectd's plain listener, where they stay on
  loopback (the names do not resolve) and out of the HTTP/2 counters.
- A spare connection: on navigation Chromium preconnects to the page's origin (2 sockets) while
  the first TLS connection to the proxy is still in its handshake; the second one also
  negotiates h2, is then found redundant (the first HTTP/2 session serves every stream) and is
  closed without a stream. connectd counts it (connectd_http2_connections_total 2 in every
  run seen here with the PAC script, --incognito or not), so the test demands fewer connections
  than origins, no stream on any connection but one, and as many h2 connections in Chromium's
  net-log as connectd counted.
Loopback only; every wait is bounded; only processes started here are stopped."""

import base64
import json
import os
import re
import time

import pytest

from adminutil import admin_section
from promutil import scrape
import tlsfix
from test_tls_clients import PNG_1x1, HTTPSFiles, run_chromium, tls_lines, tls_proxy

# (name, key): four origins, each its own HTTPS server on its own loopback port; "a" serves the
# page, "d" is a second origin with a's name (another port: another origin).
ORIGINS = (("origin-a.test", "a"), ("origin-b.test", "b"), ("origin-c.test", "c"),
           ("origin-a.test", "d"))
NAMES = sorted({n for n, _ in ORIGINS})
H2_ALPN = "h2, http/1.1"
H1_ALPN = "http/1.1"
NETLOG_LIMIT = 40


@pytest.fixture(scope="module")
def origin_leaf(certs, tmp_path_factory):
    """One certificate from the session CA for all the origin names."""
    return tlsfix.make_leaf(certs, str(tmp_path_factory.mktemp("h2-browser-leaf")), "h2origins",
                            sans=[f"DNS:{n}" for n in NAMES])


@pytest.fixture
def site(tmp_path, origin_leaf, dns):
    """The four origins. a's index.html loads a script and an image from every origin (its own
    included) and fetches a.txt from its own; on load the DOM says what arrived:
    "loaded:a,b,c,d:img=1,1,1,1:fetch=<token>"."""
    token = os.urandom(8).hex()  # fresh content: nothing can come from a cache
    servers, bases = {}, {}
    try:
        for name, key in ORIGINS:
            d = tmp_path / f"www-{key}"
            d.mkdir()
            (d / f"{key}.js").write_text(f'window.got_{key} = "{key}";\n')
            (d / "pixel.png").write_bytes(PNG_1x1)
            servers[key] = HTTPSFiles(str(d), origin_leaf)
            bases[key] = f"https://{name}:{servers[key].port}"
        keys = [k for _, k in ORIGINS]
        (tmp_path / "www-a" / "a.txt").write_text(token)
        scripts = "\n".join(f'<script src="{bases[k]}/{k}.js"></script>' for k in keys)
        imgs = "\n".join(f'<img id="img-{k}" src="{bases[k]}/pixel.png">' for k in keys)
        (tmp_path / "www-a" / "index.html").write_text(f"""<!doctype html>
<html><head><title>many origins, one HTTP/2 connection to connectd</title>
{scripts}
</head><body><div id="out">waiting</div>
{imgs}
<script>
window.addEventListener("load", function () {{
  var keys = {json.dumps(keys)};
  var got = keys.map(function (k) {{ return window["got_" + k] || "-"; }});
  var img = keys.map(function (k) {{ return document.getElementById("img-" + k).naturalWidth; }});
  fetch("/a.txt").then(function (r) {{ return r.text(); }}).then(function (t) {{
    document.getElementById("out").textContent =
      "loaded:" + got.join(",") + ":img=" + img.join(",") + ":fetch=" + t;
  }}, function (e) {{
    document.getElementById("out").textContent = "fetch failed: " + e;
  }});
}});
</script></body></html>
""")
        for name in NAMES:
            dns.set(name, ["127.0.0.1"])

        class Site:
            url = f"{bases['a']}/index.html"
            targets = [b[len("https://"):] for b in bases.values()]
            want = (f"loaded:{','.join(keys)}:img={','.join('1' for _ in keys)}"
                    f":fetch={token}")

        yield Site
    finally:
        for s in servers.values():
            s.stop()


# ---- Chromium's net-log ----------------------------------------------------------------------


def load_netlog(path):
    """(events, event type names, net error names) of a net-log file; ValueError/OSError when
    it cannot be read."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    try:
        log = json.loads(text)
    except ValueError:  # cut off before Chromium closed the JSON
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    consts = log.get("constants", {})
    names = {v: k for k, v in consts.get("logEventTypes", {}).items()}
    errors = {v: k for k, v in consts.get("netError", {}).items()}
    return log.get("events", []), names, errors


def netlog_proxy_tls(path, proxy_port):
    """Chromium's own view of its connections to the proxy: the ALPN protocol negotiated on each
    TCP connection to 127.0.0.1:proxy_port ("none" when no TLS handshake finished), in order,
    and the number of HTTP/2 sessions it set up with the proxy. None when the net-log cannot be
    read."""
    try:
        events, names, _ = load_netlog(path)
    except (OSError, ValueError):
        return None
    sockets, protos, sessions = [], {}, 0
    for ev in events:
        kind = names.get(ev.get("type"))
        params = ev.get("params") or {}
        src = (ev.get("source") or {}).get("id")
        if kind == "TCP_CONNECT" and params.get("remote_address") == f"127.0.0.1:{proxy_port}":
            sockets.append(src)
        elif kind == "SSL_CONNECT" and "next_proto" in params:
            # the first handshake on a socket is the proxy's (over HTTP/1.1 the origin's TLS
            # runs on the same socket source after it)
            protos.setdefault(src, params["next_proto"])
        elif kind == "HTTP2_SESSION" and params.get("host") == f"localhost:{proxy_port}":
            sessions += 1
    return [protos.get(s, "none") for s in sockets], sessions


def netlog_summary(path, proxy_port):
    """For failure messages: the net-log's TCP connections to the proxy, TLS handshakes (with
    the negotiated protocol), HTTP/2 sessions and resets, and every event with a net_error."""
    try:
        events, names, errors = load_netlog(path)
    except (OSError, ValueError) as e:
        return [f"net-log {path} unreadable: {e}"]
    out = [f"Chromium's connections to the proxy (ALPN each), HTTP/2 sessions: "
           f"{netlog_proxy_tls(path, proxy_port)}"]
    for ev in events:
        kind = names.get(ev.get("type"), str(ev.get("type")))
        params = ev.get("params") or {}
        src = (ev.get("source") or {}).get("id")
        if kind in ("HTTP2_SESSION", "HTTP2_SESSION_INITIALIZED", "HTTP2_PROXY_CLIENT_SESSION",
                    "HTTP2_SESSION_CLOSE", "HTTP2_SESSION_GOAWAY", "HTTP2_SESSION_RECV_RST_STREAM",
                    "SSL_CONNECT", "TCP_CONNECT") and params:
            if kind == "TCP_CONNECT" and str(proxy_port) not in json.dumps(params):
                continue
            out.append(f"[{src}] {kind} {json.dumps(params)[:300]}")
        elif "net_error" in params:
            err = errors.get(params["net_error"], params["net_error"])
            out.append(f"[{src}] {kind} net_error={err} {json.dumps(params)[:200]}")
    if len(out) > NETLOG_LIMIT:
        out = out[:NETLOG_LIMIT] + [f"... {len(out) - NETLOG_LIMIT} more ({path})"]
    return out


# ---- the runs --------------------------------------------------------------------------------


def pac_arg(p):
    """--proxy-pac-url (a data: URL): the .test origins through connectd's TLS listener
    ("HTTPS localhost:P", the proxy --proxy-server=https://localhost:P would name), everything
    else (Chromium's background requests, see the module docstring) through its plain
    listener."""
    pac = ("function FindProxyForURL(url, host) {\n"
           f'  if (dnsDomainIs(host, ".test")) return "HTTPS localhost:{p.tls_port}";\n'
           f'  return "PROXY 127.0.0.1:{p.port}";\n'
           "}\n")
    return ("--proxy-pac-url=data:application/x-javascript-config;base64,"
            + base64.b64encode(pac.encode()).decode())


class Run:
    """One Chromium run through a fresh connectd: p (the Proxy), lines (the access lines of the
    tunnels to the origins), admin_port, netlog (path), diagnosis() (text for failures)."""


def browse(start_proxy, certs, site, tmp_path, alpn):
    """connectd with a plain listener, a TLS one ([tls] alpn) and an admin listener; Chromium
    loads site.url, the origins through the TLS listener (pac_arg). The page must have loaded
    and every origin must show in the access log with a good TLS tunnel line."""
    r = Run()
    adm, r.admin_port = admin_section()
    r.p = p = tls_proxy(start_proxy, certs, tls={"alpn": alpn}, extra=adm)
    r.netlog = str(tmp_path / f"netlog-{alpn.replace('/', '').replace(', ', '-')}.json")
    t0 = time.monotonic()
    dom, err = run_chromium(site.url, [pac_arg(p), f"--log-net-log={r.netlog}"],
                            trust_ca=certs.ca)
    print(f"\nalpn = {alpn}: Chromium ran {time.monotonic() - t0:.1f}s")

    def diagnosis():
        try:
            with open(p.access_log, encoding="latin-1") as f:
                log = f.read()
        except OSError as e:
            log = str(e)
        out = re.search(r'<div id="out">.*?</div>', dom, re.S)
        return (f"\n--- DOM: {out.group(0) if out else dom[-1500:]}"
                f"\n--- chromium stderr ---\n{err[-2000:]}"
                f"\n--- connectd access log ---\n{log[-5000:]}"
                f"\n--- chromium net-log ({r.netlog}) ---\n"
                + "\n".join(netlog_summary(r.netlog, p.tls_port)))

    r.diagnosis = diagnosis
    assert site.want in dom, f"the page did not load through connectd (alpn = {alpn}):" + (
        diagnosis())
    r.lines = []
    for t in site.targets:  # each: status 200, tls=, upstream on loopback, bytes both ways
        try:
            r.lines += tls_lines(p, t, timeout=10)
        except AssertionError as e:
            raise AssertionError(f"{e}{diagnosis()}") from None
    return r


def h2_counters(admin_port):
    m = scrape(admin_port)
    return (m.get("connectd_http2_connections_total"), m.get("connectd_http2_streams_total"))


def test_chromium_h2_many_origins_one_connection(start_proxy, certs, site, tmp_path):
    """alpn = h2, http/1.1: the page and everything from the four origins load, and connectd
    carried every tunnel as a stream of one HTTP/2 connection: one h2=N and one client address
    on every stream's line, connectd_http2_streams_total = those lines (>= one per origin),
    connectd_http2_connections_total < origins and equal to the h2 connections in Chromium's
    net-log."""
    r = browse(start_proxy, certs, site, tmp_path, H2_ALPN)
    p, lines, diagnosis = r.p, r.lines, r.diagnosis
    missing = [x["_raw"] for x in lines if not x.get("h2", "").isdigit()]
    assert not missing, (f"tunnels without h2=N: Chromium did not use HTTP/2 to connectd "
                         f"(http2 connections, streams: {h2_counters(r.admin_port)}):\n"
                         + "\n".join(missing) + diagnosis())
    # Chromium has exited, so its connections are closed and every stream has its line; wait
    # (bounded) until the lines and the stream counter agree.
    deadline = time.monotonic() + 5
    while True:
        conns, streams = h2_counters(r.admin_port)
        h2_lines = p.log_lines(0, where=lambda x: "h2" in x)
        if len(h2_lines) >= streams or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    seen = netlog_proxy_tls(r.netlog, p.tls_port)
    by_target = {t: sorted({x["h2"] for x in lines if x["target"] == t}) for t in site.targets}
    raws = "\n".join(x["_raw"].rstrip("\n") for x in h2_lines)
    print(f"{len(lines)} tunnels to {len(site.targets)} origins; h2= per origin {by_target}; "
          f"client connections {sorted({x['client'] for x in h2_lines})}; "
          f"connectd_http2_connections_total {conns:g}, connectd_http2_streams_total "
          f"{streams:g}; Chromium's net-log: connections to the proxy (ALPN), HTTP/2 sessions "
          f"{seen}\n{raws}")
    assert len({x["h2"] for x in h2_lines}) == 1, (
        f"the tunnels are on different HTTP/2 connections: {by_target}\n{raws}{diagnosis()}")
    assert len({x["client"] for x in h2_lines}) == 1, (
        f"more than one client connection:\n{raws}{diagnosis()}")
    strays = [x["_raw"] for x in h2_lines if x["target"] not in site.targets]
    assert not strays, f"streams to other targets on the TLS listener: {strays}{diagnosis()}"
    assert streams == len(h2_lines) >= len(lines) >= len(site.targets), (
        f"connectd_http2_streams_total {streams:g}, {len(h2_lines)} h2 access lines, "
        f"{len(lines)} tunnels to the origins{diagnosis()}")
    assert 1 <= conns < len(site.targets), (
        f"connectd_http2_connections_total {conns:g} for {len(site.targets)} origins"
        f"{diagnosis()}")
    if seen is not None:  # connectd counts what Chromium opened: each connection chose h2
        protos, sessions = seen
        assert protos == ["h2"] * int(conns) and sessions >= 1, (
            f"Chromium's connections to the proxy (ALPN each) {protos}, HTTP/2 sessions "
            f"{sessions}; connectd_http2_connections_total {conns:g}{diagnosis()}")
    else:
        print(f"net-log {r.netlog} unreadable: Chromium's view not compared")


def test_chromium_http11_control(start_proxy, certs, site, tmp_path):
    """Control: alpn = http/1.1, the same page and PAC: it loads, no access line has h2=, no
    HTTP/2 connection or stream is counted, each tunnel came on a client connection of its own,
    and Chromium's net-log shows http/1.1 on every connection to the proxy (it offered h2, as
    above, and did not get it)."""
    r = browse(start_proxy, certs, site, tmp_path, H1_ALPN)
    conns, streams = h2_counters(r.admin_port)
    with_h2 = [x["_raw"] for x in r.p.log_lines(0) if "h2" in x]
    assert not with_h2, f"h2= with alpn = http/1.1: {with_h2}{r.diagnosis()}"
    assert (conns, streams) == (0, 0), (conns, streams, r.diagnosis())
    clients = [x["client"] for x in r.lines]
    seen = netlog_proxy_tls(r.netlog, r.p.tls_port)
    print(f"{len(r.lines)} tunnels to {len(site.targets)} origins on {len(set(clients))} client "
          f"connections; connectd_http2_connections_total {conns:g}; Chromium's net-log: "
          f"connections to the proxy (ALPN), HTTP/2 sessions {seen}")
    assert len(set(clients)) == len(r.lines) >= len(site.targets), (clients, r.diagnosis())
    if seen is not None:
        protos, sessions = seen
        assert sessions == 0 and protos and set(protos) == {"http/1.1"}, (seen, r.diagnosis())
