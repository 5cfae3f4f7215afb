"""A controller killed while a sign-in waits for its user, then started again: the next
controller adopts the session whose browser VM still runs the CLI's login, and the user
finishes signing in; a session whose VM died with it ends failed.

The first controller is a process of its own (tests/core_controller.py) killed with SIGKILL,
as a crash ends it; the test's own rig is the next start: the reconciler, then recover().
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess

from hearth.core.auth_sessions import ADOPTED, RESTARTED, Recovery
from hearth.core.reconciler import reconcile
from hearth.store.models import AuthSessionStatus, VmState
from hearth.vmm.base import kill_pid
from hearth.waiting import wait_for
from tests.core_controller import spawn
from tests.core_rig import Rig

WAIT = 60.0


def killed_at_the_sign_in_page(rig: Rig, user_id: str) -> tuple[str, str]:
    """Start a sign-in in a controller of its own, SIGKILL it once the session awaits the
    user; the session's id and live-view token."""
    controller = spawn("sign-in", rig.settings, user_id, "demo", stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([controller.stdout], [], [], WAIT)
        assert ready, "the first controller never reached the sign-in page"
        started = json.loads(controller.stdout.readline())
    finally:
        os.kill(controller.pid, signal.SIGKILL)
        controller.wait()
    return started["session_id"], started["token"]


def wait_ended(rig: Rig, session_id: str):
    sessions = rig.controller.sessions
    return wait_for(
        lambda: (
            (s := sessions.get(session_id)).status
            not in (AuthSessionStatus.awaiting_user, AuthSessionStatus.vm_booting)
            and s
        ),
        WAIT,
        "the session's end",
    )


def test_a_sign_in_survives_a_controller_killed_at_its_sign_in_page_and_completes(rig: Rig):
    session_id, token = killed_at_the_sign_in_page(rig, "u1")
    sessions = rig.controller.sessions
    vm_id = sessions.get(session_id).vm_id

    assert vm_id in reconcile(rig.vms).adopted
    assert sessions.recover() == Recovery(adopted=[session_id])

    adopted = sessions.get(session_id)
    assert adopted.status == AuthSessionStatus.awaiting_user
    assert (sessions.timeline(session_id)[-1].status, sessions.timeline(session_id)[-1].detail) == (
        AuthSessionStatus.awaiting_user,
        ADOPTED,
    )
    view = sessions.live_view(session_id, token)  # the connect page can open the VM again
    assert view is not None and view.target is not None
    assert view.target.host == rig.vms.get(vm_id).ip

    callback = rig.approve(adopted.oauth_url)
    assert callback.status_code == 200
    done = wait_ended(rig, session_id)
    assert done.status == AuthSessionStatus.completed, sessions.timeline(session_id)
    assert rig.controller.credentials.info("u1", "demo") is not None
    wait_for(lambda: rig.vms.get(vm_id).state == VmState.destroyed, WAIT, "the browser VM's end")


def test_a_sign_in_whose_browser_vm_died_with_the_controller_ends_failed(rig: Rig):
    session_id, _ = killed_at_the_sign_in_page(rig, "u1")
    sessions = rig.controller.sessions
    vm_id = sessions.get(session_id).vm_id
    kill_pid(rig.vms.get(vm_id).pid)  # the VM went down with the host, say

    assert vm_id in reconcile(rig.vms).destroyed
    assert sessions.recover() == Recovery(failed=[session_id])

    failed = sessions.get(session_id)
    assert (failed.status, failed.error) == (AuthSessionStatus.failed, RESTARTED)
    assert rig.controller.credentials.info("u1", "demo") is None
