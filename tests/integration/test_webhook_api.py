"""The webhook endpoints of the operator's API (/api/admin/webhooks), in-process with the
real app, its database and its delivery worker, posting over real HTTP to a receiver on
127.0.0.1 (tests/webhook_receiver.py): endpoints made (the secret in that answer only),
listed, shown, disabled, deleted; URLs that are not http(s) refused with a 422 that says
so; and a sign-in that fails for real (no browser image here) delivered after a 500, its
attempts listed by the API."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from hearth.core.webhooks import EventType
from hearth.waiting import wait_for
from tests.integration.test_admin_api import bearer
from tests.webhook_receiver import Receiver

WAIT = 30.0
pytestmark = pytest.mark.usefixtures("quick_retries")


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings the app reads from its environment: retries in fractions of a second."""
    monkeypatch.setenv("HEARTH_WEBHOOK_BACKOFF_BASE", "0.2")
    monkeypatch.setenv("HEARTH_WEBHOOK_TIMEOUT", "2")


@pytest.fixture
def admin(client: TestClient) -> dict[str, str]:
    return bearer(client, "admin")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.org/hook", "must be http:// or https://, not ftp://"),
        ("example.org/hook", "must be http:// or https://, not a URL without a scheme"),
        ("https:///hook", "names no host"),
        ("https://app:hunter2@example.org/hook", "must not carry a user or password"),
        ("https://example.org:99999/hook", "port is not a number in 1-65535"),
        ("https://example.org:0/hook", "its port 1-65535"),
        ("https://[::1]/hook", "host must be a name or an IPv4 address"),
        ("https://example.org/a hook", "may hold no spaces"),
    ],
)
def test_an_endpoint_url_that_is_not_http_is_refused_with_a_422_saying_why(
    client: TestClient, admin, url: str, problem: str
):
    refused = client.post("/api/admin/webhooks", json={"url": url}, headers=admin)
    assert refused.status_code == 422
    [said] = refused.json()["problems"]
    assert said.startswith("body.url: ") and problem in said
    assert "hunter2" not in refused.text
    assert client.get("/api/admin/webhooks", headers=admin).json() == {"endpoints": []}


def test_an_unknown_event_type_is_refused_naming_the_known_ones(client: TestClient, admin):
    body = {"url": "https://example.org/hook", "events": ["vm.exploded"]}
    refused = client.post("/api/admin/webhooks", json=body, headers=admin)
    assert refused.status_code == 422
    assert "vm.crashed" in refused.json()["problems"][0]


def test_endpoints_are_created_with_the_secret_shown_once_listed_disabled_and_deleted(
    client: TestClient, admin
):
    body = {"url": "https://app.example/hooks", "description": "the app"}
    created = client.post("/api/admin/webhooks", json=body, headers=admin)
    assert created.status_code == 201
    endpoint = created.json()
    secret = endpoint.pop("secret")
    assert secret.startswith("whsec_")
    assert endpoint["events"] == sorted(EventType)  # all of them, by default
    assert endpoint["enabled"] is True and endpoint["description"] == "the app"
    path = f"/api/admin/webhooks/{endpoint['endpoint_id']}"

    listed = client.get("/api/admin/webhooks", headers=admin)
    assert listed.json() == {"endpoints": [endpoint]} and secret not in listed.text
    shown = client.get(path, headers=admin)
    assert shown.json() == endpoint and secret not in shown.text

    disabled = client.patch(path, json={"enabled": False}, headers=admin).json()
    assert disabled["enabled"] is False and disabled["updated_at"] >= endpoint["updated_at"]
    assert client.patch(path, json={}, headers=admin).status_code == 422

    deleted = client.delete(path, headers=admin)
    assert deleted.status_code == 200 and deleted.json() == disabled
    for gone in (
        client.get(path, headers=admin),
        client.delete(path, headers=admin),
        client.patch(path, json={"enabled": True}, headers=admin),
        client.get(f"{path}/deliveries", headers=admin),
    ):
        assert gone.status_code == 404
        assert gone.json() == {
            "error": f"no webhook endpoint {endpoint['endpoint_id']}",
            "code": "not_found",
        }


def test_a_failed_sign_in_is_delivered_after_a_500_and_the_api_lists_both_attempts(
    client: TestClient, admin
):
    with Receiver(secret="", failing=["500"]) as receiver:
        body = {"url": receiver.url, "events": ["sign_in.failed", "sign_in.completed"]}
        created = client.post("/api/admin/webhooks", json=body, headers=admin).json()
        receiver.secret = created["secret"]
        started = client.post(
            "/api/auth/start", json={"user_id": "ada", "provider": "demo"}, headers=admin
        ).json()

        [event] = receiver.wait_events(1, WAIT)
        deliveries = f"/api/admin/webhooks/{created['endpoint_id']}/deliveries"
        [delivery] = wait_for(
            lambda: client.get(f"{deliveries}?status=delivered", headers=admin).json()[
                "deliveries"
            ],
            WAIT,
            "the delivery listed as delivered",
        )

    assert event["type"] == "sign_in.failed"
    assert event["data"]["session_id"] == started["session_id"]
    assert (event["data"]["user_id"], event["data"]["provider"]) == ("ada", "demo")
    session = client.get(f"/api/auth/session/{started['session_id']}", headers=admin).json()
    assert session["status"] == "failed"  # the reason is the API's to tell, not the event's
    assert (delivery["event_id"], delivery["event_type"]) == (event["id"], "sign_in.failed")
    assert delivery["delivery_id"] == receiver.requests[0].headers["webhook-id"]
    assert [(a["number"], a["status_code"], a["error"]) for a in delivery["attempts"]] == [
        (1, 500, "the endpoint answered 500"),
        (2, 200, None),
    ]
    assert delivery["delivered_at"] and delivery["next_attempt_at"] is None
    assert client.get(f"{deliveries}?status=pending", headers=admin).json() == {"deliveries": []}
    token = started["connect_url"].split("token=")[1]
    for request in receiver.requests:
        assert token not in request.body.decode()
