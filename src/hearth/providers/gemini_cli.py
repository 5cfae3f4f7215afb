"""Gemini CLI: "Sign in with Google" (auth type oauth-personal) in the interactive CLI.

Checked against @google/gemini-cli 0.61.0 by reading its bundle and running it under a PTY
with no network in a namespace of its own. It has no login subcommand:
- ~/.gemini/settings.json with security.auth.selectedType "oauth-personal" makes it sign in
  at start. With HOME as the working directory that file also counts as workspace settings,
  and a "Do you trust the files in this folder?" dialog would come first: --skip-trust.
- `gemini` is a node process that loads the whole bundle only to start a second node with
  GEMINI_CLI_NO_RELAUNCH=true, which runs the CLI; set in login_env, one process does it all.
  Under emulation (TCG, in the e2e test) the first dialog then came some 40 s after the start;
  with the relaunch nothing was on the screen after the agent's 120 s url_timeout.
- The first attempt at start fails ("Authentication consent could not be obtained", issue
  google-gemini/gemini-cli#20906) and the "How would you like to authenticate for this
  project?" dialog opens ("Get started", the error under it) with "1. Sign in with Google"
  selected: Enter. "Waiting for authentication..." shows, then "Opening authentication page
  in your browser. Do you want to continue?" with "1. Yes": Enter.
- It does not read BROWSER itself: the `open` package spawns `xdg-open <url>` (the agent's
  xdg-open on PATH records it) and prints "Attempting to open authentication page in your
  browser. Otherwise navigate to:" and the URL (wrapped at the terminal's width) and
  "Waiting for authentication..." (under emulation the TUI showed them some 45 s after
  xdg-open had the URL: browser_url_preferred). The URL is
  https://accounts.google.com/o/oauth2/v2/auth?redirect_uri=http%3A%2F%2F127.0.0.1%3A
  <random port>%2Foauth2callback&access_type=offline&scope=<cloud-platform userinfo.email
  userinfo.profile>&state=...&response_type=code&
  client_id=681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com
- NO_BROWSER, CI, DEBIAN_FRONTEND=noninteractive, BROWSER=www-browser or no DISPLAY switch
  it to the paste-a-code flow (redirect https://codeassist.google.com/authcode): clean_env.
- After the redirect it writes ~/.gemini/oauth_creds.json (google-auth-library tokens:
  access_token, refresh_token, scope, token_type, id_token, expiry_date in Unix ms), fetches
  the e-mail into ~/.gemini/google_accounts.json ({"active": e-mail, "old": [...]}; the file
  exists from the start with "active": null), then says "Authentication succeeded" and
  stays open: the agent ends it. Its own wait for the browser gives up after 5 minutes,
  counted from the URL (which url_timeout bounds at 4 minutes here, slow under emulation),
  hence login_timeout: 4 + 5 + 1 minutes.
  The browser is then sent to developers.google.com's success page (seen in the e2e test).

Prompt runs, checked headless (stdin /dev/null, output to pipes) with fake files, offline
and against local stand-ins for oauth2.googleapis.com and cloudcode-pa.googleapis.com (it
checks the cached token online before anything else):
- `--output-format stream-json` prints JSON lines: "init", "message" (role user, then
  assistant), "result" with "status": "success".
- The prompt must be the value of --prompt: -p takes no value starting with "-" ("Not
  enough arguments following: p") and arguments after "--" are dropped ("No input provided
  via stdin."). "--prompt=<prompt>" arrives verbatim: quotes, newlines, "--yolo" and
  "{prompt}" included. In -p mode "/..." is a slash command and "@path" includes a file.
- Without --skip-trust it exits 55: "Gemini CLI is not running in a trusted directory. ...".
- At start it POSTs the token to oauth2.googleapis.com/tokeninfo (refreshing an expired one
  first, which rewrites oauth_creds.json), then sets up Code Assist (loadCodeAssist). Any
  failure, offline, signed out or revoked, ends in exit 41: "Manual authorization is
  required but the current session is non-interactive. ...".
- No status command exists; `--prompt=/quit` runs that start-up check and then /quit, which
  -p refuses, with no model request: exit 42, "Exiting due to command result that is not
  supported in non-interactive mode.". Tools that would ask are denied in -p mode.

Egress, from the bundle: google-auth-library's endpoints (oauth2AuthBaseUrl accounts.google.
com/o/oauth2/v2/auth, oauth2TokenUrl and tokenInfoUrl on oauth2.googleapis.com), the e-mail
from www.googleapis.com/oauth2/v2/userinfo after sign-in, CODE_ASSIST_ENDPOINT
https://cloudcode-pa.googleapis.com (v1internal: loadCodeAssist, onboardUser,
streamGenerateContent, listExperiments, retrieveUserQuota, recordCodeAssistMetrics), and the
callback's redirect of the browser to SIGN_IN_SUCCESS_URL on developers.google.com. What
Google's sign-in page loads (GOOGLE_SIGN_IN) is known from the page, not checkable here.
The switches in SETTINGS are names from the bundle's settings schema: usageStatisticsEnabled
false stops Clearcut (play.googleapis.com/log; recordCodeAssistMetrics on cloudcode-pa is not
gated by it), enableAutoUpdateNotification false the npm registry lookup, enableAutoUpdate
false the self-install, telemetry.enabled false (the default) the OTLP export. There is no
error reporting service in the bundle.

The requests the CLI makes and the answers it reads (login, prompt, refresh, errors),
recorded by running it against stand-ins: docs/contracts/gemini_cli.md.
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
