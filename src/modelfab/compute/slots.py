"""Job slots: how concurrent runs sharing one registry divide their tenant's quota, highest priority first.

Every run driver (a ``produce`` process, wherever it runs) keeps one row in ``slot_claims``: how many jobs
it could run now (``wanted``) and how many slots it holds (``claimed``). A short serialized transaction
recomputes its share every ``SYNC_S`` seconds with :func:`grant`, which also renews its heartbeat. Drivers
never start more jobs than they hold, so the tenant's running jobs never exceed its quota. A driver that
finds a higher-priority run waiting stops starting jobs and hands each slot over as its job finishes
(running jobs are never killed). A dead driver's row stops counting once its heartbeat is ``LEASE_S`` old.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from modelfab.errors import ConfigError
from modelfab.store import schema as t
from modelfab.store.db import write_tx
from modelfab.store.sqlutil import aware, serialize

__all__ = ["PRIORITIES", "Claim", "RunSlots", "grant", "set_tenant_quota", "tenant_quota"]

PRIORITIES = {"high": 0, "normal": 1, "low": 2}
SYNC_S = 0.25
LEASE_S = 20.0
UNLIMITED = 1 << 30


@dataclass(frozen=True)
class Claim:
    """One live driver's position: its priority rank (0 is highest), wanted and held slots."""

    rank: int
    wanted: int
    claimed: int


def grant(me: Claim, others: Sequence[Claim], cap: int | None) -> int:
    """How many slots ``me`` may hold: what it wants, within the cap, after what the others hold and
    what every higher-priority driver is still waiting for. Equal priorities are first come, first
    served (a driver keeps what it holds)."""
    if cap is None:
        return me.wanted
    held = sum(o.claimed for o in others)
    waiting = sum(max(0, o.wanted - o.claimed) for o in others if o.rank < me.rank)
    return max(0, min(me.wanted, cap - held - waiting))


def check_priority(priority: str) -> int:
    try:
        return PRIORITIES[priority]
    except KeyError:
        raise ConfigError(f"priority {priority!r} is not allowed; use high, normal or low") from None


def _now() -> datetime:
    return datetime.now(UTC)


