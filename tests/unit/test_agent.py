"""The in-guest agent (hearth/guest/agent.py), run as the guest runs it: a script in its own
process, here bound to 127.0.0.1 on a random port with a seed file in tmp_path."""

from __future__ import annotations

import ast
import http.client
import json
import os
import queue
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hearth.core.agent_client import AgentClient
from hearth.guest.http_api import MAX_BODY
from hearth.guest.seed import write_seed
from tests.core_rig import DEMO_GUEST_DIR, GUEST_DIR, agent_command

START_TIMEOUT = 20.0


class RunningAgent:
    """The agent process, its port, and everything it printed (stdout and stderr)."""

    def __init__(self, seed_path: Path, token: str, env: dict[str, str] | None = None) -> None:
        self.token = token
        env = {
            **os.environ,
            "HEARTH_SEED": str(seed_path),
            "HEARTH_AGENT_PORT": "0",
            "HEARTH_AGENT_ADDR": "127.0.0.1",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            agent_command(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        try:
            self.port = self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _next_line(self, deadline: float) -> str | None:
        line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
        if line is not None:
            self.output.append(line)
        return line

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while (line := self._next_line(deadline)) is not None:
            if m := re.fullmatch(r"hearth-agent: listening on :(\d+)\n", line):
                return int(m.group(1))
        raise AssertionError(f"agent exited before listening: {''.join(self.output)}")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = "default",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=all_headers)
        response = conn.getresponse()
        payload = json.loads(response.read())
        conn.close()
        return response.status, dict(response.getheaders()), payload

    def stop(self) -> str:
        """Terminate the agent (once); return everything it printed."""
        if self.proc.returncode is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
            deadline = time.monotonic() + 15
            while self._next_line(deadline) is not None:
                pass
            self.reader.join(timeout=15)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
        return "".join(self.output)


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def seed_path(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "seed.img"
    write_seed(path, {"agent_token": token})
    return path


@pytest.fixture
def agent(seed_path: Path, token: str) -> Iterator[RunningAgent]:
    running = RunningAgent(seed_path, token)
    try:
        yield running
    finally:
        running.stop()


# --- start-up ----------------------------------------------------------------------------


@pytest.mark.parametrize("abstract", [False, True])
def test_the_agent_tells_systemd_when_it_listens(
    seed_path: Path, tmp_path: Path, abstract: bool
) -> None:
    """hearth-agent.service is Type=notify: units ordered after it wait for READY=1."""
    name = f"@hearth-test-{secrets.token_hex(8)}" if abstract else str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name[1:] if abstract else name)
        listener.settimeout(START_TIMEOUT)
        running = RunningAgent(seed_path, "unused", env={"NOTIFY_SOCKET": name})
        try:
            assert listener.recv(64) == b"READY=1"
        finally:
            running.stop()


# --- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
)
def test_requests_without_the_token_get_401(agent: RunningAgent, headers: dict) -> None:
    status, response_headers, body = agent.request("GET", "/health", token=None, headers=headers)
    assert status == 401
    assert body == {"error": "missing or wrong bearer token"}
    assert response_headers["WWW-Authenticate"] == "Bearer"


def test_a_near_miss_token_gets_401(agent: RunningAgent) -> None:
    assert agent.request("GET", "/health", token=agent.token[:-1])[0] == 401
    assert agent.request("GET", "/health", token=agent.token + "x")[0] == 401


def test_unknown_routes_need_the_token_too(agent: RunningAgent) -> None:
    # Without the token the route table is not revealed: 401, not 404.
    assert agent.request("GET", "/nope", token=None)[0] == 401


# --- routes ------------------------------------------------------------------------------


def test_health(agent: RunningAgent) -> None:
    status, headers, body = agent.request("GET", "/health")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body["status"] == "ok"
    assert body["hostname"] == socket.gethostname()
    assert isinstance(body["uptime"], float) and body["uptime"] > 0
    assert 0 < body["started_at_uptime"] <= body["uptime"]
    network = body["network"]
    assert set(network) >= {"addresses", "routes", "dns"}
    assert network["errors"] == []
    assert {"ifname": "lo", "family": "inet", "address": "127.0.0.1", "prefixlen": 8} in network[
        "addresses"
    ]
    assert all(set(route) == {"dst", "gateway", "dev"} for route in network["routes"])
    assert all(isinstance(server, str) for server in network["dns"])


def test_ready_answers_cheaply_and_needs_the_token(agent: RunningAgent) -> None:
    status, _, body = agent.request("GET", "/ready")
    assert status == 200 and set(body) == {"status", "uptime"} and body["status"] == "ok"
    assert agent.request("GET", "/ready", token="wrong")[0] == 401


