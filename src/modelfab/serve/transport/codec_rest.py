"""OIP v2 REST codec: JSON tensors (flat or nested) and the binary tensor extension.

The binary extension puts a JSON header first and raw tensor bytes after it; the header's length travels in
``Inference-Header-Content-Length``. BYTES elements are each a 4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson

from modelfab.errors import InvalidInputError
from modelfab.serve.transport.datatypes import dtype_for, oip_datatype_of
from modelfab.serve.types import Array, InferRequest, InferResponse, RequestedOutput

__all__ = ["decode_bytes_tensor", "decode_request", "encode_bytes_tensor", "encode_response"]

_U32 = struct.Struct("<I")


def _shape_of(name: str, raw: Any) -> tuple[int, ...]:
    if type(raw) is not list:
        raise InvalidInputError(f"input '{name}': 'shape' must be a list of integers, got {raw!r}")
    for d in raw:
        if type(d) is not int:  # bool is an int subclass, and no dimension
            raise InvalidInputError(f"input '{name}': 'shape' must be a list of integers, got {raw!r}")
        if d < 0:
            raise InvalidInputError(f"input '{name}': shape {raw} has a negative dimension")
    return tuple(raw)


def decode_bytes_tensor(name: str, buf: bytes | memoryview, count: int) -> Array:
    """Split the OIP binary BYTES encoding into an object array of str (UTF-8) or bytes."""
    out = np.empty(count, dtype=object)
    mv = memoryview(buf)
    pos, n = 0, len(mv)
    for i in range(count):
        if pos + 4 > n:
            raise InvalidInputError(f"input '{name}': binary BYTES data ends after {i} of {count} elements")
        (size,) = _U32.unpack_from(mv, pos)
        pos += 4
        if pos + size > n:
            raise InvalidInputError(f"input '{name}': binary BYTES element {i} runs past the data")
        out[i] = _text(bytes(mv[pos : pos + size]))
        pos += size
    if pos != n:
        raise InvalidInputError(f"input '{name}': {n - pos} bytes left over after {count} BYTES elements")
    return out


def _text(b: bytes) -> str | bytes:
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b


def encode_bytes_tensor(array: Array) -> bytes:
    parts: list[bytes] = []
    for item in array.ravel():
        b = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(_U32.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def _json_tensor(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> Array:
    dtype = dtype_for(datatype)
    assert dtype is not None
    count = math.prod(shape)
    if not isinstance(data, list):
        data = [data]
    try:
        if datatype == "BYTES":
            arr = np.array(data, dtype=object)
            flat = arr.ravel()
            for i, item in enumerate(flat):
                if not isinstance(item, str):
                    raise InvalidInputError(
                        f"input '{name}': BYTES data must be strings, element {i} is {type(item).__name__}"
                    )
        elif datatype == "BOOL":
            arr = np.array(data)
            if arr.size and arr.dtype != np.bool_:
                raise InvalidInputError(f"input '{name}': BOOL data must be true/false")
            arr = arr.astype(np.bool_)
        else:
            arr = np.array(data)
            kind = arr.dtype.kind
            if kind == "f" and dtype.kind == "f":  # the common case first: floats for a float input
                pass
            elif arr.size and kind not in "iuf":  # bool is kind "b"
                raise InvalidInputError(f"input '{name}': {datatype} data must be numbers")
            elif dtype.kind in "iu" and kind == "f":
                raise InvalidInputError(f"input '{name}': {datatype} data must be integers")
            elif dtype.kind in "iu" and arr.size:
                info = np.iinfo(dtype)
                if int(arr.min()) < info.min or int(arr.max()) > info.max:
                    raise InvalidInputError(f"input '{name}': a value is out of range for {datatype}")
            arr = arr.astype(dtype, copy=False)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInputError(
            f"input '{name}': 'data' is not a regular (non-ragged) array of {datatype}"
        ) from None
    if arr.size != count:
        raise InvalidInputError(
            f"input '{name}': {arr.size} values given but shape {list(shape)} needs {count}"
        )
    return arr.reshape(shape)


def _binary_tensor(name: str, datatype: str, shape: tuple[int, ...], chunk: memoryview) -> Array:
    count = math.prod(shape)
    if datatype == "BYTES":
        return decode_bytes_tensor(name, chunk, count).reshape(shape)
    dtype = dtype_for(datatype)
    assert dtype is not None
    if len(chunk) != count * dtype.itemsize:
        raise InvalidInputError(
            f"input '{name}': binary data has {len(chunk)} bytes but shape {list(shape)} of {datatype} "
            f"needs {count * dtype.itemsize}"
        )
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(shape)


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an infer request body; ``header_length`` is the binary extension's JSON header size."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InvalidInputError(
            f"Inference-Header-Content-Length {header_length} is outside the body of {len(body)} bytes"
        )
    head = body if header_length is None else body[:header_length]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInputError("request body must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInputError("request needs a non-empty 'inputs' list")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInputError("'parameters' must be an object")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidInputError("'id' must be a string")

    blob = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    offset = 0
    inputs: dict[str, Array] = {}
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidInputError(f"inputs[{i}] must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"inputs[{i}] needs a 'name' string")
        if name in inputs:
            raise InvalidInputError(f"input '{name}' is given twice")
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or dtype_for(datatype) is None:
            raise InvalidInputError(f"input '{name}': unknown datatype {datatype!r}")
        shape = _shape_of(name, item.get("shape"))
        iparams = item.get("parameters") or {}
        size = iparams.get("binary_data_size") if isinstance(iparams, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(blob):
                raise InvalidInputError(f"input '{name}': binary_data_size {size!r} runs past the body")
            inputs[name] = _binary_tensor(name, datatype, shape, blob[offset : offset + size])
            offset += size
        elif "data" in item:
            inputs[name] = _json_tensor(name, datatype, shape, item["data"])
        else:
            raise InvalidInputError(f"input '{name}' has neither 'data' nor binary_data_size")
    if offset != len(blob):
        raise InvalidInputError(f"{len(blob) - offset} bytes of binary data are not claimed by any input")

    outputs: list[RequestedOutput] | None = None
    binary_default = bool(params.get("binary_data_output", False))
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInputError("'outputs' must be a list")
        outputs = []
        for j, out in enumerate(raw_outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidInputError(f"outputs[{j}] needs a 'name' string")
            oparams = out.get("parameters") or {}
            binary = binary_default
            if isinstance(oparams, dict) and "binary_data" in oparams:
                binary = bool(oparams["binary_data"])
            outputs.append(RequestedOutput(out["name"], binary))
    return InferRequest(
        inputs=inputs, id=rid, parameters=params, outputs=outputs, binary_outputs=binary_default
    )


def _json_data(array: Array) -> Any:
    if array.dtype.kind in "OSU":
        return [x.decode(errors="replace") if isinstance(x, bytes) else str(x) for x in array.ravel()]
    if array.dtype == np.float16:
        return array.astype(np.float32).ravel()
    return np.ascontiguousarray(array).ravel()


def _raw_bytes(array: Array, datatype: str) -> bytes:
    if datatype == "BYTES":
        return encode_bytes_tensor(array)
    return np.ascontiguousarray(array).tobytes()


def encode_response(
    resp: InferResponse, requested: list[RequestedOutput] | None, binary_default: bool = False
) -> tuple[bytes, int | None]:
    """Encode a response; returns the body and the JSON header length when any output is binary."""
    wanted: Any = (
        [(r.name, r.binary) for r in requested] if requested else [(n, binary_default) for n in resp.outputs]
    )
    outs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in wanted:
        array = resp.outputs[name]
        datatype = oip_datatype_of(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            raw = _raw_bytes(array, datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(array)
        outs.append(entry)
    doc: dict[str, Any] = {
        "model_name": resp.model_name,
        "model_version": resp.model_version,
        "parameters": {"prediction_id": resp.prediction_id, **resp.parameters},
        "outputs": outs,
    }
    if resp.id is not None:
        doc["id"] = resp.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
