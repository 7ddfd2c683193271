"""``modelfab feedback | monitor | history | promote | rollback | iterate | up``: the iteration loop."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelfab.cli.common import console, err_console, open_workspace, print_json

if TYPE_CHECKING:
    from modelfab.recipe import Recipe
    from modelfab.store import Workspace

__all__ = ["feedback", "history", "iterate", "monitor", "promote", "rollback", "up"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
RecipesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--recipe",
        help="Recipe file with an iterate: section (repeatable). Default: every produced recipe with one.",
    ),
]


def _recipes(paths: list[Path] | None, ws: Workspace | None = None) -> list[tuple[Recipe, str]]:
    """Recipes from files, or else the recipes the registry last ran that have an ``iterate:`` section."""
    from modelfab.errors import RecipeError
    from modelfab.recipe import Recipe, load_recipe

    if not paths:
        found = []
        if ws is not None:
            for spec in ws.registry.latest_recipe_specs():
                try:
                    recipe = Recipe.model_validate(spec)
                except ValueError as exc:  # pydantic's ValidationError: a recipe that rules made stricter
                    name = spec.get("name", "?") if isinstance(spec, dict) else "?"
                    first = str(exc).splitlines()[1:3]
                    err_console.print(
                        f"warning: skipping recipe {name}: its last run's spec no longer validates "
                        f"({'; '.join(s.strip() for s in first)}); fix the recipe and run modelfab produce",
                        highlight=False,
                        markup=False,
                    )
                    continue
                if recipe.iterate is not None:
                    found.append((recipe, f"registry:{recipe.name}"))
        if not found:
            raise RecipeError(
                "no produced recipe has an iterate: section; add one and run modelfab produce, "
                "or give recipe files with --recipe FILE (repeatable)"
            )
        return found
    out = []
    for path in paths:
        recipe = load_recipe(path)
        if recipe.iterate is None:
            raise RecipeError(
                "the recipe has no iterate: section; add one to let the loop watch it", file=str(path)
            )
        out.append((recipe, str(path)))
    return out


def _recipes_or_none(ws: Workspace) -> list[tuple[Recipe, str]]:
    from modelfab.errors import RecipeError

    try:
        return _recipes(None, ws)
    except RecipeError:
        return []


def feedback(
    file: Annotated[Path, typer.Argument(help="CSV file with columns id,row,outcome (row optional).")],
    json_out: JsonOpt = False,
) -> None:
    """Load true outcomes for logged predictions in bulk."""
    from modelfab.traffic.feedback import FeedbackStore, read_feedback_csv
    from modelfab.traffic.index import PredictionIndex

    items = read_feedback_csv(file)
    ws = open_workspace()
    store = FeedbackStore(ws.engine, ws.registry.tenant, PredictionIndex.for_settings(ws.engine, ws.settings))
    accepted, unknown = 0, []
    for start in range(0, len(items), 10_000):
        result = store.ingest(items[start : start + 10_000])
        accepted += result.accepted
        unknown += result.unknown
    if json_out:
        print_json({"accepted": accepted, "unknown": unknown})
        return
    console.print(f"accepted {accepted:,} outcome(s) from {file}")
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        err_console.print(
            f"[yellow]{len(unknown):,} prediction id(s) are not in the prediction log:[/] {shown}"
        )


def monitor(
    name: Annotated[str, typer.Argument(help="Model name, e.g. churn.site-007.")],
    recipe: Annotated[
        Path | None,
        typer.Option(help="Recipe file (for its window); default: the recipe the model was produced with."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Online metric, input drift (PSI per feature) and prediction drift of a model's live versions."""
    from modelfab.iterate.decisions import DecisionLog
    from modelfab.iterate.monitor import watch_versions
    from modelfab.recipe import IterateSpec
    from modelfab.traffic.index import PredictionIndex

    ws = open_workspace()
    champion = ws.registry.get_version(name)
    if recipe is not None:
        spec = _recipes([recipe])[0][0].iterate
    else:
        produced = [r for r, _ in _recipes_or_none(ws) if r.name == champion.recipe]
        spec = produced[0].iterate if produced else None
    spec = spec or IterateSpec()
    PredictionIndex.for_settings(ws.engine, ws.settings).sync()
    deployment = DecisionLog(ws.registry).deployments().get(name)
    versions = [champion]
    if deployment is not None and deployment.version != champion.version:
        versions.append(ws.registry.get_version(name, deployment.version))
    reports = watch_versions(ws, versions, spec.window)
    docs = []
    for mv in versions:
        doc = reports[(mv.name, mv.version)].to_json()
        doc["role"] = "champion" if mv is champion else deployment.mode if deployment else "challenger"
        docs.append(doc)
    if json_out:
        print_json(
            {
                "model": name,
                "window": spec.window,
                "versions": docs,
                "trial": None
                if deployment is None
                else {
                    "mode": deployment.mode,
                    "version": deployment.version,
                    "share": deployment.share,
                    "started_at": deployment.started_at.isoformat(),
                },
            }
        )
        return
    from rich.table import Table

    table = Table(
        "version",
        "role",
        "metric",
        "holdout",
        "online",
        "labelled",
        "rows",
        "max PSI",
        "worst feature",
        "prediction PSI",
    )
    for d in docs:
        table.add_row(
            str(d["version"]),
            d["role"],
            d["metric"],
            _num(d["holdout"]),
            _num(d["online"]),
            str(d["labelled"]),
            str(d["rows"]),
            _num(d["max_psi"]),
            d["worst_feature"] or "",
            _num(d["prediction_psi"]),
        )
    console.print(table)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def history(
    name: Annotated[str, typer.Argument(help="Model name.")],
    json_out: JsonOpt = False,
) -> None:
    """The model's decisions: retrain, reject, canary, promote, rollback, hold, error, with their evidence."""
    from modelfab.iterate.decisions import DecisionLog

    ws = open_workspace()
    ws.registry.resolve(name, "latest")  # a clear error for an unknown model
    records = DecisionLog(ws.registry).history(name)
    if json_out:
        print_json([r.to_json() for r in records])
        return
    if not records:
        console.print(f"{name}: no decisions yet")
    for r in records:
        console.print(
            f"{r.time:%Y-%m-%d %H:%M:%S}  {r.action:<8} v{r.version if r.version is not None else '-':<4} "
            f"{r.actor:<8} {r.reason}",
            highlight=False,
        )


