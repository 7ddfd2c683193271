"""An ONNX model behind one ONNX Runtime session: metadata, input checks and runs.

Metadata comes from the session itself, so any ONNX graph is served, not only factory models.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelfab.errors import InvalidInputError, ModelfabError, UnavailableError
from modelfab.serve.models.providers import CPU_ONLY
from modelfab.serve.transport.datatypes import OIP_TO_NUMPY, oip_datatype_of, ort_type_to_oip
from modelfab.serve.types import Array, TensorSpec

__all__ = ["OnnxModel", "session_overhead_bytes"]

# What a session costs beyond its weights (graph, kernels, allocator state), measured on small MLPs.
session_overhead_bytes = 256 * 1024
SMALL_MODEL_BYTES = 1 << 20


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


class OnnxModel:
    """A loaded model version. Thread-safe: ONNX Runtime sessions allow concurrent ``run`` calls."""

    def __init__(
        self,
        name: str,
        version: int,
        onnx: bytes,
        *,
        threads: int = 1,
        optimized: bool = False,
        save_optimized: Path | None = None,
        weight_inputs: Collection[str] = (),
        providers: Sequence[str] = CPU_ONLY,
    ) -> None:
        """``optimized``: ``onnx`` is a graph ONNX Runtime already optimized (see :mod:`.prepared`).
        ``save_optimized``: optimize and write the optimized graph there, in ORT format (which is what
        ``optimized`` then expects).
        ``weight_inputs``: graph inputs that are a model's weights, not a client's (see :mod:`.shared`):
        they are left out of the metadata and the checks, and :meth:`with_weights` gives the models that
        run on this graph.
        ``providers``: ONNX Runtime execution providers to build the session with, installed ones only (see
        :mod:`.providers`); :attr:`providers` holds those the session really uses."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Many small models share one process: the arena would keep a high-water mark per session.
        opts.enable_cpu_mem_arena = False
        if save_optimized is not None:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            opts.optimized_model_filepath = str(save_optimized)
            # ORT's own (flatbuffer) format: a session builds from it without parsing protobuf or
            # resolving the graph again (see :mod:`.prepared`).
            opts.add_session_config_entry("session.save_model_format", "ORT")
        elif optimized:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opts.add_session_config_entry("session.load_model_format", "ORT")
            # Prepacking weights pays off over many runs of one session; with many small models a session
            # may serve a handful of requests before it is evicted, and building it is on the request path.
            opts.add_session_config_entry("session.disable_prepacking", "1")
        elif weight_inputs:
            # A graph shared by many models is built once: optimizing it pays (fusions that do not need
            # constant weights, e.g. MatMul+Add into Gemm: 9.4 us per run instead of 11.9 on 64-128-10).
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        elif len(onnx) < SMALL_MODEL_BYTES:
            # Graph optimization costs more load time than it can save on a small graph; with many small
            # models, loads are on the request path. 64-128-10 MLP: 0.33 ms to load unoptimized vs 0.46 ms
            # (basic) and 0.62 ms (extended), for 6.8 vs 6.0 us per run; 0.20 ms from an optimized graph.
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self._session = ort.InferenceSession(onnx, opts, providers=list(providers))
        except Exception as exc:  # ORT raises its own untyped errors for bad graphs
            raise UnavailableError(
                f"model {name} version {version} is not a loadable ONNX graph: {exc}"
            ) from None
        self.name = name
        self.version = version
        self.optimized = optimized
        # What the session runs on: ONNX Runtime falls back to CPU when a provider cannot start (say, CUDA
        # installed but no GPU here), so this is read back, not taken from the request.
        self.providers: tuple[str, ...] = tuple(self._session.get_providers())
        self.resident_bytes = len(onnx) + session_overhead_bytes
        self._weights: dict[str, Array] = {}
        self.shared_key: str | None = None  # the shared graph this model runs on (see :mod:`.shared`)
        hidden = frozenset(weight_inputs)
        inputs: list[TensorSpec] = []
        for arg in self._session.get_inputs():
            if arg.name in hidden:
                continue
            datatype = ort_type_to_oip(arg.type)
            if datatype is None:
                raise UnavailableError(f"model {name}: input '{arg.name}' has type {arg.type}, not a tensor")
            inputs.append(TensorSpec(arg.name, datatype, _dims(arg.shape)))
        outputs: list[TensorSpec] = []
        for arg in self._session.get_outputs():
            datatype = ort_type_to_oip(arg.type)
            if datatype is not None:  # non-tensor outputs (e.g. ZipMap) are not served
                outputs.append(TensorSpec(arg.name, datatype, _dims(arg.shape)))
        if not outputs:
            raise UnavailableError(f"model {name}: no tensor outputs to serve")
        self.inputs: tuple[TensorSpec, ...] = tuple(inputs)
        self.outputs: tuple[TensorSpec, ...] = tuple(outputs)
        self._input_by_name = {s.name: s for s in inputs}
        self.output_names: tuple[str, ...] = tuple(s.name for s in outputs)
        self.batchable = all(len(s.shape) >= 1 and s.shape[0] == -1 for s in (*inputs, *outputs))
        # The common request, checked by comparing a few values: each input's exact numpy dtype and, when
        # only its first dimension is free, its row shape. Anything else takes the full check.
        self._quick: tuple[tuple[str, np.dtype[Any], int, tuple[int, ...]], ...] | None = None
        quick = []
        for spec in inputs:
            dtype = OIP_TO_NUMPY[spec.datatype]
            if spec.datatype == "BYTES" or not spec.shape or -1 in spec.shape[1:]:
                break
            quick.append((spec.name, dtype, len(spec.shape), spec.shape[1:]))
        else:
            if self.batchable:
                self._quick = tuple(quick)

    def with_weights(
        self, name: str, version: int, weights: dict[str, Array], resident_bytes: int, shared_key: str
    ) -> OnnxModel:
        """A model that runs on this (shared) graph with its own ``weights``: no session of its own."""
        model = copy.copy(self)  # shares the session and the metadata, which never change
        model.name, model.version, model.optimized = name, version, False
        model._weights = weights
        model.resident_bytes = resident_bytes
        model.shared_key = shared_key
        return model

    def check(self, feeds: Mapping[str, Array]) -> int:
        """Check names, datatypes and shapes; return the batch rows (first dimension) of the request."""
        quick = self._quick
        if quick is not None and len(feeds) == len(quick):
            rows = -1
            for name, dtype, ndim, tail in quick:
                array = feeds.get(name)
                if array is None or array.dtype != dtype or array.ndim != ndim or array.shape[1:] != tail:
                    break
                if rows not in (-1, array.shape[0]):
                    break
                rows = array.shape[0]
            else:
                return max(rows, 1)
        return self._check(feeds)

    def _check(self, feeds: Mapping[str, Array]) -> int:
        for name in feeds:
            if name not in self._input_by_name:
                expected = ", ".join(s.name for s in self.inputs)
                raise InvalidInputError(f"unknown input '{name}'; model {self.name} takes: {expected}")
        rows = -1
        for spec in self.inputs:
            array = feeds.get(spec.name)
            if array is None:
                raise InvalidInputError(
                    f"missing input '{spec.name}' ({spec.datatype} {list(spec.shape)}) for model {self.name}"
                )
            got = oip_datatype_of(array)
            if got != spec.datatype:
                raise InvalidInputError(f"input '{spec.name}': expected datatype {spec.datatype}, got {got}")
            shape = array.shape
            if len(shape) != len(spec.shape) or any(
                want not in (-1, have) for want, have in zip(spec.shape, shape, strict=True)
            ):
                raise InvalidInputError(
                    f"input '{spec.name}': shape {list(shape)} does not match the model's {list(spec.shape)}"
                )
            if self.batchable:
                if rows not in (-1, shape[0]):
                    raise InvalidInputError(
                        f"input '{spec.name}': batch size {shape[0]} differs from the other inputs' {rows}"
                    )
                rows = shape[0]
        return max(rows, 1)

    def run(self, feeds: Mapping[str, Array], output_names: Sequence[str] | None = None) -> dict[str, Array]:
        names = list(output_names) if output_names else list(self.output_names)
        try:
            # A model's weights go last: a client cannot name them (``check`` refuses unknown inputs) and
            # could not override them if it did.
            results = self._session.run(names, {**feeds, **self._weights} if self._weights else dict(feeds))
        except Exception as exc:
            text = str(exc)
            if "INVALID_ARGUMENT" in text or "Invalid" in text:
                raise InvalidInputError(
                    f"model {self.name} rejected the input: {_first_line(text)}"
                ) from None
            raise ModelfabError(f"model {self.name} failed to run: {_first_line(text)}") from None
        return dict(zip(names, results, strict=True))


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:300] if text.strip() else "unknown error"
