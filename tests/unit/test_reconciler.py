"""reconcile() (hearth.core.reconciler) after a crash, on the core rig: every branch of its
VM loop (adopt, repair, destroy, leave alone a VM another live Hearth process works on) and
each kind of orphan it removes (TAP, VMM process, lease, directory), then that a second
reconcile right after finds nothing to do.

Why: reconcile is what runs after Hearth dies mid-plan; it must keep what lives, finish
what its plans can finish, and remove only what nothing owns. Records are set up as a
crashed process leaves them: a plan run only partway (Plan.through), and rig.vms.update for
the owner's pid; the network, processes and files are the rig's real ones.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.core import machine
from hearth.core.plans import run_plan
from hearth.core.reconciler import Report, reconcile
from hearth.core.vm_plans import create_plan, hibernate_plan, resume_plan
from hearth.core.vms import VmError
from hearth.net.addressing import mac_for
from hearth.store.models import Vm, VmState
from hearth.vmm.base import kill_pid, pid_alive
from hearth.waiting import wait_for
from tests.core_rig import Rig

# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has ended (a Hearth process that died)."""
    process = subprocess.Popen(["true"])
    process.wait()
    assert not pid_alive(process.pid)
    return process.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a live process this test started (another Hearth process at work)."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def answers(rig: Rig, vm: Vm) -> bool:
    with rig.vms.agent(vm) as agent:
        return agent.ready(timeout=2).status == "ok"


def assert_gone(rig: Rig, vm: Vm) -> None:
    """The VM is destroyed and holds nothing."""
    assert rig.vms.get(vm.id).state == VmState.destroyed
    assert vm.tap not in rig.network.taps()
    assert vm.id not in rig.vms.pool.leases()
    assert not rig.vms.workdir(vm.id).exists()
    assert not any(str(rig.vms.workdir(vm.id)) in cmdline(pid) for pid in rig.vm_processes())


def assert_holds_its_things(rig: Rig, vm: Vm) -> None:
    """The VM still has its TAP, lease and directory."""
    assert vm.tap in rig.network.taps()
    assert rig.vms.pool.leases()[vm.id] == vm.ip
    assert rig.vms.workdir(vm.id).is_dir()


def stop_if_still_its_vmm(rig: Rig, vm: Vm) -> None:
    if vm.pid is not None and str(rig.vms.workdir(vm.id)) in cmdline(vm.pid):
        kill_pid(vm.pid)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def crashed_create(rig: Rig, through: str, owner_pid: int) -> Vm:
    """A VM whose creating process, `owner_pid`, died right after the step `through`."""
    vm_id = rig.vms.record("cli")
    run_plan(create_plan().through(through), rig.vms, vm_id)
    rig.vms.update(vm_id, owner_pid=owner_pid)
    return rig.vms.get(vm_id)


def second_reconcile_is_empty(rig: Rig) -> None:
    again = reconcile(rig.vms)
    assert again.empty(), again


# -- the VM loop: adopt ------------------------------------------------------------------


def test_a_ready_vm_with_a_live_vmm_is_adopted_and_keeps_everything(rig: Rig) -> None:
    vm = rig.vms.create("cli")

    report = reconcile(rig.vms)

    assert report == Report(adopted=[vm.id])
    assert report.empty()  # adopting is no repair
    assert rig.vms.get(vm.id).state == VmState.ready
    assert rig.vm_processes() == [vm.pid]
    assert_holds_its_things(rig, vm)
    assert answers(rig, vm)
    second_reconcile_is_empty(rig)


