"""Guest addresses leased from the subnet, persisted in the database, unique by primary key."""

from __future__ import annotations

import ipaddress

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from hearth.net import NetworkError
from hearth.store.db import Database
from hearth.store.models import IpLease, Vm


class PoolExhausted(NetworkError):
    """Every address of the VM subnet is leased."""

    http_status = 503


class UnknownVm(NetworkError, LookupError):
    """A lease was asked for a VM the database does not know (the foreign key refused it)."""

    http_status = 404


class IpPool:
    def __init__(self, db: Database, gateway: ipaddress.IPv4Interface):
        self.db = db
        self.gateway = gateway

    def candidates(self) -> list[str]:
        return [str(h) for h in self.gateway.network.hosts() if h != self.gateway.ip]

    def lease(self, vm_id: str) -> str:
        """The VM's address: its existing lease, or the lowest free one.

        Leasers race without locks: the primary key refuses an address another leaser took
        between our read and our insert, and we try again. Each lost race means another lease
        went in, so one attempt per address (plus one to see the pool full) always suffices
        unless leases are also being released meanwhile.
        """
        candidates = self.candidates()
        for _ in range(len(candidates) + 1):
            with self.db.session() as s:
                held = s.scalar(select(IpLease.ip).where(IpLease.vm_id == vm_id))
                if held:
                    return held
                taken = set(s.scalars(select(IpLease.ip)))
                free = next((ip for ip in candidates if ip not in taken), None)
                if free is None:
                    raise PoolExhausted(f"no free address left in {self.gateway.network}")
                s.add(IpLease(ip=free, vm_id=vm_id))
                try:
                    s.commit()
                    return free
                except IntegrityError as e:
                    s.rollback()
                    if s.get(Vm, vm_id) is None:
                        raise UnknownVm(f"no VM {vm_id!r} to lease an address for") from e
        raise PoolExhausted("could not lease an address: too much contention")

    def release(self, vm_id: str) -> None:
        with self.db.session() as s:
            s.execute(delete(IpLease).where(IpLease.vm_id == vm_id))
            s.commit()

    def leases(self) -> dict[str, str]:
        """vm_id -> ip for every lease."""
        with self.db.session() as s:
            return {row.vm_id: row.ip for row in s.scalars(select(IpLease))}
