"""The production progress bar: done/total, models per minute, ETA and failures."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from modelfab.cli.common import err_console

__all__ = ["run_progress"]


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = 60.0 * task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} models/min", style="cyan")


class FailuresColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        failed = int(task.fields.get("failed", 0))
        return Text(f"{failed} failed", style="red" if failed else "dim")


@contextmanager
def run_progress(label: str, enabled: bool = True) -> Iterator[tuple[Any, Any]]:
    """Yields (on_start, on_progress) callbacks for :func:`modelfab.factory.produce`."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        FailuresColumn(),
        console=err_console,
        disable=not enabled,
        transient=False,
    )
    state: dict[str, Any] = {"task": None, "last": 0.0}

    def on_start(p: Any) -> None:
        state["task"] = progress.add_task(label, total=p.total, failed=0)

    def on_progress(p: Any) -> None:
        now = time.monotonic()
        if now - state["last"] > 0.1 or p.done == p.total:
            progress.update(state["task"], completed=p.done, failed=p.failed)
            state["last"] = now

    with progress:
        yield on_start, on_progress
