"""The in-guest agent: a small HTTP API the controller drives, behind a per-VM bearer token.

Standard library only (the image has Debian's python3 and no pip). Every route is a
function in ROUTES, registered with @route under a path whose `{name}` segments become
request.params; a handler receives the parsed Request and returns a Response (JSON), a
Stream (chunked, for a run's output as it happens) or raises HttpError.
Nothing here logs the token, any request header, a login's or a run's output or any
credential: the console and journal show only method, path and status, and progress in words.
"""

from __future__ import annotations

import hmac
import json
import math
import os
import re
import select
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__:
    from . import browser_shim, custody, login, ports, probe, runs, seed, trust
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import browser_shim
    import custody
    import login
    import ports
    import probe
    import runs
    import seed
    import trust

DEFAULT_ADDR = "0.0.0.0"
DEFAULT_PORT = ports.AGENT_PORT  # HEARTH_AGENT_PORT overrides it for local runs (tests)
MAX_BODY = 1024 * 1024
RESOLV_CONF = Path("/etc/resolv.conf")
PING_TIMEOUT = 10.0
PARAM = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # what a {name} segment of a route matches
CLOCK_TOLERANCE = 1.0  # seconds the guest clock may be off before PUT /clock sets it
MAX_EPOCH = 2.0**33  # year 2242: anything later is a bad request, not a time

_log_lock = threading.Lock()


def log(message: str) -> None:
    with _log_lock:
        sys.stdout.write(f"hearth-agent: {message}\n")
        sys.stdout.flush()


def uptime() -> float:
    """Seconds since the guest booted (the same clock the console log is stamped with)."""
    return float(Path("/proc/uptime").read_text().split()[0])


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


@dataclass
class Agent:
    """What handlers may use: the token (for auth only), when serving began, the logins
    and the prompt runs."""

    token: str
    started_at_uptime: float = 0.0
    logins: login.LoginManager = field(default_factory=lambda: login.LoginManager(log))
    runs: runs.RunManager = field(default_factory=lambda: runs.RunManager(log))


Handler = Callable[[Agent, Request], Response | Stream]
ROUTES: dict[str, dict[str, Handler]] = {}


def route(method: str, path: str) -> Callable[[Handler], Handler]:
    """Register `handler` for `method` on `path`, whose `{name}` segments match any value
    PARAM allows (an exact path is preferred over a pattern)."""

    def register(handler: Handler) -> Handler:
        ROUTES.setdefault(path, {})[method] = handler
        return handler

    return register


def match_route(path: str) -> tuple[dict[str, Handler], dict[str, str]] | None:
    """The methods registered for `path` and the values of its `{name}` segments."""
    if path in ROUTES:
        return ROUTES[path], {}
    segments = path.split("/")
    for pattern, methods in ROUTES.items():
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
            return methods, params
    return None


def _ip_json(*args: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["ip", "-j", *args], capture_output=True, text=True, timeout=5, check=True
    )
    return json.loads(done.stdout or "[]")


def _nameservers() -> list[str]:
    try:
        lines = RESOLV_CONF.read_text().splitlines()
    except OSError:
        return []
    return [
        parts[1]
        for parts in (line.split() for line in lines)
        if len(parts) >= 2 and parts[0] == "nameserver"
    ]


def network_state() -> dict[str, Any]:
    """Addresses, IPv4 routes and DNS as the guest sees them; a failing probe is reported
    in "errors" rather than failing /health, which is also the readiness check."""
    state: dict[str, Any] = {"addresses": [], "routes": [], "dns": _nameservers(), "errors": []}
    try:
        state["addresses"] = [
            {
                "ifname": link.get("ifname"),
                "family": info.get("family"),
                "address": info.get("local"),
                "prefixlen": info.get("prefixlen"),
            }
            for link in _ip_json("addr", "show")
            for info in link.get("addr_info", [])
        ]
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        state["errors"].append(f"ip -j addr: {e}")
    try:
        state["routes"] = [
            {"dst": r.get("dst"), "gateway": r.get("gateway"), "dev": r.get("dev")}
            for r in _ip_json("route", "show")
        ]
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        state["errors"].append(f"ip -j route: {e}")
    return state


