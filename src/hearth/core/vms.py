"""VM lifecycle: every VM is a database record moved through its states by plans of steps.

create: record -> lease an address -> lay out the VM's directory -> TAP -> boot -> agent ready.
hibernate: mark hibernating -> snapshot (the VMM ends) -> record hibernated.
resume: mark resuming -> TAP -> restore the snapshot -> agent ready.
destroy: stop the VMM -> TAP -> lease -> directory -> record destroyed.
Each step checks whether it still has work to do, so running a plan again after a crash
finishes the job instead of repeating it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import httpx
from sqlalchemy import select

from hearth.config import Settings
from hearth.core.agent_client import AgentClient
from hearth.core.plans import Step, StepFailed, run_plan
from hearth.guest import trust
from hearth.guest.ports import AGENT_PORT
from hearth.guest.seed import write_seed
from hearth.image.builder import read_manifest
from hearth.net.addressing import kernel_ip_arg, mac_for, tap_name
from hearth.net.ippool import IpPool
from hearth.net.topology import VmNetwork
from hearth.store.db import Database
from hearth.store.models import Vm, VmState
from hearth.vmm.base import BootImage, Driver, MachineSpec, VmmError, pid_alive, running_pid
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
# States a plan passes through: the process running it (owner_pid) is the only one to act.
IN_PROGRESS = (VmState.requested, VmState.booting, VmState.hibernating, VmState.resuming)
# lsm=: the distribution kernel's security modules less "bpf". With the BPF LSM present,
# systemd loads a BPF program at every start (for RestrictFileSystems=, which no unit in
# Hearth's images uses): a third of a second under emulation.
KERNEL_ARGS = (
    "console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1 loglevel=4"
    " lsm=lockdown,capability,landlock,yama,apparmor,tomoyo,ipe,ima,evm"
)


class VmError(RuntimeError):
    pass


class VmmExited(VmmError):
    """The VMM process ended before the guest's agent answered."""


