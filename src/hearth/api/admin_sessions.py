"""The admin page's sign-in: an admin key, once, for a session cookie.

The cookie holds a random session id (HttpOnly, SameSite=Strict, Path=/, Secure when the
controller's public URL is https), kept in memory with the key's id and a CSRF token: a
restart signs operators out. Each request re-checks that the key is still an unrevoked
admin key. Requests that change anything must also carry the session's CSRF token in
`X-CSRF-Token` (the page reads it from its own HTML), so another site cannot act with the
cookie even where SameSite is not honoured.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from dataclasses import dataclass

COOKIE = "hearth_admin"
CSRF_HEADER = "x-csrf-token"
LIFETIME = 8 * 3600.0  # seconds a sign-in lasts
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class AdminSession:
    key_id: str
    csrf: str
    expires: float  # time.monotonic()


class AdminSessions:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, AdminSession] = {}

    def open(self, key_id: str) -> tuple[str, AdminSession]:
        """A new session for the key: its cookie value and the session."""
        session_id = secrets.token_urlsafe(32)
        session = AdminSession(key_id, secrets.token_urlsafe(32), time.monotonic() + LIFETIME)
        with self._lock:
            self._sessions[session_id] = session
        return session_id, session

    def get(self, session_id: str | None) -> AdminSession | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires < time.monotonic():
                del self._sessions[session_id]
                return None
            return session

    def close(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)


def csrf_ok(session: AdminSession, method: str, presented: str | None) -> bool:
    """Whether a request with the session's cookie may go on."""
    if method.upper() in SAFE_METHODS:
        return True
    return bool(presented) and hmac.compare_digest(presented, session.csrf)
