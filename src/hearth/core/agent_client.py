"""The host's side of the in-guest agent: bearer-token HTTP to <guest>:8080."""

from __future__ import annotations

import httpx


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
