"""A catalogue of malformed requests: each gets the right status and a useful message, and harms nothing.

HTTP requests are raw bodies sent with urllib (tritonclient refuses to send most of them): JSON, the binary
extension and msgpack; gRPC requests are built by hand from tritonclient's own generated messages and sent
through its own stub: raw and typed contents, and inside a ModelStreamInfer stream (answered in-band, and
the stream goes on). Oversize requests (413 / RESOURCE_EXHAUSTED) that need more than the default limits
allow run against a second gateway with small limits from a gateway.toml ``[limits]`` table. Every case is
answered within a second, and after every case a good request must still succeed over both protocols, in
the same test.
"""

from __future__ import annotations

import http.client
import json
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import msgpack
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.gateway_process import GatewayProcess, start_gateway

JSON = {"Content-Type": "application/json"}
MSGPACK = {"Content-Type": "application/msgpack"}
# Every case must be answered within this many seconds (a behaviour bound of the reliability issue).
ANSWER_WITHIN_S = 1.0
A = list(range(16))
B = [1] * 16


def tensor(name: str = "INPUT0", datatype: str = "INT32", shape: Any = (1, 16), data: Any = None) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape), "data": A if data is None else data}


def good_inputs() -> list[dict]:
    return [tensor("INPUT0", data=A), tensor("INPUT1", data=B)]


def doc(**fields: Any) -> bytes:
    body = {"inputs": good_inputs()}
    body.update(fields)
    return json.dumps(body).encode()


def binary(header: dict, blob: bytes, header_length: int | str | None = None) -> tuple[bytes, dict[str, str]]:
    """A request with the binary tensor data extension: JSON header, then the tensors' bytes."""
    head = json.dumps(header).encode()
    length = len(head) if header_length is None else header_length
    return head + blob, {
        "Inference-Header-Content-Length": str(length),
        "Content-Type": "application/octet-stream",
    }


def binary_input(name: str, size: int, shape: Any = (1, 16)) -> dict:
    return {"name": name, "datatype": "INT32", "shape": list(shape), "parameters": {"binary_data_size": size}}


def int32_bytes(values: list[int]) -> bytes:
    return np.asarray(values, dtype="<i4").tobytes()


@dataclass(frozen=True)
class HttpCase:
    id: str
    path: str
    body: bytes | None
    status: int
    message: tuple[str, ...]  # at least one must appear in the error message (case-insensitive)
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    chunked: bool = False  # send the body with Transfer-Encoding: chunked (no Content-Length)


def _binary_case(
    id: str,
    header: dict,
    blob: bytes,
    status: int,
    message: tuple[str, ...],
    path: str = "/v2/models/simple/infer",
    **kw: Any,
) -> HttpCase:
    body, headers = binary(header, blob, **kw)
    return HttpCase(id, path, body, status, message, headers=headers)


