"""What a VM really costs: the VMM's resident memory (VmRSS) for a browser VM at the sign-in
page, an idle CLI VM and a CLI VM during a prompt, boot seconds and the seconds from a
sign-in's start to its page painted, per translation-cache size (QEMU's
`-accel tcg,tb-size=N`; 0 is QEMU's own default, 1 GiB) and with free page reporting on
or off (the virtio balloon), at the guest memory per image the settings give or the options.

Each size gets a demo stack of its own (hearth.demo: controller, VM network, demo IdP, each
in a namespace it makes): a demo sign-in as a person does it (Chromium through the live
view), then prompts in the user's CLI VM: the demo CLI, and the Node.js CLIs' start-up
(`--version`: the JavaScript a real prompt loads first). A sampler reads every VMM's VmRSS
from /proc twice a second; an idle VM's figure is its peak over IDLE_SECONDS and its RSS at
their end (what free page reporting has handed back by then). Run as root from the
repository root:
    python -m bench.vm_memory --tb-sizes 0,256,128
    python -m bench.vm_memory --tb-sizes 256 --free-page-reporting on,off --cli-memory 512
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from bench.harness import built_images, exit_on_sigterm, seconds_between, vmm_rss_mib
from hearth.config import Settings
from hearth.core import runtime
from hearth.core.vms import VmManager
from hearth.demo.sandbox import inside
from hearth.demo.stack import stack
from hearth.guest.protocol import RunExit
from hearth.store.models import AuthSession, AuthSessionStatus, Vm
from hearth.waiting import wait_for
from tests.e2e.browser_user import sign_in
from tests.e2e.conftest import IMAGES

SAMPLE_EVERY = 0.5
IDLE_SECONDS = 30.0  # an idle CLI VM is sampled this long after its last prompt
NODE_CLIS = (["claude", "--version"], ["gemini", "--version"], ["codex", "--version"])
USER = "bench-memory"


class Sampler:
    """Every running VMM's VmRSS, twice a second: each VM's peak and latest, MiB; and each
    browser VM's RSS when its session first showed the sign-in page."""

    def __init__(self, vms: VmManager):
        self.vms = vms
        self.peak: dict[str, float] = defaultdict(float)
        self.latest: dict[str, float] = {}
        self.at_page: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            for vm_id, rss in vmm_rss_mib(self.vms).items():
                self.latest[vm_id] = rss
                self.peak[vm_id] = max(self.peak[vm_id], rss)
            with self.vms.db.session() as s:
                showing = s.scalars(
                    select(AuthSession.vm_id).where(
                        AuthSession.status == AuthSessionStatus.awaiting_user
                    )
                )
                for vm_id in showing:
                    if vm_id in self.latest:
                        self.at_page.setdefault(vm_id, self.latest[vm_id])

    def window(self, vm_id: str, seconds: float) -> tuple[float, float]:
        """The VM's peak over the next `seconds` of samples, and its latest at their end."""
        self.peak[vm_id] = 0.0
        self._stop.wait(seconds)  # returns early only when the sampler is being stopped
        return self.peak[vm_id], self.latest[vm_id]


@dataclass(frozen=True)
class Variant:
    """One measured configuration of the VMs."""

    tb_size_mib: int
    free_page_reporting: bool
    browser_memory_mib: int
    cli_memory_mib: int

    @property
    def name(self) -> str:
        reporting = "fpr" if self.free_page_reporting else "nofpr"
        return f"tb{self.tb_size_mib}-{reporting}-b{self.browser_memory_mib}-c{self.cli_memory_mib}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "HEARTH_QEMU_TB_SIZE_MIB": str(self.tb_size_mib),
            "HEARTH_FREE_PAGE_REPORTING": str(self.free_page_reporting).lower(),
            "HEARTH_BROWSER_MEMORY_MIB": str(self.browser_memory_mib),
            "HEARTH_CLI_MEMORY_MIB": str(self.cli_memory_mib),
        }


