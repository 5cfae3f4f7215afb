"""Prompts end to end on the demo stack: a user signs in with a real browser, then runs
prompts through the demo CLI in their own CLI VM, in namespaces the test creates.

The demo IdP issues short-lived access tokens, so the demo CLI refreshes on every run (as
Claude Code does near expiry) and its rotated tokens must come back as a new stored
version. The VM hibernates after a short idle time and the next prompt resumes it.
The tests run in order on one signed-in user.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest

from hearth.config import Settings
from hearth.core import runtime
from hearth.core.ports import AgentRefused
from hearth.core.reconciler import vmm_processes
from hearth.demo.sandbox import inside
from hearth.demo.stack import Stack, stack
from hearth.store.models import Vm, utcnow
from hearth.waiting import wait_for
from tests.e2e.browser_user import sign_in
from tests.e2e.conftest import IMAGES, needs_image

pytestmark = pytest.mark.vm

USER = "grace"
TOKEN_TTL = 120  # below the demo CLI's 300 s refresh margin: every run refreshes
IDLE_HIBERNATE = 20
CREDENTIALS = ".hearth-demo/credentials.json"
LONG_PROMPT = " ".join(f"word{i}" for i in range(200))  # the demo CLI paces its reply by word


@pytest.fixture(scope="module")
def signed_in(tmp_path_factory) -> Iterator[Stack]:
    needs_image("browser")
    needs_image("cli")
    home = tmp_path_factory.mktemp("prompts") / "home"
    home.mkdir()
    (home / "images").symlink_to(IMAGES)
    with stack(
        Settings(home=home),
        token_ttl=TOKEN_TTL,
        controller_env={"HEARTH_IDLE_HIBERNATE": str(IDLE_HIBERNATE), "HEARTH_POOL_BROWSER": "0"},
    ) as s:
        sign_in(s, USER, home / "shots")
        yield s
    assert vmm_processes(home / "vms") == []


def run_prompt(s: Stack, prompt: str, on_output=None) -> list[tuple[str, dict, float]]:
    """Run a prompt and collect its events: (event, data, seconds since the request).
    `on_output` sees the events so far at each output; False from it hangs up."""
    events: list[tuple[str, dict, float]] = []
    start = time.monotonic()
    stream = s.prompt(USER, prompt)
    for kind, data in stream:
        events.append((kind, data, time.monotonic() - start))
        if on_output and kind == "output" and on_output(events) is False:
            stream.close()
            break
    return events


def user_view(s: Stack) -> dict:
    return s.api.get(f"/api/users/{USER}/credentials").json()


def cli_vm(s: Stack):
    controller = runtime.controller(s.settings)
    return controller, controller.vms.get(user_view(s)["vm"]["vm_id"])


def test_a_prompt_streams_its_output_and_the_refreshed_tokens_come_back(signed_in: Stack):
    s = signed_in
    assert [c["version"] for c in user_view(s)["credentials"]] == [1]
    events = run_prompt(s, "Say hello")
    kinds = [kind for kind, _, _ in events]
    assert kinds[0] == "connected" and kinds[-1] == "done" and kinds.count("output") >= 3
    outputs = [(data, at) for kind, data, at in events if kind == "output"]
    done, done_at = events[-1][1], events[-1][2]
    # Chunks arrive as the CLI prints them, not all at its end (it paces its lines).
    assert outputs[0][1] < done_at - 0.5
    text = "".join(data["data"] for data, _ in outputs)
    assert s.user in text  # the IdP's userinfo answered to the injected credential
    assert done["exit_code"] == 0 and done["status"] == "completed"
    assert done["credentials"] == "updated"  # the CLI refreshed; the rotated tokens are stored

    view = user_view(s)
    assert view["credentials"][0]["version"] == 2 and view["vm"]["state"] == "ready"
    record = s.api.get(f"/api/prompts/{events[0][1]['prompt_id']}").json()
    assert record["status"] == "completed" and s.user in record["output"]
    assert record["first_output_seconds"] < record["duration_seconds"]
    history = s.api.get(f"/api/users/{USER}/prompts").json()["prompts"]
    assert [p["prompt_id"] for p in history] == [record["prompt_id"]]

    controller, vm = cli_vm(s)
    stored = controller.credentials.files(USER, "demo")[CREDENTIALS]
    with inside(s.controller_ns), controller.vms.agent(vm) as agent:
        files, _ = agent.read_credentials("demo")
        with agent.run(["stat", "-c", "%a %U", f"/root/{CREDENTIALS}"]) as run:
            stat = "".join(e.data for e in run if e.event == "output")
    assert files[CREDENTIALS] == stored  # the one live copy: the VM's is the stored one
    assert stat.split() == ["600", "root"]
    assert json.loads(stored)["email"] == s.user


def test_validate_runs_the_cli_status_check_in_the_vm(signed_in: Stack):
    body = signed_in.api.get(f"/api/auth/validate/{USER}/demo").json()
    assert body == {
        "user_id": USER,
        "provider": "demo",
        "valid": True,
        "reason": None,
        "status": "ready",
    }


def test_an_idle_vm_hibernates_and_the_next_prompt_resumes_it(signed_in: Stack):
    s = signed_in
    controller, vm = cli_vm(s)
    with inside(s.controller_ns), controller.vms.agent(vm) as agent:
        before = agent.health()
    wait_for(
        lambda: user_view(s)["vm"]["state"] == "hibernated",
        IDLE_HIBERNATE + 60,
        "the idle CLI VM to hibernate",
        interval=1,
    )
    assert not controller.vms.vmm_alive(controller.vms.get(vm.id))
    assert controller.vms.network.tap_state(vm.tap) is not None  # kept for the resume
    assert controller.vms.pool.leases()[vm.id] == vm.ip

    events = run_prompt(s, "Are you awake?")
    assert events[-1][0] == "done" and events[-1][1]["exit_code"] == 0
    assert s.user in "".join(d["data"] for k, d, _ in events if k == "output")
    vm = controller.vms.get(vm.id)
    assert vm.state == "ready" and user_view(s)["vm"]["vm_id"] == vm.id
    with inside(s.controller_ns), controller.vms.agent(vm) as agent:
        after = agent.health()
        files, _ = agent.read_credentials("demo")
    # The same guest, not a new boot: the agent started at the same uptime, same address.
    assert after["started_at_uptime"] == before["started_at_uptime"]
    assert after["network"]["addresses"] == before["network"]["addresses"]
    assert files[CREDENTIALS] == controller.credentials.files(USER, "demo")[CREDENTIALS]


def test_cancel_stops_the_cli(signed_in: Stack):
    s = signed_in

    def cancel_on_first_output(events) -> None:
        if [k for k, _, _ in events].count("output") == 1:
            prompt_id = events[0][1]["prompt_id"]
            assert s.api.post(f"/api/prompts/{prompt_id}/cancel").status_code == 202

    events = run_prompt(s, LONG_PROMPT, on_output=cancel_on_first_output)
    done = events[-1][1]
    assert events[-1][0] == "done" and done["status"] == "cancelled"
    assert done["reason"] == "cancelled through the API"
    record = s.api.get(f"/api/prompts/{done['prompt_id']}").json()
    assert record["status"] == "cancelled" and record["error"] == "cancelled through the API"
    assert record["duration_seconds"] < 30  # a full reply of 200 paced words takes far longer


def test_a_client_that_goes_away_stops_the_cli_and_the_record_says_so(signed_in: Stack):
    s = signed_in
    events = run_prompt(s, LONG_PROMPT, on_output=lambda events: False)  # hang up at once
    prompt_id = events[0][1]["prompt_id"]

    def ended() -> dict | None:
        record = s.api.get(f"/api/prompts/{prompt_id}").json()
        return record if record["status"] != "running" else None

    record = wait_for(ended, 60, "the abandoned prompt to stop", interval=0.5)
    assert record["status"] == "cancelled" and record["error"] == "the client disconnected"


def test_a_new_sign_in_replaces_the_credentials_in_the_vm(signed_in: Stack):
    s = signed_in
    before = user_view(s)["credentials"][0]["version"]
    sign_in(s, USER, s.settings.home / "shots-again")
    assert user_view(s)["credentials"][0]["version"] == before + 1
    # The VM now holds the new sign-in's tokens (pushed at once if it was awake, else before
    # this run): the CLI refreshes those, and its refresh lands on the new version. Had the
    # VM kept the old tokens, their refresh would be refused as stale and stored nowhere.
    events = run_prompt(s, "New account?")
    assert events[-1][1]["exit_code"] == 0 and events[-1][1]["credentials"] == "updated"
    assert user_view(s)["credentials"][0]["version"] == before + 2


def test_removing_the_provider_wipes_the_files_in_the_vm(signed_in: Stack):
    s = signed_in
    removed = s.api.delete(f"/api/users/{USER}/credentials/demo").json()
    assert removed["removed"] is True and CREDENTIALS in removed["wiped_files"]
    controller, vm = cli_vm(s)
    with inside(s.controller_ns), controller.vms.agent(vm) as agent:
        with pytest.raises(AgentRefused) as refused:
            agent.read_credentials("demo")
        assert refused.value.status == 404
        with agent.run(["test", "-e", f"/root/{CREDENTIALS}"]) as run:
            exit_event = [e for e in run if e.event == "exit"][0]
    assert exit_event.exit_code == 1
    response = s.api.post(
        "/api/prompts", json={"user_id": USER, "provider": "demo", "prompt": "hi"}
    )
    assert response.status_code == 409


def test_a_vm_unused_for_long_is_destroyed_with_everything_it_held(signed_in: Stack):
    s = signed_in
    controller, vm = cli_vm(s)
    # Fourteen days pass, as far as the controller's idle sweep can tell.
    controller.db.update(Vm, vm.id, last_active_at=utcnow() - timedelta(days=15))
    wait_for(
        lambda: controller.vms.get(vm.id).state == "destroyed",
        60,
        "the long-idle CLI VM to be destroyed",
        interval=1,
    )
    # No credentials (removed above) and no VM: Hearth holds nothing for this user now.
    assert s.api.get(f"/api/users/{USER}/credentials").status_code == 404
    assert controller.vms.network.tap_state(vm.tap) is None
    assert vm.id not in controller.vms.pool.leases()
    assert not controller.vms.workdir(vm.id).exists()
