"""The warm pool (hearth.core.warm_pool) on the root-free rig (tests/core_rig.py): the real
controller with the real guest agent as each VM's process.

The rig's hibernate ends the agent's process and its restore starts it again (no memory
image), so a resumed pool VM's agent no longer holds the warm Firefox and its login starts
its own; what these tests hold the pool to is its bookkeeping and its VMs' lives: fill,
take, refill under the rate limit, replacement by age and by image, a restart, a resume that
fails, concurrent takes, and a served VM never coming back. The warm Firefox itself is
tested on the agent (tests/unit/test_agent_login.py) and in a real VM (tests/e2e).
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest

from hearth.core import machine, runtime
from hearth.core.egress import Policies, allowed_names
from hearth.core.reconciler import reconcile
from hearth.core.sign_in_vm import (
    FROM_POOL,
    LOGIN_AHEAD_GONE,
    POOL_EMPTY,
    SIGN_IN_AHEAD,
    VNC_PASSWORD,
)
from hearth.core.vms import VmManager
from hearth.core.warm_pool import BUSY_PASS, WARM, WARMING, Taken
from hearth.store.models import AuthSession, AuthSessionStatus, Vm, VmState, utcnow
from hearth.waiting import wait_for
from tests.core_rig import Rig, build_rig, opened_urls
from tests.unit.test_auth_sessions import (
    WAIT,
    assert_vm_gone,
    wait_ended,
    wait_status,
    wait_vm_destroyed,
)


@contextmanager
def pooled_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings) -> Iterator[Rig]:
    """A rig whose controller keeps a warm pool (2 VMs, no rate limit unless asked) with its
    refiller running; on leaving, the refiller and its preparations end before the rig's
    clean-up destroys every VM."""
    settings = {"pool_browser": 2, "pool_boot_interval": 0.0, **settings}
    with build_rig(tmp_path, monkeypatch, **settings) as rig:
        stop = threading.Event()
        rig.controller.pool.start(stop)
        try:
            yield rig
        finally:
            stop.set()
            for thread in threading.enumerate():
                if thread.name.startswith("warm-"):
                    thread.join(WAIT)


def members(rig: Rig, *marks: str) -> list[Vm]:
    return rig.controller.pool._members(*marks)


def wait_warm(rig: Rig, count: int, without: set[str] = frozenset()) -> list[Vm]:
    """Wait for `count` warm, hibernated pool VMs none of which is in `without`."""

    def full() -> list[Vm] | None:
        warm = [
            vm
            for vm in members(rig, WARM)
            if vm.state == VmState.hibernated and vm.id not in without
        ]
        return warm if len(warm) >= count else None

    return wait_for(full, WAIT, f"{count} warm pool VMs")


def vm_booting_detail(rig: Rig, session_id: str) -> list[str]:
    return [
        e.detail
        for e in rig.controller.sessions.timeline(session_id)
        if e.status == AuthSessionStatus.vm_booting
    ]


# -- fill ----------------------------------------------------------------------------------


def test_the_pool_fills_with_hibernated_vms_each_its_own_and_painted(tmp_path, monkeypatch):
    with pooled_rig(tmp_path, monkeypatch) as rig:
        warm = wait_warm(rig, 2)
        # The refiller's next pass finds the pool full and rests: it booted no more.
        wait_for(lambda: rig.controller.pool._wake._cond._waiters, WAIT, "the refiller to rest")
        assert len(members(rig, WARM, WARMING)) == 2
        for vm in warm:
            assert rig.vms.has_snapshot(vm) and not rig.vms.vmm_alive(vm)
            assert vm.image == "browser" and vm.user_id is None
            # Firefox was started on the blank page (a file: URL) before it slept.
            (blank,) = opened_urls(rig.vms, vm.id)
            assert blank.startswith("file:") and blank.endswith("blank.html")
        # Booted each on its own: no address, TAP, MAC, agent token or VNC password shared.
        for field in ("ip", "tap", "mac", "agent_token"):
            assert len({getattr(vm, field) for vm in warm}) == 2, field
        passwords = {machine.seed_of(rig.settings, vm.id)[VNC_PASSWORD] for vm in warm}
        assert len(passwords) == 2


def test_a_pool_of_zero_boots_nothing_and_sessions_boot_cold(tmp_path, monkeypatch):
    with pooled_rig(tmp_path, monkeypatch, pool_browser=0) as rig:
        session, _ = rig.controller.sessions.start("u1", "demo")
        wait_status(rig, session.id, AuthSessionStatus.awaiting_user)
        assert vm_booting_detail(rig, session.id) == ["booting a cold browser VM"]
        assert members(rig, WARM, WARMING) == []
        assert [vm.id for vm in rig.vms.list()] == [rig.controller.sessions.get(session.id).vm_id]


# -- take ----------------------------------------------------------------------------------


def test_a_sign_in_takes_a_warm_vm_completes_and_the_vm_is_destroyed_not_returned(
    tmp_path, monkeypatch
):
    with pooled_rig(tmp_path, monkeypatch) as rig:
        before = {vm.id for vm in wait_warm(rig, 2)}
        session, _ = rig.controller.sessions.start("u1", "demo")
        session = wait_status(rig, session.id, AuthSessionStatus.awaiting_user)
        assert session.vm_id in before
        assert vm_booting_detail(rig, session.id) == [f"{FROM_POOL} ({session.vm_id})"]
        taken = rig.vms.get(session.vm_id)
        assert taken.state == VmState.ready and taken.pool is None
        # Resumed: the login's sign-in page went to the VM's Firefox after the blank page.
        assert opened_urls(rig.vms, taken.id)[-1] == session.oauth_url

        # The refiller replaces it at once with a VM of its own.
        refilled = wait_warm(rig, 2)
        assert taken.id not in {vm.id for vm in refilled}

        assert rig.approve(session.oauth_url).status_code == 200
        assert wait_ended(rig, session.id).status == AuthSessionStatus.completed
        wait_vm_destroyed(rig, taken.id)
        assert_vm_gone(rig, taken.id)
        assert rig.vms.get(taken.id).pool is None  # never back in the pool
        assert taken.id not in {vm.id for vm in members(rig, WARM, WARMING)}


def test_a_sign_in_with_an_empty_pool_boots_cold_and_says_so(tmp_path, monkeypatch):
    with pooled_rig(tmp_path, monkeypatch) as rig:
        pool = rig.controller.pool
        wait_warm(rig, 2)
        # No refill for an hour: every warm VM is taken already when the session starts.
        pool.settings = pool.settings.model_copy(update={"pool_boot_interval": 3600.0})
        for vm in members(rig, WARM):
            assert pool.take("demo") == Taken(vm.id, login_started=False)
        session, _ = rig.controller.sessions.start("u1", "demo")
        session = wait_status(rig, session.id, AuthSessionStatus.awaiting_user)
        assert vm_booting_detail(rig, session.id) == [POOL_EMPTY]
        assert rig.vms.get(session.vm_id).pool is None


def test_concurrent_takes_never_share_a_vm(tmp_path, monkeypatch):
    with pooled_rig(tmp_path, monkeypatch, pool_browser=3) as rig:
        warm = {vm.id for vm in wait_warm(rig, 3)}
        rig.controller.pool.size = 0  # nothing refills while they race
        start = threading.Barrier(8)
        taken: list[str | None] = []

        def take() -> None:
            start.wait()
            won = rig.controller.pool.take("demo")
            taken.append(won and won.vm_id)

        racers = [threading.Thread(target=take) for _ in range(8)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(WAIT)
        won = [vm_id for vm_id in taken if vm_id is not None]
        assert sorted(won) == sorted(warm)  # each warm VM exactly once
        assert taken.count(None) == 5
        for vm_id in won:
            rig.vms.destroy(vm_id)


def test_two_sessions_at_once_take_two_different_vms(tmp_path, monkeypatch):
    with pooled_rig(tmp_path, monkeypatch) as rig:
        warm = {vm.id for vm in wait_warm(rig, 2)}
        sessions = rig.controller.sessions
        first, _ = sessions.start("u1", "demo")
        second, _ = sessions.start("u2", "demo")
        vm_ids = {
            wait_status(rig, s.id, AuthSessionStatus.awaiting_user).vm_id for s in (first, second)
        }
        assert vm_ids == warm


# -- VMs prepared for a provider -----------------------------------------------------------


def forwarded_to(rig: Rig, vm: Vm) -> str | None:
    """The URL the VM's warm blank page forwards its Firefox to, if it does."""
    (blank,) = opened_urls(rig.vms, vm.id)
    match = re.search(r'url=([^"]+)"', Path(blank.removeprefix("file://")).read_text())
    return html.unescape(match.group(1)) if match else None


def test_a_pool_for_a_provider_keeps_vms_with_its_sign_in_page_shown(tmp_path, monkeypatch):
    allow = {"demo": ["idp.example.test"]}
    with pooled_rig(tmp_path, monkeypatch, pool_providers=["demo"], egress_allow=allow) as rig:
        warm = wait_warm(rig, 2)
        with rig.controller.db.session() as s:
            assert s.query(AuthSession).count() == 0  # no sign-in asked for any of it
        for vm in warm:
            assert vm.pool_provider == "demo"
            # Its login ran before it slept: Firefox went on from the blank page to the IdP.
            assert forwarded_to(rig, vm).startswith(f"{rig.settings.demo_issuer}/authorize?")
        # A pool VM prepared for a provider may reach that provider's sign-in names.
        policies = Policies(rig.settings, rig.controller.db)
        expected = tuple((n, "demo") for n in allowed_names(rig.settings, "demo", True))
        assert expected and policies.lookup(warm[0].ip).rules == expected
        # It is for that provider only.
        assert rig.controller.pool.take("claude_code") is None

        session, _ = rig.controller.sessions.start("u1", "demo")
        session = wait_status(rig, session.id, AuthSessionStatus.awaiting_user)
        assert session.vm_id in {vm.id for vm in warm}
        # The rig's restore starts a new agent process (no memory image), so the login
        # started ahead is gone and the session starts it again; a real VM keeps it
        # (tests/e2e/test_warm_pool.py).
        assert vm_booting_detail(rig, session.id) == [
            f"{FROM_POOL} ({session.vm_id}), {SIGN_IN_AHEAD.format('demo')}",
            LOGIN_AHEAD_GONE,
        ]
        taken = rig.vms.get(session.vm_id)
        assert (taken.pool, policies.lookup(taken.ip).session_id) == (None, session.id)
        assert rig.approve(session.oauth_url).status_code == 200
        assert wait_ended(rig, session.id).status == AuthSessionStatus.completed
        wait_vm_destroyed(rig, session.vm_id)


