"""A demo sign-in that takes a warm pool VM (hearth.core.warm_pool), with real QEMU browser
VMs on the demo stack: the pool's VM boots, paints Firefox's blank page and hibernates; the
sign-in resumes it, its Firefox shows the authorize page, and a real Chromium signs in
through the live view."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.core import runtime
from hearth.core.auth_sessions import FROM_POOL, SIGN_IN_AHEAD
from hearth.core.reconciler import vmm_processes
from hearth.core.warm_pool import WARM, WARMING
from hearth.demo.stack import Stack, stack
from hearth.store.models import VmState
from hearth.waiting import wait_for
from tests.e2e.conftest import IMAGES, needs_image
from tests.e2e.test_sign_in import ARTIFACTS, wait_status

pytestmark = pytest.mark.vm

WARM_WAIT = 600  # seconds for a pool VM to boot and paint under emulation (about 60 s)
PAINT_WAIT = 180  # seconds from the start to the authorize page from the pool (see the report)


@contextlib.contextmanager
def pool_stack(tmp_path: Path, **controller_env: str) -> Iterator[Stack]:
    """The demo stack with a pool of one; on exit nothing of its VMs may be left."""
    needs_image("browser")
    home = tmp_path / "home"
    home.mkdir()
    (home / "images").symlink_to(IMAGES)
    env = {"HEARTH_POOL_BROWSER": "1", **controller_env}
    with stack(Settings(home=home), controller_env=env) as s:
        yield s
    assert vmm_processes(home / "vms") == []
    vms = runtime.vm_manager(s.settings)
    assert [vm.id for vm in vms.list()] == []
    assert vms.pool.leases() == {}


@pytest.fixture
def pooled(tmp_path: Path) -> Iterator[Stack]:
    """A pool whose VM waits on the blank page, for any provider."""
    with pool_stack(tmp_path, HEARTH_POOL_PROVIDERS="[]") as s:
        yield s


@pytest.fixture
def pooled_ahead(tmp_path: Path) -> Iterator[Stack]:
    """A pool whose VM is prepared for the demo provider (the demo stack's default): its
    sign-in page shown ahead."""
    with pool_stack(tmp_path) as s:
        yield s


def test_the_stack_stopped_while_a_pool_vm_boots_leaves_no_vm(tmp_path: Path):
    with pool_stack(tmp_path) as s:
        vms = runtime.vm_manager(s.settings)

        def booting() -> list:
            return [vm for vm in vms.list() if vm.pool == WARMING and vms.vmm_alive(vm)]

        wait_for(booting, 120, "the pool's VM to boot", interval=0.2)


def test_a_demo_sign_in_takes_a_warm_pool_vm_and_completes(pooled: Stack):
    vms = runtime.vm_manager(pooled.settings)

    def warm() -> list:
        return [vm for vm in vms.list() if vm.pool == WARM and vm.state == VmState.hibernated]

    (pool_vm,) = wait_for(warm, WARM_WAIT, "the pool's VM to be warm", interval=1)
    assert not vms.vmm_alive(pool_vm) and vms.has_snapshot(pool_vm)

    began = time.monotonic()
    started = pooled.api.post("/api/auth/start", json={"user_id": "ada", "provider": "demo"})
    assert started.status_code == 202, started.text
    session_id, connect_url = started.json()["session_id"], started.json()["connect_url"]
    wait_status(pooled, session_id, ("awaiting_user",), timeout=PAINT_WAIT)
    painted = time.monotonic() - began
    print(f"start -> authorize page painted, from the pool: {painted:.1f} s")

    user = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("browser_user.py")),
            connect_url,
            pooled.user,
            pooled.password,
            str(ARTIFACTS / "warm-pool"),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert user.returncode == 0, user.stderr[-3000:]
    assert json.loads(user.stdout.splitlines()[-1])["status"].startswith("completed")

    session = wait_status(pooled, session_id, ("completed",), timeout=60)
    timeline = session["timeline"]
    assert [e["status"] for e in timeline] == [
        "started",
        "vm_booting",
        "awaiting_user",
        "completed",
    ]
    assert timeline[1]["detail"] == f"{FROM_POOL} ({pool_vm.id})", timeline
    assert "pool" in timeline[1]["detail"]
    status = pooled.api.get(f"/api/auth/session/{session_id}/credentials/status").json()
    assert status["status"] == "ready" and status["account_email"] == pooled.user

    # The VM that served the sign-in is destroyed, never back in the pool.
    wait_for(lambda: vms.get(pool_vm.id).state == VmState.destroyed, 120, "the served VM to go")
    assert vms.get(pool_vm.id).pool is None


def test_a_pool_vm_prepared_for_the_provider_shows_its_sign_in_page_at_once(
    pooled_ahead: Stack,
):
    """The pool's VM hibernated with the demo CLI's login running and its authorize page
    shown: a take resumes it, and that same login completes the sign-in."""
    vms = runtime.vm_manager(pooled_ahead.settings)

    def warm() -> list:
        return [vm for vm in vms.list() if vm.pool == WARM and vm.state == VmState.hibernated]

    (pool_vm,) = wait_for(warm, WARM_WAIT, "the pool's VM to be warm", interval=1)
    assert pool_vm.pool_provider == "demo"

    began = time.monotonic()
    started = pooled_ahead.api.post("/api/auth/start", json={"user_id": "ada", "provider": "demo"})
    assert started.status_code == 202, started.text
    session_id, connect_url = started.json()["session_id"], started.json()["connect_url"]
    wait_status(pooled_ahead, session_id, ("awaiting_user",), timeout=PAINT_WAIT)
    print(f"start -> authorize page, shown ahead in the pool VM: {time.monotonic() - began:.1f} s")

    user = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("browser_user.py")),
            connect_url,
            pooled_ahead.user,
            pooled_ahead.password,
            str(ARTIFACTS / "warm-pool-ahead"),
        ],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert user.returncode == 0, user.stderr[-3000:]
    session = wait_status(pooled_ahead, session_id, ("completed",), timeout=60)
    # The login started ahead survived the hibernation: no second one was started.
    assert [(e["status"], e["detail"]) for e in session["timeline"][:2]] == [
        ("started", None),
        ("vm_booting", f"{FROM_POOL} ({pool_vm.id}), {SIGN_IN_AHEAD.format('demo')}"),
    ]
    assert [e["status"] for e in session["timeline"]][2:] == ["awaiting_user", "completed"]
    status = pooled_ahead.api.get(f"/api/auth/session/{session_id}/credentials/status").json()
    assert status["status"] == "ready" and status["account_email"] == pooled_ahead.user