@route("GET", "/ready")
def ready(agent: Agent, request: Request) -> Response:
    """The readiness probe: it starts no process, so a guest just restored from a snapshot
    (which under emulation must translate its code afresh) answers at once. /health, which
    runs `ip` twice, is the report."""
    return Response({"status": "ok", "uptime": uptime()})


@route("GET", "/health")
def health(agent: Agent, request: Request) -> Response:
    return Response(
        {
            "status": "ok",
            "hostname": socket.gethostname(),
            "uptime": uptime(),
            "started_at_uptime": agent.started_at_uptime,
            "network": network_state(),
        }
    )


@route("POST", "/diagnostics/ping")
def ping(agent: Agent, request: Request) -> Response:
    host = request.json().get("host")
    if not isinstance(host, str):
        raise HttpError(HTTPStatus.BAD_REQUEST, '"host" must be a string holding an IPv4 address')
    try:
        # Validated and normalised, so it can never be read by ping as an option.
        address = str(IPv4Address(host))
    except ValueError:
        raise HttpError(
            HTTPStatus.BAD_REQUEST, f'"host" must be an IPv4 address, not {host[:64]!r}'
        ) from None
    try:
        done = subprocess.run(
            ["ping", "-c", "1", "-W", "2", address],
            capture_output=True,
            text=True,
            timeout=PING_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return Response({"ok": False, "output": f"ping did not finish in {PING_TIMEOUT:.0f}s"})
    except OSError as e:
        return Response({"ok": False, "output": f"cannot run ping: {e}"})
    return Response({"ok": done.returncode == 0, "output": done.stdout + done.stderr})


def _current_login(agent: Agent) -> login.LoginSession:
    session = agent.logins.session
    if session is None:
        raise HttpError(HTTPStatus.NOT_FOUND, "no login has been started")
    return session


@route("POST", "/login")
def start_login(agent: Agent, request: Request) -> Response:
    """Start the provider login the spec describes; its progress is at GET /login."""
    try:
        session = agent.logins.start(request.json().get("spec"))
    except login.SpecError as e:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"bad login spec: {e}") from None
    except login.LoginBusy as e:
        raise HttpError(HTTPStatus.CONFLICT, str(e)) from None
    except OSError as e:
        raise HttpError(
            HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot start the login: {e.strerror or e}"
        ) from None
    return Response(session.status(), HTTPStatus.ACCEPTED)


@route("GET", "/login")
def login_status(agent: Agent, request: Request) -> Response:
    return Response(_current_login(agent).status())


@route("DELETE", "/login")
def cancel_login(agent: Agent, request: Request) -> Response:
    """Stop a running login (so another can start); a finished one is left as it is."""
    session = _current_login(agent)
    session.cancel()
    return Response(session.status(), HTTPStatus.ACCEPTED)


@route("GET", "/credentials")
def credentials(agent: Agent, request: Request) -> Response:
    """The finished login's credential files, base64 by path under HOME; 409 until then."""
    session = agent.logins.session
    if session is None:
        raise HttpError(HTTPStatus.CONFLICT, "no login has been started")
    try:
        files = session.credentials()
    except login.NotReady as e:
        raise HttpError(HTTPStatus.CONFLICT, str(e)) from None
    return Response({"provider": session.spec.name, "files": files})


# --- credential custody (the CLI VM) -----------------------------------------------------


def _custody_error(e: Exception) -> HttpError:
    if isinstance(e, custody.CustodyError):
        return HttpError(HTTPStatus.BAD_REQUEST, str(e))
    if isinstance(e, custody.NoManifest):
        return HttpError(HTTPStatus.NOT_FOUND, str(e))
    return HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot access the credential files: {e}")


@route("PUT", "/credentials/{provider}")
def install_credentials(agent: Agent, request: Request) -> Response:
    """Install one provider's files in the CLI user's HOME; the credential files' digest."""
    provider = request.params["provider"]
    body = request.json()
    try:
        files = custody.decode_files(body, "credential_files", required=True)
        support = custody.decode_files(body, "support_files")
        digest = custody.install(provider, files, support)
    except (custody.CustodyError, OSError) as e:
        raise _custody_error(e) from None
    log(f"installed {len(files)} credential and {len(support)} support files for {provider}")
    return Response({"provider": provider, "digest": digest})


