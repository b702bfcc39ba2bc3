"""Shared fixtures: one demo repository and one real gateway per test session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from gateway.demo import write_demo_repository
from tests.gateway_process import GatewayProcess, start_gateway

# The machine running the suite is shared and CPU load comes and goes: a slow first draw is the machine,
# not the strategy. Tests still set their own example counts.
settings.register_profile("onnxgate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("onnxgate")

CUDA_MODEL = "identity_cuda"
BROKEN_MODEL = "broken"


def add_problem_models(models: Path) -> None:
    """A model that asks for a GPU (none here) and one whose file is not ONNX: both must fail alone."""
    cuda = models / CUDA_MODEL
    (cuda / "1").mkdir(parents=True, exist_ok=True)
    shutil.copy(models / "identity_fp32" / "1" / "model.onnx", cuda / "1" / "model.onnx")
    (cuda / "config.toml").write_text('device = "cuda:0"\n')
    broken = models / BROKEN_MODEL / "1"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx file")
    # Another server's files in the repository are ignored, not an error.
    (models / "simple" / "config.pbtxt").write_text('name: "simple"\n')


@pytest.fixture(scope="session")
def demo_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    config = write_demo_repository(root)
    add_problem_models(root / "models")
    return config


@pytest.fixture(scope="session")
def gateway(demo_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(
        tmp_path_factory.mktemp("gw"),
        "--config",
        str(demo_config),
        "--allow-model-control",
        "--state-dir",
        str(tmp_path_factory.mktemp("state")),
    )
    yield gw
    code = gw.stop()
    assert code == 0, f"gateway exited with {code}:\n{gw.log()}"
