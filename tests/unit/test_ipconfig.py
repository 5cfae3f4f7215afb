"""The ip= parser and applier that configures the guest's NIC (hearth.guest.ipconfig)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

from hearth.guest.ipconfig import (
    ApplyError,
    IpConfig,
    IpConfigError,
    apply,
    kernel_args,
    main,
    parse,
    parse_ip_value,
    run_ip_batch,
)

BASE = "console=ttyS0 net.ifnames=0 root=/dev/vda rw"
FULL = "10.0.0.2:10.0.0.254:10.0.0.1:255.255.255.0:vm-1:eth1:off:10.0.0.53:1.1.1.1"


class Recorder:
    """A `run` that records the commands instead of running them."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.commands: list[list[str]] = []
        self.fail_on = fail_on

    def __call__(self, commands: Sequence[Sequence[str]]) -> None:
        self.commands += [list(argv) for argv in commands]
        for number, argv in enumerate(commands, 1):
            if self.fail_on and self.fail_on in argv:
                raise ApplyError(
                    f"ip -batch failed (exit 1): RTNETLINK answers: boom; Command failed -:{number}"
                )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A scratch root with the files apply() touches: a NIC in sysfs, the hostname, /etc."""
    (tmp_path / "sys/class/net/eth0").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel").mkdir(parents=True)
    (tmp_path / "proc/sys/kernel/hostname").write_text("debian\n")
    (tmp_path / "etc").mkdir()
    return tmp_path


def cfg(address: str, **kw: object) -> IpConfig:
    fields: dict = {"device": "eth0", "address": IPv4Interface(address), **kw}
    if isinstance(fields.get("gateway"), str):
        fields["gateway"] = IPv4Address(fields["gateway"])
    fields["dns"] = tuple(IPv4Address(a) for a in fields.get("dns", ()))
    return IpConfig(**fields)


# --- parse: every field form -------------------------------------------------------------


def test_full_nine_fields() -> None:
    assert parse(f"{BASE} ip={FULL}") == cfg(
        "10.0.0.2/24",
        device="eth1",
        gateway="10.0.0.1",
        hostname="vm-1",
        dns=["10.0.0.53", "1.1.1.1"],
    )


def test_the_form_the_controller_sends() -> None:
    got = parse(f"{BASE} ip=172.30.0.7::172.30.0.1:255.255.255.0:hearth-b-7:eth0:off quiet")
    assert got == cfg("172.30.0.7/24", gateway="172.30.0.1", hostname="hearth-b-7")
    assert got is not None and not got.gateway_onlink


# Each row: FULL cut after n fields, and what that leaves. With no netmask the kernel uses
# the address class's mask (10/8 is class A), and so does the parser.
@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (1, cfg("10.0.0.2/8")),
        (2, cfg("10.0.0.2/8")),
        (3, cfg("10.0.0.2/8", gateway="10.0.0.1")),
        (4, cfg("10.0.0.2/24", gateway="10.0.0.1")),
        (5, cfg("10.0.0.2/24", gateway="10.0.0.1", hostname="vm-1")),
        (6, cfg("10.0.0.2/24", gateway="10.0.0.1", hostname="vm-1", device="eth1")),
        (7, cfg("10.0.0.2/24", gateway="10.0.0.1", hostname="vm-1", device="eth1")),
        (
            8,
            cfg(
                "10.0.0.2/24", gateway="10.0.0.1", hostname="vm-1", device="eth1", dns=["10.0.0.53"]
            ),
        ),
    ],
)
def test_trailing_fields_omitted(n: int, expected: IpConfig) -> None:
    value = ":".join(FULL.split(":")[:n])
    assert parse(f"{BASE} ip={value}") == expected


@pytest.mark.parametrize(
    ("netmask", "prefix"),
    [
        ("255.255.255.0", 24),
        ("24", 24),
        ("255.255.0.0", 16),
        ("16", 16),
        ("255.0.0.0", 8),
        ("255.255.255.252", 30),
        ("31", 31),
        ("255.255.255.255", 32),
        ("32", 32),
        ("1", 1),
    ],
)
def test_netmask_dotted_or_prefix_length(netmask: str, prefix: int) -> None:
    got = parse_ip_value(f"10.0.0.2:::{netmask}:::off")
    assert got is not None and got.address == IPv4Interface(f"10.0.0.2/{prefix}")


@pytest.mark.parametrize(
    ("client", "prefix"), [("10.1.2.3", 8), ("172.16.5.4", 16), ("192.168.1.9", 24)]
)
def test_omitted_netmask_is_the_class_mask(client: str, prefix: int) -> None:
    got = parse_ip_value(f"{client}::::::off")
    assert got is not None and got.address.network.prefixlen == prefix


def test_empty_server_gateway_hostname() -> None:
    assert parse_ip_value("10.0.0.2:::255.255.255.0:::off") == cfg("10.0.0.2/24")


def test_server_is_validated_but_not_applied() -> None:
    assert parse_ip_value("10.0.0.2:10.0.0.9::24") == cfg("10.0.0.2/24")


@pytest.mark.parametrize("device", ["", "eth0"])
def test_device_omitted_or_empty_means_eth0(device: str) -> None:
    got = parse_ip_value(f"10.0.0.2::10.0.0.1:24:vm:{device}:off")
    assert got is not None and got.device == "eth0"


@pytest.mark.parametrize("autoconf", ["off", "none", "static", ""])
def test_static_autoconf_values(autoconf: str) -> None:
    # An empty autoconf with a client address is static too: the kernel only
    # autoconfigures when it has no address.
    got = parse_ip_value(f"10.0.0.2::10.0.0.1:24:vm:eth0:{autoconf}")
    assert got == cfg("10.0.0.2/24", gateway="10.0.0.1", hostname="vm")


@pytest.mark.parametrize(
    ("dns0", "dns1", "expected"),
    [
        ("", "", ()),
        ("10.0.0.53", "", ("10.0.0.53",)),
        ("", "9.9.9.9", ("9.9.9.9",)),
        ("10.0.0.53", "9.9.9.9", ("10.0.0.53", "9.9.9.9")),
    ],
)
def test_dns_fields(dns0: str, dns1: str, expected: tuple[str, ...]) -> None:
    got = parse_ip_value(f"10.0.0.2::10.0.0.1:24::eth0:off:{dns0}:{dns1}")
    assert got is not None and got.dns == tuple(IPv4Address(a) for a in expected)


def test_gateway_outside_the_subnet_is_allowed_onlink() -> None:
    got = parse_ip_value("10.0.0.2::10.9.9.1:24::eth0:off")
    assert got is not None and got.gateway == IPv4Address("10.9.9.1") and got.gateway_onlink


@pytest.mark.parametrize(
    "value",
    ["off", "none", "", "dhcp", "on", "any", "bootp", "rarp", "both", "dhcp6", "auto6"],
)
def test_short_forms_are_not_static(value: str) -> None:
    assert parse(f"{BASE} ip={value}") is None


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.2::10.0.0.1:24:vm:eth0:dhcp",  # an address given, but DHCP asked for
        "::::vm:eth0:any",
        "::::vm:eth0",  # no address and autoconf omitted: the kernel would use DHCP
        "",
    ],
)
def test_dynamic_full_forms_are_not_static(value: str) -> None:
    assert parse_ip_value(value) is None


def test_no_ip_argument() -> None:
    assert parse(BASE) is None
    assert parse("") is None


def test_kernel_argument_splitting() -> None:
    assert kernel_args(' a=1  ip="10.0.0.2::10.0.0.1:24:vm" "b=x y" -- ip=init ') == [
        "a=1",
        "ip=10.0.0.2::10.0.0.1:24:vm",
        "b=x y",
    ]


def test_arguments_after_double_dash_belong_to_init() -> None:
    assert parse(f"{BASE} -- ip=10.0.0.2::10.0.0.1:24") is None


def test_quoted_ip_argument() -> None:
    assert parse(f'{BASE} ip="10.0.0.2::10.0.0.1:24::eth0:off"') == cfg(
        "10.0.0.2/24", gateway="10.0.0.1"
    )


# --- parse: malformed input --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10.0.0.256::10.0.0.1:24::eth0:off", "client '10.0.0.256' is not a valid IPv4 address"),
        ("10.0.0::10.0.0.1:24::eth0:off", "client '10.0.0' is not a valid IPv4 address"),
        ("10.0.0.02::10.0.0.1:24::eth0:off", "client '10.0.0.02' is not a valid IPv4 address"),
        ("fd00::2", "client 'fd00' is not a valid IPv4 address"),
        ("eth0", "client 'eth0' is not a valid IPv4 address"),
        ("::10.0.0.1:24::eth0:off", "client address is empty but autoconf is 'off'"),
        (":::::eth0:none", "client address is empty but autoconf is 'none'"),
        ("0.0.0.0::10.0.0.1:24::eth0:off", "client 0.0.0.0 is the unspecified address"),
        ("127.0.0.2:::8::eth0:off", "client 127.0.0.2 is a loopback address"),
        ("224.0.0.5:::24::eth0:off", "client 224.0.0.5 is a multicast address"),
        ("255.255.255.255:::24::eth0:off", "client 255.255.255.255 is a reserved address"),
        ("10.0.0.0::10.0.0.1:24::eth0:off", "client 10.0.0.0 is not a host address in 10.0.0.0/24"),
        ("10.0.0.255:::24::eth0:off", "client 10.0.0.255 is not a host address in 10.0.0.0/24"),
        ("10.0.0.2::10.0.0.1:33::eth0:off", "netmask /33 is out of range (1-32)"),
        ("10.0.0.2::10.0.0.1:0::eth0:off", "netmask 0 (/0) would put every address on the link"),
        ("10.0.0.2:::0.0.0.0::eth0:off", "netmask 0.0.0.0 (/0) would put every address"),
        ("10.0.0.2::10.0.0.1:255.0.255.0::eth0:off", "netmask 255.0.255.0 is not contiguous"),
        ("10.0.0.2::10.0.0.1:255.255.255::eth0:off", "netmask '255.255.255' is not a dotted"),
        ("10.0.0.2::10.0.0.1:/24::eth0:off", "netmask '/24' is neither a dotted netmask nor"),
        ("10.0.0.2::10.0.0.1:-8::eth0:off", "netmask '-8' is neither a dotted netmask nor"),
        ("10.0.0.2::10.0.0.1:24::eth0:dchp", "autoconf 'dchp' is unknown"),
        ("10.0.0.2::10.0.0.1:24::eth0:OFF", "autoconf 'OFF' is unknown"),
        ("10.0.0.2::10.0.0.1:24::eth0:off:1.1.1.1:8.8.8.8:ntp", "ip= has 10 fields; at most 9"),
        ("10.0.0.2::gateway:24::eth0:off", "gateway 'gateway' is not a valid IPv4 address"),
        ("10.0.0.2::10.0.0.2:24::eth0:off", "gateway 10.0.0.2 is the client address itself"),
        ("10.0.0.2:10.0.0:10.0.0.1:24::eth0:off", "server '10.0.0' is not a valid IPv4 address"),
        ("10.0.0.2::10.0.0.1:24:-vm:eth0:off", "hostname '-vm' is not a valid host name"),
        ("10.0.0.2::10.0.0.1:24:vm_1:eth0:off", "hostname 'vm_1' is not a valid host name"),
        ("10.0.0.2::10.0.0.1:24:vm..x:eth0:off", "hostname 'vm..x' is not a valid host name"),
        (f"10.0.0.2::10.0.0.1:24:{'a' * 65}:eth0:off", "is not a valid host name"),
        ("10.0.0.2::10.0.0.1:24:vm:eth/0:off", "device 'eth/0' is not a valid interface name"),
        ("10.0.0.2::10.0.0.1:24:vm:..:off", "device '..' is not a valid interface name"),
        ("10.0.0.2::10.0.0.1:24:vm:abcdefghijklmnop:off", "device 'abcdefghijklmnop' is not"),
        ("10.0.0.2::10.0.0.1:24:vm:eth0:off:8.8.8", "dns0 '8.8.8' is not a valid IPv4 address"),
        ("10.0.0.2::10.0.0.1:24:vm:eth0:off::dns", "dns1 'dns' is not a valid IPv4 address"),
    ],
)
def test_malformed_values_are_rejected_precisely(value: str, message: str) -> None:
    with pytest.raises(IpConfigError) as info:
        parse(f"{BASE} ip={value}")
    assert message in str(info.value)


def test_more_than_one_ip_argument_is_rejected() -> None:
    with pytest.raises(IpConfigError, match="found 2 ip= arguments"):
        parse(f"{BASE} ip=10.0.0.2::10.0.0.1:24 ip=dhcp")


def test_the_error_is_a_value_error() -> None:
    assert issubclass(IpConfigError, ValueError)


# --- apply -------------------------------------------------------------------------------


def test_apply_runs_exactly_these_commands(root: Path) -> None:
    run = Recorder()
    config = parse_ip_value("10.0.0.2::10.0.0.1:255.255.255.0:vm-1:eth0:off:10.0.0.53:1.1.1.1")
    assert config is not None
    apply(config, run=run, root=root, timeout=5)
    assert run.commands == [
        ["ip", "link", "set", "dev", "eth0", "up"],
        ["ip", "addr", "replace", "10.0.0.2/24", "broadcast", "+", "dev", "eth0"],
        ["ip", "route", "replace", "default", "via", "10.0.0.1", "dev", "eth0"],
    ]
    assert (root / "proc/sys/kernel/hostname").read_text() == "vm-1"
    assert "127.0.1.1\tvm-1\n" in (root / "etc/hosts").read_text()
    assert (root / "etc/resolv.conf").read_text() == (
        "# Written by hearth-net from ip= on the kernel command line.\n"
        "nameserver 10.0.0.53\n"
        "nameserver 1.1.1.1\n"
    )


def test_apply_gateway_outside_subnet_uses_onlink(root: Path) -> None:
    run = Recorder()
    config = parse_ip_value("10.0.0.2::192.0.2.1:24::eth0:off")
    assert config is not None
    apply(config, run=run, root=root, timeout=5)
    assert run.commands[-1] == [
        "ip",
        "route",
        "replace",
        "default",
        "via",
        "192.0.2.1",
        "dev",
        "eth0",
        "onlink",
    ]


def test_apply_only_what_is_given(root: Path) -> None:
    run = Recorder()
    config = parse_ip_value("10.0.0.2:::32")
    assert config is not None
    apply(config, run=run, root=root, timeout=5)
    assert run.commands == [
        ["ip", "link", "set", "dev", "eth0", "up"],
        ["ip", "addr", "replace", "10.0.0.2/32", "broadcast", "+", "dev", "eth0"],
    ]
    assert (root / "proc/sys/kernel/hostname").read_text() == "debian\n"
    assert not (root / "etc/resolv.conf").exists()


def test_apply_is_idempotent(root: Path) -> None:
    config = parse_ip_value("10.0.0.2::10.0.0.1:24:vm:eth0:off:10.0.0.53")
    assert config is not None
    first, second = Recorder(), Recorder()
    apply(config, run=first, root=root, timeout=5)
    resolv = (root / "etc/resolv.conf").read_text()
    apply(config, run=second, root=root, timeout=5)
    # Re-running issues the same replace-style commands (no `add` that would fail with
    # "File exists") and leaves the same files.
    assert second.commands == first.commands
    assert not any(cmd[2] == "add" for cmd in first.commands)
    assert (root / "etc/resolv.conf").read_text() == resolv
    assert sorted(p.name for p in (root / "etc").iterdir()) == ["hosts", "resolv.conf"]


def test_apply_replaces_a_resolv_conf_symlink(root: Path) -> None:
    (root / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    config = parse_ip_value("10.0.0.2::10.0.0.1:24::eth0:off:10.0.0.53")
    assert config is not None
    apply(config, run=Recorder(), root=root, timeout=5)
    assert not (root / "etc/resolv.conf").is_symlink()
    assert "nameserver 10.0.0.53\n" in (root / "etc/resolv.conf").read_text()


def test_resolv_conf_is_readable_by_everyone_whatever_the_umask(root: Path) -> None:
    config = parse_ip_value("10.0.0.2::10.0.0.1:24::eth0:off:10.0.0.53")
    assert config is not None
    umask = os.umask(0o077)
    try:
        apply(config, run=Recorder(), root=root, timeout=5)
    finally:
        os.umask(umask)
    assert (root / "etc/resolv.conf").stat().st_mode & 0o777 == 0o644


def test_apply_waits_for_the_device_with_a_deadline(root: Path) -> None:
    run = Recorder()
    config = parse_ip_value("10.0.0.2::10.0.0.1:24::eth1:off")
    assert config is not None
    with pytest.raises(ApplyError, match="eth1 did not appear within 0.2s"):
        apply(config, run=run, root=root, timeout=0.2)
    assert run.commands == []


# --- main: what the console shows, and nothing applied for bad input ---------------------


def run_main(
    root: Path, cmdline: str, run: Recorder, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    (root / "proc/cmdline").write_text(cmdline + "\n")
    code = main(root=root, run=run, timeout=5)
    out = capsys.readouterr().out
    assert out and all(line.startswith("hearth-net: ") for line in out.splitlines())
    return code, out


@pytest.mark.parametrize(
    "value",
    [
        "10.0.0.256::10.0.0.1:24:vm:eth0:off:10.0.0.53",
        "10.0.0.2::10.0.0.1:40:vm:eth0:off:10.0.0.53",
        "10.0.0.2::10.0.0.1:24:vm:eth0:off:10.0.0.53:1.1.1.1:extra",
        "10.0.0.2::10.0.0.1:24:vm:eth0:sometimes:10.0.0.53",
        "::10.0.0.1:24:vm:eth0:off:10.0.0.53",
        "10.0.0.2::10.0.0.1:24:vm:eth0:off:10.0.0.53:not-an-ip",
    ],
)
def test_main_bad_input_applies_nothing(
    root: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Recorder()
    code, out = run_main(root, f"{BASE} ip={value}", run, capsys)
    assert code == 2
    assert "hearth-net: error: invalid ip= on the kernel command line:" in out
    assert "nothing was applied" in out
    assert run.commands == []
    assert (root / "proc/sys/kernel/hostname").read_text() == "debian\n"
    assert not (root / "etc/resolv.conf").exists()


def test_main_applies_and_logs_every_step(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = Recorder()
    code, out = run_main(
        root, f"{BASE} ip=10.0.0.2::10.0.0.1:24:vm:eth0:off:10.0.0.53", run, capsys
    )
    assert code == 0
    assert len(run.commands) == 3
    for expected in (
        "hearth-net: ip=10.0.0.2::10.0.0.1:24:vm:eth0:off:10.0.0.53",
        "hearth-net: waiting for eth0",
        "hearth-net: run: ip link set dev eth0 up",
        "hearth-net: run: ip addr replace 10.0.0.2/24 broadcast + dev eth0",
        "hearth-net: run: ip route replace default via 10.0.0.1 dev eth0",
        "hearth-net: hostname vm",
        "hearth-net: resolv.conf: nameserver 10.0.0.53",
        "hearth-net: configured eth0 10.0.0.2/24 via 10.0.0.1",
    ):
        assert expected in out


@pytest.mark.parametrize(
    ("cmdline", "message"),
    [
        (BASE, "no ip= on the kernel command line; nothing to do"),
        (f"{BASE} ip=dhcp", "ip=dhcp is not a static configuration; nothing to do"),
        (f"{BASE} ip=off", "ip=off is not a static configuration; nothing to do"),
    ],
)
def test_main_nothing_to_do(
    root: Path, cmdline: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Recorder()
    code, out = run_main(root, cmdline, run, capsys)
    assert code == 0 and message in out and run.commands == []


def test_main_reports_a_failed_command(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = Recorder(fail_on="route")
    code, out = run_main(root, f"{BASE} ip=10.0.0.2::10.0.0.1:24:vm:eth0:off", run, capsys)
    assert code == 1
    assert (
        "hearth-net: error: ip -batch failed (exit 1): RTNETLINK answers: boom; Command failed -:3"
    ) in out


# --- run_ip_batch, with the real ip (read-only commands) ----------------------------------


def test_ip_batch_runs_every_command() -> None:
    run_ip_batch([["ip", "link", "show", "dev", "lo"], ["ip", "addr", "show", "dev", "lo"]])


def test_ip_batch_failure_carries_what_ip_said() -> None:
    with pytest.raises(ApplyError) as failed:
        run_ip_batch(
            [["ip", "link", "show", "dev", "lo"], ["ip", "link", "show", "dev", "hearth-absent0"]]
        )
    message = str(failed.value)
    assert message.startswith("ip -batch failed (exit 1):")
    assert "hearth-absent0" in message and "-:2" in message
