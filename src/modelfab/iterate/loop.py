"""The iteration loop: watch each champion, retrain what decayed, gate, trial, then promote or roll back.

A pass derives every model's phase from the database (a trial running, a challenger awaiting its gate, or
plain watching), so a loop restarted after a crash carries on where the recorded state says it was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelfab.iterate.decisions import CHALLENGER, DecisionLog, DecisionRecord, Deployment
from modelfab.iterate.leader import Leadership
from modelfab.iterate.monitor import ProfileCache, VersionReport, online_metric, watch_versions
from modelfab.iterate.policy import (
    Verdict,
    WatchEvidence,
    canary_verdict,
    gate_verdict,
    watch_verdict,
)
from modelfab.iterate.retrain import build_dataset, judge_mask, offline_metric, traffic_frame
from modelfab.iterate.window import labelled_rows, trial_rows
from modelfab.recipe import IterateSpec, Recipe
from modelfab.store import ModelVersion, Workspace
from modelfab.store.registry import CHAMPION
from modelfab.traffic.index import PredictionIndex
from modelfab.traffic.watch import save_snapshots
from modelfab.units import parse_duration

__all__ = ["IterationLoop", "PassReport"]

log = logging.getLogger("modelfab.iterate")
STEPS = ("retrain", "reject", "canary", "promote", "rollback")


@dataclass
class PassReport:
    seconds: float = 0.0
    indexed: int = 0
    watched: int = 0
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (model, action, reason)
    standby: list[str] = field(default_factory=list)  # recipes another loop process leads

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a[1] == action)


@dataclass
class _Models:
    champion: dict[str, ModelVersion]
    challenger: dict[str, ModelVersion]
    versions: dict[tuple[str, int], ModelVersion]


class IterationLoop:
    """One loop over the models of some recipes (each needs an ``iterate:`` section)."""

    def __init__(
        self,
        ws: Workspace,
        recipes: Sequence[tuple[Recipe, str]],
        *,
        workers: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ws = ws
        self.recipes = [(r, f) for r, f in recipes if r.iterate is not None]
        self.workers = workers
        self.clock = clock
        self.log = DecisionLog(ws.registry)
        self.index = PredictionIndex(ws.engine, ws.settings.home, ws.registry.tenant)
        self.profiles = ProfileCache(ws)
        # One loop process acts on a recipe at a time; run_forever keeps the lead between passes.
        self.leader = Leadership(ws.engine, ws.registry.tenant, ws.settings.home)
        self._keep_lead = False

    # ------------------------------------------------------------------ driving
    def run_once(self) -> PassReport:
        started = time.monotonic()
        report = PassReport(indexed=self.index.sync())
        try:
            for recipe, file in self.recipes:
                assert recipe.iterate is not None
                if not self.leader.hold(recipe.name):
                    report.standby.append(recipe.name)
                    continue
                self._pass(recipe, file, recipe.iterate, report)
        finally:
            if not self._keep_lead:
                self.leader.release()
        report.seconds = time.monotonic() - started
        return report

    def run_forever(
        self,
        interval: float,
        stop: threading.Event | None = None,
        on_pass: Callable[[PassReport], None] | None = None,
    ) -> None:
        stop = stop or threading.Event()
        self._keep_lead = True
        try:
            while not stop.is_set():
                try:
                    report = self.run_once()
                    if on_pass is not None:
                        on_pass(report)
                except Exception:  # one bad pass must not end the service; the next one retries
                    log.exception("iteration pass failed")
                stop.wait(interval)
        finally:
            self._keep_lead = False
            self.leader.release()

    # ------------------------------------------------------------------ one recipe
    def _pass(self, recipe: Recipe, file: str, spec: IterateSpec, report: PassReport) -> None:
        models = self._models(recipe)
        names = sorted(models.champion)
        deployments = self.log.deployments()
        last_step = self.log.latest(names, STEPS)
        last_any = self.log.latest(names)
        watching: list[ModelVersion] = []
        for name in names:
            dep = deployments.get(name)
            step = last_step.get(name)
            if dep is not None:
                self._judge_trial(spec, models, dep, report)
            elif name in models.challenger and step is not None and step.action == "retrain":
                self._gate(spec, models, name, step.trigger, report)
            else:
                watching.append(models.champion[name])
        if not watching:
            return
        reports = watch_versions(self.ws, watching, spec.window, self.profiles, spec.since(self.clock()))
        save_snapshots(self.ws.engine, self.ws.registry.tenant, reports.values())
        report.watched += len(watching)
        cooldown = parse_duration(spec.cooldown)
        now = self.clock()
        todo: list[tuple[ModelVersion, Verdict, VersionReport]] = []
        for mv in watching:
            vr = reports[(mv.name, mv.version)]
            step = last_step.get(mv.name)
            since = None if step is None else now - step.time.timestamp()
            ev = WatchEvidence(
                mv.metric or recipe.metric,
                mv.score,
                vr.online,
                vr.labelled,
                vr.rows,
                vr.max_psi,
                vr.worst_feature,
                self._new_labels(spec, mv.name, last_step.get(mv.name)),
            )
            verdict = watch_verdict(spec, ev, since, cooldown)
            if verdict.action == "retrain":
                todo.append((mv, verdict, vr))
            elif verdict.action == "hold":
                self._hold(mv, verdict, vr, last_any.get(mv.name), report)
        if todo:
            self._retrain(recipe, file, spec, todo, report)

    def _models(self, recipe: Recipe) -> _Models:
        versions = self.ws.registry.list_versions(recipe=recipe.name, all_versions=True, limit=10**7)
        out = _Models({}, {}, {})
        for v in versions:
            out.versions[(v.name, v.version)] = v
            if CHAMPION in v.aliases:
                out.champion[v.name] = v
            if CHALLENGER in v.aliases:
                out.challenger[v.name] = v
        return out

    def _new_labels(self, spec: IterateSpec, name: str, step: DecisionRecord | None) -> int:
        if spec.triggers.new_labels is None:
            return 0
        import sqlalchemy as sa

        from modelfab.store import schema as t

        p = t.prediction_rows
        since = 0.0 if step is None else step.time.timestamp()
        q = sa.select(sa.func.count()).where(
            p.c.tenant == self.ws.registry.tenant, p.c.model == name, p.c.labelled_at > since
        )
        with self.ws.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def _hold(
        self,
        mv: ModelVersion,
        verdict: Verdict,
        vr: VersionReport,
        last: DecisionRecord | None,
        report: PassReport,
    ) -> None:
        if last is not None and last.action == "hold" and last.trigger == verdict.trigger:
            return  # the same hold every pass would bury the history; one line says it
        self.log.record(
            mv.name,
            "hold",
            verdict.reason,
            trigger=verdict.trigger,
            version=mv.version,
            champion=mv.version,
            evidence=vr.to_json(),
        )
        report.actions.append((mv.name, "hold", verdict.reason))

    # ------------------------------------------------------------------ retrain
    def _retrain(
        self,
        recipe: Recipe,
        file: str,
        spec: IterateSpec,
        todo: list[tuple[ModelVersion, Verdict, VersionReport]],
        report: PassReport,
    ) -> None:
        from modelfab.data.datasets import load_dataset
        from modelfab.factory import produce

        base = self.ws.registry.get_dataset(recipe.dataset_name)
        columns = list(load_dataset(self.ws, base).columns)
        last_retrain = self.log.latest([mv.name for mv, _, _ in todo], ["retrain"])
        frames, added, until, replace = [], {}, {}, []
        for mv, verdict, _ in todo:
            prev = last_retrain.get(mv.name)
            after = None if prev is None else prev.evidence.get("traffic_until")
            since = spec.since(self.clock())
            if since is not None:
                after = since if after is None else max(after, since)
            rows = labelled_rows(self.ws.engine, self.ws.registry.tenant, mv.name, spec.window, after)
            train = rows.take(~judge_mask(rows))
            frames.append(traffic_frame(recipe, columns, mv.partition, train))
            added[mv.name] = len(train)
            # Drift and a metric drop say the partition's world changed: its old rows would teach the
            # challenger the behaviour that no longer holds, so recent traffic replaces them (when there
            # is enough of it). ``new_labels`` only adds data to an unchanged world.
            if verdict.trigger != "new_labels" and mv.partition is not None and len(train) >= recipe.min_rows:
                replace.append(mv.partition)
            until[mv.name] = float(rows.predicted_at.max()) if len(rows) else after
        dataset = build_dataset(self.ws, recipe, frames, replace)
        keys = [mv.name.removeprefix(f"{recipe.name}.") for mv, _, _ in todo]
        run = produce(
            self.ws,
            recipe,
            recipe_file=file,
            dataset=dataset,
            only=keys,
            alias=CHALLENGER,
            workers=self.workers,
        )
        fresh = self._models(recipe)
        for mv, verdict, vr in todo:
            ch = fresh.challenger.get(mv.name)
            new = ch if ch is not None and ch.run_id == run.run_id else None
            evidence = {
                **vr.to_json(),
                "dataset": dataset.ref,
                "run_id": run.run_id,
                "traffic_rows": added[mv.name],
                "traffic_until": until[mv.name],
                "holdout_score": None if new is None else new.score,
            }
            how = "replacing its older rows" if mv.partition in replace else "added to its training rows"
            reason = (
                f"{verdict.reason}; retrained on {dataset.ref} ({added[mv.name]} labelled traffic rows {how})"
            )
            self.log.record(
                mv.name,
                "retrain",
                reason,
                trigger=verdict.trigger,
                version=None if new is None else new.version,
                champion=mv.version,
                challenger=None if new is None else new.version,
                evidence=evidence,
            )
            report.actions.append((mv.name, "retrain", reason))
            if new is None:
                why = _failure(run, mv.partition) or "the new version did not pass the recipe's gate"
                self.log.reject(mv.name, None, mv.version, f"no challenger: {why}", {}, verdict.trigger)
                report.actions.append((mv.name, "reject", why))
            else:
                self._gate(spec, fresh, mv.name, verdict.trigger, report)

    # ------------------------------------------------------------------ gate
    def _gate(
        self, spec: IterateSpec, models: _Models, name: str, trigger: str | None, report: PassReport
    ) -> None:
        champion, challenger = models.champion[name], models.challenger[name]
        rows = labelled_rows(
            self.ws.engine, self.ws.registry.tenant, name, spec.window, spec.since(self.clock())
        )
        judge = rows.take(judge_mask(rows))
        metric = champion.metric or ""
        verdict = gate_verdict(
            spec,
            metric,
            offline_metric(self.ws, challenger, judge),
            offline_metric(self.ws, champion, judge),
            len(judge),
        )
        if verdict.action == "hold":
            return  # waits for more labels; the retrain decision already says why it exists
        if verdict.action == "canary":
            mode = "shadow" if spec.shadow else "canary"
            reason = (
                f"{verdict.reason}; {'shadow trial' if spec.shadow else f'canary at {spec.canary.share:.0%}'}"
            )
            self.log.start_trial(
                name, mode, challenger.version, champion.version, spec.canary.share, reason, verdict.evidence
            )
            report.actions.append((name, "canary", reason))
        else:
            self.log.reject(
                name, challenger.version, champion.version, verdict.reason, verdict.evidence, trigger
            )
            report.actions.append((name, "reject", verdict.reason))

    # ------------------------------------------------------------------ trial
    def _judge_trial(self, spec: IterateSpec, models: _Models, dep: Deployment, report: PassReport) -> None:
        rows = trial_rows(self.ws.engine, self.ws.registry.tenant, dep.name, dep.started_at.timestamp())
        champion_version = dep.champion if dep.champion is not None else models.champion[dep.name].version
        challenger_mv = models.versions.get((dep.name, dep.version))
        champion_mv = models.versions.get((dep.name, champion_version))
        if challenger_mv is None or champion_mv is None:
            return
        shadow_side = dep.mode == "shadow"
        ch_rows = rows.take((rows.version == dep.version) & (rows.shadow == shadow_side))
        champ_rows = rows.take((rows.version == champion_version) & ~rows.shadow)
        metric = champion_mv.metric or ""
        verdict = canary_verdict(
            spec,
            metric,
            online_metric(challenger_mv, ch_rows),
            len(ch_rows),
            online_metric(champion_mv, champ_rows),
            len(champ_rows),
        )
        if verdict.action == "promote":
            self.log.promote(dep.name, dep.version, verdict.reason, verdict.evidence)
        elif verdict.action == "rollback":
            self.log.rollback(dep.name, verdict.reason, verdict.evidence)
        else:
            return
        report.actions.append((dep.name, verdict.action, verdict.reason))


def _failure(run: Any, partition: str | None) -> str | None:
    for part, why in getattr(run, "failures", []):
        if part == partition:
            return str(why)
    return None
