"""The HTTP codec, tested directly on bytes: JSON, the binary tensor extension and msgpack.

The differential tests build request bodies with tritonclient.http's own serialisers and parse our response
bodies with tritonclient.http's own InferResult, so "drop-in for Triton" is checked against the client that
people actually use, not against our reading of the protocol. tritonclient.http imports no protobuf
modules, so it can share a process with the gRPC codec tests.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import numpy as np
import orjson
import pytest
import tritonclient.http as triton_http
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.http import codec
from gateway.service import ModelConfigView, ModelMetadata, TensorMetadata, VersionStatistics
from gateway.settings import Limits
from gateway.tensors import raw_from_array, serialize_bytes
from gateway.types import InferOutput, InferRequest, InferResponse
from runtime.config import BatchingConfig, VersionPolicy
from runtime.datatypes import BY_NAME
from runtime.errors import InvalidArgument, ResourceExhausted, Unsupported
from runtime.model import BatchStats, TensorSpec, VersionStats
from runtime.repository import IndexRow

LIMITS = Limits()
FIXED = [name for name, dt in BY_NAME.items() if not dt.is_bytes]
ALL_TYPES = [*FIXED, "BYTES"]


def sample(datatype: str, utf8_only: bool = False) -> np.ndarray:
    """A 2x3 tensor with each type's edge values (and NUL / non-UTF-8 elements for BYTES)."""
    dt = BY_NAME[datatype]
    if datatype == "BYTES":
        values = [
            b"",
            b"a\x00b",
            "h\u00e9llo".encode(),
            b"\xff\xfe" if not utf8_only else b"x",
            b"0" * 50,
            b"z",
        ]
        return np.array(values, dtype=object).reshape(2, 3)
    if datatype == "BOOL":
        return np.array([True, False, True, True, False, False]).reshape(2, 3)
    if dt.numpy.kind in "iu":
        info = np.iinfo(dt.numpy)
        return np.array([info.min, info.max, 0, 1, info.max - 1, 7], dtype=dt.numpy).reshape(2, 3)
    info_f = np.finfo(dt.numpy)
    return np.array([0.0, -1.5, info_f.max, info_f.tiny, 0.1, -3.25], dtype=dt.numpy).reshape(2, 3)


def decode(
    body: bytes | str, header_length: int | None = None, content_type: str | None = None
) -> InferRequest:
    raw = body.encode() if isinstance(body, str) else body
    return codec.decode_infer_request(raw, header_length, content_type, "m", "", LIMITS)


def triton_body(
    arrays: dict[str, tuple[str, np.ndarray]], binary: bool, **kwargs: Any
) -> tuple[bytes, int | None]:
    inputs = []
    for name, (datatype, array) in arrays.items():
        tensor = triton_http.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    body, header_length = triton_http.InferenceServerClient.generate_request_body(inputs, **kwargs)
    return (body.encode() if isinstance(body, str) else body), header_length


def triton_parse(body: bytes, headers: dict[str, str]) -> triton_http.InferResult:
    length = headers.get(codec.HEADER_LENGTH)
    return triton_http.InferResult.from_response_body(body, header_length=int(length) if length else None)


def response(outputs: list[InferOutput], id_: str = "") -> InferResponse:
    return InferResponse("m", "3", id_, outputs)


def output(name: str, datatype: str, array: np.ndarray, binary: bool | None = None) -> InferOutput:
    return InferOutput(name, datatype, array.shape, array, binary)


def as_bytes_list(array: np.ndarray) -> list[bytes]:
    return [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1)]


# ---------------------------------------------------------------------------------- requests


