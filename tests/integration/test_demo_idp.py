"""The demo identity provider (hearth.demo.idp) and the demo provider's login command
(hearth/demo/guest/demo_login.py), over real HTTP on 127.0.0.1 only.

The provider runs in-process on a thread for the module (and once as `python -m
hearth.demo.idp`); demo_login runs as the guest runs it, a script in its own process, here
with `-I -S` so that anything beyond the standard library would fail to import. $BROWSER is
a script written here that plays the user: it opens the authorize URL, fills in the form,
and follows the redirect to the login command's loopback callback.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx
import pytest
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidClaimError
from joserfc.jwk import KeySet

import hearth.demo.guest
from hearth.demo.idp import CLIENT_ID, RunningIdp, serve_in_thread
from hearth.demo.idp.__main__ import parse_args
from hearth.waiting import wait_for

DEMO_LOGIN = Path(hearth.demo.guest.__file__).parent / "demo_login.py"
USER = "ada@example.test"
PASSWORD = secrets.token_urlsafe(18)
REDIRECT = "http://127.0.0.1:43210/callback"  # nothing listens: the tests read the Location
LOGIN_TIMEOUT = 60.0
START_TIMEOUT = 30.0

BROWSER_SCRIPT = r'''
"""Plays the user in a browser: open the URL, sign in with the form, follow the redirect."""
import html, json, os, re, sys
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import httpx

url = sys.argv[1]
report = {}
with httpx.Client(trust_env=False, timeout=15) as http:
    page = http.get(url)
    report["login_status"] = page.status_code
    report["login_page"] = page.text
    action = html.unescape(re.search(r'<form [^>]*action="([^"]*)"', page.text).group(1))
    answer = http.post(
        urljoin(url, action),
        data={"username": os.environ["DEMO_USER"], "password": os.environ["DEMO_PASSWORD"]},
    )
    report["answer_status"] = answer.status_code
    location = urlsplit(answer.headers["location"])
    report["redirected_to"] = location._replace(query="").geturl()
    if os.environ["DEMO_BROWSER_MODE"] == "forge-state":
        query = dict(parse_qsl(location.query), state="forged-by-someone-else")
        location = location._replace(query=urlencode(query))
    callback = http.get(location.geturl())
    report["callback"] = [callback.status_code, callback.text]
out = Path(os.environ["DEMO_BROWSER_REPORT"])
tmp = out.with_suffix(".tmp")
tmp.write_text(json.dumps(report))
tmp.replace(out)
'''


class LogCapture(logging.Handler):
    """Everything the provider logs (and werkzeug, Authlib), at every level let through."""

    LOGGERS = ("hearth.demo.idp", "werkzeug", "authlib")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass
class Idp:
    running: RunningIdp
    log: LogCapture

    @property
    def issuer(self) -> str:
        return self.running.issuer

    def url(self, path: str) -> str:
        return f"{self.issuer}{path}"


@pytest.fixture(scope="module")
def idp() -> Iterator[Idp]:
    capture = LogCapture()
    ours = logging.getLogger("hearth.demo.idp")
    old_level = ours.level
    ours.setLevel(logging.DEBUG)
    for name in LogCapture.LOGGERS:
        logging.getLogger(name).addHandler(capture)
    running = serve_in_thread({USER: PASSWORD})
    try:
        yield Idp(running, capture)
    finally:
        running.stop()
        for name in LogCapture.LOGGERS:
            logging.getLogger(name).removeHandler(capture)
        ours.setLevel(old_level)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=15) as client:
        yield client


def assert_hidden(text: str, *secret_values: str | None) -> None:
    """None of the secrets appears in `text` (named by position, never printed)."""
    __tracebackhide__ = True  # a failure must not show the secrets either
    for n, value in enumerate(v for v in secret_values if v):
        assert value not in text, f"secret #{n} appears in the output"


# --- a user in a browser, in-process --------------------------------------------------------


@dataclass
class Page:
    title: str = ""
    forms: list[dict[str, str | None]] = field(default_factory=list)
    inputs: list[dict[str, str | None]] = field(default_factory=list)
    buttons: list[dict[str, str | None]] = field(default_factory=list)
    text: str = ""


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.page = Page()
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {"form": self.page.forms, "input": self.page.inputs, "button": self.page.buttons}
        if tag in found:
            found[tag].append(dict(attrs))
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.page.title += data
        self.page.text += data


def parse_page(html: str) -> Page:
    parser = PageParser()
    parser.feed(html)
    return parser.page


def assert_login_form(html: str) -> Page:
    page = parse_page(html)
    assert page.title == "Sign in · Hearth demo"
    assert len(page.forms) == 1 and page.forms[0]["method"] == "post"
    assert {i["name"] for i in page.inputs} == {"username", "password"}
    assert [b["type"] for b in page.buttons] == ["submit"]
    assert "Hearth demo CLI" in page.text
    return page


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, create_s256_code_challenge(verifier)


def authorize_params(challenge: str, redirect_uri: str = REDIRECT, **extra: str) -> dict[str, str]:
    return {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": redirect_uri,
        "scope": "openid email offline_access",
        "state": secrets.token_urlsafe(12),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        **extra,
    }


def sign_in(
    http: httpx.Client, idp: Idp, params: dict[str, str], password: str = PASSWORD
) -> httpx.Response:
    """Open the login page and submit the form as a browser would; the form's answer."""
    url = str(httpx.URL(idp.url("/authorize"), params=params))
    page = http.get(url)
    assert page.status_code == 200, page.text
    action = assert_login_form(page.text).forms[0]["action"]
    assert action
    return http.post(urljoin(url, action), data={"username": USER, "password": password})


