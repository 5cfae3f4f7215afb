"""Auth sessions: a user signs a CLI into a provider inside a disposable browser VM.

started -> vm_booting -> awaiting_user -> completed, or failed / cancelled / expired; a
sign-in beyond capacity (hearth.core.capacity) is first `queued`, and leaves the queue in
order as room frees. The database holds every session and its timeline; a thread per
session drives its browser VM (hearth.core.sign_in_vm: the VM work is blocking), and a
notifier wakes whoever streams its events.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING

from sqlalchemy import select, update

from hearth import metrics, providers
from hearth.config import BROWSER_IMAGE, Settings
from hearth.core import machine, webhooks
from hearth.core.capacity import Capacity, NoCapacity, Reservation
from hearth.core.sign_in_vm import TERMINAL, VNC_PASSWORD, SessionEnded, SignInVm
from hearth.core.stopping import ControllerStopping
from hearth.core.vms import VmManager
from hearth.guest.ports import VNC_PORT
from hearth.store.credentials import CredentialStore
from hearth.store.db import Database
from hearth.store.models import AuthSession, AuthSessionEvent, AuthSessionStatus, VmState

if TYPE_CHECKING:
    from hearth.core.warm_pool import WarmPool

ADOPTED = "adopted after a controller restart: the login in the browser VM waits on"
RESTARTED = "the controller restarted during the sign-in"
STOPPED = "the controller stopped"


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
        self.capacity = capacity
        self.browser = SignInVm(settings, vms, capacity, credentials, self, on_stored, pool)
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
                self.finish(old, AuthSessionStatus.cancelled, f"superseded by session {session_id}")
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
            self._start_thread(session_id, partial(self.browser.run, reservation=reservation))
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
                if self.transition(
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
            self._start_thread(session_id, partial(self.browser.run, reservation=reservation))
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
        self.finish(session_id, AuthSessionStatus.cancelled, "cancelled through the API")
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
        self.finish(session_id, AuthSessionStatus.failed, reason)

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
            self.finish(
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
            if self.transition(session.id, AuthSessionStatus.cancelled, STOPPED):
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
            if self.browser.login_waiting(session):
                self.transition(session.id, session.status, ADOPTED)
                self._start_thread(session.id, self.browser.follow_adopted)
                recovery.adopted.append(session.id)
            else:
                self.finish(session.id, AuthSessionStatus.failed, RESTARTED)
                self.browser.destroy(session.vm_id)
                recovery.failed.append(session.id)
        self.admit_queued()
        return recovery

    # -- the session's own thread (its work: self.browser) --------------------------------

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

    # -- the record, as the session's thread moves it too (sign_in_vm.Record) ---------------

    def advance(
        self, session_id: str, status: AuthSessionStatus, detail: str | None = None, **fields
    ) -> None:
        """Move a running session on; a session that ended meanwhile stays ended."""
        if not self.transition(session_id, status, detail, **fields):
            raise SessionEnded

    def finish(self, session_id: str, status: AuthSessionStatus, detail: str) -> None:
        error = detail if status == AuthSessionStatus.failed else None
        self.transition(session_id, status, detail, error=error)

    def transition(
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

    def update(self, session_id: str, **fields) -> None:
        self.db.update(AuthSession, session_id, **fields)


def _queued_detail(position: int) -> str:
    return f"queued, position {position}: no browser VM can be started now"
