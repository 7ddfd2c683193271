"""Open Inference Protocol datatypes and their numpy and ONNX Runtime counterparts."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "OIP_TO_NUMPY",
    "dtype_for",
    "oip_datatype_of",
    "ort_type_to_oip",
]

# BYTES travels as numpy object arrays of ``bytes``/``str``: ONNX Runtime takes those for string tensors.
OIP_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

_NUMPY_TO_OIP: dict[np.dtype[Any], str] = {v: k for k, v in OIP_TO_NUMPY.items()}

_ORT_TO_OIP: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def dtype_for(datatype: str) -> np.dtype[Any] | None:
    """The numpy dtype of an OIP datatype, or None when the name is not one."""
    return OIP_TO_NUMPY.get(datatype)


def oip_datatype_of(array: np.ndarray[Any, Any]) -> str:
    """The OIP datatype of a numpy array; unicode and bytes arrays are BYTES."""
    dt = array.dtype
    if dt.kind in ("U", "S", "O"):
        return "BYTES"
    name = _NUMPY_TO_OIP.get(dt)
    if name is None:
        raise TypeError(f"numpy dtype {dt} has no Open Inference Protocol datatype")
    return name


def ort_type_to_oip(ort_type: str) -> str | None:
    """The OIP datatype of an ONNX Runtime type string like ``tensor(float)``; None for non-tensors."""
    return _ORT_TO_OIP.get(ort_type)
