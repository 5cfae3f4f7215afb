"""Webhooks (hearth.core.webhooks, hearth.store.outbox) on the root-free core rig: events
made by real flows (a demo sign-in completing, one denied, one expiring; a prompt; a refresh
written back; credentials the IdP revoked; a VM whose process died) delivered by the real
worker over real HTTP to a receiver on 127.0.0.1 that verifies them with the snippet of
docs/webhooks.md (tests/webhook_receiver.py).

Covered: what each event carries, and that no delivery (body or headers) holds any secret
Hearth knows of, checked against the actual values (tokens, live-view token, VNC password,
agent tokens, the endpoint's secret, the master key); retries after a 500 and a timeout,
with the backoff between them, each attempt re-signed with a fresh timestamp under the same
delivery id, and all of it recorded; replayed, stale and forged deliveries refused by the
documented check; a delivery queued while no worker ran delivered by the next controller;
a disabled endpoint's deliveries waiting until it is enabled; the retry window.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from hearth.core import machine, runtime, webhooks
from hearth.core.reconciler import reconcile
from hearth.core.sign_in_vm import VNC_PASSWORD
from hearth.core.webhooks import EventType
from hearth.store import outbox
from hearth.store.models import AuthSession, DeliveryStatus, WebhookEvent
from hearth.vmm.base import kill_pid
from hearth.waiting import wait_for
from tests.core_rig import Rig, build_rig, local_controller
from tests.unit.test_auth_sessions import callback, wait_ended, wait_status
from tests.unit.test_cli_vms import CREDENTIALS, idp_refresh, store_expired
from tests.webhook_receiver import Receiver

PROVIDER = "demo"
WAIT = 30.0
TIMEOUT = 1.0  # each attempt's, in these tests
BASE = 0.3  # the first backoff; then 0.6 (the cap)
CAP = 0.6
SETTINGS = {
    "webhook_timeout": TIMEOUT,
    "webhook_backoff_base": BASE,
    "webhook_backoff_cap": CAP,
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One rig for the module with its webhook worker running, as `hearth serve` runs it."""
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        build_rig(tmp_path_factory.mktemp("rig"), monkeypatch, **SETTINGS) as built,
    ):
        worker = runtime.start_webhooks(built.controller)
        try:
            yield built
        finally:
            worker.stop()


@pytest.fixture
def receiver(rig: Rig) -> Iterator[Receiver]:
    """A receiver with an endpoint for every event; the endpoint goes after the test."""
    endpoints = rig.controller.webhooks
    with Receiver(secret="") as live:
        endpoint, live.secret = endpoints.create(live.url, list(EventType), "the tests'")
        live.endpoint_id = endpoint.id
        yield live
        endpoints.delete(endpoint.id)


def stored_token_values(rig: Rig, user_id: str) -> list[str]:
    tokens = json.loads(rig.controller.credentials.files(user_id, PROVIDER)[CREDENTIALS])
    return [v for v in tokens.values() if isinstance(v, str) and len(v) >= 8]


def sign_in(rig: Rig, user_id: str) -> tuple[str, list[str]]:
    """A demo sign-in completed as a user completes it; its session id and the secrets it
    made (live-view token, the browser VM's VNC password, the tokens stored)."""
    sessions = rig.controller.sessions
    session, token = sessions.start(user_id, PROVIDER)
    waiting = wait_status(rig, session.id, "awaiting_user")
    vnc_password = machine.seed_of(rig.settings, waiting.vm_id)[VNC_PASSWORD]
    assert rig.approve(waiting.oauth_url).status_code == 200
    assert wait_ended(rig, session.id).status == "completed"
    return session.id, [token, vnc_password, *stored_token_values(rig, user_id)]


def known_secrets(rig: Rig, receiver: Receiver) -> list[str]:
    """The secrets Hearth holds besides a sign-in's: the endpoint's secret, every VM's
    agent token, the master keys."""
    found = [receiver.secret, receiver.secret.removeprefix("whsec_")]
    found += [vm.agent_token for vm in rig.vms.list(include_destroyed=True)]
    keys = json.loads(rig.settings.master_key_file.read_text())["keys"]
    return found + list(keys.values())


