"""Each user's CLI VM and the custody of their credentials (hearth.core.cli_vms, with
hearth.store.credentials), on the root-free core rig: the real controller, each VM's process
the real guest agent, the demo CLI's real login and prompt against the real demo IdP.

Covered: one VM per user, made on first use and reused (and replaced when its VMM died); the
stored version installed in the VM and leased to it; a run that refreshes the token written
back as a new version (the old refresh token then dead at the IdP), and one that does not
left alone; the stale-version refusal, at the store and after a run; a sign-in reaching an
awake, sleeping or busy VM; concurrent refreshes and write-backs ending with exactly one new
version and working tokens; hibernate and resume, and the idle sweep, keeping the files; the
provider's verdict (check, and a run refused) kept with the version; removal wiping the files
from the VM. These keep exactly one live copy of a rotating refresh token, so each is shown
against the IdP and the agent, not against stand-ins.

The module shares one rig; each test gets users of its own, signed in through the real login
side by side before the first test (a sign-in alone takes its polling seconds). The rig's IdP
issues hour-long access tokens and build_rig has no knob for a shorter one, so a refresh is
provoked by storing a version whose file says the token has expired (as the demo CLI reads
it): that version is 2, and the refreshed one 3.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth import providers
from hearth.core.cli_vms import RunEnd
from hearth.core.ports import AgentRefused
from hearth.core.vms import VmError
from hearth.demo.idp import CLIENT_ID
from hearth.guest.protocol import RunExit, RunOutput, RunStarted
from hearth.store.credentials import CredentialInfo, CredentialNotFound, CredentialStale, Lease
from hearth.store.models import Vm, VmState
from hearth.waiting import wait_for
from tests.core_rig import USER, Rig, build_rig
from tests.unit.test_auth_sessions import assert_vm_gone

PROVIDER = "demo"
CREDENTIALS = ".hearth-demo/credentials.json"
SIGN_IN_WAIT = 30.0
RUN_TIMEOUT = 60.0
TERMINAL = ("completed", "failed", "cancelled", "expired")


# -- the rig and its signed-in users ----------------------------------------------------------


def wait_session(rig: Rig, session_id: str, wanted: str) -> None:
    """Wait for the auth session to reach `wanted`; fail at once if it ends otherwise."""
    sessions = rig.controller.sessions
    wait_for(
        lambda: sessions.get(session_id).status in (wanted, *TERMINAL),
        SIGN_IN_WAIT,
        f"auth session {wanted}",
    )
    session = sessions.get(session_id)
    assert session.status == wanted, f"session {session.status}: {session.error}"


def sign_in(rig: Rig, *user_ids: str) -> None:
    """Sign each user's demo CLI in the way a user does (a browser VM, the IdP's form), all
    at once: each session runs on its own thread, and each sign-in is a token family of
    its own at the IdP."""
    sessions = rig.controller.sessions
    started = [sessions.start(user_id, PROVIDER)[0].id for user_id in user_ids]
    for session_id in started:
        wait_session(rig, session_id, "awaiting_user")
        answer = rig.approve(sessions.get(session_id).oauth_url)
        assert answer.status_code == 200, answer.text
    for session_id in started:
        wait_session(rig, session_id, "completed")
        # The session's thread stores the credentials, hands them to the user's VM if it
        # is awake (on_stored), then destroys the browser VM: that last step ends it.
        browser = sessions.get(session_id).vm_id
        wait_for(
            lambda vm_id=browser: rig.vms.get(vm_id).state == VmState.destroyed,
            SIGN_IN_WAIT,
            "the browser VM's end",
        )


class Accounts:
    """Users signed in ahead, for the tests that ask for one: a sign-in takes its polling
    seconds, and the sessions of many users run side by side."""

    def __init__(self, rig: Rig, wanted: int) -> None:
        self.rig = rig
        self._made = 0
        self._ready = self._sign_in(wanted)

    def _sign_in(self, count: int) -> list[str]:
        user_ids = [f"user{self._made + n}" for n in range(count)]
        self._made += count
        batch = self.rig.settings.auth_queue_max  # more at once would be refused, not queued
        for first in range(0, count, batch):
            sign_in(self.rig, *user_ids[first : first + batch])
        return user_ids

    def take(self) -> str:
        """A user with version 1 of fresh demo credentials stored, and no CLI VM."""
        user_id = self._ready.pop(0) if self._ready else self._sign_in(1)[0]
        info = self.rig.controller.credentials.info(user_id, PROVIDER)
        assert info is not None and info.version == 1
        return user_id


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One rig for the module (it overrides the conftest's): each test has users of its
    own, and the settings a test changes are put back after it."""
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        build_rig(tmp_path_factory.mktemp("rig"), monkeypatch) as built,
    ):
        yield built


