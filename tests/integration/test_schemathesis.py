"""The API against its own schema, by schemathesis (property-based: it makes requests from
the OpenAPI schema), over real HTTP with an app key and an admin key: no 5xx, every
response conforms to its route's schema (status, content type, body), and a request with a
bad key gets 401 or 403 and nothing else. Bounded to EXAMPLES cases per route for CI's time.
(Each route is a test of its own, driven through hypothesis here: schemathesis's pytest
plugin does not load under this pytest.)
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from hearth.api.app import create_app
from hearth.api.keys import create_key
from hearth.config import Settings
from tests.integration.conftest import Served, serve

EXAMPLES = 25
# Open without a key. The live view's page (its own token) is for browsers, not in the schema.
PUBLIC = ("/healthz",)


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


@pytest.fixture(autouse=True)
def no_generated_endpoints_left(api) -> Iterator[None]:
    """Webhook endpoints made from generated URLs name hosts on the real network: none may
    outlive its route's test, so no event (a sign-in started later) is posted to one."""
    yield
    endpoints = api[0].controller.webhooks
    for endpoint in endpoints.list():
        endpoints.delete(endpoint.id)


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_each_route_answers_as_its_schema_says_and_refuses_bad_keys(label: str, api):
    served, keys = api
    operation = OPERATIONS[label]

    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        for key in keys.values():
            case.call_and_validate(base_url=served.url, headers={"Authorization": key})
        if operation.path not in PUBLIC:
            refused = case.call(base_url=served.url, headers={"Authorization": "Bearer hth_0_x"})
            assert refused.status_code in (401, 403), (label, refused.status_code)

    check()