def _require_reason(reason: str) -> None:
    if not reason.strip():
        raise typer.BadParameter("--reason must say why", param_hint="--reason")


def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(min=1, help="The version to make champion.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the history).")],
    actor: Annotated[str, typer.Option(help="Who decided.")] = "user",
) -> None:
    """Make VERSION the champion by hand (ends any trial); recorded with your reason."""
    from modelfab.iterate.decisions import DecisionLog

    _require_reason(reason)
    ws = open_workspace()
    previous = DecisionLog(ws.registry).promote(name, version, reason, {"manual": True}, actor=actor)
    console.print(f"{name}: champion is now version {version} (was {previous})")


def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the history).")],
    actor: Annotated[str, typer.Option(help="Who decided.")] = "user",
) -> None:
    """End a running trial, or move the champion back to the version it replaced."""
    from modelfab.iterate.decisions import DecisionLog

    _require_reason(reason)
    ws = open_workspace()
    ws.registry.resolve(name, "latest")
    champion = DecisionLog(ws.registry).rollback(name, reason, {"manual": True}, actor=actor)
    console.print(f"{name}: rolled back; champion is version {champion}")


def iterate(
    recipe: RecipesOpt = None,
    once: Annotated[bool, typer.Option("--once", help="One pass over all models, then exit.")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between passes.")] = 30.0,
    workers: Annotated[int | None, typer.Option(help="Training processes for retrains.")] = None,
) -> None:
    """Run the iteration loop: watch, retrain, gate, canary, promote or roll back."""
    from modelfab.iterate.loop import IterationLoop

    ws = open_workspace()
    recipes = _recipes(recipe, ws)
    loop = IterationLoop(ws, recipes, workers=workers)
    if once:
        _print_pass(loop.run_once())
        return
    console.print(f"iterating {', '.join(r.name for r, _ in recipes)} every {interval:g}s (Ctrl-C stops)")
    try:
        loop.run_forever(interval, on_pass=_print_pass)
    except KeyboardInterrupt:
        console.print("stopped")


def _print_pass(report: object) -> None:
    from modelfab.iterate.loop import PassReport

    assert isinstance(report, PassReport)
    for model, action, reason in report.actions:
        console.print(f"{model}: {action}: {reason}", highlight=False)
    if report.backing_off:
        console.print(
            f"backing off after failures (see modelfab history): {', '.join(report.backing_off)}",
            highlight=False,
        )
    console.print(
        f"pass: {report.watched} model(s) watched, {report.indexed} prediction row(s) indexed, "
        f"{len(report.actions)} decision(s), {report.seconds:.2f}s",
        highlight=False,
    )


def up(
    recipe: RecipesOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port; 0 turns gRPC off.")] = 8001,
    workers: Annotated[str, typer.Option(help="Server worker processes or 'auto'.")] = "auto",
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between loop passes.")] = 30.0,
) -> None:
    """Run the server and the iteration loop together (the server in a child process)."""
    import signal
    import subprocess
    import sys
    import threading

    from modelfab.iterate.loop import IterationLoop
    from modelfab.serve.ready import wait_until_ready

    ws = open_workspace()
    recipes = _recipes(recipe, ws)
    cmd = [
        sys.executable,
        "-m",
        "modelfab.cli.main",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--grpc-port",
        str(grpc_port),
        "--workers",
        workers,
    ]
    # SIGTERM (a service manager stopping us) ends the loop after its current pass, then the server.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = subprocess.Popen(cmd)
    try:
        if not wait_until_ready(server, f"{host}:{port}", 60, "the server (see its output above)", stop):
            return
        console.print(f"server on http://{host}:{port}; iterating every {interval:g}s (Ctrl-C stops both)")
        IterationLoop(ws, recipes).run_forever(interval, stop=stop, on_pass=_print_pass)
        console.print("stopping")
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
