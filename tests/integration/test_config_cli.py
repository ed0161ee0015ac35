"""The command line and config checking: -t -c, -V, -h, error messages with FILE:LINE."""

import os
import re
import signal
import subprocess
import time

import pytest

from conftest import BASE_CONFIG, SHIPPED_CONFIG, merge, render_ini
from netutil import free_port, wait_port

GOOD = render_ini(merge(BASE_CONFIG, {"server": {"listen": "127.0.0.1:3128"},
                                      "dns": {"servers": "127.0.0.1:53"},
                                      "log": {"access_log": "off"}}))


def write(tmp_path, text, name="t.ini"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_check_good_config(cli, tmp_path):
    path = write(tmp_path, GOOD)
    r = cli("-t", "-c", path)
    assert r.returncode == 0, r.err


def test_check_shipped_config(cli):
    assert os.path.exists(SHIPPED_CONFIG), "conf/proxy.ini is missing"
    r = cli("-t", "-c", SHIPPED_CONFIG)
    assert r.returncode == 0, r.err


def test_shipped_config_documents_every_key():
    """The shipped file names each supported key (ARCHITECTURE: documents every key)."""
    assert os.path.exists(SHIPPED_CONFIG), "conf/proxy.ini is missing"
    text = open(SHIPPED_CONFIG).read()
    for key in ("listen", "allow_ports", "allow_hosts", "deny_hosts", "allow_clients",
                "deny_private", "servers", "handshake", "dns", "connect", "idle",
                "max_connections", "max_request_bytes", "level", "access_log"):
        assert re.search(rf"^[;#]?\s*{key}\s*=", text, re.M), f"{key} not in the shipped config"
    assert re.search(r"^\s*allow_ports\s*=\s*443\s*(;.*)?$", text, re.M)
    assert re.search(r"^\s*deny_private\s*=\s*yes\s*(;.*)?$", text, re.M)


GOOD_CFG = merge(BASE_CONFIG, {"server": {"listen": "127.0.0.1:3128"},
                               "dns": {"servers": "127.0.0.1:53"},
                               "log": {"access_log": "off"}})

# name: (section, key, value); the key is set in its section (replacing the good value), except
# for sections GOOD does not have, which are appended. key None: an unknown section.
BAD = {
    "unknown_key": ("access", "bogus_key", "1"),
    "unknown_section": ("nonsense", None, "foo = 1"),
    "duration_without_unit": ("timeouts", "handshake", "10"),
    "duration_garbage": ("timeouts", "idle", "soon"),
    "duration_zero_handshake": ("timeouts", "handshake", "0s"),
    "bad_port_list": ("access", "allow_ports", "443, 70000"),
    "bad_port_zero": ("access", "allow_ports", "0"),
    "bad_port_range": ("access", "allow_ports", "500-400"),
    "bad_cidr": ("access", "allow_clients", "10.0.0.1/8"),
    "bad_host_pattern": ("access", "deny_hosts", "exa mple.com"),
    "bad_listen_no_port": ("server", "listen", "127.0.0.1"),
    "bad_listen_name": ("server", "listen", "localhost:3128"),
    "bad_dns_server_name": ("dns", "servers", "dns.example:53"),
    "bad_bool": ("access", "deny_private", "perhaps"),
    "bad_number": ("limits", "max_connections", "lots"),
    "max_connections_zero": ("limits", "max_connections", "0"),
    "max_request_bytes_too_small": ("limits", "max_request_bytes", "100"),
    "bad_level": ("log", "level", "chatty"),
    "workers_zero": ("server", "workers", "0"),
    "bad_user": ("server", "user", "no body"),
    "bad_pac": ("server", "pac", "sometimes"),
    "missing_policy_file": ("access", "policy", "/nonexistent/rules.yaml"),
    "missing_users_file": ("auth", "users_file", "/nonexistent/users"),
    "bad_realm": ("auth", "realm", 'say "hi"'),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_check_bad_config(cli, tmp_path, name):
    section, key, value = BAD[name]
    if key is None:
        text = GOOD + f"\n[{section}]\n{value}\n"
        bad_lines = [len(GOOD.split("\n")) + 1, len(GOOD.split("\n")) + 2]  # header or key
    else:
        text = render_ini(merge(GOOD_CFG, {section: {key: value}}))
        bad_lines = [text.split("\n").index(f"{key} = {value}") + 1]
    path = write(tmp_path, text)
    r = cli("-t", "-c", path)
    assert r.returncode == 1, f"exit {r.returncode}, stderr {r.err!r}\n{text}"
    hit = [n for n in bad_lines if f"{path}:{n}:" in r.err]
    assert hit, f"want '{path}:{bad_lines[-1]}:' in {r.err!r}"
    if key:
        assert re.search(rf"^(?:connectd: )?{re.escape(path)}:{hit[0]}: \[{section}\] {key}: \S", r.err, re.M), r.err
    else:
        assert section in r.err


def test_key_set_twice(cli, tmp_path):
    text = GOOD + "\n[access]\nallow_ports = 8443\n"
    path = write(tmp_path, text)
    r = cli("-t", "-c", path)
    assert r.returncode == 1, r.err
    n = len(text.split("\n")) - 1
    assert f"{path}:{n}: [access] allow_ports:" in r.err, r.err


def test_unknown_key_line_number_in_the_middle(cli, tmp_path):
    text = "[server]\nlisten = 127.0.0.1:3128\n\n; comment\n[access]\nallow_ports = 443\nwat = 1\n"
    path = write(tmp_path, text)
    r = cli("-t", "-c", path)
    assert r.returncode == 1
    assert re.search(rf"^(?:connectd: )?{re.escape(path)}:7: \[access\] wat: ", r.err, re.M), r.err


def test_check_missing_file(cli, tmp_path):
    path = str(tmp_path / "absent.ini")
    r = cli("-t", "-c", path)
    assert r.returncode == 1
    assert path in r.err and "cannot open" in r.err, r.err


def test_bad_config_does_not_start(connectd_bin, tmp_path):
    port = free_port()
    text = GOOD.replace("127.0.0.1:3128", f"127.0.0.1:{port}") + "\n[server]\nworkers = 0\n"
    path = write(tmp_path, text)
    p = subprocess.Popen([connectd_bin, "-c", path], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        rc = p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)
        pytest.fail("connectd kept running with an invalid config")
    assert rc == 1
    assert b"workers" in p.stderr.read()
    assert not wait_port("127.0.0.1", port, 0.3)


def test_version(cli):
    r = cli("-V")
    assert r.returncode == 0, r.err
    out = r.out + r.err
    assert "connectd" in out and re.search(r"\d+\.\d+", out), out


def test_help(cli):
    r = cli("-h")
    assert r.returncode == 0, r.err
    out = r.out + r.err
    assert "-c" in out and "-t" in out, out


def test_unknown_option(cli):
    r = cli("--no-such-option")
    assert r.returncode != 0
    assert r.err.strip() != ""


def test_startup_logs_listening(start_proxy):
    p = start_proxy()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and "listening on" not in p.stderr_text():
        time.sleep(0.05)
    text = p.stderr_text()
    pat = (rf"^\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z connectd\[{p.pid}\]: info: "
           rf"listening on 127\.0\.0\.1:{p.port}$")
    assert re.search(pat, text, re.M), text


def test_listen_port_in_use_fails(connectd_bin, tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        text = GOOD.replace("127.0.0.1:3128", f"127.0.0.1:{port}")
        path = write(tmp_path, text)
        p = subprocess.Popen([connectd_bin, "-c", path], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            rc = p.wait(5)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait(5)
            pytest.fail("connectd kept running although its listen port was taken")
        assert rc != 0
        err = p.stderr.read().decode(errors="replace")
        assert str(port) in err, err
    finally:
        s.close()
