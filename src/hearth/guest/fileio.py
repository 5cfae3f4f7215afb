"""Writing files so that no reader ever sees half of one and no secret is ever readable by
others, and the check that a path stays under HOME: one home for what the guest's modules
(the agent's custody and login, VNC, ipconfig, trust) and the host's (the VM
seed, the master key file, the VMM's pid file) all need.

A file is written under a temporary name in its own directory (so the rename never crosses
filesystems), created 0600 and exclusively (O_EXCL, O_NOFOLLOW: never through a planted
link), set to its final mode, and renamed over the target: readers see the old file or the
whole new one, and a dangling symlink at the target is replaced, not followed.

Standard library only: the guest runs this with Debian's python3, and the host imports it as
hearth.guest.fileio. ipconfig imports it on the boot's critical path, where every module
costs tens of milliseconds under software emulation: hence os.path rather than pathlib or
tempfile, and temporary names from the pid and a counter, which need no entropy that early.
(Named fileio, not files, beside the image's files/ trees.)
"""

from __future__ import annotations

import itertools
import os

_names = itertools.count()


def _create_temporary(target: str) -> tuple[int, str]:
    directory, name = os.path.split(target)
    while True:
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{next(_names)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), tmp
        except FileExistsError:  # left by a dead process that had our pid
            continue


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    mode: int,
    *,
    durable: bool = False,
    replace: bool = True,
) -> None:
    """Write `data` to `path` with exactly `mode` (whatever the umask), atomically.

    `durable`: flush the file and its directory to disk before returning. `replace` false:
    an existing file at `path` wins and FileExistsError is raised (the new file is linked
    into place, never renamed over another).
    """
    target = os.fspath(path)
    fd, tmp = _create_temporary(target)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            os.link(tmp, target)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    if durable:
        dir_fd = os.open(os.path.dirname(target) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def make_private_dirs(directory: str | os.PathLike[str]) -> None:
    """Create `directory` and any missing parents, each 0700 (whatever the umask)."""
    directory = os.path.abspath(directory)
    missing = []
    while not os.path.exists(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:  # made meanwhile by someone else: theirs to mode
            continue
        os.chmod(d, 0o700)


def write_private(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> None:
    """Write `data` to `path` as a 0600 file, atomically; missing directories are made 0700."""
    make_private_dirs(os.path.dirname(os.path.abspath(path)))
    write_atomic(path, data, 0o600, durable=durable)


def home_relative(path: str) -> str | None:
    """`path` normalised ("a//./b" is "a/b") if it names a file under HOME: relative, not HOME
    itself, no way out through ".."; None otherwise, for the caller to say so in its terms."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if path.startswith("/") or not parts or ".." in parts:
        return None
    return "/".join(parts)
