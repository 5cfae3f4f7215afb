"""A person at a real browser: headless Chromium (Debian's, driven by Playwright) opens a
connect_url, watches the live view until the VM's Firefox shows the sign-in form, types the
username and password through noVNC, submits, and waits for the page's end state.

Run as:  python browser_user.py URL USER PASSWORD SHOTS_DIR
Prints one JSON line: the final status text and the screenshots taken. `sign_in` does a whole
demo sign-in with it, for tests and benches that need a signed-in user.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Locator, Page, sync_playwright

from hearth.waiting import Timeout, wait_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
END_STATES = ("completed", "failed", "cancelled", "expired")


def main(url: str, username: str, password: str, shots: Path) -> None:
    shots.mkdir(parents=True, exist_ok=True)
    taken = []

    def shot(page, name: str) -> None:
        path = shots / f"{len(taken):02d}-{name}.png"
        page.screenshot(path=str(path))
        taken.append(str(path))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        shot(page, "connect-page")
        status = page.locator("#status")
        # The session turns awaiting_user once the agent sees Firefox showing the page.
        ended = ", ".join(f'#status[data-status="{state}"]' for state in END_STATES)
        page.locator(f'#status[data-status="awaiting_user"], {ended}').wait_for(
            state="attached", timeout=600_000
        )
        if status.get_attribute("data-status") != "awaiting_user":
            shot(page, "ended-early")
            raise SystemExit(f"the session ended: {status.inner_text()}")
        canvas = page.locator("canvas").first
        canvas.wait_for(timeout=60_000)
        shot(page, "live-view-sign-in-form")
        # Focus the viewer without clicking into the VM: the sign-in form's e-mail field has
        # autofocus, and a click on the page around it would take that focus away.
        canvas.focus()
        page.keyboard.type(username, delay=60)
        page.keyboard.press("Tab")
        page.keyboard.type(password, delay=60)
        shot(page, "typed")
        page.keyboard.press("Enter")
        page.locator(ended).wait_for(state="attached", timeout=600_000)
        shot(page, "end-state")
        text = f"{status.get_attribute('data-status')}: {status.inner_text()}"
        browser.close()
    print(json.dumps({"status": text, "screenshots": taken}))


@contextlib.contextmanager
def live_view(connect_url: str) -> Iterator[tuple[Page, Locator]]:
    """Chromium on a session's connect page, once its viewer's canvas is there."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(connect_url)
        canvas = page.locator("canvas").first
        canvas.wait_for(timeout=60_000)
        try:
            yield page, canvas
        finally:
            browser.close()


def sign_in_with_standin(rig, user_id: str, provider: str) -> dict:
    """A sign-in to a provider's stand-in on an egress rig (tests/egress_rig.py): started
    through the API, approved through the live view (Enter on the page the VM's Firefox
    shows: the stand-ins focus their approve button); the session as it ended."""
    started = rig.api.post(
        "/api/auth/start", json={"user_id": user_id, "provider": provider}
    ).json()
    path = f"/api/auth/session/{started['session_id']}"

    def ended(statuses: tuple[str, ...]) -> dict | None:
        session = rig.api.get(path).json()
        return session if session["status"] in statuses else None

    session = wait_for(
        lambda: ended(("awaiting_user", *END_STATES)),
        600,
        "the stand-in's authorize page in Firefox",
        interval=1,
    )
    if session["status"] != "awaiting_user":
        return session
    with live_view(started["connect_url"]) as (page, canvas):
        canvas.focus()  # without a click, which could take the button's focus away

        def approved() -> dict | None:
            # A key sent before the viewer's VNC connection is up is lost: send it again
            # until the sign-in ends (Enter on the CLI's success page does nothing).
            page.keyboard.press("Enter")
            try:
                return wait_for(lambda: ended(END_STATES), 15, "the sign-in to end", interval=1)
            except Timeout:
                return None

        return wait_for(approved, 300, "the sign-in to end after approval", interval=0)


def sign_in(stack, user_id: str, shots: Path) -> dict:
    """Sign `user_id` in to the demo provider on a running demo stack
    (hearth.demo.stack.Stack), as a person would, through the live view; returns the
    completed session."""
    started = stack.start_session(user_id)
    person = subprocess.run(
        [sys.executable, __file__, started["connect_url"], stack.user, stack.password, str(shots)],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if person.returncode != 0:
        raise RuntimeError(f"the browser user failed: {person.stderr[-3000:]}")
    session = stack.api.get(f"/api/auth/session/{started['session_id']}").json()
    if session["status"] != "completed":
        raise RuntimeError(f"the sign-in ended {session['status']}: {session['error']}")
    return session


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]))
