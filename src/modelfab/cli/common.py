"""What every command shares: opening the workspace, JSON output, turning errors into messages."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from modelfab.store import Workspace

__all__ = ["console", "err_console", "open_workspace", "parse_model_ref", "print_json"]

console = Console()
err_console = Console(stderr=True)


def open_workspace() -> Workspace:
    from modelfab.settings import Settings
    from modelfab.store import Workspace

    return Workspace.open(Settings())


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def parse_model_ref(ref: str) -> tuple[str, str | None]:
    """``NAME``, ``NAME@VERSION`` or ``NAME@ALIAS`` -> (name, version-or-alias or None)."""
    from modelfab.errors import NotFoundError

    name, _, version = ref.partition("@")
    if not name or (ref.endswith("@")):
        raise NotFoundError(f"{ref!r} is not a model reference; use NAME, NAME@VERSION or NAME@ALIAS")
    return name, version or None
