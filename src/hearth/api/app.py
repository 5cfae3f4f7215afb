"""The controller's HTTP API: FastAPI app, its start-up and shut-down, and error shapes."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from hearth import metrics
from hearth.api import (
    admin_page,
    admin_routes,
    auth_routes,
    metrics_routes,
    prompt_routes,
    user_routes,
)
from hearth.api.admin_sessions import AdminSessions
from hearth.api.live import live_router
from hearth.api.schemas import ERROR_RESPONSES, Health
from hearth.config import Settings
from hearth.core import runtime
from hearth.core.failures import reason as failure_reason
from hearth.core.reconciler import reconcile
from hearth.core.scheduler import every
from hearth.errors import HearthError

MAX_BODY_BYTES = 64 * 1024
SESSION_SWEEP_SECONDS = 5.0


def idle_sweep_seconds(settings: Settings) -> float:
    """Often enough that an idle VM hibernates within a tenth of its idle time of it."""
    return min(30.0, max(0.5, settings.idle_hibernate / 10))


def create_app(
    settings: Settings, parts: Callable[[Settings], runtime.Controller] = runtime.controller
) -> FastAPI:
    """The app of a controller made by `parts` at start (the tests' rig gives its own)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Blocking work stays off the event loop (pyroute2's sync API runs a loop of its own).
        logging.getLogger("uvicorn.error").addFilter(no_query_strings)
        ctl = await asyncio.to_thread(parts, settings)
        await asyncio.to_thread(reconcile, ctl.vms)
        await asyncio.to_thread(ctl.sessions.recover)
        await asyncio.to_thread(ctl.prompts.recover)
        await asyncio.to_thread(ctl.pool.recover)
        egress = runtime.egress(ctl)
        await egress.start()
        stop = threading.Event()
        ctl.pool.start(stop)
        every(SESSION_SWEEP_SECONDS, ctl.sessions.expire_due, stop)
        every(idle_sweep_seconds(settings), ctl.cli_vms.sweep, stop)
        stop_metrics = metrics.listen(ctl)
        webhooks = runtime.start_webhooks(ctl)
        app.state.controller = ctl
        yield
        stop.set()
        stop_metrics()
        await asyncio.to_thread(webhooks.stop)
        await egress.stop()

    app = FastAPI(title="Hearth", lifespan=lifespan, responses=ERROR_RESPONSES)
    app.state.admin_sessions = AdminSessions()
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HearthError, _hearth_error)

    @app.get("/healthz", tags=["liveness"])
    def healthz() -> Health:
        return Health(status="ok")

    async def resolve(session_id: str, token: str):
        return await asyncio.to_thread(app.state.controller.sessions.live_view, session_id, token)

    app.include_router(auth_routes.router)
    app.include_router(prompt_routes.router)
    app.include_router(user_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(admin_page.router)
    app.include_router(metrics_routes.router)
    app.include_router(live_router(resolve))
    return app


def no_query_strings(record: logging.LogRecord) -> bool:
    """Uvicorn logs each WebSocket request line, query string and all, even with no access
    log; live-view URLs carry their session's token there. Keep the path, drop the query."""
    if isinstance(record.args, tuple):
        record.args = tuple(
            _QUERY.sub("?…", arg) if isinstance(arg, str) else arg for arg in record.args
        )
    return True


_QUERY = re.compile(r"\?[^\s\"]*")


async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    return JSONResponse(
        {"error": exc.detail}, status_code=exc.status_code, headers=getattr(exc, "headers", None)
    )


async def _hearth_error(_request: Request, exc: HearthError) -> JSONResponse:
    """Hearth's own errors that no route answered otherwise (see hearth.errors)."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return JSONResponse(
        {"error": failure_reason(exc)}, status_code=exc.http_status, headers=headers
    )


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return JSONResponse({"error": "invalid request", "problems": problems}, status_code=422)


class BodyLimit:
    """413 for bodies over the limit, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._too_large(send)
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse({"error": f"request body over {self.max_bytes} bytes"}, 413)
        await response({"type": "http"}, None, send)


class _TooLarge(Exception):
    pass