def test_pool_vms_of_a_kind_no_longer_kept_are_replaced(tmp_path, monkeypatch):
    with pooled_rig(tmp_path, monkeypatch) as rig:
        blank = {vm.id for vm in wait_warm(rig, 2)}
        rig.controller.pool.kinds = ("demo",)  # the operator now wants demo sign-in pages
        assert rig.controller.pool.take("demo") is None  # a blank-page VM is stale now
        fresh = wait_warm(rig, 2, without=blank)  # the refiller woken by the take replaced them
        assert {vm.pool_provider for vm in fresh} == {"demo"}
        for vm_id in blank:
            assert_vm_gone(rig, vm_id)


# -- refill --------------------------------------------------------------------------------


def test_refills_are_rate_limited(tmp_path, monkeypatch):
    interval = 1.5
    with pooled_rig(tmp_path, monkeypatch, pool_browser=3, pool_boot_interval=interval) as rig:
        warm = wait_warm(rig, 3)
        started = sorted(vm.created_at for vm in warm)
        gaps = [(b - a).total_seconds() for a, b in zip(started, started[1:], strict=False)]
        assert all(gap >= interval * 0.95 for gap in gaps), gaps

        # A burst of takes: the refills still start no closer together than the interval.
        for _ in warm:
            rig.controller.pool.take("demo")
        refilled = wait_warm(rig, 3, without={vm.id for vm in warm})
        started = sorted(vm.created_at for vm in refilled)
        gaps = [(b - a).total_seconds() for a, b in zip(started, started[1:], strict=False)]
        assert all(gap >= interval * 0.95 for gap in gaps), gaps
        for vm in warm:
            rig.vms.destroy(vm.id)


def test_the_pool_boots_nothing_while_another_vm_boots_or_resumes(tmp_path, monkeypatch):
    with build_rig(tmp_path, monkeypatch, pool_browser=1, pool_boot_interval=0.0) as rig:
        pool = rig.controller.pool
        cli_vm = rig.vms.record("cli", user_id="u1")  # requested: about to boot
        for state in (VmState.requested, VmState.booting, VmState.resuming):
            rig.vms.update(cli_vm, state=state)
            assert pool.refill() == BUSY_PASS
            assert members(rig, WARM, WARMING) == []

        rig.vms.update(cli_vm, state=VmState.ready)
        pool.refill()
        [booting] = members(rig, WARMING)
        assert [vm.id for vm in wait_warm(rig, 1)] == [booting.id]
        rig.vms.destroy(cli_vm)


