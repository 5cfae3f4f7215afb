"""The agent's login routes (hearth/guest/login.py behind agent.py), with the real agent in
its own process and a small fake CLI that behaves like the real ones: it insists on a
terminal, prints a manual URL, asks a question, hands $BROWSER a different URL whose
redirect comes back to its own listener on 127.0.0.1, writes a credential file and prints a
success line. The test plays the provider by calling that listener. Firefox is replaced by
a recorder (HEARTH_OPEN_URL_COMMAND), its window title by a script.
"""

from __future__ import annotations

import base64
import html
import json
import secrets
import stat
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from hearth.core.agent_client import AgentClient
from hearth.core.ports import AgentRefused
from hearth.guest.firefox import BLANK_TITLE
from hearth.guest.protocol import LoginSpec
from hearth.guest.seed import write_seed
from hearth.guest.transcript import SCREEN_CHARS, Transcript, last_screen, redact
from hearth.waiting import wait_for
from tests.unit.test_agent import RunningAgent

WAIT = 20.0
SECRET = "tok-" + secrets.token_hex(8)  # what the fake CLI stores: never in the agent's log
CODE = "code-" + secrets.token_hex(8)  # what the test "provider" sends back
URL_TIMEOUT = 2  # a short url_timeout, for the tests of that deadline

# A CLI that asks what no spec answers, before any URL, and then waits for ever.
ASKING_CLI = 'input("Which data region should this account use? [eu/us] ")\n'
# A CLI that prints secrets on its way to failing: in a URL's query and fragment, and bare.
LEAKING_CLI = r"""
import sys
state, fragment, token = sys.argv[1:]
print(f"Open https://provider.test/authorize?state={state}&scope=all#{fragment}")
print(f"  Using device token {token}  ")
print()
print("Error: the provider refused the device")
sys.exit(1)
"""

FAKE_CLI = r"""
import json, os, subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

mode, secret = sys.argv[1], sys.argv[2]
if not (os.isatty(0) and os.isatty(1)):
    print("not a terminal", file=sys.stderr)
    sys.exit(3)
home = Path(os.environ["HOME"])
settings = json.loads((home / ".fake-cli" / "settings.json").read_text())
print("\x1b[1mFake CLI\x1b[0m signing in with", settings["auth"])
print("If the browser does not open, visit: "
      "\x1b]8;;https://provider.test/manual?flow=paste\x07"
      "https://provider.test/manual?flow=paste\x1b]8;;\x07")
if input("Press Enter to open your browser... ") != "":
    sys.exit(4)

class Callback(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.query = parse_qs(urlsplit(self.path).query)
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass

server = HTTPServer(("127.0.0.1", 0), Callback)
server.timeout = 30
callback = f"http://127.0.0.1:{server.server_port}/callback"
authorize = f"https://provider.test/authorize?state=s1&redirect_uri={quote(callback, safe='')}"
subprocess.run([os.environ["BROWSER"], authorize], check=True)
server.query = None
server.handle_request()
code = (server.query or {}).get("code", [""])[0]
print(f"Exchanging code {code}")
if mode == "fail" or not code:
    print("Sign-in failed: the provider said no")
    sys.exit(7)
creds = home / ".fake-cli" / "credentials.json"
creds.write_text(json.dumps({"access_token": secret, "email": "ada@example.com"}))
print(f"Token {secret} saved")
print("Signed in as ada@example.com")
if mode == "stay":  # a TUI that stays open after signing in, like Gemini CLI
    input()
"""


