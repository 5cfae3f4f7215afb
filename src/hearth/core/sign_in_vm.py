"""A sign-in's browser VM, worked from the session's own thread: taken warm from the pool (its
login perhaps started ahead) or booted cold on the room reserved for it, the provider's CLI
login started in it and followed through the agent (the authorize page shown, the user
signed in, the credentials fetched and stored), and the VM destroyed whatever the end: it
held a login and is never reused.

The session's record moves only through `Record` (hearth.core.auth_sessions keeps it); the
warm pool prepares a login ahead with the same request and reading of its status.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol

from hearth import providers
from hearth.config import BROWSER_IMAGE, Settings
from hearth.core import CoreError
from hearth.core.capacity import Capacity, Reservation
from hearth.core.failures import reason as failure_reason
from hearth.core.ports import AgentError, AgentRefused, AgentUnreachable
from hearth.core.vms import VmManager
from hearth.guest.protocol import LoginSpec, LoginStatus
from hearth.store.credentials import CredentialStore
from hearth.store.models import AuthSession, AuthSessionStatus, Vm, VmState
from hearth.waiting import Timeout, wait_for

if TYPE_CHECKING:
    from hearth.core.warm_pool import WarmPool

TERMINAL = (
    AuthSessionStatus.completed,
    AuthSessionStatus.failed,
    AuthSessionStatus.cancelled,
    AuthSessionStatus.expired,
)


VNC_PASSWORD = "vnc_password"  # the seed's key the browser VM's VNC server reads
FROM_POOL = "took a warm browser VM from the pool"
COLD_BOOT = "booting a cold browser VM"
SIGN_IN_AHEAD = "its {} sign-in page shown ahead"
LOGIN_AHEAD_GONE = "the login started ahead in the pool VM had ended: starting it again"
POOL_EMPTY = "booting a cold browser VM: the warm pool had none"
POOL_RESUME_FAILED = "the warm pool VM did not resume ({}): booting a cold browser VM instead"
MAX_LOGIN_ERROR = 2000  # the agent caps its errors; a guest that does not is cut here


class SessionError(CoreError):
    """The sign-in could not go on; the message is shown to the user and the API."""


class SessionEnded(Exception):
    """Raised inside a session's thread when it was cancelled or expired meanwhile."""


class Record(Protocol):
    """The session's record, as its thread may move it (hearth.core.auth_sessions)."""

    def get(self, session_id: str) -> AuthSession | None: ...

    def advance(
        self, session_id: str, status: AuthSessionStatus, detail: str | None = None, **fields
    ) -> None:
        """Move a running session on; SessionEnded if it ended meanwhile."""

    def transition(
        self, session_id: str, status: AuthSessionStatus, detail: str | None, **fields
    ) -> bool:
        """Move a session that has not ended; False if it had."""

    def finish(self, session_id: str, status: AuthSessionStatus, detail: str) -> None: ...

    def update(self, session_id: str, **fields) -> None: ...


@dataclass
class _Cleanup:
    """What a session's thread must give back when it ends: its browser VM, once recorded,
    and the room reserved for it."""

    vm_id: str | None = None
    reservation: Reservation | None = None


