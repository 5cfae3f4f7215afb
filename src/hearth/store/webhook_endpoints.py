"""Webhook endpoints: where events go, which events, and each endpoint's signing secret.

The secret is made here, returned once (to be shown to whoever made the endpoint), and kept
sealed by hearth.store.crypto under associated data naming the endpoint, so a secret moved
to another endpoint's row fails to open. `secret` is the only way back to it: the delivery
worker's, to sign.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from hearth.store import outbox
from hearth.store.crypto import Keyring, Sealed
from hearth.store.db import Database
from hearth.store.models import WebhookEndpoint, utcnow

SECRET_PREFIX = "whsec_"  # as Standard Webhooks writes secrets: the base64 of the key follows
SECRET_BYTES = 32


@dataclass(frozen=True)
class EndpointInfo:
    """What may be shown about an endpoint: never its secret."""

    id: str
    url: str
    events: tuple[str, ...]
    description: str
    enabled: bool
    created_at: datetime
    updated_at: datetime


def secret_aad(endpoint_id: str) -> bytes:
    return json.dumps(["hearth.webhook-secret.v1", endpoint_id]).encode()


def signing_key(secret: str) -> bytes:
    """The HMAC key a `whsec_...` secret stands for (the bytes its base64 encodes)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def _sealed(row: WebhookEndpoint) -> Sealed:
    return Sealed(row.key_id, row.wrapped_key, row.nonce, row.ciphertext)


def _info(row: WebhookEndpoint) -> EndpointInfo:
    return EndpointInfo(
        row.id,
        row.url,
        tuple(json.loads(row.events)),
        row.description,
        row.enabled,
        row.created_at,
        row.updated_at,
    )


class WebhookEndpoints:
    """Endpoints in the database, their secrets sealed under the master keys of `keyring`."""

    def __init__(self, db: Database, keyring: Keyring):
        self.db = db
        self.keyring = keyring

    def create(
        self, url: str, events: list[str], description: str = ""
    ) -> tuple[EndpointInfo, str]:
        """A new endpoint, enabled, and its secret (`whsec_` + base64): the only time it
        leaves the store in the clear."""
        endpoint_id = uuid.uuid4().hex
        secret = SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()
        sealed = self.keyring.seal(secret.encode(), secret_aad(endpoint_id))
        now = utcnow()
        row = WebhookEndpoint(
            id=endpoint_id,
            url=url,
            events=json.dumps(sorted(set(events))),
            description=description,
            enabled=True,
            key_id=sealed.key_id,
            wrapped_key=sealed.wrapped_key,
            nonce=sealed.nonce,
            ciphertext=sealed.ciphertext,
            created_at=now,
            updated_at=now,
        )
        with self.db.session() as s:
            s.add(row)
            s.commit()
            return _info(row), secret

    def get(self, endpoint_id: str) -> EndpointInfo | None:
        with self.db.session() as s:
            row = s.get(WebhookEndpoint, endpoint_id)
            return None if row is None else _info(row)

    def list(self) -> list[EndpointInfo]:
        with self.db.session() as s:
            rows = s.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.created_at))
            return [_info(row) for row in rows]

    def set_enabled(self, endpoint_id: str, enabled: bool) -> EndpointInfo | None:
        """Enable or disable an endpoint: a disabled one gets no new events, and its pending
        deliveries wait (within their retry window) until it is enabled again."""
        with self.db.session() as s:
            s.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint_id)
                .values(enabled=enabled, updated_at=utcnow())
            )
            s.commit()
        if enabled:
            outbox.doorbell.ring()  # its waiting deliveries may be due
        return self.get(endpoint_id)

    def delete(self, endpoint_id: str) -> bool:
        """Remove an endpoint with its deliveries and their attempts; False if there was none."""
        with self.db.session() as s:
            deleted = s.execute(delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id))
            s.commit()
        return deleted.rowcount > 0

    def secret(self, endpoint_id: str) -> str | None:
        """The endpoint's secret, opened: for signing a delivery, never for showing. None
        if the endpoint was deleted."""
        with self.db.session() as s:
            row = s.get(WebhookEndpoint, endpoint_id)
            if row is None:
                return None
            return self.keyring.open_sealed(_sealed(row), secret_aad(endpoint_id)).decode()


def rewrap_secrets(s: Session, keyring: Keyring) -> int:
    """Re-wrap, in `s`, each endpoint secret's data key not yet under the current master key
    (a master key rotation, hearth.store.credentials); how many were re-wrapped."""
    current = keyring.current_key_id
    rows = s.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.key_id != current).with_for_update()
    ).all()
    for row in rows:
        sealed = keyring.rewrap(_sealed(row), secret_aad(row.id))
        s.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == row.id)
            # updated_at kept: the endpoint did not change.
            .values(
                key_id=sealed.key_id,
                wrapped_key=sealed.wrapped_key,
                updated_at=WebhookEndpoint.updated_at,
            )
            .execution_options(synchronize_session=False)
        )
    return len(rows)


def sealed_elsewhere(s: Session, key_id: str) -> int:
    """How many endpoint secrets are sealed under a master key other than `key_id`."""
    return s.scalars(select(func.count()).where(WebhookEndpoint.key_id != key_id)).one()
