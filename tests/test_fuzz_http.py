"""Property-based fuzzing of the HTTP body parser and the tensor decoders, in-process and against a gateway.

In-process targets (``FUZZ_EXAMPLES`` examples each): `gateway.http.codec.decode_infer_request` on random
bytes, random JSON-ish documents (written by orjson, or by the standard library with NaN / Infinity
literals and integers beyond 64 bits), random binary-extension splits and random msgpack documents; and
the `gateway.tensors` decoders on random bytes, values and shapes. The property: decoding either succeeds
with tensors of the declared shapes, or raises a ``ServingError`` whose code is a client mistake
(INVALID_ARG -> 400, RESOURCE_EXHAUSTED -> 413). Nothing else escapes: no KeyError, TypeError,
OverflowError, MemoryError, and no numpy warning either (pytest turns warnings into errors here).

Limits are tight (`TIGHT`) so that the oversize paths are reached with small examples; strategies are
kept small, so every example is cheap and the whole file stays well under a minute on two cores.

The live target sends ``LIVE_EXAMPLES`` random bodies to a real gateway: no 5xx, every answer well within
a second, and a good request is still answered after each one.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from typing import Any

import msgpack
import numpy as np
import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.http import codec
from gateway.settings import Limits
from gateway.tensors import (
    MAX_DIMS,
    array_from_raw,
    array_from_values,
    deserialize_bytes,
    element_count,
)
from gateway.types import InferRequest
from runtime.datatypes import BY_NAME
from runtime.errors import ErrorCode, ServingError
from tests.gateway_process import GatewayProcess

# At least 2,000 examples per target; FUZZ_EXAMPLES in the environment asks for more (a deeper run).
FUZZ_EXAMPLES = max(2000, int(os.environ.get("FUZZ_EXAMPLES", "0") or 0))
LIVE_EXAMPLES = 200
CLIENT_MISTAKES = frozenset({ErrorCode.INVALID_ARG, ErrorCode.RESOURCE_EXHAUSTED})
TIGHT = Limits(
    max_body_bytes=1 << 16, max_tensor_elements=64, max_inputs=4, max_json_depth=6, max_bytes_element=8
)
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DATATYPES = tuple(BY_NAME)

# ------------------------------------------------------------------------------------------ strategies

# Strategies are built mostly from pools of chosen values (one cheap draw each: hypothesis' own overhead
# is most of an example's cost) with a few truly random parts: numbers, text, bytes and small documents.
NAMES = ["INPUT0", "INPUT1", "x", "", "\u00e9\u00e8", "\x00", 5, None, ["INPUT0"]]
BAD_DATATYPES = ["FP8", "int32", "", "STRING", 3, None]
SHAPES = [
    [], [0], [1], [4], [2, 2], [1, 4], [2, 3], [4, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1],
    [0, 2**62], [10**12], [10**6, 10**6], [2**64], [1] * (MAX_DIMS + 1),
    [-1], [1.5], ["2"], [True], [None], [[1]], None, "1,2", 3, {},
]  # fmt: skip
SPECIAL_DATA = [
    None, "abc", 5, {}, [], [[1, 2], [3]], [[1], 2], [1, [2]], [[[[[[[[1.0]]]]]]]], [None] * 4,
    ["a", "b", "c", "d"], [True, False, True, False], [[True, False]] * 2, [float("nan")] * 4,
    [float("inf"), float("-inf"), 0.5, -0.0], [2**64] * 4, [2**64 - 1, 1, 2, 3], [-(2**63) - 1] * 4,
    [1e300] * 4, [{"a": 1}] * 4, [[]] * 4, [["a"], ["b"]], [["a"], "b"], [1.0] * 65,
]  # fmt: skip
PARAMETERS = [
    None, {}, [1], "x", {"binary_data_output": True}, {"binary_data_output": "yes"},
    {"routing_key": "k"}, {"routing_key": "k" * 300}, {"routing_key": 5}, {"p": [1]}, {"p": {}},
    {"p": None}, {"binary_data": 1}, {"binary_data": False}, {"binary_data_size": 8},
    {"timeout": 1000}, {"timeout": -1}, {"timeout": "1"}, {"timeout": 1.5}, {"timeout": True},
]  # fmt: skip
OUTPUTS = [
    [], [{"name": "OUTPUT0"}], [{"name": "OUTPUT0"}, {"name": "OUTPUT0"}], [{}], [{"name": ""}],
    [{"name": "O", "parameters": {"binary_data": 1}}], [{"name": "O", "parameters": [1]}],
    [{"name": "O", "parameters": {"binary_data": True}}], {"name": "x"}, [1], "x", None,
]  # fmt: skip
IDS = ["", "i", "i" * 256, "i" * 257, 5, None, ["i"]]
BINARY_SIZES = [0, 1, 4, 8, 16, 64, 80, -1, "8", 2**64, None, 1.5]

numbers = st.integers(-300, 300) | st.floats(width=32) | st.booleans()
data_values = (
    st.lists(numbers, max_size=8)
    | st.lists(st.text(max_size=4), max_size=6)
    | st.lists(st.lists(numbers, min_size=2, max_size=2), max_size=3)
    | st.sampled_from(SPECIAL_DATA)
)
scalars = st.none() | st.booleans() | st.integers(-(2**66), 2**66) | st.floats() | st.text(max_size=4)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


def tensors(binary_data: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """An input: every key optional, every value drawn from the right kind or from the wrong ones."""
    optional: dict[str, st.SearchStrategy[Any]] = {
        "name": st.sampled_from(NAMES),
        "datatype": st.sampled_from(DATATYPES) | st.sampled_from(BAD_DATATYPES),
        "shape": st.sampled_from(SHAPES) | st.lists(st.integers(0, 4), max_size=3),
        "data": data_values,
        "parameters": st.sampled_from(PARAMETERS),
    }
    if binary_data:
        optional["parameters"] = st.sampled_from(BINARY_SIZES).map(lambda n: {"binary_data_size": n})
        optional["data"] = st.sampled_from([[1], None])
    return st.fixed_dictionaries({}, optional=optional)


def documents(binary_data: bool = False) -> st.SearchStrategy[Any]:
    """A JSON-ish inference request: mostly the right structure, every value possibly wrong."""
    request = st.fixed_dictionaries(
        {"inputs": st.lists(tensors(binary_data), max_size=5)},
        optional={
            "id": st.sampled_from(IDS),
            "parameters": st.sampled_from(PARAMETERS),
            "outputs": st.sampled_from(OUTPUTS),
        },
    )
    broken = st.fixed_dictionaries({}, optional={"inputs": st.sampled_from([None, {}, 1, "x", [1], [[]]])})
    return st.one_of(request, request, request, broken, json_values)


def json_bytes(doc: Any, stdlib: bool) -> bytes:
    """orjson's JSON, or the standard library's (NaN / Infinity literals, integers beyond 64 bits)."""
    if stdlib:
        return json.dumps(doc, allow_nan=True).encode()
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:  # integers beyond 64 bits: let the standard library write them
        return json.dumps(doc, allow_nan=True).encode()


def msgpack_bytes(doc: Any) -> bytes:
    try:
        return msgpack.packb(doc, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):  # integers beyond 64 bits cannot be msgpack
        return msgpack.packb(None)


# ------------------------------------------------------------------------------------------ property


def decode(
    body: bytes, header_length: int | None = None, content_type: str | None = None
) -> InferRequest | None:
    """Decode; a client-mistake error is fine (None), anything else fails the test."""
    try:
        request = codec.decode_infer_request(body, header_length, content_type, "m", "", TIGHT)
    except ServingError as exc:
        assert exc.code in CLIENT_MISTAKES, repr(exc)
        assert exc.message, repr(exc)
        return None
    assert len(request.inputs) <= TIGHT.max_inputs
    for t in request.inputs:
        assert t.data.shape == tuple(t.shape)
        assert t.data.size <= TIGHT.max_tensor_elements
        if t.data.dtype == object:  # BYTES: every element within the configured size
            assert all(len(v) <= TIGHT.max_bytes_element for v in t.data.reshape(-1))
        assert t.datatype in BY_NAME
    return request


@FUZZ
@given(
    st.binary(max_size=160),
    st.none() | st.integers(0, 180),
    st.sampled_from([None, "application/json", "application/msgpack", "application/octet-stream"]),
)
def test_fuzz_random_bytes(body: bytes, header_length: int | None, content_type: str | None) -> None:
    decode(body, header_length, content_type)


@FUZZ
@given(documents(), st.booleans())
def test_fuzz_json_documents(doc: Any, stdlib: bool) -> None:
    decode(json_bytes(doc, stdlib))


@FUZZ
@given(documents(binary_data=True), st.binary(max_size=96), st.integers(-8, 8), st.data())
def test_fuzz_binary_extension_splits(doc: Any, blob: bytes, shift: int, data: st.DataObject) -> None:
    """A JSON header, binary data after it, and a header length that may not fall where the header ends."""
    header = json_bytes(doc, data.draw(st.booleans()))
    body = header + blob
    length = min(max(len(header) + shift, 0), len(body) + 4)
    decode(body, length, data.draw(st.sampled_from([None, "application/octet-stream"])))


@FUZZ
@given(documents(), st.data())
def test_fuzz_msgpack_documents(doc: Any, data: st.DataObject) -> None:
    """msgpack requests: data as a list or as the tensor's raw bytes (bin), plus bytes where text belongs."""
    if isinstance(doc, dict) and isinstance(doc.get("inputs"), list):
        for t in doc["inputs"]:
            if isinstance(t, dict) and data.draw(st.integers(0, 2)) == 0:
                t["data"] = data.draw(st.binary(max_size=48))
            if isinstance(t, dict) and data.draw(st.integers(0, 15)) == 0:
                t["name"] = data.draw(st.binary(max_size=4))
    body = msgpack_bytes(doc)
    if data.draw(st.integers(0, 7)) == 0:  # and now and then a damaged one
        cut = data.draw(st.integers(0, len(body)))
        body = body[:cut] + data.draw(st.binary(max_size=4))
    decode(body, None, "application/msgpack")


