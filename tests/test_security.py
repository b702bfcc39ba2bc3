"""Security against a real gateway: no load or unload call leaves the model repository, model files cannot
make the gateway read other files, inference tokens, and client strings kept out of the log.

(Model control being off by default is covered in test_repository.py.)
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from gateway.control.auth import Access, Authenticator, Token
from gateway.demo import write_demo_repository
from gateway.http.app import create_http_app
from gateway.settings import Limits
from runtime.session import external_location_problem
from tests.control_client import call
from tests.gateway_process import GatewayProcess, start_gateway

OPERATOR_SECRET = "operator-secret-0123456789"
VIEWER_SECRET = "viewer-secret-0123456789"
W = np.arange(4, dtype=np.float32)


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("security_source")
    write_demo_repository(root)
    return root / "models"


def _raw(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> int:
    """One request with the path sent exactly as written (no client-side normalisation of '..' or '%2F')."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _index(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    client = httpclient.InferenceServerClient(gw.http_url)
    try:
        return {row["name"]: row for row in client.get_model_repository_index()}
    finally:
        client.close()


def _simple_inputs(module: Any) -> list[Any]:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        t = module.InferInput(name, [2, 16], "INT32")
        t.set_data_from_numpy(a)
        inputs.append(t)
    return inputs


# ------------------------------------------------------------------------------ path traversal


@pytest.fixture(scope="module")
def control_gateway(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path
) -> Iterator[tuple[GatewayProcess, Path]]:
    """Model control on; a valid model sits just outside the repository, where no call may reach it."""
    root = tmp_path_factory.mktemp("traversal")
    models = root / "models"
    models.mkdir()
    shutil.copytree(demo_models / "simple", models / "simple")
    shutil.copytree(demo_models / "simple", root / "trap")
    gw = start_gateway(
        root / "gw",
        "--model-repository",
        str(models),
        "--state-dir",
        str(root / "state"),
        "--allow-model-control",
    )
    yield gw, root
    assert gw.stop() == 0, gw.log()


ESCAPES = [
    "..%2F..%2Fetc",
    "..%2Ftrap",
    "..%2F..%2Ftraversal0%2Ftrap",
    "%2E%2E%2Ftrap",
    "%2E%2E",
    "..",
    "%2Fetc%2Fpasswd",
    "%2Fetc",
    "..%5Ctrap",
    "trap%00",
    "simple%2F..%2F..%2Ftrap",
    ".hidden",
]


@pytest.mark.parametrize("action", ["load", "unload"])
def test_http_load_and_unload_cannot_leave_the_repository(
    control_gateway: tuple[GatewayProcess, Path], action: str
) -> None:
    gw, _ = control_gateway
    port = gw.ports["http"]
    for name in ESCAPES:
        status = _raw(port, "POST", f"/v2/repository/models/{name}/{action}", b"{}")
        assert status in (400, 404), (name, status)
    for raw_path in (f"/v2/repository/models/../trap/{action}", f"/v2/repository/models/../../trap/{action}"):
        assert _raw(port, "POST", raw_path, b"{}") in (400, 404), raw_path
    # A name that is not in the repository is unknown, even though a model of that name sits next to it.
    assert _raw(port, "POST", f"/v2/repository/models/trap/{action}", b"{}") == 404
    assert set(_index(gw)) == {"simple"}


def test_grpc_load_and_unload_cannot_leave_the_repository(
    control_gateway: tuple[GatewayProcess, Path],
) -> None:
    gw, _ = control_gateway
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    try:
        for name in (
            "../../etc",
            "../trap",
            "..",
            "/etc/passwd",
            "simple/../../trap",
            "..\\trap",
            "trap\0",
            "",
        ):
            for call_it in (client.load_model, client.unload_model):
                with pytest.raises(InferenceServerException) as info:
                    call_it(name)
                assert info.value.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND"), name
        with pytest.raises(InferenceServerException) as info:
            client.load_model("trap")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        assert client.is_model_ready("simple")
        assert not client.is_model_ready("trap")
    finally:
        client.close()
    assert set(_index(gw)) == {"simple"}


def test_control_api_cannot_leave_the_repository(control_gateway: tuple[GatewayProcess, Path]) -> None:
    gw, _ = control_gateway
    port = gw.ports["control"]
    for name in ("..%2Fx", "..%2Ftrap", "..%2F..%2Fetc", "%2Fetc%2Fpasswd", "%2E%2E", "..%5Ctrap"):
        for action in ("load", "unload"):
            status, body = call(port, "POST", f"/v1/models/{name}/{action}")
            assert status in (400, 404), (name, status, body)
    assert _raw(port, "POST", "/v1/models/../trap/load") in (400, 404)
    assert call(port, "POST", "/v1/models/trap/load")[0] == 404
    status, body = call(port, "GET", "/v1/models")
    assert status == 200
    assert {m["name"] for m in body["models"]} == {"simple"}


# ------------------------------------------------------------------------------ model files


