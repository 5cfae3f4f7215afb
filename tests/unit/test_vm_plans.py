"""The VM plans (hearth.core.vm_plans) run by VmManager on the core rig: each plan's happy
path and what it leaves behind, a crash between every pair of steps of every plan followed
by a re-run, the failure branches VmManager records, and the seed's extras.

Why: the plans promise that a re-run after a crash finishes the job instead of repeating it,
and that a failure leaves the VM in the state it implies. The rig's network and "VMM" (the
real guest agent as a local process) are real implementations of the ports, so what is
asserted here is the world they leave: the record, leases, TAPs, processes and files.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
from collections.abc import Callable

import pytest

from hearth.core import machine
from hearth.core.plans import Plan, run_plan
from hearth.core.vm_plans import create_plan, destroy_plan, hibernate_plan, resume_plan
from hearth.core.vms import VmError, VmManager, VmmExited
from hearth.store.models import VmState
from tests.core_rig import Rig

# -- looking at the world ----------------------------------------------------------------


def world(rig: Rig, vm_id: str) -> dict[str, object]:
    """What the VM holds, with its own id and TAP written as "it" so runs compare."""
    vm = rig.vms.get(vm_id)
    pids = rig.vm_processes()
    if not pids and vm.pid is None:
        vmm = None
    elif pids == [vm.pid]:
        vmm = "recorded"
    else:
        vmm = f"record says {vm.pid}, running: {pids}"
    return {
        "state": vm.state,
        "failed_step": vm.failed_step,
        "error": vm.error,
        "leases": ["it" if i == vm_id else i for i in sorted(rig.vms.pool.leases())],
        "taps": ["it" if t == vm.tap else t for t in rig.network.taps()],
        "vmm": vmm,
        "snapshot": rig.vms.has_snapshot(vm),
        "directory": rig.vms.workdir(vm_id).exists(),
        "console_archived": rig.vms.console_archive(vm_id).exists(),
        "boot_seconds": vm.boot_seconds is not None,
    }


def answers(rig: Rig, vm_id: str) -> bool:
    with rig.vms.agent(rig.vms.get(vm_id)) as agent:
        return agent.ready(timeout=2).status == "ok"


# -- the plans, their starting points and their operations --------------------------------

LIVE = {"state": VmState.ready, "failed_step": None, "error": None, "boot_seconds": True}
# The end state of a clean run of each plan (test_a_clean_run_of_each_plan_... checks it).
CLEAN_END: dict[str, dict[str, object]] = {
    "create": {
        **LIVE,
        "leases": ["it"],
        "taps": ["it"],
        "vmm": "recorded",
        "snapshot": False,
        "directory": True,
        "console_archived": False,
    },
    "hibernate": {
        **LIVE,
        "state": VmState.hibernated,
        "leases": ["it"],
        "taps": ["it"],
        "vmm": None,
        "snapshot": True,
        "directory": True,
        "console_archived": False,
    },
    "resume": {
        **LIVE,
        "leases": ["it"],
        "taps": ["it"],
        "vmm": "recorded",
        "snapshot": False,
        "directory": True,
        "console_archived": False,
    },
    "destroy": {
        **LIVE,
        "state": VmState.destroyed,
        "leases": [],
        "taps": [],
        "vmm": None,
        "snapshot": False,
        "directory": False,
        "console_archived": True,
    },
}

PLANS: dict[str, Callable[[], Plan]] = {
    "create": create_plan,
    "hibernate": hibernate_plan,
    "resume": resume_plan,
    "destroy": destroy_plan,
}

# Steps whose work, once done, a re-run must not do again.
ONCE = {
    "create": {"lease-address", "lay-out-directory", "network", "boot"},
    "hibernate": {"mark-hibernating", "snapshot"},
    "resume": {"mark-resuming", "network", "restore"},
    "destroy": {"stop-vmm", "remove-tap", "release-address", "keep-console", "remove-directory"},
}


def starting_point(rig: Rig, plan: str) -> str:
    """A VM in the state the plan starts from (as its VmManager operation leaves it just
    before running the plan); its id."""
    if plan == "create":
        return rig.vms.record("cli")
    vm_id = rig.vms.create("cli").id
    if plan == "resume":
        rig.vms.hibernate(vm_id)
    if plan == "destroy":
        rig.vms.update(vm_id, state=VmState.stopping)  # what destroy() does before its plan
    return vm_id


def operate(vms: VmManager, plan: str, vm_id: str, on_step: Callable[[str], None]) -> None:
    """The VmManager operation that runs (or finishes) `plan`."""
    if plan == "create":
        vms.finish_create(vm_id, on_step)
    elif plan == "hibernate":
        vms.hibernate(vm_id, on_step)
    elif plan == "resume":
        vms.resume(vm_id, on_step)
    else:
        vms.destroy(vm_id, on_step)


CRASH_POINTS = [
    pytest.param(plan, step, id=f"{plan}/{step}")
    for plan, make in PLANS.items()
    for step in make().step_names
]


# -- happy paths -------------------------------------------------------------------------


@pytest.mark.parametrize("plan", list(PLANS))
def test_a_clean_run_of_each_plan_leaves_its_end_state(rig: Rig, plan: str) -> None:
    vm_id = starting_point(rig, plan)
    if plan == "destroy":
        rig.vms.update(vm_id, state=VmState.ready)
    ran: list[str] = []
    operate(rig.vms, plan, vm_id, ran.append)
    assert world(rig, vm_id) == CLEAN_END[plan]
    # The rig has no CA file (trust-cas has nothing to do), and a hibernated VM keeps its
    # TAP (resume's network step has nothing to do).
    skipped = {"create": {"trust-cas"}, "resume": {"network"}}.get(plan, set())
    assert ran == [s for s in PLANS[plan]().step_names if s not in skipped]


def test_create_leaves_a_ready_vm_with_one_lease_tap_and_answering_agent(rig: Rig) -> None:
    vm = rig.vms.create("cli")

    assert vm.state == VmState.ready
    assert rig.vms.pool.leases() == {vm.id: vm.ip}
    assert rig.network.taps() == [vm.tap]
    assert rig.network.plugged[vm.tap] == (vm.mac, vm.ip)
    assert rig.vm_processes() == [vm.pid] == rig.vm_processes()
    assert rig.vms.vmm_alive(vm)
    assert answers(rig, vm.id)
    assert vm.boot_seconds is not None and 0 < vm.boot_seconds < rig.settings.boot_timeout


def test_create_writes_an_owner_only_seed_and_a_machine_json_without_secrets(
    rig: Rig,
) -> None:
    vm = rig.vms.create("cli")
    spec = rig.vms.spec(vm)

    assert stat.S_IMODE(os.stat(spec.seed).st_mode) == 0o600
    public = (spec.workdir / "machine.json").read_text()
    described = json.loads(public)
    assert described["vm_id"] == vm.id
    assert described["tap"] == vm.tap
    assert described["mac"] == vm.mac
    assert f"ip={vm.ip}:" in described["cmdline"]
    assert vm.agent_token not in public


def test_hibernate_keeps_tap_lease_and_snapshot_and_ends_the_vmm(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    rig.vms.hibernate(vm.id)
    after = rig.vms.get(vm.id)

    assert after.state == VmState.hibernated
    assert after.pid is None
    assert rig.vms.has_snapshot(after)
    assert not rig.vms.vmm_alive(after)
    assert rig.vm_processes() == [] == rig.vm_processes()
    assert rig.network.taps() == [vm.tap]
    assert rig.vms.pool.leases() == {vm.id: vm.ip}


def test_resume_consumes_the_snapshot_and_times_the_restore(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    rig.vms.hibernate(vm.id)
    rig.vms.update(vm.id, boot_seconds=None)  # so the resume's own timing is what is seen

    resumed = rig.vms.resume(vm.id)

    assert resumed.state == VmState.ready
    assert not rig.vms.has_snapshot(resumed)
    assert resumed.boot_seconds is not None and resumed.boot_seconds > 0
    assert resumed.ip == vm.ip and resumed.tap == vm.tap
    assert rig.vm_processes() == [resumed.pid] == rig.vm_processes()
    assert resumed.pid != vm.pid
    assert answers(rig, vm.id)


def test_destroy_removes_everything_and_archives_the_console(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    rig.vms.destroy(vm.id)
    after = rig.vms.get(vm.id)

    assert after.state == VmState.destroyed
    assert after.pid is None
    assert rig.vms.pool.leases() == {}
    assert rig.network.taps() == []
    assert rig.vm_processes() == []
    assert not rig.vms.workdir(vm.id).exists()
    assert "listening" in rig.vms.console_archive(vm.id).read_text()


# -- a crash between any two steps, then the plan again ----------------------------------


@pytest.mark.parametrize(("plan", "step"), CRASH_POINTS)
def test_a_crash_after_the_step_then_a_rerun_ends_as_a_clean_run_with_nothing_doubled(
    rig: Rig, plan: str, step: str
) -> None:
    vm_id = starting_point(rig, plan)
    whole = PLANS[plan]()

    run_plan(whole.through(step), rig.vms, vm_id)  # the process dies right after `step`
    if step != whole.step_names[-1]:  # every plan's last step records its end state
        assert rig.vms.get(vm_id).state != CLEAN_END[plan]["state"]

    ran: list[str] = []
    operate(rig.vms, plan, vm_id, ran.append)

    assert world(rig, vm_id) == CLEAN_END[plan]
    done = set(whole.step_names[: whole.step_names.index(step) + 1])
    assert not (set(ran) & done & ONCE[plan]), f"the re-run did again: {ran}"
    if CLEAN_END[plan]["state"] == VmState.ready:
        assert answers(rig, vm_id)


# -- failures ----------------------------------------------------------------------------


def test_a_vmm_that_refuses_to_start_fails_the_create_at_boot_and_destroy_cleans_up(
    rig: Rig,
) -> None:
    rig.driver.failing.add("start")

    with pytest.raises(VmError, match="boot"):
        rig.vms.create("cli")

    (vm,) = rig.vms.list()
    assert vm.state == VmState.failed
    assert vm.failed_step == "boot"
    assert "refused to start" in vm.error
    assert rig.vm_processes() == []
    assert rig.network.taps() == [vm.tap]  # what the failed create got is still held...

    rig.vms.destroy(vm.id)

    assert rig.vms.get(vm.id).state == VmState.destroyed
    assert rig.vms.pool.leases() == {}
    assert rig.network.taps() == []
    assert not rig.vms.workdir(vm.id).exists()


def test_a_guest_that_dies_once_while_booting_is_booted_again_and_comes_up(rig: Rig) -> None:
    rig.driver.dying_boots = 1

    vm = rig.vms.create("cli")

    assert vm.state == VmState.ready
    assert vm.failed_step is None
    assert answers(rig, vm.id)
    assert rig.vm_processes() == [vm.pid]
    console = (rig.vms.workdir(vm.id) / machine.CONSOLE).read_text()
    assert "booting again" in console
    assert rig.driver.dying_boots == 0


def test_a_guest_that_dies_on_both_boots_fails_with_the_vmm_exited_cause(rig: Rig) -> None:
    rig.driver.dying_boots = 2

    with pytest.raises(VmError) as raised:
        rig.vms.create("cli")

    assert isinstance(raised.value.__cause__.cause, VmmExited)
    (vm,) = rig.vms.list()
    assert vm.state == VmState.failed
    assert vm.failed_step == "wait-for-agent"
    assert "exited before the agent answered" in vm.error
    assert rig.vm_processes() == []
    assert "booting again" in (rig.vms.workdir(vm.id) / machine.CONSOLE).read_text()


def test_a_snapshot_that_fails_leaves_the_vm_ready_and_its_agent_answering(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    rig.driver.failing.add("hibernate")

    with pytest.raises(VmError, match="snapshot"):
        rig.vms.hibernate(vm.id)

    after = rig.vms.get(vm.id)
    assert after.state == VmState.ready
    assert after.failed_step == "snapshot"
    assert not rig.vms.has_snapshot(after)
    assert rig.vm_processes() == [vm.pid]
    assert answers(rig, vm.id)

    rig.vms.hibernate(vm.id)  # the VMM refuses only once
    assert rig.vms.get(vm.id).state == VmState.hibernated


def test_a_restore_that_fails_leaves_the_vm_hibernated_with_its_snapshot_then_resumes(
    rig: Rig,
) -> None:
    vm = rig.vms.create("cli")
    rig.vms.hibernate(vm.id)
    rig.driver.failing.add("restore")

    with pytest.raises(VmError, match="restore"):
        rig.vms.resume(vm.id)

    after = rig.vms.get(vm.id)
    assert after.state == VmState.hibernated
    assert after.failed_step == "restore"
    assert after.pid is None
    assert rig.vms.has_snapshot(after)
    assert rig.vm_processes() == []
    assert rig.network.taps() == [vm.tap]
    assert rig.vms.pool.leases() == {vm.id: vm.ip}

    resumed = rig.vms.resume(vm.id)

    assert resumed.state == VmState.ready
    assert resumed.failed_step is None and resumed.error is None
    assert answers(rig, vm.id)


def test_a_guest_that_dies_while_resuming_fails_the_vm_as_its_snapshot_is_consumed(
    rig: Rig,
) -> None:
    vm = rig.vms.create("cli")
    rig.vms.hibernate(vm.id)
    rig.driver.dying_boots = 1  # the restored guest ends at once (a resume is not retried)

    with pytest.raises(VmError) as raised:
        rig.vms.resume(vm.id)

    assert isinstance(raised.value.__cause__.cause, VmmExited)
    after = rig.vms.get(vm.id)
    assert after.state == VmState.failed
    assert after.failed_step == "wait-for-agent"
    assert after.pid is None
    assert not rig.vms.has_snapshot(after)
    assert rig.vm_processes() == []

    rig.vms.destroy(vm.id)
    assert world(rig, vm.id)["leases"] == world(rig, vm.id)["taps"] == []
    assert not rig.vms.workdir(vm.id).exists()


def test_resume_and_hibernate_refuse_a_vm_in_the_wrong_state(rig: Rig) -> None:
    rig.driver.failing.add("start")
    with pytest.raises(VmError):
        rig.vms.create("cli")
    (failed,) = rig.vms.list()

    with pytest.raises(VmError, match="is failed, not hibernated or resuming"):
        rig.vms.resume(failed.id)
    with pytest.raises(VmError, match="is failed, not ready or hibernating"):
        rig.vms.hibernate(failed.id)
    assert rig.vms.get(failed.id).state == VmState.failed

    rig.vms.destroy(failed.id)
    with pytest.raises(VmError, match="is destroyed"):
        rig.vms.resume(failed.id)
    with pytest.raises(VmError, match="is destroyed"):
        rig.vms.hibernate(failed.id)


def test_resume_of_a_ready_vm_and_hibernate_of_a_hibernated_one_do_nothing(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    ran: list[str] = []

    assert rig.vms.resume(vm.id, ran.append).pid == vm.pid
    rig.vms.hibernate(vm.id)
    rig.vms.hibernate(vm.id, ran.append)

    assert ran == []
    assert rig.vms.get(vm.id).state == VmState.hibernated


def test_destroy_twice_is_the_same_as_once(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    rig.vms.destroy(vm.id)
    once = world(rig, vm.id)
    archived = rig.vms.console_archive(vm.id).read_text()

    ran: list[str] = []
    rig.vms.destroy(vm.id, ran.append)

    assert world(rig, vm.id) == once == CLEAN_END["destroy"]
    assert ran == ["record-destroyed"]  # only the record: there was nothing left to remove
    assert rig.vms.console_archive(vm.id).read_text() == archived


def test_two_destroys_at_once_in_one_process_both_end_with_nothing_left(rig: Rig) -> None:
    """A sign-in's cleanup and an API destroy, say: one plan at a time per VM."""
    vm = rig.vms.create("cli")
    errors: list[BaseException] = []

    def destroy() -> None:
        try:
            rig.vms.destroy(vm.id)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=destroy) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert world(rig, vm.id) == CLEAN_END["destroy"]