# ------------------------------------------------------------------------------------------ tensors

tensor_shapes = st.lists(st.integers(0, 5), max_size=4).map(tuple) | st.sampled_from(
    [(10**12,), (0, 2**62), (2**63,), (-1,), (1,) * (MAX_DIMS + 1), (3, -2), (0,) * MAX_DIMS]
)
shape_items = st.integers(-2, 6) | st.sampled_from(
    [10**12, 2**62, 2**64, 1 << 70, -(2**70), True, 1.5, "2", None]
)


def expect_client_mistake(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except ServingError as exc:
        assert exc.code in CLIENT_MISTAKES, repr(exc)
        return None


@FUZZ
@given(
    st.binary(max_size=80), st.sampled_from(DATATYPES), tensor_shapes, st.integers(1, 64), st.integers(0, 8)
)
def test_fuzz_array_from_raw(
    raw: bytes, datatype: str, shape: tuple[int, ...], limit: int, max_bytes: int
) -> None:
    array = expect_client_mistake(array_from_raw, raw, BY_NAME[datatype], shape, "t", limit, max_bytes)
    if array is not None:
        assert array.shape == shape and array.size <= limit


@FUZZ
@given(
    st.lists(numbers | st.text(max_size=3) | st.binary(max_size=3) | st.none(), max_size=12)
    | st.lists(st.integers(-(2**65), 2**65), max_size=6),
    st.sampled_from(DATATYPES),
    tensor_shapes,
    st.booleans(),
)
# Found by CI: numpy decodes the bytes as ASCII to hold the list together (was a UnicodeDecodeError).
@example(values=[0, "", b"\x80"], datatype="BOOL", shape=(3,), as_array=False)
def test_fuzz_array_from_values(
    values: list[Any], datatype: str, shape: tuple[int, ...], as_array: bool
) -> None:
    arg: Any = values
    if as_array and datatype != "BYTES":
        try:
            arg = np.asarray(values)
        except (ValueError, OverflowError):
            return
    array = expect_client_mistake(array_from_values, arg, BY_NAME[datatype], shape, "t", 64, 8)
    if array is not None:
        assert array.shape == shape


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 2**40), st.integers(0, 16))
def test_fuzz_deserialize_bytes(raw: bytes, count: int, max_bytes: int) -> None:
    """Any count, however large, against any bytes: refused before `count` slots are allocated."""
    array = expect_client_mistake(deserialize_bytes, raw, count, "t", max_bytes)
    if array is not None:
        assert array.shape == (count,)
        assert all(isinstance(v, bytes) and len(v) <= max_bytes for v in array)


