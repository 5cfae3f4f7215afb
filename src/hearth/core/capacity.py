"""Capacity: how much of the host running VMs may take, and admission against it.

A running VM costs its guest memory plus its VMM's own, which each driver states
(hearth.vmm.base.Driver.own_memory_mib, measured where the driver says).
Admission reserves that cost before a VM boots or resumes, against a memory budget and a
maximum count of running VMs, under one lock. What runs is counted from the database (so a
restart recounts); a reservation in memory covers the time between admission and the VM's
record or resume, and a VM the database already counts is not counted twice. Hibernated,
failed and destroyed VMs cost nothing.

How a part uses it (sign-ins, CLI VMs, the warm pool alike): `reserve` (or `try_reserve`)
before the VM exists or wakes; `record` to create the VM's record on the reservation (or
`bind` it to a hibernated VM about to resume); `release` once the VM is recorded, resumed,
or given up. The VM's destroy or hibernate frees its room by itself (VmManager tells
`freed`), and whoever waits for room (the sign-in queue) is told.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from hearth.config import Settings
from hearth.core import CoreError
from hearth.core.vms import VmManager
from hearth.store.models import Vm, VmState
from hearth.vmm.qemu import QEMU_DEFAULT_TB_MIB, QEMU_OWN_MIB

log = logging.getLogger(__name__)

# The states in which a VM's VMM runs and holds its memory.
RUNNING_STATES = (
    VmState.requested,
    VmState.booting,
    VmState.ready,
    VmState.hibernating,
    VmState.resuming,
    VmState.stopping,
)
# A VM whose VMM has no driver here (recorded under another one) is taken to cost what the
# costliest VMM does: QEMU under TCG with its uncapped translation cache (hearth.vmm.qemu).
UNMEASURED_VMM_MIB = QEMU_OWN_MIB + QEMU_DEFAULT_TB_MIB
# The host keeps this much for itself, the controller and the page cache of the images
# every VM reads: 2 GiB or a fifth of its RAM, whichever is more.
HOST_RESERVE_MIN_MIB = 2048
HOST_RESERVE_SHARE = 0.2
MEMINFO = Path("/proc/meminfo")
# What Retry-After says when no VM can be had: about the time a sign-in takes to free its VM
# under emulation, and a CLI VM's idle minutes are longer still; clients poll, not storm.
RETRY_AFTER_SECONDS = 30


class NoCapacity(CoreError):
    """No VM can be had now: the memory budget or the VM count is used up."""

    http_status = 503

    def __init__(self, message: str, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class VmCost:
    """What one running VM takes from the host."""

    guest_mib: int
    vmm_mib: int

    @property
    def total_mib(self) -> int:
        return self.guest_mib + self.vmm_mib


@dataclass(frozen=True)
class Usage:
    """What the running VMs and the reservations take now, against the limits."""

    vms: int
    memory_mib: int
    max_vms: int
    budget_mib: int

    def fits(self, cost: VmCost) -> bool:
        return self.vms < self.max_vms and self.memory_mib + cost.total_mib <= self.budget_mib

    def describe(self) -> str:
        return (
            f"{self.vms} of {self.max_vms} VMs run, {self.memory_mib} of "
            f"{self.budget_mib} MiB of VM memory are taken"
        )


@dataclass(eq=False)
class Reservation:
    """Room for one VM, held until released; `vm_id` once it is that VM's."""

    image: str
    cost: VmCost
    vm_id: str | None = None


def meminfo_mib() -> tuple[int, int]:
    """The host's MemTotal and MemAvailable, in MiB."""
    fields = {}
    for line in MEMINFO.read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = int(value.split()[0]) // 1024  # kB
    return fields["MemTotal"], fields["MemAvailable"]


def default_budget_mib(total_mib: int) -> int:
    """The share of a host with `total_mib` of RAM that VMs may take by default."""
    return total_mib - max(HOST_RESERVE_MIN_MIB, int(total_mib * HOST_RESERVE_SHARE))


