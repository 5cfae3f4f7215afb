"""Throwaway network namespaces for the controller: tests, benches and the demo run Hearth
inside one they create, so nothing they do touches the host's own network, and delete it
(with everything in it) afterwards."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator

from pyroute2 import netns


@contextlib.contextmanager
def sandbox(prefix: str = "hearth-test", keep: bool = False) -> Iterator[str]:
    """A fresh namespace with loopback up; deleted (with all it holds) on exit unless kept."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        if not keep and name in netns.listnetns():
            netns.remove(name)


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Run this thread's new sockets inside namespace `name` (setns is per thread)."""
    netns.pushns(name)
    try:
        yield
    finally:
        netns.popns()


def nsenter(name: str) -> list[str]:
    """The argv prefix that runs a command in `name` without a private mount namespace,
    so that namespaces Hearth creates from there are visible to everyone."""
    return ["nsenter", f"--net=/run/netns/{name}"]
