"""Retraining on traffic: labelled predictions become rows of a new dataset version, the factory trains
challengers on it, and challenger and champion are scored on the same held-back labelled rows.

Labelled traffic is split by a hash of (prediction id, row): about :data:`JUDGE_SHARE` of it is never
trained on and judges challengers, so a challenger is not graded on rows it has seen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfab.data.datasets import import_frame, load_dataset
from modelfab.iterate.monitor import score_outcomes, task_of
from modelfab.iterate.window import Rows
from modelfab.recipe import Recipe
from modelfab.store import DatasetVersion, ModelVersion, Workspace

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["JUDGE_SHARE", "build_dataset", "judge_mask", "offline_metric", "traffic_frame"]

JUDGE_SHARE = 0.3


def judge_mask(rows: Rows) -> np.ndarray:
    """Which rows judge challengers (stable per row: the same row is always on the same side)."""
    cut = int(JUDGE_SHARE * 2**32)
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(f"{i}:{r}".encode(), digest_size=4).digest(), "big") < cut
            for i, r in zip(rows.ids, rows.row_index, strict=True)
        ),
        dtype=bool,
        count=len(rows),
    )


def _decode(text: str | None) -> Any:
    import orjson

    return None if text is None else orjson.loads(text)


def traffic_frame(recipe: Recipe, columns: Sequence[str], partition: str | None, rows: Rows) -> pd.DataFrame:
    """Labelled traffic as dataset rows: logged inputs, the partition value and the outcome as target."""
    import pandas as pd

    feats = rows.features()
    data: dict[str, list[Any]] = {}
    for col in columns:
        if col == recipe.target:
            data[col] = [_decode(o) for o in rows.outcome]
        elif col == recipe.partition_by:
            data[col] = [partition] * len(rows)
        else:
            data[col] = [None if f.get(col) == "" else f.get(col) for f in feats]
    return pd.DataFrame(data, columns=list(columns))


def build_dataset(
    ws: Workspace, recipe: Recipe, additions: Sequence[pd.DataFrame], replace: Sequence[str] = ()
) -> DatasetVersion:
    """A new version of the recipe's dataset: its latest version plus ``additions``. The rows of the
    partitions named in ``replace`` are dropped first (their world changed; see the loop)."""
    import pandas as pd

    base = ws.registry.get_dataset(recipe.dataset_name)
    frame = load_dataset(ws, base)
    if replace and recipe.partition_by is not None:
        frame = frame[~frame[recipe.partition_by].astype(str).isin(set(replace))]
    parts = [frame] + [
        a.astype({c: frame[c].dtype for c in a.columns if _same_kind(frame[c], a[c])}) for a in additions
    ]
    merged = pd.concat(parts, ignore_index=True)
    # Imported from memory: a temp file would hold labelled traffic in plain text, key or not.
    version, _ = import_frame(ws, recipe.dataset_name, merged, f"retrain of {base.ref} with traffic")
    return version


def _same_kind(base: Any, added: Any) -> bool:
    """Whether ``added`` can take ``base``'s dtype (integer targets stay integers when they can)."""
    import pandas as pd

    if added.isna().any():
        return False
    return bool(
        pd.api.types.is_integer_dtype(base.dtype)
        and (pd.api.types.is_integer_dtype(added.dtype) or pd.api.types.is_bool_dtype(added.dtype))
    )


def _feeds(signature: dict[str, Any], feats: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.get("inputs") or []:
        name = spec["name"]
        column = [f.get(name) for f in feats]
        if spec.get("datatype") == "BYTES":
            feeds[name] = np.array(["" if v is None else str(v) for v in column], dtype=object).reshape(-1, 1)
        else:
            feeds[name] = np.array(
                [np.nan if v is None else float(v) for v in column], dtype=np.float32
            ).reshape(-1, 1)
    return feeds


def offline_metric(ws: Workspace, mv: ModelVersion, rows: Rows, metric: str | None = None) -> float | None:
    """Score a version's ONNX model with ONNX Runtime on logged inputs against their outcomes."""
    import onnxruntime as ort

    if len(rows) == 0:
        return None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(
        ws.artifacts.get(mv.artifact_digest), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    outputs = sess.run(None, _feeds(mv.signature, rows.features()))
    if task_of(mv) == "regression":
        values = np.asarray(outputs[0], dtype=float).ravel()
        return score_outcomes(mv, metric, rows.outcome, [None] * len(rows), None, values)
    labels = list(np.asarray(outputs[0]).ravel())
    proba = np.asarray(outputs[1], dtype=float)
    return score_outcomes(mv, metric, rows.outcome, labels, proba, None)
