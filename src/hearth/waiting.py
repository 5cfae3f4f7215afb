"""Waiting without fixed sleeps: every wait is a condition polled against a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from hearth.errors import HearthError

T = TypeVar("T")


class Timeout(HearthError, TimeoutError):
    """Something awaited did not happen in time; the message names it."""

    http_status = 504


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call `check` until it returns something truthy; raise `Timeout` naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(min(interval, remaining))
