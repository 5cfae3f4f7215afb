"""Codex: `codex login`, the ChatGPT sign-in.

Every value of SPEC was checked against the pinned release (`cli_version`) by reading the
CLI and running it offline: what was found (codex login's output and URLs, the token file,
prompt runs, the status command and the egress hosts) is in docs/providers/codex.md, and the
HTTP requests and answers in docs/contracts/codex.md. Read them before changing a value.
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
