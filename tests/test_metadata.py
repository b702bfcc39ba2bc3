"""Health, metadata, configuration, readiness, statistics and the repository index, over gRPC and HTTP.

These are what tooling reads before it sends a single inference (perf_analyzer asks for the model config,
Triton's example clients check the statistics), so they are asserted field by field over both protocols.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import model_config_pb2

from tests.gateway_process import GatewayProcess

KINDS = ["grpc", "http"]
READY_MODELS = ["demo", "simple", "simple_int8", "simple_string", "simple_identity", "identity_fp32"]
NOT_READY = ["identity_cuda", "broken"]
# model -> (versions, inputs, outputs) as (name, datatype, shape with -1 batch)
METADATA = {
    "demo": (["1", "2", "3"], [("INPUT0", "FP32", [-1, 64])], [("OUTPUT0", "FP32", [-1, 10])]),
    "simple": (
        ["1"],
        [("INPUT0", "INT32", [-1, 16]), ("INPUT1", "INT32", [-1, 16])],
        [("OUTPUT0", "INT32", [-1, 16]), ("OUTPUT1", "INT32", [-1, 16])],
    ),
    "simple_int8": (
        ["1"],
        [("INPUT0", "INT8", [-1, 16]), ("INPUT1", "INT8", [-1, 16])],
        [("OUTPUT0", "INT8", [-1, 16]), ("OUTPUT1", "INT8", [-1, 16])],
    ),
    "simple_string": (
        ["1"],
        [("INPUT0", "BYTES", [-1, 16]), ("INPUT1", "BYTES", [-1, 16])],
        [("OUTPUT0", "BYTES", [-1, 16]), ("OUTPUT1", "BYTES", [-1, 16])],
    ),
    "simple_identity": (["1"], [("INPUT0", "BYTES", [-1, 1])], [("OUTPUT0", "BYTES", [-1, 1])]),
    "identity_fp32": (["1"], [("INPUT0", "FP32", [-1, 16])], [("OUTPUT0", "FP32", [-1, 16])]),
}


@pytest.fixture(scope="module")
def grpc_client(gateway: GatewayProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(gateway.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def http_client(gateway: GatewayProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(gateway.http_url, network_timeout=60)
    yield client
    client.close()


@pytest.fixture
def client(request: pytest.FixtureRequest, kind: str) -> Any:
    return request.getfixturevalue(f"{kind}_client")


def as_dict(kind: str, value: Any) -> Any:
    """Protobuf answers to plain data (field names as in the protocol), so one assertion serves both."""
    if kind == "http":
        return value
    rows = []
    for m in value.models:
        rows.append({"name": m.name, "version": m.version, "state": m.state, "reason": m.reason})
    return rows


# ------------------------------------------------------------------------------------------ server


@pytest.mark.parametrize("kind", KINDS)
def test_server_live_and_ready(client: Any, kind: str) -> None:
    assert client.is_server_live() is True
    assert client.is_server_ready() is True


@pytest.mark.parametrize("kind", KINDS)
def test_server_metadata(client: Any, kind: str) -> None:
    meta = client.get_server_metadata()
    if kind == "grpc":
        name, version, extensions = meta.name, meta.version, list(meta.extensions)
    else:
        name, version, extensions = meta["name"], meta["version"], meta["extensions"]
    assert name == "onnxgate"
    assert version
    for ext in ("binary_tensor_data", "model_repository", "model_configuration", "statistics"):
        assert ext in extensions, extensions


def test_http_health_endpoints_with_a_plain_client(gateway: GatewayProcess) -> None:
    for path in ("/v2/health/ready", "/v2/health/live"):
        with urllib.request.urlopen(f"http://{gateway.http_url}{path}", timeout=30) as resp:
            assert resp.status == 200, path


def test_grpc_health_check_is_serving(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_grpc_reflection_lists_the_inference_service(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = list(stub.ServerReflectionInfo(iter([request]), timeout=30))
    assert len(responses) == 1
    services = [s.name for s in responses[0].list_services_response.service]
    assert "inference.GRPCInferenceService" in services, services
    assert "grpc.health.v1.Health" in services, services


# ------------------------------------------------------------------------------------------ models


@pytest.mark.parametrize("model", sorted(METADATA))
@pytest.mark.parametrize("kind", KINDS)
def test_model_metadata(client: Any, kind: str, model: str) -> None:
    versions, inputs, outputs = METADATA[model]
    meta = client.get_model_metadata(model)
    if kind == "grpc":
        got = (
            meta.name,
            list(meta.versions),
            meta.platform,
            [(t.name, t.datatype, list(t.shape)) for t in meta.inputs],
            [(t.name, t.datatype, list(t.shape)) for t in meta.outputs],
        )
    else:
        got = (
            meta["name"],
            meta["versions"],
            meta["platform"],
            [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]],
            [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]],
        )
    assert got == (model, versions, "onnxruntime_onnx", inputs, outputs)


@pytest.mark.parametrize("kind", KINDS)
def test_model_metadata_of_a_pinned_version(client: Any, kind: str) -> None:
    meta = client.get_model_metadata("demo", model_version="3")
    name = meta.name if kind == "grpc" else meta["name"]
    assert name == "demo"


def _check_config(config: dict[str, Any]) -> None:
    """`config` is the JSON mapping of Triton's ModelConfig (int64 dims may be JSON strings)."""
    assert config["name"] == "demo"
    assert config["platform"] == "onnxruntime_onnx"
    assert int(config["max_batch_size"]) == 256
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [64])
    ]
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in config["output"]] == [
        ("OUTPUT0", "TYPE_FP32", [10])
    ]