@pytest.fixture(scope="module")
def accounts(rig: Rig, request: pytest.FixtureRequest) -> Accounts:
    module = request.module.__name__
    wanted = sum(
        ("user" in item.fixturenames) + ("other_user" in item.fixturenames)
        for item in request.session.items
        if item.module.__name__ == module
    )
    return Accounts(rig, wanted)


def _retire(rig: Rig, user_id: str) -> None:
    """Destroy the user's VMs, so that the next test finds only its own."""
    for vm in rig.vms.list():
        if vm.user_id == user_id:
            rig.vms.destroy(vm.id)


@pytest.fixture
def user(rig: Rig, accounts: Accounts) -> Iterator[str]:
    """A user signed in to the demo provider (version 1 stored), with no CLI VM yet."""
    user_id = accounts.take()
    yield user_id
    _retire(rig, user_id)


@pytest.fixture
def other_user(rig: Rig, accounts: Accounts) -> Iterator[str]:
    user_id = accounts.take()
    yield user_id
    _retire(rig, user_id)


def token_file(files: dict[str, bytes]) -> dict[str, Any]:
    return json.loads(files[CREDENTIALS])


def stored_tokens(rig: Rig, user_id: str) -> dict[str, Any]:
    return token_file(rig.controller.credentials.files(user_id, PROVIDER))


def store_expired(rig: Rig, user_id: str, **changes: Any) -> CredentialInfo:
    """Store the current tokens again as a new version whose file says the access token
    expired a minute ago, so the demo CLI refreshes it before its next prompt."""
    files, info = rig.controller.credentials.current(user_id, PROVIDER)
    data = {**token_file(files), "expires_at": int(time.time()) - 60, **changes}
    return rig.controller.credentials.put(
        user_id,
        PROVIDER,
        {CREDENTIALS: json.dumps(data).encode()},
        account_email=info.account_email,
        expires_at=datetime.fromtimestamp(data["expires_at"], UTC),
        after_version=info.version,
    )


def in_vm(rig: Rig, vm: Vm) -> tuple[dict[str, bytes], str]:
    """The demo credential files in the VM as its agent reads them now, and their digest."""
    with rig.vms.agent(vm) as agent:
        return agent.read_credentials(PROVIDER)


def home_file(rig: Rig, vm: Vm) -> Path:
    """Where the VM's agent keeps the demo credential file (the VM's disk, in the rig)."""
    return rig.vms.workdir(vm.id) / "home" / CREDENTIALS


def prompt_argv(text: str) -> list[str]:
    return providers.get(PROVIDER).prompt_command(text)


def run_prompt(rig: Rig, user_id: str, text: str = "hello") -> tuple[Vm, list[dict]]:
    """Run the demo CLI's prompt in the user's VM, as Prompts does; the VM and the events."""
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user_id, PROVIDER) as vm:
        events = list(cli_vms.run(vm, user_id, PROVIDER, prompt_argv(text), RUN_TIMEOUT))
    return vm, events


def exit_event(events: list) -> RunEnd:
    exits = [e for e in events if isinstance(e, RunEnd)]
    assert len(exits) == 1, events
    return exits[0]


def output_lines(events: list) -> list[dict]:
    text = "".join(e.data for e in events if isinstance(e, RunOutput))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def account_line(events: list) -> dict:
    lines = [line for line in output_lines(events) if line.get("type") == "account"]
    assert len(lines) == 1, output_lines(events)
    return lines[0]