@route("GET", "/credentials/{provider}")
def read_credentials(agent: Agent, request: Request) -> Response:
    """The provider's credential files as they are now (a run may have refreshed them)."""
    provider = request.params["provider"]
    try:
        files, digest = custody.read(provider)
    except (custody.CustodyError, custody.NoManifest, OSError) as e:
        raise _custody_error(e) from None
    encoded = {path: custody.b64encode(content) for path, content in files.items()}
    return Response({"provider": provider, "files": encoded, "digest": digest})


@route("POST", "/credentials/{provider}/probe")
def probe_credentials(agent: Agent, request: Request) -> Response:
    """The provider's verdict on the installed access token (hearth.guest.probe)."""
    provider = request.params["provider"]
    try:
        spec = probe.ProbeSpec.from_json(request.json())
        files, _ = custody.read(provider)
        bundle = trust.BUNDLE if os.path.exists(trust.BUNDLE) else None  # PUT /trust's
        answer = probe.probe(spec, files, cafile=bundle)
    except probe.ProbeError as e:
        raise HttpError(HTTPStatus.BAD_REQUEST, str(e)) from None
    except (custody.CustodyError, custody.NoManifest, OSError) as e:
        raise _custody_error(e) from None
    log(f"probed {provider}'s provider: {answer['status']}")
    return Response({"provider": provider, **answer})


@route("DELETE", "/credentials/{provider}")
def wipe_credentials(agent: Agent, request: Request) -> Response:
    provider = request.params["provider"]
    try:
        removed = custody.wipe(provider)
    except (custody.CustodyError, OSError) as e:
        raise _custody_error(e) from None
    log(f"removed {len(removed)} files of {provider}")
    return Response({"provider": provider, "removed": removed})


# --- prompt runs (the CLI VM) ------------------------------------------------------------


@route("POST", "/runs")
def start_run(agent: Agent, request: Request) -> Stream:
    """Run a CLI and stream its events (NDJSON) as they happen; see hearth/guest/runs.py."""
    try:
        run = agent.runs.start(runs.RunRequest.from_json(request.json()))
    except runs.RunError as e:
        raise HttpError(HTTPStatus.BAD_REQUEST, str(e)) from None
    except OSError as e:
        status = (
            HTTPStatus.BAD_REQUEST
            if isinstance(e, FileNotFoundError | PermissionError | NotADirectoryError)
            else HTTPStatus.INTERNAL_SERVER_ERROR
        )
        raise HttpError(
            status, f"cannot start {e.filename or 'the command'}: {e.strerror or e}"
        ) from None
    return Stream(runs.EventStream(run), "application/x-ndjson")


def _run(agent: Agent, request: Request) -> runs.Run:
    run = agent.runs.get(request.params["run_id"])
    if run is None:
        raise HttpError(HTTPStatus.NOT_FOUND, f"no run {request.params['run_id']}")
    return run


@route("GET", "/runs/{run_id}")
def run_status(agent: Agent, request: Request) -> Response:
    return Response(_run(agent, request).status())


@route("DELETE", "/runs/{run_id}")
def cancel_run(agent: Agent, request: Request) -> Response:
    """SIGTERM the run's process group (SIGKILL follows if it lingers); a finished run is
    left as it is."""
    run = _run(agent, request)
    run.cancel()
    return Response(run.status(), HTTPStatus.ACCEPTED)


# --- the clock ---------------------------------------------------------------------------


@route("PUT", "/clock")
def set_clock(agent: Agent, request: Request) -> Response:
    """Set the guest clock to the host's: after a snapshot is restored it is behind by as
    long as the VM slept, and tokens' expiry checks would go wrong."""
    epoch = request.json().get("epoch")
    if (
        not isinstance(epoch, int | float)
        or isinstance(epoch, bool)
        or not math.isfinite(epoch)
        or not 0 < epoch < MAX_EPOCH
    ):
        raise HttpError(HTTPStatus.BAD_REQUEST, '"epoch" must be a positive Unix time in seconds')
    offset = epoch - time.time()
    adjusted = abs(offset) > CLOCK_TOLERANCE
    if adjusted:
        try:
            time.clock_settime(time.CLOCK_REALTIME, float(epoch))
        except OSError as e:
            raise HttpError(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot set the clock: {e.strerror or e}"
            ) from None
        log(f"set the clock {'forward' if offset > 0 else 'back'} by {abs(offset):.1f}s")
    return Response({"adjusted": adjusted, "epoch": time.time()})


