"""Envelope encryption and master keys (hearth.store.crypto): no database involved."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.store.crypto import (
    NONCE_BYTES,
    WRAPPED_KEY_BYTES,
    CryptoError,
    DecryptionFailed,
    Keyring,
    KeyringError,
    MasterKey,
    UnknownKeyId,
    key_file_lock,
    save_key_file,
)

TOKEN = b"sk-ant-oat01-9c3e7d1f0b2a4e6c8d0f"
AAD = b'["hearth.credential.v1","alice","claude",1]'


def secret_forms(key: MasterKey) -> list[str]:
    """Every way a key could show up in text: base64, hex, the bytes' repr."""
    return [key.to_base64(), key.secret.hex(), repr(key.secret)[2:-1]]


def assert_no_secrets(text: str, *keys: MasterKey, plaintext: bytes = TOKEN) -> None:
    assert plaintext.decode(errors="replace") not in text
    for key in keys:
        for form in secret_forms(key):
            assert form not in text


def assert_clean_error(exc: BaseException, *keys: MasterKey) -> None:
    for text in (str(exc), repr(exc)):
        assert_no_secrets(text, *keys)


@pytest.fixture
def key() -> MasterKey:
    return MasterKey.generate()


@pytest.fixture
def keyring(key: MasterKey) -> Keyring:
    return Keyring.from_key(key)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", master_key="")


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# -- sealing -----------------------------------------------------------------------------


def test_seal_round_trips_and_wraps_a_fresh_data_key_each_time(keyring: Keyring) -> None:
    first, second = keyring.seal(TOKEN, AAD), keyring.seal(TOKEN, AAD)
    assert keyring.open_sealed(first, AAD) == TOKEN == keyring.open_sealed(second, AAD)
    assert first.key_id == second.key_id == keyring.current_key_id
    assert len(first.nonce) == NONCE_BYTES and len(first.wrapped_key) == WRAPPED_KEY_BYTES
    assert first.wrapped_key != second.wrapped_key and first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext
    assert TOKEN not in first.ciphertext


@pytest.mark.parametrize("part", ["wrapped_key", "nonce", "ciphertext"])
def test_every_tampered_byte_is_refused_cleanly(keyring: Keyring, key: MasterKey, part) -> None:
    sealed = keyring.seal(TOKEN, AAD)
    for index in range(len(getattr(sealed, part))):
        tampered = replace(sealed, **{part: flip(getattr(sealed, part), index)})
        with pytest.raises(DecryptionFailed, match="altered") as raised:
            keyring.open_sealed(tampered, AAD)
        assert_clean_error(raised.value, key)


@pytest.mark.parametrize("part", ["wrapped_key", "nonce", "ciphertext"])
def test_truncated_parts_are_refused(keyring: Keyring, part: str) -> None:
    sealed = keyring.seal(TOKEN, AAD)
    with pytest.raises(DecryptionFailed):
        keyring.open_sealed(replace(sealed, **{part: getattr(sealed, part)[:-1]}), AAD)


def test_wrong_associated_data_is_refused(keyring: Keyring, key: MasterKey) -> None:
    sealed = keyring.seal(TOKEN, AAD)
    with pytest.raises(DecryptionFailed, match="moved from another record") as raised:
        keyring.open_sealed(sealed, AAD.replace(b"alice", b"mallory"))
    assert_clean_error(raised.value, key)


def test_a_data_key_wrap_is_bound_to_its_record(keyring: Keyring) -> None:
    """Moving just the wrapped key (with its ciphertext) to another record also fails."""
    other_aad = AAD.replace(b",1]", b",2]")
    sealed, other = keyring.seal(TOKEN, AAD), keyring.seal(b"other", other_aad)
    with pytest.raises(DecryptionFailed, match="data key did not unwrap"):
        keyring.open_sealed(replace(other, wrapped_key=sealed.wrapped_key), other_aad)


def test_unknown_key_id_is_named(keyring: Keyring, key: MasterKey) -> None:
    sealed = Keyring.from_key(MasterKey.generate()).seal(TOKEN, AAD)
    with pytest.raises(UnknownKeyId, match=sealed.key_id) as raised:
        keyring.open_sealed(sealed, AAD)
    assert raised.value.key_id == sealed.key_id
    assert_clean_error(raised.value, key)


def test_rewrap_changes_only_the_wrap(key: MasterKey) -> None:
    old = Keyring.from_key(key)
    sealed = old.seal(TOKEN, AAD)
    new_key = MasterKey.generate()
    rewrapped = old.with_current(new_key).rewrap(sealed, AAD)
    assert (rewrapped.nonce, rewrapped.ciphertext) == (sealed.nonce, sealed.ciphertext)
    assert rewrapped.key_id == new_key.key_id != sealed.key_id
    assert rewrapped.wrapped_key != sealed.wrapped_key
    assert Keyring.from_key(new_key).open_sealed(rewrapped, AAD) == TOKEN


def test_reprs_show_key_ids_only(keyring: Keyring, key: MasterKey) -> None:
    sealed = keyring.seal(TOKEN, AAD)
    for text in (repr(keyring), str(keyring), repr(key), repr(sealed)):
        assert_no_secrets(text, key)
        assert key.key_id in text
    assert repr(sealed.ciphertext)[2:-1] not in repr(sealed)


# -- keys and their sources ------------------------------------------------------------


def test_key_id_is_a_short_hash_of_the_key(key: MasterKey) -> None:
    assert key.key_id == hashlib.sha256(key.secret).hexdigest()[:12]


