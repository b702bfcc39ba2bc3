"""HTTP bodies <-> the protocol-neutral types: JSON, the binary tensor extension, and msgpack.

Rules of this module:
- Pure functions, no aiohttp: everything here is testable on bytes alone.
- Tensor bytes are wrapped, never copied or looped over: binary data goes through
  ``gateway.tensors.array_from_raw`` (``np.frombuffer`` on a slice of the body), JSON numbers are converted
  by numpy in one call and written back by orjson's numpy support. Only BYTES has per-element work.
- Every client mistake raises ``InvalidArgument`` (or ``Unsupported`` / ``ResourceExhausted``) naming the
  field at fault; no other exception may escape from decoding a body.
- Never emit ``"parameters": null`` (perf_analyzer breaks on it) nor any other key that has nothing.
- Limits (``gateway.settings.Limits``) are checked before the work they bound: the input count before
  any input is decoded, shapes before any tensor is built, the nesting of ``data`` before numpy sees it.
  Too many inputs, too many elements, a BYTES element too large or a body too large is ``ResourceExhausted``
  (413). Nesting is structure, not size: ``data`` nested deeper than ``max_json_depth`` is
  ``InvalidArgument`` (400), and so is nesting anywhere else beyond orjson's and msgpack's own ceiling
  (1024 levels); the codec reads nothing nested outside ``data``, so nothing deeper is ever walked.
- NaN and +-Infinity are valid float data. tritonclient (rapidjson) writes them as the bare literals
  ``NaN``, ``Infinity`` and ``-Infinity``; orjson reads none of them, so a body that has them is parsed
  again by the standard library. Outputs: NaN is written as ``null`` (strict JSON, and tritonclient's
  ``as_numpy`` reads null as NaN); +-inf have no JSON form, so an output holding them is written with
  ``Infinity`` / ``-Infinity``, which tritonclient reads (orjson alone would write null: a wrong value).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np
import orjson

from gateway.settings import Limits
from gateway.tensors import (
    array_from_raw,
    array_from_values,
    as_bytes_element,
    check_label,
    datatype_of,
    element_count,
    raw_from_array,
    timeout_deadline,
)
from gateway.types import InferInput, InferRequest, InferResponse, Parameters, RequestedOutput
from runtime.datatypes import BY_NAME, BYTES, DataType
from runtime.errors import InvalidArgument, ResourceExhausted, Unsupported

if TYPE_CHECKING:
    from gateway.service import ModelConfigView, ModelMetadata, TensorMetadata, VersionStatistics
    from runtime.model import TensorSpec
    from runtime.repository import IndexRow

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
MSGPACK_TYPE = "application/msgpack"
BINARY_TYPE = "application/octet-stream"

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_SHARED_MEMORY = "shared_memory_region"
# The JSON literals of non-finite floats that tritonclient (rapidjson) writes and reads.
_NON_FINITE_LITERALS = (b"NaN", b"Infinity")
# A header length with more digits cannot describe any body we accept (and int() refuses 4300 digits).
_MAX_HEADER_LENGTH_DIGITS = 18


def _bounds(dt: DataType) -> tuple[str, int, int]:
    """Which numpy kinds a JSON array may infer for `dt`, and (for integers) the value range."""
    if dt.name == "BOOL":
        return "b", 0, 0
    if dt.numpy.kind in "iu":
        info = np.iinfo(dt.numpy)
        return "iu", int(info.min), int(info.max)
    return "iuf", 0, 0


_VALUE_RULES = {name: _bounds(dt) for name, dt in BY_NAME.items() if not dt.is_bytes}
_KIND_WORDS = {"b": "true/false values", "iu": "integers", "iuf": "numbers"}


# ---------------------------------------------------------------------------------- request decoding


def is_msgpack(content_type: str | None) -> bool:
    return content_type is not None and "msgpack" in content_type.lower()


def parse_header_length(value: str | None) -> int | None:
    """The binary extension's Inference-Header-Content-Length header as an int (None when absent)."""
    if value is None:
        return None
    text = value.strip()
    # ASCII digits only: str.isdigit() also accepts digits such as '\u00b2' that int() refuses, and no sign,
    # so the length cannot be negative.
    if not (text.isascii() and text.isdigit()):
        raise InvalidArgument(f"{HEADER_LENGTH} must be a non-negative integer, got {value[:40]!r}")
    if len(text) > _MAX_HEADER_LENGTH_DIGITS:
        raise InvalidArgument(f"{HEADER_LENGTH} {text[:40]}... is larger than any request body")
    return int(text)


