"""`hearth serve`: the API under uvicorn, as a systemd service of `Type=notify`.

READY=1 goes to systemd once the lifespan has run (the reconciler, the sessions' and the
prompts' recovery) and the listeners are open. The first SIGTERM (or SIGINT) does not stop
the listeners at once, as uvicorn's own handler would: the controller winds its work down
first (hearth.core.stopping) while it still answers, new sign-ins and prompts with 503, and
only then does uvicorn close. A second signal stops at once, as uvicorn does.
"""

from __future__ import annotations

import copy
import logging
import threading
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOGGING_CONFIG

from hearth import sd_notify
from hearth.core import stopping

log = logging.getLogger(__name__)

# Seconds uvicorn waits, once the work is wound down, for connections still open (an admin
# page's event stream, a live view's WebSocket) before it closes them.
CLOSE_WAIT = 5.0


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.app = app
        self._winding_down: threading.Thread | None = None

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            sd_notify.notify(sd_notify.READY)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        ctl = getattr(self.app.state, "controller", None)
        if self._winding_down is not None or ctl is None or not self.started:
            super().handle_exit(sig, frame)
            return
        sd_notify.notify(sd_notify.STOPPING)
        log.info("stopping: no new work; running prompts may finish")
        self._winding_down = threading.Thread(
            target=self._wind_down, args=(ctl,), name="graceful-stop", daemon=True
        )
        self._winding_down.start()

    def _wind_down(self, ctl) -> None:
        try:
            stopped = stopping.stop(ctl)
            log.info(
                "stopped: %d sign-ins cancelled, %d prompts cut short by the grace period",
                len(stopped.sign_ins_cancelled),
                len(stopped.prompts_cut_short),
            )
        finally:
            self.should_exit = True


def log_config() -> dict:
    """uvicorn's logging, with Hearth's own loggers on its handler (stderr: the journal)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["hearth"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(app: FastAPI, **where) -> None:
    """Serve `app` until stopped; `where` is uvicorn's host and port, or uds."""
    # No access log: live-view URLs carry their session's token in the query string.
    config = uvicorn.Config(
        app,
        log_config=log_config(),
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=CLOSE_WAIT,
        **where,
    )
    Server(config, app).run()
