"""Hibernate and resume real VMs under QEMU, in a namespace the test owns.

A resumed guest is the same running system, not a new boot: its agent reports the uptime it
started at before the hibernation, and its network works at once from the configuration
inside the snapshot, even when the host's VM network had to be made again. A hibernation that
fails leaves the VM running. A process that dies part-way through a hibernate or a resume
leaves a VM that `hearth reconcile` brings back to hibernated or ready, with nothing leaked.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from hearth.core.reconciler import vmm_processes
from hearth.demo.sandbox import inside, nsenter
from hearth.store.models import Vm, VmState
from tests.e2e.conftest import Hearth, assert_nothing_left, needs_image

pytestmark = pytest.mark.vm


def test_a_resumed_vm_is_the_same_running_guest_and_destroy_leaves_nothing(hearth: Hearth):
    needs_image("cli")
    booted = hearth.json("vm", "boot", "--image", "cli")
    vms = hearth.manager()
    vm = vms.get(booted["id"])

    # A full disk: the hibernation fails, and the VM runs on as it was.
    partial = vms.workdir(vm.id) / "snapshot.migration.next"
    partial.symlink_to("/dev/full")
    failed = subprocess.run(
        hearth.argv("vm", "hibernate", vm.id),
        env=hearth.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert failed.returncode == 1
    after = vms.get(vm.id)
    assert after.state == VmState.ready and after.failed_step == "snapshot"
    assert "No space left on device" in after.error
    assert not vms.has_snapshot(after) and not partial.is_symlink()
    _assert_same_guest(hearth, vm.id, booted)

    for cycle in range(2):
        hearth("vm", "hibernate", vm.id)
        hibernated = vms.get(vm.id)
        assert hibernated.state == VmState.hibernated and hibernated.pid is None
        assert vmm_processes(vms.settings.vms_dir) == []
        assert vms.network.tap_state(vm.tap)["master"] == vms.settings.bridge
        assert vms.pool.leases() == {vm.id: vm.ip}
        assert vms.has_snapshot(hibernated)
        assert (vms.workdir(vm.id) / "snapshot.migration").stat().st_size > 0
        [listed] = hearth.json("vm", "ls")
        assert listed["state"] == VmState.hibernated
        if cycle:  # as a restart of the host would: the resume makes the network again
            vms.network.teardown()

        resumed = hearth.json("vm", "resume", vm.id)
        assert resumed["state"] == VmState.ready and resumed["resume_to_agent_seconds"] > 0
        assert not vms.has_snapshot(vms.get(vm.id))  # the guest runs on from it
        _assert_same_guest(hearth, vm.id, booted)

    hearth("vm", "rm", vm.id)
    assert_nothing_left(hearth)


def test_a_crash_at_any_point_is_repaired_by_reconcile(
    hearth: Hearth, monkeypatch: pytest.MonkeyPatch
):
    needs_image("cli")
    booted = hearth.json("vm", "boot", "--image", "cli")
    vms = hearth.manager()
    vm_id = booted["id"]

    # Hibernating, its VMM still running: the snapshot is taken.
    _crash_after(hearth, "hibernate", vm_id, "mark-hibernating")
    assert vms.get(vm_id).state == VmState.hibernating and vms.vmm_alive(vms.get(vm_id))
    _reconcile(hearth, vm_id, VmState.hibernated)

    # Restored, its agent not yet asked: the resume is finished.
    _crash_after(hearth, "resume", vm_id, "restore")
    assert vms.get(vm_id).state == VmState.resuming and vms.vmm_alive(vms.get(vm_id))
    _reconcile(hearth, vm_id, VmState.ready)
    _assert_same_guest(hearth, vm_id, booted)

    # Saved, but its QEMU not yet ended: the guest runs on and is saved again.
    driver = vms.drivers["qemu"]
    monkeypatch.setattr(driver, "stop", lambda spec: None)
    vms.db.update(Vm, vm_id, state=VmState.hibernating)
    driver.hibernate(vms.spec(vms.get(vm_id)))
    assert vms.vmm_alive(vms.get(vm_id)) and vms.has_snapshot(vms.get(vm_id))
    _reconcile(hearth, vm_id, VmState.hibernated)

    # Resuming with no VMM: back to hibernated, from where it resumes.
    _crash_after(hearth, "resume", vm_id, "mark-resuming")
    _reconcile(hearth, vm_id, VmState.hibernated)
    hearth("vm", "resume", vm_id)
    _assert_same_guest(hearth, vm_id, booted)

    # Snapshot written and VMM gone, not yet recorded: the hibernation is recorded.
    _crash_after(hearth, "hibernate", vm_id, "snapshot")
    assert vms.get(vm_id).state == VmState.hibernating and not vms.vmm_alive(vms.get(vm_id))
    _reconcile(hearth, vm_id, VmState.hibernated)

    hearth("vm", "rm", vm_id)
    assert_nothing_left(hearth)


def _assert_same_guest(hearth: Hearth, vm_id: str, booted: dict) -> None:
    """The agent answers from the process that answered at boot, on the same address."""
    vms = hearth.manager()
    vm = vms.get(vm_id)
    with inside(hearth.namespace), vms.agent(vm) as agent:
        health = agent.health()
        assert health["started_at_uptime"] == booted["agent"]["started_at_uptime"]
        assert health["hostname"] == booted["agent"]["hostname"]
        assert [
            a["address"]
            for a in health["network"]["addresses"]
            if a["ifname"] == "eth0" and a["family"] == "inet"
        ] == [vm.ip]
        assert agent.ping(str(vms.settings.gateway.ip))["ok"] is True


def _crash_after(hearth: Hearth, plan: str, vm_id: str, step: str) -> None:
    """Run a VM's plan up to and including `step` in a process that then ends, as a crash
    would end it."""
    code = (
        "from hearth.config import Settings\n"
        "from hearth.core import runtime, vm_plans\n"
        "from hearth.core.plans import run_plan\n"
        "vms = runtime.vm_manager(Settings())\n"
        f"run_plan(vm_plans.{plan}_plan().through({step!r}), vms, {vm_id!r})\n"
    )
    subprocess.run(
        [*nsenter(hearth.namespace), sys.executable, "-c", code],
        env=hearth.env,
        check=True,
        timeout=600,
    )


def _reconcile(hearth: Hearth, vm_id: str, state: VmState) -> None:
    """`hearth reconcile` repairs the VM to `state` and removes nothing it still holds."""
    report = hearth("reconcile").stdout
    vms = hearth.manager()
    vm = vms.get(vm_id)
    assert vm.state == state, report
    assert vms.network.taps() == [vm.tap]
    assert vms.pool.leases() == {vm_id: vm.ip}
    assert vms.vmm_alive(vm) == (state == VmState.ready)
    assert vms.has_snapshot(vm) == (state == VmState.hibernated)
    assert len(vmm_processes(vms.settings.vms_dir)) == (state == VmState.ready)
