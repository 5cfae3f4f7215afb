"""Egress without booting a VM: the real controller, the fake internet behind it, and
namespaces on the VM bridge holding VMs' addresses (tests/egress_rig.py). What a real guest
sees is tested in tests/e2e/test_egress_vm.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hearth.api.keys import create_key
from hearth.net.addressing import mac_for
from hearth.net.ippool import IpPool
from hearth.waiting import wait_for
from tests.egress_rig import HTTP_GET, HTTPS_GET, RESOLVE, rig, run_json
from tests.fake_internet import CONTROLLER_SIDE, INTRANET, RESOLVER, WEB

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("egress")
    with rig(
        tmp,
        HEARTH_EGRESS_ALLOW='{"claude_code": ["example.org", "*.example.org"]}',
        HEARTH_EGRESS_HOSTS=json.dumps({"intranet.example.org": INTRANET}),
    ) as r:
        yield r, str(r.ca)


def test_an_allowed_name_resolves_to_the_gateway_and_answers_over_https(setup):
    r, ca = setup
    vm = r.browser_vm("claude_code")
    assert run_json(vm, RESOLVE, name="claude.com") == {
        "ok": True,
        "addresses": [str(r.settings.gateway.ip)],
    }
    got = run_json(vm, HTTPS_GET, address="claude.com", name="claude.com", ca=ca)
    assert got["ok"], got
    assert "hello from claude.com" in got["body"]
    assert got["issuer"]["commonName"] == "Hearth test CA"
    # The web server saw the controller's side, not the VM.
    assert f"{CONTROLLER_SIDE} claude.com https" in r.inet.web_log()


def test_a_refused_name_does_not_resolve_and_by_address_its_sni_is_refused(setup):
    r, ca = setup
    vm = r.browser_vm("claude_code")
    assert run_json(vm, RESOLVE, name="example.net")["ok"] is False
    # Straight to the web server's address, naming a host outside the policy.
    got = run_json(vm, HTTPS_GET, address=WEB, name="example.net", ca=ca)
    assert not got["ok"]
    # And straight to that address naming an allowed host: the proxy dials the name itself.
    got = run_json(vm, HTTPS_GET, address=WEB, name="claude.com", ca=ca)
    assert got["ok"] and "hello from claude.com" in got["body"], got
    wanted = {
        ("dns", "example.net", "refused"),
        ("tls", "example.net", "refused"),
        ("tls", "claude.com", "allowed"),
    }
    wait_for(
        lambda: wanted <= {(c.protocol, c.name, c.verdict) for c in r.audit(vm)},
        10,
        f"the audit to hold {wanted}",
    )


def test_dns_sent_anywhere_is_answered_by_the_gateway_and_never_forwarded(setup):
    r, _ = setup
    vm = r.browser_vm("claude_code")
    code = """
import json, dns.message, dns.query, dns.rcode
def ask(name, server, tcp=False):
    query = dns.message.make_query(name, "A")
    answer = (dns.query.tcp if tcp else dns.query.udp)(query, server, timeout=5)
    return [dns.rcode.to_text(answer.rcode()), [str(r) for a in answer.answer for r in a]]
print(json.dumps([ask("claude.com", "8.8.8.8"), ask("example.net", %(resolver)r),
                  ask("claude.com", %(resolver)r, tcp=True)]))
