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
import tomllib
from datetime import UTC, datetime

import pytest

from hearth import providers
from hearth.config import Settings
from hearth.demo import provider as demo
from hearth.guest.protocol import LoginSpec
from hearth.guest.transcript import Transcript
from hearth.providers import claude_code, codex, gemini_cli
from hearth.providers.base import ProviderSpec, UnknownProviderError

ESC = b"\x1b"
GREY_BAR = ESC + b"[38;5;244m\xe2\x94\x82" + ESC + b"[39m"  # Gemini CLI's box side, in colour

# -- captured output ----------------------------------------------------------------------

CLAUDE_MANUAL = "https://claude.ai/oauth/authorize?z-B4IdZ0cgqv8AnyLdrK2j4RryxcOyDhs9pgMUTJfLfik"
CLAUDE_OUTPUT = (
    b"Opening browser to sign in\xe2\x80\xa6\r\nIf the browser didn't open, visit:\r\n"
    b"\x1b]8;;"
    + CLAUDE_MANUAL.encode()
    + b"\x07\x1b[94m"
    + CLAUDE_MANUAL.encode()
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
    GREY_BAR
    + b"   "
    + ESC
    + b"[38;5;231mHow would you like to authenticate for this project?"
    + ESC
    + b"[39m"
    + b" " * 946
    + GREY_BAR
    + b"\r\n"
    + GREY_BAR
    + b" " * 998
    + GREY_BAR
    + b"\r\n"
    + GREY_BAR
    + b"   "
    + ESC
    + b"[38;5;120m\xe2\x97\x8f 1. Sign in with Google"
    + ESC
    + b"[39m"
    + b" " * 969
    + GREY_BAR
    + b"\r\n"
)
GEMINI_CONSENT = (
    GREY_BAR
    + b"  "
    + ESC
    + b"[38;5;231mOpening authentication page in your browser. "
    + ESC
    + b"[39m"
    + b" " * 951
    + GREY_BAR
    + b"\r\n"
    + GREY_BAR
    + b" " * 998
    + GREY_BAR
    + b"\r\n"
    + GREY_BAR
    + b"  "
    + ESC
    + b"[38;5;231mDo you want to continue?"
    + ESC
    + b"[39m"
    + b" " * 171
    + b"\r\n"
)
GEMINI_WAITING = (
    ESC
    + b"[38;5;229m\xe2\x84\xb9 Attempting to open authentication page in your browser."
    + ESC
    + b"[39m\r\n  "
    + ESC
    + b"[38;5;229mOtherwise navigate to:"
    + ESC
    + b"[39m\r\n  "
    + ESC
    + b"[38;5;147m"
    + GEMINI_URL.encode()
    + ESC
    + b"[39m\r\n\r\n"
    + ESC
    + b"[38;5;229m\xe2\x84\xb9 Waiting for authentication..."
    + ESC
    + b"[39m\r\n"
    + ESC
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
    with pytest.raises(
        UnknownProviderError,
        match=r"unknown provider 'cursor'; known "
        r"providers: claude_code, codex, demo, gemini_cli",
    ):
        providers.get("cursor")
    assert issubclass(UnknownProviderError, ValueError)


@pytest.mark.parametrize("name", providers.names())
def test_to_agent_is_plain_json_the_agent_accepts(name: str) -> None:
    spec = providers.get(name)
    data = spec.to_agent({"issuer": "http://idp.test"}).to_json()
    assert json.loads(json.dumps(data)) == data  # JSON only: no hooks, no tuples
    assert "account_info" not in data
    parsed = LoginSpec.from_json(data)  # the guest's own validation
    assert parsed.name == name and parsed.credential_files == spec.credential_files
    assert parsed.to_json() == data


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
        ".claude/.credentials.json": json.dumps(
            {
                "claudeAiOauth": {
                    "accessToken": "sk-ant-oat01-x",
                    "refreshToken": "sk-ant-ort01-x",
                    "expiresAt": 1795826956849,
                    "scopes": ["user:inference"],
                    "subscriptionType": "max",
                }
            }
        ).encode(),
        ".claude.json": json.dumps(
            {
                "userID": "u",
                "oauthAccount": {
                    "accountUuid": "11111111-1111-4111-8111-111111111111",
                    "emailAddress": "ada@example.com",
                },
            }
        ).encode(),
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
        "ada@example.com",
        1796662153,
    )


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
        ".gemini/oauth_creds.json": json.dumps(
            {
                "access_token": "ya29.x",
                "refresh_token": "1//x",
                "token_type": "Bearer",
                "expiry_date": 1795801749170,
            }
        ).encode(),
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
    data = spec.to_agent({"issuer": "http://10.0.0.1:8000", "unused": "x"}).to_json()
    assert data["login_argv"] == [
        "python3",
        "/usr/lib/hearth/demo_login.py",
        "--issuer",
        "http://10.0.0.1:8000",
    ]
    with pytest.raises(ValueError, match="needs login parameters: issuer"):
        spec.to_agent()
    assert spec.login_argv[-1] == "{issuer}"  # the spec itself is unchanged


