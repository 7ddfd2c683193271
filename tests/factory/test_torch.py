"""Torch families in the factory: per-camera image models through the process pool, ONNX with preprocessing
inside and parity, shared graphs, base + fine-tuning, torch_mlp on tabular data."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from modelfab.data.datasets import import_frame
from modelfab.errors import RecipeError
from modelfab.factory import produce
from modelfab.factory.trainers.torch import GRID
from modelfab.recipe import parse_recipe
from modelfab.serve.models.shared import split_weights
from modelfab.store import Workspace

SIZE = 16


def png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def camera_images(cameras: dict[str, tuple[int, tuple[str, ...]]], seed: int = 0) -> pd.DataFrame:
    """Per camera its own background colour; a 'bike' is a bright square at a random place."""
    rng = np.random.default_rng(seed)
    rows = []
    for camera, (n, labels) in cameras.items():
        background = rng.integers(20, 120, size=3)
        for i in range(n):
            label = labels[i % len(labels)]
            img = np.clip(background + rng.normal(0, 12, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
            if label == "bike":
                y, x = rng.integers(0, SIZE - 6, size=2)
                img[y : y + 6, x : x + 6] = 230
            rows.append({"camera": camera, "label": label, "image": png(img)})
    return pd.DataFrame(rows)


def store_images(ws: Workspace, name: str, frame: pd.DataFrame) -> None:
    import_frame(ws, name, frame, "test")


CAMERAS = {
    "cam-a": (64, ("bike", "empty")),
    "cam-b": (64, ("bike", "empty")),
    "cam-c": (64, ("bike", "empty")),
    "one-class": (40, ("empty",)),
    "tiny": (8, ("bike", "empty")),
}

IMAGE_RECIPE = """name: cams
task: image_classification
dataset: cams
target: label
image: image
partition_by: camera
seed: 5
candidates:
  - family: cnn
    params: {epochs: 3, batch_size: 16, channels: 8, depth: 2, augment: [flip], lr: 0.01}
