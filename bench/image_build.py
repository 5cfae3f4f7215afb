"""Image build times: cold (empty layer cache), warm with nothing changed, and warm after an
agent-only change (the guest layer and the ext4 image rebuilt, the rest from cache).

Run as root; the cold build fetches from the configured mirror and npm registry:
    python -m bench.image_build --image cli
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from hearth.config import Settings
from hearth.image.builder import GUEST_DIR, ImageBuilder


def timed_build(settings: Settings, image: str, guest_dir: Path) -> tuple[float, bool]:
    started = time.monotonic()
    result = ImageBuilder(settings, guest_dir=guest_dir).build(image)
    return round(time.monotonic() - started, 1), result.rebuilt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="cli")
    parser.add_argument(
        "--home",
        type=Path,
        help="a Hearth home to build in (default: a new "
        "temporary one, which makes the first build cold)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hearth-bench-build-", dir="/var/tmp") as tmp:
        settings = Settings(home=args.home or Path(tmp) / "home")
        changed = Path(tmp) / "guest"
        shutil.copytree(GUEST_DIR, changed, ignore=shutil.ignore_patterns("__pycache__"))
        with (changed / "agent.py").open("a") as agent:
            agent.write("\n# bench: an agent-only change\n")
        figures = {}
        figures["first_s"], figures["first_rebuilt"] = timed_build(settings, args.image, GUEST_DIR)
        figures["unchanged_s"], _ = timed_build(settings, args.image, GUEST_DIR)
        figures["agent_change_s"], _ = timed_build(settings, args.image, changed)
        if args.home is None:
            shutil.rmtree(settings.home / "cache", ignore_errors=True)
    figures["first_kind"] = "cold" if args.home is None else "as the cache was"
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{args.image}: first build ({figures['first_kind']}) {figures['first_s']}s, "
        f"unchanged {figures['unchanged_s']}s, after an agent-only change "
        f"{figures['agent_change_s']}s"
    )


if __name__ == "__main__":
    main()
