"""The host's side of the in-guest agent: bearer-token HTTP to <guest>:AGENT_PORT (8080).
The requests and answers are hearth.guest.protocol's messages, built and checked here; every
failure is one of hearth.core.ports' AgentErrors, so nothing of HTTP leaks to the core."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import cache
from typing import Any, TypeVar

import httpx

from hearth.core.ports import AgentProtocolError, AgentRefused, AgentUnreachable
from hearth.guest.ports import AGENT_PORT
from hearth.guest.protocol import (
    DEFAULT_RUN_TIMEOUT,
    ClockAnswer,
    CredentialFiles,
    CredentialsInstalled,
    CredentialsWiped,
    InstallCredentials,
    LoginCredentials,
    LoginRequest,
    LoginSpec,
    LoginStatus,
    OpenUrl,
    PingRequest,
    ProbeAnswer,
    ProbeSpec,
    ProtocolError,
    Ready,
    Request,
    RunEvent,
    RunRequest,
    RunStatus,
    SetClock,
    TrustAnswer,
    TrustCas,
    UrlOpened,
    WarmBrowser,
    run_event,
)

Answer = TypeVar("Answer")


def _refused(response: httpx.Response) -> AgentRefused:
    """The agent's refusal, with the reason from its JSON body."""
    try:
        body = response.json()
        message = body.get("error") if isinstance(body, dict) else None
    except ValueError:
        message = None
    request = response.request
    return AgentRefused(
        request.method,
        request.url.path,
        response.status_code,
        str(message or response.reason_phrase),
    )


def _unreachable(method: str, path: str, error: httpx.HTTPError) -> AgentUnreachable:
    return AgentUnreachable(f"the agent did not answer {method} {path}: {error}")


def _checked(parse: Any, data: object) -> Any:
    """`parse(data)`, its ProtocolError re-rooted under hearth.errors."""
    try:
        return parse(data)
    except ProtocolError as e:
        raise AgentProtocolError(str(e)) from None


def _body(response: httpx.Response) -> object:
    """The JSON of an agent's successful answer; AgentProtocolError if it is not JSON."""
    try:
        return response.json()
    except ValueError:
        raise AgentProtocolError(
            f"the agent's answer to {response.request.method} {response.request.url.path} "
            "is not JSON"
        ) from None


def _events(response: httpx.Response) -> Iterator[RunEvent]:
    """The run stream's NDJSON lines as events."""
    try:
        for line in response.iter_lines():
            if line:
                yield _line(line)
    except httpx.HTTPError as e:
        raise _unreachable("POST", "/runs", e) from e


def _line(line: str) -> RunEvent:
    try:
        data = json.loads(line)
    except ValueError:
        raise AgentProtocolError("a line of the agent's run stream is not JSON") from None
    return _checked(run_event, data)


