"""The Firecracker driver held to Firecracker's own API spec (v1.16.1, ../shared/firecracker/).

Firecracker cannot run here, so every request is checked by a server that speaks the spec
(tests/spec_server.py): in-process for the API client, and as a fake `firecracker` binary for
the driver's real spawn / socket / console / pid path.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.vmm import firecracker
from hearth.vmm.base import BootImage, MachineSpec, VmmError, pid_alive
from hearth.vmm.firecracker import FirecrackerApi, FirecrackerDriver

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
from spec_server import ApiSpec, SpecServer, SpecViolation, spec_path  # noqa: E402

BOOT = [
    ("PUT", "/boot-source"),
    ("PUT", "/drives/rootfs"),
    ("PUT", "/drives/seed"),
    ("PUT", "/network-interfaces/eth0"),
    ("PUT", "/machine-config"),
    ("PUT", "/balloon"),
    ("PUT", "/actions"),
]
BALLOON = {"amount_mib": 0, "deflate_on_oom": True, "free_page_reporting": True}


def require_spec() -> Path:
    """The spec's path; where it is absent (no ../shared/ beside the repository), a skip."""
    path = spec_path()
    if not path.is_file():
        pytest.skip(
            f"the Firecracker API spec {path} is absent; set HEARTH_FIRECRACKER_SPEC "
            "to its path to run the tests that check requests against it"
        )
    return path


@pytest.fixture(scope="module")
def api_spec() -> ApiSpec:
    return ApiSpec.load(require_spec())


