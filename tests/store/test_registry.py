"""Registry behaviour, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from modelfab.errors import ConflictError, NotFoundError
from modelfab.store import JobOutcome, Workspace


def outcome(key: str, model: str, digest: str, promote: bool = True, score: float = 0.8) -> JobOutcome:
    return JobOutcome(
        key=key,
        partition=key,
        model=model,
        status="passed",
        recipe="r",
        metric="roc_auc",
        score=score,
        metrics={"roc_auc": score},
        lineage={"partition": key, "recipe": "r"},
        artifact_digest=digest,
        artifact_size=3,
        promote=promote,
    )


def make_run(ws: Workspace, run_id: str, keys: list[str]) -> None:
    ds, _ = ws.registry.add_dataset("d", "digest-" + run_id, "0" * 64, 10, [], "x.csv")
    ws.registry.ensure_run(run_id, recipe="r", recipe_digest="rd", dataset=ds, jobs=[(k, k) for k in keys])


def test_dataset_versions_are_content_addressed(any_ws: Workspace) -> None:
    reg = any_ws.registry
    v1, created1 = reg.add_dataset("sales", "a" * 64, "b" * 64, 5, [{"name": "x"}], "s.csv")
    again, created2 = reg.add_dataset("sales", "a" * 64, "b" * 64, 5, [{"name": "x"}], "s.csv")
    v2, created3 = reg.add_dataset("sales", "c" * 64, "d" * 64, 6, [{"name": "x"}], "s2.csv")
    assert (v1.version, created1, again.version, created2, v2.version, created3) == (
        1,
        True,
        1,
        False,
        2,
        True,
    )
    assert reg.get_dataset("sales").version == 2
    assert reg.get_dataset("sales", 1).digest == "a" * 64
    with pytest.raises(NotFoundError, match="modelfab data import sales"):
        reg.get_dataset("sales", 9)


def test_outcomes_register_versions_once_and_move_champion(any_ws: Workspace) -> None:
    reg = any_ws.registry
    make_run(any_ws, "run1", ["a", "b", "c"])
    digest = "e" * 64
    failed = JobOutcome(key="c", partition="c", model="r.c", status="failed", reason="too few rows")
    result = reg.record_outcomes(
        "run1", [outcome("a", "r.a", digest), outcome("b", "r.b", digest, promote=False), failed]
    )
    assert result == {"a": 1, "b": 1, "c": None}
    # The same job reported again (a retried or resumed job) gets its version back, not a new one.
    assert reg.record_outcomes("run1", [outcome("a", "r.a", digest)]) == {"a": 1}
    assert reg.job_states("run1") == {"a": "done", "b": "done", "c": "failed"}
    assert reg.get_version("r.a").aliases == ["champion"]
    with pytest.raises(NotFoundError, match="no alias 'champion'"):
        reg.get_version("r.b")
    # A later run of the same model gets version 2; the champion moves and history keeps both moves.
    make_run(any_ws, "run2", ["a"])
    assert reg.record_outcomes("run2", [outcome("a", "r.a", digest, score=0.9)]) == {"a": 2}
    assert reg.resolve("r.a") == 2
    assert reg.resolve("r.a", "latest") == 2
    assert reg.get_version("r.a", 1).aliases == []
    assert [(e.version, e.previous) for e in reg.alias_history("r.a")] == [(1, None), (2, 1)]
    runs = {r.id: r for r in reg.list_runs()}
    assert runs["run1"].counts == {"done": 2, "failed": 1}


def test_alias_set_checks_version_and_name(any_ws: Workspace) -> None:
    reg = any_ws.registry
    make_run(any_ws, "run1", ["a"])
    reg.record_outcomes("run1", [outcome("a", "r.a", "e" * 64)])
    assert reg.set_alias("r.a", "challenger", 1, actor="ana", reason="try") is None
    assert reg.get_version("r.a", "challenger").version == 1
    assert reg.alias_history("r.a", "challenger")[0].actor == "ana"
    with pytest.raises(NotFoundError, match="has no version 7"):
        reg.set_alias("r.a", "challenger", 7)
    with pytest.raises(NotFoundError, match="does not exist"):
        reg.set_alias("nope", "challenger", 1)
    with pytest.raises(ConflictError, match="not allowed"):
        reg.set_alias("r.a", "../x", 1)
    with pytest.raises(ConflictError, match="latest"):
        reg.set_alias("r.a", "latest", 1)
    reg.set_alias("r.a", "challenger", None, reason="done")
    with pytest.raises(NotFoundError):
        reg.get_version("r.a", "challenger")
    with pytest.raises(NotFoundError, match="does not exist"):
        reg.alias_history("unknown-model")


def test_keyset_pages_cover_every_version_once(any_ws: Workspace) -> None:
    reg = any_ws.registry
    keys = [f"p{i:02d}" for i in range(23)]
    make_run(any_ws, "run1", keys)
    reg.record_outcomes("run1", [outcome(k, f"r.{k}", "e" * 64) for k in keys])
    make_run(any_ws, "run2", keys[:5])
    reg.record_outcomes("run2", [outcome(k, f"r.{k}", "e" * 64) for k in keys[:5]])
    seen, after = [], None
    while True:
        page = reg.list_versions(all_versions=True, limit=7, after=after)
        if not page:
            break
        seen += [(v.name, v.version) for v in page]
        after = (page[-1].name, page[-1].version)
    assert len(seen) == 28 and len(set(seen)) == 28 and seen == sorted(seen)
    latest = reg.list_versions(limit=100)
    assert len(latest) == 23
    assert {v.version for v in latest if v.name in {f"r.{k}" for k in keys[:5]}} == {2}
    assert len(reg.list_versions(recipe="r", limit=100)) == 23
    assert reg.list_versions(recipe="other", limit=100) == []
    assert reg.count_versions() == 28
