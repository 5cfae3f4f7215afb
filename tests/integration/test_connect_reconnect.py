"""The connect page across a controller crash, in real Chromium: the page open with its live
view connected, the controller SIGKILLed and started again on the same port, and the page
finds it again by itself (no reload): its viewer reconnects to the browser VM, its status
stream comes back, and the sign-in completes. Screenshots go to
$HEARTH_TEST_ARTIFACTS/connect (default artifacts/connect).

The controller is the core rig's (tests/core_rig.py): the first is a process of its own
(tests/core_controller.py serve), killed as a crash ends it; the next is the test's rig
under the API (reconcile, then the adoption of the sign-in, as `hearth serve` starts). The
rig's browser VM is the guest agent as a process, so its screen is a real Xtigervnc on the
VM's address and port with the VM's seeded VNC password, which the controller's proxy
authenticates to as it does to a real browser VM.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from hearth.api.app import create_app
from hearth.api.keys import create_key
from hearth.core import machine
from hearth.core.auth_sessions import ADOPTED, VNC_PASSWORD
from hearth.guest.ports import VNC_PORT
from hearth.store.models import AuthSessionStatus
from hearth.waiting import wait_for
from tests.artifacts import artifacts_dir
from tests.core_controller import spawn
from tests.core_rig import Rig, build_rig, serve_rig
from tests.e2e.browser_user import CHROMIUM, CHROMIUM_ARGS
from tests.integration.test_vnc_proxy import free_port, running_xvnc
from tests.served import serve_app
from tests.unit.test_auth_sessions import wait_ended, wait_status

WAIT = 60.0
STEP_MS = 15_000
# The viewer tries again every 2 s, 30 times (connect.js): the next controller must be up
# within that minute.
RECONNECT_MS = 60_000
CONNECTED = "Connected: click the screen to type."
# How long the controller stays down: the page's viewer and status stream meet a closed
# port a few times before the next start listens.
DOWN_SECONDS = 5.0


@contextmanager
def controller_process(rig: Rig, port: int) -> Iterator[subprocess.Popen]:
    """The rig's controller serving its API on 127.0.0.1:`port` from a process of its own,
    once it answers; killed on leaving if it still runs."""
    process = spawn("serve", rig.settings, f"127.0.0.1:{port}")
    try:
        wait_for(
            lambda: process.poll() is not None or answers(f"http://127.0.0.1:{port}"),
            WAIT,
            "the first controller to listen",
        )
        assert process.poll() is None, "the first controller exited"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200
    except httpx.TransportError:
        return False


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(artifacts_dir("connect") / f"{name}.png"), full_page=True)


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with build_rig(tmp_path, monkeypatch) as built:
        yield built


def test_the_connect_page_reconnects_by_itself_after_a_controller_crash_and_signs_in(
    rig: Rig, tmp_path: Path
):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    key = create_key(rig.controller.db, "app")
    sessions = rig.controller.sessions
    with controller_process(rig, port) as first:
        started = httpx.post(
            f"{url}/api/auth/start",
            json={"user_id": "u1", "provider": "demo"},
            headers={"Authorization": f"Bearer {key}"},
            trust_env=False,
            timeout=30,
        ).json()
        session_id = started["session_id"]
        vm_id = wait_status(rig, session_id, AuthSessionStatus.awaiting_user).vm_id
        vm = rig.vms.get(vm_id)
        password = machine.seed_of(rig.settings, vm_id)[VNC_PASSWORD]
        with (
            running_xvnc(tmp_path, vm.ip, VNC_PORT, password),
            sync_playwright() as pw,
        ):
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(started["connect_url"].replace(rig.settings.public_url, url))
                status, viewer = page.locator("#status"), page.locator("#viewer-state")
                expect(status).to_have_text("Status: awaiting user", timeout=STEP_MS)
                expect(viewer).to_have_text(CONNECTED, timeout=STEP_MS)
                expect(page.locator("#screen canvas")).to_be_visible()
                page.evaluate("window.sameDocument = true")  # gone if the page reloads
                shot(page, "01-connected")

                first.send_signal(signal.SIGKILL)
                first.wait()
                expect(viewer).to_have_text(
                    "The connection to the browser closed.", timeout=STEP_MS
                )
                shot(page, "02-controller-killed")

                # The next start, a while later on the same port: it adopts the sign-in,
                # and the page comes back to it by itself.
                time.sleep(DOWN_SECONDS)
                app = create_app(rig.settings, lambda _settings: rig.controller)
                with serve_app(app, port):
                    timeline = sessions.timeline(session_id)
                    assert (timeline[-1].status, timeline[-1].detail) == (
                        AuthSessionStatus.awaiting_user,
                        ADOPTED,
                    )
                    expect(viewer).to_have_text(CONNECTED, timeout=RECONNECT_MS)
                    expect(status).to_have_text("Status: awaiting user")
                    assert page.evaluate("window.sameDocument") is True
                    shot(page, "03-reconnected")

                    callback = rig.approve(sessions.get(session_id).oauth_url)
                    assert callback.status_code == 200
                    # Only the status stream, open again, can say so.
                    expect(status).to_have_text("Signed in.", timeout=RECONNECT_MS)
                    assert page.evaluate("window.sameDocument") is True
                    shot(page, "04-signed-in")
                    assert sessions.get(session_id).status == AuthSessionStatus.completed
                    assert rig.controller.credentials.info("u1", "demo") is not None
            finally:
                browser.close()


def test_an_ended_sign_ins_status_stream_still_opens_with_its_token_and_tells_the_end(rig: Rig):
    """What the page above relies on when its stream comes back after the sign-in ended."""
    sessions = rig.controller.sessions
    session, token = sessions.start("u1", "demo")
    rig.approve(wait_status(rig, session.id, AuthSessionStatus.awaiting_user).oauth_url)
    wait_ended(rig, session.id)
    path = f"/api/auth/session/{session.id}/events"
    with serve_rig(rig) as url, httpx.Client(base_url=url, trust_env=False, timeout=15) as http:
        with http.stream("GET", path, params={"token": token}) as stream:
            assert stream.status_code == 200
            told = [
                json.loads(line.removeprefix("data: "))["status"]
                for line in stream.iter_lines()
                if line.startswith("data: ")
            ]  # to the stream's end, which the session's end is
        refused = http.get(path, params={"token": f"{token}x"})
    assert told == [s.status for s in sessions.timeline(session.id)]
    assert told[-1] == AuthSessionStatus.completed
    assert refused.status_code == 401
    assert not sessions.token_valid(session.id, token)  # the live view stays shut
