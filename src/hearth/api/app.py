"""The controller's HTTP API: FastAPI app, its start-up and shut-down, and the steps every
request goes through (the last resort for errors, authentication, the body limit)."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from hearth import metrics
from hearth.api import (
    admin_page,
    admin_routes,
    auth_routes,
    errors,
    metrics_routes,
    prompt_routes,
    sse,
    user_routes,
)
from hearth.api.admin_sessions import AdminSessions
from hearth.api.authentication import Authentication
from hearth.api.live import live_router
from hearth.api.schemas import ERROR_RESPONSES, Health
from hearth.config import Settings
from hearth.core import runtime
from hearth.core.reconciler import reconcile
from hearth.core.scheduler import every

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
    # The last added is the outermost: a request is authenticated before its body is
    # measured or read, and any error on the way is answered in the one shape.
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(Authentication)
    app.add_middleware(errors.LastResort)
    errors.install(app)

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
    app.openapi = sse.documented(app, (auth_routes.EVENTS, prompt_routes.EVENTS))
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
        response = errors.error_response(413, f"request body over {self.max_bytes} bytes")
        await response({"type": "http"}, None, send)


class _TooLarge(Exception):
    pass
