"""Artifact store: content addressing, atomic writes, digest checks, AES-256-GCM at rest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelfab.errors import EncryptionError, IntegrityError, NotFoundError
from modelfab.settings import Settings
from modelfab.store import ArtifactStore
from modelfab.store.crypto import parse_key

KEY = bytes(range(32))


def test_roundtrip_dedupes_and_leaves_no_temp_files(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    a = store.put(b"model bytes")
    b = store.put(b"model bytes")
    assert a == b and a.size == 11 and store.exists(a.digest)
    assert store.get(a.digest) == b"model bytes"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [a.digest]


def test_corrupt_and_missing_artifacts_are_refused(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    a = store.put(b"good")
    Path(store.path(a.digest)).write_bytes(b"evil")
    with pytest.raises(IntegrityError, match="do not match its sha256"):
        store.get(a.digest)
    with pytest.raises(NotFoundError, match="missing"):
        store.get("0" * 64)
    with pytest.raises(NotFoundError, match="not a sha256"):
        store.get("../../etc/passwd")


def test_encryption_round_trip_and_wrong_or_missing_key(tmp_path: Path) -> None:
    sealed = ArtifactStore(str(tmp_path), key=KEY)
    a = sealed.put(b"secret weights" * 10)
    on_disk = Path(sealed.path(a.digest)).read_bytes()
    assert b"secret weights" not in on_disk
    assert sealed.get(a.digest) == b"secret weights" * 10
    with pytest.raises(EncryptionError, match="key is wrong"):
        ArtifactStore(str(tmp_path), key=bytes(32)).get(a.digest)
    with pytest.raises(EncryptionError, match="no key is set"):
        ArtifactStore(str(tmp_path)).get(a.digest)


def test_key_parsing_and_settings(tmp_path: Path) -> None:
    assert parse_key(KEY.hex(), source="x") == KEY
    import base64

    assert parse_key(base64.b64encode(KEY).decode(), source="x") == KEY
    with pytest.raises(EncryptionError, match=r"MODELFAB_ENCRYPTION_KEY.*64 hex"):
        parse_key("too-short", source="MODELFAB_ENCRYPTION_KEY")
    key_file = tmp_path / "key"
    key_file.write_text(KEY.hex() + "\n")
    assert Settings(encryption_key_file=key_file).key_bytes() == KEY
    with pytest.raises(EncryptionError, match="cannot read key file"):
        Settings(encryption_key_file=tmp_path / "absent").key_bytes()
    # The key never shows in the settings' repr (and so not in logs that print settings).
    assert KEY.hex() not in repr(Settings(encryption_key=KEY.hex()))


def test_temp_then_rename_never_exposes_partial_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(str(tmp_path))

    def boom(*_a: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        store.put(b"half written")
    from modelfab.store.artifacts import sha256

    assert not store.exists(sha256(b"half written"))
