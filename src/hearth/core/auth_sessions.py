"""Auth sessions: a user signs a CLI into a provider inside a disposable browser VM.

started -> vm_booting -> awaiting_user -> completed, or failed / cancelled / expired; a
sign-in beyond capacity (hearth.core.capacity) is first `queued`, and leaves the queue in
order as room frees. The database holds every session and its timeline; a thread per
session drives it (the VM work is blocking), and a notifier wakes whoever streams its events.
The browser VM is destroyed whatever the end: it held a login and is never reused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING

import httpx
from sqlalchemy import select, update

from hearth import metrics, providers
from hearth.config import BROWSER_IMAGE, Settings
from hearth.core import CoreError, machine, webhooks
from hearth.core.agent_client import AgentRequestError
from hearth.core.capacity import Capacity, NoCapacity, Reservation
from hearth.core.failures import reason as failure_reason
from hearth.core.stopping import ControllerStopping
from hearth.core.vms import VmManager
from hearth.guest.ports import VNC_PORT
from hearth.guest.protocol import LoginStatus
from hearth.store.credentials import CredentialStore
from hearth.store.db import Database
from hearth.store.models import AuthSession, AuthSessionEvent, AuthSessionStatus, Vm, VmState
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
ADOPTED = "adopted after a controller restart: the login in the browser VM waits on"
RESTARTED = "the controller restarted during the sign-in"
STOPPED = "the controller stopped"
FROM_POOL = "took a warm browser VM from the pool"
COLD_BOOT = "booting a cold browser VM"
SIGN_IN_AHEAD = "its {} sign-in page shown ahead"
LOGIN_AHEAD_GONE = "the login started ahead in the pool VM had ended: starting it again"
POOL_EMPTY = "booting a cold browser VM: the warm pool had none"
POOL_RESUME_FAILED = "the warm pool VM did not resume ({}): booting a cold browser VM instead"
MAX_LOGIN_ERROR = 2000  # the agent caps its errors; a guest that does not is cut here


class SessionError(CoreError):
    """The sign-in could not go on; the message is shown to the user and the API."""


class _SessionEnded(Exception):
    """Raised inside a session's thread when it was cancelled or expired meanwhile."""


@dataclass
class _Cleanup:
    """What a session's thread must give back when it ends: its browser VM, once recorded,
    and the room reserved for it."""

    vm_id: str | None = None
    reservation: Reservation | None = None


@dataclass
class Recovery:
    """What recover() did with the sessions a dead controller left running."""

    adopted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LiveTarget:
    """Where a session's browser VM serves VNC, and the password that opens it."""

    host: str
    port: int
    password: str = field(repr=False)


@dataclass(frozen=True)
class LiveView:
    """What a valid live-view token opens: the provider, the session's status when asked
    (shown by the page at once, before its event stream replays the timeline), and the VM
    once it is ready."""

    provider: str
    target: LiveTarget | None
    status: str | None = None
    queue_position: int | None = None


