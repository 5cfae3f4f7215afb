"""The admin page in a real Chromium: sign-in with an admin key, the live view of the
controller over SSE, and its actions (cancel a sign-in, destroy a VM, create and revoke a
key; create, disable, enable and delete a webhook endpoint) with the session cookie and its
CSRF token; its filters (VMs by state, sign-ins by status, provider and user, the egress log
by VM, user and verdict, with more rows on request) and what it opens (a VM's console, a
user's prompts, an endpoint's deliveries with their attempts), each following the
controller live. Screenshots are kept in $HEARTH_TEST_ARTIFACTS/admin (default
artifacts/admin).

The controller serves on 127.0.0.1 from this process (tests/integration/conftest.py
`serve`); no VM boots: records are made as the lifecycle leaves
them, and the lifecycle itself is tested in tests/unit/test_vm_plans.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from hearth.api.keys import create_key, key_record
from hearth.core import webhooks
from hearth.core.runtime import Controller
from hearth.store.models import (
    AuthSession,
    AuthSessionStatus,
    EgressConnection,
    Prompt,
    PromptStatus,
    Vm,
    VmState,
)
from tests.artifacts import artifacts_dir
from tests.e2e.browser_user import CHROMIUM, CHROMIUM_ARGS
from tests.integration.conftest import Served, serve
from tests.webhook_receiver import Receiver

WAIT_MS = 15_000


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    # A failed webhook attempt is retried in a fraction of a second (the app reads these).
    monkeypatch.setenv("HEARTH_WEBHOOK_BACKOFF_BASE", "0.2")
    monkeypatch.setenv("HEARTH_WEBHOOK_TIMEOUT", "2")
    with serve(tmp_path) as running:
        yield running


@pytest.fixture
def page() -> Iterator[Page]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 1400, "height": 1100})
        browser.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(artifacts_dir("admin") / f"{name}.png"), full_page=True)


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

    page.locator(f"#vms tr[data-vm='{vm_id}']").get_by_role("button", name="Destroy").click()
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


# -- filters, what the page opens, webhooks ---------------------------------------------------

FAILED_VM = "abcdef012345"
START = datetime(2026, 1, 1, tzinfo=UTC)


def session_record(number: int, user_id: str, provider: str, status: AuthSessionStatus):
    return AuthSession(
        id=f"{number:032x}",
        user_id=user_id,
        provider=provider,
        status=status,
        live_token_hash="0" * 64,
        expires_at=datetime(2099, 1, 1, tzinfo=UTC),
        created_at=START + timedelta(minutes=number),
    )


def egress_record(minute: int, vm_id: str, user_id: str, verdict: str) -> EgressConnection:
    return EgressConnection(
        started_at=START + timedelta(minutes=minute),
        vm_id=vm_id,
        user_id=user_id,
        provider="demo",
        source="10.0.0.2",
        protocol="tls",
        name=f"n{minute}.example.test",
        port=443,
        verdict=verdict,
        reason=None if verdict == "allowed" else "not on the allow list",
        upstream="direct",
        key=uuid.uuid4().hex,
    )


def seed_more(ctl: Controller) -> None:
    """Beside `seed`'s: a CLI VM that failed at boot with its console, ended sign-ins of two
    more users, seven prompts of ada's, and thirty egress rows (25 ada's, 5 refused bob's)."""
    vm = Vm(
        id=FAILED_VM,
        image="cli",
        vmm="qemu",
        tap="hthabcdef0123",
        netns="",
        agent_token="never-shown",
        state=VmState.failed,
        failed_step="boot",
        error="the VMM refused",
        user_id="ada",
    )
    prompts = [
        Prompt(
            id=f"{n:032x}",
            user_id="ada",
            provider="demo",
            vm_id=FAILED_VM,
            status=PromptStatus.completed,
            prompt=f"prompt number {n}",
            exit_code=0,
            duration_seconds=1.5,
            created_at=START + timedelta(minutes=n),
            finished_at=START + timedelta(minutes=n, seconds=2),
        )
        for n in range(1, 8)
    ]
    egress = [egress_record(m, FAILED_VM, "ada", "allowed") for m in range(25)]
    egress += [egress_record(m, "0123456789ab", "bob", "refused") for m in range(25, 30)]
    with ctl.db.session() as s:
        s.add(vm)
        s.add(session_record(1, "ada", "demo", AuthSessionStatus.completed))
        s.add(session_record(2, "carol", "claude_code", AuthSessionStatus.failed))
        s.add_all(prompts + egress)
        s.commit()
    workdir = ctl.vms.workdir(FAILED_VM)
    workdir.mkdir(parents=True)
    (workdir / "console.log").write_text("[    0.000000] Linux version 6.1\nhearth: booting\n")


