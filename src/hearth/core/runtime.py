"""Wiring: settings in, a ready VmManager out. The one place that picks concrete parts."""

from __future__ import annotations

from hearth.config import Settings
from hearth.core.vms import VmManager
from hearth.net.topology import VmNetwork
from hearth.store.db import Database
from hearth.vmm.firecracker import FirecrackerDriver
from hearth.vmm.qemu import QemuDriver


def open_database(settings: Settings) -> Database:
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    db.migrate()
    return db


def vm_manager(settings: Settings) -> VmManager:
    drivers = {
        "qemu": QemuDriver(settings.qemu_accel, probe_cache=settings.home / "kvm-probe.json"),
        "firecracker": FirecrackerDriver(settings.firecracker_bin, settings.jailer_bin),
    }
    return VmManager(settings, open_database(settings), VmNetwork.from_settings(settings), drivers)
