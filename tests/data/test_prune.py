"""Pruning dataset versions: the newest N and every version a live model was trained on stay; the rest go
with their data, unless another version still names the same data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from modelfab.data import import_dataset, prune_dataset
from modelfab.errors import ConfigError, NotFoundError
from modelfab.settings import Settings
from modelfab.store import JobOutcome, Workspace
from modelfab.traffic.retention import run_retention


def versions(ws: Workspace, n: int, tmp_path: Path, start: int = 0) -> list[str]:
    digests = []
    for i in range(start, start + n):
        path = tmp_path / f"d{i}.csv"
        pd.DataFrame({"x": [i, i + 1], "y": [0, 1]}).to_csv(path, index=False)
        version, _ = import_dataset(ws, "d", path)
        digests.append(version.data_digest)
    return digests


def train_on(ws: Workspace, dataset_version: int) -> None:
    """A live model whose lineage names ``dataset_version`` of ``d``."""
    ds = ws.registry.get_dataset("d", dataset_version)
    ws.registry.ensure_run("run1", recipe="r", recipe_digest="rd", dataset=ds, jobs=[("a", "a")])
    ws.registry.set_run_status("run1", "done")
    artifact = ws.artifacts.put(b"onnx")
    ws.registry.record_outcomes(
        "run1",
        [
            JobOutcome(
                key="a",
                partition="a",
                model="r.a",
                status="passed",
                recipe="r",
                metric="roc_auc",
                score=0.8,
                metrics={"roc_auc": 0.8},
                lineage={"recipe": "r", "dataset": "d", "dataset_version": dataset_version},
                artifact_digest=artifact.digest,
                artifact_size=artifact.size,
                promote=True,
            )
        ],
    )


def test_prune_keeps_the_newest_and_the_live_and_frees_the_rest(ws: Workspace, tmp_path: Path) -> None:
    digests = versions(ws, 5, tmp_path)
    train_on(ws, 2)
    dry = prune_dataset(ws, "d", 2, dry_run=True)
    assert (dry.removed, dry.kept, dry.live) == ([1, 3], [5, 4], [2])
    assert ws.artifacts.exists(digests[0])

    report = prune_dataset(ws, "d", 2)
    assert report.removed == [1, 3] and report.freed_bytes > 0
    assert [d.version for d in ws.registry.list_datasets()] == [2, 4, 5]
    assert not ws.artifacts.exists(digests[0]) and not ws.artifacts.exists(digests[2])
    assert ws.artifacts.exists(digests[1])
    assert ws.registry.get_dataset("d").version == 5
    versions(ws, 1, tmp_path, start=10)
    assert ws.registry.get_dataset("d").version == 6  # numbers are never reused


def test_prune_errors(ws: Workspace, tmp_path: Path) -> None:
    versions(ws, 1, tmp_path)
    with pytest.raises(ConfigError, match="keep at least"):
        prune_dataset(ws, "d", 0)
    with pytest.raises(NotFoundError, match="modelfab data ls"):
        prune_dataset(ws, "nope", 1)


def test_retention_prunes_datasets_when_asked(tmp_path: Path) -> None:
    ws = Workspace.open(Settings(home=tmp_path / "home", dataset_keep=1))
    versions(ws, 3, tmp_path)
    report = run_retention(ws)
    assert report.datasets == [
        {
            "name": "d",
            "removed": [1, 2],
            "kept": [3],
            "live": [],
            "freed_bytes": report.datasets[0]["freed_bytes"],
        }
    ]
    ws.close()


def test_data_prune_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelfab.cli.main import app

    monkeypatch.setenv("MODELFAB_HOME", str(tmp_path / "home"))
    ws = Workspace.open(Settings())
    versions(ws, 3, tmp_path)
    ws.close()
    result = CliRunner().invoke(app, ["data", "prune", "d", "--keep", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["removed"] == [1, 2]