"""
    gateway = str(r.settings.gateway.ip)
    assert run_json(vm, code, resolver=RESOLVER) == [
        ["NOERROR", [gateway]],
        ["NXDOMAIN", []],
        ["NOERROR", [gateway]],
    ]
    assert "example.net" not in (r.inet.directory / "dnsmasq.log").read_text()


def test_plain_http_is_judged_by_its_host_header(setup):
    r, _ = setup
    vm = r.browser_vm("claude_code")
    got = run_json(vm, HTTP_GET, address="example.org", port=80, name="example.org")
    assert got["ok"] and "hello from example.org" in got["body"], got
    got = run_json(vm, HTTP_GET, address=WEB, port=80, name="example.net")
    assert "403 Forbidden" in got["body"] and "example.net is not allowed" in got["body"]


@pytest.mark.parametrize(
    "name, why",
    [
        ("internal.example.org", "10.20.30.40 is a private or reserved address"),
        ("metadata.example.org", "169.254.169.254 is a link-local address"),
        ("controller.example.org", f"{CONTROLLER_SIDE} is the controller's own address"),
    ],
)
def test_allowed_names_that_resolve_where_no_vm_may_go_are_refused(setup, name, why):
    r, ca = setup
    vm = r.browser_vm("claude_code")
    assert run_json(vm, RESOLVE, name=name)["ok"]  # the policy allows it: *.example.org
    assert not run_json(vm, HTTPS_GET, address=name, name=name, ca=ca)["ok"]
    got = run_json(vm, HTTP_GET, address=name, port=80, name=name)
    assert "502 Bad Gateway" in got["body"] and why in got["body"], got
    refused = wait_for(
        lambda: [c for c in r.audit(vm) if c.name == name and c.protocol != "dns"][1:],
        10,
        "the audit",
    )
    assert all(c.verdict == "refused" and why in c.reason for c in refused)


def test_a_named_internal_host_is_reached_at_the_operators_address(setup):
    r, ca = setup
    vm = r.browser_vm("claude_code")
    got = run_json(
        vm, HTTPS_GET, address="intranet.example.org", name="intranet.example.org", ca=ca
    )
    assert got["ok"] and "hello from intranet.example.org" in got["body"], got
    row = wait_for(lambda: [c for c in r.audit(vm) if c.verdict == "allowed"], 10, "the audit")
    assert row[0].address == INTRANET


@pytest.mark.parametrize(
    "address, port",
    [
        (CONTROLLER_SIDE, 443),
        (CONTROLLER_SIDE, 80),
        ("169.254.169.254", 80),
        ("169.254.100.1", 8000),
        ("192.168.100.1", 8080),
        (WEB, 8443),
        (WEB, 22),
    ],
)
def test_addresses_and_ports_beyond_80_and_443_are_unreachable(setup, address, port):
    r, _ = setup
    vm = r.browser_vm("claude_code")
    got = run_json(vm, HTTP_GET, address=address, port=port, name=address)
    if port == 80:  # every address's port 80 is the proxy, which wants a name
        assert "403 Forbidden" in got["body"] and "is an address, not a host name" in got["body"]
    else:  # every other port is dropped; 443 is the proxy, which closes on a non-TLS start
        assert not got["ok"] or got["body"] == "", got


def test_udp_beyond_dns_and_another_vm_are_unreachable(setup):
    r, _ = setup
    vm, other = r.browser_vm("claude_code"), r.browser_vm("claude_code")
    got = run_json(vm, HTTP_GET, address=other.ip, port=8080, name="x")
    assert not got["ok"]
    code = """
import json, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(b"hello", (%(address)r, 443))
try:
    s.recv(100); print(json.dumps({"ok": True}))
except OSError as e:
    print(json.dumps({"ok": False, "error": str(e)}))