def test_a_hibernated_vm_with_its_snapshot_is_adopted_and_can_resume(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    rig.vms.hibernate(vm.id)

    report = reconcile(rig.vms)

    assert report == Report(adopted=[vm.id])
    assert rig.vms.get(vm.id).state == VmState.hibernated
    assert rig.vms.has_snapshot(vm)
    assert_holds_its_things(rig, vm)
    second_reconcile_is_empty(rig)
    assert rig.vms.resume(vm.id).state == VmState.ready


# -- the VM loop: destroy ----------------------------------------------------------------


def test_a_ready_vm_whose_vmm_died_is_destroyed(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    kill_pid(vm.pid)  # the guest crashed; its pid file stays

    report = reconcile(rig.vms)

    assert report == Report(destroyed=[vm.id])
    assert_gone(rig, vm)
    assert rig.vms.console_archive(vm.id).exists()
    second_reconcile_is_empty(rig)


def test_a_hibernated_vm_without_its_snapshot_is_destroyed(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    rig.vms.hibernate(vm.id)
    (rig.vms.workdir(vm.id) / "snapshot.json").unlink()  # the rig driver's snapshot file
    assert not rig.vms.has_snapshot(vm)

    report = reconcile(rig.vms)

    assert report == Report(destroyed=[vm.id])
    assert_gone(rig, vm)
    second_reconcile_is_empty(rig)


def test_a_vm_left_booting_by_a_dead_owner_is_destroyed_with_its_vmm(
    rig: Rig, dead_pid: int
) -> None:
    vm = crashed_create(rig, "boot", dead_pid)
    assert vm.state == VmState.booting and rig.vms.vmm_alive(vm)

    report = reconcile(rig.vms)

    assert report == Report(destroyed=[vm.id])
    assert rig.vm_processes() == []
    assert_gone(rig, vm)
    second_reconcile_is_empty(rig)


def test_a_vm_left_requested_by_a_dead_owner_is_destroyed(rig: Rig, dead_pid: int) -> None:
    vm = crashed_create(rig, "network", dead_pid)  # leased, laid out, plugged, not booted
    assert vm.state == VmState.requested
    assert_holds_its_things(rig, vm)

    report = reconcile(rig.vms)

    assert report == Report(destroyed=[vm.id])
    assert_gone(rig, vm)
    second_reconcile_is_empty(rig)


def test_a_vm_left_stopping_by_a_crashed_destroy_is_destroyed(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    rig.vms.update(vm.id, state=VmState.stopping)  # destroy() died before its plan ran

    report = reconcile(rig.vms)

    assert report == Report(destroyed=[vm.id])
    assert_gone(rig, vm)
    second_reconcile_is_empty(rig)


# -- the VM loop: another live Hearth process's VM ---------------------------------------


def test_a_vm_booting_in_another_live_hearth_process_is_left_alone(rig: Rig, live_pid: int) -> None:
    vm = crashed_create(rig, "boot", live_pid)

    report = reconcile(rig.vms)

    assert report == Report()  # neither adopted nor touched
    after = rig.vms.get(vm.id)
    assert (after.state, after.owner_pid) == (VmState.booting, live_pid)
    assert rig.vm_processes() == [vm.pid]
    assert_holds_its_things(rig, vm)


# -- the VM loop: repair -----------------------------------------------------------------


def test_a_vm_left_hibernating_with_a_live_vmm_is_repaired_to_hibernated(
    rig: Rig, dead_pid: int
) -> None:
    vm = rig.vms.create("cli")
    run_plan(hibernate_plan().through("mark-hibernating"), rig.vms, vm.id)
    rig.vms.update(vm.id, owner_pid=dead_pid)
    assert rig.vms.vmm_alive(vm)

    report = reconcile(rig.vms)

    assert report == Report(repaired={vm.id: VmState.hibernated})
    assert rig.vms.get(vm.id).state == VmState.hibernated
    assert rig.vms.has_snapshot(vm)
    assert rig.vm_processes() == []
    assert_holds_its_things(rig, vm)
    second_reconcile_is_empty(rig)


def test_a_vm_left_hibernating_whose_vmm_left_a_snapshot_is_repaired_to_hibernated(
    rig: Rig, dead_pid: int
) -> None:
    vm = rig.vms.create("cli")
    run_plan(hibernate_plan().through("snapshot"), rig.vms, vm.id)
    rig.vms.update(vm.id, owner_pid=dead_pid)
    assert not rig.vms.vmm_alive(vm)

    report = reconcile(rig.vms)

    assert report == Report(repaired={vm.id: VmState.hibernated})
    assert rig.vms.get(vm.id).state == VmState.hibernated
    assert rig.vms.has_snapshot(vm)
    assert_holds_its_things(rig, vm)
    second_reconcile_is_empty(rig)
    assert rig.vms.resume(vm.id).state == VmState.ready


def test_a_vm_left_hibernating_with_no_vmm_and_no_snapshot_is_destroyed(
    rig: Rig, dead_pid: int
) -> None:
    vm = rig.vms.create("cli")
    run_plan(hibernate_plan().through("mark-hibernating"), rig.vms, vm.id)
    rig.vms.update(vm.id, owner_pid=dead_pid)
    kill_pid(vm.pid)  # the VMM died before it snapshotted

    report = reconcile(rig.vms)

    assert report == Report(destroyed=[vm.id])
    assert_gone(rig, vm)
    assert rig.vms.get(vm.id).failed_step == "record-hibernated"  # the repair's failure
    second_reconcile_is_empty(rig)


def test_a_vm_left_resuming_with_a_live_vmm_is_repaired_to_ready(rig: Rig, dead_pid: int) -> None:
    vm = rig.vms.create("cli")
    rig.vms.hibernate(vm.id)
    run_plan(resume_plan().through("restore"), rig.vms, vm.id)
    rig.vms.update(vm.id, owner_pid=dead_pid)
    restored = rig.vms.get(vm.id)
    assert rig.vms.vmm_alive(restored) and not rig.vms.has_snapshot(restored)

    report = reconcile(rig.vms)

    assert report == Report(repaired={vm.id: VmState.ready})
    after = rig.vms.get(vm.id)
    assert after.state == VmState.ready
    assert rig.vm_processes() == [restored.pid] == [after.pid]  # the same VMM, not another
    assert_holds_its_things(rig, vm)
    assert answers(rig, after)
    second_reconcile_is_empty(rig)


def test_a_vm_left_resuming_with_a_half_restored_vmm_beside_its_snapshot_is_restored_afresh(
    rig: Rig, dead_pid: int
) -> None:
    vm = rig.vms.create("cli")
    rig.vms.hibernate(vm.id)
    run_plan(resume_plan().through("network"), rig.vms, vm.id)
    # The restore had spawned its VMM but not consumed the snapshot when Hearth died.
    half = rig.driver.start(rig.vms.spec(vm))
    rig.vms.update(vm.id, owner_pid=dead_pid, pid=half)
    assert rig.vms.has_snapshot(vm)

    report = reconcile(rig.vms)

    assert report == Report(repaired={vm.id: VmState.ready})
    after = rig.vms.get(vm.id)
    assert after.state == VmState.ready
    assert not pid_alive(half)
    assert rig.vm_processes() == [after.pid] != [half]
    assert not rig.vms.has_snapshot(after)
    assert answers(rig, after)
    second_reconcile_is_empty(rig)


def test_a_vm_left_resuming_without_a_vmm_but_with_its_snapshot_goes_back_to_hibernated(
    rig: Rig, dead_pid: int
) -> None:
    vm = rig.vms.create("cli")
    rig.vms.hibernate(vm.id)
    run_plan(resume_plan().through("network"), rig.vms, vm.id)
    rig.vms.update(vm.id, owner_pid=dead_pid)

    report = reconcile(rig.vms)

    assert report == Report(repaired={vm.id: VmState.hibernated})
    assert rig.vms.get(vm.id).state == VmState.hibernated
    assert rig.vms.has_snapshot(vm)
    assert rig.vm_processes() == []
    assert_holds_its_things(rig, vm)
    second_reconcile_is_empty(rig)
    assert rig.vms.resume(vm.id).state == VmState.ready


def test_a_vm_left_resuming_without_a_vmm_or_a_snapshot_is_destroyed(
    rig: Rig, dead_pid: int
) -> None:
    vm = rig.vms.create("cli")
    rig.vms.hibernate(vm.id)
    run_plan(resume_plan().through("restore"), rig.vms, vm.id)  # the snapshot is consumed
    rig.vms.update(vm.id, owner_pid=dead_pid)
    kill_pid(rig.vms.get(vm.id).pid)  # and the restored guest died

    report = reconcile(rig.vms)

    assert report == Report(destroyed=[vm.id])  # abandon_resume failed it, then destroy
    assert_gone(rig, vm)
    second_reconcile_is_empty(rig)


# -- orphans -----------------------------------------------------------------------------


def test_a_tap_no_vm_owns_is_removed_and_reported(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    rig.network.add_tap("hthorphan0", "02:00:00:00:00:01", "127.0.0.250")

    report = reconcile(rig.vms)

    assert report == Report(adopted=[vm.id], taps=["hthorphan0"])
    assert rig.network.taps() == [vm.tap]
    second_reconcile_is_empty(rig)


def test_a_vmm_process_running_from_the_vms_directory_that_no_vm_owns_is_killed(
    rig: Rig,
) -> None:
    vm = rig.vms.create("cli")
    ghost = Vm(
        id="ghost0000000",
        image="cli",
        vmm=rig.driver.name,
        tap="hthghost",
        netns="",
        ip=str(rig.settings.gateway.network[250]),
        agent_token="ghost-token",
    )
    ghost.mac = mac_for(ghost.ip)
    spec = machine.machine_spec(rig.settings, ghost)
    machine.lay_out(spec, ghost.agent_token, {})
    pid = rig.driver.start(spec)
    try:
        wait_for(lambda: pid in rig.vm_processes(), 5, "the orphan agent to exec")

        report = reconcile(rig.vms)

        assert report == Report(adopted=[vm.id], processes=[pid], directories=[ghost.id])
        assert not pid_alive(pid)
        assert rig.vm_processes() == [vm.pid]
        assert answers(rig, vm)
        second_reconcile_is_empty(rig)
    finally:
        if str(spec.workdir) in cmdline(pid):  # reconcile did not end it
            kill_pid(pid)


def test_a_lease_no_live_vm_holds_is_released_and_reported(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    # A lease's VM must exist (a foreign key): a record that is no longer live.
    stale = rig.vms.record("cli")
    rig.vms.pool.lease(stale)
    rig.vms.update(stale, state=VmState.destroyed)

    report = reconcile(rig.vms)

    assert report == Report(adopted=[vm.id], leases=[stale])
    assert rig.vms.pool.leases() == {vm.id: vm.ip}
    second_reconcile_is_empty(rig)


def test_a_directory_no_vm_owns_is_removed_and_reported(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    stray = rig.settings.vms_dir / "stray"
    (stray / "sub").mkdir(parents=True)
    (stray / "sub" / "file").write_text("left behind")
    (rig.settings.vms_dir / "not-a-directory").write_text("kept")

    report = reconcile(rig.vms)

    assert report == Report(adopted=[vm.id], directories=["stray"])
    assert not stray.exists()
    assert (rig.settings.vms_dir / "not-a-directory").exists()  # only directories go
    assert rig.vms.workdir(vm.id).is_dir()
    second_reconcile_is_empty(rig)


def test_everything_of_a_vm_whose_record_was_marked_destroyed_is_removed_as_orphans(
    rig: Rig, request: pytest.FixtureRequest
) -> None:
    kept = rig.vms.create("cli")
    lost = rig.vms.create("cli")
    rig.vms.update(lost.id, state=VmState.destroyed)  # the record no longer owns anything
    # The rig's teardown no longer sees it: end it here if reconcile did not.
    request.addfinalizer(lambda: stop_if_still_its_vmm(rig, lost))

    report = reconcile(rig.vms)

    assert report == Report(
        adopted=[kept.id],
        taps=[lost.tap],
        processes=[lost.pid],
        leases=[lost.id],
        directories=[lost.id],
    )
    assert rig.vm_processes() == [kept.pid]
    assert rig.network.taps() == [kept.tap]
    assert rig.vms.pool.leases() == {kept.id: kept.ip}
    assert sorted(p.name for p in rig.settings.vms_dir.iterdir()) == [kept.id]
    assert answers(rig, kept)
    second_reconcile_is_empty(rig)


def test_a_failed_vms_leftovers_are_removed_as_orphans_its_console_kept_its_record_failed(
    rig: Rig,
) -> None:
    """A failed VM is not live, so its TAP, lease and directory go as orphans; the console
    log its error points to is archived first."""
    rig.driver.dying_boots = 2
    with pytest.raises(VmError, match="exited before the agent answered"):
        rig.vms.create("cli")
    (failed,) = rig.vms.list()

    report = reconcile(rig.vms)

    assert report == Report(taps=[failed.tap], leases=[failed.id], directories=[failed.id])
    assert rig.vms.get(failed.id).state == VmState.failed
    assert "booting again" in rig.vms.console_archive(failed.id).read_text()
    second_reconcile_is_empty(rig)


def test_a_mixed_crash_is_sorted_out_in_one_reconcile_then_nothing_is_left_to_do(
    rig: Rig, dead_pid: int
) -> None:
    ready = rig.vms.create("cli")
    hibernated = rig.vms.create("cli")
    rig.vms.hibernate(hibernated.id)
    hibernating = rig.vms.create("cli")
    run_plan(hibernate_plan().through("mark-hibernating"), rig.vms, hibernating.id)
    rig.vms.update(hibernating.id, owner_pid=dead_pid)
    booting = crashed_create(rig, "boot", dead_pid)
    rig.network.add_tap("hthorphan1", "02:00:00:00:00:02", "127.0.0.251")
    (rig.settings.vms_dir / "stray").mkdir()

    report = reconcile(rig.vms)

    assert report == Report(
        adopted=[ready.id, hibernated.id],
        repaired={hibernating.id: VmState.hibernated},
        destroyed=[booting.id],
        taps=["hthorphan1"],
        directories=["stray"],
    )
    assert rig.vm_processes() == [ready.pid]
    assert sorted(rig.network.taps()) == sorted([ready.tap, hibernated.tap, hibernating.tap])
    assert sorted(rig.vms.pool.leases()) == sorted([ready.id, hibernated.id, hibernating.id])
    assert_gone(rig, booting)
    second_reconcile_is_empty(rig)
