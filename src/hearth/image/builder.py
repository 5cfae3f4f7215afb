"""Golden image builder: debootstrap, cached layers, kernel + initrd, ext4, manifest.

Three layers, each cached by the hash of its inputs: the base system (suite, mirror, base
packages, kernel), the recipe's packages (apt and npm), and Hearth's own guest files (the
agent's, and the demo CLI's from hearth/demo/guest/). Changing only the agent rebuilds the
last layer and the ext4 image. The result is written aside and renamed into
`$HEARTH_HOME/images/<name>/` at the end, so a failed build leaves the previous image as it
was.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from hearth.config import Settings
from hearth.image import recipes
from hearth.image.chroot import BuildError, chroot, run
from hearth.image.initrd import ROOT_OPTIONS, build_initrd
from hearth.image.kernel import extract_vmlinux
from hearth.image.layers import LayerStore, key_of, tree_digest

GUEST_DIR = Path(__file__).resolve().parents[1] / "guest"
# The demo CLI's commands, which live with the rest of the demo; in the image they sit beside
# the agent's modules in /usr/lib/hearth, where the demo provider's spec runs them.
DEMO_GUEST_DIR = Path(__file__).resolve().parents[1] / "demo" / "guest"
IMAGE_CODE_DIR = Path(__file__).resolve().parent
REQUIRED_TOOLS = ("debootstrap", "mkfs.ext4", "chroot", "mount", "umount")
ARTEFACTS = ("rootfs.ext4", "vmlinux", "vmlinuz", "initrd")
ROOTFS_HEADROOM_MIB = 1024  # room for the CLIs' state, browser profiles and logs
# Units a Hearth VM never needs, each costing a process start: why each, docs/guest-boot.md.
HEARTH_BOOT_MASKED = [
    "systemd-udevd.service",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-load-credentials.service",
    "serial-getty@ttyS0.service",
    "systemd-journal-flush.service",
    "systemd-random-seed.service",
    "systemd-sysusers.service",
    "systemd-update-utmp.service",
    "systemd-networkd-persistent-storage.service",
    "systemd-networkd-wait-online.service",
    "systemd-network-generator.service",
    "getty@tty1.service",
    "getty-static.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
    "systemd-pstore.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
    "modprobe@fuse.service",
    "modprobe@configfs.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "proc-sys-fs-binfmt_misc.automount",
    "systemd-binfmt.service",
    "ldconfig.service",
    "systemd-journal-catalog-update.service",
    "systemd-update-done.service",
    "systemd-hwdb-update.service",
    "systemd-remount-fs.service",
    "systemd-modules-load.service",
    "kmod-static-nodes.service",
    "systemd-tmpfiles-setup-dev-early.service",
    "systemd-tmpfiles-setup-dev.service",
]
# systemd runs every generator before it starts anything; a Hearth VM needs none. (No TPM,
# GPT auto-mounts, hibernation, SysV scripts, rc.local, gettys or SSH sockets; the initrd
# mounts the root, the only file system in fstab.)
HEARTH_BOOT_MASKED_GENERATORS = [
    "systemd-debug-generator",
    "systemd-fstab-generator",
    "systemd-getty-generator",
    "systemd-gpt-auto-generator",
    "systemd-hibernate-resume-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
    "systemd-ssh-generator",
    "systemd-system-update-generator",
    "systemd-sysv-generator",
    "systemd-tpm2-generator",
]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildResult:
    name: str
    path: Path
    manifest: dict
    rebuilt: bool  # False when an image with the same inputs was already there


@dataclass(frozen=True)
class ImageState:
    """How a built image stands against its inputs now: the one test of "up to date", for
    the builder (nothing to do) and `hearth doctor` (the image needs a build)."""

    name: str
    path: Path
    inputs: str  # what the recipe, settings and code hash to now
    built_inputs: str | None  # what the image there was built from; None: no image
    missing: tuple[str, ...]  # artefacts the image directory lacks

    @property
    def current(self) -> bool:
        return self.built_inputs == self.inputs and not self.missing


class ImageBuilder:
    def __init__(
        self,
        settings: Settings,
        progress: Progress = lambda step: None,
        guest_dir: Path = GUEST_DIR,
        demo_guest_dir: Path = DEMO_GUEST_DIR,
    ):
        self.settings = settings
        self.progress = progress
        self.guest_dir = guest_dir  # what goes into the guest layer (another copy in benches)
        self.demo_guest_dir = demo_guest_dir  # modules only, copied beside guest_dir's
        self.layers = LayerStore(settings.home / "cache" / "layers")

    # -- the plan --------------------------------------------------------------------------

    def keys(self, recipe: recipes.Recipe) -> dict[str, str]:
        s = self.settings
        base = key_of(
            "base",
            s.suite,
            s.mirror,
            s.components,
            recipes.BASE_PACKAGES,
            recipes.kernel_package(s.mirror),
        )
        packages = key_of("packages", base, recipe.packages, recipe.npm)
        # The guest layer and the image also depend on the builder's own code (unit masks,
        # initrd, ext4): a change there rebuilds them, never the slow layers below.
        builder = tree_digest(IMAGE_CODE_DIR)
        guest = key_of(
            "guest",
            packages,
            recipe.guest_trees,
            recipe.boot,
            tree_digest(self.guest_dir),
            tree_digest(self.demo_guest_dir),
            builder,
        )
        image = key_of("image", guest, builder)
        return {"base": base, "packages": packages, "guest": guest, "image": image}

    def state(self, name: str) -> ImageState:
        keys = self.keys(recipes.get(name))
        return self._state(name, keys)

    def _state(self, name: str, keys: dict[str, str]) -> ImageState:
        out = self.settings.images_dir / name
        manifest = read_manifest(out)
        return ImageState(
            name,
            out,
            keys["image"],
            manifest.get("inputs") if manifest else None,
            tuple(a for a in ARTEFACTS if not (out / a).is_file()),
        )

    def build(self, name: str, force: bool = False) -> BuildResult:
        recipe = recipes.get(name)
        keys = self.keys(recipe)
        out = self.settings.images_dir / name
        if not force and self._state(name, keys).current:
            self.progress(f"{name}: up to date ({keys['image']})")
            return BuildResult(name, out, read_manifest(out), rebuilt=False)

        started = time.monotonic()
        self.layers.clean_partial()
        self._preflight(recipe, keys)
        base = self._layer("base", keys["base"], [], self._debootstrap)
        packages = self._layer(
            f"packages-{name}",
            keys["packages"],
            [base],
            lambda tree: self._install_packages(tree, recipe),
        )
        guest = self._layer(
            f"guest-{name}",
            keys["guest"],
            [packages, base],
            lambda tree: self._install_guest(tree, recipe),
        )
        self.progress(f"{name}: writing kernel, initrd and ext4 root filesystem")
        partial = self.settings.images_dir / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            with self.layers.view([guest, packages, base]) as tree:
                versions = self._write_artefacts(tree, recipe, partial)
            manifest = self._manifest(recipe, keys, partial, versions, started)
            (partial / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            _swap_into_place(partial, out)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        self.progress(f"{name}: done in {manifest['build_seconds']:.0f}s")
        return BuildResult(name, out, manifest, rebuilt=True)

    # -- checks ----------------------------------------------------------------------------

    def _preflight(self, recipe: recipes.Recipe, keys: dict[str, str]) -> None:
        missing = [t for t in REQUIRED_TOOLS if not shutil.which(t)]
        if missing:
            raise BuildError(
                f"missing tools: {', '.join(missing)} (apt-get install debootstrap e2fsprogs)"
            )
        home = self.settings.home
        home.mkdir(parents=True, exist_ok=True)
        free_gib = shutil.disk_usage(home).free / 2**30
        if free_gib < recipe.min_free_gib:
            raise BuildError(
                f"too little disk for the {recipe.name} image: {free_gib:.1f} GiB free under "
                f"{home}, {recipe.min_free_gib} GiB needed"
            )
        if not self.layers.has(f"packages-{recipe.name}", keys["packages"]):
            self._check_mirror()

    def _check_mirror(self) -> None:
        s = self.settings
        url = f"{s.mirror.rstrip('/')}/dists/{s.suite}/Release"
        try:
            response = httpx.get(url, timeout=20, follow_redirects=True)
        except httpx.HTTPError as e:
            raise BuildError(f"mirror unreachable: {url}: {e}") from None
        if response.status_code != 200:
            raise BuildError(
                f"mirror {s.mirror} has no suite {s.suite!r} ({url} answered "
                f"{response.status_code})"
            )

    # -- layers ----------------------------------------------------------------------------

    def _layer(self, name: str, key: str, lowers: list[Path], steps) -> Path:
        if self.layers.has(name, key):
            self.progress(f"{name}: cached ({key})")
        else:
            self.progress(f"{name}: building ({key})")
            with self.layers.build(name, key, lowers) as tree:
                steps(tree)
        return self.layers.path(name, key)

    def _debootstrap(self, tree: Path) -> None:
        s = self.settings
        include = ",".join((*recipes.BASE_PACKAGES, recipes.kernel_package(s.mirror)))
        run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--components={s.components}",
                f"--include={include}",
                s.suite,
                str(tree),
                s.mirror,
            ],
            "debootstrap",
        )
        with chroot(tree) as sh:
            sh("apt-get clean", "apt clean")

    def _install_packages(self, tree: Path, recipe: recipes.Recipe) -> None:
        with chroot(tree) as sh:
            if recipe.packages:
                sh(
                    "apt-get update -q && apt-get install -y -q --no-install-recommends "
                    + " ".join(recipe.packages)
                    + " && apt-get clean && rm -rf /var/lib/apt/lists/*",
                    f"apt-get install for {recipe.name}",
                )
            if recipe.npm:
                sh(
                    "npm install -g --no-audit --no-fund "
                    + " ".join(recipe.npm)
                    + " && rm -rf /root/.npm",
                    f"npm install for {recipe.name}",
                )

    def _install_guest(self, tree: Path, recipe: recipes.Recipe) -> None:
        lib = tree / "usr/lib/hearth"
        lib.mkdir(parents=True, exist_ok=True)
        for module in guest_modules(self.guest_dir, self.demo_guest_dir):
            shutil.copy2(module, lib / module.name)
        for name in recipe.guest_trees:
            shutil.copytree(self.guest_dir / "files" / name, tree, dirs_exist_ok=True)
        (tree / "etc/fstab").write_text(f"/dev/vda / ext4 {ROOT_OPTIONS} 0 1\n")
        (tree / "etc/hostname").write_text("hearth\n")
        units = [u for group, u in _unit_lines(self.guest_dir) if group in recipe.guest_trees]
        if recipe.boot == "stock":
            # networkd configured from ip= by the generator, and the wait for "online".
            units += ["systemd-network-generator.service", "systemd-networkd-wait-online.service"]
        with chroot(tree) as sh:
            sh("systemctl enable systemd-networkd.service " + " ".join(units), "enable units")
            if recipe.boot == "hearth":
                sh("systemctl mask " + " ".join(HEARTH_BOOT_MASKED), "mask units")
                generators = tree / "etc/systemd/system-generators"
                generators.mkdir(parents=True, exist_ok=True)
                for name in HEARTH_BOOT_MASKED_GENERATORS:
                    (generators / name).symlink_to("/dev/null")
            sh("python3 -m compileall -q /usr/lib/hearth", "byte-compile the agent")
            sh(
                "rm -f /etc/machine-id /var/lib/dbus/machine-id && : > /etc/machine-id"
                " && passwd -l root >/dev/null && rm -rf /etc/netplan",
                "finish the guest layer",
            )

    # -- artefacts -------------------------------------------------------------------------

    def _write_artefacts(self, tree: Path, recipe: recipes.Recipe, out: Path) -> dict:
        kernel_version = _single(tree / "lib/modules").name
        shutil.copyfile(tree / "boot" / f"vmlinuz-{kernel_version}", out / "vmlinuz")
        (out / "vmlinux").write_bytes(extract_vmlinux(out / "vmlinuz"))
        if recipe.boot == "hearth":
            build_initrd(tree, kernel_version, out / "initrd")
        else:
            shutil.copyfile(tree / "boot" / f"initrd.img-{kernel_version}", out / "initrd")
        size_mib = _tree_mib(tree) * 5 // 4 + ROOTFS_HEADROOM_MIB
        run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "hearth-root",
                "-d",
                str(tree),
                str(out / "rootfs.ext4"),
                f"{size_mib}M",
            ],
            "mkfs.ext4",
        )
        return _versions(tree, kernel_version)

    def _manifest(self, recipe, keys, out: Path, versions: dict, started: float) -> dict:
        return {
            "name": recipe.name,
            "inputs": keys["image"],
            "layers": keys,
            "suite": self.settings.suite,
            "mirror": self.settings.mirror,
            "boot": recipe.boot,
            "artefacts": {
                a: {"sha256": _sha256(out / a), "size": (out / a).stat().st_size} for a in ARTEFACTS
            },
            "versions": versions,
            "build_seconds": round(time.monotonic() - started, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def read_manifest(image_dir: Path) -> dict | None:
    try:
        return json.loads((image_dir / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def guest_modules(*dirs: Path) -> list[Path]:
    """The modules of `dirs` that go into /usr/lib/hearth, one directory there for all: a
    name two of them share would have one overwrite the other, so it is refused."""
    modules = [m for d in dirs for m in sorted(d.glob("*.py")) if m.name != "__init__.py"]
    names = [m.name for m in modules]
    if clashes := sorted({n for n in names if names.count(n) > 1}):
        raise BuildError(f"guest modules share a name in /usr/lib/hearth: {', '.join(clashes)}")
    return modules


def _unit_lines(guest_dir: Path) -> list[tuple[str, str]]:
    lines = (guest_dir / "files/units.txt").read_text().splitlines()
    return [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#")]


def _swap_into_place(partial: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    try:
        partial.rename(out)
    except BaseException:
        if old.exists() and not out.exists():
            old.rename(out)  # the previous image stays in service
        raise
    shutil.rmtree(old, ignore_errors=True)


def _single(d: Path) -> Path:
    entries = [p for p in d.iterdir() if p.is_dir()]
    if len(entries) != 1:
        raise BuildError(f"expected exactly one kernel in {d}, found {len(entries)}")
    return entries[0]


def _tree_mib(tree: Path) -> int:
    return int(run(["du", "-sm", "-x", str(tree)], "measure the tree").split()[0])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions(tree: Path, kernel_version: str) -> dict:
    """Versions of what matters in the image, read from dpkg's and npm's own records."""
    packages = _dpkg_versions(tree / "var/lib/dpkg/status")
    versions = {"kernel": kernel_version}
    for name in ("firefox-esr", "nodejs", "python3", "systemd"):
        if name in packages:
            versions[name] = packages[name]
    modules = tree / "usr/local/lib/node_modules"
    for manifest in sorted(modules.glob("*/package.json")) + sorted(
        modules.glob("@*/*/package.json")
    ):
        meta = json.loads(manifest.read_text())
        if meta.get("name") != "npm":
            versions[meta["name"]] = meta.get("version")
    return versions


def _dpkg_versions(status: Path) -> dict[str, str]:
    versions = {}
    for stanza in status.read_text().split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            versions[fields["Package"]] = fields.get("Version", "")
    return versions
