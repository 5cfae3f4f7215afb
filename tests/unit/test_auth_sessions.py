"""Auth sessions (hearth.core.auth_sessions) on the core rig: the real controller, each
browser VM's process the real guest agent, the demo provider's real login against the real
demo identity provider on 127.0.0.1.

Covered: the happy path (the timeline, the authorize URL the VM's Firefox got, the stored
account, the new credentials reaching an awake CLI VM), the live view and its token, cancel,
supersede, both ways a session expires, the failures (a VM that cannot boot, a refused or
denied sign-in, a login that cannot reach its provider, an unknown provider), recover()
after a controller's death, egress_failed, and the notifier. Whatever the end, a session's
browser VM must be gone afterwards (record destroyed, no process, no TAP, no lease, no
directory) and the login in it stopped: it held a sign-in and is never reused.
"""

from __future__ import annotations

import html
import re
import socket
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from sqlalchemy import event, func, select

from hearth import providers
from hearth.core import machine
from hearth.core.auth_sessions import Notifier, Recovery, token_hash
from hearth.core.sign_in_vm import COLD_BOOT, TERMINAL
from hearth.guest.ports import VNC_PORT
from hearth.providers import UnknownProviderError
from hearth.store.models import AuthSession, AuthSessionEvent, AuthSessionStatus, VmState
from hearth.vmm.base import running_pid
from hearth.waiting import wait_for
from tests.core_rig import USER, Rig, api_of, build_rig, opened_urls

WAIT = 15.0  # seconds any one step may take on a loaded machine; they take under two


# -- helpers -------------------------------------------------------------------------------


def wait_status(rig: Rig, session_id: str, status: str) -> AuthSession:
    def reached() -> AuthSession | None:
        session = rig.controller.sessions.get(session_id)
        if session.status != status and session.status in TERMINAL:
            raise AssertionError(f"session ended {session.status} ({session.error}), not {status}")
        return session if session.status == status else None

    return wait_for(reached, WAIT, f"session {session_id} to be {status}")


def wait_ended(rig: Rig, session_id: str) -> AuthSession:
    def ended() -> AuthSession | None:
        session = rig.controller.sessions.get(session_id)
        return session if session.status in TERMINAL else None

    return wait_for(ended, WAIT, f"session {session_id} to end")


def awaiting_user(rig: Rig, user_id: str = "u1", provider: str = "demo") -> tuple[AuthSession, str]:
    """A session started and showing the authorize page in its VM; it and its token."""
    session, token = rig.controller.sessions.start(user_id, provider)
    return wait_status(rig, session.id, AuthSessionStatus.awaiting_user), token


def wait_vm_destroyed(rig: Rig, vm_id: str) -> None:
    """The session's thread destroys its VM last of all: wait for the record to say so."""
    wait_for(lambda: rig.vms.get(vm_id).state == VmState.destroyed, WAIT, f"VM {vm_id} destroyed")


def join_session_thread(session_id: str) -> None:
    """Wait for the session's own thread to finish (where no VM record tells it)."""
    for thread in threading.enumerate():
        if thread.name == f"session-{session_id}":
            thread.join(WAIT)
            assert not thread.is_alive(), f"session {session_id}'s thread still runs"


def assert_vm_gone(rig: Rig, vm_id: str) -> None:
    vm = rig.vms.get(vm_id)
    assert vm.state == VmState.destroyed
    assert running_pid(rig.vms.spec(vm)) is None, "the VM's process still runs"
    assert vm.tap not in rig.network.taps(), "the VM's TAP is still plugged"
    assert vm_id not in rig.vms.pool.leases(), "the VM still holds its address"
    assert not rig.vms.workdir(vm_id).exists(), "the VM's directory (its disk) is still there"


def statuses(rig: Rig, session_id: str) -> list[str]:
    return [event.status for event in rig.controller.sessions.timeline(session_id)]


def callback(oauth_url: str) -> tuple[str, str]:
    """The login's loopback redirect URI and the state it expects, from the authorize URL."""
    query = parse_qs(urlsplit(oauth_url).query)
    return query["redirect_uri"][0], query["state"][0]


