"""The guest agent's protocol: every JSON request and answer, as frozen dataclasses.

Shared like seed.py: the agent (in the guest, where this file is a sibling script under
/usr/lib/hearth) parses its requests and builds its answers from these classes, and the
host's client (hearth.core.agent_client, importing hearth.guest.protocol) builds the
requests and parses the answers back. `to_json()` gives the wire form, with the field names
the images already built use; `from_json()` checks every field and raises ProtocolError
naming the one that is wrong, so a misbehaving guest gives the host a clear error (never a
KeyError), and a bad request gets a 400 saying which field is bad. Credential files are
bytes here and base64 on the wire.

GET /health and POST /diagnostics/ping stay free-form JSON objects: they are diagnostics
(addresses, routes, ping's output) that people read, and nothing in the core decides on them.

Standard library only: it runs with Debian's python3.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Any, ClassVar
from urllib.parse import urlsplit

if __package__:
    from . import browser_shim, fileio
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import browser_shim
    import fileio

LOGIN_STATES = ("starting", "running", "exited")
STREAMS = ("stdout", "stderr")


class ProtocolError(ValueError):
    """A request or an answer is not what the protocol says; the message names the field.
    Outside hearth.errors' tree, as this module runs in the guest without the host's
    package: the host's client raises it as hearth.core.ports.AgentProtocolError, one."""


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


# --- requests: what the host sends (the agent answers a bad one 400 with the message) ----

NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")  # a provider's name
DEFAULT_RUN_TIMEOUT = 3600.0
MAX_RUN_TIMEOUT = 86400.0
MAX_EPOCH = 2.0**33  # year 2242: anything later is a bad request, not a time


def _request(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    return data


def _seconds_value(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def home_path(path: str, name: str) -> str:
    """A path under HOME: relative, normalised, no way out of HOME."""
    relative = fileio.home_relative(path)
    if relative is None:
        raise ProtocolError(f'"{name}" holds {path[:80]!r}, which is not a plain path under HOME')
    return relative


@dataclass(frozen=True)
class PingRequest:
    """POST /diagnostics/ping: ping this IPv4 address once from the guest."""

    host: str

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host}

    @classmethod
    def from_json(cls, data: Any) -> PingRequest:
        host = _request(data, "the ping request").get("host")
        if not isinstance(host, str):
            raise ProtocolError('"host" must be a string holding an IPv4 address')
        try:
            # Validated and normalised, so it can never be read by ping as an option.
            return cls(str(IPv4Address(host)))
        except ValueError:
            raise ProtocolError(f'"host" must be an IPv4 address, not {host[:64]!r}') from None


# A login spec's fields, by kind; the message names the field.


def _spec_field(
    data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any
) -> Any:
    value = data.get(name, default)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ProtocolError(f'"{name}" has the wrong type ({type(value).__name__})')
    return value


def _spec_strings(data: dict[str, Any], name: str, required: bool = False) -> tuple[str, ...]:
    value = _spec_field(data, name, list, [])
    if not all(isinstance(item, str) for item in value):
        raise ProtocolError(f'"{name}" must be a list of strings')
    if required and not value:
        raise ProtocolError(f'"{name}" must not be empty')
    return tuple(value)


def _spec_map(data: dict[str, Any], name: str) -> dict[str, str]:
    value = _spec_field(data, name, dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ProtocolError(f'"{name}" must map strings to strings')
    return dict(value)


def _spec_seconds(data: dict[str, Any], name: str, default: float) -> float:
    value = _spec_field(data, name, (int, float), default)
    if value <= 0:
        raise ProtocolError(f'"{name}" must be positive')
    return float(value)


def _spec_regex(pattern: str, name: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ProtocolError(f'"{name}" holds a bad regular expression: {e}') from None


@dataclass(frozen=True)
class LoginSpec:
    """What the agent needs to run one provider's login (hearth.guest.login; the host
    builds it from hearth.providers.base.ProviderSpec)."""

    name: str
    login_argv: tuple[str, ...]
    login_env: dict[str, str]
    clean_env: bool
    url_pattern: re.Pattern[str]
    browser_url_preferred: bool
    prompts: tuple[tuple[re.Pattern[str], str], ...]
    pre_login_files: dict[str, str]
    credential_files: tuple[str, ...]
    success_markers: tuple[re.Pattern[str], ...]
    stop_on_success: bool
    login_timeout: float
    url_timeout: float  # how long the CLI may take to show its authorize URL

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "login_argv": list(self.login_argv),
            "login_env": dict(self.login_env),
            "clean_env": self.clean_env,
            "url_pattern": self.url_pattern.pattern,
            "browser_url_preferred": self.browser_url_preferred,
            "prompts": [[pattern.pattern, keys] for pattern, keys in self.prompts],
            "pre_login_files": dict(self.pre_login_files),
            "credential_files": list(self.credential_files),
            "success_markers": [marker.pattern for marker in self.success_markers],
            "stop_on_success": self.stop_on_success,
            "login_timeout": self.login_timeout,
            "url_timeout": self.url_timeout,
        }

    @classmethod
    def from_json(cls, data: Any) -> LoginSpec:
        if not isinstance(data, dict):
            raise ProtocolError('"spec" must be a JSON object')
        name = _spec_field(data, "name", str, None)
        if not NAME.fullmatch(name):
            raise ProtocolError(f'"name" {name[:40]!r} is not a provider name')
        prompts = _spec_field(data, "prompts", list, [])
        if not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)
            for p in prompts
        ):
            raise ProtocolError('"prompts" must be a list of [regex, keys] pairs')
        return cls(
            name=name,
            login_argv=_spec_strings(data, "login_argv", required=True),
            login_env=_spec_map(data, "login_env"),
            clean_env=_spec_field(data, "clean_env", bool, False),
            url_pattern=_spec_regex(_spec_field(data, "url_pattern", str, None), "url_pattern"),
            browser_url_preferred=_spec_field(data, "browser_url_preferred", bool, False),
            prompts=tuple((_spec_regex(p, "prompts"), keys) for p, keys in prompts),
            pre_login_files={
                home_path(path, "pre_login_files"): content
                for path, content in _spec_map(data, "pre_login_files").items()
            },
            credential_files=tuple(
                home_path(path, "credential_files")
                for path in _spec_strings(data, "credential_files", required=True)
            ),
            success_markers=tuple(
                _spec_regex(p, "success_markers")
                for p in _spec_strings(data, "success_markers", required=True)
            ),
            stop_on_success=_spec_field(data, "stop_on_success", bool, False),
            login_timeout=_spec_seconds(data, "login_timeout", 900),
            url_timeout=_spec_seconds(data, "url_timeout", 180),
        )


