"""The admin page: the operator's view of the controller, served by it.

Sign-in with an admin key (hearth.api.admin_sessions), then one page that follows a
snapshot of the controller over Server-Sent Events (host, VMs, sign-ins, users, keys,
webhook endpoints, egress) and acts through the admin API (/api/admin/...) with the
session cookie and its CSRF token. The stream's query (PageView) carries the page's filters
and what it has opened (a VM's console, a user's prompts, an endpoint's deliveries), so
those follow live too. The page loads nothing Hearth does not serve itself.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Annotated, get_args
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field

from hearth.api import admin_routes
from hearth.api.admin_routes import (
    ENDPOINT_ID_PATTERN,
    PROVIDER_PATTERN,
    VM_ID_PATTERN,
    EgressVerdict,
)
from hearth.api.admin_sessions import COOKIE, LIFETIME
from hearth.api.deps import USER_ID_PATTERN, require_admin
from hearth.api.keys import verify_key
from hearth.api.live import WEB_DIR
from hearth.core.egress import connection_view, connections
from hearth.core.webhooks import EventType
from hearth.store.models import AuthSessionStatus, VmState

SNAPSHOT_SECONDS = 1.0  # how often the page's stream looks for a change
KEEPALIVE_SECONDS = 15.0
MAX_FORM_BYTES = 4096
LIST_LIMIT = 20  # sign-ins and egress rows the page shows until asked for more
CONSOLE_LINES = 200
PROMPTS_SHOWN = 50
DELIVERIES_SHOWN = 20
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
    return _page(
        request,
        signed_in=True,
        csrf=session.csrf,
        list_limit=LIST_LIMIT,
        event_types=list(EventType),
        choices={
            "vm_state": list(VmState),
            "session_status": list(AuthSessionStatus),
            "egress_verdict": get_args(EgressVerdict),
        },
    )


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


class PageView(BaseModel):
    """What the page asks its stream for beyond the defaults: the filters of its lists (as
    the admin API takes them) and what it has opened. Checked as the API checks them."""

    model_config = ConfigDict(extra="forbid")

    vm_state: VmState | None = None
    session_status: AuthSessionStatus | None = None
    session_provider: str | None = Field(None, pattern=PROVIDER_PATTERN)
    session_user: str | None = Field(None, pattern=USER_ID_PATTERN)
    session_limit: int = Field(LIST_LIMIT, ge=1, le=1000)
    egress_vm: str | None = Field(None, pattern=VM_ID_PATTERN)
    egress_user: str | None = Field(None, pattern=USER_ID_PATTERN)
    egress_verdict: EgressVerdict | None = None
    egress_limit: int = Field(LIST_LIMIT, ge=1, le=1000)
    console_vm: str | None = Field(None, pattern=VM_ID_PATTERN)
    prompts_user: str | None = Field(None, pattern=USER_ID_PATTERN)
    webhook: str | None = Field(None, pattern=ENDPOINT_ID_PATTERN)


def _opened(item: str | None, read: Callable[[str], BaseModel]) -> dict | None:
    """What the page opened (`item`) shows, as the API gives it; None when nothing is open
    or the item is gone (an endpoint deleted, say)."""
    if item is None:
        return None
    try:
        return read(item).model_dump()
    except HTTPException as missing:
        if missing.status_code == 404:
            return None
        raise


def snapshot(request: Request, view: PageView) -> dict:
    """Everything the page shows, as the admin API gives it (never a secret: the API's
    views hold none)."""
    ctl = request.app.state.controller
    sessions = admin_routes.list_sessions(
        request, view.session_status, view.session_provider, view.session_user, view.session_limit
    )
    egress = connections(
        ctl.db, view.egress_vm, view.egress_user, view.egress_verdict, view.egress_limit
    )
    return {
        "host": admin_routes.host(request).model_dump(),
        "vms": admin_routes.list_vms(request, view.vm_state, None).model_dump()["vms"],
        "sessions": sessions.model_dump()["sessions"],
        "users": admin_routes.list_users(request).model_dump()["users"],
        "keys": admin_routes.list_keys(request).model_dump()["keys"],
        "webhooks": admin_routes.list_webhooks(request).model_dump()["endpoints"],
        "egress": [connection_view(c) for c in egress],
        "console": _opened(
            view.console_vm, lambda vm_id: admin_routes.vm_console(vm_id, request, CONSOLE_LINES)
        ),
        "prompts": _opened(
            view.prompts_user, lambda user: admin_routes.get_user(user, request, PROMPTS_SHOWN)
        ),
        "deliveries": _opened(
            view.webhook,
            lambda endpoint: admin_routes.list_deliveries(
                endpoint, request, None, DELIVERIES_SHOWN
            ),
        ),
    }


@router.get("/admin/events", dependencies=[Depends(require_admin)])
async def events(request: Request, view: Annotated[PageView, Query()]) -> StreamingResponse:
    """`snapshot` events (JSON) whenever what the page shows changes."""

    async def stream():
        last, quiet = None, 0.0
        while not await request.is_disconnected():
            data = json.dumps(await asyncio.to_thread(snapshot, request, view), default=str)
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