def test_uptime_advances_but_started_at_does_not(agent: RunningAgent) -> None:
    first = agent.request("GET", "/health")[2]
    second = agent.request("GET", "/health")[2]
    assert second["started_at_uptime"] == first["started_at_uptime"]
    assert second["uptime"] >= first["uptime"]


def test_keep_alive_serves_several_requests_on_one_connection(agent: RunningAgent) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=15)
    auth = {"Authorization": f"Bearer {agent.token}"}
    for _ in range(3):
        conn.request("GET", "/health", headers=auth)
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["status"] == "ok"
    conn.close()


def test_unknown_route_is_404(agent: RunningAgent) -> None:
    status, _, body = agent.request("GET", "/nope")
    assert (status, body) == (404, {"error": "no route /nope"})


def test_wrong_method_is_405(agent: RunningAgent) -> None:
    status, headers, body = agent.request("POST", "/health", body={})
    assert status == 405 and headers["Allow"] == "GET"
    assert body == {"error": "/health does not accept POST"}


def test_body_over_one_mib_is_413(agent: RunningAgent) -> None:
    # Only the headers are sent: the agent must refuse on Content-Length, before reading.
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=15)
    conn.putrequest("POST", "/diagnostics/ping")
    conn.putheader("Authorization", f"Bearer {agent.token}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413
    assert json.loads(response.read()) == {
        "error": f"request body of {MAX_BODY + 1} bytes exceeds the {MAX_BODY}-byte limit"
    }
    conn.close()


def test_body_of_exactly_one_mib_is_read(agent: RunningAgent) -> None:
    status, _, body = agent.request("POST", "/diagnostics/ping", body=b" " * MAX_BODY)
    assert status == 400 and body["error"].startswith("request body is not valid JSON")


@pytest.mark.parametrize(
    "path",
    [
        "/runs/",
        "/runs/" + "a" * 65,
        "/runs/a/b",
        "/runs/bad%20id",
        "/runs/a%2Fb",
        "/credentials/x/y",
        "/nope/abc",
    ],
)
def test_a_segment_that_is_not_a_route_parameter_is_404(agent: RunningAgent, path: str) -> None:
    status, _, body = agent.request("GET", path)
    assert (status, body) == (404, {"error": f"no route {path}"})


def test_routes_with_parameters_answer_405_for_other_methods(agent: RunningAgent) -> None:
    status, headers, body = agent.request("POST", "/runs/" + "a" * 64, body={})
    assert status == 405 and headers["Allow"] == "DELETE, GET"
    assert body == {"error": f"/runs/{'a' * 64} does not accept POST"}


def test_an_exact_route_beside_a_pattern_keeps_working(agent: RunningAgent) -> None:
    # GET /credentials (the login's) beside GET /credentials/{provider} (custody's).
    status, _, body = agent.request("GET", "/credentials")
    assert (status, body) == (409, {"error": "no login has been started"})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"host": "example.com"}, "\"host\" must be an IPv4 address, not 'example.com'"),
        ({"host": "-f"}, "\"host\" must be an IPv4 address, not '-f'"),
        ({"host": "10.0.0.1; reboot"}, "\"host\" must be an IPv4 address, not '10.0.0.1; reboot'"),
        ({"host": "::1"}, "\"host\" must be an IPv4 address, not '::1'"),
        ({"host": "10.0.0.256"}, "\"host\" must be an IPv4 address, not '10.0.0.256'"),
        ({"host": 167772161}, '"host" must be a string holding an IPv4 address'),
        ({}, '"host" must be a string holding an IPv4 address'),
        (["10.0.0.1"], "request body must be a JSON object"),
        (b"not json", "request body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"", "request body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
    ],
)
def test_ping_validates_its_input(agent: RunningAgent, body: Any, error: str) -> None:
    status, _, response = agent.request("POST", "/diagnostics/ping", body=body)
    assert (status, response) == (400, {"error": error})


def test_ping_loopback_answers_ok_and_output(agent: RunningAgent) -> None:
    status, _, body = agent.request("POST", "/diagnostics/ping", body={"host": "127.0.0.1"})
    assert status == 200
    assert set(body) == {"ok", "output"}
    assert isinstance(body["ok"], bool) and isinstance(body["output"], str)


