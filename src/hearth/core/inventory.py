"""What the operator sees of the whole controller: users, sessions, the host's resources.

Read-only queries over the database and the host, for the admin API and page; the parts
that act (destroying a VM, cancelling a session) are the lifecycle's own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from sqlalchemy import select, union

from hearth.core.capacity import meminfo_mib
from hearth.core.runtime import Controller
from hearth.core.vms import LIVE_STATES
from hearth.store.models import AuthSession, Credential, IpLease, Prompt, Vm, VmState

# The states in which a VM holds its guest's memory on the host.
RUNNING = (VmState.booting, VmState.ready, VmState.hibernating, VmState.resuming)


@dataclass(frozen=True)
class AddressLease:
    ip: str
    vm_id: str
    leased_at: str  # ISO 8601


@dataclass(frozen=True)
class HostResources:
    memory_total_mib: int
    memory_available_mib: int
    vm_memory_mib: int  # guest memory of the VMs that run now (each by its image)
    vm_memory_budget_mib: int  # what running VMs may take in all (hearth.core.capacity)
    vm_memory_reserved_mib: int  # what they take (guest and VMM) and admitted ones hold
    vms_by_state: dict[str, int]
    addresses: int  # in the VM subnet
    addresses_leased: int
    leases: list[AddressLease]  # by address


def users(ctl: Controller) -> list[str]:
    """Every user Hearth holds anything for: credentials, a VM, sign-ins or prompts."""
    query = union(
        select(Credential.user_id),
        select(Vm.user_id).where(Vm.user_id.is_not(None), Vm.state.in_(LIVE_STATES)),
        select(AuthSession.user_id),
        select(Prompt.user_id),
    )
    with ctl.db.session() as s:
        return sorted(row[0] for row in s.execute(query))


def sessions(
    ctl: Controller,
    status: str | None = None,
    provider: str | None = None,
    user_id: str | None = None,
    limit: int = 100,
) -> list[AuthSession]:
    """Sign-in sessions, newest first, filtered by what is given."""
    query = select(AuthSession).order_by(AuthSession.created_at.desc()).limit(limit)
    for column, value in (
        (AuthSession.status, status),
        (AuthSession.provider, provider),
        (AuthSession.user_id, user_id),
    ):
        if value is not None:
            query = query.where(column == value)
    with ctl.db.session() as s:
        return list(s.scalars(query))


def vms(
    ctl: Controller, state: str | None = None, image: str | None = None, live_only: bool = True
) -> list[Vm]:
    query = select(Vm).order_by(Vm.created_at.desc())
    if state is not None:
        query = query.where(Vm.state == state)
    elif live_only:
        query = query.where(Vm.state.in_(LIVE_STATES))
    if image is not None:
        query = query.where(Vm.image == image)
    with ctl.db.session() as s:
        return list(s.scalars(query))


def host_resources(ctl: Controller) -> HostResources:
    live = ctl.vms.list()
    by_state = Counter(str(vm.state) for vm in live)
    running = [vm for vm in live if vm.state in RUNNING]
    total, available = meminfo_mib()
    usage = ctl.capacity.usage()
    with ctl.db.session() as s:
        rows = s.scalars(select(IpLease).order_by(IpLease.ip))
        leases = [AddressLease(r.ip, r.vm_id, r.leased_at.isoformat()) for r in rows]
    return HostResources(
        memory_total_mib=total,
        memory_available_mib=available,
        vm_memory_mib=sum(ctl.settings.guest_memory_mib(vm.image) for vm in running),
        vm_memory_budget_mib=usage.budget_mib,
        vm_memory_reserved_mib=usage.memory_mib,
        vms_by_state=dict(sorted(by_state.items())),
        addresses=len(ctl.vms.pool.candidates()),
        addresses_leased=len(leases),
        leases=leases,
    )


def console_tail(ctl: Controller, vm_id: str, lines: int) -> list[str]:
    """The last lines of a VM's console log (its archive once destroyed); the guest's
    console shows progress in words, never a token."""
    live = ctl.vms.workdir(vm_id) / "console.log"
    path = live if live.exists() else ctl.vms.console_archive(vm_id)
    if not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]