def get_code(http: httpx.Client, idp: Idp, challenge: str, redirect_uri: str = REDIRECT) -> str:
    params = authorize_params(challenge, redirect_uri)
    answer = sign_in(http, idp, params)
    assert answer.status_code == 302, answer.text
    location = urlsplit(answer.headers["location"])
    assert location._replace(query="").geturl() == redirect_uri
    query = dict(parse_qsl(location.query))
    assert query["state"] == params["state"]
    return query["code"]


def redeem(
    http: httpx.Client, idp: Idp, code: str, verifier: str | None, redirect_uri: str = REDIRECT
) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": CLIENT_ID,
    }
    if verifier is not None:
        form["code_verifier"] = verifier
    return http.post(idp.url("/token"), data=form)


def fresh_tokens(http: httpx.Client, idp: Idp) -> dict[str, Any]:
    verifier, challenge = pkce()
    answer = redeem(http, idp, get_code(http, idp, challenge), verifier)
    assert answer.status_code == 200, answer.text
    return answer.json()


def userinfo(http: httpx.Client, idp: Idp, access_token: str) -> httpx.Response:
    return http.get(idp.url("/userinfo"), headers={"Authorization": f"Bearer {access_token}"})


def refresh(
    http: httpx.Client, idp: Idp, refresh_token: str, client_id: str = CLIENT_ID
) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    return http.post(idp.url("/token"), data=data)


# --- the provider ---------------------------------------------------------------------------


def test_discovery_document_is_valid_openid_provider_metadata(idp: Idp, http: httpx.Client) -> None:
    doc = http.get(idp.url("/.well-known/openid-configuration")).json()
    OpenIDProviderMetadata(doc).validate()
    assert doc["issuer"] == idp.issuer
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["token_endpoint_auth_methods_supported"] == ["none"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "refresh_token"}
    jwks = http.get(doc["jwks_uri"]).json()
    [key] = jwks["keys"]
    assert key["kty"] == "RSA" and key["alg"] == "RS256" and key["kid"]
    assert "d" not in key and "p" not in key  # the public half only


def test_authorize_shows_the_login_form(idp: Idp, http: httpx.Client) -> None:
    page = http.get(idp.url("/authorize"), params=authorize_params(pkce()[1]))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    assert_login_form(page.text)


