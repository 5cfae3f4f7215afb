"""Apply the kernel's `ip=` argument inside the guest with iproute2.

Distribution kernels are built without CONFIG_IP_PNP, so the kernel ignores `ip=`; this
script, run by hearth-net.service before systemd-networkd, does what the kernel would have:
it waits for the device, brings it up, assigns the address, adds the default route, sets
the hostname and writes /etc/resolv.conf. Everything is validated before anything is
touched, so a bad `ip=` leaves the VM unconfigured with a clear console message rather than
half configured. Standard library only: it runs with Debian's python3.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

# The kernel's field order (Documentation/admin-guide/nfs/nfsroot.rst); ntp0 is not supported.
FIELDS = ("client", "server", "gateway", "netmask", "hostname", "device", "autoconf", "dns0",
          "dns1")  # fmt: skip
DEFAULT_DEVICE = "eth0"
DEVICE_TIMEOUT = 60.0
# Autoconf values meaning "use the addresses given here". "static" is not a kernel keyword;
# it is accepted because its meaning is unambiguous.
STATIC_AUTOCONF = frozenset({"off", "none", "static"})
# Values asking for DHCP/BOOTP/RARP or IPv6 autoconfiguration (the kernel's, dracut's and
# systemd-network-generator's keywords): not ours to do.
DYNAMIC_AUTOCONF = frozenset({"on", "any", "dhcp", "bootp", "rarp", "both", "dhcp6", "auto6",
                              "either6", "link6", "link-local", "ibft"})  # fmt: skip
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_IFNAME_MAX = 15  # IFNAMSIZ - 1

Runner = Callable[[Sequence[str]], None]


class IpConfigError(ValueError):
    """`ip=` is malformed; the message names the field and what is wrong with it."""


class ApplyError(RuntimeError):
    """Applying a valid configuration failed (device never appeared, a command failed)."""


@dataclass(frozen=True)
class IpConfig:
    """A validated static configuration for one interface."""

    device: str
    address: IPv4Interface
    gateway: IPv4Address | None = None
    hostname: str | None = None
    dns: tuple[IPv4Address, ...] = ()

    @property
    def gateway_onlink(self) -> bool:
        """A gateway outside the subnet is reachable only if the route says `onlink`."""
        return self.gateway is not None and self.gateway not in self.address.network


def log(message: str) -> None:
    print(f"hearth-net: {message}", flush=True)


def kernel_args(cmdline: str) -> list[str]:
    """Split a kernel command line the way the kernel does: whitespace, and double quotes
    that group (and are dropped). Arguments after `--` belong to init, not the kernel."""
    args: list[str] = []
    current: list[str] = []
    quoted = started = False
    for ch in cmdline:
        if ch == '"':
            quoted, started = not quoted, True
        elif ch.isspace() and not quoted:
            if started:
                args.append("".join(current))
                current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        args.append("".join(current))
    return args[: args.index("--")] if "--" in args else args


def find_ip_argument(cmdline: str) -> str | None:
    """The value of the single `ip=` argument, or None if there is none."""
    values = [arg[3:] for arg in kernel_args(cmdline) if arg.startswith("ip=")]
    if len(values) > 1:
        raise IpConfigError(
            f"found {len(values)} ip= arguments; hearth-net configures exactly one interface"
        )
    return values[0] if values else None


def _ipv4(field: str, value: str) -> IPv4Address:
    try:
        address = IPv4Address(value)
    except ValueError as e:
        raise IpConfigError(f"{field} {value!r} is not a valid IPv4 address ({e})") from None
    for bad, what in (
        (address.is_unspecified, "the unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
    ):
        if bad:
            raise IpConfigError(f"{field} {value} is {what}")
    return address


def _prefix_length(netmask: str, client: IPv4Address) -> int:
    if not netmask:
        # What the kernel does when the netmask is omitted: the address class's mask.
        first = int(client) >> 24
        return 8 if first < 128 else 16 if first < 192 else 24
    if "." in netmask:
        try:
            mask = int(IPv4Address(netmask))
        except ValueError as e:
            raise IpConfigError(f"netmask {netmask!r} is not a dotted netmask ({e})") from None
        host_bits = ~mask & 0xFFFFFFFF
        if host_bits & (host_bits + 1):
            raise IpConfigError(f"netmask {netmask} is not contiguous")
        prefix = 32 - host_bits.bit_length()
    elif netmask.isascii() and netmask.isdigit():
        prefix = int(netmask)
        if prefix > 32:
            raise IpConfigError(f"netmask /{prefix} is out of range (1-32)")
    else:
        raise IpConfigError(f"netmask {netmask!r} is neither a dotted netmask nor a prefix length")
    if prefix == 0:
        raise IpConfigError(f"netmask {netmask} (/0) would put every address on the link")
    return prefix


def _hostname(value: str) -> str:
    # The kernel's nodename holds at most 64 bytes.
    if len(value) > 64 or not all(_HOSTNAME_LABEL.match(label) for label in value.split(".")):
        raise IpConfigError(
            f"hostname {value!r} is not a valid host name (labels of letters, digits and "
            "inner hyphens, at most 63 each, 64 in all)"
        )
    return value


def _device(value: str) -> str:
    if (
        len(value) > _IFNAME_MAX
        or value in (".", "..")
        or any(ch == "/" or ch.isspace() or not ch.isprintable() for ch in value)
    ):
        raise IpConfigError(f"device {value!r} is not a valid interface name")
    return value


def parse_ip_value(value: str) -> IpConfig | None:
    """Parse the value of `ip=`; None when it is not a static configuration."""
    if value in ("", "off", "none") or value in DYNAMIC_AUTOCONF:
        return None
    fields = value.split(":")
    if len(fields) > len(FIELDS):
        raise IpConfigError(
            f"ip= has {len(fields)} fields; at most {len(FIELDS)} are supported "
            f"({':'.join(FIELDS)})"
        )
    f = dict(zip(FIELDS, fields + [""] * (len(FIELDS) - len(fields)), strict=True))
    autoconf = f["autoconf"]
    if autoconf in DYNAMIC_AUTOCONF or (not autoconf and not f["client"]):
        # Omitted autoconf means "any" to the kernel; with no address that is DHCP.
        return None
    if autoconf and autoconf not in STATIC_AUTOCONF:
        raise IpConfigError(
            f"autoconf {autoconf!r} is unknown; expected one of "
            f"{', '.join(sorted(STATIC_AUTOCONF))} (static) or "
            f"{', '.join(sorted(DYNAMIC_AUTOCONF))} (dynamic)"
        )
    if not f["client"]:
        raise IpConfigError(f"client address is empty but autoconf is {autoconf!r} (static)")
    client = _ipv4("client", f["client"])
    address = IPv4Interface(f"{client}/{_prefix_length(f['netmask'], client)}")
    network = address.network
    if network.prefixlen <= 30 and client in (network.network_address, network.broadcast_address):
        raise IpConfigError(f"client {client} is not a host address in {network}")
    if f["server"]:
        _ipv4("server", f["server"])  # unused here, but a typo in it means a typo elsewhere
    gateway = _ipv4("gateway", f["gateway"]) if f["gateway"] else None
    if gateway == client:
        raise IpConfigError(f"gateway {gateway} is the client address itself")
    return IpConfig(
        device=_device(f["device"]) if f["device"] else DEFAULT_DEVICE,
        address=address,
        gateway=gateway,
        hostname=_hostname(f["hostname"]) if f["hostname"] else None,
        dns=tuple(_ipv4(name, f[name]) for name in ("dns0", "dns1") if f[name]),
    )


def parse(cmdline: str) -> IpConfig | None:
    """The static configuration `cmdline` asks for; None if it asks for none."""
    value = find_ip_argument(cmdline)
    return None if value is None else parse_ip_value(value)


def run_command(argv: Sequence[str]) -> None:
    """Run one command; a failure raises ApplyError carrying its stderr."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ApplyError(f"{' '.join(argv)}: {e}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise ApplyError(f"{' '.join(argv)} failed (exit {done.returncode}): {detail}")


