"""The VMs' network: namespace, bridge, TAPs, addresses, firewall and egress."""

from hearth.errors import HearthError


class NetworkError(HearthError):
    """The VM network could not be set up or used as asked."""
