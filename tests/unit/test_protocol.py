"""The agent's protocol (hearth/guest/protocol.py): each request and answer survives the
wire, a malformed one is a ProtocolError naming its field, and the host's client raises it
(as AgentProtocolError, a HearthError) when an agent answers something the protocol does not
allow."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from hearth.core.agent_client import AgentClient
from hearth.core.ports import AgentError, AgentProtocolError, AgentUnreachable
from hearth.errors import HearthError
from hearth.guest import protocol
from hearth.guest.protocol import ProtocolError

FIREFOX = {"opened": True, "title": "Sign in \u2014 Mozilla Firefox", "ready": True}
LOGIN = {
    "provider": "demo",
    "state": "running",
    "url": "https://idp.test/authorize?state=s",
    "printed_url": None,
    "browser_url": "https://idp.test/authorize?state=s",
    "prompts_answered": ["Press Enter"],
    "success_marker_seen": False,
    "exited": False,
    "exit_code": None,
    "success": False,
    "error": None,
    "firefox": FIREFOX,
}
RUN_ID = "0123456789abcdef" * 2
EXIT = {
    "event": "exit",
    "run_id": RUN_ID,
    "exit_code": None,
    "signal": "SIGTERM",
    "duration": 1.5,
    "cancelled": True,
    "timed_out": False,
    "credentials_digest": "sha256:abc",
}

# Each message as the agent sends it (the wire format of the images already built).
MESSAGES: list[tuple[type, dict[str, Any]]] = [
    (protocol.Ready, {"status": "ok", "uptime": 12.5}),
    (protocol.FirefoxStatus, FIREFOX),
    (protocol.LoginStatus, LOGIN),
    (protocol.LoginCredentials, {"provider": "demo", "files": {".demo/token": "c2VjcmV0"}}),
    (protocol.UrlOpened, {"opened": True}),
    (protocol.CredentialsInstalled, {"provider": "demo", "digest": "sha256:abc"}),
    (
        protocol.CredentialFiles,
        {"provider": "demo", "files": {".demo/token": "AAE="}, "digest": "sha256:abc"},
    ),
    (protocol.CredentialsWiped, {"provider": "demo", "removed": [".demo/token"]}),
    (protocol.ProbeAnswer, {"provider": "codex", "status": 401, "detail": "401 Unauthorized"}),
    (protocol.RunStarted, {"event": "started", "run_id": RUN_ID, "pid": 42}),
    (protocol.RunOutput, {"event": "output", "stream": "stderr", "data": "\u00e9 warning\n"}),
    (protocol.RunExit, EXIT),
    (
        protocol.RunStatus,
        {
            "run_id": RUN_ID,
            "running": False,
            "exit_code": 3,
            "signal": None,
            "cancelled": False,
            "timed_out": False,
            "duration": 0.25,
        },
    ),
    (protocol.ClockAnswer, {"adjusted": False, "epoch": 1700000000.5}),
    (protocol.TrustAnswer, {"certificates": 2, "env": {"SSL_CERT_FILE": "/etc/x.pem"}}),
    (
        protocol.WarmBrowser,
        {
            "painted": True,
            "error": None,
            "firefox": {
                "opened": True,
                "title": "Hearth: ready \u2014 Mozilla Firefox",
                "ready": False,
            },
        },
    ),
]
IDS = [kind.__name__ for kind, _ in MESSAGES]


@pytest.mark.parametrize(("kind", "wire"), MESSAGES, ids=IDS)
def test_each_message_survives_the_wire(kind: type, wire: dict[str, Any]) -> None:
    message = kind.from_json(json.loads(json.dumps(wire)))
    assert message.to_json() == wire
    assert list(message.to_json()) == list(wire)  # the same fields, in the same order
    assert kind.from_json(message.to_json()) == message


SPEC = {
    "name": "demo",
    "login_argv": ["demo-cli", "login"],
    "login_env": {"DEMO": "1"},
    "clean_env": False,
    "url_pattern": "https://idp\\.test/\\S+",
    "browser_url_preferred": True,
    "prompts": [["Press Enter", "\r"]],
    "pre_login_files": {".demo/settings.json": "{}"},
    "credential_files": [".demo/token"],
    "success_markers": ["Signed in"],
    "stop_on_success": True,
    "login_timeout": 900.0,
    "url_timeout": 180.0,
}
PROBE = {
    "url": "https://api.test/profile",
    "token_file": ".demo/token",
    "token_path": ["access_token"],
    "headers": {"Accept": "application/json"},
    "file_headers": {"account-id": ["account", "id"]},
}
# Each request as the host's client sends it; the agent parses it back.
REQUESTS: list[tuple[type, dict[str, Any]]] = [
    (protocol.PingRequest, {"host": "10.0.0.1"}),
    (protocol.LoginSpec, SPEC),
    (protocol.LoginRequest, {"spec": SPEC}),
    (protocol.OpenUrl, {"url": "https://idp.test/authorize?state=s"}),
    (
        protocol.InstallCredentials,
        {"credential_files": {".demo/token": "c2VjcmV0"}, "support_files": {".demo/x": ""}},
    ),
    (protocol.ProbeSpec, PROBE),
    (
        protocol.RunRequest,
        {"argv": ["demo-cli", "-p", "hi"], "env": {"A": "1"}, "provider": "demo", "timeout": 60.0},
    ),
    (protocol.SetClock, {"epoch": 1700000000.5}),
    (protocol.TrustCas, {"pem": "-----BEGIN CERTIFICATE-----\n..."}),
]


@pytest.mark.parametrize(("kind", "wire"), REQUESTS, ids=[k.__name__ for k, _ in REQUESTS])
def test_each_request_survives_the_wire(kind: type, wire: dict[str, Any]) -> None:
    message = kind.from_json(json.loads(json.dumps(wire)))
    assert message.to_json() == wire
    assert kind.from_json(message.to_json()) == message


# A field each request cannot do without, and a value it refuses there.
BAD_REQUESTS = [
    (protocol.PingRequest, {"host": "-f"}, "host"),
    (protocol.LoginRequest, {"spec": {**SPEC, "credential_files": ["../x"]}}, "credential_files"),
    (protocol.LoginRequest, {"spec": {**SPEC, "name": "Demo!"}}, "name"),
    (protocol.LoginRequest, {}, "spec"),
    (protocol.OpenUrl, {"url": "file:///etc/passwd"}, "url"),
    (protocol.InstallCredentials, {"credential_files": {}}, "credential_files"),
    (protocol.InstallCredentials, {"credential_files": {"/etc/x": ""}}, "credential_files"),
    (
        protocol.InstallCredentials,
        {"credential_files": {"a": "c2VjcmV0"}, "support_files": {"b": "%"}},
        "support_files",
    ),
    (protocol.ProbeSpec, {**PROBE, "url": "http://api.test/"}, "url"),
    (protocol.ProbeSpec, {**PROBE, "file_headers": {"a": []}}, "file_headers.a"),
    (protocol.RunRequest, {"argv": []}, "argv"),
    (protocol.RunRequest, {"argv": ["x"], "provider": "../x"}, "provider"),
    (protocol.RunRequest, {"argv": ["x"], "timeout": float("inf")}, "timeout"),
    (protocol.SetClock, {"epoch": True}, "epoch"),
    (protocol.TrustCas, {"pem": None}, "pem"),
]


@pytest.mark.parametrize(("kind", "data", "field"), BAD_REQUESTS)
def test_a_bad_request_is_a_protocol_error_naming_its_field(
    kind: type, data: dict[str, Any], field: str
) -> None:
    with pytest.raises(ProtocolError, match=f'^"{field}" '):
        kind.from_json(data)


def test_a_run_request_has_the_agents_defaults() -> None:
    request = protocol.RunRequest.from_json({"argv": ["true"], "env": None})
    assert request == protocol.RunRequest(("true",), {}, None, protocol.DEFAULT_RUN_TIMEOUT)


def test_credential_files_are_bytes_here_and_base64_on_the_wire() -> None:
    answer = protocol.CredentialFiles.from_json(MESSAGES[6][1])
    assert answer.files == {".demo/token": b"\x00\x01"}
    assert protocol.CredentialFiles("demo", {"a": b"\xff"}, "d").to_json()["files"] == {"a": "/w=="}


@pytest.mark.parametrize(
    "wire", [m for k, m in MESSAGES if k.__name__.startswith("Run") and "event" in m]
)
def test_run_event_parses_each_event_by_its_name(wire: dict[str, Any]) -> None:
    event = protocol.run_event(wire)
    assert event.event == wire["event"] and event.to_json() == wire


@pytest.mark.parametrize("name", [None, "ended", 3, ["exit"]])
def test_an_unknown_run_event_is_a_protocol_error(name: Any) -> None:
    with pytest.raises(ProtocolError, match="field 'event' must be 'started' or 'output' or"):
        protocol.run_event({**EXIT, "event": name})


def _malformed(wire: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each field of `wire` missing, and holding a value no field allows."""
    for name in wire:
        if name == "event":
            continue  # the class is chosen by it; see run_event's test
        yield name, {k: v for k, v in wire.items() if k != name}
        yield name, {**wire, name: [1]}


