"""A VM's egress policy and the record of one attempt: the data passed between the proxy,
the DNS responder and whoever keeps policies and the audit (hearth.core.egress)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from hearth.net.egress.names import matches


@dataclass(frozen=True)
class EgressPolicy:
    """What one VM may reach: (pattern, provider) rules, the first match naming the provider
    whose upstream proxy the connection leaves through."""

    vm_id: str
    user_id: str | None
    rules: tuple[tuple[str, str], ...]
    # The sign-in session a browser VM serves (failures of its upstream end it).
    session_id: str | None = None

    def provider_for(self, name: str) -> str | None:
        return next((provider for pattern, provider in self.rules if matches(pattern, name)), None)


class Verdict(StrEnum):
    allowed = "allowed"  # and connected: the bytes were spliced
    refused = "refused"  # the policy or the address ranges said no
    failed = "failed"  # allowed, but the name did not resolve or the dial failed


@dataclass
class EgressRecord:
    """One attempt to reach a name, for the audit: never any content. An allowed connection
    is reported twice, when it opens and when it ends (with its bytes and duration)."""

    source: str  # the VM's address
    protocol: str  # "tls", "http" or "dns"
    port: int
    started_at: datetime
    verdict: Verdict = Verdict.refused
    reason: str | None = None
    name: str | None = None
    vm_id: str | None = None
    user_id: str | None = None
    provider: str | None = None
    upstream: str | None = None  # "direct" or the upstream proxy, without its credentials
    address: str | None = None  # what was dialled (or the upstream's target)
    bytes_up: int = 0  # VM to outside
    bytes_down: int = 0
    duration: float | None = None  # None while the connection is open
    # Names the record across its two reports: when it opens and when it ends.
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    # An upstream proxy refused us: the session's sign-in cannot go on, so it is told.
    upstream_error: bool = field(default=False, compare=False)
    session_id: str | None = None


PolicyLookup = Callable[[str], Awaitable[EgressPolicy | None]]
AuditSink = Callable[[EgressRecord], None]
