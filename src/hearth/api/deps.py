"""What every route needs: the controller's parts and the caller's API key."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import HTTPException, Path, Request

from hearth import providers
from hearth.api.admin_sessions import COOKIE, CSRF_HEADER, csrf_ok
from hearth.api.keys import key_record, verify_key
from hearth.core.runtime import Controller
from hearth.store.models import ApiKey

USER_ID_PATTERN = r"^[A-Za-z0-9._@+-]{1,128}$"  # the product's user ids, as given to Hearth
UserId = Annotated[str, Path(pattern=USER_ID_PATTERN)]
# The schema names the known providers; an unknown one is still answered 400, naming them.
PROVIDERS = {"enum": providers.names()}
ProviderName = Annotated[str, Path(max_length=64, json_schema_extra=PROVIDERS)]


def controller(request: Request) -> Controller:
    return request.app.state.controller


async def require_key(request: Request) -> ApiKey:
    """401 unless the request carries `Authorization: Bearer <valid API key>`, or the admin
    page's session cookie (hearth.api.admin_sessions) with its CSRF token where needed."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if not key and COOKIE in request.cookies:
        return await _cookie_key(request)
    if scheme.lower() != "bearer" or not key:
        raise HTTPException(401, "missing API key (Authorization: Bearer <key>)")
    record = await asyncio.to_thread(verify_key, controller(request).db, key.strip())
    if record is None:
        raise HTTPException(401, "invalid API key")
    return record


async def _cookie_key(request: Request) -> ApiKey:
    session = request.app.state.admin_sessions.get(request.cookies.get(COOKIE))
    if session is None:
        raise HTTPException(401, "the admin sign-in has ended: sign in again at /admin")
    if not csrf_ok(session, request.method, request.headers.get(CSRF_HEADER)):
        raise HTTPException(403, "missing or wrong X-CSRF-Token for the admin session")
    record = await asyncio.to_thread(key_record, controller(request).db, session.key_id)
    if record is None or record.role != "admin":
        raise HTTPException(401, "the admin key of this sign-in was revoked")
    return record


async def require_admin(request: Request) -> ApiKey:
    """401 without a valid key, 403 unless it is an admin key."""
    record = await require_key(request)
    if record.role != "admin":
        raise HTTPException(403, "this route needs an admin key")
    return record