CASES = [
    pytest.param(kind, name, data, id=f"{kind.__name__}-{name}-{i}")
    for kind, wire in MESSAGES
    for i, (name, data) in enumerate(_malformed(wire))
]


@pytest.mark.parametrize(("kind", "name", "data"), CASES)
def test_each_malformed_field_is_a_protocol_error_naming_it(
    kind: type, name: str, data: dict[str, Any]
) -> None:
    with pytest.raises(ProtocolError, match=f"field '{name}' must be "):
        kind.from_json(data)


@pytest.mark.parametrize(
    ("kind", "data", "field"),
    [
        (protocol.LoginStatus, {**LOGIN, "state": "lost"}, "state"),
        (protocol.LoginStatus, {**LOGIN, "exit_code": True}, "exit_code"),
        (protocol.LoginStatus, {**LOGIN, "prompts_answered": "Press Enter"}, "prompts_answered"),
        (protocol.LoginStatus, {**LOGIN, "firefox": {**FIREFOX, "ready": None}}, "ready"),
        (protocol.LoginStatus, {**LOGIN, "firefox": {**FIREFOX, "title": 3}}, "title"),
        (protocol.RunOutput, {"stream": "stdin", "data": ""}, "stream"),
        (protocol.RunExit, {**EXIT, "duration": float("nan")}, "duration"),
        (protocol.RunExit, {**EXIT, "duration": "1.5"}, "duration"),
        (protocol.LoginCredentials, {"provider": "demo", "files": {"a": "not base64!"}}, "files"),
        (protocol.TrustAnswer, {"certificates": 1, "env": {"A": 1}}, "env"),
    ],
)
def test_wrong_values_are_protocol_errors_too(kind: type, data: Any, field: str) -> None:
    with pytest.raises(ProtocolError, match=f"field '{field}' must be "):
        kind.from_json(data)


