"""Boot, hibernate and resume VMs and report how much sooner a resumed agent answers.

Each round cold-boots a VM (boot-to-agent seconds, the baseline), hibernates it, resumes it
(resume-to-agent seconds: from the restore's start to the agent's first answer) and destroys
it. The restore's own share is shown, and so is the whole resume call, whose bookkeeping and
network check come before the restore. Everything runs inside a namespace the bench creates
and deletes (bench/boot.py's).
Run as root:  python -m bench.resume --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench.harness import INSIDE, exit_on_sigterm, inside_sandbox, spread
from hearth.config import Settings
from hearth.core import runtime
from hearth.core.vms import VmError, VmManager


class StepClock:
    """Seconds each plan step took, from the `on_step` calls that start them."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, float]] = []

    def __call__(self, step: str) -> None:
        self.starts.append((step, time.monotonic()))

    def seconds(self, step: str, end: float) -> float:
        """How long `step` ran: until the next step started, or until `end`."""
        times = [t for _, t in self.starts] + [end]
        return next(times[i + 1] - t for i, (name, t) in enumerate(self.starts) if name == step)


def rounds(vms: VmManager, image: str, runs: int) -> dict:
    found: dict[str, list[float]] = {
        k: [] for k in ("cold", "hibernate", "resume", "restore", "call")
    }
    snapshot_mib: list[float] = []
    failures = []
    for _ in range(runs):
        try:
            vm = vms.create(image)
            started = time.monotonic()
            vms.hibernate(vm.id)
            hibernated = time.monotonic() - started
            # Both drivers name their snapshot files snapshot.*
            size = sum(p.stat().st_size for p in vms.workdir(vm.id).glob("snapshot.*"))
            clock = StepClock()
            resumed = vms.resume(vm.id, on_step=clock)
            ended = time.monotonic()
            restore, call = clock.seconds("restore", ended), ended - clock.starts[0][1]
        except VmError as e:
            failures.append(str(e).splitlines()[0])
            continue
        finally:
            for left in vms.list():
                vms.destroy(left.id)
        found["cold"].append(vm.boot_seconds)
        found["hibernate"].append(hibernated)
        found["resume"].append(resumed.boot_seconds)
        found["restore"].append(restore)
        found["call"].append(call)
        snapshot_mib.append(size / 2**20)
    return {
        "image": image,
        "runs": runs,
        "ok": len(found["resume"]),
        "failures": failures,
        **{k: spread(v, f"{k}_") for k, v in found.items()},
        "snapshot_mib": round(statistics.median(snapshot_mib), 1) if snapshot_mib else None,
    }


def run_inside(args: argparse.Namespace) -> dict:
    vms = runtime.vm_manager(Settings(boot_timeout=300))
    try:
        return rounds(vms, args.image, args.runs)
    finally:
        vms.network.teardown()


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default="cli")
    parser.add_argument("--images-dir", type=Path, default=Settings().images_dir)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.environ.get(INSIDE):
        print(json.dumps(run_inside(args)))
        return

    r = inside_sandbox(args.images_dir)
    cold, resume = r["cold"]["cold_median_s"], r["resume"]["resume_median_s"]
    ratio = round(cold / resume, 1) if cold and resume else None
    if args.json:
        print(json.dumps({"results": r, "ratio_median": ratio}))
        return
    print(f"{args.image}: {r['ok']}/{r['runs']} rounds booted, hibernated and resumed")
    print(f"{'seconds':<28} {'median':>7} {'min':>7} {'max':>7}")
    for key, label in (
        ("cold", "cold boot to agent"),
        ("hibernate", "hibernate"),
        ("resume", "resume to agent"),
        ("restore", "  of which restore"),
        ("call", "resume, all its steps"),
    ):
        stats = r[key]
        print(
            f"{label:<28} {stats[f'{key}_median_s']!s:>7} {stats[f'{key}_min_s']!s:>7} "
            f"{stats[f'{key}_max_s']!s:>7}"
        )
    for failure in r["failures"]:
        print(f"  failed: {failure}")
    print(f"snapshot file: {r['snapshot_mib']} MiB (median)")
    print(f"median cold boot / median resume: {ratio}x")


if __name__ == "__main__":
    main()
