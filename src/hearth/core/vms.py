"""VM lifecycle: every VM is a database record moved through its states by plans of steps
(hearth.core.vm_plans); this module runs them and records how they end.

A plan that fails leaves the VM in the state its failure implies (a failed create: failed,
its VMM stopped; a failed snapshot: still ready; a failed resume: hibernated while the
snapshot is whole) with the step and the cause recorded.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from sqlalchemy import select

from hearth import metrics
from hearth.config import Settings
from hearth.core import CoreError, machine
from hearth.core.agent_client import AgentClient
from hearth.core.plans import StepFailed, run_plan
from hearth.core.ports import (
    AgentConnector,
    AgentRefused,
    AgentUnreachable,
    GuestAgent,
    Network,
)
from hearth.core.vm_plans import create_plan, destroy_plan, hibernate_plan, resume_plan
from hearth.guest import trust
from hearth.image.builder import read_manifest
from hearth.net.addressing import tap_name
from hearth.net.ippool import IpPool
from hearth.store.db import Database
from hearth.store.models import Vm, VmState
from hearth.vmm.base import Driver, MachineSpec, VmmError, pid_alive, running_pid
from hearth.waiting import wait_for

LIVE_STATES = (
    VmState.requested,
    VmState.booting,
    VmState.ready,
    VmState.hibernating,
    VmState.hibernated,
    VmState.resuming,
    VmState.stopping,
)
MANIFEST = "manifest.json"  # in an image's directory, written last by its build
# States a plan passes through: the process running it (owner_pid) is the only one to act.
IN_PROGRESS = (VmState.requested, VmState.booting, VmState.hibernating, VmState.resuming)


class VmError(CoreError):
    """A VM could not be made, found or moved as asked."""


class VmmExited(VmmError):
    """The VMM process ended before the guest's agent answered."""


def http_agent(vm: Vm) -> GuestAgent:
    """The guest's own agent, over HTTP to its address."""
    return AgentClient(vm.ip, vm.agent_token)


OnStep = Callable[[str], None]


def _quiet(name: str) -> None:
    pass


