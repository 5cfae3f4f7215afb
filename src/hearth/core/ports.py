"""What the core needs of the world outside it, as small interfaces (ports).

The VMM driver's is `hearth.vmm.base.Driver`. The VM network (`hearth.net.topology.VmNetwork`
on a host) and the guest agent (`hearth.core.agent_client.AgentClient`, HTTP to the guest)
are here. Other implementations run without root: the unit tests' network leases loopback
addresses without creating links, and their driver runs the real guest agent as a local
process bound to the VM's address (tests/core_rig.py).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from ipaddress import IPv4Address, IPv6Address
from typing import Protocol

from hearth.core import CoreError
from hearth.guest.protocol import (
    DEFAULT_RUN_TIMEOUT,
    ClockAnswer,
    LoginSpec,
    LoginStatus,
    ProbeSpec,
    ProtocolError,
    Ready,
    RunEvent,
    RunStatus,
    TrustAnswer,
    WarmBrowser,
)
from hearth.store.models import Vm


class AgentError(CoreError):
    """A VM's agent did not do what was asked: it could not be reached, it refused, or it
    answered against the protocol. The agent is the controller's upstream, hence 502."""

    http_status = 502


class AgentUnreachable(AgentError):
    """The agent did not answer: no connection, a timeout, or a stream cut short."""


class AgentRefused(AgentError):
    """The agent refused a request: its HTTP `status`, and `message`, the reason it gave."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"agent answered {status} to {method} {path}: {message}")
        self.status = status
        self.message = message


class AgentProtocolError(AgentError, ProtocolError):
    """The agent's answer is not what the protocol says; the message names the field. The
    guest's ProtocolError (standard library only, so outside hearth.errors) re-rooted."""


class Network(Protocol):
    """Where VMs are plugged in: one TAP per VM on a bridge. Every operation is idempotent."""

    netns: str  # the namespace the TAPs live in ("" = the controller's)

    def ensure(self) -> None:
        """Create whatever of the network is missing."""

    def add_tap(self, name: str, mac: str, ip: str) -> None:
        """Plug a VM's TAP into the bridge, admitting only `mac` and `ip` from it."""

    def remove_tap(self, name: str) -> None: ...

    def tap_state(self, name: str) -> str | None:
        """The TAP's operational state, None when there is no such TAP."""

    def taps(self) -> list[str]:
        """Every TAP with Hearth's prefix."""

    def gateway_sockets(self, wanted: tuple[tuple[str, int], ...]) -> list[socket.socket]:
        """Non-blocking sockets bound to the VMs' gateway address, one per (kind, port) with
        kind "tcp" (listening) or "udp": where egress serves the VMs (hearth.core.egress)."""

    def controller_addresses(self) -> frozenset[IPv4Address | IPv6Address]:
        """Every address of the controller's own namespace, which no VM may reach."""


class GuestAgent(AbstractContextManager, Protocol):
    """A VM's agent, as the core drives it (the routes are in hearth.guest.agent, the
    messages in hearth.guest.protocol). Every failure is an AgentError."""

    def ready(self, timeout: float | None = None) -> Ready: ...
    def health(self, timeout: float | None = None) -> dict: ...
    def start_login(self, spec: LoginSpec) -> LoginStatus: ...
    def login_status(self) -> LoginStatus: ...
    def credentials(self) -> dict[str, bytes]: ...
    def warm_browser(self) -> WarmBrowser: ...
    def warm_browser_status(self) -> WarmBrowser: ...
    def put_credentials(
        self,
        provider: str,
        credential_files: dict[str, bytes],
        support_files: dict[str, bytes] | None = None,
    ) -> str: ...
    def read_credentials(self, provider: str) -> tuple[dict[str, bytes], str]: ...
    def probe_credentials(
        self, provider: str, probe: ProbeSpec
    ) -> tuple[int | None, str | None]: ...
    def wipe_credentials(self, provider: str) -> list[str]: ...
    def run(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        provider: str | None = None,
        timeout: float = DEFAULT_RUN_TIMEOUT,
    ) -> AbstractContextManager[Iterator[RunEvent]]:
        """POST /runs (the client builds the protocol's RunRequest)."""

    def cancel_run(self, run_id: str) -> RunStatus: ...
    def put_trust(self, pem: str) -> TrustAnswer: ...
    def set_clock(self, epoch: float) -> ClockAnswer: ...


AgentConnector = Callable[[Vm], GuestAgent]  # opens a client to the VM's agent
