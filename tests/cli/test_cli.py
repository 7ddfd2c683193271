"""Every CLI path, with good and bad input, in-process through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from modelfab.cli.main import app
from tests.factory.conftest import RECIPE, edge_frame


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("MODELFAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


def run(cli: CliRunner, *args: str, code: int = 0) -> str:
    from modelfab.errors import ModelfabError

    result = cli.invoke(app, list(args))
    if isinstance(result.exception, ModelfabError):
        # main() turns these into one line and exit 1; the runner calls the app directly.
        assert code == 1, result.exception
        return str(result.exception)
    assert result.exit_code == code, (result.output, result.exception)
    return result.stdout if code == 0 else result.output


@pytest.fixture
def produced(cli: CliRunner, tmp_path: Path) -> Path:
    edge_frame().to_csv(tmp_path / "edge.csv", index=False)
    (tmp_path / "r.yaml").write_text(RECIPE)
    assert "imported edge@1" in run(cli, "data", "import", "edge", str(tmp_path / "edge.csv"))
    assert "unchanged" in run(cli, "data", "import", "edge", str(tmp_path / "edge.csv"))
    out = run(cli, "produce", str(tmp_path / "r.yaml"), "--workers", "2", "--no-progress")
    assert "3 passed the gate" in out and "failed tiny: too few rows" in out
    return tmp_path


def test_registry_commands(cli: CliRunner, produced: Path) -> None:
    rows = json.loads(run(cli, "models", "ls", "--json"))
    assert [r["name"] for r in rows] == ["r.good-1", "r.good-2", "r.we_ird_site"]
    assert {"name", "version", "partition", "aliases", "metrics"} <= set(rows[0])
    assert rows[0]["aliases"] == ["champion"]
    page = json.loads(run(cli, "models", "ls", "--json", "--limit", "1", "--after", "r.good-1@1"))
    assert [r["name"] for r in page] == ["r.good-2"]
    assert "r.good-1" in run(cli, "models", "ls", "--recipe", "r", "--all")
    shown = json.loads(run(cli, "models", "show", "r.good-1@champion", "--json"))
    assert shown["version"] == 1 and shown["lineage"]["partition"] == "good-1"
    assert "artifact sha256" in run(cli, "models", "show", "r.good-1")
    out = produced / "m.onnx"
    run(cli, "models", "export", "r.good-1@1", str(out))
    import onnx

    onnx.checker.check_model(onnx.load(str(out)))
    assert "-> 1" in run(cli, "alias", "set", "r.good-1", "challenger", "1", "--reason", "test")
    history = json.loads(run(cli, "alias", "history", "r.good-1", "--json"))
    assert [h["alias"] for h in history] == ["champion", "challenger"] and history[1]["reason"] == "test"
    runs = json.loads(run(cli, "runs", "ls", "--json"))
    assert runs[0]["counts"] == {"done": 3, "failed": 3}
    assert "edge" in run(cli, "data", "ls") and json.loads(run(cli, "data", "ls", "--json"))[0]["rows"] > 0
    again = run(cli, "produce", str(produced / "r.yaml"), "--no-progress")
    assert "already complete" in again


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("models", "show", "nope"), "model 'nope' does not exist"),
        (("models", "show", "r.good-1@9"), "has no version 9"),
        (("models", "show", "r.good-1@"), "not a model reference"),
        (("models", "show", "r.good-1@staging"), "no alias 'staging'"),
        (("models", "ls", "--after", "garbage"), "must be NAME@VERSION"),
        (("alias", "set", "r.good-1", "champion", "42"), "has no version 42"),
        (("alias", "set", "r.good-1", "bad alias!", "1"), "is not allowed"),
        (("data", "import", "x", "/no/such.csv"), "no such file"),
        (("produce", "/no/such.yaml"), "recipe file not found"),
        (("produce", "r.yaml", "--priority", "urgent"), "use high, normal or low"),
    ],
)
def test_bad_input_is_one_clear_error(
    cli: CliRunner, produced: Path, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], needle: str
) -> None:
    monkeypatch.chdir(produced)
    assert needle in run(cli, *args, code=1)


def test_usage_errors_exit_2(cli: CliRunner) -> None:
    assert run(cli, "models", "ls", "--limit", "0", code=2)
    assert run(cli, "alias", "set", "m", "champion", "one", code=2)


def test_main_prints_one_line_not_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "modelfab.cli.main", "models", "show", "nope"],
        env={"MODELFAB_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, modelfab.cli.main; "
        "print([m for m in ('sklearn', 'onnxruntime', 'sqlalchemy', 'pandas') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_runs_quota(cli: CliRunner) -> None:
    assert "no cap" in run(cli, "runs", "quota")
    assert "at most 3 job(s) at once" in run(cli, "runs", "quota", "--max-jobs", "3")
    assert "at most 3 job(s) at once" in run(cli, "runs", "quota")
    assert "no cap" in run(cli, "runs", "quota", "--clear")
    assert "not both" in run(cli, "runs", "quota", "--clear", "--max-jobs", "2", code=2)
    assert run(cli, "runs", "quota", "--max-jobs", "0", code=2)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--workers", "many"), "--workers 'many' is not allowed"),
        (("--max-memory", "lots"), "lots"),
        (("--log-sample-rate", "2"), ""),
        (("--max-body", "huge"), "--max-body: cannot read 'huge' as a size"),
        (("--max-body", "0"), "--max-body must be at least 1 byte"),
        (("--read-timeout", "0"), "--read-timeout"),
        (("--max-connections", "0"), "--max-connections"),
        (("--idle-ttl", "-1"), "--idle-ttl"),
        (("--db-pool-size", "0"), "--db-pool-size"),
    ],
)
def test_serve_bad_options_fail_before_starting(cli: CliRunner, args: tuple[str, ...], needle: str) -> None:
    code = 1 if args[0] in ("--workers", "--max-memory", "--max-body") else 2
    out = run(cli, "serve", "--port", "0", *args, code=code)
    assert needle in out
    if code == 1:
        assert "\n" not in out.strip()  # one line


def test_serve_passes_the_front_limits_on(cli: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelfab.serve

    got: dict[str, object] = {}
    monkeypatch.setattr(modelfab.serve, "run_server", lambda settings, **kw: got.update(kw))
    args = ("--max-body", "2MiB", "--read-timeout", "5", "--keepalive-timeout", "9", "--max-connections", "7")
    run(
        cli, "serve", "--port", "0", *args, "--idle-ttl", "0", "--db-pool-size", "3", "--db-max-overflow", "0"
    )
    assert (got["db_pool_size"], got["db_max_overflow"]) == (3, 0)
    assert got["max_body_bytes"] == 2 << 20
    assert (got["read_timeout_s"], got["keepalive_timeout_s"], got["max_connections"]) == (5.0, 9.0, 7)
    assert got["idle_ttl_s"] == 0.0
    help_text = run(cli, "serve", "--help")
    for option in ("--max-body", "--read-timeout", "--keepalive-timeout", "--max-connections"):
        assert option in help_text


def test_produce_retry_failed(cli: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelfab.factory.job as job_module

    real = job_module._train

    def flaky(ctx: Any, job: Any) -> Any:
        if job.key == "good-2":
            raise OSError("network share went away")
        return real(ctx, job)

    edge_frame().to_csv(tmp_path / "edge.csv", index=False)
    (tmp_path / "r.yaml").write_text(RECIPE)
    run(cli, "data", "import", "edge", str(tmp_path / "edge.csv"))
    with monkeypatch.context() as patch:
        patch.setattr(job_module, "_train", flaky)
        out = run(cli, "produce", str(tmp_path / "r.yaml"), "--workers", "2", "--no-progress")
    assert "failed good-2: job failed: OSError: network share went away" in out
    assert "already complete" in run(cli, "produce", str(tmp_path / "r.yaml"), "--no-progress")
    report = json.loads(run(cli, "produce", str(tmp_path / "r.yaml"), "--retry-failed", "--json"))
    assert (report["retried"], report["trained"], report["passed"], report["failed"]) == (1, 1, 1, 0)
    assert [r["name"] for r in json.loads(run(cli, "models", "ls", "--json"))] == [
        "r.good-1",
        "r.good-2",
        "r.we_ird_site",
    ]
    assert "data reason" in run(cli, "produce", "--help")
