"""Signalling a child the agent started in a session of its own (start_new_session), together
with everything it started: a CLI's helpers, Firefox's content processes. The child's pid is
its process group's id, so one killpg reaches them all; a group that is already gone is not
an error.

Standard library only: the guest runs this with Debian's python3.
"""

from __future__ import annotations

import contextlib
import os
import signal


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group led by `pid`, if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
