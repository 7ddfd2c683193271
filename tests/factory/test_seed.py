"""The recipe's one seed drives the holdout split, the search and the models."""

from __future__ import annotations

from typing import Any

from modelfab.factory import produce
from modelfab.recipe import parse_recipe
from modelfab.store import Workspace
from tests.factory.conftest import RECIPE

SEEDED = RECIPE.replace("split: {holdout: 0.25, seed: 3}", "split: {holdout: 0.25}").replace(
    "  - family: logistic_regression\n",
    "  - family: random_forest\n    params: {n_estimators: 8}\n  - family: logistic_regression\n",
)


def metrics(ws: Workspace, name: str, seed: int) -> dict[str, Any]:
    recipe = parse_recipe(SEEDED.replace("name: r", f"name: {name}") + f"seed: {seed}\n")
    report = produce(ws, recipe, workers=2, only=["good-1"])
    assert report.trained == 1, report.failures
    mv = ws.registry.get_version(f"{name}.good-1")
    assert mv.lineage["seed"] == seed
    return {"params": mv.params, **mv.metrics}


def test_same_seed_same_models_other_seed_other_models(edge_ws: Workspace) -> None:
    first = metrics(edge_ws, "a", 11)
    assert metrics(edge_ws, "b", 11) == first
    other = metrics(edge_ws, "c", 12)
    assert other["roc_auc"] != first["roc_auc"]
    assert other["validation_roc_auc"] != first["validation_roc_auc"]
