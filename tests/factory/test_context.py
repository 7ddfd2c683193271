"""What a run ships to workers carries a reference to the encryption key, never the key itself."""

from __future__ import annotations

import base64
import hashlib
import pickle
from pathlib import Path

import pytest

from modelfab.data import import_dataset
from modelfab.errors import EncryptionError
from modelfab.factory.context import JobContext, KeyRef
from modelfab.factory.plan import make_plan
from modelfab.recipe import parse_recipe
from modelfab.settings import Settings
from modelfab.store import Workspace
from tests.factory.conftest import RECIPE, edge_frame

KEY = hashlib.sha256(b"modelfab test key").digest()


def key_forms(key: bytes) -> list[bytes]:
    """Every spelling of the key that could sit in serialized bytes."""
    hexed = key.hex().encode()
    return [
        key,
        hexed,
        hexed.upper(),
        base64.b64encode(key),
        base64.urlsafe_b64encode(key),
        base64.b64encode(key).rstrip(b"="),
    ]


def shipped(settings: Settings, tmp_path: Path) -> tuple[JobContext, bytes, str]:
    ws = Workspace.open(settings)
    edge_frame().to_csv(tmp_path / "edge.csv", index=False)
    import_dataset(ws, "edge", tmp_path / "edge.csv")
    stored = ws.artifacts.put(b"sealed model bytes").digest
    ctx = JobContext(make_plan(ws, parse_recipe(RECIPE)), ws.artifacts, "test", KeyRef.of(ws.settings))
    ws.close()
    return ctx, pickle.dumps(ctx), stored


def assert_no_key(blob: bytes) -> None:
    for form in key_forms(KEY):
        assert form not in blob, f"the key travels with the job context as {form[:8]!r}..."


def test_key_from_the_environment_is_read_where_the_job_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELFAB_ENCRYPTION_KEY", base64.b64encode(KEY).decode())
    ctx, blob, stored = shipped(Settings(home=tmp_path / "home"), tmp_path)
    assert ctx.artifacts.key == KEY  # the driver's own context keeps its store
    assert_no_key(blob)
    cloudpickle = pytest.importorskip("cloudpickle")
    assert_no_key(cloudpickle.dumps(ctx))

    worker = pickle.loads(blob)
    assert worker.artifacts.get(stored) == b"sealed model bytes"

    monkeypatch.delenv("MODELFAB_ENCRYPTION_KEY")
    with pytest.raises(EncryptionError, match="MODELFAB_ENCRYPTION_KEY is not set where this job runs"):
        _ = pickle.loads(blob).artifacts
    monkeypatch.setenv("MODELFAB_ENCRYPTION_KEY", "22" * 32)
    with pytest.raises(EncryptionError, match="is not the key of the run's workspace"):
        _ = pickle.loads(blob).artifacts


def test_key_file_travels_as_its_path(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY.hex())
    ctx, blob, stored = shipped(Settings(home=tmp_path / "home", encryption_key_file=key_file), tmp_path)
    assert ctx.key is not None and ctx.key.file == str(key_file)
    assert_no_key(blob)
    assert pickle.loads(blob).artifacts.get(stored) == b"sealed model bytes"


def test_unencrypted_workspace_ships_no_key_reference(tmp_path: Path) -> None:
    ctx, blob, stored = shipped(Settings(home=tmp_path / "home"), tmp_path)
    assert ctx.key is None
    assert pickle.loads(blob).artifacts.get(stored) == b"sealed model bytes"
