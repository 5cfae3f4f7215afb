"""Bridge a browser's noVNC WebSocket to a VM's VNC server, holding the VM's VNC password.

The proxy ends VNC authentication itself. Towards the VM it is an RFB 3.8 client that
answers the VncAuth challenge with the per-VM password; towards the browser it is an RFB
3.8 server that offers only security type None. So the password never leaves the
controller, and the browser can reach nothing but that one VM's VNC port. From ClientInit
onwards the bytes pass through unchanged in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, modes
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

try:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
except ImportError:  # cryptography < 43 keeps DES among the primitives
    from cryptography.hazmat.primitives.ciphers.algorithms import (  # type: ignore[no-redef]
        TripleDES,
    )

log = logging.getLogger(__name__)

RFB_VERSION = b"RFB 003.008\n"
VERSION_SIZE = len(RFB_VERSION)
SECURITY_NONE = 1
SECURITY_VNC_AUTH = 2
CHALLENGE_SIZE = 16
VNC_KEY_SIZE = 8
MAX_REASON_SIZE = 4096  # a VM's failure reason longer than this is not a reason
CHUNK_SIZE = 64 * 1024

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_SERVER_ERROR = 1011
MAX_CLOSE_REASON = 123  # bytes: a WebSocket close frame holds at most 125, 2 for the code

_VERSION_PATTERN = re.compile(rb"RFB (\d{3})\.(\d{3})\n")


class RfbError(Exception):
    """A peer broke the RFB handshake. The message is safe to show: it never holds a secret."""


# --- pure handshake pieces -------------------------------------------------------------


def parse_protocol_version(data: bytes) -> tuple[int, int]:
    """(major, minor) of a ProtocolVersion message, b"RFB xxx.yyy\\n"."""
    match = _VERSION_PATTERN.fullmatch(data)
    if match is None:
        raise RfbError(f"not an RFB protocol version: {data[:VERSION_SIZE]!r}")
    return int(match[1]), int(match[2])


def parse_u32(data: bytes) -> int:
    """A big-endian 32-bit unsigned integer, RFB's length and status field."""
    if len(data) != 4:
        raise RfbError(f"expected 4 bytes, got {len(data)}")
    return struct.unpack(">I", data)[0]


def choose_security_type(offered: bytes) -> int:
    """VNC Authentication from the VM's offer; a VM without it is set up wrongly."""
    if SECURITY_VNC_AUTH not in offered:
        raise RfbError(f"the VM does not offer VNC authentication (offers {list(offered)})")
    return SECURITY_VNC_AUTH


def des_key(password: str) -> bytes:
    """VNC's DES key: the password's first 8 bytes, NUL-padded, each byte's bits reversed.

    The reversal is a historical quirk of VNC's DES code that every server reproduces.
    """
    raw = password.encode()[:VNC_KEY_SIZE].ljust(VNC_KEY_SIZE, b"\0")
    return bytes(int(f"{byte:08b}"[::-1], 2) for byte in raw)


