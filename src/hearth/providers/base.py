"""What Hearth knows about one CLI: how to sign it in, and how to run it in a user's CLI VM.

A ProviderSpec is checked against one released version of its CLI (`cli_version`); what
was verified there is in docs/providers/<name>.md. The agent gets a protocol LoginSpec
(plain JSON and argv lists on the wire, no code in them); the hooks run on the host, on the
stored credential files: `account_info` returns only the account e-mail and the expiry,
never a token, and `setup_files` the files a CLI VM needs besides the tokens.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hearth.errors import HearthError
from hearth.guest.protocol import LoginSpec, ProbeSpec

if TYPE_CHECKING:
    from hearth.config import Settings

AccountInfo = tuple[str | None, int | None]  # (e-mail, expiry as Unix seconds)
PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class ProviderError(HearthError):
    """A provider's spec cannot do what was asked (an unknown name, files it cannot read)."""

    http_status = 400


class UnknownProviderError(ProviderError, ValueError):
    """No provider has that name."""


def no_account_info(files: Mapping[str, bytes]) -> AccountInfo:
    return None, None


def no_setup_files(files: Mapping[str, bytes]) -> dict[str, bytes]:
    return {}


def no_login_params(settings: Settings) -> dict[str, str]:
    return {}


def exit_status(exit_code: int | None, output: str) -> tuple[bool, str | None]:
    """A status check passes when it exits 0; otherwise its last line says why."""
    if exit_code == 0:
        return True, None
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return False, (lines[-1][:300] if lines else f"the status check exited with {exit_code}")


@dataclass(frozen=True)
class EgressHosts:
    """The names (or `*.suffix` patterns) a provider's VMs reach, each checked against the
    pinned CLI or the sign-in pages as the provider's module says. A browser VM gets sign_in
    and token, a CLI VM api and token (hearth.core.egress)."""

    sign_in: tuple[str, ...] = ()  # the authorize page and what it loads
    token: tuple[str, ...] = ()  # where the CLI exchanges its code and refreshes its tokens
    api: tuple[str, ...] = ()  # what the CLI calls to run a prompt

    def for_purpose(self, browser: bool) -> tuple[str, ...]:
        return (*(self.sign_in if browser else self.api), *self.token)


# Google's sign-in page and what it loads (scripts and styles on the gstatic hosts, fonts,
# reCAPTCHA on www.google.com when Google challenges a sign-in), known from the page, not
# checkable offline: Gemini CLI's sign-in, and "sign in with Google" for the providers that
# offer it (settings.google_sso). Its client logging (play.google.com) is left out.
GOOGLE_SIGN_IN = (
    "accounts.google.com",
    "ssl.gstatic.com",
    "www.gstatic.com",
    "fonts.gstatic.com",
    "fonts.googleapis.com",
    "www.google.com",
)


@dataclass(frozen=True)
class Call:
    """One request the pinned CLI makes, as recorded by running it (docs/contracts/), so a
    CLI upgrade is checked against it: the tests' stand-ins record each request the CLI
    makes and the tests hold it to its spec's list (tests/e2e/conftest.py)."""

    phase: str  # "login", "prompt" or "refresh"
    method: str
    url: str  # https://host/path, without the query
    sends: tuple[str, ...] = ()  # the body's fields (JSON keys or form fields)
    reads: tuple[str, ...] = ()  # the answer's fields the CLI reads
    needed: bool = True  # the phase fails without a good answer (else the CLI goes on)


@dataclass(frozen=True)
class Probe:
    """A request the CLI itself makes with its access token, answered 2xx only while the
    provider accepts the sign-in: validate's check that reaches the provider, for CLIs whose
    status command reads only their files. Sent by the agent (hearth.guest.probe), which
    takes the token (`token_path`) and the `file_headers` values from `token_file`."""

    url: str
    token_file: str
    token_path: tuple[str, ...]
    headers: Mapping[str, str] = field(default_factory=dict)
    file_headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_agent(self) -> ProbeSpec:
        return ProbeSpec(
            self.url,
            self.token_file,
            tuple(self.token_path),
            {name: tuple(path) for name, path in self.file_headers.items()},
            dict(self.headers),
        )