@pytest.mark.parametrize("datatype", ALL_TYPES)
@pytest.mark.parametrize("binary", [True, False])
def test_request_from_tritonclient(datatype: str, binary: bool) -> None:
    array = sample(datatype, utf8_only=not binary)
    body, header_length = triton_body({"X": (datatype, array)}, binary, request_id="r-1")
    assert (header_length is not None) == binary
    req = decode(body, header_length)
    assert req.id == "r-1" and req.protocol == "http" and req.model_name == "m"
    (tensor,) = req.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("X", datatype, (2, 3))
    if datatype == "BYTES":
        assert tensor.data.dtype == object
        assert list(tensor.data.reshape(-1)) == as_bytes_list(array)
    else:
        assert tensor.data.dtype == BY_NAME[datatype].numpy
        np.testing.assert_array_equal(tensor.data, array)


def test_binary_inputs_are_zero_copy_slices_in_input_order() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(4, dtype=np.int64)
    body, header_length = triton_body({"A": ("FP32", a), "B": ("INT64", b)}, True)
    req = decode(body, header_length)
    np.testing.assert_array_equal(req.inputs[0].data, a)
    np.testing.assert_array_equal(req.inputs[1].data, b)
    assert not req.inputs[0].data.flags.owndata  # a view of the body, not a copy


def test_mixed_json_and_binary_inputs() -> None:
    raw_b = serialize_bytes(np.array([b"\x00\xff", b"hello"], dtype=object))
    raw_c = np.array([1.5], np.float16).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "A", "datatype": "INT32", "shape": [2], "data": [1, 2]},
                {
                    "name": "B",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(raw_b)},
                },
                {"name": "C", "datatype": "FP16", "shape": [1], "parameters": {"binary_data_size": 2}},
            ]
        }
    )
    req = decode(header + raw_b + raw_c, len(header))
    assert req.inputs[0].data.tolist() == [1, 2]
    assert req.inputs[1].data.tolist() == [b"\x00\xff", b"hello"]
    assert req.inputs[2].data.tolist() == [1.5]


def test_nested_json_data_and_content_type_variants() -> None:
    doc = {
        "inputs": [
            {"name": "A", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2.5], [3, 4]]},
            {"name": "S", "datatype": "BYTES", "shape": [2, 1], "data": [["x"], ["y\u00e9"]]},
        ]
    }
    for content_type in (None, "application/json", "application/json; charset=utf-8", "text/plain"):
        req = decode(orjson.dumps(doc), content_type=content_type)
        assert req.inputs[0].data.tolist() == [[1.0, 2.5], [3.0, 4.0]]
        assert req.inputs[1].data.tolist() == [[b"x"], ["y\u00e9".encode()]]


def test_empty_tensors() -> None:
    for datatype in ALL_TYPES:
        doc = {"inputs": [{"name": "E", "datatype": datatype, "shape": [0, 3], "data": []}]}
        (tensor,) = decode(orjson.dumps(doc)).inputs
        assert tensor.data.shape == (0, 3)


def test_request_parameters_outputs_and_routing_key() -> None:
    doc = {
        "id": "42",
        "parameters": {"binary_data_output": True, "routing_key": "user-7", "priority": 1},
        "inputs": [{"name": "A", "datatype": "INT8", "shape": [1], "data": [1]}],
        "outputs": [
            {"name": "O1"},
            {"name": "O2", "parameters": {"binary_data": False, "classification": 0}},
        ],
    }
    req = decode(orjson.dumps(doc))
    assert req.id == "42"
    assert req.routing_key == "user-7"
    assert req.parameters == {"binary_data_output": True, "routing_key": "user-7", "priority": 1}
    assert [(o.name, o.binary) for o in req.outputs] == [("O1", True), ("O2", False)]
    assert codec.wants_binary_output(req)
    plain = decode(
        orjson.dumps({"inputs": [], "outputs": [{"name": "O", "parameters": {"binary_data": True}}]})
    )
    assert plain.routing_key is None and plain.parameters is None and plain.id == ""
    assert [(o.name, o.binary) for o in plain.outputs] == [("O", True)]
    assert not codec.wants_binary_output(plain)


