"""Capacity and admission (hearth.core.capacity, with the sign-in queue in auth_sessions and
the CLI VMs' admission in cli_vms and prompts) on the root-free core rig: the real
controller, each VM's process the real guest agent, the demo CLI's real login and prompt
against the real demo IdP, and the real API over HTTP where the answer is the point.

Covered: the cost model and the default budget; a budget for two VMs with four sign-ins (two
run, two queue at positions 1 and 2, shown in the JSON, the events and the connect page),
the queue moving when one completes and when one is cancelled; a full queue's 503 with
Retry-After; a queued session that expires, is cancelled or superseded; a restart that
recounts the live VMs and keeps the queue; a prompt that cannot have a VM (503) and one too
many for a user (429); the idle CLI VM used longest hibernated to make room, for a prompt and
for a sign-in, never one in use nor one admitted for a prompt that has yet to use it; and
hibernated VMs costing nothing.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.core.capacity import (
    HOST_RESERVE_MIN_MIB,
    RETRY_AFTER_SECONDS,
    UNMEASURED_VMM_MIB,
    Capacity,
    NoCapacity,
    VmCost,
    default_budget_mib,
    meminfo_mib,
)
from hearth.core.machine import machine_spec
from hearth.core.vms import VmManager
from hearth.store.models import AuthSession, AuthSessionStatus, Prompt, PromptStatus, VmState
from hearth.vmm.firecracker import FirecrackerDriver
from hearth.vmm.qemu import QEMU_DEFAULT_TB_MIB, QEMU_OWN_MIB, TB_SIZE_MIB, QemuDriver
from hearth.waiting import wait_for
from tests.core_rig import Rig, api_of, build_rig, local_controller
from tests.unit.test_auth_sessions import assert_vm_gone, statuses, wait_ended, wait_status
from tests.unit.test_cli_vms import sign_in
from tests.unit.test_qemu_snapshot import machine

WAIT = 15.0
MEMORY_MIB = 256
VM_MIB = MEMORY_MIB + UNMEASURED_VMM_MIB  # the rig's VMM has no measured figure
LONG_PROMPT = " ".join(f"word{n}" for n in range(40))  # the demo CLI prints ~13 s of it


def capacity_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vms: int, **settings):
    """A rig whose memory budget holds `vms` VMs (and one MiB less than another)."""
    return build_rig(
        tmp_path,
        monkeypatch,
        browser_memory_mib=MEMORY_MIB,
        cli_memory_mib=MEMORY_MIB,
        vm_memory_budget_mib=vms * VM_MIB + VM_MIB - 1,
        **settings,
    )


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    with capacity_rig(tmp_path, monkeypatch, 2, auth_queue_max=2) as built:
        yield built


def start(rig: Rig, *users: str) -> list[str]:
    return [rig.controller.sessions.start(user, "demo")[0].id for user in users]


def position(rig: Rig, session_id: str) -> int | None:
    return rig.controller.sessions.queue_position(session_id)


def running_vms(rig: Rig) -> int:
    return rig.controller.capacity.usage().vms


def complete(rig: Rig, session_id: str) -> None:
    session = wait_status(rig, session_id, AuthSessionStatus.awaiting_user)
    assert rig.approve(session.oauth_url).status_code == 200
    assert wait_ended(rig, session_id).status == AuthSessionStatus.completed
    wait_for(lambda: rig.vms.get(session.vm_id).state == VmState.destroyed, WAIT, "the VM's end")


def sse(api: httpx.Client, path: str, until: str) -> list[tuple[str, dict]]:
    """The stream's events up to and including the first whose name is `until`."""
    events: list[tuple[str, dict]] = []
    with api.stream("GET", path) as response:
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((kind, json.loads(line.removeprefix("data: "))))
                if kind == until:
                    return events
    raise AssertionError(f"the stream ended without a {until} event: {events}")


# -- the cost model ------------------------------------------------------------------------


