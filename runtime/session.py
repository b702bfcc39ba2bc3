"""ONNX Runtime sessions and execution providers.

Why a module of its own: choosing a provider is where GPU deployments go wrong silently. ONNX Runtime
quietly falls back to the CPU when a provider is missing or fails to initialise; we refuse instead, naming
the provider asked for and those available, unless the model's config allows ``fallback = "cpu"``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnxruntime as ort

from runtime.config import ModelConfig
from runtime.errors import ModelLoadError

log = logging.getLogger("onnxgate.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

ProviderList = list[str | tuple[str, dict[str, Any]]]


def available_providers() -> list[str]:
    return list(ort.get_available_providers())


def choose_providers(config: ModelConfig, available: list[str] | None = None) -> ProviderList:
    """The provider list for a model, or ModelLoadError when the device cannot be honoured."""
    available = available_providers() if available is None else available
    device_id = config.cuda_device_id
    if device_id is None:
        return [CPU]
    wanted: list[tuple[str, dict[str, Any]]] = []
    if config.tensorrt:
        wanted.append((TENSORRT, {"device_id": device_id}))
    wanted.append((CUDA, {"device_id": device_id}))
    missing = [name for name, _ in wanted if name not in available]
    if not missing:
        return [*wanted, CPU]
    if config.fallback == "cpu":
        log.warning(
            "model %s asked for %s (device %s) but this onnxruntime has only %s; running on the CPU "
            'because the config allows fallback = "cpu"',
            config.name,
            ", ".join(missing),
            config.device,
            ", ".join(available),
        )
        return [CPU]
    raise ModelLoadError(
        f"device '{config.device}' needs {', '.join(missing)}, which this onnxruntime does not provide "
        f"(available providers: {', '.join(available)}); install onnxruntime-gpu, or set "
        f'fallback = "cpu" in the model\'s config.toml to run it on the CPU'
    )


def create_session(path: Path, config: ModelConfig) -> ort.InferenceSession:
    """Open `path` with the providers the config asks for; errors become ModelLoadError with the reason."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist")
    providers = choose_providers(config)
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: ORT's warnings are not ours to print per model
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises a zoo of types (Fail, InvalidGraph, RuntimeException...)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"model file {path} could not be loaded by onnxruntime: {message}") from None
    wanted = {p if isinstance(p, str) else p[0] for p in providers} - {CPU}
    active = set(session.get_providers())
    if wanted and not wanted <= active:
        raise ModelLoadError(
            f"device '{config.device}' asked for {', '.join(sorted(wanted))} but onnxruntime could only "
            f"start {', '.join(session.get_providers())} (is the GPU there and the CUDA runtime installed?)"
        )
    return session
