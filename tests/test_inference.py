"""Inference through every official client kind, checked against ONNX Runtime run directly on the same file.

Every answer is compared with what `onnxruntime.InferenceSession(path)` computes for the same inputs, so a
codec that reorders, truncates or mistypes data fails here, whichever client path it sits on.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import msgpack
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, np_to_triton_dtype, triton_to_np_dtype

from tests.gateway_process import GatewayProcess

KINDS = ["grpc", "grpc_aio", "http_json", "http_binary", "http_aio"]
# Elements that only a binary path can carry: NUL, bytes that are not UTF-8, the empty element.
ODD_BYTES = [b"a\x00b", b"\xff\xfe\x80", "h\u00e9llo".encode(), b"", b"\x00"]
TEXT_BYTES = [b"plain", "h\u00e9llo w\u00f6rld".encode(), b"with space", b"tab\tx", b"7"]
# (model, pinned version or "" for the router's choice, the version that must answer)
MODELS = [
    ("demo", "1", "1"),
    ("demo", "2", "2"),
    ("demo", "3", "3"),
    ("simple", "", "1"),
    ("simple_int8", "", "1"),
    ("simple_string", "", "1"),
    ("simple_identity", "", "1"),
    ("identity_fp32", "", "1"),
]


@dataclass
class Answer:
    names: list[str]  # outputs in the order the response lists them
    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: str
    id: str


@pytest.fixture(scope="module")
def models(demo_config: Path) -> Path:
    return demo_config.parent / "models"


# ------------------------------------------------------------------------------------------ reference


@functools.cache
def _session(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def _codec(feeds: dict[str, np.ndarray]) -> str:
    """ORT strings are text: UTF-8 when every element is, else latin-1 (one code point per byte, exact)."""
    try:
        for arr in feeds.values():
            if arr.dtype == object:
                for e in arr.reshape(-1):
                    e.decode("utf-8")
    except UnicodeDecodeError:
        return "latin-1"
    return "utf-8"


def reference(models: Path, model: str, version: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = _session(str(models / model / version / "model.onnx"))
    codec = _codec(feeds)
    ort_feeds = {
        n: np.array([e.decode(codec) for e in a.reshape(-1)], dtype=object).reshape(a.shape)
        if a.dtype == object
        else a
        for n, a in feeds.items()
    }
    result = {}
    for out, arr in zip(sess.get_outputs(), sess.run(None, ort_feeds), strict=True):
        if arr.dtype.kind in "OU":
            arr = np.array([s.encode(codec) for s in arr.reshape(-1)], dtype=object).reshape(arr.shape)
        result[out.name] = arr
    return result


def as_bytes(arr: np.ndarray) -> np.ndarray:
    """tritonclient returns JSON BYTES outputs as str: compare everything as bytes."""
    flat = [e.encode("utf-8") if isinstance(e, str) else bytes(e) for e in arr.reshape(-1)]
    return np.array(flat, dtype=object).reshape(arr.shape)


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if want.dtype == object:
        assert got.dtype == object, f"{what}: dtype {got.dtype}"
        assert as_bytes(got).tolist() == want.tolist(), what
    elif want.dtype.kind == "f":
        assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=what)
    else:
        assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
        np.testing.assert_array_equal(got, want, err_msg=what)


def make_inputs(model: str, batch: int, seed: int, binary_path: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if model == "demo":
        return {"INPUT0": rng.standard_normal((batch, 64)).astype(np.float32)}
    if model == "identity_fp32":
        return {"INPUT0": rng.standard_normal((batch, 16)).astype(np.float32)}
    if model == "simple":
        return {f"INPUT{i}": rng.integers(-1000, 1000, (batch, 16), dtype=np.int32) for i in (0, 1)}
    if model == "simple_int8":  # the full range: sums and differences wrap as int8 arithmetic does
        return {f"INPUT{i}": rng.integers(-128, 128, (batch, 16), dtype=np.int8) for i in (0, 1)}
    if model == "simple_string":
        return {
            f"INPUT{i}": np.array(
                [str(v).encode() for v in rng.integers(-5000, 5000, batch * 16)], dtype=object
            ).reshape(batch, 16)
            for i in (0, 1)
        }
    if model == "simple_identity":
        pool = ODD_BYTES if binary_path else TEXT_BYTES
        return {
            "INPUT0": np.array([pool[(i + seed) % len(pool)] for i in range(batch)], dtype=object).reshape(
                batch, 1
            )
        }
    raise AssertionError(model)


# ------------------------------------------------------------------------------------------ clients


def _datatype(arr: np.ndarray) -> str:
    return "BYTES" if arr.dtype == object else np_to_triton_dtype(arr.dtype)


def _inputs(module: Any, feeds: dict[str, np.ndarray], binary: bool | None) -> list[Any]:
    inputs = []
    for name, arr in feeds.items():
        tensor = module.InferInput(name, list(arr.shape), _datatype(arr))
        if binary is None:
            tensor.set_data_from_numpy(arr)
        else:
            tensor.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(tensor)
    return inputs


def _grpc_answer(result: Any) -> Answer:
    resp = result.get_response()
    names = [o.name for o in resp.outputs]
    return Answer(names, {n: result.as_numpy(n) for n in names}, resp.model_name, resp.model_version, resp.id)


def _http_answer(result: Any) -> Answer:
    resp = result.get_response()
    names = [o["name"] for o in resp.get("outputs", [])]
    return Answer(
        names,
        {n: result.as_numpy(n) for n in names},
        resp["model_name"],
        resp["model_version"],
        resp.get("id", ""),
    )


def infer(
    kind: str,
    gw: GatewayProcess,
    model: str,
    feeds: dict[str, np.ndarray],
    version: str = "",
    outputs: list[str] | None = None,
    request_id: str = "",
) -> Answer:
    """One inference through the named client kind, as an application would make it."""
    if kind in ("grpc", "grpc_aio"):
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        if kind == "grpc":
            with grpcclient.InferenceServerClient(gw.grpc_url) as client:
                result = client.infer(
                    model,
                    _inputs(grpcclient, feeds, None),
                    model_version=version,
                    outputs=requested,
                    request_id=request_id,
                    client_timeout=60,
                )
            return _grpc_answer(result)

        async def go_grpc() -> Any:
            async with grpcaio.InferenceServerClient(gw.grpc_url) as client:
                return await client.infer(
                    model,
                    _inputs(grpcaio, feeds, None),
                    model_version=version,
                    outputs=requested,
                    request_id=request_id,
                    client_timeout=60,
                )

        return _grpc_answer(asyncio.run(go_grpc()))
    binary = kind != "http_json"
    # Without requested outputs the server answers in JSON; name every output so that the binary/JSON
    # choice is the one this kind stands for (the unnamed default has a test of its own).
    requested = [
        httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs or _output_names(model)
    ]
    if kind in ("http_json", "http_binary"):
        with httpclient.InferenceServerClient(gw.http_url, network_timeout=60) as client:
            result = client.infer(
                model,
                _inputs(httpclient, feeds, binary),
                model_version=version,
                outputs=requested,
                request_id=request_id,
            )
        return _http_answer(result)

    async def go_http() -> Any:
        async with httpaio.InferenceServerClient(gw.http_url) as client:
            return await client.infer(
                model,
                _inputs(httpaio, feeds, True),
                model_version=version,
                outputs=requested,
                request_id=request_id,
            )

    return _http_answer(asyncio.run(go_http()))


def _output_names(model: str) -> list[str]:
    return (
        ["OUTPUT0", "OUTPUT1"] if model.startswith("simple") and model != "simple_identity" else ["OUTPUT0"]
    )


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize(("model", "version", "answered_by"), MODELS, ids=[f"{m}-v{a}" for m, _, a in MODELS])
@pytest.mark.parametrize("kind", KINDS)
def test_answers_match_onnxruntime(
    gateway: GatewayProcess, models: Path, kind: str, model: str, version: str, answered_by: str, batch: int
) -> None:
    feeds = make_inputs(model, batch, seed=batch * 7 + len(model), binary_path=kind != "http_json")
    answer = infer(kind, gateway, model, feeds, version=version)
    want = reference(models, model, answered_by, feeds)
    assert answer.model_name == model
    assert answer.model_version == answered_by
    assert sorted(answer.names) == sorted(want), answer.names
    for name, expected in want.items():
        assert_same(answer.outputs[name], expected, f"{kind} {model} v{answered_by} {name}")


@pytest.mark.parametrize("binary_inputs", [False, True])
def test_http_without_requested_outputs_answers_every_output(
    gateway: GatewayProcess, binary_inputs: bool
) -> None:
    feeds = make_inputs("simple", 2, seed=5, binary_path=True)
    with httpclient.InferenceServerClient(gateway.http_url, network_timeout=60) as client:
        result = client.infer("simple", _inputs(httpclient, feeds, binary_inputs))
    answer = _http_answer(result)
    assert sorted(answer.names) == ["OUTPUT0", "OUTPUT1"]
    assert_same(answer.outputs["OUTPUT0"], feeds["INPUT0"] + feeds["INPUT1"], "OUTPUT0")
    assert_same(answer.outputs["OUTPUT1"], feeds["INPUT0"] - feeds["INPUT1"], "OUTPUT1")


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_requested_output_is_returned(gateway: GatewayProcess, kind: str) -> None:
    feeds = make_inputs("simple", 3, seed=11, binary_path=True)
    answer = infer(kind, gateway, "simple", feeds, outputs=["OUTPUT1"])
    assert answer.names == ["OUTPUT1"]
    assert_same(answer.outputs["OUTPUT1"], feeds["INPUT0"] - feeds["INPUT1"], "OUTPUT1")


@pytest.mark.parametrize("kind", KINDS)
def test_outputs_come_back_in_the_order_requested(gateway: GatewayProcess, kind: str) -> None:
    feeds = make_inputs("simple", 2, seed=12, binary_path=True)
    answer = infer(kind, gateway, "simple", feeds, outputs=["OUTPUT1", "OUTPUT0"])
    assert answer.names == ["OUTPUT1", "OUTPUT0"]
    assert_same(answer.outputs["OUTPUT0"], feeds["INPUT0"] + feeds["INPUT1"], "OUTPUT0")
    assert_same(answer.outputs["OUTPUT1"], feeds["INPUT0"] - feeds["INPUT1"], "OUTPUT1")


@pytest.mark.parametrize("kind", KINDS)
def test_request_id_is_echoed(gateway: GatewayProcess, kind: str) -> None:
    rid = f"req-{kind}-\u00e9-42"
    answer = infer(
        kind, gateway, "simple", make_inputs("simple", 1, seed=3, binary_path=True), request_id=rid
    )
    assert answer.id == rid


@pytest.mark.parametrize("kind", KINDS)
def test_unversioned_demo_is_answered_by_champion_or_challenger(
    gateway: GatewayProcess, models: Path, kind: str
) -> None:
    for seed in range(4):
        feeds = make_inputs("demo", 2, seed=100 + seed, binary_path=True)
        answer = infer(kind, gateway, "demo", feeds)
        assert answer.model_name == "demo"
        assert answer.model_version in ("1", "2"), answer.model_version
        want = reference(models, "demo", answer.model_version, feeds)
        assert_same(answer.outputs["OUTPUT0"], want["OUTPUT0"], f"demo answered by v{answer.model_version}")


def test_grpc_stream_answers_every_request_matched_by_id(gateway: GatewayProcess, models: Path) -> None:
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    sent: dict[str, tuple[str, dict[str, np.ndarray]]] = {}
    with grpcclient.InferenceServerClient(gateway.grpc_url) as client:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        try:
            for i in range(50):
                model = ("simple", "simple_int8", "identity_fp32")[i % 3]
                feeds = make_inputs(model, 1 + i % 4, seed=1000 + i, binary_path=True)
                rid = f"stream-{i}"
                sent[rid] = (model, feeds)
                client.async_stream_infer(model, _inputs(grpcclient, feeds, None), request_id=rid)
            got: dict[str, Answer] = {}
            for _ in range(50):
                result, error = results.get(timeout=60)
                assert error is None, error
                answer = _grpc_answer(result)
                assert answer.id not in got, f"answer for {answer.id} came twice"
                got[answer.id] = answer
        finally:
            client.stop_stream()
    assert sorted(got) == sorted(sent)
    for rid, (model, feeds) in sent.items():
        assert got[rid].model_name == model
        want = reference(models, model, "1", feeds)
        for name, expected in want.items():
            assert_same(got[rid].outputs[name], expected, f"{rid} {name}")


def test_http_msgpack_body_and_answer(gateway: GatewayProcess) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16) - 7
    b = (np.arange(32, dtype=np.int32).reshape(2, 16) * 3) % 11
    body = msgpack.packb(
        {
            "id": "mp-1",
            "inputs": [
                {"name": "INPUT0", "datatype": "INT32", "shape": [2, 16], "data": a.astype("<i4").tobytes()},
                {"name": "INPUT1", "datatype": "INT32", "shape": [2, 16], "data": b.astype("<i4").tobytes()},
            ],
        }
    )
    request = urllib.request.Request(
        f"http://{gateway.http_url}/v2/models/simple/infer",
        data=body,
        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("application/msgpack"), resp.headers["Content-Type"]
        doc = msgpack.unpackb(resp.read())
    assert doc["model_name"] == "simple"
    assert doc["model_version"] == "1"
    assert doc["id"] == "mp-1"
    outputs = {o["name"]: o for o in doc["outputs"]}
    assert sorted(outputs) == ["OUTPUT0", "OUTPUT1"]
    for name, want in (("OUTPUT0", a + b), ("OUTPUT1", a - b)):
        out = outputs[name]
        assert out["datatype"] == "INT32"
        assert list(out["shape"]) == [2, 16]
        assert isinstance(out["data"], bytes), type(out["data"])
        np.testing.assert_array_equal(np.frombuffer(out["data"], dtype="<i4").reshape(2, 16), want)


# (model, version, contents field per the protocol's datatype table)
TYPED = [
    ("simple", "", "int_contents"),
    ("simple_int8", "", "int_contents"),
    ("demo", "1", "fp32_contents"),
    ("identity_fp32", "", "fp32_contents"),
    ("simple_string", "", "bytes_contents"),
    ("simple_identity", "", "bytes_contents"),
]


@pytest.mark.parametrize(("model", "version", "field"), TYPED, ids=[t[0] for t in TYPED])
def test_grpc_typed_contents(
    gateway: GatewayProcess, models: Path, model: str, version: str, field: str
) -> None:
    """tritonclient always sends raw_input_contents; other clients send typed `contents`, which must work."""
    feeds = make_inputs(model, 3, seed=77, binary_path=True)
    request = service_pb2.ModelInferRequest(model_name=model, model_version=version, id="typed")
    for name, arr in feeds.items():
        tensor = request.inputs.add(name=name, datatype=_datatype(arr), shape=list(arr.shape))
        getattr(tensor.contents, field).extend(arr.reshape(-1).tolist())
    with grpc.insecure_channel(gateway.grpc_url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    assert response.id == "typed"
    assert response.model_version == "1"
    assert len(response.raw_output_contents) == len(response.outputs)
    want = reference(models, model, "1", feeds)
    assert sorted(o.name for o in response.outputs) == sorted(want)
    for out, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if out.datatype == "BYTES":
            got = deserialize_bytes_tensor(raw)
        else:
            got = np.frombuffer(raw, dtype=triton_to_np_dtype(out.datatype))
        assert_same(got.reshape(list(out.shape)), want[out.name], f"typed {model} {out.name}")
