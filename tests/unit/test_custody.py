"""Credential custody in the CLI VM (hearth/guest/custody.py behind agent.py's
/credentials/{provider}), driven through AgentClient against the real agent in its own
process, with the CLI user's HOME and the agent's state directory under tmp_path."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from hearth.core.agent_client import AgentClient
from hearth.core.ports import AgentRefused
from hearth.guest import custody
from hearth.guest.seed import write_seed
from tests.unit.test_agent import RunningAgent

SECRET = b"refresh-" + secrets.token_hex(8).encode()  # never in the agent's log
TOKEN_FILE = ".demo/auth/token.json"
OTHER_FILE = ".demo/account"
SETTINGS = ".demo/settings.json"


class CliAgent(RunningAgent):
    """The agent with the CLI user's HOME and its state directory under tmp_path, and an
    AgentClient for it."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        token = secrets.token_urlsafe(32)
        seed_path = tmp_path / "seed.img"
        write_seed(seed_path, {"agent_token": token})
        self.home = tmp_path / "home"
        self.state = tmp_path / "state"
        monkeypatch.setenv("HEARTH_LOGIN_HOME", str(self.home))
        monkeypatch.setenv("HEARTH_AGENT_STATE", str(self.state))
        super().__init__(seed_path, token)
        self.client = AgentClient("127.0.0.1", token, self.port)

    def stop(self) -> str:
        self.client.close()
        return super().stop()


@contextmanager
def running_cli_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliAgent]:
    running = CliAgent(tmp_path, monkeypatch)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def cli_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliAgent]:
    with running_cli_agent(tmp_path, monkeypatch) as running:
        yield running


def expected_digest(files: dict[str, bytes | None]) -> str:
    """The digest as documented in custody.digest, computed independently."""
    h = hashlib.sha256()
    for path in sorted(files):
        content = files[path]
        h.update(path.encode() + b"\0")
        h.update(b"missing" if content is None else len(content).to_bytes(8, "big") + content)
    return h.hexdigest()


def all_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_install_writes_private_files_and_answers_their_digest(cli_agent: CliAgent) -> None:
    creds = {TOKEN_FILE: SECRET, OTHER_FILE: b"ada@example.test"}
    digest = cli_agent.client.put_credentials("demo", creds, {SETTINGS: b'{"theme": "dark"}'})
    assert digest == expected_digest(creds)
    assert digest == custody.digest(cli_agent.home, [OTHER_FILE, TOKEN_FILE])

    home = cli_agent.home
    assert all_files(home) == {TOKEN_FILE, OTHER_FILE, SETTINGS}  # no temporary files left
    assert (home / TOKEN_FILE).read_bytes() == SECRET
    assert (home / SETTINGS).read_bytes() == b'{"theme": "dark"}'
    for path in (TOKEN_FILE, OTHER_FILE, SETTINGS):
        assert stat.S_IMODE((home / path).stat().st_mode) == 0o600
    for directory in (".demo", ".demo/auth"):
        assert stat.S_IMODE((home / directory).stat().st_mode) == 0o700

    manifest = cli_agent.state / "credentials" / "demo.json"
    assert json.loads(manifest.read_text()) == {
        "credential_files": [OTHER_FILE, TOKEN_FILE],
        "support_files": [SETTINGS],
    }
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o600
    assert all_files(cli_agent.state) == {"credentials/demo.json"}

    log = cli_agent.stop()
    assert "hearth-agent: installed 2 credential and 1 support files for demo\n" in log
    assert SECRET.decode() not in log and "ada@example.test" not in log


def test_read_answers_the_files_as_they_are_now(cli_agent: CliAgent) -> None:
    client = cli_agent.client
    installed = client.put_credentials("demo", {TOKEN_FILE: SECRET, OTHER_FILE: b"x"}, {})
    files, digest = client.read_credentials("demo")
    assert (files, digest) == ({TOKEN_FILE: SECRET, OTHER_FILE: b"x"}, installed)

    # A CLI refreshing its token rewrites the file: the digest follows it.
    (cli_agent.home / TOKEN_FILE).write_bytes(SECRET + b"-rotated")
    files, changed = client.read_credentials("demo")
    assert files[TOKEN_FILE] == SECRET + b"-rotated"
    assert changed == expected_digest({TOKEN_FILE: SECRET + b"-rotated", OTHER_FILE: b"x"})
    assert changed != installed

    # A missing file is left out of the files, and counted as missing in the digest.
    (cli_agent.home / OTHER_FILE).unlink()
    files, gone = client.read_credentials("demo")
    assert files == {TOKEN_FILE: SECRET + b"-rotated"}
    assert gone == expected_digest({TOKEN_FILE: SECRET + b"-rotated", OTHER_FILE: None})


def test_the_digest_tells_paths_and_contents_apart() -> None:
    # The length prefix keeps content from running into the next path.
    assert expected_digest({"a": b"b\0c"}) != expected_digest({"a": b"b", "c": b""})
    assert expected_digest({"a": b""}) != expected_digest({"a": None})


