"""What `hearth` prints for the person at the terminal: a connect URL and a password, and
errors, they can copy whatever the terminal's width."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

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


def test_an_error_is_one_unwrapped_line_that_keeps_its_brackets(tmp_path: Path):
    path = tmp_path / ("a-long-directory-name-" * 4) / "hearth.toml"
    path.parent.mkdir()
    path.write_text("[vms]\nmemory = 1\n")
    repo = Path(__file__).parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "hearth", "--config", str(path), "vm", "ls"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "40", "PYTHONPATH": str(repo / "src")},
        timeout=60,
    )
    assert done.returncode == 1
    first, *rest = done.stderr.splitlines()
    assert first.startswith(f"error: {path}: unknown setting vms.memory; [vms] takes vmm, "), first
    assert rest == []
