"""Optimized graphs of small models that load again and again: used from the third load on, checked on
every read, bounded on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import FakeSource

from modelfab.serve.models.cache import ModelCache
from modelfab.serve.models.prepared import PreparedGraphs
from modelfab.serve.models.runtime import OnnxModel


def _load_and_evict(cache: ModelCache, source: FakeSource, name: str) -> OnnxModel:
    async def once() -> OnnxModel:
        async with cache.use(source.resolve(name, None)) as model:
            return model

    model = asyncio.run(once())
    cache.unload(name)
    return model


def test_reloads_build_from_the_optimized_graph(source: FakeSource, tmp_path: Path) -> None:
    prepared = PreparedGraphs(tmp_path / "prepared")
    cache = ModelCache(source.fetch, 1 << 30, prepared=prepared)
    x = np.random.default_rng(0).random((3, 64), dtype=np.float32)
    loads = [_load_and_evict(cache, source, "digits") for _ in range(4)]
    assert [m.optimized for m in loads] == [False, False, True, True]
    assert source.fetches == 2  # the third and fourth loads did not fetch the artifact
    (graph,) = [p for p in (tmp_path / "prepared").iterdir() if not p.name.startswith(".")]
    assert graph.read_bytes()[4:8] == b"ORTM"  # ONNX Runtime's own format, not protobuf
    want = loads[0].run({"input": x})
    for m in loads[1:]:
        for name, array in m.run({"input": x}).items():
            np.testing.assert_allclose(array, want[name], rtol=1e-5, atol=1e-6)


def test_a_changed_graph_is_refused_and_the_artifact_used(source: FakeSource, tmp_path: Path) -> None:
    prepared = PreparedGraphs(tmp_path / "prepared")
    cache = ModelCache(source.fetch, 1 << 30, prepared=prepared)
    for _ in range(2):
        _load_and_evict(cache, source, "double")
    digest = source.resolve("double", None).artifact_digest
    path = tmp_path / "prepared" / digest
    path.write_bytes(path.read_bytes() + b"\0")
    tampered = path.read_bytes()
    model = _load_and_evict(cache, source, "double")
    assert not model.optimized
    assert source.fetches == 3
    assert prepared.get(digest) not in (None, tampered)  # prepared afresh from the artifact


def test_disk_use_is_bounded(source: FakeSource, tmp_path: Path) -> None:
    sizes = []
    for name in ("double", "fixed"):  # how big each prepared graph is (ORT format)
        probe = PreparedGraphs(tmp_path / f"probe-{name}")
        probe_cache = ModelCache(source.fetch, 1 << 30, prepared=probe)
        for _ in range(2):
            _load_and_evict(probe_cache, source, name)
        sizes.append(probe.used)
    assert min(sizes) > 0
    prepared = PreparedGraphs(tmp_path / "prepared", max_bytes=sum(sizes) - 1)  # room for one of them
    cache = ModelCache(source.fetch, 1 << 30, prepared=prepared)
    for name in ("double", "fixed"):
        for _ in range(2):
            _load_and_evict(cache, source, name)
    files = [p for p in (tmp_path / "prepared").iterdir() if not p.name.startswith(".")]
    assert len(files) == 1 and prepared.used <= prepared.max_bytes
    prepared.close()
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("max_bytes", [0])
def test_off_when_given_no_room(source: FakeSource, tmp_path: Path, max_bytes: int) -> None:
    prepared = PreparedGraphs(tmp_path / "prepared", max_bytes=max_bytes)
    cache = ModelCache(source.fetch, 1 << 30, prepared=prepared)
    assert not any(_load_and_evict(cache, source, "double").optimized for _ in range(3))


def test_a_graph_that_cannot_be_prepared_still_loads(source: FakeSource, tmp_path: Path) -> None:
    prepared = PreparedGraphs(tmp_path / "prepared")
    prepared.close()  # ONNX Runtime cannot write the optimized graph there any more
    cache = ModelCache(source.fetch, 1 << 30, prepared=prepared)
    loads = [_load_and_evict(cache, source, "double") for _ in range(3)]
    assert not any(m.optimized for m in loads)
    assert prepared.used == 0


def test_never_kept_for_a_workspace_encrypted_at_rest(source: FakeSource, tmp_path: Path) -> None:
    from modelfab.serve.options import ServeOptions
    from modelfab.serve.service import InferenceService
    from modelfab.settings import Settings

    bare = ServeOptions(router_factory=None, extra_routes=None, extra_metrics=None)
    plain = InferenceService(source, bare, home=tmp_path / "a", settings=Settings(home=tmp_path / "a"))
    sealed_settings = Settings(home=tmp_path / "b", encryption_key="33" * 32)
    sealed = InferenceService(source, bare, home=tmp_path / "b", settings=sealed_settings)
    assert plain.prepared is not None and sealed.prepared is None