def decode_infer_request(
    body: bytes,
    header_length: int | None,
    content_type: str | None,
    model_name: str,
    model_version: str,
    limits: Limits,
) -> InferRequest:
    """Decode an inference request body; a body with no content type is JSON (tritonclient sends none)."""
    binary: memoryview | None = None
    if is_msgpack(content_type):
        if header_length is not None:
            raise InvalidArgument(f"{HEADER_LENGTH} cannot be used with a msgpack body")
        doc = _load_msgpack(body)
    elif header_length is None:
        doc = _load_json(body)
    else:
        if header_length > len(body):
            raise InvalidArgument(
                f"{HEADER_LENGTH} is {header_length} but the request body has only {len(body)} bytes"
            )
        view = memoryview(body)
        doc = _load_json(view[:header_length])
        binary = view[header_length:]
    return _request_from_document(doc, binary, model_name, model_version, limits)


_PARSER_DEPTH = 1024  # orjson's and msgpack's own ceiling on nesting


def _too_deep(what: str) -> InvalidArgument:
    return InvalidArgument(f"{what} is nested deeper than {_PARSER_DEPTH} levels")


def _load_json(data: bytes | memoryview) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc) or "recursion" in str(exc).lower():
            raise _too_deep("request body") from None
        error = exc
    raw = bytes(data)
    if any(literal in raw for literal in _NON_FINITE_LITERALS):
        doc = _load_json_non_finite(raw)
        if doc is not None:
            return doc
    raise InvalidArgument(f"request body is not valid JSON: {error}") from None


def _load_json_non_finite(raw: bytes) -> Any:
    """Parse a body that has NaN / Infinity literals (the standard library accepts them; orjson does not).

    The document is then written once by orjson, which refuses what orjson itself would not have read
    (lone surrogates, integers beyond 64 bits), so both parsers hand the codec the same kinds of values.
    Returns None when the body is not valid JSON with those literals either.
    """
    try:
        doc = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise _too_deep("request body") from None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    try:
        orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return None
    return doc


def _load_msgpack(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except msgpack.StackError:
        raise _too_deep("msgpack request body") from None
    except Exception as exc:  # msgpack raises ValueError, TypeError, UnicodeDecodeError and its own kinds
        raise InvalidArgument(f"request body is not valid msgpack: {exc}") from None


def _tensor_limits(limits: Limits) -> tuple[int, int]:
    return limits.max_tensor_elements, limits.max_bytes_element


def _parameters(raw: Any, where: str) -> Parameters | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where}: 'parameters' must be an object")
    for key, value in raw.items():
        if not isinstance(key, str):  # msgpack maps may have bytes keys
            raise InvalidArgument(f"{where}: parameter names must be strings, got {key!r:.60}")
        if not isinstance(value, bool | int | float | str):
            raise InvalidArgument(f"{where}: parameter '{key}' must be a bool, a number or a string")
    return raw


