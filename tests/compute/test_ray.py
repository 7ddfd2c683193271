"""The factory on a real Ray cluster (a head and one more node on loopback): same jobs, same results,
and a node lost mid-run costs retries, never duplicate versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfab.compute.ray import RayExecutor
from modelfab.data import import_dataset
from modelfab.factory import produce
from modelfab.factory.context import JobContext, KeyRef
from modelfab.factory.plan import make_plan
from modelfab.recipe import parse_recipe
from modelfab.settings import Settings
from modelfab.store import Workspace
from tests.factory.test_context import key_forms
from tests.factory.test_resume import RECIPE, SITES, many_sites

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    c = cluster_utils.Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, include_dashboard=False)
    yield c
    ray.shutdown()
    c.shutdown()


def workspace(tmp_path: Path, settings: Settings | None = None) -> Workspace:
    ws = Workspace.open(settings or Settings(home=tmp_path / "home"))
    many_sites(tmp_path / "many.csv")
    import_dataset(ws, "many", tmp_path / "many.csv")
    return ws


def check(ws: Workspace) -> None:
    versions = ws.registry.list_versions(all_versions=True, limit=1000)
    assert sorted(v.name for v in versions) == [f"m.s{i:02d}" for i in range(SITES)]
    assert all(v.version == 1 and v.aliases == ["champion"] for v in versions)
    for v in versions:
        ws.artifacts.get(v.artifact_digest)


def test_production_run_on_a_ray_cluster(cluster: Any, tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    recipe = parse_recipe(RECIPE.format(name="m", trials=1) + "resources: {cpus: 1}\n")
    executor = RayExecutor(resources=recipe.resources)
    assert executor.workers == 2
    report = produce(ws, recipe, executor=executor)
    assert report.trained == SITES and report.failed == 0
    check(ws)
    nodes = {v.lineage["run_id"] for v in ws.registry.list_versions(limit=1000)}
    assert nodes == {report.run_id}


def test_node_lost_mid_run_still_completes_without_duplicates(cluster: Any, tmp_path: Path) -> None:
    ws = workspace(tmp_path)
    recipe = parse_recipe(RECIPE.format(name="m", trials=3))
    extra = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    state = {"killed": False}

    def on_progress(p: Any) -> None:
        if p.done >= 3 and not state["killed"]:
            cluster.remove_node(extra, allow_graceful=False)
            state["killed"] = True

    report = produce(ws, recipe, executor=RayExecutor(), on_progress=on_progress)
    assert state["killed"]
    assert report.trained == SITES, report.failures
    check(ws)


def test_encrypted_run_sends_ray_a_key_reference_not_the_key(cluster: Any, tmp_path: Path) -> None:
    key = bytes(range(7, 39))
    key_file = tmp_path / "key"
    key_file.write_text(key.hex())
    ws = workspace(tmp_path, Settings(home=tmp_path / "home", encryption_key_file=key_file))
    recipe = parse_recipe(RECIPE.format(name="m", trials=1))
    context = JobContext(make_plan(ws, recipe), ws.artifacts, "test", KeyRef.of(ws.settings))
    sent = ray.cloudpickle.dumps(context)  # how Ray serializes what the executor shares
    assert not [form for form in key_forms(key) if form in sent]
    report = produce(ws, recipe, executor=RayExecutor())
    assert report.trained == SITES, report.failures
    check(ws)  # the workers found the key through the file and sealed what the driver can open
    blob = next(p for p in (tmp_path / "home" / "artifacts").rglob("*") if p.is_file()).read_bytes()
    assert blob.startswith(b"MFENC1")
