"""Where a torch job trains: the CPU unless the recipe asks for GPUs and torch sees one. (On an NVIDIA
machine bench/gpu_check.py runs the same trainer on CUDA.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelfab.factory.trainers.torch import TorchParams, build_network, fit_network, training_device


def test_training_device_follows_the_recipe_and_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (training_device(0), training_device(0.5), training_device(1)) == ("cpu", "cuda", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_device(1) == "cpu"  # asked for, not there: the CPU, never an error


def test_a_trained_network_comes_back_on_the_cpu_ready_to_export() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(40, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 2, size=40)
    p = TorchParams.of({"epochs": 1, "batch_size": 8, "channels": 4, "depth": 2})
    net = build_network("cnn", p, 2)
    fit_network(net, images, labels, p, seed=0, device="cpu")
    assert {q.device.type for q in net.parameters()} == {"cpu"} and not net.training