def assert_no_secret(receiver: Receiver, secrets: list[str]) -> None:
    assert receiver.requests
    for request in receiver.requests:
        seen = request.body.decode() + json.dumps(request.headers)
        for secret in secrets:
            assert secret not in seen, f"a delivery carries a secret: {request.event['type']}"


def attempts_of(rig: Rig, receiver: Receiver, event_id: str) -> outbox.DeliveryInfo:
    found = outbox.deliveries(rig.controller.db, receiver.endpoint_id)
    return next(d for d in found if d.event_id == event_id)


# -- events from real flows ------------------------------------------------------------------


def test_sign_ins_a_prompt_and_credentials_are_told_and_no_delivery_holds_a_secret(
    rig: Rig, receiver: Receiver
) -> None:
    user = "hook-user"
    session_id, used = sign_in(rig, user)
    completed = receiver.wait_events(1, WAIT, EventType.sign_in_completed)[0]
    session = rig.controller.sessions.get(session_id)
    assert completed["data"] == {
        "session_id": session_id,
        "user_id": user,
        "provider": PROVIDER,
        "status": "completed",
        "started_at": session.created_at.isoformat(),
        "ended_at": session.updated_at.isoformat(),
    }
    assert abs(datetime.fromisoformat(completed["created_at"]) - session.updated_at) < timedelta(
        seconds=5
    )

    # A sign-in the user denies at the provider fails; one left unfinished expires.
    sessions = rig.controller.sessions
    denied = wait_status(rig, sessions.start("hook-denied", PROVIDER)[0].id, "awaiting_user")
    redirect_uri, state = callback(denied.oauth_url)
    httpx.get(redirect_uri, params={"state": state, "error": "access_denied"}, trust_env=False)
    assert wait_ended(rig, denied.id).status == "failed"
    late = wait_status(rig, sessions.start("hook-late", PROVIDER)[0].id, "awaiting_user")
    rig.controller.db.update(AuthSession, late.id, expires_at=datetime.now(UTC))
    assert sessions.expire_due() == [late.id]

    failed = receiver.wait_events(1, WAIT, EventType.sign_in_failed)[0]
    expired = receiver.wait_events(1, WAIT, EventType.sign_in_expired)[0]
    assert (failed["data"]["session_id"], failed["data"]["status"]) == (denied.id, "failed")
    assert (expired["data"]["session_id"], expired["data"]["status"]) == (late.id, "expired")
    assert "error" not in failed["data"]  # the reason is the API's to tell

    # A prompt whose CLI refreshes the expired token: the refresh, then the prompt's end.
    version = store_expired(rig, user).version
    prompts = rig.controller.prompts
    prompt = prompts.create(user, PROVIDER, "hello")
    assert list(prompts.stream(prompt.id))[-1][0] == "done"
    refreshed = receiver.wait_events(1, WAIT, EventType.credentials_refreshed)[0]
    assert refreshed["data"] == {
        "user_id": user,
        "provider": PROVIDER,
        "version": version + 1,
        "status": "ready",
    }
    done = receiver.wait_events(1, WAIT, EventType.prompt_done)[0]
    record = prompts.get(prompt.id)
    assert done["data"] == {
        "prompt_id": prompt.id,
        "user_id": user,
        "provider": PROVIDER,
        "status": "completed",
        "exit_code": 0,
        "duration_seconds": record.duration_seconds,
        "started_at": record.created_at.isoformat(),
        "finished_at": record.finished_at.isoformat(),
    }

    # Someone else redeems the refresh token, so the IdP revokes the stored pair: validate.
    tokens = json.loads(rig.controller.credentials.files(user, PROVIDER)[CREDENTIALS])
    assert idp_refresh(rig, tokens["refresh_token"]).status_code == 200
    assert rig.controller.cli_vms.check(user, PROVIDER).valid is False
    invalid = receiver.wait_events(1, WAIT, EventType.credentials_invalid)[0]
    assert invalid["data"] == {
        "user_id": user,
        "provider": PROVIDER,
        "version": version + 1,
        "status": "invalid",
    }

    secrets = used + stored_token_values(rig, user) + known_secrets(rig, receiver)
    assert_no_secret(receiver, secrets)
    assert {r.headers["webhook-id"] for r in receiver.requests} == set(receiver.processed)


