"""The DNS responder on the VMs' gateway: an allowed name resolves to the gateway itself
(where the proxy waits), every other name does not resolve. dnspython reads and writes the
messages; nothing is forwarded, so a VM learns no real address and cannot tunnel out
through DNS."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from datetime import UTC, datetime

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from hearth.net.egress.names import normalize
from hearth.net.egress.policy import AuditSink, EgressRecord, PolicyLookup

TTL = 30  # seconds: short, so a VM asks again after its policy changes
TCP_IDLE = 10.0


class DnsResponder:
    def __init__(self, gateway: str, policies: PolicyLookup, audit: AuditSink):
        self.gateway = gateway
        self.policies = policies
        self.audit = audit

    async def answer(self, wire: bytes, source: str) -> bytes | None:
        """The response to one query from `source` (None: not worth answering)."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _formerr(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.flags &= ~dns.flags.RA
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(dns.rcode.NOTIMP if query.opcode() else dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        policy = await self.policies(source)
        try:
            name = normalize(question.name.to_text())
        except ValueError:
            name = None
        provider = policy.provider_for(name) if policy and name else None
        if provider is None:
            response.set_rcode(dns.rcode.REFUSED if policy is None else dns.rcode.NXDOMAIN)
            self.audit(
                EgressRecord(
                    source=source,
                    protocol="dns",
                    port=53,
                    started_at=datetime.now(UTC),
                    duration=0.0,
                    name=name or question.name.to_text()[:253],
                    vm_id=policy.vm_id if policy else None,
                    user_id=policy.user_id if policy else None,
                    reason="no VM has this address"
                    if policy is None
                    else "the name is not in the VM's policy",
                )
            )
        elif question.rdtype == dns.rdatatype.A and question.rdclass == dns.rdataclass.IN:
            response.answer.append(dns.rrset.from_text(question.name, TTL, "IN", "A", self.gateway))
        # An allowed name's other types (AAAA, HTTPS, ...) have no data: IPv4 to the gateway.
        return response.to_wire()

    async def serve(self, udp_sock, tcp_sock) -> tuple[asyncio.DatagramTransport, asyncio.Server]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp_sock)
        server = await asyncio.start_server(self._tcp, sock=tcp_sock)
        return transport, server

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = writer.get_extra_info("peername")[0]
        try:
            while True:
                (length,) = struct.unpack(
                    "!H", await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                )
                reply = await self.answer(await reader.readexactly(length), source)
                if reply is None:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, responder: DnsResponder):
        self.responder = responder
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: set[asyncio.Task] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        task = asyncio.get_running_loop().create_task(self._reply(data, addr))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _reply(self, data: bytes, addr) -> None:
        reply = await self.responder.answer(data, addr[0])
        if reply is not None and self.transport is not None:
            with contextlib.suppress(OSError):
                self.transport.sendto(reply, addr)


def _formerr(wire: bytes) -> bytes | None:
    """FORMERR for a message whose header at least could be read; else no answer."""
    if len(wire) < 12:
        return None
    msg_id, flags = struct.unpack("!HH", wire[:4])
    if flags & 0x8000:  # a response sent to us: never answer it
        return None
    return struct.pack("!HHHHHH", msg_id, 0x8000 | (flags & 0x7900) | dns.rcode.FORMERR, 0, 0, 0, 0)
