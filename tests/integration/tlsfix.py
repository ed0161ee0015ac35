"""A throwaway CA and a server certificate for localhost / 127.0.0.1 / ::1, made with the openssl
CLI, and an `openssl s_server -WWW` file server on loopback.

For connectd's TLS listeners (listen = ADDR tls) also: more leaf certificates from the same CA
with chosen names, serials and validity dates (`openssl ca`), a DER OCSP response for stapling
(`openssl ocsp`), a netutil.Client that speaks TLS to the proxy, TLS inside such a tunnel
(ssl.SSLObject over memory BIOs: TLS in TLS), hand-made ClientHello records for the hostile
tests, and the overrides that give a test proxy a TLS listener next to its plain one."""

import os
import random
import socket
import ssl
import struct
import subprocess
import time

from netutil import LOOPBACK4, Client, free_port, wait_port

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


# ---- more certificates from the test CA ----------------------------------------------------

_CA_CNF = """[ca]
default_ca = test_ca
[test_ca]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir/new
serial = $dir/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = supplied
"""


class Leaf:
    """A certificate issued by the test CA: cert (PEM), key (PEM), chain (cert then CA), serial
    (int), and the CA's index.txt it was recorded in (for openssl ocsp)."""

    def __init__(self, cert, key, chain, serial, index):
        self.cert = cert
        self.key = key
        self.chain = chain
        self.serial = serial
        self.index = index


def _ca_db(certs):
    """The `openssl ca` database next to the CA (made on first use)."""
    db = os.path.join(certs.dir, "ca-db")
    cnf = os.path.join(db, "ca.cnf")
    if not os.path.exists(cnf):
        os.makedirs(os.path.join(db, "new"), exist_ok=True)
        open(os.path.join(db, "index.txt"), "a").close()
        with open(cnf, "w") as f:
            f.write(_CA_CNF.format(dir=db))
    return db, cnf


def make_leaf(certs, outdir, name, sans=("DNS:localhost", "IP:127.0.0.1"), serial=None,
              startdate=None, enddate=None, days=2, key=None):
    """Issue a server certificate for sans (list like "DNS:x", "IP:y") from certs' CA into
    outdir as NAME.pem / NAME.key / NAME.chain.pem. serial: int (default random 63-bit);
    startdate/enddate: 'YYYYMMDDHHMMSSZ' (to make an expired one), else valid for days.
    key: an existing key file to reuse (default: a new P-256 key)."""
    os.makedirs(outdir, exist_ok=True)
    db, cnf = _ca_db(certs)
    serial = serial if serial is not None else random.getrandbits(62) | (1 << 62)
    keyfile = os.path.join(outdir, f"{name}.key")
    csr = os.path.join(outdir, f"{name}.csr")
    if key is None:
        _run([OPENSSL, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
              "-nodes", "-subj", f"/CN={name}", "-keyout", keyfile, "-out", csr], outdir)
    else:
        if os.path.abspath(key) != os.path.abspath(keyfile):
            with open(key, "rb") as f, open(keyfile, "wb") as g:
                g.write(f.read())
        _run([OPENSSL, "req", "-new", "-key", keyfile, "-subj", f"/CN={name}", "-out", csr],
             outdir)
    ext = os.path.join(outdir, f"{name}.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\n"
                f"subjectAltName={','.join(sans)}\n")
    with open(os.path.join(db, "serial"), "w") as f:
        f.write("%X\n" % serial if len("%X" % serial) % 2 == 0 else "0%X\n" % serial)
    cert = os.path.join(outdir, f"{name}.pem")
    args = [OPENSSL, "ca", "-config", cnf, "-batch", "-notext", "-in", csr, "-out", cert,
            "-cert", certs.ca, "-keyfile", certs.ca_key, "-extfile", ext]
    if startdate or enddate:
        args += ["-startdate", startdate or "20200101000000Z",
                 "-enddate", enddate or "20200102000000Z"]
    else:
        args += ["-days", str(days)]
    _run(args, outdir)
    chain = os.path.join(outdir, f"{name}.chain.pem")
    with open(chain, "w") as out:
        for p in (cert, certs.ca):
            with open(p) as f:
                out.write(f.read())
    return Leaf(cert, keyfile, chain, serial, os.path.join(db, "index.txt"))


def cert_serial(path):
    """The serial number (int) of the PEM certificate at path."""
    r = subprocess.run([OPENSSL, "x509", "-in", path, "-noout", "-serial"], capture_output=True,
                       timeout=30, check=True)
    return int(r.stdout.decode().strip().split("=", 1)[1], 16)