# --- extra certificate authorities -------------------------------------------------------


@route("PUT", "/trust")
def put_trust(agent: Agent, request: Request) -> Response:
    """Trust extra CAs (see hearth/guest/trust.py): their count, and the variables that
    point each client at them."""
    try:
        count = trust.install(request.json().get("pem"))
    except trust.TrustError as e:
        raise HttpError(HTTPStatus.BAD_REQUEST, str(e)) from None
    except OSError as e:
        raise HttpError(
            HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot write the CAs: {e.strerror or e}"
        ) from None
    log(f"trusting {count} extra CA certificate(s)")
    return Response({"certificates": count, "env": trust.ENV})


# --- the browser VM ----------------------------------------------------------------------


@route("POST", "/open-url")
def open_url(agent: Agent, request: Request) -> Response:
    url = request.json().get("url")
    if not isinstance(url, str) or not browser_shim.is_web_url(url):
        raise HttpError(HTTPStatus.BAD_REQUEST, '"url" must be an http(s) URL')
    try:
        agent.logins.open_url(url)
    except (OSError, RuntimeError) as e:
        raise HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot open Firefox: {e}") from None
    log("opened a URL in Firefox")
    return Response({"opened": True})


class AgentRequestHandler(BaseHTTPRequestHandler):
    server: AgentServer
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
            found = match_route(path)
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
            response = handler(self.server.agent, request)
        except HttpError as e:
            response = Response({"error": e.message}, e.status, e.headers)
        except Exception as e:  # a handler bug must answer 500, not drop the connection
            log(f"internal error in {self.command} {path}: {type(e).__name__}")
            response = Response({"error": "internal error"}, HTTPStatus.INTERNAL_SERVER_ERROR)
        if isinstance(response, Stream):
            self._send_stream(response, path)
        else:
            self._send_json(response.status, response.body, response.headers)

    def _authorize(self) -> None:
        scheme, _, presented = (self.headers.get("Authorization") or "").partition(" ")
        expected = self.server.agent.token.encode()
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
        log(f"{self.command or '-'} {path} {code}")

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: the default logs raw request lines to stderr. log_request is enough."""


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        super().__init__(address, AgentRequestHandler)
        self.agent = agent

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse-DNS lookup of the address: early in boot there
        is no resolver, and the lookup would hold the agent back for the resolver's timeout."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = socket.gethostname(), self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line instead of the default traceback on stderr."""
        log(f"connection from {client_address[0]} failed: {type(sys.exc_info()[1]).__name__}")


def notify_ready() -> None:
    """Tell systemd the agent listens (Type=notify), so that the units ordered after it
    start only now and leave the CPU to the agent while it starts."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.sendto(b"READY=1", address)
    except OSError as e:
        log(f"error: cannot notify systemd that the agent is ready: {e}")


def main() -> int:
    try:
        token = seed.read_guest_seed()["agent_token"]
    except (OSError, seed.SeedError) as e:
        log(f"error: cannot read the seed: {e}")
        return 1
    port_text = os.environ.get("HEARTH_AGENT_PORT", str(DEFAULT_PORT))
    if not port_text.isdigit() or int(port_text) > 65535:
        log(f"error: HEARTH_AGENT_PORT {port_text!r} is not a port number")
        return 1
    addr = os.environ.get("HEARTH_AGENT_ADDR", DEFAULT_ADDR)
    agent = Agent(token)
    try:
        server = AgentServer((addr, int(port_text)), agent)
    except OSError as e:
        log(f"error: cannot listen on {addr}:{port_text}: {e}")
        return 1
    agent.started_at_uptime = uptime()
    log(f"listening on :{server.server_address[1]}")
    notify_ready()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
