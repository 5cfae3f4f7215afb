"""What Hearth knows about one CLI's sign-in: data for the in-guest agent, plus one host hook.

A ProviderSpec is checked against one released version of its CLI (`cli_version`); each
module says in a comment what was verified there. The agent gets `to_agent()`, plain JSON
with no code in it; `account_info` runs on the host, on the fetched credential files, and
returns only the account e-mail and the expiry, never a token.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

AccountInfo = tuple[str | None, int | None]  # (e-mail, expiry as Unix seconds)
PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class UnknownProviderError(ValueError):
    """No provider has that name."""


def no_account_info(files: Mapping[str, bytes]) -> AccountInfo:
    return None, None


@dataclass(frozen=True)
class ProviderSpec:
    """How to sign one CLI in, for the agent (see hearth/guest/login.py) and the host.

    `login_argv` and `login_env` values may hold `{name}` placeholders, filled at login time
    from the `params` given to to_agent() (the demo's issuer URL, say).
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
    account_info: Callable[[Mapping[str, bytes]], AccountInfo] = field(
        default=no_account_info, repr=False, compare=False
    )

    def placeholders(self) -> set[str]:
        """The names to_agent() needs in `params`."""
        values = (*self.login_argv, *self.login_env.values())
        return {name for value in values for name in PLACEHOLDER.findall(value)}

    def to_agent(self, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The JSON the agent's POST /login takes, placeholders filled from `params`."""
        params = dict(params or {})
        missing = self.placeholders() - params.keys()
        if missing:
            raise ValueError(
                f"provider {self.name!r} needs login parameters: {', '.join(sorted(missing))}"
            )

        def fill(value: str) -> str:
            return PLACEHOLDER.sub(lambda m: params[m.group(1)], value)

        return {
            "name": self.name,
            "cli_version": self.cli_version,
            "login_argv": [fill(arg) for arg in self.login_argv],
            "login_env": {key: fill(value) for key, value in self.login_env.items()},
            "clean_env": self.clean_env,
            "url_pattern": self.url_pattern,
            "browser_url_preferred": self.browser_url_preferred,
            "prompts": [[pattern, keys] for pattern, keys in self.prompts],
            "pre_login_files": dict(self.pre_login_files),
            "credential_files": list(self.credential_files),
            "success_markers": list(self.success_markers),
            "stop_on_success": self.stop_on_success,
            "login_timeout": self.login_timeout,
        }


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
