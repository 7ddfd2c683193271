"""One job: train, search, evaluate, export and store the model of one partition.

Runs in executor workers. The run's :class:`~modelfab.factory.context.JobContext` reaches them once,
through the executor's ``share``: inherited on fork by the local pool, serialized (without the key) to Ray.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import pandas as pd

from modelfab.errors import TrainingError
from modelfab.factory.context import JobContext
from modelfab.factory.evaluate import score_all
from modelfab.factory.export import onnx_signature, to_onnx_bytes, verify_parity
from modelfab.factory.failures import job_crash_reason
from modelfab.factory.fitted import Fitted, prediction_signal
from modelfab.factory.plan import JobSpec, Plan
from modelfab.factory.profile import reference_profile
from modelfab.factory.search import predict, search, split_indices, take
from modelfab.factory.trainers.sklearn import build_pipeline
from modelfab.families import TORCH_FAMILIES
from modelfab.store import JobOutcome

__all__ = ["Fitted", "failed_outcome", "prediction_signal", "train_job"]


def train_job(shared: Any, job: JobSpec) -> JobOutcome:
    """Train one job. ``shared`` is the run's :class:`JobContext` or an executor's handle to it.
    Never raises for a bad partition: the outcome carries the reason instead."""
    from modelfab.compute.local import resolve

    ctx: JobContext = resolve(shared)
    try:
        with warnings.catch_warnings():
            # Non-convergence is judged by the holdout metric and the gate, not by a warning.
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=RuntimeWarning)
            return _train(ctx, job)
    except TrainingError as exc:
        return failed_outcome(ctx.plan.recipe.name, job, exc.message)
    except Exception as exc:  # one odd partition must not stop the others; --retry-failed reruns it
        return failed_outcome(ctx.plan.recipe.name, job, job_crash_reason(exc))


def failed_outcome(recipe: str, job: JobSpec, reason: str) -> JobOutcome:
    """The outcome of a job that produced no model, with the reason users will read."""
    return JobOutcome(
        key=job.key, partition=job.partition, model=job.model, status="failed", reason=reason, recipe=recipe
    )


def _train(ctx: JobContext, job: JobSpec) -> JobOutcome:
    plan, recipe = ctx.plan, ctx.plan.recipe
    x, y = _partition(plan, job)
    if len(y) == 0:
        raise TrainingError(f"target {recipe.target!r} is missing in every row of this partition")
    if len(y) < recipe.min_rows:
        raise TrainingError(
            f"too few rows: {len(y)} labelled rows, the recipe needs min_rows {recipe.min_rows}"
        )
    classes = None
    if recipe.classifies:
        classes = np.unique(y)
        if len(classes) < 2:
            raise TrainingError(
                f"only one class ({classes[0]!r}) in the target; a classifier needs two or more"
            )
    else:
        y = y.astype(float)
    if recipe.candidates[0].family in TORCH_FAMILIES:
        from modelfab.factory.torch_job import fit_torch

        fitted = fit_torch(ctx, x, y, classes)
    else:
        fitted = _fit_sklearn(ctx, x, y, classes)
    return _outcome(ctx, job, fitted)


def _fit_sklearn(ctx: JobContext, x: Any, y: np.ndarray, classes: np.ndarray | None) -> Fitted:
    plan, recipe = ctx.plan, ctx.plan.recipe
    seed = recipe.effective_seed
    train_idx, hold_idx = split_indices(y, recipe.split.holdout, seed, stratify=classes is not None)
    train_x, hold_x, train_y, hold_y = take(x, train_idx), take(x, hold_idx), y[train_idx], y[hold_idx]
    choice = search(recipe, train_x, train_y, plan.numeric, plan.categorical, seed)
    model = build_pipeline(choice.family, recipe.task, choice.params, plan.numeric, plan.categorical, seed)
    model.fit(train_x, train_y)
    pred, proba = predict(model, hold_x, recipe.task)
    metrics = score_all(recipe.task, hold_y, pred, proba, classes)
    onnx_bytes = to_onnx_bytes(model, plan.numeric, plan.categorical, recipe.task)
    parity = verify_parity(onnx_bytes, hold_x, plan.numeric, plan.categorical, recipe.task, (pred, proba))
    metrics.update(parity)
    profile = reference_profile(
        train_x, plan.numeric, plan.categorical, predictions=prediction_signal(pred, proba)
    )
    return Fitted(
        family=choice.family,
        params=choice.params,
        trials=choice.trials,
        best_validation=choice.best_validation,
        metrics=metrics,
        onnx_bytes=onnx_bytes,
        signature=onnx_signature(plan.numeric, plan.categorical, recipe.task, classes),
        profile=profile,
        rows_train=len(train_x),
        rows_holdout=len(hold_x),
    )


def _outcome(ctx: JobContext, job: JobSpec, fitted: Fitted) -> JobOutcome:
    plan, recipe = ctx.plan, ctx.plan.recipe
    metrics = dict(fitted.metrics)
    if fitted.best_validation is not None:
        metrics["validation_" + recipe.metric] = float(fitted.best_validation)
    artifact = ctx.artifacts.put(fitted.onnx_bytes)
    profile_art = ctx.artifacts.put(json.dumps(fitted.profile, sort_keys=True).encode())
    return JobOutcome(
        key=job.key,
        partition=job.partition,
        model=job.model,
        status="trained",
        recipe=recipe.name,
        metric=recipe.metric,
        score=metrics.get(recipe.metric),
        metrics=metrics,
        params={"family": fitted.family, **_jsonable(fitted.params)},
        lineage={
            "recipe": recipe.name,
            "recipe_digest": plan.recipe_digest,
            "dataset": plan.dataset.name,
            "dataset_version": plan.dataset.version,
            "dataset_digest": plan.dataset.digest,
            "partition": job.partition,
            "partition_by": recipe.partition_by,
            "seed": recipe.effective_seed,
            "trials": fitted.trials,
            "rows_train": fitted.rows_train,
            "rows_holdout": fitted.rows_holdout,
            "run_id": plan.run_id,
            "modelfab_version": ctx.version,
            **fitted.lineage,
        },
        signature=fitted.signature,
        serving=recipe.serving.model_dump(),
        artifact_digest=artifact.digest,
        artifact_size=artifact.size,
        profile_digest=profile_art.digest,
    )


def _partition(plan: Plan, job: JobSpec) -> tuple[Any, np.ndarray]:
    """The labelled rows of a partition: a float matrix when every feature is numeric (the plan holds
    it once for all jobs), else a DataFrame with missing categories as the empty string."""
    rows = plan.rows[job.key]
    target = plan.target_values[rows]
    labelled = ~pd.isna(target)
    if plan.recipe.task == "image_classification":
        # Encoded images; the torch trainer decodes them in the worker.
        blobs = plan.frame[plan.recipe.image_column].to_numpy(dtype=object)[rows[labelled]]
        return blobs, np.asarray([str(v) for v in target[labelled]], dtype=object)
    if plan.matrix is not None:
        return plan.matrix[rows[labelled]], target[labelled]
    x = plan.frame.iloc[rows[labelled]][plan.numeric + plan.categorical]
    for c in plan.categorical:
        x[c] = x[c].fillna("").astype(str)
    return x, target[labelled]


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        out[k] = v.item() if hasattr(v, "item") else list(v) if isinstance(v, tuple) else v
    return out