def test_tritonclient_requested_outputs_and_defaults() -> None:
    a = np.zeros((1, 2), np.float32)
    body, header_length = triton_body({"A": ("FP32", a)}, True)  # no outputs: binary_data_output is set
    assert codec.wants_binary_output(decode(body, header_length))
    tensor = triton_http.InferInput("A", [1, 2], "FP32").set_data_from_numpy(a)
    outputs = [
        triton_http.InferRequestedOutput("O1", binary_data=True),
        triton_http.InferRequestedOutput("O2", binary_data=False),
    ]
    body, header_length = triton_http.InferenceServerClient.generate_request_body([tensor], outputs=outputs)
    req = decode(body, header_length)
    assert [(o.name, o.binary) for o in req.outputs] == [("O1", True), ("O2", False)]


def test_unsupported_extensions() -> None:
    base = {"name": "A", "datatype": "INT8", "shape": [1], "data": [1]}
    classification = {"inputs": [base], "outputs": [{"name": "O", "parameters": {"classification": 3}}]}
    with pytest.raises(Unsupported):
        decode(orjson.dumps(classification))
    shm = {**base, "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 1}}
    with pytest.raises(Unsupported):
        decode(orjson.dumps({"inputs": [shm]}))


def test_limits() -> None:
    tight = Limits(max_inputs=1, max_tensor_elements=10, max_json_depth=3, max_bytes_element=4)
    one = {"name": "A", "datatype": "INT8", "shape": [1], "data": [1]}

    def run(doc: Any, header_length: int | None = None, tail: bytes = b"") -> InferRequest:
        return codec.decode_infer_request(orjson.dumps(doc) + tail, header_length, None, "m", "", tight)

    with pytest.raises(ResourceExhausted, match="limit 1"):  # too many inputs is oversize, as over gRPC
        run({"inputs": [one, {**one, "name": "B"}]})
    with pytest.raises(ResourceExhausted):
        run({"inputs": [{**one, "shape": [11]}]})
    with pytest.raises(ResourceExhausted):  # never allocated: the shape alone is refused
        run({"inputs": [{**one, "shape": [10**9, 10**9]}]})
    with pytest.raises(InvalidArgument, match="deeper"):
        run({"inputs": [{**one, "shape": [1, 1, 1, 1], "data": [[[[1]]]]}]})
    with pytest.raises(ResourceExhausted, match="BYTES element 1"):
        run({"inputs": [{"name": "S", "datatype": "BYTES", "shape": [2], "data": ["ab", "abcde"]}]})
    raw = serialize_bytes(np.array([b"abcde"], dtype=object))
    big = {"name": "S", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(raw)}}
    header = orjson.dumps({"inputs": [big]})
    with pytest.raises(ResourceExhausted, match="BYTES element 0"):
        codec.decode_infer_request(header + raw, len(header), None, "m", "", tight)


def test_header_length_parsing() -> None:
    assert codec.parse_header_length(None) is None
    assert codec.parse_header_length("17") == 17
    for bad in ("-1", "x", "", "1.5", "+3"):
        with pytest.raises(InvalidArgument):
            codec.parse_header_length(bad)


_GOOD = {"name": "A", "datatype": "INT32", "shape": [2], "data": [1, 2]}


def _binary(input_json: str, tail: bytes) -> tuple[bytes, int, None]:
    """A binary-extension body with one input; the header length is the JSON's exact length."""
    header = ('{"inputs": [' + input_json + "]}").encode()
    return header + tail, len(header), None


