"""The Anthropic stand-in speaks Claude Code's contract (docs/contracts/claude_code.md) and
checks what the real services check, reached through the fake internet as a CLI in a VM
would reach it (the controller's namespace, the stand-in's names and test CA)."""

from __future__ import annotations

import json
import os

import pytest

from hearth.demo.sandbox import sandbox
from tests.fake_internet import fake_internet
from tests.standins.anthropic import CLIENT_ID
from tests.standins.oauth_client import Caller, exchange, sign_in

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("standin")
    with sandbox() as controller, fake_internet(controller, tmp / "inet", standins=True) as inet:
        ca = tmp / "ca.pem"
        ca.write_bytes(inet.ca.pem)

        yield Caller(controller, ca)


def test_a_sign_in_gives_tokens_that_open_the_profile_and_messages(standin):
    auth = sign_in(standin)
    ((status, _, body),) = standin(exchange(auth))
    tokens = json.loads(body)
    assert status == 200 and "user:inference" in tokens["scope"]
    assert tokens["account"]["email_address"] == "tester@example.com"
    bearer = {
        "headers": {
            "Authorization": f"Bearer {tokens['access_token']}",
            "anthropic-beta": "oauth-2025-04-20",
        }
    }
    profile, stream, wrong = standin(
        ["GET", "https://api.anthropic.com/api/oauth/profile", dict(bearer)],
        [
            "POST",
            "https://api.anthropic.com/v1/messages",
            {**bearer, "json": {"model": "m", "stream": True, "messages": []}},
        ],
        [
            "GET",
            "https://api.anthropic.com/api/oauth/profile",
            {"headers": {"Authorization": "Bearer sk-ant-oat01-nope"}},
        ],
    )
    assert json.loads(profile[2])["account"]["email"] == "tester@example.com"
    assert profile[1]["request-id"].startswith("req_")
    assert stream[1]["content-type"].startswith("text/event-stream")
    assert "event: message_stop" in stream[2] and "stand-in" in stream[2]
    assert wrong[0] == 401 and "authentication_error" in wrong[2]


def test_the_code_is_checked_like_the_real_service_checks_it(standin):
    auth = sign_in(standin)
    (bad_verifier,) = standin(exchange(auth, code_verifier="w" * 43))
    assert bad_verifier[0] == 400 and "PKCE" in bad_verifier[2]
    auth = sign_in(standin)
    (wrong_redirect,) = standin(exchange(auth, redirect_uri="http://localhost:1/callback"))
    assert wrong_redirect[0] == 400
    auth = sign_in(standin)
    first, again = standin(exchange(auth), exchange(auth))
    assert first[0] == 200 and again[0] == 400  # a code works once
    (wrong_client,) = standin(exchange(sign_in(standin), client_id="someone-else"))
    assert wrong_client[0] == 401


def test_refresh_tokens_rotate_and_a_used_one_is_refused(standin):
    ((status, _, body),) = standin(exchange(sign_in(standin)))
    old = json.loads(body)["refresh_token"]

    def refresh(token: str) -> list:
        return [
            "POST",
            "https://platform.claude.com/v1/oauth/token",
            {
                "json": {
                    "grant_type": "refresh_token",
                    "refresh_token": token,
                    "client_id": CLIENT_ID,
                }
            },
        ]

    (ok, _, new), (reused, _, error) = standin(refresh(old), refresh(old))
    assert ok == 200 and json.loads(new)["refresh_token"] != old
    assert reused == 400 and json.loads(error)["error"] == "invalid_grant"
