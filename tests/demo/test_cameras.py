"""The camera story, small: images in as a folder, a global CNN, one fine-tuned CNN per camera, judged on
unseen images, served as raw UINT8 pixels through tritonclient (as `modelfab quickstart --story cameras`)."""

from __future__ import annotations

import statistics

from modelfab.demo.cameras import run_camera_demo
from modelfab.store import Workspace
from tests.cli.test_cli import run


def test_camera_story_end_to_end(ws: Workspace) -> None:
    lines: list[str] = []
    report = run_camera_demo(
        ws,
        cameras=6,
        images_per_camera=160,
        unseen=24,
        epochs=3,
        finetune_epochs=2,
        workers=2,
        say=lines.append,
    )
    assert report.trained == 4 and list(report.skipped) == ["cam-004"]  # cam-005 is too small to import
    assert "only one class" in report.skipped["cam-004"]
    assert sorted(report.camera_accuracy) == ["cam-000", "cam-001", "cam-002", "cam-003"]
    # Far above chance on images neither model saw; the global model is the comparison, not a target.
    assert statistics.median(report.camera_accuracy.values()) >= 0.8
    assert report.served == 4 * 24 and report.served_agree == report.served
    # The four camera models share their worker's one session (or one per worker, if it scaled out).
    assert report.served_models == 4 and report.shared_sessions is not None and report.shared_sessions < 4
    mv = ws.registry.get_version("cameras.cam-000")
    assert mv.lineage["base"]["model"] == "cameras-global.all" and mv.lineage["base"]["finetune"] == "all"
    assert any(line.startswith("median gain") for line in lines)


def test_quickstart_refuses_an_unknown_story() -> None:
    from typer.testing import CliRunner

    assert "--story must be churn or cameras" in run(CliRunner(), "quickstart", "--story", "dogs", code=1)
