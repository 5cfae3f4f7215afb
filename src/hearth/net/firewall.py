"""nftables rules for the VM network: what a VM may reach (by default nothing beyond the
gateway; the operator may allow listed host:port destinations) and what reaches a VM (only
the controller, on the guest's service ports)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hearth.net.topology import VmNetwork


def ruleset(net: VmNetwork) -> str:
    """The whole `inet hearth` table, replaced atomically on every load."""
    ports = ", ".join(str(p) for p in net.guest_ports)
    from_controller = (
        f'iifname "{net.veth_vms}" oifname "{net.bridge}" tcp dport {{ {ports} }} accept\n'
        f'        iifname "{net.veth_vms}" oifname "{net.bridge}" icmp type echo-request accept'
        if net.netns
        else ""
    )
    egress = "\n        ".join(
        f'iifname "{net.bridge}" ip daddr {host} tcp dport {port} accept'
        for host, port in net.egress
    )
    return f"""table inet hearth
delete table inet hearth
table inet hearth {{
    chain forward {{
        # Judge only traffic to or from the VMs: the table may share a namespace with others.
        type filter hook forward priority 0; policy accept;
        iifname "{net.bridge}" oifname "{net.bridge}" drop
        ct state established,related accept
        {from_controller}
        {egress}
        iifname "{net.bridge}" drop
        oifname "{net.bridge}" drop
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname "{net.bridge}" ct state established,related accept
        iifname "{net.bridge}" icmp type echo-request accept
        iifname "{net.bridge}" drop
    }}
}}
"""
