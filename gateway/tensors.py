"""Tensor bytes <-> numpy arrays, shared by the gRPC raw contents and the HTTP binary extension.

Rules of this module:
- Fixed-size types are wrapped with ``np.frombuffer``: no copy, no Python loop over elements.
- Sizes are checked against the declared shape before anything is allocated, with Python integers (no
  overflow) and an element-count limit, so a shape of 10**12 elements is refused, not attempted.
- BYTES is a sequence of elements, each a 4-byte little-endian length followed by that many bytes
  (elements may hold NUL and need not be UTF-8). Only BYTES needs per-element work.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.datatypes import BY_NAME, BYTES, DataType
from runtime.errors import InvalidArgument, ResourceExhausted

# Defaults; callers pass the configured `Limits` values.
MAX_ELEMENTS = 1 << 28
MAX_BYTES_ELEMENT = 16 * 1024 * 1024
_U32 = struct.Struct("<I")


def datatype_of(name: str, tensor: str) -> DataType:
    dt = BY_NAME.get(name)
    if dt is None:
        raise InvalidArgument(
            f"tensor '{tensor}': unknown datatype {name!r}; expected one of {sorted(BY_NAME)}"
        )
    return dt


def element_count(shape: Sequence[Any], tensor: str, limit: int = MAX_ELEMENTS) -> int:
    count = 1
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise InvalidArgument(f"tensor '{tensor}': shape {list(shape)} must hold non-negative integers")
        count *= d
    if count > limit:
        raise ResourceExhausted(
            f"tensor '{tensor}': shape {list(shape)} has {count} elements (limit {limit})"
        )
    return count


def array_from_raw(
    raw: bytes | memoryview,
    dt: DataType,
    shape: tuple[int, ...],
    tensor: str,
    limit: int = MAX_ELEMENTS,
    max_element_bytes: int = MAX_BYTES_ELEMENT,
) -> np.ndarray:
    """Wrap raw tensor bytes as an array of `shape` (BYTES: decode the length-prefixed elements)."""
    count = element_count(shape, tensor, limit)
    if dt is BYTES:
        return deserialize_bytes(raw, count, tensor, max_element_bytes).reshape(shape)
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"tensor '{tensor}': {dt.name} shape {list(shape)} needs {expected} bytes of data, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype=dt.numpy).reshape(shape)


def array_from_values(
    values: Any,
    dt: DataType,
    shape: tuple[int, ...],
    tensor: str,
    limit: int = MAX_ELEMENTS,
    max_element_bytes: int = MAX_BYTES_ELEMENT,
) -> np.ndarray:
    """Build an array from a flat (or nested) list of values, as JSON and typed gRPC contents carry them."""
    count = element_count(shape, tensor, limit)
    if dt is BYTES:
        flat = np.empty(len(values), dtype=object) if isinstance(values, list) else None
        if flat is None:
            raise InvalidArgument(f"tensor '{tensor}': BYTES data must be a list")
        for i, v in enumerate(values):
            if isinstance(v, str):
                flat[i] = v.encode("utf-8")
            elif isinstance(v, bytes | bytearray):
                flat[i] = bytes(v)
            else:
                raise InvalidArgument(
                    f"tensor '{tensor}': BYTES element {i} is {type(v).__name__}, not a string"
                )
            if len(flat[i]) > max_element_bytes:
                raise ResourceExhausted(
                    f"tensor '{tensor}': BYTES element {i} has {len(flat[i])} bytes (limit {max_element_bytes})"
                )
        arr = flat
    else:
        try:
            arr = np.asarray(values, dtype=dt.numpy)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InvalidArgument(f"tensor '{tensor}': data is not valid {dt.name}: {exc}") from None
        if arr.ndim > 1:
            arr = arr.reshape(-1)
        if dt.name == "BOOL" and arr.size and np.asarray(values).dtype.kind not in "bO":
            raise InvalidArgument(f"tensor '{tensor}': BOOL data must be true/false")
    if arr.size != count:
        raise InvalidArgument(
            f"tensor '{tensor}': shape {list(shape)} needs {count} elements of data, got {arr.size}"
        )
    return arr.reshape(shape)


def deserialize_bytes(
    raw: bytes | memoryview, count: int, tensor: str, max_element_bytes: int = MAX_BYTES_ELEMENT
) -> np.ndarray:
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    end = len(view)
    offset = 0
    for i in range(count):
        if offset + 4 > end:
            raise InvalidArgument(f"tensor '{tensor}': BYTES data ends before element {i} of {count}")
        (n,) = _U32.unpack_from(view, offset)
        offset += 4
        if offset + n > end:
            raise InvalidArgument(f"tensor '{tensor}': BYTES element {i} claims {n} bytes beyond the data")
        if n > max_element_bytes:
            raise ResourceExhausted(
                f"tensor '{tensor}': BYTES element {i} has {n} bytes (limit {max_element_bytes})"
            )
        out[i] = bytes(view[offset : offset + n])
        offset += n
    if offset != end:
        raise InvalidArgument(
            f"tensor '{tensor}': BYTES data holds {end - offset} bytes more than its {count} elements"
        )
    return out


def as_bytes_element(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, np.bytes_ | bytearray):
        return bytes(v)
    return str(v).encode("utf-8")


def serialize_bytes(arr: np.ndarray) -> bytes:
    items = [as_bytes_element(v) for v in arr.reshape(-1)]
    parts: list[bytes] = []
    for item in items:
        parts.append(_U32.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def raw_from_array(arr: np.ndarray) -> bytes:
    """Tensor bytes for the wire: C order, little-endian; BYTES as length-prefixed elements."""
    if arr.dtype.kind in "OSU":
        return serialize_bytes(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr).tobytes()
