"""Fixtures for tests that boot real VMs: a controller namespace, a Hearth home whose images
come from a real build, and a way to run the `hearth` command inside that namespace."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hearth import providers
from hearth.config import Settings
from hearth.core import runtime
from hearth.core.cli_vms import CHECK_TIMEOUT
from hearth.core.reconciler import vmm_processes
from hearth.core.vms import VmManager
from hearth.demo.sandbox import nsenter, sandbox
from hearth.providers.base import Call
from hearth.vmm.base import kill_pid
from tests.standins import OF_PROVIDER, REVOKE_PATH

IMAGES = Path(os.environ.get("HEARTH_TEST_IMAGES", "/var/lib/hearth/images"))


def needs_image(name: str) -> Path:
    image = IMAGES / name
    if not (image / "manifest.json").exists():
        pytest.skip(
            f"needs a built {name} image in {IMAGES} (hearth image build {name}; "
            "set HEARTH_TEST_IMAGES)"
        )
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, TAP devices)")
    return image


@dataclass
class Hearth:
    """The `hearth` command run inside the test's controller namespace."""

    namespace: str
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [*nsenter(self.namespace), sys.executable, "-m", "hearth", *args]

    def __call__(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            self.argv(*args), env=self.env, capture_output=True, text=True, timeout=timeout
        )
        assert proc.returncode == 0, f"hearth {' '.join(args)}: {proc.stderr}{proc.stdout}"
        return proc

    def json(self, *args: str) -> dict | list:
        return json.loads(self(*args, "--json").stdout)

    def popen(self, *args: str, log: Path | None = None) -> subprocess.Popen:
        """Start `hearth ARGS` in the background; its output goes to `log` (or nowhere)."""
        out = log.open("ab") if log else subprocess.DEVNULL
        return subprocess.Popen(
            self.argv(*args), env=self.env, stdout=out, stderr=subprocess.STDOUT
        )

    @property
    def settings(self) -> Settings:
        return Settings.from_environ(self.env)

    def manager(self) -> VmManager:
        return runtime.vm_manager(self.settings)


@pytest.fixture
def hearth(tmp_path: Path) -> Iterator[Hearth]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "images").symlink_to(IMAGES)
    with sandbox() as controller:
        env = {
            **os.environ,
            "HEARTH_HOME": str(home),
            "HEARTH_NETNS": f"{controller}-vm",
            "HEARTH_CONTROLLER_NETNS": controller,
            "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src"),
        }
        h = Hearth(controller, env)
        try:
            yield h
        finally:
            _leave_nothing(h, home)


# Validate runs the CLI's status command in the VM (up to CHECK_TIMEOUT there): under
# emulation Gemini CLI's start alone can outlast the rig client's 30 s.
VALIDATE_TIMEOUT = CHECK_TIMEOUT + 30


def assert_revocation_is_told(
    rig,
    call,
    user_id: str,
    provider: str,
    origin: str,
    refusal: str,
    validate_refusal: str = "refused the access token (401",
) -> None:
    """On an egress rig with stand-ins: validate says valid; the stand-in at `origin`
    revokes every token (as a user does on the provider's account page); validate then says
    not valid and why (`validate_refusal`), the credentials' status turns invalid, and a
    prompt fails saying the provider refused them, its reason holding the CLI's `refusal`."""
    path = f"/api/auth/validate/{user_id}/{provider}"
    verdict = rig.api.get(path, timeout=VALIDATE_TIMEOUT).json()
    assert verdict["valid"] is True and verdict["status"] == "ready", verdict
    ((status, _, body),) = call(["POST", f"{origin}{REVOKE_PATH}", {}])
    assert status == 200 and json.loads(body)["revoked"] > 0, body

    verdict = rig.api.get(path, timeout=VALIDATE_TIMEOUT).json()
    assert verdict["valid"] is False and verdict["status"] == "invalid", verdict
    assert validate_refusal in verdict["reason"], verdict

    events = rig.prompt(user_id, provider, "Say hello after the revocation")
    done = events[-1][1]
    assert events[-1][0] == "done" and done["status"] == "failed" and done["exit_code"], events
    assert "the provider refused the stored credentials" in done["reason"], done
    assert refusal in done["reason"], done
    (stored,) = rig.api.get(f"/api/users/{user_id}/credentials").json()["credentials"]
    assert stored["status"] == "invalid" and refusal in stored["invalid_reason"], stored


def _made(call: Call, request: dict) -> bool:
    return (
        call.method == request["method"]
        and call.url == f"https://{request['host']}{request['path']}"
        and set(call.sends) <= set(request["fields"])
    )


def assert_contract(rig, provider: str, phases: tuple[str, ...]) -> None:
    """Every request the CLI made to its provider's stand-in (as the stand-in recorded it;
    not the VM's Firefox, not the test's own) is in the spec's contract with the fields it
    lists, and each needed call of `phases` was made: a CLI upgrade that talks differently
    fails here, naming the request."""
    spec = providers.get(provider)
    recorded = rig.inet.requests(OF_PROVIDER[provider]).read_text().splitlines()
    made = [
        r
        for r in map(json.loads, recorded)
        if r["caller"] == "cli" and not r["path"].startswith("/standin/")
    ]
    unknown = {
        f"{r['method']} https://{r['host']}{r['path']} {r['fields']}"
        for r in made
        if not any(_made(call, r) for call in spec.contract)
    }
    assert not unknown, f"{provider} made requests its contract does not list: {unknown}"
    missing = [
        f"{c.phase}: {c.method} {c.url}"
        for c in spec.contract
        if c.phase in phases and c.needed and not any(_made(c, r) for r in made)
    ]
    assert not missing, f"{provider} did not make these needed requests: {missing}"


def assert_nothing_left(hearth: Hearth) -> None:
    """No TAP, lease, VMM process, VM directory or live VM record remains."""
    vms = hearth.manager()
    assert vms.network.taps() == []
    assert vms.pool.leases() == {}
    assert vmm_processes(vms.settings.vms_dir) == []
    assert not vms.settings.vms_dir.exists() or list(vms.settings.vms_dir.iterdir()) == []
    assert [vm.id for vm in vms.list()] == []


def _leave_nothing(h: Hearth, home: Path) -> None:
    """Whatever a failed test left: its VMM processes (by PID), its VM network, its files."""
    for pid in vmm_processes(home / "vms"):
        kill_pid(pid)
    h.manager().network.teardown()
    shutil.rmtree(home / "vms", ignore_errors=True)
