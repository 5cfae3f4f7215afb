"""A burst of three times capacity on the core rig, over real HTTP: six sign-ins and six
prompts at once on room for two VMs, with a queue of two.

What must hold: never more than two VMs running (records and processes, sampled all along);
sign-ins beyond the queue and prompts that cannot have a VM answered 503 with Retry-After;
every sign-in that was taken either completed (the user approves whatever reaches the
sign-in page) or expired, none failed; no crash (every request answered); and at the end no
browser VM, process, TAP or lease beyond the CLI VMs that are left, and no session thread.
"""

from __future__ import annotations

import contextlib
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from hearth.core.auth_sessions import TERMINAL
from hearth.core.capacity import RETRY_AFTER_SECONDS
from hearth.store.models import AuthSessionStatus, VmState
from hearth.waiting import wait_for
from tests.core_rig import Rig
from tests.unit.test_capacity import api_of, capacity_rig
from tests.unit.test_cli_vms import sign_in

CAPACITY = 2
BURST = 3 * CAPACITY
SETTLE = 120.0  # seconds for the whole burst to end, on a loaded machine


def vms_with_processes(rig: Rig) -> set[str]:
    """The VMs that have a process running (the agent, or a CLI the agent runs: both name
    the VM's directory), by id."""
    directory = re.compile(rf"{re.escape(str(rig.settings.vms_dir))}/(\w+)")
    found = set()
    for pid in rig.vm_processes():
        with contextlib.suppress(OSError):  # it ended meanwhile
            match = directory.search(Path(f"/proc/{pid}/cmdline").read_bytes().decode())
            found |= {match.group(1)} if match else set()
    return found


class Sampler:
    """The running VMs as the capacity counts them, and those with processes, every 50 ms."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.most_counted = 0
        self.most_with_processes = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(0.05):
            self.most_counted = max(self.most_counted, self.rig.controller.capacity.usage().vms)
            running = len(vms_with_processes(self.rig))
            self.most_with_processes = max(self.most_with_processes, running)


def approver(rig: Rig, session_ids: list[str], stop: threading.Event) -> None:
    """The users: each approves their sign-in once its page shows."""
    approved: set[str] = set()
    while not stop.wait(0.1):
        for session_id in session_ids:
            session = rig.controller.sessions.get(session_id)
            if session_id not in approved and session.status == AuthSessionStatus.awaiting_user:
                rig.approve(session.oauth_url)
                approved.add(session_id)


def test_three_times_capacity_queues_refuses_with_retry_after_and_leaks_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        capacity_rig(
            tmp_path, monkeypatch, CAPACITY, auth_queue_max=CAPACITY, session_ttl=60.0
        ) as rig,
        api_of(rig) as served,
    ):
        prompters = [f"p{n}" for n in range(BURST)]
        for user in prompters:  # one after another: the burst is the test
            sign_in(rig, user)
        sampler = Sampler(rig)
        sampler.thread.start()

        def start(n: int) -> httpx.Response:
            body = {"user_id": f"s{n}", "provider": "demo"}
            return served.client.post("/api/auth/start", json=body)

        def prompt(user: str) -> httpx.Response:
            body = {"user_id": user, "provider": "demo", "prompt": "hello"}
            return served.client.post("/api/prompts", json=body, timeout=SETTLE)

        with ThreadPoolExecutor(2 * BURST) as pool:
            starts = [pool.submit(start, n) for n in range(BURST)]
            prompts = [pool.submit(prompt, user) for user in prompters]
            started = [f.result() for f in starts]
            taken = [r.json()["session_id"] for r in started if r.status_code == 202]
            stop = threading.Event()
            users = threading.Thread(target=approver, args=(rig, taken, stop), daemon=True)
            users.start()
            answered = [f.result() for f in prompts]

        sign_in_codes = sorted(r.status_code for r in started)
        assert set(sign_in_codes) <= {202, 503}
        refused = [r for r in started + answered if r.status_code == 503]
        assert sign_in_codes.count(503) >= BURST - 2 * CAPACITY  # beyond room and queue
        assert all(r.headers["retry-after"] == str(RETRY_AFTER_SECONDS) for r in refused)
        assert all(r.json()["error"].startswith("no ") for r in refused)
        queued = [r for r in started if r.status_code == 202 and r.json()["status"] == "queued"]
        assert queued, "a burst beyond capacity queues sign-ins"
        for response in answered:
            assert response.status_code in (200, 503)
            if response.status_code == 200:
                assert "event: done" in response.text

        def ended() -> bool:
            return all(rig.controller.sessions.get(s).status in TERMINAL for s in taken)

        wait_for(ended, SETTLE, "every sign-in taken to end")
        stop.set()
        users.join()
        outcomes = {rig.controller.sessions.get(s).status for s in taken}
        assert outcomes <= {AuthSessionStatus.completed, AuthSessionStatus.expired}, outcomes
        threads = {f"session-{session_id}" for session_id in taken}
        wait_for(
            lambda: not [t for t in threading.enumerate() if t.name in threads],
            SETTLE,  # a thread ends once its VM has gone, which may be booting still
            "the sessions' threads to end",
        )
        sampler.stop.set()
        sampler.thread.join()
        assert sampler.most_counted <= CAPACITY
        assert sampler.most_with_processes <= CAPACITY

        live = rig.vms.list()
        assert all(vm.user_id in prompters for vm in live), "a browser VM outlived its session"
        assert all(vm.state in (VmState.ready, VmState.hibernated) for vm in live)
        ready = {vm.id for vm in live if vm.state == VmState.ready}
        assert vms_with_processes(rig) == ready
        assert sorted(rig.network.taps()) == sorted(vm.tap for vm in live)
        assert sorted(rig.vms.pool.leases()) == sorted(vm.id for vm in live)