class Capacity:
    def __init__(self, settings: Settings, vms: VmManager):
        self.settings = settings
        self.vms = vms
        self.budget_mib = settings.vm_memory_budget_mib or default_budget_mib(meminfo_mib()[0])
        self._lock = threading.Lock()
        self._held: list[Reservation] = []
        # Each frees one running VM's memory if it can (True if it did): CLI VMs idle longest.
        self.reclaimers: list[Callable[[], bool]] = []
        # Told when room may have freed: the sign-in queue.
        self.listeners: list[Callable[[], None]] = []
        vms.on_freed.append(self.freed)

    # -- the cost model --------------------------------------------------------------------

    def cost(self, image: str, vmm: str | None = None) -> VmCost:
        """What a VM of `image` on `vmm` (by default: new VMs') costs while it runs."""
        return VmCost(self.settings.guest_memory_mib(image), self._vmm_mib(vmm or self.vms.vmm))

    def _vmm_mib(self, vmm: str) -> int:
        driver = self.vms.drivers.get(vmm)
        return UNMEASURED_VMM_MIB if driver is None else driver.own_memory_mib

    def usage(self) -> Usage:
        with self._lock:
            return self._usage()

    def _usage(self) -> Usage:
        with self.vms.db.session() as s:
            running = list(
                s.execute(select(Vm.id, Vm.image, Vm.vmm).where(Vm.state.in_(RUNNING_STATES)))
            )
        counted = {vm_id for vm_id, _, _ in running}
        costs = [self.cost(image, vmm) for _, image, vmm in running]
        costs += [r.cost for r in self._held if r.vm_id not in counted]
        return Usage(
            vms=len(costs),
            memory_mib=sum(c.total_mib for c in costs),
            max_vms=self.settings.max_vms,
            budget_mib=self.budget_mib,
        )

    # -- admission -------------------------------------------------------------------------

    def try_reserve(self, image: str) -> Reservation | None:
        """Room for a VM of `image` if there is some now; None if not."""
        cost = self.cost(image)
        with self._lock:
            if not self._usage().fits(cost):
                return None
            reservation = Reservation(image, cost)
            self._held.append(reservation)
            return reservation

    def reserve(self, image: str) -> Reservation:
        """Room for a VM of `image`, hibernating idle CLI VMs (least recently used first) to
        make it when memory is short; NoCapacity when there is none to be had."""
        while True:
            reservation = self.try_reserve(image)
            if reservation is not None:
                return reservation
            if not self.reclaim_one():
                raise NoCapacity(f"no {image} VM can be started now: {self.usage().describe()}")

    def fits(self, image: str) -> bool:
        """Whether a VM of `image` would fit now."""
        return self.usage().fits(self.cost(image))

    def record(self, reservation: Reservation, image: str, user_id: str | None = None) -> str:
        """Create the record of a VM on the reservation (VmManager.record); its id."""
        with self._lock:
            reservation.vm_id = self.vms.record(image, user_id)
            return reservation.vm_id

    def bind(self, reservation: Reservation, vm_id: str) -> None:
        """The reservation is for this (hibernated) VM, about to resume."""
        with self._lock:
            reservation.vm_id = vm_id

    def release(self, reservation: Reservation | None) -> None:
        """Give the reservation's room back (its VM, if it runs, is counted on its own).
        Safe to repeat."""
        if reservation is None:
            return
        with self._lock:
            if reservation not in self._held:
                return
            self._held.remove(reservation)
        self.freed()

    def freed(self, vm_id: str | None = None) -> None:
        """Room may have freed (a VM was destroyed or hibernated, a reservation given up):
        tell whoever waits for it."""
        for listener in self.listeners:
            try:
                listener()
            except Exception:  # noqa: BLE001 - the freeing VM's destroy must not fail for it
                log.exception("a capacity listener failed")

    def reclaim_one(self) -> bool:
        """Free one running VM's memory if a reclaimer can (the idle CLI VM unused longest
        hibernates); whether one did."""
        return any(reclaim() for reclaim in self.reclaimers)