def listening(url: str) -> bool:
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=2).close()
    except OSError:
        return False
    return True


def submit_sign_in(authorize_url: str, password: str) -> httpx.Response:
    """Post the IdP's sign-in form as the user would, without following its answer."""
    with httpx.Client(trust_env=False, timeout=15) as http:
        page = http.get(authorize_url)
        page.raise_for_status()
        action = re.search(r'<form [^>]*action="([^"]*)"', page.text).group(1)
        return http.post(
            urljoin(authorize_url, html.unescape(action)),
            data={"username": USER, "password": password},
        )


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def left_behind(rig: Rig, user_id: str, status: str, vm_id: str | None = None) -> str:
    """A session as a controller that died mid-sign-in left it: its rows, and no thread."""
    session_id = f"dead{status}"[:32]
    with rig.controller.db.session() as s:
        s.add(
            AuthSession(
                id=session_id,
                user_id=user_id,
                provider="demo",
                status=status,
                vm_id=vm_id,
                live_token_hash=token_hash("token"),
                expires_at=datetime.now(UTC) + timedelta(minutes=10),
            )
        )
        s.add(AuthSessionEvent(session_id=session_id, status=status))
        s.commit()
    return session_id


# -- the happy path ------------------------------------------------------------------------


def test_sign_in_runs_the_whole_timeline_stores_the_account_and_destroys_the_vm(rig):
    sessions = rig.controller.sessions
    started, _ = sessions.start("u1", "demo")
    assert started.status in (AuthSessionStatus.started, AuthSessionStatus.vm_booting)
    assert started.oauth_url is None

    session = wait_status(rig, started.id, AuthSessionStatus.awaiting_user)
    assert session.oauth_url.startswith(f"{rig.idp.issuer}/authorize?")
    assert opened_urls(rig.vms, session.vm_id) == [session.oauth_url]
    assert rig.vms.get(session.vm_id).image == "browser"
    assert rig.controller.credentials.info("u1", "demo") is None  # nothing before the user

    answer = rig.approve(session.oauth_url)
    assert answer.status_code == 200, answer.text  # the login's callback page in the VM
    done = wait_ended(rig, session.id)
    wait_vm_destroyed(rig, session.vm_id)

    assert done.status == AuthSessionStatus.completed
    assert done.error is None
    timeline = sessions.timeline(session.id)
    assert [(e.status, e.detail) for e in timeline] == [
        (AuthSessionStatus.started, None),
        (AuthSessionStatus.vm_booting, COLD_BOOT),  # the pool is off here
        (AuthSessionStatus.awaiting_user, None),
        (AuthSessionStatus.completed, f"credentials stored for {USER}"),
    ]
    assert [e.at for e in timeline] == sorted(e.at for e in timeline)
    assert sessions.notifier.version(session.id) == len(timeline)  # one bump per transition
    info = rig.controller.credentials.info("u1", "demo")
    assert (info.account_email, info.version) == (USER, 1)
    assert (
        USER.encode()
        in rig.controller.credentials.files("u1", "demo")[".hearth-demo/credentials.json"]
    )
    assert_vm_gone(rig, session.vm_id)
    # The user had no CLI VM: storing the credentials (on_stored) makes none, leases none.
    assert rig.vms.list() == []
    assert rig.controller.credentials.lease("u1", "demo") is None


def test_stored_credentials_reach_the_users_awake_cli_vm(rig):
    cli = rig.vms.create(rig.settings.cli_image, user_id="u1")
    session, _ = awaiting_user(rig)
    rig.approve(session.oauth_url)
    assert wait_ended(rig, session.id).status == AuthSessionStatus.completed
    wait_vm_destroyed(rig, session.vm_id)  # on_stored runs before the browser VM goes

    lease = rig.controller.credentials.lease("u1", "demo")
    assert (lease.vm_id, lease.version) == (cli.id, 1)
    with rig.vms.agent(cli) as agent:
        in_vm, digest = agent.read_credentials("demo")
    assert digest == lease.digest
    stored = rig.controller.credentials.files("u1", "demo")
    assert in_vm[".hearth-demo/credentials.json"] == stored[".hearth-demo/credentials.json"]
    assert rig.vms.get(cli.id).state == VmState.ready  # the CLI VM stays; only the browser goes


