"""The VNC proxy against a real Xtigervnc and a real WebSocket client, on 127.0.0.1 only.

The helpers here (a password-protected Xtigervnc, uvicorn in a thread, an RFB client over
a WebSocket) are shared with test_live_page.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, WebSocket
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from hearth.api import vnc_proxy
from hearth.api.vnc_proxy import RfbError, bridge
from hearth.waiting import wait_for
from tests.packages import missing

LOOPBACK = "127.0.0.1"
WIDTH, HEIGHT = 800, 600
XVNC_MISSING = missing("tigervnc-standalone-server", "Xtigervnc")
VNCPASSWD_MISSING = missing("tigervnc-tools", "vncpasswd")


# --- helpers shared with test_live_page.py ------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def free_display() -> int:
    """An X display number with no lock file or socket, so Xtigervnc can take it."""
    for display in range(20, 200):
        lock = Path(f"/tmp/.X{display}-lock")
        if not lock.exists() and not Path(f"/tmp/.X11-unix/X{display}").exists():
            return display
    raise RuntimeError("no free X display between :20 and :199")


def vncpasswd(password: str) -> bytes:
    """TigerVNC's obfuscated password file for `password`, given on stdin as the guest does."""
    if shutil.which("vncpasswd") is None:
        pytest.skip(VNCPASSWD_MISSING)
    done = subprocess.run(
        ["vncpasswd", "-f"], input=f"{password}\n".encode(), capture_output=True, check=True
    )
    return done.stdout


def accepts_connections(port: int, address: str = LOOPBACK) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((address, port)) == 0


@dataclass(frozen=True)
class VncServer:
    port: int
    password: str


@contextlib.contextmanager
def running_xvnc(
    workdir: Path, address: str = LOOPBACK, port: int = 0, password: str = ""
) -> Iterator[VncServer]:
    """Xtigervnc with VncAuth and `password` (by default a random one), listening on
    `address` only (a loopback one) and `port` (by default a free one)."""
    if shutil.which("Xtigervnc") is None:
        pytest.skip(XVNC_MISSING)
    password = password or secrets.token_urlsafe(6)[:8]
    passwd_file = workdir / "vncpasswd"
    passwd_file.write_bytes(vncpasswd(password))
    passwd_file.chmod(0o600)
    port = port or free_port()
    command = [
        "Xtigervnc", f":{free_display()}", "-rfbport", str(port), "-rfbauth", str(passwd_file),
        "-SecurityTypes", "VncAuth", "-localhost=0", "-interface", address,
        "-geometry", f"{WIDTH}x{HEIGHT}",
    ]  # fmt: skip
    log_path = workdir / "xtigervnc.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: process.poll() is not None or accepts_connections(port, address),
            30,
            "Xtigervnc",
        )
        if process.poll() is not None:
            raise RuntimeError(f"Xtigervnc exited early:\n{log_path.read_text(errors='replace')}")
        yield VncServer(port, password)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[int]:
    """`app` under uvicorn in a thread on 127.0.0.1; yields its port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 30, "uvicorn to start")
        if not server.started:
            raise RuntimeError("uvicorn did not start")
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class RfbViewer:
    """The client end of RFB over a WebSocket, as noVNC speaks it, reading exact sizes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.buffer = b""

    def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            frame = self.ws.recv(timeout=30)
            assert isinstance(frame, bytes), "RFB must come in binary frames"
            self.buffer += frame
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def send(self, data: bytes) -> None:
        self.ws.send(data)

    def handshake(self) -> tuple[int, int, bytes, int]:
        """Version, security None, ClientInit; returns width, height, name, bits per pixel."""
        assert self.read(12) == b"RFB 003.008\n"
        self.send(b"RFB 003.008\n")
        count = self.read(1)[0]
        assert self.read(count) == b"\x01", "the proxy must offer security type None only"
        self.send(b"\x01")
        assert self.read(4) == b"\x00\x00\x00\x00", "SecurityResult OK"
        self.send(b"\x01")  # ClientInit: shared
        width, height = struct.unpack(">HH", self.read(4))
        bits_per_pixel = self.read(16)[0]
        (name_size,) = struct.unpack(">I", self.read(4))
        return width, height, self.read(name_size), bits_per_pixel

    def full_update_area(self, bits_per_pixel: int) -> int:
        """Ask for the whole screen in Raw encoding; the area the FramebufferUpdate covers."""
        self.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw
        self.send(struct.pack(">BBHHHH", 3, 0, 0, 0, WIDTH, HEIGHT))
        message_type, rectangles = struct.unpack(">BxH", self.read(4))
        assert message_type == 0, f"expected a FramebufferUpdate, got message {message_type}"
        area = 0
        for _ in range(rectangles):
            _x, _y, width, height, encoding = struct.unpack(">HHHHi", self.read(12))
            assert encoding == 0
            self.read(width * height * bits_per_pixel // 8)
            area += width * height
        return area


def closed_by_server(viewer: RfbViewer) -> ConnectionClosed:
    """Read until the server closes the WebSocket; the ConnectionClosed it ended with."""
    with pytest.raises(ConnectionClosed) as closed:
        viewer.read(1 << 30)
    return closed.value


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def xvnc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VncServer]:
    with running_xvnc(tmp_path_factory.mktemp("xvnc")) as server:
        yield server