@FUZZ
@given(
    st.lists(shape_items, max_size=6) | st.sampled_from([[1] * (MAX_DIMS + 1), [2] * MAX_DIMS]),
    st.integers(1, 2**40),
)
def test_fuzz_element_count(shape: list[Any], limit: int) -> None:
    count = expect_client_mistake(element_count, shape, "t", limit)
    if count is not None:
        assert 0 <= count <= limit and len(shape) <= MAX_DIMS
        assert count == int(np.prod([int(d) for d in shape], dtype=object)) if shape else count == 1


def test_nan_and_infinity_decode_as_float_data() -> None:
    """NaN / +-Infinity: JSON literals (what tritonclient writes), binary data and msgpack, FP16/32/64."""
    special = [float("nan"), float("inf"), float("-inf"), 1.0]
    for datatype in ("FP16", "FP32", "FP64"):
        dtype = BY_NAME[datatype].numpy
        want = np.array(special, dtype=dtype).reshape(1, 4)
        t = {"name": "X", "datatype": datatype, "shape": [1, 4]}
        raw = want.tobytes()
        header = orjson.dumps({"inputs": [{**t, "parameters": {"binary_data_size": len(raw)}}]})
        bodies = [
            (json.dumps({"inputs": [{**t, "data": special}]}).encode(), None, None),
            (json.dumps({"inputs": [{**t, "data": [special]}]}).encode(), None, None),
            (header + raw, len(header), None),
            (msgpack.packb({"inputs": [{**t, "data": raw}]}), None, "application/msgpack"),
            (msgpack.packb({"inputs": [{**t, "data": special}]}), None, "application/msgpack"),
        ]
        for body, header_length, content_type in bodies:
            request = codec.decode_infer_request(body, header_length, content_type, "m", "", TIGHT)
            np.testing.assert_array_equal(request.inputs[0].data, want)


