"""Small data sets with the partitions a factory must survive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from modelfab.data import import_dataset
from modelfab.store import Workspace


def edge_frame(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    parts = []
    for site, n in (
        ("good-1", 300),
        ("good-2", 260),
        ("we ird/site", 240),
        ("one-class", 120),
        ("tiny", 10),
        ("no-label", 80),
    ):
        x = rng.normal(size=n)
        plan = rng.choice(["basic", "pro"], n).astype(object)
        y = (x + (plan == "pro") + rng.normal(scale=0.7, size=n) > 0.5).astype(float)
        if site == "one-class":
            y[:] = 0
        if site == "no-label":
            y[:] = np.nan
        frame = pd.DataFrame({"site": site, "x": x, "z": rng.normal(size=n), "plan": plan, "y": y})
        frame.loc[frame.index[::9], "x"] = np.nan
        frame.loc[frame.index[::11], "plan"] = None
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


RECIPE = """name: r
task: classification
dataset: edge
target: y
partition_by: site
split: {holdout: 0.25, seed: 3}
candidates:
  - family: logistic_regression
    search: {C: {low: 0.1, high: 10, log: true}}
trials: 2
metric: roc_auc
gate: {min: 0.55}
min_rows: 50
"""


@pytest.fixture
def edge_ws(ws: Workspace, tmp_path: Path) -> Workspace:
    edge_frame().to_csv(tmp_path / "edge.csv", index=False)
    import_dataset(ws, "edge", tmp_path / "edge.csv")
    return ws


@pytest.fixture
def recipe_file(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    return path
