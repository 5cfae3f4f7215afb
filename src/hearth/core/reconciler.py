"""After a crash, make the world match the database: adopt what lives, remove what is orphaned.

A ready VM whose VMM still runs is adopted, and so is a hibernated VM with its snapshot: it
runs no VMM but keeps its TAP, lease and directory. A VM left hibernating or resuming is
repaired to ready or hibernated where its own plans can get it there. A VM whose creating
process died mid-boot, or whose VMM is gone, is destroyed by its own (idempotent) destroy plan.
Then anything with Hearth's marks that no live VM owns goes: TAPs with Hearth's prefix, VMM
processes running from Hearth's VM directory, leases, directories.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hearth.core import webhooks
from hearth.core.machine import CONSOLE
from hearth.core.vms import LIVE_STATES, VmError, VmManager, busy_elsewhere
from hearth.store.models import Vm, VmState
from hearth.vmm.base import kill_pid, pid_alive, references
from hearth.vmm.firecracker import FirecrackerDriver
from hearth.vmm.qemu import QemuDriver


@dataclass
class Report:
    adopted: list[str] = field(default_factory=list)
    repaired: dict[str, str] = field(default_factory=dict)  # VM id -> the state it is now in
    destroyed: list[str] = field(default_factory=list)
    taps: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not any(
            (
                self.repaired,
                self.destroyed,
                self.taps,
                self.processes,
                self.leases,
                self.directories,
            )
        )


def reconcile(vms: VmManager) -> Report:
    report = Report()
    live: set[str] = set()
    for vm in vms.list():
        if vm.state not in LIVE_STATES:
            continue
        if busy_elsewhere(vm):
            live.add(vm.id)  # another Hearth process is running its plan
        elif (vm.state == VmState.ready and vms.vmm_alive(vm)) or (
            vm.state == VmState.hibernated and vms.has_snapshot(vm)
        ):
            live.add(vm.id)
            report.adopted.append(vm.id)
        elif vm.state in (VmState.hibernating, VmState.resuming) and (state := repair(vms, vm)) in (
            VmState.ready,
            VmState.hibernated,
        ):
            live.add(vm.id)
            report.repaired[vm.id] = state
        else:
            if vm.state == VmState.ready:  # its VMM is gone
                webhooks.vm_crashed(vms.db, vm)
            vms.destroy(vm.id)
            report.destroyed.append(vm.id)

    owned_taps = {vm.tap for vm in vms.list() if vm.id in live}
    for tap in vms.network.taps():
        if tap not in owned_taps:
            vms.network.remove_tap(tap)
            report.taps.append(tap)

    programs = tuple(p for driver in vms.drivers.values() for p in driver.programs)
    for pid in vmm_processes(vms.settings.vms_dir, programs):
        if not any(references(pid, vms.workdir(vm_id)) for vm_id in live):
            kill_pid(pid)
            report.processes.append(pid)

    for vm_id in vms.pool.leases():
        if vm_id not in live:
            vms.pool.release(vm_id)
            report.leases.append(vm_id)

    if vms.settings.vms_dir.is_dir():
        for d in vms.settings.vms_dir.iterdir():
            if d.is_dir() and d.name not in live:
                keep_console(vms, d)
                shutil.rmtree(d, ignore_errors=True)
                report.directories.append(d.name)
    return report


def keep_console(vms: VmManager, directory: Path) -> None:
    """Archive an orphaned directory's console log (a failed VM's error points to it)."""
    console = directory / CONSOLE
    if console.is_file():
        archive = vms.console_archive(directory.name)
        archive.parent.mkdir(parents=True, exist_ok=True)
        os.replace(console, archive)


def repair(vms: VmManager, vm: Vm) -> str:
    """Finish a hibernate or resume whose process died; the state the VM ends in.

    A hibernate is run again: it snapshots a VMM that still runs, or records the snapshot a
    VMM left before it ended. A resume is run again while its VMM runs; without one, or when
    the agent does not answer, the VM goes back to hibernated if its snapshot is whole.
    """
    try:
        if vm.state == VmState.hibernating:
            vms.hibernate(vm.id)
        elif vms.vmm_alive(vm):
            vms.resume(vm.id)
        else:
            vms.abandon_resume(vm.id)
    except VmError:
        pass  # the plan recorded its failure and the state it left
    return vms.get(vm.id).state


HOST_PROGRAMS = QemuDriver.programs + FirecrackerDriver.programs


def vmm_processes(vms_dir: Path, programs: tuple[str, ...] = HOST_PROGRAMS) -> list[int]:
    """VMM processes (by default QEMU's or Firecracker's) whose command line names Hearth's
    VM directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            program = os.path.basename(os.readlink(entry / "exe"))
        except OSError:
            continue
        pid = int(entry.name)
        if program in programs and references(pid, vms_dir) and pid_alive(pid):
            pids.append(pid)
    return pids
