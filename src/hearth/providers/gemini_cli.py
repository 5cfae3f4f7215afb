"""Gemini CLI: "Sign in with Google" (auth type oauth-personal) in the interactive CLI.

Checked against @google/gemini-cli 0.61.0 by reading its bundle and running it under a PTY
with no network in a namespace of its own. It has no login subcommand:
- ~/.gemini/settings.json with security.auth.selectedType "oauth-personal" makes it sign in
  at start. With HOME as the working directory that file also counts as workspace settings,
  and a "Do you trust the files in this folder?" dialog would come first: --skip-trust.
- The first attempt at start fails ("Authentication consent could not be obtained", issue
  google-gemini/gemini-cli#20906) and the "How would you like to authenticate for this
  project?" dialog opens with "1. Sign in with Google" selected: Enter. Then "Opening
  authentication page in your browser. Do you want to continue?" with "1. Yes": Enter.
- It does not read BROWSER itself: the `open` package spawns `xdg-open <url>` (the agent's
  xdg-open on PATH records it) and prints "Attempting to open authentication page in your
  browser. Otherwise navigate to:" and the URL (wrapped at the terminal's width) and
  "Waiting for authentication...". The URL is https://accounts.google.com/o/oauth2/v2/auth?
  redirect_uri=http%3A%2F%2F127.0.0.1%3A<random port>%2Foauth2callback&access_type=offline&
  scope=<cloud-platform userinfo.email userinfo.profile>&state=...&response_type=code&
  client_id=681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com
- NO_BROWSER, CI, DEBIAN_FRONTEND=noninteractive, BROWSER=www-browser or no DISPLAY switch
  it to the paste-a-code flow (redirect https://codeassist.google.com/authcode): clean_env.
- After the redirect it writes ~/.gemini/oauth_creds.json (google-auth-library tokens:
  access_token, refresh_token, scope, token_type, id_token, expiry_date in Unix ms), fetches
  the e-mail into ~/.gemini/google_accounts.json ({"active": e-mail, "old": [...]}; the file
  exists from the start with "active": null), then says "Authentication succeeded" and
  stays open: the agent ends it. Its own wait for the browser gives up after 5 minutes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from .base import AccountInfo, ProviderSpec, email, epoch_seconds, json_file

CREDS = ".gemini/oauth_creds.json"
ACCOUNTS = ".gemini/google_accounts.json"
SETTINGS = {
    "security": {"auth": {"selectedType": "oauth-personal"}},
    # The version is pinned in the image; an update must not start mid-login.
    "general": {"enableAutoUpdate": False},
}


def account_info(files: Mapping[str, bytes]) -> AccountInfo:
    return (
        email(json_file(files, ACCOUNTS).get("active")),
        epoch_seconds(json_file(files, CREDS).get("expiry_date"), millis=True),
    )


SPEC = ProviderSpec(
    name="gemini_cli",
    cli_version="0.61.0",
    login_argv=("gemini", "--skip-trust"),
    clean_env=True,
    url_pattern=r"https://accounts\.google\.com/o/oauth2/v2/auth\?\S+",
    browser_url_preferred=True,
    # Enter picks the highlighted first option of each dialog. In the TUI the consent
    # question sits two box lines (some 2000 characters of padding) below its lead-in.
    prompts=(
        (r"How would you like to authenticate", "\r"),
        (r"Do you want to continue\?", "\r"),
    ),
    pre_login_files={".gemini/settings.json": json.dumps(SETTINGS, indent=2) + "\n"},
    credential_files=(CREDS, ACCOUNTS),
    success_markers=(r"Authentication succeeded",),
    stop_on_success=True,
    login_timeout=330.0,
    account_info=account_info,
)
