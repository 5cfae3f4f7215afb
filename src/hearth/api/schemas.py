"""What the API's JSON routes return and its streams' events carry (hearth.api.sse), as
Pydantic models: `/docs` shows them, and FastAPI checks every response against its route's
model, as the streams check each event's data against its own.

Times are ISO 8601 strings as `datetime.isoformat()` writes them (UTC, `+00:00`), kept as
strings so the bodies stay byte for byte what they were. A field typed `X | None` without a
default is always present, possibly null; one with a default may be absent (see
`CredentialsStatus`). No model carries credential contents, tokens or passwords.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hearth.core.webhooks import EventType
from hearth.store.models import AuthSessionStatus, DeliveryStatus, PromptStatus, VmState

IsoTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Health(BaseModel):
    status: Literal["ok"]


# -- auth sessions ---------------------------------------------------------------------------


class SessionStarted(BaseModel):
    session_id: str
    status: AuthSessionStatus
    queue_position: int | None = Field(description="while queued, as in SessionView")
    connect_url: str = Field(description="the live view, with its one-time token (shown once)")


class StreamEvent(BaseModel):
    """The data of a stream's event (hearth.api.sse): a field it does not name is a bug
    where the event is made, not something to drop or send."""

    model_config = ConfigDict(extra="forbid")


class TimelineEntry(StreamEvent):
    """One step of a sign-in, as its timeline and its `status` events give it."""

    status: AuthSessionStatus
    at: IsoTime
    detail: str | None


class SessionView(BaseModel):
    session_id: str
    user_id: str
    provider: str
    status: AuthSessionStatus
    queue_position: int | None = Field(
        description="while queued: 1 for the next sign-in to start, and so on; else null"
    )
    error: str | None
    expires_at: IsoTime
    timeline: list[TimelineEntry]


class OAuthUrl(BaseModel):
    session_id: str
    url: str = Field(description="the authorize URL the CLI asked the browser to open")


class CredentialsStatus(BaseModel):
    """`pending` (the sign-in runs) or `absent` (it ended without credentials) carry only
    `status` and `provider`; `ready` or `invalid` (the provider refused them, and why) carry
    every field."""

    status: Literal["pending", "absent", "ready", "invalid"]
    provider: str
    account_email: str | None = None
    expires_at: IsoTime | None = None
    version: int | None = None
    invalid_reason: str | None = None
    invalid_at: IsoTime | None = Field(None, description="when the provider refused them")


class SessionCancelled(BaseModel):
    session_id: str
    status: AuthSessionStatus


# -- prompts ---------------------------------------------------------------------------------


class PromptSummary(BaseModel):
    """A prompt's record without its output, as the user's history lists it."""

    prompt_id: str
    user_id: str
    provider: str
    status: PromptStatus
    exit_code: int | None
    error: str | None
    vm_id: str | None
    first_output_seconds: float | None
    duration_seconds: float | None
    created_at: IsoTime
    finished_at: IsoTime | None
    prompt: str


class PromptView(PromptSummary):
    output: str = Field(description="what the CLI printed")


class PromptCancelling(BaseModel):
    prompt_id: str
    status: Literal["cancelling"]


class PromptHistory(BaseModel):
    user_id: str
    prompts: list[PromptSummary] = Field(description="newest first")


# -- the prompt's events (POST /api/prompts) --------------------------------------------------


class PromptConnected(StreamEvent):
    """The first event: the prompt is admitted and its CLI VM is being readied."""

    prompt_id: str
    provider: str


class PromptOutput(StreamEvent):
    """What the CLI printed, as it printed it (UTF-8, never a split character)."""

    stream: Literal["stdout", "stderr"]
    data: str


class PromptDone(StreamEvent):
    """The last event of a run that ended: its outcome, as the prompt's record says."""

    prompt_id: str
    status: PromptStatus
    exit_code: int | None = Field(description="null when the CLI was stopped")
    duration: float = Field(description="seconds from the start of the run to its end")
    credentials: Literal["updated", "unchanged"] = Field(
        description="whether the CLI refreshed its tokens (written back to the store)"
    )
    reason: str | None = Field(
        None, description="why it was cancelled or failed; absent when it completed"
    )


class PromptFailed(StreamEvent):
    """The last event of a run that could not go on (the prompt's record ends failed)."""

    reason: str


# -- a sign-in's events (GET /api/auth/session/{id}/events) ------------------------------------


class QueuePosition(StreamEvent):
    position: int = Field(description="1 for the next sign-in to start, and so on")


# -- users -----------------------------------------------------------------------------------


