"""The small initrd: module resolution from depmod's files, and the newc archive it writes.

The archive is read back with a reader written here (and, where the tool exists, with
`cpio -i`), so a header, padding or trailer the kernel would reject fails a test.
"""

from __future__ import annotations

import lzma
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from hearth.image.initrd import INIT_SCRIPT, WANTED_MODULES, build_initrd, resolve_modules
from tests.packages import missing

KVER = "6.12.0-hearth-test"

# path in modules.dep -> its dependencies, listed in modprobe's order (the last loads first),
# so a resolver that trusted the listing order instead of recursing would get it wrong.
DEPS: dict[str, list[str]] = {
    "kernel/drivers/virtio/virtio.ko.xz": [],
    "kernel/drivers/virtio/virtio_ring.ko.xz": [],
    "kernel/drivers/virtio/virtio_pci.ko.xz": [
        "kernel/drivers/virtio/virtio_ring.ko.xz",
        "kernel/drivers/virtio/virtio.ko.xz",
    ],
    "kernel/drivers/block/virtio_blk.ko.xz": [
        "kernel/drivers/virtio/virtio_ring.ko.xz",
        "kernel/drivers/virtio/virtio.ko.xz",
    ],
    "kernel/net/core/failover.ko.xz": [],
    "kernel/drivers/net/net_failover.ko.xz": ["kernel/net/core/failover.ko.xz"],
    "kernel/drivers/net/virtio_net.ko.xz": [
        "kernel/drivers/net/net_failover.ko.xz",
        "kernel/net/core/failover.ko.xz",
        "kernel/drivers/virtio/virtio_ring.ko.xz",
        "kernel/drivers/virtio/virtio.ko.xz",
    ],
    "kernel/drivers/char/hw_random/virtio-rng.ko.xz": [
        "kernel/drivers/virtio/virtio_ring.ko.xz",
        "kernel/drivers/virtio/virtio.ko.xz",
    ],
    "kernel/drivers/virtio/virtio_balloon.ko.xz": [
        "kernel/drivers/virtio/virtio_ring.ko.xz",
        "kernel/drivers/virtio/virtio.ko.xz",
    ],
    "kernel/lib/crc16.ko": [],
    "kernel/fs/mbcache.ko.xz": [],
    "kernel/fs/jbd2/jbd2.ko.zst": [],
    "kernel/fs/ext4/ext4.ko.xz": [
        "kernel/fs/mbcache.ko.xz",
        "kernel/fs/jbd2/jbd2.ko.zst",
        "kernel/lib/crc16.ko",
    ],
    "kernel/fs/btrfs/btrfs.ko.xz": ["kernel/lib/crc16.ko"],
}
BUILTIN = ["kernel/drivers/virtio/virtio_mmio.ko", "kernel/crypto/crc32c-generic.ko"]


def module_bytes(path: str) -> bytes:
    """Distinct, uncompressed content for each synthetic module."""
    return b"\x7fELF\x02\x01\x01" + f"module {path}\n".encode() * 64


def compress(path: str, data: bytes) -> bytes:
    if path.endswith(".xz"):
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    if path.endswith(".zst"):
        return zstandard.ZstdCompressor().compress(data)
    return data


def write_moddir(moddir: Path) -> None:
    """What depmod leaves in /lib/modules/<version>: the modules and their indexes."""
    moddir.mkdir(parents=True)
    for path in DEPS:
        (moddir / path).parent.mkdir(parents=True, exist_ok=True)
        (moddir / path).write_bytes(compress(path, module_bytes(path)))
    (moddir / "modules.dep").write_text(
        "".join(f"{path}: {' '.join(deps)}\n" for path, deps in DEPS.items())
    )
    (moddir / "modules.builtin").write_text("".join(f"{p}\n" for p in BUILTIN))


def basename(path: str) -> str:
    """The name a module gets in the initrd: decompressed, so plain .ko."""
    return Path(path).name.removesuffix(".xz").removesuffix(".zst")


