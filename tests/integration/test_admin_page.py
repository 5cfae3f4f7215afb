"""The admin page in a real Chromium: sign-in with an admin key, the live view of the
controller over SSE, and its actions (cancel a sign-in, destroy a VM, create and revoke a
key) with the session cookie and its CSRF token. Screenshots are kept in
$HEARTH_TEST_ARTIFACTS/admin (default artifacts/admin).

The controller serves on 127.0.0.1 from this process (tests/integration/conftest.py
`serve`); no VM boots: records are made as the lifecycle leaves
them, and the lifecycle itself is tested in tests/unit/test_vm_plans.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from hearth.api.keys import create_key, key_record
from hearth.core.runtime import Controller
from hearth.store.models import AuthSession, AuthSessionStatus, Vm, VmState
from tests.e2e.browser_user import CHROMIUM, CHROMIUM_ARGS
from tests.integration.conftest import Served, serve

ARTIFACTS = (
    Path(os.environ.get("HEARTH_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "artifacts"))
    / "admin"
)
WAIT_MS = 15_000


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serve(tmp_path) as running:
        yield running


@pytest.fixture
def page() -> Iterator[Page]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1400, "height": 1100})
        browser.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def seed(ctl: Controller) -> tuple[str, str]:
    """A ready VM record (its VMM long gone) and a sign-in waiting for its user."""
    vm = Vm(
        id="0123456789ab",
        image="browser",
        vmm="qemu",
        tap="hth0123456789a",
        netns="",
        agent_token="never-shown",
        state=VmState.ready,
        ip=None,
    )
    session = AuthSession(
        id="5" * 32,
        user_id="bob",
        provider="demo",
        status=AuthSessionStatus.awaiting_user,
        live_token_hash="0" * 64,
        expires_at=datetime(2099, 1, 1, tzinfo=UTC),
    )
    with ctl.db.session() as s:
        s.add_all([vm, session])
        s.commit()
    ctl.vms.workdir(vm.id).mkdir(parents=True)
    return vm.id, session.id


def sign_in(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/admin")
    page.fill("#key", key)
    page.click("button[type=submit]")


def test_the_admin_page_signs_in_shows_the_controller_live_and_acts(served: Served, page: Page):
    ctl = served.controller
    admin_key, app_key = create_key(ctl.db, "admin"), create_key(ctl.db, "app")
    vm_id, session_id = seed(ctl)

    sign_in(page, served.url, "hth_nope_nope")
    expect(page.locator("#error")).to_have_text("That is not a valid API key.")
    sign_in(page, served.url, app_key)
    expect(page.locator("#error")).to_have_text("This page needs an admin key.")
    shot(page, "01-refused")

    sign_in(page, served.url, admin_key)
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "hearth_admin"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert admin_key not in page.content()
    expect(page.locator("#host")).to_contain_text("0 of 253 leased")
    expect(page.locator(f"#sessions tr[data-session='{session_id}']")).to_contain_text(
        "awaiting_user"
    )
    expect(page.locator(f"#vms tr[data-vm='{vm_id}']")).to_contain_text("ready")
    shot(page, "02-signed-in")

    # Without the page's CSRF token the cookie alone changes nothing.
    forged = page.evaluate(
        "async () => (await fetch('/api/admin/vms/" + vm_id + "', {method: 'DELETE'})).status"
    )
    assert forged == 403
    assert ctl.vms.get(vm_id).state == VmState.ready

    page.locator(f"#sessions tr[data-session='{session_id}'] button").click()
    expect(page.locator(f"#sessions tr[data-session='{session_id}']")).to_contain_text(
        "cancelled", timeout=WAIT_MS
    )
    assert ctl.sessions.get(session_id).status == AuthSessionStatus.cancelled

    page.locator(f"#vms tr[data-vm='{vm_id}'] button").click()
    expect(page.locator(f"#vms tr[data-vm='{vm_id}']")).to_have_count(0, timeout=WAIT_MS)
    assert ctl.vms.get(vm_id).state == VmState.destroyed
    shot(page, "03-acted")

    page.fill("#new-key input[name=name]", "the web product")
    page.click("#new-key button")
    expect(page.locator("#created-key")).to_contain_text("hth_", timeout=WAIT_MS)
    new_key = page.locator("#created-key").inner_text().rsplit(" ", 1)[1]
    key_id = new_key.split("_")[1]
    row = page.locator(f"#keys tr[data-key='{key_id}']")
    expect(row).to_contain_text("the web product", timeout=WAIT_MS)
    row.locator("button").click()
    expect(row.locator("td").nth(4)).not_to_be_empty(timeout=WAIT_MS)
    assert key_record(ctl.db, key_id) is None  # revoked
    shot(page, "04-keys")

    page.click("#sign-out")
    expect(page.locator("#key")).to_be_visible(timeout=WAIT_MS)
    after = page.evaluate("async () => (await fetch('/api/admin/host')).status")
    assert after == 401
