"""Windows by time as well as by count: ``iterate.window_time`` keeps only recent predictions."""

from __future__ import annotations

import time

import pytest

from modelfab.errors import RecipeError
from modelfab.iterate.monitor import watch_versions
from modelfab.iterate.window import labelled_rows, recent_rows
from modelfab.recipe import parse_recipe
from modelfab.store import Workspace
from modelfab.traffic.index import PredictionIndex
from tests.iterate.conftest import Traffic, make_recipe, site_frame


def test_since_drops_older_rows(produced: Workspace, traffic: Traffic) -> None:
    traffic.send(site_frame(), per_site=100, seed=1)
    PredictionIndex(produced.engine, produced.settings.home).sync()
    tenant, model = produced.registry.tenant, "churn.site-000"
    everything = recent_rows(produced.engine, tenant, [(model, 1)], 10_000)[(model, 1)]
    assert len(everything) > 0
    assert recent_rows(produced.engine, tenant, [(model, 1)], 10_000, since=time.time() + 60) == {}
    assert len(recent_rows(produced.engine, tenant, [(model, 1)], 10_000, since=0.0)[(model, 1)]) == len(
        everything
    )
    assert len(labelled_rows(produced.engine, tenant, model, 10_000, after=time.time() + 60)) == 0
    mv = produced.registry.get_version(model)
    future = watch_versions(produced, [mv], 2000, since=time.time() + 60)[(model, 1)]
    assert future.rows == 0 and future.labelled == 0


def test_window_time_is_a_validated_duration() -> None:
    spec = make_recipe().iterate
    assert spec is not None and spec.window_time is None and spec.since(100.0) is None
    text = "name: r\ntask: classification\ndataset: d\ntarget: y\ncandidates: [{family: mlp}]\nmetric: f1\n"
    timed = parse_recipe(text + "iterate: {window_time: 2h}\n").iterate
    assert timed is not None and timed.since(10_000.0) == 10_000.0 - 7200
    with pytest.raises(RecipeError, match="window_time must be a duration"):
        parse_recipe(text + "iterate: {window_time: soon}\n", file="r.yaml")
