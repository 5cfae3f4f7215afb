"""Stand-ins for the providers' services, for tests only: each speaks what its pinned CLI
really sends and reads (docs/contracts/), checks what a careful provider checks, and is
served in the fake internet (tests/fake_internet.py) under the provider's own names."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette


def serve(doc: str, build: Callable[[str], Starlette], port: int, answer: str) -> None:
    """A stand-in's command line: its app, built around the answer it gives, on host:port."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=port)
    parser.add_argument("--answer", default=answer)
    args = parser.parse_args()
    uvicorn.run(build(args.answer), host=args.host, port=args.port, log_level="warning")
