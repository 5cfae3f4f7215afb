"""A controller on the core rig's ports (tests/core_rig.py) in a process of its own, for
tests that end it as a crash would: it starts a sign-in, prints {"session_id", "token"} (the
live-view token) as one JSON line once the session awaits the user, and waits to be killed.

    python -m tests.core_controller '<Settings as JSON>' <user id> <provider>
"""

from __future__ import annotations

import json
import sys
import threading

from hearth import providers
from hearth.config import Settings
from hearth.demo import provider as demo
from hearth.store.models import AuthSessionStatus
from hearth.waiting import wait_for
from tests.core_rig import local_controller, local_demo_spec

WAIT = 60.0


def main() -> None:
    settings_json, user_id, provider = sys.argv[1:]
    providers.SPECS["demo"] = local_demo_spec(demo.SPEC)
    _, _, controller = local_controller(Settings.model_validate_json(settings_json))
    session, token = controller.sessions.start(user_id, provider)
    wait_for(
        lambda: controller.sessions.get(session.id).status == AuthSessionStatus.awaiting_user,
        WAIT,
        "the sign-in page",
    )
    print(json.dumps({"session_id": session.id, "token": token}), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
