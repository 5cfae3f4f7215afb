"""Gemini CLI: "Sign in with Google" (auth type oauth-personal) in the interactive CLI.

Every value of SPEC was checked against the pinned release (`cli_version`) by reading the
CLI and running it offline: what was found (the sign-in dialogs and their answers, the URL,
the token files, prompt runs, the start-up check and the egress hosts) is in
docs/providers/gemini_cli.md, and the HTTP requests and answers in
docs/contracts/gemini_cli.md. Read them before changing a value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from . import versions
from .base import (
    GOOGLE_SIGN_IN,
    AccountInfo,
    Call,
    EgressHosts,
    ProviderSpec,
    email,
    epoch_seconds,
    json_file,
)

CREDS = ".gemini/oauth_creds.json"
ACCOUNTS = ".gemini/google_accounts.json"
SETTINGS_FILE = ".gemini/settings.json"
SETTINGS = {
    "security": {"auth": {"selectedType": "oauth-personal"}},
    # The version is pinned in the image: no self-install (enableAutoUpdate) and no version
    # lookup on registry.npmjs.org either (enableAutoUpdateNotification gates the lookup).
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    # No Clearcut usage statistics (play.googleapis.com/log) and no OpenTelemetry export.
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
}


def settings_json() -> str:
    return json.dumps(SETTINGS, indent=2) + "\n"


def account_info(files: Mapping[str, bytes]) -> AccountInfo:
    return (
        email(json_file(files, ACCOUNTS).get("active")),
        epoch_seconds(json_file(files, CREDS).get("expiry_date"), millis=True),
    )


QUIT_MARKER = "Exiting due to command result that is not supported in non-interactive mode"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def setup_files(files: Mapping[str, bytes]) -> dict[str, bytes]:
    return {SETTINGS_FILE: settings_json().encode()}


# What it prints when Google refuses the stored sign-in (a revoked or expired refresh token,
# an access token tokeninfo rejects), exit 41; also when Google cannot be reached at all.
REFUSED = r"Manual authorization is required[^\n\"]*"


def status_check(exit_code: int | None, output: str) -> tuple[bool, str | None]:
    """`gemini --prompt=/quit`: past the sign-in check when /quit is what stops it."""
    if exit_code == 42 and QUIT_MARKER in output:
        return True, None
    if refused := re.search(REFUSED, ANSI.sub("", output)):  # the reason, not its stack trace
        return False, refused.group(0).strip()[:300]
    lines = [line.strip() for line in ANSI.sub("", output).splitlines() if line.strip()]
    return False, (lines[-1][:300] if lines else f"the status check exited with {exit_code}")


OAUTH, CODE_ASSIST = "https://oauth2.googleapis.com", "https://cloudcode-pa.googleapis.com"
TOKEN_READS = ("access_token", "refresh_token", "expires_in", "scope", "token_type")
USERINFO = "https://www.googleapis.com/oauth2/v2/userinfo"
# docs/contracts/gemini_cli.md: 1.2, 1.6 (login), the observed sequence and 3 (prompt), 1.3
# (refresh). The browser flow has no PKCE; the client secret is the CLI's own.
CONTRACT = (
    Call(
        "login",
        "POST",
        f"{OAUTH}/token",
        reads=TOKEN_READS,
        sends=("client_id", "client_secret", "code", "grant_type", "redirect_uri"),
    ),
    Call("login", "GET", USERINFO, reads=("email",), needed=False),
    Call("prompt", "POST", f"{OAUTH}/tokeninfo", reads=("scope", "expires_in")),
    Call("prompt", "GET", USERINFO, reads=("email",), needed=False),  # no cached e-mail
    Call(
        "prompt",
        "POST",
        f"{CODE_ASSIST}/v1internal:loadCodeAssist",
        sends=("metadata",),
        reads=("currentTier.id", "cloudaicompanionProject", "allowedTiers"),
    ),
    Call("prompt", "POST", f"{CODE_ASSIST}/v1internal:onboardUser", needed=False),
    Call(
        "prompt",
        "POST",
        f"{CODE_ASSIST}/v1internal:retrieveUserQuota",
        sends=("project",),
        reads=("buckets",),
        needed=False,
    ),
    Call(
        "prompt",
        "POST",
        f"{CODE_ASSIST}/v1internal:listExperiments",
        needed=False,
        sends=("metadata", "project"),
        reads=("flags", "experimentIds"),
    ),
    Call(
        "prompt",
        "POST",
        f"{CODE_ASSIST}/v1internal:generateContent",
        needed=False,
        sends=("model", "project", "request"),
        reads=("response.candidates",),
    ),
    Call(
        "prompt",
        "POST",
        f"{CODE_ASSIST}/v1internal:streamGenerateContent",
        sends=("model", "project", "request"),
        reads=("response.candidates", "response.usageMetadata"),
    ),
    Call(
        "refresh",
        "POST",
        f"{OAUTH}/token",
        reads=TOKEN_READS,
        sends=("client_id", "client_secret", "grant_type", "refresh_token"),
    ),
)

SPEC = ProviderSpec(
    name="gemini_cli",
    cli_version=versions.GEMINI_CLI.version,
    login_argv=("gemini", "--skip-trust"),
    # One node process, not a parent that loads the whole bundle only to start a child that
    # loads it again: under emulation that halves the time to the first dialog.
    login_env={"GEMINI_CLI_NO_RELAUNCH": "true"},
    clean_env=True,
    url_pattern=r"https://accounts\.google\.com/o/oauth2/v2/auth\?\S+",
    browser_url_preferred=True,
    # Enter picks the highlighted first option of each dialog. In the TUI the consent
    # question sits two box lines (some 2000 characters of padding) below its lead-in.
    prompts=(
        (r"How would you like to authenticate", "\r"),
        (r"Do you want to continue\?", "\r"),
    ),
    pre_login_files={SETTINGS_FILE: settings_json()},
    credential_files=(CREDS, ACCOUNTS),
    success_markers=(r"Authentication succeeded",),
    stop_on_success=True,
    login_timeout=600.0,
    url_timeout=240.0,
    refused_markers=(REFUSED,),
    account_info=account_info,
    prompt_argv=("gemini", "--skip-trust", "--output-format", "stream-json", "--prompt={prompt}"),
    status_argv=("gemini", "--skip-trust", "--prompt=/quit"),
    status_check=status_check,
    token_files=(CREDS,),
    setup_files=setup_files,
    egress=EgressHosts(
        # Google's sign-in, then the CLI's redirect to its success page.
        sign_in=(*GOOGLE_SIGN_IN, "developers.google.com"),
        token=("oauth2.googleapis.com", "www.googleapis.com"),
        api=("cloudcode-pa.googleapis.com",),
    ),
    contract=CONTRACT,
)
