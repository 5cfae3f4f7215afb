"""Boot VMs one after another and report how many reached their agent and how fast.

Hearth's image and, in the same run, a baseline of the same distribution booted the stock
way (the distribution's initramfs, systemd-networkd from ip=, an agent that waits for
network-online). Everything runs inside a namespace the bench creates and deletes.
Run as root:  python -m bench.boot --runs 10
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench.harness import INSIDE, exit_on_sigterm, inside_sandbox, spread
from hearth.config import Settings
from hearth.core import runtime
from hearth.core.vms import VmError
from hearth.store.models import VmState


def boot_series(vms, image: str, runs: int) -> dict:
    seconds, failures = [], []
    for _ in range(runs):
        try:
            seconds.append(vms.create(image).boot_seconds)
        except VmError as e:
            failures.append(str(e).splitlines()[0])
        finally:
            for vm in vms.list():
                vms.destroy(vm.id)
                if vm.state == VmState.failed:  # its console goes with the bench's home
                    failures.append(console_tail(vms.console_archive(vm.id)))
    return {
        "image": image,
        "runs": runs,
        "ok": len(seconds),
        "failures": failures,
        **spread(seconds),
    }


def console_tail(path: Path, lines: int = 25) -> str:
    """The end of a failed VM's console, indented under its failure."""
    try:
        tail = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as e:
        return f"    (no console: {e})"
    return "\n".join(f"    | {line}" for line in tail)


def run_inside(args: argparse.Namespace) -> list[dict]:
    vms = runtime.vm_manager(Settings(boot_timeout=300))
    try:
        return [boot_series(vms, image, args.runs) for image in (args.image, args.baseline)]
    finally:
        vms.network.teardown()


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--image", default="cli")
    parser.add_argument("--baseline", default="baseline")
    parser.add_argument("--images-dir", type=Path, default=Settings().images_dir)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.environ.get(INSIDE):
        print(json.dumps(run_inside(args)))
        return

    results = inside_sandbox(args.images_dir)
    hearth, baseline = results
    ratio = (
        round(hearth["median_s"] / baseline["median_s"], 3)
        if hearth["median_s"] and baseline["median_s"]
        else None
    )
    if args.json:
        print(json.dumps({"results": results, "ratio_median": ratio}))
        return
    print(f"{'image':<10} {'agent up':>9} {'median s':>9} {'min s':>7} {'max s':>7}")
    for r in results:
        print(
            f"{r['image']:<10} {r['ok']:>4}/{r['runs']:<4} {r['median_s']!s:>9} "
            f"{r['min_s']!s:>7} {r['max_s']!s:>7}"
        )
        for failure in r["failures"]:
            print(f"  failed: {failure}")
    print(f"median boot-to-agent, {args.image} / {args.baseline}: {ratio}")


if __name__ == "__main__":
    main()
