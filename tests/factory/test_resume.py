"""Real ``modelfab produce`` processes: SIGKILL and resume, Ctrl-C, two runs on one workspace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from modelfab.data import import_dataset
from modelfab.settings import Settings
from modelfab.store import Workspace

SITES = 24
RECIPE = """name: {name}
task: classification
dataset: many
target: y
partition_by: site
candidates:
  - family: logistic_regression
    search: {{C: {{low: 0.1, high: 10, log: true}}}}
trials: {trials}
metric: accuracy
min_rows: 20
"""


def many_sites(path: Path) -> None:
    rng = np.random.default_rng(5)
    n = SITES * 150
    x = rng.normal(size=n)
    df = pd.DataFrame(
        {
            "site": np.repeat([f"s{i:02d}" for i in range(SITES)], 150),
            "x": x,
            "y": (x + rng.normal(size=n) > 0).astype(int),
        }
    )
    df.to_csv(path, index=False)


def start(home: Path, recipe: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MODELFAB_HOME": str(home)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "modelfab.cli.main",
            "produce",
            str(recipe),
            "--workers",
            str(workers),
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def done_jobs(home: Path) -> int:
    engine = sa.create_engine(f"sqlite:///{home / 'registry.db'}")
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM jobs WHERE status='done'")).scalar() or 0)
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


# Enough trials that a run lasts seconds: the stop must land mid-run, however fast a job has become.
SLOW_TRIALS = 60


def setup(tmp_path: Path, name: str = "m", trials: int = SLOW_TRIALS) -> tuple[Path, Path]:
    home = tmp_path / "home"
    many_sites(tmp_path / "many.csv")
    ws = Workspace.open(Settings(home=home))
    import_dataset(ws, "many", tmp_path / "many.csv")
    ws.close()
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(RECIPE.format(name=name, trials=trials))
    return home, recipe


def wait_for_progress(home: Path, proc: subprocess.Popen[bytes], at_least: int) -> None:
    deadline = time.monotonic() + 120
    while done_jobs(home) < at_least:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "produce made no progress"
        time.sleep(0.05)


def check_registry(home: Path) -> None:
    ws = Workspace.open(Settings(home=home))
    versions = ws.registry.list_versions(all_versions=True, limit=1000)
    assert len(versions) == SITES
    assert sorted(v.name for v in versions) == [f"m.s{i:02d}" for i in range(SITES)]
    assert all(v.version == 1 and v.aliases == ["champion"] for v in versions)
    for v in versions:
        ws.artifacts.get(v.artifact_digest)  # every registered artifact is whole and matches its digest
    assert not [p for p in (home / "artifacts").rglob("*.tmp-*")], "a partial artifact is visible"
    ws.close()


def test_sigkill_then_resume(tmp_path: Path) -> None:
    home, recipe = setup(tmp_path)
    proc = start(home, recipe)
    wait_for_progress(home, proc, 3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    killed_at = done_jobs(home)
    assert 3 <= killed_at < SITES
    again = start(home, recipe, workers=2)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    assert f"{killed_at} done before" in out.decode()
    check_registry(home)
    third = start(home, recipe)
    out, _ = third.communicate(timeout=120)
    assert third.returncode == 0 and "already complete" in out.decode()
    check_registry(home)


def test_ctrl_c_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    home, recipe = setup(tmp_path)
    proc = start(home, recipe)
    wait_for_progress(home, proc, 2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert "run the same command to resume" in err.decode()
    assert "Traceback" not in err.decode()
    ws = Workspace.open(Settings(home=home))
    assert ws.registry.list_runs()[0].status == "interrupted"
    ws.close()
    again = start(home, recipe, workers=2)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()
    check_registry(home)


def test_two_concurrent_runs_share_a_workspace(tmp_path: Path) -> None:
    home, recipe = setup(tmp_path, trials=2)
    other = tmp_path / "o.yaml"
    other.write_text(RECIPE.format(name="o", trials=2))
    procs = [start(home, recipe), start(home, recipe), start(home, other)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    check_registry_names = Workspace.open(Settings(home=home))
    versions = check_registry_names.registry.list_versions(all_versions=True, limit=1000)
    # Same recipe twice: one version per model, never two. Another recipe: its own models.
    assert len(versions) == 2 * SITES
    assert {(v.name, v.version) for v in versions} == (
        {(f"m.s{i:02d}", 1) for i in range(SITES)} | {(f"o.s{i:02d}", 1) for i in range(SITES)}
    )
    check_registry_names.close()