class LoginAgent(RunningAgent):
    """The agent with its HOME, run directory, Firefox and window title under tmp_path."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        token = secrets.token_urlsafe(32)
        seed_path = tmp_path / "seed.img"
        write_seed(seed_path, {"agent_token": token})
        self.home = tmp_path / "home"
        self.opened = tmp_path / "opened-urls"
        recorder = tmp_path / "open-url"
        recorder.write_text(f'#!/bin/sh\nprintf "%s\\n" "$1" >> {self.opened}\n')
        recorder.chmod(0o755)
        # The sign-in page's title, or the warm blank page's (a file: URL) until that page
        # forwards, as Firefox would follow it.
        title = tmp_path / "title"
        title.write_text(
            "#!/bin/sh\n"
            f'last="$(tail -n 1 {self.opened} 2>/dev/null)"\n'
            'case "$last" in\n'
            """  file://*) grep -q 'http-equiv="refresh"' "${last#file://}" || """
            f"{{ echo '{BLANK_TITLE} \u2014 Mozilla Firefox'; exit; }} ;;\n"
            "esac\n"
            "echo 'Sign in to Provider \u2014 Mozilla Firefox'\n"
        )
        title.chmod(0o755)
        self.cli = tmp_path / "fake_cli.py"
        self.cli.write_text(FAKE_CLI)
        monkeypatch.setenv("HEARTH_LOGIN_HOME", str(self.home))
        monkeypatch.setenv("HEARTH_RUN_DIR", str(tmp_path / "run"))
        monkeypatch.setenv("HEARTH_OPEN_URL_COMMAND", str(recorder))
        monkeypatch.setenv("HEARTH_WINDOW_TITLE_COMMAND", str(title))
        super().__init__(seed_path, token)

    def spec(self, mode: str = "ok", **overrides: Any) -> dict[str, Any]:
        spec = {
            "name": "fake",
            "cli_version": "1.0",
            "login_argv": [sys.executable, str(self.cli), mode, SECRET],
            "login_env": {},
            "clean_env": True,
            "url_pattern": r"https://provider\.test/\S+",
            "browser_url_preferred": True,
            "prompts": [[r"Press Enter to open your browser", "\r"]],
            "pre_login_files": {".fake-cli/settings.json": '{"auth": "oauth"}'},
            "credential_files": [".fake-cli/credentials.json"],
            "success_markers": [r"Signed in as \S+@"],
            "stop_on_success": mode == "stay",
            "login_timeout": 60,
        }
        return {**spec, **overrides}

    def status(self) -> dict[str, Any]:
        code, _, body = self.request("GET", "/login")
        assert code == 200, body
        return body

    def wait_status(self, check: Callable[[dict[str, Any]], Any], what: str) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status()
            return status if check(status) else None

        return wait_for(reached, WAIT, what)

    def opened_urls(self) -> list[str]:
        return self.opened.read_text().splitlines() if self.opened.exists() else []


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoginAgent]:
    running = LoginAgent(tmp_path, monkeypatch)
    try:
        yield running
        # A login still running is ended with the agent's own cancel, so no CLI outlives it.
        if running.proc.returncode is None and running.request("DELETE", "/login")[0] == 202:
            running.wait_status(lambda s: s["exited"], "the cancelled login to exit")
    finally:
        running.stop()


def redirect(url: str, **params: str) -> None:
    """Play the provider: send the browser back to the CLI's callback with `params`."""
    callback = parse_qs(urlsplit(url).query)["redirect_uri"][0]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{callback}?{urlencode(params)}", timeout=WAIT) as response:
        assert response.status == 200


# -- a login that succeeds ----------------------------------------------------------------


