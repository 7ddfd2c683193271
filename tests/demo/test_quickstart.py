"""The main job, small: generate, import, produce, serve, demo traffic, the loop — as `make quickstart`
runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_quickstart_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "MODELFAB_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    cmd = [
        sys.executable,
        "-m",
        "modelfab.cli.main",
        "quickstart",
        "--sites",
        "6",
        "--rows",
        "300",
        "--demo-seconds",
        "1",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    passed = re.search(r"(\d+) of 6 site models passed the gate", out)
    assert passed is not None and int(passed.group(1)) >= 4, out
    assert "failed site-006: too few rows" in out
    assert " 0 errors" in out and "req/s" in out and "/metrics" in out
    # The loop part: three sites' customers change; exactly those are retrained, canaried and promoted.
    promoted = re.findall(r"(churn\.site-\d+) \(customers' behaviour shifted\): champion v1 -> v2", out)
    assert len(promoted) == 3, out
    for name in promoted:
        timeline = out[out.index(f"{name} (customers'") :].splitlines()[1:4]
        assert [line.split()[1] for line in timeline] == ["retrain", "canary", "promote"], out
    assert re.search(r"stable sites left alone \(\d\): .*champions unchanged", out), out
    assert "was acted on" not in out
    assert "\n0 failed requests during the rollout\n" in out
    again = subprocess.run([*cmd[:-2], "--no-serve"], env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already complete" in again.stdout
