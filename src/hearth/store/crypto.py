"""Envelope encryption for stored credentials (AES-256-GCM), and the master keys behind it.

Each record gets a fresh 256-bit data key that encrypts its plaintext under associated data
naming the record, so a ciphertext copied to another row fails to decrypt. The data key is
stored wrapped (AES-256-GCM again) by a master key, named by a key id, so master keys can
rotate by re-wrapping data keys without touching any ciphertext.

Master keys come from HEARTH_MASTER_KEY (base64 of 32 bytes) or else from a key file,
``$HEARTH_HOME/master.key``: ``{"current": kid, "keys": {kid: base64}}``, created on first use
readable by its owner only. A key id is the first 12 hex digits of the key's SHA-256, so the
same key has the same id from either source.

Nothing here puts key bytes or plaintext into an exception, a repr or a log line.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hearth.guest import fileio
from hearth.store import StoreError

if TYPE_CHECKING:
    from hearth.config import Settings

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
# A wrapped data key is the wrap's own nonce followed by the encrypted key and its tag.
WRAPPED_KEY_BYTES = NONCE_BYTES + KEY_BYTES + TAG_BYTES
ENV_VAR = "HEARTH_MASTER_KEY"
WRAP_CONTEXT = b"hearth.data-key.v1\0"


class CryptoError(StoreError):
    """Base of this module's errors; messages name key ids and files, never secrets."""


class KeyringError(CryptoError):
    """The master keys cannot be loaded, or are unsafe to use."""


class UnsafeKeyFile(KeyringError):
    """The key file may be read or written by others than its owner; `fix` says how to mend it."""

    def __init__(self, path: Path, mode: int):
        self.fix = f"chmod 600 {path}"
        super().__init__(
            f"master key file {path} has mode {mode:04o}; it must be readable by its owner "
            f"only: run `{self.fix}`"
        )


class UnknownKeyId(CryptoError):
    """A record was sealed under a master key this keyring does not hold."""

    def __init__(self, key_id: str):
        super().__init__(
            f"record is sealed under master key {key_id!r}, which the keyring does not hold: "
            f"restore that key (in {ENV_VAR} or the master key file) to read it"
        )
        self.key_id = key_id


class DecryptionFailed(CryptoError):
    """A sealed record failed authentication: altered, or moved from another record."""


