"""End-to-end fixtures: a small workspace produced once per session, copied per test, and real
``modelfab serve`` / ``modelfab up`` subprocesses on loopback."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pandas as pd
import pytest

from modelfab.data import import_dataset
from modelfab.demo.server import ServerProcess, free_port, serve_args
from modelfab.demo.synth import churn_frame
from modelfab.factory import produce
from modelfab.recipe import Recipe, parse_recipe
from modelfab.settings import Settings
from modelfab.store import Workspace
from tests.iterate.conftest import CATEGORICAL, NUMERIC, ROWS, SEED, SITES
from tests.iterate.conftest import RECIPE as ITERATE_RECIPE

# The same small churn world as the loop's own tests, with no cooldown.
RECIPE = ITERATE_RECIPE.replace("COOLDOWN", "0s")


def recipe() -> Recipe:
    return parse_recipe(RECIPE)


def site_frame() -> pd.DataFrame:
    return churn_frame(sites=SITES, rows_per_site=ROWS, seed=SEED, tiny_sites=0)


@pytest.fixture(scope="session")
def produced_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with one champion per site, made once; tests work on copies of it."""
    root = tmp_path_factory.mktemp("e2e-template")
    home = root / "home"
    ws = Workspace.open(Settings(home=home))
    try:
        site_frame().to_csv(root / "churn.csv", index=False)
        import_dataset(ws, "churn", root / "churn.csv")
        report = produce(ws, recipe(), workers=1)
        assert report.passed == SITES, report.failures
    finally:
        ws.close()
    (home / "churn.yaml").write_text(RECIPE)
    return home


@pytest.fixture
def home(produced_home: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "home"
    shutil.copytree(produced_home, copy)
    return copy


@pytest.fixture
def ws(home: Path) -> Iterator[Workspace]:
    w = Workspace.open(Settings(home=home))
    yield w
    w.close()


def start_server(home: Path, workers: str = "2", **options: Any) -> ServerProcess:
    port = free_port()
    server = ServerProcess(home, serve_args(port, workers=workers, grpc=False, **options), port)
    server.start(timeout=60)
    return server


@pytest.fixture
def server(home: Path) -> Iterator[ServerProcess]:
    proc = start_server(home)
    yield proc
    proc.stop()


def infer_json(url: str, model: str, rows: pd.DataFrame, client: httpx.Client | None = None) -> str:
    """One plain OIP v2 JSON request (rows without missing values); returns the prediction id."""
    inputs: list[dict[str, Any]] = [
        {"name": c, "datatype": "FP32", "shape": [len(rows), 1], "data": rows[c].astype(float).tolist()}
        for c in NUMERIC
    ] + [
        {"name": c, "datatype": "BYTES", "shape": [len(rows), 1], "data": rows[c].astype(str).tolist()}
        for c in CATEGORICAL
    ]
    body = orjson.dumps({"inputs": inputs})
    post = client.post if client is not None else httpx.post
    resp = post(f"http://{url}/v2/models/{model}/infer", content=body, timeout=30)
    assert resp.status_code == 200, resp.text
    pid = resp.json()["parameters"]["prediction_id"]
    assert resp.headers["x-prediction-id"] == pid
    return str(pid)


def complete_rows(site: str, n: int, seed: int) -> pd.DataFrame:
    """``n`` customers of ``site`` without missing values (JSON has no NaN)."""
    frame = site_frame().dropna()
    part = frame[frame["site"] == site]
    return part.iloc[np.random.default_rng(seed).permutation(len(part))[:n]]
