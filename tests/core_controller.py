"""A controller on the core rig's ports (tests/core_rig.py) in a process of its own, for
tests that end it as a crash or a stop would.

    python -m tests.core_controller sign-in '<Settings as JSON>' <user id> <provider>

starts a sign-in, prints {"session_id", "token"} (the live-view token) as one JSON line once
the session awaits the user, and waits to be killed.

    python -m tests.core_controller serve '<Settings as JSON>' <unix socket | HOST:PORT>

is `hearth serve` on the rig's controller: the API on the unix socket (or on HOST:PORT, for
a browser), READY=1 and STOPPING=1 to $NOTIFY_SOCKET, and the graceful stop on SIGTERM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from hearth import providers
from hearth.api.app import create_app
from hearth.api.serving import serve
from hearth.config import Settings
from hearth.demo import provider as demo
from hearth.store.models import AuthSessionStatus
from hearth.waiting import wait_for
from tests.core_rig import local_controller, local_demo_spec

WAIT = 60.0
REPO = Path(__file__).parents[1]


def spawn(mode: str, settings: Settings, *args: str, env=None, **popen) -> subprocess.Popen:
    """This module as a process of its own in `mode` for `settings`, this checkout importable;
    `env` adds to the environment (NOTIFY_SOCKET only if given there)."""
    environ = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    argv = [sys.executable, "-m", "tests.core_controller", mode, settings.model_dump_json()]
    return subprocess.Popen([*argv, *args], cwd=REPO, env={**environ, **(env or {})}, **popen)


def sign_in(settings: Settings, user_id: str, provider: str) -> None:
    _, _, controller = local_controller(settings)
    session, token = controller.sessions.start(user_id, provider)
    wait_for(
        lambda: controller.sessions.get(session.id).status == AuthSessionStatus.awaiting_user,
        WAIT,
        "the sign-in page",
    )
    print(json.dumps({"session_id": session.id, "token": token}), flush=True)
    threading.Event().wait()


def serve_api(settings: Settings, where: str) -> None:
    _, _, controller = local_controller(settings)
    host, _, port = where.rpartition(":")
    listen = {"host": host, "port": int(port)} if port.isdigit() else {"uds": where}
    serve(create_app(settings, parts=lambda _: controller), **listen)


def main() -> None:
    mode, settings_json, *args = sys.argv[1:]
    providers.SPECS["demo"] = local_demo_spec(demo.SPEC)
    settings = Settings.model_validate_json(settings_json)
    {"sign-in": sign_in, "serve": serve_api}[mode](settings, *args)


if __name__ == "__main__":
    main()