def measure(variant: Variant, images: Path, tmp: Path) -> dict:
    home = tmp / f"home-{variant.name}"
    home.mkdir()
    (home / "images").symlink_to(images)
    with stack(Settings(home=home), controller_env=variant.env) as s:
        vms = runtime.vm_manager(s.settings)
        with Sampler(vms) as sampler:
            session = sign_in(s, USER, tmp / f"shots-{variant.name}")
            browser = vms.get(session_vm(vms, session["session_id"]))
            for kind, data in s.prompt(USER, "How much memory does this take?"):
                if kind == "error":
                    raise RuntimeError(f"the prompt failed: {data}")
            cli = vms.get(cli_vm(vms))
            prompt_peak = sampler.peak[cli.id]
            idle, idle_end = sampler.window(cli.id, IDLE_SECONDS)
            sampler.peak[cli.id] = 0.0
            node_seconds = run_node_clis(vms, s.controller_ns, cli)
            node_peak = sampler.peak[cli.id]
            idle_after_node, idle_end_after_node = sampler.window(cli.id, IDLE_SECONDS)
    return {
        "tb_size_mib": variant.tb_size_mib,
        "free_page_reporting": variant.free_page_reporting,
        "browser_memory_mib": variant.browser_memory_mib,
        "cli_memory_mib": variant.cli_memory_mib,
        "browser_boot_s": round(browser.boot_seconds, 1),
        "start_to_sign_in_page_s": seconds_between(session["timeline"], "started", "awaiting_user"),
        "browser_rss_at_sign_in_page_mib": round(sampler.at_page.get(browser.id, 0.0)),
        "browser_rss_peak_mib": round(sampler.peak[browser.id]),
        "cli_boot_s": round(cli.boot_seconds, 1),
        "cli_rss_during_demo_prompt_mib": round(prompt_peak),
        "cli_rss_idle_mib": round(idle),
        "cli_rss_idle_end_mib": round(idle_end),
        "cli_rss_during_node_clis_mib": round(node_peak),
        "cli_node_clis_s": node_seconds,
        "cli_rss_idle_after_node_clis_mib": round(idle_after_node),
        "cli_rss_idle_end_after_node_clis_mib": round(idle_end_after_node),
    }


def session_vm(vms: VmManager, session_id: str) -> str:
    with vms.db.session() as s:
        return s.get(AuthSession, session_id).vm_id


def cli_vm(vms: VmManager) -> str:
    with vms.db.session() as s:
        return s.scalars(select(Vm.id).where(Vm.user_id == USER)).one()


def run_node_clis(vms: VmManager, namespace: str, vm: Vm) -> float:
    """Start each Node.js CLI in the VM (from the controller's namespace, where its address
    is); the seconds they took together."""
    seconds = 0.0

    def run() -> None:
        nonlocal seconds
        with inside(namespace), vms.agent(vm) as agent:
            for argv in NODE_CLIS:
                with agent.run(argv, timeout=300) as events:
                    seconds += sum(e.duration for e in events if isinstance(e, RunExit))

    thread = threading.Thread(target=run)
    thread.start()
    wait_for(lambda: not thread.is_alive(), 900, "the Node.js CLIs to start and exit")
    return round(seconds, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Settings()
    parser.add_argument("--tb-sizes", default="0,256", help="comma-separated MiB; 0: QEMU's")
    parser.add_argument(
        "--free-page-reporting", default="on", help="comma-separated on/off: each is measured"
    )
    parser.add_argument("--browser-memory", type=int, default=defaults.browser_memory_mib)
    parser.add_argument("--cli-memory", type=int, default=defaults.cli_memory_mib)
    parser.add_argument("--images-dir", type=Path, default=IMAGES)
    args = parser.parse_args()
    images = built_images(parser, args.images_dir, "browser", "cli")
    exit_on_sigterm()
    reporting = {"on": True, "off": False}
    variants = [
        Variant(int(size), reporting[fpr], args.browser_memory, args.cli_memory)
        for size, fpr in itertools.product(
            args.tb_sizes.split(","), args.free_page_reporting.split(",")
        )
    ]
    with tempfile.TemporaryDirectory(prefix="hearth-bench-memory-") as tmp:
        for variant in variants:
            print(json.dumps(measure(variant, images, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
