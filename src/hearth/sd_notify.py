"""systemd's notify protocol, for `Type=notify`: one datagram to the socket NOTIFY_SOCKET
names (a path, or an abstract name written with a leading "@"), e.g. b"READY=1"."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

READY = "READY=1"
STOPPING = "STOPPING=1"


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Tell the service manager `state`; False when no manager listens (not under systemd)."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(state.encode(), address)
    return True