def test_the_demo_takes_its_issuer_from_the_settings() -> None:
    settings = Settings(demo_issuer="http://idp.demo.test")
    assert demo.SPEC.login_params(settings) == {"issuer": "http://idp.demo.test"}
    login = demo.SPEC.to_agent(demo.SPEC.login_params(settings))
    assert login.login_argv[-2:] == ("--issuer", "http://idp.demo.test")


@pytest.mark.parametrize("name", providers.names())
def test_each_spec_fills_its_own_placeholders_from_the_settings(name: str) -> None:
    spec = providers.get(name)
    assert spec.placeholders() <= spec.login_params(Settings()).keys()


def test_demo_spec_matches_demo_login_output() -> None:
    url = "http://10.0.0.1:8000/authorize?response_type=code&client_id=hearth-demo-cli&state=s"
    output = f"Open this URL to sign in: {url}\r\nLogin successful: ada@example.com\r\n".encode()
    assert printed_url(demo.SPEC, output) == url
    assert succeeded(demo.SPEC, output)


def test_demo_account_info() -> None:
    creds = {
        "access_token": "a",
        "refresh_token": "r",
        "id_token": "i",
        "expires_at": 1795801749,
        "email": "ada@example.com",
    }
    assert demo.account_info({demo.CREDENTIALS: json.dumps(creds).encode()}) == (
        "ada@example.com",
        1795801749,
    )


def test_account_gives_the_expiry_as_the_store_keeps_it() -> None:
    files = {demo.CREDENTIALS: json.dumps({"expires_at": 1795801749, "email": "a@b.c"}).encode()}
    assert demo.SPEC.account(files) == ("a@b.c", datetime(2026, 11, 27, 17, 49, 9, tzinfo=UTC))
    assert demo.SPEC.account({}) == (None, None)


# -- account_info on files that are not what it expects ----------------------------------


@pytest.mark.parametrize("name", providers.names())
@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b'{"tokens": "x"}', b"\xff"])
def test_account_info_never_fails_on_odd_files(name: str, content: bytes) -> None:
    spec = providers.get(name)
    files = dict.fromkeys(spec.credential_files, content)
    assert spec.account_info(files) == (None, None)
    assert spec.account_info({}) == (None, None)


# -- running prompts in the CLI VM ---------------------------------------------------------
#
# The outputs below were recorded from the pinned releases run with fake credential files,
# with no network or against local stand-ins for the providers' endpoints.

REAL_CLIS = ["claude_code", "codex", "gemini_cli"]
ODD_PROMPTS = ["-x --help", "--version", "say {prompt} twice", "{prompt}", "line one\n- two", ""]


def test_prompt_commands() -> None:
    prompt = "hello"
    assert claude_code.SPEC.prompt_command(prompt) == [
        "claude",
        "-p",
        "--verbose",
        "--output-format",
        "stream-json",
        "--permission-prompts",
        "none",
        "--",
        "hello",
    ]
    assert codex.SPEC.prompt_command(prompt) == [
        "codex",
        "exec",
        "--json",
        "--skip-git-repo-check",
        "-c",
        'cli_auth_credentials_store="file"',
        "--",
        "hello",
    ]
    assert gemini_cli.SPEC.prompt_command(prompt) == [
        "gemini",
        "--skip-trust",
        "--output-format",
        "stream-json",
        "--prompt=hello",
    ]


