"""`hearth serve` stopped by SIGTERM, as systemd stops it: the controller is a process of its
own (tests/core_controller.py serve: the real API under hearth.api.serving on the root-free
core rig), telling a notify socket bound here READY=1 and STOPPING=1. On SIGTERM it answers
new prompts and sign-ins 503, lets a running prompt finish (or cancels it once the grace
period is over), ends a sign-in in progress cancelled ("the controller stopped") with its
browser VM destroyed, and leaves the user's CLI VM running; the test's own rig is the next
start, whose reconciler adopts that VM and whose recovery finds nothing else left. And
READY=1 of a start after a controller killed outright (SIGKILL) comes only once its
recovery has ended the prompt that controller left running.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hearth import sd_notify
from hearth.api.keys import create_key
from hearth.core.auth_sessions import STOPPED, Recovery
from hearth.core.reconciler import reconcile
from hearth.core.stopping import RESTART_SECONDS
from hearth.store.models import AuthSessionStatus, PromptStatus, VmState
from hearth.waiting import wait_for
from tests.core_controller import spawn
from tests.core_rig import Rig
from tests.unit.test_cli_vms import PROVIDER, sign_in

WAIT = 60.0
SHORT_PROMPT = " ".join(f"word{n}" for n in range(10))  # 10 lines a PACE (0.3 s) apart
LONG_PROMPT = " ".join(f"word{n}" for n in range(60))  # about 18 s


@dataclass
class Served:
    process: subprocess.Popen
    api: httpx.Client
    notices: socket.socket  # the notify socket, as systemd binds it

    def notice(self) -> str:
        return self.notices.recv(4096).decode()

    def stop(self) -> int:
        """SIGTERM, as `systemctl stop` sends; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(WAIT)


@contextmanager
def served(rig: Rig, tmp_path: Path, **settings: object) -> Iterator[Served]:
    """The controller in a process of its own, once it told the notify socket READY=1."""
    tmp_path.mkdir(exist_ok=True)
    uds, notify = tmp_path / "api.sock", tmp_path / "notify.sock"
    notices = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notices.bind(str(notify))
    notices.settimeout(WAIT)
    with open(tmp_path / "controller.log", "wb") as log:
        process = spawn(
            "serve",
            rig.settings.model_copy(update=settings),
            str(uds),
            env={"NOTIFY_SOCKET": str(notify)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    key = create_key(rig.controller.db, "app", "graceful stop test")
    api = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(uds)),
        base_url="http://hearth",
        headers={"Authorization": f"Bearer {key}"},
        timeout=WAIT,
    )
    running = Served(process, api, notices)
    try:
        assert running.notice() == sd_notify.READY
        assert api.get("/healthz").json() == {"status": "ok"}  # READY came once it listens
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        api.close()
        notices.close()


def events_until(lines: Iterator[str], wanted: str) -> list[tuple[str, dict]]:
    """Server-Sent Events read off `lines` up to and including the first `wanted` one."""
    events, kind = [], None
    for line in lines:
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((kind, json.loads(line.removeprefix("data: "))))
            if kind == wanted:
                return events
    pytest.fail(f"the stream ended before {wanted}: {events}")


def new_work_refused(api: httpx.Client, user_id: str) -> None:
    """While it stops, the controller answers, but takes no new prompt or sign-in, and says
    when to ask again: after the grace period (30 s by default) and a restart."""
    for path, body in (
        ("/api/prompts", {"user_id": user_id, "provider": PROVIDER, "prompt": "hello"}),
        ("/api/auth/start", {"user_id": "someone-new", "provider": PROVIDER}),
    ):
        answer = api.post(path, json=body)
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"].startswith("the controller is stopping")
        assert answer.headers["Retry-After"] == str(30 + RESTART_SECONDS)


def test_a_prompt_running_at_sigterm_finishes_and_the_next_start_adopts_its_vm(
    rig: Rig, tmp_path: Path
) -> None:
    sign_in(rig, "u1")
    body = {"user_id": "u1", "provider": PROVIDER, "prompt": SHORT_PROMPT}
    with served(rig, tmp_path) as controller:
        with controller.api.stream("POST", "/api/prompts", json=body) as stream:
            assert stream.status_code == 200
            prompt_id = stream.headers["X-Prompt-Id"]
            lines = stream.iter_lines()
            events_until(lines, "output")  # the CLI runs in the user's VM
            controller.process.send_signal(signal.SIGTERM)
            assert controller.notice() == sd_notify.STOPPING
            new_work_refused(controller.api, "u1")
            done = events_until(lines, "done")[-1][1]
        assert controller.process.wait(WAIT) == 0
    assert done["status"] == "completed" and done["exit_code"] == 0
    record = rig.controller.prompts.get(prompt_id)
    assert (record.status, record.error) == (PromptStatus.completed, None)
    assert "word9" in record.output

    # The next start: the CLI VM was left running, and is adopted; nothing else was left.
    vm = rig.vms.get(record.vm_id)
    assert vm.state == VmState.ready and rig.vms.vmm_alive(vm)
    assert record.vm_id in reconcile(rig.vms).adopted
    assert rig.controller.prompts.recover() == []
    assert rig.controller.sessions.recover() == Recovery()
    again = rig.controller.prompts.create("u1", PROVIDER, "hello again")
    assert list(rig.controller.prompts.stream(again.id))[-1][1]["status"] == "completed"
    assert rig.controller.prompts.get(again.id).vm_id == record.vm_id  # the same VM, adopted


