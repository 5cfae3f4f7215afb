"""The guest agent's protocol: every JSON answer the host reads, as frozen dataclasses.

Shared like seed.py: the agent (in the guest, where this file is a sibling script under
/usr/lib/hearth) builds its answers from these classes, and the host's client
(hearth.core.agent_client, importing hearth.guest.protocol) parses them back. `to_json()`
gives the wire form, with the field names the images already built use; `from_json()`
checks every field and raises ProtocolError naming the one that is wrong, so a misbehaving
guest gives a clear error, never a KeyError. Credential files are bytes here and base64 on
the wire.

GET /health and POST /diagnostics/ping stay free-form JSON objects: they are diagnostics
(addresses, routes, ping's output) that people read, and nothing in the core decides on them.

Standard library only: it runs with Debian's python3.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass
from typing import Any, ClassVar

LOGIN_STATES = ("starting", "running", "exited")
STREAMS = ("stdout", "stderr")


class ProtocolError(ValueError):
    """An agent's answer is not what the protocol says; the message names the field."""


# --- checking fields ---------------------------------------------------------------------


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ProtocolError(f"the agent's {what} must be a JSON object, not {_kind(data)}")
    return data


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _wrong(what: str, name: str, expected: str, data: dict[str, Any]) -> ProtocolError:
    found = "missing" if name not in data else _kind(data[name])
    return ProtocolError(f"the agent's {what}: field {name!r} must be {expected}, not {found}")


def _str(data: dict[str, Any], what: str, name: str, optional: bool = False) -> Any:
    value = data.get(name)
    if isinstance(value, str) or (optional and value is None and name in data):
        return value
    raise _wrong(what, name, "a string or null" if optional else "a string", data)


def _bool(data: dict[str, Any], what: str, name: str) -> bool:
    value = data.get(name)
    if isinstance(value, bool):
        return value
    raise _wrong(what, name, "true or false", data)


def _int(data: dict[str, Any], what: str, name: str, optional: bool = False) -> Any:
    value = data.get(name)
    if (isinstance(value, int) and not isinstance(value, bool)) or (
        optional and value is None and name in data
    ):
        return value
    raise _wrong(what, name, "an integer or null" if optional else "an integer", data)


def _number(data: dict[str, Any], what: str, name: str) -> float:
    value = data.get(name)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise _wrong(what, name, "a number", data)


def _choice(data: dict[str, Any], what: str, name: str, choices: tuple[str, ...]) -> str:
    value = data.get(name)
    if value in choices:
        return value
    raise _wrong(what, name, " or ".join(repr(c) for c in choices), data)


def _strings(data: dict[str, Any], what: str, name: str) -> tuple[str, ...]:
    value = data.get(name)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _wrong(what, name, "a list of strings", data)


def _string_map(data: dict[str, Any], what: str, name: str) -> dict[str, str]:
    value = data.get(name)
    if isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return dict(value)
    raise _wrong(what, name, "an object of strings", data)


def _files(data: dict[str, Any], what: str, name: str) -> dict[str, bytes]:
    encoded = _string_map(data, what, name)
    try:
        return {path: base64.b64decode(content, validate=True) for path, content in encoded.items()}
    except (binascii.Error, ValueError):
        raise _wrong(what, name, "an object of base64 strings", data) from None


def _encode(files: dict[str, bytes]) -> dict[str, str]:
    return {path: base64.b64encode(content).decode("ascii") for path, content in files.items()}


# --- readiness ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """GET /ready: the agent answers, and the guest's uptime."""

    status: str
    uptime: float

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "uptime": self.uptime}

    @classmethod
    def from_json(cls, data: Any) -> Ready:
        d = _object(data, what := "readiness answer")
        return cls(_str(d, what, "status"), _number(d, what, "uptime"))


# --- logins (the browser VM) -------------------------------------------------------------


@dataclass(frozen=True)
class FirefoxStatus:
    """The login's Firefox: whether it was opened, its window title, whether a page shows."""

    opened: bool
    title: str | None
    ready: bool

    def to_json(self) -> dict[str, Any]:
        return {"opened": self.opened, "title": self.title, "ready": self.ready}

    @classmethod
    def from_json(cls, data: Any) -> FirefoxStatus:
        d = _object(data, what := "login status's firefox")
        return cls(
            _bool(d, what, "opened"), _str(d, what, "title", optional=True), _bool(d, what, "ready")
        )


