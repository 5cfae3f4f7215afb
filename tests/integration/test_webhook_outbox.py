"""The webhook outbox and endpoints on every backend (SQLite and a real PostgreSQL): an
event written in the transaction of its change (and gone with a rollback), fanned out to
the enabled endpoints that asked for it; a claim that only one of many racing workers wins;
attempts recorded in order; deletion taking deliveries and attempts along (an endpoint's, or
events past their retention); the endpoint's
secret sealed at rest, bound to its row, and re-wrapped by a master key rotation."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from hearth.config import Settings
from hearth.store import outbox
from hearth.store.credentials import CredentialStore
from hearth.store.crypto import DecryptionFailed, Keyring
from hearth.store.db import Database
from hearth.store.models import (
    DeliveryStatus,
    Vm,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    utcnow,
)
from hearth.store.webhook_endpoints import WebhookEndpoints

RACERS = 8


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", master_key="")


@pytest.fixture
def endpoints(db: Database, settings: Settings) -> WebhookEndpoints:
    return WebhookEndpoints(db, Keyring.from_settings(settings))


def attempt(number: int, error: str | None) -> outbox.AttemptInfo:
    return outbox.AttemptInfo(number, utcnow(), 0.01, 500 if error else 204, error)


def count(db: Database, model: type) -> int:
    with db.session() as s:
        return s.scalars(select(func.count()).select_from(model)).one()


def test_an_event_goes_to_the_enabled_endpoints_that_asked_for_it_in_its_transaction(
    db: Database, endpoints: WebhookEndpoints
) -> None:
    crashes, _ = endpoints.create("https://a.example/hook", ["vm.crashed"])
    everything, _ = endpoints.create("https://b.example/hook", ["vm.crashed", "prompt.done"])
    disabled, _ = endpoints.create("https://c.example/hook", ["vm.crashed"])
    endpoints.set_enabled(disabled.id, False)

    with db.session() as s:  # the change and its event, rolled back together
        s.add(Vm(id="vm1", image="cli", vmm="qemu", tap="hth1", agent_token="t"))
        outbox.add(s, "vm.crashed", {"vm_id": "vm1"})
        s.rollback()
    assert count(db, WebhookDelivery) == 0

    with db.session() as s:
        s.add(Vm(id="vm1", image="cli", vmm="qemu", tap="hth1", agent_token="t"))
        event_id = outbox.add(s, "vm.crashed", {"vm_id": "vm1"})
        s.commit()
    assert outbox.publish(db, "sign_in.completed", {"session_id": "s"}) is None  # no takers

    for endpoint in (crashes, everything):
        [delivery] = outbox.deliveries(db, endpoint.id)
        assert (delivery.event_id, delivery.event_type, delivery.status) == (
            event_id,
            "vm.crashed",
            "pending",
        )
    assert outbox.deliveries(db, disabled.id) == []
    due = outbox.due(db, 10)
    assert len(due) == 2
    claimed = outbox.claim(db, due[0], utcnow() + timedelta(seconds=60))
    body = json.loads(claimed.body)
    assert body["id"] == event_id and body["type"] == "vm.crashed"
    assert body["data"] == {"vm_id": "vm1"}


def test_one_claim_wins_among_racing_workers_and_the_claim_lapses_for_a_dead_one(
    db: Database, endpoints: WebhookEndpoints
) -> None:
    endpoints.create("https://a.example/hook", ["vm.crashed"])
    outbox.publish(db, "vm.crashed", {"vm_id": "v"})
    [delivery_id] = outbox.due(db, 10)
    start = threading.Barrier(RACERS)

    def race(_: int) -> outbox.Claimed | None:
        start.wait()
        return outbox.claim(db, delivery_id, utcnow() + timedelta(seconds=60))

    with ThreadPoolExecutor(RACERS) as pool:
        won = [c for c in pool.map(race, range(RACERS)) if c is not None]
    assert len(won) == 1 and won[0].attempts == 0
    assert outbox.due(db, 10) == []  # claimed: not due until the claim lapses

    # A worker that claimed and died: its claim lapses, and the delivery is due again.
    with db.session() as s:
        s.get(WebhookDelivery, delivery_id).next_attempt_at = utcnow() - timedelta(seconds=1)
        s.commit()
    assert outbox.due(db, 10) == [delivery_id]


def test_attempts_are_recorded_in_order_until_delivered_or_given_up(
    db: Database, endpoints: WebhookEndpoints
) -> None:
    endpoint, _ = endpoints.create("https://a.example/hook", ["vm.crashed"])
    delivered_event = outbox.publish(db, "vm.crashed", {"vm_id": "ok"})
    given_up_event = outbox.publish(db, "vm.crashed", {"vm_id": "down"})
    by_event = {d.event_id: d.id for d in outbox.deliveries(db, endpoint.id)}
    now = utcnow()

    first = outbox.claim(db, by_event[delivered_event], now + timedelta(seconds=60))
    outbox.record(db, first, attempt(1, "the endpoint answered 500"), now - timedelta(seconds=1))
    second = outbox.claim(db, by_event[delivered_event], now + timedelta(seconds=60))
    assert second.attempts == 1
    outbox.record(db, second, attempt(2, None), None)
    down = outbox.claim(db, by_event[given_up_event], now + timedelta(seconds=60))
    outbox.record(db, down, attempt(1, "no answer within 10 s"), None)

    views = {d.event_id: d for d in outbox.deliveries(db, endpoint.id)}
    ok = views[delivered_event]
    assert ok.status == DeliveryStatus.delivered and ok.delivered_at is not None
    assert [(a.number, a.status_code, a.error) for a in ok.attempts] == [
        (1, 500, "the endpoint answered 500"),
        (2, 204, None),
    ]
    gone = views[given_up_event]
    assert (gone.status, gone.next_attempt_at, gone.delivered_at) == ("failed", None, None)
    assert outbox.deliveries(db, endpoint.id, DeliveryStatus.failed) == [gone]
    assert outbox.due(db, 10) == []
    assert outbox.claim(db, ok.id, now + timedelta(seconds=60)) is None  # delivered: done

    assert endpoints.delete(endpoint.id) is True
    assert (count(db, WebhookDelivery), count(db, WebhookAttempt)) == (0, 0)
    assert endpoints.delete(endpoint.id) is False
    outbox.record(db, down, attempt(2, None), None)  # a worker finishing after the delete
    assert count(db, WebhookAttempt) == 0


def test_the_secret_is_sealed_at_rest_bound_to_its_endpoint_and_shown_only_at_creation(
    db: Database, endpoints: WebhookEndpoints
) -> None:
    first, secret = endpoints.create("https://a.example/hook", ["vm.crashed"], "the app")
    second, other = endpoints.create("https://b.example/hook", ["vm.crashed"])
    assert secret.startswith("whsec_") and secret != other
    assert endpoints.secret(first.id) == secret
    assert endpoints.get(first.id) == first and secret not in repr(endpoints.list())
    with db.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM webhook_endpoints")).mappings().all()
    dump = repr([dict(r) for r in rows])
    assert secret not in dump and secret.removeprefix("whsec_") not in dump

    # The sealed secret moved to another endpoint's row fails to open.
    with db.session() as s:
        source, target = s.get(WebhookEndpoint, first.id), s.get(WebhookEndpoint, second.id)
        for column in ("key_id", "wrapped_key", "nonce", "ciphertext"):
            setattr(target, column, getattr(source, column))
        s.commit()
    with pytest.raises(DecryptionFailed):
        endpoints.secret(second.id)


def test_a_master_key_rotation_rewraps_endpoint_secrets_before_dropping_the_old_key(
    db: Database, endpoints: WebhookEndpoints, settings: Settings
) -> None:
    endpoint, secret = endpoints.create("https://a.example/hook", ["vm.crashed"])
    old_key = endpoints.keyring.current_key_id
    store = CredentialStore(db, Keyring.from_settings(settings))
    store.put("ada", "claude", {".claude/.credentials.json": b"{}"})

    report = store.rotate_master_key(settings)

    assert (report.rewrapped, report.remaining, report.dropped_key_ids) == (2, 0, (old_key,))
    restarted = WebhookEndpoints(db, Keyring.from_settings(settings))  # the old key is gone
    assert restarted.secret(endpoint.id) == secret
    assert restarted.get(endpoint.id).updated_at == endpoint.updated_at


def test_events_past_their_retention_go_with_their_deliveries_unless_one_is_pending(
    db: Database, endpoints: WebhookEndpoints
) -> None:
    endpoint, _ = endpoints.create("https://a.example/hook", ["vm.crashed"])
    ended, pending, recent = (
        outbox.publish(db, "vm.crashed", {"vm_id": name}) for name in ("ended", "pending", "new")
    )
    by_event = {d.event_id: d.id for d in outbox.deliveries(db, endpoint.id)}
    now = utcnow()
    for event_id in (ended, recent):
        claimed = outbox.claim(db, by_event[event_id], now + timedelta(seconds=60))
        outbox.record(db, claimed, attempt(1, None), None)
    with db.session() as s:  # two of them are old now; the recent one is not
        for event_id in (ended, pending):
            s.get(WebhookEvent, event_id).created_at = now - timedelta(days=31)
        s.commit()

    assert outbox.prune(db, now - timedelta(days=30)) == 1

    with db.session() as s:
        assert set(s.scalars(select(WebhookEvent.id))) == {pending, recent}
    assert {d.event_id for d in outbox.deliveries(db, endpoint.id)} == {pending, recent}
    assert count(db, WebhookAttempt) == 1  # the ended event's attempt went with it
    assert outbox.prune(db, now - timedelta(days=30)) == 0
