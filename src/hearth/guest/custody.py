"""Credential custody in the CLI VM: one provider's files in the CLI user's HOME.

The controller installs a user's credential files (and support files such as settings a CLI
expects beside them) before a prompt runs, reads them back after a run that refreshed them,
and wipes them before the VM is handed to anyone else. A manifest per provider in the
agent's state directory remembers which files are whose, so a later install removes the
credential files the new set no longer has, and a wipe knows what to remove. The digest
lets the controller see whether a run changed the credentials without reading them.

Nothing here logs or returns file contents except read(), for the controller's GET.
Standard library only: it runs with Debian's python3.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

if __package__:
    from . import fileio, login, protocol
else:  # run as a script in the guest, where /usr/lib/hearth is sys.path[0]
    import fileio
    import login
    import protocol

STATE_ENV = "HEARTH_AGENT_STATE"
DEFAULT_STATE = "/var/lib/hearth-agent"

_lock = threading.Lock()  # one install, read or wipe at a time: each spans several files


class CustodyError(ValueError):
    """The request cannot be met as it is (a bad provider name, a file both a credential and
    a support file); says which and why."""


class NoManifest(LookupError):
    """Nothing has been installed for this provider."""


def _manifest_path(provider: str) -> Path:
    if not protocol.NAME.fullmatch(provider):
        raise CustodyError(f"{provider[:64]!r} is not a provider name")
    return Path(os.environ.get(STATE_ENV, DEFAULT_STATE)) / "credentials" / f"{provider}.json"


def digest(home: Path, paths: Iterable[str]) -> str:
    """The credential files' fingerprint: sha256 (hex) over the files at `paths` under
    `home`, in sorted path order, each contributing its path (UTF-8), a NUL byte, then the
    content's length as 8 bytes big-endian and the content; a missing file contributes its
    path, a NUL and b"missing". Equal files give equal digests, and any change of a file's
    content or presence changes it, so the controller learns whether a run (a CLI
    refreshing its tokens) changed the credentials without fetching them."""
    return _hash(_contents(home, paths))


def _contents(home: Path, paths: Iterable[str]) -> dict[str, bytes | None]:
    contents: dict[str, bytes | None] = {}
    for relative in paths:
        try:
            contents[relative] = (home / relative).read_bytes()
        except FileNotFoundError:
            contents[relative] = None
    return contents


def _hash(contents: dict[str, bytes | None]) -> str:
    h = hashlib.sha256()
    for relative in sorted(contents):
        content = contents[relative]
        h.update(relative.encode() + b"\0")
        if content is None:
            h.update(b"missing")
        else:
            h.update(len(content).to_bytes(8, "big") + content)
    return h.hexdigest()


def _load(provider: str) -> dict[str, list[str]] | None:
    """The provider's manifest, None when there is none; OSError when it is damaged."""
    path = _manifest_path(provider)
    try:
        data = json.loads(path.read_text())
        return {key: [str(p) for p in data[key]] for key in ("credential_files", "support_files")}
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise OSError(f"{path} is damaged") from None


def install(
    provider: str, credential_files: dict[str, bytes], support_files: dict[str, bytes]
) -> str:
    """Write the files (each atomically, 0600, in 0700 directories), remove the credential
    files of the previous install that this one lacks, record the manifest; the digest."""
    manifest = _manifest_path(provider)
    if both := sorted(credential_files.keys() & support_files.keys()):
        raise CustodyError(f"{both[0][:80]!r} is both a credential and a support file")
    cli_home = login.cli_home()
    with _lock:
        previous = _load(provider)
        cli_home.mkdir(mode=0o700, parents=True, exist_ok=True)
        for relative, content in {**credential_files, **support_files}.items():
            fileio.write_private(cli_home / relative, content)
        kept = credential_files.keys() | support_files.keys()
        for relative in previous["credential_files"] if previous else []:
            if relative not in kept:
                (cli_home / relative).unlink(missing_ok=True)
        manifest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = {
            "credential_files": sorted(credential_files),
            "support_files": sorted(support_files),
        }
        fileio.write_private(manifest, json.dumps(record).encode())
        return digest(cli_home, credential_files)


def read(provider: str) -> tuple[dict[str, bytes], str]:
    """The provider's credential files that exist now, and their digest."""
    with _lock:
        manifest = _load(provider)
        if manifest is None:
            raise NoManifest(f"no credentials installed for {provider}")
        contents = _contents(login.cli_home(), manifest["credential_files"])
    files = {path: content for path, content in contents.items() if content is not None}
    return files, _hash(contents)


def current_digest(provider: str) -> str | None:
    """The digest of the provider's credential files now, or None without a manifest."""
    with _lock:
        manifest = _load(provider)
        return None if manifest is None else digest(login.cli_home(), manifest["credential_files"])


def wipe(provider: str) -> list[str]:
    """Remove the provider's credential and support files and its manifest; the paths that
    existed. Nothing installed is not an error: a wipe may be repeated."""
    manifest_path = _manifest_path(provider)
    cli_home = login.cli_home()
    removed = []
    with _lock:
        manifest = _load(provider)
        if manifest is None:
            return []
        for relative in manifest["credential_files"] + manifest["support_files"]:
            try:
                (cli_home / relative).unlink()
            except FileNotFoundError:
                continue
            removed.append(relative)
        manifest_path.unlink()
    return removed
