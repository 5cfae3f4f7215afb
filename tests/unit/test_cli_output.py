"""What `hearth demo` prints for the person at the terminal: a connect URL and a password
they can copy, whatever the terminal's width."""

from __future__ import annotations

import io

from rich.console import Console

from hearth.cli import show_sign_in

URL = (
    "http://localhost:8000/connect/3f9c2a7e4b1d4e0f9a8b7c6d5e4f3a2b?token="
    "Zx8_kq2LmN0pQrStUvWxYz0123456789abcdefGHIJ"
)


def test_the_connect_url_and_password_are_never_wrapped():
    for width in (40, 80):
        buffer = io.StringIO()
        console = Console(file=buffer, width=width, force_terminal=False)
        show_sign_in(console, URL, "demo@example.test", "correct-horse-battery-staple-42")
        lines = buffer.getvalue().splitlines()
        assert URL in lines, lines
        assert "correct-horse-battery-staple-42" in lines, lines
        assert any("demo@example.test" in line for line in lines)
