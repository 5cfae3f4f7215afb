"""The core without root: Hearth's real controller parts on ports that need no root, no
images and no VMs (hearth.core.ports).

- `LoopbackNetwork`: TAPs are records, and the pool leases addresses from a /24 of
  127.0.0.0/8, all of which Linux answers on loopback, so each VM has an address of its own.
  The egress listeners bind the gateway's address on free ports (no root for 53, 80 and
  443): the rig's guests reach the IdP directly, never through them.
- `AgentProcessDriver`: a VMM whose guest is the real guest agent (hearth/guest/agent.py,
  started as its systemd unit starts it) as a local process bound to the VM's address, with
  the VM's directory as its disk: HOME, the agent's state and the login's run directory live
  there. A hibernate keeps that disk and ends the process; a restore starts it again, so
  what a guest held only in memory (a login under way) is gone after it, as after a reboot.
  Firefox is a script that records the URLs it is sent.
- `Rig`: the controller wired as hearth.core.runtime wires it, on those two, with the demo
  provider's real login and prompt commands (run from this checkout's hearth/demo/guest/)
  against the demo identity provider on 127.0.0.1; `serve_rig` runs the controller's API
  around it over real HTTP.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

import hearth.demo.guest
import hearth.guest
from hearth import providers
from hearth.api.app import create_app
from hearth.api.keys import create_key
from hearth.config import Settings
from hearth.core import runtime
from hearth.core.capacity import UNMEASURED_VMM_MIB
from hearth.core.reconciler import vmm_processes
from hearth.core.runtime import Controller
from hearth.core.vms import VmManager
from hearth.demo import provider as demo
from hearth.demo.idp import RunningIdp, serve_in_thread
from hearth.guest.fileio import write_atomic
from hearth.guest.firefox import BLANK_TITLE
from hearth.vmm.base import MachineSpec, VmmError, kill_pid, references, running_pid
from hearth.waiting import wait_for
from tests.served import serve_app

GUEST_DIR = Path(hearth.guest.__file__).parent
DEMO_GUEST_DIR = Path(hearth.demo.guest.__file__).parent
AGENT_UNIT = GUEST_DIR / "files/hearth-boot/etc/systemd/system/hearth-agent.service"
USER = "ada@example.test"
SNAPSHOT = "snapshot.json"
FIREFOX_TITLE = "Sign in \u2014 Mozilla Firefox"
BLANK_WINDOW_TITLE = f"{BLANK_TITLE} \u2014 Mozilla Firefox"
EXEC_TIMEOUT = 10.0


def agent_command() -> list[str]:
    """The agent unit's own ExecStart, with this Python and this checkout's guest directory."""
    line = next(
        line for line in AGENT_UNIT.read_text().splitlines() if line.startswith("ExecStart=")
    )
    argv = shlex.split(line.removeprefix("ExecStart="))
    assert argv[0] == "/usr/bin/python3"
    return [sys.executable] + [arg.replace("/usr/lib/hearth", str(GUEST_DIR)) for arg in argv[1:]]


class LoopbackNetwork:
    """The Network port without links: a TAP is a record of its MAC and address."""

    netns = ""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.plugged: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def ensure(self) -> None:
        pass

    def add_tap(self, name: str, mac: str, ip: str) -> None:
        with self._lock:
            self.plugged[name] = (mac, ip)

    def remove_tap(self, name: str) -> None:
        with self._lock:
            self.plugged.pop(name, None)

    def tap_state(self, name: str) -> str | None:
        return "up" if name in self.plugged else None

    def taps(self) -> list[str]:
        with self._lock:
            return sorted(self.plugged)

    def gateway_sockets(self, wanted: tuple[tuple[str, int], ...]) -> list[socket.socket]:
        """One socket per (kind, port) wanted, on the gateway's address and a free port."""
        made = []
        for kind, _port in wanted:
            sock = socket.socket(type=socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
            sock.bind((self.gateway, 0))
            if kind == "tcp":
                sock.listen()
            sock.setblocking(False)
            made.append(sock)
        return made

    def controller_addresses(self) -> frozenset[ipaddress.IPv4Address]:
        return frozenset({ipaddress.ip_address("127.0.0.1")})


def loopback_cidr() -> str:
    """A /24 of 127.0.0.0/8 of its own for each rig, so rigs side by side never meet."""
    return f"127.{random.randint(64, 250)}.{random.randint(0, 255)}.1/24"


@dataclass
class AgentProcessDriver:
    """The Driver port with the guest agent as the VM's one process (see the module's words).

    `failing` names operations ("start", "hibernate", "restore") that fail once each, as a
    VMM refuses; `dying_boots` boots end at once, as a guest that crashes while it boots.
    """

    name: str = "process"
    programs: tuple[str, ...] = (Path(os.path.realpath(sys.executable)).name,)
    # Not measured: counted as a VM whose VMM has no figure, as the costliest one.
    own_memory_mib: int = UNMEASURED_VMM_MIB
    failing: set[str] = field(default_factory=set)
    dying_boots: int = 0

    def start(self, spec: MachineSpec) -> int:
        self._maybe_fail("start")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HEARTH_SEED": str(spec.seed),
            "HEARTH_SEED_WAIT": "0",
            "HEARTH_AGENT_ADDR": guest_address(spec),
            "HEARTH_LOGIN_HOME": str(spec.workdir / "home"),
            "HEARTH_AGENT_STATE": str(spec.workdir / "state"),
            "HEARTH_RUN_DIR": str(spec.workdir / "run"),
            "HEARTH_OPEN_URL_COMMAND": str(self._firefox(spec)),
            "HEARTH_WINDOW_TITLE_COMMAND": str(self._title(spec)),
        }
        if self.dying_boots:
            self.dying_boots -= 1
            env["HEARTH_SEED"] = str(spec.workdir / "no-such-seed")
        with open(spec.console_log, "ab") as console:
            # The VM's directory on the command line marks the process as this VM's VMM.
            process = subprocess.Popen(
                [*agent_command(), str(spec.workdir)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        write_atomic(spec.pid_file, f"{process.pid}\n".encode(), 0o644)
        # As a VMM's driver returns once the VMM runs: here, once the process runs the agent
        # (until its exec, /proc shows it without the directory, and it is no VM's VMM).
        wait_for(
            lambda: references(process.pid, spec.workdir) or process.poll() is not None,
            EXEC_TIMEOUT,
            "the agent process to start",
            interval=0.005,
        )
        return process.pid

    def stop(self, spec: MachineSpec) -> None:
        pid = running_pid(spec)
        if pid is not None:
            kill_pid(pid)
        spec.pid_file.unlink(missing_ok=True)

    def hibernate(self, spec: MachineSpec) -> None:
        pid = running_pid(spec)
        if pid is None:
            raise VmmError("no VMM runs to snapshot")
        self._maybe_fail("hibernate")
        write_atomic(spec.workdir / SNAPSHOT, json.dumps({"pid": pid}).encode(), 0o644)
        self.stop(spec)

    def restore(self, spec: MachineSpec) -> int:
        if not self.has_snapshot(spec):
            raise VmmError("no snapshot to restore")
        self._maybe_fail("restore")
        pid = self.start(spec)
        (spec.workdir / SNAPSHOT).unlink()
        return pid

    def has_snapshot(self, spec: MachineSpec) -> bool:
        return (spec.workdir / SNAPSHOT).exists()

    def _maybe_fail(self, operation: str) -> None:
        if operation in self.failing:
            self.failing.discard(operation)
            raise VmmError(f"the VMM refused to {operation} (injected)")

    @staticmethod
    def _firefox(spec: MachineSpec) -> Path:
        script = spec.workdir / "firefox"
        if not script.exists():
            opened = spec.workdir / "opened-urls"
            script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {opened}\n')
            script.chmod(0o755)
        return script

    @staticmethod
    def _title(spec: MachineSpec) -> Path:
        """The window title: the warm blank page's while that was the last URL sent (the
        pool's warm Firefox) and still is blank, else the sign-in page's (as Firefox follows
        the blank page once it forwards)."""
        script = spec.workdir / "firefox-title"
        if not script.exists():
            opened = spec.workdir / "opened-urls"
            script.write_text(
                "#!/bin/sh\n"
                f'last="$(tail -n 1 {opened} 2>/dev/null)"\n'
                'case "$last" in\n'
                f'  file:*) grep -qs \'http-equiv="refresh"\' "${{last#file://}}" '
                f"&& echo '{FIREFOX_TITLE}' || echo '{BLANK_WINDOW_TITLE}' ;;\n"
                f"  *) echo '{FIREFOX_TITLE}' ;;\n"
                "esac\n"
            )
            script.chmod(0o755)
        return script


def guest_address(spec: MachineSpec) -> str:
    """The VM's address, from the kernel's ip= argument as the guest reads it."""
    match = re.search(r"\bip=([\d.]+):", spec.cmdline)
    if match is None:
        raise VmmError("the VM has no address on its command line (not leased)")
    return match.group(1)


def opened_urls(vms: VmManager, vm_id: str) -> list[str]:
    """The URLs the VM's Firefox was sent, oldest first."""
    path = vms.workdir(vm_id) / "opened-urls"
    return path.read_text().splitlines() if path.exists() else []


def local_demo_spec(spec: providers.ProviderSpec) -> providers.ProviderSpec:
    """The demo provider's spec with its guest scripts where this checkout keeps them."""

    def local(argv: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(
            sys.executable if a == "python3" else a.replace("/usr/lib/hearth", str(DEMO_GUEST_DIR))
            for a in argv
        )

    return replace(
        spec,
        login_argv=local(spec.login_argv),
        prompt_argv=local(spec.prompt_argv),
        status_argv=local(spec.status_argv),
    )


@dataclass
class Rig:
    settings: Settings
    network: LoopbackNetwork
    driver: AgentProcessDriver
    controller: Controller
    idp: RunningIdp
    password: str

    @property
    def vms(self) -> VmManager:
        return self.controller.vms

    def approve(self, authorize_url: str, password: str | None = None) -> httpx.Response:
        """Play the user in the VM's browser: sign in on the IdP's form and follow its
        redirect to the CLI's callback in the VM; the callback's answer."""
        with httpx.Client(trust_env=False, timeout=15) as http:
            page = http.get(authorize_url)
            page.raise_for_status()
            action = re.search(r'<form [^>]*action="([^"]*)"', page.text).group(1)
            answer = http.post(
                urljoin(authorize_url, action.replace("&amp;", "&")),
                data={"username": USER, "password": password or self.password},
            )
            return http.get(answer.headers["location"])

    def vm_processes(self) -> list[int]:
        """Every agent process running from this rig's VM directories, whoever started it
        (found in /proc, so a VMM started twice shows twice)."""
        return sorted(vmm_processes(self.settings.vms_dir, self.driver.programs))


def local_controller(config: Settings) -> tuple[LoopbackNetwork, AgentProcessDriver, Controller]:
    """The controller wired by hearth.core.runtime on the rig's ports, for `config`; its
    "images" are manifests only, since the guest is this checkout's agent."""
    for image in (config.cli_image, "browser"):
        images = config.images_dir / image
        images.mkdir(parents=True, exist_ok=True)
        (images / "manifest.json").write_text(
            json.dumps({"image": image, "guest": "the guest agent of this checkout, as a process"})
        )
    network, driver = LoopbackNetwork(str(config.gateway.ip)), AgentProcessDriver()
    db = runtime.open_database(config)
    vms = VmManager(config, db, network, {driver.name: driver}, vmm=driver.name)
    return network, driver, runtime.controller(config, vms)


@contextmanager
def serve_rig(rig: Rig) -> Iterator[str]:
    """The controller's API around the rig's controller (hearth.api.app, its start-up and
    shut-down and all) over real HTTP on 127.0.0.1; its URL."""
    with serve_app(create_app(rig.settings, lambda _settings: rig.controller)) as url:
        yield url


@dataclass
class Api:
    """The rig's API over HTTP: its URL, and a client holding an app key."""

    url: str
    client: httpx.Client


@contextmanager
def api_of(rig: Rig) -> Iterator[Api]:
    """The controller's API around the rig's controller (serve_rig), with an app key."""
    key = create_key(rig.controller.db, "app")
    with (
        serve_rig(rig) as url,
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30, trust_env=False
        ) as client,
    ):
        yield Api(url, client)


@contextmanager
def build_rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: object) -> Iterator[Rig]:
    """A rig in `tmp_path`; on leaving, every VM it made is destroyed."""
    password = os.urandom(12).hex()
    idp = serve_in_thread({USER: password})
    monkeypatch.setitem(providers.SPECS, "demo", local_demo_spec(demo.SPEC))
    base = Settings(
        home=tmp_path / "home",
        database_url="",
        master_key="",
        cidr=loopback_cidr(),
        netns="",
        demo_issuer=idp.issuer,
        boot_timeout=30.0,
        agent_poll_interval=0.02,  # loopback agents answer at once: no VM's CPU to spare
        vm_ca_file="",
        upstream_proxy="",
    )
    config = base.model_copy(update=settings)
    network, driver, controller = local_controller(config)
    rig = Rig(config, network, driver, controller, idp, password)
    try:
        yield rig
    finally:
        # Sign-ins a test left running end as at a controller's stop, their threads joined.
        controller.sessions.stop(time.monotonic() + 30)
        for vm in rig.vms.list():
            rig.vms.destroy(vm.id)
        for pid in rig.vm_processes():  # what a test (or a regression) left without a record
            kill_pid(pid)
        idp.stop()