@dataclass(frozen=True)
class LoginRequest:
    """POST /login: start the login `spec` describes."""

    spec: LoginSpec

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec.to_json()}

    @classmethod
    def from_json(cls, data: Any) -> LoginRequest:
        return cls(LoginSpec.from_json(_request(data, "the login request").get("spec")))


@dataclass(frozen=True)
class OpenUrl:
    """POST /open-url: show this http(s) URL in the browser VM's Firefox."""

    url: str

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url}

    @classmethod
    def from_json(cls, data: Any) -> OpenUrl:
        url = _request(data, "the open-url request").get("url")
        if not isinstance(url, str) or not browser_shim.is_web_url(url):
            raise ProtocolError('"url" must be an http(s) URL')
        return cls(url)


def _home_files(data: dict[str, Any], name: str, required: bool = False) -> dict[str, bytes]:
    """data[name], {relative path under HOME: base64}, checked and decoded."""
    files = data.get(name, {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ProtocolError(f'"{name}" must map paths to base64 strings')
    if required and not files:
        raise ProtocolError(f'"{name}" must not be empty')
    decoded = {}
    for path, content in files.items():
        relative = home_path(path, name)
        try:
            decoded[relative] = base64.b64decode(content, validate=True)
        except ValueError:  # binascii.Error, or a non-ASCII string
            raise ProtocolError(f'"{name}" holds {path[:80]!r}, which is not base64') from None
    return decoded


@dataclass(frozen=True)
class InstallCredentials:
    """PUT /credentials/{provider}: the provider's credential files (replacing those of the
    previous install) and the support files beside them, by path under HOME."""

    credential_files: dict[str, bytes]
    support_files: dict[str, bytes] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "credential_files": _encode(self.credential_files),
            "support_files": _encode(self.support_files),
        }

    @classmethod
    def from_json(cls, data: Any) -> InstallCredentials:
        d = _request(data, "the credential install")
        return cls(
            _home_files(d, "credential_files", required=True), _home_files(d, "support_files")
        )


def _key_path(value: Any, name: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(k, str) for k in value):
        raise ProtocolError(f'"{name}" must be a non-empty list of keys')
    return tuple(value)


@dataclass(frozen=True)
class ProbeSpec:
    """POST /credentials/{provider}/probe (hearth.guest.probe): GET `url` with
    `Authorization: Bearer <token>`, the token and the `file_headers` values read from
    `token_file` (a JSON file) by key paths; `headers` sent as they are."""

    url: str
    token_file: str
    token_path: tuple[str, ...]
    file_headers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "token_file": self.token_file,
            "token_path": list(self.token_path),
            "headers": dict(self.headers),
            "file_headers": {name: list(path) for name, path in self.file_headers.items()},
        }

    @classmethod
    def from_json(cls, data: Any) -> ProbeSpec:
        if not isinstance(data, dict):
            raise ProtocolError("the probe must be a JSON object")
        url, token_file = data.get("url"), data.get("token_file")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme != "https" or not parts.hostname:
            raise ProtocolError('"url" must be an https URL')
        if not isinstance(token_file, str) or not token_file:
            raise ProtocolError('"token_file" must be a path under HOME')
        headers = data.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ProtocolError('"headers" must map strings to strings')
        file_headers = data.get("file_headers", {})
        if not isinstance(file_headers, dict):
            raise ProtocolError('"file_headers" must map header names to key paths')
        return cls(
            url,
            token_file,
            _key_path(data.get("token_path"), "token_path"),
            {name: _key_path(path, f"file_headers.{name}") for name, path in file_headers.items()},
            dict(headers),
        )


