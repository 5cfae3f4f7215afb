"""Credential custody on every backend (SQLite and a real PostgreSQL): sealed at rest."""

from __future__ import annotations

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text, update

from hearth.config import Settings
from hearth.store.credentials import (
    CredentialNotFound,
    CredentialStale,
    CredentialStore,
    Lease,
    record_aad,
)
from hearth.store.crypto import (
    CryptoError,
    DecryptionFailed,
    Keyring,
    MasterKey,
    UnknownKeyId,
    save_key_file,
)
from hearth.store.db import Database
from hearth.store.models import Credential

TOKEN = "sk-ant-oat01-Zq8vR2mN4kT7wX1yB5cD"
REFRESH = "sk-ant-ort01-Hj3Lp9Qs6Uf2Wa8Ek4Gn"
BLOB = bytes(range(256)) * 4  # binary content: every byte value, NULs included
FILES = {
    ".claude/.credentials.json": json.dumps(
        {"claudeAiOauth": {"accessToken": TOKEN, "refreshToken": REFRESH}}
    ).encode(),
    ".config/hearth/blob.bin": BLOB,
    ".claude.json": b'{"oauthAccount": {"emailAddress": "alice@example.com"}}',
}
COLUMNS = ("key_id", "wrapped_key", "nonce", "ciphertext")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", master_key="")


@pytest.fixture
def store(db: Database, settings: Settings) -> CredentialStore:
    return CredentialStore(db, Keyring.from_settings(settings))


def raw_row(db: Database, user_id: str, provider: str = "claude") -> dict[str, object]:
    with db.engine.connect() as conn:
        row = conn.execute(
            text("SELECT * FROM credentials WHERE user_id = :u AND provider = :p"),
            {"u": user_id, "p": provider},
        ).one()
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row._mapping.items()}


def set_columns(db: Database, user_id: str, **values: object) -> None:
    with db.engine.begin() as conn:
        conn.execute(update(Credential).where(Credential.user_id == user_id).values(**values))


def flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x80]) + data[index + 1 :]


def assert_no_secrets(text: str) -> None:
    for secret in (TOKEN, REFRESH, base64.b64encode(FILES[".claude/.credentials.json"]).decode()):
        assert secret not in text


# -- round trip ----------------------------------------------------------------------------


def test_files_round_trip_including_binary(store: CredentialStore) -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
    info = store.put(
        "alice", "claude", FILES, account_email="alice@example.com", expires_at=expires
    )
    assert store.files("alice", "claude") == FILES
    assert info == store.info("alice", "claude")
    assert (info.version, info.account_email, info.expires_at) == (1, "alice@example.com", expires)
    assert info.expires_at.tzinfo == UTC and info.created_at.tzinfo == UTC


def test_each_put_replaces_the_live_copy_and_bumps_the_version(store: CredentialStore) -> None:
    first = store.put("alice", "claude", FILES)
    refreshed = {".claude/.credentials.json": b'{"accessToken": "rotated"}'}
    second = store.put("alice", "claude", refreshed, account_email="alice@example.com")
    assert (first.version, second.version) == (1, 2)
    assert second.created_at == first.created_at and second.updated_at >= first.updated_at
    assert store.files("alice", "claude") == refreshed
    store.put("alice", "codex", {".codex/auth.json": b"{}"})
    with store.db.session() as s:
        rows = s.execute(select(Credential.provider, Credential.version)).all()
    assert sorted(rows) == [("claude", 2), ("codex", 1)]  # one live copy per provider


def test_info_never_carries_content(store: CredentialStore) -> None:
    info = store.put("alice", "claude", FILES, account_email="alice@example.com")
    assert set(vars(info)) == {
        "user_id", "provider", "account_email", "expires_at", "version", "created_at",
        "updated_at", "invalid_reason", "invalid_at",
    }  # fmt: skip
    assert_no_secrets(repr(info))
    assert_no_secrets(repr(store.info("alice", "claude")))
    assert store.info("alice", "gemini") is None


