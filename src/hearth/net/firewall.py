"""nftables rules for the VM network: what a VM may reach (its gateway's DNS responder and
egress proxy, where its DNS and its TCP 80/443 are sent whatever the address they were
meant for; nothing else) and what reaches a VM (only the controller, on the guest's
service ports)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hearth.net.topology import VmNetwork

EGRESS_PORTS = (80, 443)  # the proxy's (hearth.net.egress.proxy)
DNS_PORT = 53


def ruleset(net: VmNetwork) -> str:
    """The whole `inet hearth` table, replaced atomically on every load."""
    ports = ", ".join(str(p) for p in net.guest_ports)
    egress = ", ".join(str(p) for p in EGRESS_PORTS)
    from_controller = (
        f'iifname "{net.veth_vms}" oifname "{net.bridge}" tcp dport {{ {ports} }} accept\n'
        f'        iifname "{net.veth_vms}" oifname "{net.bridge}" icmp type echo-request accept'
        if net.netns
        else ""
    )
    return f"""{_port_bindings(net)}
table inet hearth
delete table inet hearth
table inet hearth {{
    chain prerouting {{
        # Whatever address a VM meant, its web and DNS traffic goes to its gateway.
        type nat hook prerouting priority dstnat; policy accept;
        iifname "{net.bridge}" ip daddr != {net.gateway.ip} tcp dport {{ {egress} }} redirect
        iifname "{net.bridge}" ip daddr != {net.gateway.ip} meta l4proto {{ tcp, udp }} \
            th dport {DNS_PORT} redirect
    }}
    chain forward {{
        # Judge only traffic to or from the VMs: the table may share a namespace with others.
        type filter hook forward priority 0; policy accept;
        iifname "{net.bridge}" oifname "{net.bridge}" drop
        ct state established,related accept
        {from_controller}
        iifname "{net.bridge}" drop
        oifname "{net.bridge}" drop
    }}
    chain input {{
        type filter hook input priority 0; policy accept;
        iifname "{net.bridge}" ct state established,related accept
        iifname "{net.bridge}" ip daddr {net.gateway.ip} tcp dport {{ {egress}, {DNS_PORT} }} accept
        iifname "{net.bridge}" ip daddr {net.gateway.ip} udp dport {DNS_PORT} accept
        iifname "{net.bridge}" ip daddr {net.gateway.ip} icmp type echo-request accept
        iifname "{net.bridge}" drop
    }}
}}
"""


def _port_bindings(net: VmNetwork) -> str:
    """The `bridge hearth` table: its set of (port, MAC, address) bindings outlives reloads
    (declared, never deleted; VmNetwork.add_tap fills it), its rules are replaced."""
    ports = f'iifname "{net.tap_prefix}*"'
    return f"""table bridge hearth {{
    set ports {{ type ifname . ether_addr . ipv4_addr; }}
    chain prerouting {{ type filter hook prerouting priority -200; policy accept; }}
}}
flush chain bridge hearth prerouting
table bridge hearth {{
    chain prerouting {{
        {ports} ether type ip iifname . ether saddr . ip saddr != @ports drop
        {ports} ether type arp iifname . ether saddr . arp saddr ip != @ports drop
        {ports} ether type != {{ ip, arp }} drop
    }}
}}"""
