"""The QEMU driver's hibernation, in the parts that need no running QEMU."""

from __future__ import annotations

from pathlib import Path

import pytest

from hearth.vmm.base import BootImage, MachineSpec, VmmError
from hearth.vmm.qemu import QemuDriver, migration_completed


def machine(tmp_path: Path) -> MachineSpec:
    return MachineSpec(
        vm_id="vm-1",
        workdir=tmp_path,
        image=BootImage.from_dir(tmp_path / "img"),
        seed=tmp_path / "seed.img",
        cmdline="console=ttyS0",
        tap="hth0",
        mac="06:00:c0:a8:64:02",
    )


def test_a_restore_runs_the_boot_command_line_with_only_the_incoming_migration_added(
    tmp_path: Path,
) -> None:
    """Same TAP, MAC, disk overlay and seed: the snapshot's devices must find their backends."""
    driver, spec = QemuDriver(accel="tcg"), machine(tmp_path)
    assert driver.argv(spec, incoming="fd:7") == [*driver.argv(spec), "-incoming", "fd:7"]


def test_free_page_reporting_is_a_balloon_device_the_restore_has_too(tmp_path: Path) -> None:
    spec = machine(tmp_path)
    balloon = "virtio-balloon-pci,id=balloon0,free-page-reporting=on"
    argv = QemuDriver(accel="tcg").argv(spec, incoming="fd:7")
    assert argv[argv.index(balloon) - 1] == "-device"
    assert balloon not in QemuDriver(accel="tcg", free_page_reporting=False).argv(spec)


def test_restore_without_a_snapshot_refuses_and_starts_nothing(tmp_path: Path) -> None:
    driver, spec = QemuDriver(accel="tcg"), machine(tmp_path)
    assert not driver.has_snapshot(spec)
    with pytest.raises(VmmError, match="no snapshot to restore"):
        driver.restore(spec)
    assert not spec.pid_file.exists()


@pytest.mark.parametrize(("answer", "done"), [
    ({}, False),  # between `migrate` and QEMU's first report
    ({"status": "setup"}, False),
    ({"status": "active", "ram": {"transferred": 1}}, False),
    ({"status": "device"}, False),
    ({"status": "completed"}, True),
])  # fmt: skip
def test_a_migration_is_done_only_once_completed(answer: dict, done: bool) -> None:
    assert migration_completed(answer) is done


def test_a_failed_migration_says_why() -> None:
    with pytest.raises(VmmError, match="migration failed: Unable to write to file: No space"):
        migration_completed(
            {"status": "failed", "error-desc": "Unable to write to file: No space left on device"}
        )
    with pytest.raises(VmmError, match="migration cancelled: QEMU gave no reason"):
        migration_completed({"status": "cancelled"})