def idp_refresh(rig: Rig, refresh_token: str) -> httpx.Response:
    """Redeem a refresh token at the IdP, as any holder of it could."""
    with httpx.Client(trust_env=False, timeout=15) as http:
        return http.post(
            f"{rig.idp.issuer}/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": refresh_token,
                "client_id": CLIENT_ID,
            },
        )


def idp_userinfo(rig: Rig, access_token: str) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=15) as http:
        return http.get(
            f"{rig.idp.issuer}/userinfo", headers={"Authorization": f"Bearer {access_token}"}
        )


def cli_vms_of(rig: Rig, user_id: str) -> list[Vm]:
    return [vm for vm in rig.vms.list() if vm.user_id == user_id]


def installs(rig: Rig, vm: Vm) -> int:
    """How many times the VM's agent has installed credentials (from its console log)."""
    log = rig.vms.spec(vm).console_log.read_text()
    return len(re.findall(r"hearth-agent: installed \d+ credential", log))


# -- one VM per user -------------------------------------------------------------------------


def test_first_use_makes_the_users_cli_vm_and_later_uses_reuse_it(rig: Rig, user: str) -> None:
    cli_vms = rig.controller.cli_vms
    assert cli_vms.vm_of(user) is None

    with cli_vms.using(user, PROVIDER) as first:
        pass
    with cli_vms.using(user, PROVIDER) as second:
        pass

    assert second.id == first.id
    assert first.user_id == user
    assert first.image == rig.settings.cli_image
    assert [vm.id for vm in cli_vms_of(rig, user)] == [first.id]
    assert rig.vms.get(first.id).state == VmState.ready
    assert cli_vms.vm_of(user).id == first.id


def test_each_user_gets_a_cli_vm_of_their_own(rig: Rig, user: str, other_user: str) -> None:
    cli_vms = rig.controller.cli_vms

    with cli_vms.using(user, PROVIDER) as vm1:
        pass
    with cli_vms.using(other_user, PROVIDER) as vm2:
        pass

    assert vm1.id != vm2.id
    assert (vm1.user_id, vm2.user_id) == (user, other_user)
    assert [vm.id for vm in cli_vms_of(rig, user)] == [vm1.id]
    assert [vm.id for vm in cli_vms_of(rig, other_user)] == [vm2.id]


def test_using_without_stored_credentials_raises_and_makes_no_vm(rig: Rig) -> None:
    with (
        pytest.raises(CredentialNotFound, match="no 'demo' credentials stored for user 'nobody'"),
        rig.controller.cli_vms.using("nobody", PROVIDER),
    ):
        pytest.fail("the block must not run")
    assert cli_vms_of(rig, "nobody") == []


# -- custody: install, lease, write-back -----------------------------------------------------


def test_using_installs_the_stored_version_in_the_vm_and_leases_it_to_the_vm(
    rig: Rig, user: str
) -> None:
    store = rig.controller.credentials
    stored = store.files(user, PROVIDER)

    with rig.controller.cli_vms.using(user, PROVIDER) as vm:
        files, digest = in_vm(rig, vm)

    assert files == stored
    assert token_file(files)["email"] == USER
    assert home_file(rig, vm).read_bytes() == stored[CREDENTIALS]
    assert home_file(rig, vm).stat().st_mode & 0o777 == 0o600
    assert store.lease(user, PROVIDER) == Lease(vm.id, 1, digest)


def test_a_run_that_does_not_refresh_leaves_the_stored_version_as_it_was(
    rig: Rig, user: str
) -> None:
    before = stored_tokens(rig, user)

    _, events = run_prompt(rig, user)

    done = exit_event(events)
    assert done.exit.exit_code == 0
    assert done.credentials_updated is False
    assert account_line(events)["refreshed"] is False
    assert rig.controller.credentials.info(user, PROVIDER).version == 1
    assert stored_tokens(rig, user) == before
    assert rig.controller.credentials.lease(user, PROVIDER).version == 1


