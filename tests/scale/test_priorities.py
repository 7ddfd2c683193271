"""Priorities and quotas with real ``modelfab produce`` processes sharing one PostgreSQL registry."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from modelfab.settings import Settings
from modelfab.store import Workspace
from modelfab.store import schema as t
from tests.scale.conftest import MODELFAB, ROOT, env_for

CAP = 2
RECIPE = """name: {name}
task: classification
dataset: {name}
target: y
partition_by: site
candidates:
  - family: logistic_regression
    search: {{C: {{low: 0.1, high: 10, log: true}}}}
trials: 40  # jobs must last: the high run starts while the normal one still has queued jobs
metric: accuracy
min_rows: 20
"""


def write_inputs(folder: Path, name: str, sites: int) -> Path:
    rng = np.random.default_rng(sites)
    n = sites * 200
    x = rng.normal(size=n)
    pd.DataFrame(
        {
            "site": np.repeat([f"s{i:02d}" for i in range(sites)], 200),
            "x": x,
            "y": (x + rng.normal(size=n) > 0).astype(int),
        }
    ).to_csv(folder / f"{name}.csv", index=False)
    recipe = folder / f"{name}.yaml"
    recipe.write_text(RECIPE.format(name=name))
    return recipe


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*MODELFAB, *args], env=env_for(settings), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done


def start_produce(settings: Settings, recipe: Path, priority: str) -> subprocess.Popen[str]:
    cmd = [*MODELFAB, "produce", str(recipe), "--workers", "2", "--priority", priority, "--no-progress"]
    return subprocess.Popen(
        cmd, env=env_for(settings), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def job_times(ws: Workspace) -> dict[str, list[tuple[datetime, datetime]]]:
    j, r = t.jobs, t.runs
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    with ws.engine.connect() as conn:
        rows = conn.execute(
            sa.select(r.c.recipe, j.c.started_at, j.c.finished_at).join(
                r, sa.and_(r.c.tenant == j.c.tenant, r.c.id == j.c.run_id)
            )
        ).all()
    for row in rows:
        assert row.started_at is not None and row.finished_at is not None
        out.setdefault(row.recipe, []).append((row.started_at, row.finished_at))
    return out


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    # A job's slot is free once it finished: at equal times the end counts before the next start.
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.postgres
@pytest.mark.slow
def test_a_high_priority_run_overtakes_queued_normal_jobs_and_the_cap_holds(
    tmp_path: Path, pg_settings: Settings
) -> None:
    bulk = write_inputs(tmp_path, "bulk", sites=24)
    urgent = write_inputs(tmp_path, "urgent", sites=4)
    cli(pg_settings, "data", "import", "bulk", str(tmp_path / "bulk.csv"))
    cli(pg_settings, "data", "import", "urgent", str(tmp_path / "urgent.csv"))
    assert "at most 2 job(s)" in cli(pg_settings, "runs", "quota", "--max-jobs", str(CAP)).stdout
    ws = Workspace.open(pg_settings)

    normal = start_produce(pg_settings, bulk, "normal")
    deadline = time.monotonic() + 120
    while not any(r.counts.get("running", 0) + r.counts.get("done", 0) for r in ws.registry.list_runs()):
        assert normal.poll() is None and time.monotonic() < deadline, normal.communicate()[1]
        time.sleep(0.1)
    high = start_produce(pg_settings, urgent, "high")
    listings: list[list[dict[str, object]]] = []
    while high.poll() is None and time.monotonic() < deadline:
        listings.append(json.loads(cli(pg_settings, "runs", "ls", "--json").stdout))
        time.sleep(0.2)
    for p in (normal, high):
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err

    times = job_times(ws)
    assert len(times["bulk"]) == 24 and len(times["urgent"]) == 4
    everything = times["bulk"] + times["urgent"]
    assert most_at_once(everything) == CAP  # the quota was used, and never exceeded
    first_high = min(s for s, _ in times["urgent"])
    last_high = max(s for s, _ in times["urgent"])
    normal_starts = [s for s, _ in times["bulk"]]
    assert any(s < first_high for s in normal_starts)  # the normal run was busy first ...
    assert any(s > last_high for s in normal_starts)  # ... and still had jobs queued
    # ... yet none of them started from the high run's first job until its last one had started.
    assert [s for s in normal_starts if first_high < s < last_high] == []
    # ``runs ls`` showed the normal run's jobs queued and the slots each run held while both were live.
    seen = [{r["recipe"]: r for r in listing} for listing in listings]
    assert any(
        len(s) == 2 and s["bulk"]["counts"].get("pending", 0) > 0 and s["urgent"]["slots"] > 0  # type: ignore[index]
        for s in seen
    )
    assert all(sum(r["slots"] for r in s.values()) <= CAP for s in seen)  # type: ignore[misc]
    ws.close()
