"""A VM's machine as its driver gets it: the directory, the seed and the kernel command line.

The directory ($HEARTH_HOME/vms/<id>/) holds everything of the VM on this host: its seed,
its disk overlay and snapshot (the driver's), its console log and `machine.json`, the
spec's public fields for whoever looks. The seed carries the VM's secrets: the agent's
token, and whatever the caller adds (a browser VM's VNC password).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from hearth.config import Settings
from hearth.guest.seed import read_seed, write_seed
from hearth.net.addressing import kernel_ip_arg
from hearth.store.models import Vm
from hearth.vmm.base import BootImage, MachineSpec

# lsm=: the distribution kernel's security modules less "bpf". With the BPF LSM present,
# systemd loads a BPF program at every start (for RestrictFileSystems=, which no unit in
# Hearth's images uses): a third of a second under emulation.
KERNEL_ARGS = (
    "console=ttyS0 root=/dev/vda rw net.ifnames=0 panic=-1 loglevel=4"
    " lsm=lockdown,capability,landlock,yama,apparmor,tomoyo,ipe,ima,evm"
)
SEED = "seed.img"
CONSOLE = "console.log"


def workdir(settings: Settings, vm_id: str) -> Path:
    return settings.vms_dir / vm_id


def machine_spec(settings: Settings, vm: Vm) -> MachineSpec:
    directory = workdir(settings, vm.id)
    return MachineSpec(
        vm_id=vm.id,
        workdir=directory,
        image=BootImage.from_dir(settings.images_dir / vm.image),
        seed=directory / SEED,
        cmdline=cmdline(settings, vm),
        tap=vm.tap,
        mac=vm.mac or "",
        vcpus=settings.vcpus,
        memory_mib=settings.guest_memory_mib(vm.image),
        netns=vm.netns,
    )


def cmdline(settings: Settings, vm: Vm) -> str:
    """The kernel's arguments; with the VM's address once leased, as `ip=` (the guest's
    network comes up from it on every boot)."""
    if vm.ip is None:  # not leased yet: nothing can boot from this spec
        return KERNEL_ARGS
    return f"{KERNEL_ARGS} {kernel_ip_arg(vm.ip, settings.gateway, hostname(vm.id))}"


def hostname(vm_id: str) -> str:
    return f"hearth-{vm_id[:8]}"


def laid_out(spec: MachineSpec) -> bool:
    return spec.seed.exists()


def lay_out(spec: MachineSpec, agent_token: str, seed_extras: Mapping[str, str]) -> None:
    """Create the directory and write the seed (owner-only) and `machine.json`."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    write_seed(spec.seed, {**seed_extras, "agent_token": agent_token})  # 0600
    public = {k: str(v) for k, v in asdict(spec).items() if k != "extra"}
    (spec.workdir / "machine.json").write_text(json.dumps(public, indent=2) + "\n")


def seed_of(settings: Settings, vm_id: str) -> dict:
    """What the VM's seed holds (its secrets: for the controller's own use only)."""
    return read_seed(workdir(settings, vm_id) / SEED)
