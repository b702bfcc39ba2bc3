"""The one table of tensor datatypes: Open Inference Protocol names, numpy dtypes, ONNX element types.

Rules of this module: everything here is computed once at import; lookups on the request path are plain
dict reads. BYTES is the only variable-size type; its numpy form is an object array of ``bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from onnx import TensorProto


@dataclass(frozen=True, slots=True)
class DataType:
    name: str  # V2 name, e.g. "FP32"
    config_name: str  # model config name, e.g. "TYPE_FP32"
    numpy: np.dtype  # little-endian numpy dtype (object for BYTES)
    onnx: int  # onnx.TensorProto element type
    itemsize: int  # bytes per element; 0 for BYTES

    @property
    def is_bytes(self) -> bool:
        return self.itemsize == 0


def _dt(name: str, np_type: str | type, onnx_type: int) -> DataType:
    dtype = np.dtype(np_type)
    if dtype.kind not in "OV":
        dtype = dtype.newbyteorder("<")
    itemsize = 0 if dtype.kind == "O" else dtype.itemsize
    return DataType(name, "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}", dtype, onnx_type, itemsize)


_ALL = (
    _dt("BOOL", np.bool_, TensorProto.BOOL),
    _dt("UINT8", np.uint8, TensorProto.UINT8),
    _dt("UINT16", np.uint16, TensorProto.UINT16),
    _dt("UINT32", np.uint32, TensorProto.UINT32),
    _dt("UINT64", np.uint64, TensorProto.UINT64),
    _dt("INT8", np.int8, TensorProto.INT8),
    _dt("INT16", np.int16, TensorProto.INT16),
    _dt("INT32", np.int32, TensorProto.INT32),
    _dt("INT64", np.int64, TensorProto.INT64),
    _dt("FP16", np.float16, TensorProto.FLOAT16),
    _dt("FP32", np.float32, TensorProto.FLOAT),
    _dt("FP64", np.float64, TensorProto.DOUBLE),
    _dt("BYTES", np.object_, TensorProto.STRING),
)

BY_NAME: MappingProxyType[str, DataType] = MappingProxyType({d.name: d for d in _ALL})
BY_CONFIG_NAME: MappingProxyType[str, DataType] = MappingProxyType({d.config_name: d for d in _ALL})
BY_ONNX: MappingProxyType[int, DataType] = MappingProxyType({d.onnx: d for d in _ALL})
# numpy dtype -> DataType, keyed by dtype.str so that native and explicit little-endian both hit.
_BY_NUMPY: dict[str, DataType] = {}
for _d in _ALL:
    if not _d.is_bytes:
        _BY_NUMPY[_d.numpy.str] = _d
        _BY_NUMPY[_d.numpy.newbyteorder("=").str] = _d

BYTES = BY_NAME["BYTES"]


def from_numpy(dtype: np.dtype) -> DataType:
    """The V2 datatype of a numpy array (object, str and bytes arrays are BYTES)."""
    if dtype.kind in "OSU":
        return BYTES
    found = _BY_NUMPY.get(dtype.str)
    if found is None:
        raise KeyError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return found


# ONNX Runtime's type strings (NodeArg.type), e.g. "tensor(float)".
BY_ORT_TYPE: MappingProxyType[str, DataType] = MappingProxyType(
    {
        "tensor(bool)": BY_NAME["BOOL"],
        "tensor(uint8)": BY_NAME["UINT8"],
        "tensor(uint16)": BY_NAME["UINT16"],
        "tensor(uint32)": BY_NAME["UINT32"],
        "tensor(uint64)": BY_NAME["UINT64"],
        "tensor(int8)": BY_NAME["INT8"],
        "tensor(int16)": BY_NAME["INT16"],
        "tensor(int32)": BY_NAME["INT32"],
        "tensor(int64)": BY_NAME["INT64"],
        "tensor(float16)": BY_NAME["FP16"],
        "tensor(float)": BY_NAME["FP32"],
        "tensor(double)": BY_NAME["FP64"],
        "tensor(string)": BYTES,
    }
)
