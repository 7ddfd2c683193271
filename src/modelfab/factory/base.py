"""The base network a recipe's per-partition torch models adapt: found in the registry or trained once.

``base: {model: NAME[@alias]}`` names another recipe's registered torch model: its weights (an ``.npz``
artifact whose digest is in the version's lineage) are the start of every partition's model.
``base: {train: {workers: N, ...}}`` trains one network on all partitions' data of this recipe first: in
this process for one worker, as a distributed job (:mod:`modelfab.factory.distributed`) for more.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from modelfab.errors import ModelfabError, RecipeError, TrainingError
from modelfab.factory.plan import Plan
from modelfab.store import Workspace

__all__ = ["resolve_base"]


def resolve_base(ws: Workspace, plan: Plan, recipe_file: str = "<recipe>") -> None:
    """Set ``plan.base_weights`` and ``plan.base_lineage`` for a recipe with ``base:``."""
    base = plan.recipe.base
    if base is None:
        return
    if base.model is not None:
        plan.base_weights, plan.base_lineage = _registered(ws, base.model, base.model_alias, recipe_file)
    else:
        plan.base_weights, plan.base_lineage = _train_base(ws, plan)


def _registered(ws: Workspace, ref: str, alias: str, file: str) -> tuple[str, dict[str, Any]]:
    name = ref.split("@")[0]
    try:
        version = ws.registry.get_version(name, alias)
    except ModelfabError as exc:
        raise RecipeError(
            f"field base.model: {ref!r} does not exist ({exc}); produce that recipe first or name a "
            "registered model (modelfab models ls)",
            file=file,
        ) from None
    digest = version.lineage.get("weights_digest")
    if not digest:
        raise RecipeError(
            f"field base.model: {name}@{version.version} is not a torch model (it has no weights to adapt); "
            "name a model of family cnn, resnet or torch_mlp",
            file=file,
        )
    lineage = {
        "model": name,
        "version": version.version,
        "family": version.params.get("family"),
        "classes": version.lineage.get("classes"),
    }
    return str(digest), lineage


def _train_base(ws: Workspace, plan: Plan) -> tuple[str, dict[str, Any]]:
    import torch

    from modelfab.factory.trainers.torch import (
        TorchParams,
        build_network,
        fit_network,
        state_arrays,
        training_device,
    )
    from modelfab.factory.vision import decode_partition

    recipe = plan.recipe
    assert recipe.base is not None and recipe.base.train is not None
    if recipe.task != "image_classification":
        raise TrainingError("base: {train: ...} is for image tasks; name a registered model for torch_mlp")
    cand = recipe.candidates[0]
    train = dict(recipe.base.train)
    workers = int(train.pop("workers", 1))
    executor = str(train.pop("executor", "local"))
    params = {**{k: v for k, v in cand.params.items()}, **train}
    target = plan.target_values
    rows = np.flatnonzero(~pd.isna(target))
    labels = np.asarray([str(v) for v in target[rows]], dtype=object)
    classes = np.unique(labels)
    images = decode_partition(plan.frame[recipe.image_column].to_numpy(dtype=object)[rows])
    index = np.searchsorted(classes, labels).astype(np.int64)
    p = TorchParams.of(params)
    build = functools.partial(build_network, cand.family, p, len(classes))
    seed = recipe.effective_seed
    torch.manual_seed(seed)
    if workers > 1:
        from modelfab.factory.context import KeyRef
        from modelfab.factory.distributed import CheckpointStore

        # Manifests under the workspace, blobs in the artifact store (sealed when it has a key): a rerun
        # of the same base resumes from them.
        folder = Path(ws.settings.home) / "checkpoints" / plan.run_id
        store = CheckpointStore(folder, ws.artifacts, key_ref=KeyRef.of(ws.settings))
        net, result = fit_distributed(
            build, images, index, p, workers, executor, recipe.resources.gpus, seed, store
        )
        extra: dict[str, Any] = {"workers": workers, "restarts": result["restarts"]}
    else:
        net = build()
        fit_network(net, images, index, p, seed, device=training_device(recipe.resources.gpus))
        extra = {"workers": 1}
    weights = ws.artifacts.put(state_arrays(net))
    lineage = {"trained": "all partitions", "family": cand.family, "classes": [str(c) for c in classes]}
    return weights.digest, {**lineage, **extra, "rows": len(rows)}


def fit_distributed(
    build: Any,
    images: np.ndarray,
    index: np.ndarray,
    p: Any,
    workers: int,
    executor: str,
    gpus: float,
    seed: int,
    store: Any,
) -> tuple[Any, dict[str, Any]]:
    """Train ``build()`` on every row with ``workers`` data-parallel processes (``executor`` local: torch's
    elastic agent; ray: Ray Train), checkpointing into ``store`` (a CheckpointStore or a folder; a rerun of
    the same job resumes from it). Returns the trained network on the CPU and what happened (restarts,
    steps, samples/s)."""
    import torch

    from modelfab.factory.distributed import DistributedSpec, train_distributed

    spec = DistributedSpec(
        workers=workers,
        epochs=p.epochs,
        batch_size=p.batch_size,
        optimizer=p.optimizer,
        lr=p.lr,
        lr_schedule=p.lr_schedule,
        augment=p.augment,
        executor=executor,  # type: ignore[arg-type]  # validated as the recipe was parsed
        # One GPU per rank when the recipe asks for GPUs and CUDA is there (nccl); else gloo on CPUs.
        gpus=1 if gpus > 0 and torch.cuda.is_available() else 0,
    )
    result = train_distributed(build, images, index, spec, store, seed=seed)
    net = build()
    net.load_state_dict({k: torch.as_tensor(v) for k, v in result.state_dict.items()})
    net.eval()
    return net, {
        "restarts": int(getattr(result, "restarts", 0)),
        "steps": int(getattr(result, "steps", 0)),
        "samples_per_second": float(getattr(result, "samples_per_second", 0.0)),
    }
