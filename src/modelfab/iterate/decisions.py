"""The decision log and the trial (deployment) state, and the steps that change both atomically.

Each step that moves traffic or aliases writes its alias moves, its deployment change and its decision in
one transaction: a loop killed at any point leaves either the whole step or none of it, so there is always
exactly one champion and the history matches the aliases.

Steps on one model take turns (the write transaction plus a per-model ``serialize`` key) and read the state
they act on inside that turn: a person's ``modelfab rollback`` and the loop's promotion of the same model
never interleave. The loop decides from state it read earlier, so its steps name what they expect (the
trial they end, the challenger they judge) and raise :class:`Superseded` when someone changed it since.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from modelfab.errors import ConflictError, NotFoundError
from modelfab.store import Registry
from modelfab.store import schema as t
from modelfab.store.db import write_tx
from modelfab.store.registry import CHAMPION
from modelfab.store.sqlutil import aware, serialize

__all__ = [
    "CHALLENGER",
    "DecisionLog",
    "DecisionRecord",
    "Deployment",
    "Superseded",
]

CHALLENGER = "challenger"
LOOP = "loop"


class Superseded(ConflictError):
    """The loop's step was decided on state that another actor changed before the step ran."""


@dataclass(frozen=True)
class DecisionRecord:
    id: int
    name: str
    time: datetime
    action: str
    trigger: str | None
    version: int | None
    champion: int | None
    challenger: int | None
    evidence: dict[str, Any]
    actor: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time.isoformat(),
            "model": self.name,
            "action": self.action,
            "version": self.version,
            "reason": self.reason,
            "trigger": self.trigger,
            "champion": self.champion,
            "challenger": self.challenger,
            "actor": self.actor,
            "evidence": self.evidence,
        }


@dataclass(frozen=True)
class Deployment:
    name: str
    mode: str  # canary | shadow
    version: int
    champion: int | None
    share: float
    started_at: datetime


