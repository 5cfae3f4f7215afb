"""Demo sign-ins that take a warm pool VM (hearth.core.warm_pool), with real QEMU browser
VMs on the demo stack: the pool's VM boots, paints Firefox's blank page (and, prepared for
the demo provider, shows its sign-in page with the login started) and hibernates; the
sign-in resumes it, its Firefox shows the authorize page, and a real Chromium signs in
through the live view. And the stack stopped while its pool VM boots leaves nothing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.core import runtime
from hearth.core.reconciler import vmm_processes
from hearth.core.sign_in_vm import FROM_POOL, SIGN_IN_AHEAD
from hearth.core.warm_pool import WARM, WARMING
from hearth.demo.stack import Stack, stack
from hearth.store.models import Vm, VmState
from hearth.waiting import wait_for
from tests.e2e.conftest import IMAGES, needs_image
from tests.e2e.test_sign_in import sign_in_through_the_live_view, wait_status

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


def the_warm_vm(s: Stack) -> Vm:
    """The pool's one VM, once it is warm: hibernated, its snapshot on disk."""
    vms = runtime.vm_manager(s.settings)

    def warm() -> list[Vm]:
        return [vm for vm in vms.list() if vm.pool == WARM and vm.state == VmState.hibernated]

    (pool_vm,) = wait_for(warm, WARM_WAIT, "the pool's VM to be warm", interval=1)
    assert not vms.vmm_alive(pool_vm) and vms.has_snapshot(pool_vm)
    return pool_vm


def sign_in_from_the_pool(s: Stack, shots: str) -> dict:
    """A demo sign-in through the live view, timed from its start to the authorize page;
    the completed session."""
    began = time.monotonic()
    started = s.api.post("/api/auth/start", json={"user_id": "ada", "provider": "demo"})
    assert started.status_code == 202, started.text
    session_id, connect_url = started.json()["session_id"], started.json()["connect_url"]
    wait_status(s, session_id, ("awaiting_user",), timeout=PAINT_WAIT)
    print(f"start -> authorize page painted, from the pool: {time.monotonic() - began:.1f} s")
    sign_in_through_the_live_view(s, connect_url, shots)
    session = wait_status(s, session_id, ("completed",), timeout=60)
    status = s.api.get(f"/api/auth/session/{session_id}/credentials/status").json()
    assert status["status"] == "ready" and status["account_email"] == s.user
    return session


def test_a_demo_sign_in_takes_a_warm_pool_vm_and_completes(pooled: Stack):
    pool_vm = the_warm_vm(pooled)
    assert pool_vm.pool_provider is None
    session = sign_in_from_the_pool(pooled, "warm-pool")
    timeline = session["timeline"]
    assert [e["status"] for e in timeline] == [
        "started",
        "vm_booting",
        "awaiting_user",
        "completed",
    ]
    assert timeline[1]["detail"] == f"{FROM_POOL} ({pool_vm.id})", timeline

    # The VM that served the sign-in is destroyed, never back in the pool.
    vms = runtime.vm_manager(pooled.settings)
    wait_for(lambda: vms.get(pool_vm.id).state == VmState.destroyed, 120, "the served VM to go")
    assert vms.get(pool_vm.id).pool is None


def test_a_pool_vm_prepared_for_the_provider_shows_its_sign_in_page_at_once(
    pooled_ahead: Stack,
):
    """The pool's VM hibernated with the demo CLI's login running and its authorize page
    shown: a take resumes it, and that same login completes the sign-in."""
    pool_vm = the_warm_vm(pooled_ahead)
    assert pool_vm.pool_provider == "demo"
    session = sign_in_from_the_pool(pooled_ahead, "warm-pool-ahead")
    # The login started ahead survived the hibernation: no second one was started.
    assert [(e["status"], e["detail"]) for e in session["timeline"]] == [
        ("started", None),
        ("vm_booting", f"{FROM_POOL} ({pool_vm.id}), {SIGN_IN_AHEAD.format('demo')}"),
        ("awaiting_user", None),
        ("completed", f"credentials stored for {pooled_ahead.user}"),
    ]
