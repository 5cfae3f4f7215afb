"""The host's side of the in-guest agent: bearer-token HTTP to <guest>:8080."""

from __future__ import annotations

import base64

import httpx


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


class AgentClient:
    def __init__(self, ip: str, token: str, port: int = 8080, timeout: float = 10.0):
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
