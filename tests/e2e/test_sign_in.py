"""Browser sign-in end to end on the demo stack (hearth.demo.stack): the controller, the VM
network and the demo identity provider each in a namespace the test creates. A real Chromium opens
the connect_url and signs in through the live view into Firefox in the browser VM.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.core import runtime
from hearth.core.reconciler import vmm_processes
from hearth.demo.stack import Stack, stack
from hearth.waiting import wait_for
from tests import artifacts
from tests.e2e.conftest import IMAGES, needs_image

pytestmark = pytest.mark.vm

ARTIFACTS = artifacts.ROOT


def wait_status(running: Stack, session_id: str, statuses: tuple[str, ...], timeout: float) -> dict:
    def reached() -> dict | None:
        body = running.api.get(f"/api/auth/session/{session_id}").json()
        return body if body["status"] in statuses else None

    return wait_for(reached, timeout, f"session {session_id} to reach {statuses}", interval=1)


def sign_in_through_the_live_view(running: Stack, connect_url: str, shots: str) -> dict:
    """A person signs in at `connect_url` in a real Chromium (tests/e2e/browser_user.py),
    screenshots kept under ARTIFACTS/`shots`; what the viewer saw at the end."""
    user = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("browser_user.py")),
            connect_url,
            running.user,
            running.password,
            str(ARTIFACTS / shots),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert user.returncode == 0, user.stderr[-3000:]
    seen = json.loads(user.stdout.splitlines()[-1])
    assert seen["status"].startswith("completed"), seen
    return seen


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Stack]:
    needs_image("browser")
    home = tmp_path / "home"
    home.mkdir()
    (home / "images").symlink_to(IMAGES)
    # A cold sign-in: the warm pool's own tests are test_warm_pool.py's, and its VMs would
    # take the CPUs from this one's.
    with stack(Settings(home=home), controller_env={"HEARTH_POOL_BROWSER": "0"}) as s:
        yield s
    assert vmm_processes(home / "vms") == []


def test_demo_sign_in_through_the_live_view(running: Stack):
    started = running.api.post("/api/auth/start", json={"user_id": "ada", "provider": "demo"})
    assert started.status_code == 202, started.text
    session_id, connect_url = started.json()["session_id"], started.json()["connect_url"]

    sign_in_through_the_live_view(running, connect_url, "sign-in")

    session = wait_status(running, session_id, ("completed",), timeout=60)
    assert [e["status"] for e in session["timeline"]] == [
        "started",
        "vm_booting",
        "awaiting_user",
        "completed",
    ]
    oauth = running.api.get(f"/api/auth/session/{session_id}/oauth").json()["url"]
    assert oauth.startswith(running.settings.demo_issuer + "/authorize?")
    status = running.api.get(f"/api/auth/session/{session_id}/credentials/status").json()
    assert status["status"] == "ready" and status["account_email"] == running.user

    controller = runtime.controller(running.settings)
    files = controller.credentials.files("ada", "demo")
    stored = json.loads(files[".hearth-demo/credentials.json"])
    live_token = connect_url.split("token=", 1)[1]
    secrets = [stored["access_token"], stored["refresh_token"], running.password, live_token]
    home = running.settings.home
    for db_file in home.glob("hearth.db*"):
        assert stored["access_token"].encode() not in db_file.read_bytes()

    vms = controller.vms
    assert vms.list() == [] and vms.network.taps() == [] and vms.pool.leases() == {}
    logs = [*running.logs, *(home / "logs").glob("*.console.log")]
    assert any(p.name.endswith(".console.log") for p in logs)
    for log in logs:
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {log.name}"
    assert len(list((ARTIFACTS / "sign-in").glob("*.png"))) >= 3
