"""Datasets, production runs and their jobs: the registry's bookkeeping around model versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, Row

from modelfab.errors import NotFoundError
from modelfab.store import schema as t
from modelfab.store.db import write_tx
from modelfab.store.records import DatasetVersion, RunSummary
from modelfab.store.sqlutil import aware, now, serialize

__all__ = ["RunsAndDatasets"]


class RunsAndDatasets:
    """Dataset versions and run/job state for one tenant (a base of :class:`Registry`)."""

    engine: Engine
    tenant: str

    # ---------------------------------------------------------------- datasets
    def add_dataset(
        self, name: str, digest: str, data_digest: str, rows: int, columns: list[dict[str, Any]], source: str
    ) -> tuple[DatasetVersion, bool]:
        """Register a dataset version; identical content returns the existing one (created is False)."""
        d = t.datasets
        with write_tx(self.engine) as conn:
            serialize(conn, "dataset", self.tenant, name)
            found = conn.execute(
                sa.select(d).where(d.c.tenant == self.tenant, d.c.name == name, d.c.digest == digest)
            ).first()
            if found is not None:
                return _dataset(found), False
            latest = conn.execute(
                sa.select(sa.func.max(d.c.version)).where(d.c.tenant == self.tenant, d.c.name == name)
            ).scalar()
            made = DatasetVersion(name, (latest or 0) + 1, digest, data_digest, rows, columns, source, now())
            conn.execute(sa.insert(d).values(tenant=self.tenant, **made.__dict__))
        return made, True

    def get_dataset(self, name: str, version: int | None = None) -> DatasetVersion:
        d = t.datasets
        q = sa.select(d).where(d.c.tenant == self.tenant, d.c.name == name)
        q = q.where(d.c.version == version) if version is not None else q.order_by(d.c.version.desc())
        with self.engine.connect() as conn:
            row = conn.execute(q.limit(1)).first()
        if row is None:
            what = f"dataset {name!r}" + (f" version {version}" if version is not None else "")
            raise NotFoundError(f"{what} does not exist; import it with: modelfab data import {name} FILE")
        return _dataset(row)

    def list_datasets(self) -> list[DatasetVersion]:
        d = t.datasets
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(d).where(d.c.tenant == self.tenant).order_by(d.c.name, d.c.version)
            ).all()
        return [_dataset(r) for r in rows]

    # ---------------------------------------------------------------- runs and jobs
    def ensure_run(
        self,
        run_id: str,
        *,
        recipe: str,
        recipe_digest: str,
        dataset: DatasetVersion,
        jobs: Sequence[tuple[str, str | None]],
        priority: str = "normal",
        spec: dict[str, Any] | None = None,
    ) -> bool:
        """Create the run and its jobs unless they exist. Returns True when the run is new.
        ``spec`` is the recipe as run (JSON), kept so the iteration loop can read its policy."""
        ts = now()
        with write_tx(self.engine) as conn:
            serialize(conn, "run", self.tenant, run_id)
            exists = conn.execute(
                sa.select(t.runs.c.id).where(t.runs.c.tenant == self.tenant, t.runs.c.id == run_id)
            ).first()
            if exists is not None:
                return False
            conn.execute(
                sa.insert(t.runs).values(
                    id=run_id,
                    tenant=self.tenant,
                    recipe=recipe,
                    recipe_digest=recipe_digest,
                    dataset=dataset.name,
                    dataset_version=dataset.version,
                    status="running",
                    priority=priority,
                    total=len(jobs),
                    spec=spec,
                    created_at=ts,
                    updated_at=ts,
                )
            )
            if jobs:
                conn.execute(
                    sa.insert(t.jobs),
                    [
                        {
                            "tenant": self.tenant,
                            "run_id": run_id,
                            "key": key,
                            "partition": part,
                            "status": "pending",
                            "updated_at": ts,
                        }
                        for key, part in jobs
                    ],
                )
        return True

    def latest_recipe_specs(self) -> list[dict[str, Any]]:
        """The recipe each recipe name last ran with (newest run per name)."""
        r = t.runs
        newest = (
            sa.select(r.c.recipe, sa.func.max(r.c.created_at).label("at"))
            .where(r.c.tenant == self.tenant, r.c.spec.is_not(None))
            .group_by(r.c.recipe)
            .subquery()
        )
        q = (
            sa.select(r.c.recipe, r.c.spec)
            .join(newest, sa.and_(r.c.recipe == newest.c.recipe, r.c.created_at == newest.c.at))
            .where(r.c.tenant == self.tenant)
            .order_by(r.c.recipe)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        seen: dict[str, dict[str, Any]] = {}
        for row in rows:
            seen.setdefault(row.recipe, row.spec)
        return list(seen.values())

    def job_states(self, run_id: str) -> dict[str, str]:
        j = t.jobs
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(j.c.key, j.c.status).where(j.c.tenant == self.tenant, j.c.run_id == run_id)
            ).all()
        return {r.key: r.status for r in rows}

    def failed_jobs(self, run_id: str) -> dict[str, str | None]:
        """Job key -> recorded reason, for the run's failed jobs."""
        j = t.jobs
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(j.c.key, j.c.reason).where(
                    j.c.tenant == self.tenant, j.c.run_id == run_id, j.c.status == "failed"
                )
            ).all()
        return {r.key: r.reason for r in rows}

    def requeue_jobs(self, run_id: str, keys: Sequence[str]) -> int:
        """Put failed jobs back to pending (their reason cleared) so the run's next driver runs them
        again; the run shows as running. Returns how many were requeued."""
        if not keys:
            return 0
        j = t.jobs
        ts = now()
        moved = 0
        with write_tx(self.engine) as conn:
            for start in range(0, len(keys), 1000):  # bound the IN list's parameters
                moved += conn.execute(
                    sa.update(j)
                    .where(
                        j.c.tenant == self.tenant,
                        j.c.run_id == run_id,
                        j.c.key.in_(keys[start : start + 1000]),
                        j.c.status == "failed",
                    )
                    .values(status="pending", reason=None, started_at=None, finished_at=None, updated_at=ts)
                ).rowcount
            conn.execute(
                sa.update(t.runs)
                .where(t.runs.c.tenant == self.tenant, t.runs.c.id == run_id)
                .values(status="running", updated_at=ts)
            )
        return moved

    def set_run_status(self, run_id: str, status: str) -> None:
        r = t.runs
        with write_tx(self.engine) as conn:
            conn.execute(
                sa.update(r)
                .where(r.c.tenant == self.tenant, r.c.id == run_id)
                .values(status=status, updated_at=now())
            )

    def list_runs(self, limit: int = 100) -> list[RunSummary]:
        r, j = t.runs, t.jobs
        with self.engine.connect() as conn:
            runs = conn.execute(
                sa.select(r).where(r.c.tenant == self.tenant).order_by(r.c.created_at.desc()).limit(limit)
            ).all()
            ids = [x.id for x in runs]
            counts: dict[str, dict[str, int]] = {i: {} for i in ids}
            if ids:
                for row in conn.execute(
                    sa.select(j.c.run_id, j.c.status, sa.func.count())
                    .where(j.c.tenant == self.tenant, j.c.run_id.in_(ids))
                    .group_by(j.c.run_id, j.c.status)
                ):
                    counts[row[0]][row[1]] = int(row[2])
        return [
            RunSummary(
                id=x.id,
                recipe=x.recipe,
                dataset=f"{x.dataset}@{x.dataset_version}",
                status=x.status,
                priority=x.priority,
                total=x.total,
                counts=counts[x.id],
                created_at=aware(x.created_at),
                updated_at=aware(x.updated_at),
            )
            for x in runs
        ]


def _dataset(r: Row[Any]) -> DatasetVersion:
    return DatasetVersion(
        name=r.name,
        version=r.version,
        digest=r.digest,
        data_digest=r.data_digest,
        rows=r.rows,
        columns=r.columns,
        source=r.source,
        created_at=aware(r.created_at),
    )