metric: accuracy
min_rows: 30
"""


@pytest.fixture
def cams_ws(ws: Workspace) -> Workspace:
    store_images(ws, "cams", camera_images(CAMERAS))
    return ws


def session(ws: Workspace, name: str) -> ort.InferenceSession:
    mv = ws.registry.get_version(name)
    return ort.InferenceSession(ws.artifacts.get(mv.artifact_digest), providers=["CPUExecutionProvider"])


def test_cameras_train_through_the_pool_and_answer_uint8_pixels(cams_ws: Workspace) -> None:
    report = produce(cams_ws, parse_recipe(IMAGE_RECIPE), workers=2)
    assert (report.total, report.trained, report.failed) == (5, 3, 2)
    reasons = dict(report.failures)
    assert "only one class" in reasons["one-class"] and "too few rows: 8" in reasons["tiny"]
    mv = cams_ws.registry.get_version("cams.cam-a")
    assert mv.signature["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, SIZE, SIZE, 3]}]
    assert mv.signature["classes"] == ["bike", "empty"] and mv.params["family"] == "cnn"
    assert mv.metrics["onnx_label_agreement"] == 1.0 and mv.metrics["onnx_max_abs_diff"] < 1e-3
    sess = session(cams_ws, "cams.cam-a")
    inp = sess.get_inputs()[0]
    assert (inp.name, inp.type, inp.shape[1:]) == ("image", "tensor(uint8)", [SIZE, SIZE, 3])
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]
    frame = camera_images({"cam-a": (7, ("bike", "empty"))}, seed=9)
    from modelfab.factory.vision import decode_partition

    pixels = decode_partition(list(frame["image"]))
    labels, proba = sess.run(None, {"image": pixels})
    assert labels.shape == (7,) and set(labels) <= {"bike", "empty"}
    assert proba.shape == (7, 2) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    # Weights are kept beside the graph as plain arrays (no pickle) for fine-tuning later.
    with np.load(io.BytesIO(cams_ws.artifacts.get(mv.lineage["weights_digest"])), allow_pickle=False) as npz:
        assert "head.weight" in npz.files and npz["head.weight"].shape == (2, 16 * GRID * GRID)  # 4x4 grid


def test_camera_models_of_one_architecture_share_one_graph(cams_ws: Workspace) -> None:
    produce(cams_ws, parse_recipe(IMAGE_RECIPE), workers=1, only=["cam-a", "cam-b"])
    splits = [
        split_weights(cams_ws.artifacts.get(cams_ws.registry.get_version(n).artifact_digest))
        for n in ("cams.cam-a", "cams.cam-b")
    ]
    assert splits[0] is not None and splits[1] is not None
    assert splits[0].key == splits[1].key
    assert any(not np.array_equal(splits[0].weights[k], splits[1].weights[k]) for k in splits[0].weights)


def test_a_seed_gives_the_same_model(cams_ws: Workspace) -> None:
    produce(cams_ws, parse_recipe(IMAGE_RECIPE), workers=1, only=["cam-b"])
    first = cams_ws.registry.get_version("cams.cam-b")
    again = parse_recipe(IMAGE_RECIPE.replace("name: cams", "name: cams2"))
    produce(cams_ws, again, workers=1, only=["cam-b"])
    second = cams_ws.registry.get_version("cams2.cam-b")
    assert first.lineage["weights_digest"] == second.lineage["weights_digest"]


BASE_RECIPE = IMAGE_RECIPE.replace("name: cams", "name: global").replace("partition_by: camera\n", "")


def test_head_finetune_starts_from_the_base_and_keeps_its_body(cams_ws: Workspace) -> None:
    produce(cams_ws, parse_recipe(BASE_RECIPE), workers=1)
    base = cams_ws.registry.get_version("global.all")
    tuned = (
        IMAGE_RECIPE.replace("name: cams", "name: tuned")
        + "base: {model: global.all@champion, finetune: head}\n"
    )
    report = produce(cams_ws, parse_recipe(tuned), workers=2, only=["cam-a", "cam-c"])
    assert report.trained == 2, report.failures
    mv = cams_ws.registry.get_version("tuned.cam-a")
    assert mv.lineage["base"]["model"] == "global.all" and mv.lineage["base"]["finetune"] == "head"
    assert mv.lineage["base"]["weights_digest"] == base.lineage["weights_digest"]

    def arrays(digest: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(cams_ws.artifacts.get(digest)), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}

    before, after = arrays(base.lineage["weights_digest"]), arrays(mv.lineage["weights_digest"])
    body = [k for k in before if k.startswith("body.")]
    assert body and all(np.array_equal(before[k], after[k]) for k in body)
    assert not np.array_equal(before["head.weight"], after["head.weight"])


def test_all_layer_finetune_and_a_base_trained_in_the_run(cams_ws: Workspace) -> None:
    recipe = IMAGE_RECIPE + "base: {train: {workers: 1, epochs: 1}, finetune: all}\n"
    report = produce(cams_ws, parse_recipe(recipe), workers=1, only=["cam-b"])
    assert report.trained == 1, report.failures
    lineage = cams_ws.registry.get_version("cams.cam-b").lineage
    assert lineage["base"]["trained"] == "all partitions" and lineage["base"]["rows"] == sum(
        n for n, _ in CAMERAS.values()
    )
    assert lineage["base"]["weights_digest"] != lineage["weights_digest"]


def test_a_base_that_does_not_exist_is_refused_naming_the_field(cams_ws: Workspace) -> None:
    recipe = IMAGE_RECIPE + "base: {model: nothing.here@champion}\n"
    with pytest.raises(RecipeError, match=r"field base\.model: 'nothing\.here@champion' does not exist"):
        produce(cams_ws, parse_recipe(recipe), workers=1)


def test_a_corrupt_image_fails_its_camera_only(ws: Workspace) -> None:
    frame = camera_images({"cam-a": (40, ("bike", "empty")), "cam-b": (40, ("bike", "empty"))})
    frame.loc[frame.index[3], "image"] = b"not an image"
    store_images(ws, "cams", frame)
    report = produce(ws, parse_recipe(IMAGE_RECIPE), workers=1)
    assert report.trained == 1 and [p for p, _ in report.failures] == ["cam-a"]
    assert "decode" in report.failures[0][1]


def tabular(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 240
    x = rng.normal(size=(n, 3))
    frame = pd.DataFrame(
        {"site": np.where(np.arange(n) < 120, "s1", "s2"), "a": x[:, 0], "b": x[:, 1], "c": x[:, 2]}
    )
    frame["value"] = 2 * x[:, 0] - x[:, 1] + rng.normal(scale=0.1, size=n)
    frame["churned"] = (frame["value"] > 0).astype(int)
    frame.loc[frame.index[::10], "a"] = np.nan
    return frame


TABULAR = """name: t
task: {task}
dataset: tab
target: {target}
features: [a, b, c]
partition_by: site
candidates:
  - family: torch_mlp
    params: {{epochs: 20, batch_size: 32, optimizer: adamw, lr_schedule: cosine, early_stopping: 5}}
    search: {{hidden: {{choices: [[16], [32, 16]]}}, lr: {{low: 0.003, high: 0.03, log: true}}}}
