"""Iteration loop fixtures: a few site models trained for real, and traffic written the way the server
writes it (prediction log records, routed by the real router, scored by ONNX Runtime)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from modelfab.data import import_dataset
from modelfab.demo.synth import churn_frame
from modelfab.factory import produce
from modelfab.factory.export import feeds_for
from modelfab.recipe import Recipe, parse_recipe
from modelfab.settings import Settings
from modelfab.store import Workspace
from modelfab.traffic.feedback import FeedbackItem, FeedbackStore
from modelfab.traffic.index import PredictionIndex
from modelfab.traffic.predlog import PredictionLog, new_prediction_id
from modelfab.traffic.routing import Router

SITES = 3
ROWS = 700
SEED = 3
NUMERIC = ["tenure", "monthly_spend", "support_calls"]
CATEGORICAL = ["plan", "contract"]

RECIPE = """name: churn
task: classification
dataset: churn
target: churned
partition_by: site
features: [tenure, monthly_spend, support_calls, plan, contract]
split: {holdout: 0.25, seed: 7}
candidates:
  - family: logistic_regression
    params: {C: 1.0}
trials: 1
metric: roc_auc
gate: {min: 0.55}
iterate:
  triggers: {drift_psi: 0.5, metric_drop: 0.06}
  min_samples: 100
  window: 1200
  beat_champion_by: 0.01
  canary: {share: 0.5, min_labels: 60}
  cooldown: COOLDOWN
"""


def make_recipe(cooldown: str = "0s", **replace: str) -> Recipe:
    text = RECIPE.replace("COOLDOWN", cooldown)
    for old, new in replace.items():
        text = text.replace(old, new)
    return parse_recipe(text)


def site_frame(shift: dict[str, float] | None = None) -> pd.DataFrame:
    return churn_frame(sites=SITES, rows_per_site=ROWS, seed=SEED, tiny_sites=0, shift=shift)


class Traffic:
    """Plays the server: routes, scores with the served version's ONNX model, logs, then sends feedback."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.log = PredictionLog(ws.settings.home, worker="test")
        self.router = Router(ws.engine, ws.registry.tenant)
        self.feedback = FeedbackStore(
            ws.engine, ws.registry.tenant, PredictionIndex(ws.engine, ws.settings.home, ws.registry.tenant)
        )
        self._sessions: dict[str, Any] = {}
        self._keys = itertools.count()
        self.served: dict[tuple[str, int], int] = {}

    def _run(self, model: str, version: int, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        import onnxruntime as ort

        mv = self.ws.registry.get_version(model, version)
        sess = self._sessions.get(mv.artifact_digest)
        if sess is None:
            sess = ort.InferenceSession(
                self.ws.artifacts.get(mv.artifact_digest), providers=["CPUExecutionProvider"]
            )
            self._sessions[mv.artifact_digest] = sess
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(None, feeds_for(rows, NUMERIC, CATEGORICAL)), strict=True))

    def send(
        self, frame: pd.DataFrame, per_site: int, seed: int, batch: int = 20, label: bool = True
    ) -> None:
        """``per_site`` rows of each site in ``frame``, in requests of ``batch`` rows, then their outcomes."""
        self.router.refresh()
        rng = np.random.default_rng(seed)
        items: list[FeedbackItem] = []
        for site, part in frame.groupby("site"):
            model = f"churn.{site}"
            picked = part.iloc[rng.integers(0, len(part), per_site)]
            for start in range(0, per_site, batch):
                rows = picked.iloc[start : start + batch]
                decision = self.router.route(model, f"k{next(self._keys)}")
                version = self.ws.registry.resolve(model, decision.serve)
                pid = new_prediction_id()
                feeds = feeds_for(rows, NUMERIC, CATEGORICAL)
                records = [
                    {
                        "id": pid,
                        "model": model,
                        "version": version,
                        "time": time.time(),
                        "inputs": feeds,
                        "outputs": self._run(model, version, rows),
                    }
                ]
                if decision.shadow is not None:
                    sv = self.ws.registry.resolve(model, decision.shadow)
                    records.append(
                        {**records[0], "version": sv, "shadow": True, "outputs": self._run(model, sv, rows)}
                    )
                self.log.write(records)
                self.served[(model, version)] = self.served.get((model, version), 0) + len(rows)
                if label:
                    items += [
                        FeedbackItem(pid, i, orjson.dumps(int(y)).decode())
                        for i, y in enumerate(rows["churned"])
                    ]
        for start in range(0, len(items), 2000):
            result = self.feedback.ingest(items[start : start + 2000])
            assert result.unknown == []

    def close(self) -> None:
        self.log.close()


@pytest.fixture
def produced(ws: Workspace, tmp_path: Path) -> Workspace:
    site_frame().to_csv(tmp_path / "churn.csv", index=False)
    import_dataset(ws, "churn", tmp_path / "churn.csv")
    report = produce(ws, make_recipe(), workers=1)
    assert report.passed == SITES, report.failures
    return ws


@pytest.fixture
def traffic(produced: Workspace) -> Iterator[Traffic]:
    tr = Traffic(produced)
    yield tr
    tr.close()


@pytest.fixture
def fresh_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")
