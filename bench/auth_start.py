"""Sign-in timings per provider, cold and pooled: start to the sign-in page painted, approve
to completed.

Seconds from `POST /api/auth/start` to the session turning `awaiting_user` (the agent says so
once the browser VM's Firefox has painted the provider's page), and from the approving Enter
typed in Chromium through the live view to the session `completed`; and the controller's RSS.
Each provider runs three times: on a controller without a warm pool (every browser VM booted
cold), on one with a pool of one (hearth.core.warm_pool) on the blank page ("pooled": the
login starts once the VM is taken), and on one whose pool VM is prepared for the provider
("ahead": its login started and its sign-in page shown before it hibernated); each pooled
run waits first for the pool's VM to be warm, so that it measures a take, not a refill; then
the ratios of the medians to the cold one.

The real CLIs sign in to their providers' stand-ins on the egress rig (tests/egress_rig.py);
the demo CLI to the demo IdP on the demo stack (hearth.demo.stack), as the rig has no demo IdP. Both
run in namespaces they create. Run as root from the repository root, so that `tests` imports
as a package:
    python -m bench.auth_start --providers demo,codex --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from playwright.sync_api import Error as PlaywrightError

from bench.harness import built_images, rss_mib
from hearth.config import Settings
from hearth.core import runtime
from hearth.core.vms import VmManager
from hearth.core.warm_pool import WARM
from hearth.demo.stack import stack
from hearth.store.models import Vm, VmState
from hearth.waiting import Timeout, wait_for
from tests.e2e.browser_user import END_STATES, live_view
from tests.e2e.conftest import IMAGES
from tests.egress_rig import rig

PROVIDERS = ("demo", "claude_code", "codex", "gemini_cli")
MODES = ("cold", "pooled", "ahead")  # no pool; a pool on the blank page; sign-in page ahead
POOL_WAIT = 600  # seconds for the pool's VM to boot, paint Firefox and hibernate


@dataclass
class Controller:
    api: httpx.Client
    pid: int
    settings: Settings
    fields: tuple[str, ...]  # what the user types, Tab between, before the approving Enter


@contextlib.contextmanager
def controller(provider: str, images: Path, tmp: Path, mode: str) -> Iterator[Controller]:
    """A controller that can sign `provider` in, with the warm pool of `mode` (MODES), until
    the block ends."""
    env = {
        "HEARTH_POOL_BROWSER": "0" if mode == "cold" else "1",
        "HEARTH_POOL_PROVIDERS": json.dumps([provider] if mode == "ahead" else []),
    }
    if provider == "demo":
        home = tmp / "home"
        home.mkdir()
        (home / "images").symlink_to(images)
        with stack(Settings(home=home), controller_env=env) as s:
            yield Controller(s.api, s.controller_pid, s.settings, (s.user, s.password))
        return
    with rig(tmp, images=images, browsers=True, standins=True, trust_ca=True, **env) as r:
        try:
            yield Controller(r.api, r.controller_pid, r.settings, ())  # Enter approves
        finally:
            r.hearth("vm", "rm", "--all")


class SignInFailed(Exception):
    """The session ended before the status a run waited for: a failed run, not a crash."""


def timed_sign_in(c: Controller, user_id: str, provider: str) -> tuple[float, float]:
    """One sign-in as a person does it: (start -> page painted, approve -> completed) s."""
    began = time.monotonic()
    started = c.api.post("/api/auth/start", json={"user_id": user_id, "provider": provider})
    started.raise_for_status()
    path = f"/api/auth/session/{started.json()['session_id']}"

    def reached(status: str, timeout: float) -> None:
        """Wait for `status`; a session that ends otherwise fails the run."""

        def now() -> dict | None:
            session = c.api.get(path).json()
            return session if session["status"] in (status, *END_STATES) else None

        session = wait_for(now, timeout, f"the session to turn {status}", interval=0.2)
        if session["status"] != status:
            raise SignInFailed(f"{session['status']}: {session['error']}")

    try:
        reached("awaiting_user", 600)
        painted = time.monotonic() - began
        with live_view(started.json()["connect_url"]) as (page, canvas):
            # Keys typed before the viewer's VNC connection is up are lost.
            page.locator("#viewer-state", has_text="Connected").wait_for(timeout=60_000)
            canvas.focus()  # without a click, which could move Firefox's focus
            for n, field in enumerate(c.fields):
                if n:
                    page.keyboard.press("Tab")
                page.keyboard.type(field, delay=60)
            pressed = time.monotonic()
            page.keyboard.press("Enter")
            reached("completed", 600)
            return painted, time.monotonic() - pressed
    finally:
        c.api.post(f"{path}/cancel")  # a no-op once the session ended


def median(seconds: list[float]) -> float | None:
    return round(statistics.median(seconds), 1) if seconds else None


def bench(provider: str, runs: int, images: Path, mode: str) -> dict:
    """`runs` sign-ins one after another on one controller, each with a cold browser VM, or
    each with a warm one from its pool (of `mode`)."""
    painted, approved, failures, rss = [], [], [], []
    with (
        tempfile.TemporaryDirectory(prefix="hearth-bench-auth-") as tmp,
        controller(provider, images, Path(tmp), mode) as c,
    ):
        vms = runtime.vm_manager(c.settings)
        for run in range(runs):
            try:
                if mode != "cold":
                    wait_for(lambda: warm_vms(vms), POOL_WAIT, "a warm pool VM", interval=1)
                page_s, approve_s = timed_sign_in(c, f"bench-{run}", provider)
                painted.append(page_s)
                approved.append(approve_s)
            except (SignInFailed, Timeout, PlaywrightError) as e:
                failures.append(f"run {run}: {str(e).splitlines()[0]}")
            rss.append(rss_mib(c.pid))
            wait_for(lambda: session_vms(vms) == [], 300, "the browser VM to go")
    return {
        "runs": runs,
        "ok": len(approved),
        "failures": failures,
        "median_start_to_page_s": median(painted),
        "median_approve_to_completed_s": median(approved),
        "controller_rss_mib_max": round(max(rss), 1),
    }


def warm_vms(vms: VmManager) -> list[Vm]:
    return [vm for vm in vms.list() if vm.pool == WARM and vm.state == VmState.hibernated]


def session_vms(vms: VmManager) -> list[Vm]:
    """The VMs sign-ins hold (the pool's own are not theirs)."""
    return [vm for vm in vms.list() if vm.pool is None]


def every_mode(provider: str, runs: int, images: Path) -> dict:
    figures: dict = {"provider": provider}
    for mode in MODES:
        figures[mode] = bench(provider, runs, images, mode)
    cold_s = figures["cold"]["median_start_to_page_s"]
    for mode in MODES[1:]:
        mode_s = figures[mode]["median_start_to_page_s"]
        figures[f"cold_to_{mode}_ratio"] = round(cold_s / mode_s, 1) if cold_s and mode_s else None
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--providers",
        default=",".join(PROVIDERS),
        help=f"comma-separated, of {', '.join(PROVIDERS)}",
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--images-dir", type=Path, default=IMAGES)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    chosen = args.providers.split(",")
    if unknown := set(chosen) - set(PROVIDERS):
        parser.error(f"unknown providers: {', '.join(sorted(unknown))}")
    images = built_images(parser, args.images_dir, "browser")

    for provider in chosen:
        figures = every_mode(provider, args.runs, images)
        if args.json:
            print(json.dumps(figures), flush=True)
            continue
        print(
            f"{provider}: cold / pooled = {figures['cold_to_pooled_ratio']}, "
            f"cold / ahead = {figures['cold_to_ahead_ratio']}",
            flush=True,
        )
        for mode in MODES:
            f = figures[mode]
            print(
                f"  {mode}: start -> sign-in page {f['median_start_to_page_s']} s, "
                f"approve -> completed {f['median_approve_to_completed_s']} s "
                f"(medians, {f['ok']}/{args.runs} runs); controller RSS up to "
                f"{f['controller_rss_mib_max']} MiB",
                flush=True,
            )
            for failure in f["failures"]:
                print(f"    failed: {failure}")


if __name__ == "__main__":
    main()