class VmManager:
    def __init__(
        self, settings: Settings, db: Database, network: VmNetwork, drivers: dict[str, Driver]
    ):
        self.settings = settings
        self.db = db
        self.network = network
        self.drivers = drivers
        self.pool = IpPool(db, settings.gateway)

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
        workdir = self.workdir(vm.id)
        return MachineSpec(
            vm_id=vm.id,
            workdir=workdir,
            image=BootImage.from_dir(self.settings.images_dir / vm.image),
            seed=workdir / "seed.img",
            cmdline=self._cmdline(vm),
            tap=vm.tap,
            mac=vm.mac or "",
            vcpus=self.settings.vcpus,
            memory_mib=self.settings.memory_mib,
            netns=vm.netns,
        )

    def _cmdline(self, vm: Vm) -> str:
        if vm.ip is None:  # not leased yet: nothing can boot from this spec
            return KERNEL_ARGS
        return f"{KERNEL_ARGS} {kernel_ip_arg(vm.ip, self.settings.gateway, _hostname(vm.id))}"

    def workdir(self, vm_id: str) -> Path:
        return self.settings.vms_dir / vm_id

    def agent(self, vm: Vm) -> AgentClient:
        return AgentClient(vm.ip, vm.agent_token, AGENT_PORT)

    # -- create ----------------------------------------------------------------------------

    def create(self, image: str, on_step=lambda name: None, user_id: str | None = None) -> Vm:
        """Boot a VM from `image` and return it once its agent answers; `user_id` marks a
        user's CLI VM."""
        image_dir = self.settings.images_dir / image
        if read_manifest(image_dir) is None:
            raise VmError(f"image {image!r} is not built (run: hearth image build {image})")
        vm_id = uuid.uuid4().hex[:12]
        with self.db.session() as s:
            s.add(
                Vm(
                    id=vm_id,
                    image=image,
                    vmm=self.settings.vmm,
                    tap=tap_name(self.settings.tap_prefix, vm_id),
                    netns=self.network.netns,
                    agent_token=secrets.token_urlsafe(32),
                    owner_pid=os.getpid(),
                    user_id=user_id,
                )
            )
            s.commit()
        self.resume_create(vm_id, on_step)
        return self.get(vm_id)

    def resume_create(self, vm_id: str, on_step=lambda name: None) -> None:
        """Run (or finish) the create plan of a VM; on failure record the step and stop it."""
        try:
            run_plan(self._create_plan(vm_id), on_step)
        except StepFailed as e:
            self._update(vm_id, state=VmState.failed, failed_step=e.step, error=str(e.cause))
            self._stop_vmm(self.get(vm_id))
            raise self._failure(vm_id, e) from e

    def _create_plan(self, vm_id: str) -> list[Step]:
        def vm() -> Vm:
            return self.get(vm_id)

        return [
            Step("lease-address", lambda: vm().ip is None, lambda: self._lease(vm_id)),
            Step(
                "lay-out-directory",
                lambda: not (self.workdir(vm_id) / "seed.img").exists(),
                lambda: self._lay_out(vm()),
            ),
            self._network_step(vm_id),
            Step("boot", lambda: not self.vmm_alive(vm()), lambda: self._boot(vm())),
            Step(
                "wait-for-agent",
                lambda: vm().state != VmState.ready,
                lambda: self._wait_for_boot(vm_id),
            ),
            Step(
                "trust-cas",
                lambda: bool(self.settings.vm_ca_file) and vm().state != VmState.ready,
                lambda: self._trust_cas(vm()),
            ),
            self._record_ready_step(vm_id),
        ]

    def _network_step(self, vm_id: str) -> Step:
        return Step(
            "network",
            lambda: self.network.tap_state(self.get(vm_id).tap) is None,
            lambda: self._plug(self.get(vm_id)),
        )

    def _wait_for_agent_step(self, vm_id: str) -> Step:
        return Step(
            "wait-for-agent",
            lambda: self.get(vm_id).state != VmState.ready,
            lambda: self._wait_for_agent(self.get(vm_id)),
        )

    def _record_ready_step(self, vm_id: str) -> Step:
        return Step(
            "record-ready",
            lambda: self.get(vm_id).state != VmState.ready,
            lambda: self._update(vm_id, state=VmState.ready),
        )

    def client_env(self) -> dict[str, str]:
        """Environment for the CLIs run in a VM: where the extra CAs are, when there are."""
        return dict(trust.ENV) if self.settings.vm_ca_file else {}

    def _trust_cas(self, vm: Vm) -> None:
        with self.agent(vm) as agent:
            agent.put_trust(Path(self.settings.vm_ca_file).read_text())

    def _lease(self, vm_id: str) -> None:
        ip = self.pool.lease(vm_id)
        self._update(vm_id, ip=ip, mac=mac_for(ip))

    def _lay_out(self, vm: Vm) -> None:
        spec = self.spec(vm)
        spec.workdir.mkdir(parents=True, exist_ok=True)
        seed = {"agent_token": vm.agent_token}
        if vm.image == "browser":
            seed["vnc_password"] = secrets.token_urlsafe(6)[:8]
        write_seed(spec.seed, seed)
        os.chmod(spec.seed, 0o600)
        public = {k: str(v) for k, v in asdict(spec).items() if k != "extra"}
        (spec.workdir / "machine.json").write_text(json.dumps(public, indent=2) + "\n")

    def _plug(self, vm: Vm) -> None:
        self.network.ensure()
        self.network.add_tap(vm.tap, vm.mac, vm.ip)

    def _boot(self, vm: Vm) -> None:
        self._update(vm.id, state=VmState.booting, boot_started=time.time())
        self._start_vmm(vm)

    def _start_vmm(self, vm: Vm) -> None:
        self._update(vm.id, pid=self.drivers[vm.vmm].start(self.spec(vm)))

    def _wait_for_boot(self, vm_id: str) -> None:
        """Wait for a booting guest's agent. A guest that dies first is booted once more on
        the same disk and address, and its boot seconds count both boots: under QEMU 7.2's
        multi-threaded TCG, boots died so about once in a hundred ("Oops: int3" in
        sched_clock_cpu: the kernel patches that function while it boots, and the other vCPU
        sometimes ran the code mid-patch)."""
        try:
            self._wait_for_agent(self.get(vm_id))
        except VmmExited:
            vm = self.get(vm_id)
            self._stop_vmm(vm)  # the dead VMM's pid file and QMP socket
            with open(self.workdir(vm_id) / "console.log", "a") as console:
                console.write("hearth: the VMM exited before the agent answered; booting again\n")
            self._start_vmm(vm)
            self._wait_for_agent(self.get(vm_id))

    def _wait_for_agent(self, vm: Vm) -> None:
        """Poll the agent's readiness until it answers, the VMM dies, or the deadline passes;
        record the seconds from the VMM's start (a boot or a restore) to that first answer."""
        with self.agent(vm) as agent:

            def answered() -> bool:
                if not self.vmm_alive(vm):
                    raise VmmExited("the VMM process exited before the agent answered")
                try:
                    agent.ready(timeout=2)
                except httpx.HTTPError:
                    return False
                return True

            wait_for(answered, self.settings.boot_timeout, "the guest agent", interval=0.02)
        started = self.get(vm.id).boot_started
        self._update(vm.id, boot_seconds=time.time() - started if started else None)

    # -- hibernate and resume --------------------------------------------------------------

    def hibernate(self, vm_id: str, on_step=lambda name: None) -> None:
        """Snapshot a ready VM into its directory and end its VMM.

        It keeps its TAP and address: the guest's network configuration is in the snapshot.
        A VM left hibernating by a crash is finished the same way.
        """
        vm = self.get(vm_id)
        if vm.state == VmState.hibernated:
            return
        self._require(vm, VmState.ready, VmState.hibernating)
        try:
            run_plan(self._hibernate_plan(vm_id), on_step)
        except StepFailed as e:
            # A snapshot that failed leaves the guest running: the VM is as ready as before.
            alive = self.vmm_alive(vm)
            self._update(
                vm_id,
                state=VmState.ready if alive else VmState.failed,
                failed_step=e.step,
                error=str(e.cause),
            )
            raise self._failure(vm_id, e) from e

    def _hibernate_plan(self, vm_id: str) -> list[Step]:
        def vm() -> Vm:
            return self.get(vm_id)

        return [
            self._mark(vm_id, VmState.hibernating),
            # A live VMM's guest is newer than any snapshot beside it, so it is always taken.
            Step(
                "snapshot",
                lambda: self.vmm_alive(vm()),
                lambda: self.drivers[vm().vmm].hibernate(self.spec(vm())),
            ),
            Step(
                "record-hibernated",
                lambda: vm().state != VmState.hibernated,
                lambda: self._record_hibernated(vm()),
            ),
        ]

    def _record_hibernated(self, vm: Vm) -> None:
        if not self.has_snapshot(vm):
            raise VmmError("the VMM is gone and left no complete snapshot")
        self._update(vm.id, state=VmState.hibernated, pid=None)

    def resume(self, vm_id: str, on_step=lambda name: None) -> Vm:
        """Restore a hibernated VM and return it once its agent answers.

        Its `boot_seconds` are then the seconds from the restore's start to the agent's first
        answer. A resume that fails goes back to hibernated while the snapshot is whole.
        """
        vm = self.get(vm_id)
        if vm.state == VmState.ready:
            return vm
        self._require(vm, VmState.hibernated, VmState.resuming)
        try:
            run_plan(self._resume_plan(vm_id), on_step)
        except StepFailed as e:
            self.abandon_resume(vm_id)
            self._update(vm_id, failed_step=e.step, error=str(e.cause))
            raise self._failure(vm_id, e) from e
        return self.get(vm_id)

    def _resume_plan(self, vm_id: str) -> list[Step]:
        def vm() -> Vm:
            return self.get(vm_id)

        return [
            self._mark(vm_id, VmState.resuming),
            # A host's restart takes the TAPs with it, and leaves hibernated VMs on disk.
            self._network_step(vm_id),
            # While the snapshot is there no guest runs on from it: a VMM beside it is one
            # whose restore never finished, and is replaced.
            Step(
                "restore",
                lambda: self.has_snapshot(vm()) or not self.vmm_alive(vm()),
                lambda: self._restore(vm()),
            ),
            self._wait_for_agent_step(vm_id),
            # The guest's clock stood still while it slept (tokens' expiry is judged by it).
            Step("set-clock", lambda: vm().state != VmState.ready, lambda: self._set_clock(vm())),
            self._record_ready_step(vm_id),
        ]

    def _restore(self, vm: Vm) -> None:
        self._stop_vmm(vm)
        self._update(vm.id, boot_started=time.time())
        pid = self.drivers[vm.vmm].restore(self.spec(vm))
        self._update(vm.id, pid=pid)

    def _set_clock(self, vm: Vm) -> None:
        with self.agent(vm) as agent:
            agent.set_clock(time.time())

    def abandon_resume(self, vm_id: str) -> None:
        """End a resume that did not reach the agent: stop any half-restored VMM, and go back
        to hibernated if the snapshot is still whole (no guest ran on from it), else failed."""
        vm = self.get(vm_id)
        self._stop_vmm(vm)
        self._update(
            vm_id, pid=None, state=VmState.hibernated if self.has_snapshot(vm) else VmState.failed
        )

    def _require(self, vm: Vm, *states: VmState) -> None:
        """Refuse a VM in another state, or one another live Hearth process is working on."""
        if vm.state not in states:
            raise VmError(f"VM {vm.id} is {vm.state}, not {' or '.join(states)}")
        if busy_elsewhere(vm):
            raise VmError(f"VM {vm.id} is {vm.state} in Hearth process {vm.owner_pid}")

    def _mark(self, vm_id: str, state: VmState) -> Step:
        """The step that puts the VM in `state`, owned by this process, forgetting the last
        attempt's failure."""

        def unmarked() -> bool:
            vm = self.get(vm_id)
            return (vm.state, vm.owner_pid) != (state, os.getpid())

        return Step(
            f"mark-{state}",
            unmarked,
            lambda: self._update(
                vm_id, state=state, owner_pid=os.getpid(), failed_step=None, error=None
            ),
        )

    # -- destroy ---------------------------------------------------------------------------

    def destroy(self, vm_id: str, on_step=lambda name: None) -> None:
        """Remove everything the VM holds. Safe to repeat, and on a half-created VM."""
        vm = self.get(vm_id)
        if vm.state != VmState.failed:
            self._update(vm_id, state=VmState.stopping)
        run_plan(
            [
                Step(
                    "stop-vmm",
                    lambda: self.vmm_alive(self.get(vm_id)),
                    lambda: self._stop_vmm(self.get(vm_id)),
                ),
                Step(
                    "remove-tap",
                    lambda: self.network.tap_state(vm.tap) is not None,
                    lambda: self.network.remove_tap(vm.tap),
                ),
                Step(
                    "release-address",
                    lambda: vm_id in self.pool.leases(),
                    lambda: self.pool.release(vm_id),
                ),
                Step(
                    "keep-console",
                    lambda: (self.workdir(vm_id) / "console.log").exists(),
                    lambda: self._archive_console(vm_id),
                ),
                Step(
                    "remove-directory",
                    lambda: self.workdir(vm_id).exists(),
                    lambda: shutil.rmtree(self.workdir(vm_id)),
                ),
                Step(
                    "record-destroyed",
                    lambda: self.get(vm_id).state != VmState.destroyed,
                    lambda: self._update(vm_id, state=VmState.destroyed, pid=None),
                ),
            ],
            on_step,
        )

    def console_archive(self, vm_id: str) -> Path:
        """Where a destroyed VM's console log is kept, for the record."""
        return self.settings.home / "logs" / f"{vm_id}.console.log"

    def _archive_console(self, vm_id: str) -> None:
        archive = self.console_archive(vm_id)
        archive.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.workdir(vm_id) / "console.log", archive)

    # -- helpers ---------------------------------------------------------------------------

    def vmm_alive(self, vm: Vm) -> bool:
        return running_pid(self.spec(vm)) is not None

    def has_snapshot(self, vm: Vm) -> bool:
        return self.drivers[vm.vmm].has_snapshot(self.spec(vm))

    def _failure(self, vm_id: str, failed: StepFailed) -> VmError:
        return VmError(f"VM {vm_id}: {failed} (console: {self.workdir(vm_id) / 'console.log'})")

    def _stop_vmm(self, vm: Vm) -> None:
        self.drivers[vm.vmm].stop(self.spec(vm))

    def _update(self, vm_id: str, **fields) -> None:
        self.db.update(Vm, vm_id, **fields)


def busy_elsewhere(vm: Vm) -> bool:
    """Whether another live Hearth process is running a plan on this VM (owner_pid)."""
    return (
        vm.state in IN_PROGRESS
        and vm.owner_pid is not None
        and vm.owner_pid != os.getpid()
        and pid_alive(vm.owner_pid)
    )


def _hostname(vm_id: str) -> str:
    return f"hearth-{vm_id[:8]}"