@dataclass(frozen=True)
class LoginStatus:
    """POST, GET and DELETE /login: a provider login's progress (hearth.guest.login)."""

    provider: str
    state: str  # one of LOGIN_STATES
    url: str | None  # the URL shown in Firefox
    printed_url: str | None
    browser_url: str | None
    prompts_answered: tuple[str, ...]
    success_marker_seen: bool
    exited: bool
    exit_code: int | None
    success: bool
    error: str | None
    firefox: FirefoxStatus

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "state": self.state,
            "url": self.url,
            "printed_url": self.printed_url,
            "browser_url": self.browser_url,
            "prompts_answered": list(self.prompts_answered),
            "success_marker_seen": self.success_marker_seen,
            "exited": self.exited,
            "exit_code": self.exit_code,
            "success": self.success,
            "error": self.error,
            "firefox": self.firefox.to_json(),
        }

    @classmethod
    def from_json(cls, data: Any) -> LoginStatus:
        d = _object(data, what := "login status")
        if not isinstance(d.get("firefox"), dict):
            raise _wrong(what, "firefox", "a JSON object", d)
        return cls(
            provider=_str(d, what, "provider"),
            state=_choice(d, what, "state", LOGIN_STATES),
            url=_str(d, what, "url", optional=True),
            printed_url=_str(d, what, "printed_url", optional=True),
            browser_url=_str(d, what, "browser_url", optional=True),
            prompts_answered=_strings(d, what, "prompts_answered"),
            success_marker_seen=_bool(d, what, "success_marker_seen"),
            exited=_bool(d, what, "exited"),
            exit_code=_int(d, what, "exit_code", optional=True),
            success=_bool(d, what, "success"),
            error=_str(d, what, "error", optional=True),
            firefox=FirefoxStatus.from_json(d["firefox"]),
        )


@dataclass(frozen=True)
class LoginCredentials:
    """GET /credentials: the signed-in CLI's credential files by path under HOME."""

    provider: str
    files: dict[str, bytes]

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "files": _encode(self.files)}

    @classmethod
    def from_json(cls, data: Any) -> LoginCredentials:
        d = _object(data, what := "login's credentials")
        return cls(_str(d, what, "provider"), _files(d, what, "files"))


@dataclass(frozen=True)
class UrlOpened:
    """POST /open-url: the URL went to Firefox."""

    opened: bool

    def to_json(self) -> dict[str, Any]:
        return {"opened": self.opened}

    @classmethod
    def from_json(cls, data: Any) -> UrlOpened:
        return cls(_bool(_object(data, what := "open-url answer"), what, "opened"))


@dataclass(frozen=True)
class WarmBrowser:
    """POST and GET /warm-browser: Firefox started ahead of any login on the blank page, for
    the next login's sign-in page (the controller's warm pool). `painted` once the blank page
    shows; `error` when Firefox could not start."""

    painted: bool
    error: str | None
    firefox: FirefoxStatus

    def to_json(self) -> dict[str, Any]:
        return {"painted": self.painted, "error": self.error, "firefox": self.firefox.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> WarmBrowser:
        d = _object(data, what := "warm browser answer")
        if not isinstance(d.get("firefox"), dict):
            raise _wrong(what, "firefox", "a JSON object", d)
        return cls(
            _bool(d, what, "painted"),
            _str(d, what, "error", optional=True),
            FirefoxStatus.from_json(d["firefox"]),
        )


# --- credential custody (the CLI VM) -----------------------------------------------------


@dataclass(frozen=True)
class CredentialsInstalled:
    """PUT /credentials/{provider}: the digest of the credential files installed."""

    provider: str
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "digest": self.digest}

    @classmethod
    def from_json(cls, data: Any) -> CredentialsInstalled:
        d = _object(data, what := "credential install answer")
        return cls(_str(d, what, "provider"), _str(d, what, "digest"))


@dataclass(frozen=True)
class CredentialFiles:
    """GET /credentials/{provider}: the credential files as they are now, and their digest."""

    provider: str
    files: dict[str, bytes]
    digest: str

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "files": _encode(self.files), "digest": self.digest}

    @classmethod
    def from_json(cls, data: Any) -> CredentialFiles:
        d = _object(data, what := "credential files")
        return cls(_str(d, what, "provider"), _files(d, what, "files"), _str(d, what, "digest"))


@dataclass(frozen=True)
class CredentialsWiped:
    """DELETE /credentials/{provider}: the paths that were removed."""

    provider: str
    removed: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "removed": list(self.removed)}

    @classmethod
    def from_json(cls, data: Any) -> CredentialsWiped:
        d = _object(data, what := "credential wipe answer")
        return cls(_str(d, what, "provider"), _strings(d, what, "removed"))


@dataclass(frozen=True)
class ProbeAnswer:
    """POST /credentials/{provider}/probe: the provider's HTTP status (None: not reached)
    and what went wrong (None on a 2xx); see hearth.guest.probe."""

    provider: str
    status: int | None
    detail: str | None

    def to_json(self) -> dict[str, Any]:
        return {"provider": self.provider, "status": self.status, "detail": self.detail}

    @classmethod
    def from_json(cls, data: Any) -> ProbeAnswer:
        d = _object(data, what := "probe answer")
        return cls(
            _str(d, what, "provider"),
            _int(d, what, "status", optional=True),
            _str(d, what, "detail", optional=True),
        )


