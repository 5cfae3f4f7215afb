"""The VM plans, as named steps (see hearth.core.plans): create, hibernate, resume, destroy.

create: lease an address -> lay out the directory -> TAP -> boot -> agent ready -> CAs.
hibernate: mark hibernating -> snapshot (the VMM ends) -> record hibernated.
resume: mark resuming -> TAP -> restore the snapshot -> agent ready -> clock -> ready.
destroy: stop the VMM -> TAP -> lease -> console kept -> directory -> record destroyed.
Every step's `should_do` looks at the world (the record, the VMM, the TAP, the files), so a
plan run again after a crash between any two steps finishes the job instead of repeating it.
What to do when a step fails is the caller's (hearth.core.vms.VmManager).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from hearth.core import machine
from hearth.core.plans import Plan, Step
from hearth.net.addressing import mac_for
from hearth.store.models import Vm, VmState
from hearth.vmm.base import VmmError

if TYPE_CHECKING:
    from hearth.core.vms import VmManager


def create_plan(seed_extras: Mapping[str, str] | None = None) -> Plan:
    """Boot a recorded VM; `seed_extras` go into its seed beside the agent token."""
    extras = dict(seed_extras or {})

    def lay_out(vms: VmManager, vm: Vm) -> None:
        machine.lay_out(vms.spec(vm), vm.agent_token, extras)

    return Plan(
        "create",
        (
            Step("lease-address", no_address, lease_address),
            Step("lay-out-directory", not_laid_out, lay_out),
            PLUG,
            Step("boot", vmm_down, boot),
            Step("wait-for-agent", not_ready, wait_for_boot),
            Step("trust-cas", cas_to_trust, trust_cas),
            RECORD_READY,
        ),
    )


def hibernate_plan() -> Plan:
    """Snapshot a ready VM and end its VMM; it keeps its TAP, lease and directory."""
    return Plan(
        "hibernate",
        (
            mark(VmState.hibernating),
            # A live VMM's guest is newer than any snapshot beside it, so it is always taken.
            Step("snapshot", vmm_up, snapshot),
            Step("record-hibernated", not_hibernated, record_hibernated),
        ),
    )


def resume_plan() -> Plan:
    """Restore a hibernated VM until its agent answers with the clock set."""
    return Plan(
        "resume",
        (
            mark(VmState.resuming),
            # A host's restart takes the TAPs with it, and leaves hibernated VMs on disk.
            PLUG,
            Step("restore", snapshot_unrestored, restore),
            Step("wait-for-agent", not_ready, wait_for_agent),
            # The guest's clock stood still while it slept (tokens' expiry is judged by it).
            Step("set-clock", not_ready, set_clock),
            RECORD_READY,
        ),
    )


def destroy_plan() -> Plan:
    """Remove everything the VM holds; safe on a half-created VM and to repeat."""
    return Plan(
        "destroy",
        (
            Step("stop-vmm", vmm_up, stop_vmm),
            Step("remove-tap", tap_plugged, remove_tap),
            Step("release-address", address_leased, release_address),
            Step("keep-console", console_left, keep_console),
            Step("remove-directory", directory_left, remove_directory),
            Step("record-destroyed", not_destroyed, record_destroyed),
        ),
    )


# -- what is left to do (each step's should_do) -------------------------------------------


def not_ready(vms: VmManager, vm: Vm) -> bool:
    return vm.state != VmState.ready


def not_hibernated(vms: VmManager, vm: Vm) -> bool:
    return vm.state != VmState.hibernated


def not_destroyed(vms: VmManager, vm: Vm) -> bool:
    return vm.state != VmState.destroyed


def no_address(vms: VmManager, vm: Vm) -> bool:
    return vm.ip is None


def address_leased(vms: VmManager, vm: Vm) -> bool:
    return vm.id in vms.pool.leases()


def not_laid_out(vms: VmManager, vm: Vm) -> bool:
    return not machine.laid_out(vms.spec(vm))


def tap_plugged(vms: VmManager, vm: Vm) -> bool:
    return vms.network.tap_state(vm.tap) is not None


def tap_unplugged(vms: VmManager, vm: Vm) -> bool:
    return vms.network.tap_state(vm.tap) is None


def vmm_up(vms: VmManager, vm: Vm) -> bool:
    return vms.vmm_alive(vm)


def vmm_down(vms: VmManager, vm: Vm) -> bool:
    return not vms.vmm_alive(vm)


def snapshot_unrestored(vms: VmManager, vm: Vm) -> bool:
    """While the snapshot is there no guest runs on from it: a VMM beside it is one whose
    restore never finished, and is replaced."""
    return vms.has_snapshot(vm) or not vms.vmm_alive(vm)


def cas_to_trust(vms: VmManager, vm: Vm) -> bool:
    return bool(vms.settings.vm_ca_file) and not_ready(vms, vm)


def console_left(vms: VmManager, vm: Vm) -> bool:
    return _console(vms, vm).exists()


def directory_left(vms: VmManager, vm: Vm) -> bool:
    return vms.workdir(vm.id).exists()


# -- the steps ---------------------------------------------------------------------------


def lease_address(vms: VmManager, vm: Vm) -> None:
    ip = vms.pool.lease(vm.id)
    vms.update(vm.id, ip=ip, mac=mac_for(ip))


def release_address(vms: VmManager, vm: Vm) -> None:
    vms.pool.release(vm.id)


def plug(vms: VmManager, vm: Vm) -> None:
    vms.network.ensure()
    vms.network.add_tap(vm.tap, vm.mac, vm.ip)


def remove_tap(vms: VmManager, vm: Vm) -> None:
    vms.network.remove_tap(vm.tap)


def boot(vms: VmManager, vm: Vm) -> None:
    vms.update(vm.id, state=VmState.booting, boot_started=time.time())
    vms.start_vmm(vms.get(vm.id))


def wait_for_boot(vms: VmManager, vm: Vm) -> None:
    vms.wait_for_boot(vm.id)


def wait_for_agent(vms: VmManager, vm: Vm) -> None:
    vms.wait_for_agent(vm)


def trust_cas(vms: VmManager, vm: Vm) -> None:
    with vms.agent(vm) as agent:
        agent.put_trust(Path(vms.settings.vm_ca_file).read_text())


def snapshot(vms: VmManager, vm: Vm) -> None:
    vms.drivers[vm.vmm].hibernate(vms.spec(vm))


def record_hibernated(vms: VmManager, vm: Vm) -> None:
    if not vms.has_snapshot(vm):
        raise VmmError("the VMM is gone and left no complete snapshot")
    vms.update(vm.id, state=VmState.hibernated, pid=None)


def restore(vms: VmManager, vm: Vm) -> None:
    vms.stop_vmm(vm)
    vms.update(vm.id, boot_started=time.time())
    vms.update(vm.id, pid=vms.drivers[vm.vmm].restore(vms.spec(vm)))


def set_clock(vms: VmManager, vm: Vm) -> None:
    with vms.agent(vm) as agent:
        agent.set_clock(time.time())


def stop_vmm(vms: VmManager, vm: Vm) -> None:
    vms.stop_vmm(vm)


def keep_console(vms: VmManager, vm: Vm) -> None:
    archive = vms.console_archive(vm.id)
    archive.parent.mkdir(parents=True, exist_ok=True)
    os.replace(_console(vms, vm), archive)


def _console(vms: VmManager, vm: Vm) -> Path:
    return vms.workdir(vm.id) / machine.CONSOLE


def remove_directory(vms: VmManager, vm: Vm) -> None:
    shutil.rmtree(vms.workdir(vm.id))


def record_ready(vms: VmManager, vm: Vm) -> None:
    vms.update(vm.id, state=VmState.ready)


def record_destroyed(vms: VmManager, vm: Vm) -> None:
    vms.update(vm.id, state=VmState.destroyed, pid=None)


def mark(state: VmState) -> Step:
    """The step that puts the VM in `state`, owned by this process, forgetting the last
    attempt's failure."""

    def unmarked(vms: VmManager, vm: Vm) -> bool:
        return (vm.state, vm.owner_pid) != (state, os.getpid())

    def record(vms: VmManager, vm: Vm) -> None:
        vms.update(vm.id, state=state, owner_pid=os.getpid(), failed_step=None, error=None)

    return Step(f"mark-{state}", unmarked, record)


PLUG = Step("network", tap_unplugged, plug)
RECORD_READY = Step("record-ready", not_ready, record_ready)