def test_a_run_that_refreshes_stores_the_new_tokens_as_a_version_leased_to_the_vm(
    rig: Rig, user: str
) -> None:
    assert store_expired(rig, user).version == 2
    old = stored_tokens(rig, user)

    vm, events = run_prompt(rig, user)

    done = exit_event(events)
    assert done.exit.exit_code == 0, output_lines(events)
    assert done.credentials_updated is True
    assert account_line(events) | {"sub": None} == {
        "type": "account",
        "email": USER,
        "sub": None,
        "refreshed": True,
    }
    store = rig.controller.credentials
    info = store.info(user, PROVIDER)
    assert info.version == 3
    assert info.account_email == USER
    assert info.expires_at > datetime.now(UTC)  # read from the refreshed file
    new = stored_tokens(rig, user)
    assert new["refresh_token"] != old["refresh_token"]
    assert new["access_token"] != old["access_token"]
    files, digest = in_vm(rig, vm)
    assert token_file(files) == new  # the VM and the store hold the same, one live copy
    assert store.lease(user, PROVIDER) == Lease(vm.id, 3, digest)
    # Rotation: the old pair is dead at the IdP, the new one works.
    assert idp_refresh(rig, old["refresh_token"]).status_code == 400
    assert idp_userinfo(rig, old["access_token"]).status_code == 401
    assert idp_userinfo(rig, new["access_token"]).json()["email"] == USER


def test_the_next_use_after_a_write_back_installs_nothing_again(rig: Rig, user: str) -> None:
    store_expired(rig, user)
    vm, _ = run_prompt(rig, user)
    assert installs(rig, vm) == 1

    vm_again, events = run_prompt(rig, user)

    assert vm_again.id == vm.id
    assert exit_event(events).credentials_updated is False  # not due: no second refresh
    assert installs(rig, vm) == 1
    assert rig.controller.credentials.info(user, PROVIDER).version == 3


# -- stale versions ----------------------------------------------------------------------------


def test_a_write_on_top_of_a_replaced_version_raises_credential_stale_and_keeps_the_newer(
    rig: Rig, user: str
) -> None:
    store = rig.controller.credentials
    assert store_expired(rig, user, access_token="from-a-new-sign-in").version == 2

    with pytest.raises(CredentialStale, match="no longer at version 1"):
        store.put(
            user,
            PROVIDER,
            {CREDENTIALS: b'{"access_token": "refreshed-from-version-1"}'},
            after_version=1,
        )

    assert store.info(user, PROVIDER).version == 2
    assert stored_tokens(rig, user)["access_token"] == "from-a-new-sign-in"


def test_a_refresh_pulled_back_after_the_store_moved_on_is_dropped_for_the_newer_version(
    rig: Rig, user: str
) -> None:
    """A version stored while a run refreshed (by another controller, say, so no install in
    the VM followed) wins: the run's write-back is refused as stale, and the next use
    installs the newer version."""
    store_expired(rig, user)
    cli_vms = rig.controller.cli_vms
    newer = None
    with cli_vms.using(user, PROVIDER) as vm:
        events = []
        for event in cli_vms.run(vm, user, PROVIDER, prompt_argv("a b"), RUN_TIMEOUT):
            events.append(event)
            if isinstance(event, RunStarted):
                newer = store_expired(rig, user, access_token="from-a-new-sign-in")
    assert newer is not None and newer.version == 3

    assert exit_event(events).exit.exit_code == 0
    assert account_line(events)["refreshed"] is True
    assert exit_event(events).credentials_updated is False  # refused as stale
    store = rig.controller.credentials
    assert store.info(user, PROVIDER).version == 3
    assert stored_tokens(rig, user)["access_token"] == "from-a-new-sign-in"

    with cli_vms.using(user, PROVIDER) as vm_again:
        files, digest = in_vm(rig, vm_again)
    assert vm_again.id == vm.id
    assert token_file(files)["access_token"] == "from-a-new-sign-in"
    assert store.lease(user, PROVIDER) == Lease(vm.id, 3, digest)


