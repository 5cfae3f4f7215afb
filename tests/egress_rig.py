"""A rig for egress tests that boots no VM: the real controller (`hearth serve`) in a
namespace of its own with the fake internet behind it, and "VM" namespaces plugged into the
VM bridge with a leased address, whose records (a browser VM of a sign-in, or a user's CLI
VM) the test writes, so the controller's egress sees them as it would see real VMs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from hearth.api.keys import create_key
from hearth.config import Settings
from hearth.core import runtime
from hearth.core.vms import VmManager
from hearth.demo.sandbox import nsenter, sandbox
from hearth.demo.stack import forward
from hearth.net.addressing import mac_for
from hearth.net.ippool import IpPool
from hearth.net.topology import VmNetwork
from hearth.store.db import Database
from hearth.store.models import AuthSession, Credential, EgressConnection, Vm, VmState
from hearth.waiting import wait_for
from tests.fake_internet import RESOLVER, FakeInternet, fake_internet

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclass
class FakeVm:
    """A namespace on the VM bridge with a VM's address and, as a guest's, the gateway for
    its resolver (ip netns exec lays /etc/netns/NAME/resolv.conf over /etc/resolv.conf)."""

    vm_id: str
    ip: str
    namespace: str

    def python(self, code: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@dataclass
class Rig:
    settings: Settings
    db: Database
    inet: FakeInternet
    controller_ns: str
    api: httpx.Client
    log: Path
    stack: contextlib.ExitStack
    env: dict[str, str]
    controller_pid: int
    ca: Path  # the fake internet's CA, as a PEM file

    def prompt(self, user_id: str, provider: str, text: str) -> list[tuple[str, dict, float]]:
        """POST /api/prompts: each Server-Sent Event (kind, data, when it came)."""
        events, kind = [], None
        with self.api.stream(
            "POST",
            "/api/prompts",
            timeout=None,
            json={"user_id": user_id, "provider": provider, "prompt": text},
        ) as response:
            assert response.status_code == 200, response.read()
            for line in response.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:]), time.monotonic()))
        return events

    def hearth(self, *args: str, timeout: float = 600) -> str:
        """A `hearth` command as the controller would run it; its output."""
        done = subprocess.run(
            [*nsenter(self.controller_ns), sys.executable, "-m", "hearth", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"hearth {' '.join(args)}: {done.stderr}{done.stdout}"
        return done.stdout

    def assert_nowhere(self, *secrets: str) -> None:
        """No secret is in the controller's log, the database file or any VM's console."""
        log, db = self.log.read_text(), (self.settings.home / "hearth.db").read_bytes()
        consoles = [
            c.read_text(errors="replace") for c in self.settings.vms_dir.glob("*/console.log")
        ]
        for secret in secrets:
            assert secret not in log and secret.encode() not in db
            assert not any(secret in console for console in consoles)

    def manager(self) -> VmManager:
        return runtime.vm_manager(self.settings)

    def browser_vm(self, provider: str, user_id: str = "alice") -> FakeVm:
        """A browser VM serving a sign-in to `provider` that awaits the user."""
        vm = self._vm(user_id=None)
        with self.db.session() as s:
            s.add(
                AuthSession(
                    id=uuid.uuid4().hex,
                    user_id=user_id,
                    provider=provider,
                    status="awaiting_user",
                    vm_id=vm.vm_id,
                    live_token_hash="x",
                    expires_at=datetime.now(UTC) + timedelta(hours=1),
                )
            )
            s.commit()
        return vm

    def cli_vm(self, user_id: str, connected: tuple[str, ...]) -> FakeVm:
        """A user's CLI VM, the user having signed in to `connected`."""
        vm = self._vm(user_id=user_id)
        with self.db.session() as s:
            for n, provider in enumerate(connected):
                s.add(
                    Credential(
                        user_id=user_id,
                        provider=provider,
                        version=1,
                        key_id="k",
                        wrapped_key=b"",
                        nonce=bytes([n]),
                        ciphertext=b"",
                    )
                )
            s.commit()
        return vm

    def audit(self, vm: FakeVm) -> list[EgressConnection]:
        with self.db.session() as s:
            return list(
                s.query(EgressConnection).filter_by(vm_id=vm.vm_id).order_by(EgressConnection.id)
            )

    def audit_all(self) -> list[EgressConnection]:
        with self.db.session() as s:
            return list(s.query(EgressConnection).order_by(EgressConnection.id))

    def _vm(self, user_id: str | None) -> FakeVm:
        vm_id = uuid.uuid4().hex[:12]
        port = f"hthf{vm_id[:6]}"
        with self.db.session() as s:
            s.add(
                Vm(
                    id=vm_id,
                    image="browser",
                    vmm="qemu",
                    state=VmState.ready,
                    tap=port,
                    agent_token="x",
                    user_id=user_id,
                    last_active_at=datetime.now(UTC),
                )
            )
            s.commit()
        ip = IpPool(self.db, self.settings.gateway).lease(vm_id)
        self.db.update(Vm, vm_id, ip=ip, mac=mac_for(ip))
        ns = self.stack.enter_context(sandbox("hearth-test-fvm"))
        etc = Path("/etc/netns") / ns
        etc.mkdir(parents=True)
        self.stack.callback(shutil.rmtree, etc, True)
        (etc / "resolv.conf").write_text(f"nameserver {self.settings.gateway.ip}\n")
        net = self.settings.netns
        subprocess.run(
            [
                "ip",
                "link",
                "add",
                port,
                "netns",
                net,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            ],
            check=True,
        )
        for argv in (
            ["-n", net, "link", "set", port, "master", self.settings.bridge, "up"],
            ["-n", net, "link", "set", "dev", port, "type", "bridge_slave", "isolated", "on"],
            ["-n", ns, "link", "set", "eth0", "address", mac_for(ip), "up"],
            [
                "-n",
                ns,
                "addr",
                "add",
                f"{ip}/{self.settings.gateway.network.prefixlen}",
                "dev",
                "eth0",
            ],
            ["-n", ns, "route", "add", "default", "via", str(self.settings.gateway.ip)],
        ):
            subprocess.run(["ip", *argv], check=True)
        VmNetwork.from_settings(self.settings).bind_port(port, mac_for(ip), ip)
        return FakeVm(vm_id, ip, ns)