@pytest.mark.parametrize("password", ["wrong-" + secrets.token_hex(6), ""])
def test_wrong_password_shows_the_form_again_and_no_code(
    idp: Idp, http: httpx.Client, password: str
) -> None:
    answer = sign_in(http, idp, authorize_params(pkce()[1]), password=password)
    assert answer.status_code == 200
    assert "location" not in answer.headers
    page = assert_login_form(answer.text)
    assert "Wrong e-mail or password." in page.text
    assert [i.get("value") for i in page.inputs if i["name"] == "username"] == [USER]
    assert "sign-in refused" in idp.log.text
    assert_hidden(idp.log.text, password, PASSWORD)


def test_unknown_user_gets_the_same_answer_as_a_wrong_password(
    idp: Idp, http: httpx.Client
) -> None:
    url = str(httpx.URL(idp.url("/authorize"), params=authorize_params(pkce()[1])))
    answer = http.post(url, data={"username": "nobody@example.test", "password": PASSWORD})
    assert answer.status_code == 200 and "location" not in answer.headers
    assert "Wrong e-mail or password." in parse_page(answer.text).text


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://example.test/callback",
        "http://example.test:8080/callback",
        "https://127.0.0.1:8080/callback",
        "http://127.0.0.1/callback",
        "http://127.0.0.1:0/callback",
        "http://127.0.0.1:65536/callback",
        "http://127.0.0.1:08080/callback",
        "http://127.0.0.1:8080/other",
        "http://127.0.0.1:8080/callback/",
        "http://127.0.0.1:8080/callback?next=http://example.test/",
        "http://127.0.0.1:8080/callback#x",
        "http://user@127.0.0.1:8080/callback",
        "http://127.0.0.1:8080@example.test/callback",
        "http://127.0.0.1.example.test:8080/callback",
        "http://localhost.:8080/callback",
        "http://127.0.0.2:8080/callback",
        'http://127.0.0.1:8080/callback"\\',
        "",
    ],
)
def test_a_redirect_uri_that_is_not_a_loopback_callback_is_refused(
    idp: Idp, http: httpx.Client, redirect_uri: str
) -> None:
    params = authorize_params(pkce()[1], redirect_uri)
    for answer in (
        http.get(idp.url("/authorize"), params=params),
        http.post(
            idp.url("/authorize"), params=params, data={"username": USER, "password": PASSWORD}
        ),
    ):
        assert answer.status_code == 400
        assert "location" not in answer.headers
        assert "must be http://127.0.0.1:&lt;port&gt;/callback" in answer.text
        assert not parse_page(answer.text).forms


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "http://127.0.0.1:1/callback",
        "http://127.0.0.1:8080/callback",
        "http://127.0.0.1:54321/callback",
        "http://localhost:65535/callback",
    ],
)
def test_a_loopback_callback_on_any_port_is_accepted(
    idp: Idp, http: httpx.Client, redirect_uri: str
) -> None:
    verifier, challenge = pkce()
    code = get_code(http, idp, challenge, redirect_uri)
    answer = redeem(http, idp, code, verifier, redirect_uri)
    assert answer.status_code == 200, answer.text


def test_the_token_request_must_name_the_same_redirect_uri(idp: Idp, http: httpx.Client) -> None:
    verifier, challenge = pkce()
    code = get_code(http, idp, challenge, "http://127.0.0.1:8080/callback")
    answer = redeem(http, idp, code, verifier, "http://127.0.0.1:8081/callback")
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "change",
    [{"code_challenge": ""}, {"code_challenge_method": "plain"}, {"code_challenge_method": ""}],
)
def test_an_authorization_request_without_s256_pkce_is_refused(
    idp: Idp, http: httpx.Client, change: dict[str, str]
) -> None:
    """The client and its redirect are known, so the refusal goes back to the client."""
    params = {k: v for k, v in {**authorize_params(pkce()[1]), **change}.items() if v}
    answer = http.get(idp.url("/authorize"), params=params)
    assert answer.status_code == 302
    location = urlsplit(answer.headers["location"])
    query = dict(parse_qsl(location.query))
    assert location._replace(query="").geturl() == REDIRECT
    assert query["error"] == "invalid_request" and "code" not in query
    assert query["state"] == params["state"]


