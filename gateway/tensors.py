"""Tensor bytes <-> numpy arrays, shared by the gRPC raw contents and the HTTP binary extension.

Rules of this module:
- Fixed-size types are wrapped with ``np.frombuffer``: no copy, no Python loop over elements.
- Sizes are checked against the declared shape before anything is allocated, with Python integers (no
  overflow) and an element-count limit, so a shape of 10**12 elements is refused, not attempted. A shape
  has at most ``MAX_DIMS`` dimensions (numpy's own ceiling is 32 or 64, depending on its version).
- Going over a configured limit raises ``ResourceExhausted`` (HTTP 413 / gRPC RESOURCE_EXHAUSTED); data
  that contradicts its own description raises ``InvalidArgument`` (400 / INVALID_ARGUMENT). Nothing else
  escapes from decoding.
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
MAX_DIMS = 32
# Request `id` and routing keys are labels, not payload: both protocols refuse longer ones.
MAX_LABEL_CHARS = 256
_U32 = struct.Struct("<I")


def datatype_of(name: str, tensor: str) -> DataType:
    dt = BY_NAME.get(name)
    if dt is None:
        raise InvalidArgument(
            f"tensor '{tensor}': unknown datatype {name!r}; expected one of {sorted(BY_NAME)}"
        )
    return dt


def element_count(shape: Sequence[Any], tensor: str, limit: int = MAX_ELEMENTS) -> int:
    """The number of elements of `shape`, refusing a malformed shape (400) or one over `limit` (413).

    Every dimension is checked against `limit` on its own too, so a zero elsewhere cannot smuggle in a
    dimension that numpy cannot even represent; the product is a Python int and cannot overflow.
    """
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"tensor '{tensor}': shape has {len(shape)} dimensions (at most {MAX_DIMS})")
    count = 1
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise InvalidArgument(f"tensor '{tensor}': shape {list(shape)} must hold non-negative integers")
        if d > limit:
            raise ResourceExhausted(
                f"tensor '{tensor}': shape {list(shape)} has a dimension of {d} (element limit {limit})"
            )
        count *= d
    if count > limit:
        raise ResourceExhausted(
            f"tensor '{tensor}': shape {list(shape)} has {count} elements (limit {limit})"
        )
    return count


def check_label(value: str, field: str) -> str:
    """A request id or routing key: at most MAX_LABEL_CHARS characters (400 naming `field` otherwise)."""
    if len(value) > MAX_LABEL_CHARS:
        raise InvalidArgument(f"{field} is {len(value)} characters long (at most {MAX_LABEL_CHARS})")
    return value


def timeout_deadline(value: Any, now: float) -> float | None:
    """Triton's `timeout` request parameter (microseconds; 0 = none) as a time.monotonic() deadline."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument("request parameter 'timeout' must be a non-negative integer (microseconds)")
    return now + value / 1e6 if value else None


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
    """Build an array from values: a flat sequence (typed gRPC contents, BYTES lists) or an array the
    JSON codec already built from nested lists. The count is checked before any conversion."""
    count = element_count(shape, tensor, limit)
    if dt is BYTES:
        if not isinstance(values, list):
            raise InvalidArgument(f"tensor '{tensor}': BYTES data must be a list")
        if len(values) != count:
            raise InvalidArgument(
                f"tensor '{tensor}': shape {list(shape)} needs {count} elements of data, got {len(values)}"
            )
        flat = np.empty(count, dtype=object)
        for i, v in enumerate(values):
            if isinstance(v, str):
                try:
                    flat[i] = v.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidArgument(
                        f"tensor '{tensor}': BYTES element {i} is not valid Unicode text"
                    ) from None
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
        if not isinstance(values, np.ndarray) and len(values) != count:  # typed gRPC contents: flat
            raise InvalidArgument(
                f"tensor '{tensor}': shape {list(shape)} needs {count} elements of data, got {len(values)}"
            )
        try:
            # A float beyond FP16/FP32 range becomes +-inf, as in any cast; NaN or inf cast to an integer
            # type is refused (FloatingPointError).
            with np.errstate(over="ignore", invalid="raise"):
                arr = np.asarray(values, dtype=dt.numpy)
        except (ValueError, TypeError, OverflowError, FloatingPointError) as exc:
            raise InvalidArgument(f"tensor '{tensor}': data is not valid {dt.name}: {exc}") from None
        if (
            isinstance(values, np.ndarray)
            and values.dtype != arr.dtype
            and arr.dtype.kind in "biu"
            and not np.array_equal(arr, values)
        ):  # an array of another type that does not survive the cast: wrapped or truncated values
            raise InvalidArgument(f"tensor '{tensor}': data holds values that are not valid {dt.name}")
        if arr.ndim > 1:
            arr = arr.reshape(-1)
        if dt.name == "BOOL" and arr.size and _kind(values) not in "bO":
            raise InvalidArgument(f"tensor '{tensor}': BOOL data must be true/false")
    if arr.size != count:
        raise InvalidArgument(
            f"tensor '{tensor}': shape {list(shape)} needs {count} elements of data, got {arr.size}"
        )
    return arr.reshape(shape)


def _kind(values: Any) -> str:
    """numpy's kind for `values`, or "?" when numpy cannot even hold them together (e.g. a list mixing
    numbers with non-ASCII bytes, which numpy tries to decode as ASCII)."""
    try:
        return str(np.asarray(values).dtype.kind)
    except (ValueError, TypeError, OverflowError):
        return "?"


def deserialize_bytes(
    raw: bytes | memoryview, count: int, tensor: str, max_element_bytes: int = MAX_BYTES_ELEMENT
) -> np.ndarray:
    view = memoryview(raw)
    end = len(view)
    if count * 4 > end:  # every element has a 4-byte length: refuse before allocating `count` slots
        raise InvalidArgument(
            f"tensor '{tensor}': {end} bytes of BYTES data cannot hold {count} elements (4 bytes each at least)"
        )
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > end:
            raise InvalidArgument(f"tensor '{tensor}': BYTES data ends before element {i} of {count}")
        (n,) = _U32.unpack_from(view, offset)
        offset += 4
        if offset + n > end:  # a length that contradicts the data is malformed, whatever its size
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
