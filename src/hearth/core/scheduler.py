"""Periodic housekeeping jobs (session expiry, idle CLI VMs): a thread each, until stopped.

A job that fails is logged and tried again next period: housekeeping must outlive a bad pass.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def every(seconds: float, job: Callable[[], object], stop: threading.Event) -> threading.Thread:
    """Run `job` every `seconds` in a daemon thread until `stop` is set."""

    def loop() -> None:
        while not stop.wait(seconds):
            try:
                job()
            except Exception as e:  # noqa: BLE001 - logged; the next pass tries again
                log.warning("housekeeping job %s failed: %s", _name(job), type(e).__name__)

    thread = threading.Thread(target=loop, daemon=True, name=f"every-{_name(job)}")
    thread.start()
    return thread


def _name(job: Callable[[], object]) -> str:
    return getattr(job, "__qualname__", repr(job))
