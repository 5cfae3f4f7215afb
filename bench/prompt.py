"""Seconds from `POST /api/prompts` to the first output chunk of the demo CLI, on a warm CLI VM,
on one resumed from hibernation, and on the first prompt (which boots the VM cold).

Runs the demo stack (hearth.demo.stack) in namespaces it creates, signs one user in through
the live view with a real browser (tests/e2e/browser_user.py), then prompts. Run as root:
    python -m bench.prompt --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from hearth.config import Settings
from hearth.demo.stack import Stack, stack
from hearth.waiting import wait_for
from tests.e2e.browser_user import sign_in  # the test suite's browser user

USER = "bench"
IDLE_HIBERNATE = 5.0


def first_chunk(running: Stack) -> tuple[float, float]:
    """(seconds to the first output event, seconds to done) of one demo prompt."""
    began = time.monotonic()
    first = None
    for kind, data in running.prompt(USER, "Hello"):
        if kind == "output" and first is None:
            first = time.monotonic() - began
        if kind == "error":
            raise RuntimeError(f"the prompt failed: {data['reason']}")
    return first, time.monotonic() - began


def vm_state(running: Stack) -> str:
    return running.api.get(f"/api/users/{USER}/credentials").json()["vm"]["state"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images-dir", type=Path, default=Settings().images_dir)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    warm, resumed = [], []
    with tempfile.TemporaryDirectory(prefix="hearth-bench-prompt-") as home:
        (Path(home) / "images").symlink_to(args.images_dir.resolve())
        # Idle time long enough for back-to-back warm prompts, short enough to wait out.
        with stack(
            Settings(home=Path(home)), controller_env={"HEARTH_IDLE_HIBERNATE": str(IDLE_HIBERNATE)}
        ) as running:
            sign_in(running, USER, Path(home) / "shots")
            cold = first_chunk(running)
            for _ in range(args.runs):
                warm.append(first_chunk(running))
            for _ in range(args.runs):
                wait_for(
                    lambda: vm_state(running) == "hibernated",
                    IDLE_HIBERNATE + 60,
                    "the CLI VM to hibernate",
                    interval=0.2,
                )
                resumed.append(first_chunk(running))

    def median(pairs: list[tuple[float, float]], i: int) -> float:
        return round(statistics.median(p[i] for p in pairs), 3)

    figures = {
        "runs": args.runs,
        "cold_vm_first_chunk_s": round(cold[0], 3),
        "cold_vm_done_s": round(cold[1], 3),
        "warm_first_chunk_median_s": median(warm, 0),
        "warm_done_median_s": median(warm, 1),
        "resumed_first_chunk_median_s": median(resumed, 0),
        "resumed_done_median_s": median(resumed, 1),
    }
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"first output chunk of a demo prompt: warm VM median "
        f"{figures['warm_first_chunk_median_s']} s ({args.runs} runs), after hibernation "
        f"median {figures['resumed_first_chunk_median_s']} s, first prompt (cold VM) "
        f"{figures['cold_vm_first_chunk_s']} s"
    )
    print(
        f"whole prompt (the demo CLI paces 5 lines 0.3 s apart): warm "
        f"{figures['warm_done_median_s']} s, resumed {figures['resumed_done_median_s']} s, "
        f"cold {figures['cold_vm_done_s']} s"
    )


if __name__ == "__main__":
    main()