class Notifier:
    """Wakes event streams when a session changes. Memory only: the facts are in the DB."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._versions: dict[str, int] = {}

    def version(self, session_id: str) -> int:
        with self._cond:
            return self._versions.get(session_id, 0)

    def bump(self, session_id: str) -> None:
        with self._cond:
            self._versions[session_id] = self._versions.get(session_id, 0) + 1
            self._cond.notify_all()

    def wait(self, session_id: str, seen: int, timeout: float) -> int:
        with self._cond:
            self._cond.wait_for(lambda: self._versions.get(session_id, 0) != seen, timeout)
            return self._versions.get(session_id, 0)


def browser_seed() -> dict[str, str]:
    """What a browser VM's seed holds beside its agent token: its VNC server's password."""
    return {VNC_PASSWORD: vnc_password()}


def vnc_password() -> str:
    """A fresh one per browser VM; VNC's own authentication reads only eight characters."""
    return secrets.token_urlsafe(6)[:8]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class AuthSessions:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        vms: VmManager,
        credentials: CredentialStore,
        capacity: Capacity,
        on_stored: Callable[[str, str], None] = lambda user_id, provider: None,
        pool: WarmPool | None = None,
    ):
        self.settings = settings
        self.db = db
        self.vms = vms
        self.credentials = credentials
        self.capacity = capacity
        self.on_stored = on_stored  # new credentials of (user, provider) were stored
        self.pool = pool  # warm browser VMs to take before booting one
        self.notifier = Notifier()
        self._intake = threading.RLock()  # a start and stop() do not cross
        self._stopping = False
        self._threads: dict[str, threading.Thread] = {}  # the sessions' threads, by session
        # Held while a session joins or leaves the queue, so that it keeps its order; taken
        # again by a release under it (Capacity.freed admits the queue).
        self._admission = threading.RLock()
        self._making_room = threading.Lock()
        capacity.listeners.append(self.admit_queued)

    # -- API-facing --------------------------------------------------------------------------

    def start(self, user_id: str, provider: str) -> tuple[AuthSession, str]:
        """Create a session and start its work in the background, or queue it when no
        browser VM can be had now (behind any queued already); return it and its live view
        token (shown once, stored hashed). NoCapacity when the queue is full too."""
        providers.get(provider)  # unknown providers fail here, before anything is created
        with self._intake:
            if self._stopping:
                raise ControllerStopping(
                    "the controller is stopping: no sign-in starts now; start it again once "
                    "the controller is back",
                    self.settings.shutdown_grace,
                )
            return self._start(user_id, provider)

    def _start(self, user_id: str, provider: str) -> tuple[AuthSession, str]:
        session_id = uuid.uuid4().hex
        token = secrets.token_urlsafe(32)
        with self._admission:
            superseded = [old.id for old in self._active(user_id, provider)]
            ahead = [queued for queued in self._queue() if queued not in superseded]
            reservation = None if ahead else self.capacity.try_reserve(BROWSER_IMAGE)
            if reservation is None and len(ahead) >= self.settings.auth_queue_max:
                metrics.admission_refused(metrics.QUEUE_FULL)
                raise NoCapacity(
                    f"no browser VM can be started now and {len(ahead)} sign-ins wait "
                    f"already (the most that may): {self.capacity.usage().describe()}"
                )
            for old in superseded:
                self._finish(
                    old, AuthSessionStatus.cancelled, f"superseded by session {session_id}"
                )
            status = AuthSessionStatus.started if reservation else AuthSessionStatus.queued
            detail = None if reservation else _queued_detail(len(ahead) + 1)
            try:
                with self.db.session() as s:
                    s.add(
                        AuthSession(
                            id=session_id,
                            user_id=user_id,
                            provider=provider,
                            status=status,
                            live_token_hash=token_hash(token),
                            expires_at=self._expiry(),
                        )
                    )
                    s.add(AuthSessionEvent(session_id=session_id, status=status, detail=detail))
                    s.commit()
            except BaseException:
                self.capacity.release(reservation)
                raise
        self.notifier.bump(session_id)
        if reservation is not None:
            self._start_thread(session_id, partial(self._run, reservation=reservation))
        else:
            threading.Thread(target=self._make_room, daemon=True).start()
        return self.get(session_id), token

    def _make_room(self) -> None:
        """While sessions queue without room for their VMs, hibernate idle CLI VMs (each
        hibernation admits the queue's head); then admit what fits. One thread at a time:
        another's loop serves the sessions queued since."""
        if not self._making_room.acquire(blocking=False):
            return
        try:
            while self._queue() and not self.capacity.fits(BROWSER_IMAGE):
                if not self.capacity.reclaim_one():
                    break
        finally:
            self._making_room.release()
        self.admit_queued()

    def queue_position(self, session_id: str) -> int | None:
        """1 for the next queued session to start, and so on; None when it is not queued."""
        queue = self._queue()
        return queue.index(session_id) + 1 if session_id in queue else None

    def admit_queued(self) -> list[str]:
        """Start queued sessions, oldest first, while there is room for their VMs; the ids
        started. Their expiry starts again: the time allowed is the sign-in's own."""
        with self._intake:  # a stop() ends them all, or none starts
            if self._stopping:
                return []
            return self._admit_queued()

    def _admit_queued(self) -> list[str]:
        started: list[tuple[str, Reservation]] = []
        unused: list[Reservation] = []
        with self._admission:
            queue = self._queue()
            for session_id in queue:
                reservation = self.capacity.try_reserve(BROWSER_IMAGE)
                if reservation is None:
                    break
                if self._transition(
                    session_id,
                    AuthSessionStatus.started,
                    "a browser VM can be had: leaving the queue",
                    expires_at=self._expiry(),
                ):
                    started.append((session_id, reservation))
                else:  # it ended meanwhile
                    unused.append(reservation)
        for reservation in unused:
            self.capacity.release(reservation)
        for session_id, reservation in started:
            self._start_thread(session_id, partial(self._run, reservation=reservation))
        for session_id in queue:  # every position moved, or the head may read it again
            self.notifier.bump(session_id)
        return [session_id for session_id, _ in started]

    def get(self, session_id: str) -> AuthSession | None:
        with self.db.session() as s:
            return s.get(AuthSession, session_id)

    def timeline(self, session_id: str) -> list[AuthSessionEvent]:
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(AuthSessionEvent)
                    .where(AuthSessionEvent.session_id == session_id)
                    .order_by(AuthSessionEvent.id)
                )
            )

    def cancel(self, session_id: str) -> AuthSession | None:
        self._finish(session_id, AuthSessionStatus.cancelled, "cancelled through the API")
        self.admit_queued()  # the queue behind it moves up
        return self.get(session_id)

    def token_session(self, session_id: str, token: str) -> AuthSession | None:
        """The session whose live-view token `token` is, whether it runs or ended."""
        session = self.get(session_id)
        if session and hmac.compare_digest(session.live_token_hash, token_hash(token)):
            return session
        return None

    def token_valid(self, session_id: str, token: str) -> bool:
        """Whether `token` opens the session's live view: its token, while it runs."""
        session = self.token_session(session_id, token)
        return bool(session and session.status not in TERMINAL)

    def live_view(self, session_id: str, token: str) -> LiveView | None:
        """What the live view may open: only while the session runs, and with its token."""
        if not self.token_valid(session_id, token):
            return None
        session = self.get(session_id)
        vm = self.vms.get(session.vm_id) if session.vm_id else None
        if vm is None or vm.state != VmState.ready:
            return LiveView(session.provider, None, session.status, self.queue_position(session_id))
        password = machine.seed_of(self.settings, vm.id)[VNC_PASSWORD]
        return LiveView(session.provider, LiveTarget(vm.ip, VNC_PORT, password), session.status)

    def egress_failed(self, session_id: str, reason: str) -> None:
        """The session's VM cannot reach its provider (its upstream proxy refused us, say):
        end the sign-in with the reason now rather than leave the user at a broken page."""
        self._finish(session_id, AuthSessionStatus.failed, reason)

    # -- housekeeping ------------------------------------------------------------------------

    def expire_due(self) -> list[str]:
        """End every running or queued session past its expiry (their threads destroy the
        VMs), then admit the queue: room freed elsewhere (a VM removed by another process)
        is found here too."""
        now = datetime.now(UTC)
        with self.db.session() as s:
            due = list(
                s.scalars(
                    select(AuthSession.id).where(
                        AuthSession.status.not_in(TERMINAL), AuthSession.expires_at <= now
                    )
                )
            )
        for session_id in due:
            self._finish(
                session_id, AuthSessionStatus.expired, "the session expired before sign-in finished"
            )
        self.admit_queued()
        return due

    def stop(self, deadline: float) -> list[str]:
        """The controller is stopping: take no new sign-in, end those in progress cancelled
        ("the controller stopped"), and wait until `deadline` (time.monotonic()) for their
        threads, which destroy the browser VMs as at any end; the sessions' ids."""
        with self._intake:
            self._stopping = True
        ended = []
        for session in self._running():
            if self._transition(session.id, AuthSessionStatus.cancelled, STOPPED):
                ended.append(session.id)
        with self._intake:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return ended

    def recover(self) -> Recovery:
        """At start-up (after the reconciler): a session whose browser VM still runs a login
        that waits is adopted, and a thread follows it on as its own did; the others fail
        ("the controller restarted during the sign-in") and their browser VMs go (a VM that
        may hold a login is never reused). Queued sessions hold nothing: they wait on, and
        the queue is admitted against the VMs that run now; sessions this process drives
        already (admitted while the reconciler freed room) are its own, not stale."""
        recovery = Recovery()
        stale = [
            session
            for session in self._running()
            if session.status != AuthSessionStatus.queued and session.id not in self._threads
        ]
        for session in stale:
            if self._login_waiting(session):
                self._transition(session.id, session.status, ADOPTED)
                self._start_thread(session.id, self._follow_adopted)
                recovery.adopted.append(session.id)
            else:
                self._finish(session.id, AuthSessionStatus.failed, RESTARTED)
                self._destroy_vm(session.vm_id)
                recovery.failed.append(session.id)
        self.admit_queued()
        return recovery

    def _login_waiting(self, session: AuthSession) -> bool:
        """Whether the session's VM is ready and its CLI login runs on, not yet over."""
        if session.vm_id is None:
            return False
        vm = self.vms.get(session.vm_id)
        if vm.state != VmState.ready or not self.vms.vmm_alive(vm):
            return False
        try:
            with self.vms.agent(vm) as agent:
                return not agent.login_status().exited
        except (httpx.HTTPError, ValueError):  # no login there, or an agent that is not well
            return False

    # -- the session's own thread ------------------------------------------------------------

    def _start_thread(self, session_id: str, target: Callable[[str], None]) -> None:
        def run() -> None:
            try:
                target(session_id)
            finally:
                with self._intake:
                    self._threads.pop(session_id, None)

        thread = threading.Thread(target=run, name=f"session-{session_id}", daemon=True)
        with self._intake:
            self._threads[session_id] = thread
        thread.start()

    def _run(self, session_id: str, reservation: Reservation) -> None:
        """Take a warm browser VM or boot one on the room reserved for it, start the CLI's
        login in it (unless the pool VM's runs already), and follow it to the end."""
        session = self.get(session_id)
        with self._ending(session_id) as cleanup:
            cleanup.reservation = reservation
            warm = self._warm_vm(session_id, session.provider, cleanup)
            vm, login_started = warm or (self._cold_vm(session_id, cleanup), False)
            self._check_running(session_id)
            with self.vms.agent(vm) as agent:
                if login_started and not _login_runs(agent):
                    self._advance(session_id, AuthSessionStatus.vm_booting, LOGIN_AHEAD_GONE)
                    login_started = False
                if not login_started:
                    agent.start_login(login_request(self.settings, self.vms, session.provider))
            self._follow(session_id, vm)

    def _warm_vm(self, session_id: str, provider: str, cleanup: _Cleanup) -> tuple[Vm, bool] | None:
        """A VM from the warm pool, resumed, and whether its login for `provider` was
        started ahead; None (the pool had none, or it did not resume: the timeline says so,
        and that VM is gone) for a cold boot."""
        taken = self.pool.take(provider) if self.pool is not None else None
        if taken is None:
            detail = POOL_EMPTY if self.pool is not None and self.pool.size else COLD_BOOT
            self._advance(session_id, AuthSessionStatus.vm_booting, detail)
            return None
        cleanup.vm_id = taken.vm_id
        self.capacity.bind(cleanup.reservation, taken.vm_id)  # it wakes on the session's room
        self._update(session_id, vm_id=taken.vm_id)
        detail = f"{FROM_POOL} ({taken.vm_id})"
        if taken.login_started:
            detail += f", {SIGN_IN_AHEAD.format(provider)}"
        self._advance(session_id, AuthSessionStatus.vm_booting, detail)
        try:
            vm = self.pool.wake(taken.vm_id)
            self.capacity.release(cleanup.reservation)  # it runs, and counts, now
            return vm, taken.login_started
        except Exception as e:  # noqa: BLE001 - any failure falls back to a cold boot
            self._destroy_vm(taken.vm_id)
            cleanup.vm_id = None
            self._check_running(session_id)
            detail = POOL_RESUME_FAILED.format(failure_reason(e))
            self._transition(session_id, AuthSessionStatus.vm_booting, detail)
            return None

    def _cold_vm(self, session_id: str, cleanup: _Cleanup) -> Vm:
        # Recorded before it boots, so that a VM whose boot fails is destroyed too.
        cleanup.vm_id = self.capacity.record(cleanup.reservation, BROWSER_IMAGE)
        self.capacity.release(cleanup.reservation)  # the record counts now
        self._update(session_id, vm_id=cleanup.vm_id)
        self.vms.finish_create(cleanup.vm_id, seed_extras=browser_seed())
        return self.vms.get(cleanup.vm_id)

    def _follow_adopted(self, session_id: str) -> None:
        """Follow a login an earlier controller started, from wherever it has got to."""
        session = self.get(session_id)
        with self._ending(session_id) as cleanup:
            cleanup.vm_id = session.vm_id
            self._follow(session_id, self.vms.get(session.vm_id))

    @contextmanager
    def _ending(self, session_id: str) -> Iterator[_Cleanup]:
        """End the session however its work ends (with the reason when it fails), and
        destroy its browser VM whatever the end."""
        cleanup = _Cleanup()
        try:
            yield cleanup
        except _SessionEnded:
            pass
        except SessionError as e:  # ours, in full: a login's error ends with the CLI's screen
            self._finish(session_id, AuthSessionStatus.failed, str(e))
        except Exception as e:  # noqa: BLE001 - any failure ends the session, with its reason
            self._finish(session_id, AuthSessionStatus.failed, failure_reason(e))
        finally:
            self._destroy_vm(cleanup.vm_id)
            self.capacity.release(cleanup.reservation)

    def _follow(self, session_id: str, vm: Vm) -> None:
        """Wait for the authorize page, then for the user, then store the credentials."""
        session = self.get(session_id)
        spec = providers.get(session.provider)
        with self.vms.agent(vm) as agent:
            status = self._wait(
                session_id, agent, authorize_page_shown, "Firefox to show the authorize page"
            )
            if self.get(session_id).status != AuthSessionStatus.awaiting_user:
                self._advance(session_id, AuthSessionStatus.awaiting_user, oauth_url=status.url)
            status = self._wait(session_id, agent, _login_over, "the sign-in")
            if not status.success:
                raise _login_failed(status, "without signing in")
            files = agent.credentials()
        email, expires_at = spec.account(files)
        self.credentials.put(
            session.user_id, session.provider, files, account_email=email, expires_at=expires_at
        )
        self._advance(
            session_id,
            AuthSessionStatus.completed,
            detail=f"credentials stored for {email or 'the account'}",
        )
        self.on_stored(session.user_id, session.provider)

    def _wait(
        self, session_id: str, agent, done: Callable[[LoginStatus], bool], what: str
    ) -> LoginStatus:
        """Poll the agent until `done`, the session ends, or it expires."""
        session = self.get(session_id)
        remaining = (session.expires_at - datetime.now(UTC)).total_seconds()
        last: LoginStatus | None = None

        def check() -> bool:
            nonlocal last
            self._check_running(session_id)
            try:
                last = agent.login_status()
            except httpx.HTTPError:
                return False
            return done(last)

        try:
            wait_for(check, max(remaining, 0.1), what, interval=self.settings.agent_poll_interval)
        except Timeout:
            self._finish(session_id, AuthSessionStatus.expired, f"expired waiting for {what}")
            raise _SessionEnded from None
        assert last is not None  # wait_for returned: check() saw `done`
        return last

    def _check_running(self, session_id: str) -> None:
        if self.get(session_id).status in TERMINAL:
            raise _SessionEnded

    def _destroy_vm(self, vm_id: str | None) -> None:
        if vm_id:
            self.vms.destroy(vm_id)

    # -- state -------------------------------------------------------------------------------

    def _running(self) -> list[AuthSession]:
        """Every session that has not ended, oldest first."""
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(AuthSession)
                    .where(AuthSession.status.not_in(TERMINAL))
                    .order_by(AuthSession.created_at)
                )
            )

    def _queue(self) -> list[str]:
        """The queued sessions' ids, first in first."""
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(AuthSession.id)
                    .where(AuthSession.status == AuthSessionStatus.queued)
                    .order_by(AuthSession.created_at, AuthSession.id)
                )
            )

    def _expiry(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.settings.session_ttl)

    def _active(self, user_id: str, provider: str) -> list[AuthSession]:
        with self.db.session() as s:
            return list(
                s.scalars(
                    select(AuthSession).where(
                        AuthSession.user_id == user_id,
                        AuthSession.provider == provider,
                        AuthSession.status.not_in(TERMINAL),
                    )
                )
            )

    def _advance(
        self, session_id: str, status: AuthSessionStatus, detail: str | None = None, **fields
    ):
        """Move a running session on; a session that ended meanwhile stays ended."""
        if not self._transition(session_id, status, detail, **fields):
            raise _SessionEnded

    def _finish(self, session_id: str, status: AuthSessionStatus, detail: str) -> None:
        error = detail if status == AuthSessionStatus.failed else None
        self._transition(session_id, status, detail, error=error)

    def _transition(
        self, session_id: str, status: AuthSessionStatus, detail: str | None, **fields
    ) -> bool:
        """Move a session that has not ended to `status`, with its event; False if it had
        ended. One conditional UPDATE decides, so a cancel and the session's own thread
        cannot both win (SQLite ignores SELECT ... FOR UPDATE); the one out of the queue is
        tried first, so that the UPDATE that wins also says whether the session was queued."""

        def move(s, *where) -> bool:
            moved = s.execute(
                update(AuthSession)
                .where(AuthSession.id == session_id, *where)
                .values(status=status, **fields)
            )
            return bool(moved.rowcount)

        with self.db.session() as s:
            left_queue = status != AuthSessionStatus.queued and move(
                s, AuthSession.status == AuthSessionStatus.queued
            )
            if not (left_queue or move(s, AuthSession.status.not_in(TERMINAL))):
                return False
            s.add(AuthSessionEvent(session_id=session_id, status=status, detail=detail))
            webhooks.sign_in_moved(s, session_id)
            s.commit()
        self.notifier.bump(session_id)
        if left_queue:
            metrics.sign_in_left_queue(self.get(session_id))
        if status in TERMINAL:
            metrics.sign_in_ended(self.get(session_id))
        return True

    def _update(self, session_id: str, **fields) -> None:
        self.db.update(AuthSession, session_id, **fields)


def _queued_detail(position: int) -> str:
    return f"queued, position {position}: no browser VM can be started now"


def login_request(settings: Settings, vms: VmManager, provider: str) -> dict:
    """What the agent's POST /login takes for `provider`'s login: the same for every user."""
    spec = providers.get(provider)
    return spec.to_agent(spec.login_params(settings), vms.client_env())


def _login_runs(agent) -> bool:
    """Whether the VM's login (started ahead, in a pool VM) is still there and running."""
    try:
        return not agent.login_status().exited
    except AgentRequestError as e:
        if e.response.status_code == HTTPStatus.NOT_FOUND:  # none was started, or it is gone
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
