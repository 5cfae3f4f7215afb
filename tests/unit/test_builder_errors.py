"""The image builder's clear errors, its up-to-date shortcut, its swap into place, and the
chroot it runs steps in.

Nothing here stands in for the builder: errors come from a real PATH without debootstrap, a
real small tmpfs, a refused loopback port and a real HTTP server answering 404. The swap is
exercised through build() itself over layers laid out by the test (so no debootstrap runs),
with real overlayfs mounts and a real mkfs.ext4.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.image import recipes
from hearth.image.builder import ARTEFACTS, REQUIRED_TOOLS, ImageBuilder, _swap_into_place
from hearth.image.chroot import HOST_CA_IN_CHROOT, PROXY_VARS, BuildError, build_env, chroot
from tests.packages import missing

REFUSED_MIRROR = "http://127.0.0.1:9/debian"  # loopback discard port: nothing listens
KVER = "6.12.0-hearth-test"

needs_tools = pytest.mark.skipif(
    any(shutil.which(t) is None for t in REQUIRED_TOOLS),
    reason=missing("debootstrap, e2fsprogs and util-linux", "the builder's preflight checks them"),
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
needs_overlay = pytest.mark.skipif(
    os.geteuid() != 0 or "overlay" not in Path("/proc/filesystems").read_text(),
    reason="needs root and overlayfs",
)


def make_settings(home: Path, mirror: str = REFUSED_MIRROR, suite: str = "trixie") -> Settings:
    return Settings(home=home, mirror=mirror, suite=suite)


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    targets = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [t for t in targets if t == prefix or t.startswith(prefix + "/")]


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reach loopback servers directly: httpx would otherwise send the request to a proxy."""
    for var in (*PROXY_VARS, "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


# -- clear errors ------------------------------------------------------------------------------


def test_an_unknown_image_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown image 'desktop'") as err:
        ImageBuilder(make_settings(tmp_path)).build("desktop")
    for name in recipes.RECIPES:
        assert name in str(err.value)


def test_a_missing_tool_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in REQUIRED_TOOLS:
        real = shutil.which(tool)
        if tool != "debootstrap" and real is not None:
            (bindir / tool).symlink_to(real)
    present = sorted(p.name for p in bindir.iterdir())
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(BuildError, match=r"missing tools: debootstrap\b") as err:
        ImageBuilder(make_settings(tmp_path / "home")).build("baseline")
    listed = str(err.value).split("(")[0]
    assert not any(tool in listed for tool in present), f"present tools reported: {listed}"


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    """A real 16 MiB filesystem for HEARTH_HOME."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    home = tmp_path / "small"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "hearth-test", str(home)], check=True)
    try:
        yield home
    finally:
        subprocess.run(["umount", str(home)], check=True)


@needs_tools
def test_too_little_disk_says_how_much_is_needed(small_home: Path) -> None:
    with pytest.raises(BuildError, match="too little disk for the baseline image") as err:
        ImageBuilder(make_settings(small_home)).build("baseline")
    message = str(err.value)
    assert str(small_home) in message
    assert f"{recipes.get('baseline').min_free_gib} GiB needed" in message


@needs_tools
def test_an_unreachable_mirror_is_reported(tmp_path: Path, direct: None) -> None:
    with pytest.raises(BuildError, match="mirror unreachable") as err:
        ImageBuilder(make_settings(tmp_path / "home")).build("baseline")
    assert f"{REFUSED_MIRROR}/dists/trixie/Release" in str(err.value)


class NotFound(BaseHTTPRequestHandler):
    """A mirror without the suite: every path is 404; the paths asked for are recorded."""

    paths: list[str] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""


@pytest.fixture
def not_found_mirror() -> Iterator[tuple[str, list[str]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    NotFound.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/debian", NotFound.paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@needs_tools
def test_a_mirror_without_the_suite_names_it(
    tmp_path: Path, direct: None, not_found_mirror: tuple[str, list[str]]
) -> None:
    mirror, paths = not_found_mirror
    settings = make_settings(tmp_path / "home", mirror=mirror, suite="nosuchsuite")
    with pytest.raises(BuildError, match="has no suite 'nosuchsuite'") as err:
        ImageBuilder(settings).build("baseline")
    assert "answered 404" in str(err.value)
    assert mirror in str(err.value)
    assert paths == ["/debian/dists/nosuchsuite/Release"]


# -- up to date --------------------------------------------------------------------------------


def write_image(out: Path, inputs: str, content: bytes = b"old") -> dict:
    out.mkdir(parents=True)
    for artefact in ARTEFACTS:
        (out / artefact).write_bytes(content + artefact.encode())
    manifest = {"name": out.name, "inputs": inputs}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No tools on PATH: any step past the up-to-date check fails at once, without network."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


def test_an_image_with_the_same_inputs_is_not_rebuilt(tmp_path: Path, offline: None) -> None:
    builder = ImageBuilder(make_settings(tmp_path / "home"))
    out = builder.settings.images_dir / "cli"
    manifest = write_image(out, builder.keys(recipes.get("cli"))["image"])
    steps: list[str] = []
    builder.progress = steps.append
    result = builder.build("cli")
    assert result.rebuilt is False
    assert result.path == out
    assert result.manifest == manifest
    assert steps == [f"cli: up to date ({manifest['inputs']})"]
    assert not (builder.settings.home / "cache").exists(), "the layer store was touched"


@pytest.mark.parametrize("change", ["other inputs", "missing artefact", "force"])
def test_an_image_that_is_not_up_to_date_is_rebuilt(
    tmp_path: Path, offline: None, change: str
) -> None:
    builder = ImageBuilder(make_settings(tmp_path / "home"))
    out = builder.settings.images_dir / "cli"
    key = builder.keys(recipes.get("cli"))["image"]
    write_image(out, "0" * 20 if change == "other inputs" else key)
    if change == "missing artefact":
        (out / "initrd").unlink()
    with pytest.raises(BuildError, match="missing tools"):  # i.e. it went on to build
        builder.build("cli", force=change == "force")


# -- swapping the new image into place -------------------------------------------------------


def test_swap_replaces_the_old_image_and_leaves_no_copy(tmp_path: Path) -> None:
    out = tmp_path / "images/cli"
    write_image(out, "old", b"old")
    partial = tmp_path / "images/.cli.partial"
    write_image(partial, "new", b"new")
    (tmp_path / "images/.cli.old").mkdir()  # left by a crash during an earlier swap
    _swap_into_place(partial, out)
    assert json.loads((out / "manifest.json").read_text())["inputs"] == "new"
    assert sorted(p.name for p in out.parent.iterdir()) == ["cli"]


def test_swap_installs_a_first_image(tmp_path: Path) -> None:
    out = tmp_path / "images/cli"
    partial = tmp_path / "images/.cli.partial"
    write_image(partial, "new", b"new")
    _swap_into_place(partial, out)
    assert (out / "vmlinux").read_bytes() == b"newvmlinux"
    assert sorted(p.name for p in out.parent.iterdir()) == ["cli"]


def test_swap_keeps_the_old_image_when_the_new_one_cannot_be_moved_in(tmp_path: Path) -> None:
    out = tmp_path / "images/cli"
    write_image(out, "old", b"old")
    with pytest.raises(FileNotFoundError):
        _swap_into_place(tmp_path / "images/.cli.partial", out)  # the new image never came
    assert json.loads((out / "manifest.json").read_text())["inputs"] == "old"
    assert (out / "vmlinux").read_bytes() == b"oldvmlinux"
    assert sorted(p.name for p in out.parent.iterdir()) == ["cli"]


def elf_kernel() -> bytes:
    return b"\x7fELF\x02\x01\x01" + os.urandom(4096)


def bzimage(vmlinux: bytes) -> bytes:
    """A setup stub, the gzip payload, and the size trailer, as in a real bzImage."""
    return b"MZ" + b"\0" * 1022 + gzip.compress(vmlinux) + struct.pack("<I", len(vmlinux))


def lay_out_layers(builder: ImageBuilder, name: str, vmlinuz: bytes) -> None:
    """The three cached layers of `name`, so build() skips debootstrap, apt and npm."""
    keys = builder.keys(recipes.get(name))
    store = builder.layers
    with store.build("base", keys["base"], []) as base:
        (base / "lib/modules" / KVER).mkdir(parents=True)
        (base / "boot").mkdir()
        (base / "boot" / f"vmlinuz-{KVER}").write_bytes(vmlinuz)
        (base / "boot" / f"initrd.img-{KVER}").write_bytes(b"stock initramfs")
        (base / "var/lib/dpkg").mkdir(parents=True)
        (base / "var/lib/dpkg/status").write_text(
            "Package: python3\nStatus: install ok installed\nVersion: 3.13.5-1\n\n"
            "Package: firefox-esr\nStatus: deinstall ok config-files\nVersion: 128.0\n"
        )
    with store.build(f"packages-{name}", keys["packages"], []) as packages:
        pkg = packages / "usr/local/lib/node_modules/@openai/codex"
        pkg.mkdir(parents=True)
        (pkg / "package.json").write_text('{"name": "@openai/codex", "version": "0.171.0"}')
    with store.build(f"guest-{name}", keys["guest"], []) as guest:
        (guest / "etc").mkdir()
        (guest / "etc/hostname").write_text("hearth\n")


def image_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@needs_tools
@needs_overlay
def test_a_failed_build_keeps_the_previous_image(tmp_path: Path) -> None:
    builder = ImageBuilder(make_settings(tmp_path / "home"))
    lay_out_layers(builder, "baseline", b"MZ" + b"\0" * 4096)  # no kernel payload in it
    out = builder.settings.images_dir / "baseline"
    write_image(out, "an older build")
    before = image_files(out)
    with pytest.raises(ValueError, match="no gzip, xz or zstd payload"):
        builder.build("baseline")
    assert image_files(out) == before
    assert sorted(p.name for p in builder.settings.images_dir.iterdir()) == ["baseline"]
    assert mounts_under(builder.settings.home) == []


@needs_tools
@needs_overlay
def test_a_successful_build_replaces_the_previous_image(tmp_path: Path) -> None:
    builder = ImageBuilder(make_settings(tmp_path / "home"))
    vmlinux = elf_kernel()
    lay_out_layers(builder, "baseline", bzimage(vmlinux))
    out = builder.settings.images_dir / "baseline"
    write_image(out, "an older build")
    result = builder.build("baseline")
    assert result.rebuilt is True
    assert result.manifest["inputs"] == builder.keys(recipes.get("baseline"))["image"]
    assert result.manifest["versions"] == {
        "kernel": KVER,
        "python3": "3.13.5-1",
        "@openai/codex": "0.171.0",
    }
    assert (out / "vmlinux").read_bytes() == vmlinux
    assert (out / "initrd").read_bytes() == b"stock initramfs"
    with (out / "rootfs.ext4").open("rb") as f:
        f.seek(1024 + 56)
        assert f.read(2) == b"\x53\xef", "rootfs.ext4 is not an ext4 filesystem"
    assert json.loads((out / "manifest.json").read_text()) == result.manifest
    assert sorted(p.name for p in builder.settings.images_dir.iterdir()) == ["baseline"]
    assert mounts_under(builder.settings.home) == []
    assert builder.build("baseline").rebuilt is False


# -- the chroot --------------------------------------------------------------------------------


@pytest.fixture
def host_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A CA bundle the host trusts (say, a proxy's), found through SSL_CERT_FILE."""
    content = b"-----BEGIN CERTIFICATE-----\nhearth test CA\n-----END CERTIFICATE-----\n"
    (tmp_path / "ca.pem").write_bytes(content)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    return content


def test_build_env_passes_proxies_and_points_tls_at_the_lent_ca(
    monkeypatch: pytest.MonkeyPatch, host_ca: bytes
) -> None:
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("http_proxy", "http://proxy.test:3128")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3129")
    monkeypatch.setenv("HEARTH_MASTER_KEY", "must-not-leak")
    env = build_env()
    assert env["http_proxy"] == "http://proxy.test:3128"
    assert env["HTTPS_PROXY"] == "http://proxy.test:3129"
    assert not {"https_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"} & env.keys()
    assert env["NODE_EXTRA_CA_CERTS"] == HOST_CA_IN_CHROOT
    assert env["SSL_CERT_FILE"] == HOST_CA_IN_CHROOT
    assert "HEARTH_MASTER_KEY" not in env
    assert env["PATH"].split(":")[-1] == "/bin"
    assert env["DEBIAN_FRONTEND"] == "noninteractive"


def minimal_tree(root: Path, resolv: str) -> None:
    """A root with a static busybox as its shell, and resolv.conf as a symlink, file or absent."""
    (root / "bin").mkdir(parents=True)
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "cat"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "usr/sbin").mkdir(parents=True)
    (root / "etc").mkdir()
    if resolv == "symlink":
        (root / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    elif resolv == "file":
        (root / "etc/resolv.conf").write_text("nameserver 127.0.0.53\n")


@needs_root
@pytest.mark.skipif(
    not Path("/bin/busybox").is_file() or shutil.which("chroot") is None,
    reason=missing("busybox-static and coreutils", "/bin/busybox, chroot"),
)
@pytest.mark.parametrize("resolv", ["symlink", "file", "absent"])
@pytest.mark.parametrize("fail", [False, True], ids=["ok", "failing-step"])
def test_chroot_lends_dns_ca_and_policy_and_takes_them_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host_ca: bytes, resolv: str, fail: bool
) -> None:
    root = tmp_path / "tree"
    minimal_tree(root, resolv)
    resolv_before = (
        os.readlink(root / "etc/resolv.conf")
        if resolv == "symlink"
        else ((root / "etc/resolv.conf").read_text() if resolv == "file" else None)
    )
    monkeypatch.setenv("http_proxy", "http://proxy.test:3128")
    probe = (
        "mkdir -p /probe; cat /etc/resolv.conf > /probe/resolv; cat $SSL_CERT_FILE > /probe/ca;"
        ' rc=0; /usr/sbin/policy-rc.d || rc=$?; echo "policy=$rc proxy=$http_proxy";'
        " test -r /proc/self/status && test -c /dev/null && echo mounts=ok"
    )
    with chroot(root) as sh:
        out = sh(probe, "probe")
        assert mounts_under(root), "nothing mounted in the tree"
        if fail:
            with pytest.raises(BuildError, match=r"failing step failed \(exit 3\)"):
                sh("exit 3", "failing step")
    assert "policy=101 proxy=http://proxy.test:3128" in out
    assert "mounts=ok" in out
    assert (root / "probe/resolv").read_bytes() == Path("/etc/resolv.conf").read_bytes()
    assert (root / "probe/ca").read_bytes() == host_ca
    # ...and nothing of it stays behind
    assert mounts_under(root) == []
    assert not (root / HOST_CA_IN_CHROOT.lstrip("/")).exists()
    assert not (root / "usr/sbin/policy-rc.d").exists()
    assert not list(root.rglob("*.hearth-saved"))
    if resolv == "symlink":
        assert os.readlink(root / "etc/resolv.conf") == resolv_before
    elif resolv == "file":
        assert (root / "etc/resolv.conf").read_text() == resolv_before
    else:
        assert not (root / "etc/resolv.conf").exists()


@needs_root
def test_chroot_undoes_its_mounts_when_a_mount_fails(tmp_path: Path) -> None:
    """A tree where /dev cannot be made: proc and sys, already mounted, must come off again."""
    root = tmp_path / "tree"
    root.mkdir()
    (root / "dev").write_text("a file where the directory should be")
    with pytest.raises(FileExistsError), chroot(root):
        pass
    assert mounts_under(root) == []
