"""Firecracker driver: a VM is one `firecracker` process configured over its API socket.

Every request here is one the v1.16.1 API spec defines (../shared/firecracker/); the contract
tests hold this module to that spec. Hibernation is pause + `PUT /snapshot/create` + stopping
the process, and restore is `PUT /snapshot/load` into a fresh process: Firecracker has no
"hibernate" action.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from hearth.guest import fileio
from hearth.net.namespace import nsenter
from hearth.vmm.base import MachineSpec, VmmError, kill_pid, read_pid, running_pid
from hearth.waiting import Timeout, wait_for

API_SOCK = "firecracker.sock"
DISK = "rootfs.ext4"  # the VM's copy-on-write clone of the golden rootfs
SNAPSHOT_STATE = "snapshot.vmstate"
SNAPSHOT_MEM = "snapshot.mem"
SNAPSHOT_FILES = (SNAPSHOT_MEM, SNAPSHOT_STATE)
IFACE = "eth0"

API_TIMEOUT = 10.0
SNAPSHOT_TIMEOUT = 120.0  # writing or mapping guest memory scales with its size
SOCKET_TIMEOUT = 10.0  # Firecracker opens its socket in ~12 ms; this only bounds a hang
SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with its NUL
JAILER_ID = re.compile(r"[A-Za-z0-9-]{1,64}")


class FirecrackerApi:
    """A client for one Firecracker process's API socket; a non-2xx answer raises VmmError."""

    def __init__(self, socket_path: Path, timeout: float = API_TIMEOUT) -> None:
        self.socket_path = socket_path
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket_path)),
            base_url="http://localhost",
            timeout=timeout,
        )

    def __enter__(self) -> FirecrackerApi:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def put_boot_source(self, kernel: str, boot_args: str, initrd: str | None = None) -> None:
        body: dict[str, Any] = {"kernel_image_path": kernel, "boot_args": boot_args}
        if initrd:
            body["initrd_path"] = initrd
        self._call("PUT", "/boot-source", body)

    def put_drive(self, drive_id: str, path: str, *, root: bool, read_only: bool) -> None:
        self._call(
            "PUT",
            f"/drives/{drive_id}",
            {
                "drive_id": drive_id,
                "path_on_host": path,
                "is_root_device": root,
                "is_read_only": read_only,
            },
        )

    def put_network_interface(self, iface_id: str, host_dev_name: str, guest_mac: str) -> None:
        self._call(
            "PUT",
            f"/network-interfaces/{iface_id}",
            {"iface_id": iface_id, "host_dev_name": host_dev_name, "guest_mac": guest_mac},
        )

    def put_machine_config(self, vcpu_count: int, mem_size_mib: int) -> None:
        self._call(
            "PUT", "/machine-config", {"vcpu_count": vcpu_count, "mem_size_mib": mem_size_mib}
        )

    def put_balloon(self) -> None:
        """A balloon that stays empty (it takes nothing from the guest) and reports the
        pages the guest frees, which Firecracker then drops from the VM's memory."""
        self._call(
            "PUT",
            "/balloon",
            {"amount_mib": 0, "deflate_on_oom": True, "free_page_reporting": True},
        )

    def start_instance(self) -> None:
        self._call("PUT", "/actions", {"action_type": "InstanceStart"})

    def pause(self) -> None:
        self._call("PATCH", "/vm", {"state": "Paused"})

    def resume(self) -> None:
        self._call("PATCH", "/vm", {"state": "Resumed"})

    def create_snapshot(self, snapshot_path: str, mem_file_path: str) -> None:
        """Write the paused VM's state and memory (a Full snapshot; Diff is developer preview)."""
        self._call(
            "PUT",
            "/snapshot/create",
            {
                "snapshot_type": "Full",
                "snapshot_path": snapshot_path,
                "mem_file_path": mem_file_path,
            },
            timeout=SNAPSHOT_TIMEOUT,
        )

    def load_snapshot(
        self,
        snapshot_path: str,
        mem_file_path: str,
        resume_vm: bool = True,
        network_overrides: dict[str, str] | None = None,
    ) -> None:
        """Load a snapshot into this fresh process; `network_overrides` maps iface id to TAP."""
        body: dict[str, Any] = {
            "snapshot_path": snapshot_path,
            "mem_backend": {"backend_type": "File", "backend_path": mem_file_path},
            "resume_vm": resume_vm,
        }
        if network_overrides:
            body["network_overrides"] = [
                {"iface_id": iface, "host_dev_name": tap}
                for iface, tap in network_overrides.items()
            ]
        self._call("PUT", "/snapshot/load", body, timeout=SNAPSHOT_TIMEOUT)

    def _call(
        self, method: str, path: str, body: dict[str, Any], timeout: float | None = None
    ) -> None:
        extra = {} if timeout is None else {"timeout": timeout}
        try:
            response = self._client.request(method, path, json=body, **extra)
        except httpx.HTTPError as e:
            raise VmmError(
                f"Firecracker API at {self.socket_path} did not answer {method} {path}: {e}"
            ) from e
        if not response.is_success:
            raise VmmError(
                f"Firecracker refused {method} {path} ({response.status_code}): "
                f"{_fault_message(response)}"
            )


