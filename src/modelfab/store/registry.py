"""The model registry: datasets, runs and jobs, model versions, aliases with history.

Reads are plain indexed queries; writes happen in short transactions (``write_tx``) and are batched by
callers where volume matters (a production run registers its versions in groups).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from modelfab.errors import ConflictError, NotFoundError
from modelfab.store import schema as t
from modelfab.store.db import write_tx
from modelfab.store.records import AliasEvent, JobOutcome, ModelVersion
from modelfab.store.runs import RunsAndDatasets
from modelfab.store.sqlutil import aware, chunks, insert_ignore, now, serialize

__all__ = ["ALIAS_CHANNEL", "ALIAS_RE", "Registry"]

ALIAS_CHANNEL = "modelfab_aliases"
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
CHAMPION = "champion"


class Registry(RunsAndDatasets):
    """Registry operations for one tenant: model versions and aliases here, datasets and runs in
    :class:`modelfab.store.runs.RunsAndDatasets`."""

    def __init__(self, engine: Engine, tenant: str = "default") -> None:
        self.engine = engine
        self.tenant = tenant

    def record_outcomes(
        self,
        run_id: str | None,
        outcomes: Sequence[JobOutcome],
        alias: str = CHAMPION,
        times: Mapping[str, tuple[datetime | None, datetime]] | None = None,
    ) -> dict[str, int | None]:
        """Register the versions of finished jobs and mark the jobs, all in one transaction. Versions
        whose outcome says ``promote`` get ``alias`` (champion for the factory, challenger for the loop).
        ``times`` gives each job key's (started, finished) times as the driver saw them.

        Idempotent per (run, job): a job registered before (say by a run that was killed after its
        commit) gets its existing version back, never a second one. Returns job key -> version.
        """
        result: dict[str, int | None] = {}
        if not outcomes:
            return result
        ts = now()
        with write_tx(self.engine) as conn:
            already = self._registered_jobs(conn, run_id, [o.key for o in outcomes]) if run_id else {}
            fresh = [o for o in outcomes if o.artifact_digest is not None and o.key not in already]
            latest = self._reserve_versions(conn, fresh, ts)
            version_rows, alias_moves = [], []
            for o in fresh:
                latest[o.model] += 1
                v = latest[o.model]
                result[o.key] = v
                version_rows.append(_version_row(self.tenant, run_id, o, v, ts))
                if o.promote:
                    alias_moves.append((o.model, v))
            if version_rows:
                conn.execute(sa.insert(t.model_versions), version_rows)
                conn.execute(
                    sa.update(t.models)
                    .where(t.models.c.tenant == self.tenant, t.models.c.name == sa.bindparam("m_name"))
                    .values(latest_version=sa.bindparam("m_latest")),
                    [{"m_name": k, "m_latest": v} for k, v in latest.items()],
                )
            if alias_moves:
                self.move_aliases(
                    conn, alias, dict(alias_moves), "factory", f"passed the gate in run {run_id}", ts
                )
            for o in outcomes:
                result.setdefault(o.key, already.get(o.key))
            if run_id:
                conn.execute(
                    sa.update(t.jobs)
                    .where(
                        t.jobs.c.tenant == self.tenant,
                        t.jobs.c.run_id == run_id,
                        t.jobs.c.key == sa.bindparam("j_key"),
                    )
                    .values(
                        status=sa.bindparam("j_status"),
                        reason=sa.bindparam("j_reason"),
                        model=sa.bindparam("j_model"),
                        version=sa.bindparam("j_version"),
                        started_at=sa.func.coalesce(
                            sa.bindparam("j_started", type_=t.jobs.c.started_at.type), t.jobs.c.started_at
                        ),
                        finished_at=sa.bindparam("j_finished"),
                        updated_at=ts,
                    ),
                    [
                        {
                            "j_key": o.key,
                            "j_status": "failed" if o.artifact_digest is None else "done",
                            "j_reason": o.reason,
                            "j_model": o.model,
                            "j_version": result[o.key],
                            "j_started": (times or {}).get(o.key, (None, ts))[0],
                            "j_finished": (times or {}).get(o.key, (None, ts))[1],
                        }
                        for o in outcomes
                    ],
                )
        return result

    def _registered_jobs(self, conn: Connection, run_id: str, keys: list[str]) -> dict[str, int | None]:
        v = t.model_versions
        rows = conn.execute(
            sa.select(v.c.job_key, v.c.version).where(
                v.c.tenant == self.tenant, v.c.run_id == run_id, v.c.job_key.in_(keys)
            )
        ).all()
        return {r.job_key: r.version for r in rows}

    def _reserve_versions(
        self, conn: Connection, fresh: Sequence[JobOutcome], ts: datetime
    ) -> dict[str, int]:
        """Create missing model rows and lock them; returns each model's latest version number."""
        names = sorted({o.model for o in fresh})
        if not names:
            return {}
        m = t.models
        first = {o.model: o for o in fresh}
        insert_ignore(
            conn,
            m,
            [
                {
                    "tenant": self.tenant,
                    "name": n,
                    "recipe": first[n].recipe,
                    "partition": first[n].partition,
                    "latest_version": 0,
                    "created_at": ts,
                }
                for n in names
            ],
        )
        q = sa.select(m.c.name, m.c.latest_version).where(m.c.tenant == self.tenant, m.c.name.in_(names))
        if conn.dialect.name == "postgresql":
            q = q.order_by(m.c.name).with_for_update()
        return {r.name: r.latest_version for r in conn.execute(q)}

    # ---------------------------------------------------------------- models and versions
    def get_version(self, name: str, ref: str | int | None = None) -> ModelVersion:
        """A version by number, by alias, or the champion when ``ref`` is None."""
        v = t.model_versions
        with self.engine.connect() as conn:
            number = self._resolve(conn, name, ref)
            row = conn.execute(
                sa.select(v).where(v.c.tenant == self.tenant, v.c.name == name, v.c.version == number)
            ).first()
            if row is None:
                raise NotFoundError(f"model {name!r} has no version {number}")
            aliases = self._aliases_for(conn, [(name, number)])
        return _model_version(row, aliases.get((name, number), []))

    def resolve(self, name: str, ref: str | int | None = None) -> int:
        """The version number that ``ref`` (number, alias or None for champion) points at."""
        with self.engine.connect() as conn:
            return self._resolve(conn, name, ref)

    def _resolve(self, conn: Connection, name: str, ref: str | int | None) -> int:
        if isinstance(ref, int):
            return ref
        if ref is None or ref == "":
            ref = CHAMPION
        if ref.isdigit():
            return int(ref)
        if ref == "latest":
            latest = conn.execute(
                sa.select(t.models.c.latest_version).where(
                    t.models.c.tenant == self.tenant, t.models.c.name == name
                )
            ).scalar()
            if latest:
                return int(latest)
            raise NotFoundError(f"model {name!r} does not exist; list models with: modelfab models ls")
        a = t.aliases
        found = conn.execute(
            sa.select(a.c.version).where(a.c.tenant == self.tenant, a.c.name == name, a.c.alias == ref)
        ).scalar()
        if found is None:
            exists = conn.execute(
                sa.select(t.models.c.name).where(t.models.c.tenant == self.tenant, t.models.c.name == name)
            ).first()
            if exists is None:
                raise NotFoundError(f"model {name!r} does not exist; list models with: modelfab models ls")
            raise NotFoundError(f"model {name!r} has no alias {ref!r}; see: modelfab models show {name}")
        return int(found)

    def list_versions(
        self,
        recipe: str | None = None,
        all_versions: bool = False,
        limit: int = 100,
        after: tuple[str, int] | None = None,
    ) -> list[ModelVersion]:
        """One page in (name, version) order: the latest version of each model, or every version.

        ``after`` is the (name, version) of the last row of the previous page (keyset pagination, so a
        page costs the same at row 100 and row 100,000).
        """
        v, m = t.model_versions, t.models
        q = sa.select(v).where(v.c.tenant == self.tenant)
        if not all_versions:
            q = q.join(
                m, sa.and_(m.c.tenant == v.c.tenant, m.c.name == v.c.name, m.c.latest_version == v.c.version)
            )
        if recipe is not None:
            if all_versions:
                owned = sa.select(m.c.name).where(m.c.tenant == self.tenant, m.c.recipe == recipe)
                q = q.where(v.c.name.in_(owned))
            else:
                q = q.where(m.c.recipe == recipe)
        if after is not None:
            q = q.where(
                sa.tuple_(v.c.name, v.c.version) > sa.tuple_(sa.literal(after[0]), sa.literal(after[1]))
            )
        q = q.order_by(v.c.name, v.c.version).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
            aliases = self._aliases_for(conn, [(r.name, r.version) for r in rows])
        return [_model_version(r, aliases.get((r.name, r.version), [])) for r in rows]

    def model_names(self, recipe: str | None = None) -> list[str]:
        m = t.models
        q = sa.select(m.c.name).where(m.c.tenant == self.tenant)
        if recipe is not None:
            q = q.where(m.c.recipe == recipe)
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(q.order_by(m.c.name))]

    def champion_scores(self, names: Iterable[str]) -> dict[str, float | None]:
        """The holdout score of each named model's champion (for ``beat_champion_by`` gates)."""
        a, v = t.aliases, t.model_versions
        names = list(names)
        out: dict[str, float | None] = {}
        with self.engine.connect() as conn:
            for chunk in chunks(names, 500):
                q = (
                    sa.select(a.c.name, v.c.score)
                    .join(
                        v, sa.and_(v.c.tenant == a.c.tenant, v.c.name == a.c.name, v.c.version == a.c.version)
                    )
                    .where(a.c.tenant == self.tenant, a.c.alias == CHAMPION, a.c.name.in_(chunk))
                )
                out.update({r.name: r.score for r in conn.execute(q)})
        return out

    def _aliases_for(self, conn: Connection, keys: list[tuple[str, int]]) -> dict[tuple[str, int], list[str]]:
        if not keys:
            return {}
        a = t.aliases
        names = sorted({k[0] for k in keys})
        out: dict[tuple[str, int], list[str]] = {}
        for chunk in chunks(names, 500):
            q = sa.select(a.c.name, a.c.version, a.c.alias).where(
                a.c.tenant == self.tenant, a.c.name.in_(chunk)
            )
            for r in conn.execute(q.order_by(a.c.alias)):
                out.setdefault((r.name, r.version), []).append(r.alias)
        return out

    # ---------------------------------------------------------------- aliases
    def set_alias(
        self, name: str, alias: str, version: int | None, actor: str = "user", reason: str = ""
    ) -> int | None:
        """Point ``alias`` at ``version`` (None removes it); history is kept. Returns the previous version."""
        if not ALIAS_RE.match(alias) or alias == "latest":
            raise ConflictError(
                f"alias {alias!r} is not allowed: use a letter then letters, digits, '-' or '_' "
                "(and not 'latest', which always means the newest version)"
            )
        with write_tx(self.engine) as conn:
            if version is not None:
                v = t.model_versions
                found = conn.execute(
                    sa.select(v.c.version).where(
                        v.c.tenant == self.tenant, v.c.name == name, v.c.version == version
                    )
                ).first()
                if found is None:
                    self._resolve(conn, name, "latest")  # raises a clear 'model does not exist'
                    raise NotFoundError(
                        f"model {name!r} has no version {version}; see: modelfab models show {name}"
                    )
            return self._move_alias(conn, name, alias, version, actor, reason, now())

    def _move_alias(
        self,
        conn: Connection,
        name: str,
        alias: str,
        version: int | None,
        actor: str,
        reason: str,
        ts: datetime,
    ) -> int | None:
        return self.move_aliases(conn, alias, {name: version}, actor, reason, ts)[name]

    def move_aliases(
        self,
        conn: Connection,
        alias: str,
        moves: dict[str, int | None],
        actor: str,
        reason: str,
        ts: datetime,
    ) -> dict[str, int | None]:
        """Point ``alias`` of each named model at its version (None removes it) and record each move, inside
        the caller's write transaction ``conn`` (so a move and what caused it commit together).
        Returns each model's previous version. Statements are batched: a run promotes hundreds at once."""
        a = t.aliases
        names = sorted(moves)
        for name in names:
            serialize(conn, "alias", self.tenant, name, alias)
        previous: dict[str, int | None] = dict.fromkeys(names)
        for chunk in chunks(names, 500):
            q = sa.select(a.c.name, a.c.version).where(
                a.c.tenant == self.tenant, a.c.alias == alias, a.c.name.in_(chunk)
            )
            previous.update({r.name: r.version for r in conn.execute(q)})
        changed = [n for n in names if previous[n] != moves[n]]
        inserts = [n for n in changed if previous[n] is None]
        updates = [n for n in changed if previous[n] is not None and moves[n] is not None]
        deletes = [n for n in changed if moves[n] is None]
        key = sa.and_(a.c.tenant == self.tenant, a.c.alias == alias, a.c.name == sa.bindparam("a_name"))
        if inserts:
            conn.execute(
                sa.insert(a),
                [
                    {"tenant": self.tenant, "name": n, "alias": alias, "version": moves[n], "updated_at": ts}
                    for n in inserts
                ],
            )
        if updates:
            conn.execute(
                sa.update(a).where(key).values(version=sa.bindparam("a_version"), updated_at=ts),
                [{"a_name": n, "a_version": moves[n]} for n in updates],
            )
        if deletes:
            conn.execute(sa.delete(a).where(key), [{"a_name": n} for n in deletes])
        if changed and conn.dialect.name == "postgresql":
            # Delivered at commit to every server LISTENing (modelfab.serve.models.source): alias moves
            # reach them at once instead of at their next poll.
            conn.execute(
                sa.text("SELECT pg_notify(:channel, :tenant)"),
                {"channel": ALIAS_CHANNEL, "tenant": self.tenant},
            )
        if changed:
            conn.execute(
                sa.insert(t.alias_history),
                [
                    {
                        "tenant": self.tenant,
                        "name": n,
                        "alias": alias,
                        "version": moves[n],
                        "previous": previous[n],
                        "actor": actor,
                        "reason": reason,
                        "created_at": ts,
                    }
                    for n in changed
                ],
            )
        return previous

    def alias_history(self, name: str, alias: str | None = None) -> list[AliasEvent]:
        h = t.alias_history
        q = sa.select(h).where(h.c.tenant == self.tenant, h.c.name == name)
        if alias is not None:
            q = q.where(h.c.alias == alias)
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(h.c.id)).all()
            if not rows:
                self._resolve(conn, name, "latest")
        return [
            AliasEvent(r.name, r.alias, r.version, r.previous, r.actor, r.reason, aware(r.created_at))
            for r in rows
        ]

    def count_versions(self) -> int:
        v = t.model_versions
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).where(v.c.tenant == self.tenant)).scalar() or 0
            )


