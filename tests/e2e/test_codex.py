"""The real Codex in a user's CLI VM against the OpenAI stand-in (tests/standins/openai.py),
through egress: a prompt streams back as Server-Sent Events, an access token about to expire
is refreshed, the rotated tokens are stored as a new version, and the old refresh token is
refused (one live copy)."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from datetime import UTC, datetime
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
from tests.standins.oauth_client import Caller
from tests.standins.openai import ACCOUNT_ID, CLIENT_ID, jwt

pytestmark = [pytest.mark.vm, pytest.mark.netns]

USER = "heidi"
AUTH = ".codex/auth.json"
TOKEN_URL = "https://auth.openai.com/oauth/token"
REDIRECT = "http://127.0.0.1:1455/auth/callback"


def _tokens(call: Caller) -> dict:
    """Tokens from the stand-in's sign-in, done as `codex login` does it (PKCE, form)."""
    verifier = "v" * 64
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "st",
    }
    _, approved = call(
        ["GET", "https://auth.openai.com/oauth/authorize", {"params": params}],
        ["POST", "https://auth.openai.com/oauth/approve", {"data": params}],
    )
    code = parse_qs(urlsplit(approved[1]["location"]).query)["code"][0]
    ((status, _, body),) = call(
        [
            "POST",
            TOKEN_URL,
            {
                "data": {
                    "grant_type": "authorization_code",
                    "client_id": CLIENT_ID,
                    "code": code,
                    "redirect_uri": REDIRECT,
                    "code_verifier": verifier,
                }
            },
        ]
    )
    assert status == 200, body
    return json.loads(body)


def test_a_prompt_streams_refreshes_and_leaves_one_live_copy(tmp_path):
    needs_image("cli")
    with rig(tmp_path, images=IMAGES, standins=True, trust_ca=True) as r:
        call = Caller(r.controller_ns, r.ca)
        tokens = _tokens(call)
        # The access token the stand-in issued, as if it were about to expire: a JWT with
        # the same claims but an exp a minute away (the stand-in knows it by its value, so
        # the refresh is what makes the next request work).
        payload = tokens["access_token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        expiring = jwt({**claims, "exp": int(time.time()) + 60})
        auth = {
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": None,
            "tokens": {
                "id_token": tokens["id_token"],
                "access_token": expiring,
                "refresh_token": tokens["refresh_token"],
                "account_id": ACCOUNT_ID,
            },
            "last_refresh": datetime.now(UTC).isoformat(),
        }
        store = runtime.controller(r.settings).credentials
        store.put(
            USER, "codex", {AUTH: json.dumps(auth).encode()}, account_email="tester@example.com"
        )

        events = r.prompt(USER, "codex", "Say hello")
        kinds = [kind for kind, _, _ in events]
        assert kinds[0] == "connected" and kinds[-1] == "done", events
        done = events[-1][1]
        text = "".join(data["data"] for kind, data, _ in events if kind == "output")
        assert done["exit_code"] == 0 and STANDIN_ANSWER in text, events
        assert done["credentials"] == "updated"
        stored = json.loads(store.files(USER, "codex")[AUTH])["tokens"]
        assert store.info(USER, "codex").version == 2
        assert stored["refresh_token"] != tokens["refresh_token"]
        ((reused, _, error),) = call(
            [
                "POST",
                TOKEN_URL,
                {
                    "json": {
                        "client_id": CLIENT_ID,
                        "grant_type": "refresh_token",
                        "refresh_token": tokens["refresh_token"],
                    }
                },
            ]
        )
        assert reused == 401 and json.loads(error)["error"]["code"] == "refresh_token_reused"

        again = r.prompt(USER, "codex", "Say hello again")
        assert again[-1][1]["exit_code"] == 0 and again[-1][1]["credentials"] == "unchanged"
        # `codex login status` reads auth.json only; validate asks the provider.
        assert_revocation_is_told(
            r,
            call,
            USER,
            "codex",
            "https://auth.openai.com",
            "Your access token could not be refreshed",
        )
        r.assert_nowhere(tokens["refresh_token"], stored["refresh_token"])
        assert_contract(r, "codex", ("prompt", "refresh"))
        r.hearth("vm", "rm", "--all")


def test_a_sign_in_through_the_live_view_stores_the_account(tmp_path):
    needs_image("browser")
    with rig(tmp_path, images=IMAGES, browsers=True, standins=True, trust_ca=True) as r:
        session = sign_in_with_standin(r, USER, "codex")
        assert session["status"] == "completed", session
        credentials = r.api.get(
            f"/api/auth/session/{session['session_id']}/credentials/status"
        ).json()
        assert credentials["status"] == "ready"
        assert credentials["account_email"] == "tester@example.com"
        auth = json.loads(runtime.controller(r.settings).credentials.files(USER, "codex")[AUTH])
        assert auth["auth_mode"] == "chatgpt" and auth["tokens"]["account_id"] == ACCOUNT_ID
        r.assert_nowhere(auth["tokens"]["refresh_token"], auth["tokens"]["access_token"])
        assert_contract(r, "codex", ("login",))
