"""Pruning old dataset versions: the loop imports labelled traffic as a new version on every retrain, so
a long-lived dataset grows without bound unless old versions go.

A version is kept when it is among the newest ``keep``, when the lineage of a live model version (one an
alias points at, or one under a canary or shadow trial) names it, or when a running run trains on it. The
rows go first and the data blob after, and only when no dataset version of any tenant still names it: a
crash in between leaves an unused blob, never a version without its data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from modelfab.errors import ConfigError, NotFoundError
from modelfab.store import Workspace
from modelfab.store import schema as t
from modelfab.store.db import write_tx
from modelfab.store.sqlutil import serialize

__all__ = ["PruneReport", "prune_dataset"]


@dataclass
class PruneReport:
    name: str
    removed: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    live: list[int] = field(default_factory=list)  # kept because a live model or a running run uses them
    freed_bytes: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "removed": self.removed,
            "kept": self.kept,
            "live": self.live,
            "freed_bytes": self.freed_bytes,
        }


def _live_versions(conn: Connection, tenant: str, name: str) -> set[int]:
    v, a, d, r = t.model_versions, t.aliases, t.deployments, t.runs
    aliased = sa.select(v.c.lineage).join(
        a, sa.and_(a.c.tenant == v.c.tenant, a.c.name == v.c.name, a.c.version == v.c.version)
    )
    trialled = sa.select(v.c.lineage).join(
        d, sa.and_(d.c.tenant == v.c.tenant, d.c.name == v.c.name, d.c.version == v.c.version)
    )
    live: set[int] = set()
    for q in (aliased, trialled):
        for (lineage,) in conn.execute(q.where(v.c.tenant == tenant)):
            lineage = lineage or {}
            if lineage.get("dataset") == name and isinstance(lineage.get("dataset_version"), int):
                live.add(lineage["dataset_version"])
    running = sa.select(r.c.dataset_version).where(
        r.c.tenant == tenant, r.c.dataset == name, r.c.status == "running"
    )
    live.update(int(x) for (x,) in conn.execute(running))
    return live


def prune_dataset(ws: Workspace, name: str, keep: int, *, dry_run: bool = False) -> PruneReport:
    """Remove the versions of dataset ``name`` older than its newest ``keep``, except live ones."""
    if keep < 1:
        raise ConfigError(f"--keep {keep}: keep at least the newest version (1 or more)")
    d = t.datasets
    tenant = ws.registry.tenant
    report = PruneReport(name)
    with write_tx(ws.engine) as conn:
        serialize(conn, "dataset", tenant, name)
        versions = conn.execute(
            sa.select(d.c.version, d.c.data_digest)
            .where(d.c.tenant == tenant, d.c.name == name)
            .order_by(d.c.version.desc())
        ).all()
        if not versions:
            raise NotFoundError(f"dataset {name!r} does not exist; see modelfab data ls")
        live = _live_versions(conn, tenant, name)
        doomed: dict[int, str] = {}
        for i, (version, digest) in enumerate(versions):
            if i < keep:
                report.kept.append(version)
            elif version in live:
                report.live.append(version)
            else:
                doomed[version] = digest
        report.removed = sorted(doomed)
        if dry_run or not doomed:
            return report
        conn.execute(sa.delete(d).where(d.c.tenant == tenant, d.c.name == name, d.c.version.in_(doomed)))
    for digest in set(doomed.values()):
        # Checked again just before: an import of identical data may have named the blob meanwhile.
        with ws.engine.connect() as conn:
            named = conn.execute(sa.select(d.c.version).where(d.c.data_digest == digest).limit(1)).first()
        if named is None:
            report.freed_bytes += ws.artifacts.delete(digest)
    return report
