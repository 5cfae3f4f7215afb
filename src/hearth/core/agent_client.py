"""The host's side of the in-guest agent: bearer-token HTTP to <guest>:AGENT_PORT (8080).
The answers are hearth.guest.protocol's messages, parsed and checked."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import httpx

from hearth.guest.ports import AGENT_PORT
from hearth.guest.protocol import (
    ClockAnswer,
    CredentialFiles,
    CredentialsInstalled,
    CredentialsWiped,
    LoginCredentials,
    LoginStatus,
    ProbeAnswer,
    ProtocolError,
    Ready,
    RunEvent,
    RunStatus,
    TrustAnswer,
    UrlOpened,
    WarmBrowser,
    run_event,
)

__all__ = ["AgentClient", "AgentRequestError", "ProtocolError"]


class AgentRequestError(httpx.HTTPStatusError):
    """The agent refused a request; `message` is the reason from its JSON body."""

    def __init__(self, response: httpx.Response) -> None:
        try:
            body = response.json()
            message = body.get("error") if isinstance(body, dict) else None
        except ValueError:
            message = None
        self.message = str(message or response.reason_phrase)
        super().__init__(
            f"agent answered {response.status_code} to {response.request.method} "
            f"{response.request.url.path}: {self.message}",
            request=response.request,
            response=response,
        )


def _body(response: httpx.Response) -> object:
    """The JSON of an agent's successful answer; AgentRequestError for a refusal,
    ProtocolError for an answer that is not JSON."""
    if response.is_error:
        raise AgentRequestError(response)
    try:
        return response.json()
    except ValueError:
        raise ProtocolError(
            f"the agent's answer to {response.request.method} {response.request.url.path} "
            "is not JSON"
        ) from None


def _line(line: str) -> RunEvent:
    try:
        data = json.loads(line)
    except ValueError:
        raise ProtocolError("a line of the agent's run stream is not JSON") from None
    return run_event(data)


def _diagnostics(response: httpx.Response) -> dict:
    """A free-form answer (health, ping): any JSON object."""
    response.raise_for_status()
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ProtocolError(
            f"the agent's answer to {response.request.method} {response.request.url.path} "
            "must be a JSON object"
        )
    return body


def _encode(files: dict[str, bytes]) -> dict[str, str]:
    return {path: base64.b64encode(content).decode("ascii") for path, content in files.items()}


@cache
def _tls_context() -> ssl.SSLContext:
    """One context for every client: the agent speaks plain HTTP, and a client left to make
    its own loads the system's CAs each time (most of a sign-in poll's CPU)."""
    return ssl.create_default_context()


class AgentClient:
    """Every answer comes back parsed (hearth.guest.protocol): ProtocolError when the agent
    sends something the protocol does not allow, AgentRequestError when it refuses."""

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

    def ready(self, timeout: float | None = None) -> Ready:
        """The agent's cheap readiness answer (it runs nothing in the guest)."""
        kwargs = {"timeout": timeout} if timeout else {}
        response = self._client.get("/ready", **kwargs)
        response.raise_for_status()
        return Ready.from_json(_body(response))

    def health(self, timeout: float | None = None) -> dict:
        """The guest's report: hostname, uptimes, addresses, routes, DNS (free-form)."""
        kwargs = {"timeout": timeout} if timeout else {}
        return _diagnostics(self._client.get("/health", **kwargs))

    def ping(self, host: str) -> dict:
        """{"ok", "output"} of one ping from the guest (free-form)."""
        return _diagnostics(self._client.post("/diagnostics/ping", json={"host": host}))

    def start_login(self, spec: dict) -> LoginStatus:
        """Start a provider login (ProviderSpec.to_agent()); returns its first status.
        AgentRequestError 409 while another login runs."""
        return LoginStatus.from_json(_body(self._client.post("/login", json={"spec": spec})))

    def login_status(self) -> LoginStatus:
        return LoginStatus.from_json(_body(self._client.get("/login")))

    def cancel_login(self) -> LoginStatus:
        return LoginStatus.from_json(_body(self._client.delete("/login")))

    def credentials(self) -> dict[str, bytes]:
        """The signed-in CLI's credential files by path under its HOME. AgentRequestError
        409 until the login has succeeded."""
        return LoginCredentials.from_json(_body(self._client.get("/credentials"))).files

    def open_url(self, url: str) -> UrlOpened:
        """Show an http(s) URL in the browser VM's Firefox."""
        return UrlOpened.from_json(_body(self._client.post("/open-url", json={"url": url})))

    def warm_browser(self) -> WarmBrowser:
        """Start Firefox on the blank page ahead of any login (the warm pool); it shows the
        next login's sign-in page. AgentRequestError 409 once a login has started."""
        return WarmBrowser.from_json(_body(self._client.post("/warm-browser")))

    def warm_browser_status(self) -> WarmBrowser:
        return WarmBrowser.from_json(_body(self._client.get("/warm-browser")))

    # -- the CLI VM --------------------------------------------------------------------

    def put_credentials(
        self,
        provider: str,
        credential_files: dict[str, bytes],
        support_files: dict[str, bytes] | None = None,
    ) -> str:
        """Install a provider's files in the CLI user's HOME (replacing the credential files
        of the previous install); the digest of the credential files."""
        body = {
            "credential_files": _encode(credential_files),
            "support_files": _encode(support_files or {}),
        }
        answer = _body(self._client.put(f"/credentials/{provider}", json=body))
        return CredentialsInstalled.from_json(answer).digest

    def read_credentials(self, provider: str) -> tuple[dict[str, bytes], str]:
        """The provider's credential files as they are now, and their digest.
        AgentRequestError 404 when none were installed."""
        answer = CredentialFiles.from_json(_body(self._client.get(f"/credentials/{provider}")))
        return answer.files, answer.digest

    def probe_credentials(self, provider: str, probe: dict) -> tuple[int | None, str | None]:
        """Ask the provider about the installed access token (ProviderSpec.probe.to_agent());
        the HTTP status (None: not reached) and what went wrong (None on a 2xx)."""
        answer = ProbeAnswer.from_json(
            _body(
                self._client.post(
                    f"/credentials/{provider}/probe", json=probe, timeout=self._timeout + 30
                )
            )
        )
        return answer.status, answer.detail

    def wipe_credentials(self, provider: str) -> list[str]:
        """Remove the provider's files; the paths that were there."""
        answer = _body(self._client.delete(f"/credentials/{provider}"))
        return list(CredentialsWiped.from_json(answer).removed)

    @contextmanager
    def run(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        provider: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[Iterator[RunEvent]]:
        """Run a CLI in the VM; yields its events as they happen: RunStarted, RunOutput...,
        then RunExit. Leaving the block before the exit event stops the run. A CLI may be
        silent for long, so reads wait without a limit."""
        body = {"argv": argv, "env": env, "provider": provider, "timeout": timeout}
        with self._client.stream(
            "POST", "/runs", json=body, timeout=httpx.Timeout(self._timeout, read=None)
        ) as response:
            if response.is_error:
                response.read()
                raise AgentRequestError(response)
            yield (_line(line) for line in response.iter_lines() if line)

    def run_status(self, run_id: str) -> RunStatus:
        return RunStatus.from_json(_body(self._client.get(f"/runs/{run_id}")))

    def cancel_run(self, run_id: str) -> RunStatus:
        """Stop a run (SIGTERM, then SIGKILL); its status."""
        return RunStatus.from_json(_body(self._client.delete(f"/runs/{run_id}")))

    def put_trust(self, pem: str) -> TrustAnswer:
        """Have the VM's clients trust extra CAs (hearth/guest/trust.py)."""
        return TrustAnswer.from_json(_body(self._client.put("/trust", json={"pem": pem})))

    def set_clock(self, epoch: float) -> ClockAnswer:
        """Set the guest clock (after a snapshot restore)."""
        return ClockAnswer.from_json(_body(self._client.put("/clock", json={"epoch": epoch})))
