"""The database's tables. State lives here; memory holds caches, never the only copy."""

from __future__ import annotations

import enum
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend.

    PostgreSQL keeps the instant (timestamptz) but hands it back in the session's time zone;
    SQLite stores text with no offset and hands back a naive value. So values are stored as UTC
    and always come back aware, in UTC; a naive value is refused, since its zone is unknown.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()}: give it a time zone")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:  # SQLite: stored as UTC without an offset
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class VmState(enum.StrEnum):
    requested = "requested"
    booting = "booting"
    ready = "ready"
    hibernating = "hibernating"  # being snapshotted; the VMM still runs
    hibernated = "hibernated"  # snapshot on disk, no VMM; keeps its TAP and IP lease
    resuming = "resuming"  # a VMM is restoring the snapshot
    stopping = "stopping"
    failed = "failed"
    destroyed = "destroyed"


class Vm(Base):
    __tablename__ = "vms"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    image: Mapped[str] = mapped_column(String(64))
    vmm: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default=VmState.requested, index=True)
    tap: Mapped[str] = mapped_column(String(15), unique=True)
    mac: Mapped[str | None] = mapped_column(String(17))
    ip: Mapped[str | None] = mapped_column(String(15))
    netns: Mapped[str] = mapped_column(String(64), default="")
    pid: Mapped[int | None] = mapped_column(Integer)
    # The Hearth process running the VM's create, hibernate or resume plan: while it lives,
    # no other process acts on the VM; if it dies mid-plan the reconciler repairs the VM.
    owner_pid: Mapped[int | None] = mapped_column(Integer)
    boot_started: Mapped[float | None] = mapped_column(Float)  # epoch seconds, VMM start
    # Per-VM bearer token of the guest agent; never logged, never returned by the API.
    agent_token: Mapped[str] = mapped_column(String(128))
    boot_seconds: Mapped[float | None] = mapped_column(Float)
    failed_step: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    # A user's CLI VM names its user (browser VMs belong to a session instead); its last use
    # decides when it hibernates and when it goes.
    user_id: Mapped[str | None] = mapped_column(String(128), index=True)
    last_active_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The image's build the VM booted from (hearth.core.vms.image_build): a rebuilt image's
    # warm pool VMs are replaced.
    image_build: Mapped[str | None] = mapped_column(String(64))
    # A warm pool VM (hearth.core.warm_pool): "warming" while prepared, "warm" once it waits
    # for a sign-in; None for every other VM, and for a pool VM once a session took it.
    pool: Mapped[str | None] = mapped_column(String(16), index=True)
    # The provider whose login a pool VM was prepared with (its sign-in page shown); None for
    # a pool VM on the blank page, for any provider.
    pool_provider: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class IpLease(Base):
    """One row per leased guest address; the primary key makes two leases of one IP impossible."""

    __tablename__ = "ip_leases"

    ip: Mapped[str] = mapped_column(String(15), primary_key=True)
    vm_id: Mapped[str] = mapped_column(ForeignKey("vms.id"), unique=True)
    leased_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Credential(Base):
    """A user's credential files for one provider, sealed (hearth.store.crypto).

    The unique (user_id, provider) keeps exactly one live copy: a refresh replaces it and
    bumps `version`, which the ciphertext's associated data names along with the user and
    provider, so a ciphertext moved to another row, or an old one put back, fails to decrypt.
    """

    __tablename__ = "credentials"
    __table_args__ = (UniqueConstraint("user_id", "provider", name="uq_credentials_user_provider"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    account_email: Mapped[str | None] = mapped_column(String(320))
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    version: Mapped[int] = mapped_column(Integer)
    key_id: Mapped[str] = mapped_column(String(32))  # the master key wrapping the data key
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    # The lease: the one VM holding a live copy, which version it holds, and the digest of
    # its files there. Refresh tokens rotate on use, so no second VM may hold them.
    leased_vm_id: Mapped[str | None] = mapped_column(String(32))
    leased_version: Mapped[int | None] = mapped_column(Integer)
    leased_digest: Mapped[str | None] = mapped_column(String(64))
    # Set when the provider refused this version (revoked, signed out elsewhere); a new
    # version (a sign-in, a refresh) starts valid again.
    invalid_reason: Mapped[str | None] = mapped_column(Text)
    invalid_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """An API key, stored as a hash; the key itself is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # the key's public prefix
    key_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class AuthSessionStatus(enum.StrEnum):
    """A sign-in's course: started -> vm_booting -> awaiting_user -> completed, or it ends
    failed, cancelled or expired (hearth.core.sign_in_vm.TERMINAL). One beyond capacity
    is queued first, and starts when a browser VM can be had."""

    queued = "queued"  # waiting for room for its browser VM (hearth.core.capacity)
    started = "started"
    vm_booting = "vm_booting"
    awaiting_user = "awaiting_user"  # the authorize page shows in the browser VM
    completed = "completed"  # credentials stored
    failed = "failed"
    cancelled = "cancelled"  # through the API, or superseded by a newer sign-in
    expired = "expired"


class AuthSession(Base):
    """One sign-in of a user's CLI to a provider, in a disposable browser VM."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    vm_id: Mapped[str | None] = mapped_column(String(32))
    oauth_url: Mapped[str | None] = mapped_column(Text)
    # The live view's one-time token, hashed; useless once the session ends.
    live_token_hash: Mapped[str] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class AuthSessionEvent(Base):
    """The session's timeline: every status it went through, when, and why."""

    __tablename__ = "auth_session_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("auth_sessions.id"), index=True)
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class PromptStatus(enum.StrEnum):
    running = "running"
    completed = "completed"  # the CLI exited (whatever its exit code)
    failed = "failed"  # it could not run, or its VM failed under it
    cancelled = "cancelled"  # through the API, or because the client went away


class Prompt(Base):
    """One prompt run through a user's CLI, with what it printed: the user's history."""

    __tablename__ = "prompts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    vm_id: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=PromptStatus.running)
    prompt: Mapped[str] = mapped_column(Text)
    output: Mapped[str] = mapped_column(Text, default="")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    first_output_seconds: Mapped[float | None] = mapped_column(Float)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class EgressConnection(Base):
    """One attempt of a VM to reach a name (hearth.net.egress): who, what, the verdict and
    why, how many bytes each way and how long. Never any content."""

    __tablename__ = "egress_connections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    vm_id: Mapped[str | None] = mapped_column(String(32), index=True)
    user_id: Mapped[str | None] = mapped_column(String(128), index=True)
    provider: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(45))
    protocol: Mapped[str] = mapped_column(String(8))  # tls, http, dns
    name: Mapped[str | None] = mapped_column(String(253))
    port: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(8))  # allowed, refused, failed
    reason: Mapped[str | None] = mapped_column(Text)
    upstream: Mapped[str | None] = mapped_column(String(300))  # "direct" or scheme://host:port
    address: Mapped[str | None] = mapped_column(String(45))
    bytes_up: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_down: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_seconds: Mapped[float | None] = mapped_column(Float)  # None while open
    key: Mapped[str] = mapped_column(String(32), unique=True)  # the proxy's name for it


