"""Small models that differ only in their weights run on one shared ONNX Runtime session.

A recipe makes hundreds of models with one architecture; only their weights differ. Building an ONNX Runtime
session is most of the cost of loading a small model (0.2-0.4 ms for a 64-128-10 MLP, and ~0.1 ms more to
destroy it), and with many models and a budget that holds a fraction of them, most requests load one. So a
small model's float initializers are lifted out of its graph and become graph inputs. What remains (nodes,
attributes, shapes, the other initializers) is hashed, and models with the same remainder share one session
built from it, each feeding its own weights at run time. Loading such a model is then a fetch, the digest
check and a parse (~35 us for 40 KB), with no session to build or destroy, and it holds its weights plus a
little bookkeeping instead of a session (~0.3 MB).

What is lifted is chosen so the shared graph computes what the model's own graph computes: only float
initializers that every consumer takes as ordinary data (``LIFTABLE_OPS``, standard domain, top-level
graph); graphs with subgraphs, initializers that are also graph inputs or outputs, and external data are
left alone. Results match the model's own session to float rounding (the shared graph is optimized once,
so e.g. MatMul+Add may run fused as Gemm). A model whose weights are mostly attributes (tree ensembles and
``ai.onnx.ml`` linear models) gains nothing from sharing and keeps its own session (see :mod:`.prepared`).

Sessions are per execution provider set as well (:mod:`.providers`): models of one architecture served on
CUDA and on CPU share a graph's structure but not its session.

A client cannot reach the weights: they are not in the model's metadata, an input with their name is refused
as unknown, and they are fed after the client's inputs.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelfab.errors import ModelfabError
from modelfab.serve.models.providers import CPU_ONLY
from modelfab.serve.models.runtime import OnnxModel
from modelfab.serve.types import Array

__all__ = ["LIFTABLE_OPS", "SharedGraphs", "Split", "graph_key", "split_weights"]

log = logging.getLogger("modelfab.serve")

# Standard operators whose float inputs are plain data, read at run time like any activation.
LIFTABLE_OPS = frozenset(
    {
        "Add",
        "BatchNormalization",
        "Clip",
        "Concat",
        "Conv",
        "ConvTranspose",
        "Div",
        "Einsum",
        "Gemm",
        "InstanceNormalization",
        "LayerNormalization",
        "MatMul",
        "Max",
        "Mean",
        "Min",
        "Mul",
        "PRelu",
        "Pow",
        "Sub",
        "Sum",
        "Where",
    }
)
# Bookkeeping of a model on a shared graph beyond its weights' bytes (the array and model objects, the
# buffers' headers): ~1.7 KB measured by RSS over 2,000 models; charged with room to spare.
MODEL_OVERHEAD_BYTES = 4096
# Share only when the lifted weights are most of the model: otherwise the rest differs from model to model
# anyway and every model would end up with a graph of its own.
MIN_LIFTED_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Split:
    key: str  # sha256 of ``graph``
    graph: bytes  # the model with its lifted initializers turned into graph inputs
    weights: dict[str, Array]


def split_weights(onnx: bytes) -> Split | None:
    """Lift a model's float weights out of its graph; None when it has none worth lifting."""
    import onnx as onnx_lib
    from onnx import TensorProto, helper, numpy_helper

    floats: dict[int, np.dtype[Any]] = {
        TensorProto.FLOAT: np.dtype("<f4"),
        TensorProto.DOUBLE: np.dtype("<f8"),
        TensorProto.FLOAT16: np.dtype("<f2"),
    }
    try:
        model = onnx_lib.load_from_string(onnx)
    except Exception:  # not a protobuf we can read: the model's own session says what is wrong
        return None
    graph = model.graph
    consumers: dict[str, set[tuple[str, str]]] = {}
    for node in graph.node:
        if any(attr.type in (attr.GRAPH, attr.GRAPHS) for attr in node.attribute):
            return None  # a subgraph may read an initializer by name from the enclosing scope
        for name in node.input:
            consumers.setdefault(name, set()).add((node.domain, node.op_type))
    pinned = {v.name for v in graph.input} | {v.name for v in graph.output}
    weights: dict[str, Array] = {}
    kept = []
    lifted_bytes = 0
    for init in graph.initializer:
        dtype = floats.get(init.data_type)
        uses = consumers.get(init.name, set())
        if (
            dtype is None
            or init.name in pinned
            or init.data_location == TensorProto.EXTERNAL
            or not uses
            or any(domain not in ("", "ai.onnx") or op not in LIFTABLE_OPS for domain, op in uses)
        ):
            kept.append(init)
            continue
        if init.raw_data:
            array = np.frombuffer(init.raw_data, dtype).reshape(tuple(init.dims))
        else:
            array = numpy_helper.to_array(init)
        weights[init.name] = array
        lifted_bytes += array.nbytes
    if not weights or lifted_bytes < MIN_LIFTED_SHARE * len(onnx):
        return None
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for name, array in weights.items():
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        graph.input.append(helper.make_tensor_value_info(name, elem, array.shape))
    # What does not change the computation does not split models apart.
    model.doc_string = ""
    graph.doc_string = ""
    graph.name = "shared"
    del model.metadata_props[:]
    data = model.SerializeToString(deterministic=True)
    return Split(hashlib.sha256(data).hexdigest(), data, weights)


