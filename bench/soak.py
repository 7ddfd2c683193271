"""Soak benchmark (run by hand): an hour of traffic compressed, with retention, showing disk use stays
bounded.

    .venv/bin/python bench/soak.py [--minutes 60] [--rate 30] [--retention 10m] [--key] [--database-url URL]

Every simulated minute writes ``rate * 60`` predictions to a new log segment (as a server worker does
when it leaves a segment), indexes them, and sends outcomes for half of the previous minute's. Every five
minutes a retention pass runs with the simulated clock; every fifteen a retrain imports labelled traffic
as a new dataset version (kept to the newest two). Prints disk use as it goes: log segments, the
registry and the artifact store should level off once the retention window is full.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=int, default=60)
    ap.add_argument("--rate", type=int, default=30, help="predictions per simulated second")
    ap.add_argument("--retention", default="10m")
    ap.add_argument("--key", action="store_true", help="seal logs and features with a workspace key")
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()

    import pandas as pd

    from modelfab.data import import_frame
    from modelfab.settings import Settings
    from modelfab.store import Workspace
    from modelfab.traffic.feedback import FeedbackItem, FeedbackStore
    from modelfab.traffic.index import PredictionIndex
    from modelfab.traffic.predlog import PredictionLog, new_prediction_id
    from modelfab.traffic.retention import run_retention

    home = Path(tempfile.mkdtemp(prefix="modelfab-bench-soak-"))
    settings = Settings(
        home=home,
        database_url=args.database_url,
        prediction_retention=args.retention,
        dataset_keep=2,
        encryption_key=os.urandom(32).hex() if args.key else None,
    )
    ws = Workspace.open(settings)
    index = PredictionIndex.for_settings(ws.engine, settings)
    feedback = FeedbackStore(ws.engine, settings.tenant, index)
    rng = np.random.default_rng(0)
    per_minute = args.rate * 60
    start = time.time() - args.minutes * 60  # the simulated hour ends now
    previous: list[str] = []
    wall = time.perf_counter()
    print(f"home {home}  {per_minute:,} predictions per simulated minute, retention {args.retention}")
    print(f"{'minute':>6} {'segments':>8} {'log MB':>8} {'rows':>8} {'registry MB':>11} {'artifacts MB':>12}")
    for minute in range(args.minutes):
        now = start + minute * 60
        log = PredictionLog(home, worker="soak")
        ids = [new_prediction_id() for _ in range(per_minute)]
        x = rng.normal(size=per_minute)
        for lo in range(0, per_minute, 500):
            log.write(
                [
                    {
                        "id": pid,
                        "model": f"soak.m{i % 20}",
                        "version": 1,
                        "time": now + i * 60 / per_minute,
                        "inputs": {
                            "x": np.array([[x[i]]], dtype=np.float32),
                            "plan": np.array([["abc"[i % 3]]], dtype=object),
                        },
                        "outputs": {"label": np.array([int(x[i] > 0)]), "probabilities": [[0.4, 0.6]]},
                    }
                    for i, pid in zip(range(lo, lo + 500), ids[lo : lo + 500], strict=False)
                ]
            )
        log.close()
        newest = max((home / "predictions").glob("*.jsonl"))
        os.utime(newest, (now + 60, now + 60))
        index.sync()
        feedback.ingest([FeedbackItem(pid, 0, str(int(rng.random() > 0.5))) for pid in previous[::2]])
        previous = ids
        if minute % 15 == 14:
            frame = pd.DataFrame({"x": x[:1000], "plan": ["a"] * 1000, "y": (x[:1000] > 0).astype(int)})
            frame["minute"] = minute  # a distinct table, so a new version
            import_frame(ws, "soak", frame, f"retrain at minute {minute}")
        if minute % 5 == 4:
            run_retention(ws, now=now + 60, grace_s=120)
            _print(minute + 1, home, ws)
    print(
        f"{args.minutes} simulated minutes in {time.perf_counter() - wall:.1f}s wall; "
        f"index skipped {index.oversized_lines} oversized and {index.unreadable_lines} unreadable lines"
    )
    ws.close()
    shutil.rmtree(home, ignore_errors=True)


def _print(minute: int, home: Path, ws: object) -> None:
    import sqlalchemy as sa

    from modelfab.store import schema as t

    with ws.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(sa.select(sa.func.count()).select_from(t.prediction_rows)).scalar()
    segments = len(list((home / "predictions").glob("*.jsonl")))
    registry = sum(du(home / n) for n in ("registry.db", "registry.db-wal", "registry.db-shm"))
    print(
        f"{minute:>6} {segments:>8} {du(home / 'predictions') / 1e6:>8.1f} {rows:>8,} "
        f"{registry / 1e6:>11.1f} {du(home / 'artifacts') / 1e6:>12.2f}"
    )


if __name__ == "__main__":
    main()