def rows(page: Page, table: str):
    return page.locator(f"#{table} tbody tr")


def filter_form(page: Page, form: str, **fields: str) -> None:
    for name, value in fields.items():
        page.fill(f"#{form} [name={name}]", value)
    page.locator(f"#{form}").get_by_role("button", name="Filter").click()


def with_cookie(served: Served, page: Page) -> httpx.Client:
    """An HTTP client holding the page's session cookie (and not its CSRF token)."""
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "hearth_admin"]
    return httpx.Client(base_url=served.url, cookies={cookie["name"]: cookie["value"]})


def first_snapshot(http: httpx.Client, **query: str) -> str:
    """The first `snapshot` event of the page's stream for `query`."""
    with http.stream("GET", "/admin/events", params=query, timeout=15) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: "):
                return line
    raise AssertionError("the stream ended without a snapshot")


def test_the_admin_page_filters_its_lists_and_shows_consoles_and_prompts(
    served: Served, page: Page
):
    ctl = served.controller
    ready_vm, waiting = seed(ctl)
    seed_more(ctl)
    address = ctl.vms.pool.lease(ready_vm)
    sign_in(page, served.url, create_key(ctl.db, "admin"))
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=WAIT_MS)

    usage = ctl.capacity.usage()
    expect(page.locator("#host")).to_contain_text(
        f"{usage.memory_mib} of {usage.budget_mib} MiB reserved"
    )
    assert usage.memory_mib > 0  # the ready VM's guest and VMM
    expect(page.locator("#host")).to_contain_text("1 of 253 leased")
    expect(rows(page, "leases")).to_have_count(1)
    expect(rows(page, "leases")).to_contain_text(f"{address}{ready_vm}")

    # VMs: the live ones by default, those in a state when one is picked.
    expect(page.locator(f"#vms tr[data-vm='{ready_vm}']")).to_be_visible(timeout=WAIT_MS)
    expect(page.locator(f"#vms tr[data-vm='{FAILED_VM}']")).to_have_count(0)
    page.select_option("#vm-filter [name=vm_state]", "failed")
    expect(page.locator(f"#vms tr[data-vm='{FAILED_VM}']")).to_contain_text(
        "the VMM refused", timeout=WAIT_MS
    )
    expect(rows(page, "vms")).to_have_count(1)

    # Its console, following the log as it grows.
    page.locator(f"#vms tr[data-vm='{FAILED_VM}']").get_by_role("button", name="Console").click()
    expect(page.locator("#console")).to_contain_text("hearth: booting", timeout=WAIT_MS)
    expect(page.locator("#console-vm")).to_have_text(FAILED_VM)
    with (ctl.vms.workdir(FAILED_VM) / "console.log").open("a") as console:
        console.write("hearth: the agent gave up\n")
    expect(page.locator("#console")).to_contain_text("the agent gave up", timeout=WAIT_MS)
    shot(page, "05-vm-state-and-console")
    page.locator("#console-panel").get_by_role("button", name="Close").click()
    expect(page.locator("#console-panel")).to_be_hidden(timeout=WAIT_MS)

    # Sign-ins by status, provider and user.
    expect(rows(page, "sessions")).to_have_count(3, timeout=WAIT_MS)
    page.select_option("#session-filter [name=session_status]", "completed")
    expect(rows(page, "sessions")).to_have_count(1, timeout=WAIT_MS)
    expect(rows(page, "sessions")).to_contain_text("ada")
    page.select_option("#session-filter [name=session_status]", "")
    filter_form(page, "session-filter", session_provider="claude_code")
    expect(rows(page, "sessions")).to_have_count(1, timeout=WAIT_MS)
    expect(rows(page, "sessions")).to_contain_text("carol")
    filter_form(page, "session-filter", session_provider="", session_user="bob")
    expect(page.locator(f"#sessions tr[data-session='{waiting}']")).to_be_visible(timeout=WAIT_MS)
    expect(rows(page, "sessions")).to_have_count(1)
    shot(page, "06-sign-ins-filtered")

    # The egress log: 20 rows, more on request; by verdict, user and VM.
    expect(rows(page, "egress")).to_have_count(20, timeout=WAIT_MS)
    page.locator("button[data-more=egress_limit]").click()
    expect(rows(page, "egress")).to_have_count(30, timeout=WAIT_MS)
    page.select_option("#egress-filter [name=egress_verdict]", "refused")
    expect(rows(page, "egress")).to_have_count(5, timeout=WAIT_MS)
    expect(rows(page, "egress").first).to_contain_text("not on the allow list")
    page.select_option("#egress-filter [name=egress_verdict]", "")
    filter_form(page, "egress-filter", egress_user="ada")
    expect(rows(page, "egress")).to_have_count(25, timeout=WAIT_MS)
    filter_form(page, "egress-filter", egress_user="", egress_vm="0123456789ab")
    expect(rows(page, "egress")).to_have_count(5, timeout=WAIT_MS)
    # A value the API would refuse is not sent: the form says what is wrong instead.
    filter_form(page, "egress-filter", egress_vm="not-a-vm")
    assert not page.locator("#egress-filter [name=egress_vm]").evaluate("e => e.validity.valid")
    expect(rows(page, "egress")).to_have_count(5)
    shot(page, "07-egress-filtered")

    # A user's prompts beyond the latest: all seven, newest first.
    page.locator("#users tr[data-user='ada']").get_by_role("button", name="Prompts").click()
    expect(rows(page, "prompts")).to_have_count(7, timeout=WAIT_MS)
    expect(rows(page, "prompts").first).to_contain_text("prompt number 7")
    expect(rows(page, "prompts").last).to_contain_text("prompt number 1")
    expect(page.locator("#prompts-user")).to_have_text("ada")
    shot(page, "08-prompts")

    # The stream checks its query as the API does.
    with with_cookie(served, page) as http:
        bad = http.get("/admin/events", params={"vm_state": "bogus"})
    assert bad.status_code == 422 and "vm_state" in bad.text


