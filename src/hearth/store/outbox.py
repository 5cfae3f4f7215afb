"""The transactional outbox: webhook events written in the transaction of the change they
tell of, one delivery per subscribed endpoint, and each delivery's attempts.

What is committed here is delivered eventually, whatever happens to the process: the
delivery worker (hearth.core.webhooks) reads due deliveries from the database, so a restart
loses none. A worker claims a delivery for one attempt by moving its due time past the
attempt's timeout in one conditional UPDATE, so two workers never post it at once and one
that dies mid-attempt leaves it due again. The doorbell wakes this process's worker when a
transaction that queued an event commits; what other processes queue is found at its next
poll.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, event, func, select, update
from sqlalchemy.orm import Session

from hearth.store.db import Database
from hearth.store.models import (
    DeliveryStatus,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)

_QUEUED = "hearth.outbox.queued"  # a Session.info key: this transaction queued an event


class Doorbell:
    """Rung when an event is committed; a waiter that read `rings()` before it looked at the
    outbox cannot miss a ring that came after. Memory only: the events are in the database."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rings = 0

    def rings(self) -> int:
        with self._cond:
            return self._rings

    def ring(self) -> None:
        with self._cond:
            self._rings += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._rings != seen, timeout)


doorbell = Doorbell()  # one per process: every outbox write in it rings this


@event.listens_for(Session, "after_commit")
def _ring_when_queued(session: Session) -> None:
    if session.info.pop(_QUEUED, False):
        doorbell.ring()


@event.listens_for(Session, "after_rollback")
def _forget_when_rolled_back(session: Session) -> None:
    session.info.pop(_QUEUED, None)


@dataclass(frozen=True)
class Claimed:
    """A delivery claimed for one attempt: what to post where, and how it has gone so far."""

    id: str
    endpoint_id: str
    url: str
    body: str
    attempts: int  # made before this one
    event_created_at: datetime


@dataclass(frozen=True)
class AttemptInfo:
    number: int
    started_at: datetime
    duration_seconds: float
    status_code: int | None
    error: str | None


@dataclass(frozen=True)
class DeliveryInfo:
    id: str
    event_id: str
    event_type: str
    endpoint_id: str
    status: str
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    created_at: datetime
    attempts: tuple[AttemptInfo, ...]


def subscribed(s: Session, event_type: str) -> list[str]:
    """Ids of the enabled endpoints that asked for `event_type`, read in `s`."""
    rows = s.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.events).where(WebhookEndpoint.enabled)
    )
    return [row.id for row in rows if event_type in json.loads(row.events)]