class SignInVm:
    """The work of each session's thread (hearth.core.auth_sessions starts it): blocking,
    and the record is told of each step as it is reached."""

    def __init__(
        self,
        settings: Settings,
        vms: VmManager,
        capacity: Capacity,
        credentials: CredentialStore,
        record: Record,
        on_stored: Callable[[str, str], None],
        pool: WarmPool | None,
    ):
        self.settings = settings
        self.vms = vms
        self.capacity = capacity
        self.credentials = credentials
        self.record = record
        self.on_stored = on_stored  # new credentials of (user, provider) were stored
        self.pool = pool  # warm browser VMs to take before booting one

    def run(self, session_id: str, reservation: Reservation) -> None:
        """Take a warm browser VM or boot one on the room reserved for it, start the CLI's
        login in it (unless the pool VM's runs already), and follow it to the end."""
        session = self.record.get(session_id)
        with self._ending(session_id) as cleanup:
            cleanup.reservation = reservation
            warm = self._warm_vm(session_id, session.provider, cleanup)
            vm, login_started = warm or (self._cold_vm(session_id, cleanup), False)
            self._check_running(session_id)
            with self.vms.agent(vm) as agent:
                if login_started and not _login_runs(agent):
                    self.record.advance(session_id, AuthSessionStatus.vm_booting, LOGIN_AHEAD_GONE)
                    login_started = False
                if not login_started:
                    agent.start_login(login_request(self.settings, self.vms, session.provider))
            self._follow(session_id, vm)

    def follow_adopted(self, session_id: str) -> None:
        """Follow a login an earlier controller started, from wherever it has got to."""
        session = self.record.get(session_id)
        with self._ending(session_id) as cleanup:
            cleanup.vm_id = session.vm_id
            self._follow(session_id, self.vms.get(session.vm_id))

    def login_waiting(self, session: AuthSession) -> bool:
        """Whether the session's VM is ready and its CLI login runs on, not yet over."""
        if session.vm_id is None:
            return False
        vm = self.vms.get(session.vm_id)
        if vm.state != VmState.ready or not self.vms.vmm_alive(vm):
            return False
        try:
            with self.vms.agent(vm) as agent:
                return not agent.login_status().exited
        except AgentError:  # no login there, or an agent that is not well
            return False

    def destroy(self, vm_id: str | None) -> None:
        if vm_id:
            self.vms.destroy(vm_id)

    def _warm_vm(self, session_id: str, provider: str, cleanup: _Cleanup) -> tuple[Vm, bool] | None:
        """A VM from the warm pool, resumed, and whether its login for `provider` was
        started ahead; None (the pool had none, or it did not resume: the timeline says so,
        and that VM is gone) for a cold boot."""
        taken = self.pool.take(provider) if self.pool is not None else None
        if taken is None:
            detail = POOL_EMPTY if self.pool is not None and self.pool.size else COLD_BOOT
            self.record.advance(session_id, AuthSessionStatus.vm_booting, detail)
            return None
        cleanup.vm_id = taken.vm_id
        self.capacity.bind(cleanup.reservation, taken.vm_id)  # it wakes on the session's room
        self.record.update(session_id, vm_id=taken.vm_id)
        detail = f"{FROM_POOL} ({taken.vm_id})"
        if taken.login_started:
            detail += f", {SIGN_IN_AHEAD.format(provider)}"
        self.record.advance(session_id, AuthSessionStatus.vm_booting, detail)
        try:
            vm = self.pool.wake(taken.vm_id)
            self.capacity.release(cleanup.reservation)  # it runs, and counts, now
            return vm, taken.login_started
        except Exception as e:  # noqa: BLE001 - any failure falls back to a cold boot
            self.destroy(taken.vm_id)
            cleanup.vm_id = None
            self._check_running(session_id)
            detail = POOL_RESUME_FAILED.format(failure_reason(e))
            self.record.transition(session_id, AuthSessionStatus.vm_booting, detail)
            return None

    def _cold_vm(self, session_id: str, cleanup: _Cleanup) -> Vm:
        # Recorded before it boots, so that a VM whose boot fails is destroyed too.
        cleanup.vm_id = self.capacity.record(cleanup.reservation, BROWSER_IMAGE)
        self.capacity.release(cleanup.reservation)  # the record counts now
        self.record.update(session_id, vm_id=cleanup.vm_id)
        self.vms.finish_create(cleanup.vm_id, seed_extras=browser_seed())
        return self.vms.get(cleanup.vm_id)

    @contextmanager
    def _ending(self, session_id: str) -> Iterator[_Cleanup]:
        """End the session however its work ends (with the reason when it fails), and
        destroy its browser VM whatever the end."""
        cleanup = _Cleanup()
        try:
            yield cleanup
        except SessionEnded:
            pass
        except SessionError as e:  # ours, in full: a login's error ends with the CLI's screen
            self.record.finish(session_id, AuthSessionStatus.failed, str(e))
        except Exception as e:  # noqa: BLE001 - any failure ends the session, with its reason
            self.record.finish(session_id, AuthSessionStatus.failed, failure_reason(e))
        finally:
            self.destroy(cleanup.vm_id)
            self.capacity.release(cleanup.reservation)

    def _follow(self, session_id: str, vm: Vm) -> None:
        """Wait for the authorize page, then for the user, then store the credentials."""
        session = self.record.get(session_id)
        spec = providers.get(session.provider)
        with self.vms.agent(vm) as agent:
            status = self._wait(
                session_id, agent, authorize_page_shown, "Firefox to show the authorize page"
            )
            if self.record.get(session_id).status != AuthSessionStatus.awaiting_user:
                self.record.advance(
                    session_id, AuthSessionStatus.awaiting_user, oauth_url=status.url
                )
            status = self._wait(session_id, agent, _login_over, "the sign-in")
            if not status.success:
                raise _login_failed(status, "without signing in")
            files = agent.credentials()
        email, expires_at = spec.account(files)
        self.credentials.put(
            session.user_id, session.provider, files, account_email=email, expires_at=expires_at
        )
        self.record.advance(
            session_id,
            AuthSessionStatus.completed,
            detail=f"credentials stored for {email or 'the account'}",
        )
        self.on_stored(session.user_id, session.provider)

    def _wait(
        self, session_id: str, agent, done: Callable[[LoginStatus], bool], what: str
    ) -> LoginStatus:
        """Poll the agent until `done`, the session ends, or it expires."""
        session = self.record.get(session_id)
        remaining = (session.expires_at - datetime.now(UTC)).total_seconds()
        last: LoginStatus | None = None

        def check() -> bool:
            nonlocal last
            self._check_running(session_id)
            try:
                last = agent.login_status()
            except (AgentUnreachable, AgentRefused):
                return False
            return done(last)

        try:
            wait_for(check, max(remaining, 0.1), what, interval=self.settings.agent_poll_interval)
        except Timeout:
            self.record.finish(session_id, AuthSessionStatus.expired, f"expired waiting for {what}")
            raise SessionEnded from None
        assert last is not None  # wait_for returned: check() saw `done`
        return last

    def _check_running(self, session_id: str) -> None:
        if self.record.get(session_id).status in TERMINAL:
            raise SessionEnded