def test_a_vm_costs_its_guest_memory_and_its_vmms_and_hibernated_ones_cost_nothing(rig):
    capacity = rig.controller.capacity
    assert capacity.cost("browser") == VmCost(MEMORY_MIB, UNMEASURED_VMM_MIB)
    assert capacity.cost("browser").total_mib == VM_MIB
    assert capacity.usage().vms == 0 and capacity.usage().memory_mib == 0

    cli = rig.vms.create(rig.settings.cli_image, user_id="u1")
    assert (capacity.usage().vms, capacity.usage().memory_mib) == (1, VM_MIB)
    rig.vms.hibernate(cli.id)
    assert (capacity.usage().vms, capacity.usage().memory_mib) == (0, 0)
    rig.vms.resume(cli.id)
    assert capacity.usage().vms == 1
    rig.vms.destroy(cli.id)
    assert capacity.usage().vms == 0


def test_qemus_overhead_follows_its_accelerator_and_translation_cache_cap(rig):
    for driver, overhead in (
        (QemuDriver("tcg", tb_size_mib=256), QEMU_OWN_MIB + 256),
        (QemuDriver("tcg", tb_size_mib=0), QEMU_OWN_MIB + QEMU_DEFAULT_TB_MIB),  # QEMU's own
        (QemuDriver("kvm"), QEMU_OWN_MIB),  # no translation cache
        # Not probed yet: an admission does not wait seconds for the probe, it counts TCG's.
        (QemuDriver("auto", probe_cache=rig.settings.home / "none.json"), QEMU_OWN_MIB + 256),
    ):
        vms = VmManager(rig.settings, rig.vms.db, rig.network, {"qemu": driver}, vmm="qemu")
        assert Capacity(rig.settings, vms).cost("cli") == VmCost(MEMORY_MIB, overhead)
    assert not (rig.settings.home / "none.json").exists()  # the probe never ran


def test_each_driver_states_its_vmms_overhead_and_one_without_a_driver_costs_the_most(rig):
    drivers = {"firecracker": FirecrackerDriver()}
    vms = VmManager(rig.settings, rig.vms.db, rig.network, drivers, vmm="firecracker")
    capacity = Capacity(rig.settings, vms)
    assert capacity.cost("cli") == VmCost(MEMORY_MIB, FirecrackerDriver.own_memory_mib)
    assert capacity.cost("cli", vmm="qemu") == VmCost(MEMORY_MIB, UNMEASURED_VMM_MIB)
    assert QemuDriver("tcg", tb_size_mib=0).own_memory_mib == UNMEASURED_VMM_MIB


def test_reservations_count_until_released_and_a_recorded_vm_is_not_counted_twice(rig):
    capacity = rig.controller.capacity
    first = capacity.try_reserve("browser")
    second = capacity.try_reserve("browser")
    assert first and second
    assert capacity.try_reserve("browser") is None  # the budget holds two
    with pytest.raises(NoCapacity) as refused:  # and no idle CLI VM can make room
        capacity.reserve("browser")
    assert refused.value.http_status == 503
    assert refused.value.retry_after == RETRY_AFTER_SECONDS
    assert "2 of" in str(refused.value) and f"{rig.settings.vm_memory_budget_mib} MiB" in str(
        refused.value
    )

    vm_id = capacity.record(first, "browser")
    assert capacity.usage().vms == 2  # the record and its reservation are one VM
    capacity.release(first)
    capacity.release(first)  # a second release changes nothing
    assert capacity.usage().vms == 2
    capacity.release(second)
    assert capacity.usage().vms == 1
    rig.vms.destroy(vm_id)
    assert capacity.usage().vms == 0


def test_the_count_limit_holds_whatever_the_memory(tmp_path, monkeypatch):
    with capacity_rig(tmp_path, monkeypatch, 5, max_vms=1) as rig:
        capacity = rig.controller.capacity
        held = capacity.try_reserve("cli")
        assert held is not None
        assert capacity.try_reserve("cli") is None
        capacity.release(held)
        assert capacity.try_reserve("cli") is not None