def write_external_data_model(folder: Path, location: str) -> None:
    """Y = X + W, with W's four floats kept in the external file `location` (relative to `folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(W, "W")
    onnx.external_data_helper.set_external_data(w, location=location, offset=0, length=W.nbytes)
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])],
        "external_data",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (folder / "model.onnx").write_bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def unsafe_gateway(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("unsafe")
    models = root / "models"
    outside = root / "outside"
    outside.mkdir()
    models.mkdir()
    shutil.copytree(demo_models / "simple", models / "simple")
    # External data: inside its own folder (serves), and three ways out. Every data file exists and is
    # valid, so only the gateway's check stands between the model and the file.
    write_external_data_model(models / "ext_inside" / "1", "weights.bin")
    (models / "ext_inside" / "1" / "weights.bin").write_bytes(W.tobytes())
    write_external_data_model(models / "ext_parent" / "1", "../../secret.bin")
    (models / "secret.bin").write_bytes(W.tobytes())
    write_external_data_model(models / "ext_absolute" / "1", str(outside / "secret.bin"))
    (outside / "secret.bin").write_bytes(W.tobytes())
    write_external_data_model(models / "ext_link" / "1", "weights.bin")
    (models / "ext_link" / "1" / "weights.bin").symlink_to(outside / "secret.bin")
    # Links that leave the repository: a version folder, a model file, a whole model folder.
    shutil.copytree(demo_models / "simple", outside / "simple")
    (models / "linked_version").mkdir()
    (models / "linked_version" / "1").symlink_to(outside / "simple" / "1", target_is_directory=True)
    (models / "linked_file" / "1").mkdir(parents=True)
    (models / "linked_file" / "1" / "model.onnx").symlink_to(outside / "simple" / "1" / "model.onnx")
    (models / "linked_model").symlink_to(outside / "simple", target_is_directory=True)
    # A link that stays inside the repository is fine.
    (models / "alias").mkdir()
    (models / "alias" / "1").symlink_to(models / "simple" / "1", target_is_directory=True)
    gw = start_gateway(root / "gw", "--model-repository", str(models), "--state-dir", str(root / "state"))
    yield gw
    assert gw.stop() == 0, gw.log()


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("ext_parent", "'../../secret.bin', a path that climbs out with '..'"),
        ("ext_absolute", "an absolute path"),
        ("ext_link", "a link that resolves outside the folder"),
        ("linked_version", "resolves outside the model repository"),
        ("linked_file", "resolves outside the model repository"),
        ("linked_model", "resolves outside the model repository"),
    ],
)
def test_model_files_that_reach_outside_are_refused_with_the_reason(
    unsafe_gateway: GatewayProcess, model: str, why: str
) -> None:
    row = _index(unsafe_gateway)[model]
    assert row["state"] == "UNAVAILABLE"
    assert why in row["reason"], row


def test_the_safe_models_next_to_unsafe_ones_serve(unsafe_gateway: GatewayProcess) -> None:
    client = httpclient.InferenceServerClient(unsafe_gateway.http_url)
    try:
        x = httpclient.InferInput("X", [4], "FP32")
        x.set_data_from_numpy(np.ones(4, dtype=np.float32))
        np.testing.assert_array_equal(client.infer("ext_inside", [x]).as_numpy("Y"), W + 1)
        for name in ("simple", "alias"):
            result = client.infer(name, _simple_inputs(httpclient))
            assert result.as_numpy("OUTPUT0") is not None
        assert not client.is_model_ready("ext_parent")
    finally:
        client.close()


def test_external_location_rules(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "1"
    (folder / "sub").mkdir(parents=True)
    (folder / "out").symlink_to(tmp_path, target_is_directory=True)
    for ok in ("weights.bin", "sub/weights.bin", "./weights.bin", "sub/weights..bin"):
        assert external_location_problem(ok, folder) is None, ok
    for bad in ("", "/etc/passwd", "../x", "sub/../../x", "..\\x", "C:\\x", "out/x", "a\0b"):
        assert external_location_problem(bad, folder) is not None, bad


# ------------------------------------------------------------------------------ inference tokens


@pytest.fixture(scope="module")
def auth_gateway(tmp_path_factory: pytest.TempPathFactory, demo_models: Path) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("auth")
    models = root / "models"
    models.mkdir()
    shutil.copytree(demo_models / "simple", models / "simple")
    tokens = root / "tokens.toml"
    tokens.write_text(
        f'[[tokens]]\nname = "ops"\nsecret = "{OPERATOR_SECRET}"\nrole = "operator"\n'
        f'[[tokens]]\nname = "dash"\nsecret = "{VIEWER_SECRET}"\nrole = "viewer"\n'
    )
    gw = start_gateway(
        root / "gw",
        "--model-repository",
        str(models),
        "--state-dir",
        str(root / "state"),
        env={"ONNXGATE_TOKENS_FILE": str(tokens), "ONNXGATE_INFERENCE_AUTH": "true"},
    )
    yield gw
    assert gw.stop() == 0, gw.log()
    assert VIEWER_SECRET not in gw.log() and OPERATOR_SECRET not in gw.log()


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_http_inference_needs_a_token_but_health_probes_do_not(auth_gateway: GatewayProcess) -> None:
    port = auth_gateway.ports["http"]
    assert _raw(port, "GET", "/v2/health/live") == 200
    assert _raw(port, "GET", "/v2/health/ready") == 200
    for path in ("/v2", "/v2/models/simple", "/v2/models/simple/ready", "/v2/models/stats", "/v2/nowhere"):
        assert _raw(port, "GET", path) == 401, path
        assert _raw(port, "GET", path, headers=_bearer("wrong-secret")) == 401, path
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": [0] * 16}]}
    )
    assert _raw(port, "POST", "/v2/models/simple/infer", body.encode()) == 401
    assert _raw(port, "POST", "/v2/repository/index", b"{}") == 401
    assert _raw(port, "GET", "/v2/models/simple", headers=_bearer(VIEWER_SECRET)) == 200
    client = httpclient.InferenceServerClient(auth_gateway.http_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            client.infer("simple", _simple_inputs(httpclient))
        assert info.value.status() == "401"
        for secret in (VIEWER_SECRET, OPERATOR_SECRET):  # any role may infer
            result = client.infer("simple", _simple_inputs(httpclient), headers=_bearer(secret))
            assert result.as_numpy("OUTPUT0") is not None
    finally:
        client.close()


def test_grpc_inference_needs_a_token_but_health_probes_do_not(auth_gateway: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(auth_gateway.grpc_url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        for headers in (None, {"authorization": "Bearer wrong-secret"}, {"authorization": VIEWER_SECRET}):
            for rpc in (
                lambda h: client.infer("simple", _simple_inputs(grpcclient), headers=h),
                lambda h: client.get_model_metadata("simple", headers=h),
                lambda h: client.is_model_ready("simple", headers=h),
                lambda h: client.get_model_repository_index(headers=h),
            ):
                with pytest.raises(InferenceServerException) as info:
                    rpc(headers)
                assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        result = client.infer(
            "simple", _simple_inputs(grpcclient), headers={"authorization": f"Bearer {VIEWER_SECRET}"}
        )
        assert result.as_numpy("OUTPUT0") is not None
        # A stream without a token is refused too.
        errors: list[Any] = []
        answered = threading.Event()

        def callback(result: Any, error: Any) -> None:
            errors.append(error)
            answered.set()

        client.start_stream(callback=callback)
        with contextlib.suppress(InferenceServerException):  # the refusal may already have ended the stream
            client.async_stream_infer("simple", _simple_inputs(grpcclient))
        assert answered.wait(30)
        client.stop_stream()
        assert errors[0] is not None and errors[0].status() == "StatusCode.UNAUTHENTICATED"
    finally:
        client.close()
    with grpc.insecure_channel(auth_gateway.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


class _Service:
    def server_metadata(self) -> tuple[str, str, tuple[str, ...]]:
        return "onnxgate", "test", ()


def test_without_inference_auth_no_token_check_is_installed() -> None:
    """The hot path pays nothing for inference_auth when it is off: no middleware at all."""
    plain = create_http_app(_Service(), Limits())  # type: ignore[arg-type]
    guarded = create_http_app(
        _Service(),  # type: ignore[arg-type]
        Limits(),
        Authenticator([Token.from_secret("t", VIEWER_SECRET, Access.VIEWER)]),
    )
    assert len(plain.middlewares) == 1
    assert len(guarded.middlewares) == 2


# ------------------------------------------------------------------------------ logs


FORGED = "FORGED-LOG-LINE onnxgate ERROR all models deleted"


def test_client_strings_never_reach_the_log_raw(control_gateway: tuple[GatewayProcess, Path]) -> None:
    gw, _ = control_gateway
    evil = f"r1\n{FORGED}\r\x1b[2J\x00"
    port = gw.ports["http"]
    bodies = [
        ("/v2/models/nowhere/infer", {"id": evil, "inputs": []}),
        (
            "/v2/models/simple/infer",
            {
                "id": evil,
                "parameters": {"routing_key": evil},
                "inputs": [{"name": "INPUT0", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}],
            },
        ),
        ("/v2/models/simple/infer", {"id": evil, "inputs": [{"name": evil, "shape": [1], "datatype": "X"}]}),
    ]
    for path, doc in bodies:
        assert _raw(port, "POST", path, json.dumps(doc).encode(), {"Content-Type": "application/json"}) >= 400
    assert (
        _raw(port, "POST", f"/v2/repository/models/{'%0A' + FORGED.replace(' ', '%20')}/load", b"{}") == 400
    )
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    try:
        bad = grpcclient.InferInput("INPUT0", [1, 3], "INT32")
        bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.int32))
        for model in ("simple", "nowhere"):
            with pytest.raises(InferenceServerException):
                client.infer(model, [bad], request_id=evil)
        with pytest.raises(InferenceServerException):
            client.load_model(evil)
    finally:
        client.close()
    log = gw.log()
    assert not any(line.startswith("FORGED") for line in log.splitlines()), log
    assert "\x1b" not in log and "\x00" not in log
