"""A real VM from a real image, booted under QEMU in a namespace the test owns.

Asserts the guest network came up from ip= (address, prefix, default route, gateway ping),
the agent answers only with its token, the TAP sits on the bridge, the console shows the
bootstrap and never the token, and VNC greets; then that destroying the VM, or a crash of
the process booting one, leaves nothing behind.
"""

from __future__ import annotations

import os
import signal
import socket

import httpx
import pytest

from hearth.core.reconciler import vmm_processes
from hearth.demo.sandbox import inside
from hearth.store.models import VmState
from hearth.waiting import wait_for
from tests.e2e.conftest import Hearth, assert_nothing_left, needs_image

pytestmark = pytest.mark.vm


def test_browser_vm_boots_with_network_agent_and_vnc_and_leaves_nothing(hearth: Hearth):
    needs_image("browser")
    booted = hearth.json("vm", "boot", "--image", "browser")
    vms = hearth.manager()
    vm = vms.get(booted["id"])
    gateway = vms.settings.gateway
    assert vm.state == VmState.ready and booted["ip"] == vm.ip
    assert vms.pool.leases() == {vm.id: vm.ip}

    network = booted["agent"]["network"]
    eth0 = [a for a in network["addresses"] if a["ifname"] == "eth0" and a["family"] == "inet"]
    assert eth0 == [
        {
            "ifname": "eth0",
            "family": "inet",
            "address": vm.ip,
            "prefixlen": gateway.network.prefixlen,
        }
    ]
    assert {"dst": "default", "gateway": str(gateway.ip), "dev": "eth0"} in network["routes"]

    assert vms.network.tap_state(vm.tap) == {"up": True, "master": vms.settings.bridge}

    with inside(hearth.namespace):
        with vms.agent(vm) as agent:
            assert agent.health()["status"] == "ok"
            assert agent.ping(str(gateway.ip))["ok"] is True
        assert httpx.get(f"http://{vm.ip}:8080/health", timeout=10).status_code == 401
        bad = {"Authorization": "Bearer not-the-token"}
        assert httpx.get(f"http://{vm.ip}:8080/health", headers=bad, timeout=10).status_code == 401
        greeting = wait_for(lambda: _rfb_greeting(vm.ip), timeout=60, what="the VNC greeting")
        assert greeting.startswith(b"RFB 003.")

    console = (vms.workdir(vm.id) / "console.log").read_text(errors="replace")
    assert f"hearth-net: configured eth0 {vm.ip}/{gateway.network.prefixlen}" in console
    assert "hearth-agent: listening on :8080" in console
    assert vm.agent_token not in console

    hearth("vm", "rm", vm.id)
    assert_nothing_left(hearth)
    assert vms.get(vm.id).state == VmState.destroyed


def test_a_crash_while_booting_is_repaired_by_the_next_start(hearth: Hearth):
    needs_image("cli")
    vms = hearth.manager()
    booting = hearth.popen("vm", "boot", "--image", "cli")
    # Kill it once the VMM runs: TAP, lease, directory and QEMU process all exist then.
    wait_for(lambda: vmm_processes(vms.settings.vms_dir), timeout=120, what="a QEMU process")
    os.kill(booting.pid, signal.SIGKILL)
    booting.wait()
    [vm] = vms.list()
    assert vm.state in (VmState.requested, VmState.booting)
    assert vms.network.taps() == [vm.tap]

    hearth("reconcile")
    assert_nothing_left(hearth)
    assert vms.get(vm.id).state == VmState.destroyed


def _kill_the_vmm_while_booting(vms, spared: set[int]) -> int:
    """End the VM's QEMU (started by the hearth command this test started) once it runs and
    before the agent answers, as a guest kernel dying while it boots would; its pid."""

    def started() -> list[int]:  # QEMU reported "running" and the VM recorded its pid
        running = set(vmm_processes(vms.settings.vms_dir)) - spared
        return [vm.pid for vm in vms.list() if vm.pid in running]

    [pid] = wait_for(started, timeout=120, what="a new QEMU process", interval=0.01)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_a_guest_that_dies_while_booting_is_booted_again_once(hearth: Hearth, tmp_path):
    needs_image("cli")
    vms = hearth.manager()
    log = tmp_path / "boot.log"
    booting = hearth.popen("vm", "boot", "--image", "cli", "--json", log=log)
    killed = _kill_the_vmm_while_booting(vms, set())
    assert booting.wait(timeout=300) == 0, log.read_text()
    [vm] = vms.list()
    assert vm.state == VmState.ready and vm.pid != killed
    console = (vms.workdir(vm.id) / "console.log").read_text(errors="replace")
    marker = "hearth: the VMM exited before the agent answered; booting again"
    assert console.count(marker) == 1
    assert "hearth-agent: listening on :8080" in console.split(marker)[1]
    with inside(hearth.namespace), vms.agent(vm) as agent:
        assert agent.health()["status"] == "ok"

    # Dying twice fails the create, and leaves nothing once the VM is removed.
    booting = hearth.popen("vm", "boot", "--image", "cli", log=log)
    first = _kill_the_vmm_while_booting(vms, {vm.pid})
    _kill_the_vmm_while_booting(vms, {vm.pid, first})
    assert booting.wait(timeout=300) != 0
    [failed] = [v for v in vms.list() if v.id != vm.id]
    assert failed.state == VmState.failed and failed.failed_step == "wait-for-agent"
    assert "exited before the agent answered" in failed.error
    hearth("vm", "rm", failed.id)
    hearth("vm", "rm", vm.id)
    assert_nothing_left(hearth)


def _rfb_greeting(ip: str) -> bytes | None:
    try:
        with socket.create_connection((ip, 5901), timeout=5) as s:
            return s.recv(12)
    except OSError:
        return None


def test_vms_reach_only_the_gateway_and_survive_a_restart_of_hearth(hearth: Hearth):
    needs_image("cli")
    first, second = (hearth.json("vm", "boot", "--image", "cli") for _ in range(2))
    vms = hearth.manager()
    gateway = str(vms.settings.gateway.ip)
    controller_side = str(next(vms.network.link.hosts()))
    with inside(hearth.namespace), vms.agent(vms.get(first["id"])) as agent:
        assert agent.ping(gateway)["ok"] is True
        assert agent.ping(second["ip"])["ok"] is False  # bridge port isolation
        assert agent.ping(controller_side)["ok"] is False  # nftables: nothing beyond

    report = hearth("reconcile").stdout
    assert first["id"] in report and second["id"] in report  # adopted, not destroyed
    assert {vm.id for vm in vms.list()} == {first["id"], second["id"]}
    with inside(hearth.namespace), vms.agent(vms.get(second["id"])) as agent:
        assert agent.health()["status"] == "ok"

    hearth("vm", "rm", first["id"], second["id"])
    assert_nothing_left(hearth)
