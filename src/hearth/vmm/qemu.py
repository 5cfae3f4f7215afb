"""QEMU driver: KVM where a probe shows a guest really runs, else TCG; controlled over QMP.

The disk is a qcow2 overlay over the golden rootfs (never a full copy); the serial console
goes to the VM's console.log; the NIC is virtio-net on the VM's TAP. Hibernation is a
migration of the stopped guest into a file, and restore an incoming migration from that file
into a fresh process with the same command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path

from qemu.qmp import QMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from hearth.guest import fileio
from hearth.net.namespace import nsenter
from hearth.vmm.base import MachineSpec, VmmError, kill_pid, running_pid
from hearth.waiting import Timeout, wait_for

QEMU = "qemu-system-x86_64"
DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL", "--")  # util-linux, on every Debian
# Under TCG: x86-64-v2 (what the CLIs need) plus RDRAND, and no more: docs/guest-boot.md.
TCG_CPU = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+rdrand"
SNAPSHOT = "snapshot.migration"
QMP_TIMEOUT = 30.0
# What QEMU holds beside its guest's memory, MiB, measured from /proc/PID/smaps under TCG on
# this project's images (bench/vm_memory.py; the README's capacity section): a browser VM at
# its sign-in page held 558 MiB of guest memory, 138 MiB of executable mappings (the
# translation cache, capped at 128 MiB there, and QEMU's own code) and 113 MiB besides (the
# loaded kernel, device and block buffers, QEMU's heap).
QEMU_OWN_MIB = 128
QEMU_DEFAULT_TB_MIB = 1024  # the translation cache TCG keeps without a tb-size
MIGRATION_TIMEOUT = 120.0  # writing or reading guest memory scales with its size
# Bytes per second: QEMU's default cap (128 MiB/s) would set the pace of a hibernation.
UNCAPPED = 1 << 40
# MiB of translated code TCG keeps (-accel tcg,tb-size=N). QEMU's own default is 1 GiB, and
# a guest running Firefox or Node.js fills most of it. Measured (bench/vm_memory.py, VmRSS,
# 1 GiB guests, 2 cores): a browser VM at its sign-in page held 1988 MiB uncapped, 1111 MiB
# at 256, 949 at 128, 870 at 64; a CLI VM after the Node.js CLIs' start 1352, 968, 816, 742.
# A second round, 1 GiB against 256: 1907 against 1094 MiB at the sign-in page. Times moved
# with the machine's other load, not with the cap: boot to agent 12.8-19.7 s in no order of
# size, start to sign-in page 144 s against 166 s, the Node.js CLIs' start 58 s against 49 s.
TB_SIZE_MIB = 256
# A boot sector that writes 0x31 to the isa-debug-exit port: QEMU then exits with 99.
_PROBE_SECTOR = bytes([0xB0, 0x31, 0xE6, 0xF4, 0xF4, 0xEB, 0xFD]).ljust(510, b"\0") + b"\x55\xaa"
_PROBE_EXIT = (0x31 << 1) | 1


def kvm_runs_guests(timeout: float = 10.0, device: str = "/dev/kvm") -> bool:
    """Whether a guest actually runs under KVM here: /dev/kvm can exist while guests hang."""
    if not os.access(device, os.R_OK | os.W_OK):
        return False
    with tempfile.NamedTemporaryFile(suffix=".img") as sector:
        sector.write(_PROBE_SECTOR)
        sector.flush()
        argv = [
            # Killed with the process that runs the probe: a guest hangs under a KVM that
            # cannot run it, and a controller stopped meanwhile left that QEMU running.
            *DIE_WITH_PARENT,
            QEMU,
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-smp",
            "2",
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-drive",
            f"file={sector.name},format=raw,if=ide",
        ]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
    return proc.returncode == _PROBE_EXIT


class QemuDriver:
    name = "qemu"
    programs = ("qemu-system-x86_64",)

    def __init__(
        self,
        accel: str = "auto",
        probe_cache: Path | None = None,
        tb_size_mib: int = TB_SIZE_MIB,
        free_page_reporting: bool = True,
    ):
        self._accel = accel
        self._probe_cache = probe_cache
        self.tb_size_mib = tb_size_mib  # under TCG; 0: QEMU's own default
        self.free_page_reporting = free_page_reporting

    @property
    def accel(self) -> str:
        """kvm or tcg; the probe's answer is cached per host boot."""
        known = self.known_accel
        if known is not None:
            return known
        cached = {"boot_id": _boot_id(), "accel": "kvm" if kvm_runs_guests() else "tcg"}
        if self._probe_cache:
            self._probe_cache.parent.mkdir(parents=True, exist_ok=True)
            self._probe_cache.write_text(json.dumps(cached))
        self._accel = cached["accel"]
        return self._accel

    @property
    def own_memory_mib(self) -> int:
        """QEMU's own and, under TCG, its translation cache. The accelerator is not probed
        here (it takes seconds): until it is known, it is counted as TCG."""
        if self.known_accel == "kvm":
            return QEMU_OWN_MIB
        return QEMU_OWN_MIB + (self.tb_size_mib or QEMU_DEFAULT_TB_MIB)

    @property
    def known_accel(self) -> str | None:
        """kvm or tcg when known without the probe (which takes seconds): set, probed
        already, or cached for this host boot; else None."""
        if self._accel == "auto":
            cached = _read_json(self._probe_cache) if self._probe_cache else {}
            if cached.get("boot_id") != _boot_id():
                return None
            self._accel = cached["accel"]
        return self._accel

    def argv(self, spec: MachineSpec, incoming: str | None = None) -> list[str]:
        accel = "kvm" if self.accel == "kvm" else f"tcg,thread=multi,tb-size={self.tb_size_mib}"
        argv = [
            QEMU,
            "-name",
            f"hearth-{spec.vm_id}",
            "-machine",
            "q35",
            "-accel",
            accel,
            "-cpu",
            "host" if self.accel == "kvm" else TCG_CPU,
            "-smp",
            str(spec.vcpus),
            "-m",
            str(spec.memory_mib),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-chardev",
            f"file,id=console,path={spec.console_log},append=on",
            "-serial",
            "chardev:console",
            # The uncompressed ELF, booted through its PVH entry point: under emulation,
            # decompressing the bzImage would take half a second of every boot.
            "-kernel",
            str(spec.image.vmlinux),
            "-initrd",
            str(spec.image.initrd),
            "-append",
            spec.cmdline,
            "-drive",
            f"file={self.disk(spec)},if=none,id=root,format=qcow2,discard=unmap",
            "-device",
            "virtio-blk-pci,drive=root",
            "-drive",
            f"file={spec.seed},if=none,id=seed,format=raw,readonly=on",
            "-device",
            "virtio-blk-pci,drive=seed",
            "-netdev",
            f"tap,id=net0,ifname={spec.tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=net0,mac={spec.mac}",
            "-object",
            "rng-random,id=rng0,filename=/dev/urandom",
            "-device",
            "virtio-rng-pci,rng=rng0",
            "-qmp",
            f"unix:{self.qmp_socket(spec)},server=on,wait=off",
        ]
        if self.free_page_reporting:
            # The guest reports the memory it frees (in 2 MiB blocks, through the initrd's
            # virtio_balloon) and QEMU drops it from its RSS: a CLI VM idle after the
            # Node.js CLIs held 785 MiB with it and 908 without (bench/vm_memory.py).
            argv += ["-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=on"]
        if incoming:
            argv += ["-incoming", incoming]
        return argv

    @staticmethod
    def disk(spec: MachineSpec) -> Path:
        return spec.workdir / "disk.qcow2"

    @staticmethod
    def qmp_socket(spec: MachineSpec) -> Path:
        return spec.workdir / "qmp.sock"

    @staticmethod
    def snapshot(spec: MachineSpec) -> Path:
        return spec.workdir / SNAPSHOT

    def start(self, spec: MachineSpec) -> int:
        self._make_disk(spec)
        return self._spawn(spec, self.argv(spec), expect=("running",))

    def stop(self, spec: MachineSpec) -> None:
        pid = running_pid(spec)
        if pid is not None:
            kill_pid(pid)
        spec.pid_file.unlink(missing_ok=True)
        self.qmp_socket(spec).unlink(missing_ok=True)

    def hibernate(self, spec: MachineSpec) -> None:
        """Stop the guest, migrate it into the snapshot file, then end the process.

        Stopping flushes the guest's disk, and a completed migration leaves the qcow2 overlay
        inactive (flushed, not written again), so the restoring process is the next to write
        it. QEMU writes into a file descriptor of ours, not an `exec:` pipe: it reports
        "completed" before it closes a pipe, while the reader may still be writing the file's
        tail. A failed migration lets the guest run on.
        """
        partial = self.snapshot(spec).with_name(SNAPSHOT + ".next")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with Monitor(spec) as qmp:
                if qmp("query-status").get("status") == "postmigrate":
                    # Saved already, and QEMU saves a guest once: it runs on past that snapshot.
                    self.snapshot(spec).unlink(missing_ok=True)
                    qmp("cont")
                qmp("stop")
                try:
                    qmp.give_fd("snapshot", fd)
                    qmp("migrate-set-parameters", **{"max-bandwidth": UNCAPPED})
                    qmp("migrate", uri="fd:snapshot")
                    wait_for(
                        lambda: migration_completed(qmp("query-migrate")),
                        MIGRATION_TIMEOUT,
                        "QEMU's migration to file",
                    )
                    os.fsync(fd)
                except (Timeout, OSError, VmmError) as e:
                    partial.unlink(missing_ok=True)
                    with contextlib.suppress(VmmError):
                        qmp("migrate_cancel")
                    qmp("cont")
                    raise VmmError(f"VM {spec.vm_id} was not hibernated and runs on: {e}") from e
        finally:
            os.close(fd)
        os.replace(partial, self.snapshot(spec))
        self.stop(spec)

    def restore(self, spec: MachineSpec) -> int:
        """A fresh QEMU with the VM's command line loads the snapshot; the guest then runs on."""
        snapshot = self.snapshot(spec)
        try:
            fd = os.open(snapshot, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VmmError(f"VM {spec.vm_id} has no snapshot to restore ({snapshot})") from None
        try:
            # The guest was stopped when it was saved, so it is loaded paused.
            pid = self._spawn(
                spec,
                self.argv(spec, incoming=f"fd:{fd}"),
                expect=("paused",),
                timeout=MIGRATION_TIMEOUT,
                pass_fds=(fd,),
            )
        finally:
            os.close(fd)
        try:
            self.qmp(spec, "cont")
        except VmmError:
            self.stop(spec)
            raise
        snapshot.unlink()
        return pid

    def has_snapshot(self, spec: MachineSpec) -> bool:
        return self.snapshot(spec).exists()

    def qmp(self, spec: MachineSpec, command: str, **args) -> dict:
        """One QMP command on a connection of its own."""
        with Monitor(spec) as qmp:
            return qmp(command, **args)

    def _make_disk(self, spec: MachineSpec) -> None:
        disk = self.disk(spec)
        if disk.exists():
            return
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "raw",
                "-b",
                str(spec.image.rootfs.resolve()),
                str(disk),
            ],
            check=True,
            capture_output=True,
        )

    def _spawn(
        self,
        spec: MachineSpec,
        argv: list[str],
        expect: tuple[str, ...],
        timeout: float = 30,
        pass_fds: tuple[int, ...] = (),
    ) -> int:
        """Start QEMU for the VM; its pid once QMP reports one of the `expect`ed states."""
        self.qmp_socket(spec).unlink(missing_ok=True)
        log = spec.workdir / "vmm.log"
        with log.open("ab") as out:
            # Its own session: the VM outlives a controller that dies, and the reconciler
            # adopts it or ends it by PID.
            proc = subprocess.Popen(
                nsenter(spec.netns) + argv,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        fileio.write_atomic(spec.pid_file, f"{proc.pid}\n".encode(), 0o644)

        def alive() -> bool:
            if proc.poll() is not None:
                raise VmmError(f"QEMU exited with {proc.returncode}: {_tail(log)}")
            return True

        try:
            wait_for(
                lambda: alive() and self.qmp_socket(spec).exists(),
                timeout=30,
                what="QEMU's QMP socket",
                interval=0.01,
            )
            wait_for(
                lambda: alive() and self._status(spec) in expect,
                timeout=timeout,
                what=f"QEMU to report {' or '.join(expect)}",
                interval=0.01,
            )
        except (Timeout, VmmError):
            kill_pid(proc.pid)
            raise
        return proc.pid

    def _status(self, spec: MachineSpec) -> str:
        try:
            return self.qmp(spec, "query-status").get("status", "")
        except VmmError:
            return ""


class Monitor:
    """One QMP connection to a VM's QEMU; a failure or an error answer raises VmmError."""

    def __init__(self, spec: MachineSpec):
        self.vm_id = spec.vm_id
        self._qmp = QEMUMonitorProtocol(str(QemuDriver.qmp_socket(spec)))
        self._qmp.settimeout(QMP_TIMEOUT)

    def __enter__(self) -> Monitor:
        try:
            self._qmp.connect(negotiate=True)
        except (OSError, QMPError) as e:
            self._qmp.close()
            raise VmmError(f"QMP on VM {self.vm_id}: {e}") from None
        return self

    def __exit__(self, *exc) -> None:
        self._qmp.close()

    def __call__(self, command: str, **args) -> dict:
        try:
            reply = self._qmp.cmd_raw(command, args or None)
        except (OSError, QMPError) as e:
            raise VmmError(f"QMP {command} on VM {self.vm_id}: {e}") from None
        if "error" in reply:
            raise VmmError(f"QMP {command} on VM {self.vm_id}: {reply['error'].get('desc')}")
        return reply.get("return", {})

    def give_fd(self, name: str, fd: int) -> None:
        """Pass QEMU a file descriptor, known as `name` to this connection's later commands."""
        try:
            self._qmp.send_fd_scm(fd)
        except (OSError, QMPError) as e:
            raise VmmError(f"QMP on VM {self.vm_id}: cannot pass a file descriptor: {e}") from None
        self("getfd", fdname=name)


def migration_completed(migration: dict) -> bool:
    """Whether a query-migrate answer says the migration completed; VmmError if it cannot."""
    status = migration.get("status")
    if status in ("failed", "cancelled"):
        raise VmmError(f"migration {status}: {migration.get('error-desc', 'QEMU gave no reason')}")
    return status == "completed"


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _tail(path: Path, lines: int = 10) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
