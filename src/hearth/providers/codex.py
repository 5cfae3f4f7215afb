"""Codex: `codex login`, the ChatGPT sign-in.

Checked against @openai/codex 0.171.0 (codex.js starting the musl Rust binary from
@openai/codex-linux-x64), by reading its strings and running it with no network in a
namespace of its own:
- `codex login` needs no answers. It prints "Starting local login server on
  http://localhost:1455." and "If your browser did not open, navigate to this URL to
  authenticate:" followed by https://auth.openai.com/oauth/authorize?response_type=code&
  client_id=app_EMoamEEZ73f0CkXaXp7hrann&redirect_uri=http%3A%2F%2F127.0.0.1%3A1455%2Fauth
  %2Fcallback&code_challenge=...&code_challenge_method=S256&state=...&scope=openid+profile+
  email+offline_access+api.connectors.read+api.connectors.invoke&id_token_add_organizations=
  true&codex_cli_simplified_flow=true&originator=codex_cli_rs, then suggests
  `codex login --device-auth` for headless machines.
- BROWSER (the webbrowser crate: the value split on spaces) gets the same URL.
- `-c cli_auth_credentials_store="file"` keeps the tokens in ~/.codex/auth.json (the
  "auto" store would prefer a keyring where one exists). The file holds "tokens" with
  "id_token" (a JWT with the "email" claim), "access_token" (a JWT with "exp"),
  "refresh_token", "account_id", and "last_refresh".
- Success prints "Successfully logged in" and exits 0.

Prompt runs, checked the same way with a fake auth.json, offline and against a local
stand-in for chatgpt.com and api.openai.com:
- `exec --json` prints JSON lines on stdout (thread.started, turn.started, items,
  turn.completed or turn.failed), logs on stderr. Outside a git repository it needs
  --skip-git-repo-check ("Not inside a trusted directory and --skip-git-repo-check was not
  specified."). It asks nothing: exec runs with approval policy "never" and the read-only
  sandbox (its session log says so). After "--" a prompt like "-x {prompt}" arrives
  verbatim; only "-" alone cannot be a prompt (it means stdin: "No prompt provided via
  stdin.").
- With the ChatGPT tokens it calls https://chatgpt.com/backend-api/... with Bearer
  <access_token>; offline it ends with "turn.failed": "workspace routing discovery failed".
- auth.json without "auth_mode" but with "OPENAI_API_KEY" means the API key (api.openai.com,
  billed apart from the subscription); `codex login` writes "auth_mode": "chatgpt".
  forced_login_method = "chatgpt" turns the API key case into a failure: "ChatGPT login is
  required, but an API key is currently being used. Logging out." (auth.json is deleted in
  the VM; the stored copy stays) and "Not logged in" from the status check.
- `codex login status` reads auth.json only, no network or expiry check, on stderr: "Logged
  in using ChatGPT" (exit 0), "Not logged in" (exit 1), "Error checking login status: ..."
  (exit 1). A refresh rewrites auth.json. config.toml passes --strict-config.

Egress, from the binary's strings: the code exchange, refresh and API-key token exchange at
https://auth.openai.com/oauth/token; prompts at https://chatgpt.com/backend-api/codex
(responses over a WebSocket first, then HTTPS; models, usage, workspace routing). The
sign-in page on auth.openai.com loads its assets from auth-cdn.oaistatic.com and may show a
Cloudflare challenge (challenges.cloudflare.com): known from the page, not checkable here.

The requests the CLI makes and the answers it reads (login, prompt, refresh, errors),
recorded by running it against stand-ins: docs/contracts/codex.md.
"""

from __future__ import annotations

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
    jwt_claims,
)

AUTH = ".codex/auth.json"
CONFIG = ".codex/config.toml"
FILE_STORE = 'cli_auth_credentials_store="file"'
# The file store, the ChatGPT sign-in only, no update checks (registry.npmjs.org,
# api.github.com, formulae.brew.sh: the version is pinned), no analytics events
# (chatgpt.com/backend-api/codex/analytics-events), no feedback uploads (Sentry) and no
# OpenTelemetry export (the statsig exporter to ab.chatgpt.com). Each key parses under
# --strict-config at the pinned version, which refuses unknown ones.
CONFIG_TOML = (
    'cli_auth_credentials_store = "file"\n'
    'forced_login_method = "chatgpt"\n'
    "check_for_update_on_startup = false\n"
    "\n[analytics]\nenabled = false\n"
    "\n[feedback]\nenabled = false\n"
    '\n[otel]\nexporter = "none"\ntrace_exporter = "none"\nmetrics_exporter = "none"\n'
)