MALFORMED: list[tuple[str, bytes | str, int | None, str | None]] = [
    ("invalid JSON", "{", None, None),
    ("empty body", "", None, None),
    ("not UTF-8", b'{"inputs": [], "id": "\xff"}', None, None),
    ("not an object", "[1, 2]", None, None),
    ("missing inputs", '{"id": "x"}', None, None),
    ("inputs not a list", '{"inputs": {"name": "A"}}', None, None),
    ("input not an object", '{"inputs": [3]}', None, None),
    ("missing name", '{"inputs": [{"datatype": "INT32", "shape": [1], "data": [1]}]}', None, None),
    ("missing datatype", '{"inputs": [{"name": "A", "shape": [1], "data": [1]}]}', None, None),
    (
        "unknown datatype",
        '{"inputs": [{"name": "A", "datatype": "FP8", "shape": [1], "data": [1]}]}',
        None,
        None,
    ),
    ("missing shape", '{"inputs": [{"name": "A", "datatype": "INT32", "data": [1]}]}', None, None),
    (
        "negative shape",
        '{"inputs": [{"name": "A", "datatype": "INT32", "shape": [-1], "data": []}]}',
        None,
        None,
    ),
    (
        "float shape",
        '{"inputs": [{"name": "A", "datatype": "INT32", "shape": [1.0], "data": [1]}]}',
        None,
        None,
    ),
    (
        "bool shape",
        '{"inputs": [{"name": "A", "datatype": "INT32", "shape": [true], "data": [1]}]}',
        None,
        None,
    ),
    ("missing data", '{"inputs": [{"name": "A", "datatype": "INT32", "shape": [1]}]}', None, None),
    (
        "data not a list",
        '{"inputs": [{"name": "A", "datatype": "INT32", "shape": [1], "data": 1}]}',
        None,
        None,
    ),
    (
        "too few elements",
        '{"inputs": [{"name": "A", "datatype": "INT32", "shape": [3], "data": [1, 2]}]}',
        None,
        None,
    ),
    (
        "ragged data",
        '{"inputs": [{"name": "A", "datatype": "INT32", "shape": [2, 2], "data": [[1], [2, 3]]}]}',
        None,
        None,
    ),
    (
        "string in FP32",
        '{"inputs": [{"name": "A", "datatype": "FP32", "shape": [1], "data": ["1.5"]}]}',
        None,
        None,
    ),
    (
        "float in INT32",
        '{"inputs": [{"name": "A", "datatype": "INT32", "shape": [1], "data": [1.5]}]}',
        None,
        None,
    ),
    (
        "int out of range",
        '{"inputs": [{"name": "A", "datatype": "UINT8", "shape": [1], "data": [256]}]}',
        None,
        None,
    ),
    (
        "negative unsigned",
        '{"inputs": [{"name": "A", "datatype": "UINT64", "shape": [1], "data": [-1]}]}',
        None,
        None,
    ),
    (
        "number in BOOL",
        '{"inputs": [{"name": "A", "datatype": "BOOL", "shape": [1], "data": [1]}]}',
        None,
        None,
    ),
    (
        "number in BYTES",
        '{"inputs": [{"name": "A", "datatype": "BYTES", "shape": [1], "data": [1]}]}',
        None,
        None,
    ),
    (
        "null element",
        '{"inputs": [{"name": "A", "datatype": "FP64", "shape": [1], "data": [null]}]}',
        None,
        None,
    ),
    ("id not a string", '{"id": 5, "inputs": []}', None, None),
    ("parameters not an object", '{"parameters": [1], "inputs": []}', None, None),
    ("nested parameter value", '{"parameters": {"p": {"q": 1}}, "inputs": []}', None, None),
    ("binary_data_output not bool", '{"parameters": {"binary_data_output": 1}, "inputs": []}', None, None),
    ("routing_key not string", '{"parameters": {"routing_key": 1}, "inputs": []}', None, None),
    ("outputs not a list", '{"inputs": [], "outputs": "O"}', None, None),
    ("output without name", '{"inputs": [], "outputs": [{}]}', None, None),
    ("duplicate output", '{"inputs": [], "outputs": [{"name": "O"}, {"name": "O"}]}', None, None),
    (
        "binary_data not bool",
        '{"inputs": [], "outputs": [{"name": "O", "parameters": {"binary_data": "y"}}]}',
        None,
        None,
    ),
    ("header longer than body", '{"inputs": []}', 100, None),
    (
        "binary size without header",
        '{"inputs": [{"name": "A", "datatype": "INT8", "shape": [1], '
        '"parameters": {"binary_data_size": 1}}]}',
        None,
        None,
    ),
    (
        "binary size past the end",
        *_binary(
            '{"name": "A", "datatype": "INT8", "shape": [2], "parameters": {"binary_data_size": 2}}', b"\x01"
        ),
    ),
    (
        "binary bytes left over",
        *_binary(
            '{"name": "A", "datatype": "INT8", "shape": [1], "parameters": {"binary_data_size": 1}}',
            b"\x01\x02",
        ),
    ),
    (
        "binary size vs shape",
        *_binary(
            '{"name": "A", "datatype": "INT16", "shape": [1], "parameters": {"binary_data_size": 1}}', b"\x01"
        ),
    ),
    (
        "negative binary size",
        *_binary(
            '{"name": "A", "datatype": "INT8", "shape": [0], "parameters": {"binary_data_size": -1}}', b""
        ),
    ),
    (
        "bool binary size",
        *_binary(
            '{"name": "A", "datatype": "INT8", "shape": [1], "parameters": {"binary_data_size": true}}',
            b"\x01",
        ),
    ),
    (
        "both data and binary",
        *_binary(
            '{"name": "A", "datatype": "INT8", "shape": [1], "data": [1], '
            '"parameters": {"binary_data_size": 1}}',
            b"\x01",
        ),
    ),
    (
        "truncated BYTES element",
        *_binary(
            '{"name": "A", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}',
            b"\x05\x00\x00\x00ab",
        ),
    ),
    (
        "BYTES bytes left over",
        *_binary(
            '{"name": "A", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 7}}',
            b"\x02\x00\x00\x00abc",
        ),
    ),
    ("invalid msgpack", b"\xc1\x00", None, "application/msgpack"),
    ("truncated msgpack", msgpack.packb({"inputs": [_GOOD]})[:-3], None, "application/msgpack"),
    ("msgpack with header length", msgpack.packb({"inputs": [_GOOD]}), 3, "application/msgpack"),
    (
        "msgpack raw size mismatch",
        msgpack.packb({"inputs": [{**_GOOD, "data": b"\x00" * 7}]}),
        None,
        "application/msgpack",
    ),
    ("msgpack not a map", msgpack.packb([1, 2]), None, "application/msgpack"),
]