@dataclass(frozen=True)
class _Layout:
    """Where a VM's Firecracker files live on the host, and the paths Firecracker opens them by.

    Without the jailer both are the same; with it, Firecracker is chrooted into `root`, so
    every file it is given must be inside that root and is named from `/`.
    """

    workdir: Path
    root: Path | None = None

    def host(self, name: str) -> Path:
        return (self.root or self.workdir) / name

    def vmm(self, name: str) -> str:
        return f"/{name}" if self.root else str(self.workdir / name)


class FirecrackerDriver:
    """Runs each VM as a Firecracker process, optionally under Firecracker's jailer."""

    name = "firecracker"
    programs = ("firecracker", "jailer")
    # Firecracker's own memory is a few MiB (its documented <5 MiB, plus the kernel it
    # loads); it needs KVM, which this host lacks, so this is a safe margin, not a measurement.
    own_memory_mib = 64

    def __init__(
        self, binary: str = "firecracker", jailer: str = "", free_page_reporting: bool = True
    ) -> None:
        self.binary = binary
        self.jailer = jailer
        self.free_page_reporting = free_page_reporting
        # Our children, held until stopped so they are reaped rather than left as zombies.
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, spec: MachineSpec) -> int:
        """Clone the disk, spawn Firecracker, configure and boot the guest; return the pid.

        An existing clone is the VM's disk from an earlier run and is kept.
        """
        if not any(arg.startswith("console=ttyS0") for arg in spec.cmdline.split()):
            raise VmmError("the kernel command line needs console=ttyS0 for the console log")
        layout = self._layout(spec)
        if layout.root is not None:
            layout.root.mkdir(parents=True, exist_ok=True)
        if not layout.host(DISK).exists():
            _reflink(spec.image.rootfs, layout.host(DISK))
        kernel = self._give(layout, spec.image.vmlinux, "vmlinux")
        initrd = self._give(layout, spec.image.initrd, "initrd")
        seed = self._give(layout, spec.seed, "seed")
        pid = self._spawn(spec, layout)
        try:
            with FirecrackerApi(layout.host(API_SOCK)) as api:
                api.put_boot_source(kernel, spec.cmdline, initrd)
                api.put_drive("rootfs", layout.vmm(DISK), root=True, read_only=False)
                api.put_drive("seed", seed, root=False, read_only=True)
                api.put_network_interface(IFACE, spec.tap, spec.mac)
                api.put_machine_config(spec.vcpus, spec.memory_mib)
                if self.free_page_reporting:
                    api.put_balloon()
                api.start_instance()
        except VmmError:
            self.stop(spec)
            raise
        return pid

    def stop(self, spec: MachineSpec) -> None:
        layout = self._layout(spec)
        pid = read_pid(spec)
        if running_pid(spec) is not None:
            kill_pid(pid)
        if pid is not None and (child := self._children.pop(pid, None)) is not None:
            child.poll()
        spec.pid_file.unlink(missing_ok=True)
        layout.host(API_SOCK).unlink(missing_ok=True)

    def hibernate(self, spec: MachineSpec) -> None:
        """Pause, snapshot to workdir (state + memory), and stop the process.

        The snapshot is written under new names and renamed into place before the process
        stops: a complete snapshot is there once the VMM is gone, and a failed one never
        appears under the snapshot's names.
        """
        layout = self._layout(spec)
        with FirecrackerApi(layout.host(API_SOCK)) as api:
            api.pause()
            try:
                api.create_snapshot(
                    layout.vmm(SNAPSHOT_STATE + ".next"), layout.vmm(SNAPSHOT_MEM + ".next")
                )
            except VmmError:
                api.resume()
                raise
        for name in SNAPSHOT_FILES:
            os.replace(layout.host(name + ".next"), layout.host(name))
        self.stop(spec)

    def restore(self, spec: MachineSpec) -> int:
        """Spawn a fresh Firecracker that loads the hibernated snapshot and resumes; the pid.

        The running guest maps the memory file, which keeps it as long as it needs it: the
        snapshot's names are removed once it runs.
        """
        layout = self._layout(spec)
        missing = [n for n in SNAPSHOT_FILES if not layout.host(n).exists()]
        if missing:
            raise VmmError(f"VM {spec.vm_id} has no snapshot to restore ({', '.join(missing)})")
        self._give(layout, spec.seed, "seed")
        pid = self._spawn(spec, layout)
        try:
            with FirecrackerApi(layout.host(API_SOCK)) as api:
                api.load_snapshot(
                    layout.vmm(SNAPSHOT_STATE),
                    layout.vmm(SNAPSHOT_MEM),
                    resume_vm=True,
                    network_overrides={IFACE: spec.tap},
                )
        except VmmError:
            self.stop(spec)
            raise
        for name in SNAPSHOT_FILES:
            layout.host(name).unlink()
        return pid

    def has_snapshot(self, spec: MachineSpec) -> bool:
        layout = self._layout(spec)
        return all(layout.host(name).exists() for name in SNAPSHOT_FILES)

    @cached_property
    def _exec_file(self) -> Path:
        """The binary as the jailer sees it: it names the jail after the resolved file."""
        return Path(shutil.which(self.binary) or self.binary).resolve()

    def _layout(self, spec: MachineSpec) -> _Layout:
        if not self.jailer:
            return _Layout(spec.workdir)
        if not JAILER_ID.fullmatch(spec.vm_id):
            raise VmmError(f"the jailer needs a VM id of 1-64 letters, digits or '-': {spec.vm_id}")
        jail = spec.workdir / "jail" / self._exec_file.name / spec.vm_id / "root"
        return _Layout(spec.workdir, jail)

    def _give(self, layout: _Layout, src: Path, name: str) -> str:
        """The path Firecracker opens `src` by: itself, or a hard link inside the jail."""
        if layout.root is None:
            return str(src)
        dst = layout.host(name)
        dst.unlink(missing_ok=True)  # relink: the source may have been replaced since
        try:
            os.link(src, dst)
        except OSError as e:
            raise VmmError(
                f"cannot hard-link {src} into the jail {layout.root} (the jailer needs it on "
                f"the same filesystem as the VM's workdir): {e}"
            ) from e
        return layout.vmm(name)

    def _argv(self, spec: MachineSpec, layout: _Layout) -> list[str]:
        if layout.root is None:
            return [*nsenter(spec.netns), self.binary, "--api-sock", layout.vmm(API_SOCK)]
        netns = ["--netns", f"/var/run/netns/{spec.netns}"] if spec.netns else []
        return [
            self.jailer,
            "--id", spec.vm_id,
            "--exec-file", str(self._exec_file),
            "--uid", "0",
            "--gid", "0",
            "--chroot-base-dir", str(spec.workdir / "jail"),
            *netns,
            "--",
            "--api-sock", layout.vmm(API_SOCK),
        ]  # fmt: skip

    def _spawn(self, spec: MachineSpec, layout: _Layout) -> int:
        """Start the process with the console appended to the log; wait for its API socket."""
        sock = layout.host(API_SOCK)
        if len(os.fsencode(sock)) > SUN_PATH_MAX:
            raise VmmError(f"API socket path is too long for a Unix socket: {sock}")
        argv = self._argv(spec, layout)
        sock.unlink(missing_ok=True)  # Firecracker refuses to start on a leftover socket
        if layout.root is not None:
            # The jailer mknods /dev/kvm and /dev/net/tun in the jail on every run.
            shutil.rmtree(layout.root / "dev", ignore_errors=True)
        try:
            with open(spec.console_log, "ab") as console:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C to the controller must not reach VMs
                )
        except OSError as e:
            raise VmmError(f"cannot run {argv[0]}: {e}") from e
        self._children[proc.pid] = proc
        fileio.write_atomic(spec.pid_file, f"{proc.pid}\n".encode(), 0o644)

        def api_ready() -> bool:
            if proc.poll() is not None:
                raise VmmError(
                    f"{argv[0]} exited with status {proc.returncode} before opening its API "
                    f"socket; see {spec.console_log}"
                )
            return _accepts(sock)

        try:
            wait_for(api_ready, SOCKET_TIMEOUT, f"the Firecracker API socket {sock}")
        except VmmError:
            self.stop(spec)
            raise
        except Timeout as e:
            self.stop(spec)
            raise VmmError(str(e)) from e
        return proc.pid


def _reflink(src: Path, dst: Path) -> None:
    """Clone `src` to `dst` sharing its blocks: a full rootfs copy per VM is never made."""
    if not src.is_file():
        raise VmmError(f"golden rootfs {src} is missing")
    partial = dst.with_name(dst.name + ".partial")
    done = subprocess.run(
        ["cp", "--reflink=always", "--", str(src), str(partial)], capture_output=True, text=True
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise VmmError(
            "Firecracker needs a reflink-capable filesystem (XFS, btrfs) for HEARTH_HOME, "
            f"holding both the images and the VMs: cannot clone {src} to {dst}: "
            f"{done.stderr.strip()}"
        )
    os.replace(partial, dst)


def _accepts(sock: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(sock))
        except (FileNotFoundError, ConnectionRefusedError):
            return False
    return True


def _fault_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["fault_message"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip() or response.reason_phrase
