"""The demo provider: hearth/guest/demo_login.py against Hearth's own OpenID Connect server
(hearth.demo_idp), so the whole login path runs without a real provider account.

demo_login.py prints "Open this URL to sign in: <url>", runs $BROWSER with the same URL,
waits for the redirect to its listener on 127.0.0.1, and writes ~/.hearth-demo/
credentials.json (access_token, refresh_token, id_token, token_type, expires_at in Unix
seconds, email, issuer) before printing "Login successful: <email>".
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import AccountInfo, ProviderSpec, email, epoch_seconds, json_file

CREDENTIALS = ".hearth-demo/credentials.json"


def account_info(files: Mapping[str, bytes]) -> AccountInfo:
    data = json_file(files, CREDENTIALS)
    return email(data.get("email")), epoch_seconds(data.get("expires_at"))


SPEC = ProviderSpec(
    name="demo",
    cli_version="hearth-0.1.0",
    login_argv=("python3", "/usr/lib/hearth/demo_login.py", "--issuer", "{issuer}"),
    clean_env=True,
    url_pattern=r"Open this URL to sign in: (?P<url>https?://\S+)",
    credential_files=(CREDENTIALS,),
    success_markers=(r"Login successful:",),
    account_info=account_info,
)