# -- replacement ---------------------------------------------------------------------------


def test_vms_past_the_maximum_age_are_replaced(tmp_path, monkeypatch):
    with pooled_rig(tmp_path, monkeypatch, pool_max_age=3600.0) as rig:
        old, young = wait_warm(rig, 2)
        # The older one was booted two hours ago, as far as the record says.
        rig.vms.update(old.id, created_at=utcnow() - timedelta(hours=2))
        # Dropped by this pass or by the refiller's own, whichever claims it first.
        assert rig.controller.pool.drop_stale() in ([old.id], [])
        wait_vm_destroyed(rig, old.id)
        assert_vm_gone(rig, old.id)
        replaced = wait_warm(rig, 2, without={old.id})
        assert young.id in {vm.id for vm in replaced}


def test_vms_from_an_image_since_rebuilt_are_replaced_and_never_taken(tmp_path, monkeypatch):
    with pooled_rig(tmp_path, monkeypatch) as rig:
        stale = {vm.id for vm in wait_warm(rig, 2)}
        manifest = rig.settings.images_dir / "browser" / "manifest.json"
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "built_at": "now"}))
        assert rig.controller.pool.take("demo") is None  # a stale VM is not handed out
        fresh = wait_warm(rig, 2, without=stale)
        for vm_id in stale:
            assert_vm_gone(rig, vm_id)
        assert {vm.image_build for vm in fresh} != {rig.vms.get(v).image_build for v in stale}


# -- restart -------------------------------------------------------------------------------


def test_the_pool_survives_a_controller_restart(tmp_path, monkeypatch):
    with pooled_rig(tmp_path, monkeypatch) as rig:
        warm = {vm.id for vm in wait_warm(rig, 2)}
        rig.controller.pool.size = 0  # the old controller boots no more
        # A VM the dead controller was still preparing: booted, Firefox painting, awake.
        half = rig.controller.pool._boot(rig.controller.capacity.reserve("browser"), None)
        rig.vms.finish_create(half)

        # The reconciler adopts the sleeping pool VMs (they run no process), and the pool
        # drops the half-made one.
        # The next controller on the same home, host network and VMM processes.
        db = runtime.open_database(rig.settings)
        drivers = {rig.driver.name: rig.driver}
        vms = VmManager(rig.settings, db, rig.network, drivers, vmm=rig.driver.name)
        restarted = runtime.controller(rig.settings, vms)
        report = reconcile(restarted.vms)
        assert warm <= set(report.adopted)
        assert restarted.pool.recover() == [half]
        assert_vm_gone(rig, half)
        assert {vm.id for vm in restarted.pool._members(WARM)} == warm

        session, _ = restarted.sessions.start("u1", "demo")

        def awaiting() -> str | None:
            now = restarted.sessions.get(session.id)
            return now.vm_id if now.status == AuthSessionStatus.awaiting_user else None

        assert wait_for(awaiting, WAIT, "the session on the new controller") in warm
        restarted.sessions.cancel(session.id)
        wait_vm_destroyed(rig, restarted.sessions.get(session.id).vm_id)


# -- a resume that fails ---------------------------------------------------------------------


def test_a_pool_vm_that_does_not_resume_is_destroyed_and_the_session_boots_cold(
    tmp_path, monkeypatch
):
    with pooled_rig(tmp_path, monkeypatch) as rig:
        warm = {vm.id for vm in wait_warm(rig, 2)}
        rig.driver.failing.add("restore")
        session, _ = rig.controller.sessions.start("u1", "demo")
        session = wait_status(rig, session.id, AuthSessionStatus.awaiting_user)
        details = vm_booting_detail(rig, session.id)
        assert len(details) == 2
        taken = details[0].removeprefix(f"{FROM_POOL} (").removesuffix(")")
        assert taken in warm
        assert details[1].startswith("the warm pool VM did not resume (")
        assert "the VMM refused to restore (injected)" in details[1]
        assert details[1].endswith("booting a cold browser VM instead")
        assert_vm_gone(rig, taken)
        assert session.vm_id not in warm  # a cold VM of its own
        assert rig.approve(session.oauth_url).status_code == 200
        assert wait_ended(rig, session.id).status == AuthSessionStatus.completed