# --- prompt runs (the CLI VM) ------------------------------------------------------------


@dataclass(frozen=True)
class RunStarted:
    """The first event of POST /runs' stream: the CLI is running."""

    event: ClassVar[str] = "started"
    run_id: str
    pid: int

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "run_id": self.run_id, "pid": self.pid}

    @classmethod
    def from_json(cls, data: Any) -> RunStarted:
        d = _object(data, what := "run's started event")
        return cls(_str(d, what, "run_id"), _int(d, what, "pid"))


@dataclass(frozen=True)
class RunOutput:
    """Output of the CLI as it arrived, decoded as UTF-8 (a split character is never
    broken)."""

    event: ClassVar[str] = "output"
    stream: str  # one of STREAMS
    data: str

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "stream": self.stream, "data": self.data}

    @classmethod
    def from_json(cls, data: Any) -> RunOutput:
        d = _object(data, what := "run's output event")
        return cls(_choice(d, what, "stream", STREAMS), _str(d, what, "data"))


@dataclass(frozen=True)
class RunExit:
    """The last event: how the CLI ended, and the digest of the provider's credential files
    after the run (None without a provider or files)."""

    event: ClassVar[str] = "exit"
    run_id: str
    exit_code: int | None
    signal: str | None  # the signal's name when one ended the CLI
    duration: float
    cancelled: bool
    timed_out: bool
    credentials_digest: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "run_id": self.run_id,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "duration": self.duration,
            "cancelled": self.cancelled,
            "timed_out": self.timed_out,
            "credentials_digest": self.credentials_digest,
        }

    @classmethod
    def from_json(cls, data: Any) -> RunExit:
        d = _object(data, what := "run's exit event")
        return cls(
            run_id=_str(d, what, "run_id"),
            exit_code=_int(d, what, "exit_code", optional=True),
            signal=_str(d, what, "signal", optional=True),
            duration=_number(d, what, "duration"),
            cancelled=_bool(d, what, "cancelled"),
            timed_out=_bool(d, what, "timed_out"),
            credentials_digest=_str(d, what, "credentials_digest", optional=True),
        )


RunEvent = RunStarted | RunOutput | RunExit
RUN_EVENTS: dict[str, type[RunStarted] | type[RunOutput] | type[RunExit]] = {
    kind.event: kind for kind in (RunStarted, RunOutput, RunExit)
}


def run_event(data: Any) -> RunEvent:
    """One line of POST /runs' NDJSON stream, by its "event" field."""
    d = _object(data, "run event")
    name = d.get("event")
    kind = RUN_EVENTS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise _wrong("run event", "event", " or ".join(repr(k) for k in RUN_EVENTS), d)
    return kind.from_json(d)


@dataclass(frozen=True)
class RunStatus:
    """GET and DELETE /runs/{run_id}: a run, running or finished."""

    run_id: str
    running: bool
    exit_code: int | None
    signal: str | None
    cancelled: bool
    timed_out: bool
    duration: float  # so far, while it runs

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "running": self.running,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "cancelled": self.cancelled,
            "timed_out": self.timed_out,
            "duration": self.duration,
        }

    @classmethod
    def from_json(cls, data: Any) -> RunStatus:
        d = _object(data, what := "run status")
        return cls(
            run_id=_str(d, what, "run_id"),
            running=_bool(d, what, "running"),
            exit_code=_int(d, what, "exit_code", optional=True),
            signal=_str(d, what, "signal", optional=True),
            cancelled=_bool(d, what, "cancelled"),
            timed_out=_bool(d, what, "timed_out"),
            duration=_number(d, what, "duration"),
        )


# --- the clock and extra CAs -------------------------------------------------------------


@dataclass(frozen=True)
class ClockAnswer:
    """PUT /clock: whether the guest clock was set, and its time after the request."""

    adjusted: bool
    epoch: float

    def to_json(self) -> dict[str, Any]:
        return {"adjusted": self.adjusted, "epoch": self.epoch}

    @classmethod
    def from_json(cls, data: Any) -> ClockAnswer:
        d = _object(data, what := "clock answer")
        return cls(_bool(d, what, "adjusted"), _number(d, what, "epoch"))


@dataclass(frozen=True)
class TrustAnswer:
    """PUT /trust: how many CA certificates are trusted, and the variables that point each
    client at them (hearth.guest.trust)."""

    certificates: int
    env: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"certificates": self.certificates, "env": dict(self.env)}

    @classmethod
    def from_json(cls, data: Any) -> TrustAnswer:
        d = _object(data, what := "trust answer")
        return cls(_int(d, what, "certificates"), _string_map(d, what, "env"))
