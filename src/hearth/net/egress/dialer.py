"""Dialling out for a VM from the controller's side: resolve the name with the controller's
resolver, drop every address no VM may reach, and connect directly or through an upstream
proxy. Through an upstream the checked address is what is asked for, not the name, so the
upstream's own resolver can never hand a VM a private address."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Mapping

import dns.asyncresolver
import dns.exception
import dns.resolver
from python_socks import ProxyError, ProxyTimeoutError
from python_socks.async_.asyncio import Proxy

from hearth.net import NetworkError
from hearth.net.egress.addresses import Address, refusal
from hearth.net.egress.upstream import Upstream

CONNECT_TIMEOUT = 10.0
RESOLVE_TIMEOUT = 5.0
LOCAL_REFRESH = 10.0  # seconds the controller's own addresses are cached


class DialError(NetworkError):
    """The connection could not be made; the message says why, with no secret in it."""

    def __init__(self, message: str, refused: bool = False, upstream: bool = False):
        super().__init__(message)
        self.refused = refused  # a rule said no (as opposed to a failure along the way)
        self.upstream = upstream  # the upstream proxy said no


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def resolver_address(resolver: str) -> tuple[str, int]:
    """The address and port of the egress_resolver setting ("ip" or "ip:port"; an IPv6
    address has no port)."""
    host, _, port = resolver.rpartition(":") if resolver.count(":") == 1 else (resolver, "", "")
    return host, int(port or 53)


class Dialer:
    def __init__(
        self,
        resolver: str = "",
        hosts: Mapping[str, str] | None = None,
        local_addresses: Callable[[], frozenset[Address]] = frozenset,
    ):
        self._resolver = dns.asyncresolver.Resolver(configure=not resolver)
        if resolver:
            host, port = resolver_address(resolver)
            self._resolver.nameservers = [host]
            self._resolver.port = port
        self._resolver.cache = dns.resolver.Cache()
        self._resolver.lifetime = RESOLVE_TIMEOUT
        self._hosts = {name: ipaddress.ip_address(a) for name, a in (hosts or {}).items()}
        self._local_addresses = local_addresses
        self._local: frozenset[Address] = frozenset()
        self._local_at = float("-inf")

    async def resolve(self, name: str) -> list[Address]:
        """The addresses a VM may be connected to for `name`; DialError if there are none."""
        if name in self._hosts:  # the operator's named internal host: taken as given
            return [self._hosts[name]]
        local = await self._local_now()
        # AAAA only where an IPv6 address could be dialled: a global IPv6 address of our own.
        kinds = ("A", "AAAA") if any(a.version == 6 and a.is_global for a in local) else ("A",)
        found: list[Address] = []
        errors: list[str] = []
        answers = await asyncio.gather(
            *(self._resolver.resolve(name, kind) for kind in kinds), return_exceptions=True
        )
        for kind, answer in zip(kinds, answers, strict=True):
            # One kind failing is no failure while the other answers.
            if isinstance(answer, dns.resolver.NXDOMAIN | dns.resolver.NoAnswer):
                continue
            if isinstance(answer, dns.exception.DNSException):
                errors.append(f"{kind}: {type(answer).__name__}")
                continue
            if isinstance(answer, BaseException):
                raise answer
            found += [ipaddress.ip_address(r.address) for r in answer]
        if not found:
            raise DialError(
                f"cannot resolve {name} ({', '.join(errors)})"
                if errors
                else f"{name} does not resolve"
            )
        reasons = [refusal(a, local) for a in found]
        allowed = [a for a, why in zip(found, reasons, strict=True) if why is None]
        if not allowed:
            raise DialError(
                f"{name} resolves only to addresses no VM may reach: {reasons[0]}", refused=True
            )
        return allowed

    async def connect(
        self, addresses: list[Address], port: int, upstream: Upstream | None
    ) -> tuple[Streams, str]:
        """Connect to the first address that answers; the streams and the address."""
        last = "no address"
        for address in addresses:
            try:
                if upstream is None:
                    streams = await asyncio.wait_for(
                        asyncio.open_connection(str(address), port), CONNECT_TIMEOUT
                    )
                else:
                    streams = await self._via(upstream, address, port)
                return streams, str(address)
            except DialError:
                raise
            except (OSError, TimeoutError) as e:
                last = (
                    f"{address}:{port}: {e.strerror or type(e).__name__}"
                    if isinstance(e, OSError)
                    else f"{address}:{port}: timed out"
                )
        raise DialError(f"cannot connect: {last}")

    async def _via(self, upstream: Upstream, address: Address, port: int) -> Streams:
        try:
            sock = await Proxy.from_url(upstream.url).connect(
                dest_host=str(address), dest_port=port, timeout=CONNECT_TIMEOUT
            )
        except ProxyTimeoutError:
            raise DialError(
                f"the upstream proxy {upstream.shown} did not answer in {CONNECT_TIMEOUT:.0f}s",
                upstream=True,
            ) from None
        except ProxyError as e:
            raise DialError(_proxy_refusal(upstream, e), upstream=True) from None
        except OSError as e:
            raise DialError(
                f"cannot reach the upstream proxy {upstream.shown}: "
                f"{e.strerror or type(e).__name__}",
                upstream=True,
            ) from None
        return await asyncio.open_connection(sock=sock)

    async def _local_now(self) -> frozenset[Address]:
        if time.monotonic() - self._local_at > LOCAL_REFRESH:
            self._local = await asyncio.to_thread(self._local_addresses)
            self._local_at = time.monotonic()
        return self._local


def _proxy_refusal(upstream: Upstream, error: ProxyError) -> str:
    code = getattr(error, "error_code", None)
    text = str(error.args[0]) if error.args else type(error).__name__
    if code in (401, 407) or "authentication" in text.lower():  # tinyproxy answers 401
        return (
            f"the upstream proxy {upstream.shown} refused Hearth's credentials ({text}): "
            "check the user and password in the upstream proxy setting"
        )
    return f"the upstream proxy {upstream.shown} refused the connection: {text}"
