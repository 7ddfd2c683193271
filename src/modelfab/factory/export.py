"""Export a fitted pipeline to ONNX (one input per feature) and prove ONNX Runtime agrees with it."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelfab.errors import TrainingError

__all__ = ["PROBA_TOLERANCE", "feeds_for", "onnx_signature", "to_onnx_bytes", "verify_parity"]

PROBA_TOLERANCE = 5e-3  # float32 graph vs float64 scikit-learn
LABEL_AGREEMENT = 0.99
OPSET = 17


def to_onnx_bytes(pipeline: Any, numeric: list[str], categorical: list[str], task: str) -> bytes:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    inputs = [(c, FloatTensorType([None, 1])) for c in numeric]
    inputs += [(c, StringTensorType([None, 1])) for c in categorical]
    _patch_skl2onnx()
    options: dict[Any, Any] = {}
    if task == "classification":
        options[id(pipeline.steps[-1][1])] = {"zipmap": False}
    try:
        onx = convert_sklearn(pipeline, initial_types=inputs, options=options, target_opset=OPSET)
    except Exception as exc:  # skl2onnx raises many types; the message is what matters
        raise TrainingError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}") from None
    data: bytes = onx.SerializeToString()
    return data


def _patch_skl2onnx() -> None:
    """skl2onnx passes Python ``False`` for the missing-value flag of histogram-boosting leaves, which
    onnx >= 1.17 refuses in an integer list ("Expected an int, got a boolean"). Coerce the flag to int
    on its way in; the graph is the same one the converter meant to build."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node
    if getattr(original, "_modelfab_patched", False):
        return

    def add_node(*args: Any, **kwargs: Any) -> Any:
        if "nodes_missing_value_tracks_true" in kwargs:
            kwargs["nodes_missing_value_tracks_true"] = int(kwargs["nodes_missing_value_tracks_true"])
        return original(*args, **kwargs)

    add_node._modelfab_patched = True  # type: ignore[attr-defined]
    tree_ensemble.add_node = add_node

    # Every conversion rebuilds the same table of operator versions from onnx's schemas (12 ms, a
    # quarter of a small model's export). It depends only on the installed onnx: build it once.
    from skl2onnx.common._container import ModelComponentContainer

    versions: dict[Any, list[int]] = {}
    build = ModelComponentContainer._build_op_version

    def cached_build(self: Any) -> None:
        if not versions:
            build(self)
            versions.update(self._op_versions)
        self._op_versions = versions

    ModelComponentContainer._build_op_version = cached_build


def feeds_for(frame: Any, numeric: list[str], categorical: list[str]) -> dict[str, np.ndarray]:
    """ONNX Runtime inputs for a DataFrame: float32 [n,1] numeric, string [n,1] categorical."""
    if isinstance(frame, np.ndarray):  # an all-numeric float matrix, columns in ``numeric`` order
        return {c: frame[:, i : i + 1].astype(np.float32) for i, c in enumerate(numeric)}
    feeds = {c: frame[c].to_numpy(dtype=np.float32, na_value=np.nan).reshape(-1, 1) for c in numeric}
    for c in categorical:
        feeds[c] = frame[c].fillna("").astype(str).to_numpy(dtype=object).reshape(-1, 1)
    return feeds


def verify_parity(
    onnx_bytes: bytes,
    frame: Any,
    numeric: list[str],
    categorical: list[str],
    task: str,
    want: tuple[Any, Any | None],
) -> dict[str, float]:
    """Run ``frame`` through ONNX Runtime and compare with scikit-learn's ``want`` = (predictions,
    probabilities) on the same rows. Raises TrainingError on a mismatch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    outputs = sess.run(None, feeds_for(frame, numeric, categorical))
    want_labels, want_proba = want
    if task == "regression":
        got = np.asarray(outputs[0], dtype=float).ravel()
        expected = np.asarray(want_labels, dtype=float).ravel()
        scale = max(float(np.std(expected)), 1e-6)
        diff = float(np.max(np.abs(got - expected))) / scale if len(expected) else 0.0
        if diff > 1e-3:
            raise TrainingError(
                f"ONNX predictions differ from scikit-learn by {diff:.2e} (relative to spread)"
            )
        return {"onnx_max_rel_diff": diff}
    labels, proba = outputs[0], np.asarray(outputs[1], dtype=float)
    max_diff = float(np.max(np.abs(proba - want_proba))) if len(want_labels) else 0.0
    agree = float(np.mean(np.asarray(labels).ravel() == np.asarray(want_labels))) if len(want_labels) else 1.0
    if max_diff > PROBA_TOLERANCE or agree < LABEL_AGREEMENT:
        raise TrainingError(
            f"ONNX output differs from scikit-learn: max probability difference {max_diff:.2e}, "
            f"label agreement {agree:.3f}"
        )
    return {"onnx_max_abs_diff": max_diff, "onnx_label_agreement": agree}


def onnx_signature(
    numeric: list[str], categorical: list[str], task: str, classes: Any | None
) -> dict[str, Any]:
    """The OIP-style description of the graph's inputs and outputs (batch dimension -1)."""
    inputs = [{"name": c, "datatype": "FP32", "shape": [-1, 1]} for c in numeric]
    inputs += [{"name": c, "datatype": "BYTES", "shape": [-1, 1]} for c in categorical]
    if task == "regression":
        outputs = [{"name": "variable", "datatype": "FP32", "shape": [-1, 1]}]
    else:
        label_type = "BYTES" if classes is not None and isinstance(classes[0], str) else "INT64"
        n = len(classes) if classes is not None else -1
        outputs = [
            {"name": "label", "datatype": label_type, "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, n]},
        ]
    sig: dict[str, Any] = {"inputs": inputs, "outputs": outputs}
    if classes is not None:
        sig["classes"] = [c if isinstance(c, str) else c.item() if hasattr(c, "item") else c for c in classes]
    return sig
