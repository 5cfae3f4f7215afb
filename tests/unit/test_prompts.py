"""Prompts (hearth.core.prompts): one run of a user's CLI in their CLI VM, streamed as it
happens and kept as history, on the root-free core rig (the real controller; each VM's
process the real guest agent; the demo CLI's real prompt against the real demo IdP).

Covered: a prompt recorded running, then completed, its output streamed in order (the demo's
answer carrying the account's e-mail from /userinfo) and kept in the record; refusals before
anything runs (unknown user, no credentials) and credentials gone by the time it runs; a
cancel through the API, before or during the run, and a client that closes the stream (the
docstrings promise both stop the CLI in the VM and say why in the record), each checked in
the VM through the agent's run status; the prompt timeout; a CLI that fails, or whose
credentials the provider refuses; the history read back from the database; and recovery of
prompts a previous controller left running. The users, the module's rig and the helpers are
test_cli_vms's.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import replace

import pytest

from hearth import providers
from hearth.core.cli_vms import UnknownUser
from hearth.core.prompts import NoCredentials
from hearth.demo.guest.demo_prompt import INIT, REPLY
from hearth.guest.protocol import RunStatus
from hearth.providers.base import UnknownProviderError
from hearth.store.models import Prompt, PromptStatus, Vm
from hearth.waiting import wait_for
from tests.core_rig import USER, Rig
from tests.unit import test_cli_vms
from tests.unit.test_cli_vms import (
    CREDENTIALS,
    PROVIDER,
    idp_refresh,
    stored_tokens,
)

rig = test_cli_vms.rig  # one rig for this module too
accounts = test_cli_vms.accounts
user = test_cli_vms.user
other_user = test_cli_vms.other_user

LONG_PROMPT = " ".join(f"word{n}" for n in range(40))  # 40 lines a PACE apart: ~13 s
STOP_WAIT = 10.0  # seconds for a stopped CLI to be gone (SIGTERM; SIGKILL after 5 s)


# -- helpers ---------------------------------------------------------------------------------


def outputs(events: list[tuple[str, dict]]) -> str:
    return "".join(data["data"] for kind, data in events if kind == "output")


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def vm_of(rig: Rig, prompt_id: str) -> Vm:
    return rig.vms.get(rig.controller.prompts.get(prompt_id).vm_id)


def last_run(rig: Rig, vm: Vm) -> tuple[str, int]:
    """The run id and CLI pid of the VM's latest run, from its agent's console log."""
    log = rig.vms.spec(vm).console_log.read_text()
    runs = re.findall(r"hearth-agent: run ([0-9a-f]+): started \(pid (\d+)\)", log)
    assert runs, log
    run_id, pid = runs[-1]
    return run_id, int(pid)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def assert_cli_stopped(rig: Rig, vm: Vm) -> RunStatus:
    """The VM's latest run is over, stopped by a cancel, and its CLI process is gone; the
    agent's status of that run."""
    run_id, pid = last_run(rig, vm)
    with rig.vms.agent(vm) as agent:
        wait_for(lambda: not agent.run_status(run_id).running, STOP_WAIT, "the CLI's end")
        status = agent.run_status(run_id)
    assert status.cancelled is True
    assert status.exit_code is None and status.signal == "SIGTERM"
    wait_for(lambda: process_gone(pid), STOP_WAIT, "the CLI process to go")
    return status


def run_until_first_output(stream) -> list[tuple[str, dict]]:
    """Read the stream up to its first output event (the CLI is running then)."""
    events = []
    for kind, data in stream:
        events.append((kind, data))
        if kind == "output":
            return events
    pytest.fail(f"the stream ended without output: {events}")


# -- a prompt from start to end ---------------------------------------------------------------