def test_the_default_budget_leaves_the_host_a_fifth_of_its_memory_or_two_gib(tmp_path):
    assert default_budget_mib(24 * 1024) == 24 * 1024 - int(24 * 1024 * 0.2)
    assert default_budget_mib(4096) == 4096 - HOST_RESERVE_MIN_MIB
    settings = Settings(home=tmp_path)
    assert settings.vm_memory_budget_mib == 0 and settings.max_vms >= 1
    network, driver, controller = local_controller(settings)
    assert Capacity(settings, controller.vms).budget_mib == default_budget_mib(meminfo_mib()[0])


# -- the sign-in queue ---------------------------------------------------------------------


def test_four_sign_ins_on_room_for_two_run_two_and_queue_two_that_move_up_in_order(rig):
    sessions = rig.controller.sessions
    a, b, c, d = start(rig, "ua", "ub", "uc", "ud")
    wait_status(rig, a, AuthSessionStatus.awaiting_user)
    wait_status(rig, b, AuthSessionStatus.awaiting_user)
    assert [sessions.get(s).status for s in (c, d)] == ["queued", "queued"]
    assert (position(rig, c), position(rig, d)) == (1, 2)
    assert (position(rig, a), position(rig, b)) == (None, None)
    assert sessions.timeline(d)[0].detail.startswith("queued, position 2")
    assert running_vms(rig) == 2

    complete(rig, a)  # its VM goes: the queue's head starts, and the other moves up
    wait_status(rig, c, AuthSessionStatus.awaiting_user)
    assert position(rig, d) == 1
    assert statuses(rig, c)[:3] == ["queued", "started", "vm_booting"]
    assert running_vms(rig) == 2

    sessions.cancel(b)
    wait_status(rig, d, AuthSessionStatus.awaiting_user)
    assert running_vms(rig) == 2
    complete(rig, c)
    complete(rig, d)
    assert running_vms(rig) == 0
    for session_id in (a, b, c, d):
        assert_vm_gone(rig, sessions.get(session_id).vm_id)


def test_the_queue_position_shows_in_the_json_the_events_and_the_connect_page(rig):
    with api_of(rig) as served:
        first = [
            served.client.post("/api/auth/start", json={"user_id": u, "provider": "demo"}).json()
            for u in ("ua", "ub")
        ]
        queued = served.client.post("/api/auth/start", json={"user_id": "uc", "provider": "demo"})
        assert queued.status_code == 202
        body = queued.json()
        assert (body["status"], body["queue_position"]) == ("queued", 1)
        path = f"/api/auth/session/{body['session_id']}"
        view = served.client.get(path).json()
        assert (view["status"], view["queue_position"]) == ("queued", 1)
        assert view["timeline"][0]["detail"].startswith("queued, position 1")
        events = sse(served.client, f"{path}/events", until="queue")
        assert events[0][0] == "status" and events[0][1]["status"] == "queued"
        assert events[-1] == ("queue", {"position": 1})
        page = httpx.get(body["connect_url"].replace(rig.settings.public_url, served.url))
        assert page.status_code == 200
        assert "Status: queued, position 1" in page.text
        for started in first:
            assert started["queue_position"] is None
            served.client.post(f"/api/auth/session/{started['session_id']}/cancel")
        wait_status(rig, body["session_id"], AuthSessionStatus.awaiting_user)
        assert served.client.get(path).json()["queue_position"] is None


def test_a_full_queue_answers_503_with_retry_after_over_http(rig):
    with api_of(rig) as served:
        answers = [
            served.client.post("/api/auth/start", json={"user_id": f"u{n}", "provider": "demo"})
            for n in range(5)
        ]
        assert [a.status_code for a in answers] == [202, 202, 202, 202, 503]
        admitted, queued = answers[:2], answers[2:4]
        for answer in admitted:  # its boot may have begun before the answer was written
            assert answer.json()["status"] in ("started", "vm_booting")
            assert answer.json()["queue_position"] is None
        assert [(a.json()["status"], a.json()["queue_position"]) for a in queued] == [
            ("queued", 1),
            ("queued", 2),
        ]
        refused = answers[4]
        assert refused.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        assert "2 sign-ins wait already" in refused.json()["error"]
        with rig.controller.db.session() as s:
            assert s.query(AuthSession).filter_by(user_id="u4").count() == 0  # nothing made
        for answer in answers[:4]:
            served.client.post(f"/api/auth/session/{answer.json()['session_id']}/cancel")


