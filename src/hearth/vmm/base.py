"""The one small interface every VMM driver implements.

Drivers know nothing of sessions, users or the database: they turn a `MachineSpec` into a
running VMM process and back. Everything a driver writes lives in `spec.workdir`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hearth.errors import HearthError


class VmmError(HearthError):
    """A VMM could not do what was asked; the message says what and why."""


@dataclass(frozen=True)
class BootImage:
    """The artefacts of a golden image that a VM boots from."""

    vmlinux: Path  # uncompressed ELF kernel, booted through its PVH entry
    vmlinuz: Path  # the distribution's compressed bzImage, for other loaders
    initrd: Path
    rootfs: Path  # golden ext4, never written to

    @classmethod
    def from_dir(cls, d: Path) -> BootImage:
        return cls(d / "vmlinux", d / "vmlinuz", d / "initrd", d / "rootfs.ext4")


@dataclass(frozen=True)
class MachineSpec:
    """Everything a driver needs to boot one VM."""

    vm_id: str
    workdir: Path  # $HEARTH_HOME/vms/<id>/, exists before start()
    image: BootImage
    seed: Path  # small raw drive the guest reads its secrets from (/dev/vdb)
    cmdline: str
    tap: str
    mac: str
    vcpus: int = 2
    memory_mib: int = 1024
    netns: str = ""  # network namespace the TAP lives in ("" = the caller's)
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def pid_file(self) -> Path:
        return self.workdir / "vmm.pid"


class Driver(Protocol):
    name: str
    programs: tuple[str, ...]  # the executables its VMM processes run as

    @property
    def own_memory_mib(self) -> int:
        """What a VMM process holds beside its guest's memory, MiB: what admission counts
        (hearth.core.capacity). Known without starting anything, as admission cannot wait."""
        ...

    def start(self, spec: MachineSpec) -> int:
        """Create the VM's disk overlay, spawn the VMM, boot the guest; return the VMM pid.

        Returns once the VMM reports the guest running (not once the guest is ready).
        """

    def stop(self, spec: MachineSpec) -> None:
        """Stop the VMM process if it runs. Idempotent."""

    def hibernate(self, spec: MachineSpec) -> None:
        """Pause the guest, snapshot it into `spec.workdir`, then stop the VMM process.

        The snapshot appears complete or not at all, before the process stops: a failure leaves
        the VM running and no partial snapshot. The VM keeps its TAP and disk, which the
        snapshot refers to.
        """

    def restore(self, spec: MachineSpec) -> int:
        """Spawn a VMM from the snapshot, run the guest on, consume the snapshot; the pid.

        Once the guest runs, its disk moves on from what the snapshot's memory knows, so the
        snapshot is removed then. A restore that fails before keeps the snapshot.
        """

    def has_snapshot(self, spec: MachineSpec) -> bool:
        """Whether a complete snapshot that no guest has run on from is in `spec.workdir`."""


def read_pid(spec: MachineSpec) -> int | None:
    try:
        return int(spec.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `timeout`; waits on the process's pidfd, reaps our child."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if select.select([pidfd], [], [], timeout)[0]:
                break
    finally:
        os.close(pidfd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def running_pid(spec: MachineSpec) -> int | None:
    """The VM's VMM pid if that process is alive and really is this VM's VMM.

    Both drivers name files of the VM's directory on their command line, which tells a live
    VMM from a recycled PID.
    """
    pid = read_pid(spec)
    if pid is None or not pid_alive(pid):
        return None
    return pid if references(pid, spec.workdir) else None


def references(pid: int, path: Path) -> bool:
    """Whether the process's command line names `path` or something under it."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return str(path) in argv
