"""Upstream proxies egress may leave through: HTTP CONNECT or SOCKS5, with or without a
user and password, parsed and checked once, shown only without their credentials."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

SCHEMES = ("http", "socks5")


@dataclass(frozen=True)
class Upstream:
    url: str = field(repr=False)  # with credentials: never logged or returned
    shown: str  # scheme://host:port
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Upstream:
        """ValueError saying what is wrong, without repeating the URL (it may hold a
        password)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError(
                "an upstream proxy must be scheme://[user:pass@]host:port with a numeric port"
            ) from None
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"an upstream proxy's scheme must be one of {', '.join(SCHEMES)}, "
                f"not {parts.scheme[:16]!r}"
            )
        if not parts.hostname or port is None:
            raise ValueError(
                "an upstream proxy needs a host and a port (scheme://[user:pass@]host:port)"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("an upstream proxy URL has no path, query or fragment")
        return cls(url, f"{parts.scheme}://{parts.hostname}:{port}", parts.hostname, port)