def test_environment_key_is_used_and_no_file_is_made(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = MasterKey.generate()
    monkeypatch.setenv("HEARTH_MASTER_KEY", key.to_base64())
    from_env = Settings(home=settings.home)
    keyring = Keyring.from_settings(from_env)
    assert keyring.current_key_id == key.key_id and keyring.path is None
    assert Keyring.from_key(key).open_sealed(keyring.seal(TOKEN, AAD), AAD) == TOKEN
    assert not from_env.master_key_file.exists()
    assert_no_secrets(repr(from_env), key)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (base64.b64encode(b"k" * 16).decode(), "must be the base64 of 32 random bytes"),
        (base64.b64encode(b"k" * 33).decode(), "decodes to 33 bytes"),
        ("not base64 at all!", "is not valid base64"),
    ],
)
def test_bad_environment_key_is_refused_clearly(
    settings: Settings, value: str, message: str
) -> None:
    with pytest.raises(KeyringError, match=message) as raised:
        Keyring.from_settings(Settings(home=settings.home, master_key=value))
    assert "HEARTH_MASTER_KEY" in str(raised.value)
    assert value not in str(raised.value) and value not in repr(raised.value)


def test_key_file_is_created_owner_only_and_reused(settings: Settings) -> None:
    path = settings.master_key_file
    first = Keyring.from_settings(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert first.path == path
    doc = json.loads(path.read_text())
    assert doc["current"] == first.current_key_id and list(doc["keys"]) == [doc["current"]]
    second = Keyring.from_settings(settings)
    assert second.current_key_id == first.current_key_id
    assert second.open_sealed(first.seal(TOKEN, AAD), AAD) == TOKEN
    assert sorted(p.name for p in path.parent.iterdir()) == ["master.key"]  # no temporaries


def test_concurrent_first_use_agrees_on_one_key(settings: Settings) -> None:
    start = threading.Barrier(8)

    def load(_: int) -> str:
        start.wait(timeout=30)
        return Keyring.from_settings(settings).current_key_id

    with ThreadPoolExecutor(8) as workers:
        assert len(set(workers.map(load, range(8)))) == 1


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_key_file_open_to_others_is_refused(settings: Settings, mode: int) -> None:
    keyring = Keyring.from_settings(settings)
    doc = json.loads(settings.master_key_file.read_text())
    key = MasterKey.from_base64(doc["keys"][doc["current"]], "test")
    os.chmod(settings.master_key_file, mode)
    assert key.key_id in repr(keyring)  # a repr never fails, even on a refused file
    with pytest.raises(KeyringError, match=rf"mode {mode:04o}.*chmod 600") as raised:
        Keyring.from_settings(settings)
    assert_clean_error(raised.value, key)
    with pytest.raises(KeyringError, match=f"mode {mode:04o}"):  # a loaded keyring re-checks
        keyring.seal(TOKEN, AAD)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not JSON"),
        ('{"current": "x", "keys": {}}', "expected"),
        ('{"current": "abc", "keys": {"abc": "%s"}}', "listed under the wrong key id"),
        ('{"current": "abc", "keys": {"abc": "c2hvcnQ="}}', "decodes to 5 bytes"),
    ],
)
def test_malformed_key_file_is_refused_without_showing_it(
    settings: Settings, content: str, message: str
) -> None:
    key = MasterKey.generate()
    if "%s" in content:
        content %= key.to_base64()
    path = settings.master_key_file
    path.parent.mkdir(parents=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(content)
    with pytest.raises(KeyringError, match=message) as raised:
        Keyring.from_settings(settings)
    assert str(path) in str(raised.value)
    assert_clean_error(raised.value, key)


def test_a_keyring_follows_its_key_file(settings: Settings) -> None:
    """A rotation in another process is picked up before the next seal."""
    follower = Keyring.from_settings(settings)
    old_sealed = follower.seal(TOKEN, AAD)
    new_key = MasterKey.generate()
    save_key_file(settings.master_key_file, Keyring.from_settings(settings).with_current(new_key))
    assert stat.S_IMODE(settings.master_key_file.stat().st_mode) == 0o600
    assert follower.seal(TOKEN, AAD).key_id == new_key.key_id
    assert follower.open_sealed(old_sealed, AAD) == TOKEN
    save_key_file(settings.master_key_file, Keyring.from_key(new_key))
    with pytest.raises(UnknownKeyId, match=old_sealed.key_id):
        follower.open_sealed(old_sealed, AAD)


def test_deleted_key_file_is_an_error_not_a_new_key(settings: Settings) -> None:
    keyring = Keyring.from_settings(settings)
    settings.master_key_file.unlink()
    with pytest.raises(KeyringError, match="has gone"):
        keyring.seal(TOKEN, AAD)


def test_only_one_rotation_holds_the_lock(settings: Settings) -> None:
    with (
        key_file_lock(settings.master_key_file),
        pytest.raises(KeyringError, match="another master key rotation"),
        key_file_lock(settings.master_key_file),
    ):
        pass
    with key_file_lock(settings.master_key_file):
        pass


def test_errors_share_one_base(keyring: Keyring) -> None:
    sealed = keyring.seal(TOKEN, AAD)
    for bad in (replace(sealed, key_id="0" * 12), replace(sealed, nonce=secrets.token_bytes(12))):
        with pytest.raises(CryptoError):
            keyring.open_sealed(bad, AAD)