def test_the_admin_page_creates_a_webhook_endpoint_shows_its_deliveries_and_changes_it(
    served: Served, page: Page
):
    ctl = served.controller
    sign_in(page, served.url, create_key(ctl.db, "admin"))
    expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=WAIT_MS)

    with Receiver(secret="", failing=["500"]) as receiver:
        page.fill("#new-webhook [name=url]", receiver.url)
        page.fill("#new-webhook [name=description]", "the <b>app</b>")
        page.uncheck("#new-webhook input[value='prompt.done']")
        page.click("#new-webhook button[type=submit]")
        created = page.locator("#created-webhook")
        expect(created).to_contain_text("whsec_", timeout=WAIT_MS)
        secret = created.inner_text().rsplit(" ", 1)[1]
        (endpoint,) = ctl.webhooks.list()
        assert "prompt.done" not in endpoint.events and "credentials.refreshed" in endpoint.events
        row = page.locator(f"#webhooks tr[data-webhook='{endpoint.id}']")
        expect(row).to_contain_text("enabled", timeout=WAIT_MS)
        expect(row).to_contain_text("the <b>app</b>")  # shown as text, never as markup
        expect(page.locator("#webhooks b")).to_have_count(0)
        shot(page, "09-webhook-created")

        # The secret is the creator's, this once: not in the stream, not after a reload.
        with with_cookie(served, page) as http:
            streamed = first_snapshot(http, webhook=endpoint.id)
        assert endpoint.id in streamed and secret not in streamed
        page.reload()
        expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        assert secret not in page.content()

        # An event: its first attempt answered 500, the retry delivered, signed with that secret.
        receiver.secret = secret
        webhooks.credentials_refreshed(ctl.db, "ada", "demo", 2)
        page.locator(f"#webhooks tr[data-webhook='{endpoint.id}']").get_by_role(
            "button", name="Deliveries"
        ).click()
        [event] = receiver.wait_events(1, WAIT_MS / 1000)
        assert event["type"] == "credentials.refreshed"
        delivery = page.locator(
            f"#deliveries tr[data-delivery='{receiver.requests[0].headers['webhook-id']}']"
        )
        expect(delivery).to_contain_text("delivered", timeout=WAIT_MS)
        expect(delivery).to_contain_text("1: 500 (the endpoint answered 500); 2: 200")
        expect(page.locator("#deliveries-endpoint")).to_have_text(endpoint.id)
        shot(page, "10-deliveries")

    row = page.locator(f"#webhooks tr[data-webhook='{endpoint.id}']")
    row.get_by_role("button", name="Disable").click()
    expect(row).to_contain_text("disabled", timeout=WAIT_MS)
    assert ctl.webhooks.get(endpoint.id).enabled is False
    row.get_by_role("button", name="Enable").click()
    expect(row.get_by_role("button", name="Disable")).to_be_visible(timeout=WAIT_MS)
    assert ctl.webhooks.get(endpoint.id).enabled is True

    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0, timeout=WAIT_MS)
    expect(page.locator("#deliveries-panel")).to_be_hidden()
    assert ctl.webhooks.get(endpoint.id) is None
    shot(page, "11-webhook-deleted")