class WebhookEndpoint(Base):
    """Where the app wants events posted (hearth.core.webhooks), and which events.

    The signing secret is sealed like a credential (hearth.store.crypto), under associated
    data naming the endpoint; it is shown once, when the endpoint is made.
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[str] = mapped_column(Text)  # a JSON list of event types
    description: Mapped[str] = mapped_column(String(256), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    key_id: Mapped[str] = mapped_column(String(32))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class WebhookEvent(Base):
    """Something the app is told about, written with the change it tells of: the outbox.

    `body` is the JSON document every endpoint receives, byte for byte (it is what is signed).
    """

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # due at next_attempt_at (or being attempted, until then)
    delivered = "delivered"  # the endpoint answered 2xx
    failed = "failed"  # no 2xx within the retry window: no more attempts


class WebhookDelivery(Base):
    """One event for one endpoint; its id is the `webhook-id` every attempt carries, so a
    receiver can drop a delivery it has already processed."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the next attempt is due; while an attempt runs, when its claim lapses (a worker
    # that died mid-attempt leaves the delivery due again then).
    next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class WebhookAttempt(Base):
    """One POST of a delivery: when, how long, and what came of it (never the body)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    duration_seconds: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int | None] = mapped_column(Integer)  # None: no answer
    error: Mapped[str | None] = mapped_column(Text)  # None: delivered
