"""Stand-ins for the providers' services, for tests only: each speaks what its pinned CLI
really sends and reads (docs/contracts/), checks what a careful provider checks, and is
served in the fake internet (tests/fake_internet.py) under the provider's own names."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

# Each provider's stand-in: a module of this package.
OF_PROVIDER = {"claude_code": "anthropic", "codex": "openai", "gemini_cli": "google"}

# Where a test revokes everything a stand-in has issued, as a user does on the provider's
# account page ("sign out of all sessions"): no real provider has this path.
REVOKE_PATH = "/standin/revoke-all"


def revoke_route(revoke: Callable[[], int]) -> Route:
    """POST REVOKE_PATH: every access and refresh token issued so far stops working."""

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"revoked": revoke()})

    return Route(REVOKE_PATH, endpoint, methods=["POST"])


def _field_names(body: bytes, content_type: str) -> list[str]:
    """The names of a request body's fields (JSON object keys, or form fields)."""
    if content_type.startswith("application/json"):
        try:
            data = json.loads(body)
        except ValueError:
            return []
        return sorted(data) if isinstance(data, dict) else []
    if content_type.startswith("application/x-www-form-urlencoded"):
        return sorted({name for name, _ in parse_qsl(body.decode(errors="replace"))})
    return []


# The header the tests' own requests carry (tests/standins/oauth_client.py), so that the
# record tells them from the CLI's.
TEST_CALLER = "x-standin-test-caller"


class Recorder:
    """ASGI middleware writing one JSON line per request: host, method, path, who made it
    (the CLI, the VM's Firefox or the test itself), the body's field names and the status
    answered; never values (they hold tokens). The tests hold the CLI's requests against the
    contract in the provider's spec (hearth.providers.base.Call)."""

    def __init__(self, app, path: Path) -> None:
        self.app, self.path = app, path

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        chunks, status = [], None
        while True:
            message = await receive()
            chunks.append(message)
            if not message.get("more_body"):
                break

        async def replay():
            return chunks.pop(0) if chunks else {"type": "http.disconnect"}

        async def sending(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        body = b"".join(c.get("body", b"") for c in chunks)
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        try:
            await self.app(scope, replay, sending)
        finally:
            caller = (
                "test"
                if TEST_CALLER in headers
                else "browser"
                if "Firefox/" in headers.get("user-agent", "")
                else "cli"
            )
            record = {
                "host": headers.get("host", "").split(":")[0],
                "method": scope["method"],
                "path": scope["path"],
                "caller": caller,
                "fields": _field_names(body, headers.get("content-type", "")),
                "status": status,
            }
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def serve(doc: str, build: Callable[[str], Starlette], port: int, answer: str) -> None:
    """A stand-in's command line: its app, built around the answer it gives, on host:port,
    recording each request to --record when given."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--answer", default=answer)
    parser.add_argument("--record", type=Path, help="a JSON-lines file of the requests")
    args = parser.parse_args()
    app = build(args.answer)
    uvicorn.run(
        Recorder(app, args.record) if args.record else app,
        host=args.host,
        port=args.port,
        log_level="warning",
    )
