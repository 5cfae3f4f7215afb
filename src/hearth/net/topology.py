"""The VM network: a namespace Hearth owns, a bridge with the gateway address, one TAP per VM,
and a veth pair joining it to the controller's namespace, so VM traffic never touches the
host's real interfaces. Every operation is idempotent: `ensure()` repairs what is missing.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute, NetNS, netns
from pyroute2.netlink.exceptions import NetlinkError

from hearth.config import Settings
from hearth.guest.ports import AGENT_PORT, VNC_PORT
from hearth.net import NetworkError
from hearth.net.firewall import ruleset
from hearth.net.namespace import nsenter
from hearth.waiting import wait_for


@dataclass(frozen=True)
class VmNetwork:
    netns: str  # "" = the bridge lives in the controller's namespace
    bridge: str
    gateway: ipaddress.IPv4Interface
    link: ipaddress.IPv4Network  # the veth pair's /30
    tap_prefix: str
    guest_ports: tuple[int, ...]  # what the controller may reach on a guest
    # The controller's namespace, where the veth's other end and the route live: "" is this
    # process's own. Naming it lets a process elsewhere (a test, the demo) manage the network.
    controller_netns: str = ""

    @classmethod
    def from_settings(cls, s: Settings) -> VmNetwork:
        return cls(
            s.netns,
            s.bridge,
            s.gateway,
            ipaddress.IPv4Network(s.link_cidr),
            s.tap_prefix,
            (AGENT_PORT, VNC_PORT),
            s.controller_netns,
        )

    @property
    def vm_netns(self) -> str:
        """The namespace holding the bridge: Hearth's own, or the controller's."""
        return self.netns or self.controller_netns

    @property
    def veth_controller(self) -> str:
        return f"{self.bridge[:10]}-ctl"

    @property
    def veth_vms(self) -> str:
        return f"{self.bridge[:10]}-vms"

    @property
    def _link_hosts(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        controller, vms = list(self.link.hosts())[:2]
        return controller, vms

    # -- the whole network -------------------------------------------------------------------

    def ensure(self) -> None:
        """Create whatever of the network is missing; leave what exists alone."""
        if not self._netns_exists():
            netns.create(self.netns)
        with self._vm_side() as ip:
            _set_up(ip, "lo")
            bridge = _ensure_link(ip, self.bridge, kind="bridge")
            _ensure_addr(ip, bridge, self.gateway)
            ip.link("set", index=bridge, state="up")
        if self.netns:
            self._ensure_veth()
        self._sysctl("net.ipv4.ip_forward=1")
        self._nft(ruleset(self))

    def teardown(self) -> None:
        """Remove the network: deleting the namespace takes the bridge, TAPs and rules along."""
        if self.netns:
            with self._controller_side() as ip:
                for index in ip.link_lookup(ifname=self.veth_controller):
                    ip.link("del", index=index)
            if self.netns in netns.listnetns():
                netns.remove(self.netns)
        else:
            with self._controller_side() as ip:
                for index in ip.link_lookup(ifname=self.bridge):
                    ip.link("del", index=index)
            for family in ("inet", "bridge"):
                subprocess.run(
                    [*nsenter(self.controller_netns), "nft", "delete", "table", family, "hearth"],
                    check=False,
                    capture_output=True,
                )

    def exists(self) -> bool:
        if not self._netns_exists():
            return False
        with self._vm_side() as ip:
            return bool(ip.link_lookup(ifname=self.bridge))

    # -- the gateway's services (hearth.net.egress) ------------------------------------------

    def gateway_sockets(self, wanted: tuple[tuple[str, int], ...]) -> list[socket.socket]:
        """Sockets bound to the gateway address in the VMs' namespace, one per (kind, port),
        TCP ones listening; usable from any namespace once made (a socket stays where it
        was made). setns is per thread, so call this from a thread of its own."""
        made: list[socket.socket] = []
        with contextlib.ExitStack() as stack:
            if self.vm_netns:
                netns.pushns(self.vm_netns)
                stack.callback(netns.popns)
            try:
                for kind, port in wanted:
                    sock = socket.socket(
                        socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
                    )
                    made.append(sock)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((str(self.gateway.ip), port))
                    if kind == "tcp":
                        sock.listen(1024)
                    sock.setblocking(False)
            except OSError as e:
                for sock in made:
                    sock.close()
                raise NetworkError(f"cannot listen on the gateway {self.gateway.ip}: {e}") from e
        return made

    def controller_addresses(self) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """Every address of the controller's namespace: the host itself, which no VM may
        reach through egress whatever the name it uses."""
        with self._controller_side() as ip:
            return frozenset(ipaddress.ip_address(a.get_attr("IFA_ADDRESS")) for a in ip.get_addr())

    # -- TAPs --------------------------------------------------------------------------------

    def add_tap(self, name: str, mac: str, address: str) -> None:
        """A persistent TAP on the bridge, isolated from the other VMs' ports, that passes only
        `mac` and `address` (the VM's lease)."""
        with self._vm_side() as ip:
            index = _ensure_link(ip, name, kind="tuntap", mode="tap", ifr={"no_pi": True})
            bridge = _index(ip, self.bridge)
            ip.link("set", index=index, master=bridge, state="up")
            ip.brport("set", index=index, isolated=1)
        self.bind_port(name, mac, address)

    def bind_port(self, name: str, mac: str, address: str) -> None:
        """Let bridge port `name` pass frames from `mac` with `address` (and nothing else)."""
        element = f'{{ "{name}" . {mac} . {ipaddress.IPv4Address(address)} }}'
        self._exec(
            ["nft", "add", "element", "bridge", "hearth", "ports", element],
            f"binding {name} to {address}",
        )

    def remove_tap(self, name: str) -> None:
        with self._vm_side() as ip:
            for index in ip.link_lookup(ifname=name):
                ip.link("del", index=index)
        for element in self._bindings(name):
            self._exec(
                ["nft", "delete", "element", "bridge", "hearth", "ports", element],
                f"unbinding {name}",
            )

    def _bindings(self, name: str) -> list[str]:
        if not self._netns_exists():
            return []
        listed = subprocess.run(
            [*nsenter(self.vm_netns), "nft", "-j", "list", "set", "bridge", "hearth", "ports"],
            capture_output=True,
            text=True,
        )
        if listed.returncode != 0:  # no table yet: nothing is bound
            return []
        sets = [item["set"] for item in json.loads(listed.stdout)["nftables"] if "set" in item]
        return [
            f'{{ "{port}" . {mac} . {address} }}'
            for port, mac, address in (e["concat"] for s in sets for e in s.get("elem", []))
            if port == name
        ]

    def taps(self) -> list[str]:
        """Every TAP with Hearth's prefix, whether or not a VM still owns it."""
        if not self._netns_exists():
            return []
        with self._vm_side() as ip:
            names = [link.get_attr("IFLA_IFNAME") for link in ip.get_links()]
        return sorted(n for n in names if n.startswith(self.tap_prefix))

    def tap_state(self, name: str) -> dict | None:
        """The TAP's operational flags and bridge master, for checks and diagnostics."""
        if not self._netns_exists():
            return None
        with self._vm_side() as ip:
            found = ip.link_lookup(ifname=name)
            if not found:
                return None
            link = ip.get_links(found[0])[0]
            master = link.get_attr("IFLA_MASTER")
            master_name = ip.get_links(master)[0].get_attr("IFLA_IFNAME") if master else None
            return {"up": bool(link["flags"] & 1), "master": master_name}

    # -- helpers -----------------------------------------------------------------------------

    def _netns_exists(self) -> bool:
        return not self.netns or self.netns in netns.listnetns()

    def _vm_side(self) -> contextlib.AbstractContextManager[IPRoute]:
        return _rtnl(self.vm_netns)

    def _controller_side(self) -> contextlib.AbstractContextManager[IPRoute]:
        return _rtnl(self.controller_netns)

    def _ensure_veth(self) -> None:
        controller_addr, vms_addr = self._link_hosts
        prefix = self.link.prefixlen
        with self._controller_side() as ip:
            if not ip.link_lookup(ifname=self.veth_controller):
                self._remove_stale_vm_end()
                ip.link(
                    "add", ifname=self.veth_controller, kind="veth", peer={"ifname": self.veth_vms}
                )
                peer = _index(ip, self.veth_vms)
                ip.link("set", index=peer, net_ns_fd=self.netns)
            index = _index(ip, self.veth_controller)
            _ensure_addr(ip, index, ipaddress.IPv4Interface(f"{controller_addr}/{prefix}"))
            ip.link("set", index=index, state="up")
            _ensure_route(ip, str(self.gateway.network), str(vms_addr))
        with self._vm_side() as ip:
            index = _index(ip, self.veth_vms)
            _ensure_addr(ip, index, ipaddress.IPv4Interface(f"{vms_addr}/{prefix}"))
            ip.link("set", index=index, state="up")

    def _remove_stale_vm_end(self) -> None:
        """A VM-side veth end whose partner is gone (the controller's namespace was replaced)
        would block a new pair of the same name."""
        with self._vm_side() as ip:
            for index in ip.link_lookup(ifname=self.veth_vms):
                ip.link("del", index=index)

    def _exec(self, argv: list[str], what: str, stdin: str | None = None) -> None:
        proc = subprocess.run(
            nsenter(self.vm_netns) + argv, input=stdin, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise NetworkError(f"{what} failed: {proc.stderr.strip()}")

    def _sysctl(self, setting: str) -> None:
        if self.netns:  # never change the controller's (possibly the host's) own sysctls
            self._exec(["sysctl", "-q", "-w", setting], f"sysctl {setting}")

    def _nft(self, rules: str) -> None:
        self._exec(["nft", "-f", "-"], "loading the nftables rules", stdin=rules)


@contextlib.contextmanager
def _rtnl(name: str) -> Iterator[IPRoute]:
    """Netlink to namespace `name` ("" = this process's own). NetNS forks a helper into the
    namespace, so it is used only when the process is elsewhere."""
    ip = NetNS(name, flags=0) if name and not _is_own_namespace(name) else IPRoute()
    try:
        yield ip
    finally:
        ip.close()


def _is_own_namespace(name: str) -> bool:
    try:
        theirs, ours = os.stat(f"/run/netns/{name}"), os.stat("/proc/self/ns/net")
    except OSError:
        return False
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _ensure_link(ip: IPRoute, name: str, **kwargs) -> int:
    found = ip.link_lookup(ifname=name)
    if not found:
        try:
            ip.link("add", ifname=name, **kwargs)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
    return _index(ip, name)


def _index(ip: IPRoute, name: str) -> int:
    """The link's index; a link just created or moved can take a moment to be listed."""
    return wait_for(
        lambda: next(iter(ip.link_lookup(ifname=name)), None),
        timeout=5,
        what=f"network link {name}",
    )


def _ensure_addr(ip: IPRoute, index: int, iface: ipaddress.IPv4Interface) -> None:
    try:
        ip.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def _ensure_route(ip: IPRoute, dst: str, gateway: str) -> None:
    ip.route("replace", dst=dst, gateway=gateway)


def _set_up(ip: IPRoute, name: str) -> None:
    for index in ip.link_lookup(ifname=name):
        ip.link("set", index=index, state="up")
