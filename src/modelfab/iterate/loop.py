"""The iteration loop: watch each champion, retrain what decayed, gate, trial, then promote or roll back.

A pass derives every model's phase from the database (a trial running, a challenger awaiting its gate, or
plain watching), so a loop restarted after a crash carries on where the recorded state says it was.

A failure while watching, retraining, gating or trialling one model is that model's alone
(:class:`~modelfab.iterate.faults.Faults`): recorded in its history, the model backs off, the others carry on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from modelfab.iterate.decisions import CHALLENGER, DecisionLog, DecisionRecord, Deployment
from modelfab.iterate.faults import Faults, describe
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

RETENTION_EVERY_S = 900.0  # the long-running loop applies retention this often
log = logging.getLogger("modelfab.iterate")
STEPS = ("retrain", "reject", "canary", "promote", "rollback")


@dataclass
class PassReport:
    seconds: float = 0.0
    indexed: int = 0
    watched: int = 0
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (model, action, reason)
    standby: list[str] = field(default_factory=list)  # recipes another loop process leads
    backing_off: list[str] = field(default_factory=list)  # models sitting out this pass after failing

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a[1] == action)


@dataclass
class _Retrain:
    """One model's share of a retraining run: why, and the labelled traffic it adds."""

    mv: ModelVersion
    verdict: Verdict
    vr: VersionReport
    frame: Any
    added: int
    until: float | None
    replace: bool


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
        retention_every_s: float = RETENTION_EVERY_S,
    ) -> None:
        self.ws = ws
        self.retention_every_s = retention_every_s
        self.recipes = [(r, f) for r, f in recipes if r.iterate is not None]
        self.workers = workers
        self.clock = clock
        self.log = DecisionLog(ws.registry)
        self.index = PredictionIndex.for_settings(ws.engine, ws.settings)
        self.profiles = ProfileCache(ws)
        # One loop process acts on a recipe at a time; run_forever keeps the lead between passes.
        self.leader = Leadership(ws.engine, ws.registry.tenant, ws.settings.home)
        self._keep_lead = False
        self.faults = Faults(self.log)

    # ------------------------------------------------------------------ driving
    def run_once(self) -> PassReport:
        started = time.monotonic()
        report = PassReport(indexed=self.index.sync())
        self.faults.next_pass()
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
        retained_at = -math.inf
        try:
            while not stop.is_set():
                try:
                    report = self.run_once()
                    if on_pass is not None:
                        on_pass(report)
                except Exception as exc:  # one bad pass must not end the service; the next one retries
                    log.warning("iteration pass failed: %s", describe(exc))
                    log.debug("at\n%s", "".join(traceback.format_tb(exc.__traceback__)))
                if time.monotonic() - retained_at >= self.retention_every_s:
                    retained_at = time.monotonic()
                    self._retain()
                stop.wait(interval)
        finally:
            self._keep_lead = False
            self.leader.release()

    def _retain(self) -> None:
        """Prediction logs, indexed rows and retrained dataset versions past their retention go (see
        :mod:`modelfab.traffic.retention`); a failure waits for the next round."""
        from modelfab.traffic.retention import run_retention

        try:
            run_retention(self.ws)
        except Exception as exc:
            log.warning("retention pass failed: %s", describe(exc))

    # ------------------------------------------------------------------ one recipe
    def _pass(self, recipe: Recipe, file: str, spec: IterateSpec, report: PassReport) -> None:
        models = self._models(recipe)
        names: list[str] = []
        for name in sorted(models.champion):
            (report.backing_off if self.faults.waiting(name) else names).append(name)
        self._models_pass(recipe, file, spec, models, names, report)
        self.faults.settle(names)

    def _models_pass(
        self,
        recipe: Recipe,
        file: str,
        spec: IterateSpec,
        models: _Models,
        names: list[str],
        report: PassReport,
    ) -> None:
        deployments = self.log.deployments()
        last_step = self.log.latest(names, STEPS)
        last_any = self.log.latest(names)
        watching: list[ModelVersion] = []
        for name in names:
            dep = deployments.get(name)
            step = last_step.get(name)
            if dep is not None:
                with self.faults.guard(name, "trial", report.actions):
                    self._judge_trial(spec, models, dep, report)
            elif name in models.challenger and step is not None and step.action == "retrain":
                with self.faults.guard(name, "gate", report.actions):
                    self._gate(spec, models, name, step.trigger, report)
            else:
                watching.append(models.champion[name])
        if not watching:
            return
        since = spec.since(self.clock())
        reports: dict[tuple[str, int], VersionReport] = {}
        for _, part in self.faults.isolated(
            watching,
            lambda mv: mv.name,
            lambda batch: watch_versions(self.ws, batch, spec.window, self.profiles, since),
            "watch",
            report.actions,
        ):
            reports.update(part)
        watching = [mv for mv in watching if (mv.name, mv.version) in reports]
        save_snapshots(self.ws.engine, self.ws.registry.tenant, reports.values())
        report.watched += len(watching)
        cooldown = parse_duration(spec.cooldown)
        now = self.clock()
        todo: list[tuple[ModelVersion, Verdict, VersionReport]] = []
        for mv in watching:
            with self.faults.guard(mv.name, "watch", report.actions):
                verdict, vr = self._watch_verdict(recipe, spec, mv, reports, last_step, now, cooldown)
                if verdict.action == "retrain":
                    todo.append((mv, verdict, vr))
                elif verdict.action == "hold":
                    self._hold(mv, verdict, vr, last_any.get(mv.name), report)
        if todo:
            self._retrain(recipe, file, spec, todo, report)

    def _watch_verdict(
        self,
        recipe: Recipe,
        spec: IterateSpec,
        mv: ModelVersion,
        reports: dict[tuple[str, int], VersionReport],
        last_step: dict[str, DecisionRecord],
        now: float,
        cooldown: float,
    ) -> tuple[Verdict, VersionReport]:
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
        return watch_verdict(spec, ev, since, cooldown), vr

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

        try:
            base = self.ws.registry.get_dataset(recipe.dataset_name)
            columns = list(load_dataset(self.ws, base).columns)
            last_retrain = self.log.latest([mv.name for mv, _, _ in todo], ["retrain"])
        except Exception as exc:
            for mv, _, _ in todo:
                self.faults.failed(mv.name, "retrain", exc, report.actions)
            return
        prepared: list[_Retrain] = []
        for mv, verdict, vr in todo:
            with self.faults.guard(mv.name, "retrain", report.actions):
                prepared.append(self._prepare(recipe, spec, columns, mv, verdict, vr, last_retrain))
        for batch, (dataset, run) in self.faults.isolated(
            prepared, lambda r: r.mv.name, lambda b: self._produce(recipe, file, b), "retrain", report.actions
        ):
            fresh = self._models(recipe)
            for item in batch:
                with self.faults.guard(item.mv.name, "retrain", report.actions):
                    self._record_retrain(spec, fresh, item, dataset, run, report)

    def _prepare(
        self,
        recipe: Recipe,
        spec: IterateSpec,
        columns: list[str],
        mv: ModelVersion,
        verdict: Verdict,
        vr: VersionReport,
        last_retrain: dict[str, DecisionRecord],
    ) -> _Retrain:
        prev = last_retrain.get(mv.name)
        after = None if prev is None else prev.evidence.get("traffic_until")
        since = spec.since(self.clock())
        if since is not None:
            after = since if after is None else max(after, since)
        rows = labelled_rows(self.ws.engine, self.ws.registry.tenant, mv.name, spec.window, after)
        train = rows.take(~judge_mask(rows))
        # Drift and a metric drop say the partition's world changed: its old rows would teach the
        # challenger the behaviour that no longer holds, so recent traffic replaces them (when there
        # is enough of it). ``new_labels`` only adds data to an unchanged world.
        replace = (
            verdict.trigger != "new_labels" and mv.partition is not None and len(train) >= recipe.min_rows
        )
        return _Retrain(
            mv,
            verdict,
            vr,
            traffic_frame(recipe, columns, mv.partition, train),
            len(train),
            float(rows.predicted_at.max()) if len(rows) else after,
            replace,
        )

    def _produce(self, recipe: Recipe, file: str, batch: list[_Retrain]) -> tuple[Any, Any]:
        from modelfab.factory import produce

        replace = [r.mv.partition for r in batch if r.replace and r.mv.partition is not None]
        dataset = build_dataset(self.ws, recipe, [r.frame for r in batch], replace)
        run = produce(
            self.ws,
            recipe,
            recipe_file=file,
            dataset=dataset,
            only=[r.mv.name.removeprefix(f"{recipe.name}.") for r in batch],
            alias=CHALLENGER,
            workers=self.workers,
        )
        return dataset, run

    def _record_retrain(
        self, spec: IterateSpec, fresh: _Models, item: _Retrain, dataset: Any, run: Any, report: PassReport
    ) -> None:
        mv, verdict = item.mv, item.verdict
        ch = fresh.challenger.get(mv.name)
        new = ch if ch is not None and ch.run_id == run.run_id else None
        evidence = {
            **item.vr.to_json(),
            "dataset": dataset.ref,
            "run_id": run.run_id,
            "traffic_rows": item.added,
            "traffic_until": item.until,
            "holdout_score": None if new is None else new.score,
        }
        how = "replacing its older rows" if item.replace else "added to its training rows"
        reason = f"{verdict.reason}; retrained on {dataset.ref} ({item.added} labelled traffic rows {how})"
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
            self.clock() - dep.started_at.timestamp(),
        )
        if verdict.action == "promote":
            self.log.promote(dep.name, dep.version, verdict.reason, verdict.evidence, trial=dep)
        elif verdict.action == "rollback":
            self.log.rollback(dep.name, verdict.reason, verdict.evidence, trial=dep, trigger=verdict.trigger)
        else:
            return
        report.actions.append((dep.name, verdict.action, verdict.reason))


def _failure(run: Any, partition: str | None) -> str | None:
    for part, why in getattr(run, "failures", []):
        if part == partition:
            return str(why)
    return None
