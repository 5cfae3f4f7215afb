"""All of Hearth's settings in one place, read from the environment (HEARTH_*)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Literal, get_origin

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hearth.net.egress import names
from hearth.net.egress.upstream import Upstream


class Settings(BaseSettings):
    # Inputs stay out of error messages: some are secrets (master key, proxy passwords).
    model_config = SettingsConfigDict(
        env_prefix="HEARTH_", extra="ignore", hide_input_in_errors=True
    )

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
    # The guest's ports are constants of the image: hearth.guest.ports.

    # Network
    netns: str = "hearth"  # empty: the VMs' bridge lives in the controller's namespace
    controller_netns: str = ""  # the controller's namespace; empty: this process's own
    bridge: str = "hearth0"
    cidr: str = "192.168.100.1/24"  # the gateway address and the VM subnet
    link_cidr: str = "169.254.100.0/30"  # the veth pair joining the two namespaces
    tap_prefix: str = "hth"

    # Egress: what VMs reach, by name, through the proxy on their gateway (hearth/net/egress).
    # Names each provider's VMs may reach besides its spec's, and names taken off its list:
    # {"claude_code": ["example.org", "*.example.net"]} (JSON).
    egress_allow: dict[str, list[str]] = Field(default_factory=dict)
    egress_deny: dict[str, list[str]] = Field(default_factory=dict)
    # Providers whose browser VMs may also load Google's sign-in pages (sign in with Google).
    google_sso: list[str] = Field(default_factory=list)
    # Named internal hosts, {"name": "address"}: the proxy dials that address for that name
    # whatever its range. Only the operator can allow a private address, and only by name.
    egress_hosts: dict[str, str] = Field(default_factory=dict)
    # The DNS server the proxy resolves names with, "ip" or "ip:port"; empty: the system's.
    egress_resolver: str = ""
    # Where egress leaves: empty (directly), http://[user:pass@]host:port (CONNECT) or
    # socks5://[user:pass@]host:port; per provider in upstream_proxies (JSON). Secrets.
    upstream_proxy: str = Field(default="", repr=False)
    upstream_proxies: dict[str, str] = Field(default_factory=dict, repr=False)
    # A PEM file of CAs the VMs' clients trust besides the system's: for an upstream proxy
    # that re-signs TLS; the tests use it for their test CA. Sent to each VM by its agent.
    vm_ca_file: str = ""

    # Controller
    public_url: str = "http://localhost:8000"  # how users' browsers reach the controller
    session_ttl: float = 900.0  # seconds an auth session may take before it expires
    demo_issuer: str = ""  # the demo identity provider's issuer URL, as VMs reach it

    # Warm pool: browser VMs booted, Firefox painted, then hibernated ahead of sign-ins
    pool_browser: int = Field(default=2, ge=0)  # VMs kept warm; 0 turns the pool off
    pool_max_age: float = Field(default=6 * 3600.0, gt=0)  # seconds before one is replaced
    pool_boot_interval: float = Field(default=30.0, ge=0)  # seconds at least between boots

    # Users' CLI VMs
    cli_image: str = "cli"
    idle_hibernate: float = 30 * 60.0  # seconds unused before a CLI VM is snapshotted
    idle_destroy: float = 14 * 86400.0  # seconds unused before it is destroyed
    prompt_timeout: float = 3600.0  # seconds one prompt may run

    @field_validator("egress_allow", "egress_deny")
    @classmethod
    def _name_lists(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {_provider(p): [names.normalize_pattern(n) for n in v] for p, v in value.items()}

    @field_validator("google_sso")
    @classmethod
    def _providers(cls, value: list[str]) -> list[str]:
        return [_provider(p) for p in value]

    @field_validator("egress_hosts")
    @classmethod
    def _hosts(cls, value: dict[str, str]) -> dict[str, str]:
        return {
            names.normalize(name): str(ipaddress.ip_address(address))
            for name, address in value.items()
        }

    @field_validator("egress_resolver")
    @classmethod
    def _resolver(cls, value: str) -> str:
        if value:
            host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
            ipaddress.ip_address(host)
            if port and not (port.isdigit() and 0 < int(port) < 65536):
                raise ValueError(f"the resolver's port must be 1-65535, not {port!r}")
        return value

    @field_validator("vm_ca_file")
    @classmethod
    def _ca_file(cls, value: str) -> str:
        if value and "BEGIN CERTIFICATE" not in _read(value):
            raise ValueError(f"{value} holds no PEM certificate")
        return value

    @field_validator("upstream_proxy")
    @classmethod
    def _upstream(cls, value: str) -> str:
        if value:
            Upstream.parse(value)
        return value

    @field_validator("upstream_proxies")
    @classmethod
    def _upstreams(cls, value: dict[str, str]) -> dict[str, str]:
        for provider, url in value.items():
            _provider(provider)
            Upstream.parse(url)
        return value

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """The settings a Hearth process started with `environ` would have (dict and list
        settings are JSON there, as pydantic-settings reads them)."""
        values: dict[str, object] = {}
        for key, value in environ.items():
            if not key.startswith("HEARTH_"):
                continue
            name = key.removeprefix("HEARTH_").lower()
            field = cls.model_fields.get(name)
            if field is not None and get_origin(field.annotation) in (dict, list):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{key} must be JSON: {e.msg} at {e.pos}") from None
            values[name] = value
        return cls(**values)

    @cached_property
    def gateway(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.cidr)

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


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None


def _provider(name: str) -> str:
    from hearth import providers  # the specs are data; imported late, they import no settings

    providers.get(name)
    return name


def load() -> Settings:
    return Settings()