def test_a_sign_in_during_a_run_replaces_the_credentials_in_the_vm_and_is_kept(
    rig: Rig, user: str
) -> None:
    store_expired(rig, user)
    cli_vms = rig.controller.cli_vms
    refreshed_by_run = None
    words = " ".join(f"w{n}" for n in range(12))  # a run long enough for a whole sign-in
    with cli_vms.using(user, PROVIDER) as vm:
        events = []
        for event in cli_vms.run(vm, user, PROVIDER, prompt_argv(words), RUN_TIMEOUT):
            events.append(event)
            if isinstance(event, RunStarted):
                run_id = event.run_id
            if isinstance(event, RunOutput) and '"type": "account"' in event.data:
                refreshed_by_run = token_file(in_vm(rig, vm)[0])  # the CLI has refreshed
                sign_in(rig, user)
                assert rig.controller.credentials.info(user, PROVIDER).version == 3
                with rig.vms.agent(vm) as agent:
                    assert agent.run_status(run_id).running, "the run ended too soon"
    assert refreshed_by_run is not None

    done = exit_event(events)
    assert done.exit.exit_code == 0
    assert done.credentials_updated is False  # the VM holds what the sign-in stored
    store = rig.controller.credentials
    assert store.info(user, PROVIDER).version == 3
    signed = stored_tokens(rig, user)
    assert signed["access_token"] != refreshed_by_run["access_token"]
    files, digest = in_vm(rig, vm)
    assert token_file(files) == signed
    assert store.lease(user, PROVIDER) == Lease(vm.id, 3, digest)
    assert idp_userinfo(rig, signed["access_token"]).json()["email"] == USER


# -- concurrent refreshes ----------------------------------------------------------------------


