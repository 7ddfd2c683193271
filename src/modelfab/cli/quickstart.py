"""``modelfab quickstart``: the whole factory on generated data (the story lives in :mod:`modelfab.demo`)."""

from __future__ import annotations

from typing import Annotated

import typer


def quickstart(
    sites: Annotated[int, typer.Option(min=1, help="Sites (one model each).")] = 200,
    rows: Annotated[int, typer.Option(min=10, help="Customers per site, about.")] = 2000,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the generated data.")] = 0,
    serve: Annotated[bool, typer.Option(help="Then serve the models and send demo traffic.")] = True,
    port: Annotated[int, typer.Option(help="HTTP port for the demo server (0: any free port).")] = 0,
    demo_seconds: Annotated[float, typer.Option(min=0.5, help="How long to send demo traffic.")] = 5.0,
    loop: Annotated[
        bool, typer.Option(help="Then shift some sites' customers and let the iteration loop recover.")
    ] = True,
    shift_sites: Annotated[int, typer.Option(min=1, help="Sites whose customers change (loop demo).")] = 3,
    story: Annotated[
        str,
        typer.Option(
            help="churn: one tabular model per site (the default). cameras: one CNN per camera, "
            "fine-tuned from a base trained on every camera, served as raw UINT8 pixels (needs torch).",
        ),
    ] = "churn",
    cameras: Annotated[int, typer.Option(min=3, help="Cameras (story cameras).")] = 12,
) -> None:
    """Generate a churn data set (one segment per site), import it, produce one model per site, serve
    them over Open Inference Protocol v2 and send demo traffic through tritonclient, then change a few
    sites' customers and watch the iteration loop retrain, canary and promote just those sites."""
    import importlib.util

    from modelfab.errors import ConfigError

    if story not in ("churn", "cameras"):
        raise ConfigError(f"--story must be churn or cameras, not {story!r}")
    if serve and importlib.util.find_spec("tritonclient") is None:
        raise ConfigError("the quickstart's demo traffic needs the demo extra: pip install 'modelfab[demo]'")
    if story == "cameras":
        if importlib.util.find_spec("torch") is None:
            raise ConfigError("the cameras story trains torch models: pip install 'modelfab[torch]'")
        from modelfab.cli.common import console, open_workspace
        from modelfab.demo.cameras import run_camera_demo

        run_camera_demo(
            open_workspace(),
            cameras=cameras,
            workers=workers,
            serve=serve,
            port=port,
            say=lambda line: console.print(line, highlight=False, markup=False),
        )
        return
    from modelfab.demo.quickstart import run_quickstart

    run_quickstart(
        sites=sites,
        rows=rows,
        workers=workers,
        seed=seed,
        serve=serve,
        port=port,
        demo_seconds=demo_seconds,
        loop=loop,
        shift_sites=shift_sites,
    )
