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
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import AccountInfo, ProviderSpec, email, epoch_seconds, json_file, jwt_claims

AUTH = ".codex/auth.json"


def account_info(files: Mapping[str, bytes]) -> AccountInfo:
    tokens = json_file(files, AUTH).get("tokens")
    if not isinstance(tokens, dict):
        return None, None
    return (
        email(jwt_claims(tokens.get("id_token")).get("email")),
        epoch_seconds(jwt_claims(tokens.get("access_token")).get("exp")),
    )


SPEC = ProviderSpec(
    name="codex",
    cli_version="0.171.0",
    login_argv=("codex", "login", "-c", 'cli_auth_credentials_store="file"'),
    clean_env=True,
    url_pattern=r"https://auth\.openai\.com/oauth/authorize\?\S+",
    credential_files=(AUTH,),
    success_markers=(r"Successfully logged in",),
    account_info=account_info,
)
