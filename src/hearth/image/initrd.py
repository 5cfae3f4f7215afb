"""A small initrd: busybox, the virtio and ext4 modules the distribution kernel builds as
modules, and an /init that loads them, waits for the root disk and switches to it.

The distribution's own initramfs runs udev and probes everything; under software emulation
that costs seconds. This one does only what booting from a virtio disk needs.
"""

from __future__ import annotations

import lzma
import os
from pathlib import Path

import zstandard

# What a VM needs before its root filesystem: the disk, the NIC (loaded early so the
# network bootstrap never waits on udev), virtio-mmio for Firecracker, ext4 and its checksum,
# virtio-rng: without the host's entropy the kernel's random pool takes seconds to
# initialise under emulation, and every early Python that imports `random` blocks on it;
# and virtio-balloon, through which the guest reports the memory it frees (the image masks
# udev and systemd-modules-load, so nothing would load it later).
WANTED_MODULES = (
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_rng",
    "virtio_balloon",
    "crc32c_generic",
    "ext4",
)

# The root's mount options, applied here: the image masks systemd-remount-fs, which would
# otherwise start a process at boot to apply /etc/fstab's copy of them.
ROOT_OPTIONS = "rw,noatime,errors=remount-ro"

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "hearth-initrd: loading modules"
for m in $(cat /etc/modules.order); do
  insmod "/lib/modules/$m" || echo "hearth-initrd: $m failed"
done
root=/dev/vda
for arg in $(cat /proc/cmdline); do
  case "$arg" in root=/dev/*) root="${arg#root=}" ;; esac
done
i=0
while [ ! -b "$root" ]; do
  i=$((i + 1))
  if [ "$i" -gt 3000 ]; then echo "hearth-initrd: $root did not appear in 30s"; exec sh; fi
  usleep 10000
done
mkdir -p /newroot
mount -t ext4 -o @ROOT_OPTIONS@ "$root" /newroot ||
  { echo "hearth-initrd: cannot mount $root"; exec sh; }
umount /proc /sys
mount --move /dev /newroot/dev
echo "hearth-initrd: switching to $root"
exec switch_root /newroot /sbin/init
""".replace("@ROOT_OPTIONS@", ROOT_OPTIONS)


def _module_index(moddir: Path) -> tuple[dict[str, str], dict[str, list[str]], set[str]]:
    """Name -> path, path -> dependency paths, and the names built into the kernel."""
    paths: dict[str, str] = {}
    deps: dict[str, list[str]] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        paths[_name(path)] = path
    builtin = {_name(p) for p in (moddir / "modules.builtin").read_text().split()}
    return paths, deps, builtin


def _name(path: str) -> str:
    return os.path.basename(path).split(".ko")[0].replace("-", "_")


def resolve_modules(moddir: Path, wanted=WANTED_MODULES) -> list[str]:
    """Module paths to load, dependencies first, skipping what the kernel has built in."""
    paths, deps, builtin = _module_index(moddir)
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name in builtin:
            continue
        if name not in paths:
            raise ValueError(f"kernel module {name} is neither built in nor in {moddir}")
        visit(paths[name])
    return order


def build_initrd(root: Path, kernel_version: str, out: Path) -> list[str]:
    """Write an uncompressed newc cpio initrd from the image tree `root`; return the modules."""
    moddir = root / "lib/modules" / kernel_version
    modules = resolve_modules(moddir)
    archive = _Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "newroot", "proc", "sys"):
        archive.add_dir(d)
    archive.add_file("bin/busybox", (root / "bin/busybox").read_bytes(), 0o755)
    archive.add_file("init", INIT_SCRIPT.encode(), 0o755)
    loaded = []
    for path in modules:
        data = _decompress(path, (moddir / path).read_bytes())
        name = os.path.basename(path).removesuffix(".xz").removesuffix(".zst")
        archive.add_file(f"lib/modules/{name}", data, 0o644)
        loaded.append(name)
    archive.add_file("etc/modules.order", ("\n".join(loaded) + "\n").encode(), 0o644)
    out.write_bytes(archive.finish())
    return loaded


def _decompress(path: str, data: bytes) -> bytes:
    """A module as insmod loads it: Debian ships .ko.xz, Ubuntu .ko.zst."""
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".zst"):
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


class _Cpio:
    """The newc format the kernel unpacks; small enough not to need the cpio tool."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def add_dir(self, name: str) -> None:
        self._add(name, b"", 0o040755, nlink=2)

    def add_file(self, name: str, data: bytes, mode: int) -> None:
        self._add(name, data, 0o100000 | mode)

    def finish(self) -> bytes:
        self._add("TRAILER!!!", b"", 0, ino=0)
        return b"".join(self._parts)

    def _add(self, name: str, data: bytes, mode: int, nlink: int = 1, ino: int | None = None):
        encoded = name.encode() + b"\0"
        fields = [
            ino if ino is not None else self._ino,
            mode,
            0,
            0,
            nlink,
            0,
            len(data),
            0,
            0,
            0,
            0,
            len(encoded),
            0,
        ]
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._parts += [header, encoded, _pad(len(header) + len(encoded)), data, _pad(len(data))]


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)
