"""The VM seed: a raw block device holding a UTF-8 JSON object followed by NUL padding.

The controller writes one per VM (a fresh agent token, and a VNC password for browser VMs)
and attaches it as the second virtio disk; the guest reads it at boot. A raw device rather
than the kernel command line or a mounted filesystem keeps the secrets out of /proc/cmdline
and needs no mount. Standard library only: the guest runs this with Debian's python3, and
the host imports it (as hearth.guest.seed) to write the file.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

if __package__:
    from . import fileio
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import fileio

DEFAULT_PATH = "/dev/vdb"
SEED_SIZE = 1024 * 1024
SECTOR = 512
POLL_SECONDS = 0.02  # between looks for the device node, within the deadline


class SeedError(ValueError):
    """The seed is missing, malformed or incomplete; the message never quotes its contents."""


def _check(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise SeedError(f"{where} must hold a JSON object, not {type(data).__name__}")
    token = data.get("agent_token")
    if not isinstance(token, str) or not token:
        raise SeedError(f"{where} has no agent_token (a non-empty string)")
    return data


def read_seed(
    path: str | os.PathLike[str] = DEFAULT_PATH, limit: int = SEED_SIZE, wait: float = 0.0
) -> dict[str, Any]:
    """Read the JSON object at the start of `path`, up to the first NUL (or `limit` bytes).

    `wait`: seconds to poll for the device node first. The kernel creates it in devtmpfs as
    soon as the disk is probed, so the guest's units need not wait for udev's .device unit.
    """
    where = f"seed {os.fspath(path)}"
    deadline = time.monotonic() + wait
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    with open(path, "rb") as f:
        raw = f.read(limit)
    text = raw.split(b"\0", 1)[0]
    if not text.strip():
        raise SeedError(f"{where} is empty (no JSON before the NUL padding)")
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SeedError(f"{where} is not UTF-8 (bad byte at offset {e.start})") from None
    try:
        data = json.loads(decoded)
    except json.JSONDecodeError as e:
        # `from None`: a JSONDecodeError carries the whole document, secrets included.
        raise SeedError(
            f"{where} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None
    return _check(data, where)


def read_guest_seed() -> dict[str, Any]:
    """The seed as guest services read it: HEARTH_SEED (default /dev/vdb), waiting up to
    HEARTH_SEED_WAIT seconds (default 30) for the device to appear."""
    path = os.environ.get("HEARTH_SEED", DEFAULT_PATH)
    return read_seed(path, wait=float(os.environ.get("HEARTH_SEED_WAIT", "30")))


def write_seed(path: str | os.PathLike[str], data: dict[str, Any], size: int = SEED_SIZE) -> None:
    """Write `data` as a seed image of exactly `size` bytes, mode 0600, atomically."""
    if size <= 0 or size % SECTOR:
        raise SeedError(f"seed size {size} is not a positive multiple of {SECTOR} bytes")
    payload = json.dumps(
        _check(data, "seed data"), ensure_ascii=False, separators=(",", ":"), sort_keys=True
    ).encode("utf-8")
    if len(payload) >= size:
        raise SeedError(
            f"seed JSON is {len(payload)} bytes; it must be shorter than the {size}-byte image"
        )
    fileio.write_atomic(path, payload + b"\0" * (size - len(payload)), 0o600, durable=True)
