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
