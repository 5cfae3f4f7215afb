"""The name a client asks for, read from the start of its stream without answering it: the
server name of a TLS ClientHello (parsed by OpenSSL, through the ssl module's SNI callback,
on an in-memory connection that is then dropped) or the Host of an HTTP request (parsed by
h11). The bytes read are kept, to be sent on unchanged."""

from __future__ import annotations

import asyncio
import ssl
import weakref

import h11

from hearth.net import NetworkError

MAX_HEAD = 64 * 1024  # a ClientHello or a request head longer than this is refused


class SniffError(NetworkError):
    """The stream does not name a host; the message says what it held instead."""


_NAMES: weakref.WeakKeyDictionary[ssl.SSLObject, list[str | None]] = weakref.WeakKeyDictionary()


def _on_name(obj: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> int:
    _NAMES[obj].append(name)
    return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE  # stop here: nothing is answered


_CONTEXT = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # one for all: making one costs
_CONTEXT.sni_callback = _on_name


async def tls_server_name(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """The SNI of the ClientHello at the start of `reader`, and the bytes read."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = _CONTEXT.wrap_bio(incoming, outgoing, server_side=True)
    seen: list[str | None] = []
    _NAMES[tls] = seen
    buffered = bytearray()
    while not seen:
        chunk = await reader.read(16384)
        if not chunk:
            raise SniffError("the client closed before its TLS ClientHello")
        buffered += chunk
        if len(buffered) > MAX_HEAD:
            raise SniffError(f"no complete TLS ClientHello in {MAX_HEAD} bytes")
        incoming.write(chunk)
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            continue
        except ssl.SSLError as e:
            if not seen:
                raise SniffError(f"not a TLS ClientHello ({e.reason or e})") from None
    if seen[0] is None:
        raise SniffError("the TLS ClientHello names no server (SNI): connect by name")
    return seen[0], bytes(buffered)


async def http_host(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """The Host (without its port) of the HTTP request at the start of `reader`, and the
    bytes read."""
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    buffered = bytearray()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as e:
            raise SniffError(f"not an HTTP/1 request ({e})") from None
        if isinstance(event, h11.Request):
            break
        if event is h11.NEED_DATA:
            chunk = await reader.read(16384)
            if not chunk:
                raise SniffError("the client closed before its request's head")
            buffered += chunk
            parser.receive_data(chunk)
            continue
        raise SniffError("not an HTTP/1 request")
    hosts = [value.decode("latin-1") for key, value in event.headers if key == b"host"]
    if not hosts:
        raise SniffError("the HTTP request has no Host header")
    host = hosts[0]
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    else:
        host = host.rpartition(":")[0] if host.count(":") == 1 else host
    return host, bytes(buffered)