def test_a_vm_whose_process_died_is_told_as_crashed_by_the_reconciler(
    rig: Rig, receiver: Receiver
) -> None:
    vm = rig.vms.create("browser")
    kill_pid(vm.pid)

    assert vm.id in reconcile(rig.vms).destroyed

    crashed = receiver.wait_events(1, WAIT, EventType.vm_crashed)[0]
    assert crashed["data"] | {"found_at": None} == {
        "vm_id": vm.id,
        "image": "browser",
        "user_id": None,
        "state": "ready",
        "found_at": None,
    }
    assert_no_secret(receiver, known_secrets(rig, receiver))


# -- delivery --------------------------------------------------------------------------------


def test_a_delivery_failed_by_a_500_and_a_timeout_is_retried_with_backoff_and_recorded(
    rig: Rig, receiver: Receiver
) -> None:
    receiver.failing = ["500", "hang"]
    event_id = outbox.publish(rig.controller.db, EventType.vm_crashed, {"vm_id": "retried"})

    receiver.wait_events(1, WAIT)
    delivery = wait_for(
        lambda: (d := attempts_of(rig, receiver, event_id)).status == "delivered" and d,
        WAIT,
        "the delivery recorded as delivered",
    )

    first, second, third = delivery.attempts
    assert [(a.number, a.status_code, a.error) for a in delivery.attempts] == [
        (1, 500, "the endpoint answered 500"),
        (2, None, f"no answer within {TIMEOUT:g} s"),
        (3, 200, None),
    ]
    assert second.duration_seconds >= TIMEOUT
    # Each wait is the backoff (base, then doubled up to the cap), less a fifth at most.
    gap1 = second.started_at - (first.started_at + timedelta(seconds=first.duration_seconds))
    gap2 = third.started_at - (second.started_at + timedelta(seconds=second.duration_seconds))
    assert gap1 >= timedelta(seconds=BASE * 0.8), gap1
    assert gap2 >= timedelta(seconds=CAP * 0.8), gap2
    assert delivery.delivered_at is not None and delivery.next_attempt_at is None

    # The same delivery id every time, each attempt signed afresh, all three verified.
    assert [r.why for r in receiver.requests] == ["failing on purpose", "hung", "processed"]
    assert {r.headers["webhook-id"] for r in receiver.requests} == {delivery.id}
    stamps = [int(r.headers["webhook-timestamp"]) for r in receiver.requests]
    assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < WAIT
    assert receiver.requests[0].body == receiver.requests[2].body


def test_replayed_stale_and_forged_deliveries_are_refused_by_the_documented_check(
    rig: Rig, receiver: Receiver
) -> None:
    outbox.publish(rig.controller.db, EventType.vm_crashed, {"vm_id": "replayed"})
    delivered = receiver.wait_events(1, WAIT)
    original = receiver.requests[-1]

    def post(headers: dict[str, str], body: bytes) -> httpx.Response:
        return httpx.post(receiver.url, content=body, headers=headers, trust_env=False)

    # Replayed as it was: the id was processed, so it is answered but not processed again.
    replay = post(original.headers, original.body)
    assert (replay.status_code, replay.text) == (200, "a replay: already processed")
    # Its timestamp made current without the secret: the signature no longer matches.
    moved = {**original.headers, "webhook-timestamp": str(int(time.time()) + 1)}
    assert (post(moved, original.body).status_code, post(moved, original.body).text) == (
        400,
        "no signature matches",
    )
    # Signed with the secret, but ten minutes old: stale.
    old = int(time.time()) - 600
    stale = {
        **original.headers,
        "webhook-id": "not-seen-before",
        "webhook-timestamp": str(old),
        "webhook-signature": webhooks.signature(
            receiver.secret, "not-seen-before", old, original.body.decode()
        ),
    }
    assert post(stale, original.body).text == "the timestamp is missing or too far from now"
    # A body changed in transit.
    forged = original.body.replace(b"replayed", b"forged!!")
    assert post(original.headers, forged).text == "no signature matches"
    assert receiver.events() == delivered


