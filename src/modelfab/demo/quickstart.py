"""The quickstart: the whole story on generated data, nothing to download.

Generate a churn data set, import it, produce one model per site, serve them and send demo traffic through
tritonclient, then shift a few sites' customers and let the iteration loop recover. ``modelfab quickstart``
calls :func:`run_quickstart`; nothing outside this package imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from modelfab.cli.common import console, open_workspace

if TYPE_CHECKING:
    from modelfab.recipe import Recipe
    from modelfab.store import Workspace

__all__ = ["RECIPE", "run_quickstart"]

RECIPE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"


def run_quickstart(
    *,
    sites: int,
    rows: int,
    workers: int | None,
    seed: int,
    serve: bool,
    port: int,
    demo_seconds: float,
    loop: bool,
    shift_sites: int,
) -> None:
    """What ``modelfab quickstart`` does; its options are the command's."""
    import statistics
    import time

    from modelfab.cli.produce import print_report
    from modelfab.cli.progress import run_progress
    from modelfab.data import import_dataset
    from modelfab.demo.synth import churn_frame
    from modelfab.factory import produce
    from modelfab.recipe import parse_recipe

    ws = open_workspace()
    started = time.monotonic()
    data_dir = ws.settings.home / "quickstart"
    data_dir.mkdir(parents=True, exist_ok=True)
    csv = data_dir / "churn.csv"
    console.print(f"[bold]1/3[/] generating {sites} sites x ~{rows:,} customers -> {csv}")
    churn_frame(sites=sites, rows_per_site=rows, seed=seed).to_csv(csv, index=False)
    version, created = import_dataset(ws, "churn", csv)
    console.print(
        f"[bold]2/3[/] dataset {version.ref}: {version.rows:,} rows"
        + ("" if created else " (unchanged since last import)")
    )
    recipe_text = RECIPE.read_text()
    recipe = parse_recipe(recipe_text, file=str(RECIPE))
    console.print(
        f"[bold]3/3[/] producing one model per site with recipe {recipe.name} ({recipe.trials} trials each)"
    )
    with run_progress(f"produce {recipe.name}") as (on_start, on_progress):
        # The imported version, not the newest: the loop adds versions with traffic in them.
        report = produce(
            ws,
            recipe,
            recipe_file=str(RECIPE),
            dataset=version,
            workers=workers,
            on_start=on_start,
            on_progress=on_progress,
        )
    print_report(report)
    total = ws.registry.list_versions(recipe=recipe.name, limit=100_000)
    champions = [v for v in total if "champion" in v.aliases]
    scores = sorted(v.score for v in champions if v.score is not None)
    median = f"{statistics.median(scores):.4f}" if scores else "n/a"
    speed = f"; {report.models_per_minute:,.0f} models/min" if report.trained else ""
    console.print(
        f"\n[bold green]summary[/]: {len(champions)} of {len(total)} site models passed the gate "
        f"({recipe.metric} >= {recipe.gate.min}); median {recipe.metric} of the champions {median}; "
        f"{time.monotonic() - started:.1f}s in all{speed}"
    )
    if serve and champions:
        from modelfab.demo.server import demo_server
        from modelfab.demo.traffic import send_demo_traffic

        console.print(
            "\n[bold]serving[/]: starting modelfab serve (OIP v2 REST + gRPC, lazy loading, batching)"
        )
        # Random demo inputs are not logged: in the prediction log they would read as drift to the loop.
        with demo_server(ws.settings.home, port, log_sample_rate=0.0) as url:
            names = [v.name for v in champions]
            stats = send_demo_traffic(url, names, seconds=demo_seconds, concurrency=8)
            console.print(
                f"demo traffic through tritonclient, {len(names)} models: {stats['requests']:,} requests, "
                f"{stats['errors']} errors, {stats['throughput_rps']:,.0f} req/s, "
                f"p50 {stats['p50_ms']:.1f} ms, p99 {stats['p99_ms']:.1f} ms"
            )
            console.print(f"metrics: http://{url}/metrics (Prometheus text), e.g.:")
            for line in metric_sample(url):
                console.print(f"  {line}", highlight=False, soft_wrap=True)
        if loop:
            iterate_demo(
                ws, recipe, port, sites=sites, rows=rows, seed=seed, shift_sites=shift_sites, workers=workers
            )
    console.print(
        "next: modelfab models ls | modelfab history churn.site-000 | modelfab monitor churn.site-000 | "
        "modelfab up"
    )


def iterate_demo(
    ws: Workspace,
    recipe: Recipe,
    port: int,
    *,
    sites: int,
    rows: int,
    seed: int,
    shift_sites: int,
    workers: int | None,
) -> None:
    """Shift a few untouched sites' customers and run the loop through a serving (and logging) server."""
    from modelfab.demo.loop import loop_demo, pick_sites
    from modelfab.demo.server import demo_server

    shifted, stable = pick_sites(ws, recipe, shift_sites, 5)
    if not shifted:
        console.print(
            "\n[bold]iterating[/]: skipped, every site model already has traffic or decisions from an "
            "earlier run (start over with a fresh MODELFAB_HOME)"
        )
        return
    console.print(
        f"\n[bold]iterating[/]: the customers of {', '.join(shifted)} change their behaviour; "
        f"{len(stable)} other sites stay as they were"
    )
    with demo_server(ws.settings.home, port) as url:
        report = loop_demo(
            ws,
            url,
            recipe,
            shifted,
            stable_sites=stable,
            seed=seed,
            sites=sites,
            rows_per_site=rows,
            recipe_file=str(RECIPE),
            workers=workers,
            say=lambda line: console.print(f"  [dim]{line}[/]", highlight=False),
        )
    for line in report.lines():
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    if report.failed:
        raise typer.Exit(1)  # a request that failed during a rollout is a bug, not a demo result


def metric_sample(url: str, limit: int = 6) -> list[str]:
    """A few interesting lines of the server's /metrics."""
    import httpx

    text = httpx.get(f"http://{url}/metrics", timeout=10).text
    wanted = ["requests_total", "batch_size_count", "loads_total", "resident_bytes", "cpu_seconds", "latency"]
    lines = []
    for line in text.splitlines():
        hit = next((w for w in wanted if w in line), None)
        if hit is not None and not line.startswith("#"):
            lines.append(line)
            wanted.remove(hit)
    return lines[:limit]
