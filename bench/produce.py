"""Factory benchmarks, run by hand (never in tests). Figures are ratios measured in one run.

python bench/produce.py factory   # 1,000 partitions x 1 trial vs a bare joblib loop
python bench/produce.py register  # versions/s on SQLite (and MLflow's registry, if installed)
python bench/produce.py lookup    # alias resolve and `models ls` page latency with 100,000 versions
python bench/produce.py all
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PARTITIONS = 1000
ROWS = 120
FEATURES = ["f0", "f1", "f2", "f3"]


def make_data(path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = PARTITIONS * ROWS
    df = pd.DataFrame(rng.normal(size=(n, len(FEATURES))), columns=FEATURES)
    df["part"] = np.repeat([f"p{i:04d}" for i in range(PARTITIONS)], ROWS)
    df["y"] = (df["f0"] + rng.normal(size=n) > 0).astype(int)
    df.to_csv(path, index=False)
    return df


def _bare_fit_export(x: np.ndarray, y: np.ndarray, out: str) -> int:
    # The peer: the same pipeline (impute, scale, logistic regression) fitted and exported, nothing else.
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=500)
    )
    model.fit(x, y)
    onx = convert_sklearn(
        model,
        initial_types=[("x", FloatTensorType([None, x.shape[1]]))],
        options={id(model.steps[-1][1]): {"zipmap": False}},
        target_opset=17,
    )
    data = onx.SerializeToString()
    with open(out, "wb") as fh:
        fh.write(data)
    return len(data)


def bench_factory(workers: int) -> None:
    from joblib import Parallel, delayed

    from modelfab import Settings, Workspace, import_dataset, parse_recipe, produce

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        df = make_data(tmpdir / "d.csv")
        groups = [(g[FEATURES].to_numpy(), g["y"].to_numpy()) for _, g in df.groupby("part")]
        (tmpdir / "bare").mkdir()
        Parallel(n_jobs=workers)(
            delayed(_bare_fit_export)(x, y, str(tmpdir / "bare" / "warm")) for x, y in groups[:8]
        )
        t0 = time.perf_counter()
        Parallel(n_jobs=workers, batch_size="auto")(
            delayed(_bare_fit_export)(x, y, str(tmpdir / "bare" / f"{i}.onnx"))
            for i, (x, y) in enumerate(groups)
        )
        bare = time.perf_counter() - t0

        ws = Workspace.open(Settings(home=tmpdir / "home"))
        import_dataset(ws, "d", tmpdir / "d.csv")
        recipe = parse_recipe(
            "name: b\ntask: classification\ndataset: d\ntarget: y\npartition_by: part\n"
            "candidates: [{family: logistic_regression}]\ntrials: 1\nmetric: accuracy\nmin_rows: 20\n"
        )
        t0 = time.perf_counter()
        report = produce(ws, recipe, workers=workers)
        ours = time.perf_counter() - t0
        assert report.trained == PARTITIONS and ws.registry.count_versions() == PARTITIONS
        print(f"factory: {PARTITIONS} partitions x 1 trial on {workers} workers")
        print(
            f"  bare joblib loop (fit + ONNX export): {bare:7.2f} s  {PARTITIONS / bare * 60:8.0f} models/min"
        )
        print(
            f"  modelfab produce (+ holdout metrics, parity check, profile, store, register): "
            f"{ours:7.2f} s  {PARTITIONS / ours * 60:8.0f} models/min"
        )
        print(f"  ratio modelfab / bare = {ours / bare:.3f}  (target <= 1.15)")


def bench_register(n: int = 20_000) -> None:
    from modelfab import Settings, Workspace
    from modelfab.store import JobOutcome

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Settings(home=Path(tmp)))
        ds, _ = ws.registry.add_dataset("d", "x" * 64, "0" * 64, 1, [], "bench")
        keys = [f"k{i}" for i in range(n)]
        ws.registry.ensure_run(
            "bench", recipe="b", recipe_digest="b", dataset=ds, jobs=[(k, k) for k in keys]
        )
        outcomes = [
            JobOutcome(
                key=k,
                partition=k,
                model=f"b.{k}",
                status="passed",
                recipe="b",
                metric="accuracy",
                score=0.9,
                metrics={"accuracy": 0.9},
                params={"family": "logistic_regression"},
                lineage={"partition": k, "recipe": "b"},
                artifact_digest="f" * 64,
                artifact_size=1000,
                promote=True,
            )
            for k in keys
        ]
        t0 = time.perf_counter()
        for i in range(0, n, 256):  # the factory's flush size
            ws.registry.record_outcomes("bench", outcomes[i : i + 256])
        ours = n / (time.perf_counter() - t0)
    print(
        f"register: modelfab on SQLite {ours:8.0f} versions/s (with champion alias + history, batches of 256)"
    )
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        print("  MLflow not installed: pip install mlflow-skinny to compare")
        return
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    m = 300
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        client = MlflowClient()
        client.create_registered_model("warm")
        t0 = time.perf_counter()
        for i in range(m):
            name = f"b.k{i}"
            client.create_registered_model(name)
            mv = client.create_model_version(name, source=f"{tmp}/art/{i}", run_id=None)
            client.set_registered_model_alias(name, "champion", mv.version)
        theirs = m / (time.perf_counter() - t0)
    print(f"  MLflow {mlflow.__version__} on SQLite: {theirs:8.0f} versions/s (model + version + alias)")
    print(f"  ratio modelfab / MLflow = {ours / theirs:.1f}x  (target >= 2,000 versions/s)")


def bench_lookup(n: int = 100_000) -> None:
    from modelfab import Settings, Workspace
    from modelfab.store import JobOutcome

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Settings(home=Path(tmp)))
        ds, _ = ws.registry.add_dataset("d", "x" * 64, "0" * 64, 1, [], "bench")
        models = n // 4  # 25,000 models x 4 versions
        t0 = time.perf_counter()
        for round_ in range(4):
            keys = [f"k{i:06d}" for i in range(models)]
            run = f"r{round_}"
            ws.registry.ensure_run(
                run, recipe="b", recipe_digest=run, dataset=ds, jobs=[(k, k) for k in keys]
            )
            for i in range(0, models, 2000):
                ws.registry.record_outcomes(
                    run,
                    [
                        JobOutcome(
                            key=k,
                            partition=k,
                            model=f"b.{k}",
                            status="passed",
                            recipe="b",
                            score=0.9,
                            metrics={"accuracy": 0.9},
                            lineage={"partition": k},
                            artifact_digest="f" * 64,
                            artifact_size=1,
                            promote=True,
                        )
                        for k in keys[i : i + 2000]
                    ],
                )
        print(
            f"lookup: {ws.registry.count_versions():,} versions registered in {time.perf_counter() - t0:.1f}s"
        )
        rng = np.random.default_rng(0)
        names = [f"b.k{i:06d}" for i in rng.integers(0, models, 2000)]
        p50, p99 = _latency(lambda name: ws.registry.resolve(name, "champion"), names)
        print(f"  alias resolve: p50 {p50:.3f} ms  p99 {p99:.3f} ms  (target p99 <= 1 ms)")
        p50, p99 = _latency(lambda name: ws.registry.list_versions(limit=50, after=(name, 0)), names[:300])
        print(f"  models ls page of 50 (latest): p50 {p50:.2f} ms  p99 {p99:.2f} ms  (target p99 <= 20 ms)")
        p50, p99 = _latency(
            lambda name: ws.registry.list_versions(all_versions=True, limit=50, after=(name, 0)), names[:300]
        )
        print(f"  models ls --all page of 50: p50 {p50:.2f} ms  p99 {p99:.2f} ms")


def _latency(call: Any, names: list[str]) -> tuple[float, float]:
    """p50 and p99 of ``call(name)`` over ``names``, in milliseconds; every call must return something."""
    lat = []
    for name in names:
        t = time.perf_counter()
        assert call(name) is not None
        lat.append(time.perf_counter() - t)
    return statistics.median(lat) * 1e3, float(np.percentile(lat, 99)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", choices=["factory", "register", "lookup", "all"], nargs="?", default="all")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores")
    if args.which in ("factory", "all"):
        bench_factory(args.workers)
    if args.which in ("register", "all"):
        bench_register()
    if args.which in ("lookup", "all"):
        bench_lookup()


if __name__ == "__main__":
    main()