BridgeTo = Callable[..., contextlib.AbstractContextManager[str]]


@pytest.fixture
def bridge_to() -> BridgeTo:
    """A WebSocket URL whose server bridges to 127.0.0.1:<port> with <password>."""

    @contextlib.contextmanager
    def serve(port: int, password: str, timeout: float = 10) -> Iterator[str]:
        app = FastAPI()

        @app.websocket("/vnc")
        async def vnc(websocket: WebSocket) -> None:
            binary = "binary" in websocket.scope.get("subprotocols", [])
            await websocket.accept(subprotocol="binary" if binary else None)
            await bridge(websocket, LOOPBACK, port, password, connect_timeout=timeout)

        with serving(app) as app_port:
            yield f"ws://{LOOPBACK}:{app_port}/vnc"

    return serve


# --- through the proxy to Xtigervnc --------------------------------------------------------


def test_viewer_gets_the_screen_without_knowing_the_password(
    xvnc: VncServer, bridge_to: BridgeTo
) -> None:
    with bridge_to(xvnc.port, xvnc.password) as url, connect(url, subprotocols=["binary"]) as ws:
        assert ws.subprotocol == "binary"
        viewer = RfbViewer(ws)
        width, height, name, bits_per_pixel = viewer.handshake()
        assert (width, height) == (WIDTH, HEIGHT)
        assert name
        assert viewer.full_update_area(bits_per_pixel) == WIDTH * HEIGHT


def test_viewer_without_subprotocol_works_too(xvnc: VncServer, bridge_to: BridgeTo) -> None:
    with bridge_to(xvnc.port, xvnc.password) as url, connect(url) as ws:
        assert ws.subprotocol is None
        assert RfbViewer(ws).handshake()[:2] == (WIDTH, HEIGHT)