def test_two_prompts_refreshing_at_once_store_exactly_one_new_version_that_works(
    rig: Rig, user: str
) -> None:
    store_expired(rig, user)
    due = stored_tokens(rig, user)
    barrier = threading.Barrier(2)
    results: list[list[dict]] = []
    errors: list[BaseException] = []
    cli_vms = rig.controller.cli_vms

    def prompt() -> None:
        try:
            with cli_vms.using(user, PROVIDER) as vm:
                barrier.wait(timeout=30)
                results.append(list(cli_vms.run(vm, user, PROVIDER, prompt_argv("hi"), 60)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=prompt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not errors, errors
    assert len(results) == 2

    exits = [exit_event(events) for events in results]
    # The second CLI either found the file already refreshed, or lost the race for the
    # single-use refresh token at the IdP and failed: never two refreshes.
    assert sorted(e.exit.exit_code for e in exits) in ([0, 0], [0, 1])
    assert sorted(e.credentials_updated for e in exits) == [False, True]
    store = rig.controller.credentials
    assert store.info(user, PROVIDER).version == 3
    vm = cli_vms.vm_of(user)
    assert [v.id for v in cli_vms_of(rig, user)] == [vm.id]
    live = stored_tokens(rig, user)
    files, digest = in_vm(rig, vm)
    assert token_file(files) == live
    assert store.lease(user, PROVIDER) == Lease(vm.id, 3, digest)
    assert live["refresh_token"] != due["refresh_token"]
    assert idp_userinfo(rig, live["access_token"]).json()["email"] == USER
    assert idp_refresh(rig, due["refresh_token"]).status_code == 400
    assert idp_refresh(rig, live["refresh_token"]).status_code == 200  # the stored one lives


def test_two_write_backs_of_one_refresh_racing_store_one_version(rig: Rig, user: str) -> None:
    store_expired(rig, user)
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER) as vm:
        # The CLI refreshes in the VM, run straight through the agent: nothing settles yet.
        with (
            rig.vms.agent(vm) as agent,
            agent.run(prompt_argv("hi"), provider=PROVIDER, timeout=60) as events,
        ):
            digest = next(e for e in events if isinstance(e, RunExit)).credentials_digest
        barrier = threading.Barrier(2)
        outcomes: list[bool] = []

        def settle() -> None:
            barrier.wait(timeout=30)
            outcomes.append(cli_vms.settle(vm, user, PROVIDER, digest))

        threads = [threading.Thread(target=settle) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    assert sorted(outcomes) == [False, True]
    store = rig.controller.credentials
    assert store.info(user, PROVIDER).version == 3
    assert store.lease(user, PROVIDER) == Lease(vm.id, 3, digest)
    assert stored_tokens(rig, user) == token_file(in_vm(rig, vm)[0])


def test_two_puts_after_the_same_version_racing_land_one_and_refuse_the_other(
    rig: Rig, user: str
) -> None:
    store = rig.controller.credentials
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def put(name: str) -> None:
        barrier.wait(timeout=30)
        try:
            outcomes[name] = store.put(
                user, PROVIDER, {CREDENTIALS: name.encode()}, after_version=1
            ).version
        except CredentialStale as e:
            outcomes[name] = e

    threads = [threading.Thread(target=put, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    landed = [name for name, outcome in outcomes.items() if outcome == 2]
    refused = [name for name, o in outcomes.items() if isinstance(o, CredentialStale)]
    assert len(landed) == 1 and len(refused) == 1, outcomes
    assert store.info(user, PROVIDER).version == 2
    assert store.files(user, PROVIDER) == {CREDENTIALS: landed[0].encode()}


# -- hibernate, resume and the idle sweep ------------------------------------------------------


def test_a_hibernated_vm_resumes_on_next_use_with_its_credentials_still_there(
    rig: Rig, user: str
) -> None:
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER) as vm:
        files, digest = in_vm(rig, vm)

    rig.vms.hibernate(vm.id)
    asleep = rig.vms.get(vm.id)
    assert asleep.state == VmState.hibernated
    assert not rig.vms.vmm_alive(asleep)
    assert home_file(rig, vm).read_bytes() == files[CREDENTIALS]

    with cli_vms.using(user, PROVIDER) as woken:
        after = in_vm(rig, woken)

    assert woken.id == vm.id
    assert rig.vms.get(vm.id).state == VmState.ready
    assert rig.vms.vmm_alive(woken)
    assert after == (files, digest)
    assert installs(rig, vm) == 1  # kept on the VM's disk, not installed again
    assert rig.controller.credentials.lease(user, PROVIDER) == Lease(vm.id, 1, digest)


def test_a_hibernated_vm_that_does_not_resume_is_replaced_with_the_stored_credentials(
    rig: Rig, user: str
) -> None:
    """A snapshot that no longer restores (its machine changed while it slept) would fail
    every prompt: the VM is replaced, and the new one gets the stored version."""
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER) as vm:
        files, _ = in_vm(rig, vm)
    rig.vms.hibernate(vm.id)
    rig.driver.failing.add("restore")

    with cli_vms.using(user, PROVIDER) as fresh:
        assert fresh.id != vm.id and rig.vms.vmm_alive(fresh)
        assert in_vm(rig, fresh)[0] == files

    assert_vm_gone(rig, vm.id)
    assert rig.controller.credentials.lease(user, PROVIDER).vm_id == fresh.id
    capacity = rig.controller.capacity
    usage = capacity.usage()  # the new VM alone: no room left held for either
    assert (usage.vms, usage.memory_mib) == (1, capacity.cost(fresh.image).total_mib)


def test_a_hibernated_vm_whose_image_was_rebuilt_is_replaced_not_resumed(
    rig: Rig, user: str
) -> None:
    """Its disk overlay would wake on another rootfs than the one its memory knows."""
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER) as vm:
        pass
    rig.vms.hibernate(vm.id)
    manifest = rig.settings.images_dir / vm.image / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "built_at": "later"}))

    with pytest.raises(VmError, match="image was rebuilt since it hibernated"):
        rig.vms.resume(vm.id)
    assert rig.vms.get(vm.id).state == VmState.hibernated  # refused before anything ran
    with cli_vms.using(user, PROVIDER) as fresh:
        assert fresh.id != vm.id and fresh.image_build != vm.image_build
    assert_vm_gone(rig, vm.id)