def test_a_queued_session_expires_cancels_and_is_superseded_like_any_other(rig):
    sessions = rig.controller.sessions
    a, b, c, d = start(rig, "ua", "ub", "uc", "ud")
    assert (position(rig, c), position(rig, d)) == (1, 2)
    rig.controller.db.update(AuthSession, c, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert sessions.expire_due() == [c]
    assert sessions.get(c).status == AuthSessionStatus.expired
    assert position(rig, d) == 1
    assert sessions.get(c).vm_id is None  # it never had a VM

    again, _ = sessions.start("ud", "demo")  # supersedes the queued one, and takes its place
    assert sessions.get(d).status == AuthSessionStatus.cancelled
    assert sessions.timeline(d)[-1].detail == f"superseded by session {again.id}"
    assert (again.status, position(rig, again.id)) == ("queued", 1)

    sessions.cancel(again.id)
    assert sessions.get(again.id).status == AuthSessionStatus.cancelled
    for session_id in (a, b):
        sessions.cancel(session_id)
        wait_ended(rig, session_id)
    assert sessions._queue() == []


def test_a_restart_recounts_the_live_vms_and_keeps_the_queue(rig):
    held = [rig.vms.create("browser") for _ in range(2)]  # running, and no CLI VM to reclaim
    asleep = rig.vms.create(rig.settings.cli_image, user_id="u-cli")
    rig.vms.hibernate(asleep.id)
    (queued,) = start(rig, "ua")
    assert position(rig, queued) == 1

    # A second controller on the same database and home, as after a restart: nothing of the
    # first's memory, only the records.
    _, _, again = local_controller(rig.settings)
    assert (again.capacity.usage().vms, again.capacity.usage().memory_mib) == (2, 2 * VM_MIB)
    assert again.capacity.try_reserve("browser") is None
    assert again.sessions.recover().failed == []
    assert again.sessions.get(queued).status == AuthSessionStatus.queued
    assert again.sessions.queue_position(queued) == 1
    late, _ = again.sessions.start("ub", "demo")
    assert (late.status, again.sessions.queue_position(late.id)) == ("queued", 2)

    again.vms.destroy(held[0].id)  # room frees under the new controller: its queue moves
    assert again.sessions.get(queued).status != AuthSessionStatus.queued
    assert again.sessions.queue_position(late.id) == 1
    for session_id in (late.id, queued):
        again.sessions.cancel(session_id)
    wait_ended(rig, queued)
    wait_for(lambda: again.capacity.usage().vms == 1, WAIT, "the sign-in's VM to go")


def test_recover_leaves_alone_a_session_admitted_while_the_reconciler_freed_room(rig):
    # At start-up the reconciler's destroys admit the queue before recover() runs: the
    # sessions it admitted are this controller's own, not a dead one's.
    held = [rig.vms.create("browser") for _ in range(2)]
    (queued,) = start(rig, "ua")
    rig.vms.destroy(held[0].id)
    assert rig.controller.sessions.recover().failed == []
    wait_status(rig, queued, AuthSessionStatus.awaiting_user)
    rig.controller.sessions.cancel(queued)
    wait_ended(rig, queued)


# -- prompts -------------------------------------------------------------------------------


def prompt(served, user: str, text: str = "hello") -> httpx.Response:
    return served.client.post(
        "/api/prompts", json={"user_id": user, "provider": "demo", "prompt": text}
    )


def test_a_prompt_that_cannot_have_a_vm_answers_503_with_retry_after(tmp_path, monkeypatch):
    with capacity_rig(tmp_path, monkeypatch, 1) as rig, api_of(rig) as served:
        sign_in(rig, "ua")
        (holder,) = start(rig, "ub")  # a sign-in holds the only room
        wait_status(rig, holder, AuthSessionStatus.awaiting_user)

        refused = prompt(served, "ua")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
        assert "no cli VM can be started now" in refused.json()["error"]
        assert rig.controller.cli_vms.vm_of("ua") is None
        (record,) = rig.controller.prompts.history("ua")
        assert record.status == PromptStatus.failed and "no cli VM" in record.error

        rig.controller.sessions.cancel(holder)
        wait_ended(rig, holder)
        wait_for(lambda: running_vms(rig) == 0, WAIT, "the browser VM's end")
        answered = prompt(served, "ua")
        assert answered.status_code == 200 and "event: done" in answered.text


def test_a_user_runs_at_most_max_prompts_per_user_at_once_429_beyond(tmp_path, monkeypatch):
    with (
        capacity_rig(tmp_path, monkeypatch, 2, max_prompts_per_user=1) as rig,
        api_of(rig) as served,
    ):
        sign_in(rig, "ua")
        with served.client.stream(
            "POST",
            "/api/prompts",
            json={"user_id": "ua", "provider": "demo", "prompt": LONG_PROMPT},
        ) as running:
            assert running.status_code == 200
            lines = running.iter_lines()
            assert next(lines) == "event: connected"
            refused = prompt(served, "ua")
            assert refused.status_code == 429
            assert "runs 1 prompts already" in refused.json()["error"]
            assert "max_prompts_per_user" in refused.json()["error"]
        # The first one's stream closed: it is cancelled, and the user may prompt again.
        wait_for(
            lambda: rig.controller.prompts.history("ua")[-1].status != PromptStatus.running,
            WAIT,
            "the closed prompt's end",
        )
        assert prompt(served, "ua").status_code == 200
        with rig.controller.db.session() as s:
            kept = s.query(Prompt).filter_by(user_id="ua").count()
        assert kept == 2  # the refused one left no record


def test_the_idle_cli_vm_used_longest_hibernates_to_make_room(tmp_path, monkeypatch):
    with capacity_rig(tmp_path, monkeypatch, 2) as rig, api_of(rig) as served:
        for user in ("ua", "ub", "uc"):  # one after another: room for two browser VMs
            sign_in(rig, user)
        for user in ("ua", "ub"):  # two CLI VMs fill the budget; ua's used first
            assert "event: done" in prompt(served, user).text
        ua, ub = (rig.controller.cli_vms.vm_of(u) for u in ("ua", "ub"))

        answered = prompt(served, "uc")  # no room: ua's VM, unused longest, makes it
        assert answered.status_code == 200 and "event: done" in answered.text
        assert rig.vms.get(ua.id).state == VmState.hibernated
        assert rig.vms.get(ub.id).state == VmState.ready
        assert running_vms(rig) == 2

        (session_id,) = start(rig, "ud")  # queued; then ub's VM goes to sleep for it
        wait_status(rig, session_id, AuthSessionStatus.awaiting_user)
        assert statuses(rig, session_id)[0] == "queued"
        assert rig.vms.get(ub.id).state == VmState.hibernated
        assert rig.vms.get(rig.controller.cli_vms.vm_of("uc").id).state == VmState.ready
        rig.controller.sessions.cancel(session_id)
        wait_ended(rig, session_id)


def test_a_cli_vm_in_use_is_never_hibernated_to_make_room(tmp_path, monkeypatch):
    with capacity_rig(tmp_path, monkeypatch, 1) as rig, api_of(rig) as served:
        for user in ("ua", "ub"):  # one after another: room for one VM
            sign_in(rig, user)
        ended = threading.Event()

        def long_prompt() -> None:
            prompt(served, "ua", LONG_PROMPT)
            ended.set()

        threading.Thread(target=long_prompt, daemon=True).start()
        wait_for(
            lambda: any(
                p.status == "running" and p.vm_id for p in rig.controller.prompts.history("ua")
            ),
            WAIT,
            "ua's prompt to run",
        )
        refused = prompt(served, "ub")
        assert refused.status_code == 503
        assert rig.controller.cli_vms.vm_of("ua").state == VmState.ready
        wait_for(ended.is_set, 60, "ua's prompt to end")


def test_a_vms_cost_follows_its_images_guest_memory(tmp_path, monkeypatch):
    with build_rig(
        tmp_path, monkeypatch, browser_memory_mib=768, cli_memory_mib=384, memory_mib=640
    ) as rig:
        capacity = rig.controller.capacity
        assert capacity.cost("browser") == VmCost(768, UNMEASURED_VMM_MIB)
        assert capacity.cost(rig.settings.cli_image) == VmCost(384, UNMEASURED_VMM_MIB)
        assert capacity.cost("baseline") == VmCost(640, UNMEASURED_VMM_MIB)
        # What runs is counted by its image too, and its machine gets that memory.
        browser, cli = rig.vms.create("browser"), rig.vms.create(rig.settings.cli_image)
        assert capacity.usage().memory_mib == 768 + 384 + 2 * UNMEASURED_VMM_MIB
        assert [machine_spec(rig.settings, vm).memory_mib for vm in (browser, cli)] == [768, 384]


def test_a_cli_vm_admitted_for_a_prompt_is_not_hibernated_before_the_prompt_uses_it(
    tmp_path, monkeypatch
):
    """The race, stepped through: ua's prompt is admitted on its awake VM (no room of its
    own) and has said `connected`; ub's prompt then wants room. Taking ua's VM for it would
    leave ua's prompt no room to wake it again: an error event after `connected`."""
    with capacity_rig(tmp_path, monkeypatch, 1) as rig:
        prompts = rig.controller.prompts
        for user in ("ua", "ub"):  # one after another: room for one VM
            sign_in(rig, user)
        first = prompts.create("ua", "demo", "hello")
        assert list(prompts.stream(first.id))[-1][1]["status"] == "completed"
        ua_vm = rig.controller.cli_vms.vm_of("ua")  # awake, idle, filling the budget

        ua_events = prompts.stream(prompts.create("ua", "demo", "hello again").id)
        assert next(ua_events)[0] == "connected"  # admitted: its VM is awake
        ub_prompt = prompts.create("ub", "demo", "hello")
        with pytest.raises(NoCapacity, match="no cli VM can be started now"):
            next(prompts.stream(ub_prompt.id))
        assert rig.vms.get(ua_vm.id).state == VmState.ready
        assert prompts.get(ub_prompt.id).status == PromptStatus.failed

        events = list(ua_events)
        assert [kind for kind, _ in events if kind != "output"] == ["done"], events
        assert events[-1][1]["status"] == "completed"
        assert rig.controller.cli_vms.vm_of("ua").id == ua_vm.id

        # Once ua's prompt has ended its VM is idle again, and makes room for ub's.
        again = prompts.create("ub", "demo", "hello")
        assert list(prompts.stream(again.id))[-1][1]["status"] == "completed"
        assert rig.vms.get(ua_vm.id).state == VmState.hibernated


def test_qemu_caps_its_translation_cache_under_tcg_only(tmp_path):
    spec = machine(tmp_path)

    def accel(driver: QemuDriver) -> str:
        argv = driver.argv(spec)
        return argv[argv.index("-accel") + 1]

    assert accel(QemuDriver("tcg")) == f"tcg,thread=multi,tb-size={TB_SIZE_MIB}"
    assert accel(QemuDriver("tcg", tb_size_mib=64)) == "tcg,thread=multi,tb-size=64"
    assert accel(QemuDriver("kvm")) == "kvm"


def test_the_warm_pool_boots_only_on_room_nobody_else_holds(tmp_path, monkeypatch):
    with capacity_rig(tmp_path, monkeypatch, 1, pool_browser=1) as rig:
        held = rig.vms.create("browser")
        rig.controller.pool.refill()
        assert [vm.id for vm in rig.vms.list()] == [held.id]  # no room: the pool yields
        rig.vms.destroy(held.id)
        rig.controller.pool.refill()
        wait_for(lambda: any(vm.pool == "warm" for vm in rig.vms.list()), WAIT, "a warm pool VM")
        assert running_vms(rig) == 0  # hibernated, it costs nothing