# -- the live view -------------------------------------------------------------------------


def test_live_view_opens_the_vms_vnc_with_the_right_token_only_while_the_session_runs(rig):
    sessions = rig.controller.sessions
    started, token = sessions.start("u1", "demo")
    # Asked at once: the VM's agent takes a tenth of a second or more to answer.
    early = sessions.live_view(started.id, token)
    assert early is not None and early.target is None
    assert early.status in (AuthSessionStatus.started, AuthSessionStatus.vm_booting)

    session = wait_status(rig, started.id, AuthSessionStatus.awaiting_user)
    assert sessions.token_valid(session.id, token)
    assert not sessions.token_valid(session.id, token + "x")
    assert not sessions.token_valid("no-such-session", token)
    assert sessions.live_view(session.id, "not-the-token") is None

    view = sessions.live_view(session.id, token)
    vm = rig.vms.get(session.vm_id)
    password = machine.seed_of(rig.settings, vm.id)["vnc_password"]
    assert (view.provider, view.status) == ("demo", AuthSessionStatus.awaiting_user)
    assert (view.target.host, view.target.port, view.target.password) == (
        vm.ip,
        VNC_PORT,
        password,
    )
    assert len(password) == 8  # VNC's authentication reads eight characters
    assert password not in repr(view)

    rig.approve(session.oauth_url)
    assert wait_ended(rig, session.id).status == AuthSessionStatus.completed
    assert not sessions.token_valid(session.id, token)
    assert sessions.live_view(session.id, token) is None
    # The token still names the ended session (its status stream tells how it ended).
    assert sessions.token_session(session.id, token).status == AuthSessionStatus.completed
    assert sessions.token_session(session.id, token + "x") is None
    wait_vm_destroyed(rig, session.vm_id)


# -- cancel --------------------------------------------------------------------------------


def test_cancel_while_awaiting_the_user_ends_it_and_destroys_the_vm_and_its_login(rig):
    sessions = rig.controller.sessions
    session, token = awaiting_user(rig)
    redirect_uri, _ = callback(session.oauth_url)
    assert listening(redirect_uri)  # the login in the VM waits for the browser
    seen = sessions.notifier.version(session.id)
    woke: list[int] = []
    watcher = threading.Thread(
        target=lambda: woke.append(sessions.notifier.wait(session.id, seen, WAIT))
    )
    watcher.start()

    cancelled = sessions.cancel(session.id)
    watcher.join(WAIT)

    assert woke == [seen + 1]  # an event stream waiting on the session hears the cancel
    assert cancelled.status == AuthSessionStatus.cancelled
    assert cancelled.error is None
    assert sessions.timeline(session.id)[-1].detail == "cancelled through the API"
    assert not sessions.token_valid(session.id, token)
    wait_vm_destroyed(rig, session.vm_id)
    assert_vm_gone(rig, session.vm_id)
    assert not listening(redirect_uri), "the login in the VM still waits for the browser"
    assert statuses(rig, session.id) == ["started", "vm_booting", "awaiting_user", "cancelled"]
    assert rig.controller.credentials.info("u1", "demo") is None


def test_cancel_before_the_authorize_page_destroys_the_vm_it_was_booting(rig):
    sessions = rig.controller.sessions
    started, _ = sessions.start("u1", "demo")
    # Cancelled within a tick of vm_booting: the authorize page is most of a second away.
    wait_status(rig, started.id, AuthSessionStatus.vm_booting)
    assert sessions.cancel(started.id).status == AuthSessionStatus.cancelled
    join_session_thread(started.id)

    session = sessions.get(started.id)
    assert (session.status, session.oauth_url) == (AuthSessionStatus.cancelled, None)
    assert statuses(rig, session.id) == ["started", "vm_booting", "cancelled"]
    assert [vm.id for vm in rig.vms.list(include_destroyed=True)] == [session.vm_id]
    assert_vm_gone(rig, session.vm_id)