def test_grpc_model_config(grpc_client: grpcclient.InferenceServerClient) -> None:
    config = grpc_client.get_model_config("demo").config
    assert config.name == "demo"
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 256
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == [
        ("INPUT0", "TYPE_FP32", [64])
    ]
    assert [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in config.output] == [
        ("OUTPUT0", "TYPE_FP32", [10])
    ]
    as_json = grpc_client.get_model_config("demo", as_json=True)
    _check_config(as_json["config"])


def test_http_model_config(http_client: httpclient.InferenceServerClient) -> None:
    _check_config(http_client.get_model_config("demo"))


@pytest.mark.parametrize("kind", KINDS)
def test_model_config_of_a_string_model(client: Any, kind: str) -> None:
    config = client.get_model_config("simple_string")
    if kind == "grpc":
        types = [model_config_pb2.DataType.Name(t.data_type) for t in config.config.input]
        mbs = config.config.max_batch_size
    else:
        types = [t["data_type"] for t in config["input"]]
        mbs = config["max_batch_size"]
    assert types == ["TYPE_STRING", "TYPE_STRING"]
    assert mbs == 256


@pytest.mark.parametrize("kind", KINDS)
def test_model_readiness(client: Any, kind: str) -> None:
    for model in READY_MODELS:
        assert client.is_model_ready(model) is True, model
    for version in ("1", "2", "3"):
        assert client.is_model_ready("demo", version) is True, version
    for model in NOT_READY:
        assert client.is_model_ready(model) is False, model


# ------------------------------------------------------------------------------------------ statistics


def _stats_rows(kind: str, stats: Any) -> list[dict[str, Any]]:
    """Triton's statistics as plain rows (name, version, counters) for either protocol."""
    rows = []
    if kind == "grpc":
        for s in stats.model_stats:
            rows.append(
                {
                    "name": s.name,
                    "version": s.version,
                    "inference_count": s.inference_count,
                    "execution_count": s.execution_count,
                    "success": s.inference_stats.success.count,
                    "fail": s.inference_stats.fail.count,
                    "batch1": sum(b.compute_infer.count for b in s.batch_stats if b.batch_size == 1),
                }
            )
    else:
        for s in stats["model_stats"]:
            rows.append(
                {
                    "name": s["name"],
                    "version": s["version"],
                    "inference_count": s["inference_count"],
                    "execution_count": s["execution_count"],
                    "success": s["inference_stats"]["success"]["count"],
                    "fail": s["inference_stats"]["fail"]["count"],
                    "batch1": sum(
                        b["compute_infer"]["count"] for b in s.get("batch_stats", []) if b["batch_size"] == 1
                    ),
                }
            )
    return rows