def graph_key(structure: str, providers: Sequence[str]) -> str:
    """A shared session's key: the graph's structure and the providers that run it (CPU-only keeps the bare
    structure hash)."""
    providers = tuple(providers)
    return structure if providers == CPU_ONLY else f"{structure}@{','.join(providers)}"


@dataclass(slots=True)
class _Graph:
    model: OnnxModel  # the shared graph's session and metadata; models are copies with their weights
    users: int = 0


class SharedGraphs:
    """Shared graphs by structure, each with a count of loaded models on it. Not thread-safe: the model cache
    uses it on the event loop thread (only small models are shared, and those load there)."""

    def __init__(self, *, threads: int = 1, keep_idle: int = 8) -> None:
        self._threads = threads
        self._keep_idle = keep_idle
        self._graphs: OrderedDict[str, _Graph] = OrderedDict()  # least recently used first
        self._unshareable: set[str] = set()  # artifact digests (and graph keys) known not to share
        self.resident_bytes = 0  # of the shared sessions (the models' weights are charged to each model)

    def __len__(self) -> int:
        return len(self._graphs)

    def shareable(self, digest: str) -> bool:
        """False for an artifact already found not to share (skip the parse)."""
        return digest not in self._unshareable

    def load(
        self, name: str, version: int, digest: str, onnx: bytes, providers: Sequence[str] = CPU_ONLY
    ) -> OnnxModel | None:
        """``onnx`` (digest already checked) as a model on a shared graph run by ``providers``; None when it
        does not share."""
        split = split_weights(onnx)
        if split is None or split.key in self._unshareable:
            self._unshareable.add(digest)
            return None
        key = graph_key(split.key, providers)
        graph = self._graphs.get(key)
        if graph is None:
            try:
                shared = OnnxModel(
                    name,
                    version,
                    split.graph,
                    threads=self._threads,
                    weight_inputs=split.weights,
                    providers=providers,
                )
            except ModelfabError as exc:
                log.info("model %s version %s keeps its own session: %s", name, version, exc)
                self._unshareable.update((digest, split.key))
                return None
            graph = _Graph(shared)
            self._graphs[key] = graph
            self.resident_bytes += shared.resident_bytes
        self._graphs.move_to_end(key)
        graph.users += 1
        size = sum(a.nbytes for a in split.weights.values()) + MODEL_OVERHEAD_BYTES
        return graph.model.with_weights(name, version, split.weights, size, key)

    def release(self, model: OnnxModel) -> None:
        """``model`` was dropped; a graph no model uses is kept a while (the next load may need it)."""
        graph = self._graphs.get(model.shared_key or "")
        if graph is not None:
            graph.users -= 1
            self._trim(self._keep_idle)

    def drop_idle(self) -> int:
        """Drop every graph no loaded model uses; returns the bytes freed."""
        before = self.resident_bytes
        self._trim(0)
        return before - self.resident_bytes

    def _trim(self, keep: int) -> None:
        idle = [key for key, g in self._graphs.items() if g.users <= 0]
        for key in idle[: max(len(idle) - keep, 0)]:
            self.resident_bytes -= self._graphs.pop(key).model.resident_bytes
