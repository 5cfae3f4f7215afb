"""The OpenAPI document at /openapi.json (shown by /docs): every JSON route names the model of
its response, every stream the model of each of its events, and real responses, from the
real app and database, validate against the schemas the document gives and carry exactly
their fields. No VM is booted here: the streams run on the root-free core rig (a sign-in
through the demo IdP, a prompt of the demo CLI)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jsonschema
import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from hearth.api import admin_routes, auth_routes, prompt_routes, user_routes
from hearth.api.app import create_app
from hearth.api.keys import create_key
from hearth.config import Settings
from hearth.store import outbox
from hearth.store.models import (
    AuthSession,
    AuthSessionEvent,
    AuthSessionStatus,
    EgressConnection,
    Prompt,
    PromptStatus,
)
from hearth.waiting import wait_for
from tests.unit.test_auth_sessions import closed_port_url, wait_status
from tests.unit.test_capacity import api_of, capacity_rig

PROMPT_EVENTS = ("POST", "/api/prompts")
SIGN_IN_EVENTS = ("GET", "/api/auth/session/{session_id}/events")
STREAMS = {PROMPT_EVENTS, SIGN_IN_EVENTS}
PAGES = {("GET", "/connect/{session_id}")}
TEXTS = {("GET", "/metrics")}  # Prometheus's text format


def success(operation: dict) -> dict:
    [(code, response)] = [(c, r) for c, r in operation["responses"].items() if c.startswith("2")]
    return response


def test_every_json_route_names_its_response_schema(tmp_path: Path):
    app = create_app(Settings(home=tmp_path))  # the document needs no running controller
    doc = app.openapi()
    schemas = doc["components"]["schemas"]
    documented = {
        (method.upper(), path) for path, operations in doc["paths"].items() for method in operations
    }
    routes = {
        (method, route.path)
        for router in (
            admin_routes.router,
            auth_routes.router,
            prompt_routes.router,
            user_routes.router,
        )
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
    }
    assert len(routes) >= 14 and routes <= documented and ("GET", "/healthz") in documented
    for method, path in documented:
        content = success(doc["paths"][path][method.lower()])["content"]
        if (method, path) in STREAMS:
            assert list(content) == ["text/event-stream"], (method, path)
            for schema in event_schemas(doc, method, path).values():
                name = schema["$ref"].removeprefix("#/components/schemas/")
                assert schemas[name]["properties"], (method, path, name)
        elif (method, path) in PAGES:
            assert "text/html" in content, (method, path)
        elif (method, path) in TEXTS:
            assert [c.split(";")[0] for c in content] == ["text/plain"], (method, path)
        else:
            ref = content["application/json"]["schema"]["$ref"]
            name = ref.removeprefix("#/components/schemas/")
            assert schemas[name]["properties"], (method, path)


class Api:
    """Requests with an API key, each response checked against the document."""

    def __init__(self, client: TestClient):
        self.client = client
        self.db = client.app.state.controller.db
        self.headers = {"Authorization": f"Bearer {create_key(self.db, 'admin')}"}
        self.doc = client.get("/openapi.json").json()

    def call(self, method: str, url: str, template: str, status: int = 200) -> dict:
        response = self.client.request(method, url, headers=self.headers)
        assert response.status_code == status, response.text
        body = response.json()
        schema = success(self.doc["paths"][template][method.lower()])["content"][
            "application/json"
        ]["schema"]
        jsonschema.validate(body, {**schema, "components": self.doc["components"]})
        return body

    def fields(self, template: str, method: str = "get") -> set[str]:
        ref = success(self.doc["paths"][template][method])["content"]["application/json"]["schema"][
            "$ref"
        ]
        return set(self.doc["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])

    def add_session(self, status: AuthSessionStatus, user_id: str = "ada") -> str:
        session_id = uuid.uuid4().hex
        with self.db.session() as s:
            s.add(
                AuthSession(
                    id=session_id,
                    user_id=user_id,
                    provider="demo",
                    status=status,
                    live_token_hash="x",
                    oauth_url="https://idp.demo.test/authorize",
                    expires_at=datetime.now(UTC) + timedelta(hours=1),
                )
            )
            s.add(AuthSessionEvent(session_id=session_id, status=AuthSessionStatus.started))
            s.add(AuthSessionEvent(session_id=session_id, status=status, detail="why"))
            s.commit()
        return session_id


@pytest.fixture
def api(client: TestClient) -> Api:
    return Api(client)


def test_health_and_sign_in_responses_match_their_schemas(api: Api):
    assert api.call("GET", "/healthz", "/healthz") == {"status": "ok"}

    running = api.add_session(AuthSessionStatus.awaiting_user)
    session = "/api/auth/session/{session_id}"
    view = api.call("GET", f"/api/auth/session/{running}", session)
    assert set(view) == api.fields(session)
    assert [e["status"] for e in view["timeline"]] == ["started", "awaiting_user"]
    oauth = api.call("GET", f"/api/auth/session/{running}/oauth", session + "/oauth")
    assert oauth == {"session_id": running, "url": "https://idp.demo.test/authorize"}

    # Pending and absent carry only the status and the provider; ready carries every field.
    status = session + "/credentials/status"
    assert api.call("GET", f"/api/auth/session/{running}/credentials/status", status) == {
        "status": "pending",
        "provider": "demo",
    }
    cancelled = api.call("POST", f"/api/auth/session/{running}/cancel", session + "/cancel")
    assert cancelled == {"session_id": running, "status": "cancelled"}
    assert api.call("GET", f"/api/auth/session/{running}/credentials/status", status) == {
        "status": "absent",
        "provider": "demo",
    }
    done = api.add_session(AuthSessionStatus.completed)
    api.client.app.state.controller.credentials.put(
        "ada", "demo", {"f.json": b"{}"}, account_email="ada@example.test"
    )
    ready = api.call("GET", f"/api/auth/session/{done}/credentials/status", status)
    assert set(ready) == api.fields(status)
    assert ready["status"] == "ready" and ready["account_email"] == "ada@example.test"
    assert ready["expires_at"] is None and ready["invalid_reason"] is None
    assert ready["invalid_at"] is None


def test_prompt_user_and_admin_responses_match_their_schemas(api: Api):
    api.client.app.state.controller.credentials.put("ada", "demo", {"f.json": b"{}"})
    prompt_id = uuid.uuid4().hex
    with api.db.session() as s:
        s.add(
            Prompt(
                id=prompt_id,
                user_id="ada",
                provider="demo",
                prompt="hi",
                output="hello",
                status=PromptStatus.completed,
                exit_code=0,
                duration_seconds=1.5,
                finished_at=datetime.now(UTC),
            )
        )
        s.add(
            EgressConnection(
                started_at=datetime.now(UTC),
                vm_id="ab",
                user_id="ada",
                provider="demo",
                source="10.0.0.2",
                protocol="tls",
                name="idp.demo.test",
                port=443,
                verdict="allowed",
                upstream="direct",
                key=uuid.uuid4().hex,
            )
        )
        s.commit()

    record = api.call("GET", f"/api/prompts/{prompt_id}", "/api/prompts/{prompt_id}")
    assert set(record) == api.fields("/api/prompts/{prompt_id}") and record["output"] == "hello"
    history = api.call("GET", "/api/users/ada/prompts", "/api/users/{user_id}/prompts")
    [listed] = history["prompts"]
    assert set(listed) == set(record) - {"output"}  # the history leaves the output out

    stored = api.call("GET", "/api/users/ada/credentials", "/api/users/{user_id}/credentials")
    assert [c["provider"] for c in stored["credentials"]] == ["demo"] and stored["vm"] is None
    [credential] = stored["credentials"]
    assert set(credential) == {
        "provider",
        "account_email",
        "expires_at",
        "version",
        "updated_at",
        "status",
        "invalid_reason",
        "invalid_at",
    }

    log = api.call("GET", "/api/admin/egress", "/api/admin/egress")
    [connection] = log["connections"]
    assert connection["name"] == "idp.demo.test" and connection["bytes_up"] == 0

    removed = api.call(
        "DELETE", "/api/users/ada/credentials/demo", "/api/users/{user_id}/credentials/{provider}"
    )
    assert removed == {"user_id": "ada", "provider": "demo", "removed": True, "wiped_files": []}


def test_webhook_responses_match_their_schemas(api: Api):
    endpoints = api.client.app.state.controller.webhooks
    endpoint, _ = endpoints.create(f"{closed_port_url()}/hook", ["vm.crashed"])
    outbox.publish(api.db, "vm.crashed", {"vm_id": "ab"})
    base = "/api/admin/webhooks"

    [listed] = api.call("GET", base, base)["endpoints"]
    one = api.call("GET", f"{base}/{endpoint.id}", base + "/{endpoint_id}")
    assert listed == one and set(one) == api.fields(base + "/{endpoint_id}")
    deliveries = f"{base}/{endpoint.id}/deliveries"

    def attempted() -> list[dict]:
        found = api.call("GET", deliveries, base + "/{endpoint_id}/deliveries")["deliveries"]
        return found if found and found[0]["attempts"] else []

    [delivery] = wait_for(attempted, 30, "the first attempt recorded")
    assert set(delivery) == set(
        api.doc["components"]["schemas"]["WebhookDeliveryView"]["properties"]
    )
    [attempt] = delivery["attempts"][:1]
    assert attempt["status_code"] is None and attempt["error"].startswith("could not post: ")
    assert delivery["status"] == "pending" and delivery["next_attempt_at"]


# -- the streams -----------------------------------------------------------------------------


def event_schemas(doc: dict, method: str, path: str) -> dict[str, dict]:
    """The documented schema of each event's data of a stream, by the event's name."""
    content = success(doc["paths"][path][method.lower()])["content"]["text/event-stream"]
    branches = content["itemSchema"]["oneOf"]
    return {
        b["properties"]["event"]["const"]: b["properties"]["data"]["contentSchema"]
        for b in branches
    }


def read_events(response: httpx.Response, until: str | None = None) -> Iterator[tuple[str, str]]:
    """Each event of a stream on the wire, its name and its data as sent, up to `until`."""
    kind = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield kind, line.removeprefix("data: ")
            if kind == until:
                return


def assert_documented(doc: dict, stream: tuple[str, str], events: list[tuple[str, str]]) -> None:
    """Each event is one the stream documents, its data valid by that event's model and
    with no field the model does not have."""
    documented = event_schemas(doc, *stream)
    for kind, data in events:
        assert kind in documented, (stream, kind, sorted(documented))
        body = json.loads(data)
        jsonschema.validate(body, {**documented[kind], "components": doc["components"]})
        name = documented[kind]["$ref"].removeprefix("#/components/schemas/")
        assert set(body) <= set(doc["components"]["schemas"][name]["properties"]), (kind, body)


def test_each_streams_events_are_as_documented_in_real_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Real streams over HTTP: three sign-ins on room for two VMs (the third queued), one
    followed to its end; a prompt run to `done`; and one whose CLI VM cannot be made (its
    image is gone) ending in `error`."""
    with capacity_rig(tmp_path, monkeypatch, 2, auth_queue_max=1) as rig, api_of(rig) as api:
        doc = api.client.get("/openapi.json").json()
        assert set(event_schemas(doc, *SIGN_IN_EVENTS)) == {"status", "queue"}
        assert set(event_schemas(doc, *PROMPT_EVENTS)) == {"connected", "output", "done", "error"}

        def start(user_id: str) -> str:
            started = api.client.post(
                "/api/auth/start", json={"user_id": user_id, "provider": "demo"}
            )
            assert started.status_code == 202, started.text
            return started.json()["session_id"]

        signing_in, other, queued = start("ua"), start("ub"), start("uc")
        with api.client.stream("GET", f"/api/auth/session/{queued}/events") as response:
            sign_in_events = list(read_events(response, until="queue"))
        for session_id in (other, queued):
            api.client.post(f"/api/auth/session/{session_id}/cancel")
        wait_status(rig, signing_in, AuthSessionStatus.awaiting_user)
        oauth = api.client.get(f"/api/auth/session/{signing_in}/oauth").json()["url"]
        assert rig.approve(oauth).status_code == 200
        wait_status(rig, signing_in, AuthSessionStatus.completed)
        with api.client.stream("GET", f"/api/auth/session/{signing_in}/events") as response:
            sign_in_events += list(read_events(response))  # the whole timeline, then its end
        assert_documented(doc, SIGN_IN_EVENTS, sign_in_events)
        assert {kind for kind, _ in sign_in_events} == {"status", "queue"}
        assert json.loads(sign_in_events[-1][1])["status"] == "completed"

        def prompt(user_id: str) -> list[tuple[str, str]]:
            body = {"user_id": user_id, "provider": "demo", "prompt": "hello"}
            with api.client.stream("POST", "/api/prompts", json=body) as response:
                assert response.status_code == 200, response.read()
                return list(read_events(response))

        ran = prompt("ua")
        assert [kind for kind, _ in ran][:: len(ran) - 1] == ["connected", "done"], ran
        assert {kind for kind, _ in ran[1:-1]} == {"output"}
        rig.controller.credentials.put("ud", "demo", {"f.json": b"{}"})
        image = rig.settings.images_dir / rig.settings.cli_image
        shutil.move(image, tmp_path / "image-away")
        try:
            failed = prompt("ud")
        finally:
            shutil.move(tmp_path / "image-away", image)
        assert [kind for kind, _ in failed] == ["connected", "error"], failed
        assert_documented(doc, PROMPT_EVENTS, ran + failed)