class CredentialView(BaseModel):
    """Stored credentials as they may be shown: never their contents."""

    provider: str
    account_email: str | None
    expires_at: IsoTime | None
    version: int
    updated_at: IsoTime
    status: Literal["ready", "invalid"]
    invalid_reason: str | None
    invalid_at: IsoTime | None = Field(description="when the provider refused them")


class UserVm(BaseModel):
    vm_id: str
    state: VmState


class UserCredentials(BaseModel):
    user_id: str
    credentials: list[CredentialView]
    vm: UserVm | None = Field(description="the user's CLI VM, null when there is none")


class CredentialsRemoved(BaseModel):
    user_id: str
    provider: str
    removed: bool = Field(description="a stored copy existed and is gone")
    wiped_files: list[str] = Field(description="the paths removed in the user's CLI VM")


class Validation(BaseModel):
    user_id: str
    provider: str
    valid: bool | None = Field(description="null when only a refresh could tell")
    reason: str | None
    status: Literal["ready", "invalid", "absent"]


# -- admin -----------------------------------------------------------------------------------


class EgressConnectionView(BaseModel):
    """One attempt of a VM to reach a name (hearth.core.egress.connection_view)."""

    id: int
    started_at: IsoTime
    vm_id: str | None
    user_id: str | None
    provider: str | None
    source: str
    protocol: str = Field(description="tls, http or dns")
    name: str | None
    port: int
    verdict: Literal["allowed", "refused", "failed"]
    reason: str | None
    upstream: str | None = Field(description='"direct" or scheme://host:port')
    address: str | None
    bytes_up: int
    bytes_down: int
    duration_seconds: float | None = Field(description="null while the connection is open")


class EgressLog(BaseModel):
    connections: list[EgressConnectionView] = Field(description="newest first")


# -- the operator's (admin keys) --------------------------------------------------------


class VmView(BaseModel):
    """A VM as the operator sees it: never its agent token or seed."""

    vm_id: str
    image: str
    vmm: str
    state: VmState
    ip: str | None
    user_id: str | None = Field(description="whose CLI VM; null for a browser VM")
    pool: str | None = Field(
        description="a warm pool VM: warming (being prepared) or warm (hibernated, ready)"
    )
    pool_provider: str | None = Field(
        description="the provider whose sign-in page a pool VM shows ahead; null for any"
    )
    boot_seconds: float | None
    failed_step: str | None
    error: str | None
    created_at: IsoTime
    last_active_at: IsoTime | None


class VmList(BaseModel):
    vms: list[VmView]


class ConsoleTail(BaseModel):
    vm_id: str
    lines: list[str] = Field(description="the console log's last lines, oldest first")


class SessionList(BaseModel):
    sessions: list[SessionView] = Field(description="newest first")


class UserSummary(BaseModel):
    user_id: str
    credentials: list[CredentialView]
    vm: UserVm | None
    prompts: list[PromptSummary] = Field(description="the latest, newest first")


class UserList(BaseModel):
    users: list[UserSummary]


class LeaseView(BaseModel):
    ip: str
    vm_id: str
    leased_at: IsoTime


class HostView(BaseModel):
    memory_total_mib: int
    memory_available_mib: int
    vm_memory_mib: int = Field(description="guest memory of the VMs that run now")
    vm_memory_budget_mib: int = Field(
        description="what running VMs may take in all (HEARTH_VM_MEMORY_BUDGET_MIB or its default)"
    )
    vm_memory_reserved_mib: int = Field(
        description="what running VMs take of the budget (guest and VMM each) and VMs admitted "
        "to boot or resume hold reserved"
    )
    vms_by_state: dict[str, int]
    addresses: int = Field(description="in the VM subnet")
    addresses_leased: int
    leases: list[LeaseView] = Field(description="each leased address and its VM, by address")


class KeyView(BaseModel):
    key_id: str
    role: Literal["app", "admin"]
    name: str
    created_at: IsoTime
    revoked_at: IsoTime | None


class KeyList(BaseModel):
    keys: list[KeyView]


class KeyCreated(KeyView):
    key: str = Field(description="the key itself: shown this once, stored only as a hash")


class KeyRequest(BaseModel):
    role: Literal["app", "admin"] = "app"
    name: str = Field("", max_length=128)


# -- webhooks (admin keys) ------------------------------------------------------------------


_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
# What an endpoint URL may be, as the schema tells clients; the validator's own checks come
# first, so that a URL refused says why.
WEBHOOK_URL = (
    rf"^https?://(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+(?::{_PORT})?(?:[/?#][^\x00-\x20\x7f]*)?$"
)


