"""How the API answers what went wrong: one shape, `{"error": message, "code": code}`
(hearth.api.schemas.ErrorBody), for every 4xx and 5xx, whoever raised it: Hearth's own
errors, FastAPI's and Starlette's (an unknown route, a wrong method), the request's
validation, and, last, any other exception, whose text is never sent or logged since it
may hold a secret."""

from __future__ import annotations

import logging
import secrets
import traceback

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth.api.schemas import STATUSES
from hearth.core.failures import reason as failure_reason
from hearth.errors import HearthError

log = logging.getLogger(__name__)


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> JSONResponse:
    """The answer for an error; `code` defaults to the status's (hearth.api.schemas)."""
    code = code or STATUSES.get(status, (f"http_{status}", ""))[0]
    return JSONResponse(
        {"error": message, "code": code, **extra}, status_code=status, headers=headers
    )


def http_error(exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


def install(app: FastAPI) -> None:
    """Answer the errors of `app`'s routes in the one shape; LastResort, the outermost
    middleware, answers the rest."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HearthError, _hearth_error)


async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
    return http_error(exc)


async def _hearth_error(_request: Request, exc: HearthError) -> JSONResponse:
    """Hearth's own errors that no route answered otherwise (see hearth.errors)."""
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return error_response(exc.http_status, failure_reason(exc), exc.code, headers)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return error_response(422, "invalid request", problems=problems)


class LastResort:
    """500 in the one shape for any exception nothing else answered, logged with an
    incident id the answer gives too: the exception's type and where it was raised, never
    its text. A response already under way (a stream) cannot be answered: it is cut off."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:  # noqa: BLE001 - the last resort: anything is answered
            incident = secrets.token_hex(4)
            where = "".join(traceback.format_list(traceback.extract_tb(exc.__traceback__)))
            log.error(
                "%s %s failed with %s (incident %s; its message is left out: it may hold a "
                "secret)\n%s",
                scope["method"],
                scope["path"],
                type(exc).__name__,
                incident,
                where.rstrip(),
            )
            if not started:
                message = f"Hearth could not answer this request (incident {incident} in its log)"
                await error_response(500, message)(scope, receive, send)