def machine(tmp_path: Path, **overrides: Any) -> MachineSpec:
    """A MachineSpec over small stand-in files (nothing boots them)."""
    images = tmp_path / "img"
    images.mkdir()
    for name in ("vmlinux", "vmlinuz", "initrd", "rootfs.ext4"):
        (images / name).write_bytes(name.encode())
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "seed.img").write_bytes(b"seed")
    fields: dict[str, Any] = {
        "vm_id": "vm-1",
        "workdir": workdir,
        "image": BootImage.from_dir(images),
        "seed": workdir / "seed.img",
        "cmdline": "console=ttyS0 reboot=k panic=1",
        "tap": "hth0",
        "mac": "06:00:c0:a8:64:02",
        "vcpus": 2,
        "memory_mib": 512,
    } | overrides
    return MachineSpec(**fields)


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def journal(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def calls(requests: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in requests]


@pytest.fixture
def fake_firecracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `firecracker` that serves the validating API on its --api-sock, journaling requests."""
    require_spec()
    monkeypatch.setenv("SPEC_SERVER_JOURNAL", str(tmp_path / "journal.jsonl"))
    server = shlex.quote(str(TESTS / "spec_server.py"))
    return executable(
        tmp_path / "bin" / "firecracker",
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {server} "$@"\n',
    )


@pytest.fixture
def plain_clone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand a plain copy in for the reflink clone, and for nothing else.

    tmp_path here is ext4, which cannot reflink, and the driver rightly refuses a full copy
    there (test_start_refuses_a_full_copy). The tests using this fixture are about the process
    and the API sequence after the clone, so only that one step is replaced.
    """
    monkeypatch.setattr(firecracker, "_reflink", lambda src, dst: shutil.copyfile(src, dst))


# The validator must be able to fail, or the tests that rely on it prove nothing.


@pytest.mark.parametrize(
    ("method", "path", "body", "complaint"),
    [
        # The old design "hibernated" with an action Firecracker does not have.
        ("PUT", "/actions", {"action_type": "Hibernate"}, "is not one of"),
        ("PUT", "/boot-source", {"boot_args": "console=ttyS0"}, "'kernel_image_path' is"),
        ("PUT", "/drives/rootfs", {"drive_id": "rootfs", "is_root_device": True,
                                   "is_readonly": True}, "'is_readonly' was unexpected"),
        ("PUT", "/drives/seed", {"drive_id": "rootfs", "is_root_device": False}, "!= path"),
        ("PUT", "/machine-config", {"vcpu_count": "2", "mem_size_mib": 512}, "is not of type"),
        ("PUT", "/balloon", {"amount_mib": 0}, "'deflate_on_oom' is a required"),
        ("PUT", "/balloon", {"amount_mib": 0, "deflate_on_oom": True,
                             "free_page_reporting": "on"}, "is not of type"),
        ("PUT", "/snapshot/load", {"snapshot_path": "s", "mem_backend": {"backend_type": "File"}},
         "'backend_path' is a required"),
        ("POST", "/actions", {"action_type": "InstanceStart"}, "no POST"),
        ("PUT", "/hibernate", {}, "no path"),
    ],
)  # fmt: skip
def test_validator_rejects_what_firecracker_would(
    api_spec: ApiSpec, method: str, path: str, body: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(SpecViolation, match=re.escape(complaint)):
        api_spec.check(method, path, "application/json", json.dumps(body).encode())


def test_server_answers_an_invalid_request_with_a_fault(api_spec: ApiSpec, tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    with (
        SpecServer(sock, api_spec) as server,
        httpx.Client(transport=httpx.HTTPTransport(uds=str(sock))) as client,
    ):
        answer = client.put("http://localhost/actions", json={"action_type": "Hibernate"})
    assert answer.status_code == 400
    assert "is not one of" in answer.json()["fault_message"]
    assert server.requests[0].fault == answer.json()["fault_message"]


# The API client, request by request.


def test_api_boot_sequence_validates_in_order(api_spec: ApiSpec, tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    with SpecServer(sock, api_spec) as server, FirecrackerApi(sock) as api:
        api.put_boot_source("/img/vmlinux", "console=ttyS0", "/img/initrd")
        api.put_drive("rootfs", "/vm/rootfs.ext4", root=True, read_only=False)
        api.put_drive("seed", "/vm/seed.img", root=False, read_only=True)
        api.put_network_interface("eth0", "hth0", "06:00:c0:a8:64:02")
        api.put_machine_config(2, 512)
        api.put_balloon()
        api.start_instance()
    assert [r.fault for r in server.requests] == [None] * len(BOOT)
    assert [(r.method, r.path) for r in server.requests] == BOOT
    assert server.requests[-2].body == BALLOON
    assert server.requests[-1].body == {"action_type": "InstanceStart"}


def test_api_snapshot_cycle_validates_in_order(api_spec: ApiSpec, tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    state, mem = str(tmp_path / "s.vmstate"), str(tmp_path / "s.mem")
    with SpecServer(sock, api_spec) as server, FirecrackerApi(sock) as api:
        api.pause()
        api.create_snapshot(state, mem)
        api.resume()
        api.load_snapshot(state, mem, resume_vm=True, network_overrides={"eth0": "hth1"})
    assert [r.fault for r in server.requests] == [None] * 4
    assert [(r.method, r.template, r.body) for r in server.requests] == [
        ("PATCH", "/vm", {"state": "Paused"}),
        ("PUT", "/snapshot/create",
         {"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem}),
        ("PATCH", "/vm", {"state": "Resumed"}),
        ("PUT", "/snapshot/load",
         {"snapshot_path": state, "mem_backend": {"backend_type": "File", "backend_path": mem},
          "resume_vm": True, "network_overrides": [{"iface_id": "eth0", "host_dev_name": "hth1"}]}),
    ]  # fmt: skip


def test_api_fault_becomes_vmm_error(api_spec: ApiSpec, tmp_path: Path) -> None:
    sock = tmp_path / "api.sock"
    fault = "Cannot start microvm: KVM_CREATE_VM failed"
    with (
        SpecServer(sock, api_spec, faults={"PUT /actions": fault}),
        FirecrackerApi(sock) as api,
        pytest.raises(VmmError, match=r"PUT /actions \(400\): " + re.escape(fault)),
    ):
        api.start_instance()


def test_api_without_a_process_is_vmm_error(tmp_path: Path) -> None:
    with FirecrackerApi(tmp_path / "gone.sock") as api, pytest.raises(VmmError, match="answer"):
        api.pause()


# The driver, through a fake `firecracker` process.


def test_start_refuses_a_full_copy(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    probe.write_bytes(b"x")
    reflinks = subprocess.run(["cp", "--reflink=always", probe, tmp_path / "probe2"]).returncode
    if reflinks == 0:
        pytest.skip(f"{tmp_path} can reflink, so the refusal cannot be seen here")
    spec = machine(tmp_path)
    driver = FirecrackerDriver(binary=str(tmp_path / "never-run"))
    with pytest.raises(VmmError, match=r"reflink-capable filesystem \(XFS, btrfs\)"):
        driver.start(spec)
    assert sorted(p.name for p in spec.workdir.iterdir()) == ["seed.img"]


def test_start_boots_through_the_spec(
    tmp_path: Path, fake_firecracker: Path, plain_clone: None
) -> None:
    spec = machine(tmp_path)
    driver = FirecrackerDriver(binary=str(fake_firecracker))
    pid = driver.start(spec)
    try:
        assert pid_alive(pid)
        assert spec.pid_file.read_text().strip() == str(pid)
        assert f"fake firecracker pid {pid}" in spec.console_log.read_text()
        requests = journal(tmp_path / "journal.jsonl")
        assert [r["fault"] for r in requests] == [None] * len(BOOT)
        assert calls(requests) == BOOT
        disk = str(spec.workdir / "rootfs.ext4")
        assert [r["body"] for r in requests] == [
            {"kernel_image_path": str(spec.image.vmlinux), "initrd_path": str(spec.image.initrd),
             "boot_args": spec.cmdline},
            {"drive_id": "rootfs", "path_on_host": disk, "is_root_device": True,
             "is_read_only": False},
            {"drive_id": "seed", "path_on_host": str(spec.seed), "is_root_device": False,
             "is_read_only": True},
            {"iface_id": "eth0", "host_dev_name": spec.tap, "guest_mac": spec.mac},
            {"vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib},
            BALLOON,
            {"action_type": "InstanceStart"},
        ]  # fmt: skip
        assert Path(disk).read_bytes() == spec.image.rootfs.read_bytes()
    finally:
        driver.stop(spec)
    assert not pid_alive(pid)
    assert not spec.pid_file.exists()
    assert not (spec.workdir / "firecracker.sock").exists()
    driver.stop(spec)  # idempotent


def test_start_without_free_page_reporting_puts_no_balloon(
    tmp_path: Path, fake_firecracker: Path, plain_clone: None
) -> None:
    spec = machine(tmp_path)
    driver = FirecrackerDriver(binary=str(fake_firecracker), free_page_reporting=False)
    driver.start(spec)
    driver.stop(spec)
    requests = journal(tmp_path / "journal.jsonl")
    assert calls(requests) == [call for call in BOOT if call != ("PUT", "/balloon")]
    assert [r["fault"] for r in requests] == [None] * len(requests)


def test_hibernate_and_restore_through_the_spec(
    tmp_path: Path, fake_firecracker: Path, plain_clone: None
) -> None:
    spec = machine(tmp_path)
    driver = FirecrackerDriver(binary=str(fake_firecracker))
    booted = driver.start(spec)
    try:
        assert not driver.has_snapshot(spec)
        driver.hibernate(spec)
        assert not pid_alive(booted)
        assert not (spec.workdir / "firecracker.sock").exists()
        state, mem = spec.workdir / "snapshot.vmstate", spec.workdir / "snapshot.mem"
        assert state.exists() and mem.exists() and driver.has_snapshot(spec)
        assert not list(spec.workdir.glob("*.next"))

        restored = driver.restore(spec)
        assert pid_alive(restored) and restored != booted
        assert spec.pid_file.read_text().strip() == str(restored)
        # The guest runs on from it: the snapshot is consumed.
        assert not driver.has_snapshot(spec)
        with pytest.raises(VmmError, match="no snapshot to restore"):
            driver.restore(spec)
    finally:
        driver.stop(spec)
    requests = journal(tmp_path / "journal.jsonl")
    assert [r["fault"] for r in requests] == [None] * len(requests)
    # The restored process is configured by nothing but the snapshot load.
    assert calls(requests) == [
        *BOOT,
        ("PATCH", "/vm"),
        ("PUT", "/snapshot/create"),
        ("PUT", "/snapshot/load"),
    ]
    assert requests[-3]["body"] == {"state": "Paused"}
    assert requests[-2]["body"]["snapshot_type"] == "Full"
    assert requests[-1]["body"] == {
        "snapshot_path": str(state),
        "mem_backend": {"backend_type": "File", "backend_path": str(mem)},
        "resume_vm": True,
        "network_overrides": [{"iface_id": "eth0", "host_dev_name": spec.tap}],
    }
    assert not pid_alive(restored)


def test_failed_snapshot_resumes_the_vm_and_leaves_no_snapshot(
    tmp_path: Path, fake_firecracker: Path, plain_clone: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPEC_SERVER_FAULTS", "PUT /snapshot/create=No space left on device")
    spec = machine(tmp_path)
    driver = FirecrackerDriver(binary=str(fake_firecracker))
    pid = driver.start(spec)
    try:
        with pytest.raises(VmmError, match="No space left on device"):
            driver.hibernate(spec)
        assert pid_alive(pid)
        assert not driver.has_snapshot(spec)
        assert not list(spec.workdir.glob("snapshot.*"))
    finally:
        driver.stop(spec)
    requests = journal(tmp_path / "journal.jsonl")
    assert [r["fault"] for r in requests] == [None] * len(requests)
    assert [(r["method"], r["path"], r["body"].get("state")) for r in requests[-3:]] == [
        ("PATCH", "/vm", "Paused"),
        ("PUT", "/snapshot/create", None),
        ("PATCH", "/vm", "Resumed"),
    ]


def test_failed_boot_stops_the_vmm(
    tmp_path: Path, fake_firecracker: Path, plain_clone: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPEC_SERVER_FAULTS", "PUT /actions=Cannot start microvm: no KVM")
    spec = machine(tmp_path)
    with pytest.raises(VmmError, match="Cannot start microvm: no KVM"):
        FirecrackerDriver(binary=str(fake_firecracker)).start(spec)
    found = re.search(r"fake firecracker pid (\d+)", spec.console_log.read_text())
    assert found and not pid_alive(int(found[1]))
    assert not spec.pid_file.exists()


def test_vmm_that_dies_early_is_reported(tmp_path: Path, plain_clone: None) -> None:
    binary = executable(tmp_path / "bin" / "firecracker", "#!/bin/sh\necho 'no /dev/kvm'\nexit 3\n")
    spec = machine(tmp_path)
    with pytest.raises(VmmError, match="exited with status 3 before opening its API socket"):
        FirecrackerDriver(binary=str(binary)).start(spec)
    assert "no /dev/kvm" in spec.console_log.read_text()


def test_start_needs_the_serial_console(tmp_path: Path) -> None:
    spec = machine(tmp_path, cmdline="reboot=k panic=1")
    with pytest.raises(VmmError, match="console=ttyS0"):
        FirecrackerDriver().start(spec)


def test_stop_leaves_a_reused_pid_alone(tmp_path: Path) -> None:
    spec = machine(tmp_path)
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        spec.pid_file.write_text(f"{bystander.pid}\n")
        FirecrackerDriver().stop(spec)
        assert pid_alive(bystander.pid)
        assert not spec.pid_file.exists()
    finally:
        assert bystander.stdin is not None
        bystander.stdin.close()
        bystander.wait(timeout=10)


FAKE_JAILER = """\
#!{python}
# Records its argv, then runs the exec file with jail paths turned into host paths.
import json, os, sys
args = sys.argv[1:]
end = args.index("--")
opts = dict(zip(args[:end:2], args[1:end:2]))
exe = opts["--exec-file"]
root = os.path.join(opts["--chroot-base-dir"], os.path.basename(exe), opts["--id"], "root")
fc = args[end + 1:]
fc[fc.index("--api-sock") + 1] = root + fc[fc.index("--api-sock") + 1]
with open(os.environ["FAKE_JAILER_ARGV"], "w") as f:
    json.dump(args, f)
os.execv(exe, [exe, "--id=" + opts["--id"], *fc])
"""


def test_jailed_boot(
    tmp_path: Path, fake_firecracker: Path, plain_clone: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under the jailer every file is linked into the jail and named from its root."""
    monkeypatch.setenv("FAKE_JAILER_ARGV", str(tmp_path / "jailer.json"))
    jailer = executable(tmp_path / "bin" / "jailer", FAKE_JAILER.format(python=sys.executable))
    spec = machine(tmp_path, netns="hearth-test-x")
    driver = FirecrackerDriver(binary=str(fake_firecracker), jailer=str(jailer))
    root = spec.workdir / "jail" / "firecracker" / spec.vm_id / "root"
    pid = driver.start(spec)
    try:
        assert json.loads((tmp_path / "jailer.json").read_text()) == [
            "--id", spec.vm_id, "--exec-file", str(fake_firecracker.resolve()),
            "--uid", "0", "--gid", "0", "--chroot-base-dir", str(spec.workdir / "jail"),
            "--netns", "/var/run/netns/hearth-test-x", "--", "--api-sock", "/firecracker.sock",
        ]  # fmt: skip
        requests = journal(tmp_path / "journal.jsonl")
        assert calls(requests) == BOOT
        assert [r["fault"] for r in requests] == [None] * len(BOOT)
        assert requests[0]["body"]["kernel_image_path"] == "/vmlinux"
        assert requests[0]["body"]["initrd_path"] == "/initrd"
        assert requests[1]["body"]["path_on_host"] == "/rootfs.ext4"
        assert requests[2]["body"]["path_on_host"] == "/seed"
        assert os.path.samefile(root / "vmlinux", spec.image.vmlinux)
        assert os.path.samefile(root / "seed", spec.seed)
        assert (root / "rootfs.ext4").is_file()
    finally:
        driver.stop(spec)
    assert not pid_alive(pid)
    assert not (root / "firecracker.sock").exists()
