"""Admission under a burst: sign-ins admitted, queued and refused, the time queued ones
waited, and the host's peak memory, with real browser VMs.

A demo stack (hearth.demo: controller, VM network and demo IdP in namespaces of their own)
whose memory budget holds `--vms` browser VMs and whose queue holds as many again gets three
times that many sign-ins at once. Each sign-in that reaches the sign-in page (Firefox painted
in its VM) is then abandoned (cancelled, as a user who walks away), which frees its VM for
the queue's head. A sampler reads the host's used memory (MemTotal - MemAvailable) and
every VMM's VmRSS. Run as root from the repository root:
    python -m bench.capacity --vms 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.harness import built_images, exit_on_sigterm, seconds_between, vmm_rss_mib
from hearth.config import Settings
from hearth.core import runtime
from hearth.core.capacity import Capacity, meminfo_mib
from hearth.demo.stack import stack
from hearth.waiting import wait_for
from tests.e2e.conftest import IMAGES

END_STATES = ("completed", "failed", "cancelled", "expired")
PAGE_TIMEOUT = 900.0  # seconds for every admitted sign-in to reach its page, queue and all


class Peaks:
    """The host's used memory and the VMMs' summed VmRSS, MiB, at their highest."""

    def __init__(self, settings: Settings) -> None:
        self.vms = runtime.vm_manager(settings)
        self.host_used_mib = 0
        self.vmm_rss_mib = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(0.5):
            total, available = meminfo_mib()
            self.host_used_mib = max(self.host_used_mib, total - available)
            self.vmm_rss_mib = max(self.vmm_rss_mib, sum(vmm_rss_mib(self.vms).values()))


def burst(vms: int, images: Path, tmp: Path) -> dict:
    home = tmp / "home"
    home.mkdir()
    (home / "images").symlink_to(images)
    settings = Settings(home=home)
    cost = Capacity(settings, runtime.vm_manager(settings)).cost("browser").total_mib
    env = {
        "HEARTH_VM_MEMORY_BUDGET_MIB": str(vms * cost),
        "HEARTH_AUTH_QUEUE_MAX": str(vms),
    }
    idle_used = meminfo_mib()[0] - meminfo_mib()[1]
    with stack(settings, controller_env=env) as s:
        peaks = Peaks(s.settings)
        peaks.thread.start()
        began = time.monotonic()
        with ThreadPoolExecutor(3 * vms) as pool:
            answers = list(
                pool.map(
                    lambda n: s.api.post(
                        "/api/auth/start", json={"user_id": f"burst-{n}", "provider": "demo"}
                    ),
                    range(3 * vms),
                )
            )
        taken = [a.json() for a in answers if a.status_code == 202]
        page_seconds: dict[str, float] = {}

        def walk_away() -> bool:
            """Abandon each sign-in whose page shows; True once every one has ended."""
            done = True
            for started in taken:
                path = f"/api/auth/session/{started['session_id']}"
                session = s.api.get(path).json()
                if session["status"] == "awaiting_user":
                    page_seconds[started["session_id"]] = time.monotonic() - began
                    s.api.post(f"{path}/cancel")
                done &= session["status"] in END_STATES
            return done

        wait_for(walk_away, PAGE_TIMEOUT, "every sign-in taken to show its page", interval=1)
        timelines = [
            s.api.get(f"/api/auth/session/{t['session_id']}").json()["timeline"] for t in taken
        ]
        wait_for(lambda: peaks.vms.list() == [], 300, "every browser VM to go")
        peaks.stop.set()
        peaks.thread.join()
    queued = [t for t in taken if t["status"] == "queued"]
    waits = [w for t in timelines if (w := seconds_between(t, "queued", "started")) is not None]
    return {
        "capacity_vms": vms,
        "budget_mib": vms * cost,
        "burst": 3 * vms,
        "admitted_at_once": len(taken) - len(queued),
        "queued": len(queued),
        "refused_503": sum(a.status_code == 503 for a in answers),
        "retry_after": sorted(
            {a.headers.get("retry-after") for a in answers if a.status_code == 503}
        ),
        "reached_sign_in_page": len(page_seconds),
        "queue_wait_median_s": round(statistics.median(waits), 1) if waits else None,
        "queue_wait_max_s": round(max(waits), 1) if waits else None,
        "start_to_page_median_s": round(statistics.median(page_seconds.values()), 1)
        if page_seconds
        else None,
        "host_used_idle_mib": idle_used,
        "host_used_peak_mib": peaks.host_used_mib,
        "vmm_rss_peak_mib": round(peaks.vmm_rss_mib),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=2, help="browser VMs the budget holds")
    parser.add_argument("--images-dir", type=Path, default=IMAGES)
    args = parser.parse_args()
    images = built_images(parser, args.images_dir, "browser")
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="hearth-bench-capacity-") as tmp:
        print(json.dumps(burst(args.vms, images, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
