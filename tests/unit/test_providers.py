"""Provider specs (hearth.providers): the registry, the JSON the agent gets, and each spec's
regexes against output captured from the real CLI.

The fixtures are terminal output recorded from the pinned releases (Claude Code 2.1.332,
Codex 0.171.0, Gemini CLI 0.61.0) run under a 50x1000 PTY in a network namespace without
an uplink; the successful runs redeemed the callback against stand-in token endpoints.
They go through the agent's own Transcript, as the agent reads them.
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from hearth import providers
from hearth.guest.login import LoginSpec, Transcript
from hearth.providers import claude_code, codex, demo, gemini_cli
from hearth.providers.base import ProviderSpec, UnknownProviderError

ESC = b"\x1b"
GREY_BAR = ESC + b"[38;5;244m\xe2\x94\x82" + ESC + b"[39m"  # Gemini CLI's box side, in colour

# -- captured output ----------------------------------------------------------------------

CLAUDE_MANUAL = "https://claude.ai/oauth/authorize?z-B4IdZ0cgqv8AnyLdrK2j4RryxcOyDhs9pgMUTJfLfik"
CLAUDE_OUTPUT = (
    b"Opening browser to sign in\xe2\x80\xa6\r\nIf the browser didn't open, visit:\r\n"
    b"\x1b]8;;" + CLAUDE_MANUAL.encode() + b"\x07\x1b[94m" + CLAUDE_MANUAL.encode()
    + b"\x1b[39m\x1b]8;;\x07\r\nPaste code here if prompted > Login successful.\r\n\x1b[?25h"
)
# What Claude Code handed BROWSER in the same kind of run.
CLAUDE_BROWSER = (
    "https://claude.com/cai/oauth/authorize?code=true&client_id=9d1c250a-e61b-44d9-88ed-"
    "5944d1962f5e&response_type=code&redirect_uri=http%3A%2F%2Flocalhost%3A42263%2Fcallback"
    "&scope=org%3Acreate_api_key+user%3Aprofile+user%3Ainference+user%3Asessions%3Aclaude_code"
    "+user%3Amcp_servers+user%3Afile_upload+user%3Aplugins+user%3Aprivacy_consents%3Awrite"
    "+org%3Adesktop_config&code_challenge=xQrHemp8__N9yDs5etZtz2FYMU6cwi1RdofaDZyuChg"
    "&code_challenge_method=S256&state=reE6D_5c6-1rZiIklnvnk2jHIn18O_IN30MqClCGdzQ"
)

CODEX_URL = (
    "https://auth.openai.com/oauth/authorize?response_type=code&client_id=app_EMoamEEZ73f0CkX"
    "aXp7hrann&redirect_uri=http%3A%2F%2F127.0.0.1%3A1455%2Fauth%2Fcallback&code_challenge="
    "vVt5pclwQxUsCI479KTwDFQCY7blRxBwPbfyDCWCk8g&code_challenge_method=S256&state=FRE52ODaqYAQ"
    "m1KlDUDEuZp9RPXCz81p7nU7hKh89mI&scope=openid+profile+email+offline_access+api.connectors."
    "read+api.connectors.invoke&id_token_add_organizations=true&codex_cli_simplified_flow=true"
    "&originator=codex_cli_rs"
)
CODEX_OUTPUT = (
    b"Starting local login server on http://localhost:1455.\r\n"
    b"If your browser did not open, navigate to this URL to authenticate:\r\n\r\n"
    + CODEX_URL.encode()
    + b"\r\n\r\nOn a remote or headless machine? Use `codex login --device-auth` instead.\r\n"
    b"Successfully logged in\r\n"
)

GEMINI_URL = (
    "https://accounts.google.com/o/oauth2/v2/auth?redirect_uri=http%3A%2F%2F127.0.0.1%3A46475"
    "%2Foauth2callback&access_type=offline&scope=https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fcl"
    "oud-platform%20https%3A%2F%2Fwww.googleapis.com%2Fauth%2Fuserinfo.email%20https%3A%2F%2F"
    "www.googleapis.com%2Fauth%2Fuserinfo.profile&state=0def929227872efc307c462656f701082fbd17"
    "e9ddd8fc627ff00c9bf465fd3c&response_type=code&client_id=681255809395-oo8ft2oprdrnp9e3aqf6"
    "av3hmdib135j.apps.googleusercontent.com"
)
GEMINI_AUTH_DIALOG = (
    GREY_BAR + b"   " + ESC + b"[38;5;231mHow would you like to authenticate for this project?"
    + ESC + b"[39m" + b" " * 946 + GREY_BAR + b"\r\n"
    + GREY_BAR + b" " * 998 + GREY_BAR + b"\r\n"
    + GREY_BAR + b"   " + ESC + b"[38;5;120m\xe2\x97\x8f 1. Sign in with Google" + ESC + b"[39m"
    + b" " * 969 + GREY_BAR + b"\r\n"
)
GEMINI_CONSENT = (
    GREY_BAR + b"  " + ESC + b"[38;5;231mOpening authentication page in your browser. " + ESC
    + b"[39m" + b" " * 951 + GREY_BAR + b"\r\n" + GREY_BAR + b" " * 998 + GREY_BAR + b"\r\n"
    + GREY_BAR + b"  " + ESC + b"[38;5;231mDo you want to continue?" + ESC + b"[39m"
    + b" " * 171 + b"\r\n"
)
GEMINI_WAITING = (
    ESC + b"[38;5;229m\xe2\x84\xb9 Attempting to open authentication page in your browser."
    + ESC + b"[39m\r\n  " + ESC + b"[38;5;229mOtherwise navigate to:" + ESC + b"[39m\r\n  "
    + ESC + b"[38;5;147m" + GEMINI_URL.encode() + ESC + b"[39m\r\n\r\n" + ESC
    + b"[38;5;229m\xe2\x84\xb9 Waiting for authentication..." + ESC + b"[39m\r\n" + ESC
    + b"[?25l\r\n"
)
GEMINI_SUCCESS = (
    b"\x1b[2K\x1b[1A\x1b[2K\x1b[1A\x1b[2K\x1b[G\r\n"
    b"\x1b[38;5;229m\xe2\x84\xb9 Authentication succeeded\x1b[39m\r\n\x1b[?25l\r\n"
)


def plain(raw: bytes) -> str:
    """The output as the agent matches it."""
    transcript = Transcript()
    return transcript.feed(raw, final=True)


def printed_url(spec: ProviderSpec, raw: bytes) -> str | None:
    match = re.search(spec.url_pattern, plain(raw))
    return (match.groupdict().get("url") or match.group(0)) if match else None


def succeeded(spec: ProviderSpec, raw: bytes) -> bool:
    return any(re.search(marker, plain(raw)) for marker in spec.success_markers)


def answered(spec: ProviderSpec, raw: bytes) -> list[str]:
    return [keys for pattern, keys in spec.prompts if re.search(pattern, plain(raw))]


# -- the registry -------------------------------------------------------------------------


def test_the_registry_names_every_provider() -> None:
    assert providers.names() == ["claude_code", "codex", "demo", "gemini_cli"]
    for name in providers.names():
        assert providers.get(name).name == name


def test_an_unknown_provider_is_a_clear_error() -> None:
    with pytest.raises(UnknownProviderError, match=r"unknown provider 'cursor'; known "
                       r"providers: claude_code, codex, demo, gemini_cli"):
        providers.get("cursor")
    assert issubclass(UnknownProviderError, ValueError)


@pytest.mark.parametrize("name", providers.names())
def test_to_agent_is_plain_json_the_agent_accepts(name: str) -> None:
    spec = providers.get(name)
    data = spec.to_agent({"issuer": "http://idp.test"})
    assert json.loads(json.dumps(data)) == data  # JSON only: no hooks, no tuples
    assert "account_info" not in data
    parsed = LoginSpec.from_json(data)  # the guest's own validation
    assert parsed.name == name and parsed.credential_files == spec.credential_files


def test_real_cli_specs_record_the_version_they_were_checked_against() -> None:
    assert claude_code.SPEC.cli_version == "2.1.332"
    assert codex.SPEC.cli_version == "0.171.0"
    assert gemini_cli.SPEC.cli_version == "0.61.0"


# -- Claude Code --------------------------------------------------------------------------


def test_claude_code_spec_matches_its_output() -> None:
    spec = claude_code.SPEC
    assert spec.login_argv == ("claude", "auth", "login", "--claudeai")
    # The printed URL is the manual paste-a-code one: the agent opens BROWSER's instead.
    assert printed_url(spec, CLAUDE_OUTPUT) == CLAUDE_MANUAL
    assert spec.browser_url_preferred
    assert re.fullmatch(spec.url_pattern, CLAUDE_BROWSER)
    assert answered(spec, CLAUDE_OUTPUT) == []
    assert succeeded(spec, CLAUDE_OUTPUT)
    assert not succeeded(spec, CLAUDE_OUTPUT.split(b"Login successful")[0])


def test_claude_code_account_info() -> None:
    files = {
        ".claude/.credentials.json": json.dumps({"claudeAiOauth": {
            "accessToken": "sk-ant-oat01-x", "refreshToken": "sk-ant-ort01-x",
            "expiresAt": 1795826956849, "scopes": ["user:inference"], "subscriptionType": "max",
        }}).encode(),
        ".claude.json": json.dumps({"userID": "u", "oauthAccount": {
            "accountUuid": "11111111-1111-4111-8111-111111111111",
            "emailAddress": "ada@example.com",
        }}).encode(),
    }
    assert claude_code.account_info(files) == ("ada@example.com", 1795826956)


# -- Codex --------------------------------------------------------------------------------


def jwt(claims: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


def test_codex_spec_matches_its_output() -> None:
    spec = codex.SPEC
    assert spec.login_argv[:2] == ("codex", "login")
    assert printed_url(spec, CODEX_OUTPUT) == CODEX_URL
    assert answered(spec, CODEX_OUTPUT) == []
    assert succeeded(spec, CODEX_OUTPUT)
    assert not succeeded(spec, CODEX_OUTPUT.split(b"Successfully")[0])


def test_codex_account_info() -> None:
    auth = {
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": "sk-proj-x",
        "tokens": {
            "id_token": jwt({"email": "ada@example.com", "exp": 1795801753}),
            "access_token": jwt({"exp": 1796662153}),
            "refresh_token": "rt-x",
            "account_id": "acct-123",
        },
        "last_refresh": "2026-11-27T16:49:13.546626132Z",
    }
    assert codex.account_info({".codex/auth.json": json.dumps(auth).encode()}) == (
        "ada@example.com", 1796662153)


# -- Gemini CLI ---------------------------------------------------------------------------


def test_gemini_cli_spec_matches_its_output() -> None:
    spec = gemini_cli.SPEC
    assert spec.clean_env and spec.stop_on_success and spec.browser_url_preferred
    settings = json.loads(spec.pre_login_files[".gemini/settings.json"])
    assert settings["security"]["auth"]["selectedType"] == "oauth-personal"
    assert answered(spec, GEMINI_AUTH_DIALOG) == ["\r"]
    assert answered(spec, GEMINI_CONSENT) == ["\r"]
    assert printed_url(spec, GEMINI_WAITING) == GEMINI_URL
    assert not succeeded(spec, GEMINI_AUTH_DIALOG + GEMINI_CONSENT + GEMINI_WAITING)
    assert succeeded(spec, GEMINI_SUCCESS)


def test_gemini_cli_account_info() -> None:
    files = {
        ".gemini/oauth_creds.json": json.dumps({
            "access_token": "ya29.x", "refresh_token": "1//x", "token_type": "Bearer",
            "expiry_date": 1795801749170,
        }).encode(),
        ".gemini/google_accounts.json": b'{\n  "active": "ada@example.com",\n  "old": []\n}',
    }
    assert gemini_cli.account_info(files) == ("ada@example.com", 1795801749)
    # Before the sign-in the accounts file exists with no active account.
    files[".gemini/google_accounts.json"] = b'{"active": null, "old": []}'
    assert gemini_cli.account_info(files) == (None, 1795801749)


# -- demo ---------------------------------------------------------------------------------


def test_demo_fills_its_issuer_placeholder() -> None:
    spec = demo.SPEC
    assert spec.placeholders() == {"issuer"}
    data = spec.to_agent({"issuer": "http://10.0.0.1:8000", "unused": "x"})
    assert data["login_argv"] == [
        "python3", "/usr/lib/hearth/demo_login.py", "--issuer", "http://10.0.0.1:8000"]
    with pytest.raises(ValueError, match="needs login parameters: issuer"):
        spec.to_agent()
    assert spec.login_argv[-1] == "{issuer}"  # the spec itself is unchanged


def test_demo_spec_matches_demo_login_output() -> None:
    url = "http://10.0.0.1:8000/authorize?response_type=code&client_id=hearth-demo-cli&state=s"
    output = f"Open this URL to sign in: {url}\r\nLogin successful: ada@example.com\r\n".encode()
    assert printed_url(demo.SPEC, output) == url
    assert succeeded(demo.SPEC, output)


def test_demo_account_info() -> None:
    creds = {"access_token": "a", "refresh_token": "r", "id_token": "i",
             "expires_at": 1795801749, "email": "ada@example.com"}
    assert demo.account_info({demo.CREDENTIALS: json.dumps(creds).encode()}) == (
        "ada@example.com", 1795801749)


# -- account_info on files that are not what it expects ----------------------------------


@pytest.mark.parametrize("name", providers.names())
@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b'{"tokens": "x"}', b"\xff"])
def test_account_info_never_fails_on_odd_files(name: str, content: bytes) -> None:
    spec = providers.get(name)
    files = dict.fromkeys(spec.credential_files, content)
    assert spec.account_info(files) == (None, None)
    assert spec.account_info({}) == (None, None)