def test_clock_within_a_second_is_left_alone(agent: RunningAgent) -> None:
    with AgentClient("127.0.0.1", agent.token, agent.port) as client:
        answer = client.set_clock(time.time())
    assert answer.adjusted is False
    assert abs(answer.epoch - time.time()) < 60


# Only refused values: a test must never set the machine's clock.
@pytest.mark.parametrize(
    "body",
    [
        {},
        {"epoch": None},
        {"epoch": "1700000000"},
        {"epoch": True},
        {"epoch": 0},
        {"epoch": -5},
        {"epoch": 1e300},
        b'{"epoch": NaN}',
        b'{"epoch": Infinity}',
        ["epoch"],
    ],
)
def test_clock_refuses_what_is_not_a_unix_time(agent: RunningAgent, body: Any) -> None:
    status, _, answer = agent.request("PUT", "/clock", body=body)
    assert status == 400
    assert answer["error"] in (
        '"epoch" must be a positive Unix time in seconds',
        "request body must be a JSON object",
    )


# --- what the agent prints ---------------------------------------------------------------


def test_the_token_never_appears_in_the_output(agent: RunningAgent) -> None:
    wrong = agent.token[:-4] + "abcd"
    agent.request("GET", "/health")
    agent.request("GET", "/health?token=x", token=wrong)
    agent.request("POST", "/diagnostics/ping", body={"host": "nope"})
    agent.request("GET", "/missing")
    output = agent.stop()
    assert f"hearth-agent: listening on :{agent.port}\n" in output
    assert "hearth-agent: GET /health 200\n" in output
    assert "hearth-agent: GET /health 401\n" in output  # the query string is not logged
    assert "hearth-agent: POST /diagnostics/ping 400\n" in output
    assert "hearth-agent: GET /missing 404\n" in output
    assert agent.token not in output
    assert wrong not in output
    assert "Bearer" not in output and "Authorization" not in output
    assert all(line.startswith("hearth-agent: ") for line in output.splitlines())


def test_a_polled_status_is_logged_once_per_change_and_other_requests_each_time(
    agent: RunningAgent,
) -> None:
    for _ in range(5):
        assert agent.request("GET", "/ready")[0] == 200
    assert agent.request("GET", "/ready", token="wrong")[0] == 401
    assert agent.request("GET", "/ready")[0] == 200
    for _ in range(3):
        assert agent.request("GET", "/login")[0] == 404  # no login started
        assert agent.request("GET", "/warm-browser")[0] == 404  # no Firefox kept warm
        assert agent.request("GET", "/health")[0] == 200
    lines = agent.stop().splitlines()
    repeats = "(polled: logged again when its status changes)"
    assert [line for line in lines if " /ready " in line] == [
        f"hearth-agent: GET /ready 200 {repeats}",
        f"hearth-agent: GET /ready 401 {repeats}",
        f"hearth-agent: GET /ready 200 {repeats}",
    ]
    assert [line for line in lines if " /login " in line] == [
        f"hearth-agent: GET /login 404 {repeats}"
    ]
    assert [line for line in lines if " /warm-browser " in line] == [
        f"hearth-agent: GET /warm-browser 404 {repeats}"
    ]
    assert lines.count("hearth-agent: GET /health 200") == 3  # not polled: each one


def test_a_missing_seed_is_reported_and_the_agent_exits(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HEARTH_SEED": str(tmp_path / "vdb"),
        "HEARTH_AGENT_PORT": "0",
        "HEARTH_SEED_WAIT": "0.2",
    }
    done = subprocess.run(agent_command(), capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 1
    assert done.stdout.startswith("hearth-agent: error: cannot read the seed: ")
    assert "No such file or directory" in done.stdout and done.stderr == ""


# --- the guest has Debian's python3 and nothing else --------------------------------------


# The agent's modules and the demo CLI's: the image has them side by side in /usr/lib/hearth.
GUEST_MODULES = sorted([*GUEST_DIR.glob("*.py"), *DEMO_GUEST_DIR.glob("*.py")])


@pytest.mark.parametrize(
    "module", GUEST_MODULES, ids=lambda p: str(p.relative_to(GUEST_DIR.parent))
)
def test_guest_modules_import_only_the_standard_library(module: Path) -> None:
    siblings = {p.stem for p in GUEST_MODULES}
    tree = ast.parse(module.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []  # `from . import seed`
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top in siblings, (
                f"{module.name} imports {name}"
            )


def test_trust_refuses_what_is_not_a_certificate(agent: RunningAgent) -> None:
    status, _, body = agent.request("PUT", "/trust", {"pem": "not a certificate"})
    assert status == 400 and "PEM certificates" in body["error"]
