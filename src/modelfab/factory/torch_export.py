"""Export a trained torch network to ONNX with its preprocessing inside, and prove ONNX Runtime agrees.

Images: one input ``image`` (UINT8, [-1, H, W, 3]). Tabular (``torch_mlp``): one FP32 [-1, 1] input per
feature, NaN for missing, as the scikit-learn graphs take. Classifiers answer ``label`` (the classes as in
the data, through ArgMax and a Gather from a constant) and ``probabilities``; regressors ``variable``.
Every model of one architecture and one class list has the same graph apart from its float weights, so
the server's shared-session path (:func:`modelfab.serve.models.shared.split_weights`) shares them.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfab.errors import TrainingError
from modelfab.factory.export import LABEL_AGREEMENT, OPSET, PROBA_TOLERANCE

if TYPE_CHECKING:
    from torch import nn

__all__ = ["image_signature", "torch_to_onnx", "verify_torch_parity"]


def torch_to_onnx(
    net: nn.Module,
    *,
    image_shape: tuple[int, int] | None = None,
    features: list[str] | None = None,
    classes: np.ndarray | None = None,
    target_scale: tuple[float, float] = (0.0, 1.0),
) -> bytes:
    """The ONNX graph of ``net``: images of ``image_shape`` (H, W) or the tabular ``features``; with
    ``classes`` a classifier, else a regressor whose output is un-standardised by ``target_scale``."""
    import torch
    from torch import nn

    class Exported(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            x = xs[0] if image_shape is not None else torch.cat(xs, dim=1)
            out = self.net(x)
            if classes is not None:
                proba: torch.Tensor = torch.softmax(out, dim=1)
                return proba
            value: torch.Tensor = out * target_scale[1] + target_scale[0]
            return value

    net.eval()
    if image_shape is not None:
        names = ["image"]
        dummy: tuple[torch.Tensor, ...] = (torch.zeros((2, *image_shape, 3), dtype=torch.uint8),)
    else:
        names = list(features or [])
        dummy = tuple(torch.zeros((2, 1), dtype=torch.float32) for _ in names)
    out_name = "probabilities" if classes is not None else "variable"
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            # dynamo=False is the TorchScript exporter, deprecated in torch 2.9+; the dynamo one needs
            # onnxscript, which modelfab does not install.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\..*")
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
            torch.onnx.export(
                Exported(),
                dummy,
                buf,  # type: ignore[arg-type]
                input_names=names,
                output_names=[out_name],
                dynamic_axes={**{n: {0: "batch"} for n in names}, out_name: {0: "batch"}},
                opset_version=OPSET,
                dynamo=False,
            )
    except Exception as exc:
        raise TrainingError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:300]}") from None
    if classes is None:
        return buf.getvalue()
    return _add_label(buf.getvalue(), classes)


def _add_label(data: bytes, classes: np.ndarray) -> bytes:
    """Append ``label`` = classes[ArgMax(probabilities)] and make it the first output."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(data)
    graph = model.graph
    if classes.dtype.kind in "OUS":
        const = helper.make_tensor(
            "classes",
            TensorProto.STRING,
            [len(classes)],
            [str(c).encode() for c in classes],  # type: ignore[misc]
        )
        label_type = TensorProto.STRING
    else:
        const = helper.make_tensor("classes", TensorProto.INT64, [len(classes)], [int(c) for c in classes])
        label_type = TensorProto.INT64
    graph.initializer.append(const)
    graph.node.append(helper.make_node("ArgMax", ["probabilities"], ["label_index"], axis=1, keepdims=0))
    graph.node.append(helper.make_node("Gather", ["classes", "label_index"], ["label"], axis=0))
    proba = graph.output.pop()
    graph.output.extend([helper.make_tensor_value_info("label", label_type, ["batch"]), proba])
    onnx.checker.check_model(model)
    out: bytes = model.SerializeToString()
    return out


def verify_torch_parity(
    onnx_bytes: bytes,
    feeds: dict[str, np.ndarray],
    want: tuple[np.ndarray, np.ndarray | None],
) -> dict[str, float]:
    """Run ``feeds`` through ONNX Runtime and compare with torch's (labels or values, probabilities)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    outputs = sess.run(None, feeds)
    want_labels, want_proba = want
    if want_proba is None:
        got = np.asarray(outputs[0], dtype=float).ravel()
        expected = np.asarray(want_labels, dtype=float).ravel()
        scale = max(float(np.std(expected)), 1e-6)
        diff = float(np.max(np.abs(got - expected))) / scale if len(expected) else 0.0
        if diff > 1e-3:
            raise TrainingError(f"ONNX predictions differ from torch by {diff:.2e} (relative to spread)")
        return {"onnx_max_rel_diff": diff}
    labels, proba = np.asarray(outputs[0]).ravel(), np.asarray(outputs[1], dtype=float)
    if labels.dtype.kind == "S":
        labels = labels.astype(str)
    n = len(want_labels)
    max_diff = float(np.max(np.abs(proba - want_proba))) if n else 0.0
    agree = float(np.mean(labels == np.asarray(want_labels))) if n else 1.0
    if max_diff > PROBA_TOLERANCE or agree < LABEL_AGREEMENT:
        raise TrainingError(
            f"ONNX output differs from torch: max probability difference {max_diff:.2e}, "
            f"label agreement {agree:.3f}"
        )
    return {"onnx_max_abs_diff": max_diff, "onnx_label_agreement": agree}


def image_signature(height: int, width: int, classes: Any) -> dict[str, Any]:
    """The OIP-style description of an image classifier's graph."""
    return {
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, height, width, 3]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes)]},
        ],
        "classes": [str(c) for c in classes],
    }
