"""A git smart-HTTP server over TLS for the client tests (test_clients.py): a threaded
http.server on loopback, wrapped in ssl with the test certificate, that runs
`git http-backend` as a CGI for every request (GIT_PROJECT_ROOT, GIT_HTTP_EXPORT_ALL,
PATH_INFO, QUERY_STRING, REQUEST_METHOD, CONTENT_TYPE, CONTENT_LENGTH, HTTP_* headers), feeds
it the request body and streams its output back with chunked transfer encoding (HTTP/1.1, so
one TLS connection can carry the whole clone). Every socket read and the CGI are bounded."""

import http.server
import os
import shutil
import ssl
import subprocess
import threading

from netutil import LOOPBACK4

CGI_TIMEOUT = 30.0  # seconds one git http-backend run may take
SOCKET_TIMEOUT = 30.0


def http_backend():
    """Path of git-http-backend (git --exec-path), or None."""
    git = shutil.which("git")
    if not git:
        return None
    try:
        r = subprocess.run([git, "--exec-path"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    p = os.path.join(r.stdout.decode().strip(), "git-http-backend")
    return p if os.access(p, os.X_OK) else None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "connectd-test-git/1"
    timeout = SOCKET_TIMEOUT

    def log_message(self, fmt, *args):  # keep a record, not stderr noise
        with self.server.lock:
            self.server.requests.append(f"{self.command} {self.path} " + (fmt % args))

    def _body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ConnectionError("EOF in chunked body")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(1024)  # CRLF after the chunk
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _cgi(self):
        body = self._body()
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.server.project_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": self.server_version,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type") or "",
            "CONTENT_LENGTH": str(len(body)),
            "HOME": self.server.project_root,
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        for k, v in self.headers.items():
            name = "HTTP_" + k.upper().replace("-", "_")
            if name not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH", "HTTP_TRANSFER_ENCODING"):
                env[name] = v
        proc = subprocess.Popen([self.server.backend], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        # Feed the body from a thread so a large request cannot deadlock against the output.
        err = []
        feeder = threading.Thread(target=self._feed, args=(proc, body), daemon=True)
        feeder.start()
        errt = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
        errt.start()
        timer = threading.Timer(CGI_TIMEOUT, proc.kill)
        timer.start()
        try:
            self._relay_cgi_output(proc)
        finally:
            timer.cancel()
            proc.stdout.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            feeder.join(5)
            errt.join(5)
            if err and err[0]:
                with self.server.lock:
                    self.server.cgi_stderr.append(err[0].decode(errors="replace"))

    @staticmethod
    def _feed(proc, body):
        try:
            proc.stdin.write(body)
        except (BrokenPipeError, OSError):
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def _relay_cgi_output(self, proc):
        status = "200 OK"
        headers = []
        while True:  # the CGI header block
            line = proc.stdout.readline(8192)
            if not line:
                self.send_error(502, "git http-backend sent no headers")
                return
            line = line.rstrip(b"\r\n").decode("latin-1")
            if not line:
                break
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = v.strip()
            else:
                headers.append((k.strip(), v.strip()))
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason or None)
        for k, v in headers:
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            d = proc.stdout.read1(65536)
            if not d:
                break
            self.wfile.write(b"%x\r\n" % len(d) + d + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self):
        self._cgi()

    def do_POST(self):
        self._cgi()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    ssl_context = None

    def get_request(self):
        # The TLS handshake happens on the handler's thread (first read, with its timeout), so
        # a stuck client cannot block the accept loop.
        conn, addr = self.socket.accept()
        conn.settimeout(SOCKET_TIMEOUT)
        return self.ssl_context.wrap_socket(conn, server_side=True,
                                            do_handshake_on_connect=False), addr


class GitHTTPSServer:
    """git smart HTTP over TLS for the repositories under project_root, on host:<free port>."""

    def __init__(self, project_root, certfile, keyfile, host=LOOPBACK4):
        backend = http_backend()
        if backend is None:
            raise RuntimeError("git http-backend not found")
        self.httpd = _Server((host, 0), _Handler)
        self.httpd.project_root = project_root
        self.httpd.backend = backend
        self.httpd.lock = threading.Lock()
        self.httpd.requests = []
        self.httpd.cgi_stderr = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile, keyfile)
        self.httpd.ssl_context = ctx
        self.host = host
        self.port = self.httpd.server_address[1]
        self._t = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                   daemon=True)
        self._t.start()

    @property
    def requests(self):
        with self.httpd.lock:
            return list(self.httpd.requests)

    @property
    def cgi_stderr(self):
        with self.httpd.lock:
            return list(self.httpd.cgi_stderr)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._t.join(5)