def test_a_login_signs_in_under_a_pty_and_hands_over_the_credentials(agent: LoginAgent) -> None:
    code, _, started = agent.request("POST", "/login", {"spec": agent.spec()})
    assert code == 202, started
    assert started["provider"] == "fake" and started["exited"] is False

    # What the controller waits for: the URL, shown in a Firefox window with a page title.
    status = agent.wait_status(lambda s: s["firefox"]["ready"], "the sign-in page")
    assert status["state"] == "running"
    assert status["printed_url"] == "https://provider.test/manual?flow=paste"
    assert status["browser_url"].startswith("https://provider.test/authorize?state=s1&")
    assert status["url"] == status["browser_url"]  # BROWSER's URL is preferred
    assert status["prompts_answered"] == ["Press Enter to open your browser"]
    assert status["firefox"] == {
        "opened": True,
        "title": "Sign in to Provider \u2014 Mozilla Firefox",
        "ready": True,
    }
    assert wait_for(agent.opened_urls, WAIT, "the recorder to run") == [status["url"]]

    # Before the sign-in: no credentials, and no second login.
    code, _, body = agent.request("GET", "/credentials")
    assert (code, body) == (409, {"error": "the login is still running"})
    code, _, body = agent.request("POST", "/login", {"spec": agent.spec()})
    assert code == 409 and "still running" in body["error"]

    redirect(status["url"], code=CODE, state="s1")
    status = agent.wait_status(lambda s: s["exited"], "the login to exit")
    assert status["state"] == "exited"
    assert (status["exit_code"], status["success"], status["error"]) == (0, True, None)
    assert status["success_marker_seen"]

    code, _, body = agent.request("GET", "/credentials")
    assert code == 200, body
    files = {path: base64.b64decode(content) for path, content in body["files"].items()}
    assert json.loads(files[".fake-cli/credentials.json"])["access_token"] == SECRET

    settings = agent.home / ".fake-cli" / "settings.json"
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.parent.stat().st_mode) == 0o700

    log = agent.stop()
    assert "login fake: exited with 0: success" in log
    for leaked in (SECRET, CODE, "provider.test", "Fake CLI", "Exchanging", "Signed in"):
        assert leaked not in log, f"{leaked!r} reached the agent's log"


def test_a_cli_that_stays_open_is_stopped_once_signed_in(agent: LoginAgent) -> None:
    assert agent.request("POST", "/login", {"spec": agent.spec("stay")})[0] == 202
    status = agent.wait_status(lambda s: s["url"], "the authorize URL")
    redirect(status["url"], code=CODE, state="s1")
    status = agent.wait_status(lambda s: s["exited"], "the agent to end the CLI")
    assert status["success"] is True and status["exit_code"] != 0
    assert agent.request("GET", "/credentials")[0] == 200


def test_the_printed_url_is_used_when_the_spec_prefers_it(agent: LoginAgent) -> None:
    spec = agent.spec(browser_url_preferred=False)
    assert agent.request("POST", "/login", {"spec": spec})[0] == 202
    status = agent.wait_status(lambda s: s["url"], "the authorize URL")
    assert status["url"] == "https://provider.test/manual?flow=paste"
    assert wait_for(agent.opened_urls, WAIT, "the recorder to run") == [status["url"]]


def test_the_host_client_drives_a_login(agent: LoginAgent) -> None:
    with AgentClient("127.0.0.1", agent.token, port=agent.port) as client:
        with pytest.raises(AgentRefused) as refused:
            client.credentials()
        assert refused.value.status == 409
        assert refused.value.message == "no login has been started"

        assert client.start_login(LoginSpec.from_json(agent.spec())).provider == "fake"
        status = wait_for(lambda: (s := client.login_status()).url and s, WAIT, "the URL")
        with pytest.raises(AgentRefused, match="the fake login is still running"):
            client.start_login(LoginSpec.from_json(agent.spec()))
        redirect(status.url, code=CODE, state="s1")
        wait_for(lambda: client.login_status().exited, WAIT, "the login to exit")
        files = client.credentials()
        assert json.loads(files[".fake-cli/credentials.json"])["access_token"] == SECRET
        assert client.open_url("https://provider.test/done").to_json() == {"opened": True}


# -- the warm Firefox (the controller's warm pool) ----------------------------------------


