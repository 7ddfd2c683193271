"""``modelfab serve``: every registered model behind Open Inference Protocol v2."""

from __future__ import annotations

from typing import Annotated

import typer


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port (OIP v2 REST).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port; 0 turns gRPC off.")] = 8001,
    workers: Annotated[
        str, typer.Option(help="Worker processes: a number, or 'auto' to scale with load.")
    ] = "auto",
    max_memory: Annotated[str, typer.Option(help="Memory budget for loaded models, e.g. 512MiB.")] = "1GiB",
    max_batch_size: Annotated[
        int, typer.Option(min=1, help="Default largest batch (recipes may set their own).")
    ] = 64,
    max_wait_ms: Annotated[float, typer.Option(min=0, help="Default longest wait to fill a batch.")] = 2.0,
    queue_size: Annotated[int, typer.Option(min=1, help="Requests queued per model before 429.")] = 256,
    timeout: Annotated[float, typer.Option(min=0.001, help="Per-request timeout in seconds.")] = 30.0,
    max_body: Annotated[
        str, typer.Option(help="Largest request body, e.g. 64MiB; larger ones get 413.")
    ] = "64MiB",
    read_timeout: Annotated[
        float,
        typer.Option(min=0.001, help="Seconds a request may take to arrive whole once begun; slower: 408."),
    ] = 60.0,
    keepalive_timeout: Annotated[
        float, typer.Option(min=0.001, help="Close a keep-alive connection idle this many seconds.")
    ] = 75.0,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections per worker; more are answered 503 and closed.")
    ] = 2048,
    db_pool_size: Annotated[
        int, typer.Option(min=1, help="Registry connections each worker keeps open (PostgreSQL).")
    ] = 2,
    db_max_overflow: Annotated[
        int, typer.Option(min=0, help="Extra registry connections a worker may open under load.")
    ] = 4,
    idle_ttl: Annotated[
        float, typer.Option(min=0, help="Unload a model idle this many seconds (0: never).")
    ] = 600.0,
    log_sample_rate: Annotated[float, typer.Option(min=0, max=1, help="Share of predictions logged.")] = 1.0,
    pin: Annotated[list[str] | None, typer.Option(help="Model to keep loaded (repeatable).")] = None,
    shared_graphs: Annotated[
        bool,
        typer.Option(help="Small models that differ only in their weights share one ONNX Runtime session."),
    ] = True,
    providers: Annotated[
        str,
        typer.Option(
            help="ONNX Runtime execution providers in order, comma-separated (cuda, tensorrt, openvino, cpu) "
            "for models whose recipe names none; default: CUDA if installed, then CPU.",
        ),
    ] = "",
) -> None:
    """Serve the workspace's models: lazy loading, LRU by bytes, adaptive batching, elastic workers."""
    from modelfab.errors import ConfigError
    from modelfab.serve import run_server
    from modelfab.settings import Settings
    from modelfab.units import parse_bytes

    if workers != "auto" and not workers.isdigit():
        raise ConfigError(f"--workers {workers!r} is not allowed; give a number of processes or 'auto'")
    try:
        max_body_bytes = parse_bytes(max_body)
    except ConfigError as exc:
        raise ConfigError(f"--max-body: {exc.message}") from None
    if max_body_bytes < 1:
        raise ConfigError("--max-body must be at least 1 byte")
    run_server(
        Settings(),
        host=host,
        port=port,
        grpc_port=grpc_port or None,
        workers=int(workers) if workers.isdigit() else "auto",
        max_memory_bytes=max_memory,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        request_timeout_s=timeout,
        max_body_bytes=max_body_bytes,
        read_timeout_s=read_timeout,
        keepalive_timeout_s=keepalive_timeout,
        max_connections=max_connections,
        db_pool_size=db_pool_size,
        db_max_overflow=db_max_overflow,
        idle_ttl_s=idle_ttl,
        log_sample_rate=log_sample_rate,
        pinned=tuple(pin or ()),
        share_graphs=shared_graphs,
        providers=tuple(p.strip() for p in providers.split(",") if p.strip()),
    )
