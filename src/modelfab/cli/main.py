"""Entry point: ``modelfab --help`` answers fast because every heavy import lives inside a command."""

from __future__ import annotations

import sys

import typer

from modelfab.cli import data, iterate, models, produce, quickstart, retention, serve

app = typer.Typer(
    name="modelfab",
    help="Produce models in batch, serve them over Open Inference Protocol v2, iterate them from feedback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data")
app.add_typer(models.models_app, name="models")
app.add_typer(models.alias_app, name="alias")
app.add_typer(models.runs_app, name="runs")
app.add_typer(retention.app, name="retention")
app.command("produce")(produce.produce)
app.command("quickstart")(quickstart.quickstart)
app.command("serve")(serve.serve)
app.command("feedback")(iterate.feedback)
app.command("monitor")(iterate.monitor)
app.command("history")(iterate.history)
app.command("promote")(iterate.promote)
app.command("rollback")(iterate.rollback)
app.command("iterate")(iterate.iterate)
app.command("up")(iterate.up)


def main() -> None:
    """Run the CLI; modelfab's own errors print one clear line instead of a traceback."""
    from modelfab.errors import ModelfabError

    try:
        app()
    except ModelfabError as exc:
        from modelfab.cli.common import err_console

        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