def _request_from_document(
    doc: Any, binary: memoryview | None, model_name: str, model_version: str, limits: Limits
) -> InferRequest:
    if not isinstance(doc, dict):
        raise InvalidArgument("inference request must be an object")
    raw_inputs = doc.get("inputs")
    if raw_inputs is None:
        raise InvalidArgument("inference request has no 'inputs'")
    if not isinstance(raw_inputs, list):
        raise InvalidArgument("'inputs' must be a list")
    if len(raw_inputs) > limits.max_inputs:
        raise ResourceExhausted(f"'inputs' has {len(raw_inputs)} inputs (limit {limits.max_inputs})")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidArgument("'id' must be a string")
    check_label(request_id, "'id'")
    params = _parameters(doc.get("parameters"), "request")
    binary_output: bool | None = None
    routing_key: str | None = None
    deadline: float | None = None
    if params:
        if "timeout" in params:  # Triton's request timeout, in microseconds
            deadline = timeout_deadline(params["timeout"], time.monotonic())
        binary_output = params.get("binary_data_output")
        if binary_output is not None and not isinstance(binary_output, bool):
            raise InvalidArgument("request parameter 'binary_data_output' must be true or false")
        routing_key = params.get("routing_key")
        if routing_key is not None:
            if not isinstance(routing_key, str):
                raise InvalidArgument("request parameter 'routing_key' must be a string")
            check_label(routing_key, "request parameter 'routing_key'")
    inputs = []
    offset = 0
    for i, item in enumerate(raw_inputs):
        tensor, offset = _input(item, i, binary, offset, limits)
        inputs.append(tensor)
    if binary is not None and offset != len(binary):
        raise InvalidArgument(
            f"the request carries {len(binary)} bytes of binary data after its JSON header, but its inputs' "
            f"binary_data_size values add up to {offset}"
        )
    return InferRequest(
        model_name,
        inputs,
        model_version,
        request_id,
        _outputs(doc.get("outputs"), binary_output),
        params or None,
        routing_key,
        "http",
        deadline,
    )


def _input(
    item: Any, index: int, binary: memoryview | None, offset: int, limits: Limits
) -> tuple[InferInput, int]:
    if not isinstance(item, dict):
        raise InvalidArgument(f"inputs[{index}] must be an object")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"inputs[{index}] has no 'name' (a non-empty string)")
    where = f"input '{name}'"
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidArgument(f"{where} has no 'datatype' (a string such as \"FP32\")")
    dt = datatype_of(datatype, name)
    shape = item.get("shape")
    if not isinstance(shape, list):
        raise InvalidArgument(f"{where} has no 'shape' (a list of non-negative integers)")
    element_count(shape, name, limits.max_tensor_elements)  # shape check and the configured ceiling
    dims = tuple(shape)
    params = _parameters(item.get("parameters"), where)
    size = None
    if params:
        if _SHARED_MEMORY in params:
            raise Unsupported(f"{where}: the shared-memory extension is not supported")
        size = params.get("binary_data_size")
    data = item.get("data")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidArgument(f"{where}: 'binary_data_size' must be a non-negative integer")
        if data is not None:
            raise InvalidArgument(f"{where} has both 'data' and 'binary_data_size'; send one or the other")
        if binary is None:
            raise InvalidArgument(
                f"{where} has 'binary_data_size' but the request has no binary data ({HEADER_LENGTH} header "
                "missing)"
            )
        end = offset + size
        if end > len(binary):
            raise InvalidArgument(
                f"{where}: binary_data_size {size} runs past the end of the body "
                f"({len(binary) - offset} bytes of binary data left)"
            )
        array = array_from_raw(binary[offset:end], dt, dims, name, *_tensor_limits(limits))
        offset = end
    elif data is None:
        raise InvalidArgument(f"{where} has no 'data' (and no 'binary_data_size')")
    elif isinstance(data, bytes):  # msgpack bin: the tensor's raw bytes, as in the binary extension
        array = array_from_raw(data, dt, dims, name, *_tensor_limits(limits))
    elif isinstance(data, list):
        array = _array_from_list(data, dt, dims, name, limits)
    else:
        raise InvalidArgument(f"{where}: 'data' must be a list")
    return InferInput(name, dt.name, dims, array, params), offset


