"""After a crash, make the world match the database: adopt what lives, remove what is orphaned.

A ready VM whose VMM still runs is adopted. A VM whose creating process died mid-boot, or
whose VMM is gone, is destroyed by its own (idempotent) destroy plan. Then anything with
Hearth's marks that no live VM owns goes: TAPs with Hearth's prefix, VMM processes running
from Hearth's VM directory, leases, directories.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hearth.core.vms import LIVE_STATES, VmManager
from hearth.store.models import VmState
from hearth.vmm.base import kill_pid, pid_alive, references


@dataclass
class Report:
    adopted: list[str] = field(default_factory=list)
    destroyed: list[str] = field(default_factory=list)
    taps: list[str] = field(default_factory=list)
    processes: list[int] = field(default_factory=list)
    leases: list[str] = field(default_factory=list)
    directories: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not any((self.destroyed, self.taps, self.processes, self.leases,
                        self.directories))


def reconcile(vms: VmManager) -> Report:
    report = Report()
    live: set[str] = set()
    for vm in vms.list():
        if vm.state not in LIVE_STATES:
            continue
        creator_alive = vm.owner_pid is not None and vm.owner_pid != os.getpid() and \
            pid_alive(vm.owner_pid)
        if vm.state in (VmState.requested, VmState.booting) and creator_alive:
            live.add(vm.id)  # still being created by another Hearth process
        elif vm.state == VmState.ready and vms.vmm_alive(vm):
            live.add(vm.id)
            report.adopted.append(vm.id)
        else:
            vms.destroy(vm.id)
            report.destroyed.append(vm.id)

    owned_taps = {vm.tap for vm in vms.list() if vm.id in live}
    for tap in vms.network.taps():
        if tap not in owned_taps:
            vms.network.remove_tap(tap)
            report.taps.append(tap)

    for pid in vmm_processes(vms.settings.vms_dir):
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
                shutil.rmtree(d, ignore_errors=True)
                report.directories.append(d.name)
    return report


VMM_PROGRAMS = ("qemu-system-x86_64", "firecracker", "jailer")


def vmm_processes(vms_dir: Path) -> list[int]:
    """VMM processes (QEMU or Firecracker) whose command line names Hearth's VM directory."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            program = os.path.basename(os.readlink(entry / "exe"))
        except OSError:
            continue
        pid = int(entry.name)
        if program in VMM_PROGRAMS and references(pid, vms_dir) and pid_alive(pid):
            pids.append(pid)
    return pids
