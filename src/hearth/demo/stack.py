"""The bundled demo stack: Hearth's whole sign-in flow on one machine, touching no real network.

The controller runs in a namespace of its own, the VMs' bridge in a second, and the demo
identity provider in a third, joined to the controller's at a documentation address under the
name idp.demo.test: VMs reach it as they reach any provider, by name through the egress
proxy, which the demo tells where that name lives. The
controller listens on a Unix socket; a browser on this machine reaches it through a loopback
port relayed to that socket. The demo command, the end-to-end tests and the sign-in bench
all run this same stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hearth.api.keys import create_key
from hearth.config import Settings
from hearth.core import runtime
from hearth.demo.sandbox import link, sandbox
from hearth.net.namespace import nsenter
from hearth.net.topology import VmNetwork
from hearth.waiting import wait_for

IDP_LINK = ipaddress.IPv4Network("203.0.113.128/30")
IDP_NAME = "idp.demo.test"
DEMO_USER = "demo@example.test"


@dataclass
class Stack:
    settings: Settings  # as the controller runs with them
    env: dict[str, str]  # the controller's environment (for more `hearth` commands)
    controller_ns: str
    api: httpx.Client  # the API over the controller's socket, with an app key
    url: str  # where a browser on this machine reaches the controller
    user: str
    password: str
    controller_pid: int
    logs: list[Path] = field(default_factory=list)

    def hearth(self, *args: str) -> subprocess.CompletedProcess:
        """Run a `hearth` command as the controller would, in its namespace."""
        return subprocess.run(
            [*nsenter(self.controller_ns), sys.executable, "-m", "hearth", *args],
            env=self.env,
            capture_output=True,
            text=True,
        )

    def start_session(self, user_id: str, provider: str = "demo") -> dict:
        response = self.api.post("/api/auth/start", json={"user_id": user_id, "provider": provider})
        response.raise_for_status()
        return response.json()

    def prompt(self, user_id: str, text: str, provider: str = "demo") -> Iterator[tuple[str, dict]]:
        """Run a prompt through the user's CLI VM: its Server-Sent Events as they come."""
        with self.api.stream(
            "POST",
            "/api/prompts",
            timeout=None,
            json={"user_id": user_id, "provider": provider, "prompt": text},
        ) as response:
            if response.is_error:
                response.read()
                response.raise_for_status()
            kind = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    yield kind, json.loads(line[6:])

    def follow(self, session_id: str, say: Callable[[dict], None]) -> None:
        """Pass each step of the session to `say` as it happens, until the session ends."""
        path = f"/api/auth/session/{session_id}/events"
        with self.api.stream("GET", path, timeout=None) as events:
            for line in events.iter_lines():
                if line.startswith("data: "):
                    say(json.loads(line[6:]))


@contextlib.contextmanager
def stack(
    settings: Settings,
    port: int = 0,
    token_ttl: float | None = None,
    controller_env: Mapping[str, str] | None = None,
) -> Iterator[Stack]:
    """Start the whole stack; on exit stop it and remove every VM and namespace it made.

    `token_ttl` is the IdP's access-token lifetime (short ones make the demo CLI refresh);
    `controller_env` adds HEARTH_* settings for the controller.
    """
    with contextlib.ExitStack() as exits:
        controller_ns = exits.enter_context(sandbox("hearth-demo"))
        idp_ns = exits.enter_context(sandbox("hearth-demo-idp"))
        network = VmNetwork.from_settings(
            settings.model_copy(
                update={"netns": f"{controller_ns}-vm", "controller_netns": controller_ns}
            )
        )
        network.ensure()
        exits.callback(network.teardown)
        _, idp_ip = link(controller_ns, idp_ns, IDP_LINK)
        issuer = f"http://{IDP_NAME}"
        password = secrets.token_urlsafe(12)

        logs = settings.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        idp_log, controller_log = logs / "demo-idp.log", logs / "demo-controller.log"
        exits.enter_context(
            _process(
                [
                    *nsenter(idp_ns),
                    sys.executable,
                    "-m",
                    "hearth.demo.idp",
                    "--host",
                    "0.0.0.0",
                    "--port",
                    "80",
                    "--issuer",
                    issuer,
                    "--user",
                    DEMO_USER,
                    *(["--token-ttl", str(token_ttl)] if token_ttl else []),
                ],
                {**os.environ, "HEARTH_DEMO_IDP_PASSWORD": password},
                idp_log,
            )
        )

        port = port or _free_port()
        socket_path = settings.home / "controller.sock"
        socket_path.unlink(missing_ok=True)
        overrides = {
            "HEARTH_HOME": str(settings.home),
            "HEARTH_NETNS": f"{controller_ns}-vm",
            "HEARTH_CONTROLLER_NETNS": controller_ns,
            "HEARTH_EGRESS_HOSTS": json.dumps({IDP_NAME: idp_ip}),
            "HEARTH_EGRESS_ALLOW": json.dumps({"demo": [IDP_NAME]}),
            "HEARTH_DEMO_ISSUER": issuer,
            # The demo's only provider: its warm pool VMs show its sign-in page ahead.
            "HEARTH_POOL_PROVIDERS": json.dumps(["demo"]),
            "HEARTH_PUBLIC_URL": f"http://localhost:{port}",
        }
        env = {**os.environ, **overrides, **(controller_env or {})}
        # Once the controller has stopped (the exits run last first), not before: a controller
        # still running would go on booting VMs (the warm pool's) after the removal.
        exits.callback(
            subprocess.run,
            [*nsenter(controller_ns), sys.executable, "-m", "hearth", "vm", "rm", "--all"],
            env=env,
            check=False,
            capture_output=True,
        )
        controller = exits.enter_context(
            _process(
                [
                    *nsenter(controller_ns),
                    sys.executable,
                    "-m",
                    "hearth",
                    "serve",
                    "--uds",
                    str(socket_path),
                ],
                env,
                controller_log,
            )
        )
        exits.enter_context(forward(port, socket_path))

        key = create_key(runtime.open_database(settings), "app", "demo")
        api = exits.enter_context(
            httpx.Client(
                transport=httpx.HTTPTransport(uds=str(socket_path)),
                base_url="http://controller",
                timeout=30,
                headers={"Authorization": f"Bearer {key}"},
            )
        )
        wait_for(lambda: _answers(api), 60, "the controller")
        yield Stack(
            Settings.from_environ(env),
            env,
            controller_ns,
            api,
            f"http://localhost:{port}",
            DEMO_USER,
            password,
            controller.pid,
            [idp_log, controller_log],
        )


def _answers(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A helper process for the stack's lifetime, its output in `log`, ended by its PID."""
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def forward(port: int, socket_path: Path) -> Iterator[None]:
    """Serve 127.0.0.1:`port` by relaying each connection to the controller's Unix socket."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Future | None = None

    open_writers: set[asyncio.StreamWriter] = set()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(socket_path))
        except OSError:
            writer.close()
            return
        open_writers.add(up_writer)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def main() -> None:
        nonlocal stop
        stop = loop.create_future()
        server = await asyncio.start_server(relay, "127.0.0.1", port)
        ready.set()
        await stop
        server.close()
        for writer in open_writers:  # ends every relay's pipes; no task is cancelled
            writer.close()
        relays = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*relays, return_exceptions=True)
        await server.wait_closed()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(10):
        raise RuntimeError(f"cannot listen on 127.0.0.1:{port}")
    try:
        yield
    finally:
        loop.call_soon_threadsafe(stop.set_result, None)
        thread.join(10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()