def test_fp32_values_beyond_range_become_infinity_without_a_warning() -> None:
    body = json.dumps({"inputs": [{"name": "X", "datatype": "FP16", "shape": [2], "data": [1e300, -1e6]}]})
    request = codec.decode_infer_request(body.encode(), None, None, "m", "", TIGHT)
    assert request.inputs[0].data.tolist() == [np.inf, -np.inf]


# ------------------------------------------------------------------------------------------ live

GOOD = json.dumps(
    {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
        ]
    }
).encode()


def post(gw: GatewayProcess, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, float]:
    host, port = gw.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    started = time.monotonic()
    try:
        conn.request("POST", "/v2/models/simple/infer", body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), time.monotonic() - started
    finally:
        conn.close()


@st.composite
def live_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["bytes", "json", "binary", "msgpack"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)), {}
    if kind == "msgpack":
        return msgpack_bytes(draw(documents())), {"Content-Type": "application/msgpack"}
    header = json_bytes(draw(documents(binary_data=kind == "binary")), draw(st.booleans()))
    if kind == "json":
        return header, {"Content-Type": "application/json"}
    blob = draw(st.binary(max_size=96))
    length = min(max(len(header) + draw(st.integers(-4, 4)), 0), len(header) + len(blob))
    return header + blob, {"Inference-Header-Content-Length": str(length)}


@settings(max_examples=LIVE_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(live_bodies())
def test_fuzz_live_gateway_answers_without_5xx(
    gateway: GatewayProcess, case: tuple[bytes, dict[str, str]]
) -> None:
    body, headers = case
    status, answer, elapsed = post(gateway, body, headers)
    assert status < 500, f"{status}: {answer[:300]!r} for {body[:300]!r}"
    assert elapsed < 1.0, f"answered in {elapsed:.2f} s"
    if status != 200:
        assert isinstance(orjson.loads(answer).get("error"), str)
    good_status, good_answer, _ = post(gateway, GOOD, {"Content-Type": "application/json"})
    assert good_status == 200, good_answer[:300]
    assert gateway.alive()