@pytest.mark.parametrize("verifier", [None, "wrong"])
def test_pkce_a_token_request_without_the_right_verifier_fails(
    idp: Idp, http: httpx.Client, verifier: str | None
) -> None:
    right, challenge = pkce()
    code = get_code(http, idp, challenge)
    wrong = None if verifier is None else pkce()[0]
    answer = redeem(http, idp, code, wrong)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_grant"
    assert "access_token" not in answer.text
    # The code was consumed by that attempt: a code is good for one token request only.
    again = redeem(http, idp, code, right)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert_hidden(idp.log.text, code, right, wrong)


def test_a_code_is_redeemed_once(idp: Idp, http: httpx.Client) -> None:
    verifier, challenge = pkce()
    code = get_code(http, idp, challenge)
    assert redeem(http, idp, code, verifier).status_code == 200
    again = redeem(http, idp, code, verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_userinfo_needs_a_valid_access_token(idp: Idp, http: httpx.Client) -> None:
    assert http.get(idp.url("/userinfo")).status_code == 401
    refused = userinfo(http, idp, "not-a-token")
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"


def test_refresh_token_grant_rotates_the_tokens(idp: Idp, http: httpx.Client) -> None:
    first = fresh_tokens(http, idp)
    answer = refresh(http, idp, first["refresh_token"])
    assert answer.status_code == 200, answer.text
    second = answer.json()
    assert second["token_type"] == "Bearer" and second["expires_in"] == 3600
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert userinfo(http, idp, second["access_token"]).json()["email"] == USER
    # The old pair is gone: one live copy of a credential.
    assert userinfo(http, idp, first["access_token"]).status_code == 401
    reuse = refresh(http, idp, first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    assert "POST /token 200" in idp.log.text
    tokens = ("access_token", "refresh_token", "id_token")
    assert_hidden(
        idp.log.text, PASSWORD, *(t[k] for t in (first, second) for k in tokens if k in t)
    )


def test_the_access_token_lifetime_is_configurable(http: httpx.Client) -> None:
    running = serve_in_thread({USER: PASSWORD}, token_ttl=90)
    try:
        short = Idp(running, LogCapture())
        first = fresh_tokens(http, short)
        assert first["expires_in"] == 90
        refreshed = refresh(http, short, first["refresh_token"])
        assert refreshed.json()["expires_in"] == 90
    finally:
        running.stop()


@pytest.mark.parametrize(("args", "ttl"), [([], 3600), (["--token-ttl", "120"], 120)])
def test_the_module_takes_the_token_lifetime(args: list[str], ttl: int) -> None:
    assert parse_args(["--user", USER, *args]).token_ttl == ttl


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "soon"])
def test_the_module_refuses_a_lifetime_that_is_not_positive_seconds(value: str) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--user", USER, "--token-ttl", value])


def test_a_refresh_for_another_client_is_refused(idp: Idp, http: httpx.Client) -> None:
    tokens = fresh_tokens(http, idp)
    answer = refresh(http, idp, tokens["refresh_token"], client_id="someone-else")
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_client"


# --- demo_login, the CLI login command ---------------------------------------------------


@dataclass
class LoginRun:
    returncode: int
    stdout: str
    stderr: str
    browser: dict[str, Any] | None
    out: Path


def run_demo_login(
    issuer: str, workdir: Path, browser_mode: str | None = "user", *extra: str
) -> LoginRun:
    """demo_login as the guest runs it, with $BROWSER playing the user (unless None)."""
    out = workdir / "home" / ".hearth-demo" / "credentials.json"
    report = workdir / "browser-report.json"
    env = {k: v for k, v in os.environ.items() if k != "BROWSER"}
    if browser_mode:
        script = workdir / "browser.py"
        script.write_text(BROWSER_SCRIPT)
        env.update(
            BROWSER=shlex.join([sys.executable, str(script)]),
            DEMO_USER=USER,
            DEMO_PASSWORD=PASSWORD,
            DEMO_BROWSER_MODE=browser_mode,
            DEMO_BROWSER_REPORT=str(report),
        )
    done = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            str(DEMO_LOGIN),
            "--issuer",
            issuer,
            "--out",
            str(out),
            "--timeout",
            str(LOGIN_TIMEOUT),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=LOGIN_TIMEOUT + 30,
    )
    browser = None
    if browser_mode:
        # The browser is not waited for by demo_login; it writes its report last.
        wait_for(report.exists, 30, "the browser script's report")
        browser = json.loads(report.read_text())
    return LoginRun(done.returncode, done.stdout, done.stderr, browser, out)


