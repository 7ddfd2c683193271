"""Several processes writing one registry: no duplicate or missing version numbers, no lost alias moves."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from modelfab.settings import Settings
from modelfab.store import JobOutcome, Workspace

PROCS = 4
ROUNDS = 6


def _writer(home: str, url: str, worker: int) -> None:
    ws = Workspace.open(Settings(home=Path(home), database_url=url))
    for r in range(ROUNDS):
        run = f"w{worker}-r{r}"
        ds, _ = ws.registry.add_dataset("d", f"digest-{run}", "0" * 64, 1, [], "x")
        keys = ["shared", f"own{worker}"]
        ws.registry.ensure_run(run, recipe="r", recipe_digest=run, dataset=ds, jobs=[(k, k) for k in keys])
        ws.registry.record_outcomes(
            run,
            [
                JobOutcome(
                    key=k,
                    partition=k,
                    model=f"r.{k}",
                    status="passed",
                    artifact_digest="f" * 64,
                    artifact_size=1,
                    promote=True,
                    lineage={"partition": k},
                )
                for k in keys
            ],
        )
    ws.close()


def test_concurrent_writers(tmp_path: Path, db_url: str) -> None:
    Workspace.open(Settings(home=tmp_path, database_url=db_url)).close()  # migrate once up front
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), db_url, i)) for i in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    ws = Workspace.open(Settings(home=tmp_path, database_url=db_url))
    shared = ws.registry.list_versions(all_versions=True, limit=1000)
    numbers = [v.version for v in shared if v.name == "r.shared"]
    assert sorted(numbers) == list(range(1, PROCS * ROUNDS + 1))
    history = ws.registry.alias_history("r.shared", "champion")
    assert len(history) == PROCS * ROUNDS
    # Each move records what it replaced: the chain is unbroken, so no move was lost.
    assert [e.previous for e in history[1:]] == [e.version for e in history[:-1]]
    assert ws.registry.resolve("r.shared") == history[-1].version
    datasets = ws.registry.list_datasets()
    assert sorted(d.version for d in datasets) == list(range(1, PROCS * ROUNDS + 1))
    ws.close()
