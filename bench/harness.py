"""What the benches share: a clean-up that survives a signal, the images they boot checked
before anything starts, running the measurements again inside a namespace and Hearth home
of their own, and the figures' summaries.

The benches are modules of the `bench` package, run from the repository root as
`python -m bench.NAME` (as root), so that `bench` and `tests` import as packages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import __main__
from hearth.core.vms import VmManager
from hearth.demo.sandbox import nsenter, sandbox
from hearth.image.builder import read_manifest
from hearth.vmm.base import running_pid

INSIDE = "HEARTH_BENCH_INSIDE"  # set in the child that runs inside the bench's namespace


def exit_on_sigterm() -> None:
    """Ending a bench by signal still runs its clean-up: VMs, namespaces, files. Only in this
    process: pyroute2 forks short-lived helpers and ends them with SIGTERM, and a helper
    that unwound this stack would run the clean-up under the bench's feet."""
    main_pid = os.getpid()
    signal.signal(signal.SIGTERM, lambda *_: os.getpid() == main_pid and sys.exit(1))


def built_images(parser: argparse.ArgumentParser, images_dir: Path, *names: str) -> Path:
    """`images_dir`, resolved, once it holds a built image of each of `names`; else the bench
    stops at once (exit 2) naming what is missing, rather than waiting minutes for VMs that
    cannot boot."""
    missing = [name for name in names if read_manifest(images_dir / name) is None]
    if missing:
        parser.error(
            f"no built {' or '.join(missing)} image in {images_dir} (no manifest.json there): "
            f"pass --images-dir DIR (or set HEARTH_TEST_IMAGES) where `hearth image build "
            f"{missing[0]}` put it"
        )
    return images_dir.resolve()


def inside_sandbox(images_dir: Path) -> object:
    """Run this bench again inside a fresh namespace and Hearth home; the JSON it printed.

    The child finds INSIDE in its environment and runs the measurements.
    """
    with (
        tempfile.TemporaryDirectory(prefix="hearth-bench-") as home,
        sandbox("hearth-bench") as controller,
    ):
        (Path(home) / "images").symlink_to(images_dir.resolve())
        env = {**os.environ, INSIDE: "1", "HEARTH_HOME": home, "HEARTH_NETNS": f"{controller}-vm"}
        again = [sys.executable, "-m", __main__.__spec__.name, *sys.argv[1:]]
        child = subprocess.Popen(
            [*nsenter(controller), *again], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            out, _ = child.communicate()
        except BaseException:
            # Ended by a signal: the child, ended the same way, destroys its VMs and their
            # namespace first (a child killed outright would leave both behind).
            child.terminate()
            child.wait()
            raise
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, child.args)
    return json.loads(out)


def spread(seconds: list[float], name: str = "") -> dict:
    """Median, min and max of `seconds`, rounded (None when there are none)."""
    return {
        f"{name}{stat}_s": round(f(seconds), 2) if seconds else None
        for stat, f in (("median", statistics.median), ("min", min), ("max", max))
    }


def rss_mib(pid: int) -> float:
    """A process's resident memory, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def vmm_rss_mib(vms: VmManager) -> dict[str, float]:
    """Each running VM's VMM resident memory, MiB, by VM id."""
    found = {}
    for vm in vms.list():
        pid = running_pid(vms.spec(vm))
        with contextlib.suppress(OSError):  # a VMM that ends between the two reads is gone
            if pid is not None:
                found[vm.id] = rss_mib(pid)
    return found


def seconds_between(timeline: list[dict], first: str, then: str) -> float | None:
    """Seconds from a session's first `first` to its first `then` (its timeline as JSON)."""
    at = {e["status"]: datetime.fromisoformat(e["at"]) for e in reversed(timeline)}
    if first not in at or then not in at:
        return None
    return (at[then] - at[first]).total_seconds()
