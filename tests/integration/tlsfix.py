"""A throwaway CA and a server certificate for localhost / 127.0.0.1 / ::1, made with the openssl
CLI, and an `openssl s_server -WWW` file server on loopback."""

import os
import subprocess
import time

from netutil import free_port, wait_port

OPENSSL = "openssl"


def _run(args, cwd):
    r = subprocess.run(args, cwd=cwd, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {r.stderr.decode(errors='replace')}")


class Certs:
    def __init__(self, d):
        self.dir = d
        self.ca = os.path.join(d, "ca.pem")
        self.ca_key = os.path.join(d, "ca.key")
        self.cert = os.path.join(d, "server.pem")
        self.key = os.path.join(d, "server.key")


def make_certs(d):
    os.makedirs(d, exist_ok=True)
    c = Certs(d)
    _run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-nodes", "-days", "2", "-subj", "/CN=connectd test CA",
          "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign",
          "-keyout", c.ca_key, "-out", c.ca], d)
    csr = os.path.join(d, "server.csr")
    _run([OPENSSL, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
          "-nodes", "-subj", "/CN=localhost", "-keyout", c.key, "-out", csr], d)
    ext = os.path.join(d, "server.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n")
    _run([OPENSSL, "x509", "-req", "-in", csr, "-CA", c.ca, "-CAkey", c.ca_key,
          "-CAcreateserial", "-days", "2", "-sha256", "-extfile", ext, "-out", c.cert], d)
    return c


class TLSFileServer:
    """openssl s_server -WWW serving files from docroot on host:port (loopback)."""

    def __init__(self, certs, docroot, logdir, host="127.0.0.1"):
        self.host = host
        self.port = free_port(host)
        self.log_path = os.path.join(logdir, f"s_server-{self.port}.log")
        self.log = open(self.log_path, "wb")
        accept = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        args = [OPENSSL, "s_server", "-quiet", "-WWW", "-http_server_binmode",
                "-accept", accept, "-cert", certs.cert, "-key", certs.key]
        args.append("-6" if ":" in host else "-4")
        self.proc = subprocess.Popen(args, cwd=docroot, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_port(host, self.port, 10.0, self.proc):
            self.stop()
            raise RuntimeError(f"s_server did not start: {open(self.log_path, 'rb').read()!r}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def curl(args, timeout=60):
    """Run curl with proxy environment variables removed; returns CompletedProcess."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    t0 = time.monotonic()
    r = subprocess.run(["curl"] + args, capture_output=True, timeout=timeout, env=env)
    r.elapsed = time.monotonic() - t0
    return r
