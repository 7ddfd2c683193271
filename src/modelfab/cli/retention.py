"""``modelfab retention``: delete prediction data older than the workspace's retention."""

from __future__ import annotations

from typing import Annotated

import typer

from modelfab.cli.common import console, open_workspace, print_json

app = typer.Typer(
    help="Keep prediction logs, indexed predictions and retrained datasets bounded.", no_args_is_help=True
)


@app.command("run")
def run(json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False) -> None:
    """One retention pass: old fully indexed log segments, old prediction rows (not those of a live
    trial) and, with MODELFAB_DATASET_KEEP, old dataset versions no live model uses."""
    from modelfab.traffic.index import PredictionIndex
    from modelfab.traffic.retention import run_retention

    ws = open_workspace()
    # Index first: a segment is deleted only once indexed, so this lets the pass free the most.
    PredictionIndex.for_settings(ws.engine, ws.settings).sync()
    report = run_retention(ws)
    if json_out:
        print_json(report.to_json())
        return
    console.print(
        f"deleted {report.segments_deleted} log segments ({report.segment_bytes_freed:,} bytes) and "
        f"{report.rows_deleted:,} prediction rows older than {ws.settings.prediction_retention}"
    )
    if report.segments_kept_unindexed:
        console.print(f"kept {report.segments_kept_unindexed} old segments not indexed yet")
    for d in report.datasets:
        console.print(f"dataset {d['name']}: removed versions {d['removed']}")
