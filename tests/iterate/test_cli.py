"""The loop's commands from the shell, good and bad input (registered here the way cli/main.py will)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from modelfab.cli import iterate as commands
from modelfab.store import Workspace
from modelfab.store import schema as t
from modelfab.traffic.index import PredictionIndex
from tests.cli.test_cli import run
from tests.iterate.conftest import RECIPE, Traffic, site_frame

app = typer.Typer()
for fn in (
    commands.feedback,
    commands.monitor,
    commands.history,
    commands.promote,
    commands.rollback,
    commands.iterate,
):
    app.command(fn.__name__)(fn)


@pytest.fixture
def cli(produced: Workspace, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("MODELFAB_HOME", str(produced.settings.home))
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def test_commands(cli: CliRunner, produced: Workspace, traffic: Traffic, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("COOLDOWN", "0s"))
    traffic.send(site_frame(), per_site=50, seed=1, label=False)
    PredictionIndex(produced.engine, produced.settings.home).sync()
    with produced.engine.connect() as conn:
        ids = [r[0] for r in conn.execute(sa.select(t.prediction_rows.c.id).distinct())]
    assert len(ids) == 9  # 3 sites x 50 rows in requests of 20
    fb = tmp_path / "fb.csv"
    fb.write_text("id,row,outcome\n" + "".join(f"{i},0,1\n" for i in ids) + "ghost,0,1\n")
    out = json.loads(run(cli, "feedback", str(fb), "--json"))
    assert out == {"accepted": len(ids), "unknown": ["ghost"]}
    mon = json.loads(run(cli, "monitor", "churn.site-000", "--json", "--recipe", str(recipe)))
    assert mon["versions"][0]["role"] == "champion" and mon["versions"][0]["rows"] > 0
    assert "tenure" in mon["versions"][0]["psi"]
    assert "max PSI" in run(cli, "monitor", "churn.site-000")
    assert "pass: 3 model(s) watched" in run(cli, "iterate", "--once", "--recipe", str(recipe))
    # Without --recipe the loop reads the recipes the registry ran that have an iterate: section.
    assert "pass: 3 model(s) watched" in run(cli, "iterate", "--once")
    assert json.loads(run(cli, "monitor", "churn.site-000", "--json"))["versions"][0]["rows"] > 0
    assert json.loads(run(cli, "history", "churn.site-000", "--json")) == []
    assert "no decisions yet" in run(cli, "history", "churn.site-000")
    assert "version 1 (was 1)" in run(
        cli, "promote", "churn.site-000", "1", "--reason", "pinning", "--actor", "ana"
    )
    rows = json.loads(run(cli, "history", "churn.site-000", "--json"))
    assert [(r["action"], r["version"], r["actor"], r["reason"]) for r in rows] == [
        ("promote", 1, "ana", "pinning")
    ]
    assert {"time", "action", "version", "reason"} <= set(rows[0])


def test_bad_input(cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "no such file" in run(cli, "feedback", str(tmp_path / "none.csv"), code=1)
    (tmp_path / "bad.csv").write_text("id,row,outcome\nabc,zz,1\n")
    assert "bad.csv:2: row must be a number" in run(cli, "feedback", str(tmp_path / "bad.csv"), code=1)
    assert "does not exist" in run(cli, "monitor", "nope", code=1)
    assert "does not exist" in run(cli, "history", "nope", code=1)
    assert "no version 9" in run(cli, "promote", "churn.site-000", "9", "--reason", "x", code=1)
    assert "--reason" in run(cli, "promote", "churn.site-000", "1", code=2)
    assert "--reason" in run(cli, "promote", "churn.site-000", "1", "--reason", " ", code=2)
    assert "no earlier champion" in run(cli, "rollback", "churn.site-000", "--reason", "x", code=1)
    assert "does not exist" in run(cli, "rollback", "nope", "--reason", "x", code=1)
    no_loop = tmp_path / "plain.yaml"
    no_loop.write_text(RECIPE.split("iterate:")[0])
    assert "no iterate: section" in run(cli, "iterate", "--once", "--recipe", str(no_loop), code=1)
    assert "not found" in run(cli, "iterate", "--once", "--recipe", str(tmp_path / "x.yaml"), code=1)
    assert "interval" in run(cli, "iterate", "--interval", "0", "--recipe", str(no_loop), code=2)
    monkeypatch.setenv("MODELFAB_HOME", str(tmp_path / "empty"))
    assert "--recipe FILE" in run(cli, "iterate", "--once", code=1)


def test_a_stored_recipe_that_no_longer_validates_is_skipped_with_a_warning(
    produced: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    good = produced.registry.latest_recipe_specs()
    assert good, "the produced fixture stores its recipe"
    bad = {
        **good[0],
        "name": "stale",
        "candidates": [{"family": "linear_regression"}],
    }  # not for classification
    monkeypatch.setattr(produced.registry, "latest_recipe_specs", lambda: [bad, *good])
    found = commands._recipes(None, produced)
    assert [r.name for r, _ in found] == [r["name"] for r in good]
    assert "skipping recipe stale" in capsys.readouterr().err
