"""An ASGI app under uvicorn on a thread of the test's process, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from hearth.waiting import wait_for

START_TIMEOUT = 60.0


@contextmanager
def serve_app(app: ASGIApp, port: int = 0) -> Iterator[str]:
    """`app` listening on `port` of 127.0.0.1 (by default a free one) once started (its
    lifespan run); its URL. On leaving it shuts down as on SIGTERM."""
    listener = socket.create_server(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_for(
            lambda: server.started or not thread.is_alive(), START_TIMEOUT, "the app to listen"
        )
        if not server.started:
            raise RuntimeError("the app did not start (its start-up failed: see the log)")
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        listener.close()
