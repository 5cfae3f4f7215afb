"""Apply the kernel's `ip=` argument inside the guest with iproute2.

Distribution kernels are built without CONFIG_IP_PNP, so the kernel ignores `ip=`; this
script, run by hearth-net.service before systemd-networkd, does what the kernel would have:
it waits for the device, brings it up, assigns the address, adds the default route, sets
the hostname and writes /etc/resolv.conf. Everything is validated before anything is
touched, so a bad `ip=` leaves the VM unconfigured with a clear console message rather than
half configured. Standard library only: it runs with Debian's python3.

It is on the boot's critical path, where every module a guest Python imports under
software emulation costs tens of milliseconds: hence a namedtuple rather than a dataclass,
os.path rather than pathlib, and one `ip -batch` process spawned with os.posix_spawnp
rather than subprocess.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections import namedtuple
from ipaddress import IPv4Address, IPv4Interface

if __package__:
    from . import fileio
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import fileio

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

IP = "ip"


class IpConfigError(ValueError):
    """`ip=` is malformed; the message names the field and what is wrong with it."""


class ApplyError(RuntimeError):
    """Applying a valid configuration failed (device never appeared, a command failed)."""


class IpConfig(
    namedtuple("IpConfig", "device address gateway hostname dns", defaults=(None, None, ()))
):
    """A validated static configuration for one interface: its device name, IPv4Interface
    address, IPv4Address gateway (or None), hostname (or None) and DNS servers."""

    __slots__ = ()

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


def run_ip_batch(commands: list[list[str]]) -> None:
    """Run `ip` commands as one `ip -batch` process, which stops at the first failure;
    a failure raises ApplyError carrying what ip printed."""
    lines = "".join(" ".join(argv[1:]) + "\n" for argv in commands)
    stdin_r, stdin_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        pid = os.posix_spawnp(
            IP,
            [IP, "-batch", "-"],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, stdin_r, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, out_w, 2),
            ],
        )
    except OSError as e:
        for fd in (stdin_r, stdin_w, out_r, out_w):
            os.close(fd)
        raise ApplyError(f"{IP}: {e}") from None
    os.close(stdin_r)
    os.close(out_w)
    with os.fdopen(stdin_w, "w") as stdin:  # a few lines: far below the pipe's buffer
        stdin.write(lines)
    with os.fdopen(out_r, errors="replace") as out:
        output = "; ".join(line for line in out.read().splitlines() if line)  # one console line
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if status != 0:
        raise ApplyError(f"{IP} -batch failed (exit {status}): {output}")


HOSTS = "127.0.0.1\tlocalhost\n127.0.1.1\t{}\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def _wait_for(check, timeout: float, interval: float = 0.05) -> bool:
    """Poll `check` until it is true or `timeout` seconds pass (no hearth.* in the guest)."""
    deadline = time.monotonic() + timeout
    while not check():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(interval, remaining))
    return True


def _write_public(path: str, text: str) -> None:
    # Replacing (rather than writing through) also replaces a dangling resolv.conf symlink;
    # 0644 whatever the umask: every user resolves names.
    fileio.write_atomic(path, text.encode(), 0o644)


def apply(
    cfg: IpConfig,
    run=run_ip_batch,
    root: str | os.PathLike = "/",
    timeout: float = DEVICE_TIMEOUT,
) -> None:
    """Configure the system as `cfg` says. Safe to re-run: every step replaces, never adds.

    `run` runs a list of `ip` commands (run_ip_batch); `root` prefixes /sys, /proc and /etc,
    so tests can point both elsewhere.
    """
    dev = cfg.device
    sysfs = os.path.join(root, "sys/class/net", dev)
    log(f"waiting for {dev} (up to {timeout:g}s)")
    started = time.monotonic()
    if not _wait_for(lambda: os.path.exists(sysfs), timeout):
        raise ApplyError(f"{dev} did not appear within {timeout:g}s")
    log(f"{dev} is present after {time.monotonic() - started:.2f}s")

    commands = [
        [IP, "link", "set", "dev", dev, "up"],
        [IP, "addr", "replace", str(cfg.address), "broadcast", "+", "dev", dev],
    ]
    if cfg.gateway is not None:
        route = [IP, "route", "replace", "default", "via", str(cfg.gateway), "dev", dev]
        commands.append(route + ["onlink"] if cfg.gateway_onlink else route)
    else:
        log("no gateway given; not adding a default route")
    for argv in commands:
        log("run: " + " ".join(argv))
    run(commands)

    if cfg.hostname is not None:
        log(f"hostname {cfg.hostname}")
        with open(os.path.join(root, "proc/sys/kernel/hostname"), "w") as f:
            f.write(cfg.hostname)
        # The guest knows its own name, so looking it up never leaves for the DNS responder.
        _write_public(os.path.join(root, "etc/hosts"), HOSTS.format(cfg.hostname))
    if cfg.dns:
        log("resolv.conf: nameserver " + ", ".join(map(str, cfg.dns)))
        lines = ["# Written by hearth-net from ip= on the kernel command line."]
        lines += [f"nameserver {server}" for server in cfg.dns]
        _write_public(os.path.join(root, "etc/resolv.conf"), "\n".join(lines) + "\n")
    log(f"configured {dev} {cfg.address}" + (f" via {cfg.gateway}" if cfg.gateway else ""))


def main(root: str | os.PathLike = "/", run=run_ip_batch, timeout: float = DEVICE_TIMEOUT) -> int:
    """0: configured or nothing to do; 2: `ip=` is invalid (nothing applied); 1: apply failed."""
    with open(os.path.join(root, "proc/cmdline")) as f:
        cmdline = f.read()
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