class WebhookEndpointRequest(BaseModel):
    url: str = Field(
        max_length=2000,
        description="where deliveries are POSTed: http or https, to a name or an IPv4 "
        "address, with no user:password in it",
        json_schema_extra={"pattern": WEBHOOK_URL},
    )
    events: list[EventType] = Field(
        default_factory=lambda: list(EventType),
        min_length=1,
        description="the event types to deliver (default: all)",
    )
    description: str = Field("", max_length=256)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        url = url.strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            scheme = f"{parts.scheme}://" if parts.scheme else "a URL without a scheme"
            raise ValueError(f"the endpoint URL must be http:// or https://, not {scheme}")
        if "@" in parts.netloc:
            raise ValueError(
                "the endpoint URL must not carry a user or password: deliveries are signed"
            )
        if not parts.hostname:
            raise ValueError("the endpoint URL names no host")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when asked
        except ValueError:
            raise ValueError("the endpoint URL's port is not a number in 1-65535") from None
        if not re.search(WEBHOOK_URL, url):
            raise ValueError(
                "the endpoint URL's host must be a name or an IPv4 address, its port "
                "1-65535, and it may hold no spaces or control characters"
            )
        return url


class WebhookEndpointUpdate(BaseModel):
    enabled: bool = Field(description="false: no new events, pending deliveries wait")


class WebhookEndpointView(BaseModel):
    """An endpoint as the operator sees it: never its secret."""

    endpoint_id: str
    url: str
    events: list[EventType]
    description: str
    enabled: bool
    created_at: IsoTime
    updated_at: IsoTime


class WebhookEndpointCreated(WebhookEndpointView):
    secret: str = Field(
        description="the signing secret (`whsec_` + base64 of the HMAC key): shown this once, "
        "stored sealed"
    )


class WebhookEndpointList(BaseModel):
    endpoints: list[WebhookEndpointView]


class WebhookAttemptView(BaseModel):
    number: int
    started_at: IsoTime
    duration_seconds: float
    status_code: int | None = Field(description="the endpoint's answer; null if none came")
    error: str | None = Field(description="why it did not count as delivered; null if it did")


class WebhookDeliveryView(BaseModel):
    delivery_id: str = Field(description="the `webhook-id` header of every attempt")
    event_id: str
    event_type: EventType
    status: DeliveryStatus
    next_attempt_at: IsoTime | None
    delivered_at: IsoTime | None
    created_at: IsoTime
    attempts: list[WebhookAttemptView] = Field(description="oldest first")


class WebhookDeliveryList(BaseModel):
    deliveries: list[WebhookDeliveryView] = Field(description="newest first")


# -- errors --------------------------------------------------------------------------------

# Each status the API answers with an error: the `code` of an error that is not one of
# Hearth's own (whose `code` names it: hearth.errors.HearthError.code), and what it means.
STATUSES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "bad input"),
    401: ("unauthorized", "no valid API key"),
    403: ("forbidden", "the key's role may not do this"),
    404: ("not_found", "no such thing"),
    405: ("method_not_allowed", "the path has no such method"),
    409: ("conflict", "not now: the state forbids it"),
    413: ("too_large", "the body is too large"),
    422: ("invalid_request", "the request does not fit the route"),
    429: ("too_many_requests", "too many at once for this user"),
    500: ("internal_error", "Hearth could not do it"),
    501: ("not_implemented", "the provider has no such check"),
    502: ("bad_gateway", "the provider could not be asked"),
    503: ("unavailable", "no capacity now, or the controller is stopping"),
    504: ("timeout", "timed out"),
}


class ErrorBody(BaseModel):
    """Every 4xx and 5xx the API answers (see docs/errors.md)."""

    error: str = Field(description="what is wrong, for the person reading it")
    code: str = Field(
        description="what is wrong, for programs: the error's name in snake_case for "
        "Hearth's own (no_credentials, no_capacity, ...), else the status's "
        f"({', '.join(code for code, _ in STATUSES.values())})",
        pattern=r"^[a-z][a-z0-9_]*$",
    )


class InvalidRequest(ErrorBody):
    """A request whose parameters or body do not fit the route (422)."""

    error: Literal["invalid request"]
    code: Literal["invalid_request"]
    problems: list[str] = Field(description="`where: what`, one per problem")


ERROR_RESPONSES: dict[int | str, dict] = {
    code: {"model": InvalidRequest if code == 422 else ErrorBody, "description": why}
    for code, (_, why) in STATUSES.items()
}
ERROR_RESPONSES[503]["headers"] = {
    "Retry-After": {
        "description": (
            "seconds after which asking again may succeed (beyond capacity, or once a "
            "stopping controller is back)"
        ),
        "schema": {"type": "integer"},
    }
}
