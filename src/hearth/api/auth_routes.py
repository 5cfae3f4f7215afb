"""The auth-session API: start a sign-in, follow it, read its outcome, cancel it."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from hearth import providers
from hearth.api.deps import PROVIDERS, USER_ID_PATTERN, controller, require_key
from hearth.api.schemas import (
    CredentialsStatus,
    OAuthUrl,
    QueuePosition,
    SessionCancelled,
    SessionStarted,
    SessionView,
    TimelineEntry,
)
from hearth.api.sse import EventStream
from hearth.core.auth_sessions import TERMINAL, AuthSessions
from hearth.store.models import AuthSession, AuthSessionStatus

SessionId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="32 hex digits")]
KEEPALIVE_SECONDS = 15.0
EVENTS = EventStream(
    "`status` events, one per entry of the session's timeline, until the session ends; "
    "`queue` events while it is queued, whenever its position changes",
    {"status": TimelineEntry, "queue": QueuePosition},
)

router = APIRouter(prefix="/api/auth", tags=["auth sessions"])


class StartRequest(BaseModel):
    user_id: str = Field(pattern=USER_ID_PATTERN)
    provider: str = Field(max_length=64, json_schema_extra=PROVIDERS)


def sessions(request: Request) -> AuthSessions:
    return controller(request).sessions


def _found(svc: AuthSessions, session_id: str) -> AuthSession:
    session = svc.get(session_id)
    if session is None:
        raise HTTPException(404, f"no auth session {session_id}")
    return session


def session_view(svc: AuthSessions, session: AuthSession) -> SessionView:
    return SessionView(
        session_id=session.id,
        user_id=session.user_id,
        provider=session.provider,
        status=session.status,
        queue_position=svc.queue_position(session.id),
        error=session.error,
        expires_at=session.expires_at.isoformat(),
        timeline=[
            TimelineEntry(status=e.status, at=e.at.isoformat(), detail=e.detail)
            for e in svc.timeline(session.id)
        ],
    )


@router.post("/start", status_code=202, dependencies=[Depends(require_key)])
def start(body: StartRequest, request: Request) -> SessionStarted:
    if body.provider not in providers.names():
        raise HTTPException(
            400, f"unknown provider {body.provider!r}; known: {', '.join(providers.names())}"
        )
    svc = sessions(request)
    session, token = svc.start(body.user_id, body.provider)
    base = svc.settings.public_url.rstrip("/")
    return SessionStarted(
        session_id=session.id,
        status=session.status,
        queue_position=svc.queue_position(session.id),
        connect_url=f"{base}/connect/{session.id}?token={token}",
    )


@router.get("/session/{session_id}", dependencies=[Depends(require_key)])
def status(session_id: SessionId, request: Request) -> SessionView:
    svc = sessions(request)
    return session_view(svc, _found(svc, session_id))


@router.get("/session/{session_id}/oauth", dependencies=[Depends(require_key)])
def oauth(session_id: SessionId, request: Request) -> OAuthUrl:
    session = _found(sessions(request), session_id)
    if not session.oauth_url:
        raise HTTPException(409, f"no authorize URL captured yet (status {session.status})")
    return OAuthUrl(session_id=session.id, url=session.oauth_url)


@router.get(
    "/session/{session_id}/credentials/status",
    dependencies=[Depends(require_key)],
    response_model_exclude_unset=True,
)
def credentials_status(session_id: SessionId, request: Request) -> CredentialsStatus:
    """`pending` or `absent` carry only `status` and `provider`; `ready` or `invalid`, all."""
    svc = sessions(request)
    session = _found(svc, session_id)
    info = controller(request).credentials.info(session.user_id, session.provider)
    if session.status != AuthSessionStatus.completed or info is None:
        return CredentialsStatus(
            status="pending" if session.status not in TERMINAL else "absent",
            provider=session.provider,
        )
    return CredentialsStatus(
        status=info.status,
        provider=info.provider,
        account_email=info.account_email,
        expires_at=info.expires_at.isoformat() if info.expires_at else None,
        version=info.version,
        invalid_reason=info.invalid_reason,
        invalid_at=info.invalid_at.isoformat() if info.invalid_at else None,
    )


@router.post("/session/{session_id}/cancel", dependencies=[Depends(require_key)])
def cancel(session_id: SessionId, request: Request) -> SessionCancelled:
    svc = sessions(request)
    _found(svc, session_id)
    session = svc.cancel(session_id)
    return SessionCancelled(session_id=session.id, status=session.status)


@router.get(
    "/session/{session_id}/events",
    response_class=StreamingResponse,
    responses=EVENTS.responses(),
)
async def events(
    session_id: SessionId,
    request: Request,
    # Read by hearth.api.authentication; declared for the schema.
    token: Annotated[str | None, Query(max_length=128, description="the live view's")] = None,
) -> StreamingResponse:
    """Server-Sent Events: one `status` event per timeline entry, until the session ends,
    and while it is queued a `queue` event ({position}) whenever its position changes.

    Authenticated by an API key, or by the live view's token (EventSource sends no
    headers): hearth.api.authentication checks either before this runs. The token still
    reads the timeline once the session ended: a connect page whose stream was cut (a
    controller restart) and comes back after the end learns how it ended.
    """
    svc = sessions(request)
    _found(svc, session_id)

    async def stream():
        sent = 0
        position = None
        while True:
            seen = svc.notifier.version(session_id)
            timeline = await asyncio.to_thread(svc.timeline, session_id)
            for event in timeline[sent:]:
                data = {"status": event.status, "at": event.at.isoformat(), "detail": event.detail}
                yield EVENTS.encode("status", data)
            sent = len(timeline)
            now = await asyncio.to_thread(svc.queue_position, session_id)
            if now != position and now is not None:
                yield EVENTS.encode("queue", {"position": now})
            position = now
            if timeline and timeline[-1].status in TERMINAL:
                return
            if await request.is_disconnected():
                return
            changed = await asyncio.to_thread(
                svc.notifier.wait, session_id, seen, KEEPALIVE_SECONDS
            )
            if changed == seen:
                yield ": keepalive\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )
