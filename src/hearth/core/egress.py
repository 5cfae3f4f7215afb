"""Egress for Hearth's VMs (hearth.net.egress), wired to the controller: each VM's policy
from what the database says it is for, the audit written to the database, and an upstream
proxy's refusal told to the sign-in it breaks.

A browser VM signing in to provider P (or a warm pool VM prepared for P) may reach P's
sign-in and token hosts (and Google's sign-in where the operator enables it for P); a user's
CLI VM the API and token hosts of the providers that user has connected; the operator adds
and removes names per provider.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable

from sqlalchemy import bindparam, insert, select, update

from hearth import metrics, providers
from hearth.config import Settings
from hearth.core.auth_sessions import TERMINAL
from hearth.core.ports import Network
from hearth.net.egress.dialer import Dialer
from hearth.net.egress.dns import DnsResponder
from hearth.net.egress.names import normalize_pattern
from hearth.net.egress.policy import EgressPolicy, EgressRecord
from hearth.net.egress.proxy import EgressProxy
from hearth.net.egress.upstream import Upstream
from hearth.providers.base import GOOGLE_SIGN_IN
from hearth.store.db import Database
from hearth.store.models import AuthSession, Credential, EgressConnection, IpLease, Vm

POLICY_CACHE_SECONDS = 1.0  # a VM's policy is read again this often at most
AUDIT_FLUSH_SECONDS = 0.5  # the audit is written in batches at least this often

log = logging.getLogger(__name__)


def allowed_names(settings: Settings, provider: str, browser: bool) -> tuple[str, ...]:
    """The patterns a VM of `provider` may reach: a browser VM's or a CLI VM's."""
    spec = providers.get(provider)
    names = [*spec.egress.for_purpose(browser), *settings.egress_allow.get(provider, ())]
    if browser and provider in settings.google_sso:
        names += GOOGLE_SIGN_IN
    denied = {normalize_pattern(n) for n in settings.egress_deny.get(provider, ())}
    return tuple(dict.fromkeys(p for p in map(normalize_pattern, names) if p not in denied))


def connections(
    db: Database,
    vm_id: str | None = None,
    user_id: str | None = None,
    verdict: str | None = None,
    limit: int = 100,
) -> list[EgressConnection]:
    """The audit, newest first, filtered by VM, user and verdict."""
    query = select(EgressConnection).order_by(EgressConnection.id.desc()).limit(limit)
    for column, value in (
        (EgressConnection.vm_id, vm_id),
        (EgressConnection.user_id, user_id),
        (EgressConnection.verdict, verdict),
    ):
        if value is not None:
            query = query.where(column == value)
    with db.session() as s:
        return list(s.scalars(query))


def connection_view(c: EgressConnection) -> dict:
    """An audit row as the API and `hearth egress log --json` show it."""
    return {
        "id": c.id,
        "started_at": c.started_at.isoformat(),
        "vm_id": c.vm_id,
        "user_id": c.user_id,
        "provider": c.provider,
        "source": c.source,
        "protocol": c.protocol,
        "name": c.name,
        "port": c.port,
        "verdict": c.verdict,
        "reason": c.reason,
        "upstream": c.upstream,
        "address": c.address,
        "bytes_up": c.bytes_up,
        "bytes_down": c.bytes_down,
        "duration_seconds": c.duration_seconds,
    }


class Policies:
    """VM address -> its policy, read from the database, cached for a second."""

    def __init__(self, settings: Settings, db: Database):
        self.settings = settings
        self.db = db
        self._cache: dict[str, tuple[float, EgressPolicy | None]] = {}

    async def __call__(self, address: str) -> EgressPolicy | None:
        cached = self._cache.get(address)
        if cached and time.monotonic() < cached[0]:
            return cached[1]
        policy = await asyncio.to_thread(self.lookup, address)
        if policy is None:  # not cached: the address may be leased to a new VM any moment
            self._cache.pop(address, None)
        else:
            self._cache[address] = (time.monotonic() + POLICY_CACHE_SECONDS, policy)
        return policy

    def lookup(self, address: str) -> EgressPolicy | None:
        with self.db.session() as s:
            vm = s.scalar(
                select(Vm).join(IpLease, IpLease.vm_id == Vm.id).where(IpLease.ip == address)
            )
            if vm is None:
                return None
            if vm.user_id is not None:  # a user's CLI VM: the providers they connected
                connected = s.scalars(
                    select(Credential.provider).where(Credential.user_id == vm.user_id)
                )
                rules = tuple(
                    (name, provider)
                    for provider in sorted(set(connected))
                    for name in allowed_names(self.settings, provider, False)
                )
                return EgressPolicy(vm.id, vm.user_id, rules)
            session = s.scalar(
                select(AuthSession).where(
                    AuthSession.vm_id == vm.id, AuthSession.status.not_in(TERMINAL)
                )
            )
            if session is not None:
                provider, user_id, session_id = session.provider, session.user_id, session.id
            elif vm.pool is not None and vm.pool_provider is not None:
                # A pool VM prepared for a provider: its login starts before any sign-in.
                provider, user_id, session_id = vm.pool_provider, None, None
            else:  # a browser VM serving no sign-in reaches nothing
                return EgressPolicy(vm.id, None, ())
            rules = tuple((name, provider) for name in allowed_names(self.settings, provider, True))
            return EgressPolicy(vm.id, user_id, rules, session_id=session_id)


class Audit:
    """Egress records queued by the proxy and responder, written by one thread in batches."""

    def __init__(
        self,
        db: Database,
        on_upstream_error: Callable[[str, str], None] = lambda session, why: None,
    ):
        self.db = db
        self.on_upstream_error = on_upstream_error
        self._queue: queue.SimpleQueue[EgressRecord | None] = queue.SimpleQueue()
        self._open: set[str] = set()  # keys of records written while their connection ran
        self._thread = threading.Thread(target=self._write, name="egress-audit", daemon=True)
        self._thread.start()

    def __call__(self, record: EgressRecord) -> None:
        self._queue.put(record)

    def close(self) -> None:
        """Write what is queued and stop."""
        self._queue.put(None)
        self._thread.join(30)

    def _write(self) -> None:
        done = False
        while not done:
            batch = [self._queue.get()]
            deadline = time.monotonic() + AUDIT_FLUSH_SECONDS
            while batch[-1] is not None and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            done = batch[-1] is None
            records = [r for r in batch if r is not None]
            try:
                self._store(records)
            except Exception:  # noqa: BLE001 - the audit must outlive a database hiccup
                log.exception("could not write %d egress records", len(records))
            for record in records:
                if record.upstream_error and record.session_id:
                    self.on_upstream_error(record.session_id, f"egress: {record.reason}")

    def _store(self, records: list[EgressRecord]) -> None:
        """Insert what is new, update what was written open: one executemany each (the
        proxy's thread shares the GIL). The last report of a record wins."""
        latest = {r.key: r for r in records}
        fresh = [_row(r) for key, r in latest.items() if key not in self._open]
        ended = [
            {
                "b_key": key,
                "bytes_up": r.bytes_up,
                "bytes_down": r.bytes_down,
                "duration_seconds": r.duration,
            }
            for key, r in latest.items()
            if key in self._open
        ]
        with self.db.session() as s:
            if fresh:
                s.execute(insert(EgressConnection), fresh)
            if ended:
                s.connection().execute(
                    update(EgressConnection)
                    .where(EgressConnection.key == bindparam("b_key"))
                    .values(
                        bytes_up=bindparam("bytes_up"),
                        bytes_down=bindparam("bytes_down"),
                        duration_seconds=bindparam("duration_seconds"),
                    ),
                    ended,
                )
            s.commit()
        metrics.egress_recorded(fresh)
        for key, r in latest.items():
            if r.duration is None:
                self._open.add(key)
            else:
                self._open.discard(key)


def _row(r: EgressRecord) -> dict:
    return dict(
        key=r.key,
        started_at=r.started_at,
        vm_id=r.vm_id,
        user_id=r.user_id,
        provider=r.provider,
        source=r.source,
        protocol=r.protocol,
        name=r.name,
        port=r.port,
        verdict=str(r.verdict),
        reason=r.reason,
        upstream=r.upstream,
        address=r.address,
        bytes_up=r.bytes_up,
        bytes_down=r.bytes_down,
        duration_seconds=r.duration,
    )


class Egress:
    """The DNS responder and the proxy, listening on the VMs' gateway for the controller."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        network: Network,
        on_upstream_error: Callable[[str, str], None] = lambda session, why: None,
    ):
        self.network = network
        self.audit = Audit(db, on_upstream_error)
        policies = Policies(settings, db)
        upstreams = {
            provider: Upstream.parse(url) for provider, url in settings.upstream_proxies.items()
        }
        default = Upstream.parse(settings.upstream_proxy) if settings.upstream_proxy else None
        dialer = Dialer(
            settings.egress_resolver, settings.egress_hosts, network.controller_addresses
        )
        self.proxy = EgressProxy(
            policies, dialer, self.audit, lambda provider: upstreams.get(provider, default)
        )
        self.dns = DnsResponder(str(settings.gateway.ip), policies, self.audit)
        self._closers: list[Callable[[], object]] = []

    async def start(self) -> None:
        """Listen on the gateway (making the VM network if it is not there yet)."""
        await asyncio.to_thread(self.network.ensure)
        tls, http, dns_tcp, dns_udp = await asyncio.to_thread(
            self.network.gateway_sockets, (("tcp", 443), ("tcp", 80), ("tcp", 53), ("udp", 53))
        )
        servers = [await self.proxy.serve(tls, tls=True), await self.proxy.serve(http, tls=False)]
        transport, dns_server = await self.dns.serve(dns_udp, dns_tcp)
        servers.append(dns_server)
        self._closers = [transport.close, *(server.close for server in servers)]

    async def stop(self) -> None:
        for close in self._closers:
            close()
        await asyncio.to_thread(self.audit.close)