def vnc_auth_response(challenge: bytes, password: str) -> bytes:
    """The 16-byte answer to a VncAuth challenge: the challenge DES-encrypted (ECB)."""
    if len(challenge) != CHALLENGE_SIZE:
        raise RfbError(f"VNC challenge must be {CHALLENGE_SIZE} bytes, got {len(challenge)}")
    # Triple DES with one key repeated three times is single DES, on every cryptography
    # version, without the deprecated 8-byte form.
    encryptor = Cipher(TripleDES(des_key(password) * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def parse_client_security_choice(data: bytes) -> None:
    """Accept the browser's choice only if it is the one type offered, None."""
    if data != bytes([SECURITY_NONE]):
        raise RfbError(f"the client chose security type {list(data)}; only None (1) is offered")


def security_types_message() -> bytes:
    """The server's list of security types: just None, the proxy has authenticated already."""
    return bytes([1, SECURITY_NONE])


def security_result(reason: str | None = None) -> bytes:
    """SecurityResult: OK without a reason, else failed with the reason RFB 3.8 carries."""
    if reason is None:
        return struct.pack(">I", 0)
    encoded = reason.encode()
    return struct.pack(">II", 1, len(encoded)) + encoded


# --- the VM side ------------------------------------------------------------------------


async def _read_reason(reader: asyncio.StreamReader) -> str:
    """The reason string that follows a refusal in RFB 3.8."""
    size = parse_u32(await reader.readexactly(4))
    if size > MAX_REASON_SIZE:
        raise RfbError(f"the VM sent a {size}-byte failure reason")
    return (await reader.readexactly(size)).decode(errors="replace")


async def authenticate_to_vm(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str
) -> None:
    """Run the RFB 3.8 handshake as a client up to a successful SecurityResult."""
    version = parse_protocol_version(await reader.readexactly(VERSION_SIZE))
    if version < (3, 8):
        raise RfbError(f"the VM's VNC server speaks RFB {version[0]}.{version[1]}; 3.8 needed")
    writer.write(RFB_VERSION)
    (count,) = await reader.readexactly(1)
    if count == 0:
        raise RfbError(f"the VM's VNC server refused the connection: {await _read_reason(reader)}")
    writer.write(bytes([choose_security_type(await reader.readexactly(count))]))
    writer.write(vnc_auth_response(await reader.readexactly(CHALLENGE_SIZE), password))
    await writer.drain()
    if parse_u32(await reader.readexactly(4)) != 0:
        try:
            reason = await _read_reason(reader)
        except asyncio.IncompleteReadError:
            reason = "no reason given"
        raise RfbError(f"VNC authentication failed: {reason}")


async def _connect_to_vm(
    host: str, port: int, password: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An authenticated connection to the VM's VNC server."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        cause = os.strerror(e.errno) if e.errno else "connection failed"
        raise RfbError(f"cannot reach the VM's VNC server: {cause}") from e
    try:
        await authenticate_to_vm(reader, writer, password)
    except BaseException as e:
        writer.close()
        if isinstance(e, asyncio.IncompleteReadError):
            raise RfbError("the VM's VNC server closed the connection in the handshake") from e
        if isinstance(e, OSError):
            raise RfbError("lost the connection to the VM's VNC server in the handshake") from e
        raise
    return reader, writer


async def _close_stream(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


# --- the browser side -------------------------------------------------------------------


class _BrowserStream:
    """Reads exact byte counts out of binary WebSocket frames, however noVNC split them."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._buffer = bytearray()

    async def receive(self) -> bytes:
        """The next frame's bytes; WebSocketDisconnect once the browser has gone."""
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", CLOSE_NORMAL), message.get("reason"))
        data = message.get("bytes")
        if data is None:
            raise RfbError("RFB travels in binary WebSocket frames, not text")
        return data

    async def read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            self._buffer += await self.receive()
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def take_buffered(self) -> bytes:
        """What arrived beyond the handshake, to be passed on before anything newer."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


async def serve_browser_handshake(browser: _BrowserStream) -> None:
    """Run the RFB 3.8 handshake as a server offering only None, up to SecurityResult OK."""
    await browser.websocket.send_bytes(RFB_VERSION)
    version = parse_protocol_version(await browser.read_exactly(VERSION_SIZE))
    if version != (3, 8):
        raise RfbError(f"the viewer speaks RFB {version[0]}.{version[1]}; this proxy speaks 3.8")
    await browser.websocket.send_bytes(security_types_message())
    try:
        parse_client_security_choice(await browser.read_exactly(1))
    except RfbError as e:
        await browser.websocket.send_bytes(security_result(str(e)))
        raise
    await browser.websocket.send_bytes(security_result())


# --- after the handshakes -----------------------------------------------------------------

_BROWSER_GONE = (CLOSE_NORMAL, "the viewer closed the connection")
_VM_CLOSED = (CLOSE_NORMAL, "the VM's VNC server closed the connection")
_VM_LOST = (CLOSE_SERVER_ERROR, "lost the connection to the VM's VNC server")


async def _vm_to_browser(reader: asyncio.StreamReader, websocket: WebSocket) -> tuple[int, str]:
    try:
        while data := await reader.read(CHUNK_SIZE):
            await websocket.send_bytes(data)
    except WebSocketDisconnect:
        return _BROWSER_GONE
    except OSError:
        return _VM_LOST
    return _VM_CLOSED


async def _browser_to_vm(browser: _BrowserStream, writer: asyncio.StreamWriter) -> tuple[int, str]:
    data = browser.take_buffered()
    try:
        while True:
            if data:
                writer.write(data)
                await writer.drain()
            data = await browser.receive()
    except WebSocketDisconnect:
        return _BROWSER_GONE
    except RfbError as e:
        return CLOSE_UNSUPPORTED_DATA, str(e)
    except OSError:
        return _VM_LOST


async def _splice(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, browser: _BrowserStream
) -> tuple[int, str]:
    """Copy both ways until one side ends; returns the close code and reason for the browser."""
    copies = {
        asyncio.create_task(_vm_to_browser(reader, browser.websocket)),
        asyncio.create_task(_browser_to_vm(browser, writer)),
    }
    try:
        done, _ = await asyncio.wait(copies, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in copies:
            task.cancel()
        await asyncio.gather(*copies, return_exceptions=True)
    return done.pop().result()


async def _close_websocket(websocket: WebSocket, code: int, reason: str) -> None:
    """Close the browser's side unless it is closed already; the reason fits a close frame."""
    if (
        websocket.application_state != WebSocketState.CONNECTED
        or websocket.client_state == WebSocketState.DISCONNECTED
    ):
        return
    fitted = reason.encode()[:MAX_CLOSE_REASON].decode(errors="ignore")
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.close(code, fitted)


async def bridge(
    websocket: WebSocket, host: str, port: int, password: str, connect_timeout: float = 10
) -> None:
    """Connect an accepted noVNC WebSocket to the VNC server at host:port until either ends.

    The VM is reached and authenticated first, so a browser is offered a session only when
    there is one to give; `connect_timeout` bounds that and, separately, the browser's own
    handshake. Failures close the WebSocket with a reason that never holds the password.
    """
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await _connect_to_vm(host, port, password)
    except TimeoutError:
        log.warning("VNC bridge to %s:%d: timed out", host, port)
        await _close_websocket(
            websocket, CLOSE_SERVER_ERROR, "timed out reaching the VM's VNC server"
        )
        return
    except RfbError as e:
        log.warning("VNC bridge to %s:%d: %s", host, port, e)
        await _close_websocket(websocket, CLOSE_SERVER_ERROR, str(e))
        return
    browser = _BrowserStream(websocket)
    try:
        async with asyncio.timeout(connect_timeout):
            await serve_browser_handshake(browser)
        code, reason = await _splice(reader, writer, browser)
    except TimeoutError:
        code, reason = CLOSE_PROTOCOL_ERROR, "the viewer did not finish the RFB handshake in time"
    except RfbError as e:
        code, reason = CLOSE_PROTOCOL_ERROR, str(e)
    except WebSocketDisconnect:
        code, reason = _BROWSER_GONE
    finally:
        await _close_stream(writer)
    await _close_websocket(websocket, code, reason)