def _infer_simple_int8(kind: str, client: Any, seed: int) -> None:
    module = grpcclient if kind == "grpc" else httpclient
    rng = np.random.default_rng(seed)
    a = rng.integers(-100, 100, (1, 16), dtype=np.int8)
    b = rng.integers(-20, 20, (1, 16), dtype=np.int8)
    inputs = []
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        tensor = module.InferInput(name, [1, 16], "INT8")
        tensor.set_data_from_numpy(arr)
        inputs.append(tensor)
    result = client.infer("simple_int8", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), (a.astype(np.int32) + b).astype(np.int8))


@pytest.mark.parametrize("kind", KINDS)
def test_statistics_count_exactly_the_requests_sent(client: Any, kind: str) -> None:
    before = _stats_rows(kind, client.get_inference_statistics("simple_int8"))
    assert len(before) == 1, before  # Triton's example clients check for exactly one entry
    sent = 4
    for i in range(sent):
        _infer_simple_int8(kind, client, seed=i)
    after = _stats_rows(kind, client.get_inference_statistics("simple_int8"))
    assert len(after) == 1, after
    (b,), (a,) = before, after
    assert (a["name"], a["version"]) == ("simple_int8", "1")
    assert a["inference_count"] - b["inference_count"] == sent
    assert a["execution_count"] - b["execution_count"] == sent
    assert a["success"] - b["success"] == sent
    assert a["fail"] == b["fail"]
    assert a["batch1"] - b["batch1"] == sent


@pytest.mark.parametrize("kind", KINDS)
def test_statistics_of_one_version_and_of_every_model(client: Any, kind: str) -> None:
    demo = _stats_rows(kind, client.get_inference_statistics("demo"))
    assert sorted(r["version"] for r in demo) == ["1", "2", "3"]
    assert {r["name"] for r in demo} == {"demo"}
    pinned = _stats_rows(kind, client.get_inference_statistics("demo", "2"))
    assert [(r["name"], r["version"]) for r in pinned] == [("demo", "2")]
    everything = _stats_rows(kind, client.get_inference_statistics())
    keys = [(r["name"], r["version"]) for r in everything]
    assert len(keys) == len(set(keys)), keys
    want = {("demo", v) for v in ("1", "2", "3")} | {(m, "1") for m in READY_MODELS if m != "demo"}
    assert want <= set(keys), keys


# ------------------------------------------------------------------------------------------ repository


@pytest.mark.parametrize("kind", KINDS)
def test_repository_index_explains_unavailable_models(client: Any, kind: str) -> None:
    rows = as_dict(kind, client.get_model_repository_index())
    by_name: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    for model in READY_MODELS:
        assert model in by_name, sorted(by_name)
        assert {r["state"] for r in by_name[model]} == {"READY"}, by_name[model]
    assert sorted(r["version"] for r in by_name["demo"]) == ["1", "2", "3"]
    for model in NOT_READY:
        assert model in by_name, sorted(by_name)
        assert {r["state"] for r in by_name[model]} == {"UNAVAILABLE"}, by_name[model]
        assert all(r["reason"] for r in by_name[model]), by_name[model]
    cuda_reason = " ".join(r["reason"] for r in by_name["identity_cuda"])
    assert "CUDAExecutionProvider" in cuda_reason
    for provider in ort.get_available_providers():
        assert provider in cuda_reason, (provider, cuda_reason)
    broken_reason = " ".join(r["reason"] for r in by_name["broken"])
    assert "model.onnx" in broken_reason, broken_reason
    # Another server's config.pbtxt in a model folder is not a model of its own.
    assert "config.pbtxt" not in by_name


def test_http_repository_index_is_a_json_array(gateway: GatewayProcess) -> None:
    request = urllib.request.Request(
        f"http://{gateway.http_url}/v2/repository/index", data=b"{}", method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 200
        body = json.loads(resp.read())
    assert isinstance(body, list)
    assert {"simple", "identity_cuda"} <= {row["name"] for row in body}