@contextlib.contextmanager
def rig(
    tmp_path: Path,
    upstreams: Callable[[FakeInternet], dict[str, str]] | None = None,
    images: Path | None = None,
    browsers: bool = False,
    standins: bool = False,
    trust_ca: bool = False,
    **controller_env: str,
) -> Iterator[Rig]:
    """The controller with egress, the fake internet behind it, until the block ends;
    `upstreams` gives settings that name the fake internet's parts, `images` the built
    images VMs boot from, `browsers` a loopback port relayed to the controller (for a live
    view), `standins` the providers' stand-ins behind their names, `trust_ca` the test CA
    handed to every VM (HEARTH_VM_CA_FILE)."""
    with contextlib.ExitStack() as stack:
        controller = stack.enter_context(sandbox())
        home = tmp_path / "home"
        home.mkdir()
        if images:
            (home / "images").symlink_to(images)
        inet = stack.enter_context(fake_internet(controller, tmp_path / "inet", standins))
        env = {
            **os.environ,
            "HEARTH_HOME": str(home),
            "HEARTH_NETNS": f"{controller}-vm",
            "HEARTH_CONTROLLER_NETNS": controller,
            "HEARTH_EGRESS_RESOLVER": RESOLVER,
            "HEARTH_IDLE_HIBERNATE": "86400",
            "PYTHONPATH": str(SRC),
            **controller_env,
            **(upstreams(inet) if upstreams else {}),
        }
        ca = tmp_path / "ca.pem"
        ca.write_bytes(inet.ca.pem)
        if trust_ca:
            env["HEARTH_VM_CA_FILE"] = str(ca)
        settings = Settings.from_environ(env)
        stack.callback(VmNetwork.from_settings(settings).teardown)
        db = runtime.open_database(settings)
        socket_path = home / "controller.sock"
        public_port = _free_port() if browsers else 0
        if public_port:  # browsers on this machine reach the controller there
            env["HEARTH_PUBLIC_URL"] = f"http://localhost:{public_port}"
        log = tmp_path / "controller.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    *nsenter(controller),
                    sys.executable,
                    "-m",
                    "hearth",
                    "serve",
                    "--uds",
                    str(socket_path),
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        stack.callback(_stop, proc)
        key = create_key(db, "admin", "egress tests")
        api = stack.enter_context(
            httpx.Client(
                transport=httpx.HTTPTransport(uds=str(socket_path)),
                base_url="http://controller",
                headers={"Authorization": f"Bearer {key}"},
                timeout=30,
            )
        )

        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the controller exited: {log.read_text()[-3000:]}")
            try:
                return api.get("/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(answers, 60, "the controller")
        if public_port:
            stack.enter_context(forward(public_port, socket_path))
        yield Rig(settings, db, inet, controller, api, log, stack, env, proc.pid, ca)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# Guest-side snippets: what a client in a VM does, printing one JSON line.
RESOLVE = """
import json, socket
try:
    print(json.dumps({"ok": True, "addresses": sorted({a[4][0] for a in
          socket.getaddrinfo(%(name)r, 443, socket.AF_INET, socket.SOCK_STREAM)})}))
except socket.gaierror as e:
    print(json.dumps({"ok": False, "error": str(e)}))
"""

HTTPS_GET = """
import json, socket, ssl
ctx = ssl.create_default_context(cafile=%(ca)r)
try:
    with socket.create_connection((%(address)r, 443), timeout=15) as raw:
        with ctx.wrap_socket(raw, server_hostname=%(name)r) as tls:
            tls.sendall(b"GET / HTTP/1.1\\r\\nHost: %(name)s\\r\\nConnection: close\\r\\n\\r\\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
            print(json.dumps({"ok": True, "body": data.decode(errors="replace"),
                              "issuer": dict(x[0] for x in tls.getpeercert()["issuer"])}))
except (OSError, ssl.SSLError) as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
"""

HTTP_GET = """
import json, socket
try:
    with socket.create_connection((%(address)r, %(port)d), timeout=4) as s:
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: %(name)s\\r\\nConnection: close\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        print(json.dumps({"ok": True, "body": data.decode(errors="replace")}))
except OSError as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
"""


def run_json(vm: FakeVm, template: str, **values) -> dict:
    done = vm.python(template % values)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