def _is_argv(argv: Any) -> bool:
    return (
        isinstance(argv, list)
        and bool(argv)
        and all(isinstance(arg, str) and "\0" not in arg for arg in argv)
        and bool(argv[0])
    )


def _is_env(env: Any) -> bool:
    return isinstance(env, dict) and all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
        for k, v in env.items()
    )


@dataclass(frozen=True)
class RunRequest:
    """POST /runs: run `argv` in HOME with `env` over the agent's, the digest of
    `provider`'s credential files in the exit event, stopped after `timeout` seconds."""

    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    provider: str | None = None
    timeout: float = DEFAULT_RUN_TIMEOUT

    def to_json(self) -> dict[str, Any]:
        return {
            "argv": list(self.argv),
            "env": dict(self.env),
            "provider": self.provider,
            "timeout": self.timeout,
        }

    @classmethod
    def from_json(cls, data: Any) -> RunRequest:
        d = _request(data, "the run request")
        argv = d.get("argv")
        if not _is_argv(argv):
            raise ProtocolError('"argv" must be a non-empty list of strings (without NUL)')
        env = {} if d.get("env") is None else d["env"]
        if not _is_env(env):
            raise ProtocolError('"env" must map variable names to strings (without NUL)')
        provider = d.get("provider")
        if provider is not None and not (isinstance(provider, str) and NAME.fullmatch(provider)):
            raise ProtocolError('"provider" must be a provider name or null')
        timeout = DEFAULT_RUN_TIMEOUT if d.get("timeout") is None else d["timeout"]
        if not _seconds_value(timeout) or not 0 < timeout <= MAX_RUN_TIMEOUT:
            raise ProtocolError(
                f'"timeout" must be a number of seconds in (0, {MAX_RUN_TIMEOUT:g}]'
            )
        return cls(tuple(argv), dict(env), provider, float(timeout))


@dataclass(frozen=True)
class SetClock:
    """PUT /clock: the host's time, for the guest clock after a snapshot is restored."""

    epoch: float

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    @classmethod
    def from_json(cls, data: Any) -> SetClock:
        epoch = _request(data, "the clock request").get("epoch")
        if not _seconds_value(epoch) or not 0 < epoch < MAX_EPOCH:
            raise ProtocolError('"epoch" must be a positive Unix time in seconds')
        return cls(float(epoch))


@dataclass(frozen=True)
class TrustCas:
    """PUT /trust: extra CA certificates (PEM) for the VM's clients (hearth.guest.trust,
    which checks that the text holds certificates only)."""

    pem: str

    def to_json(self) -> dict[str, Any]:
        return {"pem": self.pem}

    @classmethod
    def from_json(cls, data: Any) -> TrustCas:
        pem = _request(data, "the trust request").get("pem")
        if not isinstance(pem, str):
            raise ProtocolError('"pem" must be a string of PEM certificates')
        return cls(pem)


Request = (
    PingRequest
    | LoginRequest
    | OpenUrl
    | InstallCredentials
    | ProbeSpec
    | RunRequest
    | SetClock
    | TrustCas
)
