"""Who may ask: every request to the API is authenticated before anything else reads it,
so that one without a valid key gets 401 (403 for a key whose role may not), whatever its
body, its size or its parameters (FastAPI reads and validates a body before a route's
dependencies run, and the body limit runs before routing).

A caller is an API key (`Authorization: Bearer <key>`, hearth.api.keys) or the admin page's
session cookie (hearth.api.admin_sessions) with its CSRF token where needed; a sign-in's
events stream also takes its live view's token (EventSource sends no headers). The key
accepted is the request's `state.api_key` (hearth.api.deps.require_key gives it to routes).
"""

from __future__ import annotations

import asyncio
import re

from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from hearth.api.admin_sessions import COOKIE, CSRF_HEADER, csrf_ok
from hearth.api.errors import http_error
from hearth.api.keys import Role, key_record, verify_key
from hearth.store.models import ApiKey

# The admin page's own routes that act or show as the operator (by its cookie).
ADMIN_PAGE_PATHS = ("/admin/events", "/admin/sign-out")
LIVE_EVENTS = re.compile(r"^/api/auth/session/(?P<session_id>[0-9a-f]{32})/events$")


def needed_role(path: str) -> Role | None:
    """The role a path needs: admin for the operator's routes and the metrics, any key for
    the rest of /api/ (an unknown path there too: the route table is not shown), none
    elsewhere (liveness, the docs, the live view and the admin page's sign-in)."""
    if path == "/metrics" or path in ADMIN_PAGE_PATHS or _under(path, "/api/admin"):
        return "admin"
    return "app" if _under(path, "/api") else None


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def authorize(record: ApiKey, role: Role) -> None:
    """403 unless the key may act in `role` (an admin key may do what an app key can)."""
    if role == "admin" and record.role != "admin":
        raise HTTPException(403, "this route needs an admin key")


class Authentication:
    """The outermost step of every request `needed_role` guards: 401 or 403 answered
    before the request's body is read."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        role = needed_role(scope["path"]) if scope["type"] == "http" else None
        if role is None:
            return await self.app(scope, receive, send)
        request = Request(scope)
        try:
            if not await _live_view_token(request):
                record = await _caller(request)
                authorize(record, role)
                scope.setdefault("state", {})["api_key"] = record
        except HTTPException as refused:
            return await http_error(refused)(scope, receive, send)
        await self.app(scope, receive, send)


async def _caller(request: Request) -> ApiKey:
    """The key of `Authorization: Bearer <key>`, or the admin page's sign-in's; 401 if none."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if not key and COOKIE in request.cookies:
        return await _cookie_key(request)
    if scheme.lower() != "bearer" or not key:
        raise HTTPException(401, "missing API key (Authorization: Bearer <key>)")
    db = request.app.state.controller.db
    record = await asyncio.to_thread(verify_key, db, key.strip())
    if record is None:
        raise HTTPException(401, "invalid API key")
    return record


async def _cookie_key(request: Request) -> ApiKey:
    session = request.app.state.admin_sessions.get(request.cookies.get(COOKIE))
    if session is None:
        raise HTTPException(401, "the admin sign-in has ended: sign in again at /admin")
    if not csrf_ok(session, request.method, request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, "missing or wrong X-CSRF-Token for the admin session")
    record = await asyncio.to_thread(key_record, request.app.state.controller.db, session.key_id)
    if record is None or record.role != "admin":
        raise HTTPException(401, "the admin key of this sign-in was revoked")
    return record


async def _live_view_token(request: Request) -> bool:
    """A GET of a sign-in's events carrying that session's live-view token (an ended
    session's too: its page may come back after the end to learn how it ended)."""
    match = LIVE_EVENTS.match(request.scope["path"])
    token = request.query_params.get("token")
    if not (match and token and request.method == "GET"):
        return False
    sessions = request.app.state.controller.sessions
    session = await asyncio.to_thread(sessions.token_session, match["session_id"], token)
    return session is not None
