"""Webhooks: the app is told, by signed POSTs to its endpoints, when something it cares
about happened (docs/webhooks.md is the receiver's side).

The hooks below queue an event in the outbox (hearth.store.outbox), in the transaction of
the change where the caller has one. An event carries ids, the provider, statuses and
times, never a credential, token or password: the app asks the API for anything more.

The worker posts each delivery with httpx, signed as Standard Webhooks sign
(`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`), and retries what got no 2xx with exponential backoff and jitter
until `webhook_retry_window` after the event. Every attempt is recorded.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import logging
import random
import threading
import time
from datetime import datetime, timedelta

import httpx
from sqlalchemy.orm import Session

from hearth.config import Settings
from hearth.core.failures import reason as failure_reason
from hearth.store import outbox
from hearth.store.db import Database
from hearth.store.models import AuthSession, Prompt, Vm, utcnow
from hearth.store.webhook_endpoints import WebhookEndpoints, signing_key

log = logging.getLogger(__name__)

BATCH = 50  # deliveries claimed per pass
POLL_SECONDS = 5.0  # longest sleep between passes: events other processes queue wait this
CLAIM_MARGIN = 30.0  # seconds past an attempt's timeout before another worker may retry it
PRUNE_EVERY = 3600.0  # seconds between the worker's removals of events past their retention
JITTER = 0.2  # each backoff is moved by up to this fraction, either way
USER_AGENT = "Hearth-Webhooks/1"


class EventType(enum.StrEnum):
    sign_in_completed = "sign_in.completed"
    sign_in_failed = "sign_in.failed"
    sign_in_expired = "sign_in.expired"
    credentials_refreshed = "credentials.refreshed"
    credentials_invalid = "credentials.invalid"
    prompt_done = "prompt.done"
    vm_crashed = "vm.crashed"


_SIGN_IN_ENDS = {
    "completed": EventType.sign_in_completed,
    "failed": EventType.sign_in_failed,
    "expired": EventType.sign_in_expired,
}


# -- the hooks ------------------------------------------------------------------------------


def sign_in_moved(s: Session, session_id: str) -> None:
    """In the transaction that moved the session: an event if it ended completed, failed
    or expired (a cancel is the app's own doing, and it is told in the answer)."""
    session = s.get(AuthSession, session_id, populate_existing=True)
    event_type = _SIGN_IN_ENDS.get(session.status)
    if event_type is not None:
        outbox.add(
            s,
            event_type,
            {
                "session_id": session.id,
                "user_id": session.user_id,
                "provider": session.provider,
                "status": session.status,
                "started_at": session.created_at.isoformat(),
                "ended_at": session.updated_at.isoformat(),
            },
        )


def credentials_refreshed(db: Database, user_id: str, provider: str, version: int) -> None:
    """A CLI refreshed its tokens and they were stored as `version`."""
    outbox.publish(
        db,
        EventType.credentials_refreshed,
        {"user_id": user_id, "provider": provider, "version": version, "status": "ready"},
    )


def credentials_invalid(db: Database, user_id: str, provider: str, version: int) -> None:
    """The provider refused stored `version` (a check or a run): the user must sign in."""
    outbox.publish(
        db,
        EventType.credentials_invalid,
        {"user_id": user_id, "provider": provider, "version": version, "status": "invalid"},
    )


def prompt_done(s: Session, prompt: Prompt) -> None:
    """In the transaction that ended the prompt, however it ended."""
    outbox.add(
        s,
        EventType.prompt_done,
        {
            "prompt_id": prompt.id,
            "user_id": prompt.user_id,
            "provider": prompt.provider,
            "status": prompt.status,
            "exit_code": prompt.exit_code,
            "duration_seconds": prompt.duration_seconds,
            "started_at": prompt.created_at.isoformat(),
            "finished_at": prompt.finished_at.isoformat() if prompt.finished_at else None,
        },
    )


def vm_crashed(db: Database, vm: Vm) -> None:
    """A VM recorded ready was found without its VMM (it is destroyed next)."""
    outbox.publish(
        db,
        EventType.vm_crashed,
        {
            "vm_id": vm.id,
            "image": vm.image,
            "user_id": vm.user_id,
            "state": vm.state,
            "found_at": utcnow().isoformat(),
        },
    )


# -- signing ------------------------------------------------------------------------------


def signature(secret: str, delivery_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` header's value: `v1,` and the base64 of the HMAC-SHA256, keyed
    by the secret's bytes, of `{webhook-id}.{webhook-timestamp}.{body}`."""
    signed = f"{delivery_id}.{timestamp}.{body}".encode()
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def backoff(settings: Settings, failed_attempts: int) -> float:
    """Seconds before the next attempt: base doubling per failed attempt, capped, jittered."""
    delay = min(
        settings.webhook_backoff_cap, settings.webhook_backoff_base * 2 ** (failed_attempts - 1)
    )
    return delay * random.uniform(1 - JITTER, 1 + JITTER)


# -- the worker ------------------------------------------------------------------------------


class WebhookWorker:
    """Posts due deliveries from a thread of its own until stopped; woken by the outbox's
    doorbell, and otherwise when the next retry falls due (or every POLL_SECONDS)."""

    def __init__(self, settings: Settings, db: Database, endpoints: WebhookEndpoints):
        self.settings = settings
        self.db = db
        self.endpoints = endpoints
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_prune = 0.0  # time.monotonic() of the next prune: the first pass does one

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the attempt under way (its timeout bounds the wait)."""
        self._stop.set()
        outbox.doorbell.ring()
        if self._thread is not None:
            self._thread.join(self.settings.webhook_timeout + POLL_SECONDS)

    def _loop(self) -> None:
        while not self._stop.is_set():
            seen = outbox.doorbell.rings()
            try:
                self.deliver_due()
                self._prune_when_due()
                outbox.doorbell.wait(seen, self._idle_seconds())
            except Exception as e:  # noqa: BLE001 - logged; the deliveries stay in the outbox
                log.warning("webhook delivery pass failed: %s", failure_reason(e))
                self._stop.wait(POLL_SECONDS)

    def _prune_when_due(self) -> None:
        if time.monotonic() < self._next_prune:
            return
        self._next_prune = time.monotonic() + PRUNE_EVERY
        kept_since = utcnow() - timedelta(seconds=self.settings.webhook_retention)
        pruned = outbox.prune(self.db, kept_since)
        if pruned:
            log.info("removed %d webhook events past their retention", pruned)

    def _idle_seconds(self) -> float:
        upcoming = outbox.next_due(self.db)
        if upcoming is None:
            return POLL_SECONDS
        return min(POLL_SECONDS, max(0.0, (upcoming - utcnow()).total_seconds()))

    def deliver_due(self) -> int:
        """Attempt every delivery due now; how many were attempted."""
        attempted = 0
        for delivery_id in outbox.due(self.db, BATCH):
            if self._stop.is_set():
                break
            until = utcnow() + timedelta(seconds=self.settings.webhook_timeout + CLAIM_MARGIN)
            claimed = outbox.claim(self.db, delivery_id, until)
            if claimed is not None:
                self._attempt(claimed)
                attempted += 1
        return attempted

    def _attempt(self, claimed: outbox.Claimed) -> None:
        secret = self.endpoints.secret(claimed.endpoint_id)
        if secret is None:
            return  # deleted since the claim, with its deliveries
        number = claimed.attempts + 1
        started_at = utcnow()
        started = time.monotonic()
        status_code, error = self._post(claimed, secret)
        attempt = outbox.AttemptInfo(
            number, started_at, time.monotonic() - started, status_code, error
        )
        retry_at = None if error is None else self._retry_at(claimed, number)
        outbox.record(self.db, claimed, attempt, retry_at)

    def _post(self, claimed: outbox.Claimed, secret: str) -> tuple[int | None, str | None]:
        """The endpoint's status code and, unless it was 2xx, what went wrong."""
        timestamp = int(time.time())  # signed afresh each attempt, so a late retry is current
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": claimed.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(secret, claimed.id, timestamp, claimed.body),
        }
        timeout = self.settings.webhook_timeout
        try:
            # Directly, never through the environment's proxy; no redirects followed.
            with httpx.Client(timeout=timeout, trust_env=False) as http:
                answer = http.post(claimed.url, content=claimed.body.encode(), headers=headers)
        except httpx.TimeoutException:
            return None, f"no answer within {timeout:g} s"
        except httpx.HTTPError as e:
            return None, f"could not post: {failure_reason(e)}"
        if answer.is_success:
            return answer.status_code, None
        return answer.status_code, f"the endpoint answered {answer.status_code}"

    def _retry_at(self, claimed: outbox.Claimed, failed_attempts: int) -> datetime | None:
        """When to try again; None once that would be past the retry window."""
        at = utcnow() + timedelta(seconds=backoff(self.settings, failed_attempts))
        deadline = claimed.event_created_at + timedelta(seconds=self.settings.webhook_retry_window)
        return at if at <= deadline else None