def browser_seed() -> dict[str, str]:
    """What a browser VM's seed holds beside its agent token: its VNC server's password."""
    return {VNC_PASSWORD: vnc_password()}


def vnc_password() -> str:
    """A fresh one per browser VM; VNC's own authentication reads only eight characters."""
    return secrets.token_urlsafe(6)[:8]


def login_request(settings: Settings, vms: VmManager, provider: str) -> LoginSpec:
    """What the agent's POST /login takes for `provider`'s login: the same for every user."""
    spec = providers.get(provider)
    return spec.to_agent(spec.login_params(settings), vms.client_env())


def _login_runs(agent) -> bool:
    """Whether the VM's login (started ahead, in a pool VM) is still there and running."""
    try:
        return not agent.login_status().exited
    except AgentRefused as e:
        if e.status == HTTPStatus.NOT_FOUND:  # none was started, or it is gone
            return False
        raise


def authorize_page_shown(status: LoginStatus) -> bool:
    if status.exited and not status.success:
        raise _login_failed(status, "before showing an authorize URL")
    return bool(status.url and status.firefox.ready)


def _login_failed(status: LoginStatus, when: str) -> SessionError:
    """The agent's reason (it ends with the CLI's last screen, redacted in the guest)."""
    reason = status.error or f"the login command exited with {status.exit_code}"
    return SessionError(f"the {status.provider} login ended {when}: {reason[:MAX_LOGIN_ERROR]}")


def _login_over(status: LoginStatus) -> bool:
    return status.success or status.exited
