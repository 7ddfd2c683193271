"""Routing for trials: canary shares, sticky request keys, shadows, policies read from the database."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from modelfab.settings import Settings
from modelfab.store import Workspace
from modelfab.store import schema as t
from modelfab.traffic.routing import Decision, Policy, Router, make_router, pick


def test_no_policy_serves_the_champion() -> None:
    assert pick(None, "m", "k") == Decision("champion", None)


def test_canary_share_and_sticky_keys() -> None:
    canary = Policy("canary", 7, 0.2)
    sides = [pick(canary, "m", f"user-{i}").serve for i in range(10_000)]
    share = sides.count(7) / len(sides)
    assert 0.18 < share < 0.22
    assert all(pick(canary, "m", f"user-{i}").serve == sides[i] for i in range(500))  # sticky
    assert pick(canary, "m", None, draw=0.1).serve == 7
    assert pick(canary, "m", None, draw=0.3).serve == "champion"


def test_shadow_serves_champion_and_shadows_the_challenger() -> None:
    assert pick(Policy("shadow", 3, 1.0), "m", "k") == Decision("champion", 3)


def test_router_reads_deployments(ws: Workspace) -> None:
    router = Router(ws.engine, ws.registry.tenant)
    assert router.route("m", "k") == Decision("champion")
    with ws.engine.begin() as conn:
        conn.execute(
            sa.insert(t.deployments).values(
                tenant="default",
                name="m",
                mode="shadow",
                version=2,
                champion=1,
                share=1.0,
                started_at=datetime.now(UTC),
            )
        )
    router.refresh()
    assert router.route("m", "k") == Decision("champion", 2)
    assert router.route("other", "k") == Decision("champion")
    router.close()


def test_a_server_workers_router_keeps_a_small_bounded_pool(pg_url: str, tmp_path: Path) -> None:
    router = make_router(Settings(home=tmp_path, database_url=pg_url))
    try:
        pool = router.engine.pool
        assert pool.size() == 1  # type: ignore[attr-defined]
        assert pool._max_overflow == 2  # type: ignore[attr-defined]
    finally:
        router.close()
        router.engine.dispose()
