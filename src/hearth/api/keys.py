"""API keys: `hth_<id>_<secret>`, stored as a SHA-256 of the whole key, shown once."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Literal

from sqlalchemy import select

from hearth.store.db import Database
from hearth.store.models import ApiKey, utcnow

Role = Literal["app", "admin"]
ROLES: tuple[Role, ...] = ("app", "admin")


def create_key(db: Database, role: Role, name: str = "") -> str:
    """Store a new key's hash and return the key itself: the only time it is seen."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    key_id = secrets.token_hex(6)
    key = f"hth_{key_id}_{secrets.token_urlsafe(32)}"
    with db.session() as s:
        s.add(ApiKey(id=key_id, key_hash=_hash(key), role=role, name=name))
        s.commit()
    return key


def verify_key(db: Database, key: str) -> ApiKey | None:
    """The key's record if the key is valid and not revoked."""
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "hth":
        return None
    with db.session() as s:
        record = s.get(ApiKey, parts[1])
    if record is None or record.revoked_at is not None:
        return None
    return record if hmac.compare_digest(record.key_hash, _hash(key)) else None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_record(db: Database, key_id: str) -> ApiKey | None:
    """The key's record by its id while it is not revoked."""
    with db.session() as s:
        record = s.get(ApiKey, key_id)
    return record if record is not None and record.revoked_at is None else None


def list_keys(db: Database) -> list[ApiKey]:
    """Every key's record, oldest first (hashes only: the keys themselves are never kept)."""
    with db.session() as s:
        return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(db: Database, key_id: str) -> ApiKey | None:
    """Revoke a key from now on (a second revoke keeps the first time); None if unknown."""
    with db.session() as s:
        record = s.get(ApiKey, key_id)
        if record is not None and record.revoked_at is None:
            record.revoked_at = utcnow()
            s.commit()
        return record
