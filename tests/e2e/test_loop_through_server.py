"""The closed loop through a real server: a shifted site is retrained, canaried and promoted, stable sites
are left alone, and no request fails on the way."""

from __future__ import annotations

import httpx

from modelfab.demo.loop import format_decision, loop_demo
from modelfab.demo.server import ServerProcess
from modelfab.store import Workspace
from tests.e2e.conftest import ROWS, SEED, SITES, recipe
from tests.serve.serve_helpers import wait_for

SHIFTED = "churn.site-001"
STABLE = ["churn.site-000", "churn.site-002"]


def test_a_shifted_site_is_retrained_and_promoted_through_the_server(
    ws: Workspace, server: ServerProcess
) -> None:
    spec = recipe().iterate
    assert spec is not None
    report = loop_demo(
        ws,
        server.url,
        recipe(),
        ["site-001"],
        stable_sites=["site-000", "site-002"],
        seed=SEED,
        sites=SITES,
        rows_per_site=ROWS,
        workers=1,
    )
    timeline = report.timelines[SHIFTED]
    assert [r.action for r in timeline] == ["retrain", "canary", "promote"], [
        format_decision(r) for r in timeline
    ]
    assert timeline[0].trigger == "metric_drop"
    # The server routed the canary: both sides collected their labelled trial predictions through it.
    promoted = timeline[-1].evidence
    assert promoted["challenger_labels"] >= spec.canary.min_labels
    assert promoted["champion_labels"] >= spec.canary.min_labels
    assert promoted["challenger"] > promoted["champion"]
    assert report.champions_after == {SHIFTED: 2, **dict.fromkeys(STABLE, 1)}
    assert report.answered_after[SHIFTED] == {2: sum(report.answered_after[SHIFTED].values())}
    for name in STABLE:
        assert report.timelines[name] == [] and not report.touched(name)
        assert report.served[(name, 1)] >= spec.min_samples  # watched with enough labels to judge
    assert report.requests > 100 and report.failed == 0, report.errors
    lines = report.lines()
    assert "0 failed requests during the rollout" in lines
    assert any(line.startswith("stable sites left alone (2)") for line in lines)

    # The loop's watch is in the server's /metrics (read from the registry; refreshed every few seconds).
    def watched() -> bool:
        text = httpx.get(f"http://{server.url}/metrics", timeout=10).text
        return f'modelfab_online_metric{{model="{STABLE[0]}",version="1",metric="roc_auc"}}' in text

    wait_for(watched, 15, "the loop's online metric in /metrics")
