"""Distributed data parallel: checkpoints that verify, and a job that survives a SIGKILLed rank."""

from __future__ import annotations

import functools
import io
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from modelfab.errors import IntegrityError, RecipeError, TrainingError
from modelfab.factory.distributed import (
    AsyncCheckpointer,
    CheckpointStore,
    DistributedSpec,
    lr_at,
    train_distributed,
)
from modelfab.factory.distributed.worker import FAULT_ENV
from modelfab.store.artifacts import ArtifactStore


def tiny_cnn(classes: int = 2) -> torch.nn.Module:
    """Takes uint8 NHWC like the exported graphs, so preprocessing rides inside the model."""

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.norm = torch.nn.BatchNorm2d(4)
            self.head = torch.nn.Linear(4, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.permute(0, 3, 1, 2).float().div(255.0)
            x = torch.relu(self.norm(self.conv(x)))
            return self.head(x.mean(dim=(2, 3)))

    return Net()


def images(n: int = 192, size: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.integers(0, 120, size=(n, size, size, 3)).astype(np.uint8)
    x[labels == 1, :, :, 0] += 120  # class 1 is redder
    return x, labels.astype(np.int64)


@pytest.mark.parametrize(
    ("schedule", "step", "total", "want"),
    [
        ("constant", 7, 10, 0.1),
        ("cosine", 0, 10, 0.1),
        ("cosine", 5, 10, 0.05),
        ("cosine", 10, 10, 0.0),
        ("step", 0, 9, 0.1),
        ("step", 3, 9, 0.01),
        ("step", 8, 9, 0.001),
    ],
)
def test_lr_schedule(schedule: str, step: int, total: int, want: float) -> None:
    assert lr_at(0.1, schedule, step, total) == pytest.approx(want)  # type: ignore[arg-type]


def test_spec_rejects_bad_settings() -> None:
    with pytest.raises(RecipeError, match="workers"):
        DistributedSpec(workers=0)
    with pytest.raises(RecipeError, match="unknown"):
        DistributedSpec(augment=("rotate",))


def test_store_skips_a_corrupt_checkpoint_for_an_older_one(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.save(b"first", step=2, epoch=0, batch=2)
    newest = store.save(b"second", step=4, epoch=1, batch=0)
    (tmp_path / "blobs" / newest.digest).write_bytes(b"secoNd")
    with pytest.raises(IntegrityError, match="step 4"):
        store.load(newest)
    found = store.latest()
    assert found is not None
    assert (found[0].step, found[1]) == (2, b"first")
    store.prune(1)
    assert [c.step for c in store.list()] == [4]


def test_store_over_encrypted_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from modelfab.errors import EncryptionError
    from modelfab.factory.context import KeyRef, key_fingerprint

    key = bytes(range(32))
    artifacts = ArtifactStore(str(tmp_path / "artifacts"), key=key)
    with pytest.raises(EncryptionError, match="key_ref"):
        pickle.dumps(CheckpointStore(tmp_path / "ckpt", artifacts))  # would carry the key to the ranks
    store = CheckpointStore(tmp_path / "ckpt", artifacts, key_ref=KeyRef(key_fingerprint(key)))
    ckpt = store.save(b"weights" * 100, step=3, epoch=0, batch=3)
    assert b"weights" not in Path(artifacts.path(ckpt.digest)).read_bytes()
    shipped = pickle.dumps(store)  # as the ranks get it
    assert key not in shipped and key.hex().encode() not in shipped
    monkeypatch.setenv("MODELFAB_ENCRYPTION_KEY", key.hex())  # where the ranks run
    again = pickle.loads(shipped)
    assert again.latest() == (ckpt, b"weights" * 100)
    assert pickle.loads(pickle.dumps(store.scoped("job"))).list() == []


def test_async_checkpoint_writes_a_snapshot_not_the_live_tensors(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    writer = AsyncCheckpointer(store, keep=1)
    weight = torch.zeros(1000)
    writer.submit({"model": {"w": weight}}, step=1, epoch=0, batch=1)
    weight += 1  # training goes on while the write runs
    writer.submit({"model": {"w": weight}}, step=2, epoch=0, batch=2)
    writer.close()
    found = store.latest()
    assert found is not None and found[0].step == 2
    assert writer.written == 2 and [c.step for c in store.list()] == [2]
    state = torch.load(io.BytesIO(found[1]), weights_only=True)
    assert torch.equal(state["model"]["w"], torch.ones(1000))


def test_builder_in_main_is_refused(tmp_path: Path) -> None:
    def local() -> torch.nn.Module:
        return tiny_cnn()

    local.__module__ = "__main__"
    x, y = images(8)
    with pytest.raises(TrainingError, match="__main__"):
        train_distributed(local, x, y, DistributedSpec(), tmp_path)


def test_sigkilled_rank_resumes_from_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y = images()
    handler = signal.getsignal(signal.SIGTERM)
    spec = DistributedSpec(workers=2, epochs=2, batch_size=16, checkpoint_every=4, augment=("flip", "crop"))
    build = functools.partial(tiny_cnn, classes=2)
    clean = train_distributed(build, x, y, spec, tmp_path / "clean", seed=3)
    assert (clean.restarts, clean.steps_redone, clean.steps) == (0, 0, 12)

    from modelfab.factory.context import KeyRef, key_fingerprint

    key = bytes(range(32))
    artifacts = ArtifactStore(str(tmp_path / "artifacts"), key=key)
    monkeypatch.setenv("MODELFAB_ENCRYPTION_KEY", key.hex())  # the ranks read it where they run
    monkeypatch.setenv(FAULT_ENV, f"1:10:{tmp_path / 'killed-once'}")
    store = CheckpointStore(tmp_path / "ckpt", artifacts, key_ref=KeyRef(key_fingerprint(key)))
    killed = train_distributed(build, x, y, spec, store, seed=3)

    assert (tmp_path / "killed-once").exists()
    # One restart for the kill. In CI a fresh rank has also aborted now and then ("terminate called without
    # an active exception", SIGABRT from native code, not reproduced alone): the agent restarts the group
    # again, as it must, so more than one restart is tolerated here (max_restarts is 3). See issue 10's note.
    assert 1 <= killed.restarts <= spec.max_restarts
    # Checkpoints every 4 steps are written in the background: the one of step 8 is usually complete when
    # rank 1 dies at step 10, but on a loaded machine the write may still be running, and the group then
    # resumes from step 4.
    assert killed.resumed_from and set(killed.resumed_from) <= {4, 8}
    assert killed.steps_redone >= 1
    assert killed.restart_seconds > 0
    assert killed.steps == 12
    for name, tensor in clean.state_dict.items():
        torch.testing.assert_close(killed.state_dict[name], tensor)
    assert os.listdir(tmp_path / "artifacts")  # checkpoints went to the (encrypted) artifact store
    assert signal.getsignal(signal.SIGTERM) is handler  # the elastic agent's handlers are gone again


def test_too_many_failures_is_a_training_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = images(64)
    monkeypatch.setenv(FAULT_ENV, f"0:1:{tmp_path / 'marker'}")
    spec = DistributedSpec(workers=2, epochs=1, batch_size=16, checkpoint_every=1, max_restarts=0)
    with pytest.raises(TrainingError, match="after 0 restarts"):
        train_distributed(tiny_cnn, x, y, spec, tmp_path / "ckpt")


@pytest.mark.slow
def test_ray_train_path_survives_a_sigkill(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray.train.torch")
    x, y = images(128)
    spec = DistributedSpec(workers=2, epochs=2, batch_size=16, checkpoint_every=2, executor="ray")
    local = train_distributed(
        tiny_cnn, x, y, DistributedSpec(**{**vars(spec), "executor": "local"}), tmp_path / "a"
    )
    monkeypatch.setenv(FAULT_ENV, f"1:5:{tmp_path / 'killed-once-ray'}")
    on_ray = train_distributed(tiny_cnn, x, y, spec, tmp_path / "b")
    assert (tmp_path / "killed-once-ray").exists()
    assert on_ray.restarts == 1 and on_ray.resumed_from == [4]
    for name, tensor in local.state_dict.items():
        torch.testing.assert_close(on_ray.state_dict[name], tensor)
