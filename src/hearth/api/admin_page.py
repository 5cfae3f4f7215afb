"""The admin page: the operator's view of the controller, served by it.

Sign-in with an admin key (hearth.api.admin_sessions), then one page that follows a
snapshot of the controller over Server-Sent Events (host, VMs, sign-ins, users, keys,
egress) and acts through the admin API (/api/admin/...) with the session cookie and its
CSRF token. The page loads nothing Hearth does not serve itself.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from hearth.api import admin_routes
from hearth.api.admin_sessions import COOKIE, LIFETIME
from hearth.api.deps import require_admin
from hearth.api.keys import verify_key
from hearth.api.live import WEB_DIR
from hearth.core.egress import connection_view, connections

SNAPSHOT_SECONDS = 1.0  # how often the page's stream looks for a change
KEEPALIVE_SECONDS = 15.0
MAX_FORM_BYTES = 4096
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
}

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=WEB_DIR / "templates")


def _page(request: Request, status: int = 200, **context) -> Response:
    return templates.TemplateResponse(
        request, "admin.html", context, status_code=status, headers=PAGE_HEADERS
    )


@router.get("/admin", response_class=HTMLResponse)
def admin_page(request: Request) -> Response:
    session = request.app.state.admin_sessions.get(request.cookies.get(COOKIE))
    if session is None:
        return _page(request, signed_in=False)
    return _page(request, signed_in=True, csrf=session.csrf)


@router.post("/admin/sign-in")
async def sign_in(request: Request) -> Response:
    """The sign-in form's POST (urlencoded `key`): an admin key opens a session."""
    body = await request.body()
    key = parse_qs(body[:MAX_FORM_BYTES].decode(errors="replace")).get("key", [""])[0].strip()
    db = request.app.state.controller.db
    record = await asyncio.to_thread(verify_key, db, key) if key else None
    if record is None:
        return _page(request, 401, signed_in=False, error="That is not a valid API key.")
    if record.role != "admin":
        return _page(request, 403, signed_in=False, error="This page needs an admin key.")
    session_id, _ = request.app.state.admin_sessions.open(record.id)
    response = RedirectResponse("/admin", status_code=303)
    secure = request.app.state.controller.settings.public_url.startswith("https:")
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(LIFETIME),
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/admin/sign-out", dependencies=[Depends(require_admin)])  # cookie and CSRF
async def sign_out(request: Request) -> Response:
    request.app.state.admin_sessions.close(request.cookies.get(COOKIE))
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/")
    return response


def snapshot(request: Request) -> dict:
    """Everything the page shows, as the admin API gives it."""
    ctl = request.app.state.controller
    return {
        "host": admin_routes.host(request).model_dump(),
        "vms": admin_routes.list_vms(request, None, None).model_dump()["vms"],
        "sessions": admin_routes.list_sessions(request, None, None, None, 20).model_dump()[
            "sessions"
        ],
        "users": admin_routes.list_users(request).model_dump()["users"],
        "keys": admin_routes.list_keys(request).model_dump()["keys"],
        "egress": [connection_view(c) for c in connections(ctl.db, None, None, None, 20)],
    }


@router.get("/admin/events", dependencies=[Depends(require_admin)])
async def events(request: Request) -> StreamingResponse:
    """`snapshot` events (JSON) whenever what the page shows changes."""

    async def stream():
        last, quiet = None, 0.0
        while not await request.is_disconnected():
            data = json.dumps(await asyncio.to_thread(snapshot, request), default=str)
            if data != last:
                yield f"event: snapshot\ndata: {data}\n\n"
                last, quiet = data, 0.0
            elif quiet >= KEEPALIVE_SECONDS:
                yield ": keepalive\n\n"
                quiet = 0.0
            await asyncio.sleep(SNAPSHOT_SECONDS)
            quiet += SNAPSHOT_SECONDS

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )
