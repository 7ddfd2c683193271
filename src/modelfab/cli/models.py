"""``modelfab models``, ``modelfab alias`` and ``modelfab runs``: the registry from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelfab.cli.common import console, err_console, open_workspace, parse_model_ref, print_json

models_app = typer.Typer(help="List, show and export registered model versions.", no_args_is_help=True)
alias_app = typer.Typer(
    help="Move aliases (champion, challenger, ...) and read their history.", no_args_is_help=True
)
runs_app = typer.Typer(help="Production runs and their jobs.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@models_app.command("ls")
def ls(
    recipe: Annotated[str | None, typer.Option(help="Only models of this recipe.")] = None,
    all_versions: Annotated[
        bool, typer.Option("--all", help="Every version, not just each model's latest.")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, help="At most this many rows (a page).")] = 200,
    after: Annotated[
        str | None, typer.Option(help="Start after NAME@VERSION (the last row of a page).")
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """List model versions, one page at a time in name order."""
    from modelfab.errors import NotFoundError

    cursor = None
    if after is not None:
        name, _, v = after.rpartition("@")
        if not name or not v.isdigit():
            raise NotFoundError(f"--after {after!r} must be NAME@VERSION, e.g. churn.site-007@1")
        cursor = (name, int(v))
    ws = open_workspace()
    rows = ws.registry.list_versions(recipe=recipe, all_versions=all_versions, limit=limit + 1, after=cursor)
    more = len(rows) > limit
    rows = rows[:limit]
    if json_out:
        print_json([r.to_json() for r in rows])
    else:
        from rich.table import Table

        table = Table("name", "version", "status", "aliases", "metric", "score", "family", "created")
        for r in rows:
            score = f"{r.score:.4f}" if r.score is not None else ""
            table.add_row(
                r.name,
                str(r.version),
                r.status,
                ",".join(r.aliases),
                r.metric or "",
                score,
                str(r.params.get("family", "")),
                r.created_at.strftime("%Y-%m-%d %H:%M"),
            )
        console.print(table)
    if more:
        last = rows[-1]
        err_console.print(f"more rows: add --after {last.name}@{last.version}")


@models_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS (default alias: champion).")],
    json_out: JsonOpt = False,
) -> None:
    """Show one version: metrics, params, lineage, signature, aliases."""
    name, version = parse_model_ref(ref)
    ws = open_workspace()
    mv = ws.registry.get_version(name, version)
    if json_out:
        print_json(mv.to_json())
        return
    console.print(
        f"[bold]{mv.name}[/] version {mv.version} ({mv.status})  aliases: {', '.join(mv.aliases) or '-'}"
    )
    console.print(f"  metric {mv.metric} = {mv.score}")
    console.print(f"  metrics {mv.metrics}", highlight=False)
    console.print(f"  params {mv.params}", highlight=False)
    console.print(f"  lineage {mv.lineage}", highlight=False)
    console.print(
        "  inputs " + ", ".join(f"{i['name']}:{i['datatype']}" for i in mv.signature.get("inputs", []))
    )
    console.print(f"  artifact sha256 {mv.artifact_digest} ({mv.artifact_size:,} bytes)")


@models_app.command("export")
def export(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS.")],
    out: Annotated[Path, typer.Argument(help="Where to write the .onnx file.")],
) -> None:
    """Write a version's ONNX graph to a file (digest checked, decrypted when needed)."""
    import os

    name, version = parse_model_ref(ref)
    ws = open_workspace()
    mv = ws.registry.get_version(name, version)
    data = ws.artifacts.get(mv.artifact_digest)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    console.print(
        f"wrote {mv.name}@{mv.version} to {out} ({len(data):,} bytes, sha256 {mv.artifact_digest[:12]})"
    )


@alias_app.command("set")
def alias_set(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. champion or challenger.")],
    version: Annotated[int, typer.Argument(help="Version number the alias should point at.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the history).")] = "set by hand",
    actor: Annotated[str, typer.Option(help="Who (kept in the history).")] = "user",
) -> None:
    """Point ALIAS of model NAME at VERSION."""
    ws = open_workspace()
    previous = ws.registry.set_alias(name, alias, version, actor=actor, reason=reason)
    was = f" (was {previous})" if previous is not None else ""
    console.print(f"{name}@{alias} -> {version}{was}")


@alias_app.command("history")
def alias_history(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str | None, typer.Option(help="Only this alias.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """Every move of the model's aliases, oldest first."""
    ws = open_workspace()
    events = ws.registry.alias_history(name, alias)
    if json_out:
        print_json([e.to_json() for e in events])
        return
    from rich.table import Table

    table = Table("time", "alias", "version", "previous", "actor", "reason")
    for e in events:
        table.add_row(
            e.time.strftime("%Y-%m-%d %H:%M:%S"),
            e.alias,
            str(e.version),
            str(e.previous or ""),
            e.actor,
            e.reason,
        )
    console.print(table)


@runs_app.command("ls")
def runs_ls(
    limit: Annotated[int, typer.Option(min=1, help="At most this many runs, newest first.")] = 50,
    json_out: JsonOpt = False,
) -> None:
    """Production runs with their jobs queued, running, done and failed, and the slots they hold."""
    from modelfab.compute.slots import live_claims, tenant_quota

    ws = open_workspace()
    runs = ws.registry.list_runs(limit)
    claims = live_claims(ws.engine, ws.registry.tenant)
    if json_out:
        print_json([{**r.to_json(), "slots": claims.get(r.id, (0, 0))[1]} for r in runs])
        return
    from rich.table import Table

    table = Table(
        "run",
        "recipe",
        "dataset",
        "status",
        "priority",
        "jobs",
        "queued",
        "running",
        "done",
        "failed",
        "slots",
        "started",
    )
    for r in runs:
        c = r.counts
        table.add_row(
            r.id,
            r.recipe,
            r.dataset,
            r.status,
            r.priority,
            str(r.total),
            str(c.get("pending", 0)),
            str(c.get("running", 0)),
            str(c.get("done", 0)),
            str(c.get("failed", 0)),
            str(claims[r.id][1]) if r.id in claims else "",
            r.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    console.print(table)
    cap = tenant_quota(ws.engine, ws.registry.tenant)
    if cap is not None:
        held = sum(h for _, h in claims.values())
        console.print(f"tenant {ws.registry.tenant}: {held} of {cap} job slot(s) held", highlight=False)


@runs_app.command("quota")
def runs_quota(
    max_jobs: Annotated[
        int | None, typer.Option("--max-jobs", min=1, help="Most jobs the tenant may run at once.")
    ] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the tenant's cap.")] = False,
    tenant: Annotated[str | None, typer.Option(help="Tenant (default: MODELFAB_TENANT).")] = None,
) -> None:
    """Show or set the tenant's cap on concurrently running jobs, shared by every produce process."""
    from modelfab.compute.slots import set_tenant_quota, tenant_quota

    ws = open_workspace()
    who = tenant or ws.registry.tenant
    if clear and max_jobs is not None:
        raise typer.BadParameter("give --max-jobs or --clear, not both", param_hint="--clear")
    if clear or max_jobs is not None:
        set_tenant_quota(ws.engine, who, None if clear else max_jobs)
    cap = tenant_quota(ws.engine, who)
    console.print(
        f"tenant {who}: " + ("no cap on concurrent jobs" if cap is None else f"at most {cap} job(s) at once")
    )
