"""The loop's watch results reach Prometheus text: one gauge per model, version and feature."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from modelfab.iterate.loop import IterationLoop
from modelfab.store import Workspace
from modelfab.traffic.watch import metrics_text as metrics
from modelfab.traffic.watch import render
from tests.iterate.conftest import Traffic, make_recipe, site_frame


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_render_is_valid_prometheus_text_with_escaped_labels() -> None:
    row = SimpleNamespace(
        name='we"ird\\model',
        version=3,
        metric="roc_auc",
        holdout=0.8,
        online=0.71,
        labelled=250,
        rows=300,
        psi={"tenure": 0.31, "plan": 0.02},
        prediction_psi=0.4,
    )
    empty = SimpleNamespace(
        name="m",
        version=1,
        metric="rmse",
        holdout=None,
        online=None,
        labelled=0,
        rows=0,
        psi={},
        prediction_psi=None,
    )
    got = samples(render([row, empty]))
    base = (("model", 'we"ird\\model'), ("version", "3"))
    assert got[("modelfab_online_metric", tuple(sorted((*base, ("metric", "roc_auc")))))] == 0.71
    assert got[("modelfab_feature_psi", tuple(sorted((*base, ("feature", "tenure")))))] == 0.31
    assert got[("modelfab_prediction_psi", base)] == 0.4
    assert got[("modelfab_labelled_predictions", (("model", "m"), ("version", "1")))] == 0
    assert render([]) == ""


def test_a_loop_pass_publishes_its_watch(produced: Workspace, traffic: Traffic) -> None:
    traffic.send(site_frame(), per_site=300, seed=1)
    IterationLoop(produced, [(make_recipe(), "<test>")], workers=1).run_once()
    got = samples(metrics(produced.settings)())
    online = {dict(k[1])["model"]: v for k, v in got.items() if k[0] == "modelfab_online_metric"}
    assert set(online) == {"churn.site-000", "churn.site-001", "churn.site-002"}
    assert all(0.0 <= v <= 1.0 for v in online.values())
    features = {dict(k[1])["feature"] for k in got if k[0] == "modelfab_feature_psi"}
    assert "tenure" in features