class RunSlots:
    """One driver's claim on its tenant's job slots; the executors' ``Slots``.

    ``limit(in_flight)`` answers how many jobs may be in flight now. Between syncs the answer only falls
    (a yielding driver hands back each slot its finishing jobs free), so the rows in the database always
    hold at least what is running.
    """

    poll_s = SYNC_S

    def __init__(
        self,
        engine: Engine,
        tenant: str,
        run_id: str,
        *,
        priority: str = "normal",
        workers: int = 1,
        jobs: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.tenant = tenant
        self.run_id = run_id
        self.priority = priority
        self.rank = check_priority(priority)
        self.workers = max(1, workers)
        self.unsubmitted = jobs
        self.driver = uuid.uuid4().hex
        self.clock = clock
        self._granted = 0
        self._claimed = 0
        self._synced_at = float("-inf")
        self._started: dict[str, datetime] = {}

    def submitted(self, key: str) -> datetime:
        """Note that job ``key`` was handed to the executor; returns its start time."""
        self.unsubmitted -= 1
        ts = _now()
        self._started[key] = ts
        return ts

    def limit(self, in_flight: int) -> int:
        if self.clock() - self._synced_at >= SYNC_S:
            self._sync(in_flight)
        else:
            self._claimed = max(self._granted, min(self._claimed, in_flight))
        return self._claimed

    def release(self, unfinished: Collection[str] = ()) -> None:
        """Give every slot back (the run finished or stopped); jobs handed out but never finished
        (``unfinished``) go back to pending so ``runs ls`` does not show them running."""
        c, j = t.slot_claims, t.jobs
        with write_tx(self.engine) as conn:
            self._mark_started(conn)
            conn.execute(sa.delete(c).where(c.c.tenant == self.tenant, c.c.driver == self.driver))
            if unfinished:
                conn.execute(
                    sa.update(j)
                    .where(
                        j.c.tenant == self.tenant,
                        j.c.run_id == self.run_id,
                        j.c.key == sa.bindparam("u_key"),
                        j.c.status == "running",
                    )
                    .values(status="pending", started_at=None),
                    [{"u_key": k} for k in unfinished],
                )
        self._granted = self._claimed = 0

    def _sync(self, in_flight: int) -> None:
        c = t.slot_claims
        ts = _now()
        wanted = min(self.workers, in_flight + max(0, self.unsubmitted))
        with write_tx(self.engine) as conn:
            serialize(conn, "slots", self.tenant)
            cap = _quota(conn, self.tenant)
            rows = conn.execute(
                sa.select(c.c.driver, c.c.priority, c.c.wanted, c.c.claimed, c.c.heartbeat_at).where(
                    c.c.tenant == self.tenant
                )
            ).all()
            stale = ts - timedelta(seconds=LEASE_S)
            dead = [r.driver for r in rows if r.driver != self.driver and aware(r.heartbeat_at) < stale]
            others = [
                Claim(PRIORITIES.get(r.priority, 1), r.wanted, r.claimed)
                for r in rows
                if r.driver != self.driver and r.driver not in dead
            ]
            if cap is None:  # nothing to share: the executor keeps its own queue full
                self._granted = self._claimed = UNLIMITED
            else:
                self._granted = grant(Claim(self.rank, wanted, self._claimed), others, cap)
                # Slots are never taken back from running jobs: a driver over its grant keeps what runs.
                self._claimed = max(self._granted, min(self._claimed, in_flight))
            if dead:
                conn.execute(sa.delete(c).where(c.c.tenant == self.tenant, c.c.driver.in_(dead)))
            values = {
                "run_id": self.run_id,
                "priority": self.priority,
                "wanted": wanted,
                "claimed": min(self._claimed, max(wanted, in_flight)),
                "heartbeat_at": ts,
            }
            if any(r.driver == self.driver for r in rows):
                conn.execute(
                    sa.update(c).where(c.c.tenant == self.tenant, c.c.driver == self.driver).values(**values)
                )
            else:
                conn.execute(sa.insert(c).values(tenant=self.tenant, driver=self.driver, **values))
            self._mark_started(conn)
        self._synced_at = self.clock()

    def _mark_started(self, conn: Connection) -> None:
        """Show submitted jobs as running (in ``runs ls``); finished ones are left as they are."""
        if not self._started:
            return
        j = t.jobs
        conn.execute(
            sa.update(j)
            .where(
                j.c.tenant == self.tenant,
                j.c.run_id == self.run_id,
                j.c.key == sa.bindparam("s_key"),
                j.c.status == "pending",
            )
            .values(status="running", started_at=sa.bindparam("s_at")),
            [{"s_key": k, "s_at": v} for k, v in self._started.items()],
        )
        self._started.clear()


def _quota(conn: Connection, tenant: str) -> int | None:
    q = t.tenant_quotas
    found = conn.execute(sa.select(q.c.max_jobs).where(q.c.tenant == tenant)).scalar()
    return None if found is None else int(found)


def tenant_quota(engine: Engine, tenant: str) -> int | None:
    """The tenant's cap on concurrently running jobs, or None (no cap)."""
    with engine.connect() as conn:
        return _quota(conn, tenant)


def set_tenant_quota(engine: Engine, tenant: str, max_jobs: int | None) -> None:
    """Cap the tenant's concurrently running jobs at ``max_jobs`` (None removes the cap). Running
    drivers pick the new cap up within a sync; jobs already running finish."""
    if max_jobs is not None and max_jobs < 1:
        raise ConfigError(f"max jobs must be at least 1 (got {max_jobs}); use --clear to remove the cap")
    q = t.tenant_quotas
    with write_tx(engine) as conn:
        serialize(conn, "slots", tenant)
        conn.execute(sa.delete(q).where(q.c.tenant == tenant))
        if max_jobs is not None:
            conn.execute(sa.insert(q).values(tenant=tenant, max_jobs=max_jobs, updated_at=_now()))


def live_claims(engine: Engine, tenant: str) -> Mapping[str, tuple[int, int]]:
    """run id -> (wanted, claimed) over the tenant's live drivers."""
    c = t.slot_claims
    stale = _now() - timedelta(seconds=LEASE_S)
    out: dict[str, tuple[int, int]] = {}
    with engine.connect() as conn:
        for r in conn.execute(sa.select(c).where(c.c.tenant == tenant)):
            if aware(r.heartbeat_at) >= stale:
                w, h = out.get(r.run_id, (0, 0))
                out[r.run_id] = (w + r.wanted, h + r.claimed)
    return out
