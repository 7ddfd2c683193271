"""Four processes producing and promoting at once on one PostgreSQL registry."""

from __future__ import annotations

import multiprocessing as mp
import random
from pathlib import Path

import pytest
import sqlalchemy as sa

from modelfab.data import import_dataset
from modelfab.demo.synth import churn_frame
from modelfab.factory import produce
from modelfab.iterate.decisions import DecisionLog
from modelfab.settings import Settings
from modelfab.store import Workspace
from modelfab.store import schema as t
from tests.iterate.conftest import make_recipe

PROCS = 4
SITES = 3
PROMOTES = 6


def _producer(home: str, url: str, worker: int) -> None:
    ws = Workspace.open(Settings(home=Path(home), database_url=url))
    data = Path(home) / f"churn-{worker}.csv"
    churn_frame(sites=SITES, rows_per_site=300, seed=100 + worker, tiny_sites=0).to_csv(data, index=False)
    dataset, _ = import_dataset(ws, "churn", data)
    report = produce(ws, make_recipe(), dataset=dataset, workers=1)
    assert report.failed == 0, report.failures
    rng = random.Random(worker)
    log = DecisionLog(ws.registry)
    names = ws.registry.model_names()
    for i in range(PROMOTES):
        name = rng.choice(names)
        latest = ws.registry.resolve(name, "latest")
        version = rng.randint(1, latest)
        if i % 2:
            ws.registry.set_alias(name, "champion", version, actor=f"w{worker}", reason="test")
        else:
            log.promote(name, version, f"promoted by w{worker}", actor=f"w{worker}")
    ws.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_four_processes_produce_and_promote_on_one_postgresql_registry(
    tmp_path: Path, pg_settings: Settings
) -> None:
    url = pg_settings.database_url
    assert url is not None
    Workspace.open(pg_settings).close()  # migrate once up front
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_producer, args=(str(pg_settings.home), url, i)) for i in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    ws = Workspace.open(pg_settings)
    reg = ws.registry
    names = reg.model_names()
    assert len(names) == SITES
    versions = reg.list_versions(all_versions=True, limit=1000)
    for name in names:
        # Each process's run made one version of every model: numbered 1..4, none twice, none lost.
        assert sorted(v.version for v in versions if v.name == name) == list(range(1, PROCS + 1))
        history = reg.alias_history(name, "champion")
        assert [e.previous for e in history[1:]] == [e.version for e in history[:-1]]  # no lost move
        assert reg.resolve(name) == history[-1].version
    assert sum(len(reg.alias_history(n, "champion")) for n in names) >= PROCS  # the runs' own moves
    runs = reg.list_runs()
    assert len(runs) == PROCS and {r.status for r in runs} == {"done"}
    assert all(r.counts == {"done": SITES} for r in runs)
    with ws.engine.connect() as conn:
        a, v = t.aliases, t.model_versions
        dangling = conn.execute(
            sa.select(sa.func.count())
            .select_from(a)
            .outerjoin(v, sa.and_(v.c.tenant == a.c.tenant, v.c.name == a.c.name, v.c.version == a.c.version))
            .where(v.c.version.is_(None))
        ).scalar()
        assert dangling == 0
    # The foreign key itself refuses an alias to a missing version, whatever code writes it.
    with pytest.raises(sa.exc.IntegrityError, match="fk_aliases_version"), ws.engine.begin() as conn:
        conn.execute(
            sa.insert(t.aliases).values(
                tenant="default", name=names[0], alias="ghost", version=99, updated_at=runs[0].created_at
            )
        )
    ws.close()
