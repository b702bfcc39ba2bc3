"""gRPC messages <-> protocol-neutral types: pure functions, no I/O, no grpc import.

Rules of this module:
- Raw contents are wrapped by ``gateway.tensors`` (``np.frombuffer``, no copy, no loop over elements);
  responses always go out in ``raw_output_contents``, as Triton sends them.
- Typed ``contents`` are accepted in exactly the field the protocol assigns to the datatype; raw and typed
  data never mix in one request. FP16 has no typed field, so it travels raw only.
- Every malformed request raises ``InvalidArgument`` naming the tensor or field; features the protocol has
  but onnxgate does not serve (classification, shared memory) raise ``Unsupported``; a request over a
  configured limit (inputs, elements, BYTES element size) raises ``ResourceExhausted``, exactly as the HTTP
  codec does for the same mistake. Limits are checked before the data they bound is converted.
- The tables below are built once at import; the request path only reads them.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import model_config_pb2 as mc
from gateway.service import ModelConfigView, ModelMetadata, VersionStatistics
from gateway.settings import Limits
from gateway.tensors import (
    array_from_raw,
    array_from_values,
    check_label,
    datatype_of,
    element_count,
    raw_from_array,
    timeout_deadline,
)
from gateway.types import InferInput, InferOutput, InferRequest, InferResponse, Parameters, RequestedOutput
from runtime.datatypes import BY_NAME, BYTES, DataType
from runtime.errors import InvalidArgument, ResourceExhausted, Unsupported
from runtime.model import VersionStats
from runtime.repository import IndexRow

# The InferTensorContents field that carries each datatype (FP16 has none: raw only).
TYPED_FIELD: Mapping[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

ROUTING_KEY = "routing_key"
ROUTING_KEY_METADATA = "x-routing-key"
# Parameters of Triton's shared-memory extension, which onnxgate does not serve.
_SHARED_MEMORY = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")

_CONFIG_DATATYPE = {d.config_name: mc.DataType.Value(d.config_name) for d in BY_NAME.values()}
_INSTANCE_KIND = {k: mc.ModelInstanceGroup.Kind.Value(k) for k in ("KIND_CPU", "KIND_GPU")}
_U63 = 1 << 63

_InputTensor = pb.ModelInferRequest.InferInputTensor
_OutputTensor = pb.ModelInferResponse.InferOutputTensor


# ------------------------------------------------------------------------------------------ parameters


def decode_parameters(params: Mapping[str, pb.InferParameter], where: str) -> Parameters:
    """InferParameter map -> {name: bool | int | str | float}."""
    out: Parameters = {}
    for key, param in params.items():
        which = param.WhichOneof("parameter_choice")
        if which is None:
            raise InvalidArgument(f"{where} parameter '{key}' has no value")
        out[key] = getattr(param, which)
    return out


def set_parameter(param: pb.InferParameter, value: Any) -> None:
    """Store a Python value in the InferParameter oneof that fits it."""
    if isinstance(value, bool | np.bool_):
        param.bool_param = bool(value)
    elif isinstance(value, int | np.integer):
        value = int(value)
        if value >= _U63:
            param.uint64_param = value
        else:
            param.int64_param = value
    elif isinstance(value, float | np.floating):
        param.double_param = float(value)
    else:
        param.string_param = value if isinstance(value, str) else str(value)


def _encode_parameters(target: Any, params: Parameters) -> None:
    for key, value in params.items():
        set_parameter(target[key], value)


def _refuse_shared_memory(params: Mapping[str, Any], what: str) -> None:
    for key in _SHARED_MEMORY:
        if key in params:
            raise Unsupported(f"{what}: shared memory ('{key}') is not supported by this server")


# ------------------------------------------------------------------------------------------ inference


def _typed_array(tensor: _InputTensor, dt: DataType, shape: tuple[int, ...], limits: Limits) -> np.ndarray:
    name = tensor.name
    field = TYPED_FIELD.get(dt.name)
    if field is None:
        raise InvalidArgument(f"input '{name}': {dt.name} data must be sent in raw_input_contents")
    for descriptor, _ in tensor.contents.ListFields():
        if descriptor.name != field:
            raise InvalidArgument(
                f"input '{name}': {dt.name} data belongs in contents.{field}, not contents.{descriptor.name}"
            )
    values: Any = getattr(tensor.contents, field)
    if dt is BYTES:
        values = list(values)
    elif field == "bool_contents":
        # bool_contents holds only bools; as an array it stays BOOL even when empty (a bare empty list
        # would read as float to array_from_values' BOOL check).
        values = np.asarray(values, dtype=np.bool_)
    return array_from_values(values, dt, shape, name, limits.max_tensor_elements, limits.max_bytes_element)


def decode_infer_request(
    msg: pb.ModelInferRequest, routing_key_metadata: str | None, limits: Limits
) -> InferRequest:
    """ModelInferRequest -> InferRequest. Raises InvalidArgument / Unsupported / ResourceExhausted."""
    tensors = msg.inputs
    raw = msg.raw_input_contents
    n_inputs = len(tensors)
    # The HTTP codec's order of checks, so that one request gets one answer over both protocols: input
    # count, id, request parameters, then each input (datatype, shape, data), then the outputs.
    if n_inputs > limits.max_inputs:
        raise ResourceExhausted(f"'inputs' has {n_inputs} inputs (limit {limits.max_inputs})")
    check_label(msg.id, "'id'")
    routing_key = None
    request_params = None
    deadline = None
    if msg.parameters:
        request_params = decode_parameters(msg.parameters, "request")
        if "timeout" in request_params:  # Triton's request timeout, in microseconds
            deadline = timeout_deadline(request_params["timeout"], time.monotonic())
        key = request_params.get(ROUTING_KEY)
        if key is not None:
            if not isinstance(key, str):
                raise InvalidArgument(f"request parameter '{ROUTING_KEY}' must be a string")
            routing_key = check_label(key, f"request parameter '{ROUTING_KEY}'")
    if raw and len(raw) != n_inputs:
        raise InvalidArgument(
            f"request has {len(raw)} raw_input_contents for {n_inputs} inputs; when raw_input_contents is "
            "used it needs one entry per input, in input order"
        )
    max_elements, max_element_bytes = limits.max_tensor_elements, limits.max_bytes_element
    inputs: list[InferInput] = []
    for i, tensor in enumerate(tensors):
        name = tensor.name
        shape = tuple(tensor.shape)
        dt = datatype_of(tensor.datatype, name)
        element_count(shape, name, max_elements)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"input '{name}': contents must not be set when the request uses raw_input_contents"
                )
            data = array_from_raw(raw[i], dt, shape, name, max_elements, max_element_bytes)
        else:
            data = _typed_array(tensor, dt, shape, limits)
        params = None
        if tensor.parameters:
            params = decode_parameters(tensor.parameters, f"input '{name}'")
            _refuse_shared_memory(params, f"input '{name}'")
        inputs.append(InferInput(name, tensor.datatype, shape, data, params))

    outputs: list[RequestedOutput] = []
    seen: set[str] = set()
    for out in msg.outputs:
        if out.name in seen:
            raise InvalidArgument(f"output '{out.name}' is requested more than once")
        seen.add(out.name)
        out_params = None
        if out.parameters:
            out_params = decode_parameters(out.parameters, f"output '{out.name}'")
            if "classification" in out_params:
                raise Unsupported(f"output '{out.name}': the classification extension is not supported")
            _refuse_shared_memory(out_params, f"output '{out.name}'")
            out_params.pop("binary_data", None)  # an HTTP-only choice; gRPC is always binary
        outputs.append(RequestedOutput(out.name, None, out_params or None))

    if routing_key is None and routing_key_metadata is not None:  # the request's parameter wins
        routing_key = check_label(routing_key_metadata, f"{ROUTING_KEY_METADATA} metadata")
    return InferRequest(
        msg.model_name,
        inputs,
        msg.model_version,
        msg.id,
        outputs,
        request_params,
        routing_key,
        "grpc",
        deadline,
    )


def encode_infer_response(resp: InferResponse) -> pb.ModelInferResponse:
    """InferResponse -> ModelInferResponse with every output in raw_output_contents."""
    outs = resp.outputs
    msg = pb.ModelInferResponse(
        model_name=resp.model_name,
        model_version=resp.model_version,
        id=resp.id,
        outputs=[_OutputTensor(name=o.name, datatype=o.datatype, shape=o.shape) for o in outs],
        raw_output_contents=[raw_from_array(o.data) for o in outs],
    )
    if resp.parameters:
        _encode_parameters(msg.parameters, resp.parameters)
    return msg


def encode_infer_request(request: InferRequest) -> pb.ModelInferRequest:
    """InferRequest -> ModelInferRequest (raw contents): the inverse of `decode_infer_request`, for tests
    and tools that talk to a server with our own messages."""
    msg = pb.ModelInferRequest(
        model_name=request.model_name,
        model_version=request.model_version,
        id=request.id,
        inputs=[_InputTensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in request.inputs],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=o.name) for o in request.outputs],
        raw_input_contents=[raw_from_array(t.data) for t in request.inputs],
    )
    params = dict(request.parameters or {})
    if request.routing_key is not None:
        params[ROUTING_KEY] = request.routing_key
    _encode_parameters(msg.parameters, params)
    return msg


def decode_infer_response(msg: pb.ModelInferResponse) -> InferResponse:
    """ModelInferResponse (raw contents) -> InferResponse: the inverse of `encode_infer_response`."""
    raw = msg.raw_output_contents
    if len(raw) != len(msg.outputs):
        raise InvalidArgument(f"response has {len(raw)} raw_output_contents for {len(msg.outputs)} outputs")
    outputs = []
    for t, data in zip(msg.outputs, raw, strict=True):
        shape = tuple(t.shape)
        outputs.append(
            InferOutput(
                t.name,
                t.datatype,
                shape,
                array_from_raw(data, datatype_of(t.datatype, t.name), shape, t.name),
            )
        )
    params = decode_parameters(msg.parameters, "response") if msg.parameters else None
    return InferResponse(msg.model_name, msg.model_version, msg.id, outputs, params)


# ------------------------------------------------------------------------------------------ metadata


def server_metadata_response(name: str, version: str, extensions: Iterable[str]) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=name, version=version, extensions=list(extensions))


def model_metadata_response(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    tm = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=meta.name,
        versions=meta.versions,
        platform=meta.platform,
        inputs=[tm(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
        outputs=[tm(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs],
    )


def _version_policy(view: ModelConfigView) -> mc.ModelVersionPolicy:
    policy = view.version_policy
    if policy.kind == "latest":
        return mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=policy.num_versions))
    if policy.kind == "specific":
        return mc.ModelVersionPolicy(specific=mc.ModelVersionPolicy.Specific(versions=policy.versions))
    return mc.ModelVersionPolicy(all=mc.ModelVersionPolicy.All())


def model_config(view: ModelConfigView) -> mc.ModelConfig:
    """The ModelConfig proto Triton would report for this model (its JSON mapping is the HTTP form)."""
    config = mc.ModelConfig(
        name=view.name,
        platform=view.platform,
        backend=view.backend,
        max_batch_size=view.max_batch_size,
        version_policy=_version_policy(view),
        input=[
            mc.ModelInput(name=s.name, data_type=_CONFIG_DATATYPE[s.datatype.config_name], dims=s.dims)
            for s in view.inputs
        ],
        output=[
            mc.ModelOutput(name=s.name, data_type=_CONFIG_DATATYPE[s.datatype.config_name], dims=s.dims)
            for s in view.outputs
        ],
        instance_group=[
            mc.ModelInstanceGroup(
                name=f"{view.name}_0", kind=_INSTANCE_KIND[view.instance_kind], count=1, gpus=view.gpus
            )
        ],
        default_model_filename=view.default_model_filename,
    )
    batching = view.dynamic_batching
    if batching is not None:
        config.dynamic_batching.CopyFrom(
            mc.ModelDynamicBatching(
                preferred_batch_size=batching.preferred_batch_sizes,
                max_queue_delay_microseconds=batching.max_queue_delay_us,
                default_queue_policy=mc.ModelQueuePolicy(max_queue_size=batching.max_queue_size),
            )
        )
    return config


def model_config_response(view: ModelConfigView) -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(config=model_config(view))


def _duration(count: int, ns: int) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=count, ns=ns)


def model_statistics(name: str, version: str, s: VersionStats) -> pb.ModelStatistics:
    ok = s.success_count
    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(ok, s.success_ns),
            fail=_duration(s.fail_count, s.fail_ns),
            queue=_duration(ok, s.queue_ns),
            compute_input=_duration(ok, s.compute_input_ns),
            compute_infer=_duration(ok, s.compute_infer_ns),
            compute_output=_duration(ok, s.compute_output_ns),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(b.count, b.compute_input_ns),
                compute_infer=_duration(b.count, b.compute_infer_ns),
                compute_output=_duration(b.count, b.compute_output_ns),
            )
            for size, b in sorted(s.batches.items())
        ],
    )


def model_statistics_response(stats: Iterable[VersionStatistics]) -> pb.ModelStatisticsResponse:
    return pb.ModelStatisticsResponse(
        model_stats=[model_statistics(v.name, v.version, v.stats) for v in stats]
    )


def repository_index_response(rows: Iterable[IndexRow]) -> pb.RepositoryIndexResponse:
    index = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(
        models=[index(name=r.name, version=r.version, state=r.state, reason=r.reason) for r in rows]
    )