def test_a_cancel_that_lands_inside_the_sessions_own_step_is_not_undone(rig):
    sessions = rig.controller.sessions
    paused, resume = threading.Event(), threading.Event()

    def hold_the_first_step(conn, cursor, statement, parameters, context, executemany):
        """Hold the session's thread right before it writes vm_booting: a deterministic
        stand-in for the scheduler switching threads there."""
        if (
            threading.current_thread().name.startswith("session-")
            and statement.startswith("UPDATE auth_sessions")
            and AuthSessionStatus.vm_booting in parameters
            and not paused.is_set()
        ):
            paused.set()
            resume.wait(WAIT)

    engine = rig.controller.db.engine
    event.listen(engine, "before_cursor_execute", hold_the_first_step)
    session = None
    try:
        session, _ = sessions.start("u1", "demo")
        assert paused.wait(WAIT), "the session's thread never wrote vm_booting"
        answers: list[AuthSession] = []
        canceller = threading.Thread(target=lambda: answers.append(sessions.cancel(session.id)))
        canceller.start()
        canceller.join(2)  # at once, unless the held step holds a lock the cancel waits on
        resume.set()
        canceller.join(WAIT)
        assert [a.status for a in answers] == [AuthSessionStatus.cancelled]  # as the API says

        # The thread either sees the cancel and ends, or runs on to wait for the user.
        def settled() -> bool:
            if sessions.get(session.id).status == AuthSessionStatus.awaiting_user:
                return True
            return not any(t.name == f"session-{session.id}" for t in threading.enumerate())

        wait_for(settled, WAIT, "the session's thread to end or to await the user")
        assert sessions.get(session.id).status == AuthSessionStatus.cancelled
        assert statuses(rig, session.id)[-1] == AuthSessionStatus.cancelled
    finally:
        resume.set()
        if session is not None:
            sessions.cancel(session.id)  # a session that ran on, so the teardown is quiet
            join_session_thread(session.id)
        event.remove(engine, "before_cursor_execute", hold_the_first_step)


def test_an_ended_session_stays_as_it_ended(rig):
    sessions = rig.controller.sessions
    session, _ = awaiting_user(rig)
    rig.approve(session.oauth_url)
    assert wait_ended(rig, session.id).status == AuthSessionStatus.completed
    wait_vm_destroyed(rig, session.vm_id)
    before = [(e.status, e.detail) for e in sessions.timeline(session.id)]
    version = sessions.notifier.version(session.id)

    assert sessions.cancel(session.id).status == AuthSessionStatus.completed
    sessions.egress_failed(session.id, "the upstream proxy refused us")
    assert sessions.expire_due() == []
    assert sessions.recover() == Recovery()

    after = sessions.get(session.id)
    assert (after.status, after.error) == (AuthSessionStatus.completed, None)
    assert [(e.status, e.detail) for e in sessions.timeline(session.id)] == before
    assert sessions.notifier.version(session.id) == version


# -- supersede -----------------------------------------------------------------------------


def test_a_second_sign_in_supersedes_the_first_and_only_it_completes(rig):
    sessions = rig.controller.sessions
    first, _ = awaiting_user(rig)
    first_callback, _ = callback(first.oauth_url)

    second, _ = sessions.start("u1", "demo")
    superseded = sessions.get(first.id)
    assert superseded.status == AuthSessionStatus.cancelled
    assert sessions.timeline(first.id)[-1].detail == f"superseded by session {second.id}"
    wait_vm_destroyed(rig, first.vm_id)
    assert_vm_gone(rig, first.vm_id)
    assert not listening(first_callback)

    second = wait_status(rig, second.id, AuthSessionStatus.awaiting_user)
    assert second.vm_id != first.vm_id
    rig.approve(second.oauth_url)
    assert wait_ended(rig, second.id).status == AuthSessionStatus.completed
    wait_vm_destroyed(rig, second.vm_id)
    assert statuses(rig, first.id) == ["started", "vm_booting", "awaiting_user", "cancelled"]
    assert rig.controller.credentials.info("u1", "demo").version == 1


