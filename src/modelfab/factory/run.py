"""A production run: plan, run jobs on an executor, gate, register in batches, resume after a stop."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from modelfab.compute.base import Executor
from modelfab.compute.select import make_executor
from modelfab.compute.slots import RunSlots, check_priority
from modelfab.factory.context import JobContext, KeyRef
from modelfab.factory.evaluate import apply_gate
from modelfab.factory.failures import retryable, worker_crash_reason
from modelfab.factory.job import failed_outcome, train_job
from modelfab.factory.plan import Plan, make_plan
from modelfab.families import TORCH_FAMILIES
from modelfab.recipe import Recipe
from modelfab.store import DatasetVersion, JobOutcome, Workspace

__all__ = ["Progress", "RunReport", "produce"]

FLUSH_EVERY_S = 0.5
FLUSH_EVERY_N = 256


@dataclass
class Progress:
    total: int
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)


@dataclass
class RunReport:
    run_id: str
    recipe: str
    dataset: str
    total: int
    already_done: int
    retried: int = 0
    trained: int = 0
    passed: int = 0
    rejected: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def models_per_minute(self) -> float:
        return 60.0 * self.trained / self.seconds if self.seconds > 0 else 0.0

    @property
    def median_score(self) -> float | None:
        return statistics.median(self.scores) if self.scores else None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "recipe": self.recipe,
            "dataset": self.dataset,
            "total": self.total,
            "already_done": self.already_done,
            "retried": self.retried,
            "trained": self.trained,
            "passed": self.passed,
            "rejected": self.rejected,
            "failed": self.failed,
            "failures": [{"partition": p, "reason": r} for p, r in self.failures],
            "median_score": self.median_score,
            "seconds": round(self.seconds, 3),
            "models_per_minute": round(self.models_per_minute, 1),
            "interrupted": self.interrupted,
        }


def produce(
    ws: Workspace,
    recipe: Recipe,
    *,
    recipe_file: str = "<recipe>",
    executor: Executor | None = None,
    workers: int | None = None,
    priority: str = "normal",
    dataset: DatasetVersion | None = None,
    only: Collection[str] | None = None,
    alias: str = "champion",
    retry_failed: bool = False,
    on_start: Callable[[Progress], None] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> RunReport:
    """Run (or resume) the production run for ``recipe`` on its dataset. Bad partitions are recorded, not
    fatal; Ctrl-C stops after registering what finished (the report says ``interrupted``).

    The iteration loop retrains through here too: ``dataset`` (a newer version), ``only`` (partition
    keys) and ``alias`` (``challenger``: what versions that pass the gate become).

    ``retry_failed`` runs again the jobs of this run that crashed (an exception in training, a worker
    that died); partitions that failed for a data reason (too few rows, one class, ...) stay failed.
    """
    from modelfab import __version__

    check_priority(priority)
    started = time.monotonic()
    plan = make_plan(ws, recipe, recipe_file, dataset=dataset, only=only, alias=alias)
    if recipe.base is not None:
        from modelfab.factory.base import resolve_base

        resolve_base(ws, plan, recipe_file)
    reg = ws.registry
    reg.ensure_run(
        plan.run_id,
        recipe=recipe.name,
        recipe_digest=recipe.digest(),
        dataset=plan.dataset,
        jobs=[(j.key, j.partition) for j in plan.jobs],
        priority=priority,
        spec=recipe.model_dump(mode="json"),
    )
    retried = 0
    if retry_failed:
        crashed = [k for k, reason in reg.failed_jobs(plan.run_id).items() if retryable(reason)]
        retried = reg.requeue_jobs(plan.run_id, crashed)
    states = reg.job_states(plan.run_id)
    todo = [j for j in plan.jobs if states.get(j.key) not in ("done", "failed")]
    report = RunReport(plan.run_id, recipe.name, plan.dataset.ref, len(plan.jobs), len(plan.jobs) - len(todo))
    report.retried = retried
    progress = Progress(total=len(todo))
    if on_start is not None:
        on_start(progress)
    if not todo:
        reg.set_run_status(plan.run_id, "done")
        return report
    if recipe.candidates[0].family in TORCH_FAMILIES:
        from modelfab.factory.torch_job import warm_imports

        warm_imports()
    champions = reg.champion_scores(j.model for j in todo) if recipe.gate.beat_champion_by is not None else {}
    executor = executor or make_executor(
        ws.settings.executor, workers, address=ws.settings.ray_address, resources=recipe.resources
    )
    shared = executor.share(JobContext(plan, ws.artifacts, __version__, KeyRef.of(ws.settings)))
    # Jobs start only on slots claimed in the registry: the tenant's quota holds across every driver,
    # and a higher-priority run's queued jobs go first.
    slots = RunSlots(
        ws.engine, reg.tenant, plan.run_id, priority=priority, workers=executor.workers, jobs=len(todo)
    )
    started_at: dict[str, datetime] = {}

    def admitted() -> Iterator[tuple[Any, ...]]:
        for j in todo:
            started_at[j.key] = slots.submitted(j.key)
            yield shared, j

    buffer: list[JobOutcome] = []
    times: dict[str, tuple[datetime | None, datetime]] = {}

    def flush() -> None:
        reg.record_outcomes(plan.run_id, buffer, alias=plan.alias, times=times)
        buffer.clear()
        times.clear()

    last_flush = time.monotonic()
    clean = False
    try:
        for (_, job), result in executor.run_unordered(train_job, admitted(), slots):
            times[job.key] = (started_at.pop(job.key, None), datetime.now(UTC))
            outcome = result if isinstance(result, JobOutcome) else _crashed(plan, job, result)
            _gate(plan, outcome, champions, report)
            buffer.append(outcome)
            progress.done += 1
            progress.failed += outcome.status == "failed"
            if len(buffer) >= FLUSH_EVERY_N or time.monotonic() - last_flush > FLUSH_EVERY_S:
                flush()
                last_flush = time.monotonic()
            if on_progress is not None:
                on_progress(progress)
        clean = True
    except KeyboardInterrupt:
        report.interrupted = True
    finally:
        executor.shutdown(cancel=not clean)
        if buffer:
            flush()
        slots.release(unfinished=list(started_at))
        reg.set_run_status(plan.run_id, "done" if clean else "interrupted")
        report.seconds = time.monotonic() - started
    return report


def _crashed(plan: Plan, job: Any, exc: BaseException) -> JobOutcome:
    return failed_outcome(plan.recipe.name, job, worker_crash_reason(exc))


def _gate(plan: Plan, o: JobOutcome, champions: dict[str, float | None], report: RunReport) -> None:
    if o.status == "failed":
        report.failed += 1
        report.failures.append((o.partition or o.key, o.reason or "unknown"))
        return
    report.trained += 1
    if o.score is not None:
        report.scores.append(o.score)
    passed, reason = apply_gate(plan.recipe.metric, o.score, plan.recipe.gate, champions.get(o.model))
    o.status, o.reason, o.promote = ("passed" if passed else "rejected"), reason, passed
    report.passed += passed
    report.rejected += not passed
