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
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import AccountInfo, ProviderSpec, email, epoch_seconds, json_file

CREDENTIALS = ".claude/.credentials.json"
ACCOUNT = ".claude.json"


def account_info(files: Mapping[str, bytes]) -> AccountInfo:
    oauth = json_file(files, CREDENTIALS).get("claudeAiOauth")
    account = json_file(files, ACCOUNT).get("oauthAccount")
    return (
        email(account.get("emailAddress")) if isinstance(account, dict) else None,
        epoch_seconds(oauth.get("expiresAt"), millis=True) if isinstance(oauth, dict) else None,
    )


SPEC = ProviderSpec(
    name="claude_code",
    cli_version="2.1.332",
    login_argv=("claude", "auth", "login", "--claudeai"),
    clean_env=True,
    url_pattern=r"https://claude\.(?:ai|com)/(?:cai/)?oauth/authorize\?\S+",
    browser_url_preferred=True,
    credential_files=(CREDENTIALS, ACCOUNT),
    success_markers=(r"Login successful\.",),
    account_info=account_info,
)