@pytest.mark.parametrize(
    ("body", "header_length", "content_type"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_requests_raise_invalid_argument(
    body: bytes | str, header_length: int | None, content_type: str | None
) -> None:
    raw = body.encode() if isinstance(body, str) else body
    with pytest.raises(InvalidArgument) as caught:
        codec.decode_infer_request(raw, header_length, content_type, "m", "", LIMITS)
    assert type(caught.value) is InvalidArgument
    assert caught.value.message


# ---------------------------------------------------------------------------------- responses


@pytest.mark.parametrize("datatype", ALL_TYPES)
@pytest.mark.parametrize("binary", [True, False])
def test_response_parsed_by_tritonclient(datatype: str, binary: bool) -> None:
    array = sample(datatype, utf8_only=not binary)
    body, headers = codec.encode_infer_response(
        response([output("OUT", datatype, array, binary)], id_="abc"), False, False
    )
    assert (codec.HEADER_LENGTH in headers) == binary
    assert headers["Content-Type"] == ("application/octet-stream" if binary else "application/json")
    result = triton_parse(body, headers)
    assert result.get_response()["id"] == "abc"
    assert result.get_response()["model_version"] == "3"
    got = result.as_numpy("OUT")
    assert got.shape == (2, 3)
    if datatype == "BYTES":
        expected = as_bytes_list(array)
        values = [v if isinstance(v, bytes) else v.encode() for v in got.reshape(-1)]
        assert values == expected
    else:
        np.testing.assert_array_equal(got, array)
        assert got.dtype == array.dtype


def test_json_response_document_shape() -> None:
    out = output("O", "FP32", np.array([[1.5, 2.0]], np.float32))
    body, headers = codec.encode_infer_response(response([out]), False, False)
    assert headers == {"Content-Type": "application/json"}
    doc = orjson.loads(body)
    assert doc == {
        "model_name": "m",
        "model_version": "3",
        "outputs": [{"name": "O", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}],
    }
    assert b"null" not in body and b"parameters" not in body and b'"id"' not in body


def test_binary_default_and_per_output_override() -> None:
    a = np.arange(3, dtype=np.int16)
    outs = [output("A", "INT16", a), output("B", "INT16", a + 1, binary=False), output("C", "INT16", a + 2)]
    body, headers = codec.encode_infer_response(response(outs), True, False)
    header_length = int(headers[codec.HEADER_LENGTH])
    doc = orjson.loads(body[:header_length])
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 6} and "data" not in doc["outputs"][0]
    assert doc["outputs"][1]["data"] == [1, 2, 3] and "parameters" not in doc["outputs"][1]
    assert body[header_length:] == a.tobytes() + (a + 2).tobytes()
    result = triton_parse(body, headers)
    for name, expected in (("A", a), ("B", a + 1), ("C", a + 2)):
        np.testing.assert_array_equal(result.as_numpy(name), expected)


def test_json_bytes_output_replaces_invalid_utf8() -> None:
    out = output("S", "BYTES", np.array([b"ok", b"\xff", "\u00e9".encode()], dtype=object))
    body, _ = codec.encode_infer_response(response([out]), False, False)
    assert orjson.loads(body)["outputs"][0]["data"] == ["ok", "\ufffd", "\u00e9"]


def test_json_nan_becomes_null_and_fp16_is_written_as_float32() -> None:
    out = output("F", "FP16", np.array([np.nan, 0.1], np.float16))
    body, headers = codec.encode_infer_response(response([out]), False, False)
    data = orjson.loads(body)["outputs"][0]["data"]
    assert data[0] is None and np.float16(data[1]) == np.float16(0.1)
    got = triton_parse(body, headers).as_numpy("F")
    assert np.isnan(got[0]) and got[1] == np.float16(0.1)


def test_non_contiguous_and_big_endian_outputs() -> None:
    base = np.arange(12, dtype=np.int32).reshape(3, 4)
    strided = base[:, ::2]
    swapped = base.astype(">i4")
    for binary in (True, False):
        outs = [output("S", "INT32", strided, binary), output("E", "INT32", swapped, binary)]
        body, headers = codec.encode_infer_response(response(outs), False, False)
        result = triton_parse(body, headers)
        np.testing.assert_array_equal(result.as_numpy("S"), strided)
        np.testing.assert_array_equal(result.as_numpy("E"), base)


@pytest.mark.parametrize("datatype", ALL_TYPES)
def test_msgpack_round_trip(datatype: str) -> None:
    array = sample(datatype)
    if datatype == "BYTES":
        packed: Any = list(array.reshape(-1))
        as_list: Any = packed
    else:
        packed = raw_from_array(array)
        as_list = array.reshape(-1).tolist()
    for data in (packed, as_list):
        doc = {"id": "q", "inputs": [{"name": "X", "datatype": datatype, "shape": [2, 3], "data": data}]}
        req = decode(msgpack.packb(doc, use_bin_type=True), content_type="application/msgpack")
        assert req.id == "q"
        got_in = req.inputs[0].data
        if datatype == "BYTES":
            assert list(got_in.reshape(-1)) == as_bytes_list(array)
        else:
            np.testing.assert_array_equal(got_in, array)
    body, headers = codec.encode_infer_response(
        response([output("Y", datatype, array, True)], "q"), True, True
    )
    assert headers == {"Content-Type": "application/msgpack"}
    doc = msgpack.unpackb(body, raw=False)
    assert doc["id"] == "q" and doc["model_version"] == "3"
    (out,) = doc["outputs"]
    assert out["shape"] == [2, 3] and "parameters" not in out
    if datatype == "BYTES":
        assert out["data"] == as_bytes_list(array)
    else:
        restored = np.frombuffer(out["data"], dtype=BY_NAME[datatype].numpy).reshape(2, 3)
        np.testing.assert_array_equal(restored, array)


def test_msgpack_bytes_as_strings() -> None:
    doc = {"inputs": [{"name": "S", "datatype": "BYTES", "shape": [2], "data": ["a", b"\x00\xff"]}]}
    req = decode(msgpack.packb(doc, use_bin_type=True), content_type="application/msgpack; charset=binary")
    assert req.inputs[0].data.tolist() == [b"a", b"\x00\xff"]


# ---------------------------------------------------------------------------------- properties

_DIMS = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)


