"""Production runs: partitions that cannot train, ONNX parity, gates, re-runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from modelfab.errors import RecipeError, TrainingError
from modelfab.factory import produce
from modelfab.factory.export import to_onnx_bytes, verify_parity
from modelfab.factory.trainers.sklearn import build_pipeline
from modelfab.recipe import parse_recipe
from modelfab.store import Workspace
from tests.factory.conftest import RECIPE


def test_run_trains_good_partitions_and_records_why_others_fail(edge_ws: Workspace) -> None:
    report = produce(edge_ws, parse_recipe(RECIPE), workers=2)
    assert (report.total, report.trained, report.failed) == (6, 3, 3)
    reasons = dict(report.failures)
    assert "only one class" in reasons["one-class"]
    assert "too few rows: 10" in reasons["tiny"]
    assert "missing in every row" in reasons["no-label"]
    names = edge_ws.registry.model_names()
    assert names == ["r.good-1", "r.good-2", "r.we_ird_site"]
    mv = edge_ws.registry.get_version("r.we_ird_site")
    assert mv.partition == "we ird/site" and mv.aliases == ["champion"] and mv.status == "passed"
    assert mv.metrics["onnx_max_abs_diff"] < 1e-3 and mv.metrics["onnx_label_agreement"] >= 0.99
    lineage = mv.lineage
    assert lineage["dataset"] == "edge" and lineage["dataset_version"] == 1 and lineage["seed"] == 3
    assert lineage["recipe_digest"] == parse_recipe(RECIPE).digest() and lineage["modelfab_version"]
    assert [i["name"] for i in mv.signature["inputs"]] == ["x", "z", "plan"]
    profile = __import__("json").loads(edge_ws.artifacts.get(mv.profile_digest or ""))
    assert set(profile["features"]) == {"x", "z", "plan"}
    assert abs(sum(profile["features"]["x"]["shares"]) - 1.0) < 1e-9
    assert profile["prediction"]["missing"] == 0.0 and abs(sum(profile["prediction"]["shares"]) - 1) < 1e-9
    runs = edge_ws.registry.list_runs()
    assert runs[0].status == "done" and runs[0].counts == {"done": 3, "failed": 3}


def test_exported_graph_handles_missing_and_unseen_values(edge_ws: Workspace) -> None:
    produce(edge_ws, parse_recipe(RECIPE), workers=1)
    mv = edge_ws.registry.get_version("r.good-1")
    sess = ort.InferenceSession(edge_ws.artifacts.get(mv.artifact_digest), providers=["CPUExecutionProvider"])
    feeds = {
        "x": np.array([[np.nan], [0.3]], dtype=np.float32),
        "z": np.array([[0.1], [np.nan]], dtype=np.float32),
        "plan": np.array([["never-seen"], [""]], dtype=object),
    }
    labels, proba = sess.run(None, feeds)
    assert labels.shape == (2,) and proba.shape == (2, 2)
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_rerun_produces_nothing_new(edge_ws: Workspace) -> None:
    recipe = parse_recipe(RECIPE)
    produce(edge_ws, recipe, workers=2)
    before = edge_ws.registry.count_versions()
    again = produce(edge_ws, recipe, workers=2)
    assert again.already_done == again.total == 6 and again.trained == 0
    assert edge_ws.registry.count_versions() == before


def test_gates_reject_without_moving_the_champion(edge_ws: Workspace) -> None:
    produce(edge_ws, parse_recipe(RECIPE), workers=2)
    first = edge_ws.registry.get_version("r.good-1")
    strict = parse_recipe(RECIPE.replace("gate: {min: 0.55}", "gate: {min: 0.55, beat_champion_by: 0.5}"))
    report = produce(edge_ws, strict, workers=2)
    assert report.rejected == 3 and report.passed == 0
    latest = edge_ws.registry.get_version("r.good-1", "latest")
    assert latest.version == 2 and latest.status == "rejected" and latest.aliases == []
    assert edge_ws.registry.get_version("r.good-1").version == first.version
    impossible = parse_recipe(
        RECIPE.replace("gate: {min: 0.55}", "gate: {min: 0.999}").replace("trials: 2", "trials: 1")
    )
    report = produce(edge_ws, impossible, workers=1)
    assert report.rejected == 3


def test_regression_and_other_families(ws: Workspace, tmp_path: Path) -> None:
    from modelfab.data import import_dataset

    rng = np.random.default_rng(1)
    n = 400
    df = pd.DataFrame(
        {"g": rng.choice(["a", "b"], n), "x": rng.normal(size=n), "c": rng.choice(["u", "v"], n)}
    )
    df["y"] = 3 * df["x"] + (df["c"] == "u") + rng.normal(scale=0.1, size=n)
    df.to_parquet(tmp_path / "reg.parquet")
    import_dataset(ws, "reg", tmp_path / "reg.parquet")
    text = """name: reg
