"""bench/gpu_check.py, tiny, on this machine: it exits 0 and says what it could not check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def test_gpu_check_runs_and_reports_what_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    args = ["--batch", "8", "--cpu-steps", "1", "--gpu-steps", "2", "--serve-seconds", "0.1"]
    args += ["--json", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = {r["check"]: r for r in json.loads(out.read_text())}
    assert not [r for r in rows.values() if r["status"] == "FAILED"]
    assert rows["export + parity"]["status"] == "ok"
    assert rows["train CPU"]["status"] == "ok"
    if not torch.cuda.is_available():
        assert "skipped: torch CUDA: torch" in proc.stdout
        assert rows["train CUDA"]["status"] == rows["DDP nccl"]["status"] == "skipped"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert "onnxruntime-gpu is not installed" in rows["onnxruntime CUDA"]["detail"]
        assert rows["serve ONNX on CPUExecutionProvider"]["status"] == "ok"
    assert "check" in proc.stdout and "status" in proc.stdout  # the table