class VmManager:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        network: Network,
        drivers: dict[str, Driver],
        agents: AgentConnector = http_agent,
        vmm: str | None = None,
    ):
        self.settings = settings
        self.db = db
        self.network = network
        self.drivers = drivers
        self.agents = agents
        self.vmm = vmm or settings.vmm  # the driver new VMs get
        self.pool = IpPool(db, settings.gateway)
        self._guard = threading.Lock()
        self._plans: dict[str, threading.RLock] = {}  # VM id -> held while a plan runs on it
        # Told a VM's id once its memory is free (destroyed or hibernated): capacity's waiters.
        self.on_freed: list[Callable[[str], None]] = []

    def _one_plan_at_a_time(self, vm_id: str) -> threading.RLock:
        """The VM's lock in this process: two plans on one VM (a sign-in's cleanup and an
        API destroy, say) would each find the other's work half done."""
        with self._guard:
            return self._plans.setdefault(vm_id, threading.RLock())

    # -- queries -------------------------------------------------------------------------

    def get(self, vm_id: str) -> Vm:
        with self.db.session() as s:
            vm = s.get(Vm, vm_id)
        if vm is None:
            raise VmError(f"no VM {vm_id!r}")
        return vm

    def list(self, include_destroyed: bool = False) -> list[Vm]:
        with self.db.session() as s:
            query = select(Vm).order_by(Vm.created_at)
            if not include_destroyed:
                query = query.where(Vm.state != VmState.destroyed)
            return list(s.scalars(query))

    def spec(self, vm: Vm) -> MachineSpec:
        return machine.machine_spec(self.settings, vm)

    def workdir(self, vm_id: str) -> Path:
        return machine.workdir(self.settings, vm_id)

    def agent(self, vm: Vm) -> GuestAgent:
        return self.agents(vm)

    def vmm_alive(self, vm: Vm) -> bool:
        return running_pid(self.spec(vm)) is not None

    def has_snapshot(self, vm: Vm) -> bool:
        return self.drivers[vm.vmm].has_snapshot(self.spec(vm))

    def console_archive(self, vm_id: str) -> Path:
        """Where a destroyed VM's console log is kept, for the record."""
        return self.settings.home / "logs" / f"{vm_id}.console.log"

    def client_env(self) -> dict[str, str]:
        """Environment for the CLIs run in a VM: where the extra CAs are, when there are."""
        return dict(trust.ENV) if self.settings.vm_ca_file else {}

    # -- create ----------------------------------------------------------------------------

    def create(
        self,
        image: str,
        on_step: OnStep = _quiet,
        user_id: str | None = None,
        seed_extras: Mapping[str, str] | None = None,
    ) -> Vm:
        """Boot a VM from `image` and return it once its agent answers; `user_id` marks a
        user's CLI VM, `seed_extras` are secrets for the guest beside its agent token."""
        vm_id = self.record(image, user_id)
        self.finish_create(vm_id, on_step, seed_extras)
        return self.get(vm_id)

    def record(self, image: str, user_id: str | None = None) -> str:
        """The new VM's record (requested, owned by this process); its id. Its create plan
        is then finish_create's."""
        if read_manifest(self.settings.images_dir / image) is None:
            raise VmError(f"image {image!r} is not built (run: hearth image build {image})")
        vm_id = uuid.uuid4().hex[:12]
        with self.db.session() as s:
            s.add(
                Vm(
                    id=vm_id,
                    image=image,
                    vmm=self.vmm,
                    tap=tap_name(self.settings.tap_prefix, vm_id),
                    netns=self.network.netns,
                    agent_token=secrets.token_urlsafe(32),
                    owner_pid=os.getpid(),
                    user_id=user_id,
                    image_build=image_build(self.settings, image),
                )
            )
            s.commit()
        return vm_id

    def finish_create(
        self, vm_id: str, on_step: OnStep = _quiet, seed_extras: Mapping[str, str] | None = None
    ) -> None:
        """Run (or finish) the create plan of a VM; on failure record the step and stop it."""
        with self._one_plan_at_a_time(vm_id):
            try:
                run_plan(create_plan(seed_extras), self, vm_id, on_step)
            except StepFailed as e:
                self.update(vm_id, state=VmState.failed, failed_step=e.step, error=str(e.cause))
                self.stop_vmm(self.get(vm_id))
                raise self._failure(vm_id, e) from e

    def wait_for_boot(self, vm_id: str) -> None:
        """Wait for a booting guest's agent. A guest that dies first is booted once more on
        the same disk and address, and its boot seconds count both boots (see
        docs/boot-retry.md: under QEMU's multi-threaded TCG a boot died about once in a
        hundred)."""
        try:
            self.wait_for_agent(self.get(vm_id))
        except VmmExited:
            vm = self.get(vm_id)
            self.stop_vmm(vm)  # the dead VMM's pid file and QMP socket
            with open(self.workdir(vm_id) / machine.CONSOLE, "a") as console:
                console.write("hearth: the VMM exited before the agent answered; booting again\n")
            self.start_vmm(vm)
            self.wait_for_agent(self.get(vm_id))

    def wait_for_agent(self, vm: Vm) -> None:
        """Poll the agent's readiness until it answers, the VMM dies, or the deadline passes;
        record the seconds from the VMM's start (a boot or a restore) to that first answer."""
        with self.agent(vm) as agent:

            def answered() -> bool:
                if not self.vmm_alive(vm):
                    raise VmmExited("the VMM process exited before the agent answered")
                try:
                    agent.ready(timeout=2)
                except (AgentUnreachable, AgentRefused):
                    return False
                return True

            wait_for(answered, self.settings.boot_timeout, "the guest agent", interval=0.02)
        seconds = time_since(self.get(vm.id).boot_started)
        self.update(vm.id, boot_seconds=seconds)
        metrics.agent_answered(vm, seconds)

    # -- hibernate and resume --------------------------------------------------------------

    def hibernate(self, vm_id: str, on_step: OnStep = _quiet) -> None:
        """Snapshot a ready VM into its directory and end its VMM.

        It keeps its TAP and address: the guest's network configuration is in the snapshot.
        A VM left hibernating by a crash is finished the same way.
        """
        with self._one_plan_at_a_time(vm_id):
            vm = self.get(vm_id)
            if vm.state == VmState.hibernated:
                return
            self._require(vm, VmState.ready, VmState.hibernating)
            try:
                run_plan(hibernate_plan(), self, vm_id, on_step)
                self._freed(vm_id)
            except StepFailed as e:
                # A snapshot that failed leaves the guest running: as ready as before.
                alive = self.vmm_alive(vm)
                self.update(
                    vm_id,
                    state=VmState.ready if alive else VmState.failed,
                    failed_step=e.step,
                    error=str(e.cause),
                )
                raise self._failure(vm_id, e) from e

    def resume(self, vm_id: str, on_step: OnStep = _quiet) -> Vm:
        """Restore a hibernated VM and return it once its agent answers.

        Its `boot_seconds` are then the seconds from the restore's start to the agent's first
        answer. A resume that fails goes back to hibernated while the snapshot is whole.
        """
        with self._one_plan_at_a_time(vm_id):
            vm = self.get(vm_id)
            if vm.state == VmState.ready:
                return vm
            self._require(vm, VmState.hibernated, VmState.resuming)
            if vm.image_build != image_build(self.settings, vm.image):
                # Its disk overlay would wake on the new build's rootfs beneath the old one's
                # cached files: a guest that corrupts its own filesystem.
                raise VmError(
                    f"VM {vm_id} cannot resume: its {vm.image} image was rebuilt since it "
                    "hibernated"
                )
            try:
                run_plan(resume_plan(), self, vm_id, on_step)
            except StepFailed as e:
                self.abandon_resume(vm_id)
                self.update(vm_id, failed_step=e.step, error=str(e.cause))
                raise self._failure(vm_id, e) from e
            return self.get(vm_id)

    def abandon_resume(self, vm_id: str) -> None:
        """End a resume that did not reach the agent: stop any half-restored VMM, and go back
        to hibernated if the snapshot is still whole (no guest ran on from it), else failed."""
        with self._one_plan_at_a_time(vm_id):
            vm = self.get(vm_id)
            self.stop_vmm(vm)
            state = VmState.hibernated if self.has_snapshot(vm) else VmState.failed
            self.update(vm_id, pid=None, state=state)

    # -- destroy ---------------------------------------------------------------------------

    def destroy(self, vm_id: str, on_step: OnStep = _quiet) -> None:
        """Remove everything the VM holds. Safe to repeat, and on a half-created VM; refused
        while another live Hearth process runs a plan on it."""
        with self._one_plan_at_a_time(vm_id):
            vm = self.get(vm_id)
            _refuse_if_busy_elsewhere(vm)
            if vm.state != VmState.failed:
                self.update(vm_id, state=VmState.stopping)
            run_plan(destroy_plan(), self, vm_id, on_step)
        self._freed(vm_id)

    # -- what the steps use ----------------------------------------------------------------

    def start_vmm(self, vm: Vm) -> None:
        self.update(vm.id, pid=self.drivers[vm.vmm].start(self.spec(vm)))

    def stop_vmm(self, vm: Vm) -> None:
        self.drivers[vm.vmm].stop(self.spec(vm))

    def update(self, vm_id: str, **fields) -> None:
        self.db.update(Vm, vm_id, **fields)

    def _freed(self, vm_id: str) -> None:
        for tell in self.on_freed:
            tell(vm_id)

    def _require(self, vm: Vm, *states: VmState) -> None:
        """Refuse a VM in another state, or one another live Hearth process is working on."""
        if vm.state not in states:
            raise VmError(f"VM {vm.id} is {vm.state}, not {' or '.join(states)}")
        _refuse_if_busy_elsewhere(vm)

    def _failure(self, vm_id: str, failed: StepFailed) -> VmError:
        console = self.workdir(vm_id) / machine.CONSOLE
        return VmError(f"VM {vm_id}: {failed} (console: {console})")


def image_build(settings: Settings, image: str) -> str | None:
    """Which build of `image` is in place: a digest of its manifest, which every build
    rewrites (None: not built)."""
    try:
        manifest = (settings.images_dir / image / MANIFEST).read_bytes()
    except FileNotFoundError:
        return None
    return hashlib.sha256(manifest).hexdigest()[:32]


def busy_elsewhere(vm: Vm) -> bool:
    """Whether another live Hearth process is running a plan on this VM (owner_pid)."""
    return (
        vm.state in IN_PROGRESS
        and vm.owner_pid is not None
        and vm.owner_pid != os.getpid()
        and pid_alive(vm.owner_pid)
    )


def _refuse_if_busy_elsewhere(vm: Vm) -> None:
    if busy_elsewhere(vm):
        raise VmError(f"VM {vm.id} is {vm.state} in Hearth process {vm.owner_pid}")


def time_since(started: float | None) -> float | None:
    return time.time() - started if started else None