def test_a_delivery_queued_with_no_worker_running_is_delivered_by_the_next_controller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with build_rig(tmp_path, monkeypatch, **SETTINGS) as first, Receiver(secret="") as receiver:
        endpoint, receiver.secret = first.controller.webhooks.create(receiver.url, ["vm.crashed"])
        # The controller that queued it died before any worker posted it.
        event_id = outbox.publish(first.controller.db, EventType.vm_crashed, {"vm_id": "v"})
        assert outbox.deliveries(first.controller.db, endpoint.id)[0].status == "pending"

        _, _, restarted = local_controller(first.settings)
        worker = runtime.start_webhooks(restarted)
        try:
            [event] = receiver.wait_events(1, WAIT)
        finally:
            worker.stop()
        assert event["id"] == event_id
        [delivery] = outbox.deliveries(restarted.db, endpoint.id)
        assert (delivery.status, len(delivery.attempts)) == ("delivered", 1)


def test_a_disabled_endpoint_gets_no_new_events_and_its_pending_deliveries_wait(
    rig: Rig, receiver: Receiver
) -> None:
    endpoints = rig.controller.webhooks
    db = rig.controller.db
    receiver.failing = ["hang"]
    pending = outbox.publish(db, EventType.vm_crashed, {"vm_id": "waits"})
    wait_for(lambda: receiver.requests, WAIT, "the first attempt")
    endpoints.set_enabled(receiver.endpoint_id, False)  # while that attempt hangs

    assert outbox.publish(db, EventType.vm_crashed, {"vm_id": "skipped"}) is None
    delivery = wait_for(
        lambda: (d := attempts_of(rig, receiver, pending)).attempts and d,
        WAIT,
        "the hung attempt recorded",
    )
    assert delivery.status == "pending"
    wait_for(lambda: delivery.next_attempt_at <= datetime.now(UTC), WAIT, "the retry's time")
    assert delivery.id not in outbox.due(db, 1000)  # due, but its endpoint is disabled

    endpoints.set_enabled(receiver.endpoint_id, True)
    [event] = receiver.wait_events(1, WAIT)
    assert event["id"] == pending
    assert {d.event_id for d in outbox.deliveries(db, receiver.endpoint_id)} == {pending}


def test_a_delivery_that_fails_past_the_retry_window_ends_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with build_rig(tmp_path, monkeypatch, **SETTINGS) as rig, Receiver(secret="") as receiver:
        endpoint, receiver.secret = rig.controller.webhooks.create(receiver.url, ["vm.crashed"])
        receiver.failing = ["500"]
        event_id = outbox.publish(rig.controller.db, EventType.vm_crashed, {"vm_id": "late"})
        # Made a day old before any worker runs: its first failure is past the window.
        rig.controller.db.update(
            WebhookEvent, event_id, created_at=datetime.now(UTC) - timedelta(days=1)
        )
        worker = runtime.start_webhooks(rig.controller)
        try:
            [delivery] = wait_for(
                lambda: outbox.deliveries(rig.controller.db, endpoint.id, DeliveryStatus.failed),
                WAIT,
                "the delivery given up",
            )
        finally:
            worker.stop()
        assert [(a.number, a.status_code) for a in delivery.attempts] == [(1, 500)]
        assert delivery.next_attempt_at is None
        assert receiver.events() == []


def test_backoff_doubles_from_the_base_up_to_the_cap_jittered_by_a_fifth(rig: Rig) -> None:
    settings = rig.settings.model_copy(
        update={"webhook_backoff_base": 10.0, "webhook_backoff_cap": 3600.0}
    )
    for failed, nominal in [(1, 10), (2, 20), (3, 40), (9, 2560), (10, 3600), (30, 3600)]:
        waits = [webhooks.backoff(settings, failed) for _ in range(200)]
        assert all(nominal * 0.8 <= w <= nominal * 1.2 for w in waits), (failed, waits)
        assert len(set(waits)) > 1  # jittered
