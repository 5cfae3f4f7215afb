"""Claude Code: `claude auth login`, the Claude subscription (claude.ai) sign-in.

Every value of SPEC was checked against the pinned release (`cli_version`) by reading the
CLI and running it offline: what was found (claude auth login's output and URLs, prompt
runs, the status command, the egress hosts and the QUIET_ENV switches) is in
docs/providers/claude_code.md, and the HTTP requests and answers in
docs/contracts/claude_code.md. Read them before changing a value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from . import versions
from .base import (
    AccountInfo,
    Call,
    EgressHosts,
    Probe,
    ProviderSpec,
    email,
    epoch_seconds,
    exit_status,
    json_file,
)

CREDENTIALS = ".claude/.credentials.json"
ACCOUNT = ".claude.json"


QUIET_ENV = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_BUG_COMMAND": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    "BUN_ENABLE_CRASH_REPORTING": "0",
    "ENABLE_CLAUDEAI_MCP_SERVERS": "false",
}


def account_info(files: Mapping[str, bytes]) -> AccountInfo:
    oauth = json_file(files, CREDENTIALS).get("claudeAiOauth")
    account = json_file(files, ACCOUNT).get("oauthAccount")
    return (
        email(account.get("emailAddress")) if isinstance(account, dict) else None,
        epoch_seconds(oauth.get("expiresAt"), millis=True) if isinstance(oauth, dict) else None,
    )


def setup_files(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """~/.claude.json as stored (the account), marked as past onboarding."""
    config = {**json_file(files, ACCOUNT), "hasCompletedOnboarding": True, "autoUpdates": False}
    return {ACCOUNT: (json.dumps(config, indent=2) + "\n").encode()}


def status_check(exit_code: int | None, output: str) -> tuple[bool, str | None]:
    """`claude auth status --json`: signed in to a Claude subscription (claude.ai)."""
    start = output.find("{")
    try:
        status, _ = json.JSONDecoder().raw_decode(output, start) if start >= 0 else (None, 0)
    except json.JSONDecodeError:
        status = None
    if not isinstance(status, dict):
        return exit_status(exit_code, output)
    if status.get("loggedIn") is not True:
        return False, "not signed in (claude auth status: loggedIn false)"
    if status.get("authMethod") != "claude.ai":
        return False, f"signed in with {status.get('authMethod')!r}, not a Claude subscription"
    if exit_code != 0:
        return False, f"the status check exited with {exit_code}"
    return True, None


API, TOKEN = "https://api.anthropic.com", "https://platform.claude.com/v1/oauth/token"
TOKEN_READS = (
    "access_token",
    "refresh_token",
    "expires_in",
    "scope",
    "account.uuid",
    "account.email_address",
    "organization.uuid",
)
PROFILE = Call(
    "login",
    "GET",
    f"{API}/api/oauth/profile",
    needed=False,
    reads=(
        "account.uuid",
        "account.email",
        "organization.uuid",
        "organization.organization_type",
        "organization.rate_limit_tier",
    ),
)
# docs/contracts/claude_code.md: 1.1-1.3 (login), 2 (prompt, with QUIET_ENV), 3 (refresh).
CONTRACT = (
    Call(
        "login",
        "POST",
        TOKEN,
        sends=("client_id", "code", "code_verifier", "grant_type", "redirect_uri", "state"),
        reads=TOKEN_READS,
    ),
    PROFILE,
    Call(
        "login",
        "GET",
        f"{API}/api/oauth/claude_cli/roles",
        needed=False,
        reads=("organization_role", "workspace_role", "organization_name"),
    ),
    # At start, unless the cached profile is complete and under a day old.
    Call("prompt", "GET", f"{API}/api/oauth/profile", needed=False, reads=PROFILE.reads),
    Call(
        "prompt",
        "POST",
        f"{API}/v1/messages",
        sends=("max_tokens", "messages", "metadata", "model", "stream", "system"),
        reads=("message_start", "content_block_delta", "message_delta", "message_stop"),
    ),
    Call(
        "refresh",
        "POST",
        TOKEN,
        sends=("client_id", "grant_type", "refresh_token", "scope"),
        reads=TOKEN_READS,
    ),
)

SPEC = ProviderSpec(
    name="claude_code",
    cli_version=versions.CLAUDE_CODE.version,
    login_argv=("claude", "auth", "login", "--claudeai"),
    clean_env=True,
    url_pattern=r"https://claude\.(?:ai|com)/(?:cai/)?oauth/authorize\?\S+",
    browser_url_preferred=True,
    credential_files=(CREDENTIALS, ACCOUNT),
    success_markers=(r"Login successful\.",),
    account_info=account_info,
    prompt_argv=(
        "claude",
        "-p",
        "--verbose",
        "--output-format",
        "stream-json",
        "--permission-prompts",
        "none",
        "--",
        "{prompt}",
    ),
    status_argv=("claude", "auth", "status", "--json"),
    status_check=status_check,
    # `claude auth status` reads the files only; the profile is what the CLI reads with its
    # token after signing in and at start (docs/contracts/claude_code.md, 1.2).
    probe=Probe(
        url="https://api.anthropic.com/api/oauth/profile",
        token_file=CREDENTIALS,
        token_path=("claudeAiOauth", "accessToken"),
        headers={"anthropic-beta": "oauth-2025-04-20"},
    ),
    # A refused refresh or bearer token (3, 4), or no sign-in left in the files.
    refused_markers=(r"Failed to authenticate[^\n\"]*", r"Not logged in[^\n\"]*"),
    token_files=(CREDENTIALS,),
    setup_files=setup_files,
    egress=EgressHosts(
        sign_in=("claude.com", "claude.ai", "assets.claude.ai", "challenges.cloudflare.com"),
        token=("platform.claude.com", "api.anthropic.com"),
        api=("api.anthropic.com",),
    ),
    quiet_env=QUIET_ENV,
    contract=CONTRACT,
)