def add(s: Session, event_type: str, data: dict) -> str | None:
    """Queue an event in `s`'s transaction for every enabled endpoint that asked for it;
    its id, or None when no endpoint did (then nothing is written)."""
    endpoints = subscribed(s, event_type)
    if not endpoints:
        return None
    event_id = uuid.uuid4().hex
    now = utcnow()
    body = {"id": event_id, "type": event_type, "created_at": now.isoformat(), "data": data}
    s.add(WebhookEvent(id=event_id, type=event_type, body=json.dumps(body), created_at=now))
    s.flush()  # the event before its deliveries, whose foreign key names it
    s.add_all(
        WebhookDelivery(
            id=uuid.uuid4().hex,
            event_id=event_id,
            endpoint_id=endpoint_id,
            status=DeliveryStatus.pending,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        for endpoint_id in endpoints
    )
    s.info[_QUEUED] = True
    return event_id


def publish(db: Database, event_type: str, data: dict) -> str | None:
    """`add` in a transaction of its own, for a change that committed in another."""
    with db.session() as s:
        event_id = add(s, event_type, data)
        s.commit()
    return event_id


def prune(db: Database, before: datetime) -> int:
    """Delete the events created before `before` none of whose deliveries is pending, with
    their deliveries and attempts (the foreign keys cascade); how many. An event that still
    has a delivery to make stays, however old (its retry window ends it first)."""
    pending = select(WebhookDelivery.event_id).where(
        WebhookDelivery.status == DeliveryStatus.pending
    )
    with db.session() as s:
        gone = s.execute(
            delete(WebhookEvent).where(
                WebhookEvent.created_at < before, WebhookEvent.id.not_in(pending)
            )
        )
        s.commit()
        return gone.rowcount


def _due(now: datetime):
    return (
        select(WebhookDelivery.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(
            WebhookDelivery.status == DeliveryStatus.pending,
            WebhookDelivery.next_attempt_at <= now,
            WebhookEndpoint.enabled,
        )
    )


def due(db: Database, limit: int) -> list[str]:
    """Ids of deliveries due an attempt now, the longest due first."""
    with db.session() as s:
        query = _due(utcnow()).order_by(WebhookDelivery.next_attempt_at).limit(limit)
        return list(s.scalars(query))


def next_due(db: Database) -> datetime | None:
    """When the next pending delivery of an enabled endpoint falls due."""
    with db.session() as s:
        return s.scalars(
            select(func.min(WebhookDelivery.next_attempt_at))
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.status == DeliveryStatus.pending, WebhookEndpoint.enabled)
        ).one()


def claim(db: Database, delivery_id: str, until: datetime) -> Claimed | None:
    """Take a due delivery for one attempt that must be over by `until`; None if it is not
    due any more (another worker took it, or it was delivered)."""
    now = utcnow()
    with db.session() as s:
        taken = s.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == DeliveryStatus.pending,
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(next_attempt_at=until)
        ).rowcount
        s.commit()
        if not taken:
            return None
        row = s.execute(
            select(
                WebhookDelivery.id,
                WebhookDelivery.endpoint_id,
                WebhookEndpoint.url,
                WebhookEvent.body,
                WebhookDelivery.attempts,
                WebhookEvent.created_at,
            )
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.id == delivery_id)
        ).one()
        return Claimed(*row)


def record(
    db: Database, claimed: Claimed, attempt: AttemptInfo, next_attempt_at: datetime | None
) -> None:
    """Keep an attempt of a claimed delivery, and what follows: delivered (no error), due
    again at `next_attempt_at`, or, with neither, failed for good. Nothing is kept for a
    delivery whose endpoint was deleted meanwhile."""
    if attempt.error is None:
        outcome = {"status": DeliveryStatus.delivered, "delivered_at": utcnow()}
    elif next_attempt_at is not None:
        outcome = {"status": DeliveryStatus.pending}
    else:
        outcome = {"status": DeliveryStatus.failed}
    with db.session() as s:
        kept = s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == claimed.id)
            .values(
                attempts=WebhookDelivery.attempts + 1,
                next_attempt_at=next_attempt_at if attempt.error else None,
                **outcome,
            )
        ).rowcount
        if kept:
            s.add(
                WebhookAttempt(
                    delivery_id=claimed.id,
                    number=attempt.number,
                    started_at=attempt.started_at,
                    duration_seconds=attempt.duration_seconds,
                    status_code=attempt.status_code,
                    error=attempt.error,
                )
            )
        s.commit()


def deliveries(
    db: Database, endpoint_id: str, status: DeliveryStatus | None = None, limit: int = 100
) -> list[DeliveryInfo]:
    """An endpoint's deliveries, newest first, each with its attempts, oldest first."""
    with db.session() as s:
        query = (
            select(WebhookDelivery, WebhookEvent.type)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
        )
        if status is not None:
            query = query.where(WebhookDelivery.status == status)
        rows = s.execute(
            query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id).limit(limit)
        ).all()
        attempts: dict[str, list[AttemptInfo]] = {row[0].id: [] for row in rows}
        for attempt in s.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(attempts))
            .order_by(WebhookAttempt.number)
        ):
            attempts[attempt.delivery_id].append(
                AttemptInfo(
                    attempt.number,
                    attempt.started_at,
                    attempt.duration_seconds,
                    attempt.status_code,
                    attempt.error,
                )
            )
        return [
            DeliveryInfo(
                d.id,
                d.event_id,
                event_type,
                d.endpoint_id,
                d.status,
                d.next_attempt_at,
                d.delivered_at,
                d.created_at,
                tuple(attempts[d.id]),
            )
            for d, event_type in rows
        ]
