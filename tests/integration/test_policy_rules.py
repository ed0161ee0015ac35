"""[access] policy: ordered YAML rules combining clients, users, hosts and ports; first match
wins, proxy.ini's lists decide when no rule matches; the access log names the deciding rule."""

import textwrap

import pytest

from authfix import basic, make_hash, write_users
from netutil import check_refusal
from servers import echo_handler


@pytest.fixture(scope="module")
def users_hashes():
    return {"alice": make_hash("a-pass", "$6$"), "bob": make_hash("b-pass", "$6$")}


@pytest.fixture
def servers(tcp_server):
    """Echo servers: two ports on 127.0.0.1, and the first port again on 127.0.0.3."""
    a = tcp_server(echo_handler)
    b = tcp_server(echo_handler)
    c = tcp_server(echo_handler, host="127.0.0.3", port=a.port)
    return a, b, c


def start(start_proxy, tmp_path, users_hashes, policy, **access):
    users = write_users(tmp_path / "users", users_hashes)
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(policy))
    acc = {"policy": str(tmp_path / "policy.yaml")}
    acc.update(access)
    return start_proxy({"access": acc, "auth": {"users_file": users}})


def attempt(p, target, user=None, pw=None, source=None):
    c = p.client(source=source)
    c.connect_request(target, extra_headers=basic(user, pw) if user else b"")
    return c


def ok(p, target, user, pw, source=None):
    c = attempt(p, target, user, pw, source)
    c.expect_established()
    c.send(b"hi")
    assert c.recv_exact(2) == b"hi"
    c.close()


def refused(p, target, user, pw, status=403, error="http_request_denied", source=None):
    c = attempt(p, target, user, pw, source)
    check_refusal(c, status, error)


def last_rule(p, target):
    lines = p.log_lines(1, where=lambda x: x["target"] == target)
    return lines[-1]["rule"], lines[-1]["status"]


def test_rules_combine_clients_users_hosts_ports(start_proxy, tmp_path, users_hashes, servers,
                                                dns):
    a, b, c = servers
    dns.set("www.alice.test", ["127.0.0.1"])
    dns.set("three.test", ["127.0.0.3"])
    dns.set("other.test", ["127.0.0.1"])
    p = start(start_proxy, tmp_path, users_hashes, f"""
        rules:
          - name: no-metadata
            hosts: [169.254.169.254]
            action: deny
          - name: lab-blocked
            clients: [127.0.0.66/32]
            action: deny
          - name: alice-web
            users: [alice]
            hosts: ["*.alice.test"]
            ports: [{a.port}]
            action: allow
          - name: bob-second-port
            users: [bob]
            ports: ["{b.port}"]
            action: allow
          - name: three-net
            hosts: [127.0.0.3/32]
            action: allow
          - name: default-deny
            action: deny
        """)
    # alice, her hosts and port.
    ok(p, f"www.alice.test:{a.port}", "alice", "a-pass")
    assert last_rule(p, f"www.alice.test:{a.port}") == ("alice-web", "200")
    # alice, right host, wrong port: no allow rule matches after the address check either.
    refused(p, f"www.alice.test:{b.port}", "alice", "a-pass")
    assert last_rule(p, f"www.alice.test:{b.port}") == ("default-deny", "403")
    # bob may use the second port anywhere, not the first.
    ok(p, f"other.test:{b.port}", "bob", "b-pass")
    assert last_rule(p, f"other.test:{b.port}") == ("bob-second-port", "200")
    refused(p, f"other.test:{a.port}", "bob", "b-pass")
    # A name that resolves into the CIDR rule's network: decided per address.
    ok(p, f"three.test:{a.port}", "bob", "b-pass")
    assert last_rule(p, f"three.test:{a.port}") == ("three-net", "200")
    ok(p, f"127.0.0.3:{a.port}", "alice", "a-pass")
    # Client rule before user rules.
    refused(p, f"www.alice.test:{a.port}", "alice", "a-pass", source="127.0.0.66")
    lines = p.log_lines(1, where=lambda x: x["client"].startswith("127.0.0.66:"))
    assert lines[-1]["rule"] == "lab-blocked" and lines[-1]["user"] == "alice"
    # An IP literal denied before anything is dialed.
    refused(p, "169.254.169.254:443", "alice", "a-pass")
    assert last_rule(p, "169.254.169.254:443") == ("no-metadata", "403")
    # Credentials still come first.
    c = attempt(p, f"www.alice.test:{a.port}")
    check_refusal(c, 407, "http_request_denied")
    assert a.accepts == 1 + 0 and b.accepts == 1, (a.accepts, b.accepts)


