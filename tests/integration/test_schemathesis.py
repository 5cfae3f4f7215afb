"""The API against its own schema, by schemathesis (property-based: it makes requests from
the OpenAPI schema), over real HTTP with an app key and an admin key: no 5xx, every
response conforms to its route's schema (status, content type, body). And a request
without a valid key (no Authorization header, another scheme, a malformed, unknown or
revoked key) gets 401 and nothing else, on every operation, whatever it carries: the
generated request's schema-valid body, a malformed one, one over the body limit announced
by its Content-Length or streamed without one; an app key on an operator's route gets 403
the same way. Bounded to EXAMPLES (BAD_KEY_EXAMPLES) cases per route for CI's time.
(Each route is a test of its own, driven through hypothesis here: schemathesis's pytest
plugin does not load under this pytest.)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from hearth.api.app import MAX_BODY_BYTES, create_app
from hearth.api.keys import create_key, revoke_key, verify_key
from hearth.config import Settings
from tests.integration.conftest import Served, serve

EXAMPLES = 25
BAD_KEY_EXAMPLES = 5  # each sent with every bad key and every body below
# Open without a key. The live view's page (its own token) is for browsers, not in the schema.
PUBLIC = ("/healthz",)
OVERSIZED = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
BODIES = ("schema-valid", "malformed", "oversized", "oversized, streamed")


def _operations() -> dict[str, schemathesis.APIOperation]:
    """The schema the app serves, made without starting it (no controller is needed)."""
    with tempfile.TemporaryDirectory() as home:
        spec = create_app(Settings(home=Path(home))).openapi()
    schema = schemathesis.openapi.from_dict(spec)
    return {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


OPERATIONS = _operations()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, dict[str, str]]]:
    with serve(Path(tmp_path_factory.mktemp("schemathesis"))) as served:
        db = served.controller.db
        keys = {role: f"Bearer {create_key(db, role)}" for role in ("app", "admin")}
        yield served, keys


@pytest.fixture(scope="module")
def bad_keys(api) -> dict[str, str | None]:
    """Authorization headers that name no valid key (None: no header at all)."""
    db = api[0].controller.db
    revoked = create_key(db, "admin")
    revoke_key(db, verify_key(db, revoked).id)
    assert verify_key(db, revoked) is None
    return {
        "no header": None,
        "another scheme": "Basic aGVhcnRoOmtleQ==",
        "the scheme alone": "Bearer",
        "malformed key": "Bearer not-a-hearth-key",
        "unknown key": "Bearer hth_0_x",
        "revoked admin key": f"Bearer {revoked}",
    }


@pytest.fixture(autouse=True)
def no_generated_endpoints_left(api) -> Iterator[None]:
    """Webhook endpoints made from generated URLs name hosts on the real network: none may
    outlive its route's test, so no event (a sign-in started later) is posted to one."""
    yield
    endpoints = api[0].controller.webhooks
    for endpoint in endpoints.list():
        endpoints.delete(endpoint.id)


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_each_route_answers_as_its_schema_says(label: str, api):
    served, keys = api
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        for key in keys.values():
            case.call_and_validate(base_url=served.url, headers={"Authorization": key})

    check()


def is_operators(path: str) -> bool:
    return path.startswith("/api/admin/") or path == "/metrics"


def send(http: httpx.Client, request: dict, authorization: str | None, body: str) -> httpx.Response:
    """The generated request (`request`: schemathesis's), with `authorization` and `body`."""
    headers = {k: v for k, v in request["headers"].items() if k.lower() != "authorization"}
    if authorization is not None:
        headers["Authorization"] = authorization
    kwargs = {k: request[k] for k in ("json", "data") if k in request}
    if body != "schema-valid":
        headers["Content-Type"] = "application/json"
        kwargs = {
            "malformed": {"content": b'{"user_id": "ada", "provider": '},
            "oversized": {"content": OVERSIZED},
            # No Content-Length: chunked, so only reading it would show its size.
            "oversized, streamed": {"content": iter([OVERSIZED[:1024], OVERSIZED[1024:]])},
        }[body]
    return http.request(
        request["method"], request["url"], params=request["params"], headers=headers, **kwargs
    )


@pytest.mark.parametrize(
    "label", sorted(label for label, op in OPERATIONS.items() if op.path not in PUBLIC)
)
def test_each_route_refuses_a_request_without_a_valid_key_whatever_it_carries(
    label: str, api, bad_keys
):
    served, keys = api
    operation = OPERATIONS[label]
    refusals = {name: (401, "unauthorized", key) for name, key in bad_keys.items()}
    if is_operators(operation.path):
        refusals["app key"] = (403, "forbidden", keys["app"])

    @given(case=operation.as_strategy())
    @settings(max_examples=BAD_KEY_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        request = case.as_transport_kwargs(base_url=served.url)
        with httpx.Client(timeout=30, trust_env=False) as http:
            for name, (status, code, authorization) in refusals.items():
                for body in BODIES:
                    answer = send(http, request, authorization, body)
                    what = (label, name, body, answer.status_code, answer.text[:200])
                    assert answer.status_code == status, what
                    assert answer.json() == {"error": answer.json()["error"], "code": code}, what

    check()
