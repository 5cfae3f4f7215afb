"""Wiring: settings in, ready parts out. The one place that picks concrete parts."""

from __future__ import annotations

from dataclasses import dataclass

from hearth.config import Settings
from hearth.core.auth_sessions import AuthSessions
from hearth.core.capacity import Capacity
from hearth.core.cli_vms import CliVms
from hearth.core.egress import Egress
from hearth.core.prompts import Prompts
from hearth.core.vms import VmManager
from hearth.core.warm_pool import WarmPool
from hearth.core.webhooks import WebhookWorker
from hearth.net.topology import VmNetwork
from hearth.store.credentials import CredentialStore
from hearth.store.crypto import Keyring
from hearth.store.db import Database
from hearth.store.webhook_endpoints import WebhookEndpoints
from hearth.vmm.firecracker import FirecrackerDriver
from hearth.vmm.qemu import QemuDriver


@dataclass(frozen=True)
class Controller:
    settings: Settings
    db: Database
    vms: VmManager
    credentials: CredentialStore
    sessions: AuthSessions
    cli_vms: CliVms
    prompts: Prompts
    webhooks: WebhookEndpoints
    pool: WarmPool
    capacity: Capacity


def open_database(settings: Settings) -> Database:
    settings.home.mkdir(parents=True, exist_ok=True)
    db = Database(settings.db_url)
    db.migrate()
    return db


def vm_manager(settings: Settings, db: Database | None = None) -> VmManager:
    drivers = {
        "qemu": QemuDriver(
            settings.qemu_accel,
            probe_cache=settings.home / "kvm-probe.json",
            tb_size_mib=settings.qemu_tb_size_mib,
            free_page_reporting=settings.free_page_reporting,
        ),
        "firecracker": FirecrackerDriver(
            settings.firecracker_bin,
            settings.jailer_bin,
            free_page_reporting=settings.free_page_reporting,
        ),
    }
    return VmManager(
        settings, db or open_database(settings), VmNetwork.from_settings(settings), drivers
    )


def controller(settings: Settings, vms: VmManager | None = None) -> Controller:
    """The controller's parts; on `vms` (and its database) when given, else on this host's."""
    vms = vms or vm_manager(settings)
    db = vms.db
    keyring = Keyring.from_settings(settings)
    credentials = CredentialStore(db, keyring)
    capacity = Capacity(settings, vms)
    cli_vms = CliVms(settings, vms, credentials, capacity)
    pool = WarmPool(settings, vms, capacity)
    sessions = AuthSessions(
        settings, db, vms, credentials, capacity, on_stored=cli_vms.signed_in, pool=pool
    )
    prompts = Prompts(settings, db, cli_vms)
    webhooks = WebhookEndpoints(db, keyring)
    return Controller(
        settings, db, vms, credentials, sessions, cli_vms, prompts, webhooks, pool, capacity
    )


def start_webhooks(ctl: Controller) -> WebhookWorker:
    """The thread that posts the outbox's deliveries, started; stop() it on shutdown."""
    worker = WebhookWorker(ctl.settings, ctl.db, ctl.webhooks)
    worker.start()
    return worker


def egress(ctl: Controller) -> Egress:
    """The VMs' DNS responder and egress proxy, for the controller that serves the API."""
    return Egress(ctl.settings, ctl.db, ctl.vms.network, ctl.sessions.egress_failed)