def test_destroy_is_refused_while_another_live_hearth_process_runs_a_plan(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    other = subprocess.Popen(["sleep", "60"])
    try:
        rig.vms.update(vm.id, state=VmState.booting, owner_pid=other.pid)
        with pytest.raises(VmError, match=f"booting in Hearth process {other.pid}"):
            rig.vms.destroy(vm.id)
        assert rig.vms.vmm_alive(rig.vms.get(vm.id))  # nothing was touched
    finally:
        other.kill()
        other.wait()
    rig.vms.destroy(vm.id)  # its owner gone, the VM is anyone's to destroy
    assert world(rig, vm.id) == CLEAN_END["destroy"]


def test_destroy_of_a_hibernated_vm_removes_its_snapshot_tap_and_lease(rig: Rig) -> None:
    vm = rig.vms.create("cli")
    rig.vms.hibernate(vm.id)

    rig.vms.destroy(vm.id)

    assert world(rig, vm.id) == CLEAN_END["destroy"]


# -- the seed ----------------------------------------------------------------------------


def test_seed_extras_go_into_the_seed_beside_the_agent_token(rig: Rig) -> None:
    vm = rig.vms.create("browser", seed_extras={"vnc_password": "abcdefgh"})

    assert machine.seed_of(rig.settings, vm.id) == {
        "vnc_password": "abcdefgh",
        "agent_token": vm.agent_token,
    }
    assert "abcdefgh" not in (rig.vms.workdir(vm.id) / "machine.json").read_text()


def test_a_cli_vm_seed_holds_only_the_agent_token(rig: Rig) -> None:
    vm = rig.vms.create("cli")

    assert machine.seed_of(rig.settings, vm.id) == {"agent_token": vm.agent_token}
