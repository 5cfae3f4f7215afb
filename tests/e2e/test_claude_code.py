"""The real Claude Code against the Anthropic stand-in (tests/standins/anthropic.py), through
egress: a sign-in in a browser VM, approved through the live view in Chromium; and in a
user's CLI VM a prompt streamed back as Server-Sent Events, a refresh of an expired token
stored as a new version, and the old refresh token refused (one live copy)."""

from __future__ import annotations

import json
import time

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
from tests.standins.oauth_client import Caller, exchange, sign_in

pytestmark = [pytest.mark.vm, pytest.mark.netns]

USER = "grace"
CREDENTIALS, ACCOUNT = ".claude/.credentials.json", ".claude.json"


def _files(tokens: dict, expires_at: float) -> dict[str, bytes]:
    """The files `claude auth login` writes (docs/contracts/claude_code.md, 1.4)."""
    oauth = {
        "accessToken": tokens["access_token"],
        "refreshToken": tokens["refresh_token"],
        "expiresAt": int(expires_at * 1000),
        "scopes": tokens["scope"].split(),
        "subscriptionType": "max",
    }
    account = {
        "accountUuid": tokens["account"]["uuid"],
        "emailAddress": tokens["account"]["email_address"],
        "organizationUuid": tokens["organization"]["uuid"],
    }
    return {
        CREDENTIALS: json.dumps({"claudeAiOauth": oauth}).encode(),
        ACCOUNT: json.dumps({"oauthAccount": account, "hasCompletedOnboarding": True}).encode(),
    }


def test_a_prompt_streams_refreshes_and_leaves_one_live_copy(tmp_path):
    needs_image("cli")
    with rig(tmp_path, images=IMAGES, standins=True, trust_ca=True) as r:
        call = Caller(r.controller_ns, r.ca)
        ((status, _, body),) = call(exchange(sign_in(call)))
        assert status == 200, body
        tokens = json.loads(body)
        store = runtime.controller(r.settings).credentials
        # Stored with the access token already expired: the CLI must refresh first.
        store.put(
            USER,
            "claude_code",
            _files(tokens, time.time() - 60),
            account_email=tokens["account"]["email_address"],
        )

        events = r.prompt(USER, "claude_code", "Say hello")
        kinds = [kind for kind, _, _ in events]
        assert kinds[0] == "connected" and kinds[-1] == "done", events
        done = events[-1][1]
        assert done["exit_code"] == 0 and done["status"] == "completed", events
        outputs = [(data, at) for kind, data, at in events if kind == "output"]
        text = "".join(data["data"] for data, _ in outputs)
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert lines[-1]["type"] == "result" and lines[-1]["result"] == STANDIN_ANSWER
        assert outputs[0][1] < events[-1][2]  # the stream came before the end
        assert done["credentials"] == "updated"

        stored = json.loads(store.files(USER, "claude_code")[CREDENTIALS])["claudeAiOauth"]
        assert store.info(USER, "claude_code").version == 2
        assert stored["refreshToken"] != tokens["refresh_token"]
        # The old refresh token is dead at the provider: only the stored copy lives.
        ((reused, _, error),) = call(
            [
                "POST",
                "https://platform.claude.com/v1/oauth/token",
                {
                    "json": {
                        "grant_type": "refresh_token",
                        "refresh_token": tokens["refresh_token"],
                        "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
                    }
                },
            ]
        )
        assert reused == 400 and json.loads(error)["error"] == "invalid_grant"

        again = r.prompt(USER, "claude_code", "Say hello again")
        assert again[-1][1]["exit_code"] == 0 and again[-1][1]["credentials"] == "unchanged"

        # The user revokes the sign-in at the provider: `claude auth status` still reads a
        # signed-in file, but validate asks the provider, and the app is told.
        assert_revocation_is_told(
            r, call, USER, "claude_code", "https://platform.claude.com", "Failed to authenticate"
        )
        r.assert_nowhere(tokens["access_token"], tokens["refresh_token"], stored["refreshToken"])
        assert_contract(r, "claude_code", ("prompt", "refresh"))
        r.hearth("vm", "rm", "--all")


def test_a_sign_in_through_the_live_view_stores_the_account(tmp_path):
    needs_image("browser")
    with rig(tmp_path, images=IMAGES, browsers=True, standins=True, trust_ca=True) as r:
        session = sign_in_with_standin(r, USER, "claude_code")
        assert session["status"] == "completed", session
        credentials = r.api.get(
            f"/api/auth/session/{session['session_id']}/credentials/status"
        ).json()
        assert credentials["status"] == "ready"
        assert credentials["account_email"] == "tester@example.com"
        store = runtime.controller(r.settings).credentials
        files = store.files(USER, "claude_code")
        oauth = json.loads(files[CREDENTIALS])["claudeAiOauth"]
        assert oauth["subscriptionType"] == "max" and oauth["refreshToken"]
        r.assert_nowhere(oauth["accessToken"], oauth["refreshToken"])
        assert_contract(r, "claude_code", ("login",))