@st.composite
def tensors(draw: st.DrawFn, finite: bool) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(ALL_TYPES))
    shape = draw(_DIMS)
    if datatype == "BYTES":
        size = int(np.prod(shape))
        elements = st.binary(max_size=12) if not finite else st.text(max_size=6).map(str.encode)
        values = draw(st.lists(elements, min_size=size, max_size=size))
        return datatype, np.array([*values, None], dtype=object)[:-1].reshape(shape)
    dtype = BY_NAME[datatype].numpy
    elements = None
    if dtype.kind == "f":
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=not finite, allow_infinity=not finite)
    return datatype, draw(hnp.arrays(dtype, shape, elements=elements))


def _check(datatype: str, got: np.ndarray, expected: np.ndarray) -> None:
    assert got.shape == expected.shape
    if datatype == "BYTES":
        values = [v if isinstance(v, bytes) else v.encode() for v in got.reshape(-1)]
        assert values == as_bytes_list(expected)
    else:
        np.testing.assert_array_equal(got, expected)


@settings(max_examples=150, deadline=None)
@given(st.data(), st.booleans())
def test_property_tritonclient_request_round_trip(data: st.DataObject, binary: bool) -> None:
    datatype, array = data.draw(tensors(finite=not binary))
    body, header_length = triton_body({"X": (datatype, array)}, binary)
    _check(datatype, decode(body, header_length).inputs[0].data, array)


