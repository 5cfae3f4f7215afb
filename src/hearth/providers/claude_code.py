"""Claude Code: `claude auth login`, the Claude subscription (claude.ai) sign-in.

Checked against @anthropic-ai/claude-code 2.1.332 (a native Bun binary, bin/claude.exe), by
reading its bundled code and running it with no network in a namespace of its own:
- `claude auth login [--claudeai | --console | --sso] [--email E]`; --claudeai is the default.
  It needs no answers: it prints "Opening browser to sign in…", then "If the browser didn't
  open, visit:" and a shortened manual URL, https://claude.ai/oauth/authorize?<compact>,
  whose redirect is the paste-a-code page (https://platform.claude.com/oauth/code/callback),
  and waits at "Paste code here if prompted > ".
- It hands BROWSER the full URL, https://claude.com/cai/oauth/authorize?code=true&client_id=
  9d1c250a-e61b-44d9-88ed-5944d1962f5e&response_type=code&redirect_uri=http://localhost:
  <random port>/callback&scope=...&code_challenge=...&code_challenge_method=S256&state=...
  That one returns to the CLI's own listener, so it is the one to open.
- BROWSER is spawned as one executable (a value with arguments fails silently); without
  BROWSER it runs xdg-open, and on Linux with neither DISPLAY nor WAYLAND_DISPLAY it opens
  nothing.
- Success prints "Login successful." and exits 0; failures print "OAuth login failed: ..."
  or "Login interrupted.".
- Tokens go to ~/.claude/.credentials.json as {"claudeAiOauth": {"accessToken",
  "refreshToken", "expiresAt" (Unix ms), "scopes", "subscriptionType", ...}}; the account
  (oauthAccount: emailAddress, accountUuid, organizationUuid) to ~/.claude.json.

Prompt runs, checked the same way with fake credential files, offline and against local
stand-ins for api.anthropic.com and platform.claude.com:
- `-p --output-format stream-json` needs --verbose ("Error: When using --print,
  --output-format=stream-json requires --verbose"); stdout is then JSON lines ("system"
  init, "assistant", a final "result"). After "--" a prompt like "-x {prompt}" arrives
  verbatim (without it: "error: unknown option"). stdin must be /dev/null, or it waits 3 s
  for it and appends it to the prompt.
- -p skips onboarding and the trust dialog (HOME's trust "is never recorded" anyway);
  hasCompletedOnboarding and autoUpdates false only keep first-run screens and updates away.
  A tool call that needs approval is denied, never waited on (--permission-prompts none
  tells the model nobody can approve).
- Signed out the result is "Not logged in · Please run /login"; with the files it sends
  Bearer <accessToken> to /v1/messages, and offline it ends, after ten retries, with "API
  Error: Can't reach the API server — check your internet or DNS (EAI_AGAIN)". An expired
  token is refreshed first, rewriting .credentials.json (new refresh token); .claude.json
  changes on every start (caches, counters), so it is not a token file.
- `claude auth status --json` reads the files only, no network or expiry check: signed out
  {"loggedIn": false, "authMethod": "none", ...} and exit 1; signed in {"loggedIn": true,
  "authMethod": "claude.ai", "email", "subscriptionType", ...} and exit 0.

Egress, from the binary's own OAuth block (BASE_API_URL https://api.anthropic.com, TOKEN_URL
https://platform.claude.com/v1/oauth/token, CLAUDE_AI_AUTHORIZE_URL https://claude.com/cai/
oauth/authorize, CLAUDE_AI_ORIGIN https://claude.ai, ROLES_URL and API_KEY_URL on
api.anthropic.com, CLAUDEAI_SUCCESS_URL on platform.claude.com):
- sign-in: claude.com/cai/... redirects to claude.ai; its assets come from claude.ai and
  assets.claude.ai (the binary's egress catalogue of the claude.ai app names
  ANTHROPIC_ASSETS_HOST "assets.claude.ai"); the page sits behind Cloudflare, whose
  challenge loads from challenges.cloudflare.com (known from the page, not checkable
  offline). The page's own Sentry and Datadog reporting is left out: nothing breaks.
- token: after the code exchange the CLI reads the profile and roles on api.anthropic.com
  (/api/oauth/profile, /api/oauth/claude_cli/roles), and refreshes at platform.claude.com.
- api: /v1/messages and the start-up reads (policy limits, settings) on api.anthropic.com.
The switches in QUIET_ENV (each name found in the binary, each checked there):
- CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: update checks (downloads.claude.ai, the npm
  registry), the changelog (raw.githubusercontent.com), error logging, /bug and /feedback,
  the quota probe, bootstrap, the MCP registry and plugin fetches;
- DISABLE_TELEMETRY: Datadog logs (http-intake.logs.us5.datadoghq.com), first-party event
  logging (api.anthropic.com/api/event_logging), GrowthBook flags, the /api/hello probe;
- DISABLE_ERROR_REPORTING, DISABLE_AUTOUPDATER, DISABLE_BUG_COMMAND,
  CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY: error uploads, the updater, /bug, the survey;
- BUN_ENABLE_CRASH_REPORTING=0: the runtime's crash uploads to bun.report;
- ENABLE_CLAUDEAI_MCP_SERVERS=false: the claude.ai connectors (mcp-proxy.anthropic.com).
The truthiness tests differ (some take any non-empty value, some 1/true/yes/on): "1" suits
all but the two that mean off.

The requests the CLI makes and the answers it reads (login, prompt, refresh, errors),
recorded by running it against stand-ins: docs/contracts/claude_code.md.
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