@pytest.mark.parametrize("name", REAL_CLIS)
@pytest.mark.parametrize("prompt", ODD_PROMPTS)
def test_a_prompt_is_never_an_option(name: str, prompt: str) -> None:
    """The prompt lands in one argument, whole, after "--" or as an option's inline value."""
    spec = providers.get(name)
    argv = spec.prompt_command(prompt)
    assert len(argv) == len(spec.prompt_argv)
    changed = [
        i
        for i, (arg, template) in enumerate(zip(argv, spec.prompt_argv, strict=True))
        if arg != template or "{prompt}" in template
    ]
    assert len(changed) == 1
    i = changed[0]
    if spec.prompt_argv[i] == "{prompt}":
        assert argv[i] == prompt and argv[i - 1] == "--"
        assert "--" not in argv[: i - 1]
    else:  # gemini: --prompt=<prompt>, since its -p takes no value starting with "-"
        assert spec.prompt_argv[i] == "--prompt={prompt}"
        assert argv[i] == "--prompt=" + prompt


def test_the_prompt_placeholder_is_not_filled_twice() -> None:
    for name in REAL_CLIS:
        spec = providers.get(name)
        argv = spec.prompt_command("{prompt}")
        assert argv.count("{prompt}") + argv.count("--prompt={prompt}") == 1
    assert demo.SPEC.prompt_command("-v {prompt}")[-2:] == ["--", "-v {prompt}"]


@pytest.mark.parametrize("name", providers.names())
def test_every_provider_runs_prompts_and_checks_its_sign_in(name: str) -> None:
    spec = providers.get(name)
    assert spec.prompt_argv and spec.status_argv
    assert set(spec.rotating_files) <= set(spec.credential_files)
    assert "{prompt}" not in " ".join(spec.status_argv)


def test_token_files_are_the_files_a_refresh_rewrites() -> None:
    assert claude_code.SPEC.rotating_files == (".claude/.credentials.json",)
    assert codex.SPEC.rotating_files == (".codex/auth.json",)
    assert gemini_cli.SPEC.rotating_files == (".gemini/oauth_creds.json",)


CLAUDE_CREDS = json.dumps(
    {
        "claudeAiOauth": {
            "accessToken": "sk-ant-oat01-fake",
            "refreshToken": "sk-ant-ort01-fake",
            "expiresAt": 1795826956849,
            "scopes": ["user:inference"],
            "subscriptionType": "max",
        }
    }
).encode()
CLAUDE_ACCOUNT = json.dumps(
    {
        "userID": "u1",
        "firstStartTime": "2026-11-27T18:33:08.054Z",
        "oauthAccount": {
            "accountUuid": "11111111-1111-4111-8111-111111111111",
            "emailAddress": "ada@example.com",
            "organizationUuid": "22222222-2222-4222-8222-222222222222",
        },
        "hasCompletedOnboarding": False,
    }
).encode()


def test_claude_code_vm_files() -> None:
    stored = {".claude/.credentials.json": CLAUDE_CREDS, ".claude.json": CLAUDE_ACCOUNT}
    tokens, support = claude_code.SPEC.vm_files(stored)
    assert tokens == {".claude/.credentials.json": CLAUDE_CREDS}
    assert list(support) == [".claude.json"]  # the setup file replaced the stored one
    config = json.loads(support[".claude.json"])
    assert config["hasCompletedOnboarding"] is True and config["autoUpdates"] is False
    assert config["oauthAccount"] == json.loads(CLAUDE_ACCOUNT)["oauthAccount"]
    assert config["userID"] == "u1"
    assert claude_code.account_info({**tokens, **support})[0] == "ada@example.com"


def test_codex_vm_files() -> None:
    auth = json.dumps({"auth_mode": "chatgpt", "tokens": {"refresh_token": "rt"}}).encode()
    tokens, support = codex.SPEC.vm_files({".codex/auth.json": auth})
    assert tokens == {".codex/auth.json": auth}
    config = tomllib.loads(support.pop(".codex/config.toml").decode())
    assert support == {}
    assert config == {
        "cli_auth_credentials_store": "file",
        "forced_login_method": "chatgpt",
        "check_for_update_on_startup": False,
        "analytics": {"enabled": False},
        "feedback": {"enabled": False},
        "otel": {"exporter": "none", "trace_exporter": "none", "metrics_exporter": "none"},
    }


def test_gemini_cli_vm_files() -> None:
    creds = b'{"access_token": "ya29.fake", "refresh_token": "1//fake"}'
    accounts = b'{"active": "ada@example.com", "old": []}'
    tokens, support = gemini_cli.SPEC.vm_files(
        {".gemini/oauth_creds.json": creds, ".gemini/google_accounts.json": accounts}
    )
    assert tokens == {".gemini/oauth_creds.json": creds}
    assert support[".gemini/google_accounts.json"] == accounts
    assert json.loads(support[".gemini/settings.json"]) == gemini_cli.SETTINGS
    assert set(support) == {".gemini/google_accounts.json", ".gemini/settings.json"}


