"""The uncompressed ELF kernel Firecracker boots, cut out of the distribution's bzImage."""

from __future__ import annotations

import gzip
import lzma
import zlib
from pathlib import Path

import zstandard

ELF_MAGIC = b"\x7fELF"


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor().decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


# Magic numbers of the payload compressions distributions use, and how to undo them.
PAYLOADS = (
    (b"\x28\xb5\x2f\xfd", _zstd),
    (b"\xfd7zXZ\x00", _xz),
    (b"\x1f\x8b\x08", _gzip),
)


def extract_vmlinux(vmlinuz: Path) -> bytes:
    """Find the compressed payload in a bzImage and return the ELF inside it."""
    blob = vmlinuz.read_bytes()
    for magic, decompress in PAYLOADS:
        start = blob.find(magic)
        while start != -1:
            try:
                out = decompress(blob[start:])
            except (zstandard.ZstdError, lzma.LZMAError, zlib.error, gzip.BadGzipFile):
                out = b""
            if out.startswith(ELF_MAGIC):
                return out
            start = blob.find(magic, start + 1)
    raise ValueError(f"{vmlinuz}: no gzip, xz or zstd payload holding an ELF kernel")
