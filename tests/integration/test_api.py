"""The API's edges, in-process with the real app and database (no VM is booted here):
keys, bad input and the shape of every error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from hearth.api.app import MAX_BODY_BYTES
from hearth.api.keys import create_key
from hearth.config import Settings
from hearth.core import runtime


@pytest.fixture
def key(client: TestClient) -> dict[str, str]:
    db = client.app.state.controller.db
    return {"Authorization": f"Bearer {create_key(db, 'app')}"}


def test_liveness_needs_no_key(client: TestClient):
    assert client.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer hth_nope_nope"}, {"Authorization": "Basic abc"}]
)
def test_every_route_but_liveness_needs_a_valid_key(client: TestClient, headers):
    response = client.post(
        "/api/auth/start", json={"user_id": "u", "provider": "demo"}, headers=headers
    )
    assert response.status_code == 401
    assert "error" in response.json()


def test_a_revoked_or_tampered_key_is_refused(client: TestClient, key):
    tampered = key["Authorization"][:-2] + "xx"
    response = client.get(f"/api/auth/session/{'0' * 32}", headers={"Authorization": tampered})
    assert response.status_code == 401


def test_unknown_provider_is_a_400_naming_the_known_ones(client: TestClient, key):
    response = client.post(
        "/api/auth/start", json={"user_id": "u", "provider": "nope"}, headers=key
    )
    assert response.status_code == 400
    assert "nope" in response.json()["error"] and "demo" in response.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "u"},
        {"provider": "demo"},
        {"user_id": "spaces are not ids", "provider": "demo"},
        {"user_id": "x" * 200, "provider": "demo"},
        [],
        "text",
    ],
)
def test_malformed_start_bodies_are_422_with_the_problems(client: TestClient, key, body):
    response = client.post("/api/auth/start", json=body, headers=key)
    assert response.status_code == 422
    assert response.json()["problems"]


@pytest.mark.parametrize("path", ["", "/oauth", "/credentials/status", "/events"])
def test_malformed_and_unknown_session_ids(client: TestClient, key, path):
    assert client.get(f"/api/auth/session/not-an-id{path}", headers=key).status_code == 422
    unknown = client.get(f"/api/auth/session/{'ab' * 16}{path}", headers=key)
    assert unknown.status_code == 404 and "error" in unknown.json()


def test_oversize_bodies_are_413(client: TestClient, key):
    big = {"user_id": "u", "provider": "demo", "pad": "x" * (MAX_BODY_BYTES + 1)}
    response = client.post("/api/auth/start", json=big, headers=key)
    assert response.status_code == 413
    assert response.json() == {
        "error": f"request body over {MAX_BODY_BYTES} bytes",
        "code": "too_large",
    }


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/auth/session/not-an-id", None),
        ("post", "/api/auth/start", b"{not json"),
        ("post", "/api/prompts", b"x" * (MAX_BODY_BYTES + 1)),
        ("get", "/api/no-such-route", None),
        ("put", "/api/prompts", b"{}"),
        ("get", "/metrics", None),
        ("post", "/admin/sign-out", None),
    ],
)
def test_without_a_key_nothing_but_401_is_told(client: TestClient, method, path, body):
    """Neither what is wrong with the request nor whether the route exists."""
    response = client.request(method, path, content=body)
    assert response.status_code == 401
    assert response.json() == {
        "error": "missing API key (Authorization: Bearer <key>)",
        "code": "unauthorized",
    }


def test_unknown_routes_and_wrong_methods_answer_in_the_one_error_shape(client: TestClient, key):
    for path in ("/api/no-such-route", "/no-such-page"):
        missing = client.get(path, headers=key)
        assert missing.status_code == 404
        assert missing.json() == {"error": "Not Found", "code": "not_found"}
    for method, path, allowed in (("put", "/api/prompts", "POST"), ("delete", "/healthz", "GET")):
        wrong = client.request(method, path, headers=key)
        assert wrong.status_code == 405 and wrong.headers["allow"] == allowed
        assert wrong.json() == {"error": "Method Not Allowed", "code": "method_not_allowed"}
    invalid = client.get("/api/prompts/nothex", headers=key)
    assert invalid.json()["code"] == "invalid_request" and invalid.json()["problems"]


def test_an_unexpected_failure_is_a_500_in_the_one_shape_that_tells_no_detail(
    client: TestClient, caplog: pytest.LogCaptureFixture
):
    """The database fails for real (its table is gone): the answer and the log name an
    incident, the log the exception's type and where, neither the exception's text (the
    statement and its parameters, here the user id asked for)."""
    db = client.app.state.controller.db
    admin = {"Authorization": f"Bearer {create_key(db, 'admin')}"}
    with db.session() as s:
        s.execute(text("DROP TABLE egress_connections"))
        s.commit()
    with caplog.at_level(logging.ERROR, logger="hearth.api.errors"):
        response = client.get("/api/admin/egress?user_id=needle-in-the-query", headers=admin)
    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"error", "code"} and body["code"] == "internal_error"
    incident = body["error"].removeprefix("Hearth could not answer this request (incident ")[:8]
    assert body["error"] == f"Hearth could not answer this request (incident {incident} in its log)"
    [logged] = [r.getMessage() for r in caplog.records if incident in r.getMessage()]
    assert logged.startswith("GET /api/admin/egress failed with OperationalError (incident ")
    assert "egress.py" in logged  # where: the frames, without the message
    for told in (response.text, caplog.text):
        assert "needle" not in told and "no such table" not in told and "SELECT" not in told


def test_the_live_view_refuses_unknown_sessions_and_tokens(client: TestClient):
    response = client.get(f"/connect/{'ab' * 16}?token=nope")
    assert response.status_code == 404


def test_api_keys_are_stored_hashed(tmp_path: Path):
    db = runtime.open_database(Settings(home=tmp_path))
    key = create_key(db, "admin")
    assert key.encode() not in (tmp_path / "hearth.db").read_bytes()
    with pytest.raises(ValueError, match="unknown role"):
        create_key(db, "root")


def test_openapi_is_served(client: TestClient):
    assert "/api/auth/start" in client.get("/openapi.json").json()["paths"]


def store_demo_credentials(client: TestClient, user_id: str) -> None:
    client.app.state.controller.credentials.put(user_id, "demo", {"f.json": b"{}"})


@pytest.mark.parametrize(
    "route",
    [
        ("post", "/api/prompts"),
        ("get", f"/api/prompts/{'0' * 32}"),
        ("get", "/api/users/ada/prompts"),
        ("get", "/api/auth/validate/ada/demo"),
        ("delete", "/api/users/ada/credentials/demo"),
    ],
)
def test_prompt_and_user_routes_need_a_key(client: TestClient, route):
    method, path = route
    assert client.request(method, path, json={}).status_code == 401


def test_a_prompt_for_an_unknown_user_is_404(client: TestClient, key):
    response = client.post(
        "/api/prompts", headers=key, json={"user_id": "nobody", "provider": "demo", "prompt": "hi"}
    )
    assert response.status_code == 404
    assert response.json() == {"error": "unknown user 'nobody'", "code": "unknown_user"}
    assert client.get("/api/auth/validate/nobody/demo", headers=key).status_code == 404
    assert client.get("/api/users/nobody/credentials", headers=key).status_code == 404


def test_a_prompt_without_credentials_for_the_provider_is_409_saying_why(client: TestClient, key):
    store_demo_credentials(client, "ada")
    response = client.post(
        "/api/prompts", headers=key, json={"user_id": "ada", "provider": "codex", "prompt": "hi"}
    )
    assert response.status_code == 409
    assert "no codex credentials" in response.json()["error"]
    assert "sign in first" in response.json()["error"]
    assert client.get("/api/auth/validate/ada/codex", headers=key).status_code == 409


@pytest.mark.parametrize(
    "body, problem",
    [
        ({"user_id": "ada", "provider": "demo", "prompt": ""}, "prompt"),
        ({"user_id": "ada", "provider": "demo", "prompt": "x" * 32_001}, "prompt"),
        ({"user_id": "a/b", "provider": "demo", "prompt": "hi"}, "user_id"),
        ({"user_id": "ada", "provider": "demo"}, "prompt"),
    ],
)
def test_malformed_and_oversize_prompts_are_422(client: TestClient, key, body, problem):
    response = client.post("/api/prompts", headers=key, json=body)
    assert response.status_code == 422
    assert any(p.startswith(f"body.{problem}") for p in response.json()["problems"])


def test_a_prompt_for_an_unknown_provider_is_400(client: TestClient, key):
    store_demo_credentials(client, "ada")
    response = client.post(
        "/api/prompts", headers=key, json={"user_id": "ada", "provider": "nope", "prompt": "hi"}
    )
    assert response.status_code == 400 and "unknown provider" in response.json()["error"]
    assert client.get("/api/auth/validate/ada/nope", headers=key).status_code == 400


def test_unknown_prompts_are_404_and_history_starts_empty(client: TestClient, key):
    assert client.get(f"/api/prompts/{'0' * 32}", headers=key).status_code == 404
    assert client.post(f"/api/prompts/{'0' * 32}/cancel", headers=key).status_code == 404
    assert client.get("/api/prompts/nothex", headers=key).status_code == 422
    assert client.get("/api/users/ada/prompts", headers=key).json() == {
        "user_id": "ada",
        "prompts": [],
    }


def test_credentials_list_shows_no_contents_and_removal_forgets_them(client: TestClient, key):
    store_demo_credentials(client, "ada")
    listed = client.get("/api/users/ada/credentials", headers=key).json()
    assert [c["provider"] for c in listed["credentials"]] == ["demo"] and listed["vm"] is None
    assert "f.json" not in str(listed)
    removed = client.delete("/api/users/ada/credentials/demo", headers=key)
    assert removed.json() == {
        "user_id": "ada",
        "provider": "demo",
        "removed": True,
        "wiped_files": [],
    }
    assert client.delete("/api/users/ada/credentials/demo", headers=key).status_code == 404


def test_logged_websocket_lines_keep_the_path_but_not_the_token(client: TestClient):
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" %d',
        ("1.2.3.4:5", "/connect/ab/vnc?token=s3cr3t-live-token", 403),
        None,
    )
    assert logging.getLogger("uvicorn.error").filter(record)
    assert record.getMessage() == '1.2.3.4:5 - "WebSocket /connect/ab/vnc?…" 403'
