"""Prompt runs in the CLI VM (hearth/guest/runs.py behind agent.py's /runs), driven through
AgentClient against the real agent in its own process. The "CLIs" are small Python scripts
that block on a FIFO the test writes, or on signal.pause(), never on a timer."""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hearth.core.ports import AgentRefused
from hearth.guest import protocol, runs
from hearth.guest.protocol import RunEvent, RunExit
from hearth.waiting import wait_for
from tests.unit.test_custody import CliAgent, running_cli_agent

WAIT = 20.0
MARKER = "conversation-" + secrets.token_hex(6)  # a run's output: never in the agent's log

# Prints, then waits for the test to write the FIFO; a multibyte character is split across
# the wait, so the stream must not break it.
TALKER = r"""
import sys
fifo, marker = sys.argv[1], sys.argv[2]
sys.stdout.buffer.write(b"first " + marker.encode() + b" a\xc3")
sys.stdout.flush()
with open(fifo) as f:
    f.read()
sys.stdout.buffer.write(b"\xa9 last\n")
sys.stdout.flush()
print("warning", file=sys.stderr)
sys.exit(3)
"""

# Starts a grandchild in its process group, says who they are, then waits for a signal.
FAMILY = r"""
import json, signal, subprocess, sys
if sys.argv[1] == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal; signal.pause()"])
print(json.dumps({"pid": __import__("os").getpid(), "grandchild": child.pid}), flush=True)
signal.pause()
"""

# What a CLI finds when it starts.
SURROUNDINGS = r"""
import json, os, sys
print(json.dumps({
    "cwd": os.getcwd(),
    "env": {k: os.environ.get(k) for k in ("PATH", "HOME", "LANG", "TERM", "EXTRA", "HEARTH_SEED")},
    "stdin": sys.stdin.read(),
    "session_leader": os.getsid(0) == os.getpid(),
}))
"""


@pytest.fixture
def cli_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliAgent]:
    with running_cli_agent(tmp_path, monkeypatch) as running:
        yield running


def python(script: str, *args: str) -> list[str]:
    return [sys.executable, "-c", script, *args]


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def collect(events: Iterator[RunEvent]) -> tuple[dict[str, str], RunExit]:
    """Everything up to the exit event: the output by stream, and the exit event."""
    output = {"stdout": "", "stderr": ""}
    for event in events:
        if isinstance(event, RunExit):
            return output, event
        assert event.event == "output", event
        output[event.stream] += event.data
    raise AssertionError("the stream ended without an exit event")


def first_json_line(events: Iterator[RunEvent]) -> dict[str, Any]:
    text = ""
    while "\n" not in text:
        event = next(events)
        assert event.event == "output" and event.stream == "stdout", event
        text += event.data
    return json.loads(text)


def test_output_streams_as_it_is_produced(cli_agent: CliAgent, tmp_path: Path) -> None:
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    client = cli_agent.client
    with client.run(python(TALKER, str(fifo), MARKER)) as events:
        started = next(events)
        assert started.event == "started" and started.pid > 0
        assert len(started.run_id) == 32 and int(started.run_id, 16) >= 0
        # The CLI is blocked on the FIFO: this output cannot have waited for its exit.
        first = next(events)
        assert first.to_json() == {
            "event": "output",
            "stream": "stdout",
            "data": f"first {MARKER} a",
        }
        assert client.run_status(started.run_id).running is True
        fifo.write_text("go")
        output, exit_event = collect(events)
    assert output == {"stdout": "\u00e9 last\n", "stderr": "warning\n"}
    assert exit_event.to_json() == {
        "event": "exit",
        "run_id": started.run_id,
        "exit_code": 3,
        "signal": None,
        "duration": exit_event.duration,
        "cancelled": False,
        "timed_out": False,
        "credentials_digest": None,
    }
    assert exit_event.duration > 0
    status = client.run_status(started.run_id)
    assert status.to_json() == {
        "run_id": started.run_id,
        "running": False,
        "exit_code": 3,
        "signal": None,
        "cancelled": False,
        "timed_out": False,
        "duration": exit_event.duration,
    }
    log = cli_agent.stop()
    assert f"hearth-agent: run {started.run_id}: exited with 3 after " in log
    assert MARKER not in log and "warning" not in log


def test_a_run_gets_a_clean_environment_in_home(cli_agent: CliAgent) -> None:
    with cli_agent.client.run(python(SURROUNDINGS), env={"EXTRA": "yes"}) as events:
        assert next(events).event == "started"
        output, exit_event = collect(events)
    assert exit_event.exit_code == 0 and output["stderr"] == ""
    seen = json.loads(output["stdout"])
    assert seen == {
        "cwd": str(cli_agent.home),
        "env": {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(cli_agent.home),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
            "EXTRA": "yes",
            "HEARTH_SEED": None,  # nothing of the agent's own environment
        },
        "stdin": "",
        "session_leader": True,
    }


def test_cancel_stops_the_whole_process_group(cli_agent: CliAgent) -> None:
    client = cli_agent.client
    with client.run(python(FAMILY, "plain")) as events:
        run_id = next(events).run_id
        family = first_json_line(events)
        assert alive(family["pid"]) and alive(family["grandchild"])
        status = client.cancel_run(run_id)
        assert status.run_id == run_id and status.cancelled is True
        _, exit_event = collect(events)
    assert exit_event.cancelled is True and exit_event.timed_out is False
    assert (exit_event.exit_code, exit_event.signal) == (None, "SIGTERM")
    wait_for(lambda: not alive(family["grandchild"]), WAIT, "the grandchild to be gone")
    # A finished run stays as it was.
    assert client.cancel_run(run_id).signal == "SIGTERM"