def test_no_matching_rule_falls_back_to_ini(start_proxy, tmp_path, users_hashes, servers, dns):
    a, b, _ = servers
    dns.set("x.test", ["127.0.0.1"])
    p = start(start_proxy, tmp_path, users_hashes, f"""
        rules:
          - users: [bob]
            ports: [{b.port}]
            action: deny
        """, allow_ports=str(a.port))
    ok(p, f"x.test:{a.port}", "bob", "b-pass")  # no rule: proxy.ini allows this port
    refused(p, f"x.test:{b.port}", "bob", "b-pass")  # the rule denies
    rule, _ = last_rule(p, f"x.test:{b.port}")
    assert rule.endswith("policy.yaml:3"), rule  # unnamed rule: FILE:LINE
    refused(p, f"x.test:{b.port}", "alice", "a-pass")  # no rule; proxy.ini's ports refuse
    lines = p.log_lines(1, where=lambda x: x["user"] == "alice" and x["status"] == "403")
    assert lines[-1]["rule"] == "allow_ports"


def test_deny_private_needs_the_rule_to_name_the_address(start_proxy, tmp_path, users_hashes,
                                                         servers, dns):
    a, _, c = servers
    dns.set("app.alice.test", ["127.0.0.1"])
    p = start(start_proxy, tmp_path, users_hashes, f"""
        rules:
          - name: internal-three
            hosts: [127.0.0.3]
            action: allow
          - name: alice-any
            users: [alice]
            hosts: ["*.alice.test"]
            action: allow
        """, deny_private="yes")
    ok(p, f"127.0.0.3:{a.port}", "bob", "b-pass")  # named by address: allowed though private
    refused(p, f"app.alice.test:{a.port}", "alice", "a-pass", error="destination_ip_prohibited")
    assert a.accepts == 0


@pytest.mark.parametrize("policy,where", [
    ("rules:\n  - action: maybe\n", ":2:13:"),
    ("rules:\n  - ports: [abc]\n    action: allow\n", ":2:13:"),
    ("rules:\n  - colour: red\n    action: allow\n", ":2:5:"),
    ("rules: []\n", ":1:"),
])
def test_bad_policy_fails_config_check(cli, tmp_path, policy, where):
    pf = tmp_path / "policy.yaml"
    pf.write_text(policy)
    ini = tmp_path / "proxy.ini"
    ini.write_text(f"[access]\npolicy = {pf}\n")
    r = cli("-t", "-c", str(ini))
    assert r.returncode == 1, r.err
    assert f"{pf}{where}" in r.err, r.err


def test_policy_users_need_auth(cli, tmp_path, users_hashes):
    pf = tmp_path / "policy.yaml"
    pf.write_text("rules:\n  - name: r1\n    users: [alice]\n    action: allow\n")
    ini = tmp_path / "proxy.ini"
    ini.write_text("[access]\npolicy = policy.yaml\n")
    r = cli("-t", "-c", str(ini))
    assert r.returncode == 1 and "users_file is not set" in r.err, r.err
    write_users(tmp_path / "users", {"bob": users_hashes["bob"]})
    ini.write_text("[access]\npolicy = policy.yaml\n[auth]\nusers_file = users\n")
    r = cli("-t", "-c", str(ini))
    assert r.returncode == 1 and "user 'alice' is not in" in r.err, r.err
    write_users(tmp_path / "users", users_hashes)
    r = cli("-t", "-c", str(ini))
    assert r.returncode == 0, r.err


def test_shipped_example_policy_checks(cli, tmp_path):
    import os

    from conftest import REPO
    ini = tmp_path / "proxy.ini"
    ini.write_text(f"[access]\npolicy = {os.path.join(REPO, 'conf', 'policy.yaml')}\n")
    r = cli("-t", "-c", str(ini))
    # The example names users: without a users file that must be the (only) complaint.
    assert r.returncode == 0 or "users_file is not set" in r.err, r.err
