"""Throwaway network namespaces for the controller: tests, benches and the demo run Hearth
inside one they create, so nothing they do touches the host's own network, and delete it
(with everything in it) afterwards.

A test and demo tool, not part of the product's network (hearth.net): the controller never
makes a namespace of its own accord; only `hearth vm demo`, `hearth demo`, tests and benches do.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import subprocess
from collections.abc import Iterator

from pyroute2 import netns

from hearth.net.namespace import nsenter as nsenter  # re-exported: tests and benches use it


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


def link(left: str, right: str, network: ipaddress.IPv4Network) -> tuple[str, str]:
    """Join two namespaces with a veth pair on `network`: the left end gets its first
    address, the right end its second; both are returned. Routes are the caller's."""
    left_ip, right_ip = (str(a) for a in list(network.hosts())[:2])
    left_if, right_if = f"l{secrets.token_hex(3)}", f"r{secrets.token_hex(3)}"
    prefix = network.prefixlen
    subprocess.run(
        [
            "ip",
            "link",
            "add",
            left_if,
            "netns",
            left,
            "type",
            "veth",
            "peer",
            "name",
            right_if,
            "netns",
            right,
        ],
        check=True,
    )
    for ns, name, address in ((left, left_if, left_ip), (right, right_if, right_ip)):
        subprocess.run(
            ["ip", "-n", ns, "addr", "add", f"{address}/{prefix}", "dev", name], check=True
        )
        subprocess.run(["ip", "-n", ns, "link", "set", name, "up"], check=True)
    return left_ip, right_ip