@dataclass(frozen=True)
class ProviderSpec:
    """How to sign one CLI in, for the agent (see hearth/guest/login.py) and the host.

    `login_argv` and `login_env` values may hold `{name}` placeholders, filled at login time
    from the `params` given to to_agent(): the controller passes `login_params(settings)`
    (an issuer URL from a setting, say).
    """

    name: str
    cli_version: str  # the release this spec was checked against
    login_argv: tuple[str, ...]
    url_pattern: str  # regex for the authorize URL in the output: the match, or its "url" group
    credential_files: tuple[str, ...]  # relative to HOME
    success_markers: tuple[str, ...]  # regexes: any one in the output means signed in
    login_env: Mapping[str, str] = field(default_factory=dict)
    # Run with PATH, HOME, LANG, TERM, DISPLAY and BROWSER only (plus login_env).
    clean_env: bool = False
    # Open the URL handed to BROWSER rather than the printed one, when they differ.
    browser_url_preferred: bool = False
    prompts: tuple[tuple[str, str], ...] = ()  # (regex, keystrokes), each answered once
    pre_login_files: Mapping[str, str] = field(default_factory=dict)  # HOME-relative: content
    # The CLI stays open after signing in: the agent ends it once the marker and the
    # credential files are there.
    stop_on_success: bool = False
    login_timeout: float = 900.0  # seconds before the agent gives up on the user
    # Seconds for the CLI to show its authorize URL: a CLI stopped at a question the spec
    # does not answer fails then, not at login_timeout.
    url_timeout: float = 180.0
    egress: EgressHosts = EgressHosts()
    contract: tuple[Call, ...] = ()  # the requests the CLI makes, see Call
    # Environment for every run of the CLI (login and prompts): its own switches for
    # telemetry, error reports and update checks, so nothing leaves but to the provider.
    quiet_env: Mapping[str, str] = field(default_factory=dict)
    account_info: Callable[[Mapping[str, bytes]], AccountInfo] = field(
        default=no_account_info, repr=False, compare=False
    )
    # The values of the login's placeholders, from the controller's settings.
    login_params: Callable[[Settings], Mapping[str, str]] = field(
        default=no_login_params, repr=False, compare=False
    )

    # -- the user's CLI VM --
    # Runs one prompt non-interactively; "{prompt}" in an argument becomes the prompt (within
    # that one argument, e.g. "--prompt={prompt}"; never through a shell).
    prompt_argv: tuple[str, ...] = ()
    # The CLI's own check of its sign-in, judged by `status_check`.
    status_argv: tuple[str, ...] = ()
    # Where the status command reads only the CLI's files: the provider's own verdict.
    probe: Probe | None = None
    # Regexes whose match in a run's output means the provider refused the credentials
    # (revoked, signed out elsewhere); the match is the reason the app is given.
    refused_markers: tuple[str, ...] = ()
    status_check: Callable[[int | None, str], tuple[bool, str | None]] = field(
        default=exit_status, repr=False, compare=False
    )
    # The credential files the CLI rewrites when it refreshes its tokens, pulled back after
    # every run; empty: all of credential_files.
    token_files: tuple[str, ...] = ()
    # What else the CLI needs to start without asking questions, made from the stored files;
    # a path here replaces the stored file of that path in the VM.
    setup_files: Callable[[Mapping[str, bytes]], dict[str, bytes]] = field(
        default=no_setup_files, repr=False, compare=False
    )

    def account(self, files: Mapping[str, bytes]) -> tuple[str | None, datetime | None]:
        """account_info as the credential store keeps it: the expiry an aware datetime."""
        email, expires = self.account_info(files)
        return email, datetime.fromtimestamp(expires, UTC) if expires else None

    @property
    def rotating_files(self) -> tuple[str, ...]:
        return self.token_files or self.credential_files

    def refused(self, output: str) -> str | None:
        """Why the provider refused the credentials in a run with this output, if it did."""
        for pattern in self.refused_markers:
            if match := re.search(pattern, output):
                # A match inside a JSON string stops before its closing quote's backslash.
                return " ".join(match.group(0).split()).rstrip("\\ ")[:300]
        return None

    def prompt_command(self, prompt: str) -> list[str]:
        if not self.prompt_argv:
            raise ValueError(f"provider {self.name!r} has no prompt command")
        # Once per argument: a "{prompt}" inside the prompt itself stays as typed.
        return [arg.replace("{prompt}", prompt) for arg in self.prompt_argv]

    def vm_files(self, stored: Mapping[str, bytes]) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """The stored files split for a CLI VM: (token files, everything else it needs)."""
        tokens = {path: data for path, data in stored.items() if path in self.rotating_files}
        support = {path: data for path, data in stored.items() if path not in tokens}
        support.update(self.setup_files(stored))
        return tokens, support

    def placeholders(self) -> set[str]:
        """The names to_agent() needs in `params`."""
        values = (*self.login_argv, *self.login_env.values())
        return {name for value in values for name in PLACEHOLDER.findall(value)}

    def to_agent(
        self, params: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None
    ) -> LoginSpec:
        """What the agent's POST /login takes, placeholders filled from `params`, with `env`
        (the VM's, for every CLI) under the spec's own environment; checked as the agent
        checks it (ProtocolError)."""
        params = dict(params or {})
        missing = self.placeholders() - params.keys()
        if missing:
            raise ValueError(
                f"provider {self.name!r} needs login parameters: {', '.join(sorted(missing))}"
            )

        def fill(value: str) -> str:
            return PLACEHOLDER.sub(lambda m: params[m.group(1)], value)

        return LoginSpec.from_json(
            {
                "name": self.name,
                "login_argv": [fill(arg) for arg in self.login_argv],
                "login_env": {
                    **(env or {}),
                    **self.quiet_env,
                    **{key: fill(value) for key, value in self.login_env.items()},
                },
                "clean_env": self.clean_env,
                "url_pattern": self.url_pattern,
                "browser_url_preferred": self.browser_url_preferred,
                "prompts": [[pattern, keys] for pattern, keys in self.prompts],
                "pre_login_files": dict(self.pre_login_files),
                "credential_files": list(self.credential_files),
                "success_markers": list(self.success_markers),
                "stop_on_success": self.stop_on_success,
                "login_timeout": self.login_timeout,
                "url_timeout": self.url_timeout,
            }
        )


# --- helpers for account_info hooks: they never raise on odd files, and never quote them ---


def json_file(files: Mapping[str, bytes], path: str) -> dict[str, Any]:
    """The JSON object in files[path], or {} if it is missing or not a JSON object."""
    try:
        data = json.loads(files[path])
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def jwt_claims(token: Any) -> dict[str, Any]:
    """A JWT's payload, unverified (the token came from the provider through the CLI; only
    the e-mail and expiry are read from it), or {} if it is not a JWT."""
    if not isinstance(token, str) or token.count(".") != 2:
        return {}
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def email(value: Any) -> str | None:
    return value if isinstance(value, str) and "@" in value else None


def epoch_seconds(value: Any, millis: bool = False) -> int | None:
    """A Unix time as whole seconds, from seconds or (`millis`) milliseconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return int(value // 1000 if millis else value)