def _array_from_list(
    data: list[Any], dt: DataType, dims: tuple[int, ...], name: str, limits: Limits
) -> np.ndarray:
    depth = 0
    probe: Any = data
    while isinstance(probe, list):
        depth += 1
        if depth > limits.max_json_depth:
            raise InvalidArgument(
                f"input '{name}': 'data' is nested deeper than {limits.max_json_depth} (max_json_depth)"
            )
        if not probe:
            break
        probe = probe[0]
    if dt is BYTES:
        for _ in range(depth - 1):  # nested lists of strings: flatten level by level
            if not all(isinstance(sub, list) for sub in data):
                raise InvalidArgument(f"input '{name}': 'data' mixes lists and strings")
            data = [x for sub in data for x in sub]
        return array_from_values(data, dt, dims, name, *_tensor_limits(limits))
    try:
        values = np.asarray(data)  # one C-level conversion; numpy infers the kind of the JSON values
    except (ValueError, TypeError, OverflowError):
        raise InvalidArgument(f"input '{name}': 'data' is not a regular (nested) list of numbers") from None
    if values.size:
        kinds, lo, hi = _VALUE_RULES[dt.name]
        kind = values.dtype.kind
        if kinds == "iu" and kind == "f":
            values = _integers_from_floats(data, values, dt, name, lo, hi)
        elif kind not in kinds:
            raise InvalidArgument(f"input '{name}': {dt.name} 'data' must hold {_KIND_WORDS[kinds]}")
        elif kinds == "iu" and (int(values.min()) < lo or int(values.max()) > hi):
            raise InvalidArgument(f"input '{name}': 'data' holds values outside the range of {dt.name}")
    with np.errstate(over="ignore"):  # beyond FP16/FP32 range is +-inf, as any cast makes it
        values = values.astype(dt.numpy, copy=False)
    return array_from_values(values, dt, dims, name, *_tensor_limits(limits))


def _integers_from_floats(
    data: list[Any], values: np.ndarray, dt: DataType, name: str, lo: int, hi: int
) -> np.ndarray:
    """numpy infers float64 for real floats, and also when ints above 2**63 sit next to smaller ones
    (UINT64); accept integral values in range and convert the original Python numbers exactly."""
    if not (np.array_equal(values, np.trunc(values)) and values.min() >= lo and values.max() <= hi):
        raise InvalidArgument(f"input '{name}': {dt.name} 'data' must hold integers in its range")
    try:
        with np.errstate(all="raise"):
            return np.asarray(data, dtype=dt.numpy)
    except (ValueError, TypeError, OverflowError, FloatingPointError):
        raise InvalidArgument(f"input '{name}': 'data' holds values outside the range of {dt.name}") from None


def _outputs(raw: Any, binary_default: bool | None) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidArgument("'outputs' must be a list")
    outputs = []
    seen = set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidArgument(f"outputs[{i}] must be an object")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"outputs[{i}] has no 'name' (a non-empty string)")
        if name in seen:
            raise InvalidArgument(f"output '{name}' is requested more than once")
        seen.add(name)
        params = _parameters(item.get("parameters"), f"output '{name}'")
        binary = binary_default
        if params:
            if params.get("classification"):
                raise Unsupported(f"output '{name}': the classification extension is not supported")
            if _SHARED_MEMORY in params:
                raise Unsupported(f"output '{name}': the shared-memory extension is not supported")
            flag = params.get("binary_data")
            if flag is not None:
                if not isinstance(flag, bool):
                    raise InvalidArgument(f"output '{name}': parameter 'binary_data' must be true or false")
                binary = flag
        outputs.append(RequestedOutput(name, binary, params))
    return outputs


def wants_binary_output(request: InferRequest) -> bool:
    """The request-level default for outputs it did not list (tritonclient sets it when listing none)."""
    return bool(request.parameters and request.parameters.get("binary_data_output") is True)


# ---------------------------------------------------------------------------------- response encoding