def key_id_of(secret: bytes) -> str:
    """A short public name for a key: its id travels with every record it wraps."""
    return hashlib.sha256(secret).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class MasterKey:
    """One master key; its repr shows the key id only."""

    secret: bytes = field(repr=False)
    key_id: str = field(init=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise KeyringError(f"a master key must be {KEY_BYTES} bytes, not {len(self.secret)}")
        object.__setattr__(self, "key_id", key_id_of(self.secret))

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(AESGCM.generate_key(bit_length=KEY_BYTES * 8))

    @classmethod
    def from_base64(cls, text: str, source: str) -> MasterKey:
        """Decode a key given by an operator; `source` names where it came from, for errors."""
        try:
            secret = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError(f"{source} is not valid base64") from None
        if len(secret) != KEY_BYTES:
            raise KeyringError(
                f"{source} must be the base64 of {KEY_BYTES} random bytes, "
                f"but it decodes to {len(secret)} bytes"
            )
        return cls(secret)

    def to_base64(self) -> str:
        return base64.b64encode(self.secret).decode()


@dataclass(frozen=True)
class Sealed:
    """A sealed record: the wrapped data key (named by master key id), the nonce, the ciphertext."""

    key_id: str
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes

    def __repr__(self) -> str:
        return f"Sealed(key_id={self.key_id!r}, ciphertext=<{len(self.ciphertext)} bytes>)"


def _wrap_aad(key_id: str, aad: bytes) -> bytes:
    """Binds a wrapped data key to its master key id and to its record."""
    return WRAP_CONTEXT + key_id.encode() + b"\0" + aad


def _wrap(master: MasterKey, data_key: bytes, aad: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(master.secret).encrypt(nonce, data_key, _wrap_aad(master.key_id, aad))


_Stamp = tuple[int, int, int, int, int]


def _stamp(st: os.stat_result) -> _Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Keyring:
    """Master keys by key id, and which one is current (it wraps every new data key).

    A keyring loaded from a key file follows that file: when the file changes (a rotation in
    another process) it is read again before the next seal or open, so no process keeps
    wrapping data keys under a master key that a rotation is about to drop.
    """

    def __init__(self, keys: Iterable[MasterKey], current: str):
        by_id = {key.key_id: key for key in keys}
        if current not in by_id:
            raise KeyringError(f"current master key {current!r} is not among the keys")
        # One tuple, swapped whole, so a thread never sees keys from one file and id from another.
        self._state: tuple[dict[str, MasterKey], str, _Stamp | None] = (by_id, current, None)
        self._path: Path | None = None

    @classmethod
    def from_key(cls, key: MasterKey) -> Keyring:
        return cls([key], key.key_id)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        """HEARTH_MASTER_KEY if set, else the key file under home (created on first use)."""
        if settings.master_key:
            return cls.from_key(MasterKey.from_base64(settings.master_key, ENV_VAR))
        return cls.load_or_create(settings.master_key_file)

    @classmethod
    def load_or_create(cls, path: Path) -> Keyring:
        """The key file at `path`; if there is none, one with a new key, mode 0600."""
        try:
            return cls.load(path)
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with suppress(FileExistsError):  # another process created it first: use that one
            _write_key_file(path, cls.from_key(MasterKey.generate()), replace_existing=False)
        return cls.load(path)

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """The key file at `path` (FileNotFoundError if there is none; KeyringError if it is
        unsafe or invalid)."""
        keys, current, stamp = _read_key_file(path)
        keyring = cls(keys, current)
        keyring._path = path
        keyring._state = (*keyring._state[:2], stamp)
        return keyring

    def with_current(self, key: MasterKey) -> Keyring:
        """These keys plus `key`, which becomes current; a snapshot that follows no file."""
        by_id, _ = self._keys()
        return Keyring([*by_id.values(), key], key.key_id)

    @property
    def path(self) -> Path | None:
        """The key file this keyring follows; None for an environment key or a snapshot."""
        return self._path

    @property
    def current_key_id(self) -> str:
        return self._keys()[1]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys()[0])

    def __repr__(self) -> str:
        by_id, current, _ = self._state  # as last read: a repr must not fail on a bad file
        source = f", path={str(self._path)!r}" if self._path else ""
        return f"Keyring(current={current!r}, key_ids={list(by_id)!r}{source})"

    def _keys(self) -> tuple[dict[str, MasterKey], str]:
        """The keys and current id, read again first if the key file changed."""
        by_id, current, stamp = self._state
        if self._path is not None:
            try:
                changed = _stamp(os.stat(self._path)) != stamp
            except FileNotFoundError:
                raise KeyringError(f"master key file {self._path} has gone") from None
            if changed:
                keys, current, stamp = _read_key_file(self._path)
                by_id = {key.key_id: key for key in keys}
                self._state = (by_id, current, stamp)
        return by_id, current

    def seal(self, plaintext: bytes, aad: bytes) -> Sealed:
        """Encrypt under a new data key bound to `aad`; wrap that key under the current key."""
        by_id, current = self._keys()
        data_key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
        nonce = secrets.token_bytes(NONCE_BYTES)
        ciphertext = AESGCM(data_key).encrypt(nonce, plaintext, aad)
        return Sealed(current, _wrap(by_id[current], data_key, aad), nonce, ciphertext)

    def open_sealed(self, sealed: Sealed, aad: bytes) -> bytes:
        """The plaintext, if `sealed` is intact and was sealed with this `aad`."""
        data_key = self._unwrap(sealed, aad)
        if len(sealed.nonce) != NONCE_BYTES:
            raise DecryptionFailed(
                f"credential record's nonce is {len(sealed.nonce)} bytes, not {NONCE_BYTES}: "
                "the record was altered"
            )
        try:
            return AESGCM(data_key).decrypt(sealed.nonce, sealed.ciphertext, aad)
        except InvalidTag:
            raise DecryptionFailed(
                "credential ciphertext failed authentication: its ciphertext or nonce was "
                "altered, or it was moved from another record"
            ) from None

    def rewrap(self, sealed: Sealed, aad: bytes) -> Sealed:
        """`sealed` with its data key wrapped under the current key; the ciphertext is kept."""
        data_key = self._unwrap(sealed, aad)
        by_id, current = self._keys()
        return replace(sealed, key_id=current, wrapped_key=_wrap(by_id[current], data_key, aad))

    def _unwrap(self, sealed: Sealed, aad: bytes) -> bytes:
        by_id, _ = self._keys()
        master = by_id.get(sealed.key_id)
        if master is None:
            raise UnknownKeyId(sealed.key_id)
        failed = DecryptionFailed(
            f"credential record's data key did not unwrap under master key {sealed.key_id!r}: "
            "the wrapped key was altered, or it was moved from another record"
        )
        if len(sealed.wrapped_key) != WRAPPED_KEY_BYTES:
            raise failed
        nonce, wrapped = sealed.wrapped_key[:NONCE_BYTES], sealed.wrapped_key[NONCE_BYTES:]
        try:
            return AESGCM(master.secret).decrypt(nonce, wrapped, _wrap_aad(master.key_id, aad))
        except InvalidTag:
            raise failed from None


def _read_key_file(path: Path) -> tuple[list[MasterKey], str, _Stamp]:
    """Parse a key file, refusing one that anybody but its owner may read or write."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())  # the file actually read, not whatever the path names later
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise UnsafeKeyFile(path, mode)
        raw = f.read()
    invalid = f"master key file {path} is not valid"
    try:
        doc = json.loads(raw)
    except ValueError:
        raise KeyringError(f"{invalid}: not JSON") from None
    if not (
        isinstance(doc, dict)
        and isinstance(doc.get("keys"), dict)
        and all(isinstance(v, str) for v in doc["keys"].values())
        and doc.get("current") in doc["keys"]
    ):
        raise KeyringError(f'{invalid}: expected {{"current": key id, "keys": {{key id: key}}}}')
    keys = []
    for key_id, text in doc["keys"].items():
        key = MasterKey.from_base64(text, f"key {key_id!r} in {path}")
        if key.key_id != key_id:
            raise KeyringError(f"{invalid}: key {key_id!r} is listed under the wrong key id")
        keys.append(key)
    return keys, doc["current"], _stamp(st)


def _write_key_file(path: Path, keyring: Keyring, *, replace_existing: bool) -> None:
    """Write the whole file under a temporary name (0600 from birth), then move it in place.

    Readers see the old file or the new one, never half of one. With `replace_existing`
    false, an existing file wins and FileExistsError is raised.
    """
    by_id, current = keyring._keys()
    doc = {"current": current, "keys": {kid: key.to_base64() for kid, key in by_id.items()}}
    fileio.write_atomic(
        path,
        json.dumps(doc, indent=2).encode() + b"\n",
        0o600,
        durable=True,
        replace=replace_existing,
    )


def save_key_file(path: Path, keyring: Keyring) -> None:
    """Replace the key file at `path` with `keyring`'s keys, atomically."""
    _write_key_file(path, keyring, replace_existing=True)


@contextmanager
def key_file_lock(path: Path) -> Iterator[None]:
    """Hold the key file's rotation lock, so two rotations never drop each other's keys."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KeyringError(f"another master key rotation holds {lock}") from None
        yield
    finally:
        os.close(fd)
