"""Each user's CLI VM: made on demand, woken for use, holding the user's credential leases.

A user has at most one CLI VM. Credentials reach it only through its agent. Refresh tokens
rotate on use, so exactly one copy may be live: the stored version is leased to the VM that
holds it, and after every run the agent's digest of the CLI's token files tells whether the
CLI refreshed them; if it did, they are pulled back and stored as a new version, still
leased to that VM. A VM unused for `idle_hibernate` seconds is snapshotted and stopped; one
unused for `idle_destroy` seconds goes, files and all. A VM that must boot or resume does
so on room reserved for it (hearth.core.capacity); when memory is short the idle VM unused
longest hibernates early to make room. A VM is not idle while a run uses it, nor from a
prompt's admission on (admit: it was awake, so the prompt was given no room of its own).

The provider's verdict is kept with the stored version: a run whose CLI says the provider
refused its credentials (revoked, signed out elsewhere) marks them invalid, and so does a
check that the provider answers with a refusal; a new version starts valid.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from hearth import metrics, providers
from hearth.config import Settings
from hearth.core import CoreError, webhooks
from hearth.core.capacity import Capacity, Reservation
from hearth.core.ports import AgentRefused
from hearth.core.vms import LIVE_STATES, VmError, VmManager
from hearth.guest.protocol import RunEvent, RunExit, RunOutput, RunStarted
from hearth.store.credentials import CredentialNotFound, CredentialStale, CredentialStore, Lease
from hearth.store.models import Vm, VmState, utcnow

log = logging.getLogger(__name__)

CHECK_TIMEOUT = 120.0  # seconds a CLI's own status check may take
REFUSAL_WINDOW = 16 * 1024  # characters at the end of a run's output searched for a refusal
# An access token this close to its expiry says nothing about the sign-in: the CLI
# refreshes it before use (Claude Code at five minutes).
EXPIRY_MARGIN = timedelta(minutes=5)


class UnknownUser(CoreError, LookupError):
    """Hearth holds nothing for this user: no credentials, no VM."""

    http_status = 404


class ProviderUnreachable(CoreError):
    """The provider could not be asked, or gave no verdict; the message says what happened."""

    http_status = 502


@dataclass(frozen=True)
class RunEnd:
    """A run's end as CliVms.run reports it: the agent's exit event, whether the run
    refreshed the credentials (then stored), and why the provider refused them, when the
    CLI failed for that (else None)."""

    exit: RunExit
    credentials_updated: bool
    refused: str | None


@dataclass(eq=False)
class Admission:
    """What admit() gave a prompt, held until using() takes over or release(): room reserved
    for the user's VM to wake, or the awake VM itself, counted in use so that nothing
    hibernates it meanwhile (the prompt would find no room to wake it again)."""

    user_id: str
    reservation: Reservation | None = None
    held_vm_id: str | None = None


@dataclass(frozen=True)
class Check:
    """The verdict on a user's sign-in: valid, refused (with why), or None when only a
    refresh could tell (the access token has expired)."""

    valid: bool | None
    reason: str | None


class CliVms:
    def __init__(
        self, settings: Settings, vms: VmManager, credentials: CredentialStore, capacity: Capacity
    ):
        self.settings = settings
        self.vms = vms
        self.credentials = credentials
        self.capacity = capacity
        capacity.reclaimers.append(self.hibernate_least_recent)
        self._guard = threading.Lock()
        self._user_locks: dict[str, threading.Lock] = {}
        self._in_use: Counter[str] = Counter()  # VM id -> runs under way (memory: a cache)

    # -- queries ---------------------------------------------------------------------------

    def vm_of(self, user_id: str, states=LIVE_STATES) -> Vm | None:
        """The user's newest CLI VM in one of `states` (by default: any alive or asleep)."""
        with self.vms.db.session() as s:
            return s.scalars(
                select(Vm)
                .where(Vm.user_id == user_id, Vm.state.in_(states))
                .order_by(Vm.created_at.desc())
                .limit(1)
            ).first()

    def known(self, user_id: str) -> bool:
        return bool(self.credentials.of_user(user_id)) or self.vm_of(user_id) is not None

    # -- use ---------------------------------------------------------------------------------

    def admit(self, user_id: str) -> Admission:
        """The user's VM held awake if it is, else room for it to boot or resume; pass it to
        using(), and release() it however the prompt ends. NoCapacity when no room can be
        made (see Capacity.reserve)."""
        with self._lock(user_id):  # after a hibernation under way: the VM then needs room
            vm = self.vm_of(user_id)
            if vm is not None and vm.state == VmState.ready and self.vms.vmm_alive(vm):
                self._in_use[vm.id] += 1
                return Admission(user_id, held_vm_id=vm.id)
        return Admission(user_id, reservation=self.capacity.reserve(self.settings.cli_image))

    def release(self, admission: Admission | None) -> None:
        """Give back what admit() held and using() did not take. Safe to repeat."""
        if admission is None:
            return
        self.capacity.release(admission.reservation)
        with self._lock(admission.user_id):
            if admission.held_vm_id is not None:
                self._in_use[admission.held_vm_id] -= 1
                admission.held_vm_id = None

    @contextmanager
    def using(
        self, user_id: str, provider: str, admission: Admission | None = None
    ) -> Iterator[Vm]:
        """The user's VM, awake and holding the provider's current credentials; it does not
        hibernate while in use. CredentialNotFound if there are no credentials to hold.
        A VM that must wake does so on `admission`'s room, else on room reserved now."""
        try:
            if self.credentials.info(user_id, provider) is None:  # before waking anything
                raise CredentialNotFound(user_id, provider)
            with self._lock(user_id):
                vm = self._awake(user_id, admission.reservation if admission else None)
                self._provision(vm, user_id, provider)
                self._in_use[vm.id] += 1
        finally:
            self.release(admission)  # in use now (or failed): the admission's hold ends
        try:
            yield vm
        finally:
            with self._lock(user_id):
                self._in_use[vm.id] -= 1
                self._touch(vm.id)

    def run(
        self, vm: Vm, user_id: str, provider: str, argv: list[str], timeout: float
    ) -> Iterator[RunStarted | RunOutput | RunEnd]:
        """Run `argv` in the VM, yielding the agent's events; its exit event comes as a
        RunEnd, which says whether the run refreshed the tokens (they are then stored) and
        why the provider refused them when the CLI failed for that."""
        spec = providers.get(provider)
        env = {**self.vms.client_env(), **spec.quiet_env}
        tail = ""
        with (
            self.vms.agent(vm) as agent,
            agent.run(argv, env=env, provider=provider, timeout=timeout) as events,
        ):
            event: RunEvent
            for event in events:
                if isinstance(event, RunOutput):
                    tail = (tail + event.data)[-REFUSAL_WINDOW:]
                elif isinstance(event, RunExit):
                    updated = self.settle(vm, user_id, provider, event.credentials_digest)
                    refused = spec.refused(tail) if event.exit_code else None
                    if refused:
                        self._judge(vm, user_id, provider, refused)
                    yield RunEnd(event, updated, refused)
                    continue
                yield event

    def settle(self, vm: Vm, user_id: str, provider: str, digest: str | None) -> bool:
        """After a run: if the token files in the VM changed, store them as a new version."""
        spec = providers.get(provider)
        with self._lock(user_id):
            lease = self.credentials.lease(user_id, provider)
            if digest is None or lease is None or lease.vm_id != vm.id or digest == lease.digest:
                return False
            with self.vms.agent(vm) as agent:
                pulled, digest = agent.read_credentials(provider)
            stored, info = self.credentials.current(user_id, provider)
            files = {
                **stored,
                **{path: data for path, data in pulled.items() if path in spec.rotating_files},
            }
            email, expires_at = spec.account(files)
            try:
                new = self.credentials.put(
                    user_id,
                    provider,
                    files,
                    account_email=email or info.account_email,
                    expires_at=expires_at,
                    after_version=lease.version,
                )
            except CredentialStale:
                return False  # a new sign-in replaced them meanwhile; it goes in next time
            self.credentials.set_lease(user_id, provider, Lease(vm.id, new.version, digest))
            metrics.credentials_written_back(provider)
            webhooks.credentials_refreshed(self.vms.db, user_id, provider, new.version)
            return True

    def check(self, user_id: str, provider: str) -> Check:
        """The verdict on the user's sign-in, from the user's VM: the CLI's own status check,
        then, where that reads only the CLI's files, the provider's answer to the spec's
        probe. A verdict is kept with the stored version (see the module's docstring).
        ProviderUnreachable when the provider gives none."""
        spec = providers.get(provider)
        if not spec.status_argv:
            raise ValueError(f"provider {provider!r} has no status check")
        with self.using(user_id, provider) as vm:
            check = self._status(vm, user_id, provider)
            if check.valid and spec.probe is not None:
                check = self._probe(vm, user_id, provider)
            if check.valid is not None:
                self._judge(vm, user_id, provider, None if check.valid else check.reason)
        return check

    def _status(self, vm: Vm, user_id: str, provider: str) -> Check:
        spec = providers.get(provider)
        output: list[str] = []
        exit_code = None
        for event in self.run(vm, user_id, provider, list(spec.status_argv), CHECK_TIMEOUT):
            if isinstance(event, RunOutput):
                output.append(event.data)
            elif isinstance(event, RunEnd):
                exit_code = event.exit.exit_code
        return Check(*spec.status_check(exit_code, "".join(output)))

    def _probe(self, vm: Vm, user_id: str, provider: str) -> Check:
        spec = providers.get(provider)
        assert spec.probe is not None
        _, expires_at = spec.account(self.credentials.files(user_id, provider))
        if expires_at is not None and expires_at - EXPIRY_MARGIN < datetime.now(UTC):
            return Check(
                None,
                f"the access token expired at {expires_at.isoformat()}: only "
                "a refresh can tell, which the CLI makes on its next prompt",
            )
        try:
            with self.vms.agent(vm) as agent:
                status, detail = agent.probe_credentials(provider, spec.probe.to_agent())
        except AgentRefused as e:
            if e.status != 400:
                raise
            # The CLI's file holds no access token (a CLI that signed itself out wipes it).
            return Check(False, f"the stored credentials hold no access token ({e.message})")
        if status is not None and 200 <= status < 300:
            return Check(True, None)
        if status in (401, 403):
            return Check(False, f"the provider refused the access token ({detail})")
        raise ProviderUnreachable(f"{provider}'s provider gave no verdict: {detail}")

    def _judge(self, vm: Vm, user_id: str, provider: str, refused: str | None) -> None:
        """Keep the provider's verdict with the version the VM holds."""
        lease = self.credentials.lease(user_id, provider)
        if lease is not None and lease.vm_id == vm.id:
            judged = self.credentials.judge(user_id, provider, lease.version, refused)
            if judged and refused:
                webhooks.credentials_invalid(self.vms.db, user_id, provider, lease.version)

    # -- custody -----------------------------------------------------------------------------

    def signed_in(self, user_id: str, provider: str) -> None:
        """A sign-in replaced the stored credentials: replace them in the user's VM now if it
        is awake (a hibernated one gets them before its next run)."""
        with self._lock(user_id):
            vm = self.vm_of(user_id)
            if vm is not None and vm.state == VmState.ready and self.vms.vmm_alive(vm):
                self._provision(vm, user_id, provider)

    def remove(self, user_id: str, provider: str) -> tuple[bool, list[str]]:
        """Forget a provider's credentials: the stored copy, and the files in the user's VM.
        Returns whether a stored copy existed and the paths wiped in the VM."""
        existed = self.credentials.delete(user_id, provider)
        with self._lock(user_id):
            if self.vm_of(user_id) is None:
                return existed, []
            vm = self._awake(user_id)
            with self.vms.agent(vm) as agent:
                return existed, agent.wipe_credentials(provider)

    # -- housekeeping ------------------------------------------------------------------------

    def sweep(self) -> None:
        """Hibernate VMs idle past `idle_hibernate`, destroy those idle past `idle_destroy`."""
        now = utcnow()
        for vm in self._least_recent((VmState.ready, VmState.hibernated)):
            with self._lock(vm.user_id):
                vm = self._unused(vm.id, (VmState.ready, VmState.hibernated))
                if vm is None:
                    continue
                idle = now - (vm.last_active_at or vm.created_at)
                if idle > timedelta(seconds=self.settings.idle_destroy):
                    self.vms.destroy(vm.id)
                elif vm.state == VmState.ready and idle > timedelta(
                    seconds=self.settings.idle_hibernate
                ):
                    self.vms.hibernate(vm.id)

    def hibernate_least_recent(self) -> bool:
        """Make room: hibernate the awake VM unused longest (never one in use or admitted for
        a prompt, nor one whose user's lock is held: it is about to be used). Whether one
        was."""
        for vm in self._least_recent((VmState.ready,)):
            lock = self._lock(vm.user_id)
            if not lock.acquire(blocking=False):
                continue
            try:
                vm = self._unused(vm.id, (VmState.ready,))
                if vm is None:
                    continue
                self.vms.hibernate(vm.id)
                return True
            except VmError as e:  # it runs on (or failed): the next one may do
                log.warning("could not hibernate CLI VM %s to make room: %s", vm.id, e)
            finally:
                lock.release()
        return False

    # -- internals ---------------------------------------------------------------------------

    def _least_recent(self, states: tuple[VmState, ...]) -> list[Vm]:
        """Users' VMs in `states`, the one unused longest first."""
        with self.vms.db.session() as s:
            vms = list(s.scalars(select(Vm).where(Vm.user_id.is_not(None), Vm.state.in_(states))))
        return sorted(vms, key=lambda vm: vm.last_active_at or vm.created_at)

    def _unused(self, vm_id: str, states: tuple[VmState, ...]) -> Vm | None:
        """The VM as it is now, if it is in `states` and not in use (nor admitted). Call with
        its user's lock held."""
        vm = self.vms.get(vm_id)
        return None if self._in_use[vm.id] or vm.state not in states else vm

    def _lock(self, user_id: str) -> threading.Lock:
        with self._guard:
            return self._user_locks.setdefault(user_id, threading.Lock())

    def _awake(self, user_id: str, reservation: Reservation | None = None) -> Vm:
        """The user's VM, ready: resumed if it hibernates, replaced if its VMM died, created
        if there is none, on `reservation` or room reserved now. Call with the user's lock
        held."""
        vm = self.vm_of(user_id)
        if vm is not None and vm.state in (VmState.hibernated, VmState.resuming):
            reservation = reservation or self.capacity.reserve(vm.image)
            try:
                self.capacity.bind(reservation, vm.id)
                self.vms.resume(vm.id)
            except VmError as e:
                # A snapshot that does not restore would fail every prompt from now on (its
                # machine changed since it slept: guest memory, devices, QEMU, the image).
                # Its tokens were settled at its last prompt's end: a new VM loses nothing.
                log.warning("CLI VM %s did not resume, replacing it: %s", vm.id, e)
                self.vms.destroy(vm.id)
                vm = None
            finally:
                self.capacity.release(reservation)
            reservation = None  # given back: a new VM reserves its own room
        elif vm is not None and not (vm.state == VmState.ready and self.vms.vmm_alive(vm)):
            if vm.state == VmState.ready:  # its VMM died under it
                webhooks.vm_crashed(self.vms.db, vm)
            self.vms.destroy(vm.id)  # half made, or its VMM died: its tokens were settled
            vm = None
        if vm is None:
            vm = self._create(
                user_id, reservation or self.capacity.reserve(self.settings.cli_image)
            )
        self._touch(vm.id)
        return self.vms.get(vm.id)

    def _create(self, user_id: str, reservation: Reservation) -> Vm:
        try:
            vm_id = self.capacity.record(reservation, self.settings.cli_image, user_id)
            self.capacity.release(reservation)  # the record counts now
            self.vms.finish_create(vm_id)
            return self.vms.get(vm_id)
        except Exception:
            self.capacity.release(reservation)
            failed = self.vm_of(user_id, states=(VmState.failed,))
            if failed is not None:
                self.vms.destroy(failed.id)
            raise

    def _provision(self, vm: Vm, user_id: str, provider: str) -> None:
        """Put the stored version into the VM unless the VM already holds it."""
        files, info = self.credentials.current(user_id, provider)
        lease = self.credentials.lease(user_id, provider)
        if lease is not None and (lease.vm_id, lease.version) == (vm.id, info.version):
            return
        tokens, support = providers.get(provider).vm_files(files)
        with self.vms.agent(vm) as agent:
            digest = agent.put_credentials(provider, tokens, support)
        self.credentials.set_lease(user_id, provider, Lease(vm.id, info.version, digest))

    def _touch(self, vm_id: str) -> None:
        self.vms.db.update(Vm, vm_id, last_active_at=utcnow())