def make_ocsp_staple(certs, leaf, out):
    """A DER OCSP response ('good', signed by the test CA itself, valid 1 day) for leaf, written
    to out; returns out."""
    d = os.path.dirname(out)
    req = out + ".req"
    _run([OPENSSL, "ocsp", "-issuer", certs.ca, "-cert", leaf.cert, "-no_nonce",
          "-reqout", req], d)
    _run([OPENSSL, "ocsp", "-index", leaf.index, "-rsigner", certs.ca, "-rkey", certs.ca_key,
          "-CA", certs.ca, "-reqin", req, "-respout", out, "-ndays", "1"], d)
    return out


# ---- a proxy with a TLS listener -----------------------------------------------------------


def tls_overrides(cert, key, tls_port, plain_port=None, tls_opts="tls", tls=None, extra=None):
    """(overrides for start_proxy, listen spec): a plain listener first (the fixture's readiness
    probe and the tests that need a plain port use it), then 127.0.0.1:tls_port with tls_opts;
    [tls] certificate/key plus tls (dict) on top."""
    plain_port = plain_port or free_port(exclude=(tls_port,))
    listen = f"{LOOPBACK4}:{plain_port}, {LOOPBACK4}:{tls_port} {tls_opts}"
    sec = {"certificate": cert, "key": key}
    sec.update(tls or {})
    over = {"tls": sec}
    for k, v in (extra or {}).items():
        over.setdefault(k, {}).update(v)
    return over, listen


def start_tls_proxy(start_proxy, cert, key, tls=None, extra=None, tls_opts="tls", wait=True,
                    **kw):
    """start_proxy with a plain listener (p.port) and a TLS one (p.tls_port); waits (bounded)
    until the TLS port accepts too."""
    tls_port = free_port()
    over, listen = tls_overrides(cert, key, tls_port, tls_opts=tls_opts, tls=tls, extra=extra)
    p = start_proxy(over, listen=listen, wait=wait, **kw)
    p.tls_port = tls_port
    if wait and not wait_listening(tls_port, 5.0, p.proc):
        raise AssertionError(f"TLS listener {tls_port} not listening:\n{p.stderr_text()[-3000:]}")
    return p


def wait_listening(port, timeout=5.0, proc=None):
    """Poll /proc/net/tcp (bounded) until something listens on 127.0.0.1:port. Unlike a probe
    connection this leaves no failed handshake behind in the daemon's counters and log."""
    want = "0100007F:%04X" % port
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with open("/proc/net/tcp") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 3 and parts[1] == want and parts[3] == "0A":
                    return True
        time.sleep(0.02)
    return False


def client_context(ca, min_version=None, max_version=None, alpn=None, seclevel0=False):
    """A verifying client context trusting only the test CA (min/max: ssl.TLSVersion)."""
    ctx = ssl.create_default_context(cafile=ca)
    if seclevel0:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


class TLSClient(Client):
    """netutil.Client whose connection to the proxy is TLS (all of Client's CONNECT helpers
    work on it), over an ssl.SSLSocket (self.sock) rather than netutil's own TLS mode
    (Client(tls=ctx), memory BIOs, half-close): the SSLSocket gives session resumption
    (session=, sock.session, sock.session_reused), sock.version(), the ALPN choice and the
    verified peer certificate (serial). unclean is set when the proxy's side ended without
    close_notify; alert holds a TLS alert the proxy sent. close() sends no close_notify."""

    def __init__(self, host, port, ctx, server_hostname="localhost", source=None, timeout=5.0,
                 session=None, handshake=True, preamble=b""):
        super().__init__(host, port, source=source, timeout=timeout)
        self.unclean = False
        self.alert = None
        if preamble:  # e.g. a PROXY protocol header, sent in clear before the handshake
            self.sock.sendall(preamble)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname,
                                    do_handshake_on_connect=False, session=session)
        self.sock.settimeout(timeout)
        if handshake:
            self.sock.do_handshake()

    def _recv_some(self, deadline):
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return False
        except ConnectionResetError:
            self.reset = self.eof = True
            return False
        except ssl.SSLEOFError:
            self.unclean = self.eof = True
            return False
        except ssl.SSLError as e:  # an alert from the proxy
            self.alert = str(e)
            self.reset = self.eof = True
            return False
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def fd_close_without_notify(self):
        """Close the TCP connection without a TLS close_notify (SSLSocket.close sends none)."""
        self.close()

    def inner(self, ctx, server_hostname, timeout=5.0):
        """TLS to the origin inside this (established) tunnel; returns an InnerTLS."""
        t = InnerTLS(self, ctx, server_hostname, timeout)
        t.handshake()
        return t


