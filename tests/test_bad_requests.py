"""A catalogue of malformed requests: each gets the right status and a useful message, and harms nothing.

HTTP requests are raw bodies sent with urllib (tritonclient refuses to send most of them); gRPC requests
are built by hand from tritonclient's own generated messages and sent through its own stub. After every
case a good request must still succeed over both protocols, in the same test.
"""

from __future__ import annotations

import json
import struct
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import msgpack
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.gateway_process import GatewayProcess

JSON = {"Content-Type": "application/json"}
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


def _binary_case(
    id: str, header: dict, blob: bytes, status: int, message: tuple[str, ...], **kw: Any
) -> HttpCase:
    body, headers = binary(header, blob, **kw)
    return HttpCase(id, "/v2/models/simple/infer", body, status, message, headers=headers)


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


# ------------------------------------------------------------------------------------------ sending


def http_send(
    gw: GatewayProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    request = urllib.request.Request(
        f"http://{gw.http_url}{path}", data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()
        finally:
            exc.close()


def grpc_send(gw: GatewayProcess, rpc: str, request: Any) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(gw.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        try:
            getattr(stub, rpc)(request, timeout=60)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


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


def test_the_catalogue_is_large_and_ids_are_unique() -> None:
    ids = [c.id for c in HTTP_CASES] + [c.id for c in GRPC_CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c.id for c in HTTP_CASES])
def test_http_bad_request(gateway: GatewayProcess, case: HttpCase) -> None:
    status, content_type, body = http_send(gateway, case.method, case.path, case.body, case.headers)
    assert status < 500 or status in (501, 503), f"server error {status}: {body[:500]!r}"
    assert status == case.status, f"expected {case.status}, got {status}: {body[:500]!r}"
    assert content_type.startswith("application/json"), content_type
    error = json.loads(body)
    assert isinstance(error, dict) and isinstance(error.get("error"), str), error
    assert _contains(error["error"], case.message), f"{case.message} not in {error['error']!r}"
    assert_still_serving(gateway)


@pytest.mark.parametrize("case", GRPC_CASES, ids=[c.id for c in GRPC_CASES])
def test_grpc_bad_request(gateway: GatewayProcess, case: GrpcCase) -> None:
    code, details = grpc_send(gateway, case.rpc, case.build())
    assert code == case.code, f"expected {case.code}, got {code}: {details}"
    assert _contains(details, case.message), f"{case.message} not in {details!r}"
    assert_still_serving(gateway)


HTTP_TO_GRPC = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
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
]


@pytest.mark.parametrize(("http_id", "grpc_id"), PAIRS, ids=[p[0] for p in PAIRS])
def test_same_mistake_same_answer_over_both_protocols(
    gateway: GatewayProcess, http_id: str, grpc_id: str
) -> None:
    h = next(c for c in HTTP_CASES if c.id == http_id)
    g = next(c for c in GRPC_CASES if c.id == grpc_id)
    status, _, body = http_send(gateway, h.method, h.path, h.body, h.headers)
    code, details = grpc_send(gateway, g.rpc, g.build())
    assert status in HTTP_TO_GRPC, (status, body[:300])
    assert HTTP_TO_GRPC[status] == code, f"HTTP {status} ({body[:300]!r}) but gRPC {code} ({details})"