def test_a_refusal_marks_that_version_invalid_until_a_new_one(store: CredentialStore) -> None:
    store.put("alice", "claude", FILES)
    assert store.info("alice", "claude").status == "ready"
    assert store.info("alice", "claude").invalid_at is None
    before = datetime.now(UTC)
    assert store.judge("alice", "claude", 1, "Failed to authenticate: OAuth session expired")
    info = store.info("alice", "claude")
    assert (info.status, info.invalid_reason) == (
        "invalid",
        "Failed to authenticate: OAuth session expired",
    )
    assert info.invalid_at is not None
    assert before - timedelta(seconds=1) <= info.invalid_at <= datetime.now(UTC)
    assert not store.judge("alice", "claude", 7, None)  # a verdict on another version
    assert store.info("alice", "claude").status == "invalid"
    assert store.put("alice", "claude", FILES).status == "ready"  # a new sign-in
    assert store.info("alice", "claude").invalid_reason is None
    assert store.info("alice", "claude").invalid_at is None
    store.judge("alice", "claude", 2, "revoked")
    assert store.judge("alice", "claude", 2, None)  # the provider accepted it after all
    assert store.info("alice", "claude").status == "ready"


def test_missing_credentials_raise_not_found(store: CredentialStore) -> None:
    with pytest.raises(CredentialNotFound, match="'gemini' credentials stored for user 'bob'"):
        store.files("bob", "gemini")


def test_delete_removes_the_live_copy(store: CredentialStore) -> None:
    store.put("alice", "claude", FILES)
    assert store.delete("alice", "claude") is True
    assert store.delete("alice", "claude") is False
    assert store.info("alice", "claude") is None
    assert store.put("alice", "claude", FILES).version == 1


