"""Names and addresses derived from what a VM already has, so they are never stored twice."""

from __future__ import annotations

import ipaddress


def mac_for(ip: str) -> str:
    """06:00 (locally administered, unicast) followed by the four bytes of the guest IPv4."""
    return "06:00:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def tap_name(prefix: str, vm_id: str) -> str:
    """A deterministic TAP name within Linux's 15-character limit."""
    name = f"{prefix}{vm_id}"[:15]
    if len(prefix) > 6:
        raise ValueError(f"TAP prefix {prefix!r} is too long (at most 6 characters)")
    return name


def kernel_ip_arg(ip: str, gateway: ipaddress.IPv4Interface, hostname: str) -> str:
    """The kernel's ip= argument in its full form, read inside the guest by hearth-net; the
    gateway is also the guest's DNS server (hearth.net.egress.dns)."""
    mask = gateway.network.netmask
    return f"ip={ip}::{gateway.ip}:{mask}:{hostname}:eth0:off:{gateway.ip}"
