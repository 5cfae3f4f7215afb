"""The KVM probe (hearth.vmm.qemu.kvm_runs_guests) never outlives the process that runs it:
under a KVM that cannot run guests (PVM hosts such as this one) the probe's QEMU hangs, and
a controller stopped during the probe used to leave that QEMU running for good."""

from __future__ import annotations

import subprocess
import sys

from hearth.vmm.base import kill_pid, pid_alive
from hearth.waiting import wait_for


def test_the_probe_is_killed_with_the_process_that_ran_it(tmp_path):
    started = tmp_path / "probe.pid"
    hanging_qemu = tmp_path / "qemu"  # a QEMU whose guest never exits: it only waits
    hanging_qemu.write_text(f"#!/bin/sh\necho $$ > {started}\nexec sleep 300\n")
    hanging_qemu.chmod(0o755)
    device = tmp_path / "kvm"  # readable and writable, as /dev/kvm is where the probe runs
    device.touch()
    code = (
        "import hearth.vmm.qemu as qemu; "
        f"qemu.QEMU = {str(hanging_qemu)!r}; "
        f"qemu.kvm_runs_guests(timeout=300, device={str(device)!r})"
    )
    runner = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_for(lambda: started.exists() and started.read_text().strip(), 30, "the probe")
        probe = int(started.read_text())
        assert pid_alive(probe)
    finally:
        runner.kill()  # as SIGKILL or a crash would end a controller in the middle
        runner.wait()
    try:
        wait_for(lambda: not pid_alive(probe), 10, "the probe to end with its runner")
    finally:
        if pid_alive(probe):  # a failed test leaves nothing behind either
            kill_pid(probe)
