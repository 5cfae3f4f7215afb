"""Seconds from `POST /api/auth/start` to the authorize page shown in the browser VM's Firefox
(the session turning `awaiting_user`), for cold VMs, and the controller's memory.

Runs the demo stack (hearth.demo) in namespaces it creates. Run as root:
    python bench/auth_start.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from hearth.config import Settings
from hearth.core import runtime
from hearth.demo import stack
from hearth.waiting import wait_for


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def time_to_authorize_page(running, user_id: str) -> tuple[float | None, list[str]]:
    """Start a session, follow it to awaiting_user, cancel it; the seconds it took."""
    began = time.monotonic()
    session_id = running.start_session(user_id)["session_id"]
    reached: list[str] = []
    elapsed = None

    def on_event(event: dict) -> None:
        nonlocal elapsed
        reached.append(event["status"])
        if event["status"] == "awaiting_user":
            elapsed = time.monotonic() - began
            running.api.post(f"/api/auth/session/{session_id}/cancel")

    running.follow(session_id, on_event)
    return elapsed, reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--images-dir", type=Path, default=Settings().images_dir)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    seconds, failures, rss = [], [], []
    with tempfile.TemporaryDirectory(prefix="hearth-bench-auth-") as home:
        (Path(home) / "images").symlink_to(args.images_dir.resolve())
        with stack(Settings(home=Path(home))) as running:
            vms = runtime.vm_manager(running.settings)
            for run in range(args.runs):
                elapsed, reached = time_to_authorize_page(running, f"bench-{run}")
                if elapsed is None:
                    failures.append(f"run {run}: {' -> '.join(reached)}")
                else:
                    seconds.append(elapsed)
                rss.append(rss_mib(running.controller_pid))
                wait_for(lambda: vms.list() == [], 180, "the browser VM to go")
    figures = {
        "runs": args.runs, "ok": len(seconds), "failures": failures,
        "median_start_to_authorize_page_s": round(statistics.median(seconds), 1)
        if seconds else None,
        "controller_rss_mib_max": round(max(rss), 1) if rss else None,
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(f"start -> authorize page in Firefox: median "
          f"{figures['median_start_to_authorize_page_s']} s over {len(seconds)}/{args.runs} "
          f"cold VMs; controller RSS up to {figures['controller_rss_mib_max']} MiB")
    for failure in failures:
        print(f"  failed: {failure}")


if __name__ == "__main__":
    main()
