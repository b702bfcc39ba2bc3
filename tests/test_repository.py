"""The model repository as operators meet it, each test with a gateway of its own on a fresh copy of the demo.

Load and unload over both protocols, a corrupt file at start and at reload, a GPU model without a GPU,
model control switched off, stray files in the repository, and a clean exit on SIGTERM.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.demo import write_demo_repository
from tests.gateway_process import GatewayProcess, start_gateway


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("repository_source")
    write_demo_repository(root)
    return root / "models"


def make_repo(source: Path, dest: Path, names: tuple[str, ...] = ("simple", "identity_fp32")) -> Path:
    """A small repository (start-up stays fast) copied from the demo."""
    dest.mkdir(parents=True)
    for name in names:
        shutil.copytree(source / name, dest / name)
    return dest


@contextmanager
def running(tmp_path: Path, models: Path, *args: str) -> Iterator[GatewayProcess]:
    gw = start_gateway(
        tmp_path / "gw", "--model-repository", str(models), "--state-dir", str(tmp_path / "state"), *args
    )
    try:
        yield gw
    except BaseException:
        gw.stop()
        raise
    code = gw.stop()
    assert code == 0, f"gateway exited with {code}:\n{gw.log()}"


@contextmanager
def clients(gw: GatewayProcess) -> Iterator[tuple[Any, Any]]:
    g = grpcclient.InferenceServerClient(gw.grpc_url)
    h = httpclient.InferenceServerClient(gw.http_url, network_timeout=60)
    try:
        yield g, h
    finally:
        g.close()
        h.close()


def infer_simple(client: Any, seed: int = 0) -> None:
    """One request to `simple` through `client` (either protocol); the answer must be exact."""
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    rng = np.random.default_rng(seed)
    a = rng.integers(-1000, 1000, (2, 16), dtype=np.int32)
    b = rng.integers(-1000, 1000, (2, 16), dtype=np.int32)
    inputs = []
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        t = module.InferInput(name, [2, 16], "INT32")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def infer_identity(client: Any) -> None:
    module = grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient
    x = np.linspace(-3, 3, 48, dtype=np.float32).reshape(3, 16)
    t = module.InferInput("INPUT0", [3, 16], "FP32")
    t.set_data_from_numpy(x)
    np.testing.assert_array_equal(client.infer("identity_fp32", [t]).as_numpy("OUTPUT0"), x)


def index_rows(client: Any) -> dict[str, list[dict[str, str]]]:
    """The repository index as {name: [rows]} for either protocol."""
    raw = client.get_model_repository_index()
    if isinstance(client, grpcclient.InferenceServerClient):
        raw = [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in raw.models
        ]
    rows: dict[str, list[dict[str, str]]] = {}
    for row in raw:
        rows.setdefault(row["name"], []).append(row)
    return rows


def assert_fails(call: Any, *wanted: str) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    message = str(info.value.message())
    for w in wanted:
        assert w in message, f"{w!r} not in {message!r}"
    return message


def test_unload_then_load_over_grpc_and_http(demo_models: Path, tmp_path: Path) -> None:
    models = make_repo(demo_models, tmp_path / "models")
    with running(tmp_path, models, "--allow-model-control") as gw, clients(gw) as (g, h):
        infer_simple(g)
        for unloader, loader in ((g, h), (h, g)):
            unloader.unload_model("simple")
            assert g.is_model_ready("simple") is False
            assert h.is_model_ready("simple") is False
            assert_fails(lambda: infer_simple(g))
            assert_fails(lambda: infer_simple(h))
            assert {r["state"] for r in index_rows(h)["simple"]} == {"UNAVAILABLE"}
            # The other model never noticed.
            infer_identity(g)
            infer_identity(h)
            loader.load_model("simple")
            assert g.is_model_ready("simple") is True
            assert h.is_model_ready("simple") is True
            infer_simple(g, seed=1)
            infer_simple(h, seed=2)
            assert [r["state"] for r in index_rows(g)["simple"]] == ["READY"]


def test_a_corrupt_model_at_start_is_not_ready_and_the_others_serve(
    demo_models: Path, tmp_path: Path
) -> None:
    models = make_repo(demo_models, tmp_path / "models")
    (models / "garbled" / "1").mkdir(parents=True)
    (models / "garbled" / "1" / "model.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf model")
    with running(tmp_path, models) as gw, clients(gw) as (g, h):
        assert g.is_server_live() is True
        for client in (g, h):
            assert client.is_model_ready("garbled") is False
            assert client.is_model_ready("simple") is True
            infer_simple(client)
            infer_identity(client)
            rows = index_rows(client)["garbled"]
            assert [r["state"] for r in rows] == ["UNAVAILABLE"], rows
            assert "garbled/1/model.onnx" in rows[0]["reason"], rows
    assert "Traceback" not in gw.log()


def test_a_failed_reload_keeps_the_running_version_serving(demo_models: Path, tmp_path: Path) -> None:
    models = make_repo(demo_models, tmp_path / "models")
    with running(tmp_path, models, "--allow-model-control") as gw, clients(gw) as (g, h):
        infer_simple(g)
        (models / "simple" / "1" / "model.onnx").write_bytes(b"corrupted on disk while serving")
        for client in (g, h):
            # The reload must report that it failed (as Triton's does), naming the file...
            assert_fails(lambda c=client: c.load_model("simple"), "model.onnx")
            # ...and the version that was running keeps serving.
            assert g.is_model_ready("simple") is True
            assert h.is_model_ready("simple") is True
            infer_simple(g, seed=3)
            infer_simple(h, seed=4)


def test_a_cuda_model_without_a_gpu_fails_clearly_and_loads_with_cpu_fallback(
    demo_models: Path, tmp_path: Path
) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the model would load")
    models = make_repo(demo_models, tmp_path / "models", ("simple",))
    cuda = models / "identity_cuda"
    (cuda / "1").mkdir(parents=True)
    shutil.copy(demo_models / "identity_fp32" / "1" / "model.onnx", cuda / "1" / "model.onnx")
    (cuda / "config.toml").write_text('device = "cuda:0"\n')
    available = ort.get_available_providers()
    with running(tmp_path, models, "--allow-model-control") as gw, clients(gw) as (g, h):
        for client in (g, h):
            assert client.is_model_ready("identity_cuda") is False
            reason = " ".join(r["reason"] for r in index_rows(client)["identity_cuda"])
            assert "CUDAExecutionProvider" in reason
            for provider in available:
                assert provider in reason, (provider, reason)
            message = assert_fails(lambda c=client: c.load_model("identity_cuda"), "CUDAExecutionProvider")
            for provider in available:
                assert provider in message, (provider, message)
        infer_simple(g)
        (cuda / "config.toml").write_text('device = "cuda:0"\nfallback = "cpu"\n')
        h.load_model("identity_cuda")
        for client in (g, h):
            assert client.is_model_ready("identity_cuda") is True
            module = grpcclient if client is g else httpclient
            x = np.arange(32, dtype=np.float32).reshape(2, 16)
            t = module.InferInput("INPUT0", [2, 16], "FP32")
            t.set_data_from_numpy(x)
            np.testing.assert_array_equal(client.infer("identity_cuda", [t]).as_numpy("OUTPUT0"), x)


def test_model_control_is_refused_unless_enabled(demo_models: Path, tmp_path: Path) -> None:
    models = make_repo(demo_models, tmp_path / "models")
    with running(tmp_path, models) as gw, clients(gw) as (g, h):
        for client, status in ((g, "StatusCode.UNIMPLEMENTED"), (h, "501")):
            for call in (client.load_model, client.unload_model):
                with pytest.raises(InferenceServerException) as info:
                    call("simple")
                assert str(info.value.status()) == status, (info.value.status(), info.value.message())
                assert "--allow-model-control" in str(info.value.message()), info.value.message()
            # Refusing changed nothing.
            assert client.is_model_ready("simple") is True
            infer_simple(client)


def test_stray_files_in_the_repository_are_ignored(demo_models: Path, tmp_path: Path) -> None:
    models = make_repo(demo_models, tmp_path / "models")
    (models / "README.md").write_text("# models\n")
    (models / "no_versions").mkdir()
    (models / "no_versions" / "notes.txt").write_text("not a model\n")
    (models / "empty_version" / "1").mkdir(parents=True)  # a version folder without model.onnx
    (models / ".hidden").mkdir()
    (models / "simple" / "config.pbtxt").write_text('name: "simple"\nplatform: "onnxruntime_onnx"\n')
    (models / "simple" / "labels.txt").write_text("a\nb\n")
    with running(tmp_path, models) as gw, clients(gw) as (g, h):
        for client in (g, h):
            assert client.is_server_ready() is True
            assert sorted(index_rows(client)) == ["identity_fp32", "simple"]
            infer_simple(client)
            infer_identity(client)
    assert "Traceback" not in gw.log()


def test_sigterm_makes_the_gateway_exit_0(demo_models: Path, tmp_path: Path) -> None:
    models = make_repo(demo_models, tmp_path / "models", ("simple",))
    gw = start_gateway(tmp_path / "gw", "--model-repository", str(models), "--state-dir", str(tmp_path / "s"))
    try:
        with clients(gw) as (g, _):
            infer_simple(g)
    finally:
        code = gw.stop(signal.SIGTERM)
    assert code == 0, gw.log()
    assert "Traceback" not in gw.log()