class DecisionLog:
    """Reads and writes decisions and deployments of one tenant; moves aliases through the registry."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.engine = registry.engine
        self.tenant = registry.tenant

    # ------------------------------------------------------------------ reads
    def history(self, name: str, limit: int = 10_000) -> list[DecisionRecord]:
        d = t.decisions
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(d).where(d.c.tenant == self.tenant, d.c.name == name).order_by(d.c.id).limit(limit)
            ).all()
        return [_record(r) for r in rows]

    def latest(self, names: Iterable[str], actions: Iterable[str] | None = None) -> dict[str, DecisionRecord]:
        """The newest decision of each named model (optionally among ``actions`` only)."""
        d = t.decisions
        names = sorted(set(names))
        out: dict[str, DecisionRecord] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(names), 500):
                newest = sa.select(sa.func.max(d.c.id)).where(
                    d.c.tenant == self.tenant, d.c.name.in_(names[i : i + 500])
                )
                if actions is not None:
                    newest = newest.where(d.c.action.in_(list(actions)))
                q = sa.select(d).where(d.c.id.in_(newest.group_by(d.c.name).scalar_subquery()))
                out.update({r.name: _record(r) for r in conn.execute(q)})
        return out

    def deployments(self) -> dict[str, Deployment]:
        d = t.deployments
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(d).where(d.c.tenant == self.tenant)).all()
        return {r.name: _deployment(r) for r in rows}

    # ------------------------------------------------------------------ writes
    def record(
        self,
        name: str,
        action: str,
        reason: str,
        *,
        trigger: str | None = None,
        version: int | None = None,
        champion: int | None = None,
        challenger: int | None = None,
        evidence: dict[str, Any] | None = None,
        actor: str = LOOP,
        conn: Connection | None = None,
    ) -> None:
        values = {
            "tenant": self.tenant,
            "name": name,
            "created_at": datetime.now(UTC),
            "action": action,
            "trigger": trigger,
            "version": version,
            "champion": champion,
            "challenger": challenger,
            "evidence": _plain(evidence or {}),
            "actor": actor,
            "reason": reason,
        }
        if conn is not None:
            conn.execute(sa.insert(t.decisions).values(**values))
            return
        with write_tx(self.engine) as c:
            c.execute(sa.insert(t.decisions).values(**values))

    def start_trial(
        self,
        name: str,
        mode: str,
        version: int,
        champion: int | None,
        share: float,
        reason: str,
        evidence: dict[str, Any],
    ) -> None:
        """Put challenger ``version`` on trial (canary share or shadow) and record the ``canary`` decision."""
        with self._turn(name) as conn:
            if self._current(conn, name, CHALLENGER) != version:
                raise Superseded(f"model {name!r}: version {version} is no longer the challenger")
            conn.execute(sa.delete(t.deployments).where(_dep_key(name, self.tenant)))
            conn.execute(
                sa.insert(t.deployments).values(
                    tenant=self.tenant,
                    name=name,
                    mode=mode,
                    version=version,
                    champion=champion,
                    share=1.0 if mode == "shadow" else share,
                    started_at=datetime.now(UTC),
                )
            )
            self.record(
                name,
                "canary",
                reason,
                version=version,
                champion=champion,
                challenger=version,
                evidence={**evidence, "mode": mode, "share": share},
                conn=conn,
            )

    def reject(
        self,
        name: str,
        version: int | None,
        champion: int | None,
        reason: str,
        evidence: dict[str, Any],
        trigger: str | None = None,
    ) -> None:
        """Drop a challenger that failed its gate, with the decision, in one transaction."""
        with self._turn(name) as conn:
            if version is not None and self._current(conn, name, CHALLENGER) != version:
                raise Superseded(f"model {name!r}: version {version} is no longer the challenger")
            self._drop_challenger(conn, name, version, reason)
            self.record(
                name,
                "reject",
                reason,
                trigger=trigger,
                version=version,
                champion=champion,
                challenger=version,
                evidence=evidence,
                conn=conn,
            )

    def promote(
        self,
        name: str,
        version: int,
        reason: str,
        evidence: dict[str, Any] | None = None,
        actor: str = LOOP,
        trial: Deployment | None = None,
    ) -> int | None:
        """Make ``version`` champion, end any trial, record it; one transaction. Returns the old champion.
        With ``trial`` (the loop ending the trial it judged) it raises :class:`Superseded` unless that trial
        is still running."""
        with self._turn(name) as conn:
            self._check_version(conn, name, version)
            if trial is not None:
                self._expect_trial(conn, trial)
            previous = self._move(conn, name, CHAMPION, version, actor, reason)
            self._drop_challenger(conn, name, version, reason, actor)
            conn.execute(sa.delete(t.deployments).where(_dep_key(name, self.tenant)))
            self.record(
                name,
                "promote",
                reason,
                version=version,
                champion=version,
                challenger=version,
                evidence={**(evidence or {}), "previous_champion": previous},
                actor=actor,
                conn=conn,
            )
        return previous

    def rollback(
        self,
        name: str,
        reason: str,
        evidence: dict[str, Any] | None = None,
        actor: str = LOOP,
        trial: Deployment | None = None,
        trigger: str | None = None,
    ) -> int | None:
        """End a trial (the challenger is dropped), or with none running move the champion back to the
        version it replaced. Returns the champion afterwards. With ``trial`` only that trial is ended
        (:class:`Superseded` if it is over)."""
        with self._turn(name) as conn:
            deployment = self._deployment(conn, name)
            if trial is not None:
                self._expect_trial(conn, trial)
            if deployment is not None:
                champion = self._current(conn, name, CHAMPION)
                conn.execute(sa.delete(t.deployments).where(_dep_key(name, self.tenant)))
                self._drop_challenger(conn, name, deployment.version, reason, actor)
                self.record(
                    name,
                    "rollback",
                    reason,
                    trigger=trigger,
                    version=champion,
                    champion=champion,
                    challenger=deployment.version,
                    evidence={**(evidence or {}), "mode": deployment.mode},
                    actor=actor,
                    conn=conn,
                )
                return champion
            current = self._current(conn, name, CHAMPION)
            before = self._previous_champion(conn, name, current)
            if before is None:
                raise ConflictError(
                    f"model {name!r} has no trial running and no earlier champion to roll back to; "
                    f"see: modelfab history {name}"
                )
            self._move(conn, name, CHAMPION, before, actor, reason)
            self.record(
                name,
                "rollback",
                reason,
                trigger=trigger,
                version=before,
                champion=before,
                challenger=current,
                evidence={**(evidence or {}), "replaced": current},
                actor=actor,
                conn=conn,
            )
            return before

    # ------------------------------------------------------------------ helpers
    @contextmanager
    def _turn(self, name: str) -> Iterator[Connection]:
        """A write transaction in which this model's steps take turns; read the state to act on inside."""
        with write_tx(self.engine) as conn:
            serialize(conn, "decision", self.tenant, name)
            yield conn

    def _deployment(self, conn: Connection, name: str) -> Deployment | None:
        row = conn.execute(sa.select(t.deployments).where(_dep_key(name, self.tenant))).first()
        return None if row is None else _deployment(row)

    def _expect_trial(self, conn: Connection, trial: Deployment) -> None:
        now = self._deployment(conn, trial.name)
        if now is None or (now.version, now.started_at) != (trial.version, trial.started_at):
            raise Superseded(
                f"model {trial.name!r}: the trial of version {trial.version} ended or changed meanwhile; "
                f"see: modelfab history {trial.name}"
            )

    def _move(
        self, conn: Connection, name: str, alias: str, version: int | None, actor: str, reason: str
    ) -> int | None:
        # The registry's own alias move (history rows included), inside this step's transaction.
        moved = self.registry.move_aliases(conn, alias, {name: version}, actor, reason, datetime.now(UTC))
        return moved[name]

    def _drop_challenger(
        self, conn: Connection, name: str, version: int | None, reason: str, actor: str = LOOP
    ) -> None:
        current = self._current(conn, name, CHALLENGER)
        if current is not None and (version is None or current == version):
            self._move(conn, name, CHALLENGER, None, actor, reason)

    def _current(self, conn: Connection, name: str, alias: str) -> int | None:
        a = t.aliases
        found = conn.execute(
            sa.select(a.c.version).where(a.c.tenant == self.tenant, a.c.name == name, a.c.alias == alias)
        ).scalar()
        return None if found is None else int(found)

    def _previous_champion(self, conn: Connection, name: str, current: int | None) -> int | None:
        h = t.alias_history
        rows = conn.execute(
            sa.select(h.c.version, h.c.previous)
            .where(h.c.tenant == self.tenant, h.c.name == name, h.c.alias == CHAMPION)
            .order_by(h.c.id.desc())
        ).all()
        for r in rows:
            if r.version == current and r.previous is not None and r.previous != current:
                return int(r.previous)
        return None

    def _check_version(self, conn: Connection, name: str, version: int) -> None:
        v = t.model_versions
        found = conn.execute(
            sa.select(v.c.version).where(v.c.tenant == self.tenant, v.c.name == name, v.c.version == version)
        ).first()
        if found is None:
            raise NotFoundError(f"model {name!r} has no version {version}; see: modelfab models show {name}")


def _dep_key(name: str, tenant: str) -> Any:
    d = t.deployments
    return sa.and_(d.c.tenant == tenant, d.c.name == name)


def _plain(value: Any) -> Any:
    """Evidence as plain JSON (numpy numbers and NaN made safe)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def _record(r: Any) -> DecisionRecord:
    return DecisionRecord(
        id=r.id,
        name=r.name,
        time=aware(r.created_at),
        action=r.action,
        trigger=r.trigger,
        version=r.version,
        champion=r.champion,
        challenger=r.challenger,
        evidence=r.evidence or {},
        actor=r.actor,
        reason=r.reason,
    )


def _deployment(r: Any) -> Deployment:
    return Deployment(r.name, r.mode, int(r.version), r.champion, float(r.share), aware(r.started_at))