@settings(max_examples=150, deadline=None)
@given(st.data(), st.booleans())
def test_property_response_round_trip_through_tritonclient(data: st.DataObject, binary: bool) -> None:
    datatype, array = data.draw(tensors(finite=not binary))
    body, headers = codec.encode_infer_response(response([output("O", datatype, array)]), binary, False)
    _check(datatype, triton_parse(body, headers).as_numpy("O"), array)


@settings(max_examples=100, deadline=None)
@given(tensors(finite=False))
def test_property_msgpack_response_feeds_msgpack_request(tensor: tuple[str, np.ndarray]) -> None:
    datatype, array = tensor
    body, _ = codec.encode_infer_response(response([output("O", datatype, array)]), False, True)
    doc = msgpack.unpackb(body, raw=False)
    request = {"inputs": [{**doc["outputs"][0], "name": "I"}]}
    req = decode(msgpack.packb(request, use_bin_type=True), content_type="application/msgpack")
    _check(datatype, req.inputs[0].data, array)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(max_size=200),
    st.one_of(st.none(), st.integers(0, 220)),
    st.sampled_from([None, "application/msgpack"]),
)
def test_property_garbage_never_escapes_as_another_exception(
    body: bytes, header_length: int | None, content_type: str | None
) -> None:
    with contextlib.suppress(InvalidArgument, Unsupported, ResourceExhausted):
        codec.decode_infer_request(body, header_length, content_type, "m", "", LIMITS)


# ---------------------------------------------------------------------------------- other documents