def _diagnostics(response: httpx.Response) -> dict:
    """A free-form answer (health, ping): any JSON object."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise AgentProtocolError(
            f"the agent's answer to {response.request.method} {response.request.url.path} "
            "must be a JSON object"
        )
    return body


@cache
def _tls_context() -> ssl.SSLContext:
    """One context for every client: the agent speaks plain HTTP, and a client left to make
    its own loads the system's CAs each time (most of a sign-in poll's CPU)."""
    return ssl.create_default_context()


class AgentClient:
    """Every request is built and every answer parsed with hearth.guest.protocol; a failure
    is AgentUnreachable, AgentRefused or AgentProtocolError (hearth.core.ports)."""

    def __init__(self, ip: str, token: str, port: int = AGENT_PORT, timeout: float = 10.0):
        self._timeout = timeout
        self._client = httpx.Client(
            base_url=f"http://{ip}:{port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            trust_env=False,  # the guest is never reached through a proxy
            verify=_tls_context(),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(
        self,
        method: str,
        path: str,
        message: Request | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """The agent's successful answer; AgentUnreachable or AgentRefused otherwise."""
        kwargs: dict[str, Any] = {"timeout": timeout} if timeout else {}
        if message is not None:
            kwargs["json"] = message.to_json()
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise _unreachable(method, path, e) from e
        if response.is_error:
            raise _refused(response)
        return response

    def _ask(
        self,
        answer: type[Answer],
        method: str,
        path: str,
        message: Request | None = None,
        timeout: float | None = None,
    ) -> Answer:
        """The agent's answer parsed as `answer`."""
        response = self._send(method, path, message, timeout)
        return _checked(answer.from_json, _body(response))  # type: ignore[attr-defined]

    def ready(self, timeout: float | None = None) -> Ready:
        """The agent's cheap readiness answer (it runs nothing in the guest)."""
        return self._ask(Ready, "GET", "/ready", timeout=timeout)

    def health(self, timeout: float | None = None) -> dict:
        """The guest's report: hostname, uptimes, addresses, routes, DNS (free-form)."""
        return _diagnostics(self._send("GET", "/health", timeout=timeout))

    def ping(self, host: str) -> dict:
        """{"ok", "output"} of one ping from the guest (free-form)."""
        return _diagnostics(self._send("POST", "/diagnostics/ping", PingRequest(host)))

    def start_login(self, spec: LoginSpec) -> LoginStatus:
        """Start a provider login (ProviderSpec.to_agent()); returns its first status.
        AgentRefused 409 while another login runs."""
        return self._ask(LoginStatus, "POST", "/login", LoginRequest(spec))

    def login_status(self) -> LoginStatus:
        return self._ask(LoginStatus, "GET", "/login")

    def cancel_login(self) -> LoginStatus:
        return self._ask(LoginStatus, "DELETE", "/login")

    def credentials(self) -> dict[str, bytes]:
        """The signed-in CLI's credential files by path under its HOME. AgentRefused 409
        until the login has succeeded."""
        return self._ask(LoginCredentials, "GET", "/credentials").files

    def open_url(self, url: str) -> UrlOpened:
        """Show an http(s) URL in the browser VM's Firefox."""
        return self._ask(UrlOpened, "POST", "/open-url", OpenUrl(url))

    def warm_browser(self) -> WarmBrowser:
        """Start Firefox on the blank page ahead of any login (the warm pool); it shows the
        next login's sign-in page. AgentRefused 409 once a login has started."""
        return self._ask(WarmBrowser, "POST", "/warm-browser")

    def warm_browser_status(self) -> WarmBrowser:
        return self._ask(WarmBrowser, "GET", "/warm-browser")

    # -- the CLI VM --------------------------------------------------------------------

    def put_credentials(
        self,
        provider: str,
        credential_files: dict[str, bytes],
        support_files: dict[str, bytes] | None = None,
    ) -> str:
        """Install a provider's files in the CLI user's HOME (replacing the credential files
        of the previous install); the digest of the credential files."""
        install = InstallCredentials(credential_files, support_files or {})
        return self._ask(CredentialsInstalled, "PUT", f"/credentials/{provider}", install).digest

    def read_credentials(self, provider: str) -> tuple[dict[str, bytes], str]:
        """The provider's credential files as they are now, and their digest.
        AgentRefused 404 when none were installed."""
        answer = self._ask(CredentialFiles, "GET", f"/credentials/{provider}")
        return answer.files, answer.digest

    def probe_credentials(self, provider: str, probe: ProbeSpec) -> tuple[int | None, str | None]:
        """Ask the provider about the installed access token (ProviderSpec.probe.to_agent());
        the HTTP status (None: not reached) and what went wrong (None on a 2xx)."""
        path = f"/credentials/{provider}/probe"
        answer = self._ask(ProbeAnswer, "POST", path, probe, timeout=self._timeout + 30)
        return answer.status, answer.detail

    def wipe_credentials(self, provider: str) -> list[str]:
        """Remove the provider's files; the paths that were there."""
        return list(self._ask(CredentialsWiped, "DELETE", f"/credentials/{provider}").removed)

    @contextmanager
    def run(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        provider: str | None = None,
        timeout: float = DEFAULT_RUN_TIMEOUT,
    ) -> Iterator[Iterator[RunEvent]]:
        """Run a CLI in the VM; yields its events as they happen: RunStarted, RunOutput...,
        then RunExit. Leaving the block before the exit event stops the run. A CLI may be
        silent for long, so reads wait without a limit."""
        request = RunRequest(tuple(argv), env or {}, provider, timeout)
        read_forever = httpx.Timeout(self._timeout, read=None)
        with ExitStack() as stack:
            try:
                response = stack.enter_context(
                    self._client.stream(
                        "POST", "/runs", json=request.to_json(), timeout=read_forever
                    )
                )
                if response.is_error:
                    response.read()
            except httpx.HTTPError as e:
                raise _unreachable("POST", "/runs", e) from e
            if response.is_error:
                raise _refused(response)
            yield _events(response)

    def run_status(self, run_id: str) -> RunStatus:
        return self._ask(RunStatus, "GET", f"/runs/{run_id}")

    def cancel_run(self, run_id: str) -> RunStatus:
        """Stop a run (SIGTERM, then SIGKILL); its status."""
        return self._ask(RunStatus, "DELETE", f"/runs/{run_id}")

    def put_trust(self, pem: str) -> TrustAnswer:
        """Have the VM's clients trust extra CAs (hearth/guest/trust.py)."""
        return self._ask(TrustAnswer, "PUT", "/trust", TrustCas(pem))

    def set_clock(self, epoch: float) -> ClockAnswer:
        """Set the guest clock (after a snapshot restore)."""
        return self._ask(ClockAnswer, "PUT", "/clock", SetClock(epoch))
