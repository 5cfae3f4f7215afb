"""A real Firecracker boots the CLI image, hibernates and restores; skipped where it cannot run.

Firecracker needs its binary and a /dev/kvm that runs guests (it has no TCG fallback, unlike
QEMU). The TAP lives in a network namespace this test makes and deletes.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from hearth import config
from hearth.vmm.base import BootImage, MachineSpec, VmmError, pid_alive
from hearth.vmm.firecracker import FirecrackerDriver
from hearth.waiting import wait_for

pytestmark = [pytest.mark.vm, pytest.mark.netns]

KVM_CREATE_VM = 0xAE01  # _IO(KVMIO, 0x01)
TAP = "hthtest0"


def kvm_creates_vms() -> bool:
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.close(fcntl.ioctl(kvm, KVM_CREATE_VM, 0))
    except OSError:
        return False
    finally:
        os.close(kvm)
    return True


@pytest.fixture
def spec() -> Iterator[MachineSpec]:
    """A VM of the CLI image with its TAP in a fresh namespace; skips what cannot run here."""
    if not shutil.which("firecracker") or not kvm_creates_vms():
        pytest.skip("needs the firecracker binary and a working /dev/kvm")
    home = config.load().home
    image = BootImage.from_dir(home / "images" / "cli")
    if not all(p.is_file() for p in (image.vmlinux, image.initrd, image.rootfs)):
        pytest.skip(f"needs the CLI image in {home / 'images' / 'cli'}; build it first")
    netns = f"hearth-test-{secrets.token_hex(4)}"
    workdir = home / "vms" / netns
    workdir.mkdir(parents=True)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "tuntap", "add", "dev", TAP, "mode", "tap"], check=True)
        seed = workdir / "seed.img"
        seed.write_bytes(bytes(1 << 20))
        yield MachineSpec(
            vm_id=netns,
            workdir=workdir,
            image=image,
            seed=seed,
            cmdline="console=ttyS0 reboot=k panic=1",
            tap=TAP,
            mac="06:00:c0:a8:64:02",
            vcpus=1,
            memory_mib=256,
            netns=netns,
        )
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=True)
        shutil.rmtree(workdir)


def test_boot_hibernate_restore(spec: MachineSpec) -> None:
    driver = FirecrackerDriver()
    try:
        try:
            booted = driver.start(spec)
        except VmmError as e:
            if "reflink" not in str(e):
                raise
            pytest.skip(f"needs a reflink-capable filesystem (XFS, btrfs) for {spec.workdir}")
        wait_for(
            lambda: "Linux version" in spec.console_log.read_text(errors="replace"),
            30,
            "the guest kernel's banner on the serial console",
        )
        driver.hibernate(spec)
        assert not pid_alive(booted)
        restored = driver.restore(spec)
        assert pid_alive(restored)
    finally:
        driver.stop(spec)