def test_a_prompt_runs_to_completed_with_its_output_streamed_in_order_and_recorded(
    rig: Rig, user: str
) -> None:
    prompts = rig.controller.prompts
    record = prompts.create(user, PROVIDER, "Why is the sky blue?")
    assert (record.status, record.output, record.vm_id) == (PromptStatus.running, "", None)

    events: list[tuple[str, dict]] = []
    while_running: Prompt | None = None
    for kind, data in prompts.stream(record.id):
        events.append((kind, data))
        if kind == "output" and while_running is None:
            while_running = prompts.get(record.id)

    assert events[0] == ("connected", {"prompt_id": record.id, "provider": PROVIDER})
    assert {kind for kind, _ in events[1:-1]} == {"output"}
    assert all(data["stream"] == "stdout" for _, data in events[1:-1])
    kind, done = events[-1]
    assert kind == "done"
    assert done["status"] == PromptStatus.completed
    assert done["prompt_id"] == record.id
    assert (done["exit_code"], done["credentials"]) == (0, "unchanged")
    assert "reason" not in done
    lines = json_lines(outputs(events))
    assert lines[0] == INIT
    assert lines[1]["type"] == "account" and lines[1]["email"] == USER
    assert lines[2] == {"type": "assistant", "prompt_chars": 20, "text": REPLY}
    assert [line["text"] for line in lines[3:-1]] == ["Why", "is", "the", "sky", "blue?"]
    assert lines[-1] == {"type": "result", "ok": True}

    # The record followed along: running, its first output written down as it came...
    assert while_running is not None and while_running.status == PromptStatus.running
    assert while_running.output == events[1][1]["data"]
    # ...then the outcome.
    kept = prompts.get(record.id)
    assert kept.status == PromptStatus.completed
    assert (kept.exit_code, kept.error) == (0, None)
    assert kept.output == outputs(events)
    assert kept.vm_id == rig.controller.cli_vms.vm_of(user).id
    assert kept.finished_at is not None and kept.finished_at >= kept.created_at
    assert 0 < kept.first_output_seconds < kept.duration_seconds
    assert done["duration"] == round(kept.duration_seconds, 3)


def test_a_prompt_whose_cli_fails_is_recorded_completed_with_the_cli_exit_code(
    rig: Rig, user: str
) -> None:
    """Completed means the CLI ran and exited, whatever its code (PromptStatus)."""
    store = rig.controller.credentials
    info = store.info(user, PROVIDER)
    unusable = {"issuer": rig.idp.issuer, "email": USER}  # no access token in it
    store.put(user, PROVIDER, {CREDENTIALS: json.dumps(unusable).encode()}, info.account_email)
    prompts = rig.controller.prompts
    record = prompts.create(user, PROVIDER, "hi")

    events = list(prompts.stream(record.id))

    kind, done = events[-1]
    assert kind == "done"
    assert (done["status"], done["exit_code"]) == (PromptStatus.completed, 1)
    assert json_lines(outputs(events))[-1] == {
        "type": "error",
        "reason": "the credential file lacks an access_token or an issuer",
    }
    kept = prompts.get(record.id)
    assert (kept.status, kept.exit_code, kept.error) == (PromptStatus.completed, 1, None)


def test_a_prompt_whose_credentials_the_provider_refuses_fails_saying_sign_in_again(
    rig: Rig, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stock demo spec names no refusal markers; here it names the demo CLI's own
    message for a refused token, as the real providers' specs name theirs."""
    marked = replace(providers.get(PROVIDER), refused_markers=(r"userinfo answered 401[^\"\n]*",))
    monkeypatch.setitem(providers.SPECS, PROVIDER, marked)
    # Someone else redeems the refresh token: the IdP revokes the stored pair.
    assert idp_refresh(rig, stored_tokens(rig, user)["refresh_token"]).status_code == 200
    prompts = rig.controller.prompts
    record = prompts.create(user, PROVIDER, "hi")

    kind, done = list(prompts.stream(record.id))[-1]

    assert kind == "done"
    assert (done["status"], done["exit_code"]) == (PromptStatus.failed, 1)
    assert done["reason"].startswith("the provider refused the stored credentials (userinfo")
    assert done["reason"].endswith("the user must sign in again (POST /api/auth/start)")
    kept = prompts.get(record.id)
    assert (kept.status, kept.error) == (PromptStatus.failed, done["reason"])
    assert rig.controller.credentials.info(user, PROVIDER).status == "invalid"


# -- refusals -----------------------------------------------------------------------------------


def test_a_prompt_for_an_unknown_user_is_refused_and_not_recorded(rig: Rig) -> None:
    with pytest.raises(UnknownUser, match="unknown user 'nobody'"):
        rig.controller.prompts.create("nobody", PROVIDER, "hi")
    assert rig.controller.prompts.history("nobody") == []


def test_a_prompt_for_a_provider_the_user_has_not_signed_in_to_is_refused(
    rig: Rig, user: str
) -> None:
    with pytest.raises(NoCredentials, match=r"no claude_code credentials: sign in first"):
        rig.controller.prompts.create(user, "claude_code", "hi")
    with pytest.raises(UnknownProviderError, match="unknown provider 'nope'"):
        rig.controller.prompts.create(user, "nope", "hi")
    assert rig.controller.prompts.history(user) == []
    assert rig.controller.cli_vms.vm_of(user) is None  # nothing was woken for it


def test_a_prompt_after_the_credentials_were_removed_is_refused_though_the_vm_remains(
    rig: Rig, user: str
) -> None:
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER):
        pass
    cli_vms.remove(user, PROVIDER)

    with pytest.raises(NoCredentials, match=f"user {user!r} has no demo credentials"):
        rig.controller.prompts.create(user, PROVIDER, "hi")
    assert cli_vms.vm_of(user) is not None


