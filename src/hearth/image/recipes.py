"""What goes into each golden image. A recipe is data; the builder turns it into layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hearth.providers import versions

# Every image: systemd, the agent's Python, iproute2 for the network bootstrap, busybox for
# the small initrd. The kernel package depends on the suite (see kernel_package()).
BASE_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "python3",
    "iproute2",
    "iputils-ping",
    "ca-certificates",
    "busybox-static",
    "procps",
)

# The three CLIs, pinned once in hearth.providers.versions (their specs read the same pins).
CLI_PACKAGES = tuple(pin.npm for pin in versions.CLI_PINS)

# curl: the egress tests (and an operator) check what a VM reaches with it.
NODE_PACKAGES = ("nodejs", "npm", "git", "curl")

# dbus-daemon: Firefox hands a URL to its running instance over a session bus.
BROWSER_PACKAGES = (
    "firefox-esr",
    "tigervnc-standalone-server",
    "tigervnc-tools",
    "xdotool",
    "x11-utils",
    "fonts-dejavu-core",
    "fonts-liberation",
    "dbus-daemon",
)


@dataclass(frozen=True)
class Recipe:
    name: str
    packages: tuple[str, ...]
    npm: tuple[str, ...]
    guest_trees: tuple[str, ...]  # folders of hearth/guest/files/ laid onto the root
    # hearth: small initrd + the ip= bootstrap unit. stock: the distribution's initramfs and
    # systemd-networkd from ip= with an agent waiting on network-online (the bench baseline).
    boot: Literal["hearth", "stock"] = "hearth"
    min_free_gib: int = 6


RECIPES = {
    r.name: r
    for r in (
        Recipe(
            "browser",
            NODE_PACKAGES + BROWSER_PACKAGES,
            CLI_PACKAGES,
            ("hearth-boot", "browser"),
            min_free_gib=10,
        ),
        Recipe("cli", NODE_PACKAGES, CLI_PACKAGES, ("hearth-boot",), min_free_gib=8),
        Recipe("baseline", (), (), ("stock-boot",), boot="stock", min_free_gib=4),
    )
}


def get(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(
            f"unknown image {name!r}; known images: {', '.join(sorted(RECIPES))}"
        ) from None


def kernel_package(mirror: str) -> str:
    """The distribution kernel: Debian's generic one, or Ubuntu's slim one for VMs."""
    return "linux-image-virtual" if "ubuntu" in mirror else "linux-image-amd64"