def test_a_client_that_goes_away_takes_the_run_with_it(cli_agent: CliAgent) -> None:
    client = cli_agent.client
    with client.run(python(FAMILY, "plain")) as events:
        run_id = next(events).run_id
        family = first_json_line(events)
    # Leaving the block closed the connection mid-stream.
    wait_for(lambda: not alive(family["pid"]), WAIT, "the run's CLI to be stopped")
    wait_for(lambda: not alive(family["grandchild"]), WAIT, "the grandchild to be gone")
    status = wait_for(
        lambda: (s := client.run_status(run_id)) and not s.running and s, WAIT, "the run's end"
    )
    assert status.cancelled is True and status.signal == "SIGTERM"
    assert f"run {run_id}: stopping (its client went away)" in cli_agent.stop()


def test_a_run_past_its_timeout_is_killed(cli_agent: CliAgent) -> None:
    # The CLI ignores SIGTERM: SIGKILL follows after the grace period.
    with cli_agent.client.run(python(FAMILY, "ignore-term"), timeout=0.5) as events:
        assert next(events).event == "started"
        family = first_json_line(events)
        _, exit_event = collect(events)
    assert exit_event.timed_out is True and exit_event.cancelled is False
    assert (exit_event.exit_code, exit_event.signal) == (None, "SIGKILL")
    assert exit_event.duration >= 0.5 + runs.KILL_GRACE
    wait_for(lambda: not alive(family["grandchild"]), WAIT, "the grandchild to be gone")


def test_the_exit_event_carries_the_digest_of_the_credentials_after_the_run(
    cli_agent: CliAgent,
) -> None:
    client = cli_agent.client
    installed = client.put_credentials("demo", {".demo/token": b"old"}, {})
    refresh = "import pathlib; pathlib.Path.home().joinpath('.demo/token').write_text('new')"

    with client.run(python("pass"), provider="demo") as events:
        _, unchanged = collect(e for e in events if e.event != "started")
    assert unchanged.credentials_digest == installed

    with client.run(python(refresh), provider="demo") as events:
        _, changed = collect(e for e in events if e.event != "started")
    files, digest = client.read_credentials("demo")
    assert files == {".demo/token": b"new"}
    assert changed.credentials_digest == digest != installed

    with client.run(python("pass"), provider="codex") as events:  # nothing installed
        _, none = collect(e for e in events if e.event != "started")
    assert none.credentials_digest is None


def test_unknown_runs_are_404(cli_agent: CliAgent) -> None:
    for call in (cli_agent.client.run_status, cli_agent.client.cancel_run):
        with pytest.raises(AgentRefused) as e:
            call("0" * 32)
        assert e.value.status == 404
        assert e.value.message == f"no run {'0' * 32}"


def test_a_program_that_cannot_start_is_a_json_error(cli_agent: CliAgent, tmp_path: Path) -> None:
    with pytest.raises(AgentRefused) as e, cli_agent.client.run([str(tmp_path / "nope")]):
        pass
    assert e.value.status == 400
    assert e.value.message == f"cannot start {tmp_path / 'nope'}: No such file or directory"


BAD_ARGV = '"argv" must be a non-empty list of strings (without NUL)'
BAD_ENV = '"env" must map variable names to strings (without NUL)'
BAD_PROVIDER = '"provider" must be a provider name or null'
BAD_TIMEOUT = '"timeout" must be a number of seconds in (0, 86400]'


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, BAD_ARGV),
        ({"argv": []}, BAD_ARGV),
        ({"argv": "true"}, BAD_ARGV),
        ({"argv": [""]}, BAD_ARGV),
        ({"argv": ["true", 1]}, BAD_ARGV),
        ({"argv": ["true", "a\0b"]}, BAD_ARGV),
        ({"argv": ["true"], "env": []}, BAD_ENV),
        ({"argv": ["true"], "env": {"A=B": "c"}}, BAD_ENV),
        ({"argv": ["true"], "env": {"A": 1}}, BAD_ENV),
        ({"argv": ["true"], "env": {"A": "b\0"}}, BAD_ENV),
        ({"argv": ["true"], "provider": "No!"}, BAD_PROVIDER),
        ({"argv": ["true"], "provider": 3}, BAD_PROVIDER),
        ({"argv": ["true"], "timeout": 0}, BAD_TIMEOUT),
        ({"argv": ["true"], "timeout": 86401}, BAD_TIMEOUT),
        ({"argv": ["true"], "timeout": True}, BAD_TIMEOUT),
        ({"argv": ["true"], "timeout": "9"}, BAD_TIMEOUT),
    ],
)
def test_run_requests_are_checked(cli_agent: CliAgent, body: dict[str, Any], error: str) -> None:
    status, headers, answer = cli_agent.request("POST", "/runs", body)
    assert (status, answer) == (400, {"error": error})
    assert headers["Content-Type"] == "application/json"


def test_only_the_last_finished_runs_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEARTH_LOGIN_HOME", str(tmp_path))
    monkeypatch.setattr(runs, "KEEP_FINISHED", 2)
    manager = runs.RunManager(lambda message: None)
    started = []
    for _ in range(4):
        run = manager.start(protocol.RunRequest.from_json({"argv": python("pass")}))
        assert run.finished.wait(WAIT)
        started.append(run.id)
    pause = python("import signal; signal.pause()")
    running = manager.start(protocol.RunRequest.from_json({"argv": pause}))
    # Each start drops the oldest finished runs beyond KEEP_FINISHED; running ones stay.
    assert [manager.get(i) is not None for i in started] == [False, False, True, True]
    assert manager.get(running.id) is running
    running.cancel()
    assert running.finished.wait(WAIT)