def test_credentials_removed_between_create_and_run_end_the_prompt_failed_with_why(
    rig: Rig, user: str
) -> None:
    prompts = rig.controller.prompts
    record = prompts.create(user, PROVIDER, "hi")
    rig.controller.cli_vms.remove(user, PROVIDER)

    events = list(prompts.stream(record.id))

    reason = f"no 'demo' credentials stored for user {user!r}"
    assert [kind for kind, _ in events] == ["connected", "error"]
    assert events[-1][1] == {"reason": reason}
    kept = prompts.get(record.id)
    assert (kept.status, kept.error, kept.output) == (PromptStatus.failed, reason, "")


# -- cancels, disconnects, timeouts -------------------------------------------------------------


def test_cancel_ends_the_prompt_cancelled_and_the_cli_in_the_vm_is_gone(
    rig: Rig, user: str
) -> None:
    prompts = rig.controller.prompts
    record = prompts.create(user, PROVIDER, LONG_PROMPT)
    started = time.monotonic()
    stream = prompts.stream(record.id)
    events = run_until_first_output(stream)

    assert prompts.cancel(record.id) is True
    events += list(stream)

    assert time.monotonic() - started < STOP_WAIT  # far from the run's ~13 s
    kind, done = events[-1]
    assert kind == "done"
    assert done["status"] == PromptStatus.cancelled
    assert done["reason"] == "cancelled through the API"
    assert done["exit_code"] is None  # ended by SIGTERM
    assert {"type": "result", "ok": True} not in json_lines(outputs(events))
    kept = prompts.get(record.id)
    assert (kept.status, kept.error) == (PromptStatus.cancelled, "cancelled through the API")
    assert kept.output == outputs(events)
    assert kept.output.startswith(json.dumps(INIT))
    assert_cli_stopped(rig, vm_of(rig, record.id))
    assert prompts.cancel(record.id) is False  # no longer running here


def test_a_cancel_before_the_run_starts_stops_the_cli_as_soon_as_it_starts(
    rig: Rig, user: str
) -> None:
    prompts = rig.controller.prompts
    record = prompts.create(user, PROVIDER, LONG_PROMPT)

    assert prompts.cancel(record.id) is True
    events = list(prompts.stream(record.id))

    kind, done = events[-1]
    assert kind == "done"
    assert (done["status"], done["reason"]) == (PromptStatus.cancelled, "cancelled through the API")
    assert not any(line.get("type") == "account" for line in json_lines(outputs(events)))
    assert prompts.get(record.id).status == PromptStatus.cancelled
    assert_cli_stopped(rig, vm_of(rig, record.id))


def test_a_client_that_closes_the_stream_early_cancels_the_prompt_and_its_cli(
    rig: Rig, user: str
) -> None:
    """prompts.stream: "Close it early to cancel the run"; the module: a cancel because the
    client went away "stops the CLI in the VM and says why in the record"."""
    prompts = rig.controller.prompts
    record = prompts.create(user, PROVIDER, LONG_PROMPT)
    stream = prompts.stream(record.id)
    events = run_until_first_output(stream)

    stream.close()

    kept = prompts.get(record.id)
    assert (kept.status, kept.error) == (PromptStatus.cancelled, "the client disconnected")
    assert kept.output == outputs(events)
    assert kept.finished_at is not None
    assert_cli_stopped(rig, vm_of(rig, record.id))
    assert prompts.cancel(record.id) is False