def test_a_warm_firefox_paints_the_blank_page_and_the_next_login_takes_it(
    agent: LoginAgent,
) -> None:
    code, _, body = agent.request("GET", "/warm-browser")
    assert (code, body) == (404, {"error": "no Firefox is kept warm"})
    code, _, warm = agent.request("POST", "/warm-browser")
    assert code == 202 and warm["error"] is None, warm

    def painted() -> dict[str, Any] | None:
        code, _, status = agent.request("GET", "/warm-browser")
        assert code == 200, status
        return status if status["painted"] else None

    status = wait_for(painted, WAIT, "the blank page to paint")
    # Painted, and not a sign-in page: the controller never takes it for the authorize page.
    assert status["firefox"] == {
        "opened": True,
        "title": f"{BLANK_TITLE} \u2014 Mozilla Firefox",
        "ready": False,
    }
    (blank,) = agent.opened_urls()
    assert blank.startswith("file:") and blank.endswith("/blank.html")
    page = Path(urlsplit(blank).path)
    assert BLANK_TITLE in page.read_text() and "location.reload()" in page.read_text()
    assert agent.request("POST", "/warm-browser")[0] == 202  # asked again: the same one
    assert agent.opened_urls() == [blank]

    assert agent.request("POST", "/login", {"spec": agent.spec()})[0] == 202
    status = agent.wait_status(lambda s: s["firefox"]["ready"], "the sign-in page")
    # The warm Firefox's own tab goes on to the sign-in page: no second Firefox is started.
    assert agent.opened_urls() == [blank]
    assert f'content="0; url={html.escape(status["url"])}"' in page.read_text()
    # The login's Firefox is its own now: none is kept warm beside it.
    code, _, body = agent.request("POST", "/warm-browser")
    assert code == 409 and "a login has started" in body["error"]
    assert agent.request("GET", "/warm-browser")[0] == 404

    redirect(status["url"], code=CODE, state="s1")
    status = agent.wait_status(lambda s: s["exited"], "the login to exit")
    assert status["success"] is True
    log = agent.stop()
    assert "warm Firefox started on the blank page" in log
    assert "login fake: the warm Firefox will show the sign-in page" in log


def test_the_host_client_reads_the_warm_firefox(agent: LoginAgent) -> None:
    with AgentClient("127.0.0.1", agent.token, port=agent.port) as client:
        assert client.warm_browser().error is None
        status = wait_for(
            lambda: (s := client.warm_browser_status()).painted and s, WAIT, "the paint"
        )
        assert status.firefox.opened and not status.firefox.ready


# -- logins that fail ---------------------------------------------------------------------


def test_a_cli_that_exits_non_zero_fails_the_login(agent: LoginAgent) -> None:
    assert agent.request("POST", "/login", {"spec": agent.spec("fail")})[0] == 202
    status = agent.wait_status(lambda s: s["url"], "the authorize URL")
    redirect(status["url"], code=CODE, state="s1")
    status = agent.wait_status(lambda s: s["exited"], "the login to exit")
    assert (status["exit_code"], status["success"]) == (7, False)
    assert status["error"].startswith("the login command exited with 7; its last screen: ")
    assert status["error"].endswith(
        " | Exchanging code [redacted] | Sign-in failed: the provider said no"
    )
    code, _, body = agent.request("GET", "/credentials")
    assert code == 409 and "did not succeed" in body["error"]


def test_a_cli_that_asks_an_unknown_question_fails_at_the_url_deadline(
    agent: LoginAgent, tmp_path: Path
) -> None:
    cli = tmp_path / "asking_cli.py"
    cli.write_text(ASKING_CLI)
    spec = agent.spec(login_argv=[sys.executable, str(cli)], url_timeout=URL_TIMEOUT)
    assert agent.request("POST", "/login", {"spec": spec})[0] == 202
    # login_timeout (60 s) is beyond WAIT: only the URL deadline ends this login in time.
    status = agent.wait_status(lambda s: s["exited"], "the URL deadline to stop the CLI")
    assert (status["success"], status["url"]) == (False, None)
    assert status["error"] == (
        f"the CLI showed no sign-in URL within {URL_TIMEOUT}s; its last screen: "
        "Which data region should this account use? [eu/us]"
    )


