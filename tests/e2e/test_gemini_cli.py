"""The real Gemini CLI against the Google stand-in (tests/standins/google.py), through
egress: a sign-in in a browser VM, its interactive TUI answered by the agent, approved
through the live view in Chromium; and in a user's CLI VM, with its access token expired, it
refreshes at start, checks the token, sets up Code Assist, routes the prompt and streams the
answer back as Server-Sent Events; the refreshed token file is stored as a new version."""

from __future__ import annotations

import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from hearth.core import runtime
from tests.e2e.browser_user import sign_in_with_standin
from tests.e2e.conftest import (
    IMAGES,
    assert_contract,
    assert_revocation_is_told,
    needs_image,
)
from tests.egress_rig import rig
from tests.fake_internet import STANDIN_ANSWER
from tests.standins.google import CLIENT_ID, CLIENT_SECRET, EMAIL
from tests.standins.oauth_client import Caller

pytestmark = [pytest.mark.vm, pytest.mark.netns]

USER = "ivan"
CREDS, ACCOUNTS = ".gemini/oauth_creds.json", ".gemini/google_accounts.json"
REDIRECT = "http://127.0.0.1:45289/oauth2callback"


def _tokens(call: Caller) -> dict:
    """Tokens from the stand-in's sign-in, done as the CLI's browser flow does it."""
    params = {
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "response_type": "code",
        "access_type": "offline",
        "scope": "openid",
        "state": "st",
    }
    _, approved = call(
        ["GET", "https://accounts.google.com/o/oauth2/v2/auth", {"params": params}],
        ["POST", "https://accounts.google.com/o/oauth2/approve", {"data": params}],
    )
    code = parse_qs(urlsplit(approved[1]["location"]).query)["code"][0]
    ((status, _, body),) = call(
        [
            "POST",
            "https://oauth2.googleapis.com/token",
            {
                "data": {
                    "grant_type": "authorization_code",
                    "code": code,
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "redirect_uri": REDIRECT,
                }
            },
        ]
    )
    assert status == 200, body
    return json.loads(body)


def test_a_prompt_refreshes_streams_and_the_new_token_is_stored(tmp_path):
    needs_image("cli")
    with rig(tmp_path, images=IMAGES, standins=True, trust_ca=True) as r:
        call = Caller(r.controller_ns, r.ca)
        tokens = _tokens(call)
        creds = {**tokens, "expiry_date": int((time.time() - 60) * 1000)}  # expired
        store = runtime.controller(r.settings).credentials
        store.put(
            USER,
            "gemini_cli",
            {
                CREDS: json.dumps(creds).encode(),
                ACCOUNTS: json.dumps({"active": EMAIL, "old": []}).encode(),
            },
            account_email=EMAIL,
        )

        events = r.prompt(USER, "gemini_cli", "Say hello")
        kinds = [kind for kind, _, _ in events]
        assert kinds[0] == "connected" and kinds[-1] == "done", events
        done = events[-1][1]
        text = "".join(data["data"] for kind, data, _ in events if kind == "output")
        assert done["exit_code"] == 0, events
        answer = "".join(
            json.loads(line).get("content", "")
            for line in text.splitlines()
            if line.startswith("{") and '"role":"assistant"' in line
        )
        assert answer == STANDIN_ANSWER, text
        assert done["credentials"] == "updated"
        stored = json.loads(store.files(USER, "gemini_cli")[CREDS])
        assert stored["access_token"] != tokens["access_token"]
        assert stored["refresh_token"] == tokens["refresh_token"]  # Google's do not rotate
        assert stored["expiry_date"] > time.time() * 1000
        assert store.info(USER, "gemini_cli").version == 2
        # Gemini CLI's status run asks Google itself (tokeninfo, after a refresh if due).
        assert_revocation_is_told(
            r,
            call,
            USER,
            "gemini_cli",
            "https://oauth2.googleapis.com",
            "Manual authorization is required",
            validate_refusal="Manual authorization is required",
        )
        r.assert_nowhere(tokens["access_token"], tokens["refresh_token"], stored["access_token"])
        assert_contract(r, "gemini_cli", ("prompt", "refresh"))
        r.hearth("vm", "rm", "--all")


def test_a_sign_in_through_the_live_view_stores_the_account(tmp_path):
    needs_image("browser")
    with rig(tmp_path, images=IMAGES, browsers=True, standins=True, trust_ca=True) as r:
        session = sign_in_with_standin(r, USER, "gemini_cli")
        assert session["status"] == "completed", session
        credentials = r.api.get(
            f"/api/auth/session/{session['session_id']}/credentials/status"
        ).json()
        assert credentials["status"] == "ready"
        assert credentials["account_email"] == EMAIL
        files = runtime.controller(r.settings).credentials.files(USER, "gemini_cli")
        creds = json.loads(files[CREDS])
        assert json.loads(files[ACCOUNTS])["active"] == EMAIL
        assert creds["refresh_token"] and creds["expiry_date"] > time.time() * 1000
        # The CLI's callback sent the VM's Firefox on to its success page.
        recorded = [json.loads(line) for line in r.inet.requests("google").read_text().splitlines()]
        assert {
            "host": "developers.google.com",
            "method": "GET",
            "caller": "browser",
            "path": "/gemini-code-assist/auth_success_gemini",
            "fields": [],
            "status": 200,
        } in recorded, recorded
        r.assert_nowhere(creds["access_token"], creds["refresh_token"])
        assert_contract(r, "gemini_cli", ("login",))
