"""``modelfab data``: import and list datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelfab.cli.common import console, open_workspace, print_json

app = typer.Typer(
    help="Import, list and prune datasets (immutable, content-addressed versions).", no_args_is_help=True
)


@app.command("import")
def import_(
    name: Annotated[str, typer.Argument(help="Dataset name, e.g. churn.")],
    file: Annotated[
        Path,
        typer.Argument(help="A .csv or .parquet file, or an image folder <partition>/<label>/*.png|jpg."),
    ],
    image_column: Annotated[
        str | None,
        typer.Option("--image-column", help="The Parquet column holding encoded PNG/JPEG images (bytes)."),
    ] = None,
    partition_column: Annotated[
        str,
        typer.Option(
            "--partition-column",
            help="Images: the partition column (a folder's first level; orders a Parquet file's rows).",
        ),
    ] = "camera",
    resize: Annotated[
        str | None,
        typer.Option(
            "--resize", help="Images: resize every image to WxH (e.g. 32x32) instead of refusing mixed sizes."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the version as JSON.")] = False,
) -> None:
    """Import FILE as a new version of dataset NAME (identical data returns the existing version).

    Images are all decoded first: a bad file is refused by path and nothing is stored."""
    from modelfab.data import import_dataset
    from modelfab.data.images import parse_size

    size = parse_size(resize) if resize is not None else None
    ws = open_workspace()
    version, created = import_dataset(
        ws, name, file, image_column=image_column, partition_column=partition_column, resize=size
    )
    if json_out:
        print_json(
            {
                "name": version.name,
                "version": version.version,
                "digest": version.digest,
                "rows": version.rows,
                "created": created,
                "columns": version.columns,
            }
        )
        return
    verb = "imported" if created else "unchanged, already stored as"
    images = [f", images {c['width']}x{c['height']}" for c in version.columns if c.get("kind") == "image"]
    console.print(
        f"{verb} [bold]{version.ref}[/]: {version.rows:,} rows, {len(version.columns)} columns"
        f"{''.join(images)}, sha256 {version.digest[:12]}"
    )


@app.command("ls")
def ls(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List dataset versions."""
    from rich.table import Table

    ws = open_workspace()
    rows = ws.registry.list_datasets()
    if json_out:
        print_json(
            [
                {
                    "name": d.name,
                    "version": d.version,
                    "digest": d.digest,
                    "rows": d.rows,
                    "columns": d.columns,
                    "source": d.source,
                    "created_at": d.created_at.isoformat(),
                }
                for d in rows
            ]
        )
        return
    table = Table("dataset", "version", "rows", "columns", "sha256", "imported")
    for d in rows:
        table.add_row(
            d.name,
            str(d.version),
            f"{d.rows:,}",
            str(len(d.columns)),
            d.digest[:12],
            d.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)


@app.command("prune")
def prune(
    name: Annotated[str, typer.Argument(help="Dataset name, e.g. churn.")],
    keep: Annotated[int, typer.Option("--keep", help="How many of the newest versions to keep.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; remove nothing.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Remove versions of NAME older than the newest KEEP, except versions a live model (aliased or
    under trial) was trained on or a running run uses."""
    from modelfab.data import prune_dataset

    ws = open_workspace()
    report = prune_dataset(ws, name, keep, dry_run=dry_run)
    if json_out:
        print_json({**report.to_json(), "dry_run": dry_run})
        return
    verb = "would remove" if dry_run else "removed"
    console.print(
        f"{name}: {verb} versions {report.removed or 'none'} ({report.freed_bytes:,} bytes freed); "
        f"kept {report.kept}" + (f" and live {report.live}" if report.live else "")
    )
