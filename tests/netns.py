"""Network namespaces the tests create and own: every test that touches networking runs
its controller, bridge, VMs and peers inside them, and deletes them afterwards."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator

from pyroute2 import netns


@contextlib.contextmanager
def test_namespace(prefix: str = "hearth-test") -> Iterator[str]:
    """A fresh namespace with loopback up; deleted (with all it holds) on exit."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    netns.create(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        if name in netns.listnetns():
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
