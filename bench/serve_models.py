"""Benchmark models: MLPs trained on scikit-learn's digits, exported to ONNX with skl2onnx."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

TINY = (128,)
HEAVY = (1024, 1024, 1024)


def train_mlp(hidden: tuple[int, ...], seed: int = 0) -> bytes:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=20, random_state=seed).fit(x / 16.0, y)
    onx = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
    )
    return onx.SerializeToString()


def variants(blob: bytes, n: int) -> list[bytes]:
    """``n`` distinct models from one: the last float initializer nudged per copy, so every artifact (and
    digest) differs and no server can share one session among them."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(blob)
    floats = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
    init = floats[-1]  # a bias: class labels and shapes are integer initializers
    base = numpy_helper.to_array(init).copy()
    out = []
    for i in range(n):
        arr = base.copy()
        arr.flat[0] += (i + 1) * 1e-4
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        out.append(model.SerializeToString())
    return out


def write_registry(folder: Path, models: dict[str, bytes]) -> None:
    """A registry folder read by bench/serve_source.py: index.json plus one blob per digest."""
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for name, blob in models.items():
        digest = hashlib.sha256(blob).hexdigest()
        (folder / digest).write_bytes(blob)
        index.append(
            {
                "name": name,
                "version": 1,
                "digest": digest,
                "size": len(blob),
                "aliases": ["champion"],
                "serving": {},
            }
        )
    (folder / "index.json").write_text(json.dumps(index))
