"""The agent's HTTP plumbing, apart from its routes (those are in agent.py).

A Router maps a method and a path, whose `{name}` segments become request.params, to a
handler; a handler receives the state it was given (the agent's) and the parsed Request,
and returns a Response (JSON: a dict, or a protocol message with to_json()), a Stream
(chunked, for a run's output as it happens), or raises HttpError. The request handler checks
the bearer token before anything else, limits bodies, answers every error in JSON, and logs
only method, path and status: never the token, a header, a body or a query string. A route
registered as `polled` (a status the controller asks for every half second while it waits)
is logged once per change of its answer's status, so that the log keeps the other requests
readable.

Standard library only: it runs with Debian's python3.
"""

from __future__ import annotations

import hmac
import json
import re
import select
import socket
import socketserver
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

MAX_BODY = 1024 * 1024
PARAM = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # what a {name} segment of a route matches

_log_lock = threading.Lock()


def log(message: str) -> None:
    """One line on stdout (the console and the journal), prefixed hearth-agent:."""
    with _log_lock:
        sys.stdout.write(f"hearth-agent: {message}\n")
        sys.stdout.flush()


class HttpError(Exception):
    """Ends a request with `status` and a JSON body {"error": message}."""

    def __init__(
        self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    path: str
    headers: Message
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or a 400 saying why it is not one."""
        try:
            data = json.loads(self.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise HttpError(
                HTTPStatus.BAD_REQUEST, f"request body is not valid JSON: {e}"
            ) from None
        if not isinstance(data, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "request body must be a JSON object")
        return data


@dataclass
class Response:
    """A JSON answer: `body` is a JSON value or a message with to_json() (hearth.guest.protocol)."""

    body: Any
    status: HTTPStatus = HTTPStatus.OK
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stream:
    """A 200 sent with Transfer-Encoding: chunked, each chunk flushed as `chunks` yields it.
    An empty chunk sends nothing: it lets the server check that the client is still there
    while the source is quiet. `chunks` is closed when the client goes away, so its source
    can stop (a run kills its CLI)."""

    chunks: Iterator[bytes]
    content_type: str


Handler = Callable[[Any, Request], Response | Stream]


class Router:
    """Handlers by path and method; a path's `{name}` segments match any value PARAM allows,
    and an exact path is preferred over a pattern."""

    def __init__(self) -> None:
        self.routes: dict[str, dict[str, Handler]] = {}
        self._polled: set[tuple[str, str]] = set()  # (method, route path)

    def route(self, method: str, path: str, polled: bool = False) -> Callable[[Handler], Handler]:
        """A decorator registering its handler for `method` on `path`; `polled` for a status
        asked for again and again (logged only when its answer's status changes)."""

        def register(handler: Handler) -> Handler:
            self.routes.setdefault(path, {})[method] = handler
            if polled:
                self._polled.add((method, path))
            return handler

        return register

    def match(self, path: str) -> tuple[dict[str, Handler], dict[str, str]] | None:
        """The methods registered for `path` and the values of its `{name}` segments."""
        found = self._find(path)
        return None if found is None else found[1:]

    def polled(self, method: str, path: str) -> bool:
        """Whether `method` on `path` is a route registered as polled."""
        found = self._find(path)
        return found is not None and (method, found[0]) in self._polled

    def _find(self, path: str) -> tuple[str, dict[str, Handler], dict[str, str]] | None:
        """The route matching `path`, its methods, and the values of its `{name}` segments."""
        if path in self.routes:
            return path, self.routes[path], {}
        segments = path.split("/")
        for pattern, methods in self.routes.items():
            parts = pattern.split("/")
            if "{" not in pattern or len(parts) != len(segments):
                continue
            params = {}
            for part, segment in zip(parts, segments, strict=True):
                if part.startswith("{") and part.endswith("}") and PARAM.fullmatch(segment):
                    params[part[1:-1]] = segment
                elif part != segment:
                    break
            else:
                return pattern, methods, params
        return None


class ApiRequestHandler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"
    server_version = "hearth-agent"
    sys_version = ""
    timeout = 60  # seconds a client may stall mid-request before its socket is closed

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        try:
            self._authorize()
            body = self._read_body()
            found = self.server.router.match(path)
            if found is None:
                raise HttpError(HTTPStatus.NOT_FOUND, f"no route {path}")
            methods, params = found
            handler = methods.get(self.command)
            if handler is None:
                raise HttpError(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    f"{path} does not accept {self.command}",
                    {"Allow": ", ".join(sorted(methods))},
                )
            request = Request(self.command, path, self.headers, body, params)
            response = handler(self.server.state, request)
        except HttpError as e:
            response = Response({"error": e.message}, e.status, e.headers)
        except Exception as e:  # a handler bug must answer 500, not drop the connection
            log(f"internal error in {self.command} {path}: {type(e).__name__}")
            response = Response({"error": "internal error"}, HTTPStatus.INTERNAL_SERVER_ERROR)
        if isinstance(response, Stream):
            self._send_stream(response, path)
        else:
            body = response.body.to_json() if hasattr(response.body, "to_json") else response.body
            self._send_json(response.status, body, response.headers)

    def _authorize(self) -> None:
        scheme, _, presented = (self.headers.get("Authorization") or "").partition(" ")
        expected = self.server.token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), expected
        ):
            # The body of an unauthenticated request is never read, so the connection
            # cannot be reused.
            self.close_connection = True
            raise HttpError(
                HTTPStatus.UNAUTHORIZED,
                "missing or wrong bearer token",
                {"WWW-Authenticate": "Bearer"},
            )

    def _read_body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise HttpError(HTTPStatus.LENGTH_REQUIRED, "send a Content-Length, not chunks")
        raw = self.headers.get("Content-Length", "0")
        if not raw.isascii() or not raw.isdigit():
            self.close_connection = True
            raise HttpError(HTTPStatus.BAD_REQUEST, f"bad Content-Length {raw[:32]!r}")
        length = int(raw)
        if length > MAX_BODY:
            self.close_connection = True
            raise HttpError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"request body of {length} bytes exceeds the {MAX_BODY}-byte limit",
            )
        return self.rfile.read(length)

    def _send_json(
        self, status: HTTPStatus, body: Any, headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, stream: Stream, path: str) -> None:
        """Send `stream` chunk by chunk; close it however sending ends, so its source learns
        that nobody listens any more. A failure after the headers can only end the
        connection: the missing last chunk tells the client the stream is incomplete."""
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", stream.content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            for chunk in stream.chunks:
                if chunk:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                elif self._client_gone():
                    raise ConnectionResetError("the client closed the connection")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            log(f"{self.command} {path}: the client went away mid-stream")
        except Exception as e:  # the source failed: end the connection, not the agent
            self.close_connection = True
            log(f"internal error streaming {self.command} {path}: {type(e).__name__}")
        finally:
            close = getattr(stream.chunks, "close", None)
            if close is not None:
                close()

    def _client_gone(self) -> bool:
        """True when the client has closed its end (readable, and a peek finds EOF)."""
        readable, _, _ = select.select([self.connection], [], [], 0)
        return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors the standard library detects (bad request line, unknown method,
        oversized headers) also answer in JSON."""
        self.close_connection = True
        status = HTTPStatus(code)
        self._send_json(status, {"error": message or status.phrase})

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = urlsplit(self.path).path if getattr(self, "path", None) else "-"
        method = self.command or "-"
        if self.server.router.polled(method, path):
            if not self.server.poll_changed(method, path, str(code)):
                return
            log(f"{method} {path} {code} (polled: logged again when its status changes)")
            return
        log(f"{method} {path} {code}")

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the default logs raw request lines to stderr. log_request is enough."""


class ApiServer(ThreadingHTTPServer):
    """Serves `router`'s routes to clients presenting `token`, handing handlers `state`."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], router: Router, token: str, state: Any) -> None:
        super().__init__(address, ApiRequestHandler)
        self.router = router
        self.token = token
        self.state = state
        self._polls: dict[tuple[str, str], str] = {}  # (method, path) -> its last status
        self._polls_lock = threading.Lock()

    def poll_changed(self, method: str, path: str, status: str) -> bool:
        """Whether a poll of `path` answered otherwise than the one before it (or is the
        first), remembering its status."""
        with self._polls_lock:
            before = self._polls.get((method, path))
            self._polls[(method, path)] = status
        return before != status

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the address: early in boot there
        is no resolver, and the lookup would hold the agent back for the resolver's timeout."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = socket.gethostname(), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line instead of the default traceback on stderr."""
        log(f"connection from {client_address[0]} failed: {type(sys.exc_info()[1]).__name__}")