def _wait_for(check: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `check` until it is true or `timeout` seconds pass (no hearth.* in the guest)."""
    deadline = time.monotonic() + timeout
    while not check():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))
    return True


def _write_atomically(path: Path, text: str) -> None:
    # Replacing (rather than writing through) also replaces a dangling resolv.conf symlink.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply(
    cfg: IpConfig,
    run: Runner = run_command,
    root: Path = Path("/"),
    timeout: float = DEVICE_TIMEOUT,
) -> None:
    """Configure the system as `cfg` says. Safe to re-run: every step replaces, never adds.

    `root` prefixes /sys, /proc and /etc so tests can point it at a scratch directory.
    """
    dev = cfg.device
    sysfs = root / "sys/class/net" / dev
    log(f"waiting for {dev} (up to {timeout:g}s)")
    started = time.monotonic()
    if not _wait_for(sysfs.exists, timeout):
        raise ApplyError(f"{dev} did not appear within {timeout:g}s")
    log(f"{dev} is present after {time.monotonic() - started:.2f}s")

    commands = [
        ["ip", "link", "set", "dev", dev, "up"],
        ["ip", "addr", "replace", str(cfg.address), "broadcast", "+", "dev", dev],
    ]
    if cfg.gateway is not None:
        route = ["ip", "route", "replace", "default", "via", str(cfg.gateway), "dev", dev]
        commands.append(route + ["onlink"] if cfg.gateway_onlink else route)
    else:
        log("no gateway given; not adding a default route")
    for argv in commands:
        log("run: " + " ".join(argv))
        run(argv)

    if cfg.hostname is not None:
        log(f"hostname {cfg.hostname}")
        (root / "proc/sys/kernel/hostname").write_text(cfg.hostname)
    if cfg.dns:
        log("resolv.conf: nameserver " + ", ".join(map(str, cfg.dns)))
        lines = ["# Written by hearth-net from ip= on the kernel command line."]
        lines += [f"nameserver {server}" for server in cfg.dns]
        _write_atomically(root / "etc/resolv.conf", "\n".join(lines) + "\n")
    log(f"configured {dev} {cfg.address}" + (f" via {cfg.gateway}" if cfg.gateway else ""))


def main(root: Path = Path("/"), run: Runner = run_command, timeout: float = DEVICE_TIMEOUT) -> int:
    """0: configured or nothing to do; 2: `ip=` is invalid (nothing applied); 1: apply failed."""
    cmdline = (root / "proc/cmdline").read_text()
    try:
        value = find_ip_argument(cmdline)
        cfg = None if value is None else parse_ip_value(value)
    except IpConfigError as e:
        log(f"error: invalid ip= on the kernel command line: {e}; nothing was applied")
        return 2
    if value is None:
        log("no ip= on the kernel command line; nothing to do")
        return 0
    if cfg is None:
        log(f"ip={value} is not a static configuration; nothing to do")
        return 0
    log(f"ip={value}")
    try:
        apply(cfg, run=run, root=root, timeout=timeout)
    except (ApplyError, OSError) as e:
        log(f"error: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