def test_the_demo_has_no_setup_files() -> None:
    creds = b'{"access_token": "a"}'
    assert demo.SPEC.vm_files({demo.CREDENTIALS: creds}) == ({demo.CREDENTIALS: creds}, {})


@pytest.mark.parametrize("name", providers.names())
@pytest.mark.parametrize("content", [None, b"", b"not json", b"[1, 2]", b'"x"', b"\xff\xfe"])
def test_setup_files_never_fail_on_odd_files(name: str, content: bytes | None) -> None:
    spec = providers.get(name)
    stored = {} if content is None else dict.fromkeys(spec.credential_files, content)
    tokens, support = spec.vm_files(stored)
    assert set(tokens) | set(support) >= set(stored)
    for path, data in spec.setup_files(stored).items():
        if path.endswith(".json"):
            assert isinstance(json.loads(data), dict)
        elif path.endswith(".toml"):
            tomllib.loads(data.decode())
    if name == "claude_code":
        assert json.loads(support[".claude.json"]) == {
            "hasCompletedOnboarding": True,
            "autoUpdates": False,
        }


# `claude auth status --json` (stdout), signed out (exit 1) and with the files (exit 0)
CLAUDE_SIGNED_OUT = """{
  "loggedIn": false,
  "authMethod": "none",
  "apiProvider": "firstParty",
  "analyticsDisabled": false,
  "projectsDirectory": "/root/.claude/projects",
  "configDirectory": "/root/.claude",
  "loginExpiresAt": null,
  "consoleProfileSignInOffered": true
}
"""
CLAUDE_SIGNED_IN = """{
  "loggedIn": true,
  "authMethod": "claude.ai",
  "apiProvider": "firstParty",
  "analyticsDisabled": false,
  "projectsDirectory": "/root/.claude/projects",
  "configDirectory": "/root/.claude",
  "loginExpiresAt": null,
  "consoleProfileSignInOffered": true,
  "email": "ada@example.com",
  "orgId": "22222222-2222-4222-8222-222222222222",
  "orgName": "Ada",
  "subscriptionType": "max",
  "storedClaudeAiLogin": true,
  "planTier": "max_20x"
}
"""


def test_claude_code_status_check() -> None:
    check = claude_code.SPEC.status_check
    assert check(0, CLAUDE_SIGNED_IN) == (True, None)
    valid, reason = check(1, CLAUDE_SIGNED_OUT)
    assert not valid and "not signed in" in reason
    api_key = CLAUDE_SIGNED_IN.replace('"claude.ai"', '"api_key"')
    assert check(0, api_key) == (False, "signed in with 'api_key', not a Claude subscription")
    # Whatever else comes: the exit code and the last line.
    assert check(1, "Error: something broke\n") == (False, "Error: something broke")
    assert check(0, "{not json") == (True, None)
    assert check(None, "") == (False, "the status check exited with None")
    assert check(137, CLAUDE_SIGNED_IN) == (False, "the status check exited with 137")


def test_codex_status_check() -> None:
    check = codex.SPEC.status_check
    assert check(0, "Logged in using ChatGPT\n") == (True, None)
    assert check(1, "Not logged in\n") == (False, "Not logged in")
    broken = (
        "Error checking login status: failed to deserialize CLI auth from file: key "
        "must be a string at line 1 column 2\n"
    )
    assert check(1, broken) == (False, broken.strip())
    api_key = "API key configured - ***\nAuthentication is checked when you send a request.\n"
    assert check(0, api_key) == (False, "signed in, but not with ChatGPT: API key configured - ***")