class InnerTLS:
    """TLS over an established tunnel through a TLS proxy connection (TLS in TLS): ssl.SSLObject
    on memory BIOs, pumped over the outer TLSClient. Every wait is bounded by timeout."""

    def __init__(self, outer, ctx, server_hostname, timeout=5.0):
        self.outer = outer
        self.timeout = timeout
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        if outer.buf:  # bytes that came with the 200 reply
            self.incoming.write(outer.buf)
            outer.buf = b""

    def _flush(self):
        data = self.outgoing.read()
        if data:
            self.outer.sock.sendall(data)

    def _fill(self, deadline):
        if not self.outer._recv_some(deadline):
            if self.outer.eof:
                self.incoming.write_eof()
                return True
            raise AssertionError(f"inner TLS: nothing from the tunnel within {self.timeout}s")
        self.incoming.write(self.outer.buf)
        self.outer.buf = b""
        return True

    def _pump(self, op):
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                r = op()
                self._flush()
                return r
            except ssl.SSLWantReadError:
                self._flush()
                if time.monotonic() > deadline:
                    raise AssertionError(f"inner TLS: timeout after {self.timeout}s")
                self._fill(deadline)

    def handshake(self):
        self._pump(self.obj.do_handshake)

    def version(self):
        return self.obj.version()

    def getpeercert(self):
        return self.obj.getpeercert()

    def sendall(self, data):
        self._pump(lambda: self.obj.write(data))

    def recv(self, n=65536):
        """Some bytes; b'' at the end of the inner stream."""
        try:
            return self._pump(lambda: self.obj.read(n))
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return b""

    def read_all(self, limit=1 << 24):
        out = b""
        while len(out) < limit:
            d = self.recv()
            if not d:
                break
            out += d
        return out


# ---- hand-made TLS records -------------------------------------------------------------------


def record(content_type, payload, version=0x0301):
    return struct.pack("!BHH", content_type, version, len(payload)) + payload


def _ext(kind, body):
    return struct.pack("!HH", kind, len(body)) + body


def client_hello(version=0x0303, tls13=True, sni="localhost", record_version=0x0301):
    """A syntactically valid ClientHello record. version: legacy_version (0x0302 = TLS 1.1);
    tls13: offer TLS 1.3 (supported_versions + an x25519 key share of random bytes)."""
    suites = [0xC02B, 0xC02F, 0xC009, 0xC013, 0x002F, 0x0035]
    if tls13:
        suites = [0x1301, 0x1302, 0x1303] + suites
    exts = b""
    if sni:
        name = sni.encode()
        exts += _ext(0, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name)
    exts += _ext(0x000A, struct.pack("!HHH", 4, 0x001D, 0x0017))  # supported_groups
    exts += _ext(0x000B, b"\x01\x00")  # ec_point_formats
    algs = [0x0403, 0x0804, 0x0401, 0x0503, 0x0201, 0x0203]
    exts += _ext(0x000D, struct.pack("!H", 2 * len(algs)) + b"".join(struct.pack("!H", a)
                                                                      for a in algs))
    if tls13:
        exts += _ext(0x002B, b"\x02\x03\x04")  # supported_versions: TLS 1.3 only
        share = struct.pack("!HH", 0x001D, 32) + os.urandom(32)
        exts += _ext(0x0033, struct.pack("!H", len(share)) + share)
    body = struct.pack("!H", version) + os.urandom(32) + b"\x20" + os.urandom(32)
    body += struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", c) for c in suites)
    body += b"\x01\x00" + struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return record(22, hs, record_version)


def read_records(sock, timeout=2.0, limit=1 << 16):
    """Read from sock until EOF/RST/timeout; returns (bytes, how) with how eof/reset/timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while len(data) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, "timeout"
        sock.settimeout(left)
        try:
            d = sock.recv(65536)
        except socket.timeout:
            return data, "timeout"
        except ConnectionResetError:
            return data, "reset"
        if not d:
            return data, "eof"
        data += d
    return data, "limit"


def parse_records(data):
    """[(content_type, version, payload)] of the complete records in data."""
    out = []
    i = 0
    while i + 5 <= len(data):
        ct, ver, n = struct.unpack("!BHH", data[i:i + 5])
        if i + 5 + n > len(data):
            break
        out.append((ct, ver, data[i + 5:i + 5 + n]))
        i += 5 + n
    return out
