"""Iteration loop benchmark (run by hand): feedback ingest rate, and watching 1,000 models.

    .venv/bin/python bench/iterate.py [--models 1000] [--rows 1000000] [--database-url URL]

Writes prediction logs the way server workers do, indexes them, posts feedback in requests of 1,000 items
(the durable path: one committed transaction per request), then times one full watch (online metric, PSI
per feature, prediction PSI) over every model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1000, help="feedback items per request")
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()

    from modelfab.iterate.monitor import watch_versions
    from modelfab.settings import Settings
    from modelfab.store import JobOutcome, Workspace
    from modelfab.traffic.feedback import FeedbackItem, FeedbackStore
    from modelfab.traffic.index import PredictionIndex
    from modelfab.traffic.predlog import PredictionLog

    home = Path(tempfile.mkdtemp(prefix="modelfab-bench-iterate-"))
    ws = Workspace.open(Settings(home=home, database_url=args.database_url))
    rng = np.random.default_rng(0)
    profile = {
        "rows": 1000,
        "features": {
            "x": {
                "kind": "numeric",
                "edges": list(np.quantile(rng.normal(size=5000), np.linspace(0, 1, 11)[1:-1])),
                "shares": [0.1] * 10,
                "missing": 0.0,
            },
            "y": {
                "kind": "numeric",
                "edges": [float(e) for e in range(1, 10)],
                "shares": [0.1] * 10,
                "missing": 0.0,
            },
            "plan": {"kind": "categorical", "shares": {"a": 0.5, "b": 0.3, "c": 0.2}},
        },
        "prediction": {"kind": "numeric", "edges": [i / 10 for i in range(1, 10)], "shares": [0.1] * 10},
    }
    profile_digest = ws.artifacts.put(json.dumps(profile).encode()).digest
    names = [f"bench.m{i:04d}" for i in range(args.models)]
    ws.registry.record_outcomes(
        None,
        [
            JobOutcome(
                key=n,
                partition=n,
                model=n,
                status="passed",
                recipe="bench",
                metric="roc_auc",
                score=0.8,
                signature={
                    "inputs": [],
                    "outputs": [{"name": "label"}, {"name": "probabilities"}],
                    "classes": [0, 1],
                },
                artifact_digest=hashlib.sha256(n.encode()).hexdigest(),
                artifact_size=1,
                profile_digest=profile_digest,
                promote=True,
            )
            for n in names
        ],
    )
    per_model = args.rows // args.models
    t0 = time.perf_counter()
    log = PredictionLog(home, worker="bench")
    ids: list[str] = []
    for m, name in enumerate(names):
        x = rng.normal(size=per_model).astype(np.float32)
        p = 1 / (1 + np.exp(-x))
        recs = []
        for i in range(per_model):
            pid = f"{m:06d}{i:026d}"
            ids.append(pid)
            recs.append(
                {
                    "id": pid,
                    "model": name,
                    "version": 1,
                    "time": 1.7e9 + i,
                    "inputs": {
                        "x": x[i : i + 1].reshape(1, 1),
                        "y": np.array([[float(i % 10)]], dtype=np.float32),
                        "plan": np.array([["abc"[i % 3]]], dtype=object),
                    },
                    "outputs": {
                        "label": np.array([int(p[i] > 0.5)]),
                        "probabilities": np.array([[1 - p[i], p[i]]]),
                    },
                }
            )
        log.write(recs)
    log.close()
    t1 = time.perf_counter()
    indexed = PredictionIndex(ws.engine, home).sync()
    t2 = time.perf_counter()
    store = FeedbackStore(ws.engine)
    items = [FeedbackItem(pid, 0, str(int(rng.random() < 0.5))) for pid in ids]
    t3 = time.perf_counter()
    accepted = 0
    for start in range(0, len(items), args.batch):
        accepted += store.ingest(items[start : start + args.batch]).accepted
    t4 = time.perf_counter()
    versions = ws.registry.list_versions(recipe="bench", limit=10**7)
    t5 = time.perf_counter()
    reports = watch_versions(ws, versions, window=2000)
    t6 = time.perf_counter()
    assert accepted == len(ids) == indexed and len(reports) == args.models
    sample = reports[(names[0], 1)]
    print(
        json.dumps(
            {
                "database": ws.engine.dialect.name,
                "models": args.models,
                "feedback_rows": accepted,
                "write_log_s": round(t1 - t0, 2),
                "index_rows_per_s": round(indexed / (t2 - t1)),
                "feedback_ingest_rows_per_s": round(accepted / (t4 - t3)),
                "feedback_requests": -(-accepted // args.batch),
                "watch_s": round(t6 - t5, 2),
                "sample": sample.to_json(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
