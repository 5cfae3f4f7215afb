"""The in-guest agent: a small HTTP API the controller drives, behind a per-VM bearer token.

Standard library only (the image has Debian's python3 and no pip). Every route is a
function registered with @route (ROUTER, hearth.guest.http_api) under a path whose `{name}`
segments become request.params; a handler receives the agent's state and the parsed
Request, and returns a Response holding one of hearth.guest.protocol's messages (what the
host's client parses back), a Stream (chunked, for a run's output as it happens) or raises
HttpError. Nothing here logs the token, any request header, a login's or a run's output or
any credential: the console and journal show only method, path and status (a status the
controller polls, once per change), and progress in words.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

if __package__:
    from . import custody, http_api, login, ports, probe, protocol, runs, seed, trust
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import custody
    import http_api
    import login
    import ports
    import probe
    import protocol
    import runs
    import seed
    import trust

HttpError = http_api.HttpError
Request = http_api.Request
Response = http_api.Response
Stream = http_api.Stream
log = http_api.log

DEFAULT_ADDR = "0.0.0.0"
DEFAULT_PORT = ports.AGENT_PORT  # HEARTH_AGENT_PORT overrides it for local runs (tests)
RESOLV_CONF = Path("/etc/resolv.conf")
PING_TIMEOUT = 10.0
CLOCK_TOLERANCE = 1.0  # seconds the guest clock may be off before PUT /clock sets it


def uptime() -> float:
    """Seconds since the guest booted (the same clock the console log is stamped with)."""
    return float(Path("/proc/uptime").read_text().split()[0])


@dataclass
class Agent:
    """What handlers may use: when serving began, the logins and the prompt runs."""

    started_at_uptime: float = 0.0
    logins: login.LoginManager = field(default_factory=lambda: login.LoginManager(log))
    runs: runs.RunManager = field(default_factory=lambda: runs.RunManager(log))


ROUTER = http_api.Router()
route = ROUTER.route


def _parse(message: type[protocol.Request], request: Request, what: str = "") -> Any:
    """The request's body as `message`, or a 400 naming the bad field (after `what`)."""
    try:
        return message.from_json(request.json())
    except protocol.ProtocolError as e:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{what}{e}") from None


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


@route("GET", "/ready", polled=True)
def ready(agent: Agent, request: Request) -> Response:
    """The readiness probe: it starts no process, so a guest just restored from a snapshot
    (which under emulation must translate its code afresh) answers at once. /health, which
    runs `ip` twice, is the report."""
    return Response(protocol.Ready("ok", uptime()))


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
    address = _parse(protocol.PingRequest, request).host
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
    login_request = _parse(protocol.LoginRequest, request, "bad login spec: ")
    try:
        session = agent.logins.start(login_request.spec)
    except login.LoginBusy as e:
        raise HttpError(HTTPStatus.CONFLICT, str(e)) from None
    except OSError as e:
        raise HttpError(
            HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot start the login: {e.strerror or e}"
        ) from None
    return Response(session.status(), HTTPStatus.ACCEPTED)


@route("GET", "/login", polled=True)
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
    return Response(protocol.LoginCredentials(session.spec.name, files))


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
    install = _parse(protocol.InstallCredentials, request)
    files, support = install.credential_files, install.support_files
    try:
        digest = custody.install(provider, files, support)
    except (custody.CustodyError, OSError) as e:
        raise _custody_error(e) from None
    log(f"installed {len(files)} credential and {len(support)} support files for {provider}")
    return Response(protocol.CredentialsInstalled(provider, digest))


@route("GET", "/credentials/{provider}")
def read_credentials(agent: Agent, request: Request) -> Response:
    """The provider's credential files as they are now (a run may have refreshed them)."""
    provider = request.params["provider"]
    try:
        files, digest = custody.read(provider)
    except (custody.CustodyError, custody.NoManifest, OSError) as e:
        raise _custody_error(e) from None
    return Response(protocol.CredentialFiles(provider, files, digest))


