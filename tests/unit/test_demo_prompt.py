"""The demo provider's prompt command (hearth/demo/guest/demo_prompt.py) against the real demo
identity provider on 127.0.0.1, signed in with the real demo_login (the fixtures of
tests/integration/test_demo_idp.py), run as the guest runs it: a script in its own process,
here with -S so that anything beyond the standard library would fail to import. Last, the
whole CLI VM path: credentials installed through the agent, the prompt run and streamed by
it, the refreshed file read back."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import hearth.demo.guest
from hearth.demo.guest.demo_prompt import INIT
from tests.integration import test_demo_idp
from tests.integration.test_demo_idp import (
    USER,
    Idp,
    assert_hidden,
    refresh,
    run_demo_login,
    userinfo,
)
from tests.unit.test_custody import CliAgent, running_cli_agent

DEMO_PROMPT = Path(hearth.demo.guest.__file__).parent / "demo_prompt.py"
CREDENTIALS = ".hearth-demo/credentials.json"
PROMPT = "Why is the sky blue? -- asked with a dash"
RUN_TIMEOUT = 60.0

idp = test_demo_idp.idp  # the provider for this module
http = test_demo_idp.http


def prompt_command(*args: str) -> list[str]:
    return [sys.executable, "-E", "-s", "-S", str(DEMO_PROMPT), *args]


def start_prompt(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        prompt_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
    )


def run_prompt(home: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """Exit status, the JSON lines on stdout, stderr."""
    proc = start_prompt(home, *args)
    stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    return proc.returncode, [json.loads(line) for line in stdout.splitlines()], stderr


def sign_in(idp: Idp, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """A fresh demo login under workdir/home: its HOME and the credentials it wrote."""
    login = run_demo_login(idp.issuer, workdir)
    assert login.returncode == 0, login.stderr
    return workdir / "home", json.loads(login.out.read_text())


def rewrite(home: Path, **changes: Any) -> dict[str, Any]:
    path = home / CREDENTIALS
    creds = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(creds))
    return creds


def tokens(creds: dict[str, Any]) -> list[str]:
    return [creds[k] for k in ("access_token", "refresh_token", "id_token")]


def test_a_prompt_streams_its_answer_in_json_lines(
    idp: Idp, http: httpx.Client, tmp_path: Path
) -> None:
    home, creds = sign_in(idp, tmp_path)
    before = (home / CREDENTIALS).read_bytes()
    proc = start_prompt(home, "--", PROMPT)
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    assert first == {"type": "system", "subtype": "init", "model": "hearth-demo"}
    assert proc.poll() is None  # the rest of the answer is still to come
    rest, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    assert (proc.returncode, stderr) == (0, "")
    lines = [json.loads(line) for line in rest.splitlines()]
    sub = userinfo(http, idp, creds["access_token"]).json()["sub"]
    assert lines[0] == {"type": "account", "email": USER, "sub": sub, "refreshed": False}
    assert lines[1]["type"] == "assistant" and lines[1]["prompt_chars"] == len(PROMPT)
    assert all(line["type"] == "assistant" and line["text"] for line in lines[1:-1])
    assert lines[-1] == {"type": "result", "ok": True}
    assert len(lines) >= 3
    assert (home / CREDENTIALS).read_bytes() == before  # far from expiry: no refresh
    assert_hidden(rest, *tokens(creds))
    assert [line["text"] for line in lines[2:-1]] == PROMPT.split()  # a word per line


def test_near_expiry_the_token_is_refreshed_and_the_file_rewritten(
    idp: Idp, http: httpx.Client, tmp_path: Path
) -> None:
    home, _ = sign_in(idp, tmp_path)
    old = rewrite(home, expires_at=int(time.time()) + 60)
    code, lines, stderr = run_prompt(home, PROMPT)
    assert (code, stderr) == (0, ""), lines
    assert lines[1]["refreshed"] is True
    assert lines[1]["email"] == USER and lines[-1] == {"type": "result", "ok": True}

    path = home / CREDENTIALS
    new = json.loads(path.read_text())
    assert new["access_token"] != old["access_token"]
    assert new["refresh_token"] != old["refresh_token"]
    assert new["id_token"] and new["token_type"] == "Bearer"
    assert (new["email"], new["issuer"]) == (USER, idp.issuer)
    assert 3000 < new["expires_at"] - time.time() <= 3600
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]
    # Rotation: the old pair is dead, the new one works.
    assert userinfo(http, idp, old["access_token"]).status_code == 401
    reuse = refresh(http, idp, old["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert userinfo(http, idp, new["access_token"]).json()["email"] == USER
    assert_hidden(json.dumps(lines), *tokens(old), *tokens(new))


def test_status_reports_a_valid_credential(idp: Idp, tmp_path: Path) -> None:
    home, _ = sign_in(idp, tmp_path)
    assert run_prompt(home, "--status") == (0, [{"valid": True, "email": USER}], "")


def test_a_refused_access_token_is_reported_without_a_token(idp: Idp, tmp_path: Path) -> None:
    home, creds = sign_in(idp, tmp_path)
    rewrite(home, access_token="revoked-" + creds["access_token"][:8])
    code, [status], _ = run_prompt(home, "--status")
    assert code == 1 and status["valid"] is False
    assert status["reason"].startswith(f"{idp.issuer}/userinfo answered 401: invalid_token")
    code, lines, stderr = run_prompt(home, PROMPT)
    assert (code, stderr) == (1, "")
    assert lines == [INIT, {"type": "error", "reason": status["reason"]}]
    assert_hidden(status["reason"], *tokens(creds))


def test_a_refused_refresh_is_an_error_and_the_file_is_kept(idp: Idp, tmp_path: Path) -> None:
    home, _ = sign_in(idp, tmp_path)
    rewrite(home, expires_at=int(time.time()) + 10, refresh_token="not-a-refresh-token")
    before = (home / CREDENTIALS).read_bytes()
    code, lines, _ = run_prompt(home, PROMPT)
    assert code == 1
    init, error = lines
    assert init == INIT and error["type"] == "error"
    assert error["reason"].startswith(f"the refresh was refused: {idp.issuer}/token answered 400")
    assert (home / CREDENTIALS).read_bytes() == before
    code, [status], _ = run_prompt(home, "--status")
    assert code == 1 and status == {"valid": False, "reason": error["reason"]}


def test_without_a_credential_file_it_says_so(tmp_path: Path) -> None:
    reason = "not signed in: no credential file (run the demo login)"
    assert run_prompt(tmp_path, PROMPT) == (1, [INIT, {"type": "error", "reason": reason}], "")
    assert run_prompt(tmp_path, "--status") == (1, [{"valid": False, "reason": reason}], "")


@pytest.mark.parametrize("args", [(), ("--status", PROMPT)])
def test_it_needs_a_prompt_or_status(tmp_path: Path, args: tuple[str, ...]) -> None:
    proc = start_prompt(tmp_path, *args)
    stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT)
    assert (proc.returncode, stdout) == (2, "")
    assert "give a prompt or --status" in stderr


# --- the whole CLI VM path -----------------------------------------------------------------


@pytest.fixture
def cli_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliAgent]:
    (tmp_path / "vm").mkdir()
    with running_cli_agent(tmp_path / "vm", monkeypatch) as running:
        yield running


def test_a_prompt_run_through_the_agent_streams_and_hands_back_the_refresh(
    idp: Idp, http: httpx.Client, tmp_path: Path, cli_agent: CliAgent
) -> None:
    (tmp_path / "login").mkdir()
    login_home, _ = sign_in(idp, tmp_path / "login")
    near_expiry = rewrite(login_home, expires_at=int(time.time()) + 60)
    client = cli_agent.client
    installed = client.put_credentials(
        "demo", {CREDENTIALS: (login_home / CREDENTIALS).read_bytes()}, {}
    )

    with client.run(prompt_command("--", PROMPT), provider="demo", timeout=RUN_TIMEOUT) as events:
        assert next(events).event == "started"
        pieces = []
        for event in events:
            if event.event == "exit":
                exit_event = event
                break
            assert event.stream == "stdout", event
            pieces.append(event.data)
    assert exit_event.exit_code == 0
    assert len(pieces) > 1  # the answer arrived in pieces, as it was written
    lines = [json.loads(line) for line in "".join(pieces).splitlines()]
    assert lines[1]["email"] == USER and lines[-1] == {"type": "result", "ok": True}

    # The run refreshed the token: the digest says so, and the new file is there to take.
    files, digest = client.read_credentials("demo")
    assert exit_event.credentials_digest == digest != installed
    refreshed = json.loads(files[CREDENTIALS])
    assert refreshed["refresh_token"] != near_expiry["refresh_token"]
    assert userinfo(http, idp, refreshed["access_token"]).json()["email"] == USER
    assert_hidden(cli_agent.stop(), *tokens(near_expiry), *tokens(refreshed), USER)
