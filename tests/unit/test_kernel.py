"""Cutting the ELF kernel out of a bzImage: the payload is found past a setup stub and decoys.

The synthetic images are laid out like a real bzImage: a stub, the compressed kernel, then
trailing bytes (the real one ends with the payload's size), with a compression magic in the
stub that is not the start of a valid stream.
"""

from __future__ import annotations

import gzip
import lzma
import os
import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from hearth.image.kernel import extract_vmlinux

# The images scripts/test.sh builds (as the VM tests find them).
REAL_IMAGE = Path(os.environ.get("HEARTH_TEST_IMAGES", "/var/lib/hearth/images")) / "cli"
EM_X86_64 = 62

COMPRESSORS: dict[str, tuple[bytes, Callable[[bytes], bytes]]] = {
    "gzip": (b"\x1f\x8b\x08", lambda data: gzip.compress(data, mtime=0)),
    "xz": (b"\xfd7zXZ\x00", lambda data: lzma.compress(data, format=lzma.FORMAT_XZ)),
    "zstd": (b"\x28\xb5\x2f\xfd", lambda data: zstandard.ZstdCompressor().compress(data)),
}


def junk(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def elf_payload() -> bytes:
    """Enough of a vmlinux to recognise: the ELF magic, then a body that is not repetitive."""
    return b"\x7fELF\x02\x01\x01" + junk(64 * 1024, seed=7)


def bzimage(tmp_path: Path, *parts: bytes) -> Path:
    path = tmp_path / "vmlinuz"
    path.write_bytes(b"".join(parts))
    return path


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_finds_the_payload_after_a_stub_and_before_trailing_bytes(
    tmp_path: Path, kind: str
) -> None:
    _, compress = COMPRESSORS[kind]
    payload = elf_payload()
    packed = compress(payload)
    image = bzimage(
        tmp_path,
        junk(16 * 1024, seed=1),
        packed,
        struct.pack("<I", len(payload)),
        junk(512, seed=2),
    )
    assert extract_vmlinux(image) == payload


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_skips_a_decoy_magic_before_the_real_payload(tmp_path: Path, kind: str) -> None:
    magic, compress = COMPRESSORS[kind]
    payload = elf_payload()
    decoy = magic + junk(300, seed=3)
    image = bzimage(
        tmp_path, junk(4096, seed=4), decoy, junk(100, seed=5), compress(payload), junk(64, seed=6)
    )
    assert image.read_bytes().find(magic) < image.read_bytes().find(compress(payload))
    assert extract_vmlinux(image) == payload


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_skips_a_valid_stream_that_is_not_an_elf(tmp_path: Path, kind: str) -> None:
    _, compress = COMPRESSORS[kind]
    payload = elf_payload()
    image = bzimage(
        tmp_path,
        junk(1024, seed=8),
        compress(b"a compressed setup table " * 50),
        junk(256, seed=9),
        compress(payload),
        junk(64, seed=10),
    )
    assert extract_vmlinux(image) == payload


def test_no_elf_payload_is_a_clear_error(tmp_path: Path) -> None:
    """Every magic present, some even starting valid streams, but none holds an ELF."""
    image = bzimage(
        tmp_path,
        junk(2048, seed=11),
        *(magic + junk(200, seed=12) for magic, _ in COMPRESSORS.values()),
        *(compress(b"not a kernel " * 100) for _, compress in COMPRESSORS.values()),
        junk(512, seed=13),
    )
    with pytest.raises(ValueError, match="no gzip, xz or zstd payload holding an ELF kernel"):
        extract_vmlinux(image)


@pytest.mark.skipif(
    not (REAL_IMAGE / "vmlinuz").is_file(), reason="needs a built cli image (HEARTH_TEST_IMAGES)"
)
def test_the_distribution_kernel_yields_an_x86_64_elf() -> None:
    vmlinux = extract_vmlinux(REAL_IMAGE / "vmlinuz")
    assert vmlinux[:4] == b"\x7fELF"
    assert vmlinux[4] == 2, "not a 64-bit ELF"
    assert vmlinux[5] == 1, "not little-endian"
    e_type, e_machine = struct.unpack_from("<HH", vmlinux, 16)
    assert e_type == 2, "not an executable"
    assert e_machine == EM_X86_64
    built = REAL_IMAGE / "vmlinux"
    if built.is_file():
        assert vmlinux == built.read_bytes()
