"""Retraining builds its dataset version in memory: no temp file holds labelled traffic, and with a key
nothing it stores shows a feature value in plain text."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pytest

from modelfab.data import import_dataset, load_dataset
from modelfab.iterate.retrain import build_dataset
from modelfab.recipe import parse_recipe
from modelfab.settings import Settings
from modelfab.store import Workspace

SECRET = "zz-traffic-secret"
RECIPE = """
name: r
task: classification
dataset: d
target: y
partition_by: site
candidates: [{family: logistic_regression}]
metric: roc_auc
"""


def test_build_dataset_writes_no_temp_file_and_no_plain_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def no_temp(*args: object, **kwargs: object) -> None:
        raise AssertionError("retraining wrote a temp file")

    for name in ("TemporaryDirectory", "NamedTemporaryFile", "mkstemp", "mkdtemp"):
        monkeypatch.setattr(tempfile, name, no_temp)
    ws = Workspace.open(Settings(home=tmp_path / "home", encryption_key="11" * 32))
    base = tmp_path / "base.csv"
    pd.DataFrame({"site": ["a", "b"], "x": [1.5, 2.5], "plan": ["p", "q"], "y": [0, 1]}).to_csv(
        base, index=False
    )
    import_dataset(ws, "d", base)
    added = pd.DataFrame({"site": ["a"], "x": [None], "plan": [SECRET], "y": [1]})
    version = build_dataset(ws, parse_recipe(RECIPE), [added])
    assert version.version == 2
    frame = load_dataset(ws, version)
    assert list(frame["plan"]) == ["p", "q", SECRET]
    assert frame["x"].dtype == "float64"  # typed as an imported Parquet file would be
    assert list(scratch.iterdir()) == []
    ws.close()
    stored = [p for p in (tmp_path / "home").rglob("*") if p.is_file()]
    assert stored and not any(SECRET.encode() in p.read_bytes() for p in stored)