def test_over_http_a_second_start_supersedes_the_first_and_a_cancel_ends_the_connect_page(rig):
    """The API's side of supersede and cancel, as an app and a person's browser see it."""
    with api_of(rig) as served:

        def start() -> dict:
            answer = served.client.post(
                "/api/auth/start", json={"user_id": "cy", "provider": "demo"}
            )
            assert answer.status_code == 202, answer.text
            return answer.json()

        first = start()
        second = start()
        superseded = served.client.get(f"/api/auth/session/{first['session_id']}").json()
        assert superseded["status"] == "cancelled"
        assert (
            superseded["timeline"][-1]["detail"] == f"superseded by session {second['session_id']}"
        )

        session = wait_status(rig, second["session_id"], AuthSessionStatus.awaiting_user)
        connect = second["connect_url"].replace(rig.settings.public_url, served.url)
        assert httpx.get(connect, trust_env=False).status_code == 200
        cancelled = served.client.post(f"/api/auth/session/{session.id}/cancel")
        assert cancelled.json()["status"] == "cancelled"
        assert httpx.get(connect, trust_env=False).status_code == 404

    for vm_id in (rig.controller.sessions.get(first["session_id"]).vm_id, session.vm_id):
        if vm_id is not None:  # superseded before its VM was recorded: none was made
            wait_vm_destroyed(rig, vm_id)
            assert_vm_gone(rig, vm_id)
    assert rig.vms.list() == []


def test_sign_ins_of_another_provider_or_another_user_are_not_superseded(rig, monkeypatch):
    monkeypatch.setitem(providers.SPECS, "demo2", replace(providers.SPECS["demo"], name="demo2"))
    sessions = rig.controller.sessions
    pairs = [("u1", "demo"), ("u1", "demo2"), ("u2", "demo")]
    started = [sessions.start(user_id, provider)[0] for user_id, provider in pairs]
    everyone = [wait_status(rig, s.id, AuthSessionStatus.awaiting_user) for s in started]

    # Three VMs side by side, each with a VNC password of its own.
    passwords = {machine.seed_of(rig.settings, s.vm_id)["vnc_password"] for s in everyone}
    assert len({s.vm_id for s in everyone}) == len(passwords) == 3
    for session in everyone:
        rig.approve(session.oauth_url)
    for session in everyone:
        assert wait_ended(rig, session.id).status == AuthSessionStatus.completed
        assert statuses(rig, session.id)[-1] == AuthSessionStatus.completed
    for session in everyone:
        wait_vm_destroyed(rig, session.vm_id)
    for user_id, provider in pairs:
        assert rig.controller.credentials.info(user_id, provider).account_email == USER


# -- expiry --------------------------------------------------------------------------------


def test_expire_due_ends_a_session_past_its_expiry_and_its_vm_goes(rig):
    sessions = rig.controller.sessions
    session, token = awaiting_user(rig)
    assert sessions.expire_due() == []  # not due yet: nothing changes
    assert sessions.get(session.id).status == AuthSessionStatus.awaiting_user

    rig.controller.db.update(
        AuthSession, session.id, expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    assert sessions.expire_due() == [session.id]

    expired = sessions.get(session.id)
    assert (expired.status, expired.error) == (AuthSessionStatus.expired, None)
    assert sessions.timeline(session.id)[-1].detail == "the session expired before sign-in finished"
    assert not sessions.token_valid(session.id, token)
    wait_vm_destroyed(rig, session.vm_id)
    assert_vm_gone(rig, session.vm_id)
    assert sessions.expire_due() == []


def test_a_session_never_approved_expires_by_its_own_wait_and_its_vm_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    with build_rig(tmp_path, monkeypatch, session_ttl=2.5) as rig:
        session, _ = awaiting_user(rig)
        expired = wait_ended(rig, session.id)  # no expire_due(): the session's thread alone
        wait_vm_destroyed(rig, session.vm_id)

        assert expired.status == AuthSessionStatus.expired
        assert [(e.status, e.detail) for e in rig.controller.sessions.timeline(session.id)][-1] == (
            AuthSessionStatus.expired,
            "expired waiting for the sign-in",
        )
        assert_vm_gone(rig, session.vm_id)
        assert rig.controller.credentials.info("u1", "demo") is None


# -- failure -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knob", "step", "cause"),
    [
        ({"failing": {"start"}}, "boot", "the VMM refused to start (injected)"),
        ({"dying_boots": 2}, "wait-for-agent", "the VMM process exited before the agent answered"),
    ],
    ids=["vmm-refuses-to-start", "guest-dies-on-both-boots"],
)
def test_a_browser_vm_that_cannot_boot_fails_the_session_naming_the_step(rig, knob, step, cause):
    for name, value in knob.items():
        setattr(rig.driver, name, value)
    session, token = rig.controller.sessions.start("u1", "demo")
    failed = wait_ended(rig, session.id)
    join_session_thread(session.id)

    assert failed.status == AuthSessionStatus.failed
    assert f"step {step!r} failed: {cause}" in failed.error
    assert statuses(rig, session.id) == ["started", "vm_booting", "failed"]
    assert rig.controller.sessions.timeline(session.id)[-1].detail == failed.error
    assert not rig.controller.sessions.token_valid(session.id, token)
    assert rig.controller.credentials.info("u1", "demo") is None