@pytest.fixture(scope="module")
def signed_in(idp: Idp, tmp_path_factory: pytest.TempPathFactory) -> LoginRun:
    return run_demo_login(idp.issuer, tmp_path_factory.mktemp("demo-login"))


def test_demo_login_signs_in_through_the_browser(signed_in: LoginRun) -> None:
    assert signed_in.returncode == 0, signed_in.stderr
    assert signed_in.stdout.splitlines()[-1] == f"Login successful: {USER}"
    assert signed_in.stderr == ""
    [url] = re.findall(r"^Open this URL to sign in: (\S+)$", signed_in.stdout, re.M)
    query = dict(parse_qsl(urlsplit(url).query))
    assert query["code_challenge_method"] == "S256"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/callback", query["redirect_uri"])
    assert query["scope"] == "openid email offline_access"
    browser = signed_in.browser
    assert browser is not None
    assert browser["login_status"] == 200
    assert_login_form(browser["login_page"])
    assert browser["answer_status"] == 302
    assert browser["redirected_to"] == query["redirect_uri"]
    assert browser["callback"][0] == 200
    assert "Signed in — you can close this window" in browser["callback"][1]


def test_demo_login_writes_the_credential_file_0600(signed_in: LoginRun, idp: Idp) -> None:
    assert signed_in.out.stat().st_mode & 0o777 == 0o600
    assert signed_in.out.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in signed_in.out.parent.iterdir()] == ["credentials.json"]
    creds = json.loads(signed_in.out.read_text())
    assert set(creds) == {
        "access_token",
        "refresh_token",
        "id_token",
        "token_type",
        "expires_at",
        "email",
        "issuer",
    }
    assert all(creds[k] for k in ("access_token", "refresh_token", "id_token"))
    assert creds["token_type"] == "Bearer"
    assert creds["email"] == USER and creds["issuer"] == idp.issuer
    assert 0 < creds["expires_at"] - time.time() <= 3600


def test_the_credential_access_token_works_at_userinfo(
    signed_in: LoginRun, idp: Idp, http: httpx.Client
) -> None:
    creds = json.loads(signed_in.out.read_text())
    answer = userinfo(http, idp, creds["access_token"])
    assert answer.status_code == 200
    info = answer.json()
    assert info["email"] == USER and info["email_verified"] is True and info["sub"]


def test_the_id_token_verifies_against_jwks(
    signed_in: LoginRun, idp: Idp, http: httpx.Client
) -> None:
    creds = json.loads(signed_in.out.read_text())
    keys = KeySet.import_key_set(http.get(idp.url("/jwks")).json())
    token = jwt.decode(creds["id_token"], keys, algorithms=["RS256"])
    assert token.header["alg"] == "RS256" and token.header["kid"] == keys.keys[0].kid
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": idp.issuer},
        aud={"essential": True, "value": CLIENT_ID},
        sub={"essential": True, "value": userinfo(http, idp, creds["access_token"]).json()["sub"]},
        exp={"essential": True},
        nonce={"essential": True},
    ).validate(token.claims)
    assert token.claims["email"] == USER
    with pytest.raises(InvalidClaimError):
        jwt.JWTClaimsRegistry(aud={"essential": True, "value": "another-client"}).validate(
            token.claims
        )
    header, payload, signature = creds["id_token"].split(".")
    forged = f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    with pytest.raises(BadSignatureError):
        jwt.decode(forged, keys, algorithms=["RS256"])


