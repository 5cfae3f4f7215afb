"""Stand-ins for the providers' services, for tests only: each speaks what its pinned CLI
really sends and reads (docs/contracts/), checks what a careful provider checks, and is
served in the fake internet (tests/fake_internet.py) under the provider's own names."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

# Where a test revokes everything a stand-in has issued, as a user does on the provider's
# account page ("sign out of all sessions"): no real provider has this path.
REVOKE_PATH = "/standin/revoke-all"


def revoke_route(revoke: Callable[[], int]) -> Route:
    """POST REVOKE_PATH: every access and refresh token issued so far stops working."""
    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"revoked": revoke()})
    return Route(REVOKE_PATH, endpoint, methods=["POST"])


def serve(doc: str, build: Callable[[str], Starlette], port: int, answer: str) -> None:
    """A stand-in's command line: its app, built around the answer it gives, on host:port."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--answer", default=answer)
    args = parser.parse_args()
    uvicorn.run(build(args.answer), host=args.host, port=args.port, log_level="warning")
