"""The host's side of the in-guest agent: bearer-token HTTP to <guest>:AGENT_PORT (8080)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from hearth.guest.ports import AGENT_PORT


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


def _json(response: httpx.Response) -> dict:
    if response.is_error:
        raise AgentRequestError(response)
    return response.json()


def _encode(files: dict[str, bytes]) -> dict[str, str]:
    return {path: base64.b64encode(content).decode("ascii") for path, content in files.items()}


class AgentClient:
    def __init__(self, ip: str, token: str, port: int = AGENT_PORT, timeout: float = 10.0):
        self._timeout = timeout
        self._client = httpx.Client(
            base_url=f"http://{ip}:{port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            trust_env=False,  # the guest is never reached through a proxy
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ready(self, timeout: float | None = None) -> dict:
        """The agent's cheap readiness answer (it runs nothing in the guest)."""
        kwargs = {"timeout": timeout} if timeout else {}
        response = self._client.get("/ready", **kwargs)
        response.raise_for_status()
        return response.json()

    def health(self, timeout: float | None = None) -> dict:
        kwargs = {"timeout": timeout} if timeout else {}
        response = self._client.get("/health", **kwargs)
        response.raise_for_status()
        return response.json()

    def ping(self, host: str) -> dict:
        response = self._client.post("/diagnostics/ping", json={"host": host})
        response.raise_for_status()
        return response.json()

    def start_login(self, spec: dict) -> dict:
        """Start a provider login (ProviderSpec.to_agent()); returns its first status.
        AgentRequestError 409 while another login runs."""
        return _json(self._client.post("/login", json={"spec": spec}))

    def login_status(self) -> dict:
        """{"provider", "state", "url", "printed_url", "browser_url", "exited", "exit_code",
        "success", "error", "firefox": {"opened", "title", "ready"}, ...}"""
        return _json(self._client.get("/login"))

    def cancel_login(self) -> dict:
        return _json(self._client.delete("/login"))

    def credentials(self) -> dict[str, bytes]:
        """The signed-in CLI's credential files by path under its HOME. AgentRequestError
        409 until the login has succeeded."""
        files = _json(self._client.get("/credentials"))["files"]
        return {path: base64.b64decode(content) for path, content in files.items()}

    def open_url(self, url: str) -> dict:
        """Show an http(s) URL in the browser VM's Firefox."""
        return _json(self._client.post("/open-url", json={"url": url}))

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
        return _json(self._client.put(f"/credentials/{provider}", json=body))["digest"]

    def read_credentials(self, provider: str) -> tuple[dict[str, bytes], str]:
        """The provider's credential files as they are now, and their digest.
        AgentRequestError 404 when none were installed."""
        body = _json(self._client.get(f"/credentials/{provider}"))
        files = {path: base64.b64decode(content) for path, content in body["files"].items()}
        return files, body["digest"]

    def probe_credentials(self, provider: str, probe: dict) -> tuple[int | None, str | None]:
        """Ask the provider about the installed access token (ProviderSpec.probe.to_agent());
        the HTTP status (None: not reached) and what went wrong (None on a 2xx)."""
        body = _json(
            self._client.post(
                f"/credentials/{provider}/probe", json=probe, timeout=self._timeout + 30
            )
        )
        return body["status"], body["detail"]

    def wipe_credentials(self, provider: str) -> list[str]:
        """Remove the provider's files; the paths that were there."""
        return _json(self._client.delete(f"/credentials/{provider}"))["removed"]

    @contextmanager
    def run(
        self,
        argv: list[str],
        env: dict[str, str] | None = None,
        provider: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[Iterator[dict]]:
        """Run a CLI in the VM; yields its events as they happen: {"event": "started",
        "run_id", "pid"}, {"event": "output", "stream", "data"}..., then {"event": "exit",
        "run_id", "exit_code", "signal", "duration", "cancelled", "timed_out",
        "credentials_digest"}. Leaving the block before the exit event stops the run.
        A CLI may be silent for long, so reads wait without a limit."""
        body = {"argv": argv, "env": env, "provider": provider, "timeout": timeout}
        with self._client.stream(
            "POST", "/runs", json=body, timeout=httpx.Timeout(self._timeout, read=None)
        ) as response:
            if response.is_error:
                response.read()
                raise AgentRequestError(response)
            yield (json.loads(line) for line in response.iter_lines() if line)

    def run_status(self, run_id: str) -> dict:
        """{"run_id", "running", "exit_code", "signal", "cancelled", "timed_out", "duration"}"""
        return _json(self._client.get(f"/runs/{run_id}"))

    def cancel_run(self, run_id: str) -> dict:
        """Stop a run (SIGTERM, then SIGKILL); its status."""
        return _json(self._client.delete(f"/runs/{run_id}"))

    def put_trust(self, pem: str) -> dict:
        """Have the VM's clients trust extra CAs (hearth/guest/trust.py); {"certificates",
        "env"}."""
        return _json(self._client.put("/trust", json={"pem": pem}))

    def set_clock(self, epoch: float) -> dict:
        """Set the guest clock (after a snapshot restore); {"adjusted", "epoch"}."""
        return _json(self._client.put("/clock", json={"epoch": epoch}))
