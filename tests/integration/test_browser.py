"""A real browser through connectd: Debian's chromium, headless, loads an HTTPS page whose
subresources come from two origins (so it opens parallel tunnels), once with
--proxy-server and once through the PAC file connectd serves. The rendered DOM and the
proxy's access log must both show it.

Both origins have .test names that only the proxy can resolve (through the test's DNS
responder, to 127.0.0.1): a browser that bypassed the proxy could not load anything. The
throwaway certificate is trusted by its SPKI fingerprint for this browser run only."""

import base64
import functools
import hashlib
import http.server
import os
import shutil
import ssl
import subprocess
import tempfile
import threading

import pytest

from netutil import free_port

PNG_1x1 = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def chromium_bin():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def site_cert(tmp_path_factory):
    """A CA and a leaf for site.test and cdn.test; returns (cert, key, spki_b64)."""
    d = str(tmp_path_factory.mktemp("browser-certs"))
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=connectd browser test CA", "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=site.test",
            "-keyout", "leaf.key", "-out", "leaf.csr", cwd=d)
    with open(os.path.join(d, "leaf.ext"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:site.test,DNS:cdn.test\n")
    openssl("x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-sha256", "-extfile", "leaf.ext", "-out",
            "leaf.pem", cwd=d)
    pub = subprocess.run(["openssl", "x509", "-in", "leaf.pem", "-pubkey", "-noout"], cwd=d,
                         check=True, capture_output=True, timeout=30).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, cwd=d,
                         check=True, capture_output=True, timeout=30).stdout
    spki = base64.b64encode(hashlib.sha256(der).digest()).decode()
    with open(os.path.join(d, "chain.pem"), "w") as out:
        for name in ("leaf.pem", "ca.pem"):
            with open(os.path.join(d, name)) as f:
                out.write(f.read())
    return os.path.join(d, "chain.pem"), os.path.join(d, "leaf.key"), spki


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class HTTPSFiles:
    """A threaded HTTPS file server on 127.0.0.1 (proper content types, unlike s_server)."""

    def __init__(self, root, cert, key):
        self.port = free_port()
        handler = functools.partial(Quiet, directory=root)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def two_origins(tmp_path, site_cert, dns):
    cert, key, spki = site_cert
    site_dir, cdn_dir = tmp_path / "site", tmp_path / "cdn"
    site_dir.mkdir()
    cdn_dir.mkdir()
    cdn = HTTPSFiles(str(cdn_dir), cert, key)
    site = HTTPSFiles(str(site_dir), cert, key)
    cdn_base = f"https://cdn.test:{cdn.port}"
    (cdn_dir / "a.js").write_text('window.A = "a";\n')
    (cdn_dir / "b.js").write_text('window.B = "b";\n')
    (cdn_dir / "pixel.png").write_bytes(PNG_1x1)
    (site_dir / "c.js").write_text('window.C = "c";\n')
    (site_dir / "index.html").write_text(f"""<!doctype html>
<html><head><title>through connectd</title>
<script src="{cdn_base}/a.js"></script>
<script src="{cdn_base}/b.js"></script>
<script src="/c.js"></script>
</head><body><div id="out">waiting</div>
<img id="px" src="{cdn_base}/pixel.png">
<script>
window.addEventListener("load", function () {{
  var img = document.getElementById("px");
  document.getElementById("out").textContent =
    "loaded:" + [window.A, window.B, window.C].join(",") + ":img=" + img.naturalWidth;
}});
</script></body></html>
""")
    dns.set("site.test", ["127.0.0.1"])
    dns.set("cdn.test", ["127.0.0.1"])

    class O:
        site_port = site.port
        cdn_port = cdn.port
        url = f"https://site.test:{site.port}/index.html"
        fingerprint = spki

    yield O
    site.stop()
    cdn.stop()


def run_chromium(url, proxy_args, spki):
    exe = chromium_bin()
    if not exe:
        pytest.skip("chromium not installed (scripts/install-deps test installs it)")
    profile = tempfile.mkdtemp(prefix="connectd-chromium-")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["HOME"] = profile
    try:
        r = subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--disable-dev-shm-usage", "--no-default-browser-check",
             f"--user-data-dir={profile}", f"--ignore-certificate-errors-spki-list={spki}",
             "--virtual-time-budget=15000", *proxy_args, "--dump-dom", url],
            capture_output=True, timeout=120, env=env)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")


def assert_tunnels(p, o, n_site=1, n_cdn=1):
    lines = p.log_lines(2, timeout=10, where=lambda x: x["status"] == "200" and
                        x["target"] in (f"site.test:{o.site_port}", f"cdn.test:{o.cdn_port}"))
    targets = [x["target"] for x in lines]
    assert targets.count(f"site.test:{o.site_port}") >= n_site, targets
    assert targets.count(f"cdn.test:{o.cdn_port}") >= n_cdn, targets
    assert all(x["upstream"].startswith("127.0.0.1:") for x in lines), lines


def test_chromium_with_proxy_server(start_proxy, two_origins):
    o = two_origins
    p = start_proxy()
    dom, err = run_chromium(o.url, [f"--proxy-server=http://127.0.0.1:{p.port}",
                                    "--proxy-bypass-list=<-loopback>"], o.fingerprint)
    assert "loaded:a,b,c:img=1" in dom, (dom[-2000:], err[-3000:])
    assert_tunnels(p, o)


def test_chromium_with_pac(start_proxy, two_origins):
    o = two_origins
    p = start_proxy({"server": {"pac": "yes"}})
    dom, err = run_chromium(o.url, [f"--proxy-pac-url=http://127.0.0.1:{p.port}/proxy.pac"],
                            o.fingerprint)
    assert "loaded:a,b,c:img=1" in dom, (dom[-2000:], err[-3000:])
    p.log_lines(1, where=lambda x: x.get("reason") == "pac")
    assert_tunnels(p, o)
