"""Credential custody: a user's CLI credential files, sealed at rest, one live copy each.

The files of one provider (paths relative to the CLI user's home) are kept as one JSON
document of base64 contents, sealed by hearth.store.crypto with associated data naming the
user, provider and version. Only `files` ever returns contents; `info` is what may be shown.
"""

from __future__ import annotations

import base64
import json
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from hearth.config import Settings
from hearth.guest import fileio
from hearth.store import StoreError, webhook_endpoints
from hearth.store.crypto import (
    ENV_VAR,
    Keyring,
    KeyringError,
    MasterKey,
    Sealed,
    key_file_lock,
    save_key_file,
)
from hearth.store.db import Database
from hearth.store.models import Credential, utcnow

# Writers of one user's provider race only when a refresh meets another; each lost race
# means somebody else's write landed, so a few retries always suffice in practice.
WRITE_ATTEMPTS = 50
MAX_REASON = 500  # characters of a refusal kept


class CredentialNotFound(StoreError, LookupError):
    """Nothing is stored for this user and provider."""

    http_status = 404

    def __init__(self, user_id: str, provider: str):
        super().__init__(f"no {provider!r} credentials stored for user {user_id!r}")


class CredentialConflict(StoreError):
    """Concurrent writers kept replacing the record under this one."""

    http_status = 409


class CredentialStale(StoreError):
    """A write meant to follow one version found another: say, a refresh pulled from a VM
    after a new sign-in had already replaced the credentials it refreshed."""

    http_status = 409


@dataclass(frozen=True)
class Lease:
    """Which VM holds the live copy, of which version, and the digest of its files there."""

    vm_id: str
    version: int
    digest: str


@dataclass(frozen=True)
class CredentialInfo:
    """What may be shown about stored credentials: never their contents."""

    user_id: str
    provider: str
    account_email: str | None
    expires_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime
    invalid_reason: str | None = None  # why the provider refused this version, if it did
    invalid_at: datetime | None = None  # and when it did

    @property
    def status(self) -> str:
        return "invalid" if self.invalid_reason else "ready"


@dataclass(frozen=True)
class RotationReport:
    """The outcome of a master key rotation; key ids only, never keys."""

    new_key_id: str
    rewrapped: int  # records whose data key is now wrapped under the new key
    dropped_key_ids: tuple[str, ...]  # old master keys no longer needed by any record
    remaining: int  # records still under an old key (written concurrently): old keys kept


def record_aad(user_id: str, provider: str, version: int) -> bytes:
    """Associated data naming the record, unambiguously (JSON escapes every separator)."""
    return json.dumps(["hearth.credential.v1", user_id, provider, version]).encode()


def _check_path(path: str) -> None:
    """Paths are later written under the CLI user's home: refuse any that could leave it."""
    if fileio.home_relative(path) is None:
        raise ValueError(f"credential file path {path!r} must be relative to the home directory")


def _encode(files: dict[str, bytes]) -> bytes:
    if not files:
        raise ValueError("no credential files given")
    for path in files:
        _check_path(path)
    contents = {path: base64.b64encode(data).decode() for path, data in files.items()}
    return json.dumps(contents, sort_keys=True).encode()


def _decode(document: bytes) -> dict[str, bytes]:
    return {path: base64.b64decode(text) for path, text in json.loads(document).items()}


def _sealed(row: Credential) -> Sealed:
    return Sealed(row.key_id, row.wrapped_key, row.nonce, row.ciphertext)


def _info(row: Credential) -> CredentialInfo:
    return CredentialInfo(
        row.user_id,
        row.provider,
        row.account_email,
        row.expires_at,
        row.version,
        row.created_at,
        row.updated_at,
        row.invalid_reason,
        row.invalid_at,
    )