task: regression
dataset: reg
target: y
partition_by: g
candidates:
  - family: random_forest
    params: {n_estimators: 10}
  - family: mlp
    search: {hidden_layer_sizes: {choices: [[8], [16, 8]]}}
  - family: hist_gradient_boosting
    params: {max_iter: 20}
trials: 3
metric: rmse
gate: {max: 2.0}
"""
    report = produce(ws, parse_recipe(text), workers=2)
    assert report.passed == 2, report.failures
    mv = ws.registry.get_version("reg.a")
    assert mv.signature["outputs"][0]["name"] == "variable" and mv.metrics["rmse"] < 2.0


def test_recipe_columns_must_exist(edge_ws: Workspace) -> None:
    with pytest.raises(RecipeError, match="column 'label' is not in dataset edge@1; columns are: site, x"):
        produce(edge_ws, parse_recipe(RECIPE.replace("target: y", "target: label")), recipe_file="r.yaml")
    with pytest.raises(RecipeError, match="partition_by"):
        produce(edge_ws, parse_recipe(RECIPE.replace("partition_by: site", "partition_by: region")))
    with pytest.raises(RecipeError, match=r"features: \['nope'\]"):
        produce(edge_ws, parse_recipe(RECIPE + "features: [x, nope]\n"))
    from modelfab.errors import NotFoundError

    with pytest.raises(NotFoundError, match="dataset 'other' does not exist"):
        produce(edge_ws, parse_recipe(RECIPE.replace("dataset: edge", "dataset: other")))


def test_parity_check_catches_a_graph_that_disagrees() -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=200), "c": rng.choice(["a", "b"], 200).astype(object)})
    y = (frame["x"] > 0).astype(int)
    model = build_pipeline("logistic_regression", "classification", {}, ["x"], ["c"], 0).fit(frame, y)
    graph = to_onnx_bytes(model, ["x"], ["c"], "classification")
    want = (model.predict(frame), model.predict_proba(frame))
    assert verify_parity(graph, frame, ["x"], ["c"], "classification", want)["onnx_label_agreement"] == 1.0
    other = build_pipeline("logistic_regression", "classification", {}, ["x"], ["c"], 0).fit(frame, 1 - y)
    with pytest.raises(TrainingError, match="ONNX output differs"):
        verify_parity(
            graph, frame, ["x"], ["c"], "classification", (other.predict(frame), other.predict_proba(frame))
        )


def test_produce_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    from modelfab.data import import_dataset
    from modelfab.settings import Settings

    ws = Workspace.open(Settings(home=tmp_path / "pg", database_url=pg_url))
    from tests.factory.conftest import edge_frame

    edge_frame().to_csv(tmp_path / "e.csv", index=False)
    import_dataset(ws, "edge", tmp_path / "e.csv")
    report = produce(ws, parse_recipe(RECIPE), workers=2)
    assert report.passed == 3 and ws.registry.count_versions() == 3
    ws.close()
