"""Where tests keep what a person should look at afterwards (screenshots):
$HEARTH_TEST_ARTIFACTS, by default artifacts/ in the checkout."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(
    os.environ.get("HEARTH_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts")
)


def artifacts_dir(name: str) -> Path:
    """The directory of `name`'s artefacts, made if need be."""
    path = ROOT / name
    path.mkdir(parents=True, exist_ok=True)
    return path
