"""A workspace encrypted at rest: datasets and models are sealed on disk, readable with the key only."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from modelfab.data import import_dataset, load_dataset
from modelfab.errors import EncryptionError
from modelfab.factory import produce
from modelfab.recipe import parse_recipe
from modelfab.settings import Settings
from modelfab.store import Workspace
from tests.factory.conftest import RECIPE, edge_frame

KEY = "11" * 32


def test_encrypted_workspace_round_trip_and_wrong_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ws = Workspace.open(Settings(home=home, encryption_key=KEY))
    edge_frame().to_csv(tmp_path / "edge.csv", index=False)
    dataset, _ = import_dataset(ws, "edge", tmp_path / "edge.csv")
    report = produce(ws, parse_recipe(RECIPE), workers=2)
    assert report.passed == 3
    mv = ws.registry.get_version("r.good-1")
    onnx.checker.check_model(onnx.load_from_string(ws.artifacts.get(mv.artifact_digest)))
    assert len(load_dataset(ws, dataset)) == len(edge_frame())
    for blob in (home / "artifacts").rglob("*"):
        if blob.is_file():
            data = blob.read_bytes()
            assert data.startswith(b"MFENC1") and b"good-1" not in data and b"ONNX" not in data[:64]
    ws.close()

    wrong = Workspace.open(Settings(home=home, encryption_key="22" * 32))
    with pytest.raises(EncryptionError, match="key is wrong"):
        wrong.artifacts.get(mv.artifact_digest)
    with pytest.raises(EncryptionError, match="key is wrong"):
        load_dataset(wrong, dataset)
    wrong.close()
    keyless = Workspace.open(Settings(home=home))
    with pytest.raises(EncryptionError, match="no key is set"):
        keyless.artifacts.get(mv.artifact_digest)
    keyless.close()
