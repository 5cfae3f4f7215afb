"""Addresses no VM may reach whatever its policy says: a name that resolves into one of these
ranges (DNS rebinding) is refused like the address itself."""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

NEVER = tuple(
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",  # private
        "100.64.0.0/10",  # shared (carrier-grade NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, 169.254.169.254 (cloud metadata) among them
        "192.0.0.0/24",  # IETF protocol assignments
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",
        "240.0.0.0/4",  # multicast, reserved and broadcast
        "::/128",
        "::1/128",  # unspecified, loopback
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "ff00::/8",  # multicast
        "64:ff9b:1::/48",  # local-use NAT64
    )
)
NAMES = {
    "0.0.0.0/8": "a 'this network' address",
    "100.64.0.0/10": "a shared address",
    "127.0.0.0/8": "a loopback address",
    "::1/128": "a loopback address",
    "169.254.0.0/16": "a link-local address",
    "fe80::/10": "a link-local address",
}


def refusal(address: Address, local: frozenset[Address] = frozenset()) -> str | None:
    """Why `address` may not be dialled for a VM (None if it may): a range in NEVER, or one of
    the controller's own addresses (`local`: the host reached by its public address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address in local:
        return f"{address} is the controller's own address"
    for network in NEVER:
        if address in network:
            kind = NAMES.get(str(network), "a private or reserved address")
            return f"{address} is {kind} ({network})"
    return None
