"""The real CLIs, in a real browser VM, with no internet: the agent runs each provider's login,
captures the authorize URL it would send the user to, and opens Firefox on it. The URL must
name the provider's host and client id, a redirect to the VM's own loopback and, where the
CLI uses it, PKCE."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from hearth import providers
from hearth.demo.sandbox import inside
from hearth.guest.protocol import LoginStatus
from hearth.waiting import wait_for
from tests.e2e.conftest import Hearth, needs_image

pytestmark = pytest.mark.vm

# provider -> (authorize host, client id, redirect prefix, PKCE used)
EXPECTED = {
    "claude_code": (
        "claude.com",
        "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
        "http://localhost:",
        True,
    ),
    "codex": (
        "auth.openai.com",
        "app_EMoamEEZ73f0CkXaXp7hrann",
        "http://127.0.0.1:1455/auth/callback",
        True,
    ),
    "gemini_cli": (
        "accounts.google.com",
        "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com",
        "http://127.0.0.1:",
        False,
    ),
}


def test_each_real_cli_hands_firefox_its_authorize_url(hearth: Hearth):
    needs_image("browser")
    booted = hearth.json("vm", "boot", "--image", "browser")
    vms = hearth.manager()
    vm = vms.get(booted["id"])
    with inside(hearth.namespace), vms.agent(vm) as agent:
        for name, (host, client_id, redirect, pkce) in EXPECTED.items():
            agent.start_login(providers.get(name).to_agent({}))
            status = wait_for(
                lambda: _opened(agent.login_status()),
                timeout=300,
                what=f"{name}'s authorize URL in Firefox",
            )
            url = urlsplit(status.url)
            query = parse_qs(url.query)
            assert url.scheme == "https" and url.hostname == host, status.url
            assert query["client_id"] == [client_id]
            assert query["redirect_uri"][0].startswith(redirect)
            assert query["response_type"] == ["code"] and query["state"]
            if pkce:
                assert query["code_challenge_method"] == ["S256"] and query["code_challenge"]
            assert not status.exited, f"{name} exited before the sign-in"
            agent.cancel_login()
            wait_for(
                lambda: agent.login_status().exited, timeout=60, what=f"the {name} login to end"
            )
    hearth("vm", "rm", vm.id)


def _opened(status: LoginStatus) -> LoginStatus | None:
    if status.exited and not status.url:
        raise AssertionError(f"the login exited without a URL: {status.error}")
    firefox = status.firefox
    return status if status.url and firefox.opened and firefox.title else None