def test_wrong_password_closes_with_an_authentication_reason(
    xvnc: VncServer, bridge_to: BridgeTo, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "Wr0ngPw!"
    with bridge_to(xvnc.port, wrong) as url, connect(url, subprotocols=["binary"]) as ws:
        closed = closed_by_server(RfbViewer(ws))
    assert closed.rcvd is not None
    assert closed.rcvd.code == vnc_proxy.CLOSE_SERVER_ERROR
    assert "authentication" in closed.rcvd.reason.lower()
    assert wrong not in closed.rcvd.reason
    assert wrong not in caplog.text


def test_closed_vm_port_closes_with_a_clear_reason(bridge_to: BridgeTo) -> None:
    with bridge_to(free_port(), "whatever") as url, connect(url) as ws:
        closed = closed_by_server(RfbViewer(ws))
    assert closed.rcvd is not None
    assert closed.rcvd.code == vnc_proxy.CLOSE_SERVER_ERROR
    assert closed.rcvd.reason == "cannot reach the VM's VNC server: Connection refused"


def test_silent_vm_times_out_with_a_clear_reason(bridge_to: BridgeTo) -> None:
    """A VM port that accepts but never speaks RFB (a VNC server stuck at start-up)."""
    with socket.socket() as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen()
        port = silent.getsockname()[1]
        with bridge_to(port, "whatever", timeout=0.5) as url, connect(url) as ws:
            closed = closed_by_server(RfbViewer(ws))
    assert closed.rcvd is not None
    assert closed.rcvd.code == vnc_proxy.CLOSE_SERVER_ERROR
    assert closed.rcvd.reason == "timed out reaching the VM's VNC server"


def test_viewer_choosing_another_security_type_is_refused(
    xvnc: VncServer, bridge_to: BridgeTo
) -> None:
    with bridge_to(xvnc.port, xvnc.password) as url, connect(url) as ws:
        viewer = RfbViewer(ws)
        assert viewer.read(12) == b"RFB 003.008\n"
        viewer.send(b"RFB 003.008\n")
        assert viewer.read(2) == b"\x01\x01"
        viewer.send(b"\x02")  # VNC Authentication, which was not offered
        status, size = struct.unpack(">II", viewer.read(8))
        assert status == 1
        assert b"only None" in viewer.read(size)
        closed = closed_by_server(viewer)
    assert closed.rcvd is not None
    assert closed.rcvd.code == vnc_proxy.CLOSE_PROTOCOL_ERROR


def test_viewer_closing_ends_the_vm_connection_too(xvnc: VncServer, bridge_to: BridgeTo) -> None:
    """After the viewer goes, the proxy still serves the next one: nothing was left hanging."""
    with bridge_to(xvnc.port, xvnc.password) as url:
        for _ in range(2):
            with connect(url) as ws:
                assert RfbViewer(ws).handshake()[:2] == (WIDTH, HEIGHT)


# --- pure pieces ----------------------------------------------------------------------------

# VNC's password obfuscation is DES with the fixed key below under the same bit-reversal
# quirk, so with that key as the "password", vnc_auth_response must reproduce it.
VNCPASSWD_FIXED_KEY = "\x17\x52\x6b\x06\x23\x4e\x58\x07"
# printf 'hearthpw\n' | vncpasswd -f | xxd -p   (TigerVNC 1.12, Debian)
HEARTHPW_OBFUSCATED = bytes.fromhex("21155fb2cd0ebc0c")


def test_des_response_matches_tigervnc_obfuscation_vector() -> None:
    response = vnc_proxy.vnc_auth_response(b"hearthpw" * 2, VNCPASSWD_FIXED_KEY)
    assert response == HEARTHPW_OBFUSCATED * 2


def test_des_response_matches_live_vncpasswd() -> None:
    password = secrets.token_hex(4)
    expected = vncpasswd(password)
    challenge = password.encode() + os.urandom(8)
    response = vnc_proxy.vnc_auth_response(challenge, VNCPASSWD_FIXED_KEY)
    assert response[:8] == expected


def test_des_key_reverses_bits_and_pads_to_eight_bytes() -> None:
    assert vnc_proxy.des_key("\x01") == b"\x80" + b"\0" * 7
    assert vnc_proxy.des_key("abcdefghij") == vnc_proxy.des_key("abcdefgh")
    assert vnc_proxy.des_key("a") == bytes([0b10000110]) + b"\0" * 7


def test_challenge_of_the_wrong_size_is_refused() -> None:
    with pytest.raises(RfbError, match="16 bytes"):
        vnc_proxy.vnc_auth_response(b"short", "pw")


def test_protocol_version_parses() -> None:
    assert vnc_proxy.parse_protocol_version(b"RFB 003.008\n") == (3, 8)
    assert vnc_proxy.parse_protocol_version(b"RFB 004.001\n") == (4, 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"RFB 003.008",
        b"RFB 003.008\r",
        b"RFB 3.8\n\n\n\n\n",
        b"SSH-2.0-Open",
        b"rfb 003.008\n",
        b"RFB 003.008\n\n",
    ],
)
def test_malformed_protocol_version_is_refused(data: bytes) -> None:
    with pytest.raises(RfbError, match="not an RFB protocol version"):
        vnc_proxy.parse_protocol_version(data)


def test_security_type_choice() -> None:
    assert vnc_proxy.choose_security_type(bytes([16, 2, 19])) == 2
    with pytest.raises(RfbError, match=r"does not offer VNC authentication \(offers \[1\]\)"):
        vnc_proxy.choose_security_type(b"\x01")
    with pytest.raises(RfbError):
        vnc_proxy.choose_security_type(b"")


def test_client_security_choice() -> None:
    vnc_proxy.parse_client_security_choice(b"\x01")
    for bad in (b"", b"\x02", b"\x01\x01"):
        with pytest.raises(RfbError, match="only None"):
            vnc_proxy.parse_client_security_choice(bad)


def test_u32_and_security_result() -> None:
    assert vnc_proxy.parse_u32(b"\x00\x00\x01\x00") == 256
    with pytest.raises(RfbError):
        vnc_proxy.parse_u32(b"\x00\x01")
    assert vnc_proxy.security_result() == b"\0\0\0\0"
    assert vnc_proxy.security_result("no") == b"\0\0\0\x01\0\0\0\x02no"
    assert vnc_proxy.security_types_message() == b"\x01\x01"