def test_a_cli_that_shows_its_url_in_time_outlives_the_url_deadline(agent: LoginAgent) -> None:
    spec = agent.spec(url_timeout=URL_TIMEOUT)
    assert agent.request("POST", "/login", {"spec": spec})[0] == 202
    status = agent.wait_status(lambda s: s["url"], "the authorize URL")
    past_deadline = time.monotonic() + 2 * URL_TIMEOUT
    agent.wait_status(
        lambda s: s["exited"] or time.monotonic() > past_deadline, "the URL deadline to pass"
    )
    redirect(status["url"], code=CODE, state="s1")
    status = agent.wait_status(lambda s: s["exited"], "the login to exit")
    assert (status["exit_code"], status["success"], status["error"]) == (0, True, None)


def test_a_failed_login_shows_the_cli_s_last_screen_redacted(
    agent: LoginAgent, tmp_path: Path
) -> None:
    cli = tmp_path / "leaking_cli.py"
    cli.write_text(LEAKING_CLI)
    state, fragment = "st8-" + secrets.token_hex(4), "frag-" + secrets.token_hex(4)
    token = "sk-1" + secrets.token_hex(16)
    spec = agent.spec(login_argv=[sys.executable, str(cli), state, fragment, token])
    assert agent.request("POST", "/login", {"spec": spec})[0] == 202
    status = agent.wait_status(lambda s: s["exited"], "the login to exit")
    assert (status["exit_code"], status["success"]) == (1, False)
    assert status["error"] == (
        "the login command exited with 1; its last screen: "
        "Open https://provider.test/authorize?\u2026 | Using device token [redacted] | "
        "Error: the provider refused the device"
    )
    for secret in (state, fragment, token):
        assert secret not in status["error"]


def test_a_missing_command_fails_with_127(agent: LoginAgent) -> None:
    spec = agent.spec(login_argv=["/nonexistent/cli", "login"])
    assert agent.request("POST", "/login", {"spec": spec})[0] == 202
    status = agent.wait_status(lambda s: s["exited"], "the login to exit")
    assert (status["exit_code"], status["success"]) == (127, False)


def test_a_cancelled_login_ends_and_a_new_one_replaces_it(agent: LoginAgent) -> None:
    assert agent.request("POST", "/login", {"spec": agent.spec()})[0] == 202
    agent.wait_status(lambda s: s["url"], "the authorize URL")
    code, _, _ = agent.request("DELETE", "/login")
    assert code == 202
    status = agent.wait_status(lambda s: s["exited"], "the cancelled login to exit")
    assert (status["success"], status["error"]) == (False, "cancelled")

    code, _, started = agent.request("POST", "/login", {"spec": agent.spec()})
    assert code == 202 and started["exited"] is False and started["error"] is None


# -- requests the agent refuses -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/login"),
        ("GET", "/login"),
        ("DELETE", "/login"),
        ("GET", "/credentials"),
        ("POST", "/open-url"),
        ("POST", "/warm-browser"),
        ("GET", "/warm-browser"),
    ],
)
def test_login_routes_need_the_token(agent: LoginAgent, method: str, path: str) -> None:
    code, _, body = agent.request(method, path, {"url": "https://x.test/"}, token="wrong")
    assert (code, body) == (401, {"error": "missing or wrong bearer token"})