def test_sweep_leaves_a_vm_used_recently_alone(rig: Rig, user: str) -> None:
    with rig.controller.cli_vms.using(user, PROVIDER) as vm:
        pass

    rig.controller.cli_vms.sweep()

    assert rig.vms.get(vm.id).state == VmState.ready


def test_sweep_hibernates_a_vm_idle_past_idle_hibernate_and_the_next_use_resumes_it(
    rig: Rig, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER) as vm:
        files, _ = in_vm(rig, vm)
    monkeypatch.setattr(rig.settings, "idle_hibernate", 0.0)

    cli_vms.sweep()
    assert rig.vms.get(vm.id).state == VmState.hibernated
    cli_vms.sweep()  # idle_destroy is far off: it stays asleep, files and all
    assert rig.vms.get(vm.id).state == VmState.hibernated

    with cli_vms.using(user, PROVIDER) as woken:
        assert in_vm(rig, woken)[0] == files
    assert woken.id == vm.id
    assert installs(rig, vm) == 1


def test_sweep_spares_a_vm_in_use(rig: Rig, user: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rig.settings, "idle_hibernate", 0.0)
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER) as vm:
        cli_vms.sweep()
        assert rig.vms.get(vm.id).state == VmState.ready

    cli_vms.sweep()

    assert rig.vms.get(vm.id).state == VmState.hibernated


def test_sweep_destroys_a_vm_idle_past_idle_destroy_and_the_next_use_makes_a_new_one(
    rig: Rig, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli_vms = rig.controller.cli_vms
    stored = rig.controller.credentials.files(user, PROVIDER)
    with cli_vms.using(user, PROVIDER) as vm:
        pass
    monkeypatch.setattr(rig.settings, "idle_destroy", 0.0)

    cli_vms.sweep()

    assert rig.vms.get(vm.id).state == VmState.destroyed
    assert not rig.vms.workdir(vm.id).exists()  # files and all
    assert cli_vms.vm_of(user) is None
    with cli_vms.using(user, PROVIDER) as fresh:
        files, digest = in_vm(rig, fresh)
    assert fresh.id != vm.id
    assert files == stored
    assert rig.controller.credentials.lease(user, PROVIDER) == Lease(fresh.id, 1, digest)


def test_a_sign_in_while_the_vm_is_awake_replaces_the_files_in_it_at_once(
    rig: Rig, user: str
) -> None:
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER) as vm:
        pass
    newer = store_expired(rig, user, access_token="from-a-new-sign-in")

    cli_vms.signed_in(user, PROVIDER)  # what the auth session calls once it stored them

    files, digest = in_vm(rig, vm)
    assert token_file(files)["access_token"] == "from-a-new-sign-in"
    assert rig.controller.credentials.lease(user, PROVIDER) == Lease(vm.id, newer.version, digest)


def test_a_sign_in_while_the_vm_sleeps_reaches_it_on_its_next_use_without_waking_it(
    rig: Rig, user: str
) -> None:
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER) as vm:
        pass
    rig.vms.hibernate(vm.id)
    old = home_file(rig, vm).read_bytes()
    newer = store_expired(rig, user, access_token="from-a-new-sign-in")

    cli_vms.signed_in(user, PROVIDER)

    assert rig.vms.get(vm.id).state == VmState.hibernated
    assert home_file(rig, vm).read_bytes() == old
    with cli_vms.using(user, PROVIDER) as woken:
        files, digest = in_vm(rig, woken)
    assert woken.id == vm.id
    assert token_file(files)["access_token"] == "from-a-new-sign-in"
    assert rig.controller.credentials.lease(user, PROVIDER) == Lease(vm.id, newer.version, digest)


def test_a_vm_whose_vmm_died_is_replaced_on_next_use_and_gets_the_credentials(
    rig: Rig, user: str
) -> None:
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER) as vm:
        pass
    rig.driver.stop(rig.vms.spec(vm))  # the VMM ends under it
    assert not rig.vms.vmm_alive(vm)

    with cli_vms.using(user, PROVIDER) as replacement:
        files, digest = in_vm(rig, replacement)

    assert replacement.id != vm.id
    assert rig.vms.get(vm.id).state == VmState.destroyed
    assert [v.id for v in cli_vms_of(rig, user)] == [replacement.id]
    assert files == rig.controller.credentials.files(user, PROVIDER)
    assert rig.controller.credentials.lease(user, PROVIDER) == Lease(replacement.id, 1, digest)


