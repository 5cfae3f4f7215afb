"""The connect page of a queued sign-in, in real Chromium: it says "queued, position N" and
follows the queue as it moves (the session's `queue` events), then the session's own steps
once it leaves the queue. The controller is the core rig's (tests/core_rig.py) over HTTP.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright

from hearth.store.models import AuthSessionStatus
from tests.core_rig import api_of
from tests.e2e.browser_user import CHROMIUM, CHROMIUM_ARGS
from tests.unit.test_auth_sessions import wait_ended, wait_status
from tests.unit.test_capacity import capacity_rig

STEP_MS = 15_000


def test_the_connect_page_shows_the_queue_position_as_it_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with capacity_rig(tmp_path, monkeypatch, 1) as rig, api_of(rig) as served:

        def start(user: str) -> dict:
            body = {"user_id": user, "provider": "demo"}
            return served.client.post("/api/auth/start", json=body).json()

        running, ahead, mine = start("ua"), start("ub"), start("uc")
        assert (ahead["queue_position"], mine["queue_position"]) == (1, 2)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(mine["connect_url"].replace(rig.settings.public_url, served.url))
                status = page.locator("#status")
                expect(status).to_have_text("Status: queued, position 2", timeout=STEP_MS)

                rig.controller.sessions.cancel(ahead["session_id"])
                expect(status).to_have_text("Status: queued, position 1", timeout=STEP_MS)

                rig.controller.sessions.cancel(running["session_id"])
                wait_status(rig, mine["session_id"], AuthSessionStatus.awaiting_user)
                expect(status).to_have_text("Status: awaiting user", timeout=STEP_MS)
                expect(status).to_have_attribute("data-status", "awaiting_user")
            finally:
                browser.close()
        rig.controller.sessions.cancel(mine["session_id"])
        for session in (running, mine):
            wait_ended(rig, session["session_id"])
