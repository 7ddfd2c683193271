"""``modelfab serve``: every registered model behind Open Inference Protocol v2."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port (OIP v2 REST).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0 turns gRPC off).")] = 8001,
    workers: Annotated[str, typer.Option(help="Worker processes: a number or 'auto'.")] = "1",
    max_memory: Annotated[str, typer.Option(help="Memory budget for loaded models, e.g. 512MiB.")] = "1GiB",
) -> None:
    """Serve the workspace's models (lazy loading, batching, LRU by bytes)."""
    from modelfab.serve import run_server
    from modelfab.settings import Settings

    run_server(Settings(), host=host, port=port, grpc_port=grpc_port, workers=workers, max_memory=max_memory)
