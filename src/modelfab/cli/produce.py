"""``modelfab produce``: run a recipe, one model per partition."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelfab.cli.common import console, err_console, open_workspace, print_json

if TYPE_CHECKING:
    from modelfab.factory import RunReport


def produce(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML file.")],
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")] = None,
    executor: Annotated[
        str | None,
        typer.Option(help="Executor: local (process pool) or ray. Default: MODELFAB_EXECUTOR or local."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster HOST:PORT (with --executor ray). Default: MODELFAB_RAY_ADDRESS."),
    ] = None,
    priority: Annotated[
        str,
        typer.Option(help="Run priority: high, normal or low. Under a quota, higher runs' jobs start first."),
    ] = "normal",
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="Run again the jobs of this recipe's earlier run that crashed (an exception in training, a "
            "worker process that died); partitions skipped for a data reason (too few rows, one class, "
            "target missing, failed parity check) stay as they are. Without it, a re-run only resumes.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run report as JSON.")] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Hide the progress bar.")] = False,
) -> None:
    """Produce every partition's model: search, fit, evaluate, gate, export to ONNX, register.

    Resumable: run the same command again after a stop and finished jobs are not redone; failed jobs
    stay failed unless --retry-failed asks to rerun the ones that crashed.
    """
    from modelfab.compute import make_executor
    from modelfab.compute.slots import check_priority
    from modelfab.factory import produce as run
    from modelfab.recipe import load_recipe

    check_priority(priority)
    spec = load_recipe(recipe)
    ws = open_workspace()
    kind = executor or ws.settings.executor
    ex = make_executor(kind, workers, address=address or ws.settings.ray_address, resources=spec.resources)
    from modelfab.cli.progress import run_progress

    with run_progress(f"produce {spec.name} ({priority})", enabled=not (json_out or no_progress)) as (
        on_start,
        on_progress,
    ):
        report = run(
            ws,
            spec,
            recipe_file=str(recipe),
            executor=ex,
            workers=workers,
            priority=priority,
            retry_failed=retry_failed,
            on_start=on_start,
            on_progress=on_progress,
        )
    if json_out:
        print_json(report.to_json())
    else:
        print_report(report)
    if report.interrupted:
        raise typer.Exit(130)


def print_report(report: RunReport) -> None:
    if report.already_done == report.total and report.trained == report.failed == 0:
        console.print(
            f"run {report.run_id} of {report.recipe} on {report.dataset} is already complete: "
            f"nothing new to produce ({report.total} jobs done before)."
        )
        return
    if report.interrupted:
        err_console.print("[yellow]stopped[/]: finished jobs are registered; run the same command to resume.")
    median = f"{report.median_score:.4f}" if report.median_score is not None else "n/a"
    console.print(
        f"run [bold]{report.run_id}[/] {report.recipe} on {report.dataset}: "
        f"{report.trained} trained, [green]{report.passed} passed the gate[/], {report.rejected} rejected, "
        f"[red]{report.failed} failed[/]"
        + (f", {report.already_done} done before" if report.already_done else "")
        + (f", {report.retried} crashed jobs retried" if report.retried else "")
    )
    console.print(
        f"median holdout score {median}; {report.seconds:.1f}s, {report.models_per_minute:,.0f} models/min"
    )
    for partition, reason in report.failures[:10]:
        console.print(f"  [red]failed[/] {partition}: {reason}", highlight=False)
    if len(report.failures) > 10:
        console.print(f"  ... and {len(report.failures) - 10} more (see: modelfab runs ls --json)")
