"""Image layers cached by the hash of their inputs, stacked with overlayfs.

A layer is the upper directory of the overlay it was built in: only what its steps changed.
It is built aside and renamed into place at the end, so an interrupted build leaves no layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hearth.image.chroot import run


def key_of(*parts: object) -> str:
    """A short stable hash of JSON-able inputs."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def tree_digest(root: Path) -> str:
    """Hash of every file's path, mode and content under `root` (skipping caches)."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(b"%o\0" % (path.stat().st_mode & 0o777))
        h.update(path.read_bytes())
    return h.hexdigest()[:20]


class LayerStore:
    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str, key: str) -> Path:
        return self.root / f"{name}-{key}"

    def has(self, name: str, key: str) -> bool:
        return self.path(name, key).is_dir()

    def clean_partial(self) -> None:
        """Remove what an interrupted build left: its mounts first, then its directories."""
        if not self.root.exists():
            return
        for mount in _mounts_under(self.root):
            subprocess.run(["umount", "-l", mount], check=False)
        for partial in self.root.glob(".partial-*"):
            shutil.rmtree(partial, ignore_errors=True)

    @contextlib.contextmanager
    def build(self, name: str, key: str, lowers: list[Path]) -> Iterator[Path]:
        """Yield a writable tree over `lowers` (top first); keep its changes as the layer."""
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".partial-{name}-", dir=self.root))
        upper = work / "upper"
        upper.mkdir()
        if lowers:
            with _overlay(lowers, upper=upper, work=work) as merged:
                yield merged
        else:
            yield upper
        upper.rename(self.path(name, key))
        shutil.rmtree(work)

    @contextlib.contextmanager
    def view(self, lowers: list[Path]) -> Iterator[Path]:
        """A read-only merged view of `lowers` (top first)."""
        if len(lowers) == 1:
            yield lowers[0]
            return
        self.root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".partial-view-", dir=self.root))
        try:
            with _overlay(lowers, upper=None, work=work) as merged:
                yield merged
        finally:
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _overlay(lowers: list[Path], upper: Path | None, work: Path) -> Iterator[Path]:
    merged = work / "merged"
    merged.mkdir()
    lowerdir = ":".join(str(p) for p in lowers)
    if upper is None:
        opts = f"lowerdir={lowerdir}"
    else:
        (work / "work").mkdir()
        opts = f"lowerdir={lowerdir},upperdir={upper},workdir={work / 'work'}"
    run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], "mount the layer overlay")
    try:
        yield merged
    finally:
        for mount in reversed(_mounts_under(merged)):
            subprocess.run(["umount", "-l", mount], check=False)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    mounts = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target == prefix or target.startswith(prefix + "/"):
            mounts.append(target)
    return mounts
