"""Scale-out benchmark, run by hand: the factory on a local Ray cluster vs the local executor, and vs Ray
Tune running the same trials (one fit + ONNX export per partition). Same cores, one run.

    python bench/scale.py [--partitions 1000] [--tune-partitions 200]
    python bench/scale.py --alias [--moves 100]   # alias change seen by a second server (PostgreSQL)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import produce as produce_bench
from produce import FEATURES, _bare_fit_export, make_data

RECIPE = (
    "name: b\ntask: classification\ndataset: d\ntarget: y\npartition_by: part\n"
    "candidates: [{family: logistic_regression}]\ntrials: 1\nmetric: accuracy\nmin_rows: 20\n"
)


def run_factory(tmp: Path, name: str, executor: Any) -> float:
    from modelfab import Settings, Workspace, import_dataset, parse_recipe, produce

    ws = Workspace.open(Settings(home=tmp / name))
    import_dataset(ws, "d", tmp / "d.csv")
    t0 = time.perf_counter()
    report = produce(ws, parse_recipe(RECIPE), executor=executor)
    seconds = time.perf_counter() - t0
    assert report.trained == produce_bench.PARTITIONS, report.failures[:3]
    ws.close()
    return seconds


def run_tune(tmp: Path, groups: list[tuple[Any, Any]]) -> float:
    from ray import tune

    def trainable(config: dict[str, Any]) -> dict[str, float]:
        x, y = groups[config["i"]]
        size = _bare_fit_export(x, y, str(tmp / "tune" / f"{config['i']}.onnx"))
        return {"size": float(size)}

    (tmp / "tune").mkdir(exist_ok=True)
    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"i": tune.grid_search(list(range(len(groups))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=os.cpu_count() or 1),
        run_config=tune.RunConfig(storage_path=str(tmp / "tune-results"), verbose=0),
    )
    results = tuner.fit()
    assert not results.errors
    return time.perf_counter() - t0


def bench_alias(moves: int, server_url: str) -> None:
    """Two servers on one PostgreSQL registry; move the champion through the registry and time until the
    other server answers with it."""
    import uuid

    import httpx
    import sqlalchemy as sa

    from modelfab import Settings, Workspace, import_dataset, parse_recipe, produce
    from modelfab.demo.server import ServerProcess, free_port, serve_args

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{server_url}?options=-csearch_path%3D{schema}"
    servers: list[ServerProcess] = []
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            os.environ["MODELFAB_DATABASE_URL"] = url
            os.environ["MODELFAB_ARTIFACT_URL"] = str(tmp / "artifacts")
            produce_bench.PARTITIONS = 2
            make_data(tmp / "d.csv")
            ws = Workspace.open(Settings(home=tmp / "producer"))
            import_dataset(ws, "d", tmp / "d.csv")
            produce(ws, parse_recipe(RECIPE), workers=1)
            produce(ws, parse_recipe(RECIPE.replace("trials: 1", "trials: 2")), workers=1)
            model = "b.p0000"
            for name in ("a", "b"):
                port = free_port()
                server = ServerProcess(tmp / name, serve_args(port, workers="1", grpc=False), port)
                server.start()
                servers.append(server)
            row = {
                "inputs": [{"name": f, "datatype": "FP32", "shape": [1, 1], "data": [0.1]} for f in FEATURES]
            }
            client = httpx.Client(timeout=10)

            def version() -> str:
                return str(
                    client.post(f"http://{servers[1].url}/v2/models/{model}/infer", json=row).json()[
                        "model_version"
                    ]
                )

            seen = []
            for i in range(moves):
                target = 1 + i % 2
                t0 = time.perf_counter()
                ws.registry.set_alias(model, "champion", target, reason="bench")
                while version() != str(target):
                    pass
                seen.append(time.perf_counter() - t0)
            seen.sort()
            p50, p99 = seen[len(seen) // 2], seen[min(len(seen) - 1, int(len(seen) * 0.99))]
            print(
                f"alias change seen by a second server over {moves} moves: p50 {p50 * 1e3:.0f} ms, "
                f"p99 {p99 * 1e3:.0f} ms, max {seen[-1] * 1e3:.0f} ms (target p99 <= 1 s)"
            )
            ws.close()
    finally:
        for server in servers:
            server.stop()
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--partitions", type=int, default=1000)
    parser.add_argument("--tune-partitions", type=int, default=200)
    parser.add_argument("--alias", action="store_true", help="time alias propagation between two servers")
    parser.add_argument("--moves", type=int, default=100)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if args.alias:
        bench_alias(args.moves, args.postgres)
        return
    produce_bench.PARTITIONS = args.partitions
    import ray

    from modelfab.compute import LocalExecutor
    from modelfab.compute.ray import RayExecutor

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        df = make_data(tmp / "d.csv")
        local = run_factory(tmp, "local", LocalExecutor())
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        on_ray = run_factory(tmp, "ray", RayExecutor())
        print(f"{args.partitions} partitions x 1 trial, {os.cpu_count()} cores")
        print(f"  local executor: {local:7.2f} s")
        print(
            f"  ray executor (local cluster): {on_ray:7.2f} s   "
            f"ratio ray/local = {on_ray / local:.2f} (target <= 1.2)"
        )
        groups = [(g[FEATURES].to_numpy(), g["y"].to_numpy()) for _, g in df.groupby("part")][
            : args.tune_partitions
        ]
        tuned = run_tune(tmp, groups)
        scale = args.tune_partitions / args.partitions
        print(f"  ray tune, same fit + export for {args.tune_partitions} partitions: {tuned:7.2f} s")
        print(
            f"  modelfab on ray per model: {on_ray / args.partitions * 1e3:.1f} ms; tune: "
            f"{tuned / args.tune_partitions * 1e3:.1f} ms; modelfab is {tuned / (on_ray * scale):.1f}x faster"
        )
        ray.shutdown()


if __name__ == "__main__":
    main()
