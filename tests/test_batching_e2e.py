"""Dynamic batching through a real gateway process and the official clients.

Forty concurrent gRPC requests to a model whose config.toml enables [dynamic_batching] must get the answers
ONNX Runtime computes for each of them alone, while the statistics show fewer executions than inferences;
the model configuration shows the batching settings over both protocols.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient

from gateway.demo import build_mlp, save_model
from tests.gateway_process import GatewayProcess, start_gateway

MODEL = "mlp_batched"
SIZES = (16, 64, 8)
REQUESTS = 40


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batching-models")
    save_model(build_mlp(SIZES, 31), root / MODEL / "1" / "model.onnx")
    (root / MODEL / "config.toml").write_text(
        "max_batch_size = 64\n\n[dynamic_batching]\nmax_queue_delay_us = 2000\n"
    )
    return root


@pytest.fixture(scope="module")
def gateway(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(tmp_path_factory.mktemp("batching-gw"), "--model-repository", str(models))
    yield gw
    assert gw.stop() == 0, gw.log()


def test_concurrent_requests_are_batched_and_answered_exactly(gateway: GatewayProcess, models: Path) -> None:
    rng = np.random.default_rng(5)
    xs = [
        rng.standard_normal((int(rng.integers(1, 4)), SIZES[0])).astype(np.float32) for _ in range(REQUESTS)
    ]
    session = ort.InferenceSession(
        str(models / MODEL / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    want = [session.run(None, {"INPUT0": x})[0] for x in xs]

    async def scenario() -> tuple[list[np.ndarray], object]:
        async with grpcaio.InferenceServerClient(gateway.grpc_url) as client:

            async def one(x: np.ndarray) -> np.ndarray:
                tensor = grpcaio.InferInput("INPUT0", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                result = await client.infer(MODEL, [tensor], client_timeout=60)
                out = result.as_numpy("OUTPUT0")
                assert out is not None
                return out

            answers = await asyncio.gather(*(one(x) for x in xs))
            stats = await client.get_inference_statistics(MODEL)
            return list(answers), stats

    answers, stats = asyncio.run(scenario())
    for got, expected in zip(answers, want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    (row,) = stats.model_stats  # type: ignore[attr-defined]
    assert row.inference_count == sum(len(x) for x in xs)
    assert row.inference_stats.success.count == REQUESTS
    assert 0 < row.execution_count < row.inference_count
    assert row.execution_count < REQUESTS
    assert sum(b.compute_infer.count for b in row.batch_stats) == row.execution_count
    assert sum(b.batch_size * b.compute_infer.count for b in row.batch_stats) == row.inference_count


def test_model_config_shows_dynamic_batching(gateway: GatewayProcess) -> None:
    async def grpc_config() -> object:
        async with grpcaio.InferenceServerClient(gateway.grpc_url) as client:
            return await client.get_model_config(MODEL)

    config = asyncio.run(grpc_config()).config  # type: ignore[attr-defined]
    assert config.max_batch_size == 64
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 2000
    with httpclient.InferenceServerClient(gateway.http_url) as client:
        doc = client.get_model_config(MODEL)
    assert doc["max_batch_size"] == 64
    assert doc["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
