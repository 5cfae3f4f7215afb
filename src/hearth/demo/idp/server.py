"""Serving the demo identity provider: werkzeug's threaded server, with a request log that
shows method, path and status only (a query string can hold a code or a state)."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .app import create_app
from .models import ACCESS_TOKEN_LIFETIME

log = logging.getLogger("hearth.demo.idp")

POLL_INTERVAL = 0.1  # seconds between serve_forever's checks for shutdown()


class QuietRequestHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(self.path).path if hasattr(self, "path") else "-"
        log.info("%s %s %s", self.command or "-", path, code)

    def log_error(self, format: str, *args: Any) -> None:
        """The standard library's messages quote the raw request line; this one does not."""
        log.warning("bad request from %s", self.client_address[0])


def bind(
    host: str,
    port: int,
    users: dict[str, str],
    issuer: str | None = None,
    token_ttl: int = ACCESS_TOKEN_LIFETIME,
) -> tuple[BaseWSGIServer, str]:
    """A threaded server listening on host:port (0: any free port) and its issuer, by
    default http://host:<bound port>. The socket is bound first so the issuer can name the
    bound port, and so a busy port raises OSError (werkzeug's own bind calls sys.exit)."""
    sock = socket.create_server((host, port))
    try:
        bound = sock.getsockname()[1]
        name = f"[{host}]" if ":" in host else host  # an IPv6 address needs brackets in a URL
        issuer = issuer or f"http://{name}:{bound}"
        app = create_app(issuer, users, token_ttl)
        server = make_server(
            host,
            bound,
            app,
            threaded=True,
            request_handler=QuietRequestHandler,
            fd=sock.fileno(),
        )
    finally:
        sock.close()  # make_server holds its own duplicate of the descriptor
    return server, issuer


@dataclass(frozen=True)
class RunningIdp:
    issuer: str
    port: int
    stop: Callable[[], None]


def serve_in_thread(
    users: dict[str, str],
    host: str = "127.0.0.1",
    port: int = 0,
    issuer: str | None = None,
    token_ttl: int = ACCESS_TOKEN_LIFETIME,
) -> RunningIdp:
    """Start the provider on a daemon thread (for tests); `stop` shuts it down and waits."""
    server, issuer = bind(host, port, users, issuer, token_ttl)
    thread = threading.Thread(
        target=server.serve_forever, args=(POLL_INTERVAL,), name="hearth-demo-idp", daemon=True
    )
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join()

    return RunningIdp(issuer=issuer, port=server.port, stop=stop)
