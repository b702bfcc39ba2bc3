"""The gRPC codec, tested directly with our generated messages.

tritonclient.grpc is never imported here: its generated modules define the same proto files and symbols as
ours, and the protobuf descriptor pool refuses both in one process. The differential tests against
tritonclient's own serialisers therefore run tritonclient in a subprocess and exchange serialised bytes.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import subprocess
import sys
import textwrap
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.grpc import codec, status
from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import model_config_pb2 as mc
from gateway.service import ModelConfigView, ModelMetadata, TensorMetadata, VersionStatistics
from gateway.settings import Limits
from gateway.tensors import raw_from_array
from gateway.types import InferInput, InferOutput, InferRequest, InferResponse, RequestedOutput
from runtime.config import BatchingConfig, VersionPolicy
from runtime.datatypes import BY_NAME
from runtime.errors import (
    ErrorCode,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServingError,
    Unsupported,
)
from runtime.model import BatchStats, QueueFull, TensorSpec, VersionStats
from runtime.repository import IndexRow

LIMITS = Limits()
Tensor = pb.ModelInferRequest.InferInputTensor

NUMERIC = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
)
TYPED = tuple(n for n in NUMERIC if n != "FP16")
# Bytes elements that a text-only codec would mangle: NUL, invalid UTF-8, empty, multi-byte UTF-8.
AWKWARD_BYTES = [b"a\x00b", b"\xff\xfe\x00", b"", "h\u00e9llo".encode(), b"\x00" * 5, b"plain"]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    """A deterministic array of `datatype` with values near each type's edges."""
    count = int(np.prod(shape))
    if datatype == "BYTES":
        return np.array([AWKWARD_BYTES[i % len(AWKWARD_BYTES)] for i in range(count)], dtype=object).reshape(
            shape
        )
    dtype = BY_NAME[datatype].numpy
    if datatype == "BOOL":
        return (np.arange(count) % 3 == 0).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        edges = np.array([info.min, info.max, 0, 1, info.max // 2, info.min // 2 + 1], dtype=dtype)
        return np.resize(edges, count).reshape(shape).astype(dtype)
    return (np.linspace(-3.5, 1e3, count) * (1 if datatype != "FP16" else 0.01)).astype(dtype).reshape(shape)


def typed_request(
    name: str, datatype: str, shape: tuple[int, ...], field: str, values: Any
) -> pb.ModelInferRequest:
    tensor = Tensor(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return pb.ModelInferRequest(model_name="m", inputs=[tensor])


def raw_request(*arrays: tuple[str, str, np.ndarray]) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="m",
        inputs=[Tensor(name=n, datatype=d, shape=a.shape) for n, d, a in arrays],
        raw_input_contents=[raw_from_array(a) for _, _, a in arrays],
    )


def wire(msg: Any) -> Any:
    """Serialise and parse again, so tests see exactly what crossed the network."""
    return type(msg).FromString(msg.SerializeToString())


def decode(msg: pb.ModelInferRequest, key: str | None = None, limits: Limits = LIMITS) -> InferRequest:
    return codec.decode_infer_request(wire(msg), key, limits)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert got.dtype == object
        assert list(got.reshape(-1)) == [bytes(v) for v in want.reshape(-1)]
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------------------ requests


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_contents_every_datatype(datatype: str) -> None:
    want = sample(datatype)
    values = want.reshape(-1).tolist()
    req = decode(typed_request("x", datatype, want.shape, codec.TYPED_FIELD[datatype], values))
    assert req.protocol == "grpc"
    (tensor,) = req.inputs
    assert (tensor.name, tensor.datatype, tensor.shape) == ("x", datatype, want.shape)
    assert_same(tensor.data, want)


def test_typed_bytes_keep_nul_and_non_utf8() -> None:
    want = sample("BYTES", (3, 2))
    req = decode(typed_request("s", "BYTES", (3, 2), "bytes_contents", want.reshape(-1).tolist()))
    assert_same(req.inputs[0].data, want)


@pytest.mark.parametrize("datatype", (*NUMERIC, "BYTES"))
def test_raw_contents_every_datatype(datatype: str) -> None:
    want = sample(datatype, (4, 3))
    req = decode(raw_request(("x", datatype, want)))
    assert_same(req.inputs[0].data, want)


def test_raw_fixed_size_is_zero_copy() -> None:
    msg = wire(raw_request(("x", "FP32", np.ones((16, 16), np.float32))))
    data = codec.decode_infer_request(msg, None, LIMITS).inputs[0].data
    assert not data.flags.owndata  # a view on the message's bytes, not a copy
    assert data.base is not None


def test_several_raw_inputs_keep_their_order() -> None:
    a, b = sample("INT32", (2, 2)), sample("BYTES", (2, 1))
    req = decode(raw_request(("A", "INT32", a), ("B", "BYTES", b)))
    assert [t.name for t in req.inputs] == ["A", "B"]
    assert_same(req.inputs[0].data, a)
    assert_same(req.inputs[1].data, b)


def test_empty_tensor_with_no_data_is_accepted() -> None:
    req = decode(
        pb.ModelInferRequest(model_name="m", inputs=[Tensor(name="x", datatype="FP32", shape=[0, 4])])
    )
    assert req.inputs[0].data.shape == (0, 4)


def test_request_fields_and_parameters() -> None:
    msg = raw_request(("x", "INT32", sample("INT32")))
    msg.model_version, msg.id = "3", "req-7"
    msg.parameters["b"].bool_param = True
    msg.parameters["i"].int64_param = -5
    msg.parameters["u"].uint64_param = 1 << 63
    msg.parameters["d"].double_param = 0.25
    msg.parameters["s"].string_param = "text"
    msg.inputs[0].parameters["note"].string_param = "in"
    out = msg.outputs.add(name="OUT")
    out.parameters["binary_data"].bool_param = True
    out.parameters["keep"].int64_param = 1
    msg.outputs.add(name="PLAIN")
    req = decode(msg)
    assert (req.model_name, req.model_version, req.id) == ("m", "3", "req-7")
    assert req.parameters == {"b": True, "i": -5, "u": 1 << 63, "d": 0.25, "s": "text"}
    assert req.inputs[0].parameters == {"note": "in"}
    assert req.outputs == [RequestedOutput("OUT", None, {"keep": 1}), RequestedOutput("PLAIN", None, None)]
    assert req.routing_key is None


def test_routing_key_parameter_wins_over_metadata() -> None:
    msg = raw_request(("x", "INT32", sample("INT32")))
    assert decode(msg, "from-metadata").routing_key == "from-metadata"
    msg.parameters["routing_key"].string_param = "from-parameter"
    assert decode(msg, "from-metadata").routing_key == "from-parameter"
    assert decode(msg, None).routing_key == "from-parameter"


def test_classification_is_unsupported() -> None:
    msg = raw_request(("x", "FP32", sample("FP32")))
    msg.outputs.add(name="OUT").parameters["classification"].int64_param = 3
    with pytest.raises(Unsupported, match="classification"):
        decode(msg)


@pytest.mark.parametrize("where", ["input", "output"])
def test_shared_memory_is_unsupported(where: str) -> None:
    msg = raw_request(("x", "FP32", sample("FP32")))
    target = msg.inputs[0] if where == "input" else msg.outputs.add(name="OUT")
    target.parameters["shared_memory_region"].string_param = "region"
    with pytest.raises(Unsupported, match="shared memory"):
        decode(msg)


def test_limits_are_applied() -> None:
    msg = pb.ModelInferRequest(
        model_name="m", inputs=[Tensor(name="x", datatype="FP32", shape=[1 << 20, 1 << 20])]
    )
    with pytest.raises(ResourceExhausted, match="'x'"):
        decode(msg)
    small = Limits(max_tensor_elements=5, max_inputs=1)
    with pytest.raises(ResourceExhausted):
        decode(raw_request(("x", "FP32", sample("FP32"))), limits=small)
    two = raw_request(("a", "UINT8", sample("UINT8", (1,))), ("b", "UINT8", sample("UINT8", (1,))))
    with pytest.raises(ResourceExhausted, match="limit 1"):  # too many inputs is oversize, as over HTTP
        decode(two, limits=small)


def _malformed() -> dict[str, pb.ModelInferRequest]:
    cases: dict[str, pb.ModelInferRequest] = {}
    cases["unknown datatype"] = typed_request("x", "FLOAT", (1,), "fp32_contents", [1.0])
    cases["unknown datatype raw"] = raw_request(("x", "FP32", np.ones(1, np.float32)))
    cases["unknown datatype raw"].inputs[0].datatype = "FP8"
    cases["negative dim"] = typed_request("x", "FP32", (-1, 2), "fp32_contents", [1.0, 2.0])
    cases["negative dim raw"] = raw_request(("x", "FP32", np.ones(2, np.float32)))
    cases["negative dim raw"].inputs[0].shape[:] = [-2]
    cases["typed count short"] = typed_request("x", "INT32", (2, 2), "int_contents", [1, 2, 3])
    cases["typed count long"] = typed_request("x", "INT64", (1,), "int64_contents", [1, 2])
    cases["typed wrong field"] = typed_request("x", "FP32", (2,), "fp64_contents", [1.0, 2.0])
    cases["typed int in float field"] = typed_request("x", "INT32", (1,), "fp32_contents", [1.0])
    cases["typed two fields"] = typed_request("x", "INT32", (1,), "int_contents", [1])
    cases["typed two fields"].inputs[0].contents.int64_contents.append(1)
    cases["typed out of range"] = typed_request("x", "INT8", (1,), "int_contents", [300])
    cases["typed uint out of range"] = typed_request("x", "UINT16", (1,), "uint_contents", [70000])
    cases["fp16 typed"] = typed_request("x", "FP16", (1,), "fp32_contents", [1.0])
    cases["raw size mismatch"] = raw_request(("x", "FP32", np.ones(3, np.float32)))
    cases["raw size mismatch"].inputs[0].shape[:] = [4]
    cases["raw count mismatch"] = raw_request(("a", "FP32", np.ones(1, np.float32)))
    cases["raw count mismatch"].inputs.add(name="b", datatype="FP32", shape=[1])
    cases["raw without inputs"] = pb.ModelInferRequest(model_name="m", raw_input_contents=[b"\x00" * 4])
    cases["raw and typed mixed"] = raw_request(("x", "FP32", np.ones(1, np.float32)))
    cases["raw and typed mixed"].inputs[0].contents.fp32_contents.append(1.0)
    truncated = raw_request(("s", "BYTES", sample("BYTES", (2,))))
    truncated.raw_input_contents[0] = truncated.raw_input_contents[0][:-1]
    cases["bytes truncated"] = truncated
    trailing = raw_request(("s", "BYTES", sample("BYTES", (2,))))
    trailing.raw_input_contents[0] += b"\x00"
    cases["bytes trailing data"] = trailing
    cases["bytes length beyond data"] = raw_request(("s", "BYTES", np.array([b"ab"], dtype=object)))
    cases["bytes length beyond data"].raw_input_contents[0] = b"\xff\xff\xff\x7fab"
    empty_param = raw_request(("x", "FP32", np.ones(1, np.float32)))
    empty_param.parameters["p"].SetInParent()
    cases["parameter without value"] = empty_param
    bad_key = raw_request(("x", "FP32", np.ones(1, np.float32)))
    bad_key.parameters["routing_key"].int64_param = 5
    cases["routing key not a string"] = bad_key
    return cases


MALFORMED = _malformed()


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_request_is_invalid_argument(case: str) -> None:
    with pytest.raises(ServingError) as info:
        decode(MALFORMED[case])
    assert type(info.value) is InvalidArgument, info.value
    assert info.value.code is ErrorCode.INVALID_ARG


def test_malformed_messages_name_the_tensor() -> None:
    for case in ("typed wrong field", "raw size mismatch", "negative dim", "fp16 typed", "bytes truncated"):
        with pytest.raises(InvalidArgument) as info:
            decode(MALFORMED[case])
        assert "'x'" in info.value.message or "'s'" in info.value.message, (case, info.value.message)


# ------------------------------------------------------------------------------------------ responses


def response_of(
    *arrays: tuple[str, str, np.ndarray], parameters: dict[str, Any] | None = None
) -> InferResponse:
    outputs = [InferOutput(n, d, a.shape, a) for n, d, a in arrays]
    return InferResponse("m", "2", "rid", outputs, parameters)


@pytest.mark.parametrize("datatype", (*NUMERIC, "BYTES"))
def test_response_every_datatype_round_trips(datatype: str) -> None:
    want = sample(datatype, (3, 2))
    msg = wire(codec.encode_infer_response(response_of(("OUT", datatype, want))))
    assert (msg.model_name, msg.model_version, msg.id) == ("m", "2", "rid")
    (out,) = msg.outputs
    assert (out.name, out.datatype, list(out.shape)) == ("OUT", datatype, [3, 2])
    assert not out.HasField("contents")  # raw only, as Triton answers
    assert msg.raw_output_contents[0] == raw_from_array(want)
    assert_same(codec.decode_infer_response(msg).outputs[0].data, want)


def test_response_bytes_layout_is_length_prefixed() -> None:
    arr = np.array([b"a\x00", b"", b"\xff"], dtype=object)
    msg = codec.encode_infer_response(response_of(("OUT", "BYTES", arr)))
    assert (
        msg.raw_output_contents[0] == b"\x02\x00\x00\x00a\x00" + b"\x00\x00\x00\x00" + b"\x01\x00\x00\x00\xff"
    )


def test_response_handles_non_contiguous_and_big_endian_arrays() -> None:
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    strided = base[:, ::2]
    big = np.arange(6, dtype=">f8").reshape(2, 3)
    msg = wire(codec.encode_infer_response(response_of(("A", "INT32", strided), ("B", "FP64", big))))
    got = codec.decode_infer_response(msg).outputs
    np.testing.assert_array_equal(got[0].data, strided)
    np.testing.assert_array_equal(got[1].data, big)


def test_response_parameters() -> None:
    resp = response_of(("OUT", "INT32", sample("INT32")), parameters={"b": False, "i": 7, "d": 1.5, "s": "x"})
    msg = wire(codec.encode_infer_response(resp))
    assert codec.decode_infer_response(msg).parameters == {"b": False, "i": 7, "d": 1.5, "s": "x"}
    assert msg.parameters["b"].WhichOneof("parameter_choice") == "bool_param"


# ------------------------------------------------------------------------------------------ properties

SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays_of_any_datatype(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from((*NUMERIC, "BYTES")))
    shape = draw(SHAPES)
    if datatype == "BYTES":
        count = int(np.prod(shape))
        items = draw(st.lists(st.binary(max_size=12), min_size=count, max_size=count))
        arr = np.empty(count, dtype=object)
        arr[:] = items
        return datatype, arr.reshape(shape)
    return datatype, draw(hnp.arrays(BY_NAME[datatype].numpy, shape))


def same_bits(got: np.ndarray, want: np.ndarray) -> None:
    """Equality that treats NaN payloads as data (the wire must carry the exact bits)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    if want.dtype == object:
        assert list(got.reshape(-1)) == list(want.reshape(-1))
    else:
        assert got.tobytes() == np.ascontiguousarray(want).tobytes()


@settings(max_examples=200, deadline=None)
@given(st.lists(arrays_of_any_datatype(), min_size=1, max_size=4))
def test_property_raw_request_round_trip(tensors: list[tuple[str, np.ndarray]]) -> None:
    inputs = [InferInput(f"in{i}", d, a.shape, a) for i, (d, a) in enumerate(tensors)]
    request = InferRequest("m", inputs, id="p", routing_key="k")
    got = codec.decode_infer_request(wire(codec.encode_infer_request(request)), None, LIMITS)
    assert got.routing_key == "k" and got.id == "p"
    for g, (d, a) in zip(got.inputs, tensors, strict=True):
        assert g.datatype == d
        same_bits(g.data, a)


@settings(max_examples=200, deadline=None)
@given(arrays_of_any_datatype())
def test_property_typed_request_decodes_like_raw(tensor: tuple[str, np.ndarray]) -> None:
    datatype, arr = tensor
    if datatype == "FP16":
        return
    values = [bytes(v) for v in arr.reshape(-1)] if datatype == "BYTES" else arr.reshape(-1).tolist()
    typed = (
        decode(typed_request("x", datatype, arr.shape, codec.TYPED_FIELD[datatype], values)).inputs[0].data
    )
    raw = decode(raw_request(("x", datatype, arr))).inputs[0].data
    if datatype == "FP32":  # typed fp32 goes through Python floats: compare values, NaN == NaN
        np.testing.assert_array_equal(typed, raw)
        assert typed.dtype == raw.dtype
    else:
        same_bits(typed, raw)


@settings(max_examples=200, deadline=None)
@given(st.lists(arrays_of_any_datatype(), min_size=0, max_size=4))
def test_property_response_round_trip(tensors: list[tuple[str, np.ndarray]]) -> None:
    resp = response_of(*((f"out{i}", d, a) for i, (d, a) in enumerate(tensors)))
    got = codec.decode_infer_response(wire(codec.encode_infer_response(resp)))
    assert [(o.name, o.datatype, o.shape) for o in got.outputs] == [
        (o.name, o.datatype, o.shape) for o in resp.outputs
    ]
    for g, (_, a) in zip(got.outputs, tensors, strict=True):
        same_bits(g.data, a)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.sampled_from((*NUMERIC, "BYTES")), SHAPES)
def test_property_arbitrary_raw_bytes_never_crash(data: bytes, datatype: str, shape: tuple[int, ...]) -> None:
    msg = pb.ModelInferRequest(
        model_name="m", inputs=[Tensor(name="x", datatype=datatype, shape=shape)], raw_input_contents=[data]
    )
    try:
        req = decode(msg)
    except InvalidArgument:
        return
    assert req.inputs[0].data.shape == shape


# ------------------------------------------------------------------------------------------ builders


def test_model_metadata_response() -> None:
    meta = ModelMetadata(
        "simple", ["1", "2"], "onnxruntime_onnx",
        [TensorMetadata("INPUT0", "INT32", [-1, 16])], [TensorMetadata("OUTPUT0", "INT32", [-1, 16])],
    )  # fmt: skip
    msg = wire(codec.model_metadata_response(meta))
    assert (msg.name, list(msg.versions), msg.platform) == ("simple", ["1", "2"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in msg.inputs] == [("INPUT0", "INT32", [-1, 16])]
    assert [(t.name, t.datatype, list(t.shape)) for t in msg.outputs] == [("OUTPUT0", "INT32", [-1, 16])]


def config_view(**changes: Any) -> ModelConfigView:
    fields: dict[str, Any] = dict(
        name="simple", platform="onnxruntime_onnx", backend="onnxruntime", max_batch_size=8,
        inputs=(TensorSpec("INPUT0", BY_NAME["INT32"], (16,)), TensorSpec("TEXT", BY_NAME["BYTES"], (-1,))),
        outputs=(TensorSpec("OUTPUT0", BY_NAME["FP16"], (16,)),),
        version_policy=VersionPolicy(), instance_kind="KIND_CPU", gpus=(), dynamic_batching=None,
    )  # fmt: skip
    fields.update(changes)
    return ModelConfigView(**fields)


def test_model_config_response() -> None:
    config = wire(codec.model_config_response(config_view())).config
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        "simple", "onnxruntime_onnx", "onnxruntime", 8,
    )  # fmt: skip
    assert [(i.name, mc.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("INPUT0", "TYPE_INT32", [16]), ("TEXT", "TYPE_STRING", [-1]),
    ]  # fmt: skip
    assert [(o.name, mc.DataType.Name(o.data_type), list(o.dims)) for o in config.output] == [
        ("OUTPUT0", "TYPE_FP16", [16])
    ]
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    (group,) = config.instance_group
    assert (group.kind, group.count, list(group.gpus)) == (mc.ModelInstanceGroup.KIND_CPU, 1, [])
    assert group.name
    assert config.default_model_filename == "model.onnx"
    assert config.WhichOneof("scheduling_choice") is None


def test_model_config_policies_gpu_and_batching() -> None:
    latest = codec.model_config(config_view(version_policy=VersionPolicy("latest", num_versions=2)))
    assert latest.version_policy.latest.num_versions == 2
    specific = codec.model_config(config_view(version_policy=VersionPolicy("specific", versions=(1, 3))))
    assert list(specific.version_policy.specific.versions) == [1, 3]
    gpu = codec.model_config(
        config_view(
            instance_kind="KIND_GPU",
            gpus=(1,),
            dynamic_batching=BatchingConfig(
                max_queue_delay_us=250, preferred_batch_sizes=(4, 8), max_queue_size=9
            ),
        )
    )
    (group,) = gpu.instance_group
    assert (group.kind, list(group.gpus)) == (mc.ModelInstanceGroup.KIND_GPU, [1])
    batching = gpu.dynamic_batching
    assert list(batching.preferred_batch_size) == [4, 8]
    assert batching.max_queue_delay_microseconds == 250
    assert batching.default_queue_policy.max_queue_size == 9


def test_model_statistics_response() -> None:
    stats = VersionStats(
        inference_count=12, execution_count=3, success_count=3, success_ns=900, fail_count=1, fail_ns=50,
        queue_ns=30, compute_input_ns=60, compute_infer_ns=600, compute_output_ns=90, last_inference_ms=1234,
        batches={8: BatchStats(1, 20, 300, 30), 2: BatchStats(2, 40, 300, 60)},
    )  # fmt: skip
    msg = wire(codec.model_statistics_response([VersionStatistics("demo", "2", stats)]))
    (s,) = msg.model_stats
    assert (s.name, s.version, s.last_inference, s.inference_count, s.execution_count) == (
        "demo",
        "2",
        1234,
        12,
        3,
    )
    i = s.inference_stats
    pairs = [
        (d.count, d.ns)
        for d in (i.success, i.fail, i.queue, i.compute_input, i.compute_infer, i.compute_output)
    ]
    assert pairs == [(3, 900), (1, 50), (3, 30), (3, 60), (3, 600), (3, 90)]
    assert [
        (b.batch_size, b.compute_input.count, b.compute_input.ns, b.compute_infer.ns, b.compute_output.ns)
        for b in s.batch_stats
    ] == [(2, 2, 40, 300, 60), (8, 1, 20, 300, 30)]


def test_repository_index_and_server_metadata() -> None:
    rows = [IndexRow("a", "1", "READY", ""), IndexRow("b", "", "UNAVAILABLE", "not loaded")]
    msg = wire(codec.repository_index_response(rows))
    assert [(m.name, m.version, m.state, m.reason) for m in msg.models] == [
        ("a", "1", "READY", ""), ("b", "", "UNAVAILABLE", "not loaded"),
    ]  # fmt: skip
    meta = wire(codec.server_metadata_response("onnxgate", "0.1.0", ("statistics", "parameters")))
    assert (meta.name, meta.version, list(meta.extensions)) == (
        "onnxgate",
        "0.1.0",
        ["statistics", "parameters"],
    )


# ------------------------------------------------------------------------------------------ status table


def test_every_error_code_has_a_grpc_status() -> None:
    assert set(status.STATUS) == set(ErrorCode)
    assert status.STATUS[ErrorCode.UNSUPPORTED] is grpc.StatusCode.UNIMPLEMENTED
    assert status.STATUS[ErrorCode.INVALID_ARG] is grpc.StatusCode.INVALID_ARGUMENT


def test_status_expected_errors_are_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="onnxgate.grpc"):
        assert status.describe(NotFound("no such model")) == (grpc.StatusCode.NOT_FOUND, "no such model", ())
        code, message, trailers = status.describe(QueueFull("queue full"))
    assert (code, message, trailers) == (grpc.StatusCode.UNAVAILABLE, "queue full", (("retry-after", "1"),))
    assert caplog.records == []


def test_status_unexpected_error_is_internal_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise KeyError("secret detail")
    except KeyError as exc:
        with caplog.at_level(logging.DEBUG, logger="onnxgate.grpc"):
            code, message, trailers = status.describe(exc)
    assert (code, message, trailers) == (grpc.StatusCode.INTERNAL, "internal error", ())
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None


# ------------------------------------------------------------------------------------------ differential

needs_tritonclient = pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None, reason="tritonclient is not installed"
)

# Runs in its own interpreter: tritonclient.grpc's generated modules cannot share a process with ours.
_TRITON_SIDE = textwrap.dedent(
    """
    import base64, json, sys
    import numpy as np
    import tritonclient.grpc as g
    from tritonclient.grpc import _utils, service_pb2

    job = json.load(sys.stdin)
    if job["mode"] == "request":
        inputs = []
        for name, datatype, dtype, values, shape in job["inputs"]:
            if datatype == "BYTES":
                arr = np.array([base64.b64decode(v) for v in values], dtype=object).reshape(shape)
            else:
                arr = np.array(values, dtype=dtype).reshape(shape)
            inp = g.InferInput(name, list(shape), datatype)
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        outputs = [g.InferRequestedOutput("OUT")]
        request = _utils._get_inference_request(
            model_name="m", inputs=inputs, model_version="", request_id="r1", outputs=outputs,
            sequence_id=0, sequence_start=False, sequence_end=False, priority=0, timeout=None,
            parameters={"routing_key": "abc"},
        )
        print(base64.b64encode(request.SerializeToString()).decode())
    else:
        response = service_pb2.ModelInferResponse.FromString(base64.b64decode(job["response"]))
        result = g.InferResult(response)
        out = {}
        for o in response.outputs:
            arr = result.as_numpy(o.name)
            if arr.dtype == object:
                values = [base64.b64encode(bytes(v)).decode() for v in arr.reshape(-1)]
            else:
                values = arr.reshape(-1).tolist()
            out[o.name] = [str(arr.dtype), list(arr.shape), values]
        print(json.dumps(out))
    """
)


def run_tritonclient(job: dict[str, Any]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _TRITON_SIDE],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _jsonable(datatype: str, arr: np.ndarray) -> list[Any]:
    flat = arr.reshape(-1)
    if datatype == "BYTES":
        return [base64.b64encode(bytes(v)).decode() for v in flat]
    return flat.astype(np.float64).tolist() if datatype == "FP16" else flat.tolist()


@needs_tritonclient
def test_tritonclient_requests_decode_exactly() -> None:
    arrays = {d: sample(d, (2, 3)) for d in (*NUMERIC, "BYTES")}
    job = {
        "mode": "request",
        "inputs": [
            [f"in_{d}", d, "object" if d == "BYTES" else str(a.dtype), _jsonable(d, a), list(a.shape)]
            for d, a in arrays.items()
        ],
    }
    msg = pb.ModelInferRequest.FromString(base64.b64decode(run_tritonclient(job)))
    req = codec.decode_infer_request(msg, None, LIMITS)
    assert (req.model_name, req.id, req.routing_key) == ("m", "r1", "abc")
    assert [o.name for o in req.outputs] == ["OUT"]
    for tensor, (datatype, want) in zip(req.inputs, arrays.items(), strict=True):
        assert tensor.datatype == datatype
        assert_same(tensor.data, want)


@needs_tritonclient
def test_tritonclient_reads_our_responses() -> None:
    arrays = {d: sample(d, (3, 2)) for d in (*NUMERIC, "BYTES")}
    resp = response_of(*((f"out_{d}", d, a) for d, a in arrays.items()))
    payload = base64.b64encode(codec.encode_infer_response(resp).SerializeToString()).decode()
    seen = json.loads(run_tritonclient({"mode": "response", "response": payload}))
    for datatype, want in arrays.items():
        dtype, shape, values = seen[f"out_{datatype}"]
        assert tuple(shape) == want.shape
        assert values == _jsonable(datatype, want), datatype
        if datatype != "BYTES":
            assert np.dtype(dtype) == want.dtype
