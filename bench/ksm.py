"""What kernel samepage merging (KSM) would save on idle VMs booted from one image.

Boots N VMs (one after another, inside a namespace the bench makes), lets them settle, reads
each VMM's RSS, then turns KSM on (QEMU marks guest memory mergeable by default) with a
faster scan until the pages merged in these VMs stop growing over a full scan, and reports
the host's pages_sharing and pages_shared, each VM's merged pages (/proc/PID/ksm_stat) and
the MiB saved. KSM's settings are put back as they were, merged pages unmerged first: Hearth
itself never changes them (`hearth doctor` only shows the command). KSM scans every QEMU
on the host, so other VMs running meanwhile count in the host-wide figures.
Run as root:  python -m bench.ksm --vms 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from bench.harness import INSIDE, exit_on_sigterm, inside_sandbox, rss_mib
from hearth.config import Settings
from hearth.core import runtime
from hearth.core.vms import VmManager
from hearth.doctor import KSM
from hearth.vmm.base import running_pid
from hearth.waiting import wait_for

SETTLE_SECONDS = 30.0  # after the last boot, before the first reading
PAGES_TO_SCAN = 2000  # per wake-up (the kernel's default is 100): a scan in about a minute
MERGE_TIMEOUT = 900.0
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20


def ksm_value(name: str) -> int:
    return int((KSM / name).read_text())


@contextlib.contextmanager
def ksm_running(pages_to_scan: int) -> Iterator[None]:
    """KSM on, scanning `pages_to_scan` a wake-up; afterwards unmerged and set back."""
    before = {name: (KSM / name).read_text() for name in ("run", "pages_to_scan")}
    (KSM / "pages_to_scan").write_text(str(pages_to_scan))
    (KSM / "run").write_text("1")
    try:
        yield
    finally:
        (KSM / "run").write_text("2")  # unmerge what was merged, so other VMs are as before
        for name, value in before.items():
            (KSM / name).write_text(value)


def merged_pages(pids: list[int]) -> int:
    """Pages of these processes KSM has merged."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/ksm_stat").read_text().splitlines()
        fields = dict(line.split(None, 1) for line in stat)
        total += int(fields["ksm_merging_pages"])
    return total


def scanned_past(scans: int) -> bool:
    return ksm_value("full_scans") > scans


def wait_merged(pids: list[int]) -> tuple[int, int, float]:
    """Full scans until the pages merged in `pids` stop growing (a page merges on its second
    scan at the earliest): (scans, pages, seconds)."""
    started, first = time.monotonic(), ksm_value("full_scans")
    scans, last = first, -1
    while True:
        wait_for(partial(scanned_past, scans), MERGE_TIMEOUT, "a KSM full scan")
        scans, pages = ksm_value("full_scans"), merged_pages(pids)
        if scans - first >= 3 and pages <= last:
            return scans - first, pages, round(time.monotonic() - started, 1)
        last = pages


def measure(vms: VmManager, image: str, count: int) -> dict:
    booted = [vms.create(image) for _ in range(count)]
    time.sleep(SETTLE_SECONDS)
    pids = [running_pid(vms.spec(vm)) for vm in booted]
    rss = [round(rss_mib(pid)) for pid in pids]  # a merged page still counts in each RSS
    with ksm_running(PAGES_TO_SCAN):
        scans, pages, seconds = wait_merged(pids)
        per_vm = [merged_pages([pid]) for pid in pids]
        sharing, shared = ksm_value("pages_sharing"), ksm_value("pages_shared")
    return {
        "image": image,
        "vms": count,
        "guest_mib": vms.settings.guest_memory_mib(image),
        "rss_mib": rss,
        "full_scans": scans,
        "seconds_to_settle": seconds,
        "merged_mib_per_vm": [round(p * PAGE_MIB) for p in per_vm],
        "merged_mib_these_vms": round(pages * PAGE_MIB),
        "host_pages_sharing": sharing,
        "host_pages_shared": shared,
        # pages_sharing counts the extra mappings of a shared page: what merging saved.
        "host_saved_mib": round(sharing * PAGE_MIB),
    }


def run_inside(args: argparse.Namespace) -> dict:
    vms = runtime.vm_manager(Settings(boot_timeout=300))
    try:
        return measure(vms, args.image, args.vms)
    finally:
        for vm in vms.list():
            vms.destroy(vm.id)
        vms.network.teardown()


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=3)
    parser.add_argument("--image", default="cli")
    parser.add_argument("--images-dir", type=Path, default=Settings().images_dir)
    args = parser.parse_args()
    if os.environ.get(INSIDE):
        print(json.dumps(run_inside(args)))
        return
    if not (KSM / "run").exists():
        raise SystemExit(f"this kernel has no KSM ({KSM} is absent)")
    print(json.dumps(inside_sandbox(args.images_dir)))


if __name__ == "__main__":
    main()