def test_a_new_install_removes_the_credential_files_it_no_longer_has(cli_agent: CliAgent) -> None:
    client = cli_agent.client
    client.put_credentials("demo", {TOKEN_FILE: b"one", OTHER_FILE: b"two"}, {SETTINGS: b"{}"})
    digest = client.put_credentials("demo", {TOKEN_FILE: b"three"}, {})
    assert not (cli_agent.home / OTHER_FILE).exists()
    assert (cli_agent.home / TOKEN_FILE).read_bytes() == b"three"
    assert (cli_agent.home / SETTINGS).exists()  # only credential files are taken back
    assert client.read_credentials("demo") == ({TOKEN_FILE: b"three"}, digest)


def test_a_file_may_move_between_credential_and_support_files(cli_agent: CliAgent) -> None:
    client = cli_agent.client
    client.put_credentials("demo", {TOKEN_FILE: b"t", OTHER_FILE: b"o"}, {})
    client.put_credentials("demo", {TOKEN_FILE: b"t"}, {OTHER_FILE: b"o2"})
    assert (cli_agent.home / OTHER_FILE).read_bytes() == b"o2"


def test_wipe_removes_the_files_and_the_manifest(cli_agent: CliAgent) -> None:
    client = cli_agent.client
    client.put_credentials("demo", {TOKEN_FILE: SECRET, OTHER_FILE: b"x"}, {SETTINGS: b"{}"})
    (cli_agent.home / OTHER_FILE).unlink()
    assert sorted(client.wipe_credentials("demo")) == sorted([SETTINGS, TOKEN_FILE])
    assert all_files(cli_agent.home) == set()
    assert all_files(cli_agent.state) == set()
    with pytest.raises(AgentRefused) as e:
        client.read_credentials("demo")
    assert e.value.status == 404
    assert e.value.message == "no credentials installed for demo"
    assert client.wipe_credentials("demo") == []  # again: nothing there, no error


def test_providers_are_kept_apart(cli_agent: CliAgent) -> None:
    client = cli_agent.client
    client.put_credentials("demo", {TOKEN_FILE: b"demo"}, {})
    client.put_credentials("other", {".other/token": b"other"}, {})
    assert client.wipe_credentials("other") == [".other/token"]
    assert client.read_credentials("demo")[0] == {TOKEN_FILE: b"demo"}


def test_reading_what_was_never_installed_is_404(cli_agent: CliAgent) -> None:
    with pytest.raises(AgentRefused) as e:
        cli_agent.client.read_credentials("codex")
    assert e.value.status == 404


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def not_plain(field: str, path: str) -> str:
    return f'"{field}" holds {path!r}, which is not a plain path under HOME'


CREDS = "credential_files"
NOT_A_MAP = '"credential_files" must map paths to base64 strings'
NOT_BASE64 = f"\"credential_files\" holds '{TOKEN_FILE}', which is not base64"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, '"credential_files" must not be empty'),
        ({CREDS: {}}, '"credential_files" must not be empty'),
        ({CREDS: [TOKEN_FILE]}, NOT_A_MAP),
        ({CREDS: {TOKEN_FILE: 1}}, NOT_A_MAP),
        ({CREDS: {"/etc/shadow": b64(b"x")}}, not_plain(CREDS, "/etc/shadow")),
        ({CREDS: {"../escape": b64(b"x")}}, not_plain(CREDS, "../escape")),
        ({CREDS: {".demo/../../escape": b64(b"x")}}, not_plain(CREDS, ".demo/../../escape")),
        ({CREDS: {"": b64(b"x")}}, not_plain(CREDS, "")),
        ({CREDS: {TOKEN_FILE: "not base64!"}}, NOT_BASE64),
        ({CREDS: {TOKEN_FILE: "é"}}, NOT_BASE64),
        (
            {CREDS: {TOKEN_FILE: b64(b"x")}, "support_files": {"../x": b64(b"x")}},
            not_plain("support_files", "../x"),
        ),
        (
            {CREDS: {TOKEN_FILE: b64(b"x")}, "support_files": {TOKEN_FILE: b64(b"y")}},
            f"'{TOKEN_FILE}' is both a credential and a support file",
        ),
    ],
)
def test_install_refuses_bad_paths_and_contents(
    cli_agent: CliAgent, body: dict[str, Any], error: str
) -> None:
    status, _, answer = cli_agent.request("PUT", "/credentials/demo", body)
    assert (status, answer) == (400, {"error": error})
    assert not cli_agent.home.exists() or all_files(cli_agent.home) == set()
    assert not cli_agent.state.exists()


def test_a_name_that_is_no_provider_is_refused(cli_agent: CliAgent) -> None:
    body = {"credential_files": {TOKEN_FILE: b64(b"x")}}
    status, _, answer = cli_agent.request("PUT", "/credentials/Demo.json", body)
    assert (status, answer) == (400, {"error": "'Demo.json' is not a provider name"})
    assert cli_agent.request("GET", "/credentials/..")[0] == 400
    assert cli_agent.request("DELETE", "/credentials/..")[0] == 400


def test_a_damaged_manifest_is_a_500_that_says_so(cli_agent: CliAgent) -> None:
    cli_agent.client.put_credentials("demo", {TOKEN_FILE: SECRET}, {})
    manifest = cli_agent.state / "credentials" / "demo.json"
    manifest.write_text("{not json")
    status, _, answer = cli_agent.request("GET", "/credentials/demo")
    assert status == 500
    assert answer == {"error": f"cannot access the credential files: {manifest} is damaged"}
