"""How a failure is told to a user: its message, never a traceback or a secret."""

from __future__ import annotations


def reason(e: BaseException) -> str:
    """The first line of the message (capped), or the exception's type when it has none."""
    return str(e).splitlines()[0][:500] if str(e) else type(e).__name__