def account_info(files: Mapping[str, bytes]) -> AccountInfo:
    tokens = json_file(files, AUTH).get("tokens")
    if not isinstance(tokens, dict):
        return None, None
    return (
        email(jwt_claims(tokens.get("id_token")).get("email")),
        epoch_seconds(jwt_claims(tokens.get("access_token")).get("exp")),
    )


def setup_files(files: Mapping[str, bytes]) -> dict[str, bytes]:
    return {CONFIG: CONFIG_TOML.encode()}


def status_check(exit_code: int | None, output: str) -> tuple[bool, str | None]:
    """`codex login status`: signed in with ChatGPT, not an API key."""
    if exit_code == 0 and "Logged in using ChatGPT" not in output:
        lines = [
            line.strip()
            for line in output.splitlines()
            if line.strip() and not line.startswith("WARNING")
        ]
        return False, f"signed in, but not with ChatGPT: {lines[0] if lines else 'no output'}"
    return exit_status(exit_code, output)


AUTH_URL, BACKEND = "https://auth.openai.com", "https://chatgpt.com/backend-api"
TOKENS = ("id_token", "access_token", "refresh_token")
# docs/contracts/codex.md: 1.2-1.4 (login), 2 (exec, with CONFIG_TOML), 3 (refresh). The
# answer's body is zstd-compressed: its fields are not checked.
CONTRACT = (
    Call(
        "login",
        "POST",
        f"{AUTH_URL}/oauth/token",
        reads=TOKENS,
        sends=("client_id", "code", "code_verifier", "grant_type", "redirect_uri"),
    ),
    Call(
        "login",
        "POST",
        f"{AUTH_URL}/oauth/token",
        reads=("access_token",),
        needed=False,
        sends=("client_id", "grant_type", "requested_token", "subject_token", "subject_token_type"),
    ),
    # Only when an auth.json is there already: the old refresh token goes.
    Call(
        "login",
        "POST",
        f"{AUTH_URL}/oauth/revoke",
        needed=False,
        sends=("client_id", "token", "token_type_hint"),
    ),
    Call(
        "prompt",
        "GET",
        f"{BACKEND}/wham/accounts/check",
        reads=(
            "accounts.id",
            "accounts.workspace_backend_origin",
            "accounts.account_routing_override",
        ),
    ),
    *(
        Call("prompt", "GET", f"{BACKEND}{path}", needed=False)
        for path in (
            "/codex/models",
            "/wham/settings/user",
            "/ps/plugins/installed",
            "/ps/plugins/tooling-state/turtle",
            "/ps/plugins/suggested/codex",
        )
    ),
    Call("prompt", "POST", f"{BACKEND}/ps/mcp", needed=False),
    Call("prompt", "GET", f"{BACKEND}/codex/responses", needed=False),  # the WebSocket try
    Call(
        "prompt",
        "POST",
        f"{BACKEND}/codex/responses",
        reads=("response.output_text.delta", "response.output_item.done", "response.completed"),
    ),
    Call(
        "refresh",
        "POST",
        f"{AUTH_URL}/oauth/token",
        reads=TOKENS,
        sends=("client_id", "grant_type", "refresh_reason", "refresh_token"),
    ),
)

SPEC = ProviderSpec(
    name="codex",
    cli_version=versions.CODEX.version,
    login_argv=("codex", "login", "-c", FILE_STORE),
    clean_env=True,
    url_pattern=r"https://auth\.openai\.com/oauth/authorize\?\S+",
    credential_files=(AUTH,),
    success_markers=(r"Successfully logged in",),
    account_info=account_info,
    prompt_argv=(
        "codex",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "-c",
        FILE_STORE,
        "--",
        "{prompt}",
    ),
    status_argv=("codex", "login", "status", "-c", FILE_STORE),
    status_check=status_check,
    # `codex login status` reads auth.json only; the workspace check is the first request
    # of every run (docs/contracts/codex.md, 2.1), 401 for a revoked token.
    probe=Probe(
        url="https://chatgpt.com/backend-api/wham/accounts/check",
        token_file=AUTH,
        token_path=("tokens", "access_token"),
        file_headers={"chatgpt-account-id": ("tokens", "account_id")},
    ),
    # A refused refresh (3.4), then the backend's 401 once the retries are spent (2.3).
    refused_markers=(
        r"Your access token could not be refreshed[^\n\"]*",
        r"unexpected status 401 Unauthorized[^\n\"]*",
    ),
    token_files=(AUTH,),
    setup_files=setup_files,
    pre_login_files={CONFIG: CONFIG_TOML},
    egress=EgressHosts(
        sign_in=("auth.openai.com", "auth-cdn.oaistatic.com", "challenges.cloudflare.com"),
        token=("auth.openai.com",),
        api=("chatgpt.com",),
    ),
    contract=CONTRACT,
)
