"""Where noVNC's browser files are: Debian's `novnc` package, else npm's @novnc/novnc.

Hearth serves noVNC itself (no CDN), so the controller needs a copy on disk. Both sources
ship the same ES modules: `core/rfb.js` and what it imports from `core/` and `vendor/`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

DEBIAN_DIR = Path("/usr/share/novnc")
NPM_PACKAGE = "@novnc/novnc@1.7.0"
ENTRY = Path("core/rfb.js")


class NoVncNotFound(RuntimeError):
    pass


def npm_cache_dir() -> Path:
    """The folder npm installs @novnc/novnc into for Hearth (`npm install --prefix`)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "hearth" / "novnc"


def candidates() -> list[Path]:
    """noVNC's roots, in order of preference."""
    return [DEBIAN_DIR, npm_cache_dir() / "node_modules" / "@novnc" / "novnc"]


def find_novnc(roots: Sequence[Path] | None = None) -> Path:
    """The first root holding noVNC's `core/rfb.js`; NoVncNotFound says how to get one."""
    roots = candidates() if roots is None else roots
    for root in roots:
        if (root / ENTRY).is_file():
            return root
    looked = ", ".join(str(root) for root in roots)
    raise NoVncNotFound(
        f"noVNC not found (looked in {looked}): install Debian's package "
        f"(apt-get install novnc) or run `npm install --prefix {npm_cache_dir()} {NPM_PACKAGE}`"
    )