def test_nothing_to_report_before_a_login(agent: LoginAgent) -> None:
    code, _, body = agent.request("GET", "/login")
    assert (code, body) == (404, {"error": "no login has been started"})
    code, _, body = agent.request("GET", "/credentials")
    assert (code, body) == (409, {"error": "no login has been started"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"login_argv": []}, '"login_argv" must not be empty'),
        ({"url_pattern": "(unclosed"}, '"url_pattern" holds a bad regular expression'),
        ({"credential_files": ["../etc/shadow"]}, "not a plain path under HOME"),
        ({"pre_login_files": {"/etc/passwd": "x"}}, "not a plain path under HOME"),
        ({"prompts": [["only a regex"]]}, '"prompts" must be a list of [regex, keys] pairs'),
        ({"clean_env": "yes"}, '"clean_env" has the wrong type'),
        ({"url_timeout": 0}, '"url_timeout" must be positive'),
        ({"url_timeout": "2"}, '"url_timeout" has the wrong type'),
    ],
)
def test_a_bad_spec_is_a_400(agent: LoginAgent, change: dict, message: str) -> None:
    code, _, body = agent.request("POST", "/login", {"spec": agent.spec(**change)})
    assert code == 400 and message in body["error"], body


def test_open_url_takes_web_urls_only(agent: LoginAgent) -> None:
    for url in ("file:///etc/passwd", "javascript:alert(1)", "https://x.test/a b", 42):
        code, _, body = agent.request("POST", "/open-url", {"url": url})
        assert (code, body) == (400, {"error": '"url" must be an http(s) URL'})
    code, _, body = agent.request("POST", "/open-url", {"url": "https://provider.test/help"})
    assert (code, body) == (200, {"opened": True})
    assert wait_for(agent.opened_urls, WAIT, "the recorder to run") == [
        "https://provider.test/help"
    ]


# -- the plain-text transcript ------------------------------------------------------------


def test_the_transcript_strips_escapes_even_when_reads_split_them() -> None:
    raw = (
        b"If the browser didn't open, visit:\r\n\x1b]8;;https://a.test/x?y=1\x07"
        b"\x1b[94mhttps://a.test/x?y=1\x1b[39m\x1b]8;;\x07\r\n\x1b[2K\x1b[1AWaiting\r\n"
    )
    whole = Transcript()
    expected = whole.feed(raw, final=True)
    assert expected == ("If the browser didn't open, visit:\nhttps://a.test/x?y=1\n\n\nWaiting\n")
    split = Transcript()
    for byte in raw:
        split.feed(bytes([byte]))
    split.feed(b"", final=True)
    assert split.tail == expected


def test_the_transcript_keeps_a_bounded_tail() -> None:
    transcript = Transcript(limit=1000)
    for _ in range(100):
        transcript.feed(b"x" * 100 + b"\r\n")
    assert len(transcript.tail) == 1000


# -- what a failed login's error shows ----------------------------------------------------


def test_redact_keeps_where_a_url_goes_but_not_its_query_or_tokens() -> None:
    assert (
        redact("visit https://accounts.google.com/o/oauth2/v2/auth?client_id=1&state=x#y now")
        == "visit https://accounts.google.com/o/oauth2/v2/auth?\u2026 now"
    )
    assert redact("callback http://127.0.0.1:8085/cb/AbCdEf1234567890XyZq12 ok") == (
        "callback http://127.0.0.1:8085/cb/[redacted] ok"
    )
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    assert redact(f"key sk-ant-api03-AbCdEf1234567890xyz, token={jwt}") == (
        "key [redacted], [redacted]"
    )
    # Long runs of only letters or only digits are words and numbers, not tokens.
    plain = "Which-region-should-this-account-use 12345678901234567890 v1.0.33"
    assert redact(plain) == plain


def test_the_last_screen_is_the_newest_non_empty_lines_redacted_and_capped() -> None:
    tail = "\n".join(f"  line {n}  " for n in range(20)) + "\n\n  \ncode sk-1a2b3c4d5e6f7a8b9c0d\n"
    assert last_screen(tail) == " | ".join(
        [f"line {n}" for n in range(9, 20)] + ["code [redacted]"]
    )
    assert last_screen("\n \n") == ""
    long = last_screen("x" * 5000 + "\nthe end")
    assert len(long) == SCREEN_CHARS and long.endswith("x | the end")
