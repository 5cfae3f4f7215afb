"""Egress as a real guest sees it: CLI VMs booted from the cli image behind the real
controller, the fake internet behind that (tests/egress_rig.py), and curl, Python and Node in
the guest. The test CA reaches the guest only through its agent (HEARTH_VM_CA_FILE)."""

from __future__ import annotations

import json

import pytest

from hearth.demo.sandbox import inside
from hearth.store.models import Credential, Vm
from hearth.waiting import wait_for
from tests.e2e.conftest import IMAGES, needs_image
from tests.egress_rig import rig
from tests.fake_internet import HTTP_PROXY, WEB

pytestmark = [pytest.mark.vm, pytest.mark.netns]


@pytest.fixture(scope="module")
def guests(tmp_path_factory):
    """Two CLI VMs of a user signed in to Claude Code, egress through the HTTP upstream."""
    needs_image("cli")
    tmp = tmp_path_factory.mktemp("egress-vm")

    def settings(inet) -> dict[str, str]:
        return {
            "HEARTH_UPSTREAM_PROXY": inet.http_proxy,
            "HEARTH_EGRESS_ALLOW": json.dumps({"claude_code": ["*.example.org"]}),
        }

    with rig(tmp, settings, images=IMAGES, trust_ca=True) as r:
        with r.db.session() as s:
            s.add(
                Credential(
                    user_id="dave",
                    provider="claude_code",
                    version=1,
                    key_id="k",
                    wrapped_key=b"",
                    nonce=b"n",
                    ciphertext=b"",
                )
            )
            s.commit()
        vms = [json.loads(r.hearth("vm", "boot", "--image", "cli", "--json")) for _ in range(2)]
        for vm in vms:  # the user's CLI VMs, as their first prompt would have made them
            r.db.update(Vm, vm["id"], user_id="dave")
        manager = r.manager()
        try:
            yield r, [manager.get(vm["id"]) for vm in vms], manager
        finally:
            r.hearth("vm", "rm", "--all")


def _run(r, manager, vm, argv: list[str]) -> tuple[int, str]:
    """Run `argv` in the guest through its agent, with the VM's client environment."""
    output = []
    with (
        inside(r.controller_ns),
        manager.agent(vm) as agent,
        agent.run(argv, env=manager.client_env(), timeout=60) as events,
    ):
        for event in events:
            if event.event == "output":
                output.append(event.data)
            elif event.event == "exit":
                return event.exit_code, "".join(output)
    raise AssertionError("the run ended without an exit event")


def _curl(r, manager, vm, *args: str) -> tuple[int, str]:
    return _run(r, manager, vm, ["curl", "-sS", "--max-time", "8", *args])


def test_curl_python_and_node_reach_an_allowed_name_with_its_certificate(guests):
    r, (vm, _), manager = guests
    code, out = _curl(r, manager, vm, "https://api.anthropic.com/")
    assert code == 0 and "hello from api.anthropic.com" in out, out
    code, out = _run(
        r,
        manager,
        vm,
        [
            "python3",
            "-c",
            (
                "import urllib.request as u; print(u.urlopen('https://platform.claude.com/').read()"
                ".decode())"
            ),
        ],
    )
    assert code == 0 and "hello from platform.claude.com" in out, out
    code, out = _run(
        r,
        manager,
        vm,
        [
            "node",
            "-e",
            (
                "fetch('https://api.anthropic.com/').then(r => r.text()).then(t => console.log(t))"
                ".catch(e => { console.log(String(e.cause || e)); process.exit(3) })"
            ),
        ],
    )
    assert code == 0 and "hello from api.anthropic.com" in out, out
    # Through the upstream: the site saw the proxy, the proxy logged the connection.
    assert f"{HTTP_PROXY} api.anthropic.com https" in r.inet.web_log()
    assert f"CONNECT {WEB}:443" in r.inet.proxy_log()


def test_refused_names_and_addresses_fail_from_the_guest(guests):
    r, (vm, other), manager = guests
    code, out = _curl(r, manager, vm, "https://example.net/")
    assert code == 6 and "Could not resolve host" in out, out  # not in the policy
    code, out = _curl(r, manager, vm, "--resolve", f"example.net:443:{WEB}", "https://example.net/")
    assert code != 0, out  # by address: the proxy reads the SNI and closes
    code, out = _curl(r, manager, vm, "https://internal.example.org/")
    assert code != 0 and "hello" not in out, out  # allowed name, private address
    code, out = _curl(r, manager, vm, "http://169.254.169.254/latest/meta-data/")
    assert "is an address, not a host name" in out, out
    for url in (
        f"http://{r.settings.gateway.ip}:8080/",
        "http://169.254.100.1:8000/",
        f"http://{other.ip}:8080/health",
        f"https://{WEB}:8443/",
    ):
        code, out = _curl(r, manager, vm, "--connect-timeout", "3", url)
        assert code in (7, 28), f"{url}: {code} {out}"  # refused or timed out: dropped
    code, out = _run(
        r,
        manager,
        vm,
        [
            "python3",
            "-c",
            (
                "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                f"s.settimeout(3); s.sendto(b'quic?', ('{WEB}', 443)); s.recv(10)"
            ),
        ],
    )
    assert code != 0 and "timed out" in out, out  # UDP beyond DNS goes nowhere


def test_the_audit_holds_each_attempt_with_its_verdict(guests):
    r, (vm, _), manager = guests
    _curl(r, manager, vm, "https://api.anthropic.com/")
    _curl(r, manager, vm, "https://example.net/")
    _curl(r, manager, vm, "https://internal.example.org/")
    wanted = {
        ("tls", "api.anthropic.com", "allowed"),
        ("dns", "example.net", "refused"),
        ("tls", "internal.example.org", "refused"),
    }

    def seen() -> set:
        rows = r.api.get("/api/admin/egress", params={"vm_id": vm.id}).json()["connections"]
        return {(c["protocol"], c["name"], c["verdict"]) for c in rows}

    wait_for(lambda: wanted <= seen(), 10, f"the audit to hold {wanted}")
    assert r.inet.proxy_password not in r.log.read_text()
    console = (manager.workdir(vm.id) / "console.log").read_text(errors="replace")
    assert r.inet.proxy_password not in console