def test_a_prompt_still_running_after_the_grace_period_is_cancelled_saying_why(
    rig: Rig, tmp_path: Path
) -> None:
    sign_in(rig, "u1")
    body = {"user_id": "u1", "provider": PROVIDER, "prompt": LONG_PROMPT}
    with served(rig, tmp_path, shutdown_grace=1.0) as controller:
        with controller.api.stream("POST", "/api/prompts", json=body) as stream:
            prompt_id = stream.headers["X-Prompt-Id"]
            lines = stream.iter_lines()
            events_until(lines, "output")
            controller.process.send_signal(signal.SIGTERM)
            done = events_until(lines, "done")[-1][1]
        assert controller.process.wait(WAIT) == 0
    reason = "the controller stopped (1 s after it was asked to)"
    assert (done["status"], done["reason"]) == ("cancelled", reason)
    record = rig.controller.prompts.get(prompt_id)
    assert (record.status, record.error) == (PromptStatus.cancelled, reason)
    assert "word59" not in record.output
    assert rig.controller.prompts.recover() == []


def test_a_sign_in_in_progress_at_sigterm_ends_cancelled_and_its_browser_vm_goes(
    rig: Rig, tmp_path: Path
) -> None:
    with served(rig, tmp_path) as controller:
        started = controller.api.post(
            "/api/auth/start", json={"user_id": "u2", "provider": PROVIDER}
        )
        assert started.status_code == 202, started.text
        session_id = started.json()["session_id"]
        wait_for(
            lambda: (
                controller.api.get(f"/api/auth/session/{session_id}").json()["status"]
                == "awaiting_user"
            ),
            WAIT,
            "the sign-in page",
        )
        assert controller.stop() == 0
        assert controller.notice() == sd_notify.STOPPING

    sessions = rig.controller.sessions
    session = sessions.get(session_id)
    assert session.status == AuthSessionStatus.cancelled
    last = sessions.timeline(session_id)[-1]
    assert (last.status, last.detail) == (AuthSessionStatus.cancelled, STOPPED)
    assert rig.vms.get(session.vm_id).state == VmState.destroyed  # it may have held a login
    assert rig.vm_processes() == []
    assert rig.controller.credentials.info("u2", PROVIDER) is None

    # The next start finds nothing of it to adopt or to fail.
    assert session.vm_id not in reconcile(rig.vms).adopted
    assert sessions.recover() == Recovery()


def test_ready_comes_after_the_next_start_recovered_what_a_killed_controller_left(
    rig: Rig, tmp_path: Path
) -> None:
    sign_in(rig, "u1")
    body = {"user_id": "u1", "provider": PROVIDER, "prompt": LONG_PROMPT}
    with (
        served(rig, tmp_path / "first") as controller,
        controller.api.stream("POST", "/api/prompts", json=body) as stream,
    ):
        prompt_id = stream.headers["X-Prompt-Id"]
        events_until(stream.iter_lines(), "output")
        controller.process.kill()  # SIGKILL: no graceful stop, the prompt left running
        controller.process.wait(WAIT)
    assert rig.controller.prompts.get(prompt_id).status == PromptStatus.running
    vm_id = rig.controller.prompts.get(prompt_id).vm_id

    with served(rig, tmp_path / "second") as controller:  # READY=1 received
        record = controller.api.get(f"/api/prompts/{prompt_id}").json()
        assert (record["status"], record["error"]) == (
            "failed",
            "the controller restarted while the prompt ran",
        )
        assert rig.vms.get(vm_id).state == VmState.ready  # adopted, not destroyed
        body["prompt"] = "hello again"
        with controller.api.stream("POST", "/api/prompts", json=body) as stream:
            again = stream.headers["X-Prompt-Id"]
            assert events_until(stream.iter_lines(), "done")[-1][1]["status"] == "completed"
        assert controller.stop() == 0
    assert rig.controller.prompts.get(again).vm_id == vm_id
