"""``produce(retry_failed=True)``: crashed jobs run again, partitions failed for a data reason stay."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

import modelfab.factory.job as job_module
from modelfab.factory import produce
from modelfab.factory.failures import retryable
from modelfab.recipe import parse_recipe
from modelfab.store import Workspace
from tests.factory.conftest import RECIPE

DATA_REASONS = {"one-class", "tiny", "no-label"}


def crash_good_1(how: str) -> Any:
    real = job_module._train

    def train(ctx: Any, job: Any) -> Any:
        if job.key == "good-1":
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)  # every time: the pool gives up on the job
            raise RuntimeError("disk hiccup")
        return real(ctx, job)

    return train


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("raise", "job failed: RuntimeError: disk hiccup (at "),
        ("kill", "worker failed: the worker process died 3 times while running this job"),
    ],
)
def test_retry_failed_reruns_crashed_jobs_only(
    edge_ws: Workspace, monkeypatch: pytest.MonkeyPatch, how: str, reason: str
) -> None:
    recipe = parse_recipe(RECIPE)
    with monkeypatch.context() as patch:
        patch.setattr(job_module, "_train", crash_good_1(how))
        first = produce(edge_ws, recipe, workers=2)
    failures = dict(first.failures)
    assert set(failures) == DATA_REASONS | {"good-1"} and first.passed == 2
    assert failures["good-1"].startswith(reason), failures["good-1"]
    reg = edge_ws.registry
    recorded = reg.failed_jobs(first.run_id)
    assert retryable(recorded["good-1"]) and not any(retryable(recorded[k]) for k in DATA_REASONS)

    resumed = produce(edge_ws, recipe, workers=2)
    assert (resumed.already_done, resumed.trained, resumed.retried) == (6, 0, 0)
    assert "r.good-1" not in reg.model_names()

    retried = produce(edge_ws, recipe, workers=2, retry_failed=True)
    assert (retried.retried, retried.trained, retried.passed, retried.failed) == (1, 1, 1, 0)
    assert retried.already_done == 5 and retried.run_id == first.run_id
    mv = reg.get_version("r.good-1")
    assert mv.version == 1 and mv.aliases == ["champion"] and mv.lineage["run_id"] == first.run_id
    assert reg.failed_jobs(first.run_id) == {k: recorded[k] for k in DATA_REASONS}
    assert reg.list_runs()[0].status == "done" and reg.list_runs()[0].counts == {"done": 3, "failed": 3}

    nothing = produce(edge_ws, recipe, workers=2, retry_failed=True)
    assert (nothing.retried, nothing.trained, nothing.already_done) == (0, 0, 6)


@pytest.mark.parametrize(
    ("reason", "crash"),
    [
        ("too few rows: 10 labelled rows, the recipe needs min_rows 50", False),
        ("only one class (0.0) in the target; a classifier needs two or more", False),
        ("ONNX export failed: ValueError: unsupported (at /x/y.py:3)", False),
        ("ONNX output differs from scikit-learn: max abs diff 0.3", False),
        ("job failed: KeyError: 'x' (at /src/modelfab/factory/job.py:80)", True),
        ("job failed: cannot write artifact", True),
        ("worker failed: BrokenProcessPool: a process was terminated", True),
        # recorded before the prefixes
        ("ValueError: Input contains NaN (at /venv/sklearn/utils/validation.py:120)", True),
        (None, True),
    ],
)
def test_which_reasons_are_retried(reason: str | None, crash: bool) -> None:
    assert retryable(reason) is crash


def test_failed_jobs_are_requeued_on_sqlite_and_postgresql(any_ws: Workspace) -> None:
    from modelfab.store import JobOutcome
    from tests.store.test_registry import make_run

    reg = any_ws.registry
    make_run(any_ws, "run1", ["a", "b", "c"])
    reg.record_outcomes(
        "run1",
        [
            JobOutcome(key=k, partition=k, model=f"r.{k}", status="failed", reason=why)
            for k, why in (("a", "too few rows: 3"), ("b", "job failed: OSError: gone"))
        ],
    )
    reg.set_run_status("run1", "done")
    assert reg.failed_jobs("run1") == {"a": "too few rows: 3", "b": "job failed: OSError: gone"}
    assert reg.requeue_jobs("run1", ["b", "c"]) == 1  # c is pending, not failed: left alone
    assert reg.job_states("run1") == {"a": "failed", "b": "pending", "c": "pending"}
    assert reg.failed_jobs("run1") == {"a": "too few rows: 3"}
    assert reg.list_runs()[0].status == "running"
    assert reg.requeue_jobs("run1", []) == 0