def test_a_browser_vm_that_cannot_boot_is_destroyed_all_the_same(rig):
    rig.driver.failing = {"start"}
    session, _ = rig.controller.sessions.start("u1", "demo")
    assert wait_ended(rig, session.id).status == AuthSessionStatus.failed
    join_session_thread(session.id)

    browsers = [vm for vm in rig.vms.list(include_destroyed=True) if vm.image == "browser"]
    assert len(browsers) == 1
    assert_vm_gone(rig, browsers[0].id)


def test_a_wrong_password_is_refused_on_the_form_and_the_session_waits_for_a_retry(rig):
    session, _ = awaiting_user(rig)

    refused = submit_sign_in(session.oauth_url, password="wrong")
    # The IdP shows its form again with the error, and sends nothing to the login.
    assert refused.status_code == 200
    assert "location" not in refused.headers
    assert "Wrong e-mail or password." in refused.text
    assert rig.controller.sessions.get(session.id).status == AuthSessionStatus.awaiting_user
    with rig.vms.agent(rig.vms.get(session.vm_id)) as agent:
        assert agent.login_status().exited is False

    rig.approve(session.oauth_url)  # the user tries again, with the right password
    assert wait_ended(rig, session.id).status == AuthSessionStatus.completed
    wait_vm_destroyed(rig, session.vm_id)
    assert statuses(rig, session.id) == ["started", "vm_booting", "awaiting_user", "completed"]


def test_a_denied_sign_in_fails_the_session_with_the_providers_refusal(rig):
    session, _ = awaiting_user(rig)
    redirect_uri, state = callback(session.oauth_url)
    # The demo IdP's form has no deny button: this is the redirect a provider sends when the
    # user denies (RFC 6749 §4.1.2.1), as the browser in the VM would follow it.
    answer = httpx.get(
        redirect_uri, params={"state": state, "error": "access_denied"}, trust_env=False
    )
    assert answer.status_code == 400

    failed = wait_ended(rig, session.id)
    wait_vm_destroyed(rig, session.vm_id)
    assert failed.status == AuthSessionStatus.failed
    assert failed.error.startswith("the demo login ended without signing in: ")
    assert "the provider refused the sign-in: access_denied" in failed.error
    assert rig.controller.sessions.timeline(session.id)[-1].detail == failed.error
    assert rig.controller.credentials.info("u1", "demo") is None
    assert_vm_gone(rig, session.vm_id)


def test_a_login_that_cannot_reach_its_provider_fails_before_awaiting_the_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    issuer = closed_port_url()
    with build_rig(tmp_path, monkeypatch, demo_issuer=issuer) as rig:
        session, _ = rig.controller.sessions.start("u1", "demo")
        failed = wait_ended(rig, session.id)
        wait_vm_destroyed(rig, failed.vm_id)

        assert failed.status == AuthSessionStatus.failed
        assert failed.error.startswith("the demo login ended before showing an authorize URL: ")
        assert f"cannot reach {issuer}/.well-known/openid-configuration" in failed.error
        assert failed.oauth_url is None
        assert statuses(rig, session.id) == ["started", "vm_booting", "failed"]
        assert_vm_gone(rig, failed.vm_id)


