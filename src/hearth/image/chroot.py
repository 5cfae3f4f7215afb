"""Running build steps inside an image tree, with the host's proxy and CA but baking in neither."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from hearth.errors import HearthError

PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
HOST_CA_IN_CHROOT = "/tmp/hearth-host-ca.pem"


class BuildError(HearthError):
    """A build step failed; the message names the step and the tail of its output."""


def host_ca_bundle() -> Path | None:
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_env() -> dict[str, str]:
    """The environment for commands in the chroot: a clean one plus the host's proxy and CA."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    env.update({k: os.environ[k] for k in PROXY_VARS if k in os.environ})
    if host_ca_bundle():
        env["NODE_EXTRA_CA_CERTS"] = HOST_CA_IN_CHROOT
        env["SSL_CERT_FILE"] = HOST_CA_IN_CHROOT
    return env


def run(argv: Sequence[str], step: str, **kwargs) -> str:
    """Run a host command; on failure raise BuildError with the output's tail."""
    proc = subprocess.run(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-25:])
        raise BuildError(f"{step} failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


@contextlib.contextmanager
def chroot(root: Path) -> Iterator[ChrootRunner]:
    """Mount what package scripts expect, lend the host's DNS and CA, undo it all on exit."""
    mounts: list[Path] = []
    lent: list[tuple[Path, Path | None]] = []  # (file in the tree, saved original)
    try:
        for fstype, source, target, opts in (
            ("proc", "proc", "proc", []),
            ("sysfs", "sysfs", "sys", []),
            (None, "/dev", "dev", ["--rbind"]),
        ):
            path = root / target
            path.mkdir(exist_ok=True)
            argv = (
                ["mount", *opts, source, str(path)]
                if fstype is None
                else ["mount", "-t", fstype, source, str(path)]
            )
            run(argv, f"mount {target} in the build tree")
            mounts.append(path)
            if fstype is None:
                # A slave copy: unmounting it later never propagates back to the host's /dev.
                run(["mount", "--make-rslave", str(path)], f"isolate {target} in the build tree")
        lent.append(_lend(Path("/etc/resolv.conf"), root / "etc/resolv.conf"))
        ca = host_ca_bundle()
        if ca:
            lent.append(_lend(ca, root / HOST_CA_IN_CHROOT.lstrip("/")))
        policy = root / "usr/sbin/policy-rc.d"
        policy.write_text("#!/bin/sh\n# Hearth build: start no services here.\nexit 101\n")
        policy.chmod(0o755)
        lent.append((policy, None))
        yield ChrootRunner(root)
    finally:
        for path, saved in reversed(lent):
            path.unlink(missing_ok=True)
            if saved is not None:
                saved.rename(path)
        for path in reversed(mounts):
            subprocess.run(["umount", "-R", "-l", str(path)], check=False)


def _lend(source: Path, target: Path) -> tuple[Path, Path | None]:
    """Put a host file in the tree for the build, remembering what was there."""
    saved = None
    if target.exists() or target.is_symlink():
        saved = target.with_name(target.name + ".hearth-saved")
        target.rename(saved)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target, saved


class ChrootRunner:
    def __init__(self, root: Path):
        self.root = root

    def __call__(self, script: str, step: str) -> str:
        return run(["chroot", str(self.root), "/bin/sh", "-euc", script], step, env=build_env())
