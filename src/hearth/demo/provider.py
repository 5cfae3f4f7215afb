"""The demo provider: hearth/demo/guest/demo_login.py against Hearth's own OpenID Connect
server (hearth.demo.idp), so the whole login path runs without a real provider account.

demo_login.py prints "Open this URL to sign in: <url>", runs $BROWSER with the same URL,
waits for the redirect to its listener on 127.0.0.1, and writes ~/.hearth-demo/
credentials.json (access_token, refresh_token, id_token, token_type, expires_at in Unix
seconds, email, issuer) before printing "Login successful: <email>".

Its prompt command, hearth/demo/guest/demo_prompt.py, behaves like the real CLIs where it
matters to Hearth: it refreshes the token near expiry (the IdP rotates refresh tokens, so the
file changes and the old copy dies), and streams JSON lines over time, one of them carrying
the account's e-mail from the IdP's userinfo, which only a valid credential yields.

The spec is the product's one import from hearth.demo (hearth.providers registers it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from hearth.providers.base import AccountInfo, ProviderSpec, email, epoch_seconds, json_file

if TYPE_CHECKING:
    from hearth.config import Settings

CREDENTIALS = ".hearth-demo/credentials.json"


def account_info(files: Mapping[str, bytes]) -> AccountInfo:
    data = json_file(files, CREDENTIALS)
    return email(data.get("email")), epoch_seconds(data.get("expires_at"))


def login_params(settings: Settings) -> dict[str, str]:
    """The login's {issuer}: where VMs reach the demo identity provider."""
    return {"issuer": settings.demo_issuer}


SPEC = ProviderSpec(
    name="demo",
    cli_version="hearth-0.1.0",
    login_argv=("python3", "/usr/lib/hearth/demo_login.py", "--issuer", "{issuer}"),
    clean_env=True,
    url_pattern=r"Open this URL to sign in: (?P<url>https?://\S+)",
    credential_files=(CREDENTIALS,),
    success_markers=(r"Login successful:",),
    account_info=account_info,
    login_params=login_params,
    prompt_argv=("python3", "/usr/lib/hearth/demo_prompt.py", "--", "{prompt}"),
    status_argv=("python3", "/usr/lib/hearth/demo_prompt.py", "--status"),
)
