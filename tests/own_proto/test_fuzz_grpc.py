"""Property-based fuzzing of the gRPC request decoder, with our own generated messages.

Targets (``FUZZ_EXAMPLES`` examples each):
- random ModelInferRequest messages: typed contents in any field, raw contents in any number, shapes,
  datatypes, ids, parameters and outputs right or wrong;
- random damage to a serialised good request (what parses is decoded);
- differential: one random request sent as gRPC raw contents and as an HTTP binary-extension body decodes
  the same way over both codecs: both succeed with equal tensors, or both fail with the same ErrorCode
  (the same client mistake gets the same code over HTTP and over gRPC).

The property: `gateway.grpc.codec.decode_infer_request` succeeds with tensors of the declared shapes, or
raises a ``ServingError`` whose code is a client mistake (INVALID_ARG / RESOURCE_EXHAUSTED); nothing else
escapes, not even a numpy warning (pytest turns warnings into errors). tritonclient.grpc is never imported
here (see README.md).

Last, the ModelStreamInfer idle timeout, in-process with our servicer: a stream that never sends is ended
with DEADLINE_EXCEEDED, one that sends now and then is not.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import grpc
import numpy as np
import orjson
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.grpc import codec
from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from gateway.grpc.servicer import InferenceServicer
from gateway.http import codec as http_codec
from gateway.settings import Limits
from gateway.tensors import MAX_DIMS
from gateway.types import InferRequest, InferResponse
from runtime.datatypes import BY_NAME
from runtime.errors import ErrorCode, ServingError

# At least 2,000 examples per target; FUZZ_EXAMPLES in the environment asks for more (a deeper run).
FUZZ_EXAMPLES = max(2000, int(os.environ.get("FUZZ_EXAMPLES", "0") or 0))
CLIENT_MISTAKES = frozenset({ErrorCode.INVALID_ARG, ErrorCode.RESOURCE_EXHAUSTED})
TIGHT = Limits(
    max_body_bytes=1 << 16, max_tensor_elements=64, max_inputs=4, max_json_depth=6, max_bytes_element=8
)
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
Tensor = pb.ModelInferRequest.InferInputTensor
DATATYPES = tuple(BY_NAME)
NAMES = ["INPUT0", "INPUT1", "x", "", "\u00e9"]
BAD_DATATYPES = ["FP8", "int32", "", "STRING"]
INT64_MAX = (1 << 63) - 1
SHAPES = [
    [], [0], [1], [4], [2, 2], [1, 4], [2, 3], [4, 1, 1], [0, 1 << 62], [10**12], [10**6, 10**6],
    [INT64_MAX], [-1], [-(1 << 63)], [1] * (MAX_DIMS + 1), [2] * 7,
]  # fmt: skip
IDS = ["", "i", "i" * 256, "i" * 257]

# Values for each typed field, within the field's protobuf type (anything else cannot be set at all).
TYPED_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(1 << 31), (1 << 31) - 1)
    | st.sampled_from([0, 1, -1, 127, 128, 300, 70000]),
    "int64_contents": st.integers(-(1 << 63), INT64_MAX),
    "uint_contents": st.integers(0, (1 << 32) - 1) | st.sampled_from([0, 1, 255, 256, 65536]),
    "uint64_contents": st.integers(0, (1 << 64) - 1),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=12),
}


@st.composite
def parameter_maps(draw: st.DrawFn, target: Any) -> None:
    """Fill a protobuf InferParameter map: any key, any oneof (or none: a parameter without a value)."""
    for _ in range(draw(st.integers(0, 2))):
        key = draw(
            st.sampled_from(
                ["routing_key", "p", "binary_data", "timeout", "triton_enable_empty_final_response"]
            )
        )
        which = draw(
            st.sampled_from(
                ["bool_param", "int64_param", "string_param", "double_param", "uint64_param", None]
            )
        )
        param = target[key]
        if which is None:
            param.SetInParent()
        elif which == "string_param":
            param.string_param = draw(st.sampled_from(["k", "", "k" * 257]))
        elif which == "bool_param":
            param.bool_param = draw(st.booleans())
        elif which == "double_param":
            param.double_param = draw(st.floats())
        else:
            setattr(param, which, draw(st.integers(0, INT64_MAX)))


@st.composite
def requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m", id=draw(st.sampled_from(IDS)))
    n_inputs = draw(st.integers(0, 5))
    raw = draw(st.booleans())
    for _ in range(n_inputs):
        t = msg.inputs.add(
            name=draw(st.sampled_from(NAMES)),
            datatype=draw(st.sampled_from(DATATYPES) | st.sampled_from(BAD_DATATYPES)),
            shape=draw(st.sampled_from(SHAPES) | st.lists(st.integers(0, 4), max_size=3)),
        )
        if not raw or draw(st.integers(0, 15)) == 0:  # typed contents (now and then next to raw ones)
            for field in draw(st.lists(st.sampled_from(sorted(TYPED_VALUES)), max_size=2)):
                getattr(t.contents, field).extend(draw(st.lists(TYPED_VALUES[field], max_size=8)))
        if draw(st.integers(0, 7)) == 0:
            draw(parameter_maps(t.parameters))
    if raw:
        count = n_inputs if draw(st.integers(0, 7)) else draw(st.integers(0, 6))
        msg.raw_input_contents.extend(draw(st.lists(st.binary(max_size=40), min_size=count, max_size=count)))
    for _ in range(draw(st.integers(0, 2))):
        out = msg.outputs.add(name=draw(st.sampled_from(["OUTPUT0", "OUTPUT1", ""])))
        if draw(st.booleans()):
            draw(parameter_maps(out.parameters))
    if draw(st.booleans()):
        draw(parameter_maps(msg.parameters))
    return msg


def decode(msg: pb.ModelInferRequest, metadata: str | None = None) -> InferRequest | None:
    """Decode after a trip over the wire; a client-mistake error is fine (None), anything else fails."""
    wire = pb.ModelInferRequest.FromString(msg.SerializeToString())
    try:
        request = codec.decode_infer_request(wire, metadata, TIGHT)
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
    return request


@FUZZ
@given(requests(), st.sampled_from([None, "key", "k" * 257]))
def test_fuzz_random_requests(msg: pb.ModelInferRequest, metadata: str | None) -> None:
    decode(msg, metadata)


GOOD = pb.ModelInferRequest(
    model_name="m",
    id="r",
    inputs=[
        Tensor(name="a", datatype="FP32", shape=[1, 4]),
        Tensor(name="s", datatype="BYTES", shape=[2]),
    ],
    raw_input_contents=[np.arange(4, dtype="<f4").tobytes(), b"\x01\x00\x00\x00a\x02\x00\x00\x00bc"],
).SerializeToString()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_damaged_wire_bytes(changes: list[tuple[int, int]]) -> None:
    """Bytes of a good request overwritten at random: what still parses as a message is decoded."""
    damaged = bytearray(GOOD)
    for at, value in changes:
        damaged[at] = value
    try:
        msg = pb.ModelInferRequest.FromString(bytes(damaged))
    except DecodeError:
        return  # refused by protobuf (grpc answers INTERNAL for an unparsable message, before our code)
    decode(msg)


# ------------------------------------------------------------------------------------------ differential

RAW_TENSORS = st.tuples(
    st.sampled_from(["a", "b", "c"]),
    st.sampled_from(DATATYPES) | st.sampled_from(BAD_DATATYPES),
    st.sampled_from(SHAPES) | st.lists(st.integers(0, 4), max_size=3),
    st.binary(max_size=40),
)


@FUZZ
@given(
    st.lists(RAW_TENSORS, max_size=5),
    st.sampled_from(IDS),
    st.sampled_from([None, "k", "k" * 257]),
    st.lists(st.sampled_from(["o", "p"]), max_size=3),
)
def test_fuzz_same_request_same_answer_over_grpc_and_http(
    tensors: list[tuple[str, str, list[int], bytes]],
    request_id: str,
    routing_key: str | None,
    outputs: list[str],
) -> None:
    """One request, as gRPC raw contents and as an HTTP binary-extension body: the same outcome."""
    msg = pb.ModelInferRequest(model_name="m", id=request_id)
    doc: dict[str, Any] = {"id": request_id, "inputs": []}
    for name, datatype, shape, raw in tensors:
        msg.inputs.add(name=name, datatype=datatype, shape=shape)
        msg.raw_input_contents.append(raw)
        doc["inputs"].append(
            {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}}
        )
    if routing_key is not None:
        msg.parameters["routing_key"].string_param = routing_key
        doc["parameters"] = {"routing_key": routing_key}
    if outputs:
        msg.outputs.extend(pb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs)
        doc["outputs"] = [{"name": o} for o in outputs]
    header = orjson.dumps(doc)
    body = header + b"".join(raw for *_, raw in tensors)
    grpc_result = outcome(lambda: codec.decode_infer_request(msg, None, TIGHT))
    http_result = outcome(lambda: http_codec.decode_infer_request(body, len(header), None, "m", "", TIGHT))
    if isinstance(grpc_result, ErrorCode) or isinstance(http_result, ErrorCode):
        assert grpc_result == http_result, f"gRPC {grpc_result}, HTTP {http_result}"
        return
    assert isinstance(grpc_result, InferRequest) and isinstance(http_result, InferRequest)
    assert (grpc_result.id, grpc_result.routing_key) == (http_result.id, http_result.routing_key)
    assert [o.name for o in grpc_result.outputs] == [o.name for o in http_result.outputs]
    for g, h in zip(grpc_result.inputs, http_result.inputs, strict=True):
        assert (g.name, g.datatype, tuple(g.shape)) == (h.name, h.datatype, tuple(h.shape))
        if g.data.dtype == object:
            assert g.data.tolist() == h.data.tolist()
        else:
            assert g.data.tobytes() == h.data.tobytes()


def outcome(call: Any) -> InferRequest | ErrorCode:
    try:
        return call()  # type: ignore[no-any-return]
    except ServingError as exc:
        assert exc.code in CLIENT_MISTAKES, repr(exc)
        return exc.code


def test_nan_and_infinity_decode_from_raw_and_typed_contents() -> None:
    special = [float("nan"), float("inf"), float("-inf"), 1.0]
    for datatype, field in (("FP16", None), ("FP32", "fp32_contents"), ("FP64", "fp64_contents")):
        want = np.array(special, dtype=BY_NAME[datatype].numpy)
        raw = pb.ModelInferRequest(
            model_name="m",
            inputs=[Tensor(name="x", datatype=datatype, shape=[4])],
            raw_input_contents=[want.tobytes()],
        )
        messages = [raw]
        if field is not None:
            typed = pb.ModelInferRequest(
                model_name="m", inputs=[Tensor(name="x", datatype=datatype, shape=[4])]
            )
            getattr(typed.inputs[0].contents, field).extend(special)
            messages.append(typed)
        for msg in messages:
            request = decode(msg)
            assert request is not None
            np.testing.assert_array_equal(request.inputs[0].data, want)


# ------------------------------------------------------------------------------------------ idle streams
# In-process, with our servicer and a stand-in service: a real gateway's idle timeout is minutes long.


class EchoService:
    """The one method ModelStreamInfer needs: answers every request with no outputs."""

    async def infer(self, request: InferRequest) -> InferResponse:
        return InferResponse(request.model_name, "1", request.id, [])


IDLE_S = 1.0


async def _idle_stream_scenario() -> None:
    server = grpc.aio.server()
    servicer = InferenceServicer(EchoService(), Limits(), stream_idle_timeout_s=IDLE_S)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    loop = asyncio.get_running_loop()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            silent = stub.ModelStreamInfer()  # opened, never sent on
            busy = stub.ModelStreamInfer()
            started = loop.time()
            for i in range(4):  # a stream that sends now and then (more often than IDLE_S) stays open
                await busy.write(pb.ModelInferRequest(model_name="m", id=str(i)))
                answer = await busy.read()
                assert answer.infer_response.id == str(i) and not answer.error_message
                await asyncio.sleep(IDLE_S * 0.25)
            code, details = await silent.code(), await silent.details()
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
            assert "no request" in details
            assert loop.time() - started < IDLE_S * 5  # ended after IDLE_S, with room for a loaded machine
            await busy.done_writing()
            code = await busy.code()
            assert code == grpc.StatusCode.OK, (code, await busy.details())
    finally:
        await server.stop(0)


def test_an_idle_stream_is_ended_and_a_busy_one_is_not() -> None:
    asyncio.run(_idle_stream_scenario())
