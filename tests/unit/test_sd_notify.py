"""systemd's notify protocol (hearth.sd_notify) against a real unix datagram socket bound
here, as systemd binds the one it names in NOTIFY_SOCKET."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from hearth import sd_notify


def bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_each_state_is_one_datagram_to_the_socket_named(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with bound(path) as manager:
        assert sd_notify.notify(sd_notify.READY, {"NOTIFY_SOCKET": path})
        assert sd_notify.notify(sd_notify.STOPPING, {"NOTIFY_SOCKET": path})
        assert manager.recv(4096) == b"READY=1"
        assert manager.recv(4096) == b"STOPPING=1"


def test_an_abstract_socket_is_named_with_an_at_sign() -> None:
    name = f"hearth-test-notify-{os.getpid()}"
    with bound("\0" + name) as manager:
        assert sd_notify.notify(sd_notify.READY, {"NOTIFY_SOCKET": "@" + name})
        assert manager.recv(4096) == b"READY=1"


def test_without_a_service_manager_nothing_is_sent() -> None:
    assert sd_notify.notify(sd_notify.READY, {}) is False
