"""Retention: prediction data kept for a bounded time, so a server and its loop run for months on a
bounded disk.

One pass (:func:`run_retention`, what ``modelfab retention run`` and the loop call) does three things:

* deletes this home's prediction log segments whose last write is older than the retention and that are
  fully indexed (a torn last line, never answered, does not count as unindexed); a segment the index has
  not reached is kept however old it is, so no logged prediction is lost before it is indexed;
* deletes indexed prediction rows predicted before the retention, in batches of :data:`DELETE_BATCH` per
  transaction, one model version at a time (the index on model, version, time finds them). Rows of a
  model under a canary or shadow trial predicted since the trial began are kept until it ends: the trial
  is judged on them. Feedback for a deleted row is answered as an unknown id;
* with ``dataset_keep`` set, prunes every dataset to its newest versions (see :mod:`modelfab.data.prune`).

Segments go no sooner than :data:`SEGMENT_GRACE_S` after their last write, whatever the retention: a
writer leaves a segment after ``PredictionLog.segment_age`` (an hour), so it never appends to a deleted one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from modelfab.store import Workspace
from modelfab.store import schema as t
from modelfab.store.db import write_tx
from modelfab.store.sqlutil import aware
from modelfab.traffic.index import SUFFIX, source_id
from modelfab.traffic.predlog import SEGMENT_AGE_S

__all__ = ["RetentionReport", "delete_rows", "delete_segments", "run_retention"]

log = logging.getLogger("modelfab.traffic")

DELETE_BATCH = 5000
SEGMENT_GRACE_S = 2 * SEGMENT_AGE_S


@dataclass
class RetentionReport:
    segments_deleted: int = 0
    segment_bytes_freed: int = 0
    segments_kept_unindexed: int = 0
    rows_deleted: int = 0
    datasets: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "segments_deleted": self.segments_deleted,
            "segment_bytes_freed": self.segment_bytes_freed,
            "segments_kept_unindexed": self.segments_kept_unindexed,
            "rows_deleted": self.rows_deleted,
            "datasets": self.datasets,
        }


def _indexed(path: Path, size: int, offset: int) -> bool:
    if offset >= size:
        return True
    with path.open("rb") as fh:  # what is left after the offset: only a torn line, or records?
        fh.seek(offset)
        return b"\n" not in fh.read(size - offset)


def delete_segments(engine: Engine, home: Path, cutoff: float, report: RetentionReport) -> None:
    """Delete the fully indexed segments of ``home`` last written before ``cutoff`` (epoch seconds)."""
    folder = Path(home) / "predictions"
    if not folder.is_dir():
        return
    o = t.predlog_offsets
    source = source_id(Path(home))
    with engine.connect() as conn:
        offsets = {
            r.file: int(r.byte_offset)
            for r in conn.execute(sa.select(o.c.file, o.c.byte_offset).where(o.c.source == source))
        }
    gone = []
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        stat = path.stat()
        if stat.st_mtime >= cutoff:
            continue
        if not _indexed(path, stat.st_size, offsets.get(path.name, 0)):
            report.segments_kept_unindexed += 1
            continue
        # The file before its offset row: a crash in between re-indexes nothing (the file is gone).
        path.unlink()
        gone.append(path.name)
        report.segments_deleted += 1
        report.segment_bytes_freed += stat.st_size
    orphans = [f for f in offsets if not (folder / f).exists()]
    if orphans:
        with write_tx(engine) as conn:
            conn.execute(sa.delete(o).where(o.c.source == source, o.c.file.in_(orphans)))


def _trial_starts(engine: Engine, tenant: str) -> dict[str, float]:
    d = t.deployments
    with engine.connect() as conn:
        rows = conn.execute(sa.select(d.c.name, d.c.started_at).where(d.c.tenant == tenant)).all()
    return {r.name: aware(r.started_at).timestamp() for r in rows}


def delete_rows(engine: Engine, tenant: str, cutoff: float, *, batch: int = DELETE_BATCH) -> int:
    """Delete prediction rows predicted before ``cutoff``, keeping those of live trials; returns how many."""
    p = t.prediction_rows
    trials = _trial_starts(engine, tenant)
    with engine.connect() as conn:
        versions = conn.execute(
            sa.select(p.c.model, p.c.version)
            .where(p.c.tenant == tenant)
            .group_by(p.c.model, p.c.version)
            .having(sa.func.min(p.c.predicted_at) < cutoff)
        ).all()
    deleted = 0
    key = sa.tuple_(p.c.tenant, p.c.id, p.c.row_index, p.c.shadow)
    for model, version in versions:
        before = min(cutoff, trials.get(model, cutoff))
        while True:
            doomed = (
                sa.select(p.c.tenant, p.c.id, p.c.row_index, p.c.shadow)
                .where(
                    p.c.tenant == tenant,
                    p.c.model == model,
                    p.c.version == version,
                    p.c.predicted_at < before,
                )
                .limit(batch)
            )
            with write_tx(engine) as conn:
                n = conn.execute(sa.delete(p).where(key.in_(doomed))).rowcount
            deleted += n
            if n < batch:
                break
    return deleted


def run_retention(
    ws: Workspace, *, now: float | None = None, grace_s: float = SEGMENT_GRACE_S
) -> RetentionReport:
    """One retention pass over the workspace (see the module docstring). ``now`` and ``grace_s`` are for
    simulations; a pass with the retention ``off`` only prunes datasets."""
    from modelfab.data.prune import prune_dataset

    settings = ws.settings
    report = RetentionReport()
    now = time.time() if now is None else now
    keep_s = settings.retention_seconds
    if keep_s is not None:
        delete_segments(ws.engine, settings.home, now - max(keep_s, grace_s), report)
        report.rows_deleted = delete_rows(ws.engine, ws.registry.tenant, now - keep_s)
    if settings.dataset_keep is not None:
        for name in sorted({d.name for d in ws.registry.list_datasets()}):
            pruned = prune_dataset(ws, name, settings.dataset_keep)
            if pruned.removed:
                report.datasets.append(pruned.to_json())
    log.info(
        "retention: %d segments deleted (%d bytes), %d rows deleted",
        report.segments_deleted,
        report.segment_bytes_freed,
        report.rows_deleted,
    )
    return report