def _json_values(array: np.ndarray, datatype: str) -> Any:
    """A flat array orjson writes in C (numbers, true/false), or a list of str for BYTES."""
    if datatype == "BYTES" or array.dtype.kind in "OSU":
        return [
            v if isinstance(v, str) else as_bytes_element(v).decode("utf-8", "replace") for v in array.flat
        ]
    if array.dtype == np.float16:  # orjson writes float16, but float32 keeps every value and is portable
        array = array.astype(np.float32)
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array).reshape(-1)


def _response_head(resp: InferResponse) -> dict[str, Any]:
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id:
        doc["id"] = resp.id
    if resp.parameters:
        doc["parameters"] = resp.parameters
    return doc


def encode_infer_response(
    resp: InferResponse, binary_default: bool, msgpack: bool
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (Content-Type, and the header length when binary data follows)."""
    if msgpack:
        return _encode_msgpack(resp), {"Content-Type": MSGPACK_TYPE}
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    non_finite: dict[int, bytes] = {}  # output index -> its 'data' as JSON text with Infinity
    for out in resp.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.shape)}
        if out.binary if out.binary is not None else binary_default:
            raw = raw_from_array(out.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            values = _json_values(out.data, out.datatype)
            if isinstance(values, np.ndarray) and values.dtype.kind == "f" and np.isinf(values).any():
                non_finite[len(outputs)] = _infinite_json(values)
            else:
                entry["data"] = values
        outputs.append(entry)
    doc = _response_head(resp)
    if non_finite:
        header = _spliced_header(doc, outputs, non_finite)
    else:
        doc["outputs"] = outputs
        header = orjson.dumps(doc, option=_NUMPY)
    if not chunks:
        return header, {"Content-Type": JSON_TYPE}
    return b"".join([header, *chunks]), {HEADER_LENGTH: str(len(header)), "Content-Type": BINARY_TYPE}


def _infinite_json(values: np.ndarray) -> bytes:
    """A float array holding +-inf as a JSON list: ``Infinity`` / ``-Infinity`` (tritonclient reads them)
    and NaN as null, every finite value exactly as orjson writes it on the usual path.

    orjson writes every non-finite value as ``null``, and a number never contains that word: the n-th
    ``null`` of its text is the n-th non-finite element, so only those are visited in Python.
    """
    pieces = orjson.dumps(values, option=_NUMPY).split(b"null")
    special = values[~np.isfinite(values)].tolist()
    if len(special) != len(pieces) - 1:  # pragma: no cover - orjson writes one null per non-finite value
        raise AssertionError("non-finite values and nulls do not match")
    parts = [pieces[0]]
    for value, piece in zip(special, pieces[1:], strict=True):
        parts.append(b"null" if value != value else b"Infinity" if value > 0 else b"-Infinity")
        parts.append(piece)
    return b"".join(parts)


def _spliced_header(doc: dict[str, Any], outputs: list[dict[str, Any]], texts: dict[int, bytes]) -> bytes:
    """The response JSON with each output of `texts` given its ready-made 'data' text.

    Built from orjson's own output for every object: an object without 'data' ends in '}', so the data
    goes in just before it; no placeholder string that a client could forge is ever searched for.
    """
    parts = []
    for i, entry in enumerate(outputs):
        text = orjson.dumps(entry, option=_NUMPY)
        if i in texts:
            text = b"".join((text[:-1], b',"data":', texts[i], b"}"))
        parts.append(text)
    head = orjson.dumps(doc, option=_NUMPY)
    return b"".join((head[:-1], b',"outputs":[', b",".join(parts), b"]}"))


def _encode_msgpack(resp: InferResponse) -> bytes:
    outputs = []
    for out in resp.outputs:
        if out.datatype == "BYTES" or out.data.dtype.kind in "OSU":
            data: Any = [as_bytes_element(v) for v in out.data.flat]
        else:
            data = raw_from_array(out.data)
        outputs.append({"name": out.name, "datatype": out.datatype, "shape": list(out.shape), "data": data})
    doc = _response_head(resp)
    doc["outputs"] = outputs
    return msgpack.packb(doc, use_bin_type=True)


# ---------------------------------------------------------------------------------- other documents


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


def decode_control_body(body: bytes, what: str) -> dict[str, Any]:
    """The optional JSON object of the repository endpoints (an empty body is an empty object)."""
    if not body.strip():
        return {}
    doc = _load_json(body)
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} request body must be a JSON object")
    return doc


def render_server_metadata(name: str, version: str, extensions: tuple[str, ...]) -> dict[str, Any]:
    return {"name": name, "version": version, "extensions": list(extensions)}


def _tensor_metadata(t: TensorMetadata) -> dict[str, Any]:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


def render_model_metadata(meta: ModelMetadata) -> dict[str, Any]:
    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": [_tensor_metadata(t) for t in meta.inputs],
        "outputs": [_tensor_metadata(t) for t in meta.outputs],
    }


def _config_tensor(spec: TensorSpec, is_input: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": spec.name, "data_type": spec.datatype.config_name}
    if is_input:
        doc["format"] = "FORMAT_NONE"
    doc["dims"] = list(spec.dims)
    return doc


def render_model_config(view: ModelConfigView) -> dict[str, Any]:
    """Triton's model configuration in its JSON form (what perf_analyzer reads first)."""
    policy = view.version_policy
    if policy.kind == "latest":
        version_policy: dict[str, Any] = {"latest": {"num_versions": policy.num_versions}}
    elif policy.kind == "specific":
        version_policy = {"specific": {"versions": list(policy.versions)}}
    else:
        version_policy = {"all": {}}
    doc: dict[str, Any] = {
        "name": view.name,
        "platform": view.platform,
        "backend": view.backend,
        "max_batch_size": view.max_batch_size,
        "input": [_config_tensor(s, True) for s in view.inputs],
        "output": [_config_tensor(s, False) for s in view.outputs],
        "version_policy": version_policy,
        "instance_group": [
            {"name": view.name, "kind": view.instance_kind, "count": 1, "gpus": list(view.gpus)}
        ],
        "default_model_filename": view.default_model_filename,
    }
    batching = view.dynamic_batching
    if batching is not None:
        doc["dynamic_batching"] = {
            "preferred_batch_size": list(batching.preferred_batch_sizes),
            "max_queue_delay_microseconds": batching.max_queue_delay_us,
        }
    return doc