def test_no_secret_in_demo_login_output_or_the_provider_log(signed_in: LoginRun, idp: Idp) -> None:
    creds = json.loads(signed_in.out.read_text())
    secret_values = (PASSWORD, creds["access_token"], creds["refresh_token"], creds["id_token"])
    assert_hidden(signed_in.stdout + signed_in.stderr, *secret_values)
    assert_hidden(idp.log.text, *secret_values)
    assert "code=" not in idp.log.text and "code_challenge" not in idp.log.text


def test_demo_login_fails_on_a_forged_state(idp: Idp, tmp_path: Path) -> None:
    run = run_demo_login(idp.issuer, tmp_path, "forge-state")
    assert run.returncode == 1
    assert run.stderr == "demo-login: error: the callback's state does not match this login\n"
    assert "Login successful" not in run.stdout
    assert not run.out.exists()
    assert run.browser is not None and run.browser["callback"][0] == 400
    assert "Sign-in failed" in run.browser["callback"][1]


def test_demo_login_gives_up_at_its_deadline(idp: Idp, tmp_path: Path) -> None:
    run = run_demo_login(idp.issuer, tmp_path, None, "--timeout", "0.5")
    assert run.returncode == 1
    assert run.stderr == "demo-login: error: no sign-in within 0.5s\n"
    assert not run.out.exists()


def test_demo_login_reports_an_unreachable_issuer(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, now closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = run_demo_login(f"http://127.0.0.1:{port}", tmp_path, None)
    assert run.returncode == 1
    assert run.stderr.startswith(f"demo-login: error: cannot reach http://127.0.0.1:{port}/")
    assert len(run.stderr.splitlines()) == 1


# --- python -m hearth.demo.idp ------------------------------------------------------------


class IdpProcess:
    """`python -m hearth.demo.idp` in its own process, and every line it printed."""

    def __init__(self) -> None:
        env = {**os.environ, "HEARTH_DEMO_IDP_PASSWORD": PASSWORD}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hearth.demo.idp",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--user",
                USER,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self) -> tuple[str, str]:
        """The readiness line's listening URL and issuer."""
        deadline = time.monotonic() + START_TIMEOUT
        while (line := self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))) is not None:
            self.output.append(line)
            pattern = r"hearth-demo-idp: listening on (http://127\.0\.0\.1:\d+) issuer=(\S+)\n"
            if m := re.fullmatch(pattern, line):
                return m.group(1), m.group(2)
        raise AssertionError(f"the provider exited before listening: {''.join(self.output)}")

    def terminate(self) -> int:
        """SIGTERM to this process (by its PID); its exit status, once all output is read."""
        self.proc.send_signal(signal.SIGTERM)
        returncode = self.proc.wait(timeout=15)
        while (line := self.lines.get(timeout=15)) is not None:
            self.output.append(line)
        return returncode

    def close(self) -> None:
        """Kill this process if a failed test left it running, and close its pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.reader.join(timeout=15)  # it ends at the pipe's EOF
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def test_module_entry_point_serves_until_sigterm(tmp_path: Path, http: httpx.Client) -> None:
    idp_process = IdpProcess()
    try:
        url, issuer = idp_process.wait_ready()
        assert issuer == url
        assert PASSWORD not in " ".join(idp_process.proc.args)
        doc = http.get(f"{url}/.well-known/openid-configuration").json()
        assert doc["issuer"] == issuer
        run = run_demo_login(issuer, tmp_path)
        assert run.returncode == 0, run.stderr
        assert run.stdout.endswith(f"Login successful: {USER}\n")
        returncode = idp_process.terminate()
    finally:
        idp_process.close()
    assert returncode == 0
    output = "".join(idp_process.output)
    assert output.endswith("hearth-demo-idp: stopped\n")
    assert "hearth-demo-idp: POST /token 200\n" in output
    creds = json.loads(run.out.read_text())
    assert_hidden(
        output, PASSWORD, creds["access_token"], creds["refresh_token"], creds["id_token"]
    )
    assert "code=" not in output and "Traceback" not in output