GEMINI_QUIT = (
    "Warning: Basic terminal detected (TERM=dumb). Visual rendering will be limited.\n"
    "Ripgrep is not available. Falling back to GrepTool.\n"
    "\x1b[31mExiting due to command result that is not supported in non-interactive mode."
    "\x1b[0m\n"
)
GEMINI_NO_AUTH_MESSAGE = (
    "Manual authorization is required but the current session is non-interactive. Please run "
    "the Gemini CLI in an interactive terminal to log in, provide a GEMINI_API_KEY, or ensure "
    "Application Default Credentials are configured."
)
GEMINI_NO_AUTH = (
    f"Error authenticating: FatalAuthenticationError: {GEMINI_NO_AUTH_MESSAGE}\n"
    "    at initOauthClient (file:///usr/local/lib/node_modules/@google/gemini-cli/bundle/"
    "chunk-JDPZ4CE3.js:279252:13)\n  exitCode: 41\n}\n"
    f"\x1b[31m{GEMINI_NO_AUTH_MESSAGE}\x1b[0m\n"
)


def test_gemini_cli_status_check() -> None:
    check = gemini_cli.SPEC.status_check
    assert gemini_cli.SPEC.status_argv == ("gemini", "--skip-trust", "--prompt=/quit")
    assert check(42, GEMINI_QUIT) == (True, None)
    assert check(41, GEMINI_NO_AUTH) == (False, GEMINI_NO_AUTH_MESSAGE[:300])
    # Exit 42 is any input error: only /quit's own message means the sign-in check passed.
    no_input = "No input provided via stdin. Input can be provided by piping data into gemini."
    assert check(42, no_input) == (False, no_input)
    assert check(0, "") == (False, "the status check exited with 0")


def test_the_clis_quiet_switches_and_the_vms_environment_reach_the_login():
    from hearth.guest import trust

    spec = providers.get("claude_code")
    env = spec.to_agent({}, env=trust.ENV).login_env
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert env["NODE_EXTRA_CA_CERTS"] == trust.EXTRA
    # The spec's own login environment has the last word.
    demo = providers.get("demo")
    assert demo.to_agent({"issuer": "http://idp.demo.test"}, env={"A": "1"}).login_env == {"A": "1"}


def test_every_spec_lists_its_egress():
    for name in ("claude_code", "codex", "gemini_cli"):
        hosts = providers.get(name).egress
        assert hosts.sign_in and hosts.token and hosts.api, name


def test_a_refusal_is_recognised_in_the_clis_own_output() -> None:
    """The lines each CLI prints when the provider refuses its credentials (recorded in
    docs/contracts/), and ordinary output that must not count."""
    claude = (
        '{"type":"result","subtype":"success","is_error":true,"result":"Failed to '
        'authenticate: OAuth session expired and could not be refreshed","terminal_'
        'reason":"api_error"}\n'
    )
    assert claude_code.SPEC.refused(claude) == (
        "Failed to authenticate: OAuth session expired and could not be refreshed"
    )
    assert (
        claude_code.SPEC.refused('{"result":"Not logged in · Please run /login"}')
        == "Not logged in · Please run /login"
    )
    codex_out = (
        "ERROR codex_login::auth::manager: Your access token could not be refreshed "
        "because your refresh token was revoked. Please log out and sign in again.\n"
        '{"type":"turn.failed","error":{"message":"unexpected status 401 '
        'Unauthorized: {\\"error\\":{\\"code\\":\\"invalid_token\\"}}"}}\n'
    )
    assert codex.SPEC.refused(codex_out) == (
        "Your access token could not be refreshed because your refresh token was revoked. "
        "Please log out and sign in again."
    )
    assert (
        codex.SPEC.refused(codex_out.split("\n", 1)[1]) == "unexpected status 401 Unauthorized: {"
    )
    for spec in (claude_code.SPEC, codex.SPEC):
        assert spec.refused('{"type":"result","result":"Hello."}\n') is None
        assert spec.refused("") is None


def test_gemini_cli_refusal_is_recognised() -> None:
    """Exit 41 and its message when Google refuses the sign-in (docs/contracts/gemini_cli.md,
    4): the status run gives the message, not the stack trace after it, and a prompt's output
    with it counts as a refusal."""
    out = (
        "\x1b[31mManual authorization is required but the current session is non-"
        "interactive. Please run the Gemini CLI in an interactive terminal to log in.\x1b[0m\n"
        "    at FatalAuthenticationError (file:///usr/lib/node_modules/x.js:1:1)\n"
    )
    valid, reason = gemini_cli.SPEC.status_check(41, out)
    assert (
        not valid
        and reason.startswith("Manual authorization is required")
        and reason.endswith("to log in.")
    )
    assert gemini_cli.SPEC.refused(out).startswith("Manual authorization is required")
    assert gemini_cli.SPEC.refused('{"type":"result","status":"success"}') is None