def test_an_unknown_provider_is_refused_at_start_with_nothing_created(rig):
    with pytest.raises(UnknownProviderError, match="unknown provider 'nope'"):
        rig.controller.sessions.start("u1", "nope")

    with rig.controller.db.session() as s:
        assert s.scalar(select(func.count()).select_from(AuthSession)) == 0
        assert s.scalar(select(func.count()).select_from(AuthSessionEvent)) == 0
    assert rig.vms.list(include_destroyed=True) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("session-")]


def test_egress_failed_ends_a_running_session_with_the_reason(rig):
    sessions = rig.controller.sessions
    session, _ = awaiting_user(rig)
    redirect_uri, _ = callback(session.oauth_url)
    reason = "the upstream proxy refused CONNECT 127.0.0.1:443 (407)"

    sessions.egress_failed(session.id, reason)

    failed = sessions.get(session.id)
    assert (failed.status, failed.error) == (AuthSessionStatus.failed, reason)
    assert sessions.timeline(session.id)[-1].detail == reason
    wait_vm_destroyed(rig, session.vm_id)
    assert_vm_gone(rig, session.vm_id)
    assert not listening(redirect_uri)


# -- recover -------------------------------------------------------------------------------


def test_recover_fails_sessions_a_dead_controller_left_running_and_destroys_their_vms(rig):
    vm = rig.vms.create("browser", seed_extras={"vnc_password": "abcdefgh"})
    assert rig.vms.vmm_alive(vm)
    awaiting = left_behind(rig, "u1", AuthSessionStatus.awaiting_user, vm_id=vm.id)
    booting = left_behind(rig, "u2", AuthSessionStatus.started)  # before it had a VM
    done = left_behind(rig, "u3", AuthSessionStatus.completed)

    assert rig.controller.sessions.recover() == Recovery(failed=[awaiting, booting])

    reason = "the controller restarted during the sign-in"
    for session_id in (awaiting, booting):
        session = rig.controller.sessions.get(session_id)
        assert (session.status, session.error) == (AuthSessionStatus.failed, reason)
        assert rig.controller.sessions.timeline(session_id)[-1].detail == reason
    assert_vm_gone(rig, vm.id)  # recover() destroys it itself, before it returns
    assert rig.controller.sessions.get(done).status == AuthSessionStatus.completed
    assert statuses(rig, done) == ["completed"]
    assert rig.controller.sessions.recover() == Recovery()


# -- the notifier --------------------------------------------------------------------------


def test_notifier_wait_returns_at_once_when_the_version_already_moved():
    notifier = Notifier()
    notifier.bump("s")
    notifier.bump("s")
    assert notifier.wait("s", 0, timeout=WAIT) == 2


def test_notifier_wait_times_out_with_the_same_version_when_nothing_changes():
    notifier = Notifier()
    notifier.bump("other")  # another session's change does not wake this one
    started = time.monotonic()
    assert notifier.wait("s", 0, timeout=0.2) == 0
    assert time.monotonic() - started >= 0.2


def test_notifier_wait_wakes_on_a_bump_from_another_thread():
    notifier = Notifier()
    woke: list[tuple[int, float]] = []
    started = time.monotonic()

    def watch() -> None:
        woke.append((notifier.wait("s", 0, timeout=WAIT), time.monotonic() - started))

    watcher = threading.Thread(target=watch)
    watcher.start()
    # Bump only once the watcher is blocked in the wait (it is the condition's one waiter).
    wait_for(lambda: len(notifier._cond._waiters) == 1, WAIT, "the watcher to block")
    assert woke == []
    notifier.bump("s")
    watcher.join(WAIT)
    version, waited = woke[0]
    assert version == 1
    assert waited < WAIT / 2  # it woke at the bump, not at its timeout
    assert (notifier.version("s"), notifier.version("never")) == (1, 0)
