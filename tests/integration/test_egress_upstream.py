"""Egress through the operator's upstream proxy: tinyproxy (HTTP CONNECT) and microsocks
(SOCKS5) in the fake internet, each with a password and an exit address of its own."""

from __future__ import annotations

import json
import os

import pytest

from hearth.store.models import AuthSession
from hearth.waiting import wait_for
from tests.egress_rig import HTTPS_GET, rig, run_json
from tests.fake_internet import CONTROLLER_SIDE, HTTP_PROXY, SOCKS_PROXY, WEB

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]


def _secret_nowhere(r, secret: str) -> None:
    """The proxy password is in no log, no audit row and nowhere in the database file."""
    r.assert_nowhere(secret)
    for conn in r.audit_all():
        assert secret not in json.dumps([conn.reason, conn.upstream])


def test_through_an_http_connect_upstream_the_sites_see_the_proxy(tmp_path):
    with rig(tmp_path, lambda inet: {"HEARTH_UPSTREAM_PROXY": inet.http_proxy}) as r:
        vm = r.browser_vm("claude_code")
        got = run_json(vm, HTTPS_GET, address="claude.com", name="claude.com", ca=str(r.ca))
        assert got["ok"] and "hello from claude.com" in got["body"], got
        assert f"{HTTP_PROXY} claude.com https" in r.inet.web_log()
        assert f"{CONTROLLER_SIDE} claude.com" not in r.inet.web_log()
        assert f"CONNECT {WEB}:443" in r.inet.proxy_log()
        row = wait_for(lambda: [c for c in r.audit(vm) if c.verdict == "allowed"], 10, "the audit")[
            0
        ]
        assert row.upstream == f"http://{HTTP_PROXY}:3128"
        _secret_nowhere(r, r.inet.proxy_password)


def test_per_provider_upstreams_socks5_for_one_direct_for_another(tmp_path):
    with rig(
        tmp_path,
        lambda inet: {"HEARTH_UPSTREAM_PROXIES": json.dumps({"claude_code": inet.socks_proxy})},
    ) as r:
        ca = str(r.ca)
        claude, codex = r.browser_vm("claude_code"), r.browser_vm("codex")
        assert run_json(claude, HTTPS_GET, address="claude.com", name="claude.com", ca=ca)["ok"]
        assert f"{SOCKS_PROXY} claude.com https" in r.inet.web_log()
        got = run_json(codex, HTTPS_GET, address="example.org", name="example.org", ca=ca)
        assert not got["ok"]  # example.org is not codex's
        rows = wait_for(
            lambda: [c for c in r.audit(claude) if c.verdict == "allowed"], 10, "the audit"
        )
        assert rows[0].upstream == f"socks5://{SOCKS_PROXY}:1080"
        _secret_nowhere(r, r.inet.proxy_password)


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_a_wrong_upstream_password_fails_the_sign_in_with_a_clear_error(tmp_path, scheme):
    def wrong(inet) -> dict[str, str]:
        url = inet.http_proxy if scheme == "http" else inet.socks_proxy
        return {"HEARTH_UPSTREAM_PROXY": url.replace(inet.proxy_password, "not-the-password")}

    with rig(tmp_path, wrong) as r:
        vm = r.browser_vm("claude_code")
        assert not run_json(vm, HTTPS_GET, address="claude.com", name="claude.com", ca=str(r.ca))[
            "ok"
        ]
        with r.db.session() as s:
            session_id = s.query(AuthSession).filter_by(vm_id=vm.vm_id).one().id

        def failed() -> AuthSession | None:
            with r.db.session() as s:
                session = s.get(AuthSession, session_id)
            return session if session.status == "failed" else None

        session = wait_for(failed, 10, "the session to fail")
        assert "egress: the upstream proxy" in session.error
        assert "refused Hearth's credentials" in session.error
        assert "not-the-password" not in session.error
        _secret_nowhere(r, "not-the-password")
        _secret_nowhere(r, r.inet.proxy_password)