# -- the provider's verdict ------------------------------------------------------------------


def test_check_of_working_credentials_says_valid_and_keeps_them_ready(rig: Rig, user: str) -> None:
    check = rig.controller.cli_vms.check(user, PROVIDER)

    assert (check.valid, check.reason) == (True, None)
    info = rig.controller.credentials.info(user, PROVIDER)
    assert (info.status, info.invalid_reason, info.version) == ("ready", None, 1)


def test_check_of_credentials_revoked_at_the_provider_marks_the_version_invalid_with_why(
    rig: Rig, user: str
) -> None:
    # Someone else redeems the refresh token: the IdP rotates it and revokes the stored pair.
    assert idp_refresh(rig, stored_tokens(rig, user)["refresh_token"]).status_code == 200

    check = rig.controller.cli_vms.check(user, PROVIDER)

    assert check.valid is False
    assert "userinfo answered 401" in check.reason
    assert json.loads(check.reason)["valid"] is False  # the CLI's own verdict line
    store = rig.controller.credentials
    info = store.info(user, PROVIDER)
    assert (info.status, info.invalid_reason, info.version) == ("invalid", check.reason, 1)
    # A new version starts valid.
    assert store_expired(rig, user).status == "ready"
    assert store.info(user, PROVIDER).invalid_reason is None


def test_a_run_the_provider_refuses_marks_the_leased_version_invalid(
    rig: Rig, user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stock demo spec names no refusal markers; here it names the demo CLI's own
    message for a refused token, as the real providers' specs name theirs."""
    marked = replace(providers.get(PROVIDER), refused_markers=(r"userinfo answered 401[^\"\n]*",))
    monkeypatch.setitem(providers.SPECS, PROVIDER, marked)
    assert idp_refresh(rig, stored_tokens(rig, user)["refresh_token"]).status_code == 200

    _, events = run_prompt(rig, user)

    done = exit_event(events)
    assert done.exit.exit_code == 1
    assert done.refused.startswith("userinfo answered 401")
    info = rig.controller.credentials.info(user, PROVIDER)
    assert (info.status, info.invalid_reason) == ("invalid", done.refused)


# -- removal -----------------------------------------------------------------------------------


def test_remove_wipes_the_files_from_the_vm_and_forgets_the_stored_copy(
    rig: Rig, user: str
) -> None:
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER) as vm:
        assert home_file(rig, vm).exists()

    assert cli_vms.remove(user, PROVIDER) == (True, [CREDENTIALS])

    assert not home_file(rig, vm).exists()
    with pytest.raises(AgentRefused) as refused:
        in_vm(rig, vm)
    assert refused.value.status == 404
    assert rig.controller.credentials.info(user, PROVIDER) is None
    with pytest.raises(CredentialNotFound), cli_vms.using(user, PROVIDER):
        pytest.fail("the block must not run")
    assert cli_vms.remove(user, PROVIDER) == (False, [])


def test_remove_wakes_a_hibernated_vm_to_wipe_it(rig: Rig, user: str) -> None:
    cli_vms = rig.controller.cli_vms
    with cli_vms.using(user, PROVIDER) as vm:
        pass
    rig.vms.hibernate(vm.id)

    assert cli_vms.remove(user, PROVIDER) == (True, [CREDENTIALS])

    assert rig.vms.get(vm.id).state == VmState.ready
    assert not home_file(rig, vm).exists()


def test_remove_for_a_user_without_a_vm_forgets_only_the_stored_copy(rig: Rig, user: str) -> None:
    cli_vms = rig.controller.cli_vms

    assert cli_vms.remove(user, PROVIDER) == (True, [])

    assert rig.controller.credentials.info(user, PROVIDER) is None
    assert cli_vms.vm_of(user) is None