class CredentialStore:
    """Sealed credential files in the database, under the master keys of `keyring`."""

    def __init__(self, db: Database, keyring: Keyring):
        self.db = db
        self.keyring = keyring

    def put(
        self,
        user_id: str,
        provider: str,
        files: dict[str, bytes],
        account_email: str | None = None,
        expires_at: datetime | None = None,
        after_version: int | None = None,
    ) -> CredentialInfo:
        """Replace the live copy with `files` (first version 1, then one more each time).

        `account_email` and `expires_at` are replaced too: pass the old ones (from `info`)
        to keep them.

        Each write is conditional on the version it read, so two concurrent refreshes both
        land, one after the other, instead of one silently undoing the other. With
        `after_version`, the write lands only on top of that version (else CredentialStale).
        """
        if expires_at is not None and expires_at.utcoffset() is None:
            raise ValueError("expires_at is a naive datetime: give it a time zone")
        document = _encode(files)
        for _ in range(WRITE_ATTEMPTS):
            with self.db.session() as s:
                live = s.execute(
                    select(Credential.id, Credential.version, Credential.created_at).where(
                        Credential.user_id == user_id, Credential.provider == provider
                    )
                ).one_or_none()
                if after_version is not None and (live and live.version) != after_version:
                    raise CredentialStale(
                        f"{provider!r} credentials of user {user_id!r} are no longer at "
                        f"version {after_version}"
                    )
                version = live.version + 1 if live else 1
                sealed = self.keyring.seal(document, record_aad(user_id, provider, version))
                now = utcnow()
                values = {
                    "account_email": account_email,
                    "expires_at": expires_at,
                    "version": version,
                    "key_id": sealed.key_id,
                    "wrapped_key": sealed.wrapped_key,
                    "nonce": sealed.nonce,
                    "ciphertext": sealed.ciphertext,
                    "updated_at": now,
                    "invalid_reason": None,
                    "invalid_at": None,
                }
                if live is None:
                    s.add(Credential(user_id=user_id, provider=provider, created_at=now, **values))
                else:
                    replaced = s.execute(
                        update(Credential)
                        .where(Credential.id == live.id, Credential.version == live.version)
                        .values(values)
                    )
                    if replaced.rowcount != 1:
                        continue  # another writer replaced it since we read it
                try:
                    s.commit()
                except IntegrityError:
                    continue  # another writer stored the first version meanwhile
            return CredentialInfo(
                user_id,
                provider,
                account_email,
                expires_at and expires_at.astimezone(UTC),
                version,
                live.created_at if live else now,
                now,
            )
        raise CredentialConflict(
            f"{provider!r} credentials of user {user_id!r} kept changing during "
            f"{WRITE_ATTEMPTS} attempts to replace them"
        )

    def _row(self, user_id: str, provider: str) -> Credential | None:
        with self.db.session() as s:
            return s.scalars(
                select(Credential).where(
                    Credential.user_id == user_id, Credential.provider == provider
                )
            ).one_or_none()

    def files(self, user_id: str, provider: str) -> dict[str, bytes]:
        """The decrypted credential files, by path relative to the CLI user's home."""
        return self.current(user_id, provider)[0]

    def current(self, user_id: str, provider: str) -> tuple[dict[str, bytes], CredentialInfo]:
        """The decrypted files and what may be shown about them, read together (one version)."""
        row = self._row(user_id, provider)
        if row is None:
            raise CredentialNotFound(user_id, provider)
        aad = record_aad(row.user_id, row.provider, row.version)
        return _decode(self.keyring.open_sealed(_sealed(row), aad)), _info(row)

    def info(self, user_id: str, provider: str) -> CredentialInfo | None:
        row = self._row(user_id, provider)
        return None if row is None else _info(row)

    def of_user(self, user_id: str) -> list[CredentialInfo]:
        """Every provider the user has credentials for."""
        with self.db.session() as s:
            query = select(Credential).where(Credential.user_id == user_id)
            rows = s.scalars(query.order_by(Credential.provider))
            return [_info(row) for row in rows]

    def lease(self, user_id: str, provider: str) -> Lease | None:
        row = self._row(user_id, provider)
        if row is None or row.leased_vm_id is None:
            return None
        return Lease(row.leased_vm_id, row.leased_version, row.leased_digest)

    def set_lease(self, user_id: str, provider: str, lease: Lease | None) -> None:
        """Record which VM now holds the live copy (None: no VM does)."""
        with self.db.session() as s:
            s.execute(
                update(Credential)
                .where(Credential.user_id == user_id, Credential.provider == provider)
                # updated_at kept: it tells when the credentials changed, and they did not.
                .values(
                    leased_vm_id=lease and lease.vm_id,
                    leased_version=lease and lease.version,
                    leased_digest=lease and lease.digest,
                    updated_at=Credential.updated_at,
                )
            )
            s.commit()

    def judge(self, user_id: str, provider: str, version: int, refused: str | None) -> bool:
        """Record the provider's verdict on `version`: refused (with why) or accepted. A
        verdict on a version since replaced changes nothing (False)."""
        with self.db.session() as s:
            judged = s.execute(
                update(Credential)
                .where(
                    Credential.user_id == user_id,
                    Credential.provider == provider,
                    Credential.version == version,
                )
                .values(
                    invalid_reason=refused and refused[:MAX_REASON],
                    invalid_at=refused and utcnow(),
                    updated_at=Credential.updated_at,
                )
            )
            s.commit()
        return judged.rowcount == 1

    def delete(self, user_id: str, provider: str) -> bool:
        """Remove the live copy; False if there was none."""
        with self.db.session() as s:
            deleted = s.execute(
                delete(Credential).where(
                    Credential.user_id == user_id, Credential.provider == provider
                )
            )
            s.commit()
        return deleted.rowcount > 0

    def rotate_master_key(self, settings: Settings, new_key: str | None = None) -> RotationReport:
        """Make a new master key current and re-wrap every record's data key under it.

        `new_key` is the base64 of 32 random bytes; when omitted a key is generated. The
        ciphertexts stay as they are: only each row's key_id and wrapped_key change, all in
        one transaction, so a failure (say a record under a key the keyring lacks, named in
        the error) changes no row.

        Key file (HEARTH_MASTER_KEY unset): under the file's rotation lock, the new key is
        first added to the file as current, next to the old keys, so a crash at any point
        leaves every record readable. Other processes following the file switch to the new
        key before their next write. Once the records are re-wrapped and none is left under
        an old key, the old keys are dropped from the file; if a concurrent write left one
        behind, the old keys stay (see `remaining`) and a later rotation drops them.

        HEARTH_MASTER_KEY: Hearth cannot store a key in the operator's environment, so the
        operator must supply `new_key` (e.g. `openssl rand -base64 32`), and must then set
        HEARTH_MASTER_KEY to it for every Hearth process: processes still holding the old key
        can no longer read the re-wrapped records. Stop the other processes first.
        """
        from_env = bool(settings.master_key)
        if from_env and not new_key:
            raise KeyringError(
                f"the master key comes from {ENV_VAR}, so rotation needs the new key from you: "
                f"pass a new base64 key of 32 random bytes (e.g. `openssl rand -base64 32`), "
                f"then set {ENV_VAR} to it for every Hearth process"
            )
        if new_key is None:
            fresh = MasterKey.generate()
        else:
            fresh = MasterKey.from_base64(new_key, "new_key")
        path = settings.master_key_file
        with nullcontext() if from_env else key_file_lock(path):
            old = Keyring.from_settings(settings)
            old_key_ids = old.key_ids  # before the file changes: `old` follows the file
            staged = old.with_current(fresh)
            if not from_env:
                save_key_file(path, staged)
            rewrapped = self._rewrap_all(staged)
            with self.db.session() as s:
                left = select(func.count()).where(Credential.key_id != fresh.key_id)
                remaining = s.scalars(left).one()
                remaining += webhook_endpoints.sealed_elsewhere(s, fresh.key_id)
            final = staged if remaining else Keyring.from_key(fresh)
            if not (from_env or remaining):
                save_key_file(path, final)
        self.keyring = final if from_env else Keyring.from_settings(settings)
        dropped = () if remaining else tuple(k for k in old_key_ids if k != fresh.key_id)
        return RotationReport(fresh.key_id, rewrapped, dropped, remaining)

    def _rewrap_all(self, keyring: Keyring) -> int:
        """Re-wrap, in one transaction, each data key not yet under the current key: the
        credentials' and the webhook endpoints' secrets' (hearth.store.webhook_endpoints).

        A row rewritten by a concurrent put since it was read is left alone (the version
        guard): that put sealed it afresh, and the caller counts what is left over.
        """
        current = keyring.current_key_id
        rewrapped = 0
        with self.db.session() as s, s.begin():
            rows = s.scalars(
                select(Credential).where(Credential.key_id != current).with_for_update()
            ).all()
            for row in rows:
                aad = record_aad(row.user_id, row.provider, row.version)
                sealed = keyring.rewrap(_sealed(row), aad)
                done = s.execute(
                    update(Credential)
                    .where(Credential.id == row.id, Credential.version == row.version)
                    # updated_at kept: it tells when the credentials changed, and they did not.
                    .values(
                        key_id=sealed.key_id,
                        wrapped_key=sealed.wrapped_key,
                        updated_at=Credential.updated_at,
                    )
                    .execution_options(synchronize_session=False)
                )
                rewrapped += done.rowcount
            rewrapped += webhook_endpoints.rewrap_secrets(s, keyring)
        return rewrapped