def _duration(count: int, ns: int) -> dict[str, int]:
    return {"count": count, "ns": ns}


def render_statistics(rows: list[VersionStatistics]) -> dict[str, Any]:
    """Triton's statistics document; queue and compute counts equal the success count, as Triton's do."""
    model_stats = []
    for row in rows:
        s = row.stats
        ok = s.success_count
        model_stats.append(
            {
                "name": row.name,
                "version": row.version,
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": _duration(ok, s.success_ns),
                    "fail": _duration(s.fail_count, s.fail_ns),
                    "queue": _duration(ok, s.queue_ns),
                    "compute_input": _duration(ok, s.compute_input_ns),
                    "compute_infer": _duration(ok, s.compute_infer_ns),
                    "compute_output": _duration(ok, s.compute_output_ns),
                    "cache_hit": _duration(0, 0),
                    "cache_miss": _duration(0, 0),
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": _duration(b.count, b.compute_input_ns),
                        "compute_infer": _duration(b.count, b.compute_infer_ns),
                        "compute_output": _duration(b.count, b.compute_output_ns),
                    }
                    for size, b in sorted(s.batches.items())
                ],
            }
        )
    return {"model_stats": model_stats}


def render_repository_index(rows: list[IndexRow]) -> list[dict[str, str]]:
    result = []
    for row in rows:
        doc = {"name": row.name}
        if row.version:
            doc["version"] = row.version
        doc["state"] = row.state
        if row.reason:
            doc["reason"] = row.reason
        result.append(doc)
    return result