@route("POST", "/credentials/{provider}/probe")
def probe_credentials(agent: Agent, request: Request) -> Response:
    """The provider's verdict on the installed access token (hearth.guest.probe)."""
    provider = request.params["provider"]
    spec = _parse(protocol.ProbeSpec, request)
    try:
        files, _ = custody.read(provider)
        bundle = trust.BUNDLE if os.path.exists(trust.BUNDLE) else None  # PUT /trust's
        answer = probe.probe(spec, files, cafile=bundle)
    except probe.ProbeError as e:
        raise HttpError(HTTPStatus.BAD_REQUEST, str(e)) from None
    except (custody.CustodyError, custody.NoManifest, OSError) as e:
        raise _custody_error(e) from None
    log(f"probed {provider}'s provider: {answer['status']}")
    return Response(protocol.ProbeAnswer(provider, answer["status"], answer["detail"]))


@route("DELETE", "/credentials/{provider}")
def wipe_credentials(agent: Agent, request: Request) -> Response:
    provider = request.params["provider"]
    try:
        removed = custody.wipe(provider)
    except (custody.CustodyError, OSError) as e:
        raise _custody_error(e) from None
    log(f"removed {len(removed)} files of {provider}")
    return Response(protocol.CredentialsWiped(provider, tuple(removed)))


# --- prompt runs (the CLI VM) ------------------------------------------------------------


@route("POST", "/runs")
def start_run(agent: Agent, request: Request) -> Stream:
    """Run a CLI and stream its events (NDJSON) as they happen; see hearth/guest/runs.py."""
    run_request = _parse(protocol.RunRequest, request)
    try:
        run = agent.runs.start(run_request)
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


@route("GET", "/runs/{run_id}", polled=True)
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
    epoch = _parse(protocol.SetClock, request).epoch
    offset = epoch - time.time()
    adjusted = abs(offset) > CLOCK_TOLERANCE
    if adjusted:
        try:
            time.clock_settime(time.CLOCK_REALTIME, epoch)
        except OSError as e:
            raise HttpError(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot set the clock: {e.strerror or e}"
            ) from None
        log(f"set the clock {'forward' if offset > 0 else 'back'} by {abs(offset):.1f}s")
    return Response(protocol.ClockAnswer(adjusted, time.time()))


# --- extra certificate authorities -------------------------------------------------------


@route("PUT", "/trust")
def put_trust(agent: Agent, request: Request) -> Response:
    """Trust extra CAs (see hearth/guest/trust.py): their count, and the variables that
    point each client at them."""
    pem = _parse(protocol.TrustCas, request).pem
    try:
        count = trust.install(pem)
    except trust.TrustError as e:
        raise HttpError(HTTPStatus.BAD_REQUEST, str(e)) from None
    except OSError as e:
        raise HttpError(
            HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot write the CAs: {e.strerror or e}"
        ) from None
    log(f"trusting {count} extra CA certificate(s)")
    return Response(protocol.TrustAnswer(count, dict(trust.ENV)))


# --- the browser VM ----------------------------------------------------------------------


@route("POST", "/open-url")
def open_url(agent: Agent, request: Request) -> Response:
    url = _parse(protocol.OpenUrl, request).url
    try:
        agent.logins.open_url(url)
    except (OSError, RuntimeError) as e:
        raise HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot open Firefox: {e}") from None
    log("opened a URL in Firefox")
    return Response(protocol.UrlOpened(True))


@route("POST", "/warm-browser")
def warm_browser(agent: Agent, request: Request) -> Response:
    """Start Firefox on the blank page for the next login (the warm pool); 409 once a login
    has started. Its progress is at GET /warm-browser."""
    try:
        warm = agent.logins.warm()
    except login.LoginBusy as e:
        raise HttpError(HTTPStatus.CONFLICT, str(e)) from None
    except OSError as e:
        raise HttpError(
            HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot prepare Firefox: {e.strerror or e}"
        ) from None
    return Response(warm.status(), HTTPStatus.ACCEPTED)


@route("GET", "/warm-browser", polled=True)
def warm_browser_status(agent: Agent, request: Request) -> Response:
    warm = agent.logins.warm_firefox
    if warm is None:
        raise HttpError(HTTPStatus.NOT_FOUND, "no Firefox is kept warm")
    return Response(warm.status())


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
    agent = Agent()
    try:
        server = http_api.ApiServer((addr, int(port_text)), ROUTER, token, agent)
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
