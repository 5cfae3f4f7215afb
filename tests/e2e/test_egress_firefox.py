"""Firefox in a real browser VM behind egress: a Claude Code sign-in opens Firefox on the
stand-in claude.com (HTTPS, the test CA handed to the VM by its agent), which loads; a name
outside the policy shows Firefox's error page. Both seen through the live view in Chromium,
the screenshots kept as test artefacts."""

from __future__ import annotations

import json

import pytest

from hearth.demo.sandbox import inside
from hearth.store.models import AuthSession
from hearth.waiting import wait_for
from tests import artifacts
from tests.e2e.browser_user import live_view
from tests.e2e.conftest import IMAGES, needs_image
from tests.egress_rig import rig
from tests.fake_internet import CONTROLLER_SIDE

pytestmark = [pytest.mark.vm, pytest.mark.netns]

ARTIFACTS = artifacts.ROOT / "egress"
REFUSED_TITLES = ("Server Not Found", "Problem loading page")


def test_firefox_loads_an_allowed_page_and_shows_an_error_for_a_refused_one(tmp_path):
    needs_image("browser")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with rig(tmp_path, images=IMAGES, browsers=True, trust_ca=True) as r:
        started = r.api.post(
            "/api/auth/start", json={"user_id": "erin", "provider": "claude_code"}
        ).json()
        session_id = started["session_id"]

        def status() -> dict:
            return r.api.get(f"/api/auth/session/{session_id}").json()

        wait_for(
            lambda: status()["status"] in ("awaiting_user", "failed"),
            600,
            "Firefox to show the authorize page",
            interval=1,
        )
        assert status()["status"] == "awaiting_user", status()
        assert f"{CONTROLLER_SIDE} claude.com https" in r.inet.web_log()
        manager = r.manager()
        with r.db.session() as s:
            vm = manager.get(s.get(AuthSession, session_id).vm_id)

        def title() -> str:
            with inside(r.controller_ns), manager.agent(vm) as agent:
                return agent.login_status().firefox.title or ""

        assert "claude.com" in title() and not title().startswith(REFUSED_TITLES), title()
        with live_view(started["connect_url"]) as (_, canvas):
            allowed = wait_for(lambda: _painted(canvas), 60, "the live view to paint")
            (ARTIFACTS / "01-allowed-claude.com.png").write_bytes(allowed)

            with inside(r.controller_ns), manager.agent(vm) as agent:
                agent.open_url("https://example.net/")
            wait_for(
                lambda: title().startswith(REFUSED_TITLES),
                120,
                "Firefox's error page for a refused name",
            )
            refused = wait_for(
                lambda: (shot := _painted(canvas)) != allowed and shot,
                60,
                "the live view to show the error page",
            )
            (ARTIFACTS / "02-refused-example.net.png").write_bytes(refused)

        def names(verdict: str) -> set[str]:
            rows = r.api.get(
                "/api/admin/egress", params={"vm_id": vm.id, "verdict": verdict, "limit": 1000}
            ).json()["connections"]
            return {c["name"] for c in rows}

        assert "claude.com" in names("allowed") and "example.net" in names("refused")
        r.api.post(f"/api/auth/session/{session_id}/cancel")
        wait_for(lambda: manager.get(vm.id).state == "destroyed", 120, "the VM to go")
        print(json.dumps({"screenshots": sorted(str(p) for p in ARTIFACTS.iterdir())}))


def _painted(canvas) -> bytes | None:
    """A screenshot of the viewer once it shows more than a blank frame."""
    shot = canvas.screenshot()
    return shot if len(shot) > 20_000 else None
