"""One partition's torch model: decode, search, train (from the base's weights when the recipe names one),
evaluate on the holdout, export with preprocessing inside, check parity, keep the weights."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from modelfab.factory.context import JobContext
from modelfab.factory.evaluate import score_all
from modelfab.factory.fitted import Fitted, prediction_signal
from modelfab.factory.profile import reference_profile
from modelfab.factory.search import search, split_indices
from modelfab.factory.torch_export import image_signature, torch_to_onnx, verify_torch_parity
from modelfab.factory.trainers.torch import (
    TorchParams,
    build_network,
    fit_network,
    load_state,
    predict_proba,
    state_arrays,
    training_device,
)
from modelfab.factory.vision import decode_partition

__all__ = ["fit_torch", "warm_imports"]


def warm_imports() -> None:
    """Import what every torch job needs, in the driver before the pool forks: workers inherit the
    modules instead of each importing them (torch, its optimizers' dynamo hooks, the ONNX exporter and
    ONNX Runtime: ~4 s per fresh worker on this class of machine). Nothing runs, so no thread pool
    exists yet to be broken by the fork."""
    import onnx
    import onnxruntime
    import torch
    import torch._dynamo
    import torch.onnx

    del onnx, onnxruntime, torch


def fit_torch(ctx: JobContext, x: Any, y: np.ndarray, classes: np.ndarray | None) -> Fitted:
    import torch

    torch.set_num_threads(1)  # one job per core: the pool is the parallelism
    plan, recipe = ctx.plan, ctx.plan.recipe
    seed = recipe.effective_seed
    image = recipe.task == "image_classification"
    x = decode_partition(x) if image else np.asarray(x, dtype=np.float32)
    train_idx, hold_idx = split_indices(y, recipe.split.holdout, seed, stratify=classes is not None)
    train_x, hold_x, train_y, hold_y = x[train_idx], x[hold_idx], y[train_idx], y[hold_idx]
    base = ctx.artifacts.get(plan.base_weights) if plan.base_weights else None
    finetune = recipe.base.finetune if recipe.base is not None else "all"
    base_classes = plan.base_lineage.get("classes")

    def train(family: str, params: dict[str, Any], fx: np.ndarray, fy: np.ndarray) -> tuple[Any, Any]:
        p = TorchParams.of(params)
        target: np.ndarray
        if classes is not None:
            target, outputs, shift = np.searchsorted(classes, fy), len(classes), (0.0, 1.0)
        else:
            mean, std = float(np.mean(fy)), float(np.std(fy)) or 1.0
            target, outputs, shift = (fy - mean) / std, 1, (mean, std)
        stats = None if image else _stats(fx)
        torch.manual_seed(seed)  # the initial weights too
        net = build_network(family, p, outputs, features=fx.shape[1] if not image else 0, stats=stats)
        head_only = False
        if base is not None:
            same_classes = (
                base_classes is not None and classes is not None and list(map(str, classes)) == base_classes
            )
            load_state(net, base, with_head=same_classes)
            head_only = finetune == "head"
        if stats is not None:  # this partition's imputation and scaling, not the base's
            net.get_submodule("pre").load_state_dict({k: _tensor(v) for k, v in stats.items()})
        fit_network(
            net,
            fx,
            target,
            p,
            seed,
            regression=classes is None,
            head_only=head_only,
            device=training_device(recipe.resources.gpus),
        )
        return net, shift

    def fit_predict(family: str, params: dict[str, Any], fx: Any, fy: Any, vx: Any) -> tuple[Any, Any]:
        net, shift = train(family, params, fx, fy)
        return _predict(net, vx, classes, shift)

    choice = search(recipe, train_x, train_y, plan.numeric, [], seed, fit_predict=fit_predict)
    dist_report: dict[str, Any] = {}
    if recipe.distributed is not None and recipe.distributed.workers > 1 and classes is not None:
        # The search (if any) ran in this process; the chosen network trains data-parallel.
        from modelfab.factory.base import fit_distributed

        p = TorchParams.of(choice.params)
        build = functools.partial(build_network, choice.family, p, len(classes))
        from modelfab.factory.distributed import CheckpointStore

        # Manifests per run (one subfolder per job: network, data, settings, so a rerun resumes), blobs
        # in the artifact store, sealed when the workspace has a key; the ranks get a key reference.
        folder = Path(tempfile.gettempdir()) / "modelfab-checkpoints" / plan.run_id
        store = CheckpointStore(folder, ctx.artifacts, key_ref=ctx.key)
        net, dist_report = fit_distributed(
            build,
            train_x,
            np.searchsorted(classes, train_y).astype(np.int64),
            p,
            recipe.distributed.workers,
            recipe.distributed.executor,
            recipe.resources.gpus,
            seed,
            store,
        )
        shift = (0.0, 1.0)
    else:
        net, shift = train(choice.family, choice.params, train_x, train_y)
    pred, proba = _predict(net, hold_x, classes, shift)
    metrics = score_all(recipe.task, hold_y, pred, proba, classes)
    if image:
        h, w = int(x.shape[1]), int(x.shape[2])
        onnx_bytes = torch_to_onnx(net, image_shape=(h, w), classes=classes)
        feeds = {"image": hold_x}
        signature = image_signature(h, w, classes)
    else:
        from modelfab.factory.export import onnx_signature

        onnx_bytes = torch_to_onnx(net, features=plan.numeric, classes=classes, target_scale=shift)
        feeds = {c: hold_x[:, i : i + 1] for i, c in enumerate(plan.numeric)}
        signature = onnx_signature(plan.numeric, [], recipe.task, classes)
    metrics.update(verify_torch_parity(onnx_bytes, feeds, (pred, proba)))
    weights = ctx.artifacts.put(state_arrays(net))
    profile_rows = np.zeros((len(train_x), 0)) if image else train_x
    profile = reference_profile(
        profile_rows, [] if image else plan.numeric, [], prediction_signal(pred, proba)
    )
    lineage: dict[str, Any] = {"weights_digest": weights.digest, "weights_format": "npz"}
    if classes is not None:
        lineage["classes"] = [str(c) for c in classes]
    if dist_report:
        workers = recipe.distributed.workers if recipe.distributed else 1
        lineage["distributed"] = {"workers": workers, **dist_report}
    if plan.base_weights:
        lineage["base"] = {**plan.base_lineage, "weights_digest": plan.base_weights, "finetune": finetune}
    return Fitted(
        family=choice.family,
        params=choice.params,
        trials=choice.trials,
        best_validation=choice.best_validation,
        metrics=metrics,
        onnx_bytes=onnx_bytes,
        signature=signature,
        profile=profile,
        rows_train=len(train_x),
        rows_holdout=len(hold_x),
        lineage=lineage,
    )


def _predict(
    net: Any, x: np.ndarray, classes: np.ndarray | None, shift: tuple[float, float]
) -> tuple[Any, Any]:
    if classes is None:
        out = predict_proba(net, x, classify=False)[:, 0]
        return out * shift[1] + shift[0], None
    proba = predict_proba(net, x)
    return classes[np.argmax(proba, axis=1)], proba


def _stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Median (imputation), mean and scale (standardisation) per feature, NaN-safe."""
    median = np.nan_to_num(np.nanmedian(x, axis=0)) if len(x) else np.zeros(x.shape[1])
    filled = np.where(np.isnan(x), median, x)
    scale = filled.std(axis=0)
    return {
        "median": median.astype(np.float32),
        "mean": filled.mean(axis=0).astype(np.float32),
        "scale": np.where(scale > 0, scale, 1.0).astype(np.float32),
    }


def _tensor(a: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.asarray(a, dtype=np.float32))