@pytest.mark.parametrize("kind", [kind for kind, _ in MESSAGES], ids=IDS)
@pytest.mark.parametrize("data", [None, [], "ok", 3])
def test_a_message_must_be_an_object(kind: type, data: Any) -> None:
    with pytest.raises(ProtocolError, match="must be a JSON object"):
        kind.from_json(data)


# --- the client against an agent that misbehaves ------------------------------------------


class _BadAgent(BaseHTTPRequestHandler):
    """Answers each path with the body in ANSWERS (200, JSON or not)."""

    protocol_version = "HTTP/1.1"
    answers: dict[str, tuple[str, bytes]] = {}

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        content_type, body = self.answers[self.path]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


ANSWERS = {
    "/login": ("application/json", json.dumps({**LOGIN, "url": 7}).encode()),
    "/ready": ("application/json", b'{"status": "ok"}'),
    "/clock": ("application/json", b"not json"),
    "/runs": (
        "application/x-ndjson",
        json.dumps({"event": "started", "run_id": RUN_ID, "pid": 1}).encode()
        + b"\n"
        + json.dumps({"event": "output", "stream": "stdout"}).encode()
        + b"\n",
    ),
    f"/runs/{RUN_ID}": ("application/json", b'["running"]'),
    "/credentials/demo": (
        "application/json",
        b'{"provider": "demo", "files": {"a": "%%%"}, "digest": "d"}',
    ),
    "/health": ("application/json", b"[1, 2]"),
}


@pytest.fixture
def bad_agent() -> Iterator[AgentClient]:
    handler = type("Handler", (_BadAgent,), {"answers": ANSWERS})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with AgentClient("127.0.0.1", "token", port=server.server_address[1]) as client:
            yield client
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_client_raises_protocol_error_on_a_malformed_answer(bad_agent: AgentClient) -> None:
    with pytest.raises(ProtocolError, match="login status: field 'url' must be a string or null"):
        bad_agent.login_status()
    with pytest.raises(ProtocolError, match="field 'uptime' must be a number, not missing"):
        bad_agent.ready()
    with pytest.raises(ProtocolError, match="answer to PUT /clock is not JSON"):
        bad_agent.set_clock(1700000000.0)
    with pytest.raises(ProtocolError, match="run status must be a JSON object, not list"):
        bad_agent.run_status(RUN_ID)
    with pytest.raises(ProtocolError, match="field 'files' must be an object of base64 strings"):
        bad_agent.read_credentials("demo")
    with pytest.raises(ProtocolError, match="answer to GET /health must be a JSON object"):
        bad_agent.health()


def test_the_clients_errors_are_hearth_errors(bad_agent: AgentClient) -> None:
    with pytest.raises(AgentProtocolError) as malformed:
        bad_agent.ready()
    assert isinstance(malformed.value, HearthError) and malformed.value.http_status == 502
    nobody = AgentClient("127.0.0.1", "token", port=9)  # the discard port: nothing listens
    with nobody, pytest.raises(AgentUnreachable, match="the agent did not answer GET /ready") as e:
        nobody.ready()
    assert isinstance(e.value, AgentError) and e.value.http_status == 502


def test_the_client_raises_protocol_error_on_a_malformed_run_event(
    bad_agent: AgentClient,
) -> None:
    with bad_agent.run(["true"]) as events:
        assert next(events) == protocol.RunStarted(RUN_ID, 1)
        with pytest.raises(ProtocolError, match="output event: field 'data' must be a string"):
            next(events)
