"""A graceful stop of the controller (SIGTERM): it takes no new work, ends the sign-ins in
progress cancelled, lets running prompts finish within `shutdown_grace`, and leaves the VMs
(users' CLI VMs) for the reconciler of the next start."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hearth.core import CoreError

if TYPE_CHECKING:
    from hearth.core.runtime import Controller


# Seconds a restart takes beyond the stop's grace period: uvicorn closes the connections
# still open after 5 s, systemd starts the unit again 2 s later (RestartSec=), and the start
# reconciles the VMs and recovers the sign-ins and prompts before it listens.
RESTART_SECONDS = 15


class ControllerStopping(CoreError):
    """The controller is stopping and takes no new work; the client may try again once it
    is back: Retry-After says when a restart would have it back at the latest."""

    http_status = 503

    def __init__(self, message: str, shutdown_grace: float) -> None:
        super().__init__(message)
        self.retry_after = math.ceil(shutdown_grace) + RESTART_SECONDS


@dataclass
class Stopped:
    """What the stop did: sign-ins ended cancelled, prompts cut short by the grace period."""

    sign_ins_cancelled: list[str] = field(default_factory=list)
    prompts_cut_short: list[str] = field(default_factory=list)


def stop(ctl: Controller) -> Stopped:
    """Wind the controller's work down; it returns when nothing of it runs any more."""
    deadline = time.monotonic() + ctl.settings.shutdown_grace
    ctl.prompts.stop_taking()
    cancelled = ctl.sessions.stop(deadline)
    return Stopped(cancelled, ctl.prompts.drain(deadline))