def test_server_and_model_metadata() -> None:
    assert codec.render_server_metadata("onnxgate", "0.1.0", ("a", "b")) == {
        "name": "onnxgate",
        "version": "0.1.0",
        "extensions": ["a", "b"],
    }
    meta = ModelMetadata("m", ["1", "2"], "onnxruntime_onnx", [TensorMetadata("I", "FP32", [-1, 4])], [])
    assert codec.render_model_metadata(meta) == {
        "name": "m",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "I", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [],
    }


def _config(policy: VersionPolicy, batching: BatchingConfig | None) -> ModelConfigView:
    return ModelConfigView(
        name="m",
        platform="onnxruntime_onnx",
        backend="onnxruntime",
        max_batch_size=8,
        inputs=(TensorSpec("I", BY_NAME["BYTES"], (-1,)),),
        outputs=(TensorSpec("O", BY_NAME["FP16"], (3, 4)),),
        version_policy=policy,
        instance_kind="KIND_GPU",
        gpus=(1,),
        dynamic_batching=batching,
    )


def test_model_config() -> None:
    doc = codec.render_model_config(_config(VersionPolicy(), None))
    assert doc == {
        "name": "m",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 8,
        "input": [{"name": "I", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [-1]}],
        "output": [{"name": "O", "data_type": "TYPE_FP16", "dims": [3, 4]}],
        "version_policy": {"all": {}},
        "instance_group": [{"name": "m", "kind": "KIND_GPU", "count": 1, "gpus": [1]}],
        "default_model_filename": "model.onnx",
    }
    latest = codec.render_model_config(_config(VersionPolicy("latest", 2), BatchingConfig(250, (4, 8))))
    assert latest["version_policy"] == {"latest": {"num_versions": 2}}
    assert latest["dynamic_batching"] == {"preferred_batch_size": [4, 8], "max_queue_delay_microseconds": 250}
    specific = codec.render_model_config(_config(VersionPolicy("specific", versions=(1, 3)), None))
    assert specific["version_policy"] == {"specific": {"versions": [1, 3]}}


def test_statistics() -> None:
    stats = VersionStats(
        inference_count=5, execution_count=3, success_count=3, success_ns=300, fail_count=1, fail_ns=7,
        queue_ns=30, compute_input_ns=10, compute_infer_ns=200, compute_output_ns=20, last_inference_ms=99,
        batches={2: BatchStats(1, 4, 100, 8), 1: BatchStats(2, 6, 100, 12)},
    )  # fmt: skip
    doc = codec.render_statistics([VersionStatistics("m", "1", stats)])
    (row,) = doc["model_stats"]
    assert row["name"] == "m" and row["version"] == "1" and row["last_inference"] == 99
    assert row["inference_count"] == 5 and row["execution_count"] == 3
    inf = row["inference_stats"]
    assert inf["success"] == {"count": 3, "ns": 300} and inf["fail"] == {"count": 1, "ns": 7}
    assert inf["queue"] == {"count": 3, "ns": 30} and inf["compute_infer"] == {"count": 3, "ns": 200}
    assert inf["cache_hit"] == {"count": 0, "ns": 0} and inf["cache_miss"] == {"count": 0, "ns": 0}
    assert [b["batch_size"] for b in row["batch_stats"]] == [1, 2]
    assert row["batch_stats"][1]["compute_infer"] == {"count": 1, "ns": 100}
    assert codec.render_statistics([]) == {"model_stats": []}


def test_repository_index_omits_empty_fields() -> None:
    rows = [IndexRow("a", "1", "READY", ""), IndexRow("b", "", "UNAVAILABLE", "not loaded")]
    assert codec.render_repository_index(rows) == [
        {"name": "a", "version": "1", "state": "READY"},
        {"name": "b", "state": "UNAVAILABLE", "reason": "not loaded"},
    ]


def test_control_body() -> None:
    assert codec.decode_control_body(b"", "load") == {}
    assert codec.decode_control_body(b' {"ready": true} ', "index") == {"ready": True}
    for bad in (b"[]", b"{", b"\xff"):
        with pytest.raises(InvalidArgument):
            codec.decode_control_body(bad, "load")
