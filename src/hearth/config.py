"""All of Hearth's settings in one place, read from the environment (HEARTH_*)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEARTH_", extra="ignore")

    home: Path = Path("/var/lib/hearth")
    database_url: str = ""  # empty: SQLite file under home
    # Base64 of 32 random bytes; empty: the key file under home, made on first use. Hidden
    # from repr so printing the settings never shows it.
    master_key: str = Field(default="", repr=False)

    # Images
    suite: str = "trixie"
    mirror: str = "http://deb.debian.org/debian"
    # Extra components for the suite (Ubuntu needs "main,universe").
    components: str = "main"

    # VMs
    vmm: Literal["qemu", "firecracker"] = "qemu"
    qemu_accel: Literal["auto", "kvm", "tcg"] = "auto"
    firecracker_bin: str = "firecracker"
    jailer_bin: str = ""  # empty: run firecracker without the jailer
    vcpus: int = 2
    memory_mib: int = 1024
    boot_timeout: float = 180.0
    agent_port: int = 8080

    # Network
    netns: str = "hearth"  # empty: the VMs' bridge lives in the controller's namespace
    controller_netns: str = ""  # the controller's namespace; empty: this process's own
    bridge: str = "hearth0"
    cidr: str = "192.168.100.1/24"  # the gateway address and the VM subnet
    link_cidr: str = "169.254.100.0/30"  # the veth pair joining the two namespaces
    tap_prefix: str = "hth"
    # Destinations VMs may reach beyond the gateway, "ip:port,ip:port" (default: none).
    egress: str = ""

    # Controller
    public_url: str = "http://localhost:8000"  # how users' browsers reach the controller
    session_ttl: float = 900.0  # seconds an auth session may take before it expires
    demo_issuer: str = ""  # the demo identity provider's issuer URL, as VMs reach it

    # Users' CLI VMs
    cli_image: str = "cli"
    idle_hibernate: float = 30 * 60.0  # seconds unused before a CLI VM is snapshotted
    idle_destroy: float = 14 * 86400.0  # seconds unused before it is destroyed
    prompt_timeout: float = 3600.0  # seconds one prompt may run

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """The settings a Hearth process started with `environ` would have."""
        return cls(**{key.removeprefix("HEARTH_").lower(): value
                      for key, value in environ.items() if key.startswith("HEARTH_")})

    @cached_property
    def gateway(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.cidr)

    @property
    def egress_rules(self) -> tuple[tuple[str, int], ...]:
        rules = []
        for item in filter(None, (part.strip() for part in self.egress.split(","))):
            host, _, port = item.rpartition(":")
            rules.append((str(ipaddress.IPv4Address(host)), int(port)))
        return tuple(rules)

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def vms_dir(self) -> Path:
        return self.home / "vms"

    @property
    def master_key_file(self) -> Path:
        return self.home / "master.key"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'hearth.db'}"


def load() -> Settings:
    return Settings()