INFER = "/v2/models/simple/infer"
HTTP_CASES = [
    HttpCase("invalid_json", INFER, b'{"inputs": [', 400, ("json",)),
    HttpCase("empty_body", INFER, b"", 400, ("json", "body", "empty")),
    HttpCase("not_an_object", INFER, b"[1, 2]", 400, ("object",)),
    HttpCase("json_string", INFER, b'"hello"', 400, ("object",)),
    HttpCase("missing_inputs", INFER, b"{}", 400, ("inputs",)),
    HttpCase("inputs_not_a_list", INFER, json.dumps({"inputs": tensor()}).encode(), 400, ("inputs",)),
    HttpCase("inputs_empty", INFER, json.dumps({"inputs": []}).encode(), 400, ("input",)),
    HttpCase("input_not_an_object", INFER, json.dumps({"inputs": [1, 2]}).encode(), 400, ("input",)),
    HttpCase(
        "input_without_name",
        INFER,
        json.dumps(
            {"inputs": [{k: v for k, v in tensor().items() if k != "name"}, tensor("INPUT1")]}
        ).encode(),
        400,
        ("name",),
    ),
    HttpCase(
        "input_without_datatype",
        INFER,
        json.dumps(
            {"inputs": [{k: v for k, v in tensor().items() if k != "datatype"}, tensor("INPUT1")]}
        ).encode(),
        400,
        ("datatype",),
    ),
    HttpCase(
        "input_without_shape",
        INFER,
        json.dumps(
            {"inputs": [{k: v for k, v in tensor().items() if k != "shape"}, tensor("INPUT1")]}
        ).encode(),
        400,
        ("shape",),
    ),
    HttpCase(
        "input_without_data",
        INFER,
        json.dumps(
            {"inputs": [{k: v for k, v in tensor().items() if k != "data"}, tensor("INPUT1")]}
        ).encode(),
        400,
        ("data",),
    ),
    HttpCase(
        "unknown_datatype",
        INFER,
        json.dumps({"inputs": [tensor(datatype="FLOAT32"), tensor("INPUT1")]}).encode(),
        400,
        ("FLOAT32",),
    ),
    HttpCase(
        "negative_dim",
        INFER,
        json.dumps({"inputs": [tensor(shape=(-1, 16)), tensor("INPUT1")]}).encode(),
        400,
        ("shape",),
    ),
    HttpCase(
        "string_dim",
        INFER,
        json.dumps({"inputs": [tensor(shape=(1, "16")), tensor("INPUT1")]}).encode(),
        400,
        ("shape",),
    ),
    HttpCase(
        "fractional_dim",
        INFER,
        json.dumps({"inputs": [tensor(shape=(1, 16.5)), tensor("INPUT1")]}).encode(),
        400,
        ("shape",),
    ),
    HttpCase(
        "shape_not_a_list",
        INFER,
        json.dumps({"inputs": [{**tensor(), "shape": "1,16"}, tensor("INPUT1")]}).encode(),
        400,
        ("shape",),
    ),
    HttpCase(
        "data_count_mismatch",
        INFER,
        json.dumps({"inputs": [tensor(data=A[:15]), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0",),
    ),
    HttpCase(
        "nested_data_too_many",
        INFER,
        json.dumps({"inputs": [tensor(data=[A, A]), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0",),
    ),
    HttpCase(
        "nested_data_ragged",
        INFER,
        json.dumps({"inputs": [tensor(data=[A[:8], A[:7]]), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0",),
    ),
    HttpCase(
        "strings_in_fp32",
        "/v2/models/identity_fp32/infer",
        json.dumps({"inputs": [tensor(datatype="FP32", data=["a"] * 16)]}).encode(),
        400,
        ("INPUT0",),
    ),
    HttpCase(
        "null_in_int32",
        INFER,
        json.dumps({"inputs": [tensor(data=[None, *A[1:]]), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0",),
    ),
    HttpCase(
        "int32_overflow",
        INFER,
        json.dumps({"inputs": [tensor(data=[2**40, *A[1:]]), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0",),
    ),
    HttpCase(
        "fractional_value_in_int32",
        INFER,
        json.dumps({"inputs": [tensor(data=[1.5, *A[1:]]), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0",),
    ),
    HttpCase(
        "bool_data_not_bool",
        INFER,
        json.dumps({"inputs": [tensor(datatype="BOOL", data=[2] * 16), tensor("INPUT1")]}).encode(),
        400,
        ("BOOL",),
    ),
    HttpCase(
        "number_in_bytes",
        "/v2/models/simple_string/infer",
        json.dumps(
            {
                "inputs": [
                    tensor(datatype="BYTES", data=A),
                    tensor("INPUT1", datatype="BYTES", data=["1"] * 16),
                ]
            }
        ).encode(),
        400,
        ("INPUT0",),
    ),
    _binary_case(
        "binary_header_length_beyond_body",
        {"inputs": [binary_input("INPUT0", 64), binary_input("INPUT1", 64)]},
        int32_bytes(A + B),
        400,
        ("header", "length"),
        header_length=100_000,
    ),
    _binary_case(
        "binary_header_length_not_a_number",
        {"inputs": [binary_input("INPUT0", 64), binary_input("INPUT1", 64)]},
        int32_bytes(A + B),
        400,
        ("header", "length"),
        header_length="abc",
    ),
    _binary_case(
        "binary_header_not_json",
        {"inputs": []},
        b"",
        400,
        ("json", "header"),
        header_length=3,
    ),
    _binary_case(
        "binary_data_short",
        {"inputs": [binary_input("INPUT0", 64), binary_input("INPUT1", 64)]},
        int32_bytes(A + B)[:120],
        400,
        ("binary", "bytes", "size"),
    ),
    _binary_case(
        "binary_data_left_over",
        {"inputs": [binary_input("INPUT0", 64), binary_input("INPUT1", 64)]},
        int32_bytes(A + B) + b"\x00" * 8,
        400,
        ("binary", "bytes", "size"),
    ),
    _binary_case(
        "binary_size_wrong_for_shape",
        {"inputs": [binary_input("INPUT0", 60), binary_input("INPUT1", 68)]},
        int32_bytes(A + B),
        400,
        ("INPUT0",),
    ),
    _binary_case(
        "binary_size_negative",
        {"inputs": [binary_input("INPUT0", -64), binary_input("INPUT1", 64)]},
        int32_bytes(A + B),
        400,
        ("binary_data_size", "INPUT0"),
    ),
    HttpCase(
        "wrong_datatype_for_model",
        INFER,
        json.dumps(
            {
                "inputs": [
                    tensor(datatype="FP32", data=[0.5] * 16),
                    tensor("INPUT1", datatype="FP32", data=[0.5] * 16),
                ]
            }
        ).encode(),
        400,
        ("FP32",),
    ),
    HttpCase(
        "wrong_shape",
        INFER,
        json.dumps({"inputs": [tensor(shape=(1, 15), data=A[:15]), tensor("INPUT1")]}).encode(),
        400,
        ("shape",),
    ),
    HttpCase(
        "wrong_rank",
        INFER,
        json.dumps({"inputs": [tensor(shape=(16,)), tensor("INPUT1", shape=(16,))]}).encode(),
        400,
        ("shape",),
    ),
    HttpCase(
        "batch_over_max",
        INFER,
        json.dumps(
            {
                "inputs": [
                    tensor(shape=(257, 16), data=A * 257),
                    tensor("INPUT1", shape=(257, 16), data=B * 257),
                ]
            }
        ).encode(),
        400,
        ("batch",),
    ),
    HttpCase(
        "batch_differs_between_inputs",
        INFER,
        json.dumps({"inputs": [tensor(), tensor("INPUT1", shape=(2, 16), data=B * 2)]}).encode(),
        400,
        ("batch",),
    ),
    HttpCase(
        "unknown_input",
        INFER,
        json.dumps({"inputs": [*good_inputs(), tensor("INPUT2")]}).encode(),
        400,
        ("INPUT2",),
    ),
    HttpCase("missing_input", INFER, json.dumps({"inputs": [tensor()]}).encode(), 400, ("INPUT1",)),
    HttpCase(
        "duplicate_input",
        INFER,
        json.dumps({"inputs": [tensor(), tensor(), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0",),
    ),
    HttpCase("unknown_output", INFER, doc(outputs=[{"name": "OUTPUT9"}]), 400, ("OUTPUT9",)),
    HttpCase("outputs_not_a_list", INFER, doc(outputs={"name": "OUTPUT0"}), 400, ("outputs",)),
    HttpCase("parameters_not_an_object", INFER, doc(parameters=[1, 2]), 400, ("parameters",)),
    HttpCase("unknown_model", "/v2/models/nope/infer", doc(), 404, ("nope",)),
    HttpCase("unknown_version", "/v2/models/simple/versions/7/infer", doc(), 404, ("version",)),
    HttpCase("version_not_a_number", "/v2/models/simple/versions/abc/infer", doc(), 400, ("abc",)),
    HttpCase("version_zero", "/v2/models/simple/versions/0/infer", doc(), 400, ("version",)),
    HttpCase(
        "model_not_ready",
        "/v2/models/identity_cuda/infer",
        json.dumps({"inputs": [tensor(datatype="FP32", data=[0.0] * 16)]}).encode(),
        503,
        ("identity_cuda",),
    ),
    HttpCase(
        "pinned_version_not_ready",
        "/v2/models/identity_cuda/versions/1/infer",
        json.dumps({"inputs": [tensor(datatype="FP32", data=[0.0] * 16)]}).encode(),
        503,
        ("CUDAExecutionProvider",),
    ),
    HttpCase(
        "corrupt_model_not_ready",
        "/v2/models/broken/infer",
        json.dumps({"inputs": [tensor(datatype="FP32", data=[0.0] * 16)]}).encode(),
        503,
        ("broken",),
    ),
    HttpCase("metadata_unknown_model", "/v2/models/nope", None, 404, ("nope",), method="GET", headers={}),
    HttpCase(
        "config_unknown_model", "/v2/models/nope/config", None, 404, ("nope",), method="GET", headers={}
    ),
    HttpCase("stats_unknown_model", "/v2/models/nope/stats", None, 404, ("nope",), method="GET", headers={}),
    HttpCase("load_unknown_model", "/v2/repository/models/nope/load", b"{}", 404, ("nope",)),
    HttpCase("unknown_path", "/v2/nothing/here", None, 404, ("/v2/nothing/here", "not found"), method="GET"),
    HttpCase(
        "unknown_api_version", "/v3/health/live", None, 404, ("/v3/health/live", "not found"), method="GET"
    ),
    HttpCase("wrong_method_on_infer", INFER, None, 405, ("method", "GET"), method="GET", headers={}),
    HttpCase("wrong_method_on_health", "/v2/health/live", b"{}", 405, ("method", "POST")),
    HttpCase(
        "msgpack_garbage",
        INFER,
        b"\xc1\xff\x00garbage",
        400,
        ("msgpack",),
        headers={"Content-Type": "application/msgpack"},
    ),
    HttpCase(
        "msgpack_not_a_map",
        INFER,
        msgpack.packb([1, 2, 3]),
        400,
        ("object", "map"),
        headers={"Content-Type": "application/msgpack"},
    ),
    HttpCase(
        "classification_requested",
        INFER,
        doc(outputs=[{"name": "OUTPUT0", "parameters": {"classification": 2}}]),
        501,
        ("classification",),
    ),
]


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def inputs_doc(count: int, **fields: Any) -> bytes:
    """A request with `count` inputs named INPUT0..: more than any model has, to trip the input limit."""
    body = {"inputs": [tensor(f"INPUT{i}") for i in range(count)]}
    body.update(fields)
    return json.dumps(body).encode()


def mp(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def mp_inputs(*tensors: dict) -> bytes:
    return mp({"inputs": list(tensors)})


def mp_tensor(name: str = "INPUT0", data: Any = None, **fields: Any) -> dict:
    """A msgpack input whose data is the tensor's raw bytes (msgpack bin), as the binary extension has it."""
    t = {
        "name": name,
        "datatype": "INT32",
        "shape": [1, 16],
        "data": int32_bytes(A) if data is None else data,
    }
    t.update(fields)
    return t


def _msgpack_case(id: str, body: bytes, status: int, message: tuple[str, ...]) -> HttpCase:
    return HttpCase(id, INFER, body, status, message, headers=dict(MSGPACK))


STRING_INFER = "/v2/models/simple_string/infer"
STRING_INPUT1 = {"name": "INPUT1", "datatype": "BYTES", "shape": [1, 16], "data": ["1"] * 16}


def string_binary_input(size: int) -> dict:
    return {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16], "parameters": {"binary_data_size": size}}


LONG = "k" * 300  # longer than the 256 characters an id or a routing key may have
HUGE_SHAPE = (10**6, 10**6)  # 10**12 elements: refused from the shape alone, never allocated

HTTP_CASES += [
    # ------------------------------------------------------------------ request fields and labels
    HttpCase("id_too_long", INFER, doc(id=LONG), 400, ("'id'",)),
    HttpCase("id_not_a_string", INFER, doc(id=5), 400, ("'id'",)),
    HttpCase(
        "routing_key_parameter_too_long", INFER, doc(parameters={"routing_key": LONG}), 400, ("routing_key",)
    ),
    HttpCase(
        "routing_key_parameter_not_a_string", INFER, doc(parameters={"routing_key": 5}), 400, ("routing_key",)
    ),
    HttpCase(
        "routing_key_header_too_long",
        INFER,
        doc(),
        400,
        ("x-routing-key",),
        headers={**JSON, "x-routing-key": LONG},
    ),
    HttpCase("parameter_value_nested", INFER, doc(parameters={"a": [1]}), 400, ("parameter 'a'",)),
    HttpCase("timeout_not_an_integer", INFER, doc(parameters={"timeout": "1s"}), 400, ("timeout",)),
    HttpCase("timeout_negative", INFER, doc(parameters={"timeout": -5}), 400, ("timeout",)),
    HttpCase(
        "binary_data_output_not_bool",
        INFER,
        doc(parameters={"binary_data_output": "yes"}),
        400,
        ("binary_data_output",),
    ),
    HttpCase(
        "output_binary_data_not_bool",
        INFER,
        doc(outputs=[{"name": "OUTPUT0", "parameters": {"binary_data": 1}}]),
        400,
        ("binary_data",),
    ),
    HttpCase(
        "duplicate_output",
        INFER,
        doc(outputs=[{"name": "OUTPUT0"}, {"name": "OUTPUT0"}]),
        400,
        ("OUTPUT0",),
    ),
    HttpCase("output_without_name", INFER, doc(outputs=[{"parameters": {}}]), 400, ("outputs[0]",)),
    HttpCase(
        "shared_memory_input",
        INFER,
        json.dumps(
            {
                "inputs": [
                    {**tensor(), "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 64}},
                    tensor("INPUT1"),
                ]
            }
        ).encode(),
        501,
        ("shared",),
    ),
    # ------------------------------------------------------------------ shapes and sizes
    HttpCase(
        "shape_of_10_12_elements",
        INFER,
        json.dumps({"inputs": [tensor(shape=HUGE_SHAPE), tensor("INPUT1")]}).encode(),
        413,
        ("INPUT0",),
    ),
    HttpCase(
        "dimension_beyond_limit_next_to_zero",
        INFER,
        json.dumps({"inputs": [tensor(shape=(0, 2**62), data=[]), tensor("INPUT1")]}).encode(),
        413,
        ("INPUT0",),
    ),
    HttpCase(
        "rank_too_high",
        INFER,
        json.dumps({"inputs": [tensor(shape=[1] * 33), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0", "dimensions"),
    ),
    HttpCase("too_many_inputs", INFER, inputs_doc(65), 413, ("inputs",)),
    HttpCase(
        "data_nested_too_deep",
        INFER,
        json.dumps({"inputs": [tensor(data=nested(70)), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0",),
    ),
    HttpCase("json_nested_beyond_parser", INFER, b"[" * 5000 + b"]" * 5000, 400, ("nested",)),
    HttpCase(
        "json_nested_beyond_parser_in_unknown_field",
        INFER,
        b'{"junk": ' + b"[" * 2000 + b"]" * 2000 + b', "inputs": []}',
        400,
        ("nested",),
    ),
    HttpCase(
        "data_not_a_list",
        INFER,
        json.dumps({"inputs": [tensor(data="0123"), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0",),
    ),
    HttpCase(
        "bools_in_int32",
        INFER,
        json.dumps({"inputs": [tensor(data=[True] * 16), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0",),
    ),
    HttpCase(
        "nan_literal_in_int32",
        INFER,
        b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [NaN'
        + b", 1" * 15
        + b"]}, "
        + json.dumps(tensor("INPUT1")).encode()
        + b"]}",
        400,
        ("INPUT0",),
    ),
    HttpCase(
        "infinity_literal_in_int32",
        INFER,
        b'{"inputs": [{"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [-Infinity'
        + b", 1" * 15
        + b"]}, "
        + json.dumps(tensor("INPUT1")).encode()
        + b"]}",
        400,
        ("INPUT0",),
    ),
    HttpCase("nan_literal_misspelt", INFER, b'{"inputs": [nan]}', 400, ("json",)),
    # ------------------------------------------------------------------ binary extension
    _binary_case(
        "binary_header_length_non_ascii_digit",
        {"inputs": [binary_input("INPUT0", 64), binary_input("INPUT1", 64)]},
        int32_bytes(A + B),
        400,
        ("Inference-Header-Content-Length",),
        header_length="\u00c2\u00b2",  # sent as latin-1, read as UTF-8: '\u00b2', a digit to str.isdigit
    ),
    _binary_case(
        "binary_header_length_huge",
        {"inputs": [binary_input("INPUT0", 64), binary_input("INPUT1", 64)]},
        int32_bytes(A + B),
        400,
        ("Inference-Header-Content-Length",),
        header_length="9" * 5000,
    ),
    _binary_case(
        "binary_size_not_an_integer",
        {
            "inputs": [
                {**binary_input("INPUT0", 64), "parameters": {"binary_data_size": "64"}},
                binary_input("INPUT1", 64),
            ]
        },
        int32_bytes(A + B),
        400,
        ("binary_data_size",),
    ),
    _binary_case(
        "binary_size_and_data",
        {"inputs": [{**binary_input("INPUT0", 64), "data": A}, binary_input("INPUT1", 64)]},
        int32_bytes(A + B),
        400,
        ("INPUT0",),
    ),
    HttpCase(
        "binary_size_without_binary_data",
        INFER,
        json.dumps({"inputs": [binary_input("INPUT0", 64), tensor("INPUT1")]}).encode(),
        400,
        ("INPUT0",),
    ),
    _binary_case(
        "binary_shape_of_10_12_elements",
        {"inputs": [binary_input("INPUT0", 64, shape=HUGE_SHAPE), binary_input("INPUT1", 64)]},
        int32_bytes(A + B),
        413,
        ("INPUT0",),
    ),
    _binary_case(
        "binary_bytes_fewer_bytes_than_elements",
        {"inputs": [string_binary_input(8), STRING_INPUT1]},
        b"\x00" * 8,
        400,
        ("INPUT0",),
        path=STRING_INFER,
    ),
    _binary_case(
        "binary_bytes_length_prefix_beyond_data",
        {"inputs": [string_binary_input(64), STRING_INPUT1]},
        struct.pack("<I", 1000) + b"\x00" * 60,
        400,
        ("INPUT0",),
        path=STRING_INFER,
    ),
    # ------------------------------------------------------------------ msgpack
    _msgpack_case("msgpack_missing_inputs", mp({}), 400, ("inputs",)),
    _msgpack_case("msgpack_inputs_not_a_list", mp({"inputs": 7}), 400, ("inputs",)),
    _msgpack_case("msgpack_input_not_a_map", mp({"inputs": [1]}), 400, ("inputs[0]",)),
    _msgpack_case("msgpack_bytes_keys", mp({b"inputs": [mp_tensor()]}), 400, ("inputs",)),
    _msgpack_case(
        "msgpack_bytes_parameter_name",
        mp({"inputs": [mp_tensor()], "parameters": {b"k": 1}}),
        400,
        ("parameter",),
    ),
    _msgpack_case(
        "msgpack_name_is_bytes", mp_inputs(mp_tensor(b"INPUT0"), mp_tensor("INPUT1")), 400, ("name",)
    ),
    _msgpack_case(
        "msgpack_raw_data_wrong_size",
        mp_inputs(mp_tensor(data=int32_bytes(A)[:60]), mp_tensor("INPUT1")),
        400,
        ("INPUT0",),
    ),
    _msgpack_case(
        "msgpack_shape_of_10_12_elements",
        mp_inputs(mp_tensor(shape=list(HUGE_SHAPE)), mp_tensor("INPUT1")),
        413,
        ("INPUT0",),
    ),
    _msgpack_case(
        "msgpack_too_many_inputs", mp_inputs(*[mp_tensor(f"INPUT{i}") for i in range(65)]), 413, ("inputs",)
    ),
    _msgpack_case(
        "msgpack_negative_dim", mp_inputs(mp_tensor(shape=[-1, 16]), mp_tensor("INPUT1")), 400, ("shape",)
    ),
    _msgpack_case(
        "msgpack_unknown_datatype",
        mp_inputs(mp_tensor(datatype="INT33"), mp_tensor("INPUT1")),
        400,
        ("INT33",),
    ),
    _msgpack_case(
        "msgpack_strings_in_int32",
        mp_inputs(mp_tensor(data=["a"] * 16), mp_tensor("INPUT1")),
        400,
        ("INPUT0",),
    ),
    _msgpack_case(
        "msgpack_ext_type_in_data",
        mp_inputs(mp_tensor(data=[msgpack.ExtType(5, b"x")] * 16), mp_tensor("INPUT1")),
        400,
        ("INPUT0",),
    ),
    _msgpack_case(
        "msgpack_id_too_long", mp({"inputs": [mp_tensor(), mp_tensor("INPUT1")], "id": LONG}), 400, ("'id'",)
    ),
    _msgpack_case("msgpack_truncated", mp_inputs(mp_tensor(), mp_tensor("INPUT1"))[:-7], 400, ("msgpack",)),
    _msgpack_case(
        "msgpack_trailing_bytes", mp_inputs(mp_tensor(), mp_tensor("INPUT1")) + b"\x00", 400, ("msgpack",)
    ),
    _msgpack_case("msgpack_nested_beyond_parser", b"\x91" * 5000 + b"\xc0", 400, ("nested",)),
    _msgpack_case(
        "msgpack_data_nested_too_deep",
        mp_inputs(mp_tensor(data=nested(70)), mp_tensor("INPUT1")),
        400,
        ("INPUT0",),
    ),
    _msgpack_case(
        "msgpack_with_header_length",
        mp_inputs(mp_tensor(), mp_tensor("INPUT1")),
        400,
        ("Inference-Header-Content-Length",),
    ),
]
# The one msgpack case that also carries the binary extension's header.
HTTP_CASES[-1] = HttpCase(
    "msgpack_with_header_length",
    INFER,
    mp_inputs(mp_tensor(), mp_tensor("INPUT1")),
    400,
    ("Inference-Header-Content-Length",),
    headers={**MSGPACK, "Inference-Header-Content-Length": "4"},
)


# ------------------------------------------------------------------------------------------ gRPC


def grpc_request(
    model: str = "simple",
    version: str = "",
    inputs: list[tuple[str, str, list[int]]] | None = None,
    raw: list[bytes] | None = None,
) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest as tritonclient would send it (raw contents), before a case breaks it."""
    req = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape in (
        inputs if inputs is not None else [("INPUT0", "INT32", [1, 16]), ("INPUT1", "INT32", [1, 16])]
    ):
        req.inputs.add(name=name, datatype=datatype, shape=shape)
    req.raw_input_contents.extend(raw if raw is not None else [int32_bytes(A), int32_bytes(B)])
    return req


def typed(field_name: str, values: list[Any], datatype: str = "INT32") -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        t = req.inputs.add(name=name, datatype=datatype, shape=[1, 16])
        getattr(t.contents, field_name).extend(values)
    return req


def mixed() -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="simple")
    a = req.inputs.add(name="INPUT0", datatype="INT32", shape=[1, 16])
    a.contents.int_contents.extend(A)
    req.inputs.add(name="INPUT1", datatype="INT32", shape=[1, 16])
    req.raw_input_contents.append(int32_bytes(B))
    return req


def with_output(name: str, classification: int | None = None) -> service_pb2.ModelInferRequest:
    req = grpc_request()
    out = req.outputs.add(name=name)
    if classification is not None:
        out.parameters["classification"].int64_param = classification
    return req


def length_prefixed(elements: list[bytes], claim: int | None = None) -> bytes:
    parts = []
    for i, e in enumerate(elements):
        parts.append(struct.pack("<I", claim if (claim is not None and i == 0) else len(e)))
        parts.append(e)
    return b"".join(parts)


def string_request(raw0: bytes) -> service_pb2.ModelInferRequest:
    return grpc_request(
        "simple_string",
        inputs=[("INPUT0", "BYTES", [1, 16]), ("INPUT1", "BYTES", [1, 16])],
        raw=[raw0, length_prefixed([b"1"] * 16)],
    )


FP32_16 = np.zeros(16, dtype="<f4").tobytes()


@dataclass(frozen=True)
class GrpcCase:
    id: str
    build: Callable[[], Any]
    code: grpc.StatusCode
    message: tuple[str, ...]
    rpc: str = "ModelInfer"
    metadata: tuple[tuple[str, str], ...] = ()


INVALID = grpc.StatusCode.INVALID_ARGUMENT
GRPC_CASES = [
    GrpcCase("grpc_raw_count_mismatch", lambda: grpc_request(raw=[int32_bytes(A)]), INVALID, ("raw",)),
    GrpcCase(
        "grpc_raw_size_mismatch",
        lambda: grpc_request(raw=[int32_bytes(A)[:60], int32_bytes(B)]),
        INVALID,
        ("INPUT0",),
    ),
    GrpcCase("grpc_raw_without_inputs", lambda: grpc_request(inputs=[]), INVALID, ("input",)),
    GrpcCase("grpc_typed_wrong_field", lambda: typed("fp32_contents", [0.5] * 16), INVALID, ("INPUT0",)),
    GrpcCase("grpc_typed_count_mismatch", lambda: typed("int_contents", A[:15]), INVALID, ("INPUT0",)),
    GrpcCase(
        "grpc_typed_int8_out_of_range",
        lambda: typed("int_contents", [300] * 16, "INT8"),
        INVALID,
        ("INPUT0", "INT8"),
    ),
    GrpcCase("grpc_mixing_raw_and_typed", mixed, INVALID, ("raw", "contents")),
    GrpcCase(
        "grpc_unknown_datatype",
        lambda: grpc_request(inputs=[("INPUT0", "FLOAT32", [1, 16]), ("INPUT1", "INT32", [1, 16])]),
        INVALID,
        ("FLOAT32",),
    ),
    GrpcCase(
        "grpc_negative_dim",
        lambda: grpc_request(inputs=[("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [1, 16])]),
        INVALID,
        ("shape",),
    ),
    GrpcCase(
        "grpc_wrong_datatype_for_model",
        lambda: grpc_request(
            inputs=[("INPUT0", "FP32", [1, 16]), ("INPUT1", "FP32", [1, 16])], raw=[FP32_16, FP32_16]
        ),
        INVALID,
        ("FP32",),
    ),
    GrpcCase(
        "grpc_wrong_shape",
        lambda: grpc_request(inputs=[("INPUT0", "INT32", [2, 8]), ("INPUT1", "INT32", [2, 8])]),
        INVALID,
        ("shape",),
    ),
    GrpcCase(
        "grpc_batch_over_max",
        lambda: grpc_request(
            inputs=[("INPUT0", "INT32", [257, 16]), ("INPUT1", "INT32", [257, 16])],
            raw=[int32_bytes(A * 257), int32_bytes(B * 257)],
        ),
        INVALID,
        ("batch",),
    ),
    GrpcCase("grpc_missing_inputs", lambda: grpc_request(inputs=[], raw=[]), INVALID, ("input",)),
    GrpcCase(
        "grpc_missing_input",
        lambda: grpc_request(inputs=[("INPUT0", "INT32", [1, 16])], raw=[int32_bytes(A)]),
        INVALID,
        ("INPUT1",),
    ),
    GrpcCase(
        "grpc_unknown_input",
        lambda: grpc_request(
            inputs=[("INPUT0", "INT32", [1, 16]), ("INPUT1", "INT32", [1, 16]), ("INPUT2", "INT32", [1, 16])],
            raw=[int32_bytes(A), int32_bytes(B), int32_bytes(B)],
        ),
        INVALID,
        ("INPUT2",),
    ),
    GrpcCase(
        "grpc_duplicate_input",
        lambda: grpc_request(
            inputs=[("INPUT0", "INT32", [1, 16]), ("INPUT0", "INT32", [1, 16]), ("INPUT1", "INT32", [1, 16])],
            raw=[int32_bytes(A), int32_bytes(A), int32_bytes(B)],
        ),
        INVALID,
        ("INPUT0",),
    ),
    GrpcCase("grpc_unknown_output", lambda: with_output("OUTPUT9"), INVALID, ("OUTPUT9",)),
    GrpcCase(
        "grpc_bytes_length_prefix_beyond_data",
        lambda: string_request(length_prefixed([b"1"] * 16, claim=100)),
        INVALID,
        ("INPUT0",),
    ),
    GrpcCase(
        "grpc_bytes_truncated_prefix",
        lambda: string_request(length_prefixed([b"1"] * 15) + b"\x01\x00"),
        INVALID,
        ("INPUT0",),
    ),
    GrpcCase(
        "grpc_bytes_left_over",
        lambda: string_request(length_prefixed([b"1"] * 16) + b"xyz"),
        INVALID,
        ("INPUT0",),
    ),
    GrpcCase("grpc_unknown_model", lambda: grpc_request("nope"), grpc.StatusCode.NOT_FOUND, ("nope",)),
    GrpcCase(
        "grpc_unknown_version", lambda: grpc_request(version="7"), grpc.StatusCode.NOT_FOUND, ("version",)
    ),
    GrpcCase("grpc_version_not_a_number", lambda: grpc_request(version="abc"), INVALID, ("abc",)),
    GrpcCase(
        "grpc_model_not_ready",
        lambda: grpc_request("identity_cuda", inputs=[("INPUT0", "FP32", [1, 16])], raw=[FP32_16]),
        grpc.StatusCode.UNAVAILABLE,
        ("identity_cuda",),
    ),
    GrpcCase(
        "grpc_pinned_version_not_ready",
        lambda: grpc_request("identity_cuda", "1", inputs=[("INPUT0", "FP32", [1, 16])], raw=[FP32_16]),
        grpc.StatusCode.UNAVAILABLE,
        ("CUDAExecutionProvider",),
    ),
    GrpcCase(
        "grpc_classification_requested",
        lambda: with_output("OUTPUT0", classification=2),
        grpc.StatusCode.UNIMPLEMENTED,
        ("classification",),
    ),
    GrpcCase(
        "grpc_metadata_unknown_model",
        lambda: service_pb2.ModelMetadataRequest(name="nope"),
        grpc.StatusCode.NOT_FOUND,
        ("nope",),
        rpc="ModelMetadata",
    ),
    GrpcCase(
        "grpc_config_unknown_model",
        lambda: service_pb2.ModelConfigRequest(name="nope"),
        grpc.StatusCode.NOT_FOUND,
        ("nope",),
        rpc="ModelConfig",
    ),
    GrpcCase(
        "grpc_stats_unknown_model",
        lambda: service_pb2.ModelStatisticsRequest(name="nope"),
        grpc.StatusCode.NOT_FOUND,
        ("nope",),
        rpc="ModelStatistics",
    ),
    GrpcCase(
        "grpc_load_unknown_model",
        lambda: service_pb2.RepositoryModelLoadRequest(model_name="nope"),
        grpc.StatusCode.NOT_FOUND,
        ("nope",),
        rpc="RepositoryModelLoad",
    ),
]


def raw_inputs(count: int) -> service_pb2.ModelInferRequest:
    return grpc_request(
        inputs=[(f"INPUT{i}", "INT32", [1, 16]) for i in range(count)], raw=[int32_bytes(A)] * count
    )


def changed(req: service_pb2.ModelInferRequest, **fields: Any) -> service_pb2.ModelInferRequest:
    for name, value in fields.items():
        setattr(req, name, value)
    return req


def with_parameter(
    req: service_pb2.ModelInferRequest, key: str, **value: Any
) -> service_pb2.ModelInferRequest:
    param = req.parameters[key]
    for which, v in value.items():
        setattr(param, which, v)
    return req


def typed_shape(field_name: str, values: list[Any], shape: list[int], datatype: str = "INT32") -> Any:
    req = typed(field_name, values, datatype)
    for t in req.inputs:
        t.shape[:] = shape
    return req


def typed_strings(values0: list[bytes]) -> service_pb2.ModelInferRequest:
    req = service_pb2.ModelInferRequest(model_name="simple_string")
    a = req.inputs.add(name="INPUT0", datatype="BYTES", shape=[1, 16])
    a.contents.bytes_contents.extend(values0)
    b = req.inputs.add(name="INPUT1", datatype="BYTES", shape=[1, 16])
    b.contents.bytes_contents.extend([b"1"] * 16)
    return req


def shared_memory_input() -> service_pb2.ModelInferRequest:
    req = grpc_request()
    req.inputs[0].parameters["shared_memory_region"].string_param = "region"
    return req


def empty_parameter() -> service_pb2.ModelInferRequest:
    req = grpc_request()
    req.parameters["p"].SetInParent()
    return req


def duplicate_output() -> service_pb2.ModelInferRequest:
    req = grpc_request()
    req.outputs.add(name="OUTPUT0")
    req.outputs.add(name="OUTPUT0")
    return req


RESOURCE = grpc.StatusCode.RESOURCE_EXHAUSTED
GRPC_CASES += [
    GrpcCase(
        "grpc_shape_of_10_12_elements",
        lambda: grpc_request(inputs=[("INPUT0", "INT32", list(HUGE_SHAPE)), ("INPUT1", "INT32", [1, 16])]),
        RESOURCE,
        ("INPUT0",),
    ),
    GrpcCase(
        "grpc_dimension_beyond_limit_next_to_zero",
        lambda: grpc_request(
            inputs=[("INPUT0", "INT32", [0, 2**62]), ("INPUT1", "INT32", [1, 16])], raw=[b"", int32_bytes(B)]
        ),
        RESOURCE,
        ("INPUT0",),
    ),
    GrpcCase(
        "grpc_rank_too_high",
        lambda: grpc_request(inputs=[("INPUT0", "INT32", [1] * 33), ("INPUT1", "INT32", [1, 16])]),
        INVALID,
        ("INPUT0", "dimensions"),
    ),
    GrpcCase("grpc_too_many_inputs", lambda: raw_inputs(65), RESOURCE, ("inputs",)),
    GrpcCase("grpc_id_too_long", lambda: changed(grpc_request(), id=LONG), INVALID, ("'id'",)),
    GrpcCase(
        "grpc_routing_key_parameter_too_long",
        lambda: with_parameter(grpc_request(), "routing_key", string_param=LONG),
        INVALID,
        ("routing_key",),
    ),
    GrpcCase(
        "grpc_routing_key_parameter_not_a_string",
        lambda: with_parameter(grpc_request(), "routing_key", int64_param=5),
        INVALID,
        ("routing_key",),
    ),
    GrpcCase(
        "grpc_routing_key_metadata_too_long",
        grpc_request,
        INVALID,
        ("x-routing-key",),
        metadata=(("x-routing-key", LONG),),
    ),
    GrpcCase("grpc_parameter_without_value", empty_parameter, INVALID, ("'p'",)),
    GrpcCase(
        "grpc_timeout_not_an_integer",
        lambda: with_parameter(grpc_request(), "timeout", string_param="1s"),
        INVALID,
        ("timeout",),
    ),
    GrpcCase("grpc_duplicate_output", duplicate_output, INVALID, ("OUTPUT0",)),
    GrpcCase(
        "grpc_shared_memory_input", shared_memory_input, grpc.StatusCode.UNIMPLEMENTED, ("shared memory",)
    ),
    GrpcCase(
        "grpc_bytes_fewer_bytes_than_elements", lambda: string_request(b"\x00" * 8), INVALID, ("INPUT0",)
    ),
    # ------------------------------------------------------------------ typed contents
    GrpcCase("grpc_typed_bool_for_int32", lambda: typed("bool_contents", [True] * 16), INVALID, ("INPUT0",)),
    GrpcCase(
        "grpc_typed_int64_field_for_int32", lambda: typed("int64_contents", A), INVALID, ("int_contents",)
    ),
    GrpcCase(
        "grpc_typed_fp16_has_no_field",
        lambda: typed("fp32_contents", [0.5] * 16, "FP16"),
        INVALID,
        ("raw_input_contents",),
    ),
    GrpcCase(
        "grpc_typed_shape_of_10_12_elements",
        lambda: typed_shape("int_contents", A, list(HUGE_SHAPE)),
        RESOURCE,
        ("INPUT0",),
    ),
    GrpcCase(
        "grpc_typed_negative_dim", lambda: typed_shape("int_contents", A, [-1, 16]), INVALID, ("shape",)
    ),
    GrpcCase(
        "grpc_typed_uint8_out_of_range",
        lambda: typed("uint_contents", [300] * 16, "UINT8"),
        INVALID,
        ("INPUT0",),
    ),
    GrpcCase("grpc_typed_bytes_count_mismatch", lambda: typed_strings([b"1"] * 15), INVALID, ("INPUT0",)),
    GrpcCase(
        "grpc_typed_unknown_datatype",
        lambda: typed("int_contents", A, "INT33"),
        INVALID,
        ("INT33",),
    ),
]


# ------------------------------------------------------------------------------------------ gRPC streams


@dataclass(frozen=True)
class StreamCase:
    """A bad request inside a ModelStreamInfer stream: answered in-band, and the next request still is."""

    id: str
    build: Callable[[], Any]
    message: tuple[str, ...]


STREAM_CASES = [
    StreamCase("stream_unknown_model", lambda: grpc_request("nope"), ("nope",)),
    StreamCase(
        "stream_raw_size_mismatch",
        lambda: grpc_request(raw=[int32_bytes(A)[:60], int32_bytes(B)]),
        ("INPUT0",),
    ),
    StreamCase("stream_raw_count_mismatch", lambda: grpc_request(raw=[int32_bytes(A)]), ("raw",)),
    StreamCase("stream_typed_wrong_field", lambda: typed("fp32_contents", [0.5] * 16), ("INPUT0",)),
    StreamCase("stream_mixing_raw_and_typed", mixed, ("raw", "contents")),
    StreamCase(
        "stream_shape_of_10_12_elements",
        lambda: grpc_request(inputs=[("INPUT0", "INT32", list(HUGE_SHAPE)), ("INPUT1", "INT32", [1, 16])]),
        ("INPUT0",),
    ),
    StreamCase("stream_too_many_inputs", lambda: raw_inputs(65), ("inputs",)),
    StreamCase("stream_id_too_long", lambda: changed(grpc_request(), id=LONG), ("'id'",)),
    StreamCase(
        "stream_unknown_datatype",
        lambda: grpc_request(inputs=[("INPUT0", "FLOAT32", [1, 16]), ("INPUT1", "INT32", [1, 16])]),
        ("FLOAT32",),
    ),
    StreamCase("stream_duplicate_output", duplicate_output, ("OUTPUT0",)),
    StreamCase(
        "stream_bytes_length_prefix_beyond_data",
        lambda: string_request(length_prefixed([b"1"] * 16, claim=100)),
        ("INPUT0",),
    ),
    StreamCase(
        "stream_model_not_ready",
        lambda: grpc_request("identity_cuda", inputs=[("INPUT0", "FP32", [1, 16])], raw=[FP32_16]),
        ("identity_cuda",),
    ),
]


# ------------------------------------------------------------------------------------------ small limits

# The second gateway's [limits]: small enough that oversize requests are cheap to build and send.
SMALL_LIMITS = {
    "max_body_bytes": 64 * 1024,
    "max_tensor_elements": 4096,
    "max_inputs": 4,
    "max_bytes_element": 64,
}
BIG_STRING = "x" * 65  # one byte over max_bytes_element
OVER_BODY = 64 * 1024 + 1


def strings_json(first: list[str]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16], "data": first}, STRING_INPUT1]}
    ).encode()


def big_string_elements() -> list[bytes]:
    return [BIG_STRING.encode()] + [b"1"] * 15


def elements_over() -> list[int]:
    return [1, SMALL_LIMITS["max_tensor_elements"] + 1]


LIMIT_HTTP_CASES = [
    HttpCase("limit_body_too_large", INFER, b" " * OVER_BODY, 413, ("body",)),
    HttpCase("limit_body_too_large_chunked", INFER, b" " * OVER_BODY, 413, ("body",), chunked=True),
    HttpCase("limit_too_many_inputs", INFER, inputs_doc(5), 413, ("inputs",)),
    HttpCase(
        "limit_too_many_elements",
        INFER,
        json.dumps({"inputs": [tensor(shape=elements_over()), tensor("INPUT1")]}).encode(),
        413,
        ("INPUT0",),
    ),
    HttpCase(
        "limit_bytes_element_json", STRING_INFER, strings_json([BIG_STRING] + ["1"] * 15), 413, ("INPUT0",)
    ),
    _binary_case(
        "limit_bytes_element_binary",
        {"inputs": [string_binary_input(len(length_prefixed(big_string_elements()))), STRING_INPUT1]},
        length_prefixed(big_string_elements()),
        413,
        ("INPUT0",),
        path=STRING_INFER,
    ),
    HttpCase(
        "limit_bytes_element_msgpack",
        STRING_INFER,
        mp(
            {
                "inputs": [
                    {"name": "INPUT0", "datatype": "BYTES", "shape": [1, 16], "data": big_string_elements()},
                    STRING_INPUT1,
                ]
            }
        ),
        413,
        ("INPUT0",),
        headers=dict(MSGPACK),
    ),
    _msgpack_case(
        "limit_too_many_inputs_msgpack",
        mp_inputs(*[mp_tensor(f"INPUT{i}") for i in range(5)]),
        413,
        ("inputs",),
    ),
]

LIMIT_GRPC_CASES = [
    GrpcCase(
        "limit_grpc_message_too_large",
        lambda: grpc_request(raw=[b"\x00" * OVER_BODY, int32_bytes(B)]),
        RESOURCE,
        ("message",),
    ),
    GrpcCase("limit_grpc_too_many_inputs", lambda: raw_inputs(5), RESOURCE, ("inputs",)),
    GrpcCase(
        "limit_grpc_too_many_elements",
        lambda: grpc_request(inputs=[("INPUT0", "INT32", elements_over()), ("INPUT1", "INT32", [1, 16])]),
        RESOURCE,
        ("INPUT0",),
    ),
    GrpcCase(
        "limit_grpc_bytes_element_raw",
        lambda: string_request(length_prefixed(big_string_elements())),
        RESOURCE,
        ("INPUT0",),
    ),
    GrpcCase(
        "limit_grpc_bytes_element_typed", lambda: typed_strings(big_string_elements()), RESOURCE, ("INPUT0",)
    ),
]


# ------------------------------------------------------------------------------------------ sending


def http_send(
    gw: GatewayProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, str, bytes]:
    """Send one request on a fresh connection (http.client: header values go out as latin-1 bytes)."""
    host, port = gw.http_url.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        if chunked and body is not None:
            pieces = [body[i : i + 8192] for i in range(0, len(body), 8192)]
            conn.request(method, path, iter(pieces), headers or {}, encode_chunked=True)
        else:
            conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()


def grpc_send(
    gw: GatewayProcess, rpc: str, request: Any, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(gw.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            getattr(stub, rpc)(request, timeout=60, metadata=metadata or None)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def stream_send(gw: GatewayProcess, requests: list[Any]) -> dict[str, Any]:
    """Send `requests` on one ModelStreamInfer stream; the answers by request id (served concurrently)."""
    with grpc.insecure_channel(gw.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return {r.infer_response.id: r for r in stub.ModelStreamInfer(iter(requests), timeout=60)}


def assert_still_serving(gw: GatewayProcess) -> None:
    """A good request to `simple` succeeds over both protocols."""
    status, _, body = http_send(gw, "POST", INFER, doc(), JSON)
    assert status == 200, body
    answer = json.loads(body)
    out = {o["name"]: o["data"] for o in answer["outputs"]}
    assert out["OUTPUT0"] == [a + b for a, b in zip(A, B, strict=True)]
    with grpc.insecure_channel(gw.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_request(), timeout=60)
    got = np.frombuffer(response.raw_output_contents[0], dtype="<i4")
    assert got.tolist() == [a + b for a, b in zip(A, B, strict=True)]


def _contains(message: str, wanted: tuple[str, ...]) -> bool:
    return any(w.lower() in message.lower() for w in wanted)


ALL_CASES = [*HTTP_CASES, *GRPC_CASES, *STREAM_CASES, *LIMIT_HTTP_CASES, *LIMIT_GRPC_CASES]


def test_the_catalogue_is_large_and_ids_are_unique() -> None:
    ids = [c.id for c in ALL_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 110
    assert (
        sum(1 for c in HTTP_CASES + LIMIT_HTTP_CASES if c.headers.get("Content-Type") == MSGPACK_TYPE) >= 15
    )
    assert len(STREAM_CASES) >= 10


MSGPACK_TYPE = MSGPACK["Content-Type"]


@pytest.fixture(scope="module")
def small_gateway(demo_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway with tiny [limits], next to the demo repository (its config's relative paths still hold)."""
    config = demo_config.with_name("gateway-small-limits.toml")
    table = "".join(f"{key} = {value}\n" for key, value in SMALL_LIMITS.items())
    config.write_text(demo_config.read_text() + "\n[limits]\n" + table)
    gw = start_gateway(
        tmp_path_factory.mktemp("gw-small"),
        "--config",
        str(config),
        "--state-dir",
        str(tmp_path_factory.mktemp("s")),
    )
    yield gw
    assert gw.stop() == 0, gw.log()


def check_http_case(gw: GatewayProcess, case: HttpCase) -> None:
    started = time.monotonic()
    status, content_type, body = http_send(gw, case.method, case.path, case.body, case.headers, case.chunked)
    elapsed = time.monotonic() - started
    assert status < 500 or status in (501, 503), f"server error {status}: {body[:500]!r}"
    assert status == case.status, f"expected {case.status}, got {status}: {body[:500]!r}"
    assert content_type.startswith("application/json"), content_type
    error = json.loads(body)
    assert isinstance(error, dict) and isinstance(error.get("error"), str), error
    assert _contains(error["error"], case.message), f"{case.message} not in {error['error']!r}"
    assert elapsed < ANSWER_WITHIN_S, f"answered in {elapsed:.2f} s"
    assert_still_serving(gw)


def check_grpc_case(gw: GatewayProcess, case: GrpcCase) -> None:
    started = time.monotonic()
    code, details = grpc_send(gw, case.rpc, case.build(), case.metadata)
    elapsed = time.monotonic() - started
    assert code == case.code, f"expected {case.code}, got {code}: {details}"
    assert _contains(details, case.message), f"{case.message} not in {details!r}"
    assert elapsed < ANSWER_WITHIN_S, f"answered in {elapsed:.2f} s"
    assert_still_serving(gw)


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c.id for c in HTTP_CASES])
def test_http_bad_request(gateway: GatewayProcess, case: HttpCase) -> None:
    check_http_case(gateway, case)


@pytest.mark.parametrize("case", GRPC_CASES, ids=[c.id for c in GRPC_CASES])
def test_grpc_bad_request(gateway: GatewayProcess, case: GrpcCase) -> None:
    check_grpc_case(gateway, case)


@pytest.mark.parametrize("case", STREAM_CASES, ids=[c.id for c in STREAM_CASES])
def test_grpc_stream_bad_request_is_answered_in_band(gateway: GatewayProcess, case: StreamCase) -> None:
    bad = case.build()
    bad.id = bad.id or "bad"  # answers are matched by id: the stream serves its requests concurrently
    good = grpc_request()
    good.id = "good"
    started = time.monotonic()
    answers = stream_send(gateway, [bad, good, grpc_request()])
    elapsed = time.monotonic() - started
    assert set(answers) == {bad.id, "good", ""}, answers.keys()
    message = answers[bad.id].error_message
    assert message and _contains(message, case.message), f"{case.message} not in {message!r}"
    for ok in ("good", ""):  # the stream went on after the bad request
        assert answers[ok].error_message == ""
        got = np.frombuffer(answers[ok].infer_response.raw_output_contents[0], dtype="<i4")
        assert got.tolist() == [a + b for a, b in zip(A, B, strict=True)]
    assert elapsed < ANSWER_WITHIN_S, f"answered in {elapsed:.2f} s"
    assert_still_serving(gateway)


@pytest.mark.parametrize("case", LIMIT_HTTP_CASES, ids=[c.id for c in LIMIT_HTTP_CASES])
def test_http_over_a_limit(small_gateway: GatewayProcess, case: HttpCase) -> None:
    check_http_case(small_gateway, case)


@pytest.mark.parametrize("case", LIMIT_GRPC_CASES, ids=[c.id for c in LIMIT_GRPC_CASES])
def test_grpc_over_a_limit(small_gateway: GatewayProcess, case: GrpcCase) -> None:
    check_grpc_case(small_gateway, case)


HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
PAIRS = [
    ("wrong_datatype_for_model", "grpc_wrong_datatype_for_model"),
    ("unknown_datatype", "grpc_unknown_datatype"),
    ("batch_over_max", "grpc_batch_over_max"),
    ("unknown_input", "grpc_unknown_input"),
    ("unknown_model", "grpc_unknown_model"),
    ("unknown_version", "grpc_unknown_version"),
    ("version_not_a_number", "grpc_version_not_a_number"),
    ("model_not_ready", "grpc_model_not_ready"),
    ("classification_requested", "grpc_classification_requested"),
    ("metadata_unknown_model", "grpc_metadata_unknown_model"),
    ("shape_of_10_12_elements", "grpc_shape_of_10_12_elements"),
    ("msgpack_shape_of_10_12_elements", "grpc_typed_shape_of_10_12_elements"),
    ("dimension_beyond_limit_next_to_zero", "grpc_dimension_beyond_limit_next_to_zero"),
    ("rank_too_high", "grpc_rank_too_high"),
    ("too_many_inputs", "grpc_too_many_inputs"),
    ("msgpack_too_many_inputs", "grpc_too_many_inputs"),
    ("id_too_long", "grpc_id_too_long"),
    ("routing_key_parameter_too_long", "grpc_routing_key_parameter_too_long"),
    ("routing_key_header_too_long", "grpc_routing_key_metadata_too_long"),
    ("duplicate_output", "grpc_duplicate_output"),
    ("timeout_not_an_integer", "grpc_timeout_not_an_integer"),
    ("shared_memory_input", "grpc_shared_memory_input"),
    ("binary_bytes_fewer_bytes_than_elements", "grpc_bytes_fewer_bytes_than_elements"),
    ("binary_size_wrong_for_shape", "grpc_raw_size_mismatch"),
]
LIMIT_PAIRS = [
    ("limit_body_too_large", "limit_grpc_message_too_large"),
    ("limit_too_many_inputs", "limit_grpc_too_many_inputs"),
    ("limit_too_many_elements", "limit_grpc_too_many_elements"),
    ("limit_bytes_element_json", "limit_grpc_bytes_element_typed"),
    ("limit_bytes_element_binary", "limit_grpc_bytes_element_raw"),
    ("limit_bytes_element_msgpack", "limit_grpc_bytes_element_raw"),
]


@pytest.mark.parametrize(("http_id", "grpc_id"), PAIRS, ids=[p[0] for p in PAIRS])
def test_same_mistake_same_answer_over_both_protocols(
    gateway: GatewayProcess, http_id: str, grpc_id: str
) -> None:
    assert_same_answer(gateway, http_id, grpc_id)


@pytest.mark.parametrize(("http_id", "grpc_id"), LIMIT_PAIRS, ids=[p[0] for p in LIMIT_PAIRS])
def test_same_limit_same_answer_over_both_protocols(
    small_gateway: GatewayProcess, http_id: str, grpc_id: str
) -> None:
    assert_same_answer(small_gateway, http_id, grpc_id)


def assert_same_answer(gw: GatewayProcess, http_id: str, grpc_id: str) -> None:
    h = next(c for c in HTTP_CASES + LIMIT_HTTP_CASES if c.id == http_id)
    g = next(c for c in GRPC_CASES + LIMIT_GRPC_CASES if c.id == grpc_id)
    status, _, body = http_send(gw, h.method, h.path, h.body, h.headers, h.chunked)
    code, details = grpc_send(gw, g.rpc, g.build(), g.metadata)
    assert status in HTTP_TO_GRPC, (status, body[:300])
    assert HTTP_TO_GRPC[status] == code, f"HTTP {status} ({body[:300]!r}) but gRPC {code} ({details})"


# ------------------------------------------------------------------------------------------ NaN and Inf

SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.5, np.finfo(np.float32).max, 1e-45] * 2, "<f4")


def assert_same_floats(got: np.ndarray, want: np.ndarray) -> None:
    """Equal, NaN where NaN was, and the sign of infinities kept."""
    np.testing.assert_array_equal(np.asarray(got, dtype="<f4").reshape(-1), want)


@pytest.mark.parametrize("binary_data", [False, True], ids=["json", "binary"])
def test_nan_and_infinity_are_valid_float_data_over_http(gateway: GatewayProcess, binary_data: bool) -> None:
    """tritonclient writes NaN / Infinity / -Infinity literals in JSON; they come back as the same values."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(gateway.http_url)
    try:
        inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(SPECIAL.reshape(1, 16), binary_data=binary_data)
        out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_data)
        result = client.infer("identity_fp32", [inp], outputs=[out])
        assert_same_floats(result.as_numpy("OUTPUT0"), SPECIAL)
    finally:
        client.close()


@pytest.mark.parametrize("as_list", [False, True], ids=["bin", "list"])
def test_nan_and_infinity_are_valid_float_data_over_msgpack(gateway: GatewayProcess, as_list: bool) -> None:
    data: Any = SPECIAL.astype(float).tolist() if as_list else SPECIAL.tobytes()
    body = mp({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": data}]})
    status, content_type, answer = http_send(gateway, "POST", "/v2/models/identity_fp32/infer", body, MSGPACK)
    assert status == 200, answer[:300]
    assert content_type.startswith("application/msgpack")
    out = msgpack.unpackb(answer)["outputs"][0]
    assert_same_floats(np.frombuffer(out["data"], "<f4"), SPECIAL)


@pytest.mark.parametrize("typed_contents", [False, True], ids=["raw", "typed"])
def test_nan_and_infinity_are_valid_float_data_over_grpc(
    gateway: GatewayProcess, typed_contents: bool
) -> None:
    req = service_pb2.ModelInferRequest(model_name="identity_fp32")
    t = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    if typed_contents:
        t.contents.fp32_contents.extend(SPECIAL.tolist())
    else:
        req.raw_input_contents.append(SPECIAL.tobytes())
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(req, timeout=60)
    assert_same_floats(np.frombuffer(response.raw_output_contents[0], "<f4"), SPECIAL)