@pytest.fixture
def moddir(tmp_path: Path) -> Path:
    d = tmp_path / "lib/modules" / KVER
    write_moddir(d)
    return d


# -- resolve_modules -------------------------------------------------------------------------


def test_dependencies_come_first_whatever_order_modules_dep_lists_them(moddir: Path) -> None:
    assert resolve_modules(moddir, ("virtio_net",)) == [
        "kernel/net/core/failover.ko.xz",
        "kernel/drivers/net/net_failover.ko.xz",
        "kernel/drivers/virtio/virtio_ring.ko.xz",
        "kernel/drivers/virtio/virtio.ko.xz",
        "kernel/drivers/net/virtio_net.ko.xz",
    ]


def test_shared_dependencies_are_listed_once(moddir: Path) -> None:
    order = resolve_modules(moddir, ("virtio_blk", "virtio_net", "virtio_blk"))
    assert len(order) == len(set(order))
    assert order.count("kernel/drivers/virtio/virtio.ko.xz") == 1
    assert order[-1] == "kernel/drivers/net/virtio_net.ko.xz"


def test_built_in_modules_are_skipped_even_with_a_dash_in_the_file_name(moddir: Path) -> None:
    assert resolve_modules(moddir, ("virtio_mmio", "crc32c_generic")) == []


def test_a_module_file_with_a_dash_is_found_by_its_underscore_name(moddir: Path) -> None:
    assert resolve_modules(moddir, ("virtio_rng",))[-1] == (
        "kernel/drivers/char/hw_random/virtio-rng.ko.xz"
    )


def test_a_missing_module_is_named_in_the_error(moddir: Path) -> None:
    with pytest.raises(ValueError, match="nosuch_driver"):
        resolve_modules(moddir, ("virtio_blk", "nosuch_driver"))


def test_the_default_set_resolves_with_every_dependency_before_its_user(moddir: Path) -> None:
    order = resolve_modules(moddir)
    assert len(order) == len(set(order))
    for i, path in enumerate(order):
        assert set(DEPS[path]) <= set(order[:i]), path
    assert "kernel/fs/btrfs/btrfs.ko.xz" not in order  # present, but nobody asked for it
    assert {Path(p).name.split(".ko")[0].replace("-", "_") for p in order} >= {
        m for m in WANTED_MODULES if m not in ("virtio_mmio", "crc32c_generic")
    }


# -- the archive -----------------------------------------------------------------------------


@dataclass
class Entry:
    name: str
    mode: int
    nlink: int
    data: bytes
    offset: int


def read_newc(blob: bytes) -> list[Entry]:
    """Parse a newc cpio as the kernel does; fail on bad magic, alignment or a missing trailer."""
    entries: list[Entry] = []
    offset = 0
    while True:
        assert offset % 4 == 0, f"header at {offset} is not 4-byte aligned"
        header = blob[offset : offset + 110]
        assert header[:6] == b"070701", f"bad magic at {offset}: {header[:6]!r}"
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, nlink, filesize, namesize = fields[1], fields[4], fields[6], fields[11]
        name_end = offset + 110 + namesize
        raw_name = blob[offset + 110 : name_end]
        assert raw_name.endswith(b"\0"), "name is not NUL-terminated"
        name = raw_name[:-1].decode()
        data_start = name_end + (-name_end % 4)
        assert not blob[name_end:data_start].strip(b"\0"), "non-zero name padding"
        data = blob[data_start : data_start + filesize]
        assert len(data) == filesize, f"{name}: truncated"
        entries.append(Entry(name, mode, nlink, data, offset))
        offset = data_start + filesize
        offset += -offset % 4
        if name == "TRAILER!!!":
            assert offset == len(blob), "bytes after the trailer"
            return entries


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write_moddir(root / "lib/modules" / KVER)
    (root / "bin").mkdir(parents=True)
    (root / "bin/busybox").write_bytes(b"\x7fELF fake busybox\n" * 100)
    return root


