"""The egress proxy on the VMs' gateway (ports 80 and 443): for each connection, the name it
asks for (SNI or Host), the VM's policy for that name, the controller-side dial, then the
bytes spliced both ways, uninspected. Every connection, allowed or not, is audited."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime

from hearth.net.egress.dialer import Dialer, DialError
from hearth.net.egress.names import normalize
from hearth.net.egress.policy import AuditSink, EgressRecord, PolicyLookup, Verdict
from hearth.net.egress.sniff import SniffError, http_host, tls_server_name
from hearth.net.egress.upstream import Upstream

NAME_TIMEOUT = 10.0  # seconds a client has to say which name it wants
CHUNK = 65536


class EgressProxy:
    def __init__(
        self,
        policies: PolicyLookup,
        dialer: Dialer,
        audit: AuditSink,
        upstream_for: Callable[[str], Upstream | None] = lambda provider: None,
    ):
        self.policies = policies
        self.dialer = dialer
        self.audit = audit
        self.upstream_for = upstream_for

    async def serve(self, sock, tls: bool) -> asyncio.Server:
        return await asyncio.start_server(
            lambda r, w: self.handle(r, w, tls), sock=sock, limit=CHUNK
        )

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool
    ) -> None:
        started, clock = datetime.now(UTC), time.monotonic()
        source = writer.get_extra_info("peername")[0]
        port = writer.get_extra_info("sockname")[1]
        record = EgressRecord(
            source=source, protocol="tls" if tls else "http", port=port, started_at=started
        )
        try:
            await self._relay(reader, writer, tls, record)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            record.duration = time.monotonic() - clock
            writer.close()
            self.audit(record)

    async def _relay(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tls: bool,
        record: EgressRecord,
    ) -> None:
        policy = await self.policies(record.source)
        if policy is None:
            record.reason = "no VM has this address"
            return
        record.vm_id, record.user_id = policy.vm_id, policy.user_id
        record.session_id = policy.session_id
        try:
            asked, head = await asyncio.wait_for(
                tls_server_name(reader) if tls else http_host(reader), NAME_TIMEOUT
            )
            record.name = normalize(asked)
        except TimeoutError:
            record.reason = f"no server name within {NAME_TIMEOUT:.0f}s"
            return
        except (SniffError, ValueError) as e:
            record.reason = str(e)
            await self._refuse_http(writer, tls, record.reason)
            return
        record.provider = policy.provider_for(record.name)
        if record.provider is None:
            record.reason = "the name is not in the VM's policy"
            await self._refuse_http(writer, tls, f"{record.name} is not allowed for this VM")
            return
        upstream = self.upstream_for(record.provider)
        record.upstream = upstream.shown if upstream else "direct"
        try:
            addresses = await self.dialer.resolve(record.name)
            (up_reader, up_writer), record.address = await self.dialer.connect(
                addresses, record.port, upstream
            )
        except DialError as e:
            record.verdict = Verdict.refused if e.refused else Verdict.failed
            record.reason, record.upstream_error = str(e), e.upstream
            await self._refuse_http(writer, tls, str(e), status="502 Bad Gateway")
            return
        record.verdict = Verdict.allowed
        self.audit(dataclasses.replace(record))  # seen while open, not only once it ends
        try:
            up_writer.write(head)
            record.bytes_up = len(head)
            up, down = await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            record.bytes_up += up
            record.bytes_down = down
        finally:
            up_writer.close()

    @staticmethod
    async def _refuse_http(
        writer: asyncio.StreamWriter, tls: bool, why: str, status: str = "403 Forbidden"
    ) -> None:
        """A plain-HTTP client is told why in a response; a TLS one only sees the close."""
        if tls:
            return
        body = f"Hearth egress: {why}\n".encode()
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: "
            f"{len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy until the end of `reader`, then half-close `writer`; the bytes copied."""
    copied = 0
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            copied += len(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
    return copied