def _version_row(
    tenant: str, run_id: str | None, o: JobOutcome, version: int, ts: datetime
) -> dict[str, Any]:
    return {
        "tenant": tenant,
        "name": o.model,
        "version": version,
        "status": o.status,
        "run_id": run_id,
        "job_key": o.key if run_id else None,
        "metric": o.metric,
        "score": o.score,
        "metrics": o.metrics,
        "params": o.params,
        "lineage": o.lineage,
        "signature": o.signature,
        "serving": o.serving,
        "artifact_digest": o.artifact_digest,
        "artifact_size": o.artifact_size,
        "profile_digest": o.profile_digest,
        "created_at": ts,
    }


def _model_version(r: Row[Any], aliases: list[str]) -> ModelVersion:
    lineage = r.lineage or {}
    return ModelVersion(
        name=r.name,
        version=r.version,
        status=r.status,
        partition=lineage.get("partition"),
        recipe=lineage.get("recipe"),
        run_id=r.run_id,
        metric=r.metric,
        score=r.score,
        metrics=r.metrics or {},
        params=r.params or {},
        lineage=lineage,
        signature=r.signature or {},
        serving=r.serving or {},
        artifact_digest=r.artifact_digest,
        artifact_size=r.artifact_size,
        profile_digest=r.profile_digest,
        created_at=aware(r.created_at),
        aliases=aliases,
    )