trials: {trials}
metric: {metric}
"""


@pytest.mark.parametrize(
    ("task", "target", "metric", "trials", "floor"),
    [("classification", "churned", "accuracy", 2, 0.75), ("regression", "value", "r2", 1, 0.5)],
)
def test_torch_mlp_on_tabular_features(
    ws: Workspace, task: str, target: str, metric: str, trials: int, floor: float
) -> None:
    from modelfab.data import import_frame

    import_frame(ws, "tab", tabular(), "test")
    text = TABULAR.format(task=task, target=target, metric=metric, trials=trials)
    report = produce(ws, parse_recipe(text), workers=1)
    assert report.trained == 2, report.failures
    mv = ws.registry.get_version("t.s1")
    assert mv.score is not None and mv.score > floor
    assert [i["name"] for i in mv.signature["inputs"]] == ["a", "b", "c"]
    sess = session(ws, "t.s1")
    feeds = {c: np.array([[np.nan], [1.0]], dtype=np.float32) for c in ("a", "b", "c")}
    out = sess.run(None, feeds)
    assert out[0].shape[0] == 2 and np.all(np.isfinite(np.asarray(out[-1], dtype=float)))
    if trials > 1:
        assert mv.lineage["trials"] == 2 and "validation_accuracy" in mv.metrics


def test_torch_mlp_refuses_categorical_features(ws: Workspace) -> None:
    from modelfab.data import import_frame

    frame = tabular()
    frame["plan"] = np.where(frame["b"] > 0, "pro", "basic")
    import_frame(ws, "tab", frame, "test")
    text = TABULAR.format(task="classification", target="churned", metric="accuracy", trials=1)
    text = text.replace("features: [a, b, c]", "features: [a, b, plan]")
    with pytest.raises(RecipeError, match=r"candidates\.0\.family: torch_mlp takes numeric features only"):
        produce(ws, parse_recipe(text), workers=1)


def test_a_base_trained_by_a_distributed_job(cams_ws: Workspace) -> None:
    pytest.importorskip("modelfab.factory.distributed", reason="the distributed trainer is not in this tree")
    recipe = IMAGE_RECIPE + "base: {train: {workers: 2, epochs: 1}, finetune: head}\n"
    report = produce(cams_ws, parse_recipe(recipe), workers=1, only=["cam-a"])
    assert report.trained == 1, report.failures
    base = cams_ws.registry.get_version("cams.cam-a").lineage["base"]
    assert (base["workers"], base["finetune"]) == (2, "head")
    # In CI a rank has now and then died mid-training ("terminate called without an active exception",
    # from native code) and the elastic agent restarted the group, as designed: the restarts are recorded
    # and the base still trains. Not reproduced alone; see the closing note of issue 10.
    assert isinstance(base["restarts"], int) and 0 <= base["restarts"] <= 3


def test_one_large_job_trains_data_parallel(cams_ws: Workspace) -> None:
    # No partition_by: one model on every camera, its final fit by 2 gloo processes.
    recipe = IMAGE_RECIPE.replace("partition_by: camera\n", "").replace("name: cams", "name: everyone")
    report = produce(cams_ws, parse_recipe(recipe + "distributed: {workers: 2}\n"), workers=1)
    assert report.trained == 1, report.failures
    mv = cams_ws.registry.get_version("everyone.all")
    dist = mv.lineage["distributed"]
    assert dist["workers"] == 2 and dist["steps"] > 0 and 0 <= dist["restarts"] <= 3
    assert mv.metrics["onnx_label_agreement"] == 1.0


@pytest.mark.parametrize(
    "extra, needle",
    [
        ("distributed: {workers: 2}\nbase: {model: a.b}\n", "does not combine with base"),
        ("distributed: {workers: 0}\n", "distributed.workers"),
        ("distributed: {workers: 2, executor: spark}\n", "distributed.executor"),
    ],
)
def test_bad_distributed_sections_name_the_field(extra: str, needle: str) -> None:
    with pytest.raises(RecipeError, match=needle):
        parse_recipe(IMAGE_RECIPE + extra)


def test_distributed_is_for_image_networks() -> None:
    tabular = TABULAR.format(task="classification", target="churned", metric="accuracy", trials=1)
    with pytest.raises(RecipeError, match="distributed"):
        parse_recipe(tabular + "distributed: {workers: 2}\n")
