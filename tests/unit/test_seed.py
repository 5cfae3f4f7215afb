"""The VM seed image (hearth.guest.seed) and its reader on the browser image (vnc.py)."""

from __future__ import annotations

import json
import re
import stat
import sys
from pathlib import Path

import pytest

from hearth.guest import vnc
from hearth.guest.seed import SEED_SIZE, SeedError, read_seed, write_seed

TOKEN = "tok-3f9a1c0d5e7b"


def test_round_trip(tmp_path: Path) -> None:
    data = {"agent_token": TOKEN, "vnc_password": "pässwörd", "extra": {"n": [1, 2]}}
    path = tmp_path / "seed.img"
    write_seed(path, data)
    assert read_seed(path) == data


def test_image_is_json_then_nul_padding_of_exact_size(tmp_path: Path) -> None:
    path = tmp_path / "seed.img"
    write_seed(path, {"agent_token": TOKEN})
    raw = path.read_bytes()
    assert len(raw) == SEED_SIZE
    payload, padding = raw.split(b"\0", 1)
    assert payload == b'{"agent_token":"tok-3f9a1c0d5e7b"}'
    assert padding.strip(b"\0") == b""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_custom_size_and_rewrite_leaves_no_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "seed.img"
    write_seed(path, {"agent_token": "old"}, size=4096)
    write_seed(path, {"agent_token": "new"}, size=4096)
    assert path.stat().st_size == 4096
    assert read_seed(path) == {"agent_token": "new"}
    assert [p.name for p in tmp_path.iterdir()] == ["seed.img"]


def test_a_seed_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "seed.img"
    path.write_bytes(b'{"agent_token": "s3cr3t-value", oops' + b"\0" * 512)
    with pytest.raises(SeedError) as info:
        read_seed(path)
    message = str(info.value)
    assert message.startswith(f"seed {path} is not valid JSON: ")
    assert "line 1 column" in message
    assert "s3cr3t-value" not in message  # the error never quotes the seed


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\0" * 1024, "is empty (no JSON before the NUL padding)"),
        (b"", "is empty"),
        (b"\xff\xfe{}" + b"\0" * 10, "is not UTF-8 (bad byte at offset 0)"),
        (b'["agent_token"]\0', "must hold a JSON object, not list"),
        (b'{"vnc_password": "x"}\0', "has no agent_token"),
        (b'{"agent_token": ""}\0', "has no agent_token"),
    ],
)
def test_bad_seeds_are_reported_clearly(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "seed.img"
    path.write_bytes(content)
    with pytest.raises(SeedError, match=re.escape(message)):
        read_seed(path)


def test_a_missing_seed_device_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_seed(tmp_path / "vdb")


def test_seed_error_is_a_value_error() -> None:
    assert issubclass(SeedError, ValueError)


@pytest.mark.parametrize(
    ("data", "size", "message"),
    [
        ({"vnc_password": "x"}, SEED_SIZE, "has no agent_token"),
        ({"agent_token": "x" * 600}, 512, "must be shorter than the 512-byte image"),
        ({"agent_token": "x"}, 1000, "not a positive multiple of 512"),
        ({"agent_token": "x"}, 0, "not a positive multiple of 512"),
    ],
)
def test_write_seed_refuses(tmp_path: Path, data: dict, size: int, message: str) -> None:
    path = tmp_path / "seed.img"
    with pytest.raises(SeedError, match=re.escape(message)):
        write_seed(path, data, size=size)
    assert list(tmp_path.iterdir()) == []


# --- vnc.py: the browser image's other reader of the seed ---------------------------------


def test_vnc_password_comes_from_the_seed() -> None:
    assert vnc.vnc_password({"agent_token": TOKEN, "vnc_password": "a1b2c3d4"}) == "a1b2c3d4"


@pytest.mark.parametrize("password", [None, "", 12345678, "two\nlines", "cr\rx", "nul\0x"])
def test_vnc_password_must_be_one_non_empty_line(password: object) -> None:
    with pytest.raises(SeedError):
        vnc.vnc_password({"agent_token": TOKEN, "vnc_password": password})


def test_obfuscate_passes_the_password_on_stdin_only(tmp_path: Path) -> None:
    # A stand-in for `vncpasswd -f`: records its argv and stdin, prints 8 bytes.
    record = tmp_path / "record"
    script = (
        "import json, sys; data = sys.stdin.read(); "
        f"open({str(record)!r}, 'w').write(json.dumps([sys.argv, data])); "
        "sys.stdout.buffer.write(b'\\x01' * 8)"
    )
    out = vnc.obfuscate("a1b2c3d4", command=(sys.executable, "-c", script))
    assert out == b"\x01" * 8
    argv, stdin = json.loads(record.read_text())
    assert stdin == "a1b2c3d4\n"
    assert not any("a1b2c3d4" in arg for arg in argv)


def test_obfuscate_reports_a_failing_vncpasswd() -> None:
    command = (sys.executable, "-c", "import sys; sys.exit('vncpasswd: boom')")
    with pytest.raises(RuntimeError, match="failed .exit 1, 0 bytes out.: vncpasswd: boom"):
        vnc.obfuscate("a1b2c3d4", command=command)


def test_password_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "run/hearth/vncpasswd"
    vnc.write_private(path, b"\x01" * 8)
    vnc.write_private(path, b"\x02" * 8)
    assert path.read_bytes() == b"\x02" * 8
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["vncpasswd"]


def test_xtigervnc_command_line() -> None:
    assert vnc.XVNC == (
        "Xtigervnc", ":1", "-rfbport", "5901", "-rfbauth", "/run/hearth/vncpasswd",
        "-SecurityTypes", "VncAuth", "-geometry", "1280x800", "-depth", "24", "-AlwaysShared",
    )  # fmt: skip