def test_a_prompt_past_its_timeout_is_stopped_and_ends_cancelled_saying_so(
    rig: Rig, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rig.settings, "prompt_timeout", 1.0)
    prompts = rig.controller.prompts
    record = prompts.create(user, PROVIDER, LONG_PROMPT)

    events = list(prompts.stream(record.id))

    kind, done = events[-1]
    assert kind == "done"
    assert done["status"] == PromptStatus.cancelled
    assert done["reason"] == "the CLI ran longer than 1 s"
    assert 1.0 <= done["duration"] < STOP_WAIT
    kept = prompts.get(record.id)
    assert (kept.status, kept.error) == (PromptStatus.cancelled, "the CLI ran longer than 1 s")
    run_id, pid = last_run(rig, vm_of(rig, record.id))
    with rig.vms.agent(vm_of(rig, record.id)) as agent:
        status = agent.run_status(run_id)
    assert (status.running, status.timed_out, status.cancelled) == (False, True, False)
    assert process_gone(pid)


def test_closing_the_stream_after_its_done_event_keeps_the_prompt_completed(
    rig: Rig, user: str
) -> None:
    prompts = rig.controller.prompts
    record = prompts.create(user, PROVIDER, "hi")
    stream = prompts.stream(record.id)
    events = []
    for event in stream:
        events.append(event)
        if event[0] == "done":
            break
    assert events[-1][0] == "done"
    assert events[-1][1]["status"] == PromptStatus.completed
    assert prompts.get(record.id).status == PromptStatus.completed

    stream.close()  # what `break` leaves to the garbage collector, done at once

    kept = prompts.get(record.id)
    assert (kept.status, kept.exit_code, kept.error) == (PromptStatus.completed, 0, None)


def test_closing_the_stream_right_after_connected_ends_the_prompt_cancelled(
    rig: Rig, user: str
) -> None:
    prompts = rig.controller.prompts
    record = prompts.create(user, PROVIDER, "hi")
    stream = prompts.stream(record.id)
    assert next(stream)[0] == "connected"

    stream.close()

    kept = prompts.get(record.id)
    assert (kept.status, kept.error) == (PromptStatus.cancelled, "the client disconnected")
    assert kept.finished_at is not None
    assert prompts.cancel(record.id) is False


# -- history ---------------------------------------------------------------------------------


def test_history_reads_back_the_users_prompts_newest_first_with_their_outcomes(
    rig: Rig, user: str, other_user: str
) -> None:
    prompts = rig.controller.prompts
    first = prompts.create(user, PROVIDER, "hi")
    first_events = list(prompts.stream(first.id))
    second = prompts.create(user, PROVIDER, LONG_PROMPT)
    prompts.cancel(second.id)
    list(prompts.stream(second.id))
    elsewhere = prompts.create(other_user, PROVIDER, "hi")
    prompts.cancel(elsewhere.id)
    list(prompts.stream(elsewhere.id))

    history = prompts.history(user)

    assert [p.id for p in history] == [second.id, first.id]
    assert [(p.status, p.prompt) for p in history] == [
        (PromptStatus.cancelled, LONG_PROMPT),
        (PromptStatus.completed, "hi"),
    ]
    assert history[1].exit_code == 0
    assert history[1].output == outputs(first_events)
    assert history[0].error == "cancelled through the API"
    assert [p.id for p in prompts.history(user, limit=1)] == [second.id]
    assert [p.id for p in prompts.history(other_user)] == [elsewhere.id]
    assert prompts.get(first.id).output == history[1].output
    assert prompts.get("no-such-prompt") is None


def test_recover_fails_the_prompts_a_previous_controller_left_running(rig: Rig, user: str) -> None:
    prompts = rig.controller.prompts
    finished = prompts.create(user, PROVIDER, LONG_PROMPT)
    prompts.cancel(finished.id)
    list(prompts.stream(finished.id))
    orphan = prompts.create(user, PROVIDER, "hi")  # recorded, never run: its stream died

    recovered = prompts.recover()

    assert orphan.id in recovered and finished.id not in recovered
    kept = prompts.get(orphan.id)
    assert kept.status == PromptStatus.failed
    assert kept.error == "the controller restarted while the prompt ran"
    assert kept.finished_at is not None
    assert prompts.get(finished.id).status == PromptStatus.cancelled
