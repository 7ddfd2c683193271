"""OIP v2 gRPC tensors: typed ``contents`` and ``raw_input_contents`` to numpy and back."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from modelfab.errors import InvalidInputError
from modelfab.serve.transport.codec_rest import decode_bytes_tensor, encode_bytes_tensor
from modelfab.serve.transport.datatypes import dtype_for, oip_datatype_of
from modelfab.serve.types import Array, InferRequest, InferResponse, RequestedOutput

__all__ = ["decode_infer_request", "encode_infer_response"]

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _param_value(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def decode_infer_request(msg: Any) -> InferRequest:
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw)} entries but the request has {len(msg.inputs)} inputs"
        )
    inputs: dict[str, Array] = {}
    for i, t in enumerate(msg.inputs):
        name, datatype = t.name, t.datatype
        if not name:
            raise InvalidInputError(f"inputs[{i}] needs a name")
        if name in inputs:
            raise InvalidInputError(f"input '{name}' is given twice")
        dtype = dtype_for(datatype)
        if dtype is None:
            raise InvalidInputError(f"input '{name}': unknown datatype {datatype!r}")
        shape = tuple(int(d) for d in t.shape)
        if any(d < 0 for d in shape):
            raise InvalidInputError(f"input '{name}': shape {list(shape)} has a negative dimension")
        count = math.prod(shape)
        if raw:
            buf = raw[i]
            if datatype == "BYTES":
                array = decode_bytes_tensor(name, buf, count)
            else:
                if len(buf) != count * dtype.itemsize:
                    raise InvalidInputError(
                        f"input '{name}': raw contents have {len(buf)} bytes but shape {list(shape)} of "
                        f"{datatype} needs {count * dtype.itemsize}"
                    )
                array = np.frombuffer(buf, dtype=dtype.newbyteorder("<"))
        else:
            field = _CONTENTS_FIELD.get(datatype)
            if field is None:
                raise InvalidInputError(f"input '{name}': {datatype} can only be sent in raw_input_contents")
            values = getattr(t.contents, field)
            if datatype == "BYTES":
                array = np.empty(len(values), dtype=object)
                for j, b in enumerate(values):
                    try:
                        array[j] = b.decode()
                    except UnicodeDecodeError:
                        array[j] = b
            else:
                try:
                    array = np.array(values, dtype=dtype)
                except OverflowError:
                    raise InvalidInputError(
                        f"input '{name}': a value is out of range for {datatype}"
                    ) from None
            if array.size != count:
                raise InvalidInputError(
                    f"input '{name}': {array.size} values given but shape {list(shape)} needs {count}"
                )
        inputs[name] = array.reshape(shape)
    params = {k: _param_value(v) for k, v in msg.parameters.items()}
    outputs = [RequestedOutput(o.name, True) for o in msg.outputs] or None
    return InferRequest(inputs=inputs, id=msg.id or None, parameters=params, outputs=outputs)


def encode_infer_response(resp: InferResponse, requested: list[RequestedOutput] | None, pb: Any) -> Any:
    """Outputs always travel in ``raw_output_contents``, as Triton does; clients expect that."""
    out = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version)
    if resp.id is not None:
        out.id = resp.id
    out.parameters["prediction_id"].string_param = resp.prediction_id
    names = [r.name for r in requested] if requested else list(resp.outputs)
    for name in names:
        array = resp.outputs[name]
        datatype = oip_datatype_of(array)
        t = out.outputs.add()
        t.name = name
        t.datatype = datatype
        t.shape.extend(array.shape)
        if datatype == "BYTES":
            out.raw_output_contents.append(encode_bytes_tensor(array))
        else:
            out.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return out