@pytest.fixture
def built(image_tree: Path, tmp_path: Path) -> tuple[list[str], bytes]:
    out = tmp_path / "initrd"
    loaded = build_initrd(image_tree, KVER, out)
    return loaded, out.read_bytes()


def test_archive_is_aligned_and_ends_with_the_trailer(built: tuple[list[str], bytes]) -> None:
    entries = read_newc(built[1])
    assert entries[-1].name == "TRAILER!!!"
    assert all(e.offset % 4 == 0 for e in entries)
    assert len({e.name for e in entries}) == len(entries), "duplicate names"


def test_init_is_an_executable_busybox_script(built: tuple[list[str], bytes]) -> None:
    init = {e.name: e for e in read_newc(built[1])}["init"]
    assert stat.S_ISREG(init.mode)
    assert init.mode & 0o111 == 0o111
    assert init.data.startswith(b"#!/bin/busybox sh\n")
    assert init.data == INIT_SCRIPT.encode()


def test_busybox_and_the_directories_init_mounts_on_are_there(
    built: tuple[list[str], bytes], image_tree: Path
) -> None:
    entries = {e.name: e for e in read_newc(built[1])}
    busybox = entries["bin/busybox"]
    assert busybox.data == (image_tree / "bin/busybox").read_bytes()
    assert stat.S_IMODE(busybox.mode) == 0o755
    for d in ("dev", "proc", "sys", "newroot", "lib/modules", "etc"):
        assert stat.S_ISDIR(entries[d].mode), d
    # a directory is listed before anything inside it, or the kernel cannot create the file
    names = [e.name for e in read_newc(built[1])]
    for name in names:
        parent = str(Path(name).parent)
        if parent != ".":
            assert names.index(parent) < names.index(name), name


def test_modules_are_decompressed_with_their_content_intact(
    built: tuple[list[str], bytes],
) -> None:
    loaded, blob = built
    entries = {e.name: e for e in read_newc(blob)}
    by_name = {basename(p): p for p in DEPS}
    assert loaded, "no modules"
    for name in loaded:
        assert name.endswith(".ko"), name
        entry = entries[f"lib/modules/{name}"]
        assert entry.data == module_bytes(by_name[name]), f"{name} is not the decompressed module"
        assert stat.S_IMODE(entry.mode) == 0o644
    assert "jbd2.ko" in loaded and "crc16.ko" in loaded  # the zstd and the plain one
    assert "btrfs.ko" not in loaded
    assert not any("virtio_mmio" in n or "crc32c" in n for n in loaded), "built-ins shipped"


def test_modules_order_lists_them_dependencies_first(built: tuple[list[str], bytes]) -> None:
    loaded, blob = built
    entries = {e.name: e for e in read_newc(blob)}
    order = entries["etc/modules.order"].data.decode().split()
    assert order == loaded
    by_name = {basename(p): p for p in DEPS}
    for i, name in enumerate(order):
        deps = {basename(d) for d in DEPS[by_name[name]]}
        assert deps <= set(order[:i]), f"{name} before one of {deps}"
    module_files = {n.removeprefix("lib/modules/") for n in entries if n.endswith(".ko")}
    assert module_files == set(order)


@pytest.mark.skipif(shutil.which("cpio") is None, reason=missing("cpio"))
def test_the_cpio_tool_unpacks_it_to_the_same_files(
    built: tuple[list[str], bytes], tmp_path: Path
) -> None:
    """A second, independent reader: GNU cpio must agree with ours."""
    dest = tmp_path / "unpacked"
    dest.mkdir()
    subprocess.run(
        ["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"],
        input=built[1],
        cwd=dest,
        check=True,
        capture_output=True,
    )
    for entry in read_newc(built[1])[:-1]:
        path = dest / entry.name
        if stat.S_ISDIR(entry.mode):
            assert path.is_dir(), entry.name
        else:
            assert path.read_bytes() == entry.data, entry.name
            assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(entry.mode), entry.name