def test_naive_expiry_is_refused(store: CredentialStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.put("alice", "claude", FILES, expires_at=datetime(2030, 1, 1))
    assert store.info("alice", "claude") is None


@pytest.mark.parametrize("path", ["/etc/passwd", "../.ssh/authorized_keys", "a/../../b", ""])
def test_paths_leaving_the_home_are_refused(store: CredentialStore, path: str) -> None:
    with pytest.raises(ValueError, match="relative to the home directory"):
        store.put("alice", "claude", {path: b"x"})
    assert store.info("alice", "claude") is None


@pytest.mark.timeout(120)
def test_concurrent_puts_all_land_in_turn(store: CredentialStore) -> None:
    writers = 8
    start = threading.Barrier(writers)

    def put(n: int) -> int:
        start.wait(timeout=30)
        return store.put("alice", "claude", {"f": str(n).encode()}).version

    with ThreadPoolExecutor(writers) as pool:
        versions = list(pool.map(put, range(writers)))
    assert sorted(versions) == list(range(1, writers + 1))
    last = versions.index(writers)
    assert store.files("alice", "claude") == {"f": str(last).encode()}


# -- at rest -------------------------------------------------------------------------------


def test_plaintext_never_reaches_the_database(store: CredentialStore, db: Database) -> None:
    for _ in range(2):  # a second version too, so superseded pages exist
        store.put("alice", "claude", FILES, account_email="alice@example.com")
    needles = [TOKEN.encode(), REFRESH.encode(), base64.b64encode(FILES[".claude.json"])]
    if db.engine.dialect.name == "sqlite":
        database = Path(db.engine.url.database)
        raw = b"".join(p.read_bytes() for p in (database, Path(f"{database}-wal")) if p.exists())
        assert b"alice@example.com" in raw  # the search does see what is stored in clear
    else:
        row = raw_row(db, "alice")
        raw = b"".join(v if isinstance(v, bytes) else str(v).encode() for v in row.values())
        assert row["account_email"] == "alice@example.com"
    for needle in needles:
        assert needle not in raw


def test_tampered_columns_are_refused_cleanly(store: CredentialStore, db: Database) -> None:
    store.put("alice", "claude", FILES)
    original = raw_row(db, "alice")
    for column in ("ciphertext", "wrapped_key", "nonce"):
        for index in (0, len(original[column]) - 1):
            set_columns(db, "alice", **{column: flip(original[column], index)})
            with pytest.raises(DecryptionFailed, match="altered") as raised:
                store.files("alice", "claude")
            assert_no_secrets(str(raised.value))
            assert_no_secrets(repr(raised.value))
        set_columns(db, "alice", **{column: original[column]})
    assert store.files("alice", "claude") == FILES


def test_rolled_back_version_is_refused(store: CredentialStore, db: Database) -> None:
    """An old sealed copy put back over a newer one does not decrypt as the newer version."""
    store.put("alice", "claude", FILES)
    old = {c: raw_row(db, "alice")[c] for c in COLUMNS}
    store.put("alice", "claude", {"f": b"new"})
    set_columns(db, "alice", **old)
    with pytest.raises(DecryptionFailed):
        store.files("alice", "claude")


def test_ciphertext_moved_to_another_user_fails(store: CredentialStore, db: Database) -> None:
    store.put("alice", "claude", FILES)
    store.put("mallory", "claude", {"f": b"mine"})
    alice = raw_row(db, "alice")
    set_columns(db, "mallory", **{c: alice[c] for c in COLUMNS})
    with pytest.raises(DecryptionFailed, match="moved from another record") as raised:
        store.files("mallory", "claude")
    assert_no_secrets(str(raised.value))
    set_columns(db, "mallory", **{c: alice[c] for c in ("nonce", "ciphertext")})
    with pytest.raises(DecryptionFailed):  # only the ciphertext moved, under mallory's key
        store.files("mallory", "claude")


def test_unknown_key_id_is_named(store: CredentialStore, db: Database) -> None:
    store.put("alice", "claude", FILES)
    set_columns(db, "alice", key_id="0123456789ab")
    with pytest.raises(UnknownKeyId, match="0123456789ab"):
        store.files("alice", "claude")


# -- rotation --------------------------------------------------------------------------------


def put_users(store: CredentialStore, count: int = 3) -> dict[str, dict[str, bytes]]:
    stored = {f"user{n}": {**FILES, "n": str(n).encode()} for n in range(count)}
    for user, files in stored.items():
        store.put(user, "claude", files)
    return stored


def test_rotation_rewraps_every_record_and_drops_the_old_key(
    store: CredentialStore, db: Database, settings: Settings
) -> None:
    stored = put_users(store)
    old_id = store.keyring.current_key_id
    before = {user: raw_row(db, user) for user in stored}
    follower = CredentialStore(db, Keyring.from_settings(settings))  # as another process

    report = store.rotate_master_key(settings)

    assert report.rewrapped == len(stored) and report.remaining == 0
    assert report.dropped_key_ids == (old_id,) and report.new_key_id != old_id
    for user in stored:
        after = raw_row(db, user)
        assert after["key_id"] == report.new_key_id
        assert after["wrapped_key"] != before[user]["wrapped_key"]
        for unchanged in ("nonce", "ciphertext", "version", "updated_at"):
            assert after[unchanged] == before[user][unchanged]
    doc = json.loads(settings.master_key_file.read_text())
    assert doc["current"] == report.new_key_id and list(doc["keys"]) == [report.new_key_id]
    assert settings.master_key_file.stat().st_mode & 0o777 == 0o600
    assert_no_secrets(repr(report))
    restarted = CredentialStore(db, Keyring.from_settings(settings))
    for user, files in stored.items():
        assert restarted.files(user, "claude") == files == store.files(user, "claude")
        assert follower.files(user, "claude") == files
    assert follower.put("user0", "claude", FILES).version == 2
    assert raw_row(db, "user0")["key_id"] == report.new_key_id  # not the dropped key


def test_old_keys_stay_while_a_record_still_needs_them(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write under the old key racing the rotation keeps that key until the next rotation."""
    old_key = MasterKey.generate()
    settings.home.mkdir(parents=True)
    save_key_file(settings.master_key_file, Keyring.from_key(old_key))
    store = CredentialStore(db, Keyring.from_settings(settings))
    stored = put_users(store)
    stale = CredentialStore(db, Keyring.from_key(old_key))  # a keyring following no file
    rewrap_all = store._rewrap_all

    def rewrap_then_stale_write(keyring: Keyring) -> int:
        rewrapped = rewrap_all(keyring)
        stale.put("user0", "claude", stored["user0"])
        return rewrapped

    monkeypatch.setattr(store, "_rewrap_all", rewrap_then_stale_write)
    report = store.rotate_master_key(settings)
    assert (report.rewrapped, report.remaining, report.dropped_key_ids) == (len(stored), 1, ())
    keys = json.loads(settings.master_key_file.read_text())["keys"]
    assert set(keys) == {old_key.key_id, report.new_key_id}
    for user, files in stored.items():
        assert store.files(user, "claude") == files

    again = CredentialStore(db, Keyring.from_settings(settings)).rotate_master_key(settings)
    assert (again.rewrapped, again.remaining) == (len(stored), 0)
    assert set(again.dropped_key_ids) == {old_key.key_id, report.new_key_id}
    assert list(json.loads(settings.master_key_file.read_text())["keys"]) == [again.new_key_id]


def test_failed_rotation_changes_no_row_and_loses_no_key(
    store: CredentialStore, db: Database, settings: Settings
) -> None:
    stored = put_users(store)
    old_id = store.keyring.current_key_id
    set_columns(db, "user1", key_id="0123456789ab")  # a record under a key nobody has
    before = {user: raw_row(db, user) for user in stored}
    with pytest.raises(UnknownKeyId, match="0123456789ab"):
        store.rotate_master_key(settings)
    assert {user: raw_row(db, user) for user in stored} == before
    assert old_id in json.loads(settings.master_key_file.read_text())["keys"]
    restarted = CredentialStore(db, Keyring.from_settings(settings))
    assert restarted.files("user0", "claude") == stored["user0"]


def test_rotation_with_an_environment_key_needs_the_new_key(
    db: Database, settings: Settings
) -> None:
    old_key, new_key = MasterKey.generate(), MasterKey.generate()
    env = Settings(home=settings.home, master_key=old_key.to_base64())
    store = CredentialStore(db, Keyring.from_settings(env))
    stored = put_users(store)

    for missing in (None, ""):
        with pytest.raises(CryptoError, match="HEARTH_MASTER_KEY.*set HEARTH_MASTER_KEY to it"):
            store.rotate_master_key(env, new_key=missing)
    with pytest.raises(CryptoError, match="new_key must be the base64 of 32 random bytes"):
        store.rotate_master_key(env, new_key=base64.b64encode(b"short").decode())
    assert raw_row(db, "user0")["key_id"] == old_key.key_id

    report = store.rotate_master_key(env, new_key=new_key.to_base64())
    assert (report.new_key_id, report.rewrapped, report.remaining) == (
        new_key.key_id, len(stored), 0,
    )  # fmt: skip
    assert report.dropped_key_ids == (old_key.key_id,)
    assert not settings.master_key_file.exists()  # nothing written where the operator keeps keys
    assert store.files("user0", "claude") == stored["user0"]
    rotated_env = Settings(home=settings.home, master_key=new_key.to_base64())
    restarted = CredentialStore(db, Keyring.from_settings(rotated_env))
    for user, files in stored.items():
        assert restarted.files(user, "claude") == files
    with pytest.raises(UnknownKeyId, match=new_key.key_id) as raised:
        CredentialStore(db, Keyring.from_settings(env)).files("user0", "claude")
    for text_ in (str(raised.value), repr(raised.value)):
        assert old_key.to_base64() not in text_ and new_key.to_base64() not in text_


def test_aad_names_user_provider_and_version() -> None:
    assert record_aad("alice", "claude", 3) != record_aad("alice", "claude", 4)
    assert record_aad("a", "b,c", 1) != record_aad("a,b", "c", 1)


def test_a_write_after_a_given_version_lands_only_on_that_version(store: CredentialStore) -> None:
    store.put("alice", "claude", FILES)
    refreshed = {**FILES, ".claude/.credentials.json": b'{"claudeAiOauth": {}}'}
    assert store.put("alice", "claude", refreshed, after_version=1).version == 2
    # A refresh of version 1 pulled late, after version 2 landed, must not undo it.
    with pytest.raises(CredentialStale, match="no longer at version 1"):
        store.put("alice", "claude", FILES, after_version=1)
    assert store.files("alice", "claude") == refreshed
    with pytest.raises(CredentialStale):
        store.put("bob", "claude", FILES, after_version=1)  # nothing stored to follow


def test_current_reads_files_and_their_version_together(store: CredentialStore) -> None:
    store.put("alice", "claude", FILES, account_email="alice@example.com")
    files, info = store.current("alice", "claude")
    assert files == FILES and info.version == 1 and info.account_email == "alice@example.com"
    with pytest.raises(CredentialNotFound):
        store.current("alice", "codex")


def test_the_lease_names_one_vm_and_survives_new_versions(store: CredentialStore) -> None:
    store.put("alice", "claude", FILES)
    assert store.lease("alice", "claude") is None
    store.set_lease("alice", "claude", Lease("vm1", 1, "d1"))
    updated_at = store.info("alice", "claude").updated_at
    assert store.lease("alice", "claude") == Lease("vm1", 1, "d1")
    assert store.info("alice", "claude").updated_at == updated_at  # a lease is no change
    store.put("alice", "claude", FILES)
    assert store.lease("alice", "claude") == Lease("vm1", 1, "d1")  # now behind: version 2
    store.set_lease("alice", "claude", None)
    assert store.lease("alice", "claude") is None


def test_of_user_lists_each_provider_without_contents(store: CredentialStore) -> None:
    store.put("alice", "codex", FILES)
    store.put("alice", "claude", FILES)
    store.put("bob", "claude", FILES)
    assert [info.provider for info in store.of_user("alice")] == ["claude", "codex"]
    assert store.of_user("carol") == []