"""
    assert not run_json(vm, code, address=WEB)["ok"]


def test_icmp_reaches_the_gateway_and_nothing_beyond(setup):
    r, _ = setup
    vm = r.browser_vm("claude_code")

    def ping(address: str) -> int:
        return subprocess.run(
            ["ip", "netns", "exec", vm.namespace, "ping", "-c", "1", "-W", "2", address],
            capture_output=True,
        ).returncode

    assert ping(str(r.settings.gateway.ip)) == 0
    assert ping(WEB) != 0 and ping(CONTROLLER_SIDE) != 0


@pytest.mark.parametrize("what", ["address", "address and MAC"])
def test_a_vm_cannot_pass_for_another(setup, what):
    r, _ = setup
    victim = r.cli_vm(f"frank-{len(what)}", ("claude_code",))
    spoofer = r.browser_vm("codex")
    assert run_json(victim, RESOLVE, name="api.anthropic.com")["ok"]
    assert not run_json(spoofer, RESOLVE, name="api.anthropic.com")["ok"]
    prefix = r.settings.gateway.network.prefixlen
    steps = [
        ["addr", "flush", "dev", "eth0"],
        ["addr", "add", f"{victim.ip}/{prefix}", "dev", "eth0"],
        ["route", "add", "default", "via", str(r.settings.gateway.ip)],
    ]
    if what == "address and MAC":
        steps.insert(0, ["link", "set", "eth0", "address", mac_for(victim.ip)])
    for step in steps:
        subprocess.run(["ip", "-n", spoofer.namespace, *step], check=True)
    got = run_json(spoofer, RESOLVE, name="api.anthropic.com")
    assert not got["ok"], got  # its frames are dropped at its port
    assert run_json(victim, RESOLVE, name="api.anthropic.com")["ok"]


def test_a_cli_vm_reaches_its_users_providers_api_and_token_hosts_only(setup):
    r, ca = setup
    vm = r.cli_vm("bob", ("claude_code",))
    got = run_json(vm, HTTPS_GET, address="api.anthropic.com", name="api.anthropic.com", ca=ca)
    assert got["ok"] and "hello from api.anthropic.com" in got["body"], got
    # claude.com is where a browser VM signs in; a CLI VM has no business there.
    assert not run_json(vm, RESOLVE, name="claude.com")["ok"]
    # A user with no provider connected reaches nothing.
    nobody = r.cli_vm("carol", ())
    assert not run_json(nobody, RESOLVE, name="api.anthropic.com")["ok"]


def test_an_address_no_vm_holds_gets_nothing(setup):
    r, _ = setup
    vm = r.browser_vm("claude_code")
    assert run_json(vm, RESOLVE, name="claude.com")["ok"]
    IpPool(r.db, r.settings.gateway).release(vm.vm_id)  # the namespace keeps the address
    wait_for(
        lambda: not run_json(vm, RESOLVE, name="claude.com")["ok"],
        10,
        "the released address to lose its policy",
    )
    got = run_json(vm, HTTP_GET, address="claude.com", port=80, name="claude.com")
    assert not got["ok"] or got["body"] == "", got


def test_the_audit_shows_bytes_and_durations_and_no_content(setup):
    r, ca = setup
    vm = r.browser_vm("claude_code")
    assert run_json(vm, HTTPS_GET, address="claude.com", name="claude.com", ca=ca)["ok"]
    rows = wait_for(
        lambda: [c for c in r.audit(vm) if c.verdict == "allowed"], 10, "the audit to be written"
    )
    assert rows[0].bytes_up > 200 and rows[0].bytes_down > 200
    assert rows[0].upstream == "direct" and rows[0].address == WEB
    assert rows[0].provider == "claude_code" and rows[0].user_id == "alice"


def test_the_admin_api_and_hearth_egress_log_show_the_audit(setup):
    r, _ = setup
    vm = r.browser_vm("claude_code")
    run_json(vm, RESOLVE, name="example.net")
    rows = wait_for(
        lambda: r.api.get("/api/admin/egress", params={"vm_id": vm.vm_id}).json()["connections"],
        10,
        "the audit",
    )
    assert [(c["protocol"], c["name"], c["verdict"], c["user_id"]) for c in rows] == [
        ("dns", "example.net", "refused", "alice")
    ]
    assert r.api.get("/api/admin/egress", params={"verdict": "maybe"}).status_code == 422
    app_key = create_key(r.db, "app", "not an admin")
    assert r.api.get(
        "/api/admin/egress", headers={"Authorization": f"Bearer {app_key}"}
    ).json() == {"error": "this route needs an admin key", "code": "forbidden"}
    lines = r.hearth("egress", "log", "--vm", vm.vm_id, "--json").splitlines()
    assert [json.loads(line)["name"] for line in lines] == ["example.net"]
    lines = r.hearth("egress", "log", "--user", "alice", "--verdict", "refused", "--json")
    assert {json.loads(line)["user_id"] for line in lines.splitlines()} == {"alice"}
    assert "refused" in r.hearth("egress", "log", "--limit", "3")


def test_a_connection_is_in_the_audit_while_open_and_gets_its_bytes_when_it_ends(setup):
    r, ca = setup
    vm = r.browser_vm("claude_code")
    code = f"""
import socket, ssl, sys
ctx = ssl.create_default_context(cafile={ca!r})
with ctx.wrap_socket(socket.create_connection(("claude.com", 443), timeout=15),
                     server_hostname="claude.com") as tls:
    tls.sendall(b"GET / HTTP/1.1\\r\\nHost: claude.com\\r\\n\\r\\n")  # kept alive
    tls.recv(65536)
    print("open", flush=True)
    sys.stdin.readline()  # until the test has looked
"""
    client = subprocess.Popen(
        ["ip", "netns", "exec", vm.namespace, sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout.readline().strip() == "open"

        def allowed() -> list[dict]:
            return r.api.get(
                "/api/admin/egress", params={"vm_id": vm.vm_id, "verdict": "allowed"}
            ).json()["connections"]

        row = wait_for(allowed, 10, "the open connection in the audit")[0]
        assert row["duration_seconds"] is None and row["name"] == "claude.com"
        client.stdin.write("done\n")
        client.stdin.flush()
        assert client.wait(15) == 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    row = wait_for(
        lambda: [c for c in allowed() if c["duration_seconds"] is not None],
        15,
        "the ended connection's bytes",
    )[0]
    assert row["bytes_up"] > 200 and row["bytes_down"] > 200 and len(allowed()) == 1
