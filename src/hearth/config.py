"""All of Hearth's settings in one place: the environment (HEARTH_*) over the configuration
file (hearth.settings_file) over the defaults. Each setting's docstring is its one-line
explanation in the commented file `hearth install` writes."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Literal, get_origin

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from hearth.net.egress import names
from hearth.net.egress.upstream import Upstream
from hearth.settings_file import SettingsFile, invalid
from hearth.vmm.qemu import TB_SIZE_MIB

BROWSER_IMAGE = "browser"  # the image sign-ins' VMs boot from


class Settings(BaseSettings):
    # Inputs stay out of error messages: some are secrets (master key, proxy passwords).
    model_config = SettingsConfigDict(
        env_prefix="HEARTH_",
        extra="ignore",
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )

    # Storage
    home: Path = Path("/var/lib/hearth")
    """Images, the layer cache, VM directories and the SQLite database."""
    database_url: str = ""
    """SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db; empty: SQLite under home."""
    # Hidden from repr so printing the settings never shows it.
    master_key: str = Field(default="", repr=False)
    """Base64 of 32 random bytes (a secret); empty: home/master.key, made on first use."""

    # Images
    suite: str = "trixie"
    """The distribution's suite the images are built from (an Ubuntu one works too)."""
    mirror: str = "http://deb.debian.org/debian"
    """The package mirror of that suite."""
    components: str = "main"
    """The suite's components, comma-separated (Ubuntu needs main,universe)."""

    # VMs
    vmm: Literal["qemu", "firecracker"] = "qemu"
    """The VMM that runs the VMs."""
    qemu_accel: Literal["auto", "kvm", "tcg"] = "auto"
    """QEMU's accelerator; auto probes whether a guest really runs under KVM, else TCG."""
    firecracker_bin: str = "firecracker"
    """The firecracker binary."""
    jailer_bin: str = ""
    """The jailer binary; empty: firecracker runs without the jailer."""
    vcpus: int = 2
    """vCPUs per VM."""
    # The demo sign-in reached its page at 512 (tests/e2e/test_sign_in.py); a provider's
    # sign-in page is heavier than the demo's, so half again.
    browser_memory_mib: int = Field(default=768, ge=128)
    """Guest memory of a browser VM (sign-ins, the warm pool), in MiB."""
    # The real CLIs' prompts passed at 384 and Claude Code's and the Gemini CLI's failed at
    # 256 (tests/e2e, README's capacity section): 384 and a third again.
    cli_memory_mib: int = Field(default=512, ge=128)
    """Guest memory of a user's CLI VM (the cli_image), in MiB."""
    memory_mib: int = Field(default=1024, ge=128)
    """Guest memory of a VM of any other image (e.g. `hearth vm create baseline`), in MiB."""
    boot_timeout: float = 180.0
    """Seconds a VM may take from its start to its agent's first answer."""
    agent_poll_interval: float = Field(default=0.5, gt=0, le=10)
    """Seconds between the controller's asks of a guest agent how a login or page goes."""
    qemu_tb_size_mib: int = Field(default=TB_SIZE_MIB, ge=0)
    """MiB of QEMU's translation cache under emulation (TCG); 0: QEMU's own default, 1 GiB."""
    free_page_reporting: bool = True
    """Whether guests hand the memory they free back to the host (a virtio balloon)."""
    # The guest's ports are constants of the image: hearth.guest.ports.

    # Network
    netns: str = "hearth"
    """The namespace of the VMs' bridge; empty: the controller's own."""
    controller_netns: str = ""
    """The controller's namespace, when managing the network from another; empty: this one."""
    bridge: str = "hearth0"
    """The VMs' bridge."""
    cidr: str = "192.168.100.1/24"
    """The gateway's address and the VM subnet."""
    link_cidr: str = "169.254.100.0/30"
    """The veth pair joining the controller's and the VMs' namespaces."""
    tap_prefix: str = "hth"
    """The prefix of the VMs' TAP names."""

    # Egress: what VMs reach, by name, through the proxy on their gateway (hearth/net/egress).
    egress_allow: dict[str, list[str]] = Field(default_factory=dict)
    """Per provider, names its VMs may reach besides its spec's: {"codex": ["*.example.org"]}."""
    egress_deny: dict[str, list[str]] = Field(default_factory=dict)
    """Per provider, names taken off its spec's list."""
    google_sso: list[str] = Field(default_factory=list)
    """Providers whose browser VMs may also load Google's sign-in (sign in with Google)."""
    # Only the operator can allow a private address, and only by name.
    egress_hosts: dict[str, str] = Field(default_factory=dict)
    """Named internal hosts, {"name": "address"}: the proxy dials that address, any range."""
    egress_resolver: str = ""
    """The DNS server the egress proxy resolves names with, ip or ip:port; empty: the system's."""
    upstream_proxy: str = Field(default="", repr=False)
    """Where egress leaves: http://[user:pass@]host:port or socks5://...; empty: directly."""
    upstream_proxies: dict[str, str] = Field(default_factory=dict, repr=False)
    """Per provider, the same (a secret too): {"codex": "socks5://host:1080"}."""
    # For an upstream proxy that re-signs TLS; the tests use it for their test CA.
    vm_ca_file: str = ""
    """A PEM file of CAs the VMs' clients trust besides the system's, sent by each VM's agent."""

    # Capacity (hearth.core.capacity): what running VMs may take, and the queue beyond it.
    vm_memory_budget_mib: int = Field(default=0, ge=0)
    """MiB running VMs may take in all (each: guest plus VMM); 0: RAM less a fifth, >= 2 GiB."""
    max_vms: int = Field(default_factory=lambda: 4 * (os.cpu_count() or 1), ge=1)
    """Running VMs at most (hibernated ones do not count); by default 4 per CPU."""
    auth_queue_max: int = Field(default=20, ge=0)
    """Sign-ins that may wait for a browser VM; beyond, starting one answers 503."""
    max_prompts_per_user: int = Field(default=2, ge=1)
    """Prompts one user may run at once; beyond, 429."""

    # Controller
    public_url: str = "http://localhost:8000"
    """How users' browsers reach the controller."""
    session_ttl: float = 900.0
    """Seconds a sign-in may take before it expires."""
    demo_issuer: str = ""
    """The demo identity provider's issuer URL, as VMs reach it (hearth.demo)."""
    # For a scraper that only this address lets in.
    metrics_listen: str = ""
    """host:port ([::1]:9464 for IPv6) serving /metrics keyless; empty: the API's, admin key."""
    shutdown_grace: float = 30.0
    """Seconds a stopping controller lets running prompts finish before it cancels them."""

    # Warm pool: browser VMs booted, Firefox painted, then hibernated ahead of sign-ins
    pool_browser: int = Field(default=2, ge=0)
    """Browser VMs kept warm for sign-ins (for each of pool_providers, when set); 0: none."""
    pool_providers: list[str] = Field(default_factory=list)
    """Providers whose sign-in page the pool's VMs show ahead; empty: blank, for any one."""
    pool_max_age: float = Field(default=6 * 3600.0, gt=0)
    """Seconds before a warm VM is replaced by a fresh one."""
    pool_boot_interval: float = Field(default=30.0, ge=0)
    """Seconds at least between the starts of two pool boots (no boot storm after a burst)."""

    # Users' CLI VMs
    cli_image: str = "cli"
    """The image users' CLI VMs boot from."""
    idle_hibernate: float = 30 * 60.0
    """Seconds unused before a CLI VM is snapshotted and stopped."""
    idle_destroy: float = 14 * 86400.0
    """Seconds unused before a CLI VM is destroyed."""
    prompt_timeout: float = 3600.0
    """Seconds one prompt may run."""

    # Webhooks (hearth.core.webhooks): the backoff doubles per failed attempt up to the cap,
    # each wait moved by up to a fifth either way.
    webhook_timeout: float = Field(default=10.0, gt=0)
    """Seconds one delivery attempt may take before it counts as failed."""
    webhook_backoff_base: float = Field(default=10.0, gt=0)
    """Seconds between a delivery's first failed attempt and its second."""
    webhook_backoff_cap: float = Field(default=3600.0, gt=0)
    """The longest wait between two attempts, in seconds."""
    webhook_retry_window: float = Field(default=86400.0, gt=0)
    """Seconds after the event within which attempts start; the delivery then fails."""
    webhook_retention: float = Field(default=30 * 86400.0, gt=0)
    """Seconds an event is kept, with its deliveries and attempts, once none is pending."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the configuration file."""
        return init_settings, env_settings, SettingsFile(settings_cls)

    @field_validator("egress_allow", "egress_deny")
    @classmethod
    def _name_lists(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        return {_provider(p): [names.normalize_pattern(n) for n in v] for p, v in value.items()}

    @field_validator("google_sso", "pool_providers")
    @classmethod
    def _providers(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(_provider(p) for p in value))

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

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            host_port(value)
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

    def guest_memory_mib(self, image: str) -> int:
        """The guest memory of a VM of `image`: browser and CLI VMs need different amounts."""
        if image == BROWSER_IMAGE:
            return self.browser_memory_mib
        if image == self.cli_image:
            return self.cli_memory_mib
        return self.memory_mib

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


def host_port(value: str) -> tuple[str, int]:
    """The (host, port) of "host:port" or "[v6 address]:port"; ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:9464)")
    if not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"the port must be 1-65535, not {port!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


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
    """This process's settings; a setting the environment or the configuration file gets
    wrong stops here, with a SettingsError naming it where it was written."""
    try:
        return Settings()
    except ValidationError as e:
        raise invalid(e) from None
